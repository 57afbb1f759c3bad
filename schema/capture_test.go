package schema_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/schema"
)

func TestCaptureOps(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE items (id int PRIMARY KEY, name text, doc json, note text)`)
	e.watch(schema.WatchOptions{Table: "items", Columns: []string{"name", "doc"}})

	e.exec(`INSERT INTO items VALUES (1, 'a', '{"n": 1.50}', 'x')`)
	e.exec(`UPDATE items SET name = 'b' WHERE id = 1`)
	e.exec(`UPDATE items SET note = 'only unwatched' WHERE id = 1`) // logs nothing
	e.exec(`UPDATE items SET doc = '{"n": 1.50}' WHERE id = 1`)     // json without equality: same value, nothing
	e.exec(`UPDATE items SET doc = '{"n": 2}' WHERE id = 1`)        // json changed
	e.exec(`INSERT INTO items VALUES (1, 'c', null, null) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name`)
	e.exec(`INSERT INTO items VALUES (2, 'new', null, null) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name`)
	e.exec(`UPDATE items SET id = 3 WHERE id = 2`) // key change
	e.exec(`DELETE FROM items WHERE id = 1`)
	e.exec(`TRUNCATE items`)

	// Rolled back: nothing.
	tx, err := e.pool.Begin(e.ctx)
	require.NoError(t, err)
	_, err = tx.Exec(e.ctx, `INSERT INTO items VALUES (9, 'rolled back', null, null)`)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(e.ctx))

	rows := e.log()
	require.Equal(t, []string{
		"insert 1", "update 1", "update 1", "update 1", "insert 2", "delete 2", "insert 3", "delete 1", "truncate",
	}, summary(rows))
	for _, r := range rows {
		require.Equal(t, "public", r.Schema)
		require.Equal(t, "items", r.Table)
	}
	require.Nil(t, rows[0].Old)
	require.Equal(t, map[string]any{"id": float64(1), "name": "a", "doc": map[string]any{"n": 1.5}}, rows[0].New, "new carries watched and key columns only")
	require.Equal(t, "a", rows[1].Old["name"])
	require.Equal(t, "b", rows[1].New["name"])
	require.Equal(t, map[string]any{"n": float64(2)}, rows[2].New["doc"])
	require.Equal(t, "c", rows[3].New["name"], "ON CONFLICT DO UPDATE logs an update")
	require.Equal(t, "new", rows[5].Old["name"], "key change: delete carries the old row")
	require.Nil(t, rows[5].New)
	require.Equal(t, float64(3), rows[6].New["id"])
	require.Nil(t, rows[8].Key)
	require.Nil(t, rows[8].New)
}

func TestCaptureAllColumnsAndExactNumbers(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE m (id bigint PRIMARY KEY, amount numeric, big bigint)`)
	e.watch(schema.WatchOptions{Table: "m"})
	e.exec(`INSERT INTO m VALUES (9007199254740993, 1.50, 9223372036854775807)`)
	var raw string
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT new::text FROM herald.log`).Scan(&raw))
	require.Contains(t, raw, `"amount": 1.50`)
	require.Contains(t, raw, `"id": 9007199254740993`)
	require.Contains(t, raw, `"big": 9223372036854775807`)
	e.exec(`UPDATE m SET amount = 1.5`) // numerically equal: jsonb equality sees no change
	e.exec(`UPDATE m SET big = 1`)
	require.Equal(t, []string{"insert 9007199254740993", "update 9007199254740993"}, summary(e.log()))
}

func TestRowFilterMoves(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE u (id int PRIMARY KEY, active boolean, name text, other text)`)
	e.watch(schema.WatchOptions{Table: "u", Columns: []string{"name"}, Where: "active AND name <> 'hidden'"})

	e.exec(`INSERT INTO u VALUES (1, true, 'a', ''), (2, false, 'b', ''), (3, NULL, 'c', '')`)
	e.exec(`UPDATE u SET name = 'a2' WHERE id = 1`)     // inside: update
	e.exec(`UPDATE u SET other = 'x' WHERE id = 1`)     // inside, unwatched: nothing
	e.exec(`UPDATE u SET active = false WHERE id = 1`)  // moves out: delete
	e.exec(`UPDATE u SET name = 'b2' WHERE id = 2`)     // outside: nothing
	e.exec(`UPDATE u SET active = true WHERE id = 2`)   // moves in: insert
	e.exec(`UPDATE u SET name = 'hidden' WHERE id = 2`) // moves out through another column
	e.exec(`DELETE FROM u WHERE id = 3`)                // outside (NULL counts as false): nothing
	e.exec(`DELETE FROM u WHERE id = 2`)                // outside now: nothing
	require.Equal(t, []string{"insert 1", "update 1", "delete 1", "insert 2", "delete 2"}, summary(e.log()))
	rows := e.log()
	require.Equal(t, "b2", rows[3].New["name"], "moving in logs the row as it is now")
}

