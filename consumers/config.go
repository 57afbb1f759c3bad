package consumers

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/herald-cdc/herald/change"
)

// Defaults applied by Config.Validate to fields left at their zero value.
const (
	DefaultStream        = "HERALD"
	DefaultPrefix        = "herald"
	DefaultDLQStream     = "HERALD_DLQ"
	DefaultAckWait       = 30 * time.Second
	DefaultMaxDeliver    = 10
	DefaultMaxAckPending = 1000
	DefaultWorkers       = 4
	DefaultMaxBatch      = 64
)

// DefaultBackoff is the delay before each retry of a retryable failure: the
// first retry waits Backoff[0], the second Backoff[1], and so on; the last
// entry is used for every retry after that.
var DefaultBackoff = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute}

// DeliverPolicy says where a durable consumer that does not exist yet starts
// reading. A durable that already exists always resumes where it stopped;
// its start point is never changed.
type DeliverPolicy int

const (
	// DeliverLastPerSubject (the default) starts with the last message of
	// every subject: with the data stream's state preset, a new instance
	// bootstraps the current state of every key, then follows live changes.
	DeliverLastPerSubject DeliverPolicy = iota
	// DeliverAll starts with the first message the stream holds.
	DeliverAll
	// DeliverNew starts with the messages published after the consumer was
	// created.
	DeliverNew
)

// String returns the policy's name, as used in configuration.
func (p DeliverPolicy) String() string {
	switch p {
	case DeliverLastPerSubject:
		return "last_per_subject"
	case DeliverAll:
		return "all"
	case DeliverNew:
		return "new"
	}
	return fmt.Sprintf("DeliverPolicy(%d)", int(p))
}

// ParseDeliverPolicy parses the names String returns.
func ParseDeliverPolicy(s string) (DeliverPolicy, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "last_per_subject", "last-per-subject":
		return DeliverLastPerSubject, nil
	case "all":
		return DeliverAll, nil
	case "new":
		return DeliverNew, nil
	}
	return 0, fmt.Errorf("unknown deliver policy %q: use last_per_subject, all or new", s)
}

// Config configures a consumer. Zero values take the defaults above; Validate
// fills them in and names the first field that is wrong.
type Config struct {
	// Stream is the data stream the bridge publishes to (default HERALD).
	Stream string
	// Prefix is the subject prefix of the data stream (default herald).
	Prefix string
	// Durable is the name of the durable consumer, and of this consumer in
	// dead-letter subjects and metrics. Required; every consumer binary has
	// its own default. Instances sharing a durable split the work.
	Durable string
	// FilterSubjects restricts the consumer to some subjects: one table with
	// change.TableFilter, chosen keys with change.KeyFilter. Empty means every
	// subject under Prefix.
	FilterSubjects []string
	// AckWait is how long the server waits for an ack before it redelivers
	// (default 30s). A handler call is given at most AckWait.
	AckWait time.Duration
	// MaxDeliver is how many times a message is delivered before a retryable
	// failure is dead-lettered (default 10; -1 retries forever).
	MaxDeliver int
	// Backoff is the delay before each retry (default DefaultBackoff).
	Backoff []time.Duration
	// MaxAckPending bounds the messages delivered and not yet acked, across
	// all workers and including those held by the quiet period (default 1000).
	MaxAckPending int
	// Workers is the number of keys applied in parallel (default 4).
	Workers int
	// MaxBatch bounds how many changes a worker hands a BatchHandler at
	// once (default 64); 1 turns batching off, so Handle is called for
	// every change. Ignored for a handler that is not a BatchHandler.
	MaxBatch int
	// Quiet is the per-key quiet period: a change is applied once its key
	// has seen no newer change for this long, and the changes in between
	// collapse into the newest. 0 (the default) applies every change at once.
	// A key that never goes quiet is still applied every AckWait/2.
	Quiet time.Duration
	// DLQStream is the dead-letter stream (default HERALD_DLQ), created with
	// subjects <Prefix>_dlq.> if it is missing.
	DLQStream string
	// DeliverPolicy is where a new durable starts (default: last message per
	// subject). Ignored when the durable exists.
	DeliverPolicy DeliverPolicy
}

