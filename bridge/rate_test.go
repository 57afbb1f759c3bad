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
