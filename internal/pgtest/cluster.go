package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// UserEnv names the environment variable that overrides which system user
// runs PostgreSQL when the tests run as root ("postgres" by default).
const UserEnv = "HERALD_TEST_PG_USER"

const (
	// readyTimeout bounds the wait for a starting server to accept
	// connections when the caller's context has no earlier deadline.
	readyTimeout = time.Minute
	// orphanGrace is how long Kill lets backends notice their postmaster's
	// death and exit on their own before it SIGKILLs them too.
	orphanGrace = 20 * time.Second
	// logTailLines is how many server log lines are kept for error messages.
	logTailLines = 60
	// portAttempts bounds the retries when a free port is taken between
	// choosing it and the server binding it.
	portAttempts = 5
)

var (
	// ErrClosed is returned by methods called on a closed Cluster.
	ErrClosed = errors.New("pgtest: cluster is closed")
	// ErrNotRunning is returned by Kill on a stopped Cluster.
	ErrNotRunning = errors.New("pgtest: cluster is not running")

	errPortInUse = errors.New("port in use")
)

// Options configures a cluster started by Start or NewCluster.
type Options struct {
	// Settings are extra postgresql.conf settings, e.g. "fsync": "off".
	// They are written to the data directory, so they survive restarts.
	Settings map[string]string
	// Logf receives the server's log lines and pgtest's own messages.
	// Nil discards them; tests pass t.Logf.
	Logf func(format string, args ...any)
}

// Cluster is one PostgreSQL cluster (a data directory and, while running,
// its postmaster) owned by this process. It listens on 127.0.0.1 and on a
// unix socket in its own directory, with trust authentication for the
// superuser "postgres". Its methods are safe for concurrent use.
type Cluster struct {
	binDir  string
	dir     string // cluster directory: socket directory and parent of dataDir
	dataDir string
	port    int // set before Start returns, never changed after
	cred    *syscall.Credential
	env     []string

	life   sync.Mutex // serialises start, stop, kill and close
	proc   *process   // running postmaster; guarded by life
	closed bool       // guarded by life
	pid    atomic.Int64

	logMu sync.Mutex
	logf  func(string, ...any) // nil once closed, so no late line reaches a finished test
	tail  []string             // last lines since the latest start
}

// Start creates a new cluster with initdb in a fresh directory and starts
// it, returning once it accepts connections. The caller must Close it. It is
// not tied to package testing; tests usually want Shared, NewDB or
// NewCluster instead.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	conf, err := renderConf(opts.Settings)
	if err != nil {
		return nil, err
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	root := tempRoot()
	removeStale(root, opts.Logf)
	dir, err := os.MkdirTemp(root, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: creating the cluster directory under %s: %w", root, err)
	}
	c := &Cluster{
		binDir:  bin,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		cred:    cred,
		env:     serverEnv(),
		logf:    opts.Logf,
	}
	register(c)
	if err := c.initdb(ctx, conf); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	for attempt := 1; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			return nil, errors.Join(err, c.Close())
		}
		c.life.Lock()
		err = c.startLocked(ctx)
		c.life.Unlock()
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == portAttempts {
			return nil, errors.Join(err, c.Close())
		}
		c.logMsg("pgtest: port %d was taken before postgres could bind it; trying another", c.port)
	}
	c.logMsg("pgtest: cluster %s accepting connections on 127.0.0.1:%d (postmaster pid %d)", c.dir, c.port, c.PID())
	return c, nil
}

// initdb prepares the directory and runs initdb with the test settings.
func (c *Cluster) initdb(ctx context.Context, conf string) error {
	if err := writeOwner(c.dir); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if c.cred != nil {
		// initdb and postgres run as the server user and need the
		// directory for the data directory and the socket.
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: handing %s to the server user: %w", c.dir, err)
		}
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.Dir = c.dir
	cmd.Env = c.env
	cmd.Stdout = &out
	cmd.Stderr = &out
	p, err := spawn(cmd, c.cred)
	if err != nil {
		return fmt.Errorf("pgtest: running initdb: %w", err)
	}
	<-p.done
	if p.err != nil {
		return fmt.Errorf("pgtest: initdb -D %s failed: %w; its output:\n%s", c.dataDir, p.err, out.String())
	}
	// The settings live in a file of their own, included from
	// postgresql.conf, so a person inspecting the directory sees at once
	// what the harness changed.
	if err := c.writeDataFile("herald.conf", []byte(conf), false); err != nil {
		return err
	}
	return c.writeDataFile("postgresql.conf", []byte("\ninclude 'herald.conf'\n"), true)
}

