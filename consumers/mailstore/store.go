package mailstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// Modes of what mailstore creates. Mailboxes are private to their owner;
// domain folders must let the mail server's user pass through; the archive
// and the state are for the administrator alone.
const (
	mailboxMode = os.FileMode(0o700)
	quotaMode   = os.FileMode(0o600)
	domainMode  = os.FileMode(0o755)
	privateMode = os.FileMode(0o700)
)

// Option changes how New builds a Store.
type Option func(*options)

type options struct {
	logger *slog.Logger
	reg    prometheus.Registerer
	now    func() time.Time
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers mailstore's metrics on r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithNow sets the clock Purge reads (default time.Now).
func WithNow(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Store is the mailstore handler: a consumers.Handler and consumers.Guard.
// It is safe for concurrent use by the runtime's workers.
type Store struct {
	cfg        Config
	schema     string
	table      string
	tableID    string // schema.table, as owner files name it
	root       *os.Root
	state      string // state directory of this table, relative to the root
	archive    string // archive folder, relative to the root
	archiveTop string // its first element, which no domain may be
	chown      bool
	log        *slog.Logger
	now        func() time.Time
	locks      pathLocks

	created   prometheus.Counter
	moved     prometheus.Counter
	archived  prometheus.Counter
	purged    prometheus.Counter
	quotas    prometheus.Counter
	ownership prometheus.Counter
}

// New checks cfg, creates the root if it is missing (not in a dry run),
// opens it, creates the state directory and the archive through it (so an
// archive that a symlink leads outside the root is refused here), and
// removes temporary files a crash left behind. Close the Store when done.
func New(cfg Config, opts ...Option) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if o.reg == nil {
		o.reg = prometheus.NewRegistry()
	}
	schema, table, _ := consumers.SplitTable(cfg.Table)
	archive, _ := archiveDir(cfg.Root, cfg.Archive)
	if !cfg.DryRun {
		if err := os.MkdirAll(cfg.Root, domainMode); err != nil {
			return nil, fmt.Errorf("creating mailstore root %s: %w", cfg.Root, err)
		}
	}
	root, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("opening mailstore root %s: %w", cfg.Root, err)
	}
	top, _, _ := strings.Cut(archive, "/")
	s := &Store{
		cfg:        cfg,
		schema:     schema,
		table:      table,
		tableID:    schema + "." + table,
		root:       root,
		state:      path.Join(stateDirName, fileName(schema)+"."+fileName(table)),
		archive:    archive,
		archiveTop: top,
		chown:      cfg.chowning(),
		log:        o.logger.With("table", schema+"."+table),
		now:        o.now,
	}
	if err := s.registerMetrics(o.reg); err != nil {
		root.Close()
		return nil, err
	}
	if cfg.DryRun {
		s.log.Warn("dry run: changes are logged, nothing is written, and the messages are acknowledged")
		if err := s.checkArchive(); err != nil && !errors.Is(err, fs.ErrNotExist) {
			root.Close()
			return nil, err
		}
		return s, nil
	}
	if err := root.MkdirAll(path.Join(s.state, "keys"), privateMode); err != nil {
		root.Close()
		return nil, fmt.Errorf("creating mailstore state directory %s in %s: %w", s.state, cfg.Root, err)
	}
	if err := root.MkdirAll(archive, privateMode); err != nil {
		root.Close()
		return nil, fmt.Errorf("archive folder %s in %s: %w (it must be a folder inside the root; a symlink may not lead out of it)", archive, cfg.Root, err)
	}
	if err := s.checkArchive(); err != nil {
		root.Close()
		return nil, err
	}
	s.removeStaleTemps()
	return s, nil
}

// checkArchive checks that the archive, resolved through the root, is a
// directory inside it.
func (s *Store) checkArchive() error {
	fi, err := s.root.Stat(s.archive)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return fmt.Errorf("archive folder %s in %s: %w (it must be a folder inside the root; a symlink may not lead out of it)", s.archive, s.cfg.Root, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("archive folder %s in %s is not a directory", s.archive, s.cfg.Root)
	}
	return nil
}

