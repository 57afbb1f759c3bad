package filesync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// fileWrite is one file of a group commit.
type fileWrite struct {
	i      int  // index of the change in the batch
	ignore bool // a key this instance does not write
	e      *change.Envelope
	p      string // the file, relative to the root
	data   []byte

	name    string     // the file's name in dir
	dir     *dirHandle // its directory, held open
	sum     uint64     // hash of data
	attrs   [][2]string
	tmp     *os.File // the temporary file, until it is closed
	tmpName string   // its name in dir, until it is renamed or removed
	same    *os.File // the file already holds data: only its version moves
	old     int      // 1 + an O_PATH descriptor of the file the rename replaces; 0: none
	prior   keyState // the key's state when the commit checked it
	done    bool     // the change is on disk (renamed, or its version moved)
	stale   bool     // the commit found a newer version on disk
	err     error
}

// commitWrites writes a group of files of distinct keys and sets errs[w.i]
// for each. The steps, each for the whole group before the next:
//
//  1. write every temporary file and its attributes (content and version
//     travel together), without syncing;
//  2. fsync each temporary file: its content is durable before any reader
//     can see it, so a crash leaves the old file or the new one, never an
//     empty or partial one;
//  3. under the commit lock, check each change against the newest applied
//     version once more and rename it over its file;
//  4. fsync each directory once, which makes the renames durable;
//  5. remove the tombstones the new files make redundant.
//
// The fsyncs of steps 2 and 4 run concurrently (see syncPool): each one
// waits for the device, so in sequence a group cost one device flush per
// file and per directory. Step 2 overlaps step 1: a temporary file is
// handed to the syncers as soon as it is written, while the next one is
// created. Every file is still synced before step 3 starts, and every
// directory before the group is reported.
//
// A change is reported applied only after step 4 (5 when it had a
// tombstone); one that fails at any step is reported alone, and its
// temporary file is removed.
func (s *Syncer) commitWrites(ws []*fileWrite, errs []error) {
	if len(ws) == 0 {
		return
	}
	defer func() {
		for _, w := range ws {
			s.cleanup(w)
			errs[w.i] = w.err
		}
	}()
	sy := newSyncPool(len(ws))
	for _, w := range ws {
		s.prepare(w)
		if w.err != nil || w.tmp == nil {
			continue
		}
		// Only this function touches w until sy.wait returns.
		sy.do(func() { s.syncTemp(w) })
	}
	sy.wait()
	s.publish(ws)
	s.syncGroup(ws)
	s.clearTombstones(ws)
	for _, w := range ws {
		if !w.done || w.err != nil {
			continue
		}
		if w.same != nil {
			s.unchanged.Inc()
		} else {
			s.written.Inc()
		}
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			s.log.Debug("file written", "path", w.p, "version", w.e.Version().String(), "unchanged", w.same != nil)
		}
	}
}

// prepare is step 1 for one file: a temporary file holding the data and the
// attributes, or, when the file holds these bytes already, the file itself.
func (s *Syncer) prepare(w *fileWrite) {
	var err error
	if w.attrs, err = s.attrs(w.e); err != nil {
		w.err = err
		return
	}
	w.sum = maphash.Bytes(s.sumKey, w.data)
	w.name = path.Base(w.p)
	dir := path.Dir(w.p)
	// The file holds what this process last wrote to it: when that was
	// something else, there is nothing to compare.
	st, known := s.cache.get(w.p)
	compare := !known || !st.file || st.sum == w.sum

	s.dirMu.RLock()
	for attempt := 0; ; attempt++ {
		h, err := s.openDir(dir)
		if err != nil {
			w.err = err
			break
		}
		if compare {
			same, err := s.sameContent(h, w.name, w.p, w.data)
			if err != nil {
				s.dirs.release(h)
				w.err = err
				break
			}
			if same != nil {
				w.dir, w.same = h, same
				break
			}
		}
		tmp, name, err := s.createTempAt(h)
		if err == nil {
			w.dir, w.tmp, w.tmpName = h, tmp, name
			break
		}
		s.dirs.release(h)
		if attempt == 0 && errors.Is(err, unix.ENOENT) {
			// The directory was removed behind the open handle (by another
			// process sharing the root): open it again.
			s.dirs.dropHandle(h)
			continue
		}
		w.err = fmt.Errorf("creating a temporary file in %s: %w", dir, err)
		break
	}
	s.dirMu.RUnlock()
	if w.err != nil || w.tmp == nil {
		return
	}
	if _, err := w.tmp.Write(w.data); err != nil {
		w.err = fmt.Errorf("writing %s: %w", w.tmp.Name(), err)
		return
	}
	// The mode given to openat was reduced by the umask.
	if err := w.tmp.Chmod(s.cfg.FileMode); err != nil {
		w.err = fmt.Errorf("setting the mode of %s: %w", w.tmp.Name(), err)
		return
	}
	if err := setAttrs(w.tmp, w.attrs); err != nil {
		w.err = fmt.Errorf("tagging %s with its version: %w", w.tmp.Name(), err)
		return
	}
	w.holdOld()
}

