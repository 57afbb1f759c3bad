package main

// The benchmark rig: NATS and the bridge run as processes of their own (the
// hidden `herald bench nats-server` and `herald bench bridge` subcommands,
// exec'd from this binary), so their memory and CPU can be read from /proc
// and so that they compete for the two cores as they would in production.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/schema"
)

// natsSettings describes the NATS server a figure was measured against.
// reportHead opens the JSON report of the drain, latency and sustained
// scenarios: what ran, where, and with which PostgreSQL and NATS.
type reportHead struct {
	Scenario   string            `json:"scenario"`
	Started    time.Time         `json:"started"`
	Command    string            `json:"command"`
	Machine    machineInfo       `json:"machine"`
	PostgreSQL string            `json:"postgresql"`
	PGSettings map[string]string `json:"postgresql_settings"`
	NATS       natsSettings      `json:"nats"`
}

// newReportHead starts a report for `herald bench <scenario> <args>` with
// NATS's sync_interval set to sync; PostgreSQL's fields come once it runs.
func newReportHead(scenario string, args []string, sync string) reportHead {
	return reportHead{
		Scenario: scenario, Started: time.Now().UTC(), Command: "herald bench " + scenario + " " + strings.Join(args, " "),
		Machine: readMachine(), NATS: benchNATSSettings(sync),
	}
}

type natsSettings struct {
	Version      string `json:"version"`
	SyncInterval string `json:"sync_interval"` // "always" or a duration
	Storage      string `json:"storage"`
	Replicas     int    `json:"replicas"`
	Process      string `json:"process"`
}

func benchNATSSettings(sync string) natsSettings {
	if sync == "default" {
		sync = "2m0s (default)"
	}
	return natsSettings{Version: server.VERSION, SyncInterval: sync, Storage: "file", Replicas: 1, Process: "separate (herald bench nats-server, embedded nats-server " + server.VERSION + ")"}
}

// validSync checks a --sync flag: always, default or a duration.
func validSync(s string) error {
	if s == "always" || s == "default" {
		return nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return nil
	}
	return usageError{fmt.Sprintf("--sync %q: use always, default or a duration such as 1s", s)}
}