// Validate fills in defaults and reports the first invalid field by name.
func (c *Config) Validate() error {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.DLQStream == "" {
		c.DLQStream = DefaultDLQStream
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	if c.Backoff == nil {
		c.Backoff = append([]time.Duration(nil), DefaultBackoff...)
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if err := validateName(c.Stream); err != nil {
		return fmt.Errorf("consumer config: Stream %q: %w", c.Stream, err)
	}
	if err := validateName(c.DLQStream); err != nil {
		return fmt.Errorf("consumer config: DLQStream %q: %w", c.DLQStream, err)
	}
	if c.DLQStream == c.Stream {
		return fmt.Errorf("consumer config: DLQStream %q is the data stream; dead letters need their own stream", c.DLQStream)
	}
	if err := change.ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("consumer config: Prefix: %w", err)
	}
	if c.Durable == "" {
		return fmt.Errorf("consumer config: Durable is required (the durable consumer's name, e.g. filesync)")
	}
	if err := validateName(c.Durable); err != nil {
		return fmt.Errorf("consumer config: Durable %q: %w", c.Durable, err)
	}
	if len(c.FilterSubjects) == 0 {
		c.FilterSubjects = []string{c.Prefix + ".>"}
	}
	seen := make(map[string]bool, len(c.FilterSubjects))
	for _, f := range c.FilterSubjects {
		if err := validateFilter(c.Prefix, f); err != nil {
			return fmt.Errorf("consumer config: FilterSubjects: %w", err)
		}
		if seen[f] {
			return fmt.Errorf("consumer config: FilterSubjects: %q listed twice", f)
		}
		seen[f] = true
	}
	if c.AckWait < time.Second {
		return fmt.Errorf("consumer config: AckWait %s is too short; use at least 1s", c.AckWait)
	}
	if c.MaxDeliver < -1 {
		return fmt.Errorf("consumer config: MaxDeliver %d: use a positive number, or -1 to retry forever", c.MaxDeliver)
	}
	if len(c.Backoff) == 0 {
		return fmt.Errorf("consumer config: Backoff is empty; give at least one delay")
	}
	for i, d := range c.Backoff {
		if d <= 0 {
			return fmt.Errorf("consumer config: Backoff[%d] is %s; delays must be positive", i, d)
		}
	}
	if c.MaxAckPending < 1 && c.MaxAckPending != -1 {
		return fmt.Errorf("consumer config: MaxAckPending %d: use a positive number, or -1 for no limit", c.MaxAckPending)
	}
	if c.Workers < 1 || c.Workers > 1024 {
		return fmt.Errorf("consumer config: Workers %d: use 1 to 1024", c.Workers)
	}
	if c.MaxBatch < 1 || c.MaxBatch > 1024 {
		return fmt.Errorf("consumer config: MaxBatch %d: use 1 (no batches) to 1024", c.MaxBatch)
	}
	if c.Quiet < 0 {
		return fmt.Errorf("consumer config: Quiet %s is negative", c.Quiet)
	}
	if c.Quiet > 0 && c.Quiet >= c.AckWait/2 {
		// Held messages are not acked; past AckWait the server would
		// redeliver them while they wait.
		return fmt.Errorf("consumer config: Quiet %s must be shorter than half of AckWait (%s); raise AckWait or lower Quiet", c.Quiet, c.AckWait)
	}
	switch c.DeliverPolicy {
	case DeliverLastPerSubject, DeliverAll, DeliverNew:
	default:
		return fmt.Errorf("consumer config: DeliverPolicy %d is unknown", int(c.DeliverPolicy))
	}
	return nil
}

// validateName checks a stream or consumer name the way the server does:
// no whitespace, no '.', '*', '>', path separators or control characters.
func validateName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if len(name) > 255 {
		return fmt.Errorf("longer than 255 bytes")
	}
	for _, r := range name {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(".*>/\\", r) {
			return fmt.Errorf("must not contain %q (no whitespace, '.', '*', '>', '/', '\\' or control characters)", r)
		}
	}
	return nil
}

// validateFilter checks that a filter subject is well formed and lies under
// the prefix, so the consumer cannot be pointed at another source's subjects.
func validateFilter(prefix, f string) error {
	if !strings.HasPrefix(f, prefix+".") {
		return fmt.Errorf("%q is not under the subject prefix %q", f, prefix)
	}
	toks := strings.Split(f, ".")
	for i, t := range toks {
		if t == "" {
			return fmt.Errorf("%q has an empty token", f)
		}
		if t == ">" && i != len(toks)-1 {
			return fmt.Errorf("%q: '>' must be the last token", f)
		}
		for _, r := range t {
			if unicode.IsSpace(r) || !unicode.IsPrint(r) {
				return fmt.Errorf("%q contains whitespace or a control character", f)
			}
		}
	}
	return nil
}
