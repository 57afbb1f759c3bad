package bridge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/internal/testproc"
	"github.com/herald-cdc/herald/schema"
)

// TestRelayAllOps: every committed change across several watched tables
// arrives once with the right subject, headers and body, in per-key commit
// order; a table filter matches the truncate event, and a consumer
// bootstrapping after it sees no truncated row.
func TestRelayAllOps(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)`)
	r.exec(`CREATE TABLE "Host Data" (hostkey text NOT NULL, site text NOT NULL, value jsonb, PRIMARY KEY (hostkey, site))`)
	r.exec(`INSERT INTO items VALUES (100, 'before watch', 1)`)
	r.watch("items")
	r.watch(`"Host Data"`)
	_, stop := r.runBridge(bridge.Config{Preset: bridge.PresetLog, Source: "testdb"})

	r.exec(`INSERT INTO items VALUES (1, 'a', 1.50)`)
	r.exec(`UPDATE items SET name = 'b' WHERE id = 1`)
	r.exec(`INSERT INTO "Host Data" VALUES ('SHA=8f3a.b c', 'eu*>', '{"n": 12345678901234567890.5}')`)
	r.exec(`UPDATE "Host Data" SET value = '{"n": 2}'`)
	r.exec(`DELETE FROM items WHERE id = 1`)
	_, err := schema.Backfill(r.ctx, r.pool, "items", schema.BackfillOptions{})
	require.NoError(t, err)
	r.exec(`INSERT INTO items VALUES (2, 'c', 3)`)
	r.exec(`TRUNCATE items`)
	r.exec(`INSERT INTO items VALUES (3, 'after truncate', 3)`)
	r.waitDrained("HERALD", -1, time.Minute)
	// The purge after TRUNCATE removed items' older messages; what is left:
	envs := envelopes(t, r.streamMsgs("HERALD"))
	var got []string
	for _, e := range envs {
		got = append(got, fmt.Sprintf("%s.%s %s %s", e.Schema, e.Table, e.Op, strings.Join(e.Key, ",")))
	}
	require.Equal(t, []string{
		"public.Host Data insert SHA=8f3a.b c,eu*>",
		"public.Host Data update SHA=8f3a.b c,eu*>",
		"public.items truncate ",
		"public.items insert 3",
	}, got)
	require.NoError(t, stop())

	// Subject, headers and body of one message.
	msgs := r.streamMsgs("HERALD")
	m := msgs[1]
	require.Equal(t, change.Subject("herald", "public", "Host Data", []string{"SHA=8f3a.b c", "eu*>"}), m.Subject)
	require.Equal(t, "herald.public.Host%20Data.SHA=8f3a%2Eb%20c.eu%2A%3E", m.Subject)
	e := envs[1]
	require.Equal(t, "testdb", e.Source)
	require.Equal(t, "update", m.Header.Get(change.HeaderOp))
	require.Equal(t, "public.Host Data", m.Header.Get(change.HeaderTable))
	require.Equal(t, strconv.FormatInt(e.Epoch, 10), m.Header.Get(change.HeaderEpoch))
	require.Equal(t, strconv.FormatInt(e.ID, 10), m.Header.Get(change.HeaderID))
	require.Equal(t, change.MsgID("testdb", e.Version()), m.Header.Get(change.HeaderMsgID))
	require.Equal(t, []string{"value"}, e.Changed)
	require.JSONEq(t, `{"hostkey": "SHA=8f3a.b c", "site": "eu*>", "value": {"n": 12345678901234567890.5}}`, string(e.Old))
	require.Contains(t, string(msgs[0].Data), `12345678901234567890.5`, "numbers stay exact")
	require.WithinDuration(t, time.Now(), e.At, time.Minute)
	require.Equal(t, time.UTC, e.At.Location())

	// A table filter matches the truncate event.
	tr := msgs[2]
	require.Equal(t, "herald.public.items.%T", tr.Subject)
	cons, err := r.js.OrderedConsumer(r.ctx, "HERALD", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{change.TableFilter("herald", "public", "items")},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	require.NoError(t, err)
	batch, err := cons.Fetch(10, jetstream.FetchMaxWait(2*time.Second))
	require.NoError(t, err)
	var boot []string
	for msg := range batch.Messages() {
		be, err := change.FromMsg(msg.Subject(), msg.Headers(), msg.Data())
		require.NoError(t, err)
		boot = append(boot, string(be.Op)+" "+strings.Join(be.Key, ","))
	}
	require.Equal(t, []string{"truncate ", "insert 3"}, boot, "bootstrapping after the truncate sees no truncated row")
}

// TestRelayOrderAndOnce checks, before any purge, that every change arrives
// exactly once and in per-key commit order, with snapshots included.
func TestRelayOrderAndOnce(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE c (k int PRIMARY KEY, n int NOT NULL)`)
	r.exec(`CREATE TABLE d (k text PRIMARY KEY, n int NOT NULL)`)
	r.exec(`INSERT INTO c SELECT g, 0 FROM generate_series(1, 50) g`)
	r.watch("c")
	r.watch("d")
	r.runBridge(bridge.Config{Preset: bridge.PresetLog, BatchSize: 64})
	_, err := schema.Backfill(r.ctx, r.pool, "c", schema.BackfillOptions{BatchSize: 7})
	require.NoError(t, err)
	total := 50
	for i := 1; i <= 20; i++ {
		r.exec(`UPDATE c SET n = n + 1 WHERE k <= 10`)
		r.exec(`INSERT INTO d VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET n = EXCLUDED.n`, fmt.Sprint(i%3), i)
		total += 11
	}
	r.exec(`DELETE FROM c WHERE k > 40`)
	total += 10
	r.waitDrained("HERALD", total, time.Minute)
	envs := envelopes(t, r.streamMsgs("HERALD"))
	ids := map[int64]bool{}
	last := map[string]change.Version{}
	for _, e := range envs {
		require.False(t, ids[e.ID], "id %d twice", e.ID)
		ids[e.ID] = true
		k := e.Table + "/" + strings.Join(e.Key, ",")
		require.True(t, last[k].Less(e.Version()), "%s: version %v after %v", k, e.Version(), last[k])
		last[k] = e.Version()
	}
	require.Len(t, envs, total)
}