// Close releases the root.
func (s *Store) Close() error { return s.root.Close() }

// ConsumerConfig is Config.ConsumerConfig for the Store's configuration.
func (s *Store) ConsumerConfig(base consumers.Config) consumers.Config {
	return s.cfg.ConsumerConfig(base)
}

func (s *Store) registerMetrics(reg prometheus.Registerer) error {
	mk := func(name, help string) (prometheus.Counter, error) {
		return consumers.TableCounter(reg, name, help, s.tableID)
	}
	var err error
	for _, c := range []struct {
		dst        *prometheus.Counter
		name, help string
	}{
		{&s.created, "herald_mailstore_mailboxes_created_total", "Mailboxes created."},
		{&s.moved, "herald_mailstore_mailboxes_moved_total", "Mailboxes moved to a new domain or username."},
		{&s.archived, "herald_mailstore_mailboxes_archived_total", "Mailboxes moved to the archive by deletes and truncates."},
		{&s.purged, "herald_mailstore_mailboxes_purged_total", "Archived mailboxes removed after the purge age."},
		{&s.quotas, "herald_mailstore_quota_files_written_total", "maildirsize files written (quota set or repaired)."},
		{&s.ownership, "herald_mailstore_ownership_changes_total", "Mailboxes whose files were given to a new owner or group."},
	} {
		if *c.dst, err = mk(c.name, c.help); err != nil {
			return err
		}
	}
	return nil
}

// mailboxPath is MailboxPath, also refusing the domain the archive folder's
// first element takes.
func (s *Store) mailboxPath(domain, username string) (string, error) {
	p, err := MailboxPath(domain, username)
	if err != nil {
		return "", err
	}
	if domain == s.archiveTop {
		return "", fmt.Errorf("%w: domain %q is the archive folder", ErrUnsafeName, domain)
	}
	return p, nil
}

// want is the owner a mailbox of group gid gets, or nil when ownership is
// left alone.
func (s *Store) want(gid int) *ownership {
	if !s.chown {
		return nil
	}
	return &ownership{uid: s.cfg.UID, gid: gid}
}

// Handle applies one change of the table.
func (s *Store) Handle(_ context.Context, e *change.Envelope) error {
	err := s.handle(e)
	if err != nil && s.cfg.DryRun && consumers.IsPermanent(err) {
		s.log.Warn("dry run: would dead-letter the change", "key", e.Key, "op", e.Op, "version", e.Version().String(), "reason", err)
		return nil
	}
	return err
}

func (s *Store) handle(e *change.Envelope) error {
	if e.Schema != s.schema || e.Table != s.table {
		return consumers.Permanent(fmt.Errorf("change of table %s.%s, but this mailstore follows %s; check the consumer's filter subjects", e.Schema, e.Table, s.tableID))
	}
	switch e.Op {
	case change.OpInsert, change.OpUpdate, change.OpSnapshot:
		return s.upsert(e)
	case change.OpDelete:
		rec, err := s.readRecord(e.Key)
		if err != nil {
			return err
		}
		return s.archiveKey(e.Key, rec, s.rowPath(e.Old), e.At, e.Version())
	case change.OpTruncate:
		return s.truncate(e)
	}
	return consumers.Permanent(fmt.Errorf("unknown op %q", e.Op))
}

// Applied returns the newest version applied for the change's key — its
// record's, or the table's truncate floor, whichever is newer. For a
// truncate, the floor.
func (s *Store) Applied(_ context.Context, e *change.Envelope) (change.Version, bool, error) {
	v, ok, err := s.applied(e)
	if err != nil && s.cfg.DryRun && consumers.IsPermanent(err) {
		// Handle meets the same error and logs it: a dry run dead-letters
		// nothing.
		return change.Version{}, false, nil
	}
	return v, ok, err
}

