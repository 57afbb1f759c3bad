// Package filesync keeps one JSON file per row of a table in step with the
// database: the consumer behind herald-filesync. With the defaults it writes
// the value column of public.__cmdb to <root>/<hostkey>/host_specific.json,
// the layout CFEngine hubs read.
//
// Every file operation goes through an os.Root, so nothing outside the root
// is touched and symlinks cannot lead out of it. Files are replaced
// atomically (a temporary file in the same directory, fsync, rename,
// directory fsync) and identical content is not rewritten. The Syncer is a
// consumers.BatchHandler: the changes a worker has queued are written
// together — every temporary file, then their fsyncs, then the renames,
// then one fsync per directory — and acked once all of that is durable.
//
// The stale-version guard lives with the data: each file carries the version
// of the change it holds in extended attributes, set on the temporary file
// before the rename, so content and version change together. A deleted key
// leaves a tombstone, and a TRUNCATE a table-level floor, under
// <root>/.herald-filesync/, so an older insert redelivered later never
// brings a file back. The guard's state is also kept in memory (read from
// disk on first use) so that checking a change costs no system call; see
// stateCache for why that can never let an older version win.
package filesync

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// Extended attributes set on every file filesync writes.
const (
	XattrVersion = "user.herald.version" // "<epoch>:<log id>" of the change the file holds
	XattrTable   = "user.herald.table"   // "schema.table" the file belongs to
	XattrKey     = "user.herald.key"     // the row's key, a JSON array of strings
)

// tmpPrefix starts the name of every temporary file. Keys never start with a
// dot, so no key's file looks like one.
const tmpPrefix = ".herald-tmp-"

// Option changes how New builds a Syncer.
type Option func(*options)