// writeDataFile writes (or appends to) a file in the data directory, owned
// by the server user.
func (c *Cluster) writeDataFile(name string, data []byte, appendTo bool) error {
	path := filepath.Join(c.dataDir, name)
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		flags = os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("pgtest: writing %s: %w", path, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && c.cred != nil {
		err = os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
	}
	if err != nil {
		return fmt.Errorf("pgtest: writing %s: %w", path, err)
	}
	return nil
}

// settingName is what postgresql.conf accepts as a parameter name,
// including custom "extension.name" ones.
var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// renderConf turns settings into postgresql.conf lines, sorted so the file
// is the same from run to run. Every value is quoted, which postgresql.conf
// accepts for numbers and booleans too.
func renderConf(settings map[string]string) (string, error) {
	names := make([]string, 0, len(settings))
	for name := range settings {
		if !settingName.MatchString(name) {
			return "", fmt.Errorf("pgtest: %q is not a valid PostgreSQL setting name", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# Written by Herald's pgtest harness.\n")
	for _, name := range names {
		v := settings[name]
		if strings.ContainsAny(v, "\n\r\x00") {
			return "", fmt.Errorf("pgtest: the value of setting %s holds a line break or NUL", name)
		}
		v = strings.ReplaceAll(v, `\`, `\\`)
		v = strings.ReplaceAll(v, `'`, `''`)
		fmt.Fprintf(&b, "%s = '%s'\n", name, v)
	}
	return b.String(), nil
}

// startLocked starts the postmaster and waits until it accepts connections.
// The caller holds c.life.
func (c *Cluster) startLocked(ctx context.Context) error {
	if c.closed {
		return ErrClosed
	}
	if c.proc != nil {
		return fmt.Errorf("pgtest: cluster %s is already running (postmaster pid %d)", c.dir, c.proc.id.PID)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgtest: creating the server log pipe: %w", err)
	}
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"),
		"-D", c.dataDir, "-p", strconv.Itoa(c.port), "-h", "127.0.0.1", "-k", c.dir)
	cmd.Dir = c.dir
	cmd.Env = c.env
	// An *os.File rather than an io.Writer: exec then hands the pipe to the
	// child directly, and cmd.Wait does not wait for the backends, which
	// inherit it, to close it too.
	cmd.Stdout = w
	cmd.Stderr = w
	c.logMu.Lock()
	c.tail = nil
	c.logMu.Unlock()
	p, err := spawn(cmd, c.cred)
	_ = w.Close()
	if err != nil {
		_ = r.Close()
		return fmt.Errorf("pgtest: starting %s: %w", cmd.Path, err)
	}
	p.logDone = make(chan struct{})
	go c.readLog(r, p.logDone)
	c.proc = p
	c.pid.Store(int64(p.id.PID))
	if err := c.waitReady(ctx, p); err != nil {
		if kerr := c.killLocked(context.Background()); kerr != nil {
			err = errors.Join(err, kerr)
		}
		return err
	}
	return nil
}

// waitReady polls until the server accepts a connection over TCP, the
// server exits, or the deadline passes.
func (c *Cluster) waitReady(ctx context.Context, p *process) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var lastErr error
	for {
		attempt, acancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(attempt, c.ConnString("postgres"))
		acancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return nil
		}
		lastErr = err
		select {
		case <-p.done:
			c.waitLog(p)
			tail := c.logTail()
			err := fmt.Errorf("pgtest: postgres exited during startup (%v); server log:\n%s", p.err, tail)
			if strings.Contains(tail, "Address already in use") {
				return fmt.Errorf("%w: %w", errPortInUse, err)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres did not accept connections on 127.0.0.1:%d in time (%w; last attempt: %v); server log:\n%s",
				c.port, ctx.Err(), lastErr, c.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readLog forwards the server's output line by line until every process
// holding the pipe has exited.
func (c *Cluster) readLog(r *os.File, done chan<- struct{}) {
	defer close(done)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		c.logLine(sc.Text())
	}
	// After an oversized line the scanner gives up; keep draining so the
	// server never blocks writing its log.
	_, _ = io.Copy(io.Discard, r)
}

// logLine keeps a server log line for error messages and passes it on.
func (c *Cluster) logLine(line string) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if len(c.tail) == logTailLines {
		copy(c.tail, c.tail[1:])
		c.tail = c.tail[:logTailLines-1]
	}
	c.tail = append(c.tail, line)
	if c.logf != nil {
		c.logf("postgres: %s", line)
	}
}

// logMsg passes on one of pgtest's own messages.
func (c *Cluster) logMsg(format string, args ...any) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if c.logf != nil {
		c.logf(format, args...)
	}
}

// logTail returns the server log lines kept since the latest start.
func (c *Cluster) logTail() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if len(c.tail) == 0 {
		return "(empty)"
	}
	return strings.Join(c.tail, "\n")
}

// waitLog waits, briefly, for the log of an exited server to be read to the
// end, so its last lines are in the tail and never logged after a test ends.
func (c *Cluster) waitLog(p *process) {
	if p.logDone == nil {
		return
	}
	select {
	case <-p.logDone:
	case <-time.After(5 * time.Second):
	}
}

// Port returns the TCP port the cluster listens on (127.0.0.1 only). It
// stays the same across Stop, Start, Restart and Kill.
func (c *Cluster) Port() int { return c.port }

// SocketDir returns the directory holding the cluster's unix socket.
func (c *Cluster) SocketDir() string { return c.dir }

// DataDir returns the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// ConnString returns a URL connecting to database db as the superuser
// "postgres" over TCP, without TLS; the cluster trusts every local
// connection, so no password is needed.
func (c *Cluster) ConnString(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, url.PathEscape(db))
}

// SocketConnString is ConnString over the cluster's unix socket.
func (c *Cluster) SocketConnString(db string) string {
	return fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d&sslmode=disable",
		url.PathEscape(db), url.QueryEscape(c.dir), c.port)
}