// TestIdleChangeArrivesWithoutSafetyPoll: with the safety poll set to an
// hour, an idle change still arrives (woken by NOTIFY).
func TestIdleChangeArrivesWithoutSafetyPoll(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE idle (id int PRIMARY KEY)`)
	r.watch("idle")
	r.runBridge(bridge.Config{PollInterval: time.Hour})
	testproc.WaitFor(t, 30*time.Second, "the gate to open", func() bool { return gateOpen(t, r) })
	for i := 1; i <= 3; i++ {
		r.exec(`INSERT INTO idle VALUES ($1)`, i)
		r.waitDrained("HERALD", i, 30*time.Second)
	}
}

func gateOpen(t *testing.T, r *rig) bool {
	var open bool
	require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT armed_until > now() FROM herald.gate`).Scan(&open))
	return open
}

// TestGateWindowHook injects a writer into the window where the gate opens:
// it read the gate closed (so it sends no notification) and commits after
// the gate opened. The change must arrive without the safety poll.
func TestGateWindowHook(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE win (id int PRIMARY KEY)`)
	r.watch("win")
	var tx pgx.Tx
	fired := false
	hooks := &bridge.Hooks{
		BeforeGateOpen: func() {
			if fired {
				return
			}
			var err error
			tx, err = r.pool.Begin(r.ctx)
			require.NoError(t, err)
			_, err = tx.Exec(r.ctx, `INSERT INTO win VALUES (1)`) // reads the gate: closed
			require.NoError(t, err)
		},
		AfterGateOpen: func() {
			if fired {
				return
			}
			fired = true
			require.NoError(t, tx.Commit(r.ctx)) // commits once the gate is open
		},
	}
	r.runBridge(bridge.Config{PollInterval: time.Hour, Hooks: hooks})
	r.waitDrained("HERALD", 1, 30*time.Second)
	require.True(t, fired)
}

// TestRepeatableReadWriterInWindow: a REPEATABLE READ writer reads the gate
// from its first snapshot, taken before the gate opened, and so can slip
// past the re-check; the safety poll still delivers its change.
func TestRepeatableReadWriterInWindow(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE rr (id int PRIMARY KEY)`)
	r.watch("rr")
	var tx pgx.Tx
	fired := false
	hooks := &bridge.Hooks{
		BeforeGateOpen: func() {
			if fired {
				return
			}
			var err error
			tx, err = r.pool.BeginTx(r.ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
			require.NoError(t, err)
			_, err = tx.Exec(r.ctx, `SELECT 1 FROM herald.gate`) // the snapshot is taken here
			require.NoError(t, err)
		},
		AfterGateOpen: func() {
			if fired {
				return
			}
			fired = true
			go func() {
				_, err := tx.Exec(r.ctx, `INSERT INTO rr VALUES (1)`) // sees the gate closed
				if err == nil {
					err = tx.Commit(r.ctx)
				}
				if err != nil {
					t.Errorf("writer: %v", err)
				}
			}()
		},
	}
	r.runBridge(bridge.Config{PollInterval: 300 * time.Millisecond, Hooks: hooks})
	r.waitDrained("HERALD", 1, 30*time.Second)
}

