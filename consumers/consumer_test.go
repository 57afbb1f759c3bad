package consumers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/testproc"
)

const wait = ct.Wait

func start(t *testing.T, js jetstream.JetStream, cfg consumers.Config, h consumers.Handler, opts ...consumers.Option) *ct.Running {
	t.Helper()
	return ct.Start(t, js, nil, cfg, h, opts...)
}

func testLogger(t testing.TB) *slog.Logger { return ct.Logger(t) }

// recorder is a handler that records what it applied, checks that no key
// is ever applied twice at once, and is its own in-memory guard.
type recorder struct {
	mu       sync.Mutex
	calls    []*change.Envelope
	inflight map[string]int
	overlap  bool
	applied  map[string]change.Version
	fail     func(e *change.Envelope, attempt int) error
	attempts map[string]int
	guard    bool
}

func newRecorder() *recorder {
	return &recorder{inflight: map[string]int{}, applied: map[string]change.Version{}, attempts: map[string]int{}}
}

func keyOf(e *change.Envelope) string {
	if e.Op == change.OpTruncate {
		return "%T"
	}
	return strings.Join(e.Key, ",")
}

func (r *recorder) Handle(ctx context.Context, e *change.Envelope) error {
	k := keyOf(e)
	r.mu.Lock()
	r.inflight[k]++
	if r.inflight[k] > 1 {
		r.overlap = true
	}
	r.attempts[k]++
	attempt := r.attempts[k]
	fail := r.fail
	r.mu.Unlock()

	var err error
	if fail != nil {
		err = fail(e, attempt)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight[k]--
	if err != nil {
		return err
	}
	r.calls = append(r.calls, e)
	r.applied[k] = e.Version()
	return nil
}

func (r *recorder) snapshot() []*change.Envelope {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) byKey() map[string][]int64 {
	out := map[string][]int64{}
	for _, e := range r.snapshot() {
		out[keyOf(e)] = append(out[keyOf(e)], e.ID)
	}
	return out
}

// guarded wraps a recorder as a Guard.
type guarded struct{ *recorder }

func (g guarded) Applied(_ context.Context, e *change.Envelope) (change.Version, bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	v, ok := g.applied[keyOf(e)]
	return v, ok, nil
}

func cfg(durable string) consumers.Config {
	return consumers.Config{
		Durable:       durable,
		AckWait:       10 * time.Second,
		Backoff:       []time.Duration{50 * time.Millisecond},
		Workers:       4,
		Quiet:         0,
		MaxAckPending: 1000,
	}
}

func TestPerKeyOrderAcrossWorkers(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))

	const keys, versions = 20, 25
	var envs []*change.Envelope
	id := int64(0)
	for v := 0; v < versions; v++ {
		for k := 0; k < keys; k++ {
			id++
			envs = append(envs, ct.Env("t", []string{fmt.Sprintf("k%02d", k)}, id, change.OpUpdate, fmt.Sprintf(`{"value":%d}`, id)))
		}
	}
	ct.Publish(t, js, envs...)

	rec := newRecorder()
	c := cfg("order")
	c.DeliverPolicy = consumers.DeliverAll
	r := start(t, js, c, rec)
	r.WaitMetric(t, "herald_consumer_processed_total", keys*versions)
	testproc.Eventually(t, wait, ct.Settled(js, "order"))

	if rec.overlap {
		t.Fatal("one key was applied by two workers at once")
	}
	for k, ids := range rec.byKey() {
		if len(ids) != versions {
			t.Fatalf("key %s applied %d times, want %d", k, len(ids), versions)
		}
		if !slices.IsSorted(ids) {
			t.Fatalf("key %s applied out of order: %v", k, ids)
		}
	}
	if err := r.C.Ready(); err != nil {
		t.Fatalf("Ready() = %v while consuming", err)
	}
	testproc.Eventually(t, wait, func() string {
		if got := r.Metric(t, "herald_consumer_pending"); got != 0 {
			return fmt.Sprintf("pending = %v", got)
		}
		return ""
	})
}

