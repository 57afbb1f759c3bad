package filesync_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
	"github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/internal/testproc"
	"github.com/herald-cdc/herald/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// cmdbSQL is the seed's table (CFEngine's host-specific data).
const cmdbSQL = `CREATE TABLE __cmdb (
    hostkey text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    epoch bigint NOT NULL DEFAULT 0
)`

// e2e is PostgreSQL with __cmdb, a nats-server and a bridge.
type e2e struct {
	t    *testing.T
	ctx  context.Context
	dsn  string
	pool *pgxpool.Pool
	ns   *natstest.Server
	js   jetstream.JetStream
	root string
}

func newE2E(t *testing.T, watch bool) *e2e {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	dsn := pgtest.NewDB(t)
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	_, err = schema.Migrate(ctx, pool)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, cmdbSQL)
	require.NoError(t, err)
	e := &e2e{t: t, ctx: ctx, dsn: dsn, pool: pool, root: t.TempDir()}
	if watch {
		e.watch()
	}
	e.ns = natstest.Start(t, natstest.Options{})
	e.js = e.ns.JetStream(t)
	nc := e.ns.Connect(t, nats.MaxReconnects(-1))
	b, err := bridge.New(dsn, nc, bridge.Config{}, bridge.WithLogger(consumertest.Logger(t)))
	require.NoError(t, err)
	bctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.Run(bctx) }()
	t.Cleanup(func() { stop(); <-done })
	_, err = bridge.EnsureStream(ctx, e.js, bridge.Config{})
	require.NoError(t, err)
	return e
}

func (e *e2e) watch() {
	_, err := schema.WatchTable(e.ctx, e.pool, schema.WatchOptions{Table: "__cmdb"})
	require.NoError(e.t, err)
}

func (e *e2e) exec(sql string, args ...any) {
	e.t.Helper()
	_, err := e.pool.Exec(e.ctx, sql, args...)
	require.NoError(e.t, err, sql)
}

// runFilesync runs filesync in this process until the test ends.
func (e *e2e) runFilesync(cfg filesync.Config) {
	e.t.Helper()
	cfg.Dir = e.root
	s, err := filesync.New(cfg, filesync.WithLogger(consumertest.Logger(e.t)))
	require.NoError(e.t, err)
	c, err := consumers.New(e.js, s.ConsumerConfig(consumers.Config{}), s, consumers.WithLogger(consumertest.Logger(e.t)))
	require.NoError(e.t, err)
	ctx, stop := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	e.t.Cleanup(func() { stop(); require.NoError(e.t, <-done); s.Close() })
}

// converged reports "" when every row's file holds JSON equal (as jsonb
// compares it) to the committed value and no other file exists, else what
// differs.
func (e *e2e) converged() string {
	rows, err := e.pool.Query(e.ctx, `SELECT hostkey, value::text FROM __cmdb`)
	if err != nil {
		return err.Error()
	}
	want := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err.Error()
		}
		want[k] = v
	}
	rows.Close()
	for k, v := range want {
		got, err := os.ReadFile(filepath.Join(e.root, k, "host_specific.json"))
		if err != nil {
			return fmt.Sprintf("%s: %v", k, err)
		}
		var same bool
		if err := e.pool.QueryRow(e.ctx, `SELECT $1::jsonb = $2::jsonb`, string(got), v).Scan(&same); err != nil {
			return fmt.Sprintf("%s: file holds invalid JSON %q: %v", k, got, err)
		}
		if !same {
			return fmt.Sprintf("%s: file %s, table %s", k, got, v)
		}
	}
	entries, err := os.ReadDir(e.root)
	if err != nil {
		return err.Error()
	}
	for _, d := range entries {
		if d.Name() == ".herald-filesync" {
			continue
		}
		if _, ok := want[d.Name()]; !ok {
			return "stray " + d.Name()
		}
	}
	return ""
}

func (e *e2e) waitConverged(d time.Duration) {
	e.t.Helper()
	testproc.Eventually(e.t, d, e.converged)
}

