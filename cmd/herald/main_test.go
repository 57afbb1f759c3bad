package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// heraldBinary builds this command once per test binary.
func heraldBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "herald-cli-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "herald")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	require.NoError(t, binErr)
	return binPath
}

type result struct {
	code           int
	stdout, stderr string
}

// herald runs the CLI as a process with HERALD_DATABASE_URL=dsn.
func herald(t *testing.T, dsn string, args ...string) result {
	t.Helper()
	cmd := exec.Command(heraldBinary(t), args...)
	cmd.Env = append(os.Environ(), "HERALD_DATABASE_URL="+dsn)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{code, out.String(), errb.String()}
}

func requireOneLineError(t *testing.T, r result, contains string) {
	t.Helper()
	require.NotZero(t, r.code, "stdout: %s", r.stdout)
	line := strings.TrimRight(r.stderr, "\n")
	require.NotContains(t, line, "\n", "one line on stderr")
	require.Contains(t, line, contains)
}

func TestHelp(t *testing.T) {
	r := herald(t, "", "-h")
	require.Equal(t, 0, r.code)
	for _, s := range []string{"migrate", "watch", "unwatch", "backfill", "status", "HERALD_DATABASE_URL"} {
		require.Contains(t, r.stdout, s)
	}
	r = herald(t, "", "watch", "-h")
	require.Equal(t, 0, r.code)
	for _, s := range []string{"-columns", "-key", "-where", "-always", "HERALD_DATABASE_URL"} {
		require.Contains(t, r.stdout, s)
	}
	requireOneLineError(t, herald(t, "", "frobnicate"), `unknown command "frobnicate"`)
	r = herald(t, "", "watch")
	require.Equal(t, 2, r.code)
	requireOneLineError(t, r, "exactly one TABLE")
	r = herald(t, "", "watch", "t", "--nosuchflag")
	require.Equal(t, 2, r.code)
}

func TestUnreachableDatabaseHidesPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close()) // nothing listens there now
	dsn := fmt.Sprintf("postgres://herald:s3cret-pw@127.0.0.1:%d/db?connect_timeout=2", port)
	r := herald(t, dsn, "status")
	require.Equal(t, 1, r.code)
	requireOneLineError(t, r, "connecting to PostgreSQL")
	require.NotContains(t, r.stderr+r.stdout, "s3cret-pw")
	r = herald(t, "postgres://%zz", "status")
	requireOneLineError(t, r, "HERALD_DATABASE_URL")
}

func TestCLIFlow(t *testing.T) {
	dsn := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE TABLE __cmdb (hostkey text PRIMARY KEY, value jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), epoch bigint NOT NULL DEFAULT 0);
		INSERT INTO __cmdb (hostkey, value) SELECT 'SHA=' || g, '{}' FROM generate_series(1, 2500) g;
		CREATE TABLE nokey (a int)`)
	require.NoError(t, err)

	// Before migrate: a clear error, nothing created.
	r := herald(t, dsn, "watch", "__cmdb")
	requireOneLineError(t, r, "herald migrate")

	// Two migrations at once, as two processes: one schema, one epoch.
	var wg sync.WaitGroup
	res := make([]result, 2)
	for i := range res {
		wg.Add(1)
		go func(i int) { defer wg.Done(); res[i] = herald(t, dsn, "migrate") }(i)
	}
	wg.Wait()
	for _, r := range res {
		require.Equal(t, 0, r.code, r.stderr)
	}
	epoch := func(s string) string {
		i := strings.Index(s, "epoch ")
		require.GreaterOrEqual(t, i, 0, s)
		return strings.Trim(strings.TrimSpace(s[i+6:]), ")")
	}
	require.Equal(t, epoch(res[0].stdout), epoch(res[1].stdout))
	require.True(t, strings.Contains(res[0].stdout, "applied") != strings.Contains(res[1].stdout, "applied"), "exactly one applied: %q / %q", res[0].stdout, res[1].stdout)

	r = herald(t, dsn, "watch", "__cmdb", "--columns", "value")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "herald backfill")

	requireOneLineError(t, herald(t, dsn, "watch", "nokey"), "no primary key; pass --key")
	requireOneLineError(t, herald(t, dsn, "watch", "nosuch"), "does not exist")
	requireOneLineError(t, herald(t, dsn, "watch", "__cmdb", "--columns", "nosuch"), "has no column")
	requireOneLineError(t, herald(t, dsn, "watch", "__cmdb; DROP TABLE __cmdb"), "invalid name")
	requireOneLineError(t, herald(t, dsn, "watch", "__cmdb", "--where", "random() > 0.5"), "not immutable")

	r = herald(t, dsn, "backfill", "__cmdb", "--batch", "500")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "2500 rows logged")

	r = herald(t, dsn, "status")
	require.Equal(t, 0, r.code, r.stderr)
	for _, s := range []string{"backlog: 2500 changes", "gate: closed", "bridge: none active", "__cmdb", "value", "hostkey"} {
		require.Contains(t, r.stdout, s)
	}
	r = herald(t, dsn, "status", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	var st struct {
		Backlog int64 `json:"backlog_rows"`
		Watches []struct {
			Table string   `json:"table"`
			Drift []string `json:"drift"`
		} `json:"watches"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	require.EqualValues(t, 2500, st.Backlog)
	require.Len(t, st.Watches, 1)
	require.Empty(t, st.Watches[0].Drift)

	// Drift shows, and watch repairs it keeping the earlier options.
	_, err = conn.Exec(ctx, `ALTER TABLE __cmdb DISABLE TRIGGER herald_capture_update`)
	require.NoError(t, err)
	r = herald(t, dsn, "status")
	require.Contains(t, r.stdout, "trigger herald_capture_update disabled")
	r = herald(t, dsn, "watch", "__cmdb")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "keeping --columns value")
	r = herald(t, dsn, "status")
	require.NotContains(t, r.stdout, "disabled")

	r = herald(t, dsn, "unwatch", "__cmdb")
	require.Equal(t, 0, r.code, r.stderr)
	requireOneLineError(t, herald(t, dsn, "unwatch", "__cmdb"), "not watched")
}
