package pgtest

import (
	"context"
	"errors"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

// connect opens a connection closed when the test ends.
func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connecting to %s: %v", connString, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// queryString runs a one-value query on a fresh connection.
func queryString(t *testing.T, connString, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connecting to %s: %v", connString, err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// mustExec runs statements on a fresh connection.
func mustExec(t *testing.T, connString string, sqls ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connecting to %s: %v", connString, err)
	}
	defer conn.Close(ctx)
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// procUID returns the real uid of a process.
func procUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			uid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return uid
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return -1
}

// waitGone polls until none of ids is alive.
func waitGone(t *testing.T, ids []procID, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := anyAlive(ids)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v still alive after %v", left, within)
		}
		time.Sleep(10 * time.Millisecond) // polling /proc: no event to wait on
	}
}

func TestSharedRunsAsServerUser(t *testing.T) {
	c := Shared(t)
	if c2 := Shared(t); c2 != c {
		t.Fatal("Shared returned two different clusters")
	}
	pid := c.PID()
	if pid == 0 {
		t.Fatal("shared cluster reports no postmaster pid")
	}
	wantUID := os.Geteuid()
	if wantUID == 0 {
		name := os.Getenv(UserEnv)
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if wantUID, err = strconv.Atoi(u.Uid); err != nil {
			t.Fatal(err)
		}
	}
	if got := procUID(t, pid); got != wantUID {
		t.Fatalf("postmaster %d runs as uid %d, want %d (euid of the test is %d)", pid, got, wantUID, os.Geteuid())
	}
	if got := len(c.SocketDir() + "/.s.PGSQL.65535"); got > 107 {
		t.Fatalf("socket path is %d bytes, above the 107-byte limit", got)
	}

	// Both the TCP and the socket connection strings reach the server as the
	// superuser, with the fast test settings in force.
	if got := queryString(t, c.ConnString("postgres"), "SELECT current_user"); got != "postgres" {
		t.Fatalf("current_user = %q over TCP", got)
	}
	if got := queryString(t, c.SocketConnString("postgres"), "SELECT coalesce(inet_server_addr()::text, 'socket')"); got != "socket" {
		t.Fatalf("SocketConnString connected over %q, want the unix socket", got)
	}
	for name, want := range sharedSettings {
		if got := queryString(t, c.ConnString("postgres"), "SHOW "+name); got != want {
			t.Errorf("SHOW %s = %q, want %q", name, got, want)
		}
	}
}

func TestNewDBIsolated(t *testing.T) {
	a, b := NewDB(t), NewDB(t)
	if a == b {
		t.Fatalf("NewDB returned the same database twice: %s", a)
	}
	mustExec(t, a, "CREATE TABLE only_in_a (id int)", "INSERT INTO only_in_a VALUES (1)")
	if got := queryString(t, b, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'only_in_a'"); got != "0" {
		t.Fatalf("table of database a is visible in database b")
	}
	if got := queryString(t, a, "SELECT count(*)::text FROM only_in_a"); got != "1" {
		t.Fatalf("count = %s in database a, want 1", got)
	}

	// The database of a finished test is dropped, even with a session still
	// connected to it: the subtest leaves held open on purpose.
	var name string
	var held *pgx.Conn
	ctx := context.Background()
	t.Run("sub", func(t *testing.T) {
		cs := NewDB(t)
		name = queryString(t, cs, "SELECT current_database()")
		var err error
		if held, err = pgx.Connect(ctx, cs); err != nil {
			t.Fatal(err)
		}
	})
	if held == nil {
		t.Fatal("subtest failed")
	}
	defer held.Close(ctx)
	admin := Shared(t).ConnString("postgres")
	if got := queryString(t, admin, "SELECT count(*)::text FROM pg_database WHERE datname = '"+name+"'"); got != "0" {
		t.Fatalf("database %s of a finished test still exists", name)
	}
	if _, err := held.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a session on the dropped database still works")
	}
}

// TestNewDBParallel is the common case of many parallel tests creating
// databases on the shared cluster at once.
func TestNewDBParallel(t *testing.T) {
	for i := range 12 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			cs := NewDB(t)
			mustExec(t, cs, "CREATE TABLE mine (n int)", "INSERT INTO mine VALUES ("+strconv.Itoa(i)+")")
			if got := queryString(t, cs, "SELECT n::text FROM mine"); got != strconv.Itoa(i) {
				t.Fatalf("got %s, want %d", got, i)
			}
		})
	}
}

