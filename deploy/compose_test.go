package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/internal/pgtest"
)

const (
	healthy   = types.ServiceConditionHealthy
	completed = types.ServiceConditionCompletedSuccessfully
)

// composeFile and clusterFile are the stack and its 3-node NATS override.
var (
	composeFile = filepath.Join(root, "docker-compose.yml")
	clusterFile = filepath.Join(root, "deploy", "cluster", "docker-compose.cluster.yml")
)

// wantDependsOn is every service of docker-compose.yml and what it waits for.
var wantDependsOn = map[string]map[string]string{
	"postgres":                nil,
	"nats":                    nil,
	"herald-migrate":          {"postgres": healthy},
	"herald-watch-cmdb":       {"herald-migrate": completed},
	"herald-watch-mail-users": {"herald-migrate": completed},
	"herald-init":             {"herald-watch-cmdb": completed, "herald-watch-mail-users": completed},
	"herald-bridge":           {"postgres": healthy, "nats": healthy, "herald-init": completed},
	"herald-filesync":         {"nats": healthy, "herald-bridge": healthy},
	"herald-mailstore":        {"nats": healthy, "herald-bridge": healthy},
	"nats-box":                {"nats": healthy},
}

// wantInitCommands are the commands the one-shot init services run between
// them, migrate before the others.
var wantInitCommands = [][]string{
	{"herald", "migrate"},
	{"herald", "watch", "__cmdb"},
	{"herald", "watch", "mail_users", "--columns", "gid,dba,username,quota_bytes"},
}

// daemonService is the service running each long-running binary.
var daemonService = map[string]string{
	"herald-bridge":    "herald-bridge",
	"herald-filesync":  "herald-filesync",
	"herald-mailstore": "herald-mailstore",
}

// rootVar is the variable naming a consumer's root, which must be a
// writable volume (the containers' root file system is read-only).
var rootVar = map[string]string{
	"herald-filesync":  "HERALD_FILESYNC_DIR",
	"herald-mailstore": "HERALD_MAILSTORE_ROOT",
}

