package schema_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/schema"
)

// counterOf reads the writers' counter from a log row.
func counterOf(t *testing.T, r logRow) int64 {
	t.Helper()
	v, ok := r.New["n"].(float64)
	require.True(t, ok, "row %d has a counter: %+v", r.ID, r.New)
	return int64(v)
}

// TestPerKeyOrder has concurrent writers increment counters on a few hot
// keys; for each key the log ids must follow the counter, i.e. commit order.
func TestPerKeyOrder(t *testing.T) {
	e := newEnv(t, true)
	const keys, writers, perWriter = 5, 8, 150
	e.exec(`CREATE TABLE hot (k int PRIMARY KEY, n bigint NOT NULL)`)
	e.watch(schema.WatchOptions{Table: "hot"})
	e.exec(`INSERT INTO hot SELECT g, 0 FROM generate_series(1, $1) g`, keys)
	e.clearLog()

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				k := (w+i)%keys + 1
				// Several statements per transaction widen the window between
				// taking the row lock and committing.
				err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(e.ctx, `UPDATE hot SET n = n + 1 WHERE k = $1`, k); err != nil {
						return err
					}
					_, err := tx.Exec(e.ctx, `SELECT pg_sleep(0.0005)`)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	rows := e.log()
	require.Len(t, rows, writers*perWriter)
	last := map[string]int64{}
	for _, r := range rows {
		n := counterOf(t, r)
		require.Equal(t, last[r.Key[0]]+1, n, "key %s: log id %d carries counter %d right after %d", r.Key[0], r.ID, n, last[r.Key[0]])
		last[r.Key[0]] = n
	}
}

// TestBackfillWithConcurrentWriters: a snapshot is never logged after a
// newer change of its key, and every row gets exactly one snapshot.
func TestBackfillWithConcurrentWriters(t *testing.T) {
	e := newEnv(t, true)
	const rowsN = 3000
	e.exec(`CREATE TABLE b (k int PRIMARY KEY, n bigint NOT NULL)`)
	e.exec(`INSERT INTO b SELECT g, 0 FROM generate_series(1, $1) g`, rowsN)
	e.watch(schema.WatchOptions{Table: "b"})

	ctx, cancel := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	var writeErr error
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k := (i*7919+w*104729)%rowsN + 1
				_, err := e.pool.Exec(ctx, `UPDATE b SET n = n + 1 WHERE k = $1`, k)
				if err != nil && ctx.Err() == nil {
					mu.Lock()
					writeErr = err
					mu.Unlock()
					return
				}
			}
		}(w)
	}
	p, err := schema.Backfill(e.ctx, e.pool, "b", schema.BackfillOptions{BatchSize: 100})
	cancel()
	wg.Wait()
	require.NoError(t, err)
	require.NoError(t, writeErr)
	require.True(t, p.Done)
	require.EqualValues(t, rowsN, p.Rows)

	rows := e.log()
	snapshots := map[string]int{}
	last := map[string]int64{}
	updates := 0
	for _, r := range rows {
		n := counterOf(t, r)
		k := r.Key[0]
		switch r.Op {
		case "snapshot":
			snapshots[k]++
			require.GreaterOrEqual(t, n, last[k], "key %s: snapshot (id %d, n=%d) logged after a newer change (n=%d)", k, r.ID, n, last[k])
		case "update":
			updates++
			require.Equal(t, last[k]+1, n, "key %s: update id %d out of order", k, r.ID)
		}
		last[k] = n
	}
	require.Len(t, snapshots, rowsN)
	for k, c := range snapshots {
		require.Equal(t, 1, c, "key %s snapshotted once", k)
	}
	require.Positive(t, updates, "writers ran alongside the backfill")
}

