package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/internal/testproc"
	"github.com/herald-cdc/herald/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	testUID  = 5000
	testGID  = 5000
	testGID2 = 5001
	converge = 90 * time.Second
)

// mailstoreCmd is the import path of this command, which the tests run as
// a real process.
const mailstoreCmd = "github.com/herald-cdc/herald/cmd/herald-mailstore"

func TestHelpListsEveryVariable(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-h"}, &out, &errb); code != 0 {
		t.Fatalf("-h exited %d: %s", code, errb.String())
	}
	for _, v := range []string{
		"HERALD_MAILSTORE_ROOT", "HERALD_MAILSTORE_TABLE", "HERALD_MAILSTORE_UID", "HERALD_MAILSTORE_CHOWN",
		"HERALD_MAILSTORE_ARCHIVE", "HERALD_MAILSTORE_PURGE_AFTER", "HERALD_MAILSTORE_DRY_RUN",
		"HERALD_CONSUMER ", "HERALD_DLQ_STREAM", "HERALD_CONSUMER_DELIVER", "HERALD_CONSUMER_ACK_WAIT", "HERALD_CONSUMER_MAX_DELIVER",
		"HERALD_CONSUMER_MAX_ACK_PENDING", "HERALD_CONSUMER_WORKERS", "HERALD_NATS_URL", "HERALD_STREAM", "HERALD_SUBJECT_PREFIX",
		"HERALD_METRICS_ADDR", "HERALD_LOG_FORMAT", "HERALD_LOG_LEVEL", "HERALD_SHUTDOWN_TIMEOUT",
	} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("-h does not list %s", v)
		}
	}
	for _, def := range []string{"public.mail_users", ".archive", "mailstore", "(required)"} {
		if !strings.Contains(out.String(), def) {
			t.Errorf("-h does not show the default %q", def)
		}
	}
}

// TestBadConfigExitsWithOneLine runs the program with bad settings: it exits
// 2 at once with one line naming the variable.
func TestBadConfigExitsWithOneLine(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, ".linked")); err != nil {
		t.Fatal(err)
	}
	base := []string{"HERALD_MAILSTORE_ROOT=" + root, "HERALD_MAILSTORE_UID=5000", "HERALD_NATS_URL=nats://127.0.0.1:1", "HERALD_METRICS_ADDR="}
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"HERALD_MAILSTORE_UID=5000"}, "HERALD_MAILSTORE_ROOT is required"},
		{[]string{"HERALD_MAILSTORE_ARCHIVE=/elsewhere"}, "HERALD_MAILSTORE_ARCHIVE"},
		{[]string{"HERALD_MAILSTORE_ARCHIVE=../x"}, "HERALD_MAILSTORE_ARCHIVE"},
		{[]string{"HERALD_MAILSTORE_ARCHIVE=.linked"}, "archive folder .linked"},
		{[]string{"HERALD_MAILSTORE_TABLE=public."}, "HERALD_MAILSTORE_TABLE"},
		{[]string{"HERALD_MAILSTORE_CHOWN=maybe"}, "HERALD_MAILSTORE_CHOWN"},
		{[]string{"HERALD_MAILSTORE_PURGE_AFTER=soon"}, "HERALD_MAILSTORE_PURGE_AFTER"},
		{[]string{"HERALD_MAILSTORE_PURGE_AFTER=-1h"}, "HERALD_MAILSTORE_PURGE_AFTER"},
		{[]string{"HERALD_CONSUMER_WORKERS=-1"}, "HERALD_CONSUMER_WORKERS"},
		{[]string{"HERALD_CONSUMER_ACK_WAIT=10ms"}, "HERALD_CONSUMER_ACK_WAIT"},
		{[]string{"HERALD_CONSUMER=a.b"}, "HERALD_CONSUMER"},
		{[]string{"HERALD_CONSUMER_DELIVER=sometimes"}, "HERALD_CONSUMER_DELIVER"},
		{[]string{"HERALD_LOG_FORMAT=xml"}, "HERALD_LOG_FORMAT"},
	}
	if os.Geteuid() == 0 {
		tests = append(tests, struct {
			env  []string
			want string
		}{[]string{"HERALD_MAILSTORE_UID=0"}, "HERALD_MAILSTORE_UID is required"})
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			env := append([]string{"PATH=" + os.Getenv("PATH")}, base...)
			if strings.HasPrefix(tc.want, "HERALD_MAILSTORE_ROOT") {
				env = env[:1]
			}
			cmd := exec.Command(testproc.Build(t, mailstoreCmd))
			cmd.Env = append(env, tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := cmd.ProcessState.ExitCode()
			msg := strings.TrimRight(stderr.String(), "\n")
			if err == nil || code != 2 || strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and one line mentioning %q", code, msg, tc.want)
			}
		})
	}
}

