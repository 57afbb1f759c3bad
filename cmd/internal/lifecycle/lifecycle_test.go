package lifecycle

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-cdc/herald/internal/ops"
)

var (
	errWork = errors.New("work failed")
	errLate = errors.New("late")
)

// part is a fake work or serve function: it waits for its context to end
// (when untilDone), then takes after to finish (or until the test ends),
// and returns err.
type part struct {
	untilDone bool
	after     time.Duration
	err       error
	release   chan struct{} // closed when the test ends
	ended     atomic.Bool   // set when the function has returned
	sawCancel atomic.Bool   // set when its context had ended by then
}

func (p *part) run(ctx context.Context) error {
	defer p.ended.Store(true)
	if p.untilDone {
		<-ctx.Done()
	}
	select {
	case <-time.After(p.after): // the part's own time to finish
	case <-p.release:
	}
	p.sawCancel.Store(ctx.Err() != nil)
	return p.err
}

func TestRun(t *testing.T) {
	tests := []struct {
		name   string
		work   *part
		serve  *part
		signal bool // cancel the parent context
		grace  time.Duration
		want   error
		// bounds of how long Run may take
		atLeast, atMost time.Duration
		// whether each part must have returned by the time Run does
		workEnded, serveEnded bool
	}{
		{
			name: "work fails by itself: its error, endpoints stopped",
			work: &part{err: errWork}, serve: &part{untilDone: true},
			grace: time.Minute, want: errWork, atMost: 5 * time.Second, workEnded: true, serveEnded: true,
		},
		{
			name: "endpoints fail: work cancelled, their error",
			work: &part{untilDone: true}, serve: &part{err: errors.New("address in use")},
			grace: time.Minute, want: errors.New("address in use"), atMost: 5 * time.Second, workEnded: true, serveEnded: true,
		},
		{
			name: "signal, work finishes in its grace: clean exit",
			work: &part{untilDone: true, after: 50 * time.Millisecond}, serve: &part{untilDone: true},
			signal: true, grace: time.Minute, want: nil, atLeast: 50 * time.Millisecond, atMost: 5 * time.Second, workEnded: true, serveEnded: true,
		},
		{
			name: "signal, work fails while stopping: its error",
			work: &part{untilDone: true, err: errWork}, serve: &part{untilDone: true},
			signal: true, grace: time.Minute, want: errWork, atMost: 5 * time.Second, workEnded: true, serveEnded: true,
		},
		{
			name: "signal, work outlasts its grace: late, at once",
			work: &part{untilDone: true, after: time.Hour}, serve: &part{untilDone: true},
			signal: true, grace: 100 * time.Millisecond, want: errLate, atLeast: 100 * time.Millisecond, atMost: 5 * time.Second,
		},
		{
			name: "signal, no grace: waits for work however long",
			work: &part{untilDone: true, after: 300 * time.Millisecond}, serve: &part{untilDone: true},
			signal: true, grace: 0, want: nil, atLeast: 300 * time.Millisecond, atMost: 5 * time.Second, workEnded: true, serveEnded: true,
		},
		{
			name: "endpoints fail and work hangs: their error after the grace",
			work: &part{untilDone: true, after: time.Hour}, serve: &part{err: errors.New("address in use")},
			grace: 100 * time.Millisecond, want: errors.New("address in use"), atLeast: 100 * time.Millisecond, atMost: 5 * time.Second, serveEnded: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			tc.work.release, tc.serve.release = release, release
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.signal {
				cancel()
			}
			start := time.Now()
			got := Run(ctx, tc.work.run, tc.serve.run, tc.grace, errLate)
			took := time.Since(start)
			if (got == nil) != (tc.want == nil) || got != nil && got.Error() != tc.want.Error() {
				t.Fatalf("Run returned %v, want %v", got, tc.want)
			}
			if took < tc.atLeast || took > tc.atMost {
				t.Fatalf("Run took %s, want between %s and %s", took, tc.atLeast, tc.atMost)
			}
			if tc.workEnded && !tc.work.ended.Load() {
				t.Error("Run returned before work did")
			}
			if tc.serveEnded && !tc.serve.ended.Load() {
				t.Error("Run returned before the endpoints stopped")
			}
			if tc.workEnded && tc.work.untilDone && !tc.work.sawCancel.Load() {
				t.Error("work's context was not cancelled")
			}
		})
	}
}

// TestLateEvenWhenEndpointsStopFirst: the endpoints stop the moment the
// signal comes (an empty address), and work does not; whichever Run sees
// first, the grace bounds the wait.
func TestLateEvenWhenEndpointsStopFirst(t *testing.T) {
	for range 50 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		hang := make(chan struct{})
		work := func(context.Context) error { <-hang; return nil }
		serve := func(ctx context.Context) error { return ops.Serve(ctx, "", nil, nil, nil) }
		done := make(chan error, 1)
		go func() { done <- Run(ctx, work, serve, 10*time.Millisecond, errLate) }()
		select {
		case err := <-done:
			if err != errLate {
				t.Fatalf("Run returned %v, want the late error", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run waited for work past its grace")
		}
		close(hang)
	}
}

// TestAddressInUseStopsTheProgram runs the real endpoints on an address
// another listener holds: the work is cancelled and the error names the
// address.
func TestAddressInUseStopsTheProgram(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	var cancelled atomic.Bool
	work := func(ctx context.Context) error {
		<-ctx.Done()
		cancelled.Store(true)
		return nil
	}
	serve := func(ctx context.Context) error { return ops.Serve(ctx, addr, nil, nil, nil) }
	err = Run(context.Background(), work, serve, time.Minute, errLate)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Run returned %v, want the endpoints' error naming %s", err, addr)
	}
	if !cancelled.Load() {
		t.Fatal("work was not cancelled when the endpoints failed")
	}
}
