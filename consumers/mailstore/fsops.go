package mailstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tmpPrefix starts the name of every temporary file or directory mailstore
// makes next to what it replaces: ".herald-tmp-<pid>-<random>". Usernames
// and domains never start with a dot, so no mailbox looks like one.
const tmpPrefix = ".herald-tmp-"

// staleTempAge is the age past which a temporary file is taken for the
// leftover of a crash even when the process named in it seems alive (a
// restarted container gets the same pid). Writing one takes milliseconds.
const staleTempAge = 10 * time.Minute

// renameat2 is unix.Renameat2; tests replace it to exercise the fallback.
var renameat2 = unix.Renameat2

// tempName returns a fresh temporary name.
func tempName() string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return tmpPrefix + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
}

// staleTemp reports whether the temporary entry name (modified at mod) was
// left by a crash: its process is gone, or it is old.
func staleTemp(name string, mod time.Time) bool {
	rest, ok := strings.CutPrefix(name, tmpPrefix)
	if !ok {
		return false
	}
	if time.Since(mod) > staleTempAge {
		return true
	}
	pidText, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// errExist is returned by renameNoReplace when the target exists.
var errExist = fs.ErrExist

// renameNoReplace renames the directory oldname to newname, both relative to
// root, and fails with an error wrapping fs.ErrExist if newname exists: it
// never replaces anything. It uses renameat2(RENAME_NOREPLACE) on
// directories opened through root, so symlinks in the parents cannot lead
// outside it.
//
// Where the kernel or the file system lacks RENAME_NOREPLACE, it checks that
// newname is missing, then renames. The caller holds the lock of newname,
// and rename(2) refuses to replace a non-empty directory or a file with a
// directory, so what a third party could create in between is at worst an
// empty directory: nothing is lost.
func renameNoReplace(root *os.Root, oldname, newname string) error {
	od, err := root.Open(path.Dir(oldname))
	if err != nil {
		return fmt.Errorf("opening %s: %w", path.Dir(oldname), err)
	}
	defer od.Close()
	nd, err := root.Open(path.Dir(newname))
	if err != nil {
		return fmt.Errorf("opening %s: %w", path.Dir(newname), err)
	}
	defer nd.Close()
	ob, nb := path.Base(oldname), path.Base(newname)
	err = withFDs(od, nd, func(ofd, nfd int) error {
		return renameat2(ofd, ob, nfd, nb, unix.RENAME_NOREPLACE)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("renaming %s to %s: %w", oldname, newname, errExist)
	case !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL):
		return fmt.Errorf("renaming %s to %s: %w", oldname, newname, err)
	}
	// No RENAME_NOREPLACE here (EINVAL is also what a rename into its own
	// subdirectory gives; the plain rename below reports that again).
	if _, err := root.Lstat(newname); err == nil {
		return fmt.Errorf("renaming %s to %s: %w", oldname, newname, errExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("looking at %s: %w", newname, err)
	}
	err = withFDs(od, nd, func(ofd, nfd int) error { return unix.Renameat(ofd, ob, nfd, nb) })
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("renaming %s to %s: %w", oldname, newname, errExist)
	}
	return fmt.Errorf("renaming %s to %s: %w", oldname, newname, err)
}

// withFDs runs f with the descriptors of two open files.
func withFDs(a, b *os.File, f func(afd, bfd int) error) error {
	ra, err := a.SyscallConn()
	if err != nil {
		return err
	}
	rb, err := b.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	cerr := ra.Control(func(afd uintptr) {
		if err := rb.Control(func(bfd uintptr) { ferr = f(int(afd), int(bfd)) }); err != nil {
			ferr = err
		}
	})
	if cerr != nil {
		return cerr
	}
	return ferr
}

// ownership is who a file is given to; nil leaves it to the process.
type ownership struct{ uid, gid int }

// writeFileAtomic replaces p with data: a temporary file in tmpDir (on the
// same file system; "" for p's own directory) written, given its mode and
// owner, synced, then renamed over p, and p's directory synced. before, if
// set, runs just before the rename; an error from it abandons the write.
func writeFileAtomic(root *os.Root, tmpDir, p string, data []byte, perm os.FileMode, own *ownership, before func() error) error {
	dir := path.Dir(p)
	if tmpDir == "" {
		tmpDir = dir
	}
	tmp := path.Join(tmpDir, tempName())
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("creating a temporary file in %s: %w", tmpDir, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // the umask may have taken bits away
	}
	if err == nil && own != nil {
		err = f.Chown(own.uid, own.gid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && before != nil {
		if err = before(); err != nil {
			_ = root.Remove(tmp)
			return err
		}
	}
	if err == nil {
		err = root.Rename(tmp, p)
	}
	if err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return syncDir(root, dir)
}

// syncDir makes the entries of dir durable.
func syncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// syncUp syncs dir and, when its parents were just created, each parent up
// to the root, so new directory entries survive a power cut.
func syncUp(root *os.Root, dir string, created bool) error {
	for {
		if err := syncDir(root, dir); err != nil {
			return err
		}
		if !created || dir == "." {
			return nil
		}
		dir = path.Dir(dir)
	}
}

// mkdirAll creates dir and its parents with mode perm, and reports whether
// it had to create anything.
func mkdirAll(root *os.Root, dir string, perm os.FileMode) (bool, error) {
	fi, err := root.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return false, fmt.Errorf("%s exists and is not a directory", dir)
		}
		return false, nil
	}
	if err := root.MkdirAll(dir, perm); err != nil {
		return false, fmt.Errorf("creating directory %s: %w", dir, err)
	}
	return true, nil
}

// statOwner returns the owner of fi.
func statOwner(fi fs.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}

// chownTree gives dir and everything below it to uid:gid, without following
// symlinks (a symlink itself is re-owned). Entries that already belong to
// uid:gid are left alone, so a repeat changes nothing. dir itself comes
// last: once it has the new owner, the whole tree has.
func chownTree(root *os.Root, dir string, uid, gid int) (int, error) {
	var todo []string
	err := fs.WalkDir(root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != dir {
				return nil // removed meanwhile (a message expunged)
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if u, g, ok := statOwner(fi); !ok || u != uid || g != gid {
			todo = append(todo, p)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("listing %s: %w", dir, err)
	}
	n := 0
	for i := len(todo) - 1; i >= 0; i-- {
		if err := root.Lchown(todo[i], uid, gid); err != nil {
			if errors.Is(err, fs.ErrNotExist) && todo[i] != dir {
				continue
			}
			return n, fmt.Errorf("changing the owner of %s: %w", todo[i], err)
		}
		n++
	}
	return n, nil
}

// pathLocks serialises work on mailbox paths. Different keys run in
// parallel, and two of them may touch one path (a user renamed to a name
// another just left); each change locks every path it looks at, all at
// once and in order, so two changes never deadlock.
type pathLocks struct {
	mu sync.Mutex
	m  map[string]*pathLock
}

type pathLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks the given paths (duplicates and empty strings ignored) and
// returns the function that unlocks them.
func (l *pathLocks) lock(paths ...string) (unlock func()) {
	ps := make([]string, 0, len(paths))
	for _, p := range paths {
		if p != "" {
			ps = append(ps, p)
		}
	}
	slices.Sort(ps)
	ps = slices.Compact(ps)
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*pathLock)
	}
	held := make([]*pathLock, len(ps))
	for i, p := range ps {
		pl := l.m[p]
		if pl == nil {
			pl = &pathLock{}
			l.m[p] = pl
		}
		pl.refs++
		held[i] = pl
	}
	l.mu.Unlock()
	for _, pl := range held {
		pl.mu.Lock()
	}
	return func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].mu.Unlock()
		}
		l.mu.Lock()
		for i, p := range ps {
			held[i].refs--
			if held[i].refs == 0 {
				delete(l.m, p)
			}
		}
		l.mu.Unlock()
	}
}
