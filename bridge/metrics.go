package bridge

import "github.com/prometheus/client_golang/prometheus"

// metrics are the bridge's Prometheus collectors.
type metrics struct {
	published      prometheus.Counter
	batches        *prometheus.CounterVec
	batchSize      prometheus.Histogram
	publishSeconds *prometheus.HistogramVec
	backlogRows    prometheus.Gauge
	oldestSeconds  prometheus.Gauge
	leader         prometheus.Gauge
	gateOpen       prometheus.Gauge
	reconnects     *prometheus.CounterVec
	markers        prometheus.Counter
	wakeups        *prometheus.CounterVec
	skipped        prometheus.Counter
	purges         prometheus.Counter
	publishErrors  prometheus.Counter
	inFlight       prometheus.Gauge
	covered        prometheus.Counter
	gateCloses     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bridge_published_total", Help: "Changes published to JetStream and acknowledged.",
		}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_batches_total", Help: "Batches published, by kind (atomic, async, single).",
		}, []string{"kind"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "herald_bridge_batch_size", Help: "Changes per drained batch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000},
		}),
		publishSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "herald_bridge_publish_seconds", Help: "Time from publishing a batch to its acknowledgement, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18),
		}, []string{"kind"}),
		backlogRows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bridge_backlog_rows", Help: "Changes in the log table not yet published (refreshed every stats interval).",
		}),
		oldestSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bridge_oldest_unpublished_seconds", Help: "Age of the oldest unpublished change.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bridge_leader", Help: "1 while this bridge holds the leader lock.",
		}),
		gateOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bridge_gate_open", Help: "1 while the wake-up gate is open (triggers notify).",
		}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_reconnects_total", Help: "Reconnections, by target (postgres, nats).",
		}, []string{"target"}),
		markers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bridge_markers_total", Help: "Changes too large for a message, published as markers.",
		}),
		wakeups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_wakeups_total", Help: "Drains started, by reason (notify, poll, safety, recheck, settle, more, start).",
		}, []string{"reason"}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bridge_recovery_skipped_total", Help: "Changes not republished during recovery because their subject already held that version or a newer one.",
		}),
		purges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bridge_truncate_purges_total", Help: "Stream purges after an acknowledged TRUNCATE.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bridge_publish_errors_total", Help: "Failed publish attempts (the batch is retried; nothing is deleted).",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_bridge_batches_in_flight", Help: "Batches published and not yet acknowledged.",
		}),
		covered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_bridge_notifications_covered_total", Help: "Notifications that started no read: a read had returned their transaction's changes already.",
		}),
		gateCloses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_gate_closes_total", Help: "Times the wake-up gate closed, by reason (rate: the change rate reached the close rate; queue: writers queued on NOTIFY's lock; nats: publishing failed).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.published, m.batches, m.batchSize, m.publishSeconds, m.backlogRows, m.oldestSeconds,
			m.leader, m.gateOpen, m.reconnects, m.markers, m.wakeups, m.skipped, m.purges, m.publishErrors,
			m.inFlight, m.covered, m.gateCloses)
	}
	return m
}