func TestBootstrapLastPerSubjectThenResume(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.State(5))

	id := int64(0)
	for v := 0; v < 3; v++ {
		for _, k := range []string{"a", "b", "c"} {
			id++
			ct.Publish(t, js, ct.Env("t", []string{k}, id, change.OpUpdate, fmt.Sprintf(`{"value":%d}`, id)))
		}
	}

	rec := newRecorder()
	r := start(t, js, cfg("boot"), rec)
	r.WaitMetric(t, "herald_consumer_processed_total", 3)
	testproc.Eventually(t, wait, ct.Settled(js, "boot"))
	got := rec.byKey()
	want := map[string][]int64{"a": {7}, "b": {8}, "c": {9}}
	for k, ids := range want {
		if !slices.Equal(got[k], ids) {
			t.Fatalf("bootstrap applied %v, want the last version of each key %v", got, want)
		}
	}
	r.Stop()

	// A restarted instance resumes from its durable: only what is new.
	ct.Publish(t, js, ct.Env("t", []string{"a"}, 10, change.OpUpdate, `{"value":10}`))
	rec2 := newRecorder()
	r2 := start(t, js, cfg("boot"), rec2)
	r2.WaitMetric(t, "herald_consumer_processed_total", 1)
	testproc.Eventually(t, wait, ct.Settled(js, "boot"))
	if got := rec2.byKey(); len(got) != 1 || !slices.Equal(got["a"], []int64{10}) {
		t.Fatalf("restarted consumer applied %v, want only a:10", got)
	}
}

func TestRetryableFailureIsRetried(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.State(1))

	rec := newRecorder()
	rec.fail = func(e *change.Envelope, attempt int) error {
		if e.Key[0] == "flaky" && attempt <= 2 {
			return errors.New("disk busy")
		}
		return nil
	}
	c := cfg("retry")
	c.MaxDeliver = 5
	r := start(t, js, c, rec)
	ct.Publish(t, js,
		ct.Env("t", []string{"flaky"}, 1, change.OpInsert, `{"value":1}`),
		ct.Env("t", []string{"steady"}, 2, change.OpInsert, `{"value":2}`))

	r.WaitMetric(t, "herald_consumer_processed_total", 2)
	testproc.Eventually(t, wait, ct.Settled(js, "retry"))
	if got := r.Metric(t, "herald_consumer_failed_total"); got != 2 {
		t.Fatalf("failed_total = %v, want 2", got)
	}
	if n := ct.CountDeadLetters(js); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
}

