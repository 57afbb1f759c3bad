// Command herald-bridge relays Herald's change log from PostgreSQL to NATS
// JetStream. Run one per database (more are hot standbys); configure it
// with HERALD_* variables (herald-bridge -h lists them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/cmd/internal/envcfg"
	"github.com/herald-cdc/herald/cmd/internal/lifecycle"
	"github.com/herald-cdc/herald/internal/ops"
)

// config is every variable herald-bridge reads.
type config struct {
	envcfg.Common
	DatabaseURL      string        `envconfig:"DATABASE_URL" desc:"PostgreSQL connection (URL or key=value DSN); empty: the PG* variables. Needs a direct session: LISTEN does not work through transaction pooling"`
	Source           string        `envconfig:"SOURCE" desc:"name of this database in message ids and envelopes (default: the database name)"`
	StreamPreset     string        `envconfig:"STREAM_PRESET" default:"state" desc:"configuration of a stream the bridge creates: state (last message per subject, for state-syncing consumers) or log (every change for HERALD_STREAM_MAX_AGE)"`
	StreamReplicas   int           `envconfig:"STREAM_REPLICAS" default:"1" desc:"replicas of a stream the bridge creates (3 on a NATS cluster)"`
	StreamMaxPerSubj int64         `envconfig:"STREAM_MAX_MSGS_PER_SUBJECT" default:"1" desc:"state preset: messages kept per subject"`
	StreamMaxAge     time.Duration `envconfig:"STREAM_MAX_AGE" default:"168h" desc:"log preset: how long changes are kept"`
	StreamDeleteTTL  time.Duration `envconfig:"STREAM_DELETE_TTL" default:"168h" desc:"state preset: how long delete messages stay; must outlast the longest a consumer may be down"`
	StreamMaxBytes   int64         `envconfig:"STREAM_MAX_BYTES" default:"-1" desc:"size limit of a stream the bridge creates (-1: none); when full, publishing stops and the backlog waits in PostgreSQL"`
	DuplicateWindow  time.Duration `envconfig:"DUPLICATE_WINDOW" default:"2m" desc:"duplicate window of a stream the bridge creates"`
	BatchSize        int           `envconfig:"BATCH_SIZE" default:"500" desc:"most changes read and published at once (at most 1000, the atomic batch limit)"`
	SmallBatch       int           `envconfig:"SMALL_BATCH" default:"16" desc:"largest batch published as single async publishes; larger ones go as one atomic batch"`
	InFlight         int           `envconfig:"IN_FLIGHT" default:"4" desc:"batches published at once without waiting for an earlier one's ack while NOTIFY is on (never two for one subject); while polling, one is published as the next is read"`
	PollInterval     time.Duration `envconfig:"POLL_INTERVAL" default:"1s" desc:"safety poll: the longest a change waits if a wake-up was missed"`
	PollPause        time.Duration `envconfig:"POLL_PAUSE" default:"500us" desc:"pause after an empty drain while polling at high change rates"`
	PollGather       time.Duration `envconfig:"POLL_GATHER" default:"10ms" desc:"while polling without a backlog, least time between two reads, so changes gather into one atomic batch (negative: none)"`
	PublishTimeout   time.Duration `envconfig:"PUBLISH_TIMEOUT" default:"5s" desc:"longest wait for JetStream to acknowledge a publish"`
	GateLease        time.Duration `envconfig:"GATE_LEASE" default:"10s" desc:"how long the wake-up gate stays open unrenewed: a dead bridge stops costing writers NOTIFY after it"`
	GateCloseRate    float64       `envconfig:"GATE_CLOSE_RATE" default:"2000" desc:"changes per second at which the bridge stops NOTIFY and polls"`
	GateOpenRate     float64       `envconfig:"GATE_OPEN_RATE" default:"0" desc:"changes per second below which (for HERALD_GATE_REOPEN_AFTER) NOTIFY resumes (0: 60% of HERALD_GATE_CLOSE_RATE)"`
	GateReopenAfter  time.Duration `envconfig:"GATE_REOPEN_AFTER" default:"2s" desc:"how long the rate must stay low before NOTIFY resumes"`
	GateQueueWaiters int           `envconfig:"GATE_QUEUE_WAITERS" default:"4" desc:"writers waiting on NOTIFY's commit lock that make the bridge stop NOTIFY and poll, whatever the rate (negative: never)"`
	GateQueueFor     time.Duration `envconfig:"GATE_QUEUE_FOR" default:"100ms" desc:"how long writers must stay queued on NOTIFY's lock (HERALD_GATE_QUEUE_WAITERS or more at every look, one each 50ms) before NOTIFY stops"`
	NATSConnectWait  time.Duration `envconfig:"NATS_CONNECT_TIMEOUT" default:"30s" desc:"how long to wait at start for the first NATS connection before giving up"`
	ShutdownTimeout  time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"15s" desc:"longest wait on SIGTERM for the batch in flight to finish"`
}

const intro = `herald-bridge relays Herald's change log from PostgreSQL to NATS JetStream.
Run one per database; further instances wait as hot standbys.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var cfg config
	if err := envcfg.ParseArgs("herald-bridge", args, stdout, intro, &cfg); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 2
	}
	if err := envcfg.Load(&cfg); err != nil {
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 2
	}
	logger, err := cfg.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 2
	}
	bcfg := bridge.Config{
		Source: cfg.Source, Prefix: cfg.SubjectPrefix, Stream: cfg.Stream, Preset: bridge.Preset(cfg.StreamPreset),
		Replicas: cfg.StreamReplicas, MaxMsgsPerSubject: cfg.StreamMaxPerSubj, MaxAge: cfg.StreamMaxAge,
		DeleteTTL: cfg.StreamDeleteTTL, MaxBytes: cfg.StreamMaxBytes, DuplicateWindow: cfg.DuplicateWindow,
		BatchSize: cfg.BatchSize, SmallBatch: cfg.SmallBatch, InFlight: cfg.InFlight, PollInterval: cfg.PollInterval, PollPause: cfg.PollPause, PollGather: cfg.PollGather,
		PublishTimeout: cfg.PublishTimeout, GateLease: cfg.GateLease, CloseRate: cfg.GateCloseRate,
		OpenRate: cfg.GateOpenRate, ReopenAfter: cfg.GateReopenAfter,
		QueueWaiters: cfg.GateQueueWaiters, QueueFor: cfg.GateQueueFor,
	}
	if err := bcfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	nc, err := cfg.NATS.Connect(logger)
	if err != nil {
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 1
	}
	defer nc.Close()
	if err := envcfg.WaitConnected(ctx, nc, cfg.NATSConnectWait); err != nil {
		fmt.Fprintf(stderr, "herald-bridge: cannot reach NATS at %s within %s: %v (is nats-server running with JetStream? check HERALD_NATS_URL)\n", cfg.URL, cfg.NATSConnectWait, err)
		return 1
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b, err := bridge.New(cfg.DatabaseURL, nc, bcfg, bridge.WithLogger(logger), bridge.WithRegisterer(reg))
	if err != nil {
		fmt.Fprintf(stderr, "herald-bridge: %v\n", err)
		return 2
	}
	serve := func(ctx context.Context) error { return ops.Serve(ctx, cfg.MetricsAddr, reg, b.Ready, logger) }
	err = lifecycle.Run(ctx, b.Run, serve, cfg.ShutdownTimeout,
		fmt.Errorf("the batch in flight did not finish within %s; its changes stay in the log and are published on the next start", cfg.ShutdownTimeout))
	if err != nil {
		logger.Error("herald-bridge stopped", "err", err)
		fmt.Fprintf(stderr, "herald-bridge: %s\n", envcfg.OneLine(err))
		return 1
	}
	logger.Info("herald-bridge stopped")
	return 0
}
