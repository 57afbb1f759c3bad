package consumers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/change"
)

// Option changes how New builds a Consumer.
type Option func(*options)

type options struct {
	logger          *slog.Logger
	reg             prometheus.Registerer
	clock           Clock
	guard           Guard
	pendingInterval time.Duration
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers the consumer's metrics on r (default: a private
// registry, so nothing is exported).
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithClock sets the clock of the quiet period (default: the system clock).
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithGuard sets the stale-version guard. Without it, a handler that
// implements Guard is its own guard; otherwise there is none.
func WithGuard(g Guard) Option { return func(o *options) { o.guard = g } }

// WithPendingInterval sets how often the lag metrics are refreshed from the
// server's consumer info (default 5s).
func WithPendingInterval(d time.Duration) Option { return func(o *options) { o.pendingInterval = d } }

// Consumer runs one durable consumer. Build it with New, run it with Run.
type Consumer struct {
	js         jetstream.JetStream
	cfg        Config
	h          Handler
	bh         BatchHandler // h, when it takes batches and MaxBatch > 1
	guard      Guard
	log        *slog.Logger
	clock      Clock
	m          *metrics
	pendingInt time.Duration
	dlqSubject string
	batch      int

	started atomic.Bool
	readyMu sync.Mutex
	readyEr error

	// Set by Run.
	base     context.Context // never cancelled: in-flight work outlives Run's ctx
	workers  []*worker
	stopping chan struct{} // closed first on shutdown: stop taking messages
	quit     chan struct{} // closed once the subscription stopped: workers give back what they hold
	reset    chan struct{} // the consume loop must re-create the consumer
	wg       sync.WaitGroup
}

var errNotStarted = errors.New("consumer not running yet")

// New checks cfg (filling in its defaults) and builds a Consumer that hands
// the changes it receives from js to h.
func New(js jetstream.JetStream, cfg Config, h Handler, opts ...Option) (*Consumer, error) {
	if js == nil {
		return nil, errors.New("consumers.New: nil JetStream")
	}
	if h == nil {
		return nil, errors.New("consumers.New: nil Handler")
	}
	cfg.FilterSubjects = append([]string(nil), cfg.FilterSubjects...)
	cfg.Backoff = append([]time.Duration(nil), cfg.Backoff...)
	if len(cfg.Backoff) == 0 {
		cfg.Backoff = nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{pendingInterval: 5 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if o.reg == nil {
		o.reg = prometheus.NewRegistry()
	}
	if o.clock == nil {
		o.clock = realClock{}
	}
	if o.guard == nil {
		if g, ok := h.(Guard); ok {
			o.guard = g
		}
	}
	if o.pendingInterval <= 0 {
		o.pendingInterval = 5 * time.Second
	}
	m, err := newMetrics(o.reg, cfg.Durable)
	if err != nil {
		return nil, fmt.Errorf("registering consumer metrics: %w", err)
	}
	batch := 256
	if cfg.MaxAckPending > 0 && cfg.MaxAckPending < batch {
		batch = cfg.MaxAckPending
	}
	var bh BatchHandler
	if b, ok := h.(BatchHandler); ok && cfg.MaxBatch > 1 {
		bh = b
	}
	return &Consumer{
		js:         js,
		cfg:        cfg,
		h:          h,
		bh:         bh,
		guard:      o.guard,
		log:        o.logger.With("consumer", cfg.Durable),
		clock:      o.clock,
		m:          m,
		pendingInt: o.pendingInterval,
		dlqSubject: change.DLQSubject(cfg.Prefix, cfg.Durable),
		batch:      batch,
		readyEr:    errNotStarted,
	}, nil
}

// Config returns the configuration in effect, defaults filled in.
func (c *Consumer) Config() Config { return c.cfg }

// Ready returns nil while the consumer is connected and consuming, and why
// not otherwise. It is meant for a /readyz endpoint.
func (c *Consumer) Ready() error {
	if nc := c.js.Conn(); nc != nil {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("not connected to NATS (%s)", st)
		}
	}
	c.readyMu.Lock()
	defer c.readyMu.Unlock()
	return c.readyEr
}

func (c *Consumer) setReady(err error) {
	c.readyMu.Lock()
	c.readyEr = err
	c.readyMu.Unlock()
}

// Run consumes until ctx is cancelled, then stops taking messages, lets the
// changes being applied finish, gives back (naks) those not started, and
// returns nil. It returns an error only when the consumer cannot be set up
// at all, for a reason retrying cannot fix (the server refused the
// configuration, for instance). A missing stream, an unreachable server or a
// deleted durable are waited out and repaired.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("consumers: Run called twice on the same Consumer")
	}
	defer c.setReady(errors.New("consumer stopped"))

	c.base = context.WithoutCancel(ctx)
	c.stopping = make(chan struct{})
	c.quit = make(chan struct{})
	c.reset = make(chan struct{}, 1)

	cons, err := c.setup(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.log.Info("consumer started", "stream", c.cfg.Stream, "filter", c.cfg.FilterSubjects, "workers", c.cfg.Workers, "quiet", c.cfg.Quiet)

	c.workers = make([]*worker, c.cfg.Workers)
	for i := range c.workers {
		c.workers[i] = newWorker(c)
		c.wg.Add(1)
		go func(w *worker) {
			defer c.wg.Done()
			w.run()
		}(c.workers[i])
	}

	if nc := c.js.Conn(); nc != nil {
		adv := fmt.Sprintf("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.%s.%s", c.cfg.Stream, c.cfg.Durable)
		sub, err := nc.Subscribe(adv, c.onMaxDeliveries)
		if err != nil {
			c.log.Warn("cannot watch max-delivery advisories; a message whose last delivery timed out will not be dead-lettered", "err", err)
		} else {
			defer func() { _ = sub.Unsubscribe() }()
		}
	}

	ticker := time.NewTicker(c.pendingInt)
	defer ticker.Stop()
	for {
		cc, err := cons.Consume(c.onMsg,
			jetstream.PullMaxMessages(c.batch),
			jetstream.ConsumeErrHandler(c.onConsumeErr))
		if err != nil {
			c.log.Warn("cannot start consuming; setting up again", "err", err)
			c.setReady(fmt.Errorf("starting to consume: %w", err))
			if cons, err = c.resetup(ctx); err != nil {
				c.shutdown(nil)
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			continue
		}
		c.setReady(nil)
		c.refreshPending(ctx, cons)

	loop:
		for {
			select {
			case <-ctx.Done():
				c.log.Info("stopping: finishing the changes in flight")
				c.shutdown(cc)
				c.log.Info("consumer stopped")
				return nil
			case <-cc.Closed():
				c.log.Warn("subscription closed by the server; setting the consumer up again")
				break loop
			case <-c.reset:
				c.log.Warn("durable consumer is gone; setting it up again")
				cc.Stop()
				waitClosed(cc, 5*time.Second)
				break loop
			case <-ticker.C:
				if c.refreshPending(ctx, cons) {
					cc.Stop()
					waitClosed(cc, 5*time.Second)
					break loop
				}
			}
		}
		c.setReady(errors.New("re-creating the durable consumer"))
		if cons, err = c.resetup(ctx); err != nil {
			c.shutdown(nil)
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// resetup waits a moment (a closed subscription is often a server going
// away) and sets the consumer up again.
func (c *Consumer) resetup(ctx context.Context) (jetstream.Consumer, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(250 * time.Millisecond):
	}
	return c.setup(ctx)
}

// shutdown stops the subscription, waits for the message callback to
// return, then tells the workers to finish what they are applying, give
// back the rest, and waits for them.
func (c *Consumer) shutdown(cc jetstream.ConsumeContext) {
	close(c.stopping)
	if cc != nil {
		// Drain, not Stop: messages already buffered in the client reach
		// onMsg, which gives them back at once; Stop would drop them and
		// leave them to the server's ack timeout.
		cc.Drain()
		waitClosed(cc, 5*time.Second)
	}
	close(c.quit)
	c.wg.Wait()
}

func waitClosed(cc jetstream.ConsumeContext, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-cc.Closed():
	case <-t.C:
	}
}

// onConsumeErr receives the subscription's errors. Most are transient
// (missed heartbeats, a server restarting) and handled by the client; a
// deleted durable makes Run create it again.
func (c *Consumer) onConsumeErr(_ jetstream.ConsumeContext, err error) {
	if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		select {
		case c.reset <- struct{}{}:
		default:
		}
		return
	}
	if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrConnectionClosed) {
		c.log.Warn("consumer subscription", "err", err)
		return
	}
	c.log.Debug("consumer subscription", "err", err)
}

// refreshPending updates the lag metrics. It returns true when the durable
// no longer exists, so Run sets it up again.
func (c *Consumer) refreshPending(ctx context.Context, cons jetstream.Consumer) (gone bool) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := cons.Info(ictx)
	if err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return true
		}
		c.log.Debug("reading consumer info", "err", err)
		return false
	}
	c.m.pending.Set(float64(info.NumPending))
	c.m.ackPending.Set(float64(info.NumAckPending))
	return false
}

