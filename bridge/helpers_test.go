package bridge_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
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
	"github.com/herald-cdc/herald/internal/testproc"
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
func (r *rig) runBridge(cfg bridge.Config, opts ...bridge.Option) (b *bridge.Bridge, stop func() error) {
	r.t.Helper()
	nc := r.ns.Connect(r.t, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	b, err := bridge.New(r.dsn, nc, cfg, append([]bridge.Option{bridge.WithLogger(testLogger(r.t))}, opts...)...)
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
	testproc.WaitFor(r.t, timeout, fmt.Sprintf("log drained and %d messages in %s", want, stream), func() bool {
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

// bridgeCmd is the import path of the herald-bridge command.
const bridgeCmd = "github.com/herald-cdc/herald/cmd/herald-bridge"

// startBridge starts herald-bridge as a real process with the rig's
// database and NATS and extra HERALD_* variables.
func (r *rig) startBridge(env map[string]string) *testproc.Proc {
	r.t.Helper()
	vars := append(os.Environ(),
		"HERALD_DATABASE_URL="+r.dsn,
		"HERALD_NATS_URL="+r.ns.URL(),
		"HERALD_METRICS_ADDR=",
		"HERALD_LOG_FORMAT=text",
	)
	for k, v := range env {
		vars = append(vars, k+"="+v)
	}
	return testproc.Start(r.t, testproc.Build(r.t, bridgeCmd), vars)
}
