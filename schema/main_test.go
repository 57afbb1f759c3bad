package schema_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/schema"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// env is one test's fresh database with Herald migrated.
type env struct {
	t    *testing.T
	ctx  context.Context
	dsn  string
	pool *pgxpool.Pool
}

func newEnv(t *testing.T, migrate bool) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	dsn := pgtest.NewDB(t)
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e := &env{t: t, ctx: ctx, dsn: dsn, pool: pool}
	if migrate {
		_, err := schema.Migrate(ctx, pool)
		require.NoError(t, err)
	}
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	_, err := e.pool.Exec(e.ctx, sql, args...)
	require.NoError(e.t, err, sql)
}

func (e *env) watch(opts schema.WatchOptions) *schema.Watch {
	e.t.Helper()
	w, err := schema.WatchTable(e.ctx, e.pool, opts)
	require.NoError(e.t, err)
	return w
}

// logRow is one row of herald.log.
type logRow struct {
	ID     int64
	Schema string
	Table  string
	Op     string
	Key    []string
	Old    map[string]any
	New    map[string]any
}

func (e *env) log() []logRow {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT id, schema_name, table_name, op, key, old, new FROM herald.log ORDER BY id`)
	require.NoError(e.t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (logRow, error) {
		var l logRow
		err := r.Scan(&l.ID, &l.Schema, &l.Table, &l.Op, &l.Key, &l.Old, &l.New)
		return l, err
	})
	require.NoError(e.t, err)
	return out
}

func (e *env) clearLog() { e.exec(`DELETE FROM herald.log`) }

// summary renders log rows as "op key" strings for compact assertions.
func summary(rows []logRow) []string {
	var out []string
	for _, r := range rows {
		s := r.Op
		for _, k := range r.Key {
			s += " " + k
		}
		out = append(out, s)
	}
	return out
}