// TestMarkerForTooLargeChange: a change larger than the server's max
// payload is measured in SQL and published as a marker without values.
func TestMarkerForTooLargeChange(t *testing.T) {
	r := newRig(t, rigOptions{maxPayload: 64 * 1024})
	r.exec(`CREATE TABLE big (id int PRIMARY KEY, body text)`)
	r.watch("big")
	r.runBridge(bridge.Config{})
	r.exec(`INSERT INTO big VALUES (1, repeat('x', 200000))`) // compressed in the table, 200 kB as JSON
	r.exec(`INSERT INTO big VALUES (2, 'small')`)
	r.exec(`INSERT INTO big SELECT 3, string_agg(md5(g::text), '') FROM generate_series(1, 3000) g`) // 96 kB, incompressible
	r.waitDrained("HERALD", 3, 30*time.Second)
	msgs := r.streamMsgs("HERALD")
	envs := envelopes(t, msgs)
	for _, i := range []int{0, 2} {
		require.NotNil(t, envs[i].Marker, "row %d is a marker", i+1)
		require.Equal(t, change.MarkerTooLarge, envs[i].Marker.Reason)
		require.Nil(t, envs[i].New)
		require.Equal(t, change.MarkerTooLarge, msgs[i].Header.Get(change.HeaderMarker))
		require.Greater(t, envs[i].Marker.Size, int64(64*1024))
	}
	require.Nil(t, envs[1].Marker)
	var body map[string]any
	require.NoError(t, json.Unmarshal(envs[1].New, &body))
	require.Equal(t, "small", body["body"])
}

func TestStreamThatDoesNotFit(t *testing.T) {
	r := newRig(t, rigOptions{})
	_, err := r.js.CreateStream(r.ctx, jetstream.StreamConfig{Name: "HERALD", Subjects: []string{"other.>"}})
	require.NoError(t, err)
	b, err := bridge.New(r.dsn, r.ns.Connect(t), bridge.Config{}, bridge.WithLogger(testLogger(t)))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	err = b.Run(ctx)
	require.ErrorIs(t, err, bridge.ErrStreamMismatch)
	require.Contains(t, err.Error(), "do not cover herald.>")
	require.Contains(t, err.Error(), "atomic publish is not allowed")

	s, err := r.js.Stream(r.ctx, "HERALD")
	require.NoError(t, err)
	info, err := s.Info(r.ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"other.>"}, info.Config.Subjects, "the existing stream is left as it was")
}

func TestDatabaseWithoutSchema(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`DROP SCHEMA herald CASCADE`)
	nc := r.ns.Connect(t)
	b, err := bridge.New(r.dsn, nc, bridge.Config{}, bridge.WithLogger(testLogger(t)))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	err = b.Run(ctx)
	require.ErrorIs(t, err, schema.ErrNotInstalled)
	require.Contains(t, err.Error(), "herald migrate")
}