// onMsg is the subscription callback. It runs on one goroutine, in stream
// order, and hands each message to the worker that owns its subject. It may
// block when that worker is busy: the pull stops, which is the back-pressure
// we want.
func (c *Consumer) onMsg(m jetstream.Msg) {
	select {
	case <-c.stopping:
		c.giveBack(m)
		return
	default:
	}
	subj := m.Subject()
	if strings.HasSuffix(subj, "."+change.TableToken) {
		c.tableLevel(m)
		return
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(subj))
	w := c.workers[h.Sum32()%uint32(len(c.workers))]
	select {
	case w.in <- item{msg: m}:
	case <-c.stopping:
		c.giveBack(m)
	}
}

// tableLevel applies a table-level change (TRUNCATE) as a barrier: every
// worker first applies what it holds and what it was given before, then the
// change is applied here, before any later message is dispatched.
func (c *Consumer) tableLevel(m jetstream.Msg) {
	dones := make([]chan struct{}, len(c.workers))
	for i, w := range c.workers {
		dones[i] = make(chan struct{})
		select {
		case w.in <- item{barrier: dones[i]}:
		case <-c.stopping:
			c.giveBack(m)
			return
		}
	}
	for _, d := range dones {
		select {
		case <-d:
		case <-c.quit:
			c.giveBack(m)
			return
		}
	}
	if e, ok := c.decode(m); ok {
		c.apply(m, e, nil)
	}
}

