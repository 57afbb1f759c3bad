package schema

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Status is what "herald status" shows.
type Status struct {
	Version int
	Epoch   int64
	Watches []WatchStatus
	// BacklogRows is the number of changes not yet published;
	// OldestAge the age of the oldest of them.
	BacklogRows int64
	OldestAge   time.Duration
	Gate        GateStatus
	Bridge      *BridgeSession // nil: no bridge holds the leader lock
}

// WatchStatus is one watched table and what no longer matches its watch.
type WatchStatus struct {
	Watch
	Drift []string // empty: triggers and columns as installed
}

// GateStatus is the wake-up gate.
type GateStatus struct {
	ArmedUntil time.Time
	Open       bool
	ArmedBy    *int32
}

// BridgeSession is the database session of the active bridge.
type BridgeSession struct {
	PID             int32
	ApplicationName string
	ClientAddr      string
	BackendStart    time.Time
}

// GetStatus collects Herald's state in the database.
func GetStatus(ctx context.Context, db DB) (*Status, error) {
	var st Status
	var err error
	if st.Version, st.Epoch, err = Installed(ctx, db); err != nil {
		return nil, err
	}
	ws, err := ListWatches(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("reading watched tables: %w", err)
	}
	for _, w := range ws {
		drift, err := Drift(ctx, db, &w)
		if err != nil {
			return nil, err
		}
		st.Watches = append(st.Watches, WatchStatus{Watch: w, Drift: drift})
	}
	var ageSeconds float64
	if err := db.QueryRow(ctx, query("backlog")).Scan(&st.BacklogRows, &ageSeconds); err != nil {
		return nil, fmt.Errorf("reading backlog: %w", err)
	}
	st.OldestAge = time.Duration(ageSeconds * float64(time.Second))
	if err := db.QueryRow(ctx, query("gate_get")).Scan(&st.Gate.ArmedUntil, &st.Gate.Open, &st.Gate.ArmedBy); err != nil {
		return nil, fmt.Errorf("reading gate: %w", err)
	}
	var b BridgeSession
	err = db.QueryRow(ctx, query("leader_holder")).Scan(&b.PID, &b.ApplicationName, &b.ClientAddr, &b.BackendStart)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("looking for the active bridge: %w", err)
	default:
		st.Bridge = &b
	}
	return &st, nil
}

// Drift lists what no longer matches a watch: the table dropped or renamed,
// a watched, key or filter column dropped or renamed, a trigger missing or
// disabled. "herald watch" fixes it.
func Drift(ctx context.Context, db DB, w *Watch) ([]string, error) {
	var drift []string
	var schemaName, name string
	err := db.QueryRow(ctx, query("relation_name"), w.RelID).Scan(&schemaName, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return []string{"table dropped (run `herald unwatch` or watch the new table)"}, nil
	}
	if err != nil {
		return nil, err
	}
	if schemaName != w.Schema || name != w.Table {
		drift = append(drift, fmt.Sprintf("table renamed to %s (subjects now use the new name; run `herald watch` on it)", QualifiedName{Schema: schemaName, Name: name}))
	}
	rows, err := db.Query(ctx, query("table_columns"), w.RelID)
	if err != nil {
		return nil, err
	}
	var live []string
	for rows.Next() {
		var c column
		var typtype string
		if err := rows.Scan(&c.name, &c.num, &c.notNull, &c.typeSQL, &c.baseType, &typtype); err != nil {
			rows.Close()
			return nil, err
		}
		live = append(live, c.name)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	check := func(kind string, cols []string) {
		for _, c := range cols {
			if !slices.Contains(live, c) {
				drift = append(drift, fmt.Sprintf("%s column %s dropped or renamed", kind, quoteIdent(c)))
			}
		}
	}
	check("watched", w.Columns)
	check("key", w.Key)
	check("filter", w.FilterColumns)

	rows, err = db.Query(ctx, query("drift_triggers"), w.RelID)
	if err != nil {
		return nil, err
	}
	have := map[string]string{}
	for rows.Next() {
		var n, e string
		if err := rows.Scan(&n, &e); err != nil {
			rows.Close()
			return nil, err
		}
		have[n] = e
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	want := []string{triggerInsert, triggerUpdate, triggerDelete, triggerTruncate}
	if w.Where != "" {
		want = append(want, triggerUpdateIn, triggerUpdateOut)
	}
	for _, n := range want {
		e, ok := have[n]
		switch {
		case !ok:
			drift = append(drift, "trigger "+n+" missing")
		case e == "D":
			drift = append(drift, "trigger "+n+" disabled")
		case e == "R":
			drift = append(drift, "trigger "+n+" fires only in replica mode")
		case w.Always && e != "A":
			drift = append(drift, "trigger "+n+" not enabled ALWAYS")
		case !w.Always && e == "A":
			drift = append(drift, "trigger "+n+" enabled ALWAYS but the watch does not ask for it")
		}
	}
	return drift, nil
}
