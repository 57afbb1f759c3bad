package bridge_test

// Fault injection: the bridge killed, stopped or cut off from PostgreSQL or
// NATS under load, two bridges on one database, a takeover whose recovery
// reads go unanswered, the gate under a dead bridge and under a high change
// rate, and a misconfigured herald-bridge.
// Every test runs real PostgreSQL, a real nats-server and, where a test
// kills it, herald-bridge as a real process; each asserts outcomes (what
// the stream holds, what writers saw), never durations.
//
// The load: writers increment a counter column per key of table kv, several
// keys per transaction. The table is the truth: after the load, key k with
// counter n committed exactly the changes 1..n, so the stream must hold, per
// key and in stream order, the counters 1, 2, …, n — each once — whatever
// the writers' own view of what committed.

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/internal/testproc"
	"github.com/herald-cdc/herald/schema"
)

// seedEnv overrides the random seed of the tests that use one.
const seedEnv = "HERALD_TEST_SEED"

// testSeed returns the seed from seedEnv or a fresh one, and logs it so a
// failing run can be repeated.
func testSeed(t *testing.T) int64 {
	t.Helper()
	seed := time.Now().UnixNano()
	if s := os.Getenv(seedEnv); s != "" {
		var err error
		seed, err = strconv.ParseInt(s, 10, 64)
		require.NoError(t, err, "%s must be an integer", seedEnv)
	}
	t.Logf("random seed %d (repeat with %s=%d)", seed, seedEnv, seed)
	return seed
}

// logPreset keeps every change in the stream, so a test sees each one.
var logPreset = map[string]string{"HERALD_STREAM_PRESET": "log"}

