package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/schema"
)

// logRow is one row of herald.log as the drain query returns it.
type logRow struct {
	id     int64
	txid   int64
	at     time.Time
	schema string
	table  string
	op     string
	key    []string
	old    []byte
	new    []byte
	size   int64
}

// outMsg is one change on its way to JetStream.
type outMsg struct {
	id      int64
	msg     *nats.Msg
	version change.Version
	op      change.Op
	schema  string
	table   string
}

// drainer runs the leader's loop on its dedicated connection.
type drainer struct {
	b      *Bridge
	cfg    Config
	conn   *pgx.Conn
	log    *slog.Logger
	m      *metrics
	source string
	epoch  int64

	gate        *rateGate
	gateOpen    bool
	nextQueue   time.Time // when to look again for writers queued on NOTIFY's lock
	queue       queueWatch
	renewAt     time.Time
	recheck     []string // transactions that may have read the gate closed
	nextRecheck time.Time
	nextSafety  time.Time
	nextStats   time.Time

	toDelete   []int64 // acknowledged, deleted with the next read
	recovering bool    // a publish outcome is unknown: check stored versions first
	// recoverThrough is the highest log id when this leader took over, and
	// recoverRows how many more rows up to it are checked against the
	// stream before publishing. A previous leader may have left several
	// batches published and not deleted (one being read, the rest in
	// flight or acknowledged): at most (InFlight+1) x BatchSize rows, all
	// with ids up to recoverThrough. Every stored change found in them
	// extends the check, so a previous leader configured for more in the
	// air is still covered.
	recoverThrough int64
	recoverRows    int
	flights        []*flight // batches being published while the next is read
	// read holds the transactions whose changes a read has returned, in two
	// generations (the older one is dropped when the newer fills up): a
	// notification from one of them needs no read of its own.
	read, readBefore map[int64]struct{}
	backlogged       bool // the last read was a full batch
	lastRead         time.Time
	maxPayload       int64
	stream           jetstream.Stream
}

func newDrainer(b *Bridge, conn *pgx.Conn, source string, epoch int64) *drainer {
	return &drainer{
		b: b, cfg: b.cfg, conn: conn, log: b.log, m: b.m, source: source, epoch: epoch,
		gate: newRateGate(b.cfg.CloseRate, b.cfg.OpenRate, b.cfg.ReopenAfter),
	}
}

// takeOver notes the highest log id: the previous leader, if any, may have
// published changes up to it without deleting them.
func (d *drainer) takeOver(ctx context.Context) error {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	if err := d.conn.QueryRow(cctx, schema.Query("log_max_id")).Scan(&d.recoverThrough); err != nil {
		return fmt.Errorf("reading the change log: %w", err)
	}
	d.recoverRows = d.takeoverWindow()
	return nil
}

// takeoverWindow is how many rows a leader can leave published and not
// deleted: the batch it is reading and those in flight.
func (d *drainer) takeoverWindow() int {
	return (d.cfg.InFlight + 1) * d.cfg.BatchSize
}

// settleAfter is how soon after going idle the bridge reads once more, to
// settle the flights that landed since its last read and delete what they
// got acknowledged (under load, every read does that on the way).
const settleAfter = 20 * time.Millisecond

// pgTimeout bounds each of the bridge's queries.
const pgTimeout = 30 * time.Second

