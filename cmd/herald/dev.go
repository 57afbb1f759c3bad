package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-cdc/herald/bridge"
	"github.com/herald-cdc/herald/internal/pgtest"
	"github.com/herald-cdc/herald/schema"
)

// devExampleSQL creates the two example tables: CFEngine's host-specific
// data and the Epidemic proof of concept's mail users.
const devExampleSQL = `
CREATE TABLE IF NOT EXISTS __cmdb (
    hostkey    text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    epoch      bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mail_users (
    id          bigserial PRIMARY KEY,
    gid         integer NOT NULL,
    dba         text NOT NULL,
    username    text NOT NULL,
    quota_bytes bigint NOT NULL,
    UNIQUE (dba, username)
);`

const devSeedSQL = `
INSERT INTO __cmdb (hostkey, value) VALUES
    ('SHA=8f3a01', '{"classes": {"webserver": ["any"]}, "variables": {"default:def.port": {"value": 8080}}}'),
    ('SHA=b7c402', '{"classes": {"dbserver": ["any"]}}'),
    ('SHA=e91c03', '{"variables": {"default:def.motd": {"value": "hello"}}}')
ON CONFLICT (hostkey) DO NOTHING;
INSERT INTO mail_users (gid, dba, username, quota_bytes) VALUES
    (%[1]d, 'example.org', 'alice', 1073741824),
    (%[1]d, 'example.org', 'bob', 536870912)
ON CONFLICT (dba, username) DO NOTHING;`

// devService is one part of the dev stack running in this process.
type devService struct {
	name string
	run  func(ctx context.Context) error
}

// devConsumers are the consumers `herald dev` runs next to the bridge; set
// by dev_consumers.go.
var devConsumers func(ctx context.Context, env *devEnv) ([]devService, error)

// devEnv is what the dev stack's parts need to know of each other.
type devEnv struct {
	dir      string
	dsn      string
	natsURL  string
	nc       *nats.Conn
	js       jetstream.JetStream
	logger   *slog.Logger
	filesDir string
	mailDir  string
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", "dev [--seed] [--dir DIR] [--nats-port N] [--pg-port N]", stdout)
	seed := fs.Bool("seed", false, "insert sample rows into the example tables")
	dirFlag := fs.String("dir", "", "where NATS data, files and Maildirs live (default: a temporary directory removed on exit)")
	natsPort := fs.Int("nats-port", 4222, "NATS client port (0: any free port; a taken port falls back to a free one)")
	verbose := fs.Bool("v", false, "log every component at debug level")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"dev takes no arguments"}
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	dir := *dirFlag
	if dir == "" {
		if dir, err = os.MkdirTemp("", "herald-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating --dir: %w", err)
	}

	// PostgreSQL from the machine's binaries.
	if _, err := pgtest.BinDir(); err != nil {
		return fmt.Errorf("%w\nherald dev runs PostgreSQL from this machine's binaries: on Debian or Ubuntu `sudo apt-get install postgresql`, elsewhere install PostgreSQL's server package and put initdb on PATH (or set HERALD_TEST_PG_BIN)", err)
	}
	fmt.Fprintln(stdout, "starting PostgreSQL …")
	cluster, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"max_connections": "100"}})
	if err != nil {
		return fmt.Errorf("starting PostgreSQL: %w", err)
	}
	defer cluster.Close()
	if err := cluster.CreateDatabase(ctx, "herald"); err != nil {
		return err
	}
	dsn := cluster.ConnString("herald")

	// NATS with JetStream, in this process.
	ns, err := startDevNATS(dir, *natsPort)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	natsURL := ns.ClientURL()

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := schema.Migrate(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, devExampleSQL); err != nil {
		return fmt.Errorf("creating the example tables: %w", err)
	}
	if _, err := schema.WatchTable(ctx, conn, schema.WatchOptions{Table: "__cmdb"}); err != nil {
		return err
	}
	if _, err := schema.WatchTable(ctx, conn, schema.WatchOptions{Table: "mail_users", Columns: []string{"gid", "dba", "username", "quota_bytes"}}); err != nil {
		return err
	}

	nc, err := nats.Connect(natsURL, nats.Name("herald dev"), nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	env := &devEnv{dir: dir, dsn: dsn, natsURL: natsURL, nc: nc, js: js, logger: logger,
		filesDir: filepath.Join(dir, "files"), mailDir: filepath.Join(dir, "mail")}

	b, err := bridge.New(dsn, nc, bridge.Config{Source: "dev"}, bridge.WithLogger(logger.With("component", "bridge")))
	if err != nil {
		return err
	}
	// The stream must exist before consumers bind to it.
	if _, err := bridge.EnsureStream(ctx, js, bridge.Config{}); err != nil {
		return err
	}
	services := []devService{{"bridge", b.Run}}
	if devConsumers != nil {
		more, err := devConsumers(ctx, env)
		if err != nil {
			return err
		}
		services = append(services, more...)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(services))
	for _, s := range services {
		wg.Add(1)
		go func(s devService) {
			defer wg.Done()
			if err := s.run(runCtx); err != nil && runCtx.Err() == nil {
				errs <- fmt.Errorf("%s: %w", s.name, err)
			}
		}(s)
	}

	if *seed {
		if _, err := conn.Exec(ctx, fmt.Sprintf(devSeedSQL, devMailGID)); err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("seeding: %w", err)
		}
	}
	printDevGuide(stdout, env, cluster)

	var runErr error
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "\nstopping …")
	case runErr = <-errs:
	}
	cancel()
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	fmt.Fprintln(stdout, "stopped; nothing left running")
	return nil
}

func startDevNATS(dir string, port int) (*server.Server, error) {
	if port != 0 {
		if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
			port = -1 // taken: any free port
		} else {
			ln.Close()
		}
	} else {
		port = -1
	}
	opts := &server.Options{
		ServerName: "herald-dev",
		Host:       "127.0.0.1",
		Port:       port,
		HTTPHost:   "127.0.0.1",
		HTTPPort:   -1,
		JetStream:  true,
		StoreDir:   filepath.Join(dir, "nats"),
		SyncAlways: true, // as in production: fsync before acknowledging
		NoSigs:     true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("configuring NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("NATS did not become ready within 10s")
	}
	return ns, nil
}

func printDevGuide(w io.Writer, env *devEnv, c *pgtest.Cluster) {
	fmt.Fprintf(w, `
Herald is running.

  PostgreSQL   psql '%s'   (pid %d, data in %s)
  NATS         %s   (JetStream, stream HERALD; monitoring on the server's HTTP port)
  files        %s   (herald-filesync: one host_specific.json per __cmdb row)
  Maildirs     %s   (herald-mailstore: one Maildir per mail_users row)

Try:
  psql '%[1]s' -c "UPDATE __cmdb SET value = '{\"changed\": true}' WHERE hostkey = 'SHA=8f3a01'"
  psql '%[1]s' -c "UPDATE mail_users SET quota_bytes = 2147483648 WHERE username = 'alice'"
  HERALD_DATABASE_URL='%[1]s' go run ./cmd/herald status
  nats --server %[4]s stream info HERALD
  nats --server %[4]s sub 'herald.public.__cmdb.>'

Ctrl-C stops everything.
`, c.ConnString("herald"), c.PID(), c.DataDir(), env.natsURL, env.filesDir, env.mailDir)
}
