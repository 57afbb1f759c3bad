package mailstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/consumers/mailstore"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/internal/testproc"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Owner and groups the tests give mailboxes to (as root, no such user needs
// to exist).
const (
	testUID  = 5000
	testGID  = 5000
	testGID2 = 5001
)

var isRoot = os.Geteuid() == 0

// user is a row of mail_users.
type user struct {
	id       int64
	gid      int
	domain   string
	username string
	quota    int64
}

func (u user) json() string {
	b, err := json.Marshal(map[string]any{"id": u.id, "gid": u.gid, "dba": u.domain, "username": u.username, "quota_bytes": u.quota})
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (u user) key() []string { return []string{strconv.FormatInt(u.id, 10)} }

func (u user) path() string { return u.domain + "/" + u.username }

// ins, upd and del build the envelopes the bridge would publish for
// mail_users at version (1, ver).
func ins(ver int64, u user) *change.Envelope {
	return ct.Env("mail_users", u.key(), ver, change.OpInsert, u.json())
}

func upd(ver int64, old, u user) *change.Envelope {
	e := ct.Env("mail_users", u.key(), ver, change.OpUpdate, u.json())
	e.Old = []byte(old.json())
	return e
}

func del(ver int64, u user) *change.Envelope {
	return ct.Env("mail_users", u.key(), ver, change.OpDelete, u.json())
}

// logBuffer collects log output for assertions, and copies it to t.Log.
type logBuffer struct {
	t testing.TB
	testproc.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	_, _ = l.Buffer.Write(p)
	func() {
		defer func() { _ = recover() }() // a line after the test ended
		l.t.Log(strings.TrimRight(string(p), "\n"))
	}()
	return len(p), nil
}

// newStore opens a Store on cfg (Root defaulting to a fresh directory,
// owner testUID) and closes it when the test ends. It returns the root too.
func newStore(t *testing.T, cfg mailstore.Config, opts ...mailstore.Option) (*mailstore.Store, string, *logBuffer) {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = filepath.Join(t.TempDir(), "mail")
	}
	if cfg.UID == 0 && cfg.Chown != mailstore.ChownNever {
		cfg.UID = testUID
	}
	logs := &logBuffer{t: t}
	opts = append([]mailstore.Option{mailstore.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))}, opts...)
	s, err := mailstore.New(cfg, opts...)
	if err != nil {
		t.Fatalf("mailstore.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, cfg.Root, logs
}

// apply does what the runtime does with one message: consult the guard,
// then call the handler unless the change is stale. It reports whether the
// handler ran.
func apply(t *testing.T, s *mailstore.Store, e *change.Envelope) (bool, error) {
	t.Helper()
	v, ok, err := s.Applied(context.Background(), e)
	if err != nil {
		return false, fmt.Errorf("guard: %w", err)
	}
	if ok && !v.Less(e.Version()) {
		return false, nil
	}
	return true, s.Handle(context.Background(), e)
}

// mustApply applies changes and fails on any error.
func mustApply(t *testing.T, s *mailstore.Store, es ...*change.Envelope) {
	t.Helper()
	for _, e := range es {
		if _, err := apply(t, s, e); err != nil {
			t.Fatalf("applying %s of key %v at %s: %v", e.Op, e.Key, e.Version(), err)
		}
	}
}

// entry is what snapshot records of one file or directory.
type entry struct {
	mode     fs.FileMode
	uid, gid uint32
	size     int64
	mtime    int64
	ino      uint64
	sum      string // content hash of regular files
	link     string
}

// snapshot records every entry under dir: type, mode, owner, size, inode,
// modification time and content. Two equal snapshots mean nothing was
// written, renamed or re-owned.
func snapshot(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{mode: fi.Mode(), uid: st.Uid, gid: st.Gid, size: fi.Size(), mtime: st.Mtim.Nano(), ino: st.Ino}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			e.sum = hex.EncodeToString(sum[:8])
		case fi.Mode()&fs.ModeSymlink != 0:
			e.link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot of %s: %v", dir, err)
	}
	return out
}