// loadProject loads compose files as `docker compose -f a -f b` would, with
// an empty environment so nothing on this machine leaks into the result.
func loadProject(t *testing.T, files ...string) *types.Project {
	t.Helper()
	details := types.ConfigDetails{WorkingDir: root, Environment: types.Mapping{}}
	for _, f := range files {
		details.ConfigFiles = append(details.ConfigFiles, types.ConfigFile{Filename: f})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := loader.LoadWithContext(ctx, details, func(o *loader.Options) { o.SetProjectName("herald", true) })
	require.NoError(t, err, "loading %v", files)
	return p
}

// argv is what a service's container runs.
func argv(svc types.ServiceConfig) []string {
	return append(slices.Clone([]string(svc.Entrypoint)), svc.Command...)
}

// isHerald reports whether a service runs Herald's image.
func isHerald(svc types.ServiceConfig) bool { return svc.Build != nil }

// isOneShot reports whether a service runs once and exits.
func isOneShot(svc types.ServiceConfig) bool { return svc.Restart == "no" }

// natsServices returns the options of every NATS server of the project,
// read by the server's own parser from the configuration file the service
// mounts.
func natsServices(t *testing.T, p *types.Project) map[string]*server.Options {
	t.Helper()
	out := map[string]*server.Options{}
	for name, svc := range p.Services {
		if !strings.HasPrefix(svc.Image, "nats:") {
			continue
		}
		a := argv(svc)
		i := slices.Index(a, "--config")
		require.True(t, i >= 0 && i+1 < len(a), "service %s: nats-server without --config: %v", name, a)
		conf := ""
		for _, v := range svc.Volumes {
			if v.Target == a[i+1] {
				require.Equal(t, types.VolumeTypeBind, v.Type, "service %s: %s", name, v.Target)
				conf = v.Source
			}
		}
		require.NotEmpty(t, conf, "service %s: nothing mounted at %s", name, a[i+1])
		opts, err := server.ProcessConfigFile(conf)
		require.NoError(t, err, "service %s: nats-server refuses %s", name, conf)
		out[name] = opts
	}
	return out
}

func TestCompose(t *testing.T) {
	p := loadProject(t, composeFile)

	t.Run("services and their dependencies", func(t *testing.T) {
		require.ElementsMatch(t, slices.Collect(maps.Keys(wantDependsOn)), p.ServiceNames())
		for name, want := range wantDependsOn {
			got := map[string]string{}
			for dep, d := range p.Services[name].DependsOn {
				got[dep] = d.Condition
				require.True(t, d.Required, "%s: dependency on %s", name, dep)
			}
			if want == nil {
				want = map[string]string{}
			}
			require.Equal(t, want, got, "depends_on of %s", name)
		}
	})

	t.Run("one-shot init services run migrate and the watches", func(t *testing.T) {
		var cmds [][]string
		for _, name := range initOrder(t, p) {
			cmds = append(cmds, argv(p.Services[name]))
		}
		for _, want := range wantInitCommands {
			require.Contains(t, cmds, want)
		}
		require.Equal(t, wantInitCommands[0], cmds[0], "migrate runs first")
	})

	t.Run("each daemon runs in its service", func(t *testing.T) {
		for bin, name := range daemonService {
			require.Equal(t, []string{bin}, argv(p.Services[name]))
		}
	})

	checkProject(t, p)
}

// TestComposeCluster checks the 3-node override merged over the stack.
func TestComposeCluster(t *testing.T) {
	p := loadProject(t, composeFile, clusterFile)
	checkProject(t, p)

	servers := natsServices(t, p)
	require.ElementsMatch(t, []string{"nats", "nats-2", "nats-3"}, slices.Collect(maps.Keys(servers)))
	names := map[string]bool{}
	confs := map[string]bool{}
	for svc, o := range servers {
		names[o.ServerName] = true
		require.Equal(t, "herald", o.Cluster.Name, "%s: one cluster", svc)
		require.True(t, o.SyncAlways, "%s: sync_interval always", svc)
		var routes []string
		for _, r := range o.Routes {
			routes = append(routes, r.Hostname()+":"+r.Port())
			require.Equal(t, strconv.Itoa(servers[r.Hostname()].Cluster.Port), r.Port(), "%s: route %s", svc, r)
		}
		require.ElementsMatch(t, []string{"nats:6222", "nats-2:6222", "nats-3:6222"}, routes, "%s: routes to every node", svc)
		for _, v := range p.Services[svc].Volumes {
			if v.Type == types.VolumeTypeBind {
				confs[v.Source] = true
			}
		}
		// A node only counts as healthy once JetStream has a meta leader.
		require.NotContains(t, strings.Join(p.Services[svc].HealthCheck.Test, " "), "js-enabled-only", "%s", svc)
	}
	require.Len(t, names, 3, "server names are unique")
	require.Len(t, confs, 3, "each node has its own configuration file")

	require.Equal(t, "3", *p.Services["herald-bridge"].Environment["HERALD_STREAM_REPLICAS"])
	for name, svc := range p.Services {
		if !isHerald(svc) || isOneShot(svc) {
			continue
		}
		require.Len(t, strings.Split(*svc.Environment["HERALD_NATS_URL"], ","), 3, "%s knows every server", name)
	}
	require.Len(t, strings.Split(*p.Services["nats-box"].Environment["NATS_URL"], ","), 3)
	for _, n := range []string{"nats-2", "nats-3"} {
		require.Equal(t, healthy, p.Services["herald-bridge"].DependsOn[n].Condition, "the bridge creates the replicated stream")
	}
}

// checkProject checks every service of a project against the programs and
// files it runs.
func checkProject(t *testing.T, p *types.Project) {
	servers := natsServices(t, p)

	for name, svc := range p.Services {
		t.Run(name, func(t *testing.T) {
			for _, v := range svc.Volumes {
				switch v.Type {
				case types.VolumeTypeVolume:
					require.Contains(t, p.Volumes, v.Source, "%s mounts an undeclared volume", name)
				case types.VolumeTypeBind:
					_, err := os.Stat(v.Source)
					require.NoError(t, err, "%s mounts a file of the repository that does not exist", name)
					require.True(t, v.ReadOnly, "%s: bind mounts of the repository are read-only", name)
				}
			}
			switch {
			case isHerald(svc):
				checkHeraldService(t, p, name, svc, servers)
			case strings.HasPrefix(svc.Image, "nats:"):
				checkNATSService(t, p, name, svc, servers[name])
			case strings.HasPrefix(svc.Image, "postgres:"):
				checkPostgresService(t, name, svc)
			case strings.HasPrefix(svc.Image, "natsio/nats-box:"):
				checkNATSURLs(t, name, *svc.Environment["NATS_URL"], servers)
			default:
				t.Fatalf("service %s (image %q) is none of Herald's, postgres, nats or nats-box", name, svc.Image)
			}
		})
	}
}

func checkHeraldService(t *testing.T, p *types.Project, name string, svc types.ServiceConfig, servers map[string]*server.Options) {
	require.NotNil(t, svc.Build)
	require.Equal(t, root, filepath.Clean(svc.Build.Context), "%s: the build context is the repository root", name)
	require.Equal(t, "deploy/Dockerfile", svc.Build.Dockerfile)

	a := argv(svc)
	require.NotEmpty(t, a, "%s names no program: the image has none by default", name)
	bin := path.Base(a[0])
	require.Contains(t, ourBinaries, bin, "%s runs %q, which is not one of Herald's binaries", name, a[0])
	prog := programOf(t, bin)
	if bin == "herald" {
		require.GreaterOrEqual(t, len(a), 2, "%s: herald without a command", name)
		require.True(t, prog.commands[a[1]], "%s: herald has no command %q (it has %v)", name, a[1], slices.Sorted(maps.Keys(prog.commands)))
		flags := subcommandFlags(t, a[1])
		for _, arg := range a[2:] {
			if !strings.HasPrefix(arg, "-") {
				continue
			}
			flag, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
			require.True(t, flags[flag], "%s: herald %s has no flag %s", name, a[1], arg)
		}
	} else {
		require.Len(t, a, 1, "%s: %s takes no arguments, only HERALD_* variables", name, bin)
	}

	for k, v := range svc.Environment {
		require.True(t, strings.HasPrefix(k, "HERALD_"), "%s sets %s: Herald services take HERALD_* variables only", name, k)
		require.True(t, prog.reads(k), "%s sets %s, which %s does not read (%s -h)", name, k, bin, bin)
		require.NotNil(t, v, "%s: %s has no value", name, k)
	}
	if v, ok := svc.Environment["HERALD_NATS_URL"]; ok {
		checkNATSURLs(t, name, *v, servers)
	}
	if v, ok := svc.Environment["HERALD_DATABASE_URL"]; ok {
		checkDatabaseURL(t, p, name, *v)
	}
	if rv, ok := rootVar[bin]; ok {
		require.True(t, prog.reads(rv), "%s does not read %s", bin, rv)
		dir := svc.Environment[rv]
		require.NotNil(t, dir, "%s: %s must name the volume the consumer writes to", name, rv)
		i := slices.IndexFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == *dir })
		require.GreaterOrEqual(t, i, 0, "%s: %s=%s is not a mounted volume", name, rv, *dir)
		require.Equal(t, types.VolumeTypeVolume, svc.Volumes[i].Type, "%s: the root is a named volume", name)
		require.False(t, svc.Volumes[i].ReadOnly)
	}

	require.True(t, svc.ReadOnly, "%s: read-only root file system", name)
	require.Contains(t, svc.CapDrop, "ALL", "%s", name)
	require.Contains(t, svc.SecurityOpt, "no-new-privileges:true", "%s", name)
	require.Empty(t, svc.User, "%s runs as the image's user (10001)", name)

	if isOneShot(svc) {
		require.True(t, svc.HealthCheck == nil || svc.HealthCheck.Disable, "%s runs once: no healthcheck", name)
		return
	}
	require.Equal(t, types.RestartPolicyUnlessStopped, svc.Restart, "%s", name)
	require.NotNil(t, svc.HealthCheck, "%s has no healthcheck", name)
	hc := svc.HealthCheck.Test
	require.Len(t, hc, 3, "%s: healthcheck %v", name, hc)
	require.Equal(t, []string{"CMD", healthcheckBinary}, []string(hc[:2]), "%s: the image has no shell, curl or wget", name)
	binary(t, healthcheckBinary) // built by the Dockerfile, so it is in the image
	u, err := url.Parse(hc[2])
	require.NoError(t, err)
	require.Contains(t, []string{"/healthz", "/readyz"}, u.Path, "%s", name)
	require.Equal(t, "127.0.0.1", u.Hostname(), "%s", name)
	addr := prog.variable("HERALD_METRICS_ADDR").Default
	if v, ok := svc.Environment["HERALD_METRICS_ADDR"]; ok {
		addr = *v
	}
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err, "%s: HERALD_METRICS_ADDR %q", name, addr)
	require.Equal(t, port, u.Port(), "%s: the healthcheck asks the port HERALD_METRICS_ADDR serves", name)
}

