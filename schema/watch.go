package schema

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed templates/*.tmpl
var templateFiles embed.FS

var captureTemplate = template.Must(template.ParseFS(templateFiles, "templates/capture.sql.tmpl"))

// Trigger names Herald installs on a watched table.
const (
	triggerInsert    = "herald_capture_insert"
	triggerUpdate    = "herald_capture_update"
	triggerUpdateIn  = "herald_capture_update_in"
	triggerUpdateOut = "herald_capture_update_out"
	triggerDelete    = "herald_capture_delete"
	triggerTruncate  = "herald_capture_truncate"
)

// WatchOptions says what "herald watch" installs.
type WatchOptions struct {
	// Table as PostgreSQL parses it: name, schema.name, quoted parts.
	Table string
	// Columns are the watched columns; an UPDATE that changes none of them
	// logs nothing. Nil: every column.
	Columns []string
	// Key columns; nil: the primary key. An explicit key must be NOT NULL and
	// backed by a unique index.
	Key []string
	// Where is the row filter, a single SQL expression over the table's
	// columns; empty: every row.
	Where string
	// Always enables the triggers ALWAYS, so they fire under
	// session_replication_role = replica too.
	Always bool
	// LockTimeout bounds each attempt to lock the table (default 2s), so a
	// long transaction never queues the application's writers behind Herald.
	LockTimeout time.Duration
	// Attempts is how many times the lock is tried (default 10).
	Attempts int
}

// Watch describes one watched table, as recorded in herald.watch.
type Watch struct {
	Schema        string
	Table         string
	RelID         uint32
	Columns       []string // nil: every column
	Key           []string
	KeyTypes      []string
	Where         string
	FilterColumns []string
	Always        bool
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// Name is the table's quoted, schema-qualified name.
func (w *Watch) Name() string { return QualifiedName{Schema: w.Schema, Name: w.Table}.String() }

// Sentinel errors for bad watch input; the returned errors wrap them with
// the details an operator needs.
var (
	ErrNoTable     = errors.New("no such table")
	ErrNoColumn    = errors.New("no such column")
	ErrNoKey       = errors.New("no usable key")
	ErrBadFilter   = errors.New("invalid row filter")
	ErrNotWatched  = errors.New("table is not watched")
	ErrUnsupported = errors.New("unsupported")
)

type column struct {
	name     string
	num      int
	notNull  bool
	typeSQL  string
	baseType string
	typtype  byte
}

type tableInfo struct {
	oid     uint32
	schema  string
	name    string
	columns []column
}

func (t *tableInfo) qualified() string { return QualifiedName{Schema: t.schema, Name: t.name}.String() }

func (t *tableInfo) column(name string) *column {
	for i := range t.columns {
		if t.columns[i].name == name {
			return &t.columns[i]
		}
	}
	return nil
}

func (t *tableInfo) columnNames() []string {
	out := make([]string, len(t.columns))
	for i, c := range t.columns {
		out[i] = c.name
	}
	return out
}

// resolveTable finds a table by the name an operator typed.
func resolveTable(ctx context.Context, db DB, table string) (*tableInfo, error) {
	qn, err := ParseQualifiedName(table)
	if err != nil {
		return nil, err
	}
	var schemaArg *string
	if qn.Schema != "" {
		schemaArg = &qn.Schema
	}
	var ti tableInfo
	var relkind string
	err = db.QueryRow(ctx, query("resolve_table"), schemaArg, qn.Name).Scan(&ti.oid, &ti.schema, &ti.name, &relkind)
	if errors.Is(err, pgx.ErrNoRows) {
		if qn.Schema == "" {
			return nil, fmt.Errorf("%w: table %s does not exist in the search_path (give schema.table, and quote mixed-case names)", ErrNoTable, qn)
		}
		return nil, fmt.Errorf("%w: table %s does not exist (quote mixed-case names)", ErrNoTable, qn)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up table %s: %w", qn, explainPgError(err))
	}
	if relkind != "r" && relkind != "p" {
		return nil, fmt.Errorf("%w: %s is not a table (relkind %s); Herald watches ordinary and partitioned tables", ErrNoTable, ti.qualified(), relkind)
	}
	if ti.schema == "herald" {
		return nil, fmt.Errorf("%w: %s belongs to Herald itself and cannot be watched", ErrNoTable, ti.qualified())
	}
	rows, err := db.Query(ctx, query("table_columns"), ti.oid)
	if err != nil {
		return nil, fmt.Errorf("reading columns of %s: %w", ti.qualified(), err)
	}
	for rows.Next() {
		var c column
		var typtype string
		if err := rows.Scan(&c.name, &c.num, &c.notNull, &c.typeSQL, &c.baseType, &typtype); err != nil {
			rows.Close()
			return nil, err
		}
		if typtype != "" {
			c.typtype = typtype[0]
		}
		ti.columns = append(ti.columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading columns of %s: %w", ti.qualified(), err)
	}
	return &ti, nil
}

// plan is everything Watch will install, computed before anything is
// changed.
type plan struct {
	t             *tableInfo
	opts          WatchOptions
	key           []string
	keyTypes      []string
	filterColumns []string
}

// keyExpr renders the key as text[] from the jsonb variable v.
func (p *plan) keyExpr(v string) (string, error) {
	parts := make([]string, len(p.key))
	for i, k := range p.key {
		c := p.t.column(k)
		if c == nil {
			return "", fmt.Errorf("%w: key column %s of %s no longer exists", ErrNoColumn, quoteIdent(k), p.t.qualified())
		}
		r, err := keyRender(v, k, c.baseType, c.typtype)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrUnsupported, err)
		}
		parts[i] = r
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]", nil
}

// carried lists the columns old and new carry: the watched ones and the
// key; nil when every column is watched.
func (p *plan) carried() []string {
	if p.opts.Columns == nil {
		return nil
	}
	carried := slices.Clone(p.opts.Columns)
	for _, k := range p.key {
		if !slices.Contains(carried, k) {
			carried = append(carried, k)
		}
	}
	return carried
}

// pick builds the jsonb of the carried columns from the jsonb variable v.
func (p *plan) pick(v string) string {
	carried := p.carried()
	if carried == nil {
		return v
	}
	var objs []string
	for start := 0; start < len(carried); start += 50 { // jsonb_build_object takes at most 100 arguments
		end := min(start+50, len(carried))
		var args []string
		for _, c := range carried[start:end] {
			args = append(args, quoteLiteral(c)+", "+v+"->"+quoteLiteral(c))
		}
		objs = append(objs, "jsonb_build_object("+strings.Join(args, ", ")+")")
	}
	return strings.Join(objs, " || ")
}

func (p *plan) ddl() ([]string, error) {
	oid := strconv.FormatUint(uint64(p.t.oid), 10)
	capture := "herald." + quoteIdent("capture_"+oid)
	filterFn := "herald." + quoteIdent("filter_"+oid)
	tbl := p.t.qualified()

	keyNew, err := p.keyExpr("n")
	if err != nil {
		return nil, err
	}
	keyOld, _ := p.keyExpr("o")
	var keyCmpOld, keyCmpNew []string
	for _, k := range p.key {
		keyCmpOld = append(keyCmpOld, "o->"+quoteLiteral(k))
		keyCmpNew = append(keyCmpNew, "n->"+quoteLiteral(k))
	}
	keyChanged := "ROW(" + strings.Join(keyCmpOld, ", ") + ") IS DISTINCT FROM ROW(" + strings.Join(keyCmpNew, ", ") + ")"
	carried := p.carried()
	pick := p.pick

	body := struct {
		Func, Tag, TableComment                      string
		KeyNew, KeyOld, KeyChanged, PickNew, PickOld string
	}{
		Func: capture, TableComment: strings.ReplaceAll(tbl, "\n", " "),
		KeyNew: keyNew, KeyOld: keyOld, KeyChanged: keyChanged, PickNew: pick("n"), PickOld: pick("o"),
	}
	var buf bytes.Buffer
	for i := 0; ; i++ {
		body.Tag = "$herald$"
		if i > 0 {
			body.Tag = "$herald" + strconv.Itoa(i) + "$"
		}
		buf.Reset()
		if err := captureTemplate.Execute(&buf, body); err != nil {
			return nil, err
		}
		// Names could hold the tag; pick one that appears only as delimiter.
		if strings.Count(buf.String(), body.Tag) == 2 {
			break
		}
	}
	stmts := []string{buf.String(), "REVOKE ALL ON FUNCTION " + capture + "() FROM PUBLIC"}

	// The UPDATE trigger's WHEN clause decides whether watched or key columns
	// changed; it reads them through to_jsonb so dropping a column never
	// fails, and compares jsonb so types without equality (json, xml) work.
	var changed string
	if p.opts.Columns == nil {
		changed = "to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW)"
	} else {
		var o, n []string
		for _, c := range carried {
			o = append(o, "to_jsonb(OLD)->"+quoteLiteral(c))
			n = append(n, "to_jsonb(NEW)->"+quoteLiteral(c))
		}
		changed = "ROW(" + strings.Join(o, ", ") + ") IS DISTINCT FROM ROW(" + strings.Join(n, ", ") + ")"
	}

	trigger := func(name, event, when, arg string) string {
		s := "CREATE TRIGGER " + quoteIdent(name) + " AFTER " + event + " ON " + tbl + " FOR EACH ROW"
		if when != "" {
			s += " WHEN (" + when + ")"
		}
		return s + " EXECUTE FUNCTION " + capture + "(" + quoteLiteral(arg) + ")"
	}
	names := []string{triggerInsert, triggerUpdate, triggerDelete, triggerTruncate}
	if p.opts.Where == "" {
		stmts = append(stmts,
			trigger(triggerInsert, "INSERT", "", "insert"),
			trigger(triggerUpdate, "UPDATE", changed, "update"),
			trigger(triggerDelete, "DELETE", "", "delete"),
		)
	} else {
		var params, argsOld, argsNew []string
		for _, c := range p.filterColumns {
			params = append(params, quoteIdent(c)+" "+p.t.column(c).typeSQL)
			argsOld = append(argsOld, "OLD."+quoteIdent(c))
			argsNew = append(argsNew, "NEW."+quoteIdent(c))
		}
		// Parameters named like the columns, so the filter reads as written.
		// BEGIN ATOMIC: parsed now, and dependencies recorded.
		stmts = append(stmts, "CREATE FUNCTION "+filterFn+"("+strings.Join(params, ", ")+
			") RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE BEGIN ATOMIC SELECT coalesce(("+p.opts.Where+"), false); END")
		fOld := filterFn + "(" + strings.Join(argsOld, ", ") + ")"
		fNew := filterFn + "(" + strings.Join(argsNew, ", ") + ")"
		stmts = append(stmts,
			trigger(triggerInsert, "INSERT", fNew, "insert"),
			trigger(triggerUpdate, "UPDATE", fOld+" AND "+fNew+" AND ("+changed+")", "update"),
			trigger(triggerUpdateIn, "UPDATE", "NOT "+fOld+" AND "+fNew, "in"),
			trigger(triggerUpdateOut, "UPDATE", fOld+" AND NOT "+fNew, "out"),
			trigger(triggerDelete, "DELETE", fOld, "delete"),
		)
		names = append(names, triggerUpdateIn, triggerUpdateOut)
	}
	stmts = append(stmts, "CREATE TRIGGER "+quoteIdent(triggerTruncate)+" AFTER TRUNCATE ON "+tbl+
		" FOR EACH STATEMENT EXECUTE FUNCTION "+capture+"('truncate')")
	if p.opts.Always {
		for _, n := range names {
			stmts = append(stmts, "ALTER TABLE "+tbl+" ENABLE ALWAYS TRIGGER "+quoteIdent(n))
		}
	}
	return stmts, nil
}

// WatchTable installs (or replaces, atomically) the capture triggers of a
// table and records it in herald.watch. Nothing is changed when any input
// is bad.
func WatchTable(ctx context.Context, db DB, opts WatchOptions) (*Watch, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 2 * time.Second
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 10
	}
	if _, _, err := Installed(ctx, db); err != nil {
		return nil, err
	}
	t, err := resolveTable(ctx, db, opts.Table)
	if err != nil {
		return nil, err
	}
	p := &plan{t: t, opts: opts}
	if err := p.validate(ctx, db); err != nil {
		return nil, err
	}
	stmts, err := p.ddl()
	if err != nil {
		return nil, err
	}

	install := func() error {
		return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = "+quoteLiteral(strconv.FormatInt(opts.LockTimeout.Milliseconds(), 10)+"ms")); err != nil {
				return err
			}
			// The lock CREATE TRIGGER takes, taken first and bounded.
			if _, err := tx.Exec(ctx, "LOCK TABLE "+t.qualified()+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
				return fmt.Errorf("locking %s: %w", t.qualified(), err)
			}
			if err := dropCapture(ctx, tx, t.oid, t.qualified()); err != nil {
				return err
			}
			if p.opts.Where != "" {
				// Validate again under the lock: the table cannot change now.
				if err := p.checkFilter(ctx, tx); err != nil {
					return backoff.Permanent(err)
				}
			}
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s); err != nil {
					return backoff.Permanent(fmt.Errorf("installing capture on %s: %w\nstatement: %s", t.qualified(), explainPgError(err), s))
				}
			}
			var cols []string
			if opts.Columns != nil {
				cols = opts.Columns
			}
			var where *string
			if opts.Where != "" {
				where = &opts.Where
			}
			_, err := tx.Exec(ctx, query("watch_upsert"), t.schema, t.name, t.oid, cols, p.key, p.keyTypes, where, p.filterColumns, opts.Always)
			if err != nil {
				return backoff.Permanent(fmt.Errorf("recording watch of %s: %w", t.qualified(), err))
			}
			return nil
		})
	}
	if err := retryOnLockTimeout(ctx, opts.Attempts, install); err != nil {
		return nil, err
	}
	return GetWatch(ctx, db, QualifiedName{Schema: t.schema, Name: t.name}.String())
}

// retryOnLockTimeout runs f until it succeeds, fails with anything but a
// lock timeout, or has been tried attempts times.
func retryOnLockTimeout(ctx context.Context, attempts int, f func() error) error {
	b := backoff.WithContext(backoff.WithMaxRetries(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(5*time.Second)), uint64(attempts-1)), ctx)
	err := backoff.Retry(func() error {
		err := f()
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "55P03") {
			return backoff.Permanent(err)
		}
		return err
	}, b)
	return explainPgError(err)
}

// dropCapture removes Herald's triggers and generated functions of a table.
func dropCapture(ctx context.Context, tx pgx.Tx, oid uint32, tbl string) error {
	rows, err := tx.Query(ctx, query("herald_triggers"), oid)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var name, enabled string
		err := r.Scan(&name, &enabled)
		return name, err
	})
	if err != nil {
		return fmt.Errorf("listing triggers of %s: %w", tbl, err)
	}
	for _, n := range names {
		if _, err := tx.Exec(ctx, "DROP TRIGGER "+quoteIdent(n)+" ON "+tbl); err != nil {
			return fmt.Errorf("dropping trigger %s: %w", n, err)
		}
	}
	rows, err = tx.Query(ctx, query("herald_functions"), oid)
	if err != nil {
		return err
	}
	fns, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("listing Herald's functions for %s: %w", tbl, err)
	}
	for _, f := range fns {
		// regprocedure text is already quoted where needed.
		if _, err := tx.Exec(ctx, "DROP FUNCTION "+f); err != nil {
			return fmt.Errorf("dropping function %s: %w", f, err)
		}
	}
	return nil
}

func (p *plan) validate(ctx context.Context, db DB) error {
	t := p.t
	if p.opts.Columns != nil {
		if len(p.opts.Columns) == 0 {
			return fmt.Errorf("%w: --columns names no column", ErrNoColumn)
		}
		for _, c := range p.opts.Columns {
			if t.column(c) == nil {
				return fmt.Errorf("%w: table %s has no column %s (columns: %s)", ErrNoColumn, t.qualified(), quoteIdent(c), strings.Join(t.columnNames(), ", "))
			}
		}
	}
	rows, err := db.Query(ctx, query("unique_keys"), t.oid)
	if err != nil {
		return fmt.Errorf("reading unique indexes of %s: %w", t.qualified(), err)
	}
	type uk struct {
		pk   bool
		cols []string
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (uk, error) {
		var k uk
		err := r.Scan(&k.pk, &k.cols)
		return k, err
	})
	if err != nil {
		return fmt.Errorf("reading unique indexes of %s: %w", t.qualified(), err)
	}
	if p.opts.Key == nil {
		for _, k := range keys {
			if k.pk {
				p.key = k.cols
			}
		}
		if p.key == nil {
			return fmt.Errorf("%w: table %s has no primary key; pass --key with NOT NULL columns backed by a unique index", ErrNoKey, t.qualified())
		}
	} else {
		if len(p.opts.Key) == 0 {
			return fmt.Errorf("%w: --key names no column", ErrNoKey)
		}
		for _, k := range p.opts.Key {
			c := t.column(k)
			if c == nil {
				return fmt.Errorf("%w: table %s has no column %s for --key (columns: %s)", ErrNoColumn, t.qualified(), quoteIdent(k), strings.Join(t.columnNames(), ", "))
			}
			if !c.notNull {
				return fmt.Errorf("%w: key column %s of %s is nullable; make it NOT NULL or choose another --key", ErrNoKey, quoteIdent(k), t.qualified())
			}
		}
		want := slices.Clone(p.opts.Key)
		slices.Sort(want)
		found := false
		for _, k := range keys {
			have := slices.Clone(k.cols)
			slices.Sort(have)
			if slices.Equal(want, have) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w: no unique index of %s covers exactly (%s); per-key order needs one (CREATE UNIQUE INDEX … ON %s (%s)), and it must be immediate, total and valid",
				ErrNoKey, t.qualified(), strings.Join(quoteAll(p.opts.Key), ", "), t.qualified(), strings.Join(quoteAll(p.opts.Key), ", "))
		}
		p.key = p.opts.Key
	}
	for _, k := range p.key {
		c := t.column(k)
		if _, err := keyRender("n", k, c.baseType, c.typtype); err != nil {
			return fmt.Errorf("%w: %v", ErrUnsupported, err)
		}
		p.keyTypes = append(p.keyTypes, c.typeSQL)
	}
	if p.opts.Where != "" {
		if err := checkFilterText(p.opts.Where); err != nil {
			return fmt.Errorf("%w: %v", ErrBadFilter, err)
		}
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			err := p.checkFilter(ctx, tx)
			if err == nil {
				err = errRollback
			}
			return err
		})
		if err != nil && !errors.Is(err, errRollback) {
			return err
		}
	}
	return nil
}

var errRollback = errors.New("rollback")

// checkFilter has the server judge the row filter: it is tried as a stored
// generated column on a temporary copy of the table's columns, which refuses
// subqueries, aggregates and non-immutable functions, and records which
// columns the filter reads.
func (p *plan) checkFilter(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, "SAVEPOINT herald_filter_check"); err != nil {
		return err
	}
	fail := func(err error) error {
		_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT herald_filter_check")
		return err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf(query("filter_check_table"), p.t.qualified())); err != nil {
		return fail(fmt.Errorf("checking row filter: %w", err))
	}
	// Extended protocol: exactly one statement, whatever the text holds.
	add := `ALTER TABLE herald_filter_check ADD COLUMN "herald filter" boolean GENERATED ALWAYS AS ((` + p.opts.Where + `)) STORED`
	if _, err := tx.Conn().PgConn().ExecParams(ctx, add, nil, nil, nil, nil).Close(); err != nil {
		msg := err.Error()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			msg = pgErr.Message
			switch {
			case strings.Contains(msg, "not immutable"):
				msg = "it calls a function that is not immutable (volatile or stable functions such as random() or now() are not allowed)"
			case strings.Contains(msg, "generation expression"):
				msg = strings.ReplaceAll(msg, "column generation expression", "row filter")
			}
		}
		return fail(fmt.Errorf("%w %q: %s", ErrBadFilter, p.opts.Where, msg))
	}
	var attnum int
	if err := tx.QueryRow(ctx, `SELECT attnum FROM pg_attribute WHERE attrelid = 'herald_filter_check'::regclass AND attname = 'herald filter'`).Scan(&attnum); err != nil {
		return fail(err)
	}
	rows, err := tx.Query(ctx, query("filter_columns"), attnum)
	if err != nil {
		return fail(err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fail(err)
	}
	p.filterColumns = cols
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT herald_filter_check"); err != nil {
		return err
	}
	return nil
}

func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = quoteIdent(n)
	}
	return out
}

// Unwatch removes a table's capture triggers, functions and registry row.
// Changes already logged stay in herald.log and are still published.
func Unwatch(ctx context.Context, db DB, table string, lockTimeout time.Duration, attempts int) error {
	if lockTimeout <= 0 {
		lockTimeout = 2 * time.Second
	}
	if attempts <= 0 {
		attempts = 10
	}
	if _, _, err := Installed(ctx, db); err != nil {
		return err
	}
	w, err := GetWatch(ctx, db, table)
	if err != nil {
		return err
	}
	return retryOnLockTimeout(ctx, attempts, func() error {
		return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			var tbl *string
			if err := tx.QueryRow(ctx, `SELECT $1::oid::regclass::text FROM pg_class WHERE oid = $1`, w.RelID).Scan(&tbl); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			if tbl != nil {
				if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = "+quoteLiteral(strconv.FormatInt(lockTimeout.Milliseconds(), 10)+"ms")); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "LOCK TABLE "+*tbl+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
					return fmt.Errorf("locking %s: %w", *tbl, err)
				}
				if err := dropCapture(ctx, tx, w.RelID, *tbl); err != nil {
					return backoff.Permanent(err)
				}
			}
			_, err := tx.Exec(ctx, `DELETE FROM herald.watch WHERE schema_name = $1 AND table_name = $2`, w.Schema, w.Table)
			return err
		})
	})
}

// GetWatch returns the registry entry of a watched table, found by the name
// an operator typed (resolved like a table name; a dropped table is found by
// its recorded name).
func GetWatch(ctx context.Context, db DB, table string) (*Watch, error) {
	qn, err := ParseQualifiedName(table)
	if err != nil {
		return nil, err
	}
	schemaName := qn.Schema
	if schemaName == "" {
		if t, err := resolveTable(ctx, db, table); err == nil {
			schemaName = t.schema
		} else {
			schemaName = "public"
		}
	}
	rows, err := db.Query(ctx, query("watch_get"), schemaName, qn.Name)
	if err != nil {
		return nil, explainPgError(err)
	}
	ws, err := pgx.CollectRows(rows, scanWatch)
	if err != nil {
		return nil, err
	}
	if len(ws) == 0 {
		return nil, fmt.Errorf("%w: %s (see `herald status`)", ErrNotWatched, QualifiedName{Schema: schemaName, Name: qn.Name})
	}
	return &ws[0], nil
}

// ListWatches returns every watched table.
func ListWatches(ctx context.Context, db DB) ([]Watch, error) {
	rows, err := db.Query(ctx, query("watch_list"))
	if err != nil {
		return nil, explainPgError(err)
	}
	return pgx.CollectRows(rows, scanWatch)
}

func scanWatch(r pgx.CollectableRow) (Watch, error) {
	var w Watch
	var where *string
	err := r.Scan(&w.Schema, &w.Table, &w.RelID, &w.Columns, &w.Key, &w.KeyTypes, &where, &w.FilterColumns, &w.Always, &w.CreatedAt, &w.UpdatedAt)
	if where != nil {
		w.Where = *where
	}
	return w, err
}
