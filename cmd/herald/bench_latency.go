package main

// Latency and sustained load: paced, open-loop writers update a watched
// table; the bridge (own process) publishes to NATS (own process); this
// process receives every change on a core NATS subscription and an ordered
// consumer on the stream; herald-filesync's consumer (own process, the
// hidden `herald bench filesync`) writes one file per row and reports when
// its handler was called and returned. Each arrival is compared with the
// moment the writer saw its COMMIT return.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
	"github.com/herald-cdc/herald/schema"
)

// probePath is one place a change is observed.
type probePath int

const (
	pathNATS    probePath = iota // core NATS subscription on the table's subjects
	pathStream                   // ordered consumer: stored in the stream
	pathHandler                  // filesync's handler called
	pathFile                     // filesync's handler returned: file renamed, directory synced
	numPaths
)

var probePathNames = [numPaths]string{"nats", "stream", "handler", "file"}

var probePathTitles = [numPaths]string{
	"commit → NATS subscriber",
	"commit → stream (ordered consumer)",
	"commit → consumer handler",
	"commit → file renamed",
}

// probeRecorder holds, per sequence number, when the change was due, when
// its COMMIT returned and when it arrived on each path: nanoseconds on this
// process's monotonic clock, plus one so that zero means "not yet".
type probeRecorder struct {
	base   time.Time
	due    []int64
	commit []atomic.Int64
	arr    [numPaths][]atomic.Int64
}

func newProbeRecorder(n int) *probeRecorder {
	r := &probeRecorder{base: time.Now(), due: make([]int64, n), commit: make([]atomic.Int64, n)}
	for p := range r.arr {
		r.arr[p] = make([]atomic.Int64, n)
	}
	return r
}

func (r *probeRecorder) now() int64 { return int64(time.Since(r.base)) + 1 }

func (r *probeRecorder) arrive(p probePath, seq int64) { r.arriveAt(p, seq, r.now()) }

// arriveAt records the first arrival of seq on p at t (recorder clock).
func (r *probeRecorder) arriveAt(p probePath, seq, t int64) {
	if seq >= 0 && seq < int64(len(r.commit)) {
		r.arr[p][seq].CompareAndSwap(0, max(t, 1))
	}
}

// probeOptions are the knobs of the latency and sustained scenarios.
type probeOptions struct {
	keys, payload, writers, workers  int
	sync, bridgeProfile, selfProfile string
	natsProfile                      string
	filesyncProfile                  string
	filesync                         string // on, off or both
	tune                             bridgeTuning
}

// registerProbeFlags adds the options' flags to fs; call the result after
// parsing.
func registerProbeFlags(fs *flag.FlagSet, defaultFilesync string) func() (probeOptions, error) {
	keys := fs.Int("keys", 1000, "rows (keys) the writers update in turn; one file each")
	payload := fs.Int("payload", 200, "bytes of padding in each change's value")
	writers := fs.Int("writers", 32, "writer connections (the schedule is open-loop: more connections only add capacity)")
	workers := fs.Int("workers", consumers.DefaultWorkers, "filesync consumer workers (keys applied in parallel)")
	sync := fs.String("sync", "always", "NATS JetStream sync_interval: always, default (2m) or a duration")
	prof := fs.String("cpuprofile-bridge", "", "write a CPU profile of the bridge process to this file")
	self := fs.String("cpuprofile", "", "write a CPU profile of this process (writers, receivers) to this file")
	fprof := fs.String("cpuprofile-filesync", "", "write a CPU profile of the filesync process to this file (its last phase)")
	nprof := fs.String("cpuprofile-nats", "", "write a CPU profile of the NATS process to this file (every phase)")
	fsync := fs.String("filesync", defaultFilesync, "run herald-filesync (own process) during the phases: on, off (the bridge's paths alone) or both (each rate twice)")
	tuning := registerBridgeFlags(fs)
	return func() (probeOptions, error) {
		tune, err := tuning()
		return probeOptions{keys: *keys, payload: *payload, writers: *writers, workers: *workers, sync: *sync, bridgeProfile: *prof, selfProfile: *self, filesyncProfile: *fprof, natsProfile: *nprof, filesync: *fsync, tune: tune}, err
	}
}

func (o probeOptions) validate() error {
	switch {
	case o.keys < 64 || o.keys < o.writers:
		return usageError{"--keys must be at least 64 and at least --writers (one key is never written by two writers at once)"}
	case o.payload < 0 || o.payload > 100000:
		return usageError{"--payload must be 0 to 100000 bytes"}
	case o.writers < 1 || o.writers > 80:
		return usageError{"--writers must be 1 to 80"}
	case o.workers < 1 || o.workers > 256:
		return usageError{"--workers must be 1 to 256"}
	case o.filesync != "on" && o.filesync != "off" && o.filesync != "both":
		return usageError{"--filesync must be on, off or both"}
	}
	return validSync(o.sync)
}

