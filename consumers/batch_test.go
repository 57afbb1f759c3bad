package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/testproc"
)

// batcher is a BatchHandler that records every call, in order, as
// "batch a:1 b:2" or "handle a:1". A batch holding the key "gate" waits
// until the test opens the gate, so the test can queue messages behind it
// and know what the next batch holds.
type batcher struct {
	mu       sync.Mutex
	calls    []string
	attempts map[string]int
	fail     func(e *change.Envelope, attempt int) error
	bomb     string // a batch holding this key panics, and so does Handle

	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func newBatcher() *batcher {
	return &batcher{attempts: map[string]int{}, entered: make(chan struct{}), gate: make(chan struct{})}
}

func tag(e *change.Envelope) string { return fmt.Sprintf("%s:%d", keyOf(e), e.ID) }

func (b *batcher) one(e *change.Envelope) error {
	b.mu.Lock()
	b.attempts[keyOf(e)]++
	attempt, fail := b.attempts[keyOf(e)], b.fail
	b.mu.Unlock()
	if fail != nil {
		return fail(e, attempt)
	}
	return nil
}

func (b *batcher) Handle(_ context.Context, e *change.Envelope) error {
	b.record("handle " + tag(e))
	if keyOf(e) == b.bomb {
		panic("handler bug")
	}
	return b.one(e)
}

func (b *batcher) HandleBatch(_ context.Context, es []*change.Envelope) []error {
	tags := make([]string, len(es))
	for i, e := range es {
		tags[i] = tag(e)
	}
	b.record("batch " + strings.Join(tags, " "))
	for _, e := range es {
		switch keyOf(e) {
		case "gate":
			b.once.Do(func() { close(b.entered) })
			<-b.gate
		case b.bomb:
			panic("batch handler bug")
		}
	}
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = b.one(e)
	}
	return errs
}

func (b *batcher) record(s string) {
	b.mu.Lock()
	b.calls = append(b.calls, s)
	b.mu.Unlock()
}

func (b *batcher) snapshot() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

// holdThenQueue publishes a change of key "gate", waits until the batch
// handler is blocked in it, publishes envs and waits until worker 0 holds
// queued items, then opens the gate: the next batch is what was queued.
func holdThenQueue(t *testing.T, js jetstream.JetStream, r *ct.Running, b *batcher, queued int, envs ...*change.Envelope) {
	t.Helper()
	ct.Publish(t, js, ct.Env("t", []string{"gate"}, 1, change.OpUpdate, `{"value":1}`))
	select {
	case <-b.entered:
	case <-time.After(wait):
		t.Fatal("the batch handler was never called")
	}
	ct.Publish(t, js, envs...)
	testproc.Eventually(t, wait, func() string {
		if n := r.C.Queued(0); n != queued {
			return fmt.Sprintf("%d items queued, want %d", n, queued)
		}
		return ""
	})
	close(b.gate)
}

func startBatcher(t *testing.T, durable string, b *batcher, edit func(*consumers.Config), opts ...consumers.Option) (jetstream.JetStream, *ct.Running) {
	t.Helper()
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))
	c := cfg(durable)
	c.Workers = 1
	if edit != nil {
		edit(&c)
	}
	r := start(t, js, c, b, opts...)
	r.WaitReady(t)
	return js, r
}