// checkNATSURLs checks that every server of a NATS URL list is a NATS
// service of the project, on the client port its configuration sets.
func checkNATSURLs(t *testing.T, name, urls string, servers map[string]*server.Options) {
	for s := range strings.SplitSeq(urls, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		require.NoError(t, err, "%s: NATS URL %q", name, s)
		require.Equal(t, "nats", u.Scheme, "%s: %s", name, s)
		o, ok := servers[u.Hostname()]
		require.True(t, ok, "%s: %s is not a NATS service", name, s)
		require.Equal(t, strconv.Itoa(o.Port), u.Port(), "%s: %s", name, s)
	}
}

// checkDatabaseURL checks that a HERALD_DATABASE_URL reaches the postgres
// service with the user, password and database its image creates.
func checkDatabaseURL(t *testing.T, p *types.Project, name, dsn string) {
	u, err := url.Parse(dsn)
	require.NoError(t, err, "%s: HERALD_DATABASE_URL", name)
	pg, ok := p.Services[u.Hostname()]
	require.True(t, ok, "%s: HERALD_DATABASE_URL names host %s, which is no service", name, u.Hostname())
	require.Equal(t, "5432", u.Port())
	require.Equal(t, *pg.Environment["POSTGRES_USER"], u.User.Username(), "%s", name)
	pw, _ := u.User.Password()
	require.Equal(t, *pg.Environment["POSTGRES_PASSWORD"], pw, "%s", name)
	require.Equal(t, "/"+*pg.Environment["POSTGRES_DB"], u.Path, "%s", name)
}