func (s *Store) applied(e *change.Envelope) (change.Version, bool, error) {
	floor, hasFloor, err := s.readFloor()
	if err != nil {
		return change.Version{}, false, err
	}
	if e.Op == change.OpTruncate || e.Schema != s.schema || e.Table != s.table {
		return floor, hasFloor, nil
	}
	rec, err := s.readRecord(e.Key)
	if err != nil {
		return change.Version{}, false, err
	}
	v, ok, err := rec.version()
	if err != nil {
		return change.Version{}, false, err
	}
	if hasFloor && (!ok || v.Less(floor)) {
		return floor, true, nil
	}
	return v, ok, nil
}

// upsert makes the key's mailbox exist at the place its new row names, with
// its quota and group: created, found where it was and moved, or adopted.
func (s *Store) upsert(e *change.Envelope) error {
	r, err := decodeRow(e.New)
	if err != nil {
		return consumers.Permanent(fmt.Errorf("%s of key %v: %w", e.Op, e.Key, err))
	}
	target, err := s.mailboxPath(r.domain, r.username)
	if err != nil {
		return consumers.Permanent(fmt.Errorf("%s of key %v: %w", e.Op, e.Key, err))
	}
	rec, err := s.readRecord(e.Key)
	if err != nil {
		return err
	}

	var cs candidates
	if rec != nil && !rec.Deleted {
		cs.add(rec.Path, false)
	}
	if rec != nil && !inDir(rec.Moving, s.archive) {
		cs.add(rec.Moving, true)
	}
	if e.Old != nil {
		cs.add(s.rowPath(e.Old), false)
	}
	cs.drop(target)
	unlock := s.locks.lock(append(cs.paths(), target)...)
	defer unlock()

	cur, curKind, err := s.find(cs, e.Key)
	if err != nil {
		return err
	}
	tk, to, err := s.inspect(target, e.Key)
	if err != nil {
		return err
	}
	log := s.log.With("key", e.Key, "version", e.Version().String(), "path", target)
	switch {
	case tk == otherKey:
		// Changes of different keys are applied in parallel: the user
		// who had this name may not have been moved away yet.
		return fmt.Errorf("%s holds the mailbox of key %v, which has not moved away yet; retrying", target, to.Key)
	case tk == notDir || tk == foreignBx:
		return consumers.Permanent(fmt.Errorf("%s of key %v: %s exists and is %s; refusing to touch it", e.Op, e.Key, target, tk))
	case cur != "" && tk != missing:
		return consumers.Permanent(fmt.Errorf("moving the mailbox of key %v from %s to %s: %s exists (%s); refusing to overwrite it, move it away and retry", e.Key, cur, target, target, tk))
	case cur == "" && tk != missing:
		cur = target
	}

	intent := record{Key: e.Key}
	if rec != nil {
		intent = *rec
	}
	switch {
	case cur == "":
		if s.cfg.DryRun {
			log.Info("dry run: would create mailbox", "gid", r.gid, "quota", r.quota)
			return nil
		}
		intent.Moving = target
		if err := s.writeRecord(&intent); err != nil {
			return err
		}
		if err := hook("intent"); err != nil {
			return err
		}
		if err := s.create(target, r, e.Key); err != nil {
			return err
		}
		if err := hook("created"); err != nil {
			return err
		}
		s.created.Inc()
		log.Info("mailbox created", "gid", r.gid, "quota", r.quota)
	case cur != target:
		if s.cfg.DryRun {
			log.Info("dry run: would move mailbox", "from", cur)
			return nil
		}
		if curKind == unowned {
			// Claim it first: the owner file moves with it, so a
			// crash after the rename still finds it ours there.
			if err := writeFileAtomic(s.root, "", path.Join(cur, ownerFileName), s.ownerBytes(e.Key, nil), quotaMode, s.ownerOf(cur), nil); err != nil {
				return err
			}
		}
		intent.Deleted, intent.Path, intent.Moving = false, cur, target
		if err := s.writeRecord(&intent); err != nil {
			return err
		}
		if err := hook("intent"); err != nil {
			return err
		}
		if err := s.move(cur, target, e.Key); err != nil {
			return err
		}
		if err := hook("moved"); err != nil {
			return err
		}
		s.moved.Inc()
		log.Info("mailbox moved", "from", cur)
		fallthrough
	default:
		if err := s.ensure(target, r, e.Key, tk == unowned, log); err != nil {
			return err
		}
	}
	if s.cfg.DryRun {
		return nil
	}
	return s.putRecord(rec, &record{Key: e.Key, Version: e.Version().String(), Path: target})
}

