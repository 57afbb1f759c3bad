// Command herald-filesync keeps one JSON file per row of a table in step
// with the database: it consumes the table's changes from JetStream and
// writes, replaces and removes files under a root directory. With the
// defaults it serves CFEngine's __cmdb table as <root>/<hostkey>/host_specific.json.
//
// It is configured through HERALD_* variables only; run it with -h to list
// them. See docs/filesync.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/herald-cdc/herald/cmd/internal/envcfg"
	"github.com/herald-cdc/herald/cmd/internal/lifecycle"
	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
	"github.com/herald-cdc/herald/internal/ops"
)

const name = "herald-filesync"

const intro = `herald-filesync keeps one JSON file per row of a watched table in step with
the database: inserts and updates write the row's JSON column to a file
(atomically), deletes remove it, truncates remove them all.`

// config is the whole environment of herald-filesync.
type config struct {
	envcfg.Common
	envcfg.Consumer
	Durable  string        `envconfig:"CONSUMER" default:"filesync" desc:"durable consumer name; instances sharing it split the work"`
	Table    string        `envconfig:"FILESYNC_TABLE" default:"public.__cmdb" desc:"watched table, schema.table"`
	Keys     []string      `envconfig:"FILESYNC_KEYS" desc:"only these keys, comma-separated (single-column keys); empty for every key"`
	Column   string        `envconfig:"FILESYNC_COLUMN" default:"value" desc:"column whose JSON value each file holds"`
	Dir      string        `envconfig:"FILESYNC_DIR" required:"true" desc:"root directory; nothing outside it is ever touched"`
	Path     string        `envconfig:"FILESYNC_PATH" default:"{key}/host_specific.json" desc:"file path under the root; {key} is the row's key (columns joined with ',')"`
	Quiet    time.Duration `envconfig:"FILESYNC_QUIET" default:"0s" desc:"per-key quiet period: changes to one key within it collapse into one write"`
	FileMode string        `envconfig:"FILESYNC_FILE_MODE" default:"0644" desc:"mode of the files written (octal)"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: exit code 0 after a clean shutdown, 1
// when the consumer fails, 2 for a bad configuration.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg config
	if err := envcfg.ParseArgs(name, args, stdout, intro, &cfg); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	fcfg, ccfg, err := load(&cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	logger, err := cfg.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	syncer, err := filesync.New(fcfg, filesync.WithLogger(logger), filesync.WithRegisterer(reg))
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	defer syncer.Close()

	nc, err := cfg.NATS.Connect(logger)
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 2
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	cons, err := consumers.New(js, ccfg, syncer, consumers.WithLogger(logger), consumers.WithRegisterer(reg))
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 2
	}

	logger.Info("herald-filesync starting", "dir", fcfg.Dir, "table", fcfg.Table, "path", fcfg.Path, "durable", ccfg.Durable)
	serve := func(ctx context.Context) error { return ops.Serve(ctx, cfg.MetricsAddr, reg, cons.Ready, logger) }
	// No grace: herald-filesync has no shutdown timeout and waits for the
	// files being written.
	if err := lifecycle.Run(ctx, cons.Run, serve, 0, nil); err != nil {
		logger.Error("herald-filesync stopped", "err", err)
		return 1
	}
	if err := nc.Drain(); err != nil {
		logger.Debug("draining the NATS connection", "err", err)
	}
	logger.Info("herald-filesync stopped")
	return 0
}

// load reads and checks the environment, without touching the network or
// the file system, so a bad variable is reported at once.
func load(cfg *config) (filesync.Config, consumers.Config, error) {
	if err := envcfg.Load(cfg); err != nil {
		return filesync.Config{}, consumers.Config{}, err
	}
	if err := cfg.Common.Validate(); err != nil {
		return filesync.Config{}, consumers.Config{}, err
	}
	mode, err := strconv.ParseUint(cfg.FileMode, 8, 32)
	if err != nil {
		return filesync.Config{}, consumers.Config{}, fmt.Errorf("HERALD_FILESYNC_FILE_MODE %q is not an octal mode such as 0644", cfg.FileMode)
	}
	var keys []string
	for _, k := range cfg.Keys {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	fcfg := filesync.Config{
		Table:    cfg.Table,
		Keys:     keys,
		Column:   cfg.Column,
		Dir:      cfg.Dir,
		Path:     cfg.Path,
		Quiet:    cfg.Quiet,
		FileMode: os.FileMode(mode),
	}
	if err := fcfg.Validate(); err != nil {
		return filesync.Config{}, consumers.Config{}, fmt.Errorf("%w (HERALD_FILESYNC_*)", err)
	}
	ccfg, err := cfg.Consumer.Config(&cfg.Common, cfg.Durable)
	if err != nil {
		return filesync.Config{}, consumers.Config{}, err
	}
	ccfg = fcfg.ConsumerConfig(ccfg)
	if err := ccfg.Validate(); err != nil {
		return filesync.Config{}, consumers.Config{}, fmt.Errorf("%w (HERALD_CONSUMER*, HERALD_STREAM, HERALD_SUBJECT_PREFIX, HERALD_FILESYNC_QUIET)", err)
	}
	return fcfg, ccfg, nil
}