// holdOld opens the file the rename will replace, without reading it, so
// that the rename does not free it: the last reference goes when this
// descriptor is closed, after the commit lock is released (see releaseOld).
// Freeing a file is not cheap: its blocks and its attribute block go back to
// the file system, and on a file system mounted with discard every freed
// extent is a discard the device must finish before the call returns. Done
// in the rename, that cost fell under the table's commit lock, one file
// after another. If the file is not there (a new key) or is replaced before
// the rename, nothing is lost: the rename then frees what it replaces, as
// before.
func (w *fileWrite) holdOld() {
	fd, err := unix.Openat(w.dir.fd, w.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		w.old = fd + 1
	}
}

// releaseOld closes what holdOld opened; when the rename replaced that file,
// the file system frees it now, in this thread.
func (w *fileWrite) releaseOld() {
	if w.old != 0 {
		_ = unix.Close(w.old - 1)
		w.old = 0
	}
}

// syncTemp is step 2 for one temporary file: fsync, then close.
//
// Why fsync and not fdatasync: the file's extended attributes (its version,
// table and key) must be as durable as its content before the rename. After
// a crash, a renamed file whose content survived but whose attributes did
// not would carry no version: the guard would let an older, redelivered
// change overwrite it, and a truncate would not recognise it as filesync's.
// fdatasync promises only the data and what is needed to read it back (the
// size, the block map), not extended attributes or the mode. It would not
// even save work here: the file is new, so its inode must be written anyway.
func (s *Syncer) syncTemp(w *fileWrite) {
	if err := s.fsync(w.tmp); err != nil {
		w.err = fmt.Errorf("syncing %s: %w", w.tmp.Name(), err)
		return
	}
	err := w.tmp.Close()
	w.tmp = nil
	if err != nil {
		w.err = fmt.Errorf("closing %s: %w", path.Join(w.dir.path, w.tmpName), err)
	}
}

// publish is step 3: under the commit lock, every prepared file whose
// change is still the newest is renamed over its file (or has its version
// moved, when its content is the same).
func (s *Syncer) publish(ws []*fileWrite) {
	live := false
	for _, w := range ws {
		live = live || w.err == nil
	}
	if !live {
		return
	}
	if err := s.lockState(); err != nil {
		for _, w := range ws {
			if w.err == nil {
				w.err = err
			}
		}
		return
	}
	defer s.lock.release()
	floor, hasFloor, ferr := s.floorState()
	for _, w := range ws {
		if w.err != nil {
			continue
		}
		if ferr != nil {
			w.err = ferr
			continue
		}
		st, err := s.keyState(w.p, w.e.Key)
		if err != nil {
			w.err = err
			continue
		}
		if v, ok := st.newer(floor, hasFloor); ok && !v.Less(w.e.Version()) {
			// Already there: another process applied this version or a
			// newer one since the guard looked. Nothing to do.
			w.stale = true
			continue
		}
		w.prior = st
		if w.same != nil {
			if err := s.stillAt(w); err != nil {
				// Another process replaced or removed the file since it
				// was found holding these bytes: write it anew.
				s.cache.set(w.p, w.prior.unsure(false))
				w.err = err
				continue
			}
			if err := setAttrs(w.same, w.attrs); err != nil {
				s.cache.set(w.p, w.prior.unsure(false))
				w.err = fmt.Errorf("tagging %s with its version: %w", w.p, err)
				continue
			}
		} else {
			if err := unix.Renameat(w.dir.fd, w.tmpName, w.dir.fd, w.name); err != nil {
				// The next attempt looks at the file again (a directory
				// in its place is a permanent error).
				s.cache.set(w.p, w.prior.unsure(false))
				w.err = fmt.Errorf("renaming %s to %s: %w", path.Join(w.dir.path, w.tmpName), w.p, err)
				continue
			}
			w.tmpName = ""
		}
		w.done = true
		s.cache.set(w.p, keyState{v: w.e.Version(), has: true, tomb: st.tomb, file: true, sum: w.sum})
	}
}