func TestInvalidConfig(t *testing.T) {
	// Each error names the setting to fix, as herald-bridge's users know it.
	for _, c := range []struct {
		cfg  bridge.Config
		want string
	}{
		{bridge.Config{Prefix: "bad prefix"}, "HERALD_SUBJECT_PREFIX"},
		{bridge.Config{Prefix: "a.*"}, "HERALD_SUBJECT_PREFIX"},
		{bridge.Config{Prefix: "a..b"}, "HERALD_SUBJECT_PREFIX"},
		{bridge.Config{Stream: "has.dot"}, "HERALD_STREAM"},
		{bridge.Config{BatchSize: 5000}, "HERALD_BATCH_SIZE"},
		{bridge.Config{Preset: "weird"}, "HERALD_STREAM_PRESET"},
		{bridge.Config{OpenRate: 2000, CloseRate: 1000}, "HERALD_GATE_OPEN_RATE"},
		{bridge.Config{InFlight: 100}, "HERALD_IN_FLIGHT"},
		{bridge.Config{PollGather: time.Minute}, "HERALD_POLL_GATHER"},
		{bridge.Config{QueueWaiters: 10001}, "HERALD_GATE_QUEUE_WAITERS"},
		{bridge.Config{QueueFor: 10 * time.Millisecond}, "HERALD_GATE_QUEUE_FOR"},
		{bridge.Config{QueueFor: 2 * time.Minute}, "HERALD_GATE_QUEUE_FOR"},
	} {
		err := c.cfg.Validate()
		require.Error(t, err, "%+v", c.cfg)
		require.Contains(t, err.Error(), c.want)
	}
	require.NoError(t, (&bridge.Config{}).Validate())
	require.NoError(t, (&bridge.Config{QueueWaiters: -1}).Validate(), "a negative queue threshold turns the check off")
}

// TestOddKeys: key values with dots, spaces, wildcards, empty strings,
// control bytes, 10 kB strings and non-ASCII give valid subjects within the
// cap that decode back to the key (or hash, with the key in the body).
func TestOddKeys(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE odd (k text PRIMARY KEY, v int)`)
	r.watch("odd")
	r.runBridge(bridge.Config{Preset: bridge.PresetLog})
	keys := []string{"a.b.c", "with space", "*", ">", "", "tab\there", "nl\nx", "\x01ctl\x1f", "ünïcödé ✓", "%41", "%T", strings.Repeat("é", 5000)}
	for i, k := range keys {
		r.exec(`INSERT INTO odd VALUES ($1, $2)`, k, i)
	}
	r.waitDrained("HERALD", len(keys), 30*time.Second)
	msgs := r.streamMsgs("HERALD")
	seen := map[string]bool{}
	for _, m := range msgs {
		require.LessOrEqual(t, len(m.Subject), 4096)
		parts, err := change.ParseSubject("herald", m.Subject)
		require.NoError(t, err, m.Subject)
		e, err := change.FromMsg(m.Subject, m.Header, m.Data)
		require.NoError(t, err)
		require.Len(t, e.Key, 1)
		if parts.Hashed[0] {
			require.Equal(t, strings.Repeat("é", 5000), e.Key[0], "only the long key hashes; the body carries it whole")
		} else {
			require.Equal(t, e.Key[0], parts.Key[0], "the subject decodes back to the key")
		}
		require.False(t, parts.TableLevel)
		require.False(t, seen[m.Subject], "one subject per key")
		seen[m.Subject] = true
	}
	got := map[string]bool{}
	for _, e := range envelopes(t, msgs) {
		got[e.Key[0]] = true
	}
	for _, k := range keys {
		require.True(t, got[k], "key %q arrived", k)
	}
}

// TestUnencodableChangeBecomesMarker: a change no consumer could decode
// (invalid UTF-8 in a SQL_ASCII database) does not block the log; it goes
// out as a marker and the changes after it flow.
func TestUnencodableChangeBecomesMarker(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	name := fmt.Sprintf("sqlascii_%d", time.Now().UnixNano())
	admin, err := pgx.Connect(ctx, c.ConnString("postgres"))
	require.NoError(t, err)
	_, err = admin.Exec(ctx, `CREATE DATABASE `+name+` ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`)
	require.NoError(t, err)
	admin.Close(ctx)
	t.Cleanup(func() { _ = c.DropDatabase(context.Background(), name) })
	dsn := c.ConnString(name)

	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	defer pool.Close()
	_, err = schema.Migrate(ctx, pool)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `CREATE TABLE raw (k text PRIMARY KEY, v int)`)
	require.NoError(t, err)
	_, err = schema.WatchTable(ctx, pool, schema.WatchOptions{Table: "raw"})
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO raw VALUES (convert_from('\xff41'::bytea, 'SQL_ASCII'), 1)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO raw VALUES ('fine', 2)`)
	require.NoError(t, err)

	r := &rig{t: t, ctx: ctx, dsn: dsn, pool: pool, ns: natstest.Start(t, natstest.Options{})}
	r.js = r.ns.JetStream(t)
	r.runBridge(bridge.Config{})
	r.waitDrained("HERALD", 2, 30*time.Second)
	envs := envelopes(t, r.streamMsgs("HERALD"))
	require.NotNil(t, envs[0].Marker)
	require.Equal(t, "unencodable", envs[0].Marker.Reason)
	require.Nil(t, envs[0].New)
	require.Nil(t, envs[1].Marker)
	require.Equal(t, []string{"fine"}, envs[1].Key)
}