type options struct {
	logger *slog.Logger
	reg    prometheus.Registerer
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers filesync's metrics on r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// Syncer is the filesync handler: a consumers.BatchHandler (and so a
// consumers.Handler) and a consumers.Guard. It is safe for concurrent use by
// the runtime's workers (one key at a time per file), and by several
// processes sharing one root.
type Syncer struct {
	cfg     Config
	schema  string
	table   string
	tableID string // schema.table, as stored in XattrTable
	tmpl    template
	root    *os.Root
	state   string // state directory of this table, relative to the root
	allowed map[string]bool
	log     *slog.Logger

	// dirMu keeps directory creation and empty-directory removal apart, so
	// one key removing a shared, now-empty directory cannot pull it from
	// under another key's temporary file. Creators share it; removal takes
	// it alone.
	dirMu sync.RWMutex

	lock   *commitLock
	cache  *stateCache
	dirs   *dirCache
	sumKey maphash.Seed

	// fsync makes a file or directory durable: (*os.File).Sync, which is
	// fsync(2). Tests replace it to make one file's sync fail.
	fsync func(*os.File) error

	written   prometheus.Counter
	unchanged prometheus.Counter
	removed   prometheus.Counter
}

// New checks cfg, creates the root directory if it is missing, opens it and
// checks that its file system keeps extended attributes. Close the Syncer
// when done.
func New(cfg Config, opts ...Option) (*Syncer, error) {
	cfg.Keys = append([]string(nil), cfg.Keys...)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{}
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
	tmpl, _ := parseTemplate(cfg.Path)
	if err := os.MkdirAll(cfg.Dir, cfg.DirMode); err != nil {
		return nil, fmt.Errorf("creating filesync root %s: %w", cfg.Dir, err)
	}
	root, err := os.OpenRoot(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("opening filesync root %s: %w", cfg.Dir, err)
	}
	s := &Syncer{
		cfg:     cfg,
		schema:  schema,
		table:   table,
		tableID: schema + "." + table,
		tmpl:    tmpl,
		root:    root,
		state:   path.Join(stateDirName, fileName(schema)+"."+fileName(table)),
		log:     o.logger.With("table", schema+"."+table),
		cache:   newStateCache(maxCachedKeys),
		dirs:    newDirCache(dirCacheSize()),
		sumKey:  maphash.MakeSeed(),
		fsync:   (*os.File).Sync,
	}
	if len(cfg.Keys) > 0 {
		s.allowed = make(map[string]bool, len(cfg.Keys))
		for _, k := range cfg.Keys {
			s.allowed[k] = true
		}
	}
	if err := s.registerMetrics(o.reg); err != nil {
		root.Close()
		return nil, err
	}
	if err := root.MkdirAll(path.Join(s.state, "tombstones"), 0o755); err != nil {
		root.Close()
		return nil, fmt.Errorf("creating filesync state directory %s in %s: %w", s.state, cfg.Dir, err)
	}
	if err := s.probeXattr(); err != nil {
		root.Close()
		return nil, err
	}
	if s.lock, err = openCommitLock(root, path.Join(s.state, "lock")); err != nil {
		root.Close()
		return nil, err
	}
	s.removeStaleTemps()
	return s, nil
}

// Close releases the root and the directories kept open.
func (s *Syncer) Close() error {
	s.dirs.dropAll()
	_ = s.lock.Close()
	return s.root.Close()
}

// ConsumerConfig is Config.ConsumerConfig for the Syncer's configuration.
func (s *Syncer) ConsumerConfig(base consumers.Config) consumers.Config {
	return s.cfg.ConsumerConfig(base)
}

func (s *Syncer) registerMetrics(reg prometheus.Registerer) error {
	mk := func(name, help string) (prometheus.Counter, error) {
		return consumers.TableCounter(reg, name, help, s.tableID)
	}
	var err error
	if s.written, err = mk("herald_filesync_files_written_total", "Files written (created or replaced)."); err != nil {
		return err
	}
	if s.unchanged, err = mk("herald_filesync_files_unchanged_total", "Changes whose content was already in the file: not rewritten."); err != nil {
		return err
	}
	s.removed, err = mk("herald_filesync_files_removed_total", "Files removed by deletes and truncates.")
	return err
}

// Handle applies one change of the table: HandleBatch with one change.
func (s *Syncer) Handle(ctx context.Context, e *change.Envelope) error {
	return s.HandleBatch(ctx, []*change.Envelope{e})[0]
}

// HandleBatch applies changes of the table as one group, and returns one
// error per change. The files written are made durable together: every
// temporary file is written and tagged first, then they are fsynced, then
// renamed over their files, then each directory is fsynced once; a change
// is reported applied only after all of its steps are durable. A change
// that fails does not stop the others. Deletes and truncates are applied
// one by one after the group.
func (s *Syncer) HandleBatch(ctx context.Context, batch []*change.Envelope) []error {
	errs := make([]error, len(batch))
	writes := make([]*fileWrite, 0, len(batch))
	var alone []int
	var paths map[string]bool
	if len(batch) > 1 {
		paths = make(map[string]bool, len(batch))
	}
	for i, e := range batch {
		w, err := s.plan(e)
		switch {
		case err != nil:
			errs[i] = err
		case w == nil:
			alone = append(alone, i)
		case w.ignore:
		case paths[w.p]:
			// Two changes for one file (the runtime never sends that):
			// the later one goes after the group.
			alone = append(alone, i)
		default:
			if paths != nil {
				paths[w.p] = true
			}
			w.i = i
			writes = append(writes, w)
		}
	}
	s.commitWrites(writes, errs)
	for _, i := range alone {
		errs[i] = s.handleOne(ctx, batch[i])
	}
	return errs
}

// plan checks a change and, for a write, returns what to write. It returns
// nil for a change applied on its own (a delete, a truncate).
func (s *Syncer) plan(e *change.Envelope) (*fileWrite, error) {
	if e.Schema != s.schema || e.Table != s.table {
		return nil, consumers.Permanent(fmt.Errorf("change of table %s.%s, but this filesync follows %s; check the consumer's filter subjects", e.Schema, e.Table, s.tableID))
	}
	switch e.Op {
	case change.OpInsert, change.OpUpdate, change.OpSnapshot:
	case change.OpDelete, change.OpTruncate:
		return nil, nil
	default:
		return nil, consumers.Permanent(fmt.Errorf("unknown op %q", e.Op))
	}
	if !s.keyAllowed(e.Key) {
		s.log.Debug("key not in this instance's keys; ignored", "key", e.Key)
		return &fileWrite{ignore: true}, nil
	}
	p, err := s.tmpl.render(e.Key)
	if err != nil {
		return nil, consumers.Permanent(err)
	}
	data, err := s.value(e)
	if err != nil {
		return nil, consumers.Permanent(err)
	}
	return &fileWrite{e: e, p: p, data: data}, nil
}

// handleOne applies a change that is not part of a group.
func (s *Syncer) handleOne(ctx context.Context, e *change.Envelope) error {
	w, err := s.plan(e)
	switch {
	case err != nil:
		return err
	case w != nil && w.ignore:
		return nil
	case w != nil:
		errs := []error{nil}
		s.commitWrites([]*fileWrite{w}, errs)
		return errs[0]
	case e.Op == change.OpTruncate:
		return s.truncate(ctx, e.Version())
	}
	if !s.keyAllowed(e.Key) {
		s.log.Debug("key not in this instance's keys; ignored", "key", e.Key)
		return nil
	}
	p, err := s.tmpl.render(e.Key)
	if err != nil {
		return consumers.Permanent(err)
	}
	return s.remove(p, e)
}

// Applied returns the newest version applied for the change's key: the one
// its file carries, its tombstone's, or the table's truncate floor,
// whichever is newest. For a truncate, the floor. Once a key has been seen
// it is answered from memory.
func (s *Syncer) Applied(_ context.Context, e *change.Envelope) (change.Version, bool, error) {
	floor, hasFloor, err := s.floorState()
	if err != nil {
		return change.Version{}, false, err
	}
	if e.Op == change.OpTruncate || e.Schema != s.schema || e.Table != s.table || !s.keyAllowed(e.Key) {
		return floor, hasFloor, nil
	}
	p, err := s.tmpl.render(e.Key)
	if err != nil {
		// No file can exist for such a key.
		v, has, err := s.readTombstone(e.Key)
		if err != nil {
			return change.Version{}, false, err
		}
		v, has = keyState{v: v, has: has}.newer(floor, hasFloor)
		return v, has, nil
	}
	st, err := s.keyState(p, e.Key)
	if err != nil {
		return change.Version{}, false, err
	}
	v, has := st.newer(floor, hasFloor)
	return v, has, nil
}

// keyState returns what is known of the key whose file is p, from memory or
// else from disk (its file's attributes and its tombstone).
func (s *Syncer) keyState(p string, key []string) (keyState, error) {
	if st, ok := s.cache.get(p); ok {
		return st, nil
	}
	gen := s.cache.generation()
	fv, ours, err := s.fileVersion(p)
	if err != nil {
		return keyState{}, err
	}
	tv, tomb, err := s.readTombstone(key)
	if err != nil {
		return keyState{}, err
	}
	st := keyState{v: fv, has: ours, tomb: tomb}
	if tomb && (!st.has || st.v.Less(tv)) {
		st.v, st.has = tv, true
	}
	s.cache.fill(gen, p, st)
	return st, nil
}

// floorState returns the table's truncate floor, from memory or disk.
func (s *Syncer) floorState() (change.Version, bool, error) {
	if v, has, ok := s.cache.getFloor(); ok {
		return v, has, nil
	}
	gen := s.cache.generation()
	v, has, err := s.readFloor()
	if err != nil {
		return change.Version{}, false, err
	}
	s.cache.fillFloor(gen, v, has)
	return v, has, nil
}

// lockState takes the commit lock; if another process committed since
// this one last held it, what is cached is read from disk again. The caller
// releases the lock with s.lock.release.
func (s *Syncer) lockState() error {
	foreign, err := s.lock.acquire()
	if err != nil {
		return err
	}
	if foreign {
		s.dropCaches()
	}
	return nil
}

// dropCaches forgets everything kept in memory: another process committed
// to this root.
func (s *Syncer) dropCaches() {
	s.log.Debug("another process changed this root; reading the guard's state from disk again")
	s.cache.dropAll()
	s.dirs.dropAll()
}

func (s *Syncer) keyAllowed(key []string) bool {
	if s.allowed == nil {
		return true
	}
	return len(key) == 1 && s.allowed[key[0]]
}

// value extracts the configured column from the new row, as the bytes to
// write. A JSON string is taken for a text column holding JSON and
// unwrapped; its content must itself be JSON.
func (s *Syncer) value(e *change.Envelope) ([]byte, error) {
	if len(e.New) == 0 {
		return nil, fmt.Errorf("%s change has no new row", e.Op)
	}
	var row map[string]json.RawMessage
	if err := json.Unmarshal(e.New, &row); err != nil {
		return nil, fmt.Errorf("new row is not a JSON object: %w", err)
	}
	raw, ok := row[s.cfg.Column]
	if !ok {
		return nil, fmt.Errorf("column %q is not in the change; is it one of the watched columns (herald watch)?", s.cfg.Column)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var text string
		if err := json.Unmarshal(raw, &text); err != nil {
			return nil, fmt.Errorf("column %q: %w", s.cfg.Column, err)
		}
		if !json.Valid([]byte(text)) {
			return nil, fmt.Errorf("column %q holds text that is not a JSON value (%.60q)", s.cfg.Column, text)
		}
		raw = []byte(strings.TrimSpace(text))
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("column %q is not a JSON value", s.cfg.Column)
	}
	out := make([]byte, 0, len(raw)+1)
	out = append(out, raw...)
	return append(out, '\n'), nil
}

// attrs are the extended attributes of a file holding e.
func (s *Syncer) attrs(e *change.Envelope) ([][2]string, error) {
	key, err := json.Marshal(e.Key)
	if err != nil {
		return nil, err
	}
	return [][2]string{
		{XattrTable, s.tableID},
		{XattrKey, string(key)},
		{XattrVersion, e.Version().String()}, // last: a file with it is complete
	}, nil
}

// fileVersion returns the version the file at p carries, if it is a file of
// this table.
func (s *Syncer) fileVersion(p string) (change.Version, bool, error) {
	v, _, ours, err := s.fileInfo(p)
	return v, ours, err
}

// fileInfo reads the attributes of the file at p; ours is false for a
// missing file or one filesync did not write for this table.
func (s *Syncer) fileInfo(p string) (v change.Version, key []string, ours bool, err error) {
	f, err := s.root.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP) {
			return v, nil, false, nil
		}
		return v, nil, false, fmt.Errorf("opening %s: %w", p, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return v, nil, false, nil
	}
	table, ok, err := getAttr(f, XattrTable)
	if err != nil || !ok || table != s.tableID {
		return v, nil, false, wrapAttr(p, err)
	}
	ver, ok, err := getAttr(f, XattrVersion)
	if err != nil || !ok {
		return v, nil, false, wrapAttr(p, err)
	}
	if v, err = change.ParseVersion(ver); err != nil {
		// Not something filesync wrote: treat as unversioned.
		return v, nil, false, nil
	}
	if k, ok, err := getAttr(f, XattrKey); err == nil && ok {
		_ = json.Unmarshal([]byte(k), &key)
	}
	return v, key, true, nil
}

