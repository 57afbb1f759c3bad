package mailstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/consumers/mailstore"
)

var (
	alice = user{id: 1, gid: testGID, domain: "example.org", username: "alice", quota: 1000000}
	bob   = user{id: 2, gid: testGID, domain: "example.org", username: "bob", quota: 0}
	carol = user{id: 3, gid: testGID2, domain: "example.net", username: "carol", quota: 5000}
)

// stamp is the archive suffix of a change at version (1, ver), whose time
// ct.Env sets to 2025-01-01 plus ver milliseconds.
func stamp(ver int64) string {
	return time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(ver) * time.Millisecond).Format("20060102T150405.000000Z")
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestInsertCreatesMaildir(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice), ins(2, bob), ins(3, carol))
	if msg := checkTree(t, root, []user{alice, bob, carol}); msg != "" {
		t.Fatal(msg)
	}
	if got := readFile(t, filepath.Join(root, "example.org/alice/Maildir/maildirsize")); got != "1000000S\n0 0\n" {
		t.Fatalf("maildirsize = %q", got)
	}
	var o struct {
		Table string   `json:"table"`
		Key   []string `json:"key"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(root, "example.org/alice/.herald-mailstore"))), &o); err != nil || o.Table != "public.mail_users" || len(o.Key) != 1 || o.Key[0] != "1" {
		t.Fatalf("owner file = %+v, %v", o, err)
	}
	for _, d := range []string{"example.org", "example.net"} {
		ents, _ := os.ReadDir(filepath.Join(root, d))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				t.Fatalf("%s/%s left behind", d, e.Name())
			}
		}
	}
	v, ok, err := s.Applied(context.Background(), ins(9, alice))
	if err != nil || !ok || v != (change.Version{Epoch: 1, ID: 1}) {
		t.Fatalf("Applied = %v, %v, %v; want 1:1", v, ok, err)
	}
	if _, ok, _ := s.Applied(context.Background(), ins(9, user{id: 77})); ok {
		t.Fatal("Applied reports a version for a key never seen")
	}
}

func TestQuotaUpdateKeepsUsageLines(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice))
	mds := filepath.Join(root, "example.org/alice/Maildir/maildirsize")
	// A mail server's additions: a message-count limit and usage lines.
	if err := os.WriteFile(mds, []byte("1000000S,200C\n  1234 3\n-100 -1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := inode(t, mds)
	a2 := alice
	a2.quota = 2000
	mustApply(t, s, upd(2, alice, a2))
	if got := readFile(t, mds); got != "2000S,200C\n  1234 3\n-100 -1\n" {
		t.Fatalf("maildirsize = %q", got)
	}
	if inode(t, mds) == before {
		t.Fatal("maildirsize was rewritten in place, not replaced through a temporary file")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "example.org/alice/Maildir/tmp")); len(ents) != 0 {
		t.Fatalf("temporary files left in Maildir/tmp: %v", ents)
	}

	// An update that does not change the quota leaves the file alone.
	snap := snapshot(t, root+"/example.org/alice/Maildir")
	a3 := a2
	a3.quota = 2000
	mustApply(t, s, upd(3, a2, a3))
	if d := diffSnapshots(snap, snapshot(t, root+"/example.org/alice/Maildir")); d != "" {
		t.Fatalf("an update with the same quota changed the Maildir:\n%s", d)
	}

	// A damaged file is rebuilt from the messages.
	if err := os.WriteFile(mds, []byte("2000S\nnot a usage line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deliver(t, root, a3, "cur", "1700000000.M1P1.host,S=300:2,S", "x")
	deliver(t, root, a3, "new", "1700000001.M2P1.host", "twelve bytes")
	a4 := a3
	a4.quota = 3000
	mustApply(t, s, upd(4, a3, a4))
	if got := readFile(t, mds); got != "3000S\n312 2\n" {
		t.Fatalf("rebuilt maildirsize = %q, want 3000S and 312 bytes in 2 messages", got)
	}
}

func TestRenameMovesMailboxWithMessages(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice), ins(2, bob))
	msgs := map[string]string{
		"new/1700000000.M1P1.host,S=5":          "hello",
		"cur/1700000001.M2P1.host,S=6:2,S":      "world!",
		".Sent/cur/1700000002.M3P1.host,S=3:2,": "abc",
	}
	if err := os.MkdirAll(filepath.Join(root, "example.org/alice/Maildir/.Sent/cur"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range msgs {
		deliver(t, root, alice, filepath.Dir(name), filepath.Base(name), body)
	}
	home := inode(t, filepath.Join(root, "example.org/alice"))

	renamed := alice
	renamed.username = "alice.smith"
	moved := renamed
	moved.domain = "example.com"
	mustApply(t, s, upd(3, alice, renamed), upd(4, renamed, moved))

	if msg := checkTree(t, root, []user{moved, bob}); msg != "" {
		t.Fatal(msg)
	}
	for name, body := range msgs {
		if got := readFile(t, filepath.Join(root, "example.com/alice.smith/Maildir", name)); got != body {
			t.Fatalf("message %s = %q after the moves, want %q", name, got, body)
		}
	}
	if inode(t, filepath.Join(root, "example.com/alice.smith")) != home {
		t.Fatal("the mailbox was copied, not renamed")
	}
}

func TestMoveOntoExistingMailboxRefused(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice), ins(2, bob))
	deliver(t, root, alice, "new", "1.M1P1.h", "alice's mail")
	// A mailbox nobody's row owns, made by hand.
	if err := os.MkdirAll(filepath.Join(root, "example.org/taken/Maildir/new"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "example.org/taken/Maildir/new/2.M2P1.h"), []byte("other mail"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "example.org/file"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	snap := snapshot(t, root)
	for _, name := range []string{"taken", "file"} {
		to := alice
		to.username = name
		ran, err := apply(t, s, upd(3, alice, to))
		if !ran || !permanent(err) {
			t.Fatalf("move onto %s: ran=%v err=%v; want a permanent error (dead letter)", name, ran, err)
		}
		t.Logf("refused as expected: %v", err)
	}
	if d := diffSnapshots(snap, snapshot(t, root)); d != "" {
		t.Fatalf("a refused move changed the tree:\n%s", d)
	}

	// Onto the mailbox of another key: that user may be about to move
	// away, so the change is retried rather than dead-lettered...
	toBob := alice
	toBob.username = "bob"
	_, err := apply(t, s, upd(4, alice, toBob))
	if err == nil || permanent(err) {
		t.Fatalf("move onto another user's mailbox: %v; want a retryable error", err)
	}
	// ... and succeeds once bob has moved.
	bob2 := bob
	bob2.username = "robert"
	mustApply(t, s, upd(5, bob, bob2), upd(4, alice, toBob))
	if got := readFile(t, filepath.Join(root, "example.org/bob/Maildir/new/1.M1P1.h")); got != "alice's mail" {
		t.Fatalf("alice's mail after the move: %q", got)
	}
	if msg := checkMailbox(root, bob2); msg != "" {
		t.Fatal(msg)
	}
}

func TestGidChangeChownsRecursively(t *testing.T) {
	if !isRoot {
		t.Skip("changing ownership needs root")
	}
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice))
	deliver(t, root, alice, "new", "1.M1P1.h", "mail")
	if err := os.MkdirAll(filepath.Join(root, "example.org/alice/Maildir/.Sent/cur"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A symlink to a file outside the root: its target must keep its owner.
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "example.org/alice/Maildir/link")); err != nil {
		t.Fatal(err)
	}
	a2 := alice
	a2.gid = testGID2
	mustApply(t, s, upd(2, alice, a2))
	err := filepath.Walk(filepath.Join(root, "example.org/alice"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != testUID || st.Gid != testGID2 {
			return fmt.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, testUID, testGID2)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(outside)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
		t.Fatalf("the target of a symlink was re-owned: %d:%d", st.Uid, st.Gid)
	}
	if msg := checkMailbox(root, a2); msg != "" {
		t.Fatal(msg)
	}
}

func TestDeleteArchives(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice), ins(2, bob))
	deliver(t, root, alice, "new", "1.M1P1.h", "keep me")
	mustApply(t, s, del(3, alice))

	name := "example.org/alice-" + stamp(3)
	if got := archived(t, root); len(got) != 1 || got[0] != name {
		t.Fatalf("archive holds %q, want %q", got, name)
	}
	if got := readFile(t, filepath.Join(root, ".archive", name, "Maildir/new/1.M1P1.h")); got != "keep me" {
		t.Fatalf("archived message = %q", got)
	}
	if !strings.Contains(readFile(t, filepath.Join(root, ".archive", name, ".herald-mailstore")), `"archived_at":"2025-01-01T00:00:00.003Z"`) {
		t.Fatal("the archived mailbox's owner file does not record the time of the delete")
	}
	if msg := checkTree(t, root, []user{bob}); msg != "" {
		t.Fatal(msg)
	}

	// The tombstone: an older insert redelivered is stale.
	snap := snapshot(t, root)
	if ran, err := apply(t, s, ins(1, alice)); ran || err != nil {
		t.Fatalf("an insert older than the delete ran (%v, %v)", ran, err)
	}
	// The delete itself, handled again (a redelivery the guard let
	// through), lands on the same name: nothing changes.
	if err := s.Handle(context.Background(), del(3, alice)); err != nil {
		t.Fatal(err)
	}
	// A delete of a key that never had a mailbox writes nothing but its
	// tombstone.
	mustApply(t, s, del(4, user{id: 99, gid: 1, domain: "example.org", username: "ghost"}))
	if d := diffSnapshots(snap, snapshot(t, root)); strings.Contains(d, "ghost") || strings.Contains(d, "alice") {
		t.Fatalf("replayed or empty deletes changed mailboxes:\n%s", d)
	}

	// A newer insert of the same key makes a fresh mailbox; the archive stays.
	mustApply(t, s, ins(5, alice))
	if msg := checkTree(t, root, []user{alice, bob}); msg != "" {
		t.Fatal(msg)
	}
	if _, err := os.Stat(filepath.Join(root, "example.org/alice/Maildir/new/1.M1P1.h")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the re-created mailbox holds the archived mail")
	}
	if got := archived(t, root); len(got) != 1 {
		t.Fatalf("archive holds %q", got)
	}
}

// history is a run of changes touching every kind of operation.
func history() []*change.Envelope {
	a2, b2, c2 := alice, bob, carol
	a2.quota = 42
	b2.username, b2.domain = "bobby", "example.com"
	c2.gid = testGID
	dave := user{id: 4, gid: testGID2, domain: "example.com", username: "dave", quota: 7}
	return []*change.Envelope{
		ins(1, alice), ins(2, bob), ins(3, carol), upd(4, alice, a2), upd(5, bob, b2),
		upd(6, carol, c2), ins(7, dave), del(8, a2),
	}
}

func TestReplayChangesNothing(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	h := history()
	mustApply(t, s, h...)
	snap := snapshot(t, root)

	// The whole history again, as a consumer replaying the stream gets it.
	for _, e := range h {
		if ran, err := apply(t, s, e); ran || err != nil {
			t.Fatalf("replayed %s of key %v at %s: ran=%v err=%v", e.Op, e.Key, e.Version(), ran, err)
		}
	}
	// The newest change of every key, handled again past the guard.
	for _, e := range h[4:] {
		if err := s.Handle(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if d := diffSnapshots(snap, snapshot(t, root)); d != "" {
		t.Fatalf("replay changed the tree:\n%s", d)
	}
}

func TestUpdateForMissingMailboxCreatesIt(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	b2 := bob
	b2.quota = 99
	mustApply(t, s, upd(1, bob, b2))
	if msg := checkTree(t, root, []user{b2}); msg != "" {
		t.Fatal(msg)
	}
	// Removed by hand: the next update creates it again.
	if err := os.RemoveAll(filepath.Join(root, "example.org/bob")); err != nil {
		t.Fatal(err)
	}
	b3 := b2
	b3.quota = 100
	mustApply(t, s, upd(2, b2, b3))
	if msg := checkTree(t, root, []user{b3}); msg != "" {
		t.Fatal(msg)
	}
	// A Maildir folder removed by hand is repaired.
	if err := os.Remove(filepath.Join(root, "example.org/bob/Maildir/tmp")); err != nil {
		t.Fatal(err)
	}
	b4 := b3
	b4.quota = 101
	mustApply(t, s, upd(3, b3, b4))
	if msg := checkTree(t, root, []user{b4}); msg != "" {
		t.Fatal(msg)
	}
}

func TestBadRowsRefused(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice))
	snap := snapshot(t, root)
	names := []struct{ domain, username string }{
		{"example.org", ""}, {"", "x"}, {"example.org", ".."}, {"..", "x"}, {"example.org", "../../../tmp/x"},
		{"example.org", "a/b"}, {"/etc", "x"}, {"example.org", ".hidden"}, {".archive", "x"},
		{".herald-mailstore", "x"}, {"example.org", "a\x00b"}, {"example.org", "a\nb"}, {"example.org", "a..b"},
		{"example.org", "-rf"}, {"example.org", "a b"},
	}
	for i, n := range names {
		u := user{id: int64(100 + i), gid: testGID, domain: n.domain, username: n.username, quota: 1}
		ran, err := apply(t, s, ins(int64(10+i), u))
		if !ran || !permanent(err) || !errors.Is(err, mailstore.ErrUnsafeName) {
			t.Errorf("insert of %q/%q: ran=%v err=%v; want a permanent ErrUnsafeName", n.domain, n.username, ran, err)
		}
		// Renaming a good user to the bad name is refused the same way.
		if _, err := apply(t, s, upd(int64(50+i), alice, user{id: 1, gid: testGID, domain: n.domain, username: n.username, quota: 1})); !permanent(err) {
			t.Errorf("rename to %q/%q: %v; want a permanent error", n.domain, n.username, err)
		}
	}
	rows := []string{
		`{"gid":0,"dba":"example.org","username":"x","quota_bytes":1}`,
		`{"gid":-5,"dba":"example.org","username":"x","quota_bytes":1}`,
		`{"gid":4294967295,"dba":"example.org","username":"x","quota_bytes":1}`,
		`{"gid":5000,"dba":"example.org","username":"x","quota_bytes":-1}`,
		`{"gid":5000,"dba":"example.org","username":"x","quota_bytes":1.5}`,
		`{"gid":"5000","dba":"example.org","username":"x","quota_bytes":1}`,
		`{"gid":5000,"dba":"example.org","username":null,"quota_bytes":1}`,
		`{"gid":5000,"dba":"example.org","username":7,"quota_bytes":1}`,
		`{"gid":5000,"username":"x","quota_bytes":1}`,
		`{"gid":5000,"dba":"example.org","username":"x"}`,
	}
	for i, row := range rows {
		ran, err := apply(t, s, ct.Env("mail_users", []string{fmt.Sprint(200 + i)}, int64(100+i), change.OpInsert, row))
		if !ran || !permanent(err) {
			t.Errorf("insert of %s: ran=%v err=%v; want a permanent error", row, ran, err)
		}
	}
	other := ins(300, alice)
	other.Table = "users"
	if err := s.Handle(context.Background(), other); !permanent(err) {
		t.Errorf("change of another table: %v; want a permanent error", err)
	}
	if d := diffSnapshots(snap, snapshot(t, root)); d != "" {
		t.Fatalf("refused changes wrote:\n%s", d)
	}
}

func TestSymlinksNeverLeadOutOfTheRoot(t *testing.T) {
	outside := t.TempDir()
	s, root, _ := newStore(t, mailstore.Config{})
	if err := os.Symlink(outside, filepath.Join(root, "evil.example")); err != nil {
		t.Fatal(err)
	}
	if _, err := apply(t, s, ins(1, user{id: 1, gid: testGID, domain: "evil.example", username: "x", quota: 1})); !permanent(err) {
		t.Fatalf("a mailbox through a symlink leading out of the root: %v; want a permanent error", err)
	}
	// A domain folder that is a symlink inside the root (an alias) is not
	// followed either: two names would share mailboxes.
	if err := os.Symlink("example.org", filepath.Join(root, "alias.example")); err != nil {
		t.Fatal(err)
	}
	if _, err := apply(t, s, ins(4, user{id: 4, gid: testGID, domain: "alias.example", username: "y", quota: 1})); !permanent(err) {
		t.Fatalf("a mailbox through a symlinked domain: %v; want a permanent error", err)
	}
	// A mailbox that is a symlink to another one inside the root is not
	// taken for a mailbox either.
	mustApply(t, s, ins(2, bob))
	if err := os.Symlink("bob", filepath.Join(root, "example.org/alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := apply(t, s, ins(3, alice)); !permanent(err) {
		t.Fatalf("insert onto a symlink: %v; want a permanent error", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("something was written outside the root: %v", ents)
	}

	// An archive folder outside the root is refused at start, whether the
	// setting says so or a symlink does.
	for _, archive := range []string{"../elsewhere", outside, ".linked"} {
		dir := filepath.Join(t.TempDir(), "mail")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(dir, ".linked")); err != nil {
			t.Fatal(err)
		}
		_, err := mailstore.New(mailstore.Config{Root: dir, UID: testUID, Archive: archive})
		if err == nil {
			t.Fatalf("archive %q outside the root was accepted", archive)
		}
		t.Logf("archive %q refused: %v", archive, err)
	}
}

// crashOnce makes the Store stop a change after step, once.
func crashOnce(t *testing.T, step string) error {
	crash := errors.New("crash at " + step)
	var once sync.Once
	restore := mailstore.SetCrashHook(func(at string) error {
		var err error
		if at == step {
			once.Do(func() { err = crash })
		}
		return err
	})
	t.Cleanup(restore)
	return crash
}

// TestCrashAtEveryStepConverges interrupts each step a crash could
// interrupt, then redelivers the change: the tree ends as if nothing
// happened.
func TestCrashAtEveryStepConverges(t *testing.T) {
	for _, step := range []string{"intent", "created", "moved", "marked", "archived"} {
		t.Run(step, func(t *testing.T) {
			s, root, _ := newStore(t, mailstore.Config{})
			crash := crashOnce(t, step)
			a2 := alice
			a2.username = "alice2"
			crashed := false
			for i, e := range []*change.Envelope{ins(1, alice), upd(3, alice, a2), del(6, a2)} {
				if i == 1 {
					deliver(t, root, alice, "new", "1.M1P1.h", "mail")
				}
				_, err := apply(t, s, e)
				if errors.Is(err, crash) {
					crashed = true
					_, err = apply(t, s, e) // the redelivery
				}
				if err != nil {
					t.Fatalf("applying %s at %s: %v", e.Op, e.Version(), err)
				}
			}
			if !crashed {
				t.Fatalf("never reached step %q", step)
			}
			if msg := checkTree(t, root, nil); msg != "" {
				t.Fatal(msg)
			}
			got := archived(t, root)
			if len(got) != 1 || got[0] != "example.org/alice2-"+stamp(6) {
				t.Fatalf("archive holds %q", got)
			}
			if m := readFile(t, filepath.Join(root, ".archive", got[0], "Maildir/new/1.M1P1.h")); m != "mail" {
				t.Fatalf("message = %q", m)
			}
		})
	}
}

// TestCrashThenNewerChangeFindsTheMailbox crashes between a step and its
// record, then delivers only a newer change whose old row does not say
// where the mailbox is (the state stream keeps the last change of a key):
// the recorded intent does, and the mail follows.
func TestCrashThenNewerChangeFindsTheMailbox(t *testing.T) {
	a2, a3, a4 := alice, alice, alice
	a2.username, a3.username, a4.username = "alice2", "alice3", "alice4"
	t.Run("after create", func(t *testing.T) {
		s, root, _ := newStore(t, mailstore.Config{})
		crash := crashOnce(t, "created")
		if _, err := apply(t, s, ins(1, alice)); !errors.Is(err, crash) {
			t.Fatalf("insert: %v", err)
		}
		deliver(t, root, alice, "new", "1.M1P1.h", "early mail")
		mustApply(t, s, upd(4, a2, a3))
		if msg := checkTree(t, root, []user{a3}); msg != "" {
			t.Fatal(msg)
		}
		if m := readFile(t, filepath.Join(root, "example.org/alice3/Maildir/new/1.M1P1.h")); m != "early mail" {
			t.Fatalf("message = %q", m)
		}
	})
	t.Run("after move", func(t *testing.T) {
		s, root, _ := newStore(t, mailstore.Config{})
		mustApply(t, s, ins(1, alice))
		deliver(t, root, alice, "new", "1.M1P1.h", "mail")
		crash := crashOnce(t, "moved")
		if _, err := apply(t, s, upd(3, alice, a2)); !errors.Is(err, crash) {
			t.Fatalf("rename: %v", err)
		}
		mustApply(t, s, upd(5, a3, a4))
		if msg := checkTree(t, root, []user{a4}); msg != "" {
			t.Fatal(msg)
		}
		if m := readFile(t, filepath.Join(root, "example.org/alice4/Maildir/new/1.M1P1.h")); m != "mail" {
			t.Fatalf("message = %q", m)
		}
	})
	t.Run("after moving a mailbox made by hand", func(t *testing.T) {
		s, root, _ := newStore(t, mailstore.Config{})
		if err := os.MkdirAll(filepath.Join(root, "example.org/alice/Maildir/new"), 0o700); err != nil {
			t.Fatal(err)
		}
		deliver(t, root, alice, "new", "1.M1P1.h", "older than herald")
		crash := crashOnce(t, "moved")
		if _, err := apply(t, s, upd(3, alice, a2)); !errors.Is(err, crash) {
			t.Fatalf("rename: %v", err)
		}
		mustApply(t, s, upd(5, a3, a4))
		if msg := checkTree(t, root, []user{a4}); msg != "" {
			t.Fatal(msg)
		}
		if m := readFile(t, filepath.Join(root, "example.org/alice4/Maildir/new/1.M1P1.h")); m != "older than herald" {
			t.Fatalf("message = %q", m)
		}
	})
}

func TestDamagedRecordIsPermanent(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice))
	keys := filepath.Join(root, ".herald-mailstore/public.mail_users/keys")
	ents, err := os.ReadDir(keys)
	if err != nil || len(ents) != 1 {
		t.Fatalf("guard records: %v, %v", ents, err)
	}
	if err := os.WriteFile(filepath.Join(keys, ents[0].Name()), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	a2 := alice
	a2.quota = 1
	if _, _, err := s.Applied(context.Background(), upd(2, alice, a2)); !permanent(err) {
		t.Fatalf("Applied with a damaged record: %v; want a permanent error", err)
	}
	dry, _, logs := newStore(t, mailstore.Config{Root: root, DryRun: true})
	if _, err := apply(t, dry, upd(2, alice, a2)); err != nil {
		t.Fatalf("dry run with a damaged record: %v; want it logged, not dead-lettered", err)
	}
	if !strings.Contains(logs.String(), "would dead-letter") {
		t.Fatal("the dry run did not log the dead letter")
	}
}

func TestStaleTempsRemovedAtStart(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mail")
	// A process that has exited names the leftovers of a crash.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf(".herald-tmp-%d-0123456789abcdef", cmd.Process.Pid)
	alive := fmt.Sprintf(".herald-tmp-%d-0123456789abcdef", os.Getpid())
	for _, d := range []string{dead + "/Maildir/cur", alive} {
		if err := os.MkdirAll(filepath.Join(root, "example.org", d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	newStore(t, mailstore.Config{Root: root})
	if _, err := os.Stat(filepath.Join(root, "example.org", dead)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("half-built mailbox of a dead process left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "example.org", alive)); err != nil {
		t.Fatalf("a running process's temporary directory was removed: %v", err)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	real, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, real, ins(1, alice), ins(2, bob))
	_ = real.Close()
	snap := snapshot(t, root)

	s, _, logs := newStore(t, mailstore.Config{Root: root, DryRun: true})
	a2, b2 := alice, bob
	a2.username, a2.quota, b2.quota = "alice2", 5, 6
	if isRoot {
		b2.gid = testGID2
	}
	mustApply(t, s,
		upd(3, alice, a2), upd(4, bob, b2), ins(5, carol), del(6, bob),
		ins(7, user{id: 9, gid: 1, domain: "example.org", username: "../x", quota: 1}),
		ct.Env("mail_users", nil, 8, change.OpTruncate, ""),
	)
	if d := diffSnapshots(snap, snapshot(t, root)); d != "" {
		t.Fatalf("a dry run changed the tree:\n%s", d)
	}
	for _, want := range []string{"would move mailbox", "would write quota file", "would create mailbox", "would archive mailbox", "would dead-letter", "would archive mailboxes"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("dry-run log lacks %q", want)
		}
	}
	if isRoot && !strings.Contains(logs.String(), "would change ownership") {
		t.Error("dry-run log lacks the ownership change")
	}
	if _, err := mailstore.New(mailstore.Config{Root: filepath.Join(t.TempDir(), "missing"), UID: testUID, DryRun: true}); err == nil {
		t.Error("a dry run on a missing root started (it would have to create it)")
	}
}

func TestPurgeRemovesOldArchivesOnly(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s, root, _ := newStore(t, mailstore.Config{PurgeAfter: 24 * time.Hour}, mailstore.WithNow(clock))
	mustApply(t, s, ins(1, alice), ins(2, bob), del(3, alice))
	// Something in the archive mailstore did not put there.
	if err := os.MkdirAll(filepath.Join(root, ".archive/example.org/manual/Maildir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Purge(context.Background()); n != 0 || err != nil {
		t.Fatalf("Purge 12h after the delete = %d, %v", n, err)
	}
	mu.Lock()
	now = now.Add(13 * time.Hour)
	mu.Unlock()
	if n, err := s.Purge(context.Background()); n != 1 || err != nil {
		t.Fatalf("Purge 25h after the delete = %d, %v", n, err)
	}
	if got := archived(t, root); len(got) != 1 || got[0] != "example.org/manual" {
		t.Fatalf("archive after purge: %q", got)
	}
	if msg := checkTree(t, root, []user{bob}); msg != "" {
		t.Fatal(msg)
	}
	// The tombstone outlives the purge: the old insert stays stale.
	if ran, err := apply(t, s, ins(1, alice)); ran || err != nil {
		t.Fatalf("insert older than a purged delete ran: %v, %v", ran, err)
	}
}

func TestTruncateArchivesEveryMailbox(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	mustApply(t, s, ins(1, alice), ins(2, bob), ins(3, carol), del(4, carol))
	mustApply(t, s, ct.Env("mail_users", nil, 5, change.OpTruncate, ""))
	if msg := checkTree(t, root, nil); msg != "" {
		t.Fatal(msg)
	}
	want := []string{"example.net/carol-" + stamp(4), "example.org/alice-" + stamp(5), "example.org/bob-" + stamp(5)}
	if got := archived(t, root); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("archive holds %q, want %q", got, want)
	}
	if ran, _ := apply(t, s, ins(2, bob)); ran {
		t.Fatal("an insert older than the truncate ran")
	}
	mustApply(t, s, ins(6, bob))
	if msg := checkTree(t, root, []user{bob}); msg != "" {
		t.Fatal(msg)
	}
}

// TestParallelKeys applies many keys from several goroutines, as the
// runtime's workers do, out of the database's order across keys: each user
// is renamed to the name the next one had, which the database allowed only
// after that one had moved on. A rename that arrives first is retried, as
// the runtime retries it, until the name is free.
func TestParallelKeys(t *testing.T) {
	s, root, _ := newStore(t, mailstore.Config{})
	const n = 40
	users := make([]user, n)
	for i := range users {
		users[i] = user{id: int64(i + 1), gid: testGID, domain: fmt.Sprintf("d%d.example", i%3), username: fmt.Sprintf("u%d", i), quota: int64(i)}
	}
	// parallel applies changeOf(i) for every user on 4 workers. A retryable
	// failure goes to the back of its worker's queue, as the runtime naks
	// it and moves on to other keys.
	parallel := func(changeOf func(i int) *change.Envelope) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var queue []int
				for i := w; i < n; i += 4 {
					queue = append(queue, i)
				}
				deadline := time.Now().Add(ct.Wait)
				for len(queue) > 0 {
					i := queue[0]
					queue = queue[1:]
					_, err := apply(t, s, changeOf(i))
					switch {
					case err == nil:
					case permanent(err) || time.Now().After(deadline):
						errs <- err
						return
					default:
						queue = append(queue, i)
						runtime.Gosched()
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	parallel(func(i int) *change.Envelope { return ins(int64(i+1), users[i]) })

	// In the database: the last user moved to a fresh name first, then
	// each one to the name of the one after it.
	renamed := make([]user, n)
	for i := range users {
		renamed[i] = users[i]
		if i == n-1 {
			renamed[i].username = "fresh"
		} else {
			renamed[i].domain, renamed[i].username = users[i+1].domain, users[i+1].username
		}
	}
	parallel(func(i int) *change.Envelope { return upd(int64(1000+n-i), users[i], renamed[i]) })
	if msg := checkTree(t, root, renamed); msg != "" {
		t.Fatal(msg)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  mailstore.Config
		ok   bool
	}{
		{"defaults", mailstore.Config{Root: "/srv/mail", UID: 5000}, true},
		{"no root", mailstore.Config{UID: 5000}, false},
		{"bad table", mailstore.Config{Root: "/srv/mail", UID: 5000, Table: "public."}, false},
		{"bad chown", mailstore.Config{Root: "/srv/mail", UID: 5000, Chown: "sometimes"}, false},
		{"never needs no uid", mailstore.Config{Root: "/srv/mail", Chown: mailstore.ChownNever}, true},
		{"always needs a uid", mailstore.Config{Root: "/srv/mail", Chown: mailstore.ChownAlways}, false},
		{"negative uid", mailstore.Config{Root: "/srv/mail", UID: -3, Chown: mailstore.ChownAlways}, false},
		{"archive outside", mailstore.Config{Root: "/srv/mail", UID: 5000, Archive: "/srv/archive"}, false},
		{"archive inside, absolute", mailstore.Config{Root: "/srv/mail", UID: 5000, Archive: "/srv/mail/.old"}, true},
		{"archive escapes", mailstore.Config{Root: "/srv/mail", UID: 5000, Archive: "../x"}, false},
		{"negative purge", mailstore.Config{Root: "/srv/mail", UID: 5000, PurgeAfter: -time.Hour}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cfg
			err := c.Validate()
			if isRoot && tc.name == "defaults" && err != nil {
				t.Fatal(err)
			}
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if err == nil && (c.Table != mailstore.DefaultTable && tc.cfg.Table == "" || c.Archive == "") {
				t.Fatalf("defaults not filled in: %+v", c)
			}
		})
	}
	if isRoot {
		c := mailstore.Config{Root: "/srv/mail"}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "UID is required") {
			t.Fatalf("running as root without a UID: %v", err)
		}
	}
	cc := (&mailstore.Config{Table: "public.mail_users"}).ConsumerConfig(consumers.Config{Prefix: "mail"})
	if cc.Durable != mailstore.DefaultDurable || len(cc.FilterSubjects) != 1 || cc.FilterSubjects[0] != "mail.public.mail_users.>" {
		t.Fatalf("ConsumerConfig = %+v", cc)
	}
}
