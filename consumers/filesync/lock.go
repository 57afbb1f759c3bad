package filesync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// commitLock serialises the commits of one table's files — renames, version
// updates, deletes, tombstones, truncates — across every process sharing the
// root (flock on <state>/lock) and, with a mutex, within this one. The lock
// file also holds a counter that each commit moves forward, so that a
// process learns, when it takes the lock, whether another process committed
// since its own last commit: its in-memory state may then be behind the disk
// and is dropped.
type commitLock struct {
	mu   sync.Mutex
	f    *os.File
	path string
	seen uint64 // the counter as this process left it
}

func openCommitLock(root *os.Root, p string) (*commitLock, error) {
	f, err := root.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the commit lock %s: %w", p, err)
	}
	l := &commitLock{f: f, path: p}
	if l.seen, err = l.read(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// acquire takes the lock and moves the counter forward. foreign is true
// when another process committed since this one last held the lock.
func (l *commitLock) acquire() (foreign bool, err error) {
	l.mu.Lock()
	if err := l.flock(unix.LOCK_EX); err != nil {
		l.mu.Unlock()
		return false, fmt.Errorf("locking %s: %w", l.path, err)
	}
	n, err := l.read()
	if err == nil {
		err = l.write(n + 1)
	}
	if err != nil {
		l.release()
		return false, err
	}
	foreign = n != l.seen
	l.seen = n + 1
	return foreign, nil
}

func (l *commitLock) release() {
	// Closing the file would release the lock too; an unlock that fails
	// leaves nothing to do but carry on.
	_ = l.flock(unix.LOCK_UN)
	l.mu.Unlock()
}

func (l *commitLock) flock(how int) error {
	for {
		err := unix.Flock(int(l.f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// The counter needs no fsync: it only has to be right while processes run.
// A machine that crashes restarts every process with an empty cache.
func (l *commitLock) read() (uint64, error) {
	var b [8]byte
	n, err := l.f.ReadAt(b[:], 0)
	if n < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			return 0, nil // a new lock file
		}
		return 0, fmt.Errorf("reading the commit counter %s: %w", l.path, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (l *commitLock) write(n uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	if _, err := l.f.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("writing the commit counter %s: %w", l.path, err)
	}
	return nil
}

func (l *commitLock) Close() error { return l.f.Close() }