func TestRowFilterRefused(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE u (id int PRIMARY KEY, active boolean, n int)`)
	for _, where := range []string{
		"(SELECT true)",
		"id IN (SELECT 1)",
		"random() > 0.5",
		"now() > '2020-01-01'",
		"count(*) > 1",
		"true; DROP TABLE u",
		"true) OR (true",
		"active) ; DROP TABLE u; SELECT (true",
		"$$x$$ = 'x'",
		"active -- comment",
		"nosuch > 1",
		"n", // not boolean
	} {
		t.Run(where, func(t *testing.T) {
			_, err := schema.WatchTable(e.ctx, e.pool, schema.WatchOptions{Table: "u", Where: where})
			require.Error(t, err)
			require.ErrorIs(t, err, schema.ErrBadFilter)
			assertNotWatched(t, e, "u")
		})
	}
	var n int
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT count(*) FROM u`).Scan(&n), "table u still exists")
}

// assertNotWatched checks nothing of Herald is left on a table.
func assertNotWatched(t *testing.T, e *env, table string) {
	t.Helper()
	var triggers, functions, registry int
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'herald%' AND NOT tgisinternal`).Scan(&triggers))
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT count(*) FROM pg_proc WHERE pronamespace = 'herald'::regnamespace`).Scan(&functions))
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT count(*) FROM herald.watch`).Scan(&registry))
	require.Zero(t, triggers, "no trigger left")
	require.Zero(t, functions, "no function left")
	require.Zero(t, registry, "no registry row left")
}

func TestQuotedIdentifiers(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE SCHEMA "Odd Schema"`)
	e.exec(`CREATE TABLE "Odd Schema"."Order ""Items""" ("Key Col" text PRIMARY KEY, "select" int, "we'ird\col" text, "Mixed" text)`)
	e.exec(`CREATE TABLE "order" ("group" int PRIMARY KEY, "user" text)`)

	w := e.watch(schema.WatchOptions{Table: `"Odd Schema"."Order ""Items"""`, Columns: []string{"select", `we'ird\col`}})
	require.Equal(t, "Odd Schema", w.Schema)
	require.Equal(t, `Order "Items"`, w.Table)
	e.watch(schema.WatchOptions{Table: `"order"`, Key: []string{"group"}})

	e.exec(`INSERT INTO "Odd Schema"."Order ""Items""" VALUES ('k.1 *>', 1, 'v', 'm')`)
	e.exec(`UPDATE "Odd Schema"."Order ""Items""" SET "we'ird\col" = 'w'`)
	e.exec(`UPDATE "Odd Schema"."Order ""Items""" SET "Mixed" = 'unwatched'`)
	e.exec(`INSERT INTO "order" VALUES (7, 'u')`)
	rows := e.log()
	require.Equal(t, []string{"insert k.1 *>", "update k.1 *>", "insert 7"}, summary(rows))
	require.Equal(t, "Odd Schema", rows[0].Schema)
	require.Equal(t, `Order "Items"`, rows[0].Table)
	require.Equal(t, map[string]any{"Key Col": "k.1 *>", "select": float64(1), `we'ird\col`: "v"}, rows[0].New)
	require.Equal(t, "order", rows[2].Table)

	// Identifier parsing follows PostgreSQL: unquoted folds to lower case.
	qn, err := schema.ParseQualifiedName(`Public.MyTable`)
	require.NoError(t, err)
	require.Equal(t, schema.QualifiedName{Schema: "public", Name: "mytable"}, qn)
}

