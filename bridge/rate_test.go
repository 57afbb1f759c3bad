package bridge

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRateGateHysteresis(t *testing.T) {
	g := newRateGate(1000, 200, time.Second)
	t0 := time.Unix(1_000_000, 0)
	require.True(t, g.wantOpen(t0, true), "idle and open: stays open")

	// 50 changes every 20ms = 2500/s: closes.
	now := t0
	for i := 0; i < 10; i++ {
		now = now.Add(20 * time.Millisecond)
		g.observe(now, 50)
	}
	require.InDelta(t, 2500, g.rate(now), 300)
	require.False(t, g.wantOpen(now, true), "high rate closes the gate")

	// 10 per 20ms = 500/s: between the thresholds, stays closed.
	for i := 0; i < 100; i++ {
		now = now.Add(20 * time.Millisecond)
		g.observe(now, 10)
		require.False(t, g.wantOpen(now, false), "between thresholds it stays closed")
	}
	require.True(t, g.wantOpen(now, true), "between thresholds an open gate stays open")

	// 1 per 20ms = 50/s: low, but must hold for a second before reopening.
	var opened time.Time
	start := now
	for i := 0; i < 100 && opened.IsZero(); i++ {
		now = now.Add(20 * time.Millisecond)
		g.observe(now, 1)
		if g.wantOpen(now, false) {
			opened = now
		}
	}
	require.False(t, opened.IsZero(), "a low rate reopens the gate")
	require.GreaterOrEqual(t, opened.Sub(start), time.Second, "only after the rate stayed low for reopenAfter")

	// A burst resets the low period.
	g.reset()
	require.InDelta(t, 0, g.rate(now), 0.001)
}

func TestQueueWatch(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type look struct {
		ms     int
		queued bool
		close  bool
	}
	for _, c := range []struct {
		name  string
		for_  time.Duration
		looks []look
	}{
		{"three looks in 100ms close", 100 * time.Millisecond, []look{{0, true, false}, {50, true, false}, {100, true, true}}},
		{"a look without a queue starts over", 100 * time.Millisecond, []look{{0, true, false}, {50, false, false}, {100, true, false}, {150, true, false}, {200, true, true}}},
		{"a late second look does not stand in for the missed ones", 100 * time.Millisecond, []look{{0, true, false}, {300, true, false}, {350, true, true}}},
		{"looks faster than every 50ms still need the time", 100 * time.Millisecond, []look{{0, true, false}, {10, true, false}, {20, true, false}, {30, true, false}, {100, true, true}}},
		{"the shortest setting: two looks 50ms apart", 50 * time.Millisecond, []look{{0, true, false}, {50, true, true}}},
		{"not a multiple of 50ms rounds the looks up", 75 * time.Millisecond, []look{{0, true, false}, {50, true, false}, {75, true, true}}},
		{"75ms: two looks are not enough", 75 * time.Millisecond, []look{{0, true, false}, {80, true, false}, {90, true, true}}},
		{"half a second: eleven looks", 500 * time.Millisecond, []look{{0, true, false}, {50, true, false}, {100, true, false}, {150, true, false}, {200, true, false}, {250, true, false}, {300, true, false}, {350, true, false}, {400, true, false}, {450, true, false}, {500, true, true}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var q queueWatch
			for i, l := range c.looks {
				require.Equal(t, l.close, q.look(at(l.ms), l.queued, c.for_), "look %d at %dms", i, l.ms)
			}
		})
	}
	var q queueWatch
	require.False(t, q.look(t0, true, 50*time.Millisecond))
	q.reset()
	require.False(t, q.look(at(50), true, 50*time.Millisecond), "reset forgets the looks")
}