// rig is a database with mail_users watched, a nats-server and an
// in-process bridge.
type rig struct {
	t    *testing.T
	ctx  context.Context
	pool *pgxpool.Pool
	ns   *natstest.Server
	root string
}

func newRig(t *testing.T) *rig {
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
		t.Fatal(err)
	}
	ddl, err := os.ReadFile("../../consumers/mailstore/testdata/mail_users.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, string(ddl)); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.WatchTable(ctx, pool, schema.WatchOptions{Table: "mail_users", Columns: []string{"gid", "dba", "username", "quota_bytes"}}); err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, natstest.Options{})
	nc := ns.Connect(t, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	b, err := bridge.New(dsn, nc, bridge.Config{Preset: bridge.PresetState, PollInterval: 200 * time.Millisecond},
		bridge.WithLogger(slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))))
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
	return &rig{t: t, ctx: ctx, pool: pool, ns: ns, root: filepath.Join(t.TempDir(), "mail")}
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	defer func() { _ = recover() }()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (r *rig) exec(sql string, args ...any) {
	r.t.Helper()
	if _, err := r.pool.Exec(r.ctx, sql, args...); err != nil {
		r.t.Fatalf("%s: %v", sql, err)
	}
}

// start runs herald-mailstore on the rig.
func (r *rig) start() *testproc.Proc {
	r.t.Helper()
	return testproc.Start(r.t, testproc.Build(r.t, mailstoreCmd), []string{
		"PATH=" + os.Getenv("PATH"),
		"HERALD_NATS_URL=" + r.ns.URL(),
		"HERALD_MAILSTORE_ROOT=" + r.root,
		"HERALD_MAILSTORE_UID=" + strconv.Itoa(testUID),
		"HERALD_METRICS_ADDR=",
		"HERALD_LOG_FORMAT=text",
		"HERALD_CONSUMER_ACK_WAIT=2s",
	})
}

type row struct {
	id       int64
	gid      int
	domain   string
	username string
	quota    int64
}

