package schema

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// BackfillOptions control Backfill.
type BackfillOptions struct {
	// BatchSize is how many rows one transaction snapshots (default 1000).
	BatchSize int
	// Restart begins again from the first key even when an earlier run was
	// interrupted; by default an unfinished backfill resumes after its last
	// key, and a finished one starts over.
	Restart bool
	// Progress, when set, is called after every batch.
	Progress func(BackfillProgress)
}

// BackfillProgress reports a running backfill.
type BackfillProgress struct {
	Table     string
	Rows      int64 // rows logged so far, this run and the runs it resumed
	Estimated int64 // the planner's estimate of the table's rows (-1: unknown)
	Resumed   bool
	Done      bool
	Elapsed   time.Duration
}

// Backfill logs a snapshot change for every row of a watched table (that
// passes its row filter), in key order, in batches whose rows are locked
// FOR SHARE while they are logged: a concurrent writer's change of a key is
// always logged after that key's snapshot, or before it with the snapshot
// holding its result. Interrupted, it resumes after the last logged key.
func Backfill(ctx context.Context, db DB, table string, opts BackfillOptions) (BackfillProgress, error) {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	if _, _, err := Installed(ctx, db); err != nil {
		return BackfillProgress{}, err
	}
	w, err := GetWatch(ctx, db, table)
	if err != nil {
		return BackfillProgress{}, err
	}
	t, err := resolveTable(ctx, db, w.Name())
	if err != nil {
		return BackfillProgress{}, err
	}
	if t.oid != w.RelID {
		return BackfillProgress{}, fmt.Errorf("table %s was dropped and created again since it was watched; run `herald watch %s` first", w.Name(), w.Name())
	}
	p := &plan{t: t, opts: WatchOptions{Columns: w.Columns, Where: w.Where}, key: w.Key, keyTypes: w.KeyTypes, filterColumns: w.FilterColumns}
	for _, k := range p.key {
		if t.column(k) == nil {
			return BackfillProgress{}, fmt.Errorf("key column %s of %s no longer exists; run `herald watch` again", quoteIdent(k), w.Name())
		}
	}
	first, next, err := p.backfillSQL()
	if err != nil {
		return BackfillProgress{}, err
	}

	prog := BackfillProgress{Table: w.Name(), Estimated: -1}
	_ = db.QueryRow(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = $1`, t.oid).Scan(&prog.Estimated)

	var lastKey []string
	var done bool
	err = db.QueryRow(ctx, query("backfill_get"), w.Schema, w.Table).Scan(&lastKey, &prog.Rows, &done)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || done || opts.Restart:
		if _, err := db.Exec(ctx, query("backfill_start"), w.Schema, w.Table); err != nil {
			return prog, fmt.Errorf("recording backfill start: %w", err)
		}
		lastKey, prog.Rows = nil, 0
	case err != nil:
		return prog, fmt.Errorf("reading backfill progress: %w", err)
	default:
		prog.Resumed = lastKey != nil
	}

	start := time.Now()
	for {
		var n int64
		var newLast []string
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, query("backfill_session")); err != nil {
				return err
			}
			var err error
			if lastKey == nil {
				err = tx.QueryRow(ctx, first, opts.BatchSize, w.Schema, w.Table).Scan(&n, &newLast)
			} else {
				err = tx.QueryRow(ctx, next, opts.BatchSize, w.Schema, w.Table, lastKey).Scan(&n, &newLast)
			}
			if err != nil {
				return fmt.Errorf("logging snapshot batch of %s: %w", w.Name(), explainPgError(err))
			}
			if n == 0 {
				_, err = tx.Exec(ctx, query("backfill_finish"), w.Schema, w.Table)
				return err
			}
			_, err = tx.Exec(ctx, query("backfill_progress"), w.Schema, w.Table, newLast, n)
			return err
		})
		if err != nil {
			return prog, err
		}
		prog.Elapsed = time.Since(start)
		if n == 0 {
			prog.Done = true
			if opts.Progress != nil {
				opts.Progress(prog)
			}
			return prog, nil
		}
		prog.Rows += n
		lastKey = newLast
		if opts.Progress != nil {
			opts.Progress(prog)
		}
	}
}

// backfillSQL builds the batch statement: $1 batch size, $2 schema, $3
// table name, and for the next batches $4 the last key as text[].
func (p *plan) backfillSQL() (first, next string, err error) {
	tbl := p.t.qualified()
	keyNew, err := p.keyExpr("j.doc")
	if err != nil {
		return "", "", err
	}
	var cols, order, orderDesc, lastText, lastVals []string
	for i, k := range p.key {
		c := "t." + quoteIdent(k)
		cols = append(cols, c)
		order = append(order, "b."+quoteIdent(k))
		orderDesc = append(orderDesc, "b."+quoteIdent(k)+" DESC")
		lastText = append(lastText, "b."+quoteIdent(k)+"::text")
		lastVals = append(lastVals, "($4::text[])["+strconv.Itoa(i+1)+"]::"+p.keyTypes[i])
	}
	var filter string
	if p.opts.Where != "" {
		var args []string
		for _, c := range p.filterColumns {
			args = append(args, "t."+quoteIdent(c))
		}
		filter = "herald." + quoteIdent("filter_"+strconv.FormatUint(uint64(p.t.oid), 10)) + "(" + strings.Join(args, ", ") + ")"
	}
	build := func(after string) string {
		var where []string
		if after != "" {
			where = append(where, after)
		}
		if filter != "" {
			where = append(where, filter)
		}
		w := ""
		if len(where) > 0 {
			w = "\n    WHERE " + strings.Join(where, " AND ")
		}
		return "WITH batch AS (\n    SELECT t.* FROM " + tbl + " t" + w +
			"\n    ORDER BY " + strings.Join(cols, ", ") + "\n    LIMIT $1\n    FOR SHARE OF t\n), ins AS (" +
			"\n    INSERT INTO herald.log (schema_name, table_name, op, key, new)" +
			"\n    SELECT $2, $3, 'snapshot', " + keyNew + ", " + p.pick("j.doc") +
			"\n    FROM batch b CROSS JOIN LATERAL to_jsonb(b.*) AS j(doc) ORDER BY " + strings.Join(order, ", ") +
			"\n    RETURNING 1\n)" +
			"\nSELECT (SELECT count(*) FROM ins), (SELECT ARRAY[" + strings.Join(lastText, ", ") + "] FROM batch b ORDER BY " + strings.Join(orderDesc, ", ") + " LIMIT 1)"
	}
	first = build("")
	next = build("ROW(" + strings.Join(cols, ", ") + ") > ROW(" + strings.Join(lastVals, ", ") + ")")
	return first, next, nil
}
