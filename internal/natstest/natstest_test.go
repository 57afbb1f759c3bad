package natstest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// waitFor waits for a signal from a client callback.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// notify returns a channel and a function that signals it without blocking.
func notify() (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	return ch, func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func TestJetStreamSurvivesRestart(t *testing.T) {
	for _, syncAlways := range []bool{false, true} {
		name := "interval"
		if syncAlways {
			name = "always"
		}
		t.Run(name, func(t *testing.T) {
			srv := Start(t, Options{SyncAlways: syncAlways})
			if got := srv.Server().JetStreamConfig().SyncAlways; got != syncAlways {
				t.Fatalf("JetStream SyncAlways = %v, want %v", got, syncAlways)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			disconnected, onDisconnect := notify()
			reconnected, onReconnect := notify()
			nc := srv.Connect(t,
				nats.MaxReconnects(-1),
				nats.ReconnectWait(20*time.Millisecond),
				nats.DisconnectErrHandler(func(*nats.Conn, error) { onDisconnect() }),
				nats.ReconnectHandler(func(*nats.Conn) { onReconnect() }),
			)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
				Name: "HERALD", Subjects: []string{"herald.>"}, Storage: jetstream.FileStorage,
			})
			if err != nil {
				t.Fatal(err)
			}
			ack, err := js.Publish(ctx, "herald.test", []byte("before restart"))
			if err != nil {
				t.Fatal(err)
			}

			port := srv.Port()
			srv.Stop()
			waitFor(t, disconnected, "the client to see the server go")
			if srv.Server().Running() {
				t.Fatal("server still running after Stop")
			}
			srv.Stop() // stopping twice is harmless

			srv.Restart(t)
			if srv.Port() != port {
				t.Fatalf("port changed from %d to %d across Restart", port, srv.Port())
			}
			waitFor(t, reconnected, "the client to reconnect")

			msg, err := stream.GetMsg(ctx, ack.Sequence)
			if err != nil {
				t.Fatalf("message %d after restart: %v", ack.Sequence, err)
			}
			if string(msg.Data) != "before restart" || msg.Subject != "herald.test" {
				t.Fatalf("message after restart = %q on %s", msg.Data, msg.Subject)
			}
			ack2, err := js.Publish(ctx, "herald.test", []byte("after restart"))
			if err != nil {
				t.Fatal(err)
			}
			if ack2.Sequence != ack.Sequence+1 {
				t.Fatalf("sequence after restart = %d, want %d", ack2.Sequence, ack.Sequence+1)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	store := filepath.Join(t.TempDir(), "js")
	var mu sync.Mutex
	var lines []string
	srv := Start(t, Options{
		StoreDir:   store,
		MaxPayload: 4096,
		Logf: func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			lines = append(lines, fmt.Sprintf(format, args...))
		},
	})
	if srv.StoreDir() != store {
		t.Fatalf("StoreDir() = %q, want %q", srv.StoreDir(), store)
	}
	if !strings.HasPrefix(srv.URL(), "nats://127.0.0.1:") || srv.Port() <= 0 {
		t.Fatalf("URL() = %q, Port() = %d", srv.URL(), srv.Port())
	}
	nc := srv.Connect(t)
	if got := nc.MaxPayload(); got != 4096 {
		t.Fatalf("client sees MaxPayload %d, want 4096", got)
	}
	js := srv.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(store, "jetstream")); err != nil {
		t.Fatalf("JetStream store not in the given directory: %v", err)
	}
	if _, err := js.Publish(ctx, "s", make([]byte, 8192)); err == nil {
		t.Fatal("published a message above MaxPayload")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "Server is ready") }) {
		t.Fatalf("Logf did not receive the server's notices; got %q", lines)
	}
}
