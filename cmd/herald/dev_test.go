package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// devGuide is what `herald dev` printed about where things are.
type devGuide struct {
	dsn, natsURL, files, mail, dataDir string
	pgPID                              int
}

var (
	reDSN   = regexp.MustCompile(`PostgreSQL\s+psql '([^']+)'\s+\(pid (\d+), data in (\S+)\)`)
	reNATS  = regexp.MustCompile(`NATS\s+(nats://\S+)`)
	reFiles = regexp.MustCompile(`files\s+(\S+)`)
	reMail  = regexp.MustCompile(`Maildirs\s+(\S+)`)
)

// TestDevStack starts `herald dev --seed` as a process, drives it through
// PostgreSQL, watches the outcome in files, Maildirs and the stream,
// interrupts it and checks that nothing is left behind.
func TestDevStack(t *testing.T) {
	cmd := exec.Command(heraldBinary(t), "dev", "--seed", "--nats-port", "0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var logs strings.Builder
	var logsMu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { logsMu.Lock(); defer logsMu.Unlock(); return logs.Write(p) })
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			logsMu.Lock()
			t.Logf("herald dev stderr:\n%s", logs.String())
			logsMu.Unlock()
		}
	})

	// Read the guide (until "Ctrl-C stops everything."), then keep draining.
	guideCh := make(chan devGuide, 1)
	var outMu sync.Mutex
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		var g devGuide
		for sc.Scan() {
			line := sc.Text()
			outMu.Lock()
			out.WriteString(line + "\n")
			outMu.Unlock()
			if m := reDSN.FindStringSubmatch(line); m != nil {
				g.dsn, g.dataDir = m[1], m[3]
				g.pgPID, _ = strconv.Atoi(m[2])
			} else if m := reNATS.FindStringSubmatch(line); m != nil && g.natsURL == "" {
				g.natsURL = m[1]
			} else if m := reFiles.FindStringSubmatch(line); m != nil && g.files == "" && strings.HasPrefix(m[1], "/") {
				g.files = m[1]
			} else if m := reMail.FindStringSubmatch(line); m != nil && g.mail == "" {
				g.mail = m[1]
			} else if strings.Contains(line, "Ctrl-C stops everything") {
				guideCh <- g
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var g devGuide
	select {
	case g = <-guideCh:
	case <-time.After(2 * time.Minute):
		t.Fatal("herald dev printed no guide within 2 minutes")
	}
	require.NotEmpty(t, g.dsn)
	require.NotEmpty(t, g.natsURL)
	require.NotEmpty(t, g.files)
	require.Positive(t, g.pgPID)

	hostFile := filepath.Join(g.files, "SHA=8f3a01", "host_specific.json")
	waitUntil(t, time.Minute, "the seeded host's file", func() bool {
		b, err := os.ReadFile(hostFile)
		return err == nil && strings.Contains(string(b), "webserver")
	})

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, g.dsn)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `UPDATE __cmdb SET value = '{"changed": true}' WHERE hostkey = 'SHA=8f3a01'`)
	require.NoError(t, err)
	waitUntil(t, time.Minute, "the update in the host's file", func() bool {
		b, err := os.ReadFile(hostFile)
		return err == nil && strings.Contains(string(b), `"changed": true`)
	})

	// The same UPDATE path reaches the mailbox.
	require.NotEmpty(t, g.mail)
	quota := filepath.Join(g.mail, "example.org", "alice", "Maildir", "maildirsize")
	waitUntil(t, time.Minute, "alice's Maildir with her quota", func() bool {
		b, err := os.ReadFile(quota)
		return err == nil && strings.HasPrefix(string(b), "1073741824S\n")
	})
	_, err = conn.Exec(ctx, `UPDATE mail_users SET quota_bytes = 2147483648 WHERE username = 'alice'`)
	require.NoError(t, err)
	waitUntil(t, time.Minute, "alice's new quota", func() bool {
		b, err := os.ReadFile(quota)
		return err == nil && strings.HasPrefix(string(b), "2147483648S\n")
	})
	conn.Close(ctx)

	nc, err := nats.Connect(g.natsURL)
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s, err := js.Stream(ctx, "HERALD")
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Positive(t, info.State.Msgs, "the stream holds the changes")
	last, err := s.GetLastMsgForSubject(ctx, "herald.public.__cmdb.SHA=8f3a01")
	require.NoError(t, err)
	require.Contains(t, string(last.Data), `"changed"`)
	nc.Close()

	// Ctrl-C: everything stops, nothing is left.
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "herald dev exits 0 on Ctrl-C")
	case <-time.After(time.Minute):
		t.Fatal("herald dev did not stop within a minute of Ctrl-C")
	}
	outMu.Lock()
	require.Contains(t, out.String(), "nothing left running")
	outMu.Unlock()
	_, err = os.Stat(filepath.Join("/proc", strconv.Itoa(g.pgPID)))
	require.True(t, os.IsNotExist(err), "the postmaster (pid %d) is gone", g.pgPID)
	waitUntil(t, 30*time.Second, "no process of the cluster left", func() bool { return len(procsUsing(g.dataDir)) == 0 })
	_, err = os.Stat(g.dataDir)
	require.True(t, os.IsNotExist(err), "the cluster directory is removed")
	_, err = os.Stat(filepath.Dir(g.files))
	require.True(t, os.IsNotExist(err), "the temporary --dir is removed")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procsUsing lists processes whose command line mentions dir.
func procsUsing(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			out = append(out, pid)
		}
	}
	return out
}

// TestDevWithoutPostgreSQL: with no PostgreSQL binaries, herald dev says
// how to install them and starts nothing.
func TestDevWithoutPostgreSQL(t *testing.T) {
	cmd := exec.Command(heraldBinary(t), "dev")
	cmd.Env = append(os.Environ(), "HERALD_TEST_PG_BIN=/nonexistent/bin")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	require.Equal(t, 1, ee.ExitCode())
	require.Contains(t, string(out), "apt-get install postgresql")
	require.NotContains(t, string(out), "Herald is running")
}