// giveBack naks a message this instance will not handle, so that it is
// redelivered at once (to another instance, or to this one after a restart).
func (c *Consumer) giveBack(m jetstream.Msg) {
	if err := m.Nak(); err != nil {
		c.log.Debug("nak", "subject", m.Subject(), "err", err)
	}
}

// decode turns a message into an envelope, or dead-letters it: a malformed
// body, a body that does not match its subject or headers, a too-large
// marker. Such a message can never succeed, and must never be taken for a
// delete.
func (c *Consumer) decode(m jetstream.Msg) (*change.Envelope, bool) {
	e, err := change.FromMsg(m.Subject(), m.Headers(), m.Data())
	if err != nil {
		c.deadLetter(m, "malformed message: "+err.Error())
		return nil, false
	}
	if e.Marker != nil {
		c.deadLetter(m, fmt.Sprintf("change too large to publish (marker %q: %d bytes, limit %d); apply it from the database", e.Marker.Reason, e.Marker.Size, e.Marker.Limit))
		return nil, false
	}
	if want := change.Subject(c.cfg.Prefix, e.Schema, e.Table, e.Key); want != m.Subject() {
		// Dispatch is by subject; a body for another key would break
		// per-key order.
		c.deadLetter(m, fmt.Sprintf("malformed message: body is for subject %q, not %q", want, m.Subject()))
		return nil, false
	}
	return e, true
}

// apply applies one change with Handle and settles it, with the messages
// it superseded.
func (c *Consumer) apply(m jetstream.Msg, e *change.Envelope, superseded []jetstream.Msg) {
	ctx, cancel := context.WithTimeout(c.base, c.cfg.AckWait)
	defer cancel()
	r := ready{msg: m, env: e, superseded: superseded}
	if !c.admit(ctx, r) {
		return
	}
	start := time.Now()
	err := c.callHandler(ctx, e)
	c.settleApplied(r, err, time.Since(start).Seconds())
}

// admit prepares a change for its handler: it restarts the ack timers of
// the messages it superseded (they may have waited in a quiet period) and
// runs the stale-version guard. It returns false when the change was
// settled already: stale (acked) or the guard failed (retried).
func (c *Consumer) admit(ctx context.Context, r ready) bool {
	if len(r.superseded) > 0 {
		for _, s := range r.superseded {
			_ = s.InProgress()
		}
		_ = r.msg.InProgress()
	}
	if c.guard == nil {
		return true
	}
	v, ok, err := c.guard.Applied(ctx, r.env)
	if err != nil {
		c.fail(c.changeLog(r.msg, r.env), r.msg, r.superseded, fmt.Errorf("reading the applied version: %w", err))
		return false
	}
	if ok && !v.Less(r.env.Version()) {
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.changeLog(r.msg, r.env).Debug("stale change skipped", "applied", v.String())
		}
		c.m.staleSkipped.Inc()
		c.ack(r.msg, r.superseded)
		return false
	}
	return true
}