// candidates are the places a key's mailbox may be, in the order they are
// tried: where its record says, where an interrupted step may have put it,
// where the old row says.
type candidates []candidate

type candidate struct {
	path string
	// mustOwn: only a mailbox whose owner file names the key counts. An
	// interrupted step's destination is such a place: mailstore claims a
	// mailbox before it moves it there, and whatever else is there is
	// not the key's.
	mustOwn bool
}

func (cs *candidates) add(p string, mustOwn bool) {
	if p == "" {
		return
	}
	for _, c := range *cs {
		if c.path == p {
			return
		}
	}
	*cs = append(*cs, candidate{path: p, mustOwn: mustOwn})
}

func (cs *candidates) drop(p string) {
	*cs = slices.DeleteFunc(*cs, func(c candidate) bool { return c.path == p })
}

func (cs candidates) paths() []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.path
	}
	return out
}

// find returns the first candidate holding the key's mailbox (one it owns,
// or, where allowed, one nobody owns), and what it found there; "" when
// none does.
func (s *Store) find(cs candidates, key []string) (string, kind, error) {
	for _, c := range cs {
		k, _, err := s.inspect(c.path, key)
		if err != nil {
			return "", missing, err
		}
		if k == ours || k == unowned && !c.mustOwn {
			return c.path, k, nil
		}
	}
	return "", missing, nil
}

// ownerOf is the owner a file written into the mailbox p gets: the
// mailbox's own, when ownership is managed.
func (s *Store) ownerOf(p string) *ownership {
	if !s.chown {
		return nil
	}
	fi, err := s.root.Lstat(p)
	if err != nil {
		return nil
	}
	uid, gid, ok := statOwner(fi)
	if !ok {
		return nil
	}
	return &ownership{uid: uid, gid: gid}
}

// create builds the mailbox in a temporary directory next to its place —
// Maildir, quota file, owner file, ownership — and renames it into place,
// so a mail server sees all of it or nothing.
func (s *Store) create(p string, r row, key []string) error {
	domain, _ := splitMailbox(p)
	createdDomain, err := mkdirAll(s.root, domain, domainMode)
	if err != nil {
		return err
	}
	tmp := path.Join(domain, tempName())
	if err := s.root.Mkdir(tmp, mailboxMode); err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	done := false
	defer func() {
		if !done {
			_ = s.root.RemoveAll(tmp)
		}
	}()
	md := path.Join(tmp, maildirName)
	dirs := []string{tmp, md, md + "/cur", md + "/new", md + "/tmp"}
	for _, d := range dirs[1:] {
		if err := s.root.Mkdir(d, mailboxMode); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	own := s.want(r.gid)
	for _, d := range dirs {
		// Mkdir obeys the umask; the mode must not.
		if err := s.root.Chmod(d, mailboxMode); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", d, err)
		}
		if own != nil {
			if err := s.root.Lchown(d, own.uid, own.gid); err != nil {
				return fmt.Errorf("giving %s to %d:%d: %w", d, own.uid, own.gid, err)
			}
		}
	}
	if err := s.writeNew(path.Join(md, maildirsizeName), newQuotaFile(r.quota, 0, 0), quotaMode, own); err != nil {
		return err
	}
	if err := s.writeNew(path.Join(tmp, ownerFileName), s.ownerBytes(key, nil), quotaMode, own); err != nil {
		return err
	}
	for _, d := range []string{md, tmp} {
		if err := syncDir(s.root, d); err != nil {
			return err
		}
	}
	if err := renameNoReplace(s.root, tmp, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating %s: it appeared meanwhile; retrying", p)
		}
		return err
	}
	done = true
	return syncUp(s.root, domain, createdDomain)
}

