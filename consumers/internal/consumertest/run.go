package consumertest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/internal/testproc"
)

// Wait bounds every wait of the consumer tests.
const Wait = 30 * time.Second

type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Logger returns a debug logger writing to t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Running is a consumer started by Start.
type Running struct {
	C   *consumers.Consumer
	Reg *prometheus.Registry
	// Stop cancels Run and waits for it to return; it runs at the end of
	// the test if the test does not call it.
	Stop func()
}

// Start builds a consumer with a fresh registry (reg, or a new one), a
// logger to t.Log and a fast lag refresh, and runs it until Stop.
func Start(t *testing.T, js jetstream.JetStream, reg *prometheus.Registry, cfg consumers.Config, h consumers.Handler, opts ...consumers.Option) *Running {
	t.Helper()
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	opts = append([]consumers.Option{
		consumers.WithRegisterer(reg),
		consumers.WithLogger(Logger(t)),
		consumers.WithPendingInterval(100 * time.Millisecond),
	}, opts...)
	c, err := consumers.New(js, cfg, h, opts...)
	if err != nil {
		t.Fatalf("consumers.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(Wait):
				t.Errorf("Run did not return within %s of cancel", Wait)
			}
		})
	}
	t.Cleanup(stop)
	return &Running{C: c, Reg: reg, Stop: stop}
}

// Metric reads one of the consumer's metrics.
func (r *Running) Metric(t testing.TB, name string, labels ...string) float64 {
	return Metric(t, r.Reg, name, labels...)
}

// WaitMetric waits until a metric equals want.
func (r *Running) WaitMetric(t testing.TB, name string, want float64, labels ...string) {
	t.Helper()
	testproc.Eventually(t, Wait, func() string {
		if got := r.Metric(t, name, labels...); got != want {
			return fmt.Sprintf("%s = %v, want %v", name, got, want)
		}
		return ""
	})
}

// WaitReady waits until the consumer is consuming, so that what the test
// publishes next is not part of its bootstrap.
func (r *Running) WaitReady(t testing.TB) {
	t.Helper()
	testproc.Eventually(t, Wait, func() string {
		if err := r.C.Ready(); err != nil {
			return "not ready: " + err.Error()
		}
		return ""
	})
}
