package bridge

import (
	"errors"
	"fmt"
	"time"

	"github.com/herald-cdc/herald/change"
)

// Preset names a stream configuration for a kind of consumer.
type Preset string

// Stream presets.
const (
	// PresetState keeps the last message per subject with no age limit, for
	// consumers that sync state (files, mailboxes): a new consumer
	// bootstraps from the latest change of every key. Delete messages carry
	// a TTL so deleted keys eventually leave the stream.
	PresetState Preset = "state"
	// PresetLog keeps every change for a maximum age, for event consumers.
	PresetLog Preset = "log"
)

// Config configures a Bridge. Zero values take the defaults below.
type Config struct {
	// Source names this database in message ids and envelopes (default:
	// the database name).
	Source string
	// Prefix is the first subject token(s) (default "herald").
	Prefix string
	// Stream is the JetStream stream (default "HERALD").
	Stream string
	// Preset is the stream configuration used when the bridge creates the
	// stream (default state).
	Preset Preset
	// Replicas of a stream the bridge creates (default 1).
	Replicas int
	// MaxMsgsPerSubject for the state preset (default 1).
	MaxMsgsPerSubject int64
	// MaxAge for the log preset (default 7 days).
	MaxAge time.Duration
	// DeleteTTL is how long delete messages stay in a state stream (default
	// 7 days). It must outlast the longest a state consumer may be down.
	DeleteTTL time.Duration
	// MaxBytes of a stream the bridge creates (default -1: unlimited; with
	// discard policy new, a full stream stops publishing and the backlog
	// waits in PostgreSQL).
	MaxBytes int64
	// DuplicateWindow of a stream the bridge creates (default 2m).
	DuplicateWindow time.Duration

	// BatchSize is the most changes read at once (default 500, at most 1000,
	// the server's atomic batch limit).
	BatchSize int
	// SmallBatch is the largest batch published as async publishes rather
	// than one atomic batch (default 16): an atomic commit costs about 2 ms
	// whatever its size, a single publish a fraction of one.
	SmallBatch int
	// InFlight is how many batches may be published at once, without
	// waiting for an earlier one's ack, while the gate is open (default 4;
	// batches in the air never share a subject). While the bridge polls,
	// one batch is published while the next is read.
	InFlight int
	// PollInterval is the safety poll: the longest a change can wait if a
	// wake-up was missed (default 1s).
	PollInterval time.Duration
	// PollPause is how long the bridge pauses when a drain comes back empty
	// while it polls at high rates (default 500µs).
	PollPause time.Duration
	// PollGather is, while polling without a backlog, the least time from
	// one read to the next (default 10ms): changes gather meanwhile, so
	// each batch is one atomic batch of many rather than many small
	// publishes, each of which costs NATS an fsync. Negative: none.
	PollGather time.Duration
	// PublishTimeout bounds every publish (default 5s).
	PublishTimeout time.Duration
	// GateLease is how long an opened gate stays open without renewal
	// (default 10s): a bridge that dies while armed stops costing writers
	// NOTIFY after it.
	GateLease time.Duration
	// CloseRate is the change rate (per second) at which the bridge closes
	// the gate and polls instead (default 2000).
	CloseRate float64
	// OpenRate is the rate below which, held for ReopenAfter, the bridge
	// opens the gate again (default 60% of CloseRate, and 2s).
	OpenRate    float64
	ReopenAfter time.Duration
	// QueueWaiters is how many writers waiting on NOTIFY's commit lock make
	// the bridge close the gate while it is open, whatever the rate
	// (default 4; negative: never). Writers serialised by that lock commit
	// no faster than it lets them, so on a slow disk they may never reach
	// CloseRate.
	QueueWaiters int
	// QueueFor is how long every look (one each 50ms) must find
	// QueueWaiters or more before the gate closes, with at least one look
	// per 50ms of it besides the first (default 100ms: three looks in a
	// row). Longer spares a gate that one slow WAL flush queued writers on
	// for a moment, and lets writers queue longer when the lock does
	// serialise them (docs/bridge.md has the measurements).
	QueueFor time.Duration
	// RecheckInterval is how often, after opening the gate, the bridge checks
	// whether the transactions that may have read it closed have ended
	// (default 1ms).
	RecheckInterval time.Duration
	// StandbyPoll is how often a standby tries to become leader (default 1s).
	StandbyPoll time.Duration
	// StatsInterval is how often backlog metrics are refreshed (default 5s).
	StatsInterval time.Duration

	// Hooks for tests; nil in production.
	Hooks *Hooks
}

// Hooks let tests act at points of the protocol that no timing can reach
// reliably.
type Hooks struct {
	// BeforeGateOpen runs just before the gate is opened; AfterGateOpen
	// just after the transactions that may have read it closed were listed.
	BeforeGateOpen func()
	AfterGateOpen  func()
	// BeforeRead runs in the drain loop before each read of the log;
	// blocking it holds the loop.
	BeforeRead func()
	// BeforeFlight runs in a flight's goroutine before it publishes the
	// changes with these log ids; blocking it holds the flight in the air.
	BeforeFlight func(ids []int64)
}

