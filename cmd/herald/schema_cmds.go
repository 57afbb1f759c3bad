package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herald-cdc/herald/schema"
)

func runMigrate(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("migrate", "migrate", stdout)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"migrate takes no arguments"}
	}
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res, err := schema.Migrate(ctx, conn)
	if err != nil {
		return err
	}
	if len(res.Applied) == 0 {
		fmt.Fprintf(stdout, "schema herald is up to date (version %d, epoch %d)\n", res.Version, res.Epoch)
		return nil
	}
	fmt.Fprintf(stdout, "applied migrations %v; schema herald at version %d, epoch %d\n", res.Applied, res.Version, res.Epoch)
	return nil
}

func runWatch(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("watch", "watch TABLE [--columns a,b] [--key k1,k2] [--where EXPR] [--always]", stdout)
	columns := fs.String("columns", "", "watched columns, comma-separated; an UPDATE changing none of them logs nothing (default: every column)")
	allColumns := fs.Bool("all-columns", false, "watch every column, replacing an earlier --columns")
	key := fs.String("key", "", "key columns, comma-separated: NOT NULL and backed by a unique index (default: the primary key)")
	where := fs.String("where", "", "row filter: one SQL expression over the table's columns; rows outside it are not captured")
	noWhere := fs.Bool("no-where", false, "drop an earlier --where")
	always := fs.Bool("always", false, "enable the triggers ALWAYS, so they also fire when session_replication_role = replica")
	lockTimeout := fs.Duration("lock-timeout", 2*time.Second, "longest wait for the table's lock per attempt, so application writers never queue behind Herald")
	attempts := fs.Int("attempts", 10, "how many times to try taking the lock")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"watch takes exactly one TABLE"}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *allColumns && set["columns"] {
		return usageError{"--columns and --all-columns contradict each other"}
	}
	if *noWhere && set["where"] {
		return usageError{"--where and --no-where contradict each other"}
	}
	opts := schema.WatchOptions{Table: pos[0], Where: *where, Always: *always, LockTimeout: *lockTimeout, Attempts: *attempts}
	if set["columns"] {
		if opts.Columns, err = schema.ParseIdentList(*columns); err != nil {
			return usageError{"--columns: " + err.Error()}
		}
	}
	if set["key"] {
		if opts.Key, err = schema.ParseIdentList(*key); err != nil {
			return usageError{"--key: " + err.Error()}
		}
	}
	if set["where"] && strings.TrimSpace(*where) == "" {
		return usageError{"--where is empty; use --no-where to drop a filter"}
	}
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// Watching a watched table again keeps the options not given, so
	// `herald watch TABLE` repairs drift without resetting them.
	if prev, err := schema.GetWatch(ctx, conn, pos[0]); err == nil {
		var kept []string
		if !set["columns"] && !*allColumns && prev.Columns != nil {
			opts.Columns = prev.Columns
			kept = append(kept, "--columns "+strings.Join(prev.Columns, ","))
		}
		if !set["key"] {
			opts.Key = prev.Key
		}
		if !set["where"] && !*noWhere && prev.Where != "" {
			opts.Where = prev.Where
			kept = append(kept, "--where "+prev.Where)
		}
		if !set["always"] && prev.Always {
			opts.Always = true
			kept = append(kept, "--always")
		}
		if len(kept) > 0 {
			fmt.Fprintf(stdout, "%s is already watched; keeping %s\n", prev.Name(), strings.Join(kept, " "))
		}
	}
	w, err := schema.WatchTable(ctx, conn, opts)
	if err != nil {
		return err
	}
	cols := "every column"
	if w.Columns != nil {
		cols = strings.Join(w.Columns, ", ")
	}
	fmt.Fprintf(stdout, "watching %s: columns %s; key (%s)", w.Name(), cols, strings.Join(w.Key, ", "))
	if w.Where != "" {
		fmt.Fprintf(stdout, "; rows where %s", w.Where)
	}
	if w.Always {
		fmt.Fprint(stdout, "; triggers enabled ALWAYS")
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "existing rows are not logged until they change; run `herald backfill %s` to log them now\n", w.Name())
	return nil
}

func runUnwatch(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("unwatch", "unwatch TABLE", stdout)
	lockTimeout := fs.Duration("lock-timeout", 2*time.Second, "longest wait for the table's lock per attempt")
	attempts := fs.Int("attempts", 10, "how many times to try taking the lock")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"unwatch takes exactly one TABLE"}
	}
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := schema.Unwatch(ctx, conn, pos[0], *lockTimeout, *attempts); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "no longer watching %s (changes already logged are still published)\n", pos[0])
	return nil
}