func withEnv(base map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(base)+len(kv)/2)
	for k, v := range base {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// createKV creates and watches table kv with keys 1..keys, counters at 0
// (inserted before the watch, so not logged).
func createKV(r *rig, keys int) {
	r.t.Helper()
	r.exec(`CREATE TABLE kv (k int PRIMARY KEY, n bigint NOT NULL)`)
	r.exec(`INSERT INTO kv SELECT g, 0 FROM generate_series(1, $1) g`, keys)
	r.watch("kv")
}

// kvUpdate increments the counters of the keys in $1, locking the rows in
// key order so that concurrent multi-row writers never deadlock.
const kvUpdate = `WITH l AS (SELECT k FROM kv WHERE k = ANY($1::int[]) ORDER BY k FOR UPDATE)
UPDATE kv SET n = kv.n + 1 FROM l WHERE kv.k = l.k`

type loadOptions struct {
	writers int
	perTx   int   // keys (changes) per transaction
	keys    int   // as created by createKV
	txs     int64 // transactions in all; 0: until stop
	seed    int64
	// pause paces each writer between transactions (0: flat out), so an
	// outage leaves a backlog that drains in seconds.
	pause time.Duration
	// tolerant writers retry failed transactions (a restarting server);
	// otherwise the first failure is reported by stop.
	tolerant bool
}

// load is concurrent writers on kv.
type load struct {
	r        *rig
	o        loadOptions
	stopping atomic.Bool
	reserved atomic.Int64 // transactions started
	// ceiling, when set, holds writers back once this many changes were
	// started, so a test's later steps still happen under load however fast
	// the machine writes.
	ceiling   atomic.Int64
	committed atomic.Int64 // changes whose commit returned
	failures  atomic.Int64
	wg        sync.WaitGroup
	done      chan struct{}
	errMu     sync.Mutex
	err       error
}

func (r *rig) startLoad(o loadOptions) *load {
	l := &load{r: r, o: o, done: make(chan struct{})}
	for w := 0; w < o.writers; w++ {
		l.wg.Add(1)
		go l.writer(rand.New(rand.NewPCG(uint64(o.seed), uint64(w)+1)))
	}
	go func() { l.wg.Wait(); close(l.done) }()
	r.t.Cleanup(func() { l.stopping.Store(true); <-l.done })
	return l
}

func (l *load) writer(rng *rand.Rand) {
	defer l.wg.Done()
	keys := make([]int32, 0, l.o.perTx)
	for !l.stopping.Load() {
		if l.o.pause > 0 {
			time.Sleep(l.o.pause)
		}
		for c := l.ceiling.Load(); c > 0 && l.reserved.Load()*int64(l.o.perTx) >= c; c = l.ceiling.Load() {
			if l.stopping.Load() || (l.o.txs > 0 && l.reserved.Load() >= l.o.txs) {
				return
			}
			time.Sleep(time.Millisecond)
		}
		if l.o.txs > 0 && l.reserved.Add(1) > l.o.txs {
			return
		}
		keys = keys[:0]
		for len(keys) < l.o.perTx {
			k := int32(rng.IntN(l.o.keys) + 1)
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		for {
			tag, err := l.r.pool.Exec(l.r.ctx, kvUpdate, keys)
			if err == nil && tag.RowsAffected() != int64(len(keys)) {
				err = fmt.Errorf("updated %d rows of %d", tag.RowsAffected(), len(keys))
			}
			if err == nil {
				l.committed.Add(int64(len(keys)))
				break
			}
			l.failures.Add(1)
			if !l.o.tolerant || l.r.ctx.Err() != nil {
				l.errMu.Lock()
				if l.err == nil {
					l.err = err
				}
				l.errMu.Unlock()
				return
			}
			if l.stopping.Load() {
				return
			}
			// The server is restarting: pace the retries.
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (l *load) finished() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// stop ends the load (or waits for a bounded one to finish) and returns the
// first error a strict writer met.
func (l *load) stop() error {
	if l.o.txs == 0 {
		l.stopping.Store(true)
	}
	<-l.done
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.err
}

// streamMsgCount returns how many messages the stream holds, or -1 if NATS
// cannot tell right now.
func (r *rig) streamMsgCount(stream string) int64 {
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, stream)
	if err != nil {
		return -1
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1
	}
	return int64(info.State.Msgs)
}

// waitStreamPast waits until the stream holds more than n messages.
func (r *rig) waitStreamPast(stream string, n int64, timeout time.Duration) int64 {
	r.t.Helper()
	var got int64
	testproc.WaitFor(r.t, timeout, fmt.Sprintf("more than %d messages in %s", n, stream), func() bool {
		got = r.streamMsgCount(stream)
		return got > n
	})
	return got
}

// streamRec is one stored message.
type streamRec struct {
	seq   uint64
	msgID string
	env   *change.Envelope
}

// readStream reads every message of the stream in order, through an ordered
// consumer (tens of thousands of single gets would take long).
func (r *rig) readStream(stream string) []streamRec {
	r.t.Helper()
	s, err := r.js.Stream(r.ctx, stream)
	require.NoError(r.t, err)
	info, err := s.Info(r.ctx)
	require.NoError(r.t, err)
	want := int(info.State.Msgs)
	out := make([]streamRec, 0, want)
	if want == 0 {
		return out
	}
	c, err := s.OrderedConsumer(r.ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(r.t, err)
	for len(out) < want {
		batch, err := c.Fetch(min(1000, want-len(out)), jetstream.FetchMaxWait(10*time.Second))
		require.NoError(r.t, err)
		got := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			require.NoError(r.t, err)
			e, err := change.FromMsg(m.Subject(), m.Headers(), m.Data())
			require.NoError(r.t, err, "message %d on %s", md.Sequence.Stream, m.Subject())
			out = append(out, streamRec{seq: md.Sequence.Stream, msgID: m.Headers().Get(change.HeaderMsgID), env: e})
			got++
		}
		require.Positive(r.t, got, "reading %s: no progress after %d of %d messages (%v)", stream, len(out), want, batch.Error())
	}
	return out
}

// kvFinal reads the counter of every key: the changes that committed.
func (r *rig) kvFinal() (map[string]int64, int64) {
	r.t.Helper()
	rows, err := r.pool.Query(r.ctx, `SELECT k::text, n FROM kv`)
	require.NoError(r.t, err)
	final, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (struct {
		k string
		n int64
	}, error) {
		var v struct {
			k string
			n int64
		}
		return v, row.Scan(&v.k, &v.n)
	})
	require.NoError(r.t, err)
	m := make(map[string]int64, len(final))
	var total int64
	for _, v := range final {
		m[v.k] = v.n
		total += v.n
	}
	return m, total
}

// checkKV checks the stream against the table once the log is drained:
// every committed change is in the stream, per key in commit order (the
// counter goes up by one), and no log id twice — or, with allowDup, a
// change may be repeated but never stored after a newer one of its key.
func (r *rig) checkKV(stream string, allowDup bool) []streamRec {
	r.t.Helper()
	t := r.t
	final, total := r.kvFinal()
	recs := r.readStream(stream)
	last := map[string]int64{}
	lastV := map[string]change.Version{}
	seen := make(map[int64]bool, len(recs))
	dups := 0
	for _, rc := range recs {
		e := rc.env
		require.Equal(t, "kv", e.Table, "stream seq %d", rc.seq)
		require.Equal(t, change.OpUpdate, e.Op, "stream seq %d", rc.seq)
		require.Equal(t, change.MsgID(e.Source, e.Version()), rc.msgID, "stream seq %d: Nats-Msg-Id", rc.seq)
		var row struct {
			N *int64 `json:"n"`
		}
		require.NoError(t, json.Unmarshal(e.New, &row), "stream seq %d", rc.seq)
		require.NotNil(t, row.N, "stream seq %d carries the counter: %s", rc.seq, e.New)
		n, k := *row.N, e.Key[0]
		if seen[e.ID] {
			require.True(t, allowDup, "log id %d (key %s, counter %d) stored twice; the second at stream seq %d", e.ID, k, n, rc.seq)
			dups++
		}
		seen[e.ID] = true
		switch {
		case n == last[k]+1:
		case allowDup && n == last[k] && e.Version() == lastV[k]:
		default:
			t.Fatalf("key %s: counter %d (log id %d, stream seq %d) stored after counter %d (log id %d): a change lost, repeated or out of order",
				k, n, e.ID, rc.seq, last[k], lastV[k].ID)
		}
		require.False(t, e.Version().Less(lastV[k]), "key %s: version %v stored after %v", k, e.Version(), lastV[k])
		last[k], lastV[k] = n, e.Version()
	}
	for k, n := range final {
		require.Equal(t, n, last[k], "key %s: the table committed %d changes, the stream ends at %d", k, n, last[k])
	}
	require.Len(t, seen, int(total), "distinct changes in the stream")
	t.Logf("%d committed changes of %d keys all in %s, in per-key order; %d messages, %d repeated", total, len(final), stream, len(recs), dups)
	return recs
}

// leader returns the database session holding the bridge leader lock, or
// nil; errors (a restarting server) count as none.
func (r *rig) leader() *schema.BridgeSession {
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	st, err := schema.GetStatus(ctx, r.pool)
	if err != nil {
		return nil
	}
	return st.Bridge
}

// waitLeader waits for a leader other than the session notPID and returns it.
func (r *rig) waitLeader(notPID int32, timeout time.Duration) *schema.BridgeSession {
	r.t.Helper()
	var b *schema.BridgeSession
	testproc.WaitFor(r.t, timeout, fmt.Sprintf("a bridge other than session %d to lead", notPID), func() bool {
		b = r.leader()
		return b != nil && b.PID != notPID
	})
	return b
}

// gate returns the gate's lease and whether it is open now.
func (r *rig) gate() (time.Time, bool) {
	r.t.Helper()
	var until time.Time
	var open bool
	require.NoError(r.t, r.pool.QueryRow(r.ctx, `SELECT armed_until, armed_until > now() FROM herald.gate`).Scan(&until, &open))
	return until, open
}

// waitWritersGone waits until every transaction writing to the log at this
// moment has ended — those that may have read the gate before it changed —
// found as the bridge finds them.
func (r *rig) waitWritersGone() {
	r.t.Helper()
	var vxids []string
	require.NoError(r.t, r.pool.QueryRow(r.ctx, schema.Query("gate_writers")).Scan(&vxids))
	testproc.WaitFor(r.t, time.Minute, fmt.Sprintf("%d transactions in flight to end", len(vxids)), func() bool {
		var left int
		require.NoError(r.t, r.pool.QueryRow(r.ctx, schema.Query("gate_writers_left"), vxids).Scan(&left))
		return left == 0
	})
}

// closedGate is what a bridge writes to close the gate; a lease that ran out
// keeps its time.
var closedGate = time.Unix(0, 0)

// listener counts Herald's notifications on a dedicated session.
type listener struct {
	r      *rig
	conn   *pgx.Conn
	marker int
}

func (r *rig) listen() *listener {
	r.t.Helper()
	c, err := pgx.Connect(r.ctx, r.dsn)
	require.NoError(r.t, err)
	r.t.Cleanup(func() { c.Close(context.Background()) })
	_, err = c.Exec(r.ctx, "LISTEN herald")
	require.NoError(r.t, err)
	return &listener{r: r, conn: c}
}

// count returns how many notifications arrived since the last count. It
// sends a marker notification and reads up to it: notifications arrive in
// commit order, so everything committed before the marker has arrived, and
// "none" is an observation rather than a timeout.
func (l *listener) count() int {
	l.r.t.Helper()
	l.marker++
	marker := fmt.Sprintf("marker %d", l.marker)
	l.r.exec(`SELECT pg_notify('herald', $1)`, marker)
	n := 0
	for {
		ctx, cancel := context.WithTimeout(l.r.ctx, 30*time.Second)
		msg, err := l.conn.WaitForNotification(ctx)
		cancel()
		require.NoError(l.r.t, err, "waiting for the marker notification")
		if msg.Payload == marker {
			return n
		}
		n++
	}
}

// withAppName sets the application_name of a URL connection string, so
// pg_stat_activity tells the sessions of two bridges apart.
func withAppName(dsn, name string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "application_name=" + name
}

// TestKillBridgeUnderLoad kills herald-bridge with SIGKILL at random moments
// of a 50,000-change load and restarts it each time: every change arrives,
// none twice, none out of per-key order.
func TestKillBridgeUnderLoad(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	r := newRig(t, rigOptions{})
	const keys, perTx, total = 500, 10, 50000
	createKV(r, keys)

	// Kill points spread over the load; each kill waits for the restarted
	// bridge to lead and publish, then lets it run a random while.
	kills := make([]int64, 6+rng.IntN(3))
	for i := range kills {
		kills[i] = int64(total * (0.05 + 0.8*rng.Float64()))
	}
	slices.Sort(kills)

	// Writers never run more than one kill point ahead, so every kill
	// happens under load.
	ceiling := func(i int) int64 {
		if i < len(kills) {
			return kills[i]
		}
		return total
	}
	p := r.startBridge(logPreset)
	ld := r.startLoad(loadOptions{writers: 4, perTx: perTx, keys: keys, txs: total / perTx, seed: seed})
	ld.ceiling.Store(ceiling(1))
	var base int64
	var prevLeader int32
	underLoad := 0
	for i, at := range kills {
		testproc.WaitFor(t, 2*time.Minute, fmt.Sprintf("%d changes committed", at), func() bool {
			return ld.committed.Load() >= at || ld.finished()
		})
		prevLeader = r.waitLeader(prevLeader, time.Minute).PID
		testproc.WaitFor(t, time.Minute, "the bridge to publish", func() bool {
			return r.streamMsgCount("HERALD") > base || r.backlog() == 0
		})
		// Not waiting for an event: this picks the moment of the kill.
		delay := time.Duration(rng.Int64N(int64(300 * time.Millisecond)))
		time.Sleep(delay)
		if !ld.finished() {
			underLoad++
		}
		p.Kill()
		base = r.streamMsgCount("HERALD")
		t.Logf("kill %d: %s after the restarted bridge published; %d changes committed, %d in the stream, %d in the log",
			i+1, delay, ld.committed.Load(), base, r.backlog())
		p = r.startBridge(logPreset)
		ld.ceiling.Store(ceiling(i + 2))
	}
	require.NoError(t, ld.stop(), "writers")
	require.Equal(t, len(kills), underLoad, "kills while the writers ran")
	r.waitDrained("HERALD", -1, 2*time.Minute)
	recs := r.checkKV("HERALD", false)
	require.Len(t, recs, total)
	require.True(t, p.Running(), "the last bridge still runs")
}

// natsOutage stops nats-server under load for hold, then restarts it on the
// same store. The gate's rate thresholds are out of reach, so only the
// outage can close it.
func natsOutage(t *testing.T, hold time.Duration, env map[string]string, allowDup bool) {
	r := newRig(t, rigOptions{})
	const keys = 200
	createKV(r, keys)
	env = withEnv(env, "HERALD_STREAM_PRESET", "log", "HERALD_PUBLISH_TIMEOUT", "1s",
		"HERALD_GATE_CLOSE_RATE", "1e9", "HERALD_GATE_OPEN_RATE", "1e8")
	p := r.startBridge(env)
	l := r.listen()
	testproc.WaitFor(t, time.Minute, "the gate to open", func() bool { _, open := r.gate(); return open })
	ld := r.startLoad(loadOptions{writers: 3, perTx: 5, keys: keys, seed: 1, pause: 5 * time.Millisecond})
	r.waitStreamPast("HERALD", 1000, time.Minute)
	_, open := r.gate()
	require.True(t, open, "the gate stays open under load at these thresholds")

	r.ns.Stop()
	stopped := time.Now()
	atStop := ld.committed.Load()
	testproc.WaitFor(t, time.Minute, "the bridge to close the gate", func() bool {
		until, _ := r.gate()
		return until.Equal(closedGate)
	})
	r.waitWritersGone()
	l.count() // writers that read the gate open before it closed
	atClosed := ld.committed.Load()
	// Hold the outage.
	time.Sleep(hold - time.Since(stopped))
	require.Zero(t, l.count(), "notifications from writers while NATS was down and the gate closed")
	until, open := r.gate()
	require.False(t, open, "gate during the outage")
	require.True(t, until.Equal(closedGate), "gate during the outage: armed until %v", until)
	require.Greater(t, ld.committed.Load(), atClosed, "writers commit during the outage")
	require.Positive(t, r.backlog(), "the backlog waits in PostgreSQL")
	t.Logf("outage of %s: %d changes committed meanwhile, %d in the log", time.Since(stopped).Round(time.Millisecond), ld.committed.Load()-atStop, r.backlog())

	r.ns.Restart(t)
	before := r.waitStreamPast("HERALD", 0, time.Minute)
	r.waitStreamPast("HERALD", before+1000, 2*time.Minute) // draining under load
	require.NoError(t, ld.stop(), "writers never fail")
	require.Zero(t, ld.failures.Load())
	r.waitDrained("HERALD", -1, 2*time.Minute)
	r.checkKV("HERALD", allowDup)
	require.True(t, p.Running(), "the bridge rode out the outage")
}

// TestNATSOutageUnderLoad: NATS down for longer than the publish timeout
// plus the longest retry backoff (5s): writers never fail and send no
// notification while the gate is closed, nothing is lost or repeated, the
// backlog drains.
func TestNATSOutageUnderLoad(t *testing.T) {
	natsOutage(t, 7*time.Second, nil, false)
}

// TestNATSOutageLongerThanDuplicateWindow: with the outage longer than the
// duplicate window, a repeat is tolerated but never a version stored after
// a newer one of its key.
func TestNATSOutageLongerThanDuplicateWindow(t *testing.T) {
	natsOutage(t, 5*time.Second, map[string]string{"HERALD_DUPLICATE_WINDOW": "2s"}, true)
}

// TestPostgresRestartUnderLoad restarts (and, separately, crashes)
// PostgreSQL under load: the bridge reconnects by itself and nothing is
// lost or repeated.
func TestPostgresRestartUnderLoad(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "restart"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			c := pgtest.NewCluster(t, pgtest.Options{})
			r := newRig(t, rigOptions{cluster: c})
			const keys = 200
			createKV(r, keys)
			p := r.startBridge(logPreset)
			ld := r.startLoad(loadOptions{writers: 3, perTx: 5, keys: keys, seed: 2, tolerant: true})
			old := r.waitLeader(0, time.Minute)
			n := r.waitStreamPast("HERALD", 2000, time.Minute)

			ctx, cancel := context.WithTimeout(r.ctx, 3*time.Minute)
			defer cancel()
			if crash {
				require.NoError(t, c.Kill(ctx))
				require.NoError(t, c.Start(ctx))
			} else {
				require.NoError(t, c.Restart(ctx))
			}
			r.pool.Reset() // drop the sessions the server ended
			atRestart := ld.committed.Load()
			r.waitLeader(old.PID, 2*time.Minute)
			r.waitStreamPast("HERALD", n+2000, 2*time.Minute)
			require.NoError(t, ld.stop())
			require.Greater(t, ld.committed.Load(), atRestart, "writers commit after the restart")
			t.Logf("%d writer transactions failed during the %s", ld.failures.Load(), name)
			r.waitDrained("HERALD", -1, 2*time.Minute)
			r.checkKV("HERALD", false)
			require.True(t, p.Running(), "the bridge recovered by itself")
		})
	}
}

