package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/schema"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stdout, "Usage: herald bench SCENARIO [flags]\n\nScenarios:\n  capture   writer throughput on a plain table vs. captured ones (pgbench)\n\nEach scenario starts a throwaway PostgreSQL from the machine's binaries; see `herald bench SCENARIO -h`.")
		if len(args) == 0 {
			return usageError{"bench needs a scenario"}
		}
		return nil
	}
	switch args[0] {
	case "capture":
		return benchCapture(ctx, args[1:], stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown bench scenario %q", args[0])}
}

// captureVariant is one way of capturing writes to the benchmark table.
type captureVariant struct {
	Name  string `json:"name"`
	Table string `json:"table"`
	What  string `json:"what"`
}

var captureVariants = []captureVariant{
	{"plain", "t_plain", "no trigger"},
	{"log-row", "t_logrow", "minimal trigger: one log row (NEW.id, to_jsonb(NEW)), no SECURITY DEFINER, no gate read"},
	{"log-row+secdef", "t_logrow_sd", "the minimal trigger as SECURITY DEFINER with a pinned search_path"},
	{"log-row+gate", "t_logrow_gate", "the minimal trigger plus the gate read (closed)"},
	{"herald", "t_herald", "Herald's trigger, gate closed (the bridge polls)"},
	{"herald-notify", "t_herald_open", "Herald's trigger, gate open: NOTIFY every transaction"},
	{"seed-notify", "t_seed", "the seeds' trigger: log row and pg_notify every transaction"},
}

type captureResult struct {
	Variant string  `json:"variant"`
	Clients int     `json:"clients"`
	TPS     float64 `json:"tps"`
	Ratio   float64 `json:"ratio_to_plain"`
}

type captureReport struct {
	Scenario   string            `json:"scenario"`
	Started    time.Time         `json:"started"`
	Duration   string            `json:"duration_per_run"`
	PostgreSQL string            `json:"postgresql"`
	Settings   map[string]string `json:"settings"`
	Variants   []captureVariant  `json:"variants"`
	Results    []captureResult   `json:"results"`
}

func benchCapture(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench capture", "bench capture [--clients 1,8,32] [--duration 10s] [--json FILE]", stdout)
	clientsFlag := fs.String("clients", "1,8,32", "pgbench client counts, comma-separated")
	duration := fs.Duration("duration", 10*time.Second, "length of each pgbench run")
	variantsFlag := fs.String("variants", "", "variants to run, comma-separated (default: all): plain, log-row, log-row+secdef, log-row+gate, herald, herald-notify, seed-notify")
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	var clients []int
	for _, s := range strings.Split(*clientsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 200 {
			return usageError{fmt.Sprintf("--clients: %q is not a number from 1 to 200", s)}
		}
		clients = append(clients, n)
	}
	if *duration < time.Second {
		return usageError{"--duration must be at least 1s"}
	}
	variants := captureVariants
	if *variantsFlag != "" {
		variants = nil
		for _, name := range strings.Split(*variantsFlag, ",") {
			found := false
			for _, v := range captureVariants {
				if v.Name == strings.TrimSpace(name) {
					variants = append(variants, v)
					found = true
				}
			}
			if !found {
				return usageError{fmt.Sprintf("--variants: unknown variant %q", name)}
			}
		}
		if variants[0].Name != "plain" {
			variants = append([]captureVariant{captureVariants[0]}, variants...)
		}
	}

	binDir, err := pgtest.BinDir()
	if err != nil {
		return err
	}
	pgbench := filepath.Join(binDir, "pgbench")
	if _, err := os.Stat(pgbench); err != nil {
		return fmt.Errorf("pgbench not found next to initdb in %s (install PostgreSQL's client programs)", binDir)
	}
	// Durable settings, as in production: fsync and synchronous commit on.
	settings := map[string]string{"shared_buffers": "256MB", "max_connections": "100", "fsync": "on", "synchronous_commit": "on", "max_wal_size": "4GB"}
	fmt.Fprintf(stdout, "starting a throwaway PostgreSQL from %s …\n", binDir)
	cluster, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		return err
	}
	defer cluster.Close()
	if err := cluster.CreateDatabase(ctx, "bench"); err != nil {
		return err
	}
	dsn := cluster.ConnString("bench")
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := setupCapture(ctx, conn); err != nil {
		return err
	}
	var version string
	_ = conn.QueryRow(ctx, "SHOW server_version").Scan(&version)

	rep := captureReport{Scenario: "capture", Started: time.Now().UTC(), Duration: duration.String(), PostgreSQL: version, Settings: settings, Variants: variants}
	plain := map[int]float64{}
	for _, n := range clients {
		for _, v := range variants {
			if err := resetCapture(ctx, conn, v); err != nil {
				return err
			}
			tps, err := runPgbench(ctx, pgbench, cluster, v.Table, n, *duration)
			if err != nil {
				return err
			}
			if v.Name == "plain" {
				plain[n] = tps
			}
			r := captureResult{Variant: v.Name, Clients: n, TPS: tps}
			if plain[n] > 0 {
				r.Ratio = tps / plain[n]
			}
			rep.Results = append(rep.Results, r)
			fmt.Fprintf(stdout, "  %-14s %3d clients  %9.0f tps  %5.1f%% of plain\n", v.Name, n, tps, 100*r.Ratio)
		}
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "variant\t")
	for _, n := range clients {
		fmt.Fprintf(tw, "tps, %d clients\tof plain\t", n)
	}
	fmt.Fprintln(tw)
	for _, v := range variants {
		fmt.Fprintf(tw, "%s\t", v.Name)
		for _, n := range clients {
			for _, r := range rep.Results {
				if r.Variant == v.Name && r.Clients == n {
					fmt.Fprintf(tw, "%.0f tps\t%.0f%%\t", r.TPS, 100*r.Ratio)
				}
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, v := range variants {
		fmt.Fprintf(stdout, "  %s: %s\n", v.Name, v.What)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", *jsonOut, err)
		}
		fmt.Fprintf(stdout, "results written to %s\n", *jsonOut)
	}
	return nil
}

// setupCapture creates one table per variant and installs its capture.
func setupCapture(ctx context.Context, conn *pgx.Conn) error {
	if _, err := schema.Migrate(ctx, conn); err != nil {
		return err
	}
	for _, v := range captureVariants {
		if _, err := conn.Exec(ctx, `CREATE TABLE `+v.Table+` (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k int NOT NULL, v text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, benchTriggersSQL); err != nil {
		return fmt.Errorf("installing benchmark triggers: %w", err)
	}
	for _, t := range []string{"t_herald", "t_herald_open"} {
		if _, err := schema.WatchTable(ctx, conn, schema.WatchOptions{Table: t}); err != nil {
			return err
		}
	}
	return nil
}

// benchTriggersSQL installs the comparison triggers: a minimal log-row
// trigger and the seeds' NOTIFY-every-transaction one.
const benchTriggersSQL = `
CREATE TABLE seed_log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), op text, key text, row jsonb);
CREATE FUNCTION bench_log_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO herald.log (schema_name, table_name, op, key, new)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'insert', ARRAY[NEW.id::text], to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER bench_log_row AFTER INSERT ON t_logrow FOR EACH ROW EXECUTE FUNCTION bench_log_row();
CREATE FUNCTION bench_log_row_sd() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO herald.log (schema_name, table_name, op, key, new)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'insert', ARRAY[NEW.id::text], to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER bench_log_row_sd AFTER INSERT ON t_logrow_sd FOR EACH ROW EXECUTE FUNCTION bench_log_row_sd();
CREATE FUNCTION bench_log_row_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO herald.log (schema_name, table_name, op, key, new)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'insert', ARRAY[NEW.id::text], to_jsonb(NEW));
    IF EXISTS (SELECT FROM herald.gate WHERE armed_until > now()) THEN
        PERFORM pg_notify('herald', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_log_row_gate AFTER INSERT ON t_logrow_gate FOR EACH ROW EXECUTE FUNCTION bench_log_row_gate();
CREATE FUNCTION bench_seed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seed_log (op, key, row) VALUES (TG_OP, NEW.id::text, to_jsonb(NEW));
    PERFORM pg_notify('seed_refresh', '');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_seed AFTER INSERT ON t_seed FOR EACH ROW EXECUTE FUNCTION bench_seed();
`

// resetCapture empties the tables and sets the gate for the variant.
func resetCapture(ctx context.Context, conn *pgx.Conn, v captureVariant) error {
	gate := schema.Query("gate_close")
	if v.Name == "herald-notify" {
		gate = `UPDATE herald.gate SET armed_until = now() + interval '1 day'`
	}
	for _, s := range []string{
		`TRUNCATE t_plain, t_logrow, t_logrow_sd, t_logrow_gate, t_herald, t_herald_open, t_seed, seed_log`,
		`DELETE FROM herald.log`,
		gate,
		`VACUUM ANALYZE`,
		`CHECKPOINT`,
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

func runPgbench(ctx context.Context, pgbench string, c *pgtest.Cluster, table string, clients int, d time.Duration) (float64, error) {
	script, err := os.CreateTemp("", "herald-bench-*.sql")
	if err != nil {
		return 0, err
	}
	defer os.Remove(script.Name())
	fmt.Fprintf(script, "\\set k random(1, 100000000)\nINSERT INTO %s (k, v) VALUES (:k, 'a payload of some forty bytes, like a row');\n", table)
	script.Close()
	jobs := min(clients, 2)
	cmd := exec.CommandContext(ctx, pgbench, "-n", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(jobs),
		"-T", strconv.Itoa(int(d.Seconds())), "-f", script.Name(),
		"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "bench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %v\n%s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		return 0, errors.New("pgbench printed no tps line:\n" + string(out))
	}
	return strconv.ParseFloat(string(m[1]), 64)
}
