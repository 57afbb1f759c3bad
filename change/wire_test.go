package change

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startJetStream runs a real nats-server with JetStream in-process and returns
// a JetStream handle connected to it.
func startJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatalf("creating nats-server: %v", err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready after 10s")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connecting to nats-server: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// TestWireRoundTrip publishes messages built by NewMsg through a real
// JetStream stream and reads them back with table and key filters: the
// server accepts every subject (the longest possible one included), headers
// survive the wire unchanged, FromMsg's cross-checks pass, the filters select
// what they promise and Nats-Msg-Id deduplicates a republish.
func TestWireRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startJetStream(t)
	prefix := strings.Repeat("p", MaxPrefixLen)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "HERALD", Subjects: []string{prefix + ".>"}})
	if err != nil {
		t.Fatalf("creating stream: %v", err)
	}

	envs := sampleEnvelopes()
	// The longest subject: every token exactly MaxTokenLen bytes, 32 key columns.
	widest := sampleUpdate()
	widest.Schema, widest.Table = strings.Repeat("s", MaxTokenLen), strings.Repeat("t", MaxTokenLen)
	widest.Key = make([]string, MaxKeyColumns)
	for i := range widest.Key {
		widest.Key[i] = strings.Repeat(string(rune('a'+i%26)), MaxTokenLen)
	}
	// A hashed key, a header that needs encoding, odd characters everywhere.
	hashed := sampleUpdate()
	hashed.Table, hashed.Key, hashed.ID = "new\nline", []string{strings.Repeat("x.", 80), "\x00 \u00a0"}, 43

	published := []*Envelope{envs["update"], envs["odd"], envs["truncate"], envs["marker"], widest, hashed}
	for i, e := range published {
		e.ID = int64(100 + i) // distinct message ids
		m, err := NewMsg(prefix, e)
		if err != nil {
			t.Fatalf("NewMsg: %v", err)
		}
		if len(m.Subject) > 4096-200 {
			t.Fatalf("subject of %d bytes leaves no room in the control line", len(m.Subject))
		}
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("publishing %q (%d bytes): %v", m.Subject, len(m.Subject), err)
		}
		if ack.Duplicate {
			t.Fatalf("message %d reported as duplicate", i)
		}
	}
	// A republish of the same change is dropped by the server.
	again, err := NewMsg(prefix, envs["update"])
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := js.PublishMsg(ctx, again); err != nil || !ack.Duplicate {
		t.Fatalf("republish: ack %+v, err %v; want a duplicate", ack, err)
	}

	fetch := func(filter string, n int) []*Envelope {
		t.Helper()
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
		if err != nil {
			t.Fatalf("consumer on %q: %v", filter, err)
		}
		var got []*Envelope
		for len(got) < n {
			batch, err := cons.Fetch(n-len(got), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatalf("fetch on %q: %v", filter, err)
			}
			count := 0
			for msg := range batch.Messages() {
				count++
				e, err := FromMsg(msg.Subject(), msg.Headers(), msg.Data())
				if err != nil {
					t.Fatalf("FromMsg(%q): %v", msg.Subject(), err)
				}
				if msg.Headers().Get(HeaderTable) != TableHeader(e.Schema, e.Table) {
					t.Fatalf("Herald-Table came through as %q", msg.Headers().Get(HeaderTable))
				}
				got = append(got, e)
			}
			if err := batch.Error(); err != nil {
				t.Fatalf("fetch on %q: %v", filter, err)
			}
			if count == 0 {
				t.Fatalf("fetch on %q: nothing within 5s, have %d of %d", filter, len(got), n)
			}
		}
		return got
	}

	// The table filter of public.mail_users sees its key messages and its
	// truncate (the odd envelope lives in another schema and table).
	got := fetch(TableFilter(prefix, "public", "mail_users"), 3)
	for i, name := range []string{"update", "truncate", "marker"} {
		if msg := envelopeDiff(envs[name], got[i]); msg != "" {
			t.Fatalf("%s: %s", name, msg)
		}
	}
	if got := fetch(KeyFilter(prefix, "my schema", `t"q\`, envs["odd"].Key), 1); envelopeDiff(envs["odd"], got[0]) != "" {
		t.Fatalf("odd: %s", envelopeDiff(envs["odd"], got[0]))
	}
	if got := fetch(KeyFilter(prefix, widest.Schema, widest.Table, widest.Key), 1); envelopeDiff(widest, got[0]) != "" {
		t.Fatalf("widest: %s", envelopeDiff(widest, got[0]))
	}
	if got := fetch(TableFilter(prefix, "public", "new\nline"), 1); envelopeDiff(hashed, got[0]) != "" {
		t.Fatalf("hashed: %s", envelopeDiff(hashed, got[0]))
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(len(published)) {
		t.Fatalf("stream holds %d messages, want %d", info.State.Msgs, len(published))
	}
}
