package mailstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// record is the guard record of one key, in
// <root>/.herald-mailstore/<schema>.<table>/keys/<hash>.json.
type record struct {
	Key []string `json:"key"`
	// Version is the newest version applied; empty while only an intent
	// was recorded.
	Version string `json:"version,omitempty"`
	// Deleted marks a tombstone: the row was deleted at Version.
	Deleted bool `json:"deleted,omitempty"`
	// Path is where the key's mailbox is (live) or was archived to
	// (deleted), relative to the root; empty when there is none.
	Path string `json:"path,omitempty"`
	// Moving is where a create, move or archive that has started may
	// have put the mailbox already. Written before the step, cleared by
	// the record written after it.
	Moving string `json:"moving,omitempty"`
}

// version returns the applied version, if any.
func (r *record) version() (change.Version, bool, error) {
	if r == nil || r.Version == "" {
		return change.Version{}, false, nil
	}
	v, err := change.ParseVersion(r.Version)
	if err != nil {
		return change.Version{}, false, err
	}
	return v, true, nil
}

// owner is the content of the owner file every mailbox carries.
type owner struct {
	Table string   `json:"table"`
	Key   []string `json:"key"`
	// ArchivedAt is the time of the delete that archived the mailbox,
	// from which PurgeAfter counts.
	ArchivedAt *time.Time `json:"archived_at,omitempty"`
}

// kind is what inspect finds at a path.
type kind int

const (
	missing   kind = iota
	notDir         // a file, symlink or other non-directory
	ours           // a mailbox owned by the key asked about
	unowned        // a directory without owner file: adopted by whoever needs it
	otherKey       // a mailbox owned by another key of the same table
	foreignBx      // a mailbox of another table, or an owner file mailstore cannot read
)

func (k kind) String() string {
	return [...]string{"missing", "not a directory (or in a folder that is a symlink)", "ours", "unowned", "another user's mailbox", "a mailbox mailstore does not manage"}[k]
}

// keyHash names a key's record: a hash, since key values may hold anything.
func keyHash(key []string) string {
	b, _ := json.Marshal(key)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:20])
}

func (s *Store) recordPath(key []string) string {
	return path.Join(s.state, "keys", keyHash(key)+".json")
}

// readRecord returns the key's record, or nil when it has none.
func (s *Store) readRecord(key []string) (*record, error) {
	return s.readRecordAt(s.recordPath(key))
}

// readRecordAt reads the record at p, or nil when there is none. A damaged
// record is a permanent error: retrying cannot repair it.
func (s *Store) readRecordAt(p string) (*record, error) {
	b, err := s.root.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading guard record %s: %w", p, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, consumers.Permanent(fmt.Errorf("guard record %s is damaged (%v); remove it and replay the key's changes", p, err))
	}
	if _, _, err := r.version(); err != nil {
		return nil, consumers.Permanent(fmt.Errorf("guard record %s is damaged (%v); remove it and replay the key's changes", p, err))
	}
	return &r, nil
}

// putRecord writes r unless old already says the same, so that handling a
// change again writes nothing.
func (s *Store) putRecord(old *record, r *record) error {
	if old != nil && old.Version == r.Version && old.Deleted == r.Deleted && old.Path == r.Path && old.Moving == r.Moving && slices.Equal(old.Key, r.Key) {
		return nil
	}
	return s.writeRecord(r)
}

// writeRecord replaces the key's record atomically and durably.
func (s *Store) writeRecord(r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return writeFileAtomic(s.root, "", s.recordPath(r.Key), append(b, '\n'), 0o600, nil, nil)
}

// readFloor returns the version of the table's last truncate.
func (s *Store) readFloor() (change.Version, bool, error) {
	p := path.Join(s.state, "floor")
	b, err := s.root.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return change.Version{}, false, nil
	}
	if err != nil {
		return change.Version{}, false, fmt.Errorf("reading truncate floor: %w", err)
	}
	v, err := change.ParseVersion(strings.TrimSpace(string(b)))
	if err != nil {
		return change.Version{}, false, fmt.Errorf("truncate floor %s is damaged: %w", p, err)
	}
	return v, true, nil
}