func runBackfill(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("backfill", "backfill TABLE [--batch N] [--restart]", stdout)
	batch := fs.Int("batch", 1000, "rows per transaction")
	restart := fs.Bool("restart", false, "start from the first key even if an earlier run was interrupted")
	quiet := fs.Bool("quiet", false, "print only the final line")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"backfill takes exactly one TABLE"}
	}
	if *batch <= 0 {
		return usageError{"--batch must be positive"}
	}
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	last := time.Time{}
	p, err := schema.Backfill(ctx, conn, pos[0], schema.BackfillOptions{
		BatchSize: *batch,
		Restart:   *restart,
		Progress: func(p schema.BackfillProgress) {
			if *quiet || p.Done || time.Since(last) < time.Second {
				return
			}
			last = time.Now()
			fmt.Fprintf(stdout, "%s: %d rows logged%s, %.0f rows/s\n", p.Table, p.Rows, ofEstimate(p), float64(p.Rows)/p.Elapsed.Seconds())
		},
	})
	if err != nil {
		if p.Rows > 0 {
			return fmt.Errorf("%w (%d rows logged so far; run it again to resume)", err, p.Rows)
		}
		return err
	}
	resumed := ""
	if p.Resumed {
		resumed = " (resumed)"
	}
	fmt.Fprintf(stdout, "backfill of %s done%s: %d rows logged in %s\n", p.Table, resumed, p.Rows, p.Elapsed.Round(time.Millisecond))
	return nil
}

func ofEstimate(p schema.BackfillProgress) string {
	if p.Estimated <= 0 {
		return ""
	}
	return fmt.Sprintf(" of about %d", p.Estimated)
}

func runStatus(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("status", "status [--json]", stdout)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"status takes no arguments"}
	}
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := schema.GetStatus(ctx, conn)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(statusJSON(st))
	}
	fmt.Fprintf(stdout, "schema herald version %d, epoch %d\n", st.Version, st.Epoch)
	if st.Bridge != nil {
		fmt.Fprintf(stdout, "bridge: active, pid %d (%s) from %s since %s\n", st.Bridge.PID, st.Bridge.ApplicationName, st.Bridge.ClientAddr, st.Bridge.BackendStart.Format(time.RFC3339))
	} else {
		fmt.Fprintln(stdout, "bridge: none active (no session holds the leader lock)")
	}
	gate := "closed"
	if st.Gate.Open {
		gate = "open until " + st.Gate.ArmedUntil.Format(time.RFC3339Nano)
	}
	fmt.Fprintf(stdout, "gate: %s\n", gate)
	fmt.Fprintf(stdout, "backlog: %d changes, oldest %s\n", st.BacklogRows, st.OldestAge.Round(time.Millisecond))
	if len(st.Watches) == 0 {
		fmt.Fprintln(stdout, "watched tables: none (herald watch TABLE)")
		return nil
	}
	fmt.Fprintln(stdout, "watched tables:")
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TABLE\tKEY\tCOLUMNS\tFILTER\tALWAYS\tDRIFT")
	for _, w := range st.Watches {
		cols := "*"
		if w.Columns != nil {
			cols = strings.Join(w.Columns, ",")
		}
		drift := "none"
		if len(w.Drift) > 0 {
			drift = strings.Join(w.Drift, "; ")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%v\t%s\n", w.Name(), strings.Join(w.Key, ","), cols, orDash(w.Where), w.Always, drift)
	}
	tw.Flush()
	for _, w := range st.Watches {
		if len(w.Drift) > 0 {
			fmt.Fprintf(stdout, "drift found: run `herald watch %s` (with --columns/--key as needed) to repair\n", w.Name())
			break
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type watchJSON struct {
	Schema  string   `json:"schema"`
	Table   string   `json:"table"`
	Columns []string `json:"columns"`
	Key     []string `json:"key"`
	Where   string   `json:"where,omitempty"`
	Always  bool     `json:"always"`
	Drift   []string `json:"drift"`
}

type bridgeJSON struct {
	PID          int32     `json:"pid"`
	Application  string    `json:"application_name"`
	ClientAddr   string    `json:"client_addr"`
	BackendStart time.Time `json:"backend_start"`
}

type statusOut struct {
	Version       int         `json:"version"`
	Epoch         int64       `json:"epoch"`
	BacklogRows   int64       `json:"backlog_rows"`
	OldestSeconds float64     `json:"oldest_age_seconds"`
	GateOpen      bool        `json:"gate_open"`
	GateUntil     time.Time   `json:"gate_armed_until"`
	Bridge        *bridgeJSON `json:"bridge"`
	Watches       []watchJSON `json:"watches"`
}

func statusJSON(st *schema.Status) statusOut {
	out := statusOut{Version: st.Version, Epoch: st.Epoch, BacklogRows: st.BacklogRows, OldestSeconds: st.OldestAge.Seconds(),
		GateOpen: st.Gate.Open, GateUntil: st.Gate.ArmedUntil, Watches: []watchJSON{}}
	if st.Bridge != nil {
		out.Bridge = &bridgeJSON{st.Bridge.PID, st.Bridge.ApplicationName, st.Bridge.ClientAddr, st.Bridge.BackendStart}
	}
	for _, w := range st.Watches {
		d := w.Drift
		if d == nil {
			d = []string{}
		}
		out.Watches = append(out.Watches, watchJSON{w.Schema, w.Table, w.Columns, w.Key, w.Where, w.Always, d})
	}
	return out
}
