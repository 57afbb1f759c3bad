package pgtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The crash tests re-run this test binary as a child that starts a cluster
// and then dies without cleaning up. The child learns what to do from these
// variables.
const (
	crashModeEnv   = "HERALD_PGTEST_CRASH_MODE"
	crashReportEnv = "HERALD_PGTEST_CRASH_REPORT"
)

// crashReport is what the child tells the parent about its cluster.
type crashReport struct {
	Dir   string   `json:"dir"`
	Procs []procID `json:"procs"` // the postmaster and all its children
}

// TestCrashChild is the child's side; TestMain leaves it out of normal runs.
func TestCrashChild(t *testing.T) {
	mode := os.Getenv(crashModeEnv)
	if mode == "" {
		t.Fatal("TestCrashChild runs only as the child of TestCrashLeavesNoProcess (TestMain leaves it out of normal runs)")
	}
	c := NewCluster(t, Options{})
	// Open sessions so the cluster has backends, not only auxiliary
	// processes, that must go away.
	for range 2 {
		conn, err := pgx.Connect(context.Background(), c.ConnString("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(context.Background(), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	pm, err := idOf(c.PID())
	if err != nil {
		t.Fatal(err)
	}
	rep := crashReport{Dir: c.SocketDir(), Procs: append(childrenOf(pm.PID), pm)}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	// Written then renamed, so the parent never reads half a report.
	path := os.Getenv(crashReportEnv)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	switch mode {
	case "exit":
		os.Exit(1) // no cleanup, no Main epilogue
	case "panic":
		panic("pgtest crash test: panic in the test goroutine")
	case "panic-goroutine":
		// A panic outside the test goroutine skips every cleanup.
		done := make(chan struct{})
		go func() {
			defer close(done)
			panic("pgtest crash test: panic in a background goroutine")
		}()
		<-done
	case "hang":
		// The parent signals us. A timer rather than select{}, which the
		// runtime could report as a deadlock.
		<-time.After(5 * time.Minute)
	}
	t.Fatalf("unknown %s %q", crashModeEnv, mode)
}

// TestCrashLeavesNoProcess proves that however a test binary dies, no
// process of its clusters survives it, and its directory is cleaned up: by
// Main on SIGINT and SIGTERM, otherwise by the next Start.
func TestCrashLeavesNoProcess(t *testing.T) {
	for _, mode := range []string{"exit", "panic", "panic-goroutine", "sigkill", "sigint", "sigterm"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			report := filepath.Join(t.TempDir(), "report.json")
			childMode := mode
			signals := map[string]syscall.Signal{"sigkill": syscall.SIGKILL, "sigint": syscall.SIGINT, "sigterm": syscall.SIGTERM}
			sig, signalled := signals[mode]
			if signalled {
				childMode = "hang"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), crashModeEnv+"="+childMode, crashReportEnv+"="+report)
			// Should this test die, the child goes with it.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			var out lockedBuffer
			cmd.Stdout = &out
			cmd.Stderr = &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			rep, err := waitReport(ctx, report, cmd)
			if err != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("%v; child output:\n%s", err, out.String())
			}
			if signalled {
				if err := cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
			}
			err = cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("child ended with %v, want a failure; output:\n%s", err, out.String())
			}
			if len(rep.Procs) < 3 {
				t.Fatalf("child reported only %d cluster processes: %+v", len(rep.Procs), rep.Procs)
			}

			if sig == syscall.SIGINT || sig == syscall.SIGTERM {
				// Main handled the signal (exit status 1, not death by
				// signal) and closed the cluster before exiting: nothing is
				// left for anyone to clean up.
				if exit.ExitCode() != 1 {
					t.Fatalf("child ended with %v after %v, want exit status 1 from Main's handler; output:\n%s", err, sig, out.String())
				}
				if left := anyAlive(rep.Procs); len(left) > 0 {
					t.Fatalf("processes %v alive after the child handled %v", left, sig)
				}
				if _, err := os.Stat(rep.Dir); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("cluster directory %s left after the child handled %v (err %v)", rep.Dir, sig, err)
				}
			}
			waitGone(t, rep.Procs, 30*time.Second)
			if left := procsIn(rep.Dir); len(left) > 0 {
				t.Fatalf("processes %v still work in the dead child's cluster directory", left)
			}
			// The child's directory is stale now (its owner is dead), except
			// after a panic in the test goroutine, where the test's cleanup
			// ran and removed it already.
			removeStale(filepath.Dir(rep.Dir), t.Logf)
			if _, err := os.Stat(rep.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("stale cluster directory %s not removed (err %v)", rep.Dir, err)
			}
		})
	}
}

// waitReport polls for the child's report until it appears or the child
// exits without writing one.
func waitReport(ctx context.Context, path string, cmd *exec.Cmd) (crashReport, error) {
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			var rep crashReport
			if err := json.Unmarshal(b, &rep); err != nil {
				return rep, fmt.Errorf("decoding the child's report: %w", err)
			}
			return rep, nil
		}
		if st, serr := readStat(cmd.Process.Pid); serr != nil || st.state == 'Z' {
			return crashReport{}, errors.New("child exited before reporting its cluster")
		}
		select {
		case <-ctx.Done():
			return crashReport{}, fmt.Errorf("waiting for the child's report: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
