package mailstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/consumers"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/consumers/mailstore"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/internal/testproc"
	"github.com/herald-cdc/herald/schema"
)

// converge bounds the wait for the tree to match the table.
const converge = 60 * time.Second

// e2e is one end-to-end rig: a database with mail_users watched, a
// nats-server, a bridge relaying the table, and the mailstore root.
type e2e struct {
	t    *testing.T
	ctx  context.Context
	pool *pgxpool.Pool
	js   jetstream.JetStream
	root string
}

// newE2E builds the rig; preset is the data stream's preset.
func newE2E(t *testing.T, preset bridge.Preset) *e2e {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	dsn := pgtest.NewDB(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := schema.Migrate(ctx, pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	ddl, err := os.ReadFile("testdata/mail_users.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, string(ddl)); err != nil {
		t.Fatalf("creating mail_users: %v", err)
	}
	if _, err := schema.WatchTable(ctx, pool, schema.WatchOptions{Table: "mail_users", Columns: []string{"gid", "dba", "username", "quota_bytes"}}); err != nil {
		t.Fatalf("watch mail_users: %v", err)
	}
	ns := natstest.Start(t, natstest.Options{})
	r := &e2e{t: t, ctx: ctx, pool: pool, js: ns.JetStream(t), root: filepath.Join(t.TempDir(), "mail")}

	nc := ns.Connect(t, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	logger := slog.New(slog.NewTextHandler(&logBuffer{t: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := bridge.New(dsn, nc, bridge.Config{Preset: preset, PollInterval: 200 * time.Millisecond}, bridge.WithLogger(logger.With("component", "bridge")))
	if err != nil {
		t.Fatal(err)
	}
	bctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(bctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("bridge: %v", err)
		}
	})
	return r
}

func (r *e2e) exec(sql string, args ...any) {
	r.t.Helper()
	if _, err := r.pool.Exec(r.ctx, sql, args...); err != nil {
		r.t.Fatalf("%s: %v", sql, err)
	}
}

// add inserts a user and returns it with its id.
func (r *e2e) add(gid int, domain, username string, quota int64) user {
	r.t.Helper()
	u := user{gid: gid, domain: domain, username: username, quota: quota}
	err := r.pool.QueryRow(r.ctx, `INSERT INTO mail_users (gid, dba, username, quota_bytes) VALUES ($1, $2, $3, $4) RETURNING id`,
		gid, domain, username, quota).Scan(&u.id)
	if err != nil {
		r.t.Fatalf("inserting %s/%s: %v", domain, username, err)
	}
	return u
}

// users reads the table.
func (r *e2e) users() []user {
	r.t.Helper()
	rows, err := r.pool.Query(r.ctx, `SELECT id, gid, dba, username, quota_bytes FROM mail_users ORDER BY id`)
	if err != nil {
		r.t.Fatal(err)
	}
	defer rows.Close()
	var out []user
	for rows.Next() {
		var u user
		if err := rows.Scan(&u.id, &u.gid, &u.domain, &u.username, &u.quota); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		r.t.Fatal(err)
	}
	return out
}

// mailstore starts a Store on the rig's root and a consumer running it.
func (r *e2e) mailstore(durable string, policy consumers.DeliverPolicy) (*mailstore.Store, *ct.Running) {
	r.t.Helper()
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(&logBuffer{t: r.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := mailstore.New(mailstore.Config{Root: r.root, UID: testUID}, mailstore.WithLogger(logger), mailstore.WithRegisterer(reg))
	if err != nil {
		r.t.Fatal(err)
	}
	cfg := s.ConsumerConfig(consumers.Config{
		Durable: durable, DeliverPolicy: policy, AckWait: 10 * time.Second,
		Backoff: []time.Duration{100 * time.Millisecond}, MaxDeliver: 5,
	})
	run := ct.Start(r.t, r.js, reg, cfg, s, consumers.WithLogger(logger))
	r.t.Cleanup(func() { run.Stop(); _ = s.Close() })
	return s, run
}

// waitTree waits until the live mailboxes match the table exactly.
func (r *e2e) waitTree() {
	r.t.Helper()
	testproc.Eventually(r.t, converge, func() string { return checkTree(r.t, r.root, r.users()) })
}

// waitSettled waits until the durable has acknowledged everything.
func (r *e2e) waitSettled(durable string) {
	r.t.Helper()
	testproc.Eventually(r.t, converge, ct.Settled(r.js, durable))
}

// TestEndToEndLifecycle: users created, re-quota'd, renamed, moved to
// another domain, given another gid and deleted, through PostgreSQL, the
// bridge and NATS; after each step the tree matches the table, and mail
// placed in a Maildir before a rename is still there after it.
func TestEndToEndLifecycle(t *testing.T) {
	t.Parallel()
	r := newE2E(t, bridge.PresetState)
	r.mailstore(mailstore.DefaultDurable, consumers.DeliverLastPerSubject)

	a := r.add(testGID, "example.org", "alice", 1000000)
	r.add(testGID, "example.org", "bob", 2000)
	c := r.add(testGID2, "example.net", "carol", 0)
	r.waitTree()

	msgs := map[string]string{"new/1700000000.M1P1.host,S=5": "hello", "cur/1700000001.M2P1.host,S=3:2,S": "abc"}
	for name, body := range msgs {
		deliver(t, r.root, a, filepath.Dir(name), filepath.Base(name), body)
	}
	mds := filepath.Join(r.root, "example.org/alice/Maildir/maildirsize")
	if err := os.WriteFile(mds, []byte("1000000S\n0 0\n8 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	r.exec(`UPDATE mail_users SET quota_bytes = 3000000 WHERE username = 'alice'`)
	r.exec(`UPDATE mail_users SET quota_bytes = 0 WHERE username = 'bob'`)
	r.waitTree()
	if got := readFile(t, mds); got != "3000000S\n0 0\n8 2\n" {
		t.Fatalf("alice's maildirsize after the new quota = %q; the usage lines must stay", got)
	}

	r.exec(`UPDATE mail_users SET username = 'alice.smith' WHERE id = $1`, a.id)
	r.exec(`UPDATE mail_users SET dba = 'example.com' WHERE id = $1`, c.id)
	r.waitTree()
	for name, body := range msgs {
		if got := readFile(t, filepath.Join(r.root, "example.org/alice.smith/Maildir", name)); got != body {
			t.Fatalf("message %s after the rename = %q, want %q", name, got, body)
		}
	}

	r.exec(`UPDATE mail_users SET gid = $1 WHERE username = 'bob'`, testGID2)
	r.exec(`UPDATE mail_users SET gid = $1 WHERE id = $2`, testGID, a.id)
	r.waitTree() // checkTree compares owners when running as root

	r.exec(`DELETE FROM mail_users WHERE id = $1`, c.id)
	r.waitTree()
	got := archived(t, r.root)
	if len(got) != 1 || !strings.HasPrefix(got[0], "example.com/carol-") {
		t.Fatalf("archive holds %q, want carol's mailbox", got)
	}
	r.waitSettled(mailstore.DefaultDurable)
}

// TestEndToEndReplayFromStartChangesNothing: after a history of changes, a
// new consumer replaying the whole stream (log preset, deliver all) on the
// same root changes nothing at all — no file, no mode, no owner, no
// modification time.
func TestEndToEndReplayFromStartChangesNothing(t *testing.T) {
	t.Parallel()
	r := newE2E(t, bridge.PresetLog)
	_, first := r.mailstore(mailstore.DefaultDurable, consumers.DeliverAll)
	for i := range 12 {
		r.add(testGID, fmt.Sprintf("d%d.example", i%3), fmt.Sprintf("u%d", i), int64(i*1000))
	}
	r.exec(`UPDATE mail_users SET quota_bytes = quota_bytes + 1 WHERE id % 2 = 0`)
	r.exec(`UPDATE mail_users SET username = username || '.renamed' WHERE id % 3 = 0`)
	r.exec(`UPDATE mail_users SET dba = 'moved.example' WHERE id % 4 = 1`)
	r.exec(`UPDATE mail_users SET gid = $1 WHERE id % 5 = 0`, testGID2)
	r.exec(`DELETE FROM mail_users WHERE id % 6 = 1`)
	r.exec(`UPDATE mail_users SET quota_bytes = 7 WHERE id = 2`)
	r.waitTree()
	r.waitSettled(mailstore.DefaultDurable)
	first.Stop()
	before := snapshot(t, r.root)

	info, err := r.js.Stream(r.ctx, ct.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msgs := info.CachedInfo().State.Msgs
	_, replay := r.mailstore("replay", consumers.DeliverAll)
	r.waitSettled("replay")
	replay.WaitMetric(t, "herald_consumer_stale_skipped_total", float64(msgs), "consumer=replay")
	if n := replay.Metric(t, "herald_consumer_processed_total", "consumer=replay"); n != 0 {
		t.Fatalf("the replay applied %v changes; every one should have been stale", n)
	}
	if d := diffSnapshots(before, snapshot(t, r.root)); d != "" {
		t.Fatalf("replaying the stream changed the tree:\n%s", d)
	}
	if msg := checkTree(t, r.root, r.users()); msg != "" {
		t.Fatal(msg)
	}
}

// TestEndToEndBadRowsDeadLettered: rows whose names cannot be a path, and a
// rename onto a mailbox that exists, go to the dead-letter stream with
// their reason; nothing is written for them, nothing outside the root, and
// the other users keep flowing.
func TestEndToEndBadRowsDeadLettered(t *testing.T) {
	t.Parallel()
	r := newE2E(t, bridge.PresetState)
	r.mailstore(mailstore.DefaultDurable, consumers.DeliverLastPerSubject)

	var good []user
	bad := []struct{ domain, username string }{
		{"example.org", ".."}, {"example.org", ".hidden"}, {"example.org", "a/b"}, {"example.org", ""},
		{"/etc", "passwd"}, {"..", "x"}, {"example.org", "../../escape"}, {"example.org", "tab\there"}, {".archive", "x"},
	}
	for i, b := range bad {
		good = append(good, r.add(testGID, "example.org", fmt.Sprintf("good%d", i), 100))
		r.add(testGID, b.domain, b.username, 100)
	}
	// A mailbox made by hand, which no row owns, and a rename onto it, once
	// the user to rename has a mailbox (before that, with only the
	// rename in the state stream, the user would adopt the directory as
	// an insert does).
	testproc.Eventually(t, converge, func() string { return checkMailbox(r.root, good[0]) })
	taken := filepath.Join(r.root, "example.org/taken/Maildir/new")
	if err := os.MkdirAll(taken, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(taken, "1.M1P1.h"), []byte("not yours"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.exec(`UPDATE mail_users SET username = 'taken' WHERE id = $1`, good[0].id)
	// Later users still flow.
	for i := range 3 {
		good = append(good, r.add(testGID2, "example.net", fmt.Sprintf("late%d", i), 5))
	}

	wantDead := len(bad) + 1
	testproc.Eventually(t, converge, func() string {
		if n := ct.CountDeadLetters(r.js); n != wantDead {
			return fmt.Sprintf("%d dead letters, want %d", n, wantDead)
		}
		return ""
	})
	r.waitSettled(mailstore.DefaultDurable)

	// good[0] stays where it was: its rename was refused.
	want := append([]string{"example.org/taken"}, paths(good)...)
	slices.Sort(want)
	if got := mailboxes(t, r.root); !slices.Equal(got, want) {
		t.Fatalf("mailboxes %q, want %q", got, want)
	}
	for _, u := range good {
		if msg := checkMailbox(r.root, u); msg != "" {
			t.Fatal(msg)
		}
	}
	if got := readFile(t, filepath.Join(taken, "1.M1P1.h")); got != "not yours" {
		t.Fatalf("the existing mailbox was touched: %q", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(r.root)); len(ents) != 1 {
		t.Fatalf("something was written next to the root: %v", ents)
	}
	unsafe, refused := 0, 0
	for _, m := range ct.DeadLetters(t, r.js) {
		reason := m.Header.Get(consumers.HeaderDLQReason)
		switch {
		case strings.Contains(reason, mailstore.ErrUnsafeName.Error()):
			unsafe++
		case strings.Contains(reason, "refusing to overwrite"):
			refused++
		default:
			t.Errorf("unexpected dead letter on %s: %s", m.Header.Get(consumers.HeaderDLQSubject), reason)
		}
	}
	if unsafe != len(bad) || refused != 1 {
		t.Fatalf("%d dead letters for unsafe names, %d for the refused move; want %d and 1", unsafe, refused, len(bad))
	}
}

func paths(us []user) []string {
	out := make([]string, 0, len(us))
	for _, u := range us[1:] {
		out = append(out, u.path())
	}
	return append(out, us[0].path())
}