// TestListenBackendTerminated ends the bridge's session (LISTEN, leader
// lock, every query) with pg_terminate_backend under load, three times: the
// bridge reconnects by itself and nothing is lost or repeated.
func TestListenBackendTerminated(t *testing.T) {
	r := newRig(t, rigOptions{})
	const keys = 200
	createKV(r, keys)
	p := r.startBridge(logPreset)
	ld := r.startLoad(loadOptions{writers: 3, perTx: 5, keys: keys, seed: 3})
	var prev int32
	var n int64
	for i := 0; i < 3; i++ {
		b := r.waitLeader(prev, time.Minute)
		n = r.waitStreamPast("HERALD", n+500, time.Minute)
		var pid int32
		testproc.WaitFor(t, time.Minute, "one herald-bridge session", func() bool {
			var pids []int32
			require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity
				WHERE application_name = 'herald-bridge' AND datname = current_database()`).Scan(&pids))
			if len(pids) != 1 {
				return false // the terminated one may not have gone yet
			}
			pid = pids[0]
			return true
		})
		require.Equal(t, b.PID, pid, "the bridge's one session holds the leader lock")
		var ok bool
		require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok))
		require.True(t, ok)
		prev = pid
	}
	r.waitLeader(prev, time.Minute)
	r.waitStreamPast("HERALD", n+500, time.Minute)
	require.NoError(t, ld.stop(), "writers are not disturbed")
	r.waitDrained("HERALD", -1, 2*time.Minute)
	r.checkKV("HERALD", false)
	require.True(t, p.Running(), "the bridge recovered by itself")
}

// TestTwoBridgesOneDatabase: of two bridges on one database exactly one
// publishes; killed, the standby takes over, and nothing is lost or
// repeated — also when the two use different source names, so message ids
// cannot deduplicate across them. The killed one comes back as the standby
// and the leader is killed again, three handovers in all.
func TestTwoBridgesOneDatabase(t *testing.T) {
	for _, tc := range []struct{ name, a, b string }{
		{"same source", "", ""},
		{"different sources", "alpha", "beta"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigOptions{})
			const keys, handovers = 200, 3
			createKV(r, keys)
			apps := [2]string{"herald-bridge-a", "herald-bridge-b"}
			sources := [2]string{tc.a, tc.b}
			start := func(i int) *testproc.Proc {
				env := withEnv(logPreset, "HERALD_DATABASE_URL", withAppName(r.dsn, apps[i]))
				if sources[i] != "" {
					env["HERALD_SOURCE"] = sources[i]
				}
				return r.startBridge(env)
			}
			standbyConnected := func(i int) {
				testproc.WaitFor(t, time.Minute, apps[i]+" to connect", func() bool {
					var n int
					require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT count(*) FROM pg_stat_activity
						WHERE application_name = $1 AND datname = current_database()`, apps[i]).Scan(&n))
					return n == 1
				})
			}
			var procs [2]*testproc.Proc
			procs[0] = start(0)
			lead := r.waitLeader(0, time.Minute)
			require.Equal(t, apps[0], lead.ApplicationName)
			procs[1] = start(1)
			standbyConnected(1)

			ld := r.startLoad(loadOptions{writers: 3, perTx: 5, keys: keys, seed: 4, pause: 2 * time.Millisecond})
			var n int64
			leader := 0
			for h := 0; h < handovers; h++ {
				n = r.waitStreamPast("HERALD", n+2000, time.Minute)
				now := r.leader()
				require.NotNil(t, now)
				require.Equal(t, lead.PID, now.PID, "%s still leads", apps[leader])
				procs[leader].Kill()
				lead = r.waitLeader(lead.PID, time.Minute)
				require.Equal(t, apps[1-leader], lead.ApplicationName, "the standby took over")
				procs[leader] = start(leader) // back as the standby
				standbyConnected(leader)
				leader = 1 - leader
			}
			r.waitStreamPast("HERALD", n+2000, time.Minute)
			require.NoError(t, ld.stop())
			r.waitDrained("HERALD", -1, 2*time.Minute)
			recs := r.checkKV("HERALD", false)
			require.True(t, procs[0].Running() && procs[1].Running())

			// Exactly one bridge published at a time: in stream order the
			// source changes only at the handovers, starting with the first
			// bridge's.
			if tc.a == "" {
				for _, rc := range recs {
					require.Equal(t, recs[0].env.Source, rc.env.Source)
				}
				return
			}
			want, switches := 0, 0
			for _, rc := range recs {
				if rc.env.Source != sources[want] {
					switches++
					want = 1 - want
				}
				require.Equal(t, sources[want], rc.env.Source, "stream seq %d", rc.seq)
				require.True(t, strings.HasPrefix(rc.msgID, sources[want]+":"), "stream seq %d: Nats-Msg-Id %s", rc.seq, rc.msgID)
			}
			require.LessOrEqual(t, switches, handovers, "publishing sources alternate only at handovers")
			require.Equal(t, sources[leader], recs[len(recs)-1].env.Source)
		})
	}
}