func TestDeadLetters(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.State(1))

	rec := newRecorder()
	rec.fail = func(e *change.Envelope, _ int) error {
		switch e.Key[0] {
		case "perm":
			return consumers.Permanent(errors.New("value rejected"))
		case "exhaust":
			return errors.New("always busy")
		case "panic":
			panic("handler bug")
		}
		return nil
	}
	c := cfg("dlq")
	c.MaxDeliver = 2
	r := start(t, js, c, rec)

	marker := ct.Env("t", []string{"big"}, 3, change.OpUpdate, "")
	marker.New = nil
	marker.Marker = &change.Marker{Reason: change.MarkerTooLarge, Size: 2 << 20, Limit: 1 << 20}
	ct.Publish(t, js,
		ct.Env("t", []string{"perm"}, 1, change.OpInsert, `{"value":1}`),
		ct.Env("t", []string{"exhaust"}, 2, change.OpInsert, `{"value":2}`),
		marker,
		ct.Env("t", []string{"panic"}, 4, change.OpInsert, `{"value":4}`))
	ct.PublishMsg(t, js, &nats.Msg{Subject: "herald.public.t.garbage", Data: []byte("not json {")})
	// A valid body on another key's subject.
	wrong, err := change.NewMsg("herald", ct.Env("t", []string{"x"}, 5, change.OpInsert, `{"value":5}`))
	if err != nil {
		t.Fatal(err)
	}
	wrong.Subject = "herald.public.t.y"
	ct.PublishMsg(t, js, wrong)
	for i := 0; i < 20; i++ {
		ct.Publish(t, js, ct.Env("t", []string{fmt.Sprintf("good%d", i)}, int64(100+i), change.OpInsert, `{"value":0}`))
	}

	r.WaitMetric(t, "herald_consumer_dead_lettered_total", 6)
	r.WaitMetric(t, "herald_consumer_processed_total", 20)
	testproc.Eventually(t, wait, ct.Settled(js, "dlq"))

	dls := ct.DeadLetters(t, js)
	if len(dls) != 6 {
		t.Fatalf("%d dead letters, want 6", len(dls))
	}
	reasons := map[string]string{}
	for _, m := range dls {
		if m.Subject != change.DLQSubject("herald", "dlq") {
			t.Fatalf("dead letter on %s, want %s", m.Subject, change.DLQSubject("herald", "dlq"))
		}
		subj := m.Header.Get(consumers.HeaderDLQSubject)
		reasons[subj] = m.Header.Get(consumers.HeaderDLQReason)
		if m.Header.Get(consumers.HeaderDLQConsumer) != "dlq" || m.Header.Get(consumers.HeaderDLQStream) != "HERALD" ||
			m.Header.Get(consumers.HeaderDLQSequence) == "" || m.Header.Get(consumers.HeaderDLQDeliveries) == "" {
			t.Fatalf("dead letter of %s lacks headers: %v", subj, m.Header)
		}
		if m.Header.Get(change.HeaderMsgID) != "" && !strings.HasPrefix(m.Header.Get(change.HeaderMsgID), "dlq:") {
			t.Fatalf("dead letter kept the original message id: %v", m.Header)
		}
		if subj != "herald.public.t.garbage" && m.Header.Get(consumers.HeaderDLQMsgID) == "" {
			t.Fatalf("dead letter of %s lost the original message id: %v", subj, m.Header)
		}
		if subj == "herald.public.t.garbage" && string(m.Data) != "not json {" {
			t.Fatalf("dead letter body = %q, want the original", m.Data)
		}
	}
	wantReasons := map[string]string{
		"herald.public.t.perm":    "value rejected",
		"herald.public.t.exhaust": "failed 2 deliveries",
		"herald.public.t.big":     "too large",
		"herald.public.t.panic":   "panicked",
		"herald.public.t.garbage": "malformed",
		"herald.public.t.y":       "malformed",
	}
	for subj, want := range wantReasons {
		if !strings.Contains(reasons[subj], want) {
			t.Fatalf("dead letter of %s: reason %q, want it to mention %q (all: %v)", subj, reasons[subj], want, reasons)
		}
	}
	for _, e := range rec.snapshot() {
		if k := e.Key[0]; k == "big" || k == "x" || k == "perm" || k == "exhaust" || k == "panic" {
			t.Fatalf("handler applied poison change %s", k)
		}
	}
}

func TestStaleVersionSkipped(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))

	rec := newRecorder()
	c := cfg("stale")
	c.DeliverPolicy = consumers.DeliverAll
	r := start(t, js, c, rec, consumers.WithGuard(guarded{rec}))

	newer := ct.Env("t", []string{"k"}, 5, change.OpUpdate, `{"value":5}`)
	older := ct.Env("t", []string{"k"}, 3, change.OpUpdate, `{"value":3}`)
	same := ct.Env("t", []string{"k"}, 5, change.OpUpdate, `{"value":5}`)
	same.Source = "replay" // another message id, same version
	ct.Publish(t, js, newer, older, same)

	r.WaitMetric(t, "herald_consumer_stale_skipped_total", 2)
	testproc.Eventually(t, wait, ct.Settled(js, "stale"))
	if got := rec.byKey()["k"]; !slices.Equal(got, []int64{5}) {
		t.Fatalf("applied %v, want only version 5", got)
	}
}