// TestFlightsKeepPerKeyOrder: while a change is in the air, a change of
// another key is published without waiting for it, but a later change of
// the same key waits until it has landed, so the stream holds each key's
// changes in commit order.
func TestFlightsKeepPerKeyOrder(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE fl (id int PRIMARY KEY, v int)`)
	r.watch("fl")
	release := make(chan struct{})
	var held atomic.Bool
	hooks := &bridge.Hooks{BeforeFlight: func([]int64) {
		if held.CompareAndSwap(false, true) {
			<-release // the first flight stays in the air
		}
	}}
	r.runBridge(bridge.Config{Preset: bridge.PresetLog, PollInterval: time.Hour, Hooks: hooks})
	testproc.WaitFor(t, time.Minute, "the gate to open", func() bool { _, open := r.gate(); return open })
	defer func() {
		if held.Load() {
			select {
			case <-release:
			default:
				close(release)
			}
		}
	}()

	r.exec(`INSERT INTO fl VALUES (1, 1)`)
	testproc.WaitFor(t, time.Minute, "the first change in the air", held.Load)
	r.exec(`INSERT INTO fl VALUES (2, 1)`)
	testproc.WaitFor(t, time.Minute, "key 2 stored while key 1 is in the air", func() bool {
		return r.streamMsgCount("HERALD") == 1
	})
	r.exec(`UPDATE fl SET v = 2 WHERE id = 1`)
	// Not waiting for an event: a flight wrongly launched beside the one in
	// the air would land within this time and be stored first.
	time.Sleep(time.Second)
	close(release)
	r.waitDrained("HERALD", 3, time.Minute)

	var key1 []int64
	for _, e := range envelopes(t, r.streamMsgs("HERALD")) {
		if e.Key[0] == "1" {
			key1 = append(key1, e.ID)
		}
	}
	require.Len(t, key1, 2, "key 1's changes in the stream")
	require.Less(t, key1[0], key1[1], "key 1's changes in commit order")
}

// TestTakeoverSkipsWhatAnEarlierLeaderPublished: a leader that died after
// publishing several batches, before deleting them, leaves changes in the
// log that the stream already holds. The next leader, under another source
// name (so JetStream's duplicate window cannot tell), stores none of them
// again, however many of its batches they span.
func TestTakeoverSkipsWhatAnEarlierLeaderPublished(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE tk (id int PRIMARY KEY, v int)`)
	r.watch("tk")
	r.exec(`INSERT INTO tk SELECT g, 0 FROM generate_series(1, 10) g`)

	// What the earlier leader, "alpha", published of the log.
	cfg := bridge.Config{Source: "alpha", Preset: bridge.PresetLog}
	require.NoError(t, cfg.Validate())
	_, err := bridge.EnsureStream(r.ctx, r.js, cfg)
	require.NoError(t, err)
	var epoch int64
	var db string
	require.NoError(t, r.pool.QueryRow(r.ctx, `SELECT epoch, current_database() FROM herald.install`).Scan(&epoch, &db))
	rows, err := r.pool.Query(r.ctx, `SELECT id, txid::text::bigint, at, schema_name, table_name, op, key, new FROM herald.log ORDER BY id`)
	require.NoError(t, err)
	var published int
	for rows.Next() {
		e := &change.Envelope{V: change.EnvelopeVersion, Source: "alpha", Epoch: epoch}
		var op string
		require.NoError(t, rows.Scan(&e.ID, &e.TxID, &e.At, &e.Schema, &e.Table, &op, &e.Key, &e.New))
		e.Op, e.At = change.Op(op), e.At.UTC()
		m, err := change.NewMsg(cfg.Prefix, e)
		require.NoError(t, err)
		_, err = r.js.PublishMsg(r.ctx, m)
		require.NoError(t, err)
		published++
	}
	require.NoError(t, rows.Err())
	require.Equal(t, 10, published)

	// The next leader reads the log one change at a time: ten batches, twice
	// what it assumes a leader can leave behind ((InFlight+1) x BatchSize),
	// so finding stored changes has to extend the check.
	r.runBridge(bridge.Config{Source: "beta", Preset: bridge.PresetLog, BatchSize: 1, SmallBatch: 1, InFlight: 4})
	r.waitDrained("HERALD", 10, time.Minute)
	for _, e := range envelopes(t, r.streamMsgs("HERALD")) {
		require.Equal(t, "alpha", e.Source, "change %d stored again by the next leader", e.ID)
	}
}