// inspect tells what the path p holds for key. A mailbox whose parent
// folder is not a plain directory (a symlink, even one inside the root) is
// notDir: mailstore never reaches a mailbox through a symlink.
func (s *Store) inspect(p string, key []string) (kind, *owner, error) {
	pfi, err := s.root.Lstat(path.Dir(p))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return missing, nil, nil
	case err != nil:
		return missing, nil, fmt.Errorf("looking at %s: %w", path.Dir(p), err)
	case !pfi.IsDir():
		return notDir, nil, nil
	}
	fi, err := s.root.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return missing, nil, nil
	case err != nil:
		return missing, nil, fmt.Errorf("looking at %s: %w", p, err)
	case !fi.IsDir():
		return notDir, nil, nil
	}
	o, err := s.readOwner(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return unowned, nil, nil
	case err != nil:
		return foreignBx, nil, nil
	case o.Table != s.tableID:
		return foreignBx, o, nil
	case !slices.Equal(o.Key, key):
		return otherKey, o, nil
	}
	return ours, o, nil
}

// readOwner reads the owner file of the mailbox at p.
func (s *Store) readOwner(p string) (*owner, error) {
	op := path.Join(p, ownerFileName)
	fi, err := s.root.Lstat(op)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", op)
	}
	b, err := s.root.ReadFile(op)
	if err != nil {
		return nil, err
	}
	var o owner
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("reading %s: %w", op, err)
	}
	return &o, nil
}

// ownerBytes renders an owner file.
func (s *Store) ownerBytes(key []string, archivedAt *time.Time) []byte {
	b, _ := json.Marshal(owner{Table: s.tableID, Key: key, ArchivedAt: archivedAt})
	return append(b, '\n')
}

// row is what mailstore reads of a row.
type row struct {
	gid      int
	domain   string // the dba column
	username string
	quota    int64
}

// maxID is the largest uid or gid accepted ((uid_t)-1 means "unchanged"
// to chown, so it is not one).
const maxID = 1<<32 - 2

// Column names read from the change.
const (
	colGID      = "gid"
	colDomain   = "dba"
	colUsername = "username"
	colQuota    = "quota_bytes"
)

// decodeColumns parses a row object of a change.
func decodeColumns(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if len(raw) == 0 {
		return nil, errors.New("the change carries no row")
	}
	var cols map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cols); err != nil {
		return nil, fmt.Errorf("the row is not a JSON object: %w", err)
	}
	return cols, nil
}

func textColumn(cols map[string]json.RawMessage, name string) (string, error) {
	raw, ok := cols[name]
	if !ok {
		return "", fmt.Errorf("column %q is not in the change; watch the table with --columns %s,%s,%s,%s", name, colGID, colDomain, colUsername, colQuota)
	}
	var s *string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("column %q is not text (%.40s)", name, raw)
	}
	if s == nil {
		return "", fmt.Errorf("column %q is null", name)
	}
	return *s, nil
}

func intColumn(cols map[string]json.RawMessage, name string) (int64, error) {
	raw, ok := cols[name]
	if !ok {
		return 0, fmt.Errorf("column %q is not in the change; watch the table with --columns %s,%s,%s,%s", name, colGID, colDomain, colUsername, colQuota)
	}
	t := string(bytes.TrimSpace(raw))
	if t == "null" {
		return 0, fmt.Errorf("column %q is null", name)
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("column %q is not a whole number that fits 64 bits (%.40s)", name, t)
	}
	return n, nil
}

// decodeRow reads the columns mailstore needs from a new row. Its errors
// describe data that can never be applied.
func decodeRow(raw json.RawMessage) (row, error) {
	cols, err := decodeColumns(raw)
	if err != nil {
		return row{}, err
	}
	var r row
	if r.domain, err = textColumn(cols, colDomain); err != nil {
		return row{}, err
	}
	if r.username, err = textColumn(cols, colUsername); err != nil {
		return row{}, err
	}
	gid, err := intColumn(cols, colGID)
	if err != nil {
		return row{}, err
	}
	if gid < 1 || gid > maxID {
		return row{}, fmt.Errorf("gid %d is not a group mailboxes can be given to (1 to %d; never root's 0)", gid, int64(maxID))
	}
	r.gid = int(gid)
	if r.quota, err = intColumn(cols, colQuota); err != nil {
		return row{}, err
	}
	if r.quota < 0 {
		return row{}, fmt.Errorf("quota_bytes %d is negative; use 0 for no limit", r.quota)
	}
	return r, nil
}

// rowPath returns the mailbox path named by a row object (an old row), or
// "" when it names none that could exist.
func (s *Store) rowPath(raw json.RawMessage) string {
	cols, err := decodeColumns(raw)
	if err != nil {
		return ""
	}
	d, err1 := textColumn(cols, colDomain)
	u, err2 := textColumn(cols, colUsername)
	if err1 != nil || err2 != nil {
		return ""
	}
	p, err := s.mailboxPath(d, u)
	if err != nil {
		return ""
	}
	return p
}