func checkNATSService(t *testing.T, p *types.Project, name string, svc types.ServiceConfig, o *server.Options) {
	require.NotNil(t, o)
	require.True(t, o.JetStream, "%s: JetStream", name)
	require.True(t, o.SyncAlways, "%s: sync_interval always", name)
	require.NotZero(t, o.HTTPPort, "%s: monitoring port", name)
	i := slices.IndexFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && strings.HasPrefix(o.StoreDir+"/", strings.TrimSuffix(v.Target, "/")+"/")
	})
	require.GreaterOrEqual(t, i, 0, "%s: the JetStream store %s is on no named volume", name, o.StoreDir)

	hc := svc.HealthCheck.Test
	require.Equal(t, "CMD", hc[0], "%s", name)
	u, err := url.Parse(hc[len(hc)-1])
	require.NoError(t, err)
	require.Equal(t, "/healthz", u.Path, "%s", name)
	require.Equal(t, strconv.Itoa(o.HTTPPort), u.Port(), "%s: the healthcheck asks the monitoring port", name)
}

func checkPostgresService(t *testing.T, name string, svc types.ServiceConfig) {
	i := slices.IndexFunc(svc.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == "/docker-entrypoint-initdb.d" })
	require.GreaterOrEqual(t, i, 0, "%s: the example tables come from deploy/postgres/init", name)
	require.Equal(t, filepath.Join(root, "deploy", "postgres", "init"), svc.Volumes[i].Source)
	hc := strings.Join(svc.HealthCheck.Test, " ")
	require.Contains(t, hc, "pg_isready -h 127.0.0.1", "%s: checked over TCP, see the comment", name)
	require.Contains(t, hc, "-d "+*svc.Environment["POSTGRES_DB"])
}

// initOrder returns the one-shot Herald services in an order their
// depends_on allows.
func initOrder(t *testing.T, p *types.Project) []string {
	t.Helper()
	pending := map[string]bool{}
	for name, svc := range p.Services {
		if isHerald(svc) && isOneShot(svc) {
			pending[name] = true
		}
	}
	var order []string
	for len(pending) > 0 {
		var ready []string
		for name := range pending {
			if !slices.ContainsFunc(slices.Collect(maps.Keys(p.Services[name].DependsOn)), func(d string) bool { return pending[d] }) {
				ready = append(ready, name)
			}
		}
		require.NotEmpty(t, ready, "the init services' depends_on form a cycle: %v", pending)
		slices.Sort(ready)
		for _, name := range ready {
			order = append(order, name)
			delete(pending, name)
		}
	}
	return order
}