// TestNotificationsOfReadTransactionsStartNoRead: with the gate open, a
// notification whose transaction a read has returned already starts no
// read of its own, and skipping them loses nothing, also when a
// transaction spans several batches.
func TestNotificationsOfReadTransactionsStartNoRead(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.exec(`CREATE TABLE nr (id int PRIMARY KEY, v int)`)
	r.watch("nr")
	var hold atomic.Bool
	held, release := make(chan struct{}, 1), make(chan struct{})
	hooks := &bridge.Hooks{BeforeRead: func() {
		if hold.CompareAndSwap(true, false) {
			held <- struct{}{}
			<-release
		}
	}}
	reg := prometheus.NewRegistry()
	r.runBridge(bridge.Config{Preset: bridge.PresetLog, PollInterval: time.Hour, BatchSize: 4, SmallBatch: 4, Hooks: hooks},
		bridge.WithRegisterer(reg))
	testproc.WaitFor(t, time.Minute, "the gate to open", func() bool { _, open := r.gate(); return open })
	notifyBefore := counterValue(t, reg, "herald_bridge_wakeups_total", "notify")

	// The first commit wakes the bridge, whose read is held while nine more
	// transactions commit and notify. The read, and the reads right after
	// it (the batch is full), return all ten; their nine notifications
	// arrive afterwards and are covered.
	hold.Store(true)
	r.exec(`INSERT INTO nr VALUES (1, 0)`)
	select {
	case <-held:
	case <-time.After(time.Minute):
		t.Fatal("the first commit's notification started no read")
	}
	for i := 2; i <= 10; i++ {
		r.exec(`INSERT INTO nr VALUES ($1, 0)`, i)
	}
	close(release)
	r.waitDrained("HERALD", 10, time.Minute)
	testproc.WaitFor(t, time.Minute, "nine covered notifications", func() bool {
		return counterValue(t, reg, "herald_bridge_notifications_covered_total", "") >= 9
	})
	require.Equal(t, 9.0, counterValue(t, reg, "herald_bridge_notifications_covered_total", ""))
	require.Equal(t, 1.0, counterValue(t, reg, "herald_bridge_wakeups_total", "notify")-notifyBefore,
		"reads started by a notification")

	// One transaction of ten changes, batches of four: its notification
	// comes after the first read, which was full, so the bridge keeps
	// reading; with the safety poll at an hour, anything skipped wrongly
	// would never arrive.
	r.exec(`UPDATE nr SET v = 1`)
	r.waitDrained("HERALD", 20, time.Minute)
	require.Equal(t, 0, r.backlog())

	// Any other payload starts a read: a log row that notified nobody (as
	// if written by hand), then a manual NOTIFY with an empty payload (a
	// trigger from an older Herald) and one that is not a number. With the
	// safety poll at an hour, the row arrives only if one of them read.
	for _, payload := range []string{"", "not a txid"} {
		before := counterValue(t, reg, "herald_bridge_wakeups_total", "notify")
		r.exec(`INSERT INTO herald.log (schema_name, table_name, op, key, new)
			VALUES ('public', 'nr', 'insert', ARRAY['100'], '{"id": 100, "v": 0}')`)
		r.exec(`SELECT pg_notify('herald', $1)`, payload)
		testproc.WaitFor(t, time.Minute, fmt.Sprintf("a read started by NOTIFY %q", payload), func() bool {
			return counterValue(t, reg, "herald_bridge_wakeups_total", "notify") > before
		})
		testproc.WaitFor(t, time.Minute, "the hand-written row published", func() bool { return r.backlog() == 0 })
	}
	r.waitDrained("HERALD", 22, time.Minute)
}