func wrapAttr(p string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("reading the version of %s: %w", p, err)
}

// tombstone is the record a deleted key leaves.
type tombstone struct {
	Version string   `json:"version"`
	Key     []string `json:"key"`
}

func (s *Syncer) tombstonePath(key []string) string {
	b, _ := json.Marshal(key)
	sum := sha256.Sum256(b)
	return path.Join(s.state, "tombstones", hex.EncodeToString(sum[:20]))
}

func (s *Syncer) writeTombstone(e *change.Envelope) error {
	b, err := json.Marshal(tombstone{Version: e.Version().String(), Key: e.Key})
	if err != nil {
		return err
	}
	return s.writeState(s.tombstonePath(e.Key), append(b, '\n'))
}

func (s *Syncer) readTombstone(key []string) (change.Version, bool, error) {
	b, err := s.root.ReadFile(s.tombstonePath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return change.Version{}, false, nil
	}
	if err != nil {
		return change.Version{}, false, fmt.Errorf("reading tombstone: %w", err)
	}
	var t tombstone
	if err := json.Unmarshal(b, &t); err != nil {
		return change.Version{}, false, fmt.Errorf("reading tombstone %s: %w", s.tombstonePath(key), err)
	}
	v, err := change.ParseVersion(t.Version)
	if err != nil {
		return change.Version{}, false, fmt.Errorf("reading tombstone %s: %w", s.tombstonePath(key), err)
	}
	return v, true, nil
}

