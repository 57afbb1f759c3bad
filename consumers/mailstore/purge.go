package mailstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"time"
)

// Purge removes the archived mailboxes of this table whose delete is older
// than Config.PurgeAfter, and returns how many it removed (in a dry run,
// how many it would remove). Only mailboxes this table archived are
// considered: their owner file names the table and the time of the delete.
// With PurgeAfter 0 it does nothing.
func (s *Store) Purge(ctx context.Context) (int, error) {
	if s.cfg.PurgeAfter <= 0 {
		return 0, nil
	}
	cutoff := s.now().Add(-s.cfg.PurgeAfter)
	domains, err := fs.ReadDir(s.root.FS(), s.archive)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("listing the archive %s: %w", s.archive, err)
	}
	n := 0
	for _, d := range domains {
		if !d.IsDir() {
			continue
		}
		dir := path.Join(s.archive, d.Name())
		boxes, err := fs.ReadDir(s.root.FS(), dir)
		if err != nil {
			return n, fmt.Errorf("listing %s: %w", dir, err)
		}
		for _, b := range boxes {
			if err := ctx.Err(); err != nil {
				return n, err
			}
			if !b.IsDir() {
				continue
			}
			p := path.Join(dir, b.Name())
			removed, err := s.purgeOne(p, cutoff)
			if err != nil {
				return n, err
			}
			if removed {
				n++
			}
		}
	}
	return n, nil
}

// purgeOne removes the archived mailbox p if this table archived it before
// cutoff.
func (s *Store) purgeOne(p string, cutoff time.Time) (bool, error) {
	unlock := s.locks.lock(p)
	defer unlock()
	o, err := s.readOwner(p)
	if err != nil || o.Table != s.tableID || o.ArchivedAt == nil || !o.ArchivedAt.Before(cutoff) {
		return false, nil
	}
	if s.cfg.DryRun {
		s.log.Info("dry run: would purge archived mailbox", "archive", p, "archived_at", o.ArchivedAt.Format(time.RFC3339))
		return true, nil
	}
	if err := s.root.RemoveAll(p); err != nil {
		return false, fmt.Errorf("purging %s: %w", p, err)
	}
	if err := syncDir(s.root, path.Dir(p)); err != nil {
		return false, err
	}
	s.purged.Inc()
	s.log.Info("archived mailbox purged", "archive", p, "key", o.Key, "archived_at", o.ArchivedAt.Format(time.RFC3339))
	return true, nil
}

// RunPurger purges the archive now and then at an interval derived from
// PurgeAfter (a quarter of it, between a minute and an hour), until ctx
// ends. It returns at once when PurgeAfter is 0. Failures are logged and
// retried at the next round.
func (s *Store) RunPurger(ctx context.Context) error {
	if s.cfg.PurgeAfter <= 0 {
		return nil
	}
	every := min(max(s.cfg.PurgeAfter/4, time.Minute), time.Hour)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n, err := s.Purge(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Error("purging the archive", "err", err)
		} else if n > 0 {
			s.log.Info("archive purged", "mailboxes", n, "older_than", s.cfg.PurgeAfter.String())
		}
		t.Reset(every)
	}
}
