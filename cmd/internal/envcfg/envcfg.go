// Package envcfg holds the environment configuration every Herald program
// shares — NATS connection, stream, subject prefix, metrics address,
// logging — and the helpers that load it and print it for -h. Environment
// parsing lives only under cmd/: library packages take plain Config structs.
package envcfg

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/nats-io/nats.go"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
)

// Prefix is the prefix of every variable: HERALD_NATS_URL, HERALD_STREAM…
const Prefix = "HERALD"

// NATS is how a program reaches NATS.
type NATS struct {
	URL     string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server URLs, comma-separated (a cluster's seed list)"`
	Creds   string `envconfig:"NATS_CREDS" desc:"credentials file (JWT and NKey) for NATS; empty for none"`
	TLSCert string `envconfig:"NATS_TLS_CERT" desc:"client certificate (PEM) for mutual TLS; needs HERALD_NATS_TLS_KEY"`
	TLSKey  string `envconfig:"NATS_TLS_KEY" desc:"private key (PEM) of HERALD_NATS_TLS_CERT"`
	TLSCA   string `envconfig:"NATS_TLS_CA" desc:"CA certificates (PEM) that sign the servers' certificates; empty for the system's"`
	Name    string `envconfig:"NATS_NAME" desc:"connection name the server shows in its monitoring (default: the program's name)"`
}

// Common is the configuration every Herald program shares. Embed it in a
// program's own struct.
type Common struct {
	NATS
	Stream        string `envconfig:"STREAM" default:"HERALD" desc:"JetStream stream holding the changes"`
	SubjectPrefix string `envconfig:"SUBJECT_PREFIX" default:"herald" desc:"subject prefix: changes are published as <prefix>.<schema>.<table>.<key>"`
	MetricsAddr   string `envconfig:"METRICS_ADDR" default:":9090" desc:"address serving /metrics, /healthz and /readyz; empty to disable"`
	LogFormat     string `envconfig:"LOG_FORMAT" default:"json" desc:"log format: json or text"`
	LogLevel      string `envconfig:"LOG_LEVEL" default:"info" desc:"log level: debug, info, warn or error"`
}

// Consumer holds the runtime settings every consumer program shares. The
// durable's name (HERALD_CONSUMER) is declared by each program, since each
// has its own default.
type Consumer struct {
	DLQStream     string        `envconfig:"DLQ_STREAM" default:"HERALD_DLQ" desc:"stream for dead letters (subjects <prefix>_dlq.>), created if missing"`
	Workers       int           `envconfig:"CONSUMER_WORKERS" default:"4" desc:"keys applied in parallel (one key is always applied in order)"`
	AckWait       time.Duration `envconfig:"CONSUMER_ACK_WAIT" default:"30s" desc:"time to apply a change before the server redelivers it"`
	MaxDeliver    int           `envconfig:"CONSUMER_MAX_DELIVER" default:"10" desc:"deliveries before a failing change is dead-lettered (-1: retry forever)"`
	MaxAckPending int           `envconfig:"CONSUMER_MAX_ACK_PENDING" default:"1000" desc:"changes delivered and not yet acknowledged, at most"`
	MaxBatch      int           `envconfig:"CONSUMER_MAX_BATCH" default:"64" desc:"changes a worker applies together and makes durable at once, for consumers that can (filesync); 1: one at a time"`
	DeliverPolicy string        `envconfig:"CONSUMER_DELIVER" default:"last_per_subject" desc:"where a new durable starts: last_per_subject (bootstrap the state), all or new; an existing durable resumes"`
}

// Config maps the variables onto a runtime configuration for the durable
// named durable, on the stream and prefix of common.
func (c *Consumer) Config(common *Common, durable string) (consumers.Config, error) {
	policy, err := consumers.ParseDeliverPolicy(c.DeliverPolicy)
	if err != nil {
		return consumers.Config{}, fmt.Errorf("HERALD_CONSUMER_DELIVER: %w", err)
	}
	if c.MaxBatch < 1 || c.MaxBatch > 1024 {
		return consumers.Config{}, fmt.Errorf("HERALD_CONSUMER_MAX_BATCH %d: use 1 (one change at a time) to 1024", c.MaxBatch)
	}
	return consumers.Config{
		Stream:        common.Stream,
		Prefix:        common.SubjectPrefix,
		Durable:       durable,
		DLQStream:     c.DLQStream,
		Workers:       c.Workers,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
		MaxBatch:      c.MaxBatch,
		DeliverPolicy: policy,
	}, nil
}

// Validate checks the shared variables and names the one that is wrong.
func (c *Common) Validate() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("HERALD_NATS_URL is empty; give at least one server, e.g. nats://127.0.0.1:4222")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("HERALD_NATS_TLS_CERT and HERALD_NATS_TLS_KEY go together; set both or neither")
	}
	if c.Stream == "" || strings.ContainsAny(c.Stream, ".*> \t/\\") {
		return fmt.Errorf("HERALD_STREAM %q is not a valid stream name (no '.', '*', '>', '/', '\\' or whitespace)", c.Stream)
	}
	if err := change.ValidatePrefix(c.SubjectPrefix); err != nil {
		return fmt.Errorf("HERALD_SUBJECT_PREFIX: %w", err)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return fmt.Errorf("HERALD_LOG_FORMAT %q: use json or text", c.LogFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("HERALD_LOG_LEVEL %q: use debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// Logger returns the logger the variables ask for, writing to w.
func (c *Common) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("HERALD_LOG_LEVEL %q: use debug, info, warn or error", c.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch c.LogFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("HERALD_LOG_FORMAT %q: use json or text", c.LogFormat)
}

// Options returns the connection options: reconnect forever (also when the
// first connection fails, so a program can start before NATS does), and log
// every disconnect and reconnect.
func (n *NATS) Options(logger *slog.Logger) []nats.Option {
	name := n.Name
	if name == "" {
		name = filepath.Base(os.Args[0])
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(500*time.Millisecond, 2*time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) {
			logger.Info("connected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("disconnected from NATS; reconnecting", "err", err)
			} else {
				logger.Info("disconnected from NATS")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) { logger.Info("NATS connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				logger.Warn("NATS error", "subject", sub.Subject, "err", err)
				return
			}
			logger.Warn("NATS error", "err", err)
		}),
	}
	if n.Creds != "" {
		opts = append(opts, nats.UserCredentials(n.Creds))
	}
	if n.TLSCert != "" {
		opts = append(opts, nats.ClientCert(n.TLSCert, n.TLSKey))
	}
	if n.TLSCA != "" {
		opts = append(opts, nats.RootCAs(n.TLSCA))
	}
	return opts
}

// Connect connects to NATS with Options. Because it retries a failed first
// connection in the background, it fails only on a configuration error
// (an unreadable credentials or TLS file, for instance).
func (n *NATS) Connect(logger *slog.Logger) (*nats.Conn, error) {
	urls := make([]string, 0, 4)
	for u := range strings.SplitSeq(n.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	nc, err := nats.Connect(strings.Join(urls, ","), n.Options(logger)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w (check HERALD_NATS_URL, HERALD_NATS_CREDS and HERALD_NATS_TLS_*)", n.URL, err)
	}
	return nc, nil
}

// Load fills spec, a pointer to a struct with envconfig tags, from the
// HERALD_* environment.
func Load(spec any) error {
	if err := envconfig.Process(Prefix, spec); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s=%q is not a valid %s", pe.KeyName, pe.Value, pe.TypeName)
		}
		// envconfig names a missing required variable without the prefix.
		if key, ok := strings.CutPrefix(err.Error(), "required key "); ok {
			key, _, _ = strings.Cut(key, " ")
			if !strings.HasPrefix(key, Prefix+"_") {
				key = Prefix + "_" + key
			}
			return fmt.Errorf("%s is required; see -h", key)
		}
		return err
	}
	return nil
}

// usageFormat lists every variable with its type, default and meaning.
const usageFormat = `{{range .}}  {{usage_key .}}	{{usage_type .}}	{{if usage_default .}}{{usage_default .}}{{else if usage_required .}}(required){{else}}-{{end}}	{{usage_description .}}
{{end}}`

// Usage writes intro, then every variable of spec with its type, default and
// meaning.
func Usage(w io.Writer, intro string, spec any) error {
	if intro != "" {
		if _, err := fmt.Fprintf(w, "%s\n\n", strings.TrimRight(intro, "\n")); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintln(w, "Configured through the environment:"); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 1, 0, 2, ' ', 0)
	if _, err := fmt.Fprintln(tw, "  VARIABLE\tTYPE\tDEFAULT\tMEANING"); err != nil {
		return err
	}
	if err := envconfig.Usagef(Prefix, spec, tw, usageFormat); err != nil {
		return err
	}
	return tw.Flush()
}

// ParseArgs handles the command line of a program configured only through
// the environment: -h prints Usage to out and ParseArgs returns
// flag.ErrHelp; anything else is an error.
func ParseArgs(name string, args []string, out io.Writer, intro string, spec any) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() { _ = Usage(out, intro, spec) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %s is configured through HERALD_* variables; see %s -h", fs.Arg(0), name, name)
	}
	return nil
}

// WaitConnected waits up to d for nc's first connection (Connect retries a
// failed first connection in the background), so a program that cannot
// work without NATS can fail with a clear reason instead of hanging.
func WaitConnected(ctx context.Context, nc *nats.Conn, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			if err := nc.LastError(); err != nil {
				return err
			}
			return errors.New("no connection")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// OneLine renders err on one line, for the reason a program prints on exit.
func OneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