// stillAt checks, under the commit lock, that the open file found holding
// the change's bytes is still the file at its path.
func (s *Syncer) stillAt(w *fileWrite) error {
	var open, at unix.Stat_t
	if err := unix.Fstat(int(w.same.Fd()), &open); err != nil {
		return fmt.Errorf("checking %s: %w", w.p, err)
	}
	if err := unix.Fstatat(w.dir.fd, w.name, &at, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("checking %s: %w", w.p, err)
	}
	if open.Dev != at.Dev || open.Ino != at.Ino {
		return fmt.Errorf("%s was replaced by another process while being applied; applying again", w.p)
	}
	return nil
}

// syncGroup is step 4: one fsync per directory that got a rename (and its
// parents, when it was just created), one per file whose version moved (and
// its directory too, when an earlier rename there failed to be synced). The
// fsyncs run concurrently; a change is kept done only if every fsync it
// needs succeeded.
func (s *Syncer) syncGroup(ws []*fileWrite) {
	needDir := func(w *fileWrite) bool { return w.same == nil || w.prior.unsynced }
	fileErrs := make([]error, len(ws))
	dirErrs := make(map[*dirHandle]*error)
	sy := newSyncPool(len(ws))
	for i, w := range ws {
		if w.old != 0 {
			sy.do(w.releaseOld)
		}
		if !w.done {
			continue
		}
		if w.same != nil {
			sy.do(func() {
				if err := s.fsync(w.same); err != nil {
					fileErrs[i] = fmt.Errorf("syncing %s: %w", w.p, err)
				}
			})
		}
		if _, ok := dirErrs[w.dir]; ok || !needDir(w) {
			continue
		}
		derr := new(error)
		dirErrs[w.dir] = derr
		h := w.dir
		sy.do(func() { *derr = s.syncDirHandle(h) })
	}
	sy.wait()
	for i, w := range ws {
		if !w.done {
			continue
		}
		err := fileErrs[i]
		if err == nil && needDir(w) {
			err = *dirErrs[w.dir]
		}
		if err != nil {
			// The new version is on disk but maybe not durable: remember
			// the one before, so that the retry writes it again instead
			// of finding it applied. (The cache stays below the truth.)
			s.cache.set(w.p, w.prior.unsure(needDir(w)))
			w.done, w.err = false, err
		}
	}
}

// syncDirHandle makes the renames in h durable, and h's own entries in
// its parents the first time through a handle.
func (s *Syncer) syncDirHandle(h *dirHandle) error {
	if err := s.fsync(h.f); err != nil {
		return fmt.Errorf("syncing directory %s: %w", h.path, err)
	}
	if !h.syncParents.Load() {
		return nil
	}
	for dir := h.path; dir != "."; {
		dir = path.Dir(dir)
		if err := s.syncDir(dir); err != nil {
			return err
		}
	}
	h.syncParents.Store(false)
	return nil
}