// pruneTombstones drops the tombstones a truncate floor makes redundant.
func (s *Syncer) pruneTombstones(floor change.Version) error {
	dir := path.Join(s.state, "tombstones")
	entries, err := fs.ReadDir(s.root.FS(), dir)
	if err != nil {
		return fmt.Errorf("listing tombstones: %w", err)
	}
	for _, ent := range entries {
		if !ent.Type().IsRegular() || strings.HasPrefix(ent.Name(), tmpPrefix) {
			continue
		}
		p := path.Join(dir, ent.Name())
		b, err := s.root.ReadFile(p)
		if err != nil {
			continue
		}
		var t tombstone
		if json.Unmarshal(b, &t) != nil {
			continue
		}
		if v, err := change.ParseVersion(t.Version); err == nil && v.Less(floor) && s.keyAllowed(t.Key) {
			_ = s.root.Remove(p)
		}
	}
	return nil
}

func (s *Syncer) readFloor() (change.Version, bool, error) {
	b, err := s.root.ReadFile(path.Join(s.state, "floor"))
	if errors.Is(err, fs.ErrNotExist) {
		return change.Version{}, false, nil
	}
	if err != nil {
		return change.Version{}, false, fmt.Errorf("reading truncate floor: %w", err)
	}
	v, err := change.ParseVersion(strings.TrimSpace(string(b)))
	if err != nil {
		return change.Version{}, false, fmt.Errorf("reading truncate floor %s: %w", path.Join(s.state, "floor"), err)
	}
	return v, true, nil
}