func TestQuietPeriodCollapsesChanges(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))

	clock := ct.NewClock()
	rec := newRecorder()
	c := cfg("quiet")
	c.Quiet = time.Second
	c.DeliverPolicy = consumers.DeliverAll
	r := start(t, js, c, rec, consumers.WithClock(clock), consumers.WithGuard(guarded{rec}))

	for i := int64(1); i <= 100; i++ {
		ct.Publish(t, js, ct.Env("t", []string{"h"}, i, change.OpUpdate, fmt.Sprintf(`{"value":%d}`, i)))
	}
	ct.Publish(t, js, ct.Env("t", []string{"other"}, 101, change.OpUpdate, `{"value":101}`))
	r.WaitMetric(t, "herald_consumer_held", 101)
	if n := len(rec.snapshot()); n != 0 {
		t.Fatalf("%d changes applied inside the quiet period", n)
	}
	// Held messages stay unacked until the newest is applied.
	if ap, _, err := ct.AckPending(js, "quiet"); err != nil || ap != 101 {
		t.Fatalf("ack pending = %d (%v), want 101 held", ap, err)
	}

	clock.Advance(time.Second)
	r.WaitMetric(t, "herald_consumer_processed_total", 2)
	testproc.Eventually(t, wait, ct.Settled(js, "quiet"))
	got := rec.byKey()
	if !slices.Equal(got["h"], []int64{100}) || !slices.Equal(got["other"], []int64{101}) {
		t.Fatalf("applied %v, want h:[100] other:[101]", got)
	}
	if n := r.Metric(t, "herald_consumer_coalesced_total"); n != 99 {
		t.Fatalf("coalesced = %v, want 99", n)
	}
	if n := r.Metric(t, "herald_consumer_held"); n != 0 {
		t.Fatalf("held = %v after the quiet period", n)
	}
}

func TestTruncateIsABarrier(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))

	clock := ct.NewClock()
	rec := newRecorder()
	c := cfg("barrier")
	c.Quiet = time.Second
	c.DeliverPolicy = consumers.DeliverAll
	r := start(t, js, c, rec, consumers.WithClock(clock))

	ct.Publish(t, js,
		ct.Env("t", []string{"a"}, 1, change.OpInsert, `{"value":1}`),
		ct.Env("t", []string{"b"}, 2, change.OpInsert, `{"value":2}`),
		ct.Env("t", nil, 3, change.OpTruncate, ""),
		ct.Env("t", []string{"a"}, 4, change.OpInsert, `{"value":4}`))

	// a:1 and b:2 are held by the quiet period; the truncate flushes them
	// first, without the clock moving. a:4 comes after it and waits.
	r.WaitMetric(t, "herald_consumer_processed_total", 3)
	r.WaitMetric(t, "herald_consumer_held", 1)
	calls := rec.snapshot()
	if len(calls) != 3 || calls[2].Op != change.OpTruncate {
		t.Fatalf("calls before the clock moved: %v, want a:1 and b:2, then the truncate", ids(calls))
	}
	clock.Advance(time.Second)
	r.WaitMetric(t, "herald_consumer_processed_total", 4)
	if calls := rec.snapshot(); calls[3].ID != 4 {
		t.Fatalf("last call = %d, want a:4", calls[3].ID)
	}
	testproc.Eventually(t, wait, ct.Settled(js, "barrier"))
}

func ids(es []*change.Envelope) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%s:%d", keyOf(e), e.ID))
	}
	return out
}

func TestSurvivesServerRestart(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{SyncAlways: true})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))

	rec := newRecorder()
	r := start(t, js, cfg("restart"), rec)
	for i := int64(1); i <= 10; i++ {
		ct.Publish(t, js, ct.Env("t", []string{fmt.Sprint(i)}, i, change.OpInsert, `{"value":0}`))
	}
	r.WaitMetric(t, "herald_consumer_processed_total", 10)

	srv.Stop()
	testproc.Eventually(t, wait, func() string {
		if r.C.Ready() == nil {
			return "still ready with the server down"
		}
		return ""
	})
	srv.Restart(t)
	for i := int64(11); i <= 20; i++ {
		ct.Publish(t, js, ct.Env("t", []string{fmt.Sprint(i)}, i, change.OpInsert, `{"value":0}`))
	}
	r.WaitMetric(t, "herald_consumer_processed_total", 20)
	testproc.Eventually(t, wait, ct.Settled(js, "restart"))
	testproc.Eventually(t, wait, func() string {
		if err := r.C.Ready(); err != nil {
			return err.Error()
		}
		return ""
	})
}