// benchNATSServer is the hidden `herald bench nats-server`: a JetStream
// server in a process of its own. It prints "ready URL" once it accepts
// connections and stops when its standard input closes (its parent died)
// or on SIGTERM.
func benchNATSServer(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("bench nats-server", "bench nats-server --dir DIR [--port N] [--sync always|default|DURATION]", stdout)
	dir := fs.String("dir", "", "JetStream store directory (required)")
	port := fs.Int("port", -1, "client port (-1: any free port)")
	sync := fs.String("sync", "always", "JetStream sync_interval: always (fsync before every ack), default (2m) or a duration")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the server to this file")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{"--dir is required"}
	}
	if err := validSync(*sync); err != nil {
		return err
	}
	opts := &server.Options{
		ServerName: "herald-bench",
		Host:       "127.0.0.1",
		Port:       *port,
		JetStream:  true,
		StoreDir:   *dir,
		NoSigs:     true,
	}
	switch *sync {
	case "always":
		opts.SyncAlways = true
	case "default":
	default:
		opts.SyncInterval, _ = time.ParseDuration(*sync)
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("configuring NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(20 * time.Second) {
		ns.Shutdown()
		return errors.New("NATS did not become ready within 20s")
	}
	fmt.Fprintf(stdout, "ready %s\n", ns.ClientURL())
	<-untilParentGone(ctx).Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// benchBridge is the hidden `herald bench bridge`: the bridge as
// herald-bridge runs it, in a process of its own. It prints "leading" once
// it holds the leader lock.
func benchBridge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench bridge", "bench bridge --database-url DSN --nats-url URL [--batch-size N] [--cpuprofile FILE]", stdout)
	dsn := fs.String("database-url", "", "PostgreSQL connection (required)")
	natsURL := fs.String("nats-url", "", "NATS URL (required)")
	batch := fs.Int("batch-size", 0, "HERALD_BATCH_SIZE (0: the bridge's default)")
	small := fs.Int("small-batch", 0, "HERALD_SMALL_BATCH (0: the bridge's default)")
	closeRate := fs.Float64("gate-close-rate", 0, "HERALD_GATE_CLOSE_RATE (0: the bridge's default)")
	inFlight := fs.Int("in-flight", 0, "HERALD_IN_FLIGHT (0: the bridge's default)")
	pollGather := fs.Duration("poll-gather", 0, "HERALD_POLL_GATHER (0: the bridge's default)")
	pollPause := fs.Duration("poll-pause", 0, "HERALD_POLL_PAUSE (0: the bridge's default)")
	queueWaiters := fs.Int("gate-queue-waiters", 0, "HERALD_GATE_QUEUE_WAITERS (0: the bridge's default; negative: never)")
	queueFor := fs.Duration("gate-queue-for", 0, "HERALD_GATE_QUEUE_FOR (0: the bridge's default)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the bridge to this file")
	statsOut := fs.String("stats", "", "on exit, write the bridge's metrics to this file as JSON")
	verbose := fs.Bool("v", false, "log at debug level")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dsn == "" || *natsURL == "" {
		return usageError{"--database-url and --nats-url are required"}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	nc, err := nats.Connect(*natsURL, nats.Name("herald-bridge (bench)"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", *natsURL, err)
	}
	defer nc.Close()
	reg := prometheus.NewRegistry()
	b, err := bridge.New(*dsn, nc, bridge.Config{Source: "bench", BatchSize: *batch, SmallBatch: *small, CloseRate: *closeRate, InFlight: *inFlight, PollPause: *pollPause, PollGather: *pollGather, QueueWaiters: *queueWaiters, QueueFor: *queueFor}, bridge.WithLogger(logger), bridge.WithRegisterer(reg))
	if err != nil {
		return err
	}
	if *statsOut != "" {
		// Written every 250ms and on exit, so the rig can diff two moments.
		stopStats := make(chan struct{})
		statsDone := make(chan struct{})
		go func() {
			defer close(statsDone)
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopStats:
					return
				case <-t.C:
					_ = writeMetrics(reg, *statsOut)
				}
			}
		}()
		defer func() {
			close(stopStats)
			<-statsDone
			if err := writeMetrics(reg, *statsOut); err != nil {
				fmt.Fprintf(stderr, "writing metrics: %v\n", err)
			}
		}()
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	runCtx, cancel := context.WithCancel(untilParentGone(ctx))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !b.Leading() {
		select {
		case err := <-done:
			if err == nil {
				err = errors.New("bridge stopped before leading")
			}
			return err
		case <-tick.C:
		}
	}
	fmt.Fprintln(stdout, "leading")
	return <-done
}

// writeMetrics writes every sample of reg as "name{label=value,…}": value
// (histograms as _sum and _count).
func writeMetrics(reg *prometheus.Registry, path string) error {
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
				name += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[name] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[name+"_sum"] = m.GetHistogram().GetSampleSum()
				out[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path) // readers never see half a file
}

// bridgeStats is what the bridge reported about a run, from its metrics.
type bridgeStats struct {
	Published    float64            `json:"published"`
	Batches      map[string]float64 `json:"batches_by_kind"`
	MeanBatch    float64            `json:"mean_batch"`
	MeanPublish  map[string]float64 `json:"mean_publish_ms_by_kind"`
	Wakeups      map[string]float64 `json:"wakeups_by_reason"`
	Covered      float64            `json:"notifications_covered"`
	GateCloses   map[string]float64 `json:"gate_closes_by_reason,omitempty"`
	PublishError float64            `json:"publish_errors"`
}

func parseBridgeStats(m map[string]float64) *bridgeStats {
	s := &bridgeStats{Batches: map[string]float64{}, MeanPublish: map[string]float64{}, Wakeups: map[string]float64{}, GateCloses: map[string]float64{}}
	label := func(name, prefix string) (string, bool) {
		rest, ok := strings.CutPrefix(name, prefix+"{")
		if !ok {
			return "", false
		}
		_, v, _ := strings.Cut(rest, "=")
		v, _, _ = strings.Cut(v, "}")
		return v, true
	}
	for k, v := range m {
		if kind, ok := label(k, "herald_bridge_batches_total"); ok {
			s.Batches[kind] = v
		}
		if reason, ok := label(k, "herald_bridge_wakeups_total"); ok {
			s.Wakeups[reason] = v
		}
		if reason, ok := label(k, "herald_bridge_gate_closes_total"); ok && v > 0 {
			s.GateCloses[reason] = v
		}
		if kind, ok := label(k, "herald_bridge_publish_seconds"); ok && strings.HasSuffix(k, "_sum") {
			if n := m[strings.TrimSuffix(k, "_sum")+"_count"]; n > 0 {
				s.MeanPublish[kind] = 1000 * v / n
			}
		}
	}
	s.Published = m["herald_bridge_published_total"]
	s.PublishError = m["herald_bridge_publish_errors_total"]
	s.Covered = m["herald_bridge_notifications_covered_total"]
	if n := m["herald_bridge_batch_size_count"]; n > 0 {
		s.MeanBatch = m["herald_bridge_batch_size_sum"] / n
	}
	return s
}

func (s *bridgeStats) String() string {
	if s == nil {
		return "no bridge metrics"
	}
	kinds := func(m map[string]float64, f string) string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		var parts []string
		for _, k := range ks {
			parts = append(parts, fmt.Sprintf("%s "+f, k, m[k]))
		}
		return strings.Join(parts, ", ")
	}
	return fmt.Sprintf("published %.0f in batches of %.1f on average; batches: %s; mean publish→ack ms: %s; drains by reason: %s; notifications of transactions read already: %.0f; gate closed by: %s",
		s.Published, s.MeanBatch, kinds(s.Batches, "%.0f"), kinds(s.MeanPublish, "%.2f"), kinds(s.Wakeups, "%.0f"), s.Covered, kinds(s.GateCloses, "%.0f"))
}