func TestBackfillResumes(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE r (a text NOT NULL, b int NOT NULL, v jsonb, hidden boolean, PRIMARY KEY (a, b))`)
	e.exec(`INSERT INTO r SELECT 'k' || (g % 7), g, jsonb_build_object('g', g), g % 10 = 0 FROM generate_series(1, 1000) g`)
	e.watch(schema.WatchOptions{Table: "r", Columns: []string{"v"}, Where: "NOT hidden"})

	ctx, cancel := context.WithCancel(e.ctx)
	batches := 0
	_, err := schema.Backfill(ctx, e.pool, "r", schema.BackfillOptions{BatchSize: 64, Progress: func(p schema.BackfillProgress) {
		batches++
		if batches == 3 {
			cancel() // interrupted after three committed batches
		}
	}})
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, e.log(), 3*64)

	p, err := schema.Backfill(e.ctx, e.pool, "r", schema.BackfillOptions{BatchSize: 64})
	require.NoError(t, err)
	require.True(t, p.Resumed)
	require.EqualValues(t, 900, p.Rows)
	rows := e.log()
	require.Len(t, rows, 900, "every visible row exactly once across the interruption")
	seen := map[string]bool{}
	for _, r := range rows {
		require.Equal(t, "snapshot", r.Op)
		k := fmt.Sprintf("%s/%08s", r.Key[0], r.Key[1])
		require.False(t, seen[k], "duplicate snapshot of %v", r.Key)
		seen[k] = true
		require.Contains(t, r.New, "v")
		require.NotContains(t, r.New, "hidden")
	}

	// A finished backfill run again starts over.
	p, err = schema.Backfill(e.ctx, e.pool, "r", schema.BackfillOptions{})
	require.NoError(t, err)
	require.False(t, p.Resumed)
	require.EqualValues(t, 900, p.Rows)
}

// listen opens a dedicated connection listening on Herald's channel.
func listen(t *testing.T, e *env) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(e.ctx, e.dsn)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	_, err = c.Exec(e.ctx, `LISTEN herald`)
	require.NoError(t, err)
	return c
}

// notifications drains what arrived on c; it waits for a marker
// notification sent after the writes, so "none" is a real observation.
func notifications(t *testing.T, e *env, c *pgx.Conn) int {
	t.Helper()
	e.exec(`SELECT pg_notify('herald', 'marker')`)
	n := 0
	for {
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		msg, err := c.WaitForNotification(ctx)
		cancel()
		require.NoError(t, err, "waiting for the marker notification")
		if msg.Payload == "marker" {
			return n
		}
		n++
	}
}

func TestGatedNotify(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE g (id int PRIMARY KEY, v int)`)
	e.watch(schema.WatchOptions{Table: "g"})
	c := listen(t, e)

	// Closed (the default): no notification.
	e.exec(`INSERT INTO g VALUES (1, 1)`)
	e.exec(`UPDATE g SET v = 2`)
	require.Equal(t, 0, notifications(t, e, c))

	// Open: one per transaction, however many rows it writes.
	e.exec(`UPDATE herald.gate SET armed_until = now() + interval '1 minute'`)
	e.exec(`INSERT INTO g SELECT g, 0 FROM generate_series(2, 50) g`)
	e.exec(`UPDATE g SET v = 3 WHERE id = 1`)
	require.NoError(t, pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
		for i := 0; i < 5; i++ {
			if _, err := tx.Exec(e.ctx, `UPDATE g SET v = v + 1 WHERE id = 2`); err != nil {
				return err
			}
		}
		return nil
	}))
	require.Equal(t, 3, notifications(t, e, c))

	// The payload is the transaction's id, as logged with its changes: the
	// bridge skips notifications of transactions it has read already.
	e.exec(`INSERT INTO g VALUES (60, 0), (61, 0)`)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	msg, err := c.WaitForNotification(ctx)
	cancel()
	require.NoError(t, err)
	var txids []string
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT array_agg(DISTINCT txid::text) FROM herald.log WHERE key IN ('{60}', '{61}')`).Scan(&txids))
	require.Equal(t, []string{msg.Payload}, txids)
	require.Equal(t, 0, notifications(t, e, c), "one notification for the two rows")

	// Rolled back: the notification goes with it.
	err = pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(e.ctx, `INSERT INTO g VALUES (100, 1)`); err != nil {
			return err
		}
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	require.Equal(t, 0, notifications(t, e, c))

	// An expired lease counts as closed.
	e.exec(`UPDATE herald.gate SET armed_until = now() - interval '1 millisecond'`)
	e.exec(`INSERT INTO g VALUES (200, 1)`)
	require.Equal(t, 0, notifications(t, e, c))
	var logged int
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT count(*) FROM herald.log WHERE key = '{200}'`).Scan(&logged))
	require.Equal(t, 1, logged, "the change is logged whether or not anyone is woken")
}