// writeNew writes a file that does not exist yet, in a directory nobody else
// sees yet.
func (s *Store) writeNew(p string, data []byte, perm os.FileMode, own *ownership) error {
	f, err := s.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("creating %s: %w", p, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
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
	if err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}

// move renames the mailbox from to to, never over anything.
func (s *Store) move(from, to string, key []string) error {
	domain, _ := splitMailbox(to)
	created, err := mkdirAll(s.root, domain, domainMode)
	if err != nil {
		return err
	}
	if err := renameNoReplace(s.root, from, to); err != nil {
		switch {
		case errors.Is(err, fs.ErrExist):
			k, o, ierr := s.inspect(to, key)
			if ierr == nil && k == otherKey {
				return fmt.Errorf("%s holds the mailbox of key %v, which has not moved away yet; retrying", to, o.Key)
			}
			return consumers.Permanent(fmt.Errorf("moving the mailbox of key %v from %s to %s: %s exists; refusing to overwrite it, move it away and retry", key, from, to, to))
		case errors.Is(err, syscall.EXDEV):
			return consumers.Permanent(fmt.Errorf("moving the mailbox of key %v from %s to %s: they are on different file systems; mailstore moves mailboxes only within one", key, from, to))
		}
		return err
	}
	if err := syncDir(s.root, path.Dir(from)); err != nil {
		return err
	}
	return syncUp(s.root, domain, created)
}

// ensure repairs an existing mailbox: its Maildir folders and modes, its
// owner file, its quota and its ownership. What is right is left alone, so
// a repeat changes nothing. adopted marks a mailbox mailstore did not make,
// whose every file is given to the mailbox's owner.
func (s *Store) ensure(p string, r row, key []string, adopted bool, log *slog.Logger) error {
	dry := s.cfg.DryRun
	own := s.want(r.gid)
	if !dry {
		s.cleanTemps(p)
	}
	md := path.Join(p, maildirName)
	maildirMissing := false
	for _, d := range []string{p, md, md + "/cur", md + "/new", md + "/tmp"} {
		fi, err := s.root.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist) || (dry && maildirMissing):
			if d == md {
				maildirMissing = true
			}
			if dry {
				log.Info("dry run: would create folder", "folder", d)
				continue
			}
			if err := s.root.Mkdir(d, mailboxMode); err != nil {
				return fmt.Errorf("creating %s: %w", d, err)
			}
			if err := s.root.Chmod(d, mailboxMode); err != nil {
				return fmt.Errorf("setting the mode of %s: %w", d, err)
			}
			if own != nil {
				if err := s.root.Lchown(d, own.uid, own.gid); err != nil {
					return fmt.Errorf("giving %s to %d:%d: %w", d, own.uid, own.gid, err)
				}
			}
			if err := syncDir(s.root, path.Dir(d)); err != nil {
				return err
			}
			log.Info("mailbox folder created", "folder", d)
		case err != nil:
			return fmt.Errorf("looking at %s: %w", d, err)
		case !fi.IsDir():
			return consumers.Permanent(fmt.Errorf("%s is not a directory (%s); repair the mailbox by hand, then replay the change", d, fi.Mode().Type()))
		case fi.Mode().Perm() != mailboxMode:
			if dry {
				log.Info("dry run: would set mode", "folder", d, "mode", fmt.Sprintf("%#o", uint32(mailboxMode)))
				continue
			}
			if err := s.root.Chmod(d, mailboxMode); err != nil {
				return fmt.Errorf("setting the mode of %s: %w", d, err)
			}
		}
	}

	// The owner file says this mailbox is the key's, and no longer
	// archived if an interrupted delete marked it.
	if o, err := s.readOwner(p); err != nil || o.Table != s.tableID || !slices.Equal(o.Key, key) || o.ArchivedAt != nil {
		if dry {
			log.Info("dry run: would write owner file")
		} else if err := writeFileAtomic(s.root, "", path.Join(p, ownerFileName), s.ownerBytes(key, nil), quotaMode, own, nil); err != nil {
			return err
		}
	}

	if err := s.ensureQuota(md, r.quota, own, dry || maildirMissing, log); err != nil {
		return err
	}

	if own != nil {
		fi, err := s.root.Lstat(p)
		if err != nil {
			return fmt.Errorf("looking at %s: %w", p, err)
		}
		if uid, gid, ok := statOwner(fi); adopted || !ok || uid != own.uid || gid != own.gid {
			if dry {
				log.Info("dry run: would change ownership", "uid", own.uid, "gid", own.gid)
				return nil
			}
			n, err := chownTree(s.root, p, own.uid, own.gid)
			if err != nil {
				return err
			}
			if n > 0 {
				s.ownership.Inc()
				log.Info("mailbox given to a new owner", "uid", own.uid, "gid", own.gid, "entries", n)
			}
		}
	}
	return nil
}