func TestDeletedDurableIsRecreated(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.State(1))

	rec := newRecorder()
	r := start(t, js, cfg("gone"), rec)
	ct.Publish(t, js, ct.Env("t", []string{"a"}, 1, change.OpInsert, `{"value":1}`))
	r.WaitMetric(t, "herald_consumer_processed_total", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, ct.StreamName, "gone"); err != nil {
		t.Fatal(err)
	}
	ct.Publish(t, js, ct.Env("t", []string{"b"}, 2, change.OpInsert, `{"value":2}`))
	testproc.Eventually(t, wait, func() string {
		if got := rec.byKey()["b"]; !slices.Equal(got, []int64{2}) {
			return fmt.Sprintf("b applied %v", got)
		}
		return ""
	})
}

func TestShutdownFinishesInFlightAndGivesBackTheRest(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.Log(time.Hour))

	var cancelRun context.CancelFunc // set before Run starts
	var finished, ctxCancelled atomic.Bool
	entered := make(chan struct{})
	slow := consumers.HandlerFunc(func(ctx context.Context, e *change.Envelope) error {
		if e.Key[0] != "slow" {
			return nil
		}
		close(entered)
		cancelRun()
		time.Sleep(200 * time.Millisecond) // simulated work that outlives the cancel
		ctxCancelled.Store(ctx.Err() != nil)
		finished.Store(true)
		return nil
	})
	c := cfg("drain")
	c.Workers = 1
	c.DeliverPolicy = consumers.DeliverAll
	ct.Publish(t, js, ct.Env("t", []string{"slow"}, 1, change.OpInsert, `{"value":1}`))
	for i := int64(2); i <= 6; i++ {
		ct.Publish(t, js, ct.Env("t", []string{fmt.Sprint(i)}, i, change.OpInsert, `{"value":0}`))
	}

	cons, err := consumers.New(js, c, slow, consumers.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if cons.Ready() == nil {
		t.Fatal("ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancelRun = cancel
	done := make(chan error, 1)
	go func() { done <- cons.Run(ctx) }()
	<-entered
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}
	if !finished.Load() {
		t.Fatal("Run returned before the change in flight was applied")
	}
	if ctxCancelled.Load() {
		t.Fatal("the handler's context was cancelled with Run's")
	}

	// What was not applied is redelivered to the next run; the slow change
	// was acked and is not.
	rec := newRecorder()
	r := start(t, js, c, rec)
	testproc.Eventually(t, wait, ct.Settled(js, "drain"))
	got := rec.byKey()
	if _, again := got["slow"]; again {
		t.Fatalf("the applied change was delivered again: %v", got)
	}
	for i := 2; i <= 6; i++ {
		if len(got[fmt.Sprint(i)]) == 0 {
			t.Fatalf("change %d given back on shutdown was never applied: %v", i, got)
		}
	}
	_ = r
}

func TestMissingStreamIsWaitedFor(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)

	rec := newRecorder()
	r := start(t, js, cfg("early"), rec)
	testproc.Eventually(t, wait, func() string {
		if err := r.C.Ready(); err == nil || !strings.Contains(err.Error(), "does not exist") {
			return fmt.Sprintf("Ready() = %v, want the missing stream", err)
		}
		return ""
	})
	ct.CreateStream(t, js, ct.State(1))
	ct.Publish(t, js, ct.Env("t", []string{"a"}, 1, change.OpInsert, `{"value":1}`))
	r.WaitMetric(t, "herald_consumer_processed_total", 1)
}

func TestExistingDLQStreamMustTakeTheSubject(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.State(1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "HERALD_DLQ", Subjects: []string{"elsewhere.>"}}); err != nil {
		t.Fatal(err)
	}
	c, err := consumers.New(js, cfg("x"), newRecorder(), consumers.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "herald_dlq.x") {
		t.Fatalf("Run = %v, want a refusal naming the dead-letter subject", err)
	}
}