func TestInjectionRefused(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE victim (id int PRIMARY KEY, a text)`)
	cases := []schema.WatchOptions{
		{Table: `victim; DROP TABLE victim`},
		{Table: `victim" ; DROP TABLE victim; --`},
		{Table: `"victim; DROP TABLE victim"`},
		{Table: `victim`, Columns: []string{`a"; DROP TABLE victim; --`}},
		{Table: `victim`, Columns: []string{`a', 'x'); DROP TABLE victim; --`}},
		{Table: `victim`, Key: []string{`id") ; DROP TABLE victim; --`}},
	}
	for _, c := range cases {
		_, err := schema.WatchTable(e.ctx, e.pool, c)
		require.Error(t, err, "%+v", c)
		require.True(t, errors.Is(err, schema.ErrNoTable) || errors.Is(err, schema.ErrNoColumn) || errors.Is(err, schema.ErrBadName), "clear error for %+v: %v", c, err)
	}
	assertNotWatched(t, e, "victim")
	e.exec(`SELECT 1 FROM victim`)
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE nokey (a int, b int)`)
	e.exec(`CREATE TABLE k (id int PRIMARY KEY, nullable int UNIQUE, nn int NOT NULL, f float8 NOT NULL UNIQUE, p int NOT NULL)`)
	e.exec(`CREATE UNIQUE INDEX k_partial ON k (p) WHERE p > 0`)
	for _, c := range []struct {
		opts schema.WatchOptions
		is   error
		msg  string
	}{
		{schema.WatchOptions{Table: "nosuch"}, schema.ErrNoTable, "does not exist"},
		{schema.WatchOptions{Table: "other.nokey"}, schema.ErrNoTable, "does not exist"},
		{schema.WatchOptions{Table: "k", Columns: []string{"nosuch"}}, schema.ErrNoColumn, "has no column"},
		{schema.WatchOptions{Table: "nokey"}, schema.ErrNoKey, "no primary key; pass --key"},
		{schema.WatchOptions{Table: "k", Key: []string{"nullable"}}, schema.ErrNoKey, "nullable"},
		{schema.WatchOptions{Table: "k", Key: []string{"nn"}}, schema.ErrNoKey, "no unique index"},
		{schema.WatchOptions{Table: "k", Key: []string{"p"}}, schema.ErrNoKey, "no unique index"},
		{schema.WatchOptions{Table: "k", Key: []string{"f"}}, schema.ErrUnsupported, "float8"},
		{schema.WatchOptions{Table: "herald.log"}, schema.ErrNoTable, "belongs to Herald"},
	} {
		_, err := schema.WatchTable(e.ctx, e.pool, c.opts)
		require.ErrorIs(t, err, c.is, "%+v", c.opts)
		require.Contains(t, err.Error(), c.msg)
	}
	assertNotWatched(t, e, "k")

	// Before migrate.
	fresh := newEnv(t, false)
	fresh.exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	_, err := schema.WatchTable(fresh.ctx, fresh.pool, schema.WatchOptions{Table: "t"})
	require.ErrorIs(t, err, schema.ErrNotInstalled)
	require.Contains(t, err.Error(), "herald migrate")
	var n int
	require.NoError(t, fresh.pool.QueryRow(fresh.ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = 'herald'`).Scan(&n))
	require.Zero(t, n, "watch before migrate creates nothing")
}

