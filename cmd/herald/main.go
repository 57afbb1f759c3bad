// Command herald is Herald's admin CLI: it installs the schema, watches
// tables, backfills them and shows status.
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
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
	"github.com/kelseyhightower/envconfig"
)

// env is the configuration every subcommand reads from the environment.
type env struct {
	DatabaseURL string `envconfig:"DATABASE_URL" desc:"PostgreSQL connection, URL (postgres://…) or key=value DSN; empty: the PG* variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE…) and their defaults"`
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands []command

func init() {
	commands = []command{
		{"migrate", "install or upgrade schema herald (idempotent, safe to run concurrently)", runMigrate},
		{"watch", "capture changes of a table: herald watch TABLE [--columns a,b] [--key k] [--where EXPR] [--always]", runWatch},
		{"unwatch", "stop capturing a table: herald unwatch TABLE", runUnwatch},
		{"backfill", "log the current state of every row of a watched table: herald backfill TABLE", runBackfill},
		{"status", "watched tables, drift, backlog, gate and the active bridge", runStatus},
		{"dev", "run the whole stack on this machine: PostgreSQL, NATS, bridge, filesync, mailstore", runDev},
		{"bench", "benchmarks on a throwaway PostgreSQL and NATS: herald bench capture|drain|latency|sustained|plot", runBench},
	}
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var ue usageError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "herald %s: %s (see `herald %s -h`)\n", c.name, oneLine(err.Error()), c.name)
			return 2
		default:
			fmt.Fprintf(stderr, "herald %s: %s\n", c.name, oneLine(err.Error()))
			return 1
		}
	}
	fmt.Fprintf(stderr, "herald: unknown command %q (see `herald -h`)\n", args[0])
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "herald — Herald's admin CLI (PostgreSQL change capture relayed to NATS JetStream)")
	fmt.Fprintln(w, "\nUsage: herald COMMAND [flags]   (herald COMMAND -h for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nEnvironment:")
	printEnvUsage(w)
}

func printEnvUsage(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	_ = envconfig.Usagef("HERALD", &env{}, tw, "  {{range .}}{{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}")
	tw.Flush()
}

// newFlagSet returns a flag set whose -h prints the command's flags and
// the environment it reads.
func newFlagSet(name, synopsis string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: herald %s\n\nFlags:\n", synopsis)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprintln(stdout, "\nEnvironment:")
		printEnvUsage(stdout)
	}
	return fs
}

// parseFlags parses args, allowing flags after positional arguments
// (`herald watch t --key k`), and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.Usage()
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// connect opens one connection from HERALD_DATABASE_URL (or PG*).
func connect(ctx context.Context) (*pgx.Conn, error) {
	var e env
	if err := envconfig.Process("HERALD", &e); err != nil {
		return nil, fmt.Errorf("reading environment: %w", err)
	}
	cfg, err := pgx.ParseConfig(e.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("HERALD_DATABASE_URL is not a valid PostgreSQL URL or DSN: %s", redact(err.Error(), ""))
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "herald"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL at %s: %s (check HERALD_DATABASE_URL)", describe(cfg), redact(err.Error(), cfg.Password))
	}
	return conn, nil
}

// describe names a connection target without its password.
func describe(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("host=%s port=%d user=%s database=%s", cfg.Host, cfg.Port, cfg.User, cfg.Database)
}

// redact removes a password from a message, should a driver error quote it.
func redact(msg, password string) string {
	if password != "" {
		msg = strings.ReplaceAll(msg, password, "xxxxx")
	}
	return msg
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}