// TestHeraldInitOnPostgres runs what the postgres container and the init
// services do, on a real PostgreSQL: the init scripts, then each init
// service's command with its environment (only the host and port changed),
// twice, as `docker compose up` does on every start. The examples must end
// up watched as intended, and capture changes.
func TestHeraldInitOnPostgres(t *testing.T) {
	p := loadProject(t, composeFile)
	pg := p.Services["postgres"]
	user, db := *pg.Environment["POSTGRES_USER"], *pg.Environment["POSTGRES_DB"]

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := pgtest.NewCluster(t, pgtest.Options{})
	// What the image does with POSTGRES_USER and POSTGRES_DB: a superuser
	// owning the database, as which the init scripts run.
	super, err := pgx.Connect(ctx, c.ConnString("postgres"))
	require.NoError(t, err)
	_, err = super.Exec(ctx, "CREATE ROLE "+pgx.Identifier{user}.Sanitize()+" LOGIN SUPERUSER")
	require.NoError(t, err)
	_, err = super.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER "+pgx.Identifier{user}.Sanitize())
	require.NoError(t, err)
	require.NoError(t, super.Close(ctx))

	local := func(dsn string) string {
		u, err := url.Parse(dsn)
		require.NoError(t, err)
		u.Host = "127.0.0.1:" + strconv.Itoa(c.Port())
		return u.String()
	}
	dsn := local(*p.Services["herald-bridge"].Environment["HERALD_DATABASE_URL"])

	initDir := filepath.Join(root, "deploy", "postgres", "init")
	entries, err := os.ReadDir(initDir)
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	ran := 0
	for _, e := range entries { // ReadDir sorts by name, as the image does
		require.True(t, strings.HasSuffix(e.Name(), ".sql"), "this test runs .sql init scripts only; teach it %s", e.Name())
		sql, err := os.ReadFile(filepath.Join(initDir, e.Name()))
		require.NoError(t, err)
		_, err = conn.PgConn().Exec(ctx, string(sql)).ReadAll()
		require.NoError(t, err, "running %s", e.Name())
		ran++
	}
	require.NotZero(t, ran, "deploy/postgres/init has no script")

	run := func(svc types.ServiceConfig, args ...string) string {
		t.Helper()
		a := argv(svc)
		if args != nil {
			a = append([]string{a[0]}, args...)
		}
		cmd := exec.CommandContext(ctx, binary(t, path.Base(a[0])), a[1:]...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
		for k, v := range svc.Environment {
			if k == "HERALD_DATABASE_URL" {
				cmd.Env = append(cmd.Env, k+"="+local(*v))
				continue
			}
			cmd.Env = append(cmd.Env, k+"="+*v)
		}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		require.NoError(t, cmd.Run(), "%v: %s%s", a, out.String(), errb.String())
		return out.String()
	}
	order := initOrder(t, p)
	for round := 1; round <= 2; round++ {
		for _, name := range order {
			t.Logf("round %d, %s: %s", round, name, strings.TrimSpace(run(p.Services[name])))
		}
	}

	var st struct {
		Version     int   `json:"version"`
		BacklogRows int64 `json:"backlog_rows"`
		Watches     []struct {
			Schema, Table string
			Columns, Key  []string
			Drift         []string
		} `json:"watches"`
	}
	status := func() {
		require.NoError(t, json.Unmarshal([]byte(run(p.Services["herald-init"], "status", "--json")), &st))
	}
	status()
	require.Positive(t, st.Version)
	type watch struct {
		table   string
		columns []string
		key     []string
	}
	var got []watch
	for _, w := range st.Watches {
		require.Empty(t, w.Drift, "%s.%s", w.Schema, w.Table)
		got = append(got, watch{w.Schema + "." + w.Table, w.Columns, w.Key})
	}
	require.ElementsMatch(t, []watch{
		{"public.__cmdb", nil, []string{"hostkey"}},
		{"public.mail_users", []string{"gid", "dba", "username", "quota_bytes"}, []string{"id"}},
	}, got)

	// Capture works: one change per table lands in the log.
	_, err = conn.Exec(ctx, `INSERT INTO __cmdb (hostkey, value) VALUES ('SHA=8f3a', '{"classes":["web"]}')`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO mail_users (gid, dba, username, quota_bytes) VALUES (5000, 'example.org', 'alice', 1073741824)`)
	require.NoError(t, err)
	status()
	require.Equal(t, int64(2), st.BacklogRows)
}
