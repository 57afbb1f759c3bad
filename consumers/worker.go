package consumers

import (
	"container/heap"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/change"
)

// item is what the dispatcher hands a worker: a message, or a barrier to
// close once everything given before it is applied.
type item struct {
	msg     jetstream.Msg
	barrier chan struct{}
}

// worker applies the messages of the subjects that hash to it, one key at a
// time, so one key is always serial. With a quiet period it holds the newest
// change of each key until the key has been quiet. With a BatchHandler it
// hands the handler what it has queued, one change per key, at once.
type worker struct {
	c    *Consumer
	in   chan item
	held map[string]*pending
	due  deadlines

	timerAt time.Time
	timerC  <-chan time.Time

	// The batch being collected, and where each subject is in it.
	batch []ready
	index map[string]int
}

// ready is a change to apply now, with the older messages of its key that
// it settles.
type ready struct {
	msg        jetstream.Msg
	env        *change.Envelope
	superseded []jetstream.Msg
}

// pending is a key waiting for its quiet period to end.
type pending struct {
	newest     jetstream.Msg
	env        *change.Envelope
	superseded []jetstream.Msg
	first      time.Time
	deadline   time.Time
}

func newWorker(c *Consumer) *worker {
	return &worker{c: c, in: make(chan item, 64), held: make(map[string]*pending), index: make(map[string]int)}
}

func (w *worker) run() {
	for {
		// Shutdown wins over queued work: what is not started is given
		// back, not applied late.
		select {
		case <-w.c.quit:
			w.abandon()
			return
		default:
		}
		select {
		case it := <-w.in:
			if it.barrier != nil {
				w.flushAll()
				close(it.barrier)
				continue
			}
			if w.c.bh != nil && w.c.cfg.Quiet <= 0 {
				w.collect(it.msg)
				continue
			}
			w.receive(it.msg)
		case <-w.timerC:
			w.timerC, w.timerAt = nil, time.Time{}
			w.flushDue(w.c.clock.Now())
			w.schedule()
		case <-w.c.quit:
			w.abandon()
			return
		}
	}
}

// collect takes first and what else is already queued, without waiting,
// up to MaxBatch messages, and applies them as one batch: one change per
// subject, the newest, which settles the older ones. A barrier ends the
// batch; it is honoured once the batch is applied.
func (w *worker) collect(first jetstream.Msg) {
	var barrier chan struct{}
	w.add(first)
more:
	for n := 1; n < w.c.cfg.MaxBatch; n++ {
		select {
		case <-w.c.stopping:
			// What is still queued is given back, not started.
			break more
		case it := <-w.in:
			if it.barrier != nil {
				barrier = it.barrier
				break more
			}
			w.add(it.msg)
		default:
			break more
		}
	}
	w.c.applyReady(w.batch)
	clear(w.batch)
	w.batch = w.batch[:0]
	clear(w.index)
	if barrier != nil {
		w.flushAll()
		close(barrier)
	}
}

// add decodes a message into the batch being collected. A second message of
// a subject already in it keeps the newer version and settles the other
// with it.
func (w *worker) add(m jetstream.Msg) {
	e, ok := w.c.decode(m)
	if !ok {
		return
	}
	subj := m.Subject()
	i, dup := w.index[subj]
	if !dup {
		w.index[subj] = len(w.batch)
		w.batch = append(w.batch, ready{msg: m, env: e})
		return
	}
	r := &w.batch[i]
	if r.env.Version().Less(e.Version()) {
		r.superseded = append(r.superseded, r.msg)
		r.msg, r.env = m, e
	} else {
		// An older or equal version arriving late (a redelivery).
		r.superseded = append(r.superseded, m)
	}
	w.c.m.coalesced.Inc()
}

// receive decodes a message and applies it, or holds it for the quiet period.
func (w *worker) receive(m jetstream.Msg) {
	e, ok := w.c.decode(m)
	if !ok {
		return
	}
	if w.c.cfg.Quiet <= 0 {
		w.c.apply(m, e, nil)
		return
	}
	now := w.c.clock.Now()
	subj := m.Subject()
	p := w.held[subj]
	switch {
	case p == nil:
		p = &pending{newest: m, env: e, first: now}
		w.held[subj] = p
	case p.env.Version().Less(e.Version()):
		p.superseded = append(p.superseded, p.newest)
		p.newest, p.env = m, e
		w.c.m.coalesced.Inc()
	default:
		// An older version arriving late (a redelivery): it is
		// superseded by what is already held.
		p.superseded = append(p.superseded, m)
		w.c.m.coalesced.Inc()
	}
	w.c.m.held.Inc()
	// The quiet period restarts with every change, but a key that never
	// goes quiet is still applied before its messages' ack wait runs out.
	p.deadline = now.Add(w.c.cfg.Quiet)
	if limit := p.first.Add(w.c.cfg.AckWait / 2); limit.Before(p.deadline) {
		p.deadline = limit
	}
	heap.Push(&w.due, deadline{at: p.deadline, subject: subj})
	w.schedule()
}

// flushDue applies every held key whose deadline has passed (as one batch,
// for a BatchHandler).
func (w *worker) flushDue(now time.Time) {
	var out []ready
	for w.due.Len() > 0 && !w.due[0].at.After(now) {
		d := heap.Pop(&w.due).(deadline)
		p := w.held[d.subject]
		if p == nil || !p.deadline.Equal(d.at) {
			continue // superseded entry: the key's deadline moved
		}
		w.release(d.subject, p)
		out = append(out, ready{msg: p.newest, env: p.env, superseded: p.superseded})
	}
	w.c.applyReady(out)
}

// flushAll applies every held key now (a barrier is coming).
func (w *worker) flushAll() {
	var out []ready
	for subj, p := range w.held {
		w.release(subj, p)
		out = append(out, ready{msg: p.newest, env: p.env, superseded: p.superseded})
	}
	w.due = w.due[:0]
	w.timerC, w.timerAt = nil, time.Time{}
	w.c.applyReady(out)
}

func (w *worker) release(subj string, p *pending) {
	delete(w.held, subj)
	w.c.m.held.Sub(float64(1 + len(p.superseded)))
}

// abandon gives back everything not applied yet, on shutdown.
func (w *worker) abandon() {
	for subj, p := range w.held {
		w.release(subj, p)
		w.c.giveBack(p.newest)
		for _, s := range p.superseded {
			w.c.giveBack(s)
		}
	}
	for {
		select {
		case it := <-w.in:
			if it.barrier != nil {
				close(it.barrier)
				continue
			}
			w.c.giveBack(it.msg)
		default:
			return
		}
	}
}

// schedule arms the timer for the earliest deadline.
func (w *worker) schedule() {
	if w.due.Len() == 0 {
		w.timerC, w.timerAt = nil, time.Time{}
		return
	}
	next := w.due[0].at
	if w.timerC != nil && w.timerAt.Equal(next) {
		return
	}
	w.timerAt = next
	w.timerC = w.c.clock.After(next.Sub(w.c.clock.Now()))
}

// deadline is a heap entry; entries left behind when a key's deadline moves
// are skipped when popped.
type deadline struct {
	at      time.Time
	subject string
}

type deadlines []deadline

func (d deadlines) Len() int           { return len(d) }
func (d deadlines) Less(i, j int) bool { return d[i].at.Before(d[j].at) }
func (d deadlines) Swap(i, j int)      { d[i], d[j] = d[j], d[i] }
func (d *deadlines) Push(x any)        { *d = append(*d, x.(deadline)) }
func (d *deadlines) Pop() any {
	old := *d
	x := old[len(old)-1]
	*d = old[:len(old)-1]
	return x
}