func TestStopStartRestartKeepData(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx := context.Background()
	cs := c.ConnString("postgres")
	mustExec(t, cs, "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('before stop')")
	port, pid := c.Port(), c.PID()
	pm, err := idOf(pid)
	if err != nil {
		t.Fatal(err)
	}

	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if c.PID() != 0 {
		t.Fatalf("PID() = %d after Stop, want 0", c.PID())
	}
	if alive(pm) {
		t.Fatalf("postmaster %d still alive after Stop", pid)
	}
	if conn, err := pgx.Connect(ctx, cs); err == nil {
		_ = conn.Close(ctx)
		t.Fatal("connected to a stopped cluster")
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Port() != port {
		t.Fatalf("port changed from %d to %d", port, c.Port())
	}
	if err := c.Start(ctx); err == nil {
		t.Fatal("Start on a running cluster succeeded")
	}
	mustExec(t, cs, "INSERT INTO kept VALUES ('before restart')")
	before := c.PID()
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if c.PID() == before || c.PID() == 0 {
		t.Fatalf("PID() = %d after Restart, was %d", c.PID(), before)
	}
	if got := queryString(t, cs, "SELECT string_agg(v, ',' ORDER BY v) FROM kept"); got != "before restart,before stop" {
		t.Fatalf("rows after Stop/Start/Restart = %q", got)
	}
}

func TestKillThenStart(t *testing.T) {
	c := NewCluster(t, Options{})
	ctx := context.Background()
	cs := c.ConnString("postgres")
	mustExec(t, cs, "CREATE TABLE survived (v int)", "INSERT INTO survived VALUES (42)")
	held := connect(t, cs) // a backend that must die with the server

	pid := c.PID()
	pm, err := idOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	kids := childrenOf(pid)
	if len(kids) < 2 {
		t.Fatalf("postmaster %d has %d children; expected auxiliary processes and a backend", pid, len(kids))
	}

	if err := c.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	// Kill returns only after everything is gone: no polling here.
	if alive(pm) {
		t.Fatalf("postmaster %d alive after Kill", pid)
	}
	if left := anyAlive(kids); len(left) > 0 {
		t.Fatalf("children %v of the killed postmaster still alive after Kill", left)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("/proc/%d still exists after Kill (err %v)", pid, err)
	}
	if c.PID() != 0 {
		t.Fatalf("PID() = %d after Kill, want 0", c.PID())
	}
	if err := c.Kill(ctx); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Kill on a killed cluster = %v, want ErrNotRunning", err)
	}
	if _, err := held.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a session survived the killed server")
	}

	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, cs, "SELECT sum(v)::text FROM survived"); got != "42" {
		t.Fatalf("committed row after crash recovery: sum = %s, want 42", got)
	}
}

func TestCloseIdempotentAndRemovesDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := Start(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	pm, err := idOf(c.PID())
	if err != nil {
		t.Fatal(err)
	}
	kids := childrenOf(pm.PID)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if left := anyAlive(append(kids, pm)); len(left) > 0 {
		t.Fatalf("processes %v alive after Close", left)
	}
	if _, err := os.Stat(c.SocketDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cluster directory %s still exists after Close (err %v)", c.SocketDir(), err)
	}
	if err := c.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close = %v, want ErrClosed", err)
	}
}

// TestServerOutlivesStartingThread checks that the parent-death signal is
// tied to pgtest's own thread, not to the caller's: a server started from a
// thread that then exits keeps running.
func TestServerOutlivesStartingThread(t *testing.T) {
	type result struct {
		c   *Cluster
		tid int
		err error
	}
	res := make(chan result, 1)
	go func() {
		// Locked and never unlocked: the thread exits with the goroutine.
		runtime.LockOSThread()
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		c, err := Start(ctx, Options{Logf: t.Logf})
		res <- result{c, unix.Gettid(), err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		if err := r.c.Close(); err != nil {
			t.Error(err)
		}
	})
	taskDir := "/proc/self/task/" + strconv.Itoa(r.tid)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(taskDir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d that called Start did not exit", r.tid)
		}
		time.Sleep(5 * time.Millisecond) // polling /proc: no event to wait on
	}
	pm, err := idOf(r.c.PID())
	if err != nil || !alive(pm) {
		t.Fatalf("postmaster %d died with the thread that started it (err %v)", r.c.PID(), err)
	}
	if got := queryString(t, r.c.ConnString("postgres"), "SELECT 'up'"); got != "up" {
		t.Fatalf("query returned %q", got)
	}
}