// counterValue reads a counter from reg, with the given value of its one
// label ("" for a counter without labels); 0 when it was never set.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestWritersQueuedOnNotifyCloseTheGate: writers that queue on NOTIFY's
// commit lock close the gate even when the change rate they manage stays
// below the close rate (here out of reach), and every change arrives.
func TestWritersQueuedOnNotifyCloseTheGate(t *testing.T) {
	// fsync on: each commit holds NOTIFY's lock across a real WAL flush, as
	// in production, so writers queue on it.
	r := newRig(t, rigOptions{cluster: pgtest.NewCluster(t, pgtest.Options{Settings: map[string]string{"fsync": "on"}})})
	r.exec(`CREATE TABLE q (id bigint PRIMARY KEY)`)
	r.watch("q")
	reg := prometheus.NewRegistry()
	r.runBridge(bridge.Config{Preset: bridge.PresetLog, CloseRate: 1e9, OpenRate: 1, ReopenAfter: time.Hour, QueueFor: 200 * time.Millisecond}, bridge.WithRegisterer(reg))
	testproc.WaitFor(t, time.Minute, "the gate to open", func() bool { _, open := r.gate(); return open })

	closed := func() bool { return counterValue(t, reg, "herald_bridge_gate_closes_total", "queue") > 0 }
	n := runNotifyingWriters(t, r, 16, 50_000, closed)
	require.True(t, closed(), "the gate closed because writers queued on NOTIFY (after %d changes)", n)
	_, open := r.gate()
	require.False(t, open, "the gate stays closed")
	r.waitDrained("HERALD", int(n), time.Minute)
}

// TestQueueCheckOff: with HERALD_GATE_QUEUE_WAITERS negative, writers that
// queue on NOTIFY's lock leave the gate open.
func TestQueueCheckOff(t *testing.T) {
	r := newRig(t, rigOptions{cluster: pgtest.NewCluster(t, pgtest.Options{Settings: map[string]string{"fsync": "on"}})})
	r.exec(`CREATE TABLE q (id bigint PRIMARY KEY)`)
	r.watch("q")
	reg := prometheus.NewRegistry()
	r.runBridge(bridge.Config{Preset: bridge.PresetLog, CloseRate: 1e9, OpenRate: 1, ReopenAfter: time.Hour, QueueWaiters: -1, QueueFor: 200 * time.Millisecond}, bridge.WithRegisterer(reg))
	testproc.WaitFor(t, time.Minute, "the gate to open", func() bool { _, open := r.gate(); return open })

	// Watch the queue from here while the writers run: the test means
	// something only if they stayed queued, look after look, for longer
	// than QueueFor (200ms: five looks 50ms apart would close the gate).
	var streak, longest, looks atomic.Int64
	done := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		defer close(watchErr)
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			var n int
			if err := r.pool.QueryRow(r.ctx, schema.Query("gate_queue")).Scan(&n); err != nil {
				watchErr <- err
				return
			}
			looks.Add(1)
			if n < 4 {
				streak.Store(0)
				continue
			}
			if s := streak.Add(1); s > longest.Load() {
				longest.Store(s)
			}
		}
	}()
	enough := func() bool { return longest.Load() >= 8 }
	n := runNotifyingWriters(t, r, 16, 50_000, enough)
	close(done)
	require.NoError(t, <-watchErr, "watching the queue")
	require.Zero(t, counterValue(t, reg, "herald_bridge_gate_closes_total", "queue"), "the check is off")
	require.GreaterOrEqual(t, longest.Load(), int64(8), "writers queued on NOTIFY in %d looks in a row (of %d looks)", longest.Load(), looks.Load())
	_, open := r.gate()
	require.True(t, open, "the gate stays open")
	r.waitDrained("HERALD", int(n), time.Minute)
}

// runNotifyingWriters runs writers connections inserting into q, one row
// per transaction, until stop says so or limit rows were written; it returns
// how many were.
func runNotifyingWriters(t *testing.T, r *rig, writers int, limit int64, stop func() bool) int64 {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(r.dsn)
	require.NoError(t, err)
	pcfg.MaxConns = int32(writers) // one connection per writer
	pool, err := pgxpool.NewWithConfig(r.ctx, pcfg)
	require.NoError(t, err)
	defer pool.Close()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			for !stop() && r.ctx.Err() == nil && next.Load() < limit {
				if _, err := pool.Exec(r.ctx, `INSERT INTO q VALUES ($1)`, next.Add(1)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	return next.Load()
}
