package bridge

import "time"

// rateGate decides, from the change rate the drain loop observes, whether
// the wake-up gate should be open: NOTIFY at low rates (no polling cost,
// sub-millisecond wake-ups), polling at high rates (writers never queue on
// the notify lock). Hysteresis keeps it from flapping: it closes as soon as
// the rate reaches closeRate and opens only after the rate stayed below
// openRate for reopenAfter.
type rateGate struct {
	closeRate, openRate float64
	reopenAfter         time.Duration

	// The rate is counted in fixed buckets over a sliding window.
	bucket   time.Duration
	counts   []int
	starts   []time.Time
	head     int
	lowSince time.Time // zero: not currently low
}

const (
	rateBuckets = 10
	rateBucket  = 20 * time.Millisecond // window of 200 ms
)

func newRateGate(closeRate, openRate float64, reopenAfter time.Duration) *rateGate {
	return &rateGate{
		closeRate: closeRate, openRate: openRate, reopenAfter: reopenAfter,
		bucket: rateBucket, counts: make([]int, rateBuckets), starts: make([]time.Time, rateBuckets),
	}
}

// observe records n changes drained at now.
func (g *rateGate) observe(now time.Time, n int) {
	cur := now.Truncate(g.bucket)
	if !g.starts[g.head].Equal(cur) {
		g.head = (g.head + 1) % len(g.counts)
		g.starts[g.head] = cur
		g.counts[g.head] = 0
	}
	g.counts[g.head] += n
}

// rate is changes per second over the window ending at now.
func (g *rateGate) rate(now time.Time) float64 {
	window := g.bucket * time.Duration(len(g.counts))
	from := now.Add(-window)
	total := 0
	for i, c := range g.counts {
		if g.starts[i].After(from) {
			total += c
		}
	}
	return float64(total) / window.Seconds()
}

// wantOpen says whether the gate should be open at now, given whether it
// is open.
func (g *rateGate) wantOpen(now time.Time, open bool) bool {
	r := g.rate(now)
	if r >= g.closeRate {
		g.lowSince = time.Time{}
		return false
	}
	if open {
		return true
	}
	if r >= g.openRate {
		g.lowSince = time.Time{}
		return false
	}
	if g.lowSince.IsZero() {
		g.lowSince = now
	}
	return now.Sub(g.lowSince) >= g.reopenAfter
}

// queued notes that writers queued on NOTIFY's lock: the gate closes, and
// the low-rate period that reopens it starts afresh.
func (g *rateGate) queued() { g.lowSince = time.Time{} }

// reset forgets the history, as after a reconnect.
func (g *rateGate) reset() {
	for i := range g.counts {
		g.counts[i] = 0
		g.starts[i] = time.Time{}
	}
	g.lowSince = time.Time{}
}

// assumeLow starts the low-rate period reopenAfter ago, so a bridge that
// has just started opens the gate after its first quiet drain.
func (g *rateGate) assumeLow(now time.Time) { g.lowSince = now.Add(-g.reopenAfter) }
