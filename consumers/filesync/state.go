package filesync

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"syscall"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// remove deletes the key's file, the directories it leaves empty, and
// records a tombstone, all under the commit lock.
func (s *Syncer) remove(p string, e *change.Envelope) error {
	if err := s.lockState(); err != nil {
		return err
	}
	defer s.lock.release()
	floor, hasFloor, err := s.floorState()
	if err != nil {
		return err
	}
	st, err := s.keyState(p, e.Key)
	if err != nil {
		return err
	}
	if v, ok := st.newer(floor, hasFloor); ok && !v.Less(e.Version()) {
		return nil // another process got there first
	}
	// Until the tombstone is written, the disk is the only truth.
	s.cache.forget(p)
	fi, err := s.root.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
	case err != nil:
		return fmt.Errorf("looking at %s: %w", p, err)
	case fi.IsDir():
		return consumers.Permanent(fmt.Errorf("%s is a directory; refusing to remove it", p))
	default:
		if err := s.removeFile(p); err != nil {
			return err
		}
	}
	if err := s.writeTombstone(e); err != nil {
		return err
	}
	s.cache.set(p, keyState{v: e.Version(), has: true, tomb: true})
	return nil
}

// removeFile removes p, syncs its directory and removes the directories it
// leaves empty, up to the root. The caller holds the commit lock.
func (s *Syncer) removeFile(p string) error {
	if err := s.root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", p, err)
	}
	dir := path.Dir(p)
	if err := s.syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.removed.Inc()
	s.log.Debug("file removed", "path", p)
	return s.removeEmptyDirs(dir)
}

// removeEmptyDirs removes dir and its parents while they are empty, up to
// the root, syncing each parent.
func (s *Syncer) removeEmptyDirs(dir string) error {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	for d := dir; d != "." && d != "/"; d = path.Dir(d) {
		if err := s.root.Remove(d); err != nil {
			break // not empty (or not ours to remove): stop climbing
		}
		s.dirs.drop(d)
		if err := s.syncDir(path.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// truncate removes every file of the table (of this instance's keys) older
// than the truncate, then records the table's floor, under the commit lock.
// Files come first: a crash in between repeats the truncate on redelivery
// instead of skipping it.
func (s *Syncer) truncate(_ context.Context, v change.Version) error {
	if err := s.lockState(); err != nil {
		return err
	}
	defer s.lock.release()
	if floor, has, err := s.floorState(); err != nil {
		return err
	} else if has && !floor.Less(v) {
		return nil // another process applied it, or a newer one
	}
	// Whatever happens next, the disk is the only truth.
	s.cache.dropAll()
	s.dirs.dropAll()

	var files []string
	err := fs.WalkDir(s.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == stateDirName {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), tmpPrefix) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing files under %s: %w", s.cfg.Dir, err)
	}
	n := 0
	for _, p := range files {
		fv, key, ours, err := s.fileInfo(p)
		if err != nil {
			return err
		}
		if !ours || !fv.Less(v) || !s.keyAllowed(key) {
			continue
		}
		if err := s.removeFile(p); err != nil {
			return err
		}
		n++
	}
	if err := s.pruneTombstones(v); err != nil {
		return err
	}
	if err := s.writeState(path.Join(s.state, "floor"), []byte(v.String()+"\n")); err != nil {
		return err
	}
	s.cache.dropAll()
	s.cache.setFloor(v)
	s.log.Info("table truncated: files removed", "files", n, "version", v.String())
	return nil
}
