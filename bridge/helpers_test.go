package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// rig is one test's database (migrated) and nats-server.
type rig struct {
	t    *testing.T
	ctx  context.Context
	dsn  string
	pool *pgxpool.Pool
	ns   *natstest.Server
	js   jetstream.JetStream
}

type rigOptions struct {
	cluster    *pgtest.Cluster // nil: the shared cluster
	syncAlways bool
	maxPayload int32
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	var dsn string
	if o.cluster == nil {
		dsn = pgtest.NewDB(t)
	} else {
		require.NoError(t, o.cluster.CreateDatabase(ctx, "herald"))
		dsn = o.cluster.ConnString("herald")
	}
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	_, err = schema.Migrate(ctx, pool)
	require.NoError(t, err)
	ns := natstest.Start(t, natstest.Options{SyncAlways: o.syncAlways, MaxPayload: o.maxPayload})
	r := &rig{t: t, ctx: ctx, dsn: dsn, pool: pool, ns: ns}
	r.js = ns.JetStream(t)
	return r
}

func (r *rig) exec(sql string, args ...any) {
	r.t.Helper()
	_, err := r.pool.Exec(r.ctx, sql, args...)
	require.NoError(r.t, err, sql)
}

func (r *rig) watch(table string, opts ...func(*schema.WatchOptions)) {
	r.t.Helper()
	o := schema.WatchOptions{Table: table}
	for _, f := range opts {
		f(&o)
	}
	_, err := schema.WatchTable(r.ctx, r.pool, o)
	require.NoError(r.t, err)
}

func (r *rig) backlog() int {
	r.t.Helper()
	var n int
	require.NoError(r.t, r.pool.QueryRow(r.ctx, `SELECT count(*) FROM herald.log`).Scan(&n))
	return n
}

// testLogger routes a component's logs to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runBridge runs a bridge in this process until the test ends or stop is
// called; stop returns Run's error.
func (r *rig) runBridge(cfg bridge.Config) (b *bridge.Bridge, stop func() error) {
	r.t.Helper()
	nc := r.ns.Connect(r.t, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	b, err := bridge.New(r.dsn, nc, cfg, bridge.WithLogger(testLogger(r.t)))
	require.NoError(r.t, err)
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = fmt.Errorf("bridge did not stop within 30s")
			}
		})
		return runErr
	}
	r.t.Cleanup(func() { _ = stop() })
	return b, stop
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// streamMsgs reads every message of the stream in sequence order.
func (r *rig) streamMsgs(stream string) []*jetstream.RawStreamMsg {
	r.t.Helper()
	s, err := r.js.Stream(r.ctx, stream)
	require.NoError(r.t, err)
	info, err := s.Info(r.ctx)
	require.NoError(r.t, err)
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(r.ctx, seq)
		if err != nil {
			continue // deleted or purged
		}
		out = append(out, m)
	}
	return out
}

// envelopes decodes stream messages, checking each against its headers.
func envelopes(t *testing.T, msgs []*jetstream.RawStreamMsg) []*change.Envelope {
	t.Helper()
	out := make([]*change.Envelope, 0, len(msgs))
	for _, m := range msgs {
		e, err := change.FromMsg(m.Subject, m.Header, m.Data)
		require.NoError(t, err, "message %d on %s", m.Sequence, m.Subject)
		out = append(out, e)
	}
	return out
}

// waitDrained waits until the log is empty and the stream holds want
// messages (want < 0: any number).
func (r *rig) waitDrained(stream string, want int, timeout time.Duration) {
	r.t.Helper()
	waitFor(r.t, timeout, fmt.Sprintf("log drained and %d messages in %s", want, stream), func() bool {
		if r.backlog() != 0 {
			return false
		}
		if want < 0 {
			return true
		}
		s, err := r.js.Stream(r.ctx, stream)
		if err != nil {
			return false
		}
		info, err := s.Info(r.ctx)
		return err == nil && int(info.State.Msgs) == want
	})
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// binDirPrefix names the directories bridgeBinary builds into.
const binDirPrefix = "herald-bridge-bin-"

// bridgeBinary builds cmd/herald-bridge once per test binary, into a
// directory of its own that records the test binary's pid. A test binary
// ends with os.Exit (pgtest.Main) and cannot remove it, so each build first
// removes the directories of test binaries that are gone.
func bridgeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		removeStaleBinDirs()
		dir, err := os.MkdirTemp("", binDirPrefix)
		if err != nil {
			buildErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "herald-bridge")
		cmd := exec.Command("go", "build", "-o", buildPath, "github.com/herald-cdc/herald/cmd/herald-bridge")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build herald-bridge: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return buildPath
}

// removeStaleBinDirs removes build directories whose owner has exited.
// Directories without an owner file are left alone.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}

// bridgeProc is herald-bridge running as a real process. It is reaped in
// the background, so a test can wait for it to exit by itself.
type bridgeProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed once the process has exited and been reaped
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startBridge starts herald-bridge with the rig's database and NATS and
// extra HERALD_* variables.
func (r *rig) startBridge(env map[string]string) *bridgeProc {
	r.t.Helper()
	cmd := exec.Command(bridgeBinary(r.t))
	cmd.Env = append(os.Environ(),
		"HERALD_DATABASE_URL="+r.dsn,
		"HERALD_NATS_URL="+r.ns.URL(),
		"HERALD_METRICS_ADDR=",
		"HERALD_LOG_FORMAT=text",
	)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &bridgeProc{t: r.t, cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(r.t, cmd.Start())
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	r.t.Cleanup(func() {
		p.kill()
		if r.t.Failed() {
			r.t.Logf("herald-bridge (pid %d) output:\n%s", cmd.Process.Pid, p.out.String())
		}
	})
	return p
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *bridgeProc) kill() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// running reports whether the process has not exited yet.
func (p *bridgeProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait waits for the process to exit by itself and returns its exit code.
func (p *bridgeProc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
		p.t.Fatalf("herald-bridge did not exit within %s; its output:\n%s", timeout, p.out.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM and returns the exit code.
func (p *bridgeProc) stop(timeout time.Duration) int {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
		p.t.Fatalf("herald-bridge did not exit within %s of SIGTERM", timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}