// CreateDatabase creates database name.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	if err := c.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("pgtest: creating database %s: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name if it exists, terminating the sessions
// still connected to it (WITH (FORCE)), so a test's leftover pools never
// keep its database alive.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	if err := c.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: dropping database %s: %w", name, err)
	}
	return nil
}

// exec runs one statement in the "postgres" database on a connection of its
// own; CREATE and DROP DATABASE cannot run inside a transaction or pool
// session that a caller might share.
func (c *Cluster) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// PID returns the postmaster's pid, or 0 while the cluster is stopped.
func (c *Cluster) PID() int { return int(c.pid.Load()) }

// Start starts a stopped cluster again on the same directory and port and
// waits until it accepts connections. After Kill it runs crash recovery
// first, so committed data is back.
func (c *Cluster) Start(ctx context.Context) error {
	c.life.Lock()
	defer c.life.Unlock()
	return c.startLocked(ctx)
}

// Stop shuts the server down the "fast" way (SIGINT: sessions are
// terminated, a checkpoint is written) and waits until the postmaster and
// all its processes are gone. Stopping a stopped cluster does nothing.
func (c *Cluster) Stop(ctx context.Context) error {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed {
		return ErrClosed
	}
	return c.stopLocked(ctx, syscall.SIGINT)
}

// Restart is Stop followed by Start.
func (c *Cluster) Restart(ctx context.Context) error {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed {
		return ErrClosed
	}
	if err := c.stopLocked(ctx, syscall.SIGINT); err != nil {
		return err
	}
	return c.startLocked(ctx)
}

// stopLocked sends sig to the postmaster and waits for it to exit. The
// postmaster only exits after all its children, so nothing is left behind.
// The caller holds c.life.
func (c *Cluster) stopLocked(ctx context.Context, sig syscall.Signal) error {
	p := c.proc
	if p == nil {
		return nil
	}
	if err := syscall.Kill(p.id.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgtest: signalling postgres (pid %d): %w", p.id.PID, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("pgtest: waiting for postgres (pid %d) to shut down after %v: %w", p.id.PID, sig, ctx.Err())
	}
	c.waitLog(p)
	c.proc = nil
	c.pid.Store(0)
	c.logMsg("pgtest: cluster %s stopped (%v)", c.dir, sig)
	return nil
}