// untilParentGone returns a context cancelled with ctx or once standard
// input reaches EOF: the rig holds a pipe to every child's stdin, so a
// child never outlives a benchmark that crashed.
func untilParentGone(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx
}

func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("creating CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting CPU profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// childProc is a rig process: this binary run with a hidden subcommand.
type childProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	done   chan struct{}
	err    error
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 {
		b.buf.Reset() // keep the tail only
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) tail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}

// startChild runs `herald bench SUB args…` and waits for a first stdout
// line starting with want, whose rest it returns. Every later line goes to
// onLine (if not nil), on one goroutine, in order.
func startChild(ctx context.Context, sub string, args []string, want string, onLine func([]byte)) (*childProc, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("finding this program to run %s: %w", sub, err)
	}
	cmd := exec.Command(self, append([]string{"bench", sub}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &childProc{name: sub, cmd: cmd, done: make(chan struct{}), stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting %s: %w", sub, err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		isReady := false
		for sc.Scan() {
			if !isReady {
				if rest, ok := strings.CutPrefix(sc.Text(), want); ok {
					isReady = true
					ready <- strings.TrimSpace(rest)
				}
				continue
			}
			if onLine != nil {
				onLine(sc.Bytes())
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	select {
	case rest := <-ready:
		return p, rest, nil
	case <-p.done:
		return nil, "", fmt.Errorf("%s exited before it was ready: %v: %s", sub, p.err, p.stderr.tail())
	case <-timer.C:
		p.stop()
		return nil, "", fmt.Errorf("%s was not ready within 60s: %s", sub, p.stderr.tail())
	case <-ctx.Done():
		p.stop()
		return nil, "", ctx.Err()
	}
}

func (p *childProc) pid() int { return p.cmd.Process.Pid }

// stop asks the process to stop (SIGTERM, and its stdin closed), then
// kills it if it has not stopped within 20s.
func (p *childProc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 20s; killed", p.name)
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		return p.err
	}
	if p.err != nil {
		return fmt.Errorf("%s: %v: %s", p.name, p.err, p.stderr.tail())
	}
	return nil
}

// exited reports whether the process is gone, and why.
func (p *childProc) exited() (bool, string) {
	select {
	case <-p.done:
		return true, fmt.Sprintf("%v: %s", p.err, p.stderr.tail())
	default:
		return false, ""
	}
}

// natsProc is a NATS server of the rig.
type natsProc struct {
	*childProc
	url string
}

func startNATSProc(ctx context.Context, dir, sync, cpuProfile string) (*natsProc, error) {
	args := []string{"--dir", dir, "--sync", sync}
	if cpuProfile != "" {
		args = append(args, "--cpuprofile", cpuProfile)
	}
	p, url, err := startChild(ctx, "nats-server", args, "ready ", nil)
	if err != nil {
		return nil, err
	}
	return &natsProc{p, url}, nil
}

// bridgeProc is a bridge of the rig.
type bridgeProc struct {
	*childProc
	statsFile string
}

// bridgeTuning is the bridge configuration a scenario runs with.
type bridgeTuning struct {
	BatchSize  int           `json:"batch_size"`      // HERALD_BATCH_SIZE
	SmallBatch int           `json:"small_batch"`     // HERALD_SMALL_BATCH
	CloseRate  float64       `json:"gate_close_rate"` // HERALD_GATE_CLOSE_RATE
	InFlight   int           `json:"in_flight"`       // HERALD_IN_FLIGHT
	PollGather time.Duration `json:"poll_gather_ns"`  // HERALD_POLL_GATHER
	PollPause  time.Duration `json:"poll_pause_ns"`   // HERALD_POLL_PAUSE
	// HERALD_GATE_QUEUE_WAITERS (negative: never) and HERALD_GATE_QUEUE_FOR
	QueueWaiters int           `json:"gate_queue_waiters"`
	QueueFor     time.Duration `json:"gate_queue_for_ns"`
}

// registerBridgeFlags adds the --bridge-* flags.
func registerBridgeFlags(fs *flag.FlagSet) func() (bridgeTuning, error) {
	batch := fs.Int("bridge-batch-size", 500, "the bridge's HERALD_BATCH_SIZE: most changes read and published at once (1 to 1000)")
	small := fs.Int("bridge-small-batch", 16, "the bridge's HERALD_SMALL_BATCH: largest batch published as async publishes rather than one atomic batch")
	closeRate := fs.Float64("bridge-gate-close-rate", 2000, "the bridge's HERALD_GATE_CLOSE_RATE: changes per second at which it stops NOTIFY and polls")
	inFlight := fs.Int("bridge-in-flight", 4, "the bridge's HERALD_IN_FLIGHT: batches published at once while NOTIFY is on")
	pollGather := fs.Duration("bridge-poll-gather", 10*time.Millisecond, "the bridge's HERALD_POLL_GATHER: while polling, least time between two reads (negative: none)")
	pollPause := fs.Duration("bridge-poll-pause", 500*time.Microsecond, "the bridge's HERALD_POLL_PAUSE: pause after an empty drain while polling")
	queueWaiters := fs.Int("bridge-gate-queue-waiters", 4, "the bridge's HERALD_GATE_QUEUE_WAITERS: writers queued on NOTIFY's lock that make it poll (negative: never)")
	queueFor := fs.Duration("bridge-gate-queue-for", 100*time.Millisecond, "the bridge's HERALD_GATE_QUEUE_FOR: how long writers must stay queued before it polls")
	return func() (bridgeTuning, error) {
		t := bridgeTuning{BatchSize: *batch, SmallBatch: *small, CloseRate: *closeRate, InFlight: *inFlight, PollPause: *pollPause, PollGather: *pollGather,
			QueueWaiters: *queueWaiters, QueueFor: *queueFor}
		if t.BatchSize < 1 || t.BatchSize > 1000 || t.SmallBatch < 1 || t.SmallBatch > t.BatchSize {
			return t, usageError{"--bridge-batch-size must be 1 to 1000 and --bridge-small-batch 1 to the batch size"}
		}
		if t.CloseRate <= 0 || t.PollPause <= 0 {
			return t, usageError{"--bridge-gate-close-rate and --bridge-poll-pause must be positive"}
		}
		if t.InFlight < 1 || t.InFlight > 64 {
			return t, usageError{"--bridge-in-flight must be 1 to 64"}
		}
		if t.PollGather > time.Second {
			return t, usageError{"--bridge-poll-gather must be at most 1s (negative: none)"}
		}
		if t.QueueWaiters == 0 || t.QueueWaiters > 10000 || t.QueueFor < 50*time.Millisecond || t.QueueFor > time.Minute {
			return t, usageError{"--bridge-gate-queue-waiters must be 1 to 10000 (negative: never) and --bridge-gate-queue-for 50ms to 1m"}
		}
		return t, nil
	}
}

func startBridgeProc(ctx context.Context, dsn, natsURL, cpuProfile string, tune bridgeTuning) (*bridgeProc, error) {
	f, err := os.CreateTemp("", "herald-bench-bridge-*.json")
	if err != nil {
		return nil, err
	}
	f.Close()
	args := []string{"--database-url", dsn, "--nats-url", natsURL, "--stats", f.Name()}
	if tune.BatchSize > 0 {
		args = append(args, "--batch-size", strconv.Itoa(tune.BatchSize))
	}
	if tune.SmallBatch > 0 {
		args = append(args, "--small-batch", strconv.Itoa(tune.SmallBatch))
	}
	if tune.CloseRate > 0 {
		args = append(args, "--gate-close-rate", strconv.FormatFloat(tune.CloseRate, 'f', -1, 64))
	}
	if tune.InFlight > 0 {
		args = append(args, "--in-flight", strconv.Itoa(tune.InFlight))
	}
	if tune.PollGather != 0 {
		args = append(args, "--poll-gather", tune.PollGather.String())
	}
	if tune.PollPause > 0 {
		args = append(args, "--poll-pause", tune.PollPause.String())
	}
	if tune.QueueWaiters != 0 {
		args = append(args, "--gate-queue-waiters", strconv.Itoa(tune.QueueWaiters))
	}
	if tune.QueueFor > 0 {
		args = append(args, "--gate-queue-for", tune.QueueFor.String())
	}
	if cpuProfile != "" {
		args = append(args, "--cpuprofile", cpuProfile)
	}
	p, _, err := startChild(ctx, "bridge", args, "leading", nil)
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return &bridgeProc{p, f.Name()}, nil
}

// metrics reads the bridge's latest metrics (written every 250ms).
func (b *bridgeProc) metrics() map[string]float64 {
	m := map[string]float64{}
	if raw, err := os.ReadFile(b.statsFile); err == nil {
		_ = json.Unmarshal(raw, &m)
	}
	return m
}

// stopStats stops the bridge and returns what its metrics said over its
// life, less what they said at since (nil: from the start).
func (b *bridgeProc) stopStats(since map[string]float64) (*bridgeStats, error) {
	err := b.stop()
	m := b.metrics()
	os.Remove(b.statsFile)
	if len(m) == 0 {
		return nil, err
	}
	return parseBridgeStats(diffMetrics(m, since)), err
}

// diffMetrics returns b - a, sample by sample.
func diffMetrics(b, a map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(b))
	for k, v := range b {
		out[k] = v - a[k]
	}
	return out
}

// procStatus reads a field of /proc/<pid>/status in KiB (VmHWM, VmRSS).
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// machineInfo describes where and when a figure was measured.
type machineInfo struct {
	NProc     int        `json:"nproc"`
	CPU       string     `json:"cpu"`
	MemMiB    int64      `json:"mem_mib"`
	Kernel    string     `json:"kernel"`
	Go        string     `json:"go"`
	LoadStart [3]float64 `json:"loadavg_start"`
	LoadEnd   [3]float64 `json:"loadavg_end"`
}

func readMachine() machineInfo {
	m := machineInfo{NProc: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if kib, err := meminfo("MemTotal"); err == nil {
		m.MemMiB = kib / 1024
	}
	return m
}

func meminfo(field string) (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/meminfo", field)
}

func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

func fmtLoad(l [3]float64) string { return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2]) }

// benchPG is the throwaway PostgreSQL every scenario runs against.
type benchPG struct {
	cluster  *pgtest.Cluster
	dsn      string
	version  string
	settings map[string]string
}

// pgBenchSettings are durable settings, as in production: fsync and
// synchronous commit on.
func pgBenchSettings() map[string]string {
	return map[string]string{"shared_buffers": "256MB", "max_connections": "100", "fsync": "on", "synchronous_commit": "on", "max_wal_size": "4GB"}
}

func startBenchPG(ctx context.Context, stdout io.Writer) (*benchPG, error) {
	binDir, err := pgtest.BinDir()
	if err != nil {
		return nil, err
	}
	settings := pgBenchSettings()
	fmt.Fprintf(stdout, "starting a throwaway PostgreSQL from %s …\n", binDir)
	cluster, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		return nil, err
	}
	if err := cluster.CreateDatabase(ctx, "bench"); err != nil {
		cluster.Close()
		return nil, err
	}
	pg := &benchPG{cluster: cluster, dsn: cluster.ConnString("bench"), settings: settings}
	conn, err := pgx.Connect(ctx, pg.dsn)
	if err != nil {
		cluster.Close()
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&pg.version); err != nil {
		cluster.Close()
		return nil, err
	}
	if _, err := schema.Migrate(ctx, conn); err != nil {
		cluster.Close()
		return nil, err
	}
	return pg, nil
}