// clearTombstones is step 5, for the keys that had a tombstone: it goes
// once the key's new file is durable. A tombstone a crash leaves behind is
// harmless: the file's version is newer.
func (s *Syncer) clearTombstones(ws []*fileWrite) {
	var todo []*fileWrite
	for _, w := range ws {
		if w.done && w.prior.tomb {
			todo = append(todo, w)
		}
	}
	if len(todo) == 0 {
		return
	}
	if err := s.lockState(); err != nil {
		for _, w := range todo {
			w.err = err
		}
		return
	}
	defer s.lock.release()
	for _, w := range todo {
		// Under the lock, so that a newer delete by another process is
		// never the tombstone removed.
		v, has, err := s.readTombstone(w.e.Key)
		if err == nil && has && v.Less(w.e.Version()) {
			if err = s.root.Remove(s.tombstonePath(w.e.Key)); err != nil && !errors.Is(err, os.ErrNotExist) {
				err = fmt.Errorf("removing tombstone: %w", err)
			} else {
				err = nil
			}
		}
		if err != nil {
			s.cache.forget(w.p)
			w.err = err
			continue
		}
		if st, ok := s.cache.get(w.p); ok && st.v == w.e.Version() {
			st.tomb = false
			s.cache.set(w.p, st)
		}
	}
}

// cleanup closes what a write holds and removes its temporary file if it
// was not renamed.
func (s *Syncer) cleanup(w *fileWrite) {
	if w.tmp != nil {
		_ = w.tmp.Close()
		w.tmp = nil
	}
	if w.same != nil {
		_ = w.same.Close()
		w.same = nil
	}
	w.releaseOld()
	if w.dir != nil {
		if w.tmpName != "" {
			_ = unix.Unlinkat(w.dir.fd, w.tmpName, 0)
			w.tmpName = ""
		}
		h := w.dir
		s.dirs.release(h)
		w.dir = nil
		if w.stale && h.newDir.Load() {
			// Created for a change that lost to another process's newer
			// one (a delete, say): leave no empty directory behind.
			s.removeEmptyDirs(h.path)
		}
	}
}

// openDir returns the held-open handle of dir (relative to the root),
// creating the directory and its parents if needed. The caller holds dirMu
// (shared) and releases the handle.
func (s *Syncer) openDir(dir string) (*dirHandle, error) {
	if h := s.dirs.get(dir); h != nil {
		return h, nil
	}
	created, err := s.mkdirAll(dir)
	if err != nil {
		return nil, err
	}
	f, err := s.root.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("opening directory %s: %w", dir, err)
	}
	h := s.dirs.add(dir, f)
	h.newDir.Store(created)
	h.syncParents.Store(true)
	return h, nil
}

// createTempAt creates a new temporary file in h.
func (s *Syncer) createTempAt(h *dirHandle) (*os.File, string, error) {
	for {
		name := tmpPrefix + fmt.Sprintf("%016x", rand.Uint64())
		fd, err := unix.Openat(h.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, uint32(s.cfg.FileMode))
		switch {
		case err == nil:
			return os.NewFile(uintptr(fd), path.Join(h.path, name)), name, nil
		case errors.Is(err, unix.EEXIST) || errors.Is(err, unix.EINTR):
			continue
		default:
			return nil, "", err
		}
	}
}

// sameContent returns the file name in h, open, when it is a regular file
// holding data already (with its mode corrected if needed): only its version
// has to move, and its content, inode and modification time stay. It returns
// nil when the file must be replaced.
func (s *Syncer) sameContent(h *dirHandle, name, p string, data []byte) (*os.File, error) {
	var st unix.Stat_t
	err := unix.Fstatat(h.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("looking at %s: %w", p, err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return nil, consumers.Permanent(fmt.Errorf("%s is a directory; remove it or change the path template", p))
	case st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != int64(len(data)):
		return nil, nil // replaced by the rename
	}
	fd, err := unix.Openat(h.fd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil
	}
	f := os.NewFile(uintptr(fd), p)
	have := make([]byte, len(data)+1)
	n, err := io.ReadFull(f, have)
	if err != io.ErrUnexpectedEOF && err != io.EOF && err != nil {
		f.Close()
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	if n != len(data) || !bytes.Equal(have[:n], data) {
		f.Close()
		return nil, nil
	}
	if os.FileMode(st.Mode).Perm() != s.cfg.FileMode {
		if err := f.Chmod(s.cfg.FileMode); err != nil {
			f.Close()
			return nil, fmt.Errorf("setting the mode of %s: %w", p, err)
		}
	}
	return f, nil
}