// settleApplied acks a change its handler applied, or retries or
// dead-letters it after err; took is the handler's time in seconds.
func (c *Consumer) settleApplied(r ready, err error, took float64) {
	c.m.apply.Observe(took)
	if err == nil {
		c.m.processed.Inc()
		c.ack(r.msg, r.superseded)
		return
	}
	c.fail(c.changeLog(r.msg, r.env), r.msg, r.superseded, err)
}

// applyReady applies changes of distinct keys: one by one with Handle, or in
// batches of at most MaxBatch with a BatchHandler.
func (c *Consumer) applyReady(rs []ready) {
	if c.bh == nil {
		for _, r := range rs {
			c.apply(r.msg, r.env, r.superseded)
		}
		return
	}
	for len(rs) > 0 {
		n := min(len(rs), c.cfg.MaxBatch)
		c.applyBatch(rs[:n])
		rs = rs[n:]
	}
}

// applyBatch is apply for a group of changes of distinct keys: the guard
// runs for each, the handler once for those that are not stale, and each
// change is then settled on its own, with the messages it superseded.
func (c *Consumer) applyBatch(rs []ready) {
	ctx, cancel := context.WithTimeout(c.base, c.cfg.AckWait)
	defer cancel()

	todo := make([]ready, 0, len(rs))
	for _, r := range rs {
		if c.admit(ctx, r) {
			todo = append(todo, r)
		}
	}
	if len(todo) == 0 {
		return
	}
	envs := make([]*change.Envelope, len(todo))
	for i, r := range todo {
		envs[i] = r.env
	}
	start := time.Now()
	errs := c.callBatch(ctx, envs)
	took := time.Since(start).Seconds()
	c.m.batchSize.Observe(float64(len(todo)))
	for i, r := range todo {
		c.settleApplied(r, errs[i], took)
	}
}

func (c *Consumer) changeLog(m jetstream.Msg, e *change.Envelope) *slog.Logger {
	return c.log.With("subject", m.Subject(), "version", e.Version().String(), "op", e.Op)
}

// callBatch calls the batch handler and returns one error per change. A
// panic, or a result of the wrong length, cannot be pinned on one change:
// the changes are then applied one by one with Handle (handlers are
// idempotent), so only the culprit fails.
func (c *Consumer) callBatch(ctx context.Context, envs []*change.Envelope) []error {
	errs, panicked := c.tryBatch(ctx, envs)
	switch {
	case panicked != nil:
		c.log.Error("batch handler panicked; applying its changes one by one", "panic", fmt.Sprint(panicked), "changes", len(envs))
	case errs == nil:
		return make([]error, len(envs))
	case len(errs) == len(envs):
		return errs
	default:
		c.log.Error("batch handler returned a wrong number of results; applying its changes one by one", "results", len(errs), "changes", len(envs))
	}
	errs = make([]error, len(envs))
	for i, e := range envs {
		errs[i] = c.callHandler(ctx, e)
	}
	return errs
}

func (c *Consumer) tryBatch(ctx context.Context, envs []*change.Envelope) (errs []error, panicked any) {
	defer func() {
		if r := recover(); r != nil {
			errs, panicked = nil, r
		}
	}()
	return c.bh.HandleBatch(ctx, envs), nil
}

// callHandler calls the handler; a panic is a permanent failure of this
// message, not of the process.
func (c *Consumer) callHandler(ctx context.Context, e *change.Envelope) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Permanent(fmt.Errorf("handler panicked: %v", r))
		}
	}()
	return c.h.Handle(ctx, e)
}

// fail settles a failed change.
func (c *Consumer) fail(log *slog.Logger, m jetstream.Msg, superseded []jetstream.Msg, err error) {
	c.m.failed.Inc()
	deliveries := numDelivered(m)
	switch {
	case IsPermanent(err):
		log.Warn("change failed permanently; dead-lettering it", "err", err)
		c.deadLetter(m, err.Error())
	case c.cfg.MaxDeliver > 0 && deliveries >= uint64(c.cfg.MaxDeliver):
		log.Warn("change failed on its last delivery; dead-lettering it", "err", err, "deliveries", deliveries)
		c.deadLetter(m, fmt.Sprintf("failed %d deliveries; last error: %v", deliveries, err))
	default:
		delay := c.backoff(deliveries)
		log.Info("change failed; retrying later", "err", err, "deliveries", deliveries, "retry_in", delay)
		if nerr := m.NakWithDelay(delay); nerr != nil {
			log.Debug("nak", "err", nerr)
		}
		for _, s := range superseded {
			_ = s.NakWithDelay(delay)
		}
		return
	}
	// The newest change is in the dead-letter stream: the ones it
	// superseded are older versions of the same key and are done with.
	for _, s := range superseded {
		_ = s.Ack()
	}
}