func TestBatchHandlerGetsQueuedChangesAtOnce(t *testing.T) {
	b := newBatcher()
	js, r := startBatcher(t, "batch", b, nil)

	// a and d appear twice: the newest version of each is applied, the
	// older one is settled with it — also when it arrives last (d:6).
	holdThenQueue(t, js, r, b, 6,
		ct.Env("t", []string{"a"}, 2, change.OpUpdate, `{"value":2}`),
		ct.Env("t", []string{"b"}, 3, change.OpUpdate, `{"value":3}`),
		ct.Env("t", []string{"a"}, 4, change.OpUpdate, `{"value":4}`),
		ct.Env("t", []string{"c"}, 5, change.OpUpdate, `{"value":5}`),
		ct.Env("t", []string{"d"}, 7, change.OpUpdate, `{"value":7}`),
		ct.Env("t", []string{"d"}, 6, change.OpUpdate, `{"value":6}`))

	r.WaitMetric(t, "herald_consumer_processed_total", 5)
	testproc.Eventually(t, wait, ct.Settled(js, "batch"))
	want := []string{"batch gate:1", "batch a:4 b:3 c:5 d:7"}
	if got := b.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if n := r.Metric(t, "herald_consumer_coalesced_total"); n != 2 {
		t.Fatalf("coalesced = %v, want 2 (a:2 and d:6)", n)
	}
	if n := r.Metric(t, "herald_consumer_batch_size"); n != 2 {
		t.Fatalf("%v batches observed, want 2", n)
	}
}

func TestBatchFailureSettlesOnlyThatChange(t *testing.T) {
	b := newBatcher()
	b.fail = func(e *change.Envelope, attempt int) error {
		switch e.Key[0] {
		case "flaky":
			if attempt == 1 {
				return errors.New("disk busy")
			}
		case "perm":
			return consumers.Permanent(errors.New("value rejected"))
		case "exhaust":
			return errors.New("always busy")
		}
		return nil
	}
	js, r := startBatcher(t, "batchfail", b, func(c *consumers.Config) { c.MaxDeliver = 2 })

	holdThenQueue(t, js, r, b, 5,
		ct.Env("t", []string{"ok1"}, 2, change.OpInsert, `{"value":2}`),
		ct.Env("t", []string{"flaky"}, 3, change.OpInsert, `{"value":3}`),
		ct.Env("t", []string{"perm"}, 4, change.OpInsert, `{"value":4}`),
		ct.Env("t", []string{"exhaust"}, 5, change.OpInsert, `{"value":5}`),
		ct.Env("t", []string{"ok2"}, 6, change.OpInsert, `{"value":6}`))

	r.WaitMetric(t, "herald_consumer_dead_lettered_total", 2)
	r.WaitMetric(t, "herald_consumer_processed_total", 4) // gate, ok1, ok2, flaky on its retry
	testproc.Eventually(t, wait, ct.Settled(js, "batchfail"))

	calls := b.snapshot()
	if len(calls) < 3 || calls[1] != "batch ok1:2 flaky:3 perm:4 exhaust:5 ok2:6" {
		t.Fatalf("calls %q: want the five changes in one batch after the gate", calls)
	}
	// The applied ones are not retried; the failed ones come back alone.
	for _, c := range calls[2:] {
		if strings.Contains(c, "ok1") || strings.Contains(c, "ok2") || strings.Contains(c, "perm") {
			t.Fatalf("calls %q: a change settled in the first batch was handled again", calls)
		}
	}
	if n := r.Metric(t, "herald_consumer_failed_total"); n != 4 {
		t.Fatalf("failed = %v, want 4 (flaky once, perm once, exhaust twice)", n)
	}
	reasons := map[string]string{}
	for _, m := range ct.DeadLetters(t, js) {
		reasons[m.Header.Get(consumers.HeaderDLQSubject)] = m.Header.Get(consumers.HeaderDLQReason)
	}
	if !strings.Contains(reasons["herald.public.t.perm"], "value rejected") || !strings.Contains(reasons["herald.public.t.exhaust"], "failed 2 deliveries") || len(reasons) != 2 {
		t.Fatalf("dead letters %v, want perm (value rejected) and exhaust (failed 2 deliveries)", reasons)
	}
}