// opCtx detaches an operation from ctx's cancellation, so that shutting
// down finishes the query or publish in flight rather than abandoning it
// half way; the operation still has its own deadline.
func opCtx(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

func (d *drainer) run(ctx context.Context) (err error) {
	d.maxPayload = d.b.nc.MaxPayload()
	s, err := d.b.js.Stream(ctx, d.cfg.Stream)
	if err != nil {
		return fmt.Errorf("opening stream %s: %w", d.cfg.Stream, err)
	}
	d.stream = s
	if err := d.takeOver(ctx); err != nil {
		return err
	}
	defer func() {
		if ferr := d.shutdown(ctx); ferr != nil && err == nil && ctx.Err() == nil {
			err = ferr
		}
	}()

	now := time.Now()
	d.gate.assumeLow(now) // open the gate right after the first drain if it is quiet
	d.nextSafety = now.Add(d.cfg.PollInterval)
	d.nextStats = now
	wake, reason := true, "start"
	for {
		if ctx.Err() != nil {
			return nil
		}
		now = time.Now()
		if wake {
			d.m.wakeups.WithLabelValues(reason).Inc()
			n, err := d.drainOnce(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			now = time.Now()
			d.gate.observe(now, n)
			d.nextSafety = now.Add(d.cfg.PollInterval)
			wake, reason = n > 0, "more"
		}
		if err := d.steerGate(ctx, now); err != nil {
			return err
		}
		if now.After(d.nextStats) { // also under sustained load, when the backlog matters most
			d.refreshStats(ctx)
			d.nextStats = now.Add(d.cfg.StatsInterval)
		}
		// Read again at once only with a backlog. With the gate open, every
		// change committed since the last read notifies; polling, the next
		// read waits for changes to gather (PollGather).
		if wake && (d.backlogged || (!d.gateOpen && d.cfg.PollGather < 0)) {
			continue
		}
		wake, reason, err = d.wait(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// wait sleeps on the connection until a notification or the next timer.
func (d *drainer) wait(ctx context.Context) (bool, string, error) {
	now := time.Now()
	deadline := d.nextSafety
	if !d.gateOpen {
		// Polling: pause briefly after an empty drain, and let changes
		// gather for a while after the last read.
		deadline = minTime(deadline, maxTime(now.Add(d.cfg.PollPause), d.lastRead.Add(d.cfg.PollGather)))
	} else {
		deadline = minTime(deadline, d.renewAt)
		if d.watchQueue(now) {
			deadline = minTime(deadline, d.nextQueue)
		}
	}
	if d.recheck != nil {
		deadline = minTime(deadline, d.nextRecheck)
	}
	deadline = minTime(deadline, d.nextStats)
	settle := len(d.flights) > 0 || len(d.toDelete) > 0
	if settle {
		// Flights land, and acknowledged ids are deleted, with the next
		// read; when no change comes to prompt one, this timer does.
		deadline = minTime(deadline, now.Add(settleAfter))
	}
	for {
		n, timedOut, err := d.sleep(ctx, deadline)
		switch {
		case ctx.Err() != nil:
			return false, "", ctx.Err()
		case err != nil && !timedOut:
			return false, "", fmt.Errorf("waiting for notifications: %w", err)
		case err == nil && d.gateOpen:
			if !d.covered(n) {
				return true, "notify", nil
			}
			// Its transaction was read already (under load, most
			// notifications arrive after the read that returned their
			// changes): no read of its own.
			d.m.covered.Inc()
		}
		// Polling, a notification (sent by a writer that read the gate
		// before it closed, or queued since) needs no read of its own
		// either: the read at the deadline covers it.
		if err != nil || !time.Now().Before(deadline) {
			break
		}
	}
	now = time.Now()
	if d.recheck != nil && !now.Before(d.nextRecheck) {
		left, err := d.writersLeft(ctx)
		if err != nil {
			return false, "", err
		}
		if left == 0 {
			// Every transaction that may have read the gate closed has
			// ended: what they wrote is visible now.
			d.recheck = nil
			return true, "recheck", nil
		}
		d.nextRecheck = now.Add(d.cfg.RecheckInterval)
	}
	if !now.Before(d.nextSafety) {
		return true, "safety", nil
	}
	if !d.gateOpen {
		return true, "poll", nil
	}
	if settle {
		return true, "settle", nil
	}
	return false, "", nil
}

// sleep waits on the connection for a notification until deadline;
// timedOut is true when the deadline ended it.
func (d *drainer) sleep(ctx context.Context, deadline time.Time) (n *pgconn.Notification, timedOut bool, err error) {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	n, err = d.conn.WaitForNotification(wctx)
	return n, wctx.Err() != nil, err
}

// readGeneration is how many transactions each generation of d.read holds
// before the older one is dropped: at least the last 4,096 transactions
// read are remembered, far more than the notifications queued at any time.
const readGeneration = 4096

// noteRead remembers the transactions whose changes rows holds.
func (d *drainer) noteRead(rows []logRow) {
	for _, r := range rows {
		if d.read == nil || len(d.read) >= readGeneration {
			d.read, d.readBefore = make(map[int64]struct{}, readGeneration), d.read
		}
		d.read[r.txid] = struct{}{}
	}
}

// covered says whether a notification's transaction was read completely
// already. The capture triggers notify with their transaction's id. A
// transaction notifies when it commits, so a read that returned any of its
// changes saw all of them; the reads that returned fewer than a full batch
// (the loop reads again at once after a full one, and waits only after one
// that was not full) returned every visible change not already read. Any
// other payload (an older trigger's empty one, a manual NOTIFY) is not
// covered.
func (d *drainer) covered(n *pgconn.Notification) bool {
	if n == nil || d.backlogged {
		return false
	}
	txid, err := strconv.ParseInt(n.Payload, 10, 64)
	if err != nil {
		return false
	}
	if _, ok := d.read[txid]; ok {
		return true
	}
	_, ok := d.readBefore[txid]
	return ok
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Queue checks: while the gate is open and changes arrive at
// queueCheckFrom per second or more, the bridge looks every queueCheckEvery
// for writers waiting on NOTIFY's commit lock, and closes the gate when
// every look for Config.QueueFor found Config.QueueWaiters or more. The rate
// alone cannot tell: writers that queue on the lock commit no faster than
// it lets them, which on a slow machine stays below any close rate worth
// having (measured: offered 5,000/s, committed 2,000-3,500/s, the gate
// open for seconds).
const (
	queueCheckFrom  = 200.0
	queueCheckEvery = 50 * time.Millisecond
)

// queueWatch remembers the looks in a row that found writers queued.
type queueWatch struct {
	since time.Time // the first of them; zero: none
	looks int
}

// look records one look at now and says whether writers have been queued
// long enough to close the gate: every look for at least queueFor, and at
// least one look per queueCheckEvery of it besides the first, so that a
// look delayed by a busy loop cannot stand in for the ones it missed.
func (q *queueWatch) look(now time.Time, queued bool, queueFor time.Duration) bool {
	if !queued {
		q.reset()
		return false
	}
	if q.looks == 0 {
		q.since = now
	}
	q.looks++
	need := 1 + int((queueFor+queueCheckEvery-1)/queueCheckEvery)
	return q.looks >= need && now.Sub(q.since) >= queueFor
}

func (q *queueWatch) reset() { *q = queueWatch{} }

// watchQueue says whether the queue checks run now.
func (d *drainer) watchQueue(now time.Time) bool {
	return d.cfg.QueueWaiters > 0 && d.gateOpen && d.gate.rate(now) >= queueCheckFrom
}

// steerGate opens, closes or renews the gate as the change rate asks, and
// closes it when writers queue on NOTIFY's lock.
func (d *drainer) steerGate(ctx context.Context, now time.Time) error {
	want := d.gate.wantOpen(now, d.gateOpen)
	switch {
	case want && !d.gateOpen:
		return d.openGate(ctx)
	case !want && d.gateOpen:
		return d.closeGate(ctx, "rate")
	}
	if !d.watchQueue(now) {
		d.queue.reset()
	} else if !now.Before(d.nextQueue) {
		d.nextQueue = now.Add(queueCheckEvery)
		n, err := d.writersQueued(ctx)
		if err != nil {
			return err
		}
		if d.queue.look(now, n >= d.cfg.QueueWaiters, d.cfg.QueueFor) {
			d.gate.queued()
			return d.closeGate(ctx, "queue")
		}
	}
	if d.gateOpen && !now.Before(d.renewAt) {
		return d.renewGate(ctx)
	}
	return nil
}

func (d *drainer) writersQueued(ctx context.Context) (int, error) {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	var n int
	if err := d.conn.QueryRow(cctx, schema.Query("gate_queue")).Scan(&n); err != nil {
		return 0, fmt.Errorf("looking for writers queued on NOTIFY: %w", err)
	}
	return n, nil
}

func (d *drainer) renewGate(ctx context.Context) error {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	if _, err := d.conn.Exec(cctx, schema.Query("gate_open"), d.cfg.GateLease); err != nil {
		return fmt.Errorf("renewing the gate: %w", err)
	}
	d.renewAt = time.Now().Add(d.cfg.GateLease / 3)
	return nil
}

func (d *drainer) openGate(ctx context.Context) error {
	if h := d.cfg.Hooks; h != nil && h.BeforeGateOpen != nil {
		h.BeforeGateOpen()
	}
	if err := d.renewGate(ctx); err != nil {
		return err
	}
	// Writers that read the gate closed before it opened will not notify.
	// They hold RowExclusiveLock on the log table until they end; drain once
	// more when every one of them has ended. Checked on a timer while
	// waiting for notifications, never in a blocking loop.
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	var vxids []string
	if err := d.conn.QueryRow(cctx, schema.Query("gate_writers")).Scan(&vxids); err != nil {
		return fmt.Errorf("listing writers after opening the gate: %w", err)
	}
	if h := d.cfg.Hooks; h != nil && h.AfterGateOpen != nil {
		h.AfterGateOpen()
	}
	d.gateOpen = true
	d.m.gateOpen.Set(1)
	if len(vxids) > 0 {
		d.recheck = vxids
		d.nextRecheck = time.Now().Add(d.cfg.RecheckInterval)
	} else {
		d.recheck = nil
	}
	d.log.Debug("gate opened", "writers_in_flight", len(vxids))
	return nil
}

// closeGate closes the gate; why is "rate", "queue" or "nats" (publishing
// failed).
func (d *drainer) closeGate(ctx context.Context, why string) error {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	if _, err := d.conn.Exec(cctx, schema.Query("gate_close")); err != nil {
		return fmt.Errorf("closing the gate: %w", err)
	}
	d.gateOpen = false
	d.recheck = nil
	d.queue.reset()
	d.m.gateOpen.Set(0)
	d.m.gateCloses.WithLabelValues(why).Inc()
	d.log.Debug("gate closed; polling", "why", why)
	return nil
}

func (d *drainer) writersLeft(ctx context.Context) (int, error) {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	var n int
	if err := d.conn.QueryRow(cctx, schema.Query("gate_writers_left"), d.recheck).Scan(&n); err != nil {
		return 0, fmt.Errorf("checking writers after opening the gate: %w", err)
	}
	return n, nil
}

func (d *drainer) refreshStats(ctx context.Context) {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	var rows int64
	var age float64
	if err := d.conn.QueryRow(cctx, schema.Query("backlog")).Scan(&rows, &age); err != nil {
		d.log.Warn("reading backlog", "err", err)
		return
	}
	d.m.backlogRows.Set(float64(rows))
	d.m.oldestSeconds.Set(age)
}

// shutdown deletes what was acknowledged and closes the gate, so writers
// stop paying for NOTIFY at once rather than when the lease runs out.
func (d *drainer) shutdown(ctx context.Context) error {
	// Flights have their own deadlines: wait for them, so what they got
	// acknowledged is deleted now rather than checked by the next leader.
	for _, f := range d.flights {
		<-f.done
		d.settle(f.acked)
	}
	d.flights = nil
	cctx, cancel := opCtx(ctx, 5*time.Second)
	defer cancel()
	if len(d.toDelete) > 0 {
		if _, err := d.conn.Exec(cctx, schema.Query("drain_delete"), d.toDelete); err != nil {
			return fmt.Errorf("deleting published changes: %w", err)
		}
		d.toDelete = nil
	}
	if d.gateOpen {
		if _, err := d.conn.Exec(cctx, schema.Query("gate_close")); err != nil {
			return err
		}
		d.gateOpen = false
		d.m.gateOpen.Set(0)
	}
	return nil
}

// drainOnce deletes the acknowledged ids and reads the next batch in one
// round trip, then publishes it; it returns how many changes it read.
//
// Reads overlap publishing: a batch is handed to a flight, published in the
// background, while the loop reads the next one. Flights in the air never
// share a subject, so a failed one can never let a later change of its key
// be stored first; a batch that shares a subject with one in flight, holds
// a truncate, or is read while recovering waits for every flight to land.
func (d *drainer) drainOnce(ctx context.Context) (int, error) {
	// Polling without a backlog, the next read waits for the batch in the
	// air: read right after a launch, it would hold only what arrived in a
	// fraction of a millisecond, and batch after batch would shrink to a few
	// changes, each costing the server as much as a large one.
	wait := !d.gateOpen && !d.backlogged
	if err := d.reap(ctx, wait); err != nil {
		return 0, err
	}
	if h := d.cfg.Hooks; h != nil && h.BeforeRead != nil {
		h.BeforeRead()
	}
	d.lastRead = time.Now()
	rows, err := d.fetch(ctx)
	if err != nil {
		return 0, err
	}
	d.backlogged = len(rows) == d.cfg.BatchSize
	d.noteRead(rows)
	if len(rows) == 0 {
		return 0, nil
	}
	d.m.batchSize.Observe(float64(len(rows)))
	msgs, err := d.build(rows)
	if err != nil {
		return 0, err
	}
	if d.recoverRows > 0 && rows[0].id <= d.recoverThrough {
		d.recovering = true // a previous leader may have published these
		d.recoverRows -= len(rows)
	}
	if !d.canFly(msgs) {
		if err := d.reap(ctx, true); err != nil {
			return 0, err
		}
	}
	if d.recovering {
		if err := d.publishWithRetry(ctx, msgs); err != nil {
			return 0, err
		}
		return len(rows), nil
	}
	d.launch(ctx, msgs)
	return len(rows), nil
}

// flight is a batch being published in the background.
type flight struct {
	msgs     []outMsg
	subjects map[string]struct{}
	done     chan struct{}
	// Set before done is closed.
	acked []outMsg
	left  []outMsg
	err   error
}

// inFlightLimit is how many batches may be in the air at once. With the
// gate open the rate is low and a change should not wait for an earlier
// one's ack; while polling, batches go one after another (with a backlog,
// the next is read meanwhile), so they stay large and the server's
// per-batch work small.
func (d *drainer) inFlightLimit() int {
	if d.gateOpen {
		return d.cfg.InFlight
	}
	return 1
}

// canFly reports whether msgs may be published while the current flights
// are in the air.
func (d *drainer) canFly(msgs []outMsg) bool {
	if len(d.flights) == 0 {
		return true
	}
	if d.recovering || len(d.flights) >= d.inFlightLimit() {
		return false
	}
	for _, m := range msgs {
		if m.op == change.OpTruncate {
			return false // its purge must follow everything older
		}
		for _, f := range d.flights {
			if _, ok := f.subjects[m.msg.Subject]; ok {
				return false
			}
		}
	}
	return true
}

// launch publishes msgs in the background. The flight touches NATS only;
// what it acknowledged is settled by reap, on the drain loop.
func (d *drainer) launch(ctx context.Context, msgs []outMsg) {
	f := &flight{msgs: msgs, subjects: make(map[string]struct{}, len(msgs)), done: make(chan struct{})}
	for _, m := range msgs {
		f.subjects[m.msg.Subject] = struct{}{}
	}
	d.flights = append(d.flights, f)
	d.m.inFlight.Set(float64(len(d.flights)))
	go func() {
		if h := d.cfg.Hooks; h != nil && h.BeforeFlight != nil {
			ids := make([]int64, len(msgs))
			for i, m := range msgs {
				ids[i] = m.id
			}
			h.BeforeFlight(ids)
		}
		var s sink
		f.left, f.err = d.publish(ctx, msgs, &s)
		f.acked = s.msgs
		close(f.done)
	}()
}

// reap settles the flights that have landed (all of them, waiting, when
// all is set): acknowledged ids go to toDelete. If one failed, it waits for
// the rest, then publishes what was not acknowledged again, in recovery.
func (d *drainer) reap(ctx context.Context, all bool) error {
	for _, f := range d.flights {
		if landed(f) && f.err != nil {
			all = true
		}
	}
	var left []outMsg
	var firstErr error
	keep := d.flights[:0]
	for _, f := range d.flights {
		if all {
			<-f.done
		} else if !landed(f) {
			keep = append(keep, f)
			continue
		}
		d.settle(f.acked)
		if f.err != nil {
			left = append(left, f.left...)
			if firstErr == nil {
				firstErr = f.err
			}
		}
	}
	clear(d.flights[len(keep):])
	d.flights = keep
	d.m.inFlight.Set(float64(len(d.flights)))
	if firstErr == nil {
		return nil
	}
	d.m.publishErrors.Inc()
	d.log.Warn("publishing failed; nothing deleted, retrying", "err", firstErr, "pending", len(left))
	d.recovering = true // the outcome of what was in flight is unknown
	return d.publishWithRetry(ctx, left)
}

func landed(f *flight) bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// sink collects what a publish got acknowledged.
type sink struct{ msgs []outMsg }

func (s *sink) add(ms ...outMsg) { s.msgs = append(s.msgs, ms...) }

// settle marks acknowledged messages for deletion with the next read.
func (d *drainer) settle(ms []outMsg) {
	for _, m := range ms {
		d.toDelete = append(d.toDelete, m.id)
	}
	d.m.published.Add(float64(len(ms)))
}

func (d *drainer) fetch(ctx context.Context) ([]logRow, error) {
	cctx, cancel := opCtx(ctx, pgTimeout)
	defer cancel()
	batch := &pgx.Batch{}
	if len(d.toDelete) > 0 {
		batch.Queue(schema.Query("drain_delete"), d.toDelete)
	}
	limit := d.maxPayload - envelopeOverhead
	var flying []int64
	for _, f := range d.flights {
		for _, m := range f.msgs {
			flying = append(flying, m.id)
		}
	}
	batch.Queue(schema.Query("drain_fetch"), d.cfg.BatchSize, limit, idRanges(flying))
	res := d.conn.SendBatch(cctx, batch)
	if len(d.toDelete) > 0 {
		if _, err := res.Exec(); err != nil {
			res.Close()
			return nil, fmt.Errorf("deleting published changes: %w", err)
		}
	}
	rs, err := res.Query()
	if err != nil {
		res.Close()
		return nil, fmt.Errorf("reading the change log: %w", err)
	}
	var out []logRow
	for rs.Next() {
		var r logRow
		if err := rs.Scan(&r.id, &r.txid, &r.at, &r.schema, &r.table, &r.op, &r.key, &r.old, &r.new, &r.size); err != nil {
			rs.Close()
			res.Close()
			return nil, fmt.Errorf("reading the change log: %w", err)
		}
		out = append(out, r)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		res.Close()
		return nil, fmt.Errorf("reading the change log: %w", err)
	}
	if err := res.Close(); err != nil {
		return nil, fmt.Errorf("reading the change log: %w", err)
	}
	d.toDelete = d.toDelete[:0]
	return out, nil
}

// idRanges renders ids as an int8multirange literal, one range per run of
// consecutive ids: "{[3,6),[9,10)}".
func idRanges(ids []int64) string {
	if len(ids) == 0 {
		return "{}"
	}
	ids = slices.Clone(ids)
	slices.Sort(ids)
	var b strings.Builder
	b.WriteByte('{')
	start := ids[0]
	for i := 1; i <= len(ids); i++ {
		if i < len(ids) && ids[i] <= ids[i-1]+1 {
			continue
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "[%d,%d)", start, ids[i-1]+1)
		if i < len(ids) {
			start = ids[i]
		}
	}
	b.WriteByte('}')
	return b.String()
}

// markerUnencodable is the marker reason for a change that cannot be put
// into a valid envelope.
const markerUnencodable = "unencodable"

// envelopeOverhead is room left in a message for the envelope's fields and
// the headers besides old and new.
const envelopeOverhead = 2048

// build turns log rows into messages; a change too large for the server's
// max payload becomes a marker.
func (d *drainer) build(rows []logRow) ([]outMsg, error) {
	out := make([]outMsg, 0, len(rows))
	for _, r := range rows {
		e := &change.Envelope{
			V: change.EnvelopeVersion, Source: d.source, Epoch: d.epoch, ID: r.id, TxID: r.txid,
			At: r.at.UTC(), Schema: r.schema, Table: r.table, Op: change.Op(r.op), Key: r.key,
			Old: r.old, New: r.new,
		}
		tooLarge := r.size > d.maxPayload-envelopeOverhead
		if !tooLarge && e.Op == change.OpUpdate {
			changed, err := change.Changed(r.old, r.new)
			if err != nil {
				return nil, fmt.Errorf("log row %d: %w", r.id, err)
			}
			e.Changed = changed
		}
		var msg *nats.Msg
		var err error
		reason := ""
		if !tooLarge {
			msg, err = change.NewMsg(d.cfg.Prefix, e)
			switch {
			case err != nil:
				// A change no consumer could decode (invalid UTF-8 in a
				// SQL_ASCII database, say) must not block the log: it goes
				// out as a marker, which consumers dead-letter.
				reason = markerUnencodable
				d.log.Error("change cannot be encoded; publishing a marker", "id", r.id, "table", r.schema+"."+r.table, "err", err)
			case int64(len(msg.Data)+headerSize(msg.Header)) > d.maxPayload:
				reason = change.MarkerTooLarge
			}
		} else {
			reason = change.MarkerTooLarge
		}
		if reason != "" {
			e.Old, e.New, e.Changed = nil, nil, nil
			e.Marker = &change.Marker{Reason: reason, Size: r.size, Limit: d.maxPayload}
			e.Schema, e.Table = strings.ToValidUTF8(e.Schema, "\uFFFD"), strings.ToValidUTF8(e.Table, "\uFFFD")
			for i, k := range e.Key {
				e.Key[i] = strings.ToValidUTF8(k, "\uFFFD")
			}
			if msg, err = change.NewMsg(d.cfg.Prefix, e); err != nil {
				return nil, fmt.Errorf("log row %d: even its marker cannot be encoded: %w", r.id, err)
			}
			d.m.markers.Inc()
			if reason == change.MarkerTooLarge {
				d.log.Warn("change too large for a message; publishing a marker", "id", r.id, "table", r.schema+"."+r.table, "size", r.size, "max_payload", d.maxPayload)
			}
		}
		if e.Op == change.OpDelete && d.cfg.Preset == PresetState {
			// Deleted keys leave a state stream once consumers had time to
			// see the delete.
			msg.Header.Set(jetstream.MsgTTLHeader, d.cfg.DeleteTTL.String())
		}
		out = append(out, outMsg{id: r.id, msg: msg, version: e.Version(), op: e.Op, schema: r.schema, table: r.table})
	}
	return out, nil
}

func headerSize(h nats.Header) int {
	n := 12 // NATS/1.0\r\n ... \r\n
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// publishWithRetry publishes msgs until every one is acknowledged (their
// ids then wait in toDelete) or ctx ends. Failed attempts are retried with
// backoff; nothing unacknowledged is ever deleted.
func (d *drainer) publishWithRetry(ctx context.Context, msgs []outMsg) error {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	pending := msgs
	for attempt := 0; ; attempt++ {
		var err error
		if d.recovering {
			pending, err = d.skipStored(ctx, pending)
		}
		if err == nil {
			var s sink
			pending, err = d.publish(ctx, pending, &s)
			d.settle(s.msgs)
		}
		if err == nil {
			if attempt > 0 {
				d.log.Info("publishing again", "after_attempts", attempt+1)
			}
			d.recovering = false
			return nil
		}
		d.m.publishErrors.Inc()
		// The outcome of what was in flight is unknown: before publishing it
		// again, look at what each subject holds.
		d.recovering = true
		if d.gateOpen {
			// Nobody needs waking while NATS is away.
			if gerr := d.closeGate(ctx, "nats"); gerr != nil {
				return gerr
			}
		}
		wait := bo.NextBackOff()
		d.log.Warn("publishing failed; nothing deleted, retrying", "err", err, "pending", len(pending), "in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// publish sends msgs in order and returns those not acknowledged, in
// order. Truncates go alone, followed by a purge of the table's older
// messages.
func (d *drainer) publish(ctx context.Context, msgs []outMsg, s *sink) ([]outMsg, error) {
	for len(msgs) > 0 {
		n := len(msgs)
		for i, m := range msgs {
			if m.op == change.OpTruncate {
				n = max(i, 1)
				break
			}
		}
		seg := msgs[:n]
		var left []outMsg
		var err error
		switch {
		case seg[0].op == change.OpTruncate:
			if err = d.publishTruncate(ctx, seg[0], s); err != nil {
				left = seg
			}
		case len(seg) <= d.cfg.SmallBatch:
			left, err = d.publishAsync(seg, s)
		default:
			left, err = d.publishAtomic(ctx, seg, s)
		}
		if err != nil {
			rest := make([]outMsg, 0, len(left)+len(msgs)-n)
			rest = append(rest, left...)
			return append(rest, msgs[n:]...), err
		}
		msgs = msgs[n:]
	}
	return nil, nil
}

// publishAsync publishes in waves with at most one unacknowledged message
// per subject, so a failed publish never lets a later change of its key be
// stored first. It returns the messages not acknowledged, in order.
func (d *drainer) publishAsync(msgs []outMsg, s *sink) ([]outMsg, error) {
	for len(msgs) > 0 {
		seen := map[string]bool{}
		wave := msgs
		for i, m := range msgs {
			if seen[m.msg.Subject] {
				wave = msgs[:i]
				break
			}
			seen[m.msg.Subject] = true
		}
		start := time.Now()
		futures := make([]jetstream.PubAckFuture, 0, len(wave))
		var err error
		for _, m := range wave {
			f, perr := d.b.js.PublishMsgAsync(cleanMsg(m.msg))
			if perr != nil {
				err = perr
				break
			}
			futures = append(futures, f)
		}
		timer := time.NewTimer(d.cfg.PublishTimeout)
	wait:
		for _, f := range futures {
			select {
			case <-f.Ok():
			case ferr := <-f.Err():
				if err == nil {
					err = ferr
				}
			case <-timer.C:
				if err == nil {
					err = fmt.Errorf("no acknowledgement within %s", d.cfg.PublishTimeout)
				}
				break wait
			}
		}
		timer.Stop()
		d.m.publishSeconds.WithLabelValues("async").Observe(time.Since(start).Seconds())
		d.m.batches.WithLabelValues("async").Inc()
		if err == nil {
			s.add(wave...)
			msgs = msgs[len(wave):]
			continue
		}
		// Acknowledged messages are safe to delete even though another one
		// failed: each subject had at most one message in flight.
		var left []outMsg
		for i, m := range wave {
			ok := false
			if i < len(futures) {
				select {
				case <-futures[i].Ok():
					ok = true
				default:
				}
			}
			if ok {
				s.add(m)
			} else {
				left = append(left, m)
			}
		}
		left = append(left, msgs[len(wave):]...)
		return left, fmt.Errorf("async publish: %w", err)
	}
	return nil, nil
}

// publishAtomic publishes msgs as one atomic batch: stored whole or not at
// all, one fsync for all. A batch holding a message id already in the
// duplicate window (a crash between ack and delete) is rejected whole; it
// is then published message by message, deduplicated, in order.
func (d *drainer) publishAtomic(ctx context.Context, seg []outMsg, s *sink) ([]outMsg, error) {
	for len(seg) > 0 {
		n := min(len(seg), maxAtomicBatch)
		chunk := seg[:n]
		raw := make([]*nats.Msg, n)
		for i, m := range chunk {
			raw[i] = cleanMsg(m.msg)
		}
		cctx, cancel := opCtx(ctx, d.cfg.PublishTimeout)
		start := time.Now()
		_, err := jetstreamext.PublishMsgBatch(cctx, d.b.js, raw, jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: d.cfg.PublishTimeout})
		cancel()
		if err != nil && apiErrorCode(err) == jetstreamext.JSErrCodeBatchPublishDuplicateMsgID {
			d.log.Info("batch holds an already stored change; publishing it message by message", "size", n)
			for i, m := range chunk {
				if err := d.publishOne(ctx, m, "single", s); err != nil {
					return seg[i:], err
				}
			}
		} else if err != nil {
			return seg, fmt.Errorf("atomic batch of %d: %w", n, err)
		} else {
			d.m.publishSeconds.WithLabelValues("atomic").Observe(time.Since(start).Seconds())
			d.m.batches.WithLabelValues("atomic").Inc()
			s.add(chunk...)
		}
		seg = seg[n:]
	}
	return nil, nil
}

// publishOne publishes one message and waits for its acknowledgement.
func (d *drainer) publishOne(ctx context.Context, m outMsg, kind string, s *sink) error {
	cctx, cancel := opCtx(ctx, d.cfg.PublishTimeout)
	defer cancel()
	start := time.Now()
	if _, err := d.b.js.PublishMsg(cctx, cleanMsg(m.msg)); err != nil {
		return fmt.Errorf("publishing change %d: %w", m.id, err)
	}
	d.m.publishSeconds.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	d.m.batches.WithLabelValues(kind).Inc()
	s.add(m)
	return nil
}

// publishTruncate publishes a TRUNCATE and then purges the table's older
// messages, so a consumer bootstrapping later does not bring truncated rows
// back.
func (d *drainer) publishTruncate(ctx context.Context, m outMsg, s *sink) error {
	cctx, cancel := opCtx(ctx, d.cfg.PublishTimeout)
	defer cancel()
	ack, err := d.b.js.PublishMsg(cctx, cleanMsg(m.msg))
	if err != nil {
		return fmt.Errorf("publishing truncate %d: %w", m.id, err)
	}
	if err := d.purgeBefore(cctx, m, ack.Sequence); err != nil {
		return err
	}
	d.m.batches.WithLabelValues("single").Inc()
	s.add(m)
	return nil
}

func (d *drainer) purgeBefore(ctx context.Context, m outMsg, seq uint64) error {
	filter := change.TableFilter(d.cfg.Prefix, m.schema, m.table)
	if err := d.stream.Purge(ctx, jetstream.WithPurgeSubject(filter), jetstream.WithPurgeSequence(seq)); err != nil {
		return fmt.Errorf("purging %s before the truncate: %w", filter, err)
	}
	d.m.purges.Inc()
	return nil
}

// skipStored drops the messages whose subject already holds their version
// or a newer one of this database: after an unknown outcome, republishing
// them could store an older version after a newer one. Their ids are
// deleted like acknowledged ones.
func (d *drainer) skipStored(ctx context.Context, msgs []outMsg) ([]outMsg, error) {
	if len(msgs) == 0 {
		return msgs, nil
	}
	var subjects []string
	seen := map[string]bool{}
	for _, m := range msgs {
		if !seen[m.msg.Subject] {
			seen[m.msg.Subject] = true
			subjects = append(subjects, m.msg.Subject)
		}
	}
	type stored struct {
		v   change.Version
		seq uint64
	}
	last := map[string]stored{}
	for len(subjects) > 0 {
		n := min(len(subjects), 1000)
		cctx, cancel := opCtx(ctx, d.cfg.PublishTimeout)
		it, err := jetstreamext.GetLastMsgsFor(cctx, d.b.js, d.cfg.Stream, subjects[:n])
		if err != nil {
			cancel()
			return msgs, fmt.Errorf("reading last stored versions: %w", err)
		}
		for raw, err := range it {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			if err != nil {
				cancel()
				return msgs, fmt.Errorf("reading last stored versions: %w", err)
			}
			// One install epoch is one database, whatever source name the
			// bridge that stored it used (a standby may be named otherwise).
			_, v, ok := parseMsgID(raw.Header.Get(change.HeaderMsgID))
			if ok && v.Epoch == d.epoch {
				last[raw.Subject] = stored{v, raw.Sequence}
			}
		}
		// The iterator also ends quietly when the deadline passes, so an
		// unanswered or cut-off read looks like "nothing stored"; trusting
		// it would republish what the subject already holds.
		if cctx.Err() != nil {
			cancel()
			return msgs, fmt.Errorf("reading last stored versions: no complete answer within %s", d.cfg.PublishTimeout)
		}
		cancel()
		subjects = subjects[n:]
	}
	out := msgs[:0:0]
	var skipped []outMsg
	for _, m := range msgs {
		s, ok := last[m.msg.Subject]
		if ok && !s.v.Less(m.version) {
			skipped = append(skipped, m)
			if m.op == change.OpTruncate && s.v == m.version {
				// Stored, but the purge after it may not have run.
				cctx, cancel := opCtx(ctx, d.cfg.PublishTimeout)
				err := d.purgeBefore(cctx, m, s.seq)
				cancel()
				if err != nil {
					return msgs, err
				}
			}
			continue
		}
		out = append(out, m)
	}
	if len(skipped) > 0 {
		d.m.skipped.Add(float64(len(skipped)))
		if skipped[len(skipped)-1].id <= d.recoverThrough {
			// What a previous leader published reaches this far: look on.
			d.recoverRows = max(d.recoverRows, d.takeoverWindow())
		}
		for _, m := range skipped {
			d.toDelete = append(d.toDelete, m.id)
		}
	}
	return out, nil
}

// parseMsgID splits "<source>:<epoch>:<id>".
func parseMsgID(s string) (string, change.Version, bool) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", change.Version{}, false
	}
	j := strings.LastIndexByte(s[:i], ':')
	if j < 0 {
		return "", change.Version{}, false
	}
	epoch, err1 := strconv.ParseInt(s[j+1:i], 10, 64)
	id, err2 := strconv.ParseInt(s[i+1:], 10, 64)
	if err1 != nil || err2 != nil {
		return "", change.Version{}, false
	}
	return s[:j], change.Version{Epoch: epoch, ID: id}, true
}

// cleanMsg strips the headers an earlier atomic batch attempt added.
func cleanMsg(m *nats.Msg) *nats.Msg {
	m.Header.Del(jetstreamext.BatchIDHeader)
	m.Header.Del(jetstreamext.BatchSeqHeader)
	m.Header.Del(jetstreamext.BatchCommitHeader)
	m.Reply = ""
	return m
}

// apiErrorCode returns the JetStream API error code in err, or 0.
func apiErrorCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	var jsErr jetstream.JetStreamError
	if errors.As(err, &jsErr) && jsErr.APIError() != nil {
		return jsErr.APIError().ErrorCode
	}
	return 0
}
