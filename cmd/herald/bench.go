package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/schema"
)

// benchScenarios are the `herald bench` subcommands; hidden ones are the
// rig's own processes, exec'd by the scenarios.
var benchScenarios = []struct {
	name, summary string
	hidden        bool
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}{
	{"capture", "writer throughput on a plain table vs. captured ones, with and without the bridge draining (pgbench)", false, benchCapture},
	{"drain", "publish a 1,000,000-row backlog; rate, bridge peak RSS, and the raw atomic-batch rate for the same payloads", false, benchDrain},
	{"latency", "commit → NATS, stream, consumer handler and file at paced rates (open loop)", false, benchLatency},
	{"sustained", "minutes at a set rate: backlog and its age, latency and bridge memory over time", false, benchSustained},
	{"plot", "draw SVG plots from the JSON of latency and sustained runs", false, benchPlot},
	{"nats-server", "", true, benchNATSServer},
	{"bridge", "", true, benchBridge},
	{"filesync", "", true, benchFilesync},
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stdout, "Usage: herald bench SCENARIO [flags]\n\nScenarios:")
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, sc := range benchScenarios {
			if !sc.hidden {
				fmt.Fprintf(tw, "  %s\t%s\n", sc.name, sc.summary)
			}
		}
		tw.Flush()
		fmt.Fprintln(stdout, "\nEach scenario starts a throwaway PostgreSQL from the machine's binaries, and NATS and the bridge as\nprocesses of their own; see `herald bench SCENARIO -h`. Results: docs/BENCHMARKS.md.")
		if len(args) == 0 {
			return usageError{"bench needs a scenario"}
		}
		return nil
	}
	for _, sc := range benchScenarios {
		if sc.name == args[0] {
			return sc.run(ctx, args[1:], stdout, stderr)
		}
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
	{"herald", "t_herald", "Herald's trigger, gate closed (the bridge polls), no bridge running"},
	{"herald+bridge", "t_herald", "Herald's trigger while the bridge (own process) drains the log to NATS (own process) at the same time"},
	{"herald-notify", "t_herald_open", "Herald's trigger, gate open: NOTIFY every transaction"},
	{"seed-notify", "t_seed", "the seeds' trigger: log row and pg_notify every transaction"},
}

type captureResult struct {
	Variant   string     `json:"variant"`
	Clients   int        `json:"clients"`
	Round     int        `json:"round,omitempty"`
	Attempt   int        `json:"attempt,omitempty"` // > 1: earlier attempts had too much CPU taken by other processes
	TPS       float64    `json:"tps"`
	Ratio     float64    `json:"ratio_to_plain"`
	LoadStart [3]float64 `json:"loadavg_start"`
	CPU       cpuShares  `json:"cpu_percent_of_one_core"`
	// With the bridge running: what it published during the run, what was
	// left in the log when pgbench finished, and its peak RSS.
	Published     int64        `json:"published,omitempty"`
	BacklogAtEnd  int64        `json:"backlog_at_end,omitempty"`
	BridgePeakMiB float64      `json:"bridge_peak_rss_mib,omitempty"`
	Bridge        *bridgeStats `json:"bridge,omitempty"`
}

type captureReport struct {
	Scenario   string            `json:"scenario"`
	Started    time.Time         `json:"started"`
	Command    string            `json:"command"`
	Machine    machineInfo       `json:"machine"`
	Duration   string            `json:"duration_per_run"`
	PostgreSQL string            `json:"postgresql"`
	Settings   map[string]string `json:"settings"`
	NATS       *natsSettings     `json:"nats,omitempty"`          // for herald+bridge
	BridgeConf *bridgeTuning     `json:"bridge_config,omitempty"` // for herald+bridge
	Variants   []captureVariant  `json:"variants"`
	Rounds     int               `json:"rounds"`
	MaxOther   float64           `json:"max_other_percent,omitempty"`
	Results    []captureSummary  `json:"results"` // per variant and client count: the median round
	Runs       []captureResult   `json:"runs"`
}

// captureSummary is the median run of a variant at a client count, with
// the spread of the rounds; Ratio is the median to plain's median.
type captureSummary struct {
	captureResult
	TPSMin float64 `json:"tps_min"`
	TPSMax float64 `json:"tps_max"`
	N      int     `json:"rounds"`
}