// TestGateLeaseOutlivesKilledBridge: a bridge killed while the gate is open
// leaves it open, and once its lease has run out writers send no
// notification.
func TestGateLeaseOutlivesKilledBridge(t *testing.T) {
	r := newRig(t, rigOptions{})
	createKV(r, 10)
	env := withEnv(logPreset, "HERALD_GATE_LEASE", "1s")
	p := r.startBridge(env)
	l := r.listen()
	writes := 0
	testproc.WaitFor(t, time.Minute, "a write to notify through the open gate", func() bool {
		r.exec(kvUpdate, []int32{1})
		writes++
		return l.count() > 0
	})

	// Kill it while the gate is open.
	var armed time.Time
	testproc.WaitFor(t, time.Minute, "the gate to be open", func() bool {
		var open bool
		require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT armed_until, armed_until > now() FROM herald.gate`).Scan(&armed, &open))
		return open
	})
	p.Kill()
	after, _ := r.gate()
	require.False(t, after.Before(armed), "nobody closed the gate: armed until %v, was %v", after, armed)

	testproc.WaitFor(t, time.Minute, "the lease to run out", func() bool { _, open := r.gate(); return !open })
	for k := int32(1); k <= 10; k++ {
		r.exec(kvUpdate, []int32{k})
	}
	require.Zero(t, l.count(), "notifications after the lease ran out")

	r.startBridge(env)
	r.waitDrained("HERALD", writes+10, time.Minute)
	r.checkKV("HERALD", false)
}

// TestHighRateClosesGate: eight writers make the bridge close the gate;
// once every transaction in flight at that moment has ended, writers send
// no notification, while the bridge keeps draining.
func TestHighRateClosesGate(t *testing.T) {
	r := newRig(t, rigOptions{})
	const keys = 1000
	createKV(r, keys)
	p := r.startBridge(logPreset)
	l := r.listen()
	testproc.WaitFor(t, time.Minute, "the gate to open", func() bool { _, open := r.gate(); return open })

	ld := r.startLoad(loadOptions{writers: 8, perTx: 4, keys: keys, seed: 5})
	testproc.WaitFor(t, time.Minute, "the bridge to close the gate", func() bool {
		until, open := r.gate()
		return !open && until.Equal(closedGate)
	})
	r.waitWritersGone()
	l.count() // notifications from before
	c0 := ld.committed.Load()
	n0 := r.streamMsgCount("HERALD")
	testproc.WaitFor(t, time.Minute, "5000 more changes", func() bool { return ld.committed.Load() >= c0+5000 })
	r.waitStreamPast("HERALD", n0+5000, time.Minute)
	require.Zero(t, l.count(), "notifications while the gate was closed for the high rate")
	_, open := r.gate()
	require.False(t, open, "the gate stays closed while the rate stays high")
	require.NoError(t, ld.stop())
	r.waitDrained("HERALD", -1, 2*time.Minute)
	r.checkKV("HERALD", false)
	require.True(t, p.Running())
}

// TestSIGTERMUnderLoad stops herald-bridge with SIGTERM under load, three
// times at random moments: it exits 0, and the next one finds nothing lost
// or repeated.
func TestSIGTERMUnderLoad(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	r := newRig(t, rigOptions{})
	const keys = 300
	createKV(r, keys)
	ld := r.startLoad(loadOptions{writers: 4, perTx: 5, keys: keys, seed: seed})
	var n int64
	for i := 0; i < 3; i++ {
		p := r.startBridge(logPreset)
		n = r.waitStreamPast("HERALD", n+500, time.Minute)
		// Not waiting for an event: this picks the moment of the signal.
		time.Sleep(time.Duration(rng.Int64N(int64(200 * time.Millisecond))))
		require.Equal(t, 0, p.Stop(30*time.Second), "exit code after SIGTERM; output:\n%s", p.Output())
		require.Contains(t, p.Output(), "herald-bridge stopped")
		require.NotContains(t, p.Output(), "level=ERROR")
		n = r.streamMsgCount("HERALD")
	}
	p := r.startBridge(logPreset)
	r.waitStreamPast("HERALD", n+500, time.Minute)
	require.NoError(t, ld.stop())
	r.waitDrained("HERALD", -1, 2*time.Minute)
	r.checkKV("HERALD", false)
	require.Equal(t, 0, p.Stop(30*time.Second))
}

// reasonLine returns the one line of out that herald-bridge prefixes with
// its name: the reason it gives up, among the log lines.
func reasonLine(t *testing.T, out string) string {
	t.Helper()
	var found []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "herald-bridge: ") {
			found = append(found, l)
		}
	}
	require.Len(t, found, 1, "one line gives the reason; output:\n%s", out)
	return found[0]
}

// closedPort returns a TCP port on 127.0.0.1 nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// TestBridgeProcessBadInput: herald-bridge refuses bad input with a non-zero
// exit and a one-line reason saying what to fix.
func TestBridgeProcessBadInput(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	_, err := r.js.CreateStream(r.ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other.>"}, AllowAtomicPublish: true, AllowDirect: true, AllowMsgTTL: true})
	require.NoError(t, err)
	noSchema := pgtest.NewDB(t)

	for _, tc := range []struct {
		name string
		env  map[string]string
		code int
		want []string
	}{
		{"prefix with a space", map[string]string{"HERALD_SUBJECT_PREFIX": "bad prefix"}, 2, []string{"HERALD_SUBJECT_PREFIX"}},
		{"prefix with a wildcard", map[string]string{"HERALD_SUBJECT_PREFIX": "herald.*"}, 2, []string{"HERALD_SUBJECT_PREFIX"}},
		{"empty prefix", map[string]string{"HERALD_SUBJECT_PREFIX": ""}, 2, []string{"HERALD_SUBJECT_PREFIX"}},
		{"no batch in flight", map[string]string{"HERALD_IN_FLIGHT": "-1"}, 2, []string{"HERALD_IN_FLIGHT"}},
		{"in flight not a number", map[string]string{"HERALD_IN_FLIGHT": "many"}, 2, []string{"HERALD_IN_FLIGHT"}},
		{"poll gather too long", map[string]string{"HERALD_POLL_GATHER": "5s"}, 2, []string{"HERALD_POLL_GATHER"}},
		{"NATS unreachable", map[string]string{
			"HERALD_NATS_URL":             fmt.Sprintf("nats://127.0.0.1:%d", closedPort(t)),
			"HERALD_NATS_CONNECT_TIMEOUT": "1s",
		}, 1, []string{"cannot reach NATS", "HERALD_NATS_URL"}},
		{"no herald schema", map[string]string{"HERALD_DATABASE_URL": noSchema}, 1, []string{"herald migrate"}},
		{"stream does not cover the prefix", map[string]string{"HERALD_STREAM": "OTHER"}, 1, []string{"stream OTHER", "do not cover herald.>", "HERALD_SUBJECT_PREFIX"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := r.startBridge(tc.env)
			code := p.Wait(time.Minute)
			out := p.Output()
			require.Equal(t, tc.code, code, "exit code; output:\n%s", out)
			line := reasonLine(t, out)
			for _, w := range tc.want {
				require.Contains(t, line, w)
			}
			t.Logf("%s", line)
		})
	}

	// The stream that did not fit is left as it was.
	s, err := r.js.Stream(r.ctx, "OTHER")
	require.NoError(t, err)
	info, err := s.Info(r.ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"other.>"}, info.Config.Subjects)
}

// TestBridgeHelpListsEveryVariable: herald-bridge -h prints every variable
// the program reads — each envconfig tag of its config struct and of the
// structs embedded in it, read from the sources — and exits 0.
func TestBridgeHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	names := configVariables(t, "config", "../cmd/herald-bridge/main.go", "../cmd/internal/envcfg/envcfg.go")
	require.Greater(t, len(names), 20)
	out, err := exec.Command(testproc.Build(t, bridgeCmd), "-h").CombinedOutput()
	require.NoError(t, err, "%s", out)
	lines := strings.Split(string(out), "\n")
	for _, name := range names {
		i := slices.IndexFunc(lines, func(l string) bool { return slices.Contains(strings.Fields(l), name) })
		require.GreaterOrEqual(t, i, 0, "-h does not list %s:\n%s", name, out)
		require.Greater(t, len(strings.Fields(lines[i])), 3, "%s has a type, a default and a meaning: %q", name, lines[i])
	}
}

// configVariables returns the HERALD_* variables of struct root, following
// embedded structs, as declared in files.
func configVariables(t *testing.T, root string, files ...string) []string {
	t.Helper()
	structs := map[string]*ast.StructType{}
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, 0)
		require.NoError(t, err)
		ast.Inspect(af, func(n ast.Node) bool {
			if ts, ok := n.(*ast.TypeSpec); ok {
				if st, ok := ts.Type.(*ast.StructType); ok {
					structs[ts.Name.Name] = st
				}
			}
			return true
		})
	}
	var names []string
	var walk func(name string)
	walk = func(name string) {
		st, ok := structs[name]
		require.True(t, ok, "struct %s not found in %v", name, files)
		for _, f := range st.Fields.List {
			if len(f.Names) == 0 { // embedded: envcfg.Common or NATS
				switch e := f.Type.(type) {
				case *ast.Ident:
					walk(e.Name)
				case *ast.SelectorExpr:
					walk(e.Sel.Name)
				}
				continue
			}
			if f.Tag == nil {
				continue
			}
			tag, err := strconv.Unquote(f.Tag.Value)
			require.NoError(t, err)
			if v, ok := reflect.StructTag(tag).Lookup("envconfig"); ok {
				names = append(names, "HERALD_"+v)
			}
		}
	}
	walk(root)
	return names
}

// TestRecoveryReadUnanswered: a bridge taking over changes that a bridge of
// another source name already published (and died before deleting) must
// not publish them again when its read of the stored versions goes
// unanswered: an unanswered read is not "nothing stored", and message ids
// cannot deduplicate across source names. The test holds the leader lock
// while the bridge starts, then turns the stream's direct get off and
// swallows those reads itself, and releases the lock.
func TestRecoveryReadUnanswered(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE pre (k int PRIMARY KEY, n int NOT NULL)`)
	r.watch("pre")
	cfg := bridge.Config{Preset: bridge.PresetLog, Source: "beta", PublishTimeout: 300 * time.Millisecond, StandbyPoll: 20 * time.Millisecond}
	s, err := bridge.EnsureStream(r.ctx, r.js, cfg)
	require.NoError(t, err)

	// Changes committed and published by "alpha", which died before
	// deleting them.
	const n = 20
	r.exec(`INSERT INTO pre SELECT g, 0 FROM generate_series(1, $1) g`, n)
	var epoch int64
	require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT epoch FROM herald.install`).Scan(&epoch))
	rows, err := r.pool.Query(r.ctx, `SELECT id, txid::text::bigint, at, schema_name, table_name, op, key, new FROM herald.log ORDER BY id`)
	require.NoError(t, err)
	envs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*change.Envelope, error) {
		e := &change.Envelope{V: change.EnvelopeVersion, Source: "alpha", Epoch: epoch}
		var op string
		var data []byte
		err := row.Scan(&e.ID, &e.TxID, &e.At, &e.Schema, &e.Table, &op, &e.Key, &data)
		e.Op, e.New, e.At = change.Op(op), data, e.At.UTC()
		return e, err
	})
	require.NoError(t, err)
	require.Len(t, envs, n)
	for _, e := range envs {
		m, err := change.NewMsg("herald", e)
		require.NoError(t, err)
		_, err = r.js.PublishMsg(r.ctx, m)
		require.NoError(t, err)
	}

	// The bridge starts (and verifies the stream) while the test leads.
	holder, err := pgx.Connect(r.ctx, r.dsn)
	require.NoError(t, err)
	defer holder.Close(context.Background())
	var got bool
	require.NoError(t, holder.QueryRow(r.ctx, schema.Query("leader_lock")).Scan(&got))
	require.True(t, got)
	b, _ := r.runBridge(cfg)
	testproc.WaitFor(t, time.Minute, "the bridge to stand by", func() bool { return b.Ready() == nil })

	// Nobody answers the reads of stored versions now.
	setDirect := func(on bool) {
		info, err := s.Info(r.ctx)
		require.NoError(t, err)
		sc := info.Config
		sc.AllowDirect = on
		_, err = r.js.UpdateStream(r.ctx, sc)
		require.NoError(t, err)
	}
	setDirect(false)
	nc := r.ns.Connect(t)
	var unanswered atomic.Int64
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET.HERALD", func(*nats.Msg) { unanswered.Add(1) })
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	require.NoError(t, holder.Close(r.ctx)) // the bridge leads
	testproc.WaitFor(t, time.Minute, "the bridge to retry its unanswered read, or to drain", func() bool {
		return unanswered.Load() >= 2 || r.backlog() == 0
	})
	require.NoError(t, sub.Unsubscribe())
	setDirect(true)
	r.waitDrained("HERALD", -1, time.Minute)

	recs := r.readStream("HERALD")
	for _, rc := range recs {
		require.Equal(t, "alpha", rc.env.Source, "stream seq %d: log id %d published again by the new leader", rc.seq, rc.env.ID)
	}
	require.Len(t, recs, n)
	require.GreaterOrEqual(t, unanswered.Load(), int64(2), "reads went unanswered and were retried")
}
