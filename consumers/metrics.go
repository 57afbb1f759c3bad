package consumers

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics holds the collectors of one consumer, curried with its label.
type metrics struct {
	processed    prometheus.Counter
	failed       prometheus.Counter
	deadLettered prometheus.Counter
	staleSkipped prometheus.Counter
	coalesced    prometheus.Counter
	pending      prometheus.Gauge
	ackPending   prometheus.Gauge
	held         prometheus.Gauge
	apply        prometheus.Observer
	batchSize    prometheus.Observer
}

// newMetrics registers the consumer collectors on reg, or reuses those
// already registered there (several consumers in one process share the
// vectors and differ by their "consumer" label).
func newMetrics(reg prometheus.Registerer, consumer string) (*metrics, error) {
	counter := func(name, help string) (*prometheus.CounterVec, error) {
		return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"consumer"}))
	}
	gauge := func(name, help string) (*prometheus.GaugeVec, error) {
		return register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"consumer"}))
	}
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	processed, err := counter("herald_consumer_processed_total", "Changes applied by the handler.")
	keep(err)
	failed, err := counter("herald_consumer_failed_total", "Handler calls that returned an error (retried or dead-lettered).")
	keep(err)
	dead, err := counter("herald_consumer_dead_lettered_total", "Messages copied to the dead-letter stream and terminated.")
	keep(err)
	stale, err := counter("herald_consumer_stale_skipped_total", "Messages acked without calling the handler because a newer or equal version was already applied.")
	keep(err)
	coalesced, err := counter("herald_consumer_coalesced_total", "Messages superseded by a newer change of the same key within the quiet period or a batch.")
	keep(err)
	pending, err := gauge("herald_consumer_pending", "Messages matching the consumer that the server has not delivered yet (lag), refreshed periodically.")
	keep(err)
	ackPending, err := gauge("herald_consumer_ack_pending", "Messages delivered and not yet acknowledged, refreshed periodically.")
	keep(err)
	held, err := gauge("herald_consumer_held", "Messages waiting for their key's quiet period to end.")
	keep(err)
	apply, err := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_consumer_apply_seconds",
		Help:    "Time the handler took to apply one change (for a batch handler, the time of the batch that applied it).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
	}, []string{"consumer"}))
	keep(err)
	batchSize, err := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herald_consumer_batch_size",
		Help:    "Changes handed to a batch handler at once.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11),
	}, []string{"consumer"}))
	keep(err)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &metrics{
		processed:    processed.WithLabelValues(consumer),
		failed:       failed.WithLabelValues(consumer),
		deadLettered: dead.WithLabelValues(consumer),
		staleSkipped: stale.WithLabelValues(consumer),
		coalesced:    coalesced.WithLabelValues(consumer),
		pending:      pending.WithLabelValues(consumer),
		ackPending:   ackPending.WithLabelValues(consumer),
		held:         held.WithLabelValues(consumer),
		apply:        apply.WithLabelValues(consumer),
		batchSize:    batchSize.WithLabelValues(consumer),
	}, nil
}

// register registers c, or returns the collector of the same description
// that is already registered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