// writeState replaces a small state file atomically and durably.
func (s *Syncer) writeState(p string, data []byte) error {
	dir := path.Dir(p)
	s.dirMu.RLock()
	created, err := s.mkdirAll(dir)
	var tmp *os.File
	var tmpName string
	if err == nil {
		tmp, tmpName, err = s.createTemp(dir)
	}
	s.dirMu.RUnlock()
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.root.Rename(tmpName, p)
	}
	if err != nil {
		_ = s.root.Remove(tmpName)
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return s.syncDirs(dir, created)
}

// mkdirAll creates dir (relative to the root) and reports whether it had to.
func (s *Syncer) mkdirAll(dir string) (bool, error) {
	if dir == "." {
		return false, nil
	}
	if fi, err := s.root.Stat(dir); err == nil && fi.IsDir() {
		return false, nil
	}
	if err := s.root.MkdirAll(dir, s.cfg.DirMode); err != nil {
		return false, fmt.Errorf("creating directory %s: %w", dir, err)
	}
	return true, nil
}

func (s *Syncer) createTemp(dir string) (*os.File, string, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	name := path.Join(dir, tmpPrefix+hex.EncodeToString(rnd[:]))
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, s.cfg.FileMode)
	if err != nil {
		return nil, "", fmt.Errorf("creating a temporary file in %s: %w", dir, err)
	}
	return f, name, nil
}

// syncDirs makes a rename in dir durable, and, when dir was just created,
// the entries of its new parents too.
func (s *Syncer) syncDirs(dir string, created bool) error {
	for {
		if err := s.syncDir(dir); err != nil {
			return err
		}
		if !created || dir == "." {
			return nil
		}
		dir = path.Dir(dir)
	}
}

func (s *Syncer) syncDir(dir string) error {
	d, err := s.root.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := s.fsync(d); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// probeXattr checks that the root's file system keeps user extended
// attributes, where filesync stores each file's version.
func (s *Syncer) probeXattr() error {
	f, name, err := s.createTemp(s.state)
	if err != nil {
		return err
	}
	defer func() {
		_ = f.Close()
		_ = s.root.Remove(name)
	}()
	if err := setAttrs(f, [][2]string{{XattrVersion, "0:0"}}); err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("the file system of %s does not keep user extended attributes, where filesync records each file's version; use ext4, xfs, btrfs or tmpfs (Linux 6.6 or later)", s.cfg.Dir)
		}
		return fmt.Errorf("setting an extended attribute in %s: %w", s.cfg.Dir, err)
	}
	return nil
}

// removeStaleTemps removes temporary files a crash left behind.
func (s *Syncer) removeStaleTemps() {
	var stale []string
	_ = fs.WalkDir(s.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), tmpPrefix) {
			stale = append(stale, p)
		}
		return nil
	})
	for _, p := range stale {
		if err := s.root.Remove(p); err == nil {
			s.log.Info("removed a temporary file left by an earlier run", "path", p)
		}
	}
}

func setAttrs(f *os.File, attrs [][2]string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for _, a := range attrs {
			if serr = unix.Fsetxattr(int(fd), a[0], []byte(a[1]), 0); serr != nil {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

func getAttr(f *os.File, name string) (string, bool, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return "", false, err
	}
	buf := make([]byte, 256)
	for {
		var n int
		var gerr error
		if err := rc.Control(func(fd uintptr) { n, gerr = unix.Fgetxattr(int(fd), name, buf) }); err != nil {
			return "", false, err
		}
		switch {
		case gerr == nil:
			return string(buf[:n]), true, nil
		case errors.Is(gerr, unix.ENODATA) || errors.Is(gerr, unix.ENOTSUP):
			return "", false, nil
		case errors.Is(gerr, unix.ERANGE) && len(buf) < 1<<16:
			buf = make([]byte, len(buf)*4)
		default:
			return "", false, gerr
		}
	}
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
		sum := sha256.Sum256([]byte(s))
		return "h-" + hex.EncodeToString(sum[:20])
	}
	return b.String()
}
