package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	// dirPrefix starts the name of every cluster directory, so stale ones
	// can be found without touching anything else in the temp directory.
	dirPrefix = "hpg-"
	// ownerFile, in a cluster directory, names the process that owns it.
	ownerFile = "owner"
	// orphanAge is how old a cluster directory without an owner file must be
	// before it counts as stale; younger ones may be in the middle of Start.
	orphanAge = time.Hour
)

// tempRoot returns where cluster directories go. The unix socket lives in
// the cluster directory and its path must stay under 107 bytes, and as root
// the directory must be reachable by the server's user, so a long or private
// TMPDIR is passed over for /tmp.
func tempRoot() string {
	if os.Geteuid() != 0 {
		if d := os.TempDir(); len(d) <= 40 {
			return d
		}
	}
	return "/tmp"
}

// writeOwner records the current process as the owner of dir.
func writeOwner(dir string) error {
	self, err := idOf(os.Getpid())
	if err != nil {
		return fmt.Errorf("reading own /proc entry: %w", err)
	}
	body := fmt.Sprintf("%d %d\n", self.PID, self.Start)
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(body), 0o644)
}

// readOwner returns the process recorded in dir's owner file.
func readOwner(dir string) (procID, error) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return procID{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return procID{}, fmt.Errorf("malformed owner file in %s", dir)
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return procID{}, fmt.Errorf("malformed owner file in %s", dir)
	}
	return procID{PID: pid, Start: start}, nil
}

// removeStale deletes cluster directories under root that a dead process
// left behind (a test binary killed before it could clean up). A directory
// still used by any process is kept. Errors are ignored: a directory that
// cannot be removed now (another user's, say) is no reason to fail a test.
func removeStale(root string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(root, dirPrefix+"*"))
	for _, dir := range dirs {
		owner, err := readOwner(dir)
		if err != nil {
			fi, serr := os.Stat(dir)
			if serr != nil || time.Since(fi.ModTime()) < orphanAge {
				continue
			}
		} else if alive(owner) {
			continue
		}
		if len(procsIn(dir)) > 0 {
			continue
		}
		if os.RemoveAll(dir) == nil && logf != nil {
			logf("pgtest: removed stale cluster directory %s (owner process %d is gone)", dir, owner.PID)
		}
	}
}