// summarizeCapture picks, per variant and client count, the run with the
// median rate (the lower middle one for an even count).
func summarizeCapture(runs []captureResult, variants []captureVariant, clients []int) []captureSummary {
	var out []captureSummary
	for _, n := range clients {
		plain := 0.0
		for _, v := range variants {
			var rs []captureResult
			for _, r := range runs {
				if r.Variant == v.Name && r.Clients == n {
					rs = append(rs, r)
				}
			}
			if len(rs) == 0 {
				continue
			}
			slices.SortFunc(rs, func(a, b captureResult) int { return cmp.Compare(a.TPS, b.TPS) })
			s := captureSummary{captureResult: rs[(len(rs)-1)/2], TPSMin: rs[0].TPS, TPSMax: rs[len(rs)-1].TPS, N: len(rs)}
			s.Round, s.Attempt = 0, 0
			if v.Name == "plain" {
				plain = s.TPS
			}
			s.Ratio = 0
			if plain > 0 {
				s.Ratio = s.TPS / plain
			}
			out = append(out, s)
		}
	}
	return out
}

func benchCapture(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench capture", "bench capture [--clients 1,8,32] [--duration 10s] [--variants a,b] [--json FILE]", stdout)
	clientsFlag := fs.String("clients", "1,8,32", "pgbench client counts, comma-separated")
	duration := fs.Duration("duration", 10*time.Second, "length of each pgbench run")
	variantsFlag := fs.String("variants", "", "variants to run, comma-separated (default: all): plain, log-row, log-row+secdef, log-row+gate, herald, herald+bridge, herald-notify, seed-notify")
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	sync := fs.String("sync", "always", "herald+bridge: NATS JetStream sync_interval: always, default (2m) or a duration")
	bridgeProfile := fs.String("cpuprofile-bridge", "", "herald+bridge: write a CPU profile of the bridge process to this file (the last run's)")
	natsProfile := fs.String("cpuprofile-nats", "", "herald+bridge: write a CPU profile of the NATS process to this file (all its runs)")
	tuning := registerBridgeFlags(fs)
	rounds := fs.Int("rounds", 1, "measure every variant this many times, interleaved, and report the medians")
	maxOther := fs.Float64("max-other", 0, "measure a run again when other processes took more than this percentage of one core during it (0: never)")
	retries := fs.Int("retries", 3, "with --max-other: at most this many extra attempts per run; the quietest is kept")
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
	if err := validSync(*sync); err != nil {
		return err
	}
	tune, err := tuning()
	if err != nil {
		return err
	}
	if *rounds < 1 || *rounds > 50 || *retries < 0 || *maxOther < 0 {
		return usageError{"--rounds must be 1 to 50, --retries and --max-other not negative"}
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
	rep := captureReport{Scenario: "capture", Started: time.Now().UTC(), Command: "herald bench capture " + strings.Join(args, " "),
		Machine: readMachine(), Duration: duration.String(), Variants: variants, Rounds: *rounds, MaxOther: *maxOther}
	pg, err := startBenchPG(ctx, stdout)
	if err != nil {
		return err
	}
	defer pg.Close()
	rep.PostgreSQL, rep.Settings = pg.version, pg.settings
	conn, err := pgx.Connect(ctx, pg.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := setupCapture(ctx, conn); err != nil {
		return err
	}

	var rig *natsRig // started for the first herald+bridge run
	defer func() {
		if rig != nil {
			rig.Close()
		}
	}()
	// runOnce measures one variant at n clients once.
	runOnce := func(v captureVariant, n int) (captureResult, error) {
		if err := resetCapture(ctx, conn, v); err != nil {
			return captureResult{}, err
		}
		r := captureResult{Variant: v.Name, Clients: n}
		pids := rigPIDs{postmaster: pg.cluster.PID()}
		var br *bridgeProc
		var seq0 uint64
		if v.Name == "herald+bridge" {
			if rig == nil {
				if rig, err = startNATSRig(ctx, *sync, *natsProfile); err != nil {
					return r, err
				}
				ns := benchNATSSettings(*sync)
				rep.NATS = &ns
				if _, err := bridge.EnsureStream(ctx, rig.js, bridge.Config{}); err != nil {
					return r, err
				}
			}
			if seq0, err = streamLastSeq(ctx, rig.js); err != nil {
				return r, err
			}
			if br, err = startBridgeProc(ctx, pg.dsn, rig.proc.url, *bridgeProfile, tune); err != nil {
				return r, err
			}
			pids.bridge, pids.nats, pids.bridgeBackend = br.pid(), rig.proc.pid(), bridgeBackendPID(ctx, conn)
		}
		r.LoadStart = loadAvg()
		meter := startCPUMeter()
		tps, err := runPgbench(ctx, pgbench, pg.cluster, v.Table, n, *duration)
		meter.stop()
		r.CPU = meter.shares(pids)
		if br != nil {
			seq1, serr := streamLastSeq(ctx, rig.js)
			_ = conn.QueryRow(ctx, `SELECT count(*) FROM herald.log`).Scan(&r.BacklogAtEnd)
			if kib, herr := procStatus(br.pid(), "VmHWM"); herr == nil {
				r.BridgePeakMiB = mib(kib)
			}
			if exited, why := br.exited(); exited {
				return r, fmt.Errorf("the bridge stopped during the run: %s", why)
			}
			stats, stopErr := br.stopStats(nil)
			if stopErr != nil && err == nil {
				err = stopErr
			}
			r.Bridge = stats
			if serr != nil && err == nil {
				err = serr
			}
			r.Published = int64(seq1 - seq0)
		}
		r.TPS = tps
		return r, err
	}

	// Rounds interleave the variants, so that a slow minute of the machine
	// does not fall on one variant only; a run during which other processes
	// took more than --max-other of a core is measured again.
	for round := 1; round <= *rounds; round++ {
		for _, n := range clients {
			plainTPS := 0.0
			for _, v := range variants {
				var r captureResult
				for attempt := 1; ; attempt++ {
					got, err := runOnce(v, n)
					if err != nil {
						return err
					}
					got.Round, got.Attempt = round, attempt
					if attempt == 1 || got.CPU.Other < r.CPU.Other {
						r = got
					}
					if *maxOther <= 0 || got.CPU.Other <= *maxOther || attempt > *retries {
						break
					}
					fmt.Fprintf(stdout, "  %-14s %3d clients  other processes took %.0f%% of a core; measuring again\n", v.Name, n, got.CPU.Other)
				}
				if v.Name == "plain" {
					plainTPS = r.TPS
				}
				if plainTPS > 0 {
					r.Ratio = r.TPS / plainTPS
				}
				rep.Runs = append(rep.Runs, r)
				extra := ""
				if r.Bridge != nil {
					extra = fmt.Sprintf("\n      bridge: %d left in the log at the end, peak RSS %.1f MiB; %s", r.BacklogAtEnd, r.BridgePeakMiB, r.Bridge)
				}
				fmt.Fprintf(stdout, "  round %d  %-14s %3d clients  %9.0f tps  %5.1f%% of plain  load %s  cpu: %s%s\n", round, v.Name, n, r.TPS, 100*r.Ratio, fmtLoad(r.LoadStart), r.CPU, extra)
			}
		}
	}
	rep.Results = summarizeCapture(rep.Runs, variants, clients)
	rep.Machine.LoadEnd = loadAvg()
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
	if *rounds > 1 {
		fmt.Fprintf(stdout, "  medians of %d rounds; every run is in the JSON\n", *rounds)
	}
	for _, v := range variants {
		fmt.Fprintf(stdout, "  %s: %s\n", v.Name, v.What)
	}
	if rep.NATS != nil {
		fmt.Fprintf(stdout, "  NATS for herald+bridge: sync_interval %s, %s storage, %d replica\n", rep.NATS.SyncInterval, rep.NATS.Storage, rep.NATS.Replicas)
	}
	fmt.Fprintf(stdout, "  load average %s → %s on %d cores\n", fmtLoad(rep.Machine.LoadStart), fmtLoad(rep.Machine.LoadEnd), rep.Machine.NProc)
	return writeBenchJSON(*jsonOut, rep, stdout)
}

// streamLastSeq is the data stream's last sequence number.
func streamLastSeq(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	s, err := js.Stream(ctx, "HERALD")
	if err != nil {
		return 0, fmt.Errorf("looking up stream HERALD: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading stream HERALD: %w", err)
	}
	return info.State.LastSeq, nil
}

// setupCapture creates one table per variant and installs its capture.
func setupCapture(ctx context.Context, conn *pgx.Conn) error {
	if _, err := schema.Migrate(ctx, conn); err != nil {
		return err
	}
	created := map[string]bool{}
	for _, v := range captureVariants {
		if created[v.Table] {
			continue // herald and herald+bridge share one
		}
		created[v.Table] = true
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
        PERFORM pg_notify('herald', pg_current_xact_id()::text);
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