func (pg *benchPG) Close() { pg.cluster.Close() }

// natsRig is a NATS process plus this process's connection to it.
type natsRig struct {
	proc *natsProc
	nc   *nats.Conn
	js   jetstream.JetStream
	dir  string
}

func startNATSRig(ctx context.Context, sync, cpuProfile string) (*natsRig, error) {
	dir, err := os.MkdirTemp("", "herald-bench-nats-")
	if err != nil {
		return nil, err
	}
	p, err := startNATSProc(ctx, dir, sync, cpuProfile)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	nc, err := nats.Connect(p.url, nats.Name("herald bench"), nats.MaxReconnects(-1))
	if err != nil {
		p.stop()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("connecting to the bench NATS at %s: %w", p.url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		p.stop()
		os.RemoveAll(dir)
		return nil, err
	}
	return &natsRig{proc: p, nc: nc, js: js, dir: dir}, nil
}

func (r *natsRig) Close() error {
	r.nc.Close()
	err := r.proc.stop()
	os.RemoveAll(r.dir)
	return err
}

// cpuMeter attributes CPU time to the rig's parts between two snapshots.
type cpuMeter struct {
	start, end procTable
	busy0      uint64
	busy1      uint64
	total0     uint64
	total1     uint64
	t0, t1     time.Time
}

// procTable maps pid → (parent, CPU ticks of the process and of its reaped
// children).
type procTable map[int]procEntry

type procEntry struct {
	ppid  int
	self  uint64
	child uint64
	comm  string
}

func readProcTable() procTable {
	t := procTable{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		// f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var v [4]uint64
		for i := range v {
			v[i], _ = strconv.ParseUint(f[11+i], 10, 64)
		}
		t[pid] = procEntry{ppid: ppid, self: v[0] + v[1], child: v[2] + v[3], comm: s[open+1 : close]}
	}
	return t
}

// descendants returns pid and every process below it.
func (t procTable) descendants(pid int) map[int]bool {
	kids := map[int][]int{}
	for p, e := range t {
		kids[e.ppid] = append(kids[e.ppid], p)
	}
	out := map[int]bool{}
	var walk func(int)
	walk = func(p int) {
		if _, ok := t[p]; !ok || out[p] {
			return
		}
		out[p] = true
		for _, k := range kids[p] {
			walk(k)
		}
	}
	walk(pid)
	return out
}

// tree returns the CPU ticks of pid and all its descendants, reaped ones
// included.
func (t procTable) tree(pid int) uint64 {
	var sum uint64
	for p := range t.descendants(pid) {
		sum += t[p].self + t[p].child
	}
	return sum
}

func (t procTable) one(pid int) uint64 { return t[pid].self }

func cpuStat() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

func startCPUMeter() *cpuMeter {
	m := &cpuMeter{start: readProcTable(), t0: time.Now()}
	m.busy0, m.total0 = cpuStat()
	return m
}

func (m *cpuMeter) stop() {
	m.end = readProcTable()
	m.t1 = time.Now()
	m.busy1, m.total1 = cpuStat()
}

// clockTick is USER_HZ, 100 on every Linux this runs on.
const clockTick = 100

// share returns a tick delta as a percentage of one core over the interval.
func (m *cpuMeter) share(ticks0, ticks1 uint64) float64 {
	secs := m.t1.Sub(m.t0).Seconds()
	if secs <= 0 || ticks1 < ticks0 {
		return 0
	}
	return 100 * float64(ticks1-ticks0) / clockTick / secs
}

func (m *cpuMeter) treeShare(pid int) float64 {
	return m.share(m.start.tree(pid), m.end.tree(pid))
}

func (m *cpuMeter) oneShare(pid int) float64 {
	return m.share(m.start.one(pid), m.end.one(pid))
}

// machineShare is the busy share of the whole machine, in percent of one
// core (200% = both cores of a 2-core machine).
func (m *cpuMeter) machineShare() float64 {
	if m.total1 <= m.total0 {
		return 0
	}
	return 100 * float64(runtime.NumCPU()) * float64(m.busy1-m.busy0) / float64(m.total1-m.total0)
}

// cpuShares is where the CPU went during a run, in percent of one core.
type cpuShares struct {
	Machine       float64 `json:"machine"`
	PostgreSQL    float64 `json:"postgresql"`
	BridgeBackend float64 `json:"bridge_backend,omitempty"`
	Bridge        float64 `json:"bridge,omitempty"`
	NATS          float64 `json:"nats,omitempty"`
	Filesync      float64 `json:"filesync,omitempty"`
	Bench         float64 `json:"bench_process"` // writers, receivers, pgbench
	// Other is what processes outside the benchmark used: other users of
	// the machine. It is what --max-other compares.
	Other float64 `json:"other"`
	// Kernel is the rest of the machine's busy time: kernel threads,
	// interrupts and softirqs (loopback networking, the journal), much of it
	// on the benchmark's behalf.
	Kernel float64 `json:"kernel"`
}

// foreignShare is the CPU of the user processes outside the tree of self
// (kernel threads excluded), counting their reaped children.
func (m *cpuMeter) foreignShare(self int) float64 {
	ours := m.end.descendants(self)
	for p := range m.start.descendants(self) {
		ours[p] = true
	}
	var t0, t1 uint64
	for pid, e := range m.end {
		if ours[pid] || pid == 2 || e.ppid == 2 {
			continue
		}
		t1 += e.self + e.child
		if s, ok := m.start[pid]; ok {
			t0 += s.self + s.child
		}
	}
	return m.share(t0, t1)
}

// rigPIDs names the processes a cpuMeter attributes time to.
type rigPIDs struct {
	postmaster, bridgeBackend, bridge, nats, filesync int
}

func (m *cpuMeter) shares(p rigPIDs) cpuShares {
	s := cpuShares{Machine: m.machineShare(), PostgreSQL: m.treeShare(p.postmaster)}
	if p.bridgeBackend > 0 {
		s.BridgeBackend = m.oneShare(p.bridgeBackend)
	}
	if p.bridge > 0 {
		s.Bridge = m.treeShare(p.bridge)
	}
	if p.nats > 0 {
		s.NATS = m.treeShare(p.nats)
	}
	if p.filesync > 0 {
		s.Filesync = m.treeShare(p.filesync)
	}
	self := os.Getpid()
	ours := m.treeShare(self)
	s.Bench = ours - s.PostgreSQL - s.Bridge - s.NATS - s.Filesync
	s.Other = m.foreignShare(self)
	s.Kernel = max(0, s.Machine-ours-s.Other)
	return s
}

func (s cpuShares) String() string {
	str := fmt.Sprintf("machine %.0f%%: postgres %.0f%%", s.Machine, s.PostgreSQL)
	if s.BridgeBackend > 0 {
		str += fmt.Sprintf(" (bridge's backend %.0f%%)", s.BridgeBackend)
	}
	if s.Bridge > 0 {
		str += fmt.Sprintf(", bridge %.0f%%", s.Bridge)
	}
	if s.NATS > 0 {
		str += fmt.Sprintf(", nats %.0f%%", s.NATS)
	}
	if s.Filesync > 0 {
		str += fmt.Sprintf(", filesync %.0f%%", s.Filesync)
	}
	return str + fmt.Sprintf(", bench %.0f%%, kernel %.0f%%, other processes %.0f%% (of one core)", s.Bench, s.Kernel, s.Other)
}

// bridgeBackendPID finds the PostgreSQL backend serving the bridge.
func bridgeBackendPID(ctx context.Context, conn *pgx.Conn) int {
	var pid int
	_ = conn.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = 'herald-bridge' ORDER BY backend_start DESC LIMIT 1`).Scan(&pid)
	return pid
}

// writeBenchJSON writes v to path, indented; nothing when path is empty.
func writeBenchJSON(path string, v any, stdout io.Writer) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fmt.Fprintf(stdout, "results written to %s\n", path)
	return nil
}