// errQuotaRaced abandons a quota write when the mail server changed the
// file between our read and our rename.
var errQuotaRaced = errors.New("maildirsize changed while it was rewritten")

// ensureQuota makes the Maildir's maildirsize carry limit, keeping its usage
// lines, or rebuilds it from the messages when it cannot be read. dry only
// logs.
func (s *Store) ensureQuota(md string, limit int64, own *ownership, dry bool, log *slog.Logger) error {
	p := path.Join(md, maildirsizeName)
	for attempt := 0; ; attempt++ {
		data, exists, err := s.readQuota(p)
		if err != nil {
			return err
		}
		scan := func() (int64, int64, error) { return scanUsage(s.root.FS(), md) }
		if dry && !exists {
			scan = func() (int64, int64, error) { return 0, 0, nil }
		}
		out, changed, err := withLimit(data, exists, limit, scan)
		if err != nil {
			return err
		}
		if !changed {
			return nil
		}
		if dry {
			log.Info("dry run: would write quota file", "quota", limit)
			return nil
		}
		// The temporary file goes to the Maildir's own tmp folder, made for
		// this; a mail server cleans what a crash leaves there.
		err = writeFileAtomic(s.root, path.Join(md, "tmp"), p, out, quotaMode, own, func() error {
			// A mail server appends usage lines without a lock: do not
			// rename over a line it added after our read.
			now, nowExists, err := s.readQuota(p)
			if err != nil {
				return err
			}
			if nowExists != exists || !bytes.Equal(now, data) {
				return errQuotaRaced
			}
			return nil
		})
		if errors.Is(err, errQuotaRaced) && attempt < 5 {
			continue
		}
		if err != nil {
			return err
		}
		s.quotas.Inc()
		log.Info("quota file written", "quota", limit)
		return nil
	}
}

// readQuota reads a maildirsize; a missing one (or a symlink, which is
// replaced rather than followed) does not exist.
func (s *Store) readQuota(p string) ([]byte, bool, error) {
	fi, err := s.root.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("looking at %s: %w", p, err)
	case fi.Mode().Type() == fs.ModeSymlink:
		return nil, false, nil
	case !fi.Mode().IsRegular():
		return nil, false, consumers.Permanent(fmt.Errorf("%s is not a regular file; repair the mailbox by hand, then replay the change", p))
	}
	b, err := s.root.ReadFile(p)
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", p, err)
	}
	return b, true, nil
}