func (r *rig) rows() []row {
	r.t.Helper()
	rs, err := r.pool.Query(r.ctx, `SELECT id, gid, dba, username, quota_bytes FROM mail_users`)
	if err != nil {
		r.t.Fatal(err)
	}
	defer rs.Close()
	var out []row
	for rs.Next() {
		var x row
		if err := rs.Scan(&x.id, &x.gid, &x.domain, &x.username, &x.quota); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}

// mismatch describes how the tree differs from the table, "" when it
// matches: the same mailboxes, each with its Maildir folders (0700), its
// quota line, its owner (as root), and no temporary leftovers.
func (r *rig) mismatch() string {
	rows := r.rows()
	want := make([]string, 0, len(rows))
	for _, x := range rows {
		want = append(want, x.domain+"/"+x.username)
	}
	sort.Strings(want)
	var got []string
	doms, err := os.ReadDir(r.root)
	if err != nil {
		return err.Error()
	}
	for _, d := range doms {
		if !d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			continue
		}
		boxes, _ := os.ReadDir(filepath.Join(r.root, d.Name()))
		for _, b := range boxes {
			got = append(got, d.Name()+"/"+b.Name()) // temporary leftovers show up here too
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		return fmt.Sprintf("%d mailboxes, want %d; extra %q, missing %q", len(got), len(want), minus(got, want), minus(want, got))
	}
	for _, x := range rows {
		home := filepath.Join(r.root, x.domain, x.username)
		for _, d := range []string{"", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"} {
			fi, err := os.Lstat(filepath.Join(home, d))
			if err != nil {
				return err.Error()
			}
			if fi.Mode().Perm() != 0o700 || !fi.IsDir() {
				return fmt.Sprintf("%s/%s: mode %v", home, d, fi.Mode())
			}
			if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (st.Uid != testUID || int(st.Gid) != x.gid) {
				return fmt.Sprintf("%s/%s: owner %d:%d, want %d:%d", home, d, st.Uid, st.Gid, testUID, x.gid)
			}
		}
		b, err := os.ReadFile(filepath.Join(home, "Maildir/maildirsize"))
		if err != nil {
			return err.Error()
		}
		if first, _, _ := strings.Cut(string(b), "\n"); first != strconv.FormatInt(x.quota, 10)+"S" {
			return fmt.Sprintf("%s quota line %q, want %dS", home, first, x.quota)
		}
	}
	return ""
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func (r *rig) countMailboxes() int {
	n := 0
	doms, _ := os.ReadDir(r.root)
	for _, d := range doms {
		if d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			boxes, _ := os.ReadDir(filepath.Join(r.root, d.Name()))
			n += len(boxes)
		}
	}
	return n
}

// TestKillNineUnderLoadConverges: herald-mailstore, a real process, is
// killed with SIGKILL twice while it works through a backlog of creates,
// quota changes, renames, gid changes and deletes, and restarted each time;
// in the end the tree matches the table exactly, archived mailboxes belong
// to deleted rows only, and SIGTERM stops it with exit status 0.
func TestKillNineUnderLoadConverges(t *testing.T) {
	r := newRig(t)
	p := r.start()

	rnd := rand.New(rand.NewPCG(1, 2))
	var live []int64
	deleted := map[string]bool{}
	next := 0
	fresh := func() string { next++; return fmt.Sprintf("u%d", next) }
	load := func(ops int) {
		for range ops {
			switch k := rnd.IntN(10); {
			case k < 4 || len(live) < 5:
				var id int64
				err := r.pool.QueryRow(r.ctx, `INSERT INTO mail_users (gid, dba, username, quota_bytes) VALUES ($1, $2, $3, $4) RETURNING id`,
					testGID, fmt.Sprintf("d%d.example", rnd.IntN(3)), fresh(), rnd.Int64N(1<<30)).Scan(&id)
				if err != nil {
					t.Fatal(err)
				}
				live = append(live, id)
			case k < 6:
				r.exec(`UPDATE mail_users SET quota_bytes = $1 WHERE id = $2`, rnd.Int64N(1<<30), live[rnd.IntN(len(live))])
			case k < 7:
				r.exec(`UPDATE mail_users SET username = $1 WHERE id = $2`, fresh(), live[rnd.IntN(len(live))])
			case k < 8:
				r.exec(`UPDATE mail_users SET dba = $1 WHERE id = $2`, fmt.Sprintf("d%d.example", rnd.IntN(3)), live[rnd.IntN(len(live))])
			case k < 9:
				r.exec(`UPDATE mail_users SET gid = $1 WHERE id = $2`, testGID+rnd.IntN(2), live[rnd.IntN(len(live))])
			default:
				i := rnd.IntN(len(live))
				r.exec(`DELETE FROM mail_users WHERE id = $1`, live[i])
				deleted[strconv.FormatInt(live[i], 10)] = true
				live = slices.Delete(live, i, i+1)
			}
		}
	}

	load(400)
	for _, at := range []int{20, 60} {
		testproc.Eventually(t, converge, func() string {
			if n := r.countMailboxes(); n < at {
				return fmt.Sprintf("%d mailboxes so far, waiting for %d to kill", n, at)
			}
			return ""
		})
		p.Kill()
		t.Logf("killed herald-mailstore with %d mailboxes on disk", r.countMailboxes())
		load(100)
		p = r.start()
	}

	testproc.Eventually(t, converge, r.mismatch)

	// Every archived mailbox belongs to a deleted row.
	archive := filepath.Join(r.root, ".archive")
	err := filepath.WalkDir(archive, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != ".herald-mailstore" || d.IsDir() {
			return err
		}
		var o struct{ Key []string }
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &o); err != nil || len(o.Key) != 1 || !deleted[o.Key[0]] {
			return fmt.Errorf("%s: archived mailbox of key %v, which was not deleted", path, o.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if code := p.Stop(40 * time.Second); code != 0 {
		t.Fatalf("herald-mailstore exited %d on SIGTERM, want 0", code)
	}
	if !strings.Contains(p.Output(), "herald-mailstore stopped") {
		t.Fatal("herald-mailstore did not log its clean stop")
	}
}

// TestSIGTERMDrainsAndExitsZero: a running herald-mailstore stops on
// SIGTERM with status 0, after logging that it finished what was in flight.
func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	r := newRig(t)
	p := r.start()
	r.exec(`INSERT INTO mail_users (gid, dba, username, quota_bytes) VALUES ($1, 'example.org', 'alice', 1)`, testGID)
	testproc.Eventually(t, converge, r.mismatch)
	js, err := jetstream.New(r.ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Consumer(r.ctx, "HERALD", "mailstore"); err != nil {
		t.Fatalf("durable mailstore: %v", err)
	}
	if code := p.Stop(40 * time.Second); code != 0 {
		t.Fatalf("exit %d on SIGTERM, want 0\n%s", code, p.Output())
	}
	for _, want := range []string{"stopping: finishing the changes in flight", "herald-mailstore stopped"} {
		if !strings.Contains(p.Output(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}