// diffSnapshots describes how two snapshots differ ("" when equal).
func diffSnapshots(a, b map[string]entry) string {
	var diffs []string
	for p, ea := range a {
		eb, ok := b[p]
		switch {
		case !ok:
			diffs = append(diffs, "removed "+p)
		case ea != eb:
			diffs = append(diffs, fmt.Sprintf("changed %s: %+v -> %+v", p, ea, eb))
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			diffs = append(diffs, "added "+p)
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "\n")
}

// mailboxes lists the live mailboxes under root: "<domain>/<username>".
func mailboxes(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	doms, err := os.ReadDir(root)
	if err != nil {
		t.Fatalf("listing %s: %v", root, err)
	}
	for _, d := range doms {
		if !d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		boxes, err := os.ReadDir(filepath.Join(root, d.Name()))
		if err != nil {
			t.Fatalf("listing %s: %v", d.Name(), err)
		}
		for _, b := range boxes {
			out = append(out, d.Name()+"/"+b.Name())
		}
	}
	sort.Strings(out)
	return out
}

// archived lists the archived mailboxes under root: "<domain>/<name>".
func archived(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	doms, err := os.ReadDir(filepath.Join(root, ".archive"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		boxes, err := os.ReadDir(filepath.Join(root, ".archive", d.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range boxes {
			out = append(out, d.Name()+"/"+b.Name())
		}
	}
	sort.Strings(out)
	return out
}

// checkMailbox describes how the mailbox of u under root differs from what
// mailstore makes ("" when it matches): the Maildir folders with mode 0700,
// the quota's first line, and, as root, the owner.
func checkMailbox(root string, u user) string {
	home := filepath.Join(root, u.domain, u.username)
	for _, d := range []string{"", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"} {
		p := filepath.Join(home, d)
		fi, err := os.Lstat(p)
		if err != nil {
			return err.Error()
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			return fmt.Sprintf("%s: mode %v, want a directory with mode 0700", p, fi.Mode())
		}
		if isRoot {
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != testUID || int(st.Gid) != u.gid {
				return fmt.Sprintf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, testUID, u.gid)
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(home, "Maildir", "maildirsize"))
	if err != nil {
		return err.Error()
	}
	first, _, _ := strings.Cut(string(b), "\n")
	if want := strconv.FormatInt(u.quota, 10) + "S"; first != want {
		return fmt.Sprintf("%s/Maildir/maildirsize starts with %q, want %q", u.path(), first, want)
	}
	if isRoot {
		fi, _ := os.Lstat(filepath.Join(home, "Maildir", "maildirsize"))
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != testUID || int(st.Gid) != u.gid || fi.Mode().Perm() != 0o600 {
			return fmt.Sprintf("%s maildirsize: owner %d:%d mode %v", u.path(), st.Uid, st.Gid, fi.Mode())
		}
	}
	return ""
}

// checkTree describes how the live mailboxes under root differ from users
// ("" when they match exactly).
func checkTree(t testing.TB, root string, users []user) string {
	t.Helper()
	want := make([]string, 0, len(users))
	for _, u := range users {
		want = append(want, u.path())
	}
	sort.Strings(want)
	if got := mailboxes(t, root); !slices.Equal(got, want) {
		return fmt.Sprintf("mailboxes %q, want %q", got, want)
	}
	for _, u := range users {
		if msg := checkMailbox(root, u); msg != "" {
			return msg
		}
	}
	return ""
}

// deliver drops a message file into a mailbox, as a mail server would.
func deliver(t *testing.T, root string, u user, folder, name, body string) string {
	t.Helper()
	p := filepath.Join(root, u.domain, u.username, "Maildir", folder, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatalf("delivering %s: %v", p, err)
	}
	return p
}

func permanent(err error) bool { return err != nil && consumers.IsPermanent(err) }
