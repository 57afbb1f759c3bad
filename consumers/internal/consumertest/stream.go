package consumertest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/change"
)

// Stream names the tests use, the defaults of the runtime.
const (
	StreamName = "HERALD"
	Prefix     = "herald"
	DLQName    = "HERALD_DLQ"
)

// Preset is a data stream preset: State keeps the last PerSubject messages
// of every subject, Log keeps everything for MaxAge.
type Preset struct {
	PerSubject int64
	MaxAge     time.Duration
}

// State is the state preset keeping the last n messages of every subject.
func State(n int64) Preset { return Preset{PerSubject: n} }

// Log is the log preset keeping every message for maxAge.
func Log(maxAge time.Duration) Preset { return Preset{MaxAge: maxAge} }

// CreateStream creates the data stream the way the bridge does: subjects
// <prefix>.>, file storage, atomic publish allowed, discard new, a two-minute
// duplicate window, plus the preset's limits.
func CreateStream(t testing.TB, js jetstream.JetStream, p Preset) jetstream.Stream {
	t.Helper()
	cfg := jetstream.StreamConfig{
		Name:               StreamName,
		Subjects:           []string{Prefix + ".>"},
		Storage:            jetstream.FileStorage,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardNew,
		Duplicates:         2 * time.Minute,
		AllowAtomicPublish: true,
		MaxMsgsPerSubject:  -1,
		MaxAge:             p.MaxAge,
	}
	if p.PerSubject > 0 {
		cfg.MaxMsgsPerSubject = p.PerSubject
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatalf("creating stream %s: %v", StreamName, err)
	}
	return s
}

// Env is a valid insert/update/delete/snapshot envelope of table
// public.<table>, version (1, id); row is the new row as JSON (ignored for
// deletes).
func Env(table string, key []string, id int64, op change.Op, row string) *change.Envelope {
	e := &change.Envelope{
		V: change.EnvelopeVersion, Source: "test", Epoch: 1, ID: id, TxID: id,
		At:     time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(id) * time.Millisecond),
		Schema: "public", Table: table, Op: op, Key: key,
	}
	switch op {
	case change.OpDelete:
		e.Old = json.RawMessage(row)
	case change.OpTruncate:
		e.Key = nil
	default:
		e.New = json.RawMessage(row)
	}
	return e
}

// Publish publishes envelopes as the bridge does (change.NewMsg) and waits
// for each ack.
func Publish(t testing.TB, js jetstream.JetStream, envs ...*change.Envelope) {
	t.Helper()
	for _, e := range envs {
		m, err := change.NewMsg(Prefix, e)
		if err != nil {
			t.Fatalf("building message for %+v: %v", e, err)
		}
		PublishMsg(t, js, m)
	}
}

// PublishMsg publishes a raw message (a poison one, for instance) and waits
// for its ack. A publish that gets no answer (the server restarting) is
// repeated until Wait passes; the stream's duplicate window drops repeats
// of messages with an id, as it does for the bridge.
func PublishMsg(t testing.TB, js jetstream.JetStream, m *nats.Msg) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.PublishMsg(ctx, m)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishing to %s: %v", m.Subject, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Metric returns the value of a counter or gauge, summed over the series
// whose labels include labels ("name=value" pairs); 0 if there is none.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			matched := true
			for _, l := range labels {
				name, value, _ := strings.Cut(l, "=")
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == name && lp.GetValue() == value
				}
				matched = matched && found
			}
			if !matched {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// DeadLetters returns every message of the dead-letter stream, in order.
func DeadLetters(t testing.TB, js jetstream.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, DLQName)
	if err != nil {
		t.Fatalf("looking up %s: %v", DLQName, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("reading %s info: %v", DLQName, err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("reading %s message %d: %v", DLQName, seq, err)
		}
		out = append(out, m)
	}
	return out
}

// CountDeadLetters returns how many messages the dead-letter stream holds,
// or -1 while it does not exist.
func CountDeadLetters(js jetstream.JetStream) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, DLQName)
	if err != nil {
		return -1
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1
	}
	return int(info.State.Msgs)
}

// AckPending returns the consumer's unacknowledged and undelivered counts.
func AckPending(js jetstream.JetStream, durable string) (ackPending int, pending uint64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, StreamName, durable)
	if err != nil {
		return 0, 0, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.NumAckPending, info.NumPending, nil
}

// Settled is a testproc.Eventually condition: the consumer has nothing pending or
// unacknowledged.
func Settled(js jetstream.JetStream, durable string) func() string {
	return func() string {
		ap, p, err := AckPending(js, durable)
		if err != nil {
			return err.Error()
		}
		if ap != 0 || p != 0 {
			return fmt.Sprintf("consumer %s: %d unacknowledged, %d pending", durable, ap, p)
		}
		return ""
	}
}