func TestFilesInStepWithTable(t *testing.T) {
	e := newE2E(t, true)
	e.runFilesync(filesync.Config{})
	e.exec(`INSERT INTO __cmdb (hostkey, value) VALUES ('SHA=01', '{"n": 12345678901234567890.123, "a": [1, 2]}'), ('SHA=02', '{}')`)
	e.waitConverged(30 * time.Second)
	b, err := os.ReadFile(filepath.Join(e.root, "SHA=01", "host_specific.json"))
	require.NoError(t, err)
	require.Contains(t, string(b), "12345678901234567890.123", "numbers stay exact")
	e.exec(`UPDATE __cmdb SET value = '{"changed": true}' WHERE hostkey = 'SHA=01'`)
	e.waitConverged(30 * time.Second)
	e.exec(`DELETE FROM __cmdb WHERE hostkey = 'SHA=02'`)
	e.waitConverged(30 * time.Second)
	_, err = os.Stat(filepath.Join(e.root, "SHA=02"))
	require.True(t, os.IsNotExist(err), "the file and its now-empty directory are gone")

	// 1,000 hosts updated concurrently: every file ends with its last value.
	e.exec(`INSERT INTO __cmdb (hostkey, value) SELECT 'host-' || g, jsonb_build_object('v', 0) FROM generate_series(1, 1000) g`)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 250; i++ {
				h := (w*250+i)%1000 + 1
				_, err := e.pool.Exec(e.ctx, `UPDATE __cmdb SET value = jsonb_build_object('v', (value->>'v')::int + 1, 'by', $2::int) WHERE hostkey = $1`, fmt.Sprintf("host-%d", h), w)
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	e.waitConverged(2 * time.Minute)
}

func TestBackfillProducesEveryFile(t *testing.T) {
	e := newE2E(t, false)
	e.exec(`INSERT INTO __cmdb (hostkey, value) SELECT 'pre-' || g, jsonb_build_object('g', g) FROM generate_series(1, 300) g`)
	e.watch()
	e.runFilesync(filesync.Config{})
	_, err := schema.Backfill(e.ctx, e.pool, "__cmdb", schema.BackfillOptions{BatchSize: 64})
	require.NoError(t, err)
	e.waitConverged(time.Minute)
}

// TestFilesyncKilledUnderLoad: herald-filesync killed -9 while writers
// update hosts, restarted each time: the files converge to the table.
func TestFilesyncKilledUnderLoad(t *testing.T) {
	e := newE2E(t, true)
	e.exec(`INSERT INTO __cmdb (hostkey, value) SELECT 'h' || g, jsonb_build_object('v', 0) FROM generate_series(1, 200) g`)
	seed := time.Now().UnixNano()
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))

	bin := testproc.Build(t, "github.com/herald-cdc/herald/cmd/herald-filesync")
	metrics := freeAddr(t)
	start := func() *testproc.Proc {
		return testproc.Start(t, bin, append(os.Environ(), "HERALD_NATS_URL="+e.ns.URL(), "HERALD_FILESYNC_DIR="+e.root,
			"HERALD_METRICS_ADDR="+metrics, "HERALD_LOG_FORMAT=text", "HERALD_CONSUMER_ACK_WAIT=2s"))
	}
	ctx, stop := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, err := e.pool.Exec(ctx, `UPDATE __cmdb SET value = jsonb_build_object('v', (value->>'v')::int + 1) WHERE hostkey = $1`, fmt.Sprintf("h%d", (i*7+w)%200+1))
				if err != nil && ctx.Err() == nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	p := start()
	for kill := 0; kill < 4; kill++ {
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond) // a random moment under load
		require.True(t, p.Running(), "herald-filesync runs until killed")
		p.Kill()
		p = start()
	}
	stop()
	wg.Wait()
	e.waitConverged(2 * time.Minute)
	// The last instance applied its share in batches (group commits).
	count, sum := batchMetrics(t, metrics)
	require.Positive(t, count, "herald-filesync applies changes through HandleBatch")
	t.Logf("last instance: %v changes in %v batches", sum, count)
	require.Equal(t, 0, p.Stop(30*time.Second), "a clean shutdown exits 0")
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// batchMetrics reads herald_consumer_batch_size's count and sum from a
// running herald-filesync's /metrics.
func batchMetrics(t *testing.T, addr string) (count, sum float64) {
	t.Helper()
	var body string
	testproc.Eventually(t, 30*time.Second, func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err.Error()
		}
		body = string(b)
		return ""
	})
	for _, line := range strings.Split(body, "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		switch {
		case err != nil:
		case strings.HasPrefix(name, "herald_consumer_batch_size_count"):
			count = v
		case strings.HasPrefix(name, "herald_consumer_batch_size_sum"):
			sum = v
		}
	}
	return count, sum
}