func TestMigrateConcurrentAndEpoch(t *testing.T) {
	e := newEnv(t, false)
	const n = 6
	var wg sync.WaitGroup
	results := make([]schema.MigrateResult, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := pgx.Connect(e.ctx, e.dsn) // one session each, like separate processes
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close(context.Background())
			results[i], errs[i] = schema.Migrate(e.ctx, c)
		}(i)
	}
	wg.Wait()
	applied := 0
	for i := 0; i < n; i++ {
		require.NoError(t, errs[i])
		require.Equal(t, results[0].Epoch, results[i].Epoch, "one epoch")
		require.Equal(t, schema.LatestVersion(), results[i].Version)
		applied += len(results[i].Applied)
	}
	require.Equal(t, len(schema.Migrations()), applied, "each migration applied once")
	var installs int
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT count(*) FROM herald.install`).Scan(&installs))
	require.Equal(t, 1, installs)

	// A reinstall gets a larger epoch.
	first := results[0].Epoch
	e.exec(`DROP SCHEMA herald CASCADE`)
	again, err := schema.Migrate(e.ctx, e.pool)
	require.NoError(t, err)
	require.Greater(t, again.Epoch, first)
	_, epoch, err := schema.Installed(e.ctx, e.pool)
	require.NoError(t, err)
	require.Equal(t, again.Epoch, epoch)
}

func TestUnwatch(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE w (id int PRIMARY KEY, a int, f bool)`)
	e.watch(schema.WatchOptions{Table: "w", Where: "f", Always: true})
	require.NoError(t, schema.Unwatch(e.ctx, e.pool, "w", 0, 0))
	assertNotWatched(t, e, "w")
	e.exec(`INSERT INTO w VALUES (1, 1, true)`)
	require.Empty(t, e.log())
	err := schema.Unwatch(e.ctx, e.pool, "w", 0, 0)
	require.ErrorIs(t, err, schema.ErrNotWatched)
}

func TestWatchAlwaysFiresInReplicaMode(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE rep (id int PRIMARY KEY)`)
	e.exec(`CREATE TABLE norep (id int PRIMARY KEY)`)
	e.watch(schema.WatchOptions{Table: "rep", Always: true})
	e.watch(schema.WatchOptions{Table: "norep"})
	require.NoError(t, pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(e.ctx, `SET LOCAL session_replication_role = replica`); err != nil {
			return err
		}
		if _, err := tx.Exec(e.ctx, `INSERT INTO rep VALUES (1)`); err != nil {
			return err
		}
		_, err := tx.Exec(e.ctx, `INSERT INTO norep VALUES (1)`)
		return err
	}))
	rows := e.log()
	require.Len(t, rows, 1)
	require.Equal(t, "rep", rows[0].Table)
}

// TestWatchWaitsBoundedForLock: a long transaction holding the table does
// not make watch queue the application's writers; it times out and retries,
// then reports a clear error.
func TestWatchWaitsBoundedForLock(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE busy (id int PRIMARY KEY)`)
	holder, err := e.pool.Begin(e.ctx)
	require.NoError(t, err)
	defer holder.Rollback(context.Background())
	_, err = holder.Exec(e.ctx, `LOCK TABLE busy IN ROW EXCLUSIVE MODE`)
	require.NoError(t, err)
	_, err = schema.WatchTable(e.ctx, e.pool, schema.WatchOptions{Table: "busy", LockTimeout: 50 * time.Millisecond, Attempts: 2})
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "55P03", pgErr.Code)
	require.Contains(t, err.Error(), "long transaction")
	// Writers are not blocked meanwhile (the attempt gave up its queue place).
	_, err = e.pool.Exec(e.ctx, `INSERT INTO busy VALUES (1)`)
	require.NoError(t, err)
	require.NoError(t, holder.Rollback(e.ctx))
	e.watch(schema.WatchOptions{Table: "busy"})
}

var errRollback = errors.New("roll back")