// archiveNames returns the names a delete at time at may give the mailbox p
// in the archive: <username>-<time>, and, if that is taken by another
// mailbox, the same with the key's hash.
func (s *Store) archiveNames(p string, at time.Time, key []string) []string {
	x := archiveName(s.archive, p, at)
	return []string{x, x + "-" + keyHash(key)[:12]}
}

// archiveKey moves the key's mailbox into the archive and leaves a
// tombstone at version v. oldPath is where the deleted row said the mailbox
// was ("" when unknown).
func (s *Store) archiveKey(key []string, rec *record, oldPath string, at time.Time, v change.Version) error {
	// Where the mailbox may be, and where an earlier run of this very
	// delete may have archived it already.
	var live, archived candidates
	if rec != nil && !rec.Deleted {
		live.add(rec.Path, false)
	}
	if rec != nil && inDir(rec.Moving, s.archive) {
		archived.add(rec.Moving, true)
	} else if rec != nil {
		live.add(rec.Moving, true)
	}
	live.add(oldPath, false)
	for _, c := range live {
		for _, a := range s.archiveNames(c.path, at, key) {
			archived.add(a, true)
		}
	}
	unlock := s.locks.lock(append(live.paths(), archived.paths()...)...)
	defer unlock()
	log := s.log.With("key", key, "version", v.String())

	done, _, err := s.find(archived, key)
	if err != nil {
		return err
	}
	if done != "" {
		if s.cfg.DryRun {
			return nil
		}
		return s.putRecord(rec, &record{Key: key, Version: v.String(), Deleted: true, Path: done})
	}
	cur, _, err := s.find(live, key)
	if err != nil {
		return err
	}
	if cur == "" {
		if s.cfg.DryRun {
			log.Info("dry run: no mailbox to archive")
			return nil
		}
		log.Debug("no mailbox to archive; tombstone written")
		return s.putRecord(rec, &record{Key: key, Version: v.String(), Deleted: true})
	}
	dest := ""
	for _, a := range s.archiveNames(cur, at, key) {
		k, _, err := s.inspect(a, key)
		if err != nil {
			return err
		}
		if k == missing {
			dest = a
			break
		}
	}
	if dest == "" {
		return consumers.Permanent(fmt.Errorf("archiving %s of key %v: the archive names %v are taken; move them away and retry", cur, key, s.archiveNames(cur, at, key)))
	}
	if s.cfg.DryRun {
		log.Info("dry run: would archive mailbox", "path", cur, "archive", dest)
		return nil
	}
	at = at.UTC()
	if err := writeFileAtomic(s.root, "", path.Join(cur, ownerFileName), s.ownerBytes(key, &at), quotaMode, s.ownerOf(cur), nil); err != nil {
		return err
	}
	if err := hook("marked"); err != nil {
		return err
	}
	intent := record{Key: key, Path: cur, Moving: dest}
	if rec != nil {
		intent.Version = rec.Version
	}
	if err := s.writeRecord(&intent); err != nil {
		return err
	}
	if err := hook("intent"); err != nil {
		return err
	}
	created, err := mkdirAll(s.root, path.Dir(dest), privateMode)
	if err != nil {
		return err
	}
	if err := renameNoReplace(s.root, cur, dest); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("archiving %s: %s appeared meanwhile; retrying", cur, dest)
		}
		return err
	}
	if err := syncDir(s.root, path.Dir(cur)); err != nil {
		return err
	}
	if err := syncUp(s.root, path.Dir(dest), created); err != nil {
		return err
	}
	if err := hook("archived"); err != nil {
		return err
	}
	s.archived.Inc()
	log.Info("mailbox archived", "path", cur, "archive", dest)
	return s.writeRecord(&record{Key: key, Version: v.String(), Deleted: true, Path: dest})
}