// maxAtomicBatch is the server's default limit of messages per atomic batch.
const maxAtomicBatch = 1000

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "herald"
	}
	if c.Stream == "" {
		c.Stream = "HERALD"
	}
	if c.Preset == "" {
		c.Preset = PresetState
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxMsgsPerSubject == 0 {
		c.MaxMsgsPerSubject = 1
	}
	if c.MaxAge == 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.DeleteTTL == 0 {
		c.DeleteTTL = 7 * 24 * time.Hour
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = -1
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.SmallBatch == 0 {
		c.SmallBatch = 16
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.PollGather == 0 {
		c.PollGather = 10 * time.Millisecond
	}
	if c.PollPause == 0 {
		c.PollPause = 500 * time.Microsecond
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.GateLease == 0 {
		c.GateLease = 10 * time.Second
	}
	if c.InFlight == 0 {
		c.InFlight = 4
	}
	if c.CloseRate == 0 {
		c.CloseRate = 2000
	}
	if c.OpenRate == 0 {
		// Well above the rate a short stall's burst can leave behind: at a
		// steady rate between the thresholds the gate stays as it is, and a
		// gate closed by a burst at 1,000/s has to be able to reopen.
		c.OpenRate = 0.6 * c.CloseRate
	}
	if c.ReopenAfter == 0 {
		c.ReopenAfter = 2 * time.Second
	}
	if c.QueueWaiters == 0 {
		c.QueueWaiters = 4
	}
	if c.QueueFor == 0 {
		c.QueueFor = 100 * time.Millisecond
	}
	if c.RecheckInterval == 0 {
		c.RecheckInterval = time.Millisecond
	}
	if c.StandbyPoll == 0 {
		c.StandbyPoll = time.Second
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = 5 * time.Second
	}
}

// Validate applies defaults and reports the first invalid field by name.
func (c *Config) Validate() error {
	c.setDefaults()
	if err := change.ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("subject prefix (HERALD_SUBJECT_PREFIX): %w", err)
	}
	if !validStreamName(c.Stream) {
		return fmt.Errorf("stream name (HERALD_STREAM) %q: use letters, digits, '-' and '_' only", c.Stream)
	}
	if c.Preset != PresetState && c.Preset != PresetLog {
		return fmt.Errorf("stream preset (HERALD_STREAM_PRESET) %q: must be %q or %q", c.Preset, PresetState, PresetLog)
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Replicas >= 1 && c.Replicas <= 5, "replicas (HERALD_STREAM_REPLICAS) must be 1 to 5, got %d", c.Replicas)
	check(c.BatchSize >= 1 && c.BatchSize <= maxAtomicBatch, "batch size (HERALD_BATCH_SIZE) must be 1 to %d, got %d", maxAtomicBatch, c.BatchSize)
	check(c.SmallBatch >= 1 && c.SmallBatch <= c.BatchSize, "small batch (HERALD_SMALL_BATCH) must be 1 to the batch size, got %d", c.SmallBatch)
	check(c.InFlight >= 1 && c.InFlight <= 64, "batches in flight (HERALD_IN_FLIGHT) must be 1 to 64, got %d", c.InFlight)
	check(c.PollGather <= time.Second, "poll gather (HERALD_POLL_GATHER) must be at most 1s, got %s", c.PollGather)
	check(c.PollInterval > 0, "poll interval (HERALD_POLL_INTERVAL) must be positive")
	check(c.PublishTimeout > 0, "publish timeout (HERALD_PUBLISH_TIMEOUT) must be positive")
	check(c.GateLease >= 100*time.Millisecond, "gate lease (HERALD_GATE_LEASE) must be at least 100ms, got %s", c.GateLease)
	check(c.OpenRate < c.CloseRate, "open rate (HERALD_GATE_OPEN_RATE %g) must be below close rate (HERALD_GATE_CLOSE_RATE %g)", c.OpenRate, c.CloseRate)
	check(c.QueueWaiters <= 10000, "queue waiters (HERALD_GATE_QUEUE_WAITERS) must be at most 10000 (negative: never close the gate for a queue), got %d", c.QueueWaiters)
	check(c.QueueFor >= queueCheckEvery && c.QueueFor <= time.Minute, "queue time (HERALD_GATE_QUEUE_FOR) must be %s to 1m, got %s", queueCheckEvery, c.QueueFor)
	check(c.DuplicateWindow >= time.Second, "duplicate window (HERALD_DUPLICATE_WINDOW) must be at least 1s")
	check(c.MaxMsgsPerSubject >= 1, "max messages per subject (HERALD_STREAM_MAX_MSGS_PER_SUBJECT) must be at least 1")
	check(c.DeleteTTL >= time.Second, "delete TTL (HERALD_STREAM_DELETE_TTL) must be at least 1s")
	return errors.Join(errs...)
}

func validStreamName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}
