package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-cdc/herald/schema"
)

// Channel is the NOTIFY channel Herald's triggers wake the bridge on.
const Channel = "herald"

// Bridge relays the change log of one database to JetStream. Create it
// with New and run it with Run.
type Bridge struct {
	cfg     Config
	pgCfg   *pgx.ConnConfig
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	m       *metrics
	ready   atomic.Bool
	leading atomic.Bool
}

// Option configures a Bridge.
type Option func(*Bridge)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(b *Bridge) { b.log = l } }

// WithRegisterer registers the bridge's metrics.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(b *Bridge) { b.m = newMetrics(r) }
}

// New validates the configuration and prepares a bridge for the database
// at connString, publishing through nc. It does not connect to PostgreSQL.
func New(connString string, nc *nats.Conn, cfg Config, opts ...Option) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pgCfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("database URL is not a valid PostgreSQL URL or DSN: %w", err)
	}
	if pgCfg.RuntimeParams == nil {
		pgCfg.RuntimeParams = map[string]string{}
	}
	if _, ok := pgCfg.RuntimeParams["application_name"]; !ok {
		pgCfg.RuntimeParams["application_name"] = "herald-bridge"
	}
	// TCP keepalives make a dead peer visible in seconds, not hours: losing
	// the session means losing the leader lock.
	dialer := &net.Dialer{
		Timeout:         10 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3},
	}
	pgCfg.DialFunc = dialer.DialContext
	if pgCfg.ConnectTimeout == 0 {
		pgCfg.ConnectTimeout = 10 * time.Second
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	b := &Bridge{cfg: cfg, pgCfg: pgCfg, nc: nc, js: js, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(b)
	}
	if b.m == nil {
		b.m = newMetrics(nil)
	}
	return b, nil
}

// Ready reports nil once the stream is verified and the bridge is connected
// to PostgreSQL as leader or standby.
func (b *Bridge) Ready() error {
	if !b.ready.Load() {
		return errors.New("not connected yet")
	}
	return nil
}

// Leading reports whether this bridge holds the leader lock.
func (b *Bridge) Leading() bool { return b.leading.Load() }

// ErrPermanent marks errors that retrying cannot fix (a missing schema, a
// stream that does not fit); Run returns them.
var ErrPermanent = errors.New("permanent")

// Run provisions the stream, then leads (or stands by) until ctx ends,
// reconnecting to PostgreSQL with backoff. It returns nil after a clean
// shutdown, or an error that retrying cannot fix.
func (b *Bridge) Run(ctx context.Context) error {
	if _, err := EnsureStream(ctx, b.js, b.cfg); err != nil {
		return err
	}
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	for {
		started := time.Now()
		err := b.session(ctx)
		b.ready.Store(false)
		b.leading.Store(false)
		b.m.leader.Set(0)
		b.m.gateOpen.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrPermanent) || errors.Is(err, schema.ErrNotInstalled) {
			return err
		}
		if time.Since(started) > 30*time.Second {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		b.log.Warn("postgres session ended; reconnecting", "err", err, "in", wait)
		b.m.reconnects.WithLabelValues("postgres").Inc()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// session connects, waits for the leader lock, and drains until the
// connection fails or ctx ends.
func (b *Bridge) session(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, b.pgCfg)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, _, err := schema.Installed(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, schema.Query("session_setup")); err != nil {
		return err
	}
	var epoch int64
	var dbName string
	if err := conn.QueryRow(ctx, schema.Query("log_epoch")).Scan(&epoch, &dbName); err != nil {
		return fmt.Errorf("reading install epoch: %w", err)
	}
	source := b.cfg.Source
	if source == "" {
		source = dbName
	}
	b.ready.Store(true)

	for standby := false; ; standby = true {
		var got bool
		if err := conn.QueryRow(ctx, schema.Query("leader_lock")).Scan(&got); err != nil {
			return fmt.Errorf("taking the leader lock: %w", err)
		}
		if got {
			break
		}
		if !standby {
			b.log.Info("another bridge leads this database; standing by")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(b.cfg.StandbyPoll):
		}
	}
	b.leading.Store(true)
	b.m.leader.Set(1)
	b.log.Info("leading", "source", source, "epoch", epoch, "stream", b.cfg.Stream, "prefix", b.cfg.Prefix)

	// LISTEN first, then drain everything: nothing committed before the
	// LISTEN is missed, and anything after it wakes us.
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return fmt.Errorf("LISTEN: %w", err)
	}
	d := newDrainer(b, conn, source, epoch)
	return d.run(ctx)
}

// isConnError reports whether err means the PostgreSQL session is gone.
func isConnError(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Severity == "FATAL" || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	return err != nil
}
