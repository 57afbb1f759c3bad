// Command herald-mailstore provisions Maildirs and their quotas from a table
// of mail users relayed by herald-bridge: a mailbox per row under
// HERALD_MAILSTORE_ROOT, moved when the row is renamed, archived when it is
// deleted. Configure it with HERALD_* variables (herald-mailstore -h lists
// them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/herald-cdc/herald/cmd/internal/envcfg"
	"github.com/herald-cdc/herald/cmd/internal/lifecycle"
	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/mailstore"
	"github.com/herald-cdc/herald/internal/ops"
)

// config is every variable herald-mailstore reads.
type config struct {
	envcfg.Common
	envcfg.Consumer
	Durable         string        `envconfig:"CONSUMER" default:"mailstore" desc:"durable consumer name; instances sharing it split the work (dry run with this unset: mailstore-dry-run)"`
	Root            string        `envconfig:"MAILSTORE_ROOT" required:"true" desc:"directory the mailboxes live under (<root>/<dba>/<username>/Maildir); created if missing; nothing outside it is touched"`
	Table           string        `envconfig:"MAILSTORE_TABLE" default:"public.mail_users" desc:"watched table (schema.table) with columns gid, dba, username and quota_bytes"`
	UID             int           `envconfig:"MAILSTORE_UID" desc:"uid owning every mailbox (with the row's gid); required when ownership is changed"`
	Chown           string        `envconfig:"MAILSTORE_CHOWN" default:"auto" desc:"change mailboxes' ownership: auto (when running as root), always or never"`
	Archive         string        `envconfig:"MAILSTORE_ARCHIVE" default:".archive" desc:"folder inside the root where deleted mailboxes are moved (<archive>/<dba>/<username>-<time>)"`
	PurgeAfter      time.Duration `envconfig:"MAILSTORE_PURGE_AFTER" default:"0s" desc:"remove archived mailboxes this long after their delete; 0 keeps them forever"`
	DryRun          bool          `envconfig:"MAILSTORE_DRY_RUN" default:"false" desc:"log what would be done and change nothing (messages are still acknowledged: use its own durable)"`
	NATSConnectWait time.Duration `envconfig:"NATS_CONNECT_TIMEOUT" default:"30s" desc:"how long to wait at start for the first NATS connection before giving up"`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"longest wait on SIGTERM for the changes being applied to finish"`
}

const intro = `herald-mailstore provisions Maildirs and Maildir++ quotas from a table of mail users
(default public.mail_users, watched with: herald watch mail_users --columns gid,dba,username,quota_bytes).
Inserts create <root>/<dba>/<username>/Maildir, updates set the quota, move or re-own the mailbox,
deletes move it to the archive folder.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exit codes
const (
	exitOK     = 0
	exitFailed = 1
	exitConfig = 2
)

func run(args []string, stdout, stderr io.Writer) int {
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "herald-mailstore: %s\n", envcfg.OneLine(err))
		return code
	}
	var cfg config
	if err := envcfg.ParseArgs("herald-mailstore", args, stdout, intro, &cfg); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return fail(exitConfig, err)
	}
	if err := envcfg.Load(&cfg); err != nil {
		if strings.Contains(err.Error(), "MAILSTORE_ROOT") {
			err = errors.New("HERALD_MAILSTORE_ROOT is required: the directory the mailboxes live under")
		}
		return fail(exitConfig, err)
	}
	if err := cfg.Validate(); err != nil {
		return fail(exitConfig, err)
	}
	logger, err := cfg.Logger(stderr)
	if err != nil {
		return fail(exitConfig, err)
	}
	if _, set := os.LookupEnv(envcfg.Prefix + "_CONSUMER"); cfg.DryRun && !set {
		// A dry run acknowledges what it reads: on the real durable it
		// would swallow changes the real run never applies.
		cfg.Durable = mailstore.DefaultDurable + "-dry-run"
	}
	base, err := cfg.Consumer.Config(&cfg.Common, cfg.Durable)
	if err != nil {
		return fail(exitConfig, err)
	}
	mcfg := mailstore.Config{
		Root: cfg.Root, Table: cfg.Table, UID: cfg.UID, Chown: mailstore.ChownMode(cfg.Chown),
		Archive: cfg.Archive, PurgeAfter: cfg.PurgeAfter, DryRun: cfg.DryRun,
	}
	if err := mcfg.Validate(); err != nil {
		return fail(exitConfig, envName(err))
	}
	ccfg := mcfg.ConsumerConfig(base)
	if err := ccfg.Validate(); err != nil {
		return fail(exitConfig, envName(err))
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store, err := mailstore.New(mcfg, mailstore.WithLogger(logger), mailstore.WithRegisterer(reg))
	if err != nil {
		return fail(exitConfig, envName(err))
	}
	defer store.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	nc, err := cfg.NATS.Connect(logger)
	if err != nil {
		return fail(exitFailed, err)
	}
	defer nc.Close()
	if err := envcfg.WaitConnected(ctx, nc, cfg.NATSConnectWait); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		return fail(exitFailed, fmt.Errorf("cannot reach NATS at %s within %s: %v (is nats-server running with JetStream? check HERALD_NATS_URL)", cfg.URL, cfg.NATSConnectWait, err))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(exitFailed, err)
	}
	c, err := consumers.New(js, ccfg, store, consumers.WithLogger(logger), consumers.WithRegisterer(reg))
	if err != nil {
		return fail(exitConfig, err)
	}

	go func() { _ = store.RunPurger(ctx) }()
	serve := func(ctx context.Context) error { return ops.Serve(ctx, cfg.MetricsAddr, reg, c.Ready, logger) }
	err = lifecycle.Run(ctx, c.Run, serve, cfg.ShutdownTimeout,
		fmt.Errorf("the changes being applied did not finish within %s; they are redelivered on the next start", cfg.ShutdownTimeout))
	if err != nil {
		logger.Error("herald-mailstore stopped", "err", err)
		return fail(exitFailed, err)
	}
	logger.Info("herald-mailstore stopped")
	return exitOK
}

// envName names the variables behind the fields of mailstore.Config and
// consumers.Config in their errors, for a reader who set variables, not
// fields.
func envName(err error) error {
	r := strings.NewReplacer(
		"mailstore config: Root", "HERALD_MAILSTORE_ROOT",
		"mailstore config: Table", "HERALD_MAILSTORE_TABLE",
		"mailstore config: UID", "HERALD_MAILSTORE_UID",
		"mailstore config: Chown", "HERALD_MAILSTORE_CHOWN",
		"mailstore config: Archive", "HERALD_MAILSTORE_ARCHIVE",
		"mailstore config: PurgeAfter", "HERALD_MAILSTORE_PURGE_AFTER",
		"set Chown to never", "set HERALD_MAILSTORE_CHOWN=never",
		"consumer config: Stream", "HERALD_STREAM",
		"consumer config: DLQStream", "HERALD_DLQ_STREAM",
		"consumer config: Prefix", "HERALD_SUBJECT_PREFIX",
		"consumer config: Durable", "HERALD_CONSUMER",
		"consumer config: AckWait", "HERALD_CONSUMER_ACK_WAIT",
		"consumer config: MaxDeliver", "HERALD_CONSUMER_MAX_DELIVER",
		"consumer config: MaxAckPending", "HERALD_CONSUMER_MAX_ACK_PENDING",
		"consumer config: Workers", "HERALD_CONSUMER_WORKERS",
		"Chown set to always", "HERALD_MAILSTORE_CHOWN=always",
		"Chown is always", "HERALD_MAILSTORE_CHOWN is always",
	)
	return errors.New(r.Replace(err.Error()))
}