// probeRig is everything a latency or sustained run needs.
type probeRig struct {
	o        probeOptions
	pg       *benchPG
	nats     *natsRig
	bridge   *bridgeProc
	admin    *pgx.Conn
	writers  []*pgx.Conn
	keys     []string
	pad      string
	rec      *probeRecorder
	filesDir string
	nextSeq  int64

	committed atomic.Int64 // changes whose COMMIT returned
	applied   atomic.Int64 // changes filesync applied
	writeErrs atomic.Int64
	firstErr  atomic.Value

	subConn   *nats.Conn
	ordConn   *nats.Conn
	sub       *nats.Subscription
	ordered   jetstream.ConsumeContext
	filesync  *childProc // running while a phase measures filesync
	pids      rigPIDs
	bridgeHWM int64
}

const probeTable = "bench_hosts"

// updateSQL is what each writer runs: one row, one statement, autocommit.
const updateSQL = `UPDATE bench_hosts SET value = jsonb_build_object('seq', $1::bigint, 'pad', $2::text), updated_at = now() WHERE hostkey = $3`

func startProbeRig(ctx context.Context, o probeOptions, capacity int, stdout io.Writer) (r *probeRig, err error) {
	r = &probeRig{o: o, rec: newProbeRecorder(capacity), pad: strings.Repeat("x", o.payload)}
	defer func() {
		if err != nil {
			r.Close()
			r = nil
		}
	}()
	if r.pg, err = startBenchPG(ctx, stdout); err != nil {
		return r, err
	}
	r.pids.postmaster = r.pg.cluster.PID()
	if r.admin, err = pgx.Connect(ctx, r.pg.dsn); err != nil {
		return r, err
	}
	if _, err = r.admin.Exec(ctx, `CREATE TABLE bench_hosts (hostkey text PRIMARY KEY, value jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return r, err
	}
	if _, err = r.admin.Exec(ctx, `INSERT INTO bench_hosts (hostkey, value) SELECT 'host-' || lpad(g::text, 6, '0'), '{}' FROM generate_series(1, $1) g`, o.keys); err != nil {
		return r, err
	}
	for i := 1; i <= o.keys; i++ {
		r.keys = append(r.keys, fmt.Sprintf("host-%06d", i))
	}
	if _, err = schema.WatchTable(ctx, r.admin, schema.WatchOptions{Table: probeTable, Columns: []string{"value"}}); err != nil {
		return r, err
	}
	if _, err = r.admin.Exec(ctx, `VACUUM ANALYZE bench_hosts`); err != nil {
		return r, err
	}

	fmt.Fprintf(stdout, "starting NATS (own process, sync_interval %s) …\n", o.sync)
	if r.nats, err = startNATSRig(ctx, o.sync, o.natsProfile); err != nil {
		return r, err
	}
	r.pids.nats = r.nats.proc.pid()
	if _, err = bridge.EnsureStream(ctx, r.nats.js, bridge.Config{}); err != nil {
		return r, err
	}
	filter := change.TableFilter("herald", "public", probeTable)

	// Each receiver on a connection of its own, so that one path's traffic
	// does not queue behind another's.
	if r.subConn, err = nats.Connect(r.nats.proc.url, nats.Name("herald bench subscriber")); err != nil {
		return r, err
	}
	if r.sub, err = r.subConn.Subscribe(filter, func(m *nats.Msg) {
		if seq, ok := msgSeq(m.Data); ok {
			r.rec.arrive(pathNATS, seq)
		}
	}); err != nil {
		return r, err
	}
	_ = r.sub.SetPendingLimits(-1, -1)
	if r.ordConn, err = nats.Connect(r.nats.proc.url, nats.Name("herald bench ordered consumer")); err != nil {
		return r, err
	}
	ojs, err := jetstream.New(r.ordConn)
	if err != nil {
		return r, err
	}
	oc, err := ojs.OrderedConsumer(ctx, "HERALD", jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return r, fmt.Errorf("creating the ordered consumer: %w", err)
	}
	if r.ordered, err = oc.Consume(func(m jetstream.Msg) {
		if seq, ok := msgSeq(m.Data()); ok {
			r.rec.arrive(pathStream, seq)
		}
	}); err != nil {
		return r, err
	}

	for range o.writers {
		c, err := pgx.Connect(ctx, r.pg.dsn)
		if err != nil {
			return r, err
		}
		r.writers = append(r.writers, c)
		if _, err := c.Prepare(ctx, "upd", updateSQL); err != nil {
			return r, err
		}
	}

	fmt.Fprintln(stdout, "starting the bridge (own process) …")
	if r.bridge, err = startBridgeProc(ctx, r.pg.dsn, r.nats.proc.url, o.bridgeProfile, o.tune); err != nil {
		return r, err
	}
	r.pids.bridge = r.bridge.pid()
	r.pids.bridgeBackend = bridgeBackendPID(ctx, r.admin)
	return r, nil
}

// startFilesync runs herald-filesync's consumer on the bench table in a
// process of its own (the hidden `herald bench filesync`), from a fresh
// durable that starts with the next change. It reports, per change, when
// its handler was called and when it returned (file renamed, directory
// synced), as wall-clock times the recorder turns into its own clock.
func (r *probeRig) startFilesync(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "herald-bench-files-")
	if err != nil {
		return err
	}
	r.filesDir = dir
	baseUnix := r.rec.base.UnixNano()
	onLine := func(line []byte) {
		kind, seq, at, ok := parseEvent(line)
		if !ok {
			return
		}
		p := pathHandler
		if kind == 'f' {
			p = pathFile
			r.applied.Add(1)
		}
		r.rec.arriveAt(p, seq, at-baseUnix+1)
	}
	args := []string{"--nats-url", r.nats.proc.url, "--dir", dir, "--workers", strconv.Itoa(r.o.workers), "--table", "public." + probeTable, "--durable", filesyncDurable}
	if r.o.filesyncProfile != "" {
		args = append(args, "--cpuprofile", r.o.filesyncProfile)
	}
	p, _, err := startChild(ctx, "filesync", args, "ready", onLine)
	if err != nil {
		return err
	}
	r.filesync = p
	r.pids.filesync = p.pid()
	return nil
}

// stopFilesync stops filesync, deletes its durable (the next start begins
// with new changes) and its files.
func (r *probeRig) stopFilesync(ctx context.Context) error {
	if r.filesync == nil {
		return nil
	}
	err := r.filesync.stop()
	r.filesync, r.pids.filesync = nil, 0
	if derr := r.nats.js.DeleteConsumer(ctx, "HERALD", filesyncDurable); derr != nil && err == nil {
		err = fmt.Errorf("deleting filesync's durable: %w", derr)
	}
	os.RemoveAll(r.filesDir)
	r.filesDir = ""
	return err
}

const filesyncDurable = "bench_filesync"

// parseEvent reads "<h|f> <seq> <unix ns>".
func parseEvent(line []byte) (kind byte, seq, at int64, ok bool) {
	f := strings.Fields(string(line))
	if len(f) != 3 || len(f[0]) != 1 || (f[0][0] != 'h' && f[0][0] != 'f') {
		return 0, 0, 0, false
	}
	seq, err1 := strconv.ParseInt(f[1], 10, 64)
	at, err2 := strconv.ParseInt(f[2], 10, 64)
	return f[0][0], seq, at, err1 == nil && err2 == nil
}

// benchFilesync is the hidden `herald bench filesync`: herald-filesync's
// consumer with its handler timed, in a process of its own. It prints
// "ready" once consuming, then "h SEQ NS" when the handler is called for
// change SEQ and "f SEQ NS" when it returned, NS in Unix nanoseconds.
func benchFilesync(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench filesync", "bench filesync --nats-url URL --dir DIR [--workers N]", stdout)
	natsURL := fs.String("nats-url", "", "NATS URL (required)")
	dir := fs.String("dir", "", "root directory of the files (required)")
	workers := fs.Int("workers", consumers.DefaultWorkers, "keys applied in parallel")
	table := fs.String("table", "public."+probeTable, "watched table")
	durable := fs.String("durable", filesyncDurable, "durable consumer name")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process to this file")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	if *natsURL == "" || *dir == "" {
		return usageError{"--nats-url and --dir are required"}
	}
	nc, err := nats.Connect(*natsURL, nats.Name("herald-filesync (bench)"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", *natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	syncer, err := filesync.New(filesync.Config{Table: *table, Column: "value", Dir: *dir})
	if err != nil {
		return err
	}
	defer syncer.Close()

	var mu sync.Mutex
	w := bufio.NewWriterSize(stdout, 64<<10)
	var buf []byte
	emit := func(kind byte, seq int64) {
		at := time.Now().UnixNano()
		mu.Lock()
		buf = append(buf[:0], kind, ' ')
		buf = strconv.AppendInt(buf, seq, 10)
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, at, 10)
		buf = append(buf, '\n')
		_, _ = w.Write(buf)
		mu.Unlock()
	}
	h := timedSyncer{syncer: syncer, emit: emit}
	cons, err := consumers.New(js, syncer.ConsumerConfig(consumers.Config{Durable: *durable, Workers: *workers, DeliverPolicy: consumers.DeliverNew}), h, consumers.WithGuard(syncer),
		consumers.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(untilParentGone(ctx))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cons.Run(runCtx) }()
	if err := pollUntil(runCtx, 30*time.Second, func() (bool, error) { return cons.Ready() == nil, nil }); err != nil {
		cancel()
		<-done
		return fmt.Errorf("filesync consumer not ready: %w", err)
	}
	mu.Lock()
	_, _ = w.WriteString("ready\n")
	_ = w.Flush()
	mu.Unlock()
	// Events carry their own times: flushing them in small bursts is fine.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			mu.Lock()
			_ = w.Flush()
			mu.Unlock()
			return err
		case <-tick.C:
			mu.Lock()
			_ = w.Flush()
			mu.Unlock()
		}
	}
}

// timedSyncer is filesync's handler, batches included, reporting when each
// change reached the handler ('h') and when it was applied durably ('f').
type timedSyncer struct {
	syncer *filesync.Syncer
	emit   func(kind byte, seq int64)
}

func (t timedSyncer) Handle(ctx context.Context, e *change.Envelope) error {
	return t.HandleBatch(ctx, []*change.Envelope{e})[0]
}

func (t timedSyncer) HandleBatch(ctx context.Context, batch []*change.Envelope) []error {
	seqs := make([]int64, len(batch))
	for i, e := range batch {
		seq, ok := parseSeq(e.New)
		if !ok {
			seq = -1
		}
		seqs[i] = seq
		if seq >= 0 {
			t.emit('h', seq)
		}
	}
	errs := t.syncer.HandleBatch(ctx, batch)
	for i, seq := range seqs {
		if errs[i] == nil && seq >= 0 {
			t.emit('f', seq)
		}
	}
	return errs
}

// Close stops everything the rig started, in reverse order.
func (r *probeRig) Close() {
	if r.bridge != nil {
		if kib, err := procStatus(r.bridge.pid(), "VmHWM"); err == nil {
			r.bridgeHWM = kib
		}
		_, _ = r.bridge.stopStats(nil)
		r.bridge = nil
	}
	if r.filesync != nil && r.nats != nil {
		_ = r.stopFilesync(context.Background())
	}
	if r.ordered != nil {
		r.ordered.Stop()
	}
	if r.sub != nil {
		_ = r.sub.Unsubscribe()
	}
	for _, c := range []*nats.Conn{r.subConn, r.ordConn} {
		if c != nil {
			c.Close()
		}
	}
	if r.nats != nil {
		_ = r.nats.Close()
		r.nats = nil
	}
	for _, c := range r.writers {
		c.Close(context.Background())
	}
	r.writers = nil
	if r.admin != nil {
		r.admin.Close(context.Background())
		r.admin = nil
	}
	if r.pg != nil {
		r.pg.Close()
		r.pg = nil
	}
	if r.filesDir != "" {
		os.RemoveAll(r.filesDir)
	}
}

// bridgePeakRSS is the bridge's VmHWM in KiB (read on Close once stopped).
func (r *probeRig) bridgePeakRSS() int64 {
	if r.bridge != nil {
		if kib, err := procStatus(r.bridge.pid(), "VmHWM"); err == nil {
			return kib
		}
	}
	return r.bridgeHWM
}

// phaseWindow is the sequence range of one paced phase: [lo, hi), measured
// from mlo (after the warm-up).
type phaseWindow struct{ lo, mlo, hi int64 }

// runPhase sends rate changes per second for d, open loop: change i is due
// at start + i/rate whatever happened to the ones before it, and writers
// pick changes up in order. Changes due in the first warm of the phase are
// not measured.
func (r *probeRig) runPhase(ctx context.Context, rate float64, d, warm time.Duration) (phaseWindow, error) {
	n := int64(rate * d.Seconds())
	w := phaseWindow{lo: r.nextSeq, hi: r.nextSeq + n}
	w.mlo = w.lo + min(n, int64(rate*warm.Seconds()))
	if w.hi > int64(len(r.rec.commit)) {
		return w, fmt.Errorf("internal: recorder holds %d changes, phase needs %d", len(r.rec.commit), w.hi)
	}
	r.nextSeq = w.hi
	jobs := make(chan int64, n)
	var wg sync.WaitGroup
	for _, c := range r.writers {
		wg.Add(1)
		go func(c *pgx.Conn) {
			defer wg.Done()
			for seq := range jobs {
				if ctx.Err() != nil {
					continue
				}
				key := r.keys[seq%int64(len(r.keys))]
				if _, err := c.Exec(ctx, "upd", seq, r.pad, key); err != nil {
					if r.writeErrs.Add(1) == 1 {
						r.firstErr.Store(err)
					}
					continue
				}
				r.rec.commit[seq].Store(r.rec.now())
				r.committed.Add(1)
			}
		}(c)
	}
	interval := float64(time.Second) / rate
	start := r.rec.now()
	for i := int64(0); i < n && ctx.Err() == nil; {
		now := r.rec.now()
		// Release every change that is due; sleep until the next one.
		for ; i < n; i++ {
			due := start + int64(float64(i)*interval)
			if due > now {
				time.Sleep(time.Duration(due - now))
				break
			}
			r.rec.due[w.lo+i] = due
			jobs <- w.lo + i
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return w, err
	}
	if n := r.writeErrs.Load(); n > 0 {
		return w, fmt.Errorf("%d writes failed, the first: %v", n, r.firstErr.Load())
	}
	return w, nil
}

// paths are the paths the current phase measures: without filesync, the
// bridge's two.
func (r *probeRig) paths() []probePath {
	if r.filesync == nil {
		return []probePath{pathNATS, pathStream}
	}
	return []probePath{pathNATS, pathStream, pathHandler, pathFile}
}

// arrival is when change seq reached path p: its own arrival or, when the
// stream kept only a newer change of the same key (the state preset keeps
// the last message per subject, so a consumer that lags skips versions),
// the arrival of the first newer change of that key that did arrive — the
// moment the consumer's state held seq's value or a newer one. superseded
// says which it was.
func (r *probeRig) arrival(p probePath, seq int64) (at int64, superseded bool) {
	k := int64(len(r.keys))
	for s := seq; s < r.nextSeq; s += k {
		if r.rec.commit[s].Load() == 0 {
			continue // that write failed or has not returned yet
		}
		if a := r.rec.arr[p][s].Load(); a != 0 {
			return a, s != seq
		}
	}
	return 0, false
}

// awaitArrivals waits until every committed change of w reached every path
// (itself or superseded, see arrival), or timeout; it returns how many are
// missing.
func (r *probeRig) awaitArrivals(ctx context.Context, w phaseWindow, timeout time.Duration) int {
	var cursor [numPaths]int64
	for p := range cursor {
		cursor[p] = w.lo
	}
	arrived := func(p probePath, s int64) bool {
		if r.rec.commit[s].Load() == 0 {
			return true
		}
		a, _ := r.arrival(p, s)
		return a != 0
	}
	deadline := time.Now().Add(timeout)
	for {
		missing := 0
		for _, p := range r.paths() {
			for cursor[p] < w.hi && arrived(p, cursor[p]) {
				cursor[p]++
			}
			for s := cursor[p]; s < w.hi; s++ {
				if !arrived(p, s) {
					missing++
				}
			}
		}
		if missing == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return missing
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pathStats computes each path's latency over the sequence numbers [lo, hi)
// whose commit time lies in [from, to) (0, 0: all).
func (r *probeRig) pathStats(lo, hi, from, to int64) map[string]latencyStats {
	out := map[string]latencyStats{}
	for _, p := range r.paths() {
		var ds []time.Duration
		missing, early, superseded := 0, 0, 0
		for s := lo; s < hi; s++ {
			c := r.rec.commit[s].Load()
			if c == 0 || (to > 0 && (c < from || c >= to)) {
				continue
			}
			a, sup := r.arrival(p, s)
			if sup {
				superseded++
			}
			switch {
			case a == 0:
				missing++
			case a < c:
				early++
				ds = append(ds, 0)
			default:
				ds = append(ds, time.Duration(a-c))
			}
		}
		st := summarize(ds, missing, early)
		st.Superseded = superseded
		out[probePathNames[p]] = st
	}
	return out
}

// writeStats describes the writers over [lo, hi): how late commits were
// against their due time, and the commit rate they achieved.
func (r *probeRig) writeStats(lo, hi int64) (latencyStats, float64) {
	var ds []time.Duration
	first, last := int64(0), int64(0)
	for s := lo; s < hi; s++ {
		c := r.rec.commit[s].Load()
		if c == 0 {
			continue
		}
		ds = append(ds, time.Duration(max(0, c-r.rec.due[s])))
		if first == 0 || c < first {
			first = c
		}
		last = max(last, c)
	}
	rate := 0.0
	if last > first && len(ds) > 1 {
		rate = float64(len(ds)-1) / time.Duration(last-first).Seconds()
	}
	return summarize(ds, 0, 0), rate
}

// consumerState describes filesync's durable, to explain missing changes.
func (r *probeRig) consumerState(ctx context.Context) string {
	c, err := r.nats.js.Consumer(ctx, "HERALD", "bench_filesync")
	if err != nil {
		return "filesync's durable: " + err.Error()
	}
	info, err := c.Info(ctx)
	if err != nil {
		return "filesync's durable: " + err.Error()
	}
	return fmt.Sprintf("filesync's durable: %d pending, %d waiting for an ack, %d redelivered, delivered up to stream seq %d, acked up to %d",
		info.NumPending, info.NumAckPending, info.NumRedelivered, info.Delivered.Stream, info.AckFloor.Stream)
}

func (r *probeRig) gateState(ctx context.Context) string {
	var open bool
	if err := r.admin.QueryRow(ctx, `SELECT armed_until > now() FROM herald.gate`).Scan(&open); err != nil {
		return "unknown"
	}
	if open {
		return "open (NOTIFY wakes the bridge)"
	}
	return "closed (the bridge polls)"
}

func pollUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// latencyPhase is one rate of the latency scenario.
type latencyPhase struct {
	Rate        float64                 `json:"rate_per_s"`
	Filesync    bool                    `json:"filesync"` // herald-filesync ran (own process) during the phase
	Duration    string                  `json:"duration"`
	Warmup      string                  `json:"warmup"`
	Attempt     int                     `json:"attempt"` // > 1: earlier attempts had too much CPU taken by other processes
	Measured    int                     `json:"measured_changes"`
	Achieved    float64                 `json:"achieved_commits_per_s"`
	DueToCommit latencyStats            `json:"due_to_commit"`
	Paths       map[string]latencyStats `json:"paths"`
	GateAtEnd   string                  `json:"gate_at_end"`
	CPU         cpuShares               `json:"cpu_percent_of_one_core"`
	Bridge      *bridgeStats            `json:"bridge"`
	LoadStart   [3]float64              `json:"loadavg_start"`
	LoadEnd     [3]float64              `json:"loadavg_end"`
}

type latencyReport struct {
	reportHead
	Keys          int               `json:"keys"`
	Payload       int               `json:"payload_bytes"`
	Writers       int               `json:"writers"`
	Workers       int               `json:"filesync_workers"`
	BridgeConf    bridgeTuning      `json:"bridge_config"`
	PathTitles    map[string]string `json:"path_titles"`
	Phases        []latencyPhase    `json:"phases"`
	MaxOther      float64           `json:"max_other_percent,omitempty"`
	BridgePeakMiB float64           `json:"bridge_peak_rss_mib"`
}

func pathTitles() map[string]string {
	m := map[string]string{}
	for p := range numPaths {
		m[probePathNames[p]] = probePathTitles[p]
	}
	return m
}

func benchLatency(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench latency", "bench latency [--rates 1000,5000] [--duration 30s] [--json FILE]", stdout)
	ratesFlag := fs.String("rates", "1000,5000", "changes per second, comma-separated; one phase each")
	duration := fs.Duration("duration", 30*time.Second, "length of each phase")
	warm := fs.Duration("warmup", 3*time.Second, "start of each phase not measured (the bridge's gate adapts to the rate)")
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	maxOther := fs.Float64("max-other", 0, "measure a phase again when other processes took more than this percentage of one core during it (0: never)")
	retries := fs.Int("retries", 2, "with --max-other: at most this many extra attempts per phase; the quietest is kept")
	opts := registerProbeFlags(fs, "both")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	o, err := opts()
	if err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	if *retries < 0 || *retries > 10 || *maxOther < 0 {
		return usageError{"--retries must be 0 to 10, --max-other not negative"}
	}
	rates, err := parseRates(*ratesFlag)
	if err != nil {
		return err
	}
	if *duration < time.Second || *warm < 0 || *warm >= *duration {
		return usageError{"--duration must be at least 1s and --warmup shorter than it"}
	}
	modes := map[string][]bool{"on": {true}, "off": {false}, "both": {false, true}}[o.filesync]
	total := 0
	for _, rt := range rates {
		total += (int(rt*duration.Seconds()) + 1) * len(modes)
	}
	if *maxOther > 0 {
		total *= *retries + 1
	}
	rep := latencyReport{reportHead: newReportHead("latency", args, o.sync), Keys: o.keys, Payload: o.payload, Writers: o.writers, Workers: o.workers, BridgeConf: o.tune, PathTitles: pathTitles(), MaxOther: *maxOther}
	r, err := startProbeRig(ctx, o, total, stdout)
	if err != nil {
		return err
	}
	defer r.Close()
	rep.PostgreSQL, rep.PGSettings = r.pg.version, r.pg.settings
	stopProfile, err := startCPUProfile(o.selfProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	for _, rate := range rates {
		for _, withFilesync := range modes {
			if err := r.setFilesync(ctx, withFilesync); err != nil {
				return err
			}
			ph, err := r.latencyPhase(ctx, rate, *duration, *warm, *maxOther, *retries, stdout, stderr)
			if err != nil {
				return err
			}
			rep.Phases = append(rep.Phases, ph)
		}
	}
	if err := r.setFilesync(ctx, false); err != nil {
		return err
	}
	rep.Machine.LoadEnd = loadAvg()
	r.Close()
	rep.BridgePeakMiB = mib(r.bridgePeakRSS())

	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rate\tphase\tpath\tp50 ms\tp90 ms\tp99 ms\tmax ms\tcount\tsuperseded\tmissing\t")
	for _, ph := range rep.Phases {
		for p := range numPaths {
			s, ok := ph.Paths[probePathNames[p]]
			if !ok {
				continue
			}
			fmt.Fprintf(tw, "%.0f/s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t\n", ph.Rate, phaseWhat(ph.Filesync), probePathTitles[p], s.P50, s.P90, s.P99, s.Max, s.Count, s.Superseded, s.Missing)
		}
		s := ph.DueToCommit
		fmt.Fprintf(tw, "%.0f/s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t\t\t\n", ph.Rate, phaseWhat(ph.Filesync), "writer: due → commit", s.P50, s.P90, s.P99, s.Max, s.Count)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "bridge peak RSS %.1f MiB; NATS sync_interval %s, %s storage, %d replica; load average %s → %s\n",
		rep.BridgePeakMiB, rep.NATS.SyncInterval, rep.NATS.Storage, rep.NATS.Replicas, fmtLoad(rep.Machine.LoadStart), fmtLoad(rep.Machine.LoadEnd))
	return writeBenchJSON(*jsonOut, rep, stdout)
}

// latencyPhase measures one rate, again while other processes took more
// than maxOther of a core (at most retries times), keeping the quietest.
func (r *probeRig) latencyPhase(ctx context.Context, rate float64, duration, warm time.Duration, maxOther float64, retries int, stdout, stderr io.Writer) (latencyPhase, error) {
	var ph latencyPhase
	for attempt := 1; ; attempt++ {
		fmt.Fprintf(stdout, "  %.0f changes/s for %s, %s …\n", rate, duration, phaseWhat(r.filesync != nil))
		got := latencyPhase{Rate: rate, Filesync: r.filesync != nil, Duration: duration.String(), Warmup: warm.String(), Attempt: attempt, LoadStart: loadAvg()}
		m0 := r.bridge.metrics()
		meter := startCPUMeter()
		w, err := r.runPhase(ctx, rate, duration, warm)
		meter.stop()
		if err != nil {
			return ph, err
		}
		got.CPU = meter.shares(r.pids)
		got.GateAtEnd = r.gateState(ctx)
		if missing := r.awaitArrivals(ctx, w, 60*time.Second); missing > 0 {
			fmt.Fprintf(stderr, "warning: %d changes had not arrived on every path 60s after the phase; %s\n", missing, r.consumerState(ctx))
		}
		got.LoadEnd = loadAvg()
		time.Sleep(300 * time.Millisecond) // the bridge writes its metrics every 250ms
		got.Bridge = parseBridgeStats(diffMetrics(r.bridge.metrics(), m0))
		got.Paths = r.pathStats(w.mlo, w.hi, 0, 0)
		got.DueToCommit, got.Achieved = r.writeStats(w.mlo, w.hi)
		got.Measured = got.DueToCommit.Count
		fmt.Fprintf(stdout, "    achieved %.0f commits/s; gate %s\n    cpu: %s\n    bridge: %s\n", got.Achieved, got.GateAtEnd, got.CPU, got.Bridge)
		if attempt == 1 || got.CPU.Other < ph.CPU.Other {
			ph = got
		}
		if maxOther <= 0 || got.CPU.Other <= maxOther || attempt > retries {
			break
		}
		fmt.Fprintf(stdout, "    other processes took %.0f%% of a core; measuring again\n", got.CPU.Other)
	}
	return ph, nil
}

// setFilesync starts or stops filesync for the next phase.
func (r *probeRig) setFilesync(ctx context.Context, on bool) error {
	switch {
	case on && r.filesync == nil:
		return r.startFilesync(ctx)
	case !on && r.filesync != nil:
		return r.stopFilesync(ctx)
	}
	return nil
}

func phaseWhat(withFilesync bool) string {
	if withFilesync {
		return "with filesync"
	}
	return "bridge only"
}

func parseRates(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 1 || v > 100000 {
			return nil, usageError{fmt.Sprintf("rate %q is not a number from 1 to 100000", f)}
		}
		out = append(out, v)
	}
	return out, nil
}

// sustainedSample is one point of the sustained run's time series.
type sustainedSample struct {
	T           float64 `json:"t_s"`
	Committed   int64   `json:"committed"`
	Applied     int64   `json:"applied_by_filesync"`
	BacklogRows int64   `json:"backlog_rows"`
	BacklogAge  float64 `json:"backlog_oldest_ms"`
	BridgeRSS   float64 `json:"bridge_rss_mib"`
}

// sustainedWindow is the latency of the changes committed in one window.
type sustainedWindow struct {
	T     float64                 `json:"t_s"` // window start
	Paths map[string]latencyStats `json:"paths"`
}

type sustainedReport struct {
	reportHead
	Rate          float64                 `json:"rate_per_s"`
	Filesync      bool                    `json:"filesync"`
	Duration      string                  `json:"duration"`
	Keys          int                     `json:"keys"`
	Payload       int                     `json:"payload_bytes"`
	Writers       int                     `json:"writers"`
	Workers       int                     `json:"filesync_workers"`
	BridgeConf    bridgeTuning            `json:"bridge_config"`
	Achieved      float64                 `json:"achieved_commits_per_s"`
	DueToCommit   latencyStats            `json:"due_to_commit"`
	Paths         map[string]latencyStats `json:"paths"`
	PathTitles    map[string]string       `json:"path_titles"`
	MaxBacklog    int64                   `json:"max_backlog_rows"`
	MaxBacklogAge float64                 `json:"max_backlog_oldest_ms"`
	BridgePeakMiB float64                 `json:"bridge_peak_rss_mib"`
	GateAtEnd     string                  `json:"gate_at_end"`
	CPU           cpuShares               `json:"cpu_percent_of_one_core"`
	Bridge        *bridgeStats            `json:"bridge"`
	Samples       []sustainedSample       `json:"samples"`
	Windows       []sustainedWindow       `json:"windows"`
}

func benchSustained(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench sustained", "bench sustained [--rate 2000] [--duration 10m] [--json FILE]", stdout)
	rate := fs.Float64("rate", 2000, "changes per second")
	duration := fs.Duration("duration", 10*time.Minute, "length of the run")
	sample := fs.Duration("sample", time.Second, "how often the backlog and the bridge's memory are sampled")
	window := fs.Duration("window", 10*time.Second, "latency percentiles are computed per window of commit time")
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	opts := registerProbeFlags(fs, "on")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	o, err := opts()
	if err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	if o.filesync == "both" {
		return usageError{"--filesync both is for latency; sustained runs one phase: on or off"}
	}
	if *rate < 1 || *rate > 100000 {
		return usageError{"--rate must be 1 to 100000"}
	}
	if *duration < time.Second || *sample < 10*time.Millisecond || *window < *sample {
		return usageError{"--duration must be at least 1s, --sample at least 10ms and --window at least --sample"}
	}
	rep := sustainedReport{reportHead: newReportHead("sustained", args, o.sync), Rate: *rate, Duration: duration.String(),
		Keys: o.keys, Payload: o.payload, Writers: o.writers, Workers: o.workers, BridgeConf: o.tune, PathTitles: pathTitles()}
	r, err := startProbeRig(ctx, o, int(*rate*duration.Seconds())+1, stdout)
	if err != nil {
		return err
	}
	defer r.Close()
	rep.PostgreSQL, rep.PGSettings = r.pg.version, r.pg.settings
	if err := r.setFilesync(ctx, o.filesync == "on"); err != nil {
		return err
	}
	rep.Filesync = o.filesync == "on"

	// The sampler has a connection of its own: the admin one serves the
	// main goroutine.
	sconn, err := pgx.Connect(ctx, r.pg.dsn)
	if err != nil {
		return err
	}
	defer sconn.Close(context.WithoutCancel(ctx))
	stopProfile, err := startCPUProfile(o.selfProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	fmt.Fprintf(stdout, "  %.0f changes/s for %s …\n", *rate, *duration)
	start := time.Now()
	startNs := r.rec.now()
	sctx, stopSampler := context.WithCancel(ctx)
	samplerDone := make(chan []sustainedSample, 1)
	go func() {
		var out []sustainedSample
		t := time.NewTicker(*sample)
		defer t.Stop()
		lastPrint := time.Now()
		for {
			select {
			case <-sctx.Done():
				samplerDone <- out
				return
			case <-t.C:
			}
			s := sustainedSample{T: time.Since(start).Seconds(), Committed: r.committed.Load(), Applied: r.applied.Load()}
			var age float64
			if err := sconn.QueryRow(sctx, schema.Query("backlog")).Scan(&s.BacklogRows, &age); err == nil {
				s.BacklogAge = max(0, age*1000) // now() is the statement's start: a row logged just after it looks younger than zero
			}
			if kib, err := procStatus(r.pids.bridge, "VmRSS"); err == nil {
				s.BridgeRSS = mib(kib)
			}
			out = append(out, s)
			if time.Since(lastPrint) >= 30*time.Second {
				lastPrint = time.Now()
				fmt.Fprintf(stdout, "    %4.0fs  committed %d  backlog %d rows, oldest %.1f ms  bridge RSS %.1f MiB\n", s.T, s.Committed, s.BacklogRows, s.BacklogAge, s.BridgeRSS)
			}
		}
	}()
	meter := startCPUMeter()
	w, err := r.runPhase(ctx, *rate, *duration, 0)
	meter.stop()
	if err != nil {
		stopSampler()
		<-samplerDone
		return err
	}
	rep.CPU = meter.shares(r.pids)
	rep.GateAtEnd = r.gateState(ctx)
	missing := r.awaitArrivals(ctx, w, 60*time.Second)
	rep.Bridge = parseBridgeStats(r.bridge.metrics())
	stopSampler()
	rep.Samples = <-samplerDone
	if missing > 0 {
		fmt.Fprintf(stderr, "warning: %d changes had not arrived on every path 60s after the run; %s\n", missing, r.consumerState(ctx))
	}
	rep.Machine.LoadEnd = loadAvg()
	rep.Paths = r.pathStats(w.lo, w.hi, 0, 0)
	rep.DueToCommit, rep.Achieved = r.writeStats(w.lo, w.hi)
	for t := startNs; t < startNs+int64(*duration); t += int64(*window) {
		rep.Windows = append(rep.Windows, sustainedWindow{T: time.Duration(t - startNs).Seconds(), Paths: r.pathStats(w.lo, w.hi, t, t+int64(*window))})
	}
	for _, s := range rep.Samples {
		rep.MaxBacklog = max(rep.MaxBacklog, s.BacklogRows)
		rep.MaxBacklogAge = max(rep.MaxBacklogAge, s.BacklogAge)
	}
	r.Close()
	rep.BridgePeakMiB = mib(r.bridgePeakRSS())

	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tp50 ms\tp90 ms\tp99 ms\tmax ms\tcount\tsuperseded\tmissing\t")
	for p := range numPaths {
		s, ok := rep.Paths[probePathNames[p]]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t\n", probePathTitles[p], s.P50, s.P90, s.P99, s.Max, s.Count, s.Superseded, s.Missing)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "achieved %.0f commits/s; backlog at most %d rows, oldest at most %.1f ms; bridge peak RSS %.1f MiB; gate %s\nbridge: %s\ncpu: %s\nNATS sync_interval %s, %s storage, %d replica; load average %s → %s\n",
		rep.Achieved, rep.MaxBacklog, rep.MaxBacklogAge, rep.BridgePeakMiB, rep.GateAtEnd, rep.Bridge, rep.CPU,
		rep.NATS.SyncInterval, rep.NATS.Storage, rep.NATS.Replicas, fmtLoad(rep.Machine.LoadStart), fmtLoad(rep.Machine.LoadEnd))
	return writeBenchJSON(*jsonOut, rep, stdout)
}