func (c *Consumer) ack(m jetstream.Msg, superseded []jetstream.Msg) {
	if err := m.Ack(); err != nil {
		c.log.Debug("ack", "subject", m.Subject(), "err", err)
	}
	for _, s := range superseded {
		if err := s.Ack(); err != nil {
			c.log.Debug("ack", "subject", s.Subject(), "err", err)
		}
	}
}

// backoff returns the delay before the retry that follows delivery n.
func (c *Consumer) backoff(n uint64) time.Duration {
	i := int(n) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(c.cfg.Backoff) {
		i = len(c.cfg.Backoff) - 1
	}
	return c.cfg.Backoff[i]
}

func numDelivered(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 1
	}
	return md.NumDelivered
}

// setup checks the data stream, creates the dead-letter stream if missing and
// creates or updates the durable. Transient failures are retried until ctx
// ends; a configuration the server refuses is returned.
func (c *Consumer) setup(ctx context.Context) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	op := func() error {
		if nc := c.js.Conn(); nc != nil && nc.IsClosed() {
			return backoff.Permanent(errors.New("the NATS connection is closed; nothing can reconnect it"))
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		data, err := c.js.Stream(actx, c.cfg.Stream)
		if err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return fmt.Errorf("stream %s does not exist yet; start herald-bridge, which creates it", c.cfg.Stream)
			}
			return classify(fmt.Errorf("looking up stream %s: %w", c.cfg.Stream, err))
		}
		if err := c.ensureDLQ(actx, data.CachedInfo().Config.Replicas); err != nil {
			return classify(err)
		}
		cn, err := c.ensureConsumer(actx)
		if err != nil {
			return classify(err)
		}
		cons = cn
		return nil
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 200 * time.Millisecond
	b.MaxInterval = 10 * time.Second
	b.MaxElapsedTime = 0
	err := backoff.RetryNotify(op, backoff.WithContext(b, ctx), func(err error, d time.Duration) {
		c.setReady(err)
		c.log.Warn("setting up the consumer; retrying", "err", err, "retry_in", d)
	})
	if err != nil {
		return nil, err
	}
	return cons, nil
}

// classify marks as permanent the server's refusals that retrying cannot fix
// (a 400 for a bad configuration), and leaves everything else retryable.
func classify(err error) error {
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Code == 400 &&
		api.ErrorCode != jetstream.JSErrCodeConsumerExists && api.ErrorCode != jetstream.JSErrCodeConsumerAlreadyExists &&
		api.ErrorCode != jetstream.JSErrCodeStreamNameInUse {
		return backoff.Permanent(err)
	}
	return err
}

// consumerConfig is the durable's configuration for this Config.
func (c *Consumer) consumerConfig() jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       c.cfg.Durable,
		Description:   "Herald consumer " + c.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxDeliver:    c.cfg.MaxDeliver,
		MaxAckPending: c.cfg.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
	if len(c.cfg.FilterSubjects) == 1 {
		cc.FilterSubject = c.cfg.FilterSubjects[0]
	} else {
		cc.FilterSubjects = c.cfg.FilterSubjects
	}
	switch c.cfg.DeliverPolicy {
	case DeliverAll:
		cc.DeliverPolicy = jetstream.DeliverAllPolicy
	case DeliverNew:
		cc.DeliverPolicy = jetstream.DeliverNewPolicy
	default:
		cc.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
	}
	return cc
}

// ensureConsumer creates the durable, or updates an existing one while
// keeping its start point: a restarted instance resumes, it does not
// bootstrap again.
func (c *Consumer) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	want := c.consumerConfig()
	existing, err := c.js.Consumer(ctx, c.cfg.Stream, c.cfg.Durable)
	switch {
	case err == nil:
		have := existing.CachedInfo().Config
		want.DeliverPolicy = have.DeliverPolicy
		want.OptStartSeq = have.OptStartSeq
		want.OptStartTime = have.OptStartTime
		want.Replicas = have.Replicas
		want.MemoryStorage = have.MemoryStorage
		cons, err := c.js.UpdateConsumer(ctx, c.cfg.Stream, want)
		if err != nil {
			return nil, fmt.Errorf("updating durable consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, err)
		}
		return cons, nil
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		cons, err := c.js.CreateConsumer(ctx, c.cfg.Stream, want)
		if err != nil {
			return nil, fmt.Errorf("creating durable consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, err)
		}
		c.log.Info("created durable consumer", "deliver", c.cfg.DeliverPolicy.String())
		return cons, nil
	default:
		return nil, fmt.Errorf("looking up durable consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, err)
	}
}
