package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// LogEnv names the environment variable that, set to 1, copies the shared
// cluster's server log to standard error. The shared cluster serves many
// tests at once, so its log belongs to none of them.
const LogEnv = "HERALD_TEST_PG_LOG"

// startTimeout bounds starting a cluster for a test: initdb plus startup,
// with room for a loaded CI machine and the race detector.
const startTimeout = 2 * time.Minute

// live holds every cluster not yet closed, so Main can close them on exit
// or on a signal.
var live = struct {
	sync.Mutex
	m map[*Cluster]struct{}
}{m: map[*Cluster]struct{}{}}

func register(c *Cluster) {
	live.Lock()
	defer live.Unlock()
	live.m[c] = struct{}{}
}

func unregister(c *Cluster) {
	live.Lock()
	defer live.Unlock()
	delete(live.m, c)
}

// closeAll closes every live cluster.
func closeAll() error {
	live.Lock()
	cs := make([]*Cluster, 0, len(live.m))
	for c := range live.m {
		cs = append(cs, c)
	}
	live.Unlock()
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// mainRunning is set by Main; Shared refuses to start without it, because
// nothing else would stop the shared cluster and remove its directory.
var mainRunning atomic.Bool

// Main runs the tests of a package that uses pgtest:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// It runs m.Run, closes the shared cluster (and any cluster a test left
// open), and exits with m.Run's code. On SIGINT or SIGTERM it closes them
// all and exits with status 1, so an interrupted run leaves nothing behind.
func Main(m *testing.M) {
	mainRunning.Store(true)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	finished := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "pgtest: %v received; closing PostgreSQL clusters\n", sig)
			if err := closeAll(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
			os.Exit(1)
		case <-finished:
		}
	}()
	code := m.Run()
	signal.Stop(sigs)
	close(finished)
	if err := closeAll(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// shared is the test binary's shared cluster.
var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// sharedSettings are the settings of the shared cluster: durability off
// (a crashed test cluster is thrown away, never recovered) and room for
// many parallel tests' pools.
var sharedSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
	"max_connections":    "300",
}

// Shared returns the test binary's shared cluster, starting it on first use
// with fsync, synchronous_commit and full_page_writes off and
// max_connections 300: fast, and fine for data nobody recovers. Tests must not stop, restart or kill it; fault tests use NewCluster. It
// needs the package's TestMain to call Main, which closes it.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	if !mainRunning.Load() {
		t.Fatal("pgtest.Shared needs the package's TestMain to be `func TestMain(m *testing.M) { pgtest.Main(m) }`, " +
			"which stops the shared cluster when the tests end")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		var logf func(string, ...any)
		if os.Getenv(LogEnv) == "1" {
			logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
		}
		shared.c, shared.err = Start(ctx, Options{Settings: sharedSettings, Logf: logf})
	})
	if shared.err != nil {
		t.Fatalf("pgtest: starting the shared PostgreSQL cluster: %v", shared.err)
	}
	return shared.c
}

// dbSeq makes database names unique within the test binary, which owns the
// shared cluster alone.
var dbSeq atomic.Int64

// dbName derives a database name from a test name: lower case, [a-z0-9_]
// only, short enough for PostgreSQL's 63-byte identifiers once seq is added,
// so a leftover database can be traced back to its test.
func dbName(testName string, seq int64) string {
	var b strings.Builder
	b.WriteString("t_")
	lastUnderscore := true
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 44 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			lastUnderscore = false
		} else if !lastUnderscore {
			b.WriteByte('_')
			lastUnderscore = true
		}
	}
	name := strings.TrimRight(b.String(), "_")
	return fmt.Sprintf("%s_%d", name, seq)
}

// NewDB creates a fresh database on the shared cluster and returns its
// connection string (TCP, superuser). The database is dropped WITH (FORCE)
// when the test ends, after the test's own later-registered cleanups.
func NewDB(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	name := dbName(t.Name(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			t.Error(err)
		}
	})
	return c.ConnString(name)
}

// clusterDefaults are NewCluster's settings under the caller's. fsync is off
// because only a process crash is simulated, never an OS crash;
// synchronous_commit stays on so that a transaction whose commit returned
// survives Kill.
var clusterDefaults = map[string]string{
	"fsync":            "off",
	"full_page_writes": "off",
}

// NewCluster starts a dedicated cluster for a test that stops, restarts or
// kills its server, and closes it when the test ends. Its defaults are
// fsync and full_page_writes off (opts.Settings override them); commits stay
// synchronous, so what a test committed is still there after Kill. The server log and
// pgtest's messages go to t.Logf unless opts.Logf is set.
func NewCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	settings := make(map[string]string, len(clusterDefaults)+len(opts.Settings))
	for k, v := range clusterDefaults {
		settings[k] = v
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	opts.Settings = settings
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}