func TestBatchPanicFallsBackToOneByOne(t *testing.T) {
	b := newBatcher()
	b.bomb = "bomb"
	js, r := startBatcher(t, "batchpanic", b, nil)

	holdThenQueue(t, js, r, b, 3,
		ct.Env("t", []string{"x"}, 2, change.OpInsert, `{"value":2}`),
		ct.Env("t", []string{"bomb"}, 3, change.OpInsert, `{"value":3}`),
		ct.Env("t", []string{"y"}, 4, change.OpInsert, `{"value":4}`))

	r.WaitMetric(t, "herald_consumer_dead_lettered_total", 1)
	r.WaitMetric(t, "herald_consumer_processed_total", 3)
	testproc.Eventually(t, wait, ct.Settled(js, "batchpanic"))
	want := []string{"batch gate:1", "batch x:2 bomb:3 y:4", "handle x:2", "handle bomb:3", "handle y:4"}
	if got := b.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	dls := ct.DeadLetters(t, js)
	if len(dls) != 1 || !strings.Contains(dls[0].Header.Get(consumers.HeaderDLQReason), "panicked") {
		t.Fatalf("want one dead letter for bomb, reason mentioning the panic")
	}
}

func TestBatchTruncateIsABarrier(t *testing.T) {
	b := newBatcher()
	js, r := startBatcher(t, "batchbarrier", b, nil)

	// The truncate's barrier is queued behind a:2 and b:3; a:5 is not
	// dispatched until the truncate is applied.
	holdThenQueue(t, js, r, b, 3,
		ct.Env("t", []string{"a"}, 2, change.OpInsert, `{"value":2}`),
		ct.Env("t", []string{"b"}, 3, change.OpInsert, `{"value":3}`),
		ct.Env("t", nil, 4, change.OpTruncate, ""),
		ct.Env("t", []string{"a"}, 5, change.OpInsert, `{"value":5}`))

	r.WaitMetric(t, "herald_consumer_processed_total", 5)
	testproc.Eventually(t, wait, ct.Settled(js, "batchbarrier"))
	want := []string{"batch gate:1", "batch a:2 b:3", "handle %T:4", "batch a:5"}
	if got := b.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
}

func TestBatchQuietPeriodAppliesDueKeysTogether(t *testing.T) {
	b := newBatcher()
	clock := ct.NewClock()
	js, r := startBatcher(t, "batchquiet", b, func(c *consumers.Config) { c.Quiet = time.Second }, consumers.WithClock(clock))

	ct.Publish(t, js,
		ct.Env("t", []string{"a"}, 1, change.OpUpdate, `{"value":1}`),
		ct.Env("t", []string{"b"}, 2, change.OpUpdate, `{"value":2}`),
		ct.Env("t", []string{"a"}, 3, change.OpUpdate, `{"value":3}`),
		ct.Env("t", []string{"c"}, 4, change.OpUpdate, `{"value":4}`))
	r.WaitMetric(t, "herald_consumer_held", 4)
	clock.Advance(time.Second)
	r.WaitMetric(t, "herald_consumer_processed_total", 3)
	testproc.Eventually(t, wait, ct.Settled(js, "batchquiet"))
	calls := b.snapshot()
	if len(calls) != 1 {
		t.Fatalf("calls %q, want one batch", calls)
	}
	got := strings.Fields(strings.TrimPrefix(calls[0], "batch "))
	slices.Sort(got)
	if !slices.Equal(got, []string{"a:3", "b:2", "c:4"}) {
		t.Fatalf("batch %q, want a:3 b:2 c:4", calls[0])
	}
}

func TestBatchOffWithMaxBatchOne(t *testing.T) {
	b := newBatcher()
	js, r := startBatcher(t, "nobatch", b, func(c *consumers.Config) { c.MaxBatch = 1 })
	ct.Publish(t, js,
		ct.Env("t", []string{"a"}, 1, change.OpUpdate, `{"value":1}`),
		ct.Env("t", []string{"b"}, 2, change.OpUpdate, `{"value":2}`))
	r.WaitMetric(t, "herald_consumer_processed_total", 2)
	want := []string{"handle a:1", "handle b:2"}
	if got := b.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
}