// Kill simulates a crash: it SIGKILLs the postmaster, then waits until all
// its backends and auxiliary processes have exited too, so Start can run
// crash recovery right away (PostgreSQL refuses to start while any process
// of the old server still holds its shared memory).
func (c *Cluster) Kill(ctx context.Context) error {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.proc == nil {
		return ErrNotRunning
	}
	return c.killLocked(ctx)
}

// killLocked is Kill; the caller holds c.life.
func (c *Cluster) killLocked(ctx context.Context) error {
	p := c.proc
	if p == nil {
		return nil
	}
	pid := p.id.PID
	// Freeze the postmaster first, so it cannot fork a backend between
	// listing its children and killing it.
	if syscall.Kill(pid, syscall.SIGSTOP) == nil {
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			st, err := readStat(pid)
			if err != nil || st.state == 'T' || st.state == 't' || st.state == 'Z' {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	victims := childrenOf(pid)
	for _, id := range procsIn(c.dataDir) {
		if id.PID != pid {
			victims = append(victims, id)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgtest: killing postgres (pid %d): %w", pid, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("pgtest: waiting for the killed postmaster (pid %d) to exit: %w", pid, ctx.Err())
	}
	c.proc = nil
	c.pid.Store(0)
	// Backends notice their postmaster's death and exit by themselves.
	// Whatever still runs after orphanGrace is killed as well, so a stuck
	// backend cannot keep the cluster from starting again.
	grace := time.Now().Add(orphanGrace)
	escalated := false
	for {
		left := anyAlive(victims)
		if len(left) == 0 {
			left = procsIn(c.dataDir)
		}
		if len(left) == 0 {
			break
		}
		if !escalated && time.Now().After(grace) {
			escalated = true
			c.logMsg("pgtest: %d processes of the killed cluster %s still run after %v; killing them", len(left), c.dir, orphanGrace)
			for _, id := range left {
				if alive(id) {
					_ = syscall.Kill(id.PID, syscall.SIGKILL)
				}
			}
			grace = time.Now().Add(orphanGrace)
		} else if escalated && time.Now().After(grace) {
			return fmt.Errorf("pgtest: processes %v of the killed cluster %s do not exit", left, c.dir)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: waiting for the backends of the killed postmaster (pid %d) to exit: %w", pid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	c.waitLog(p)
	c.logMsg("pgtest: cluster %s killed (postmaster pid %d and %d other processes)", c.dir, pid, len(victims))
	return nil
}

// Close stops the server (fast shutdown, then immediate, then SIGKILL if it
// does not go), removes the cluster directory, and drops the log function.
// Calling it again does nothing.
func (c *Cluster) Close() error {
	c.life.Lock()
	defer c.life.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	unregister(c)
	var errs []error
	if c.proc != nil {
		stop := func(sig syscall.Signal, d time.Duration) error {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			return c.stopLocked(ctx, sig)
		}
		if stop(syscall.SIGINT, 10*time.Second) != nil && stop(syscall.SIGQUIT, 5*time.Second) != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := c.killLocked(ctx); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
	}
	c.logMu.Lock()
	c.logf = nil
	c.logMu.Unlock()
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: removing %s: %w", c.dir, err))
	}
	return errors.Join(errs...)
}

// freePort asks the kernel for a free TCP port on 127.0.0.1. Another process
// may take it before postgres binds it; Start then tries another.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// serverCredential returns who runs PostgreSQL: nil (this process's user)
// unless this process is root, which PostgreSQL refuses to run as.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	name := os.Getenv(UserEnv)
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, so PostgreSQL must run as an ordinary user, but looking up %q failed: %w; "+
			"create it (useradd --system %s) or name another with %s", name, err, name, UserEnv)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgtest: user %s has a non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("pgtest: user %s is root; PostgreSQL needs an ordinary user, name one with %s", name, UserEnv)
	}
	// An empty Groups drops root's supplementary groups.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// serverEnv is this process's environment without the libpq variables,
// which would otherwise steer initdb and postgres (PGDATA, PGPORT, ...).
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}