// truncate archives the mailbox of every key applied before the truncate,
// then records the table's floor. Mailboxes come first: a crash in between
// repeats the truncate on redelivery instead of skipping it.
func (s *Store) truncate(e *change.Envelope) error {
	tv := e.Version()
	dir := path.Join(s.state, "keys")
	ents, err := fs.ReadDir(s.root.FS(), dir)
	if err != nil && !(s.cfg.DryRun && errors.Is(err, fs.ErrNotExist)) {
		return fmt.Errorf("listing guard records: %w", err)
	}
	n := 0
	for _, ent := range ents {
		if !ent.Type().IsRegular() || !strings.HasSuffix(ent.Name(), ".json") || strings.HasPrefix(ent.Name(), tmpPrefix) {
			continue
		}
		rec, err := s.readRecordAt(path.Join(dir, ent.Name()))
		if err != nil {
			return err
		}
		if rec == nil || rec.Deleted {
			continue
		}
		if v, ok, _ := rec.version(); ok && !v.Less(tv) {
			continue
		}
		if err := s.archiveKey(rec.Key, rec, "", e.At, tv); err != nil {
			return err
		}
		n++
	}
	if s.cfg.DryRun {
		s.log.Info("dry run: table truncated: would archive mailboxes", "mailboxes", n, "version", tv.String())
		return nil
	}
	if err := writeFileAtomic(s.root, "", path.Join(s.state, "floor"), []byte(tv.String()+"\n"), 0o600, nil, nil); err != nil {
		return err
	}
	s.log.Info("table truncated: mailboxes archived", "mailboxes", n, "version", tv.String())
	return nil
}

// cleanTemps removes the temporary files a crash left in a mailbox
// directory (owner file writes). The caller holds the mailbox's lock.
func (s *Store) cleanTemps(p string) {
	ents, err := fs.ReadDir(s.root.FS(), p)
	if err != nil {
		return
	}
	for _, ent := range ents {
		if !strings.HasPrefix(ent.Name(), tmpPrefix) {
			continue
		}
		if fi, err := ent.Info(); err == nil && staleTemp(ent.Name(), fi.ModTime()) {
			_ = s.root.RemoveAll(path.Join(p, ent.Name()))
		}
	}
}

// removeStaleTemps removes, at start, the half-built mailboxes and guard
// record writes a crash left behind.
func (s *Store) removeStaleTemps() {
	dirs := []string{path.Join(s.state, "keys"), s.state}
	if ents, err := fs.ReadDir(s.root.FS(), "."); err == nil {
		for _, ent := range ents {
			if ent.IsDir() && !strings.HasPrefix(ent.Name(), ".") {
				dirs = append(dirs, ent.Name())
			}
		}
	}
	for _, d := range dirs {
		ents, err := fs.ReadDir(s.root.FS(), d)
		if err != nil {
			continue
		}
		for _, ent := range ents {
			if !strings.HasPrefix(ent.Name(), tmpPrefix) {
				continue
			}
			fi, err := ent.Info()
			if err != nil || !staleTemp(ent.Name(), fi.ModTime()) {
				continue
			}
			if err := s.root.RemoveAll(path.Join(d, ent.Name())); err == nil {
				s.log.Info("removed a temporary file left by an earlier run", "path", path.Join(d, ent.Name()))
			}
		}
	}
}

// crashHook, set by tests, runs after each step a crash could interrupt
// ("intent", "created", "moved", "marked", "archived"); an error from it
// stops the change there, as a crash would.
var crashHook func(step string) error

func hook(step string) error {
	if crashHook != nil {
		return crashHook(step)
	}
	return nil
}

// fileName makes a schema or table name safe as one file name: letters,
// digits, '_' and '-' stay, every other byte becomes %XX.
func fileName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	if b.Len() > 100 {
		return "h-" + keyHash([]string{s})
	}
	return b.String()
}