func TestApplicationRoleAndDroppedColumn(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE acct (id int PRIMARY KEY, name text, extra text, plan text)`)
	e.watch(schema.WatchOptions{Table: "acct", Columns: []string{"name", "extra"}})
	role := "herald_test_app_" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "_")
	e.exec(`DROP ROLE IF EXISTS ` + role)
	e.exec(`CREATE ROLE ` + role)
	t.Cleanup(func() { _, _ = e.pool.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE IF EXISTS `+role) })
	e.exec(`GRANT SELECT, INSERT, UPDATE, DELETE ON acct TO ` + role)

	asApp := func(sql string) error {
		return pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(e.ctx, `SET LOCAL ROLE `+role); err != nil {
				return err
			}
			_, err := tx.Exec(e.ctx, sql)
			return err
		})
	}
	var herald bool
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT has_schema_privilege($1, 'herald', 'USAGE') OR has_table_privilege($1, 'herald.log', 'INSERT')`, role).Scan(&herald))
	require.False(t, herald, "the application role has no grant on herald.*")
	require.NoError(t, asApp(`INSERT INTO acct VALUES (1, 'a', 'e', 'p')`))
	require.NoError(t, asApp(`UPDATE acct SET name = 'b'`))

	e.exec(`ALTER TABLE acct DROP COLUMN extra`)
	require.NoError(t, asApp(`INSERT INTO acct VALUES (2, 'c', 'p')`), "writes go on after a watched column is dropped")
	require.NoError(t, asApp(`UPDATE acct SET name = 'd' WHERE id = 2`))
	require.NoError(t, asApp(`DELETE FROM acct WHERE id = 1`))
	require.Equal(t, []string{"insert 1", "update 1", "insert 2", "update 2", "delete 1"}, summary(e.log()))

	st, err := schema.GetStatus(e.ctx, e.pool)
	require.NoError(t, err)
	require.Len(t, st.Watches, 1)
	require.Equal(t, []string{`watched column "extra" dropped or renamed`}, st.Watches[0].Drift)

	e.exec(`ALTER TABLE acct DISABLE TRIGGER herald_capture_insert`)
	st, err = schema.GetStatus(e.ctx, e.pool)
	require.NoError(t, err)
	require.Contains(t, st.Watches[0].Drift, "trigger herald_capture_insert disabled")

	// Watching again with the surviving columns repairs it.
	e.watch(schema.WatchOptions{Table: "acct", Columns: []string{"name"}})
	st, err = schema.GetStatus(e.ctx, e.pool)
	require.NoError(t, err)
	require.Empty(t, st.Watches[0].Drift)
}

func TestKeyRenderingIgnoresSessionSettings(t *testing.T) {
	e := newEnv(t, true)
	e.exec(`CREATE TABLE ev (at timestamptz PRIMARY KEY, v int)`)
	e.exec(`CREATE TABLE amt (n numeric PRIMARY KEY, v int)`)
	e.watch(schema.WatchOptions{Table: "ev"})
	e.watch(schema.WatchOptions{Table: "amt"})
	write := func(tz, datestyle, sql string) {
		require.NoError(t, pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(e.ctx, `SELECT set_config('TimeZone', $1, true), set_config('DateStyle', $2, true)`, tz, datestyle); err != nil {
				return err
			}
			_, err := tx.Exec(e.ctx, sql)
			return err
		}))
	}
	write("UTC", "ISO, YMD", `INSERT INTO ev VALUES ('2026-11-22 10:00:00.5+00', 1)`)
	write("America/New_York", "SQL, DMY", `UPDATE ev SET v = 2`)
	write("Asia/Kolkata", "German", `DELETE FROM ev`)
	write("UTC", "ISO", `INSERT INTO amt VALUES (1.50, 1)`)
	write("UTC", "ISO", `UPDATE amt SET n = 1.500`) // numerically the same key: no change logged
	write("UTC", "ISO", `UPDATE amt SET v = 2 WHERE n = 1.5`)
	write("UTC", "ISO", `INSERT INTO amt VALUES (10.000, 1)`)
	rows := e.log()
	var keys []string
	for _, r := range rows {
		keys = append(keys, r.Op+" "+strings.Join(r.Key, ","))
	}
	require.Len(t, keys, 6)
	require.Equal(t, []string{
		"insert 2026-11-22T10:00:00.500000Z", "update 2026-11-22T10:00:00.500000Z", "delete 2026-11-22T10:00:00.500000Z",
	}, keys[:3], "timestamptz keys are UTC whatever the session's TimeZone and DateStyle")
	require.Equal(t, []string{"insert 1.5", "update 1.5", "insert 10"}, keys[3:], "numeric keys ignore scale")
}
