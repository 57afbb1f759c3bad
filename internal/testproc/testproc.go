// Package testproc runs Herald's own programs as real processes in tests,
// and waits for what they do by polling a condition with a deadline.
//
// Build compiles a command once per test binary; Start runs it so that it
// dies with the test binary (Pdeathsig), keeps its output for the failure
// report, and reaps it in the background, so a test can kill it, stop it
// with SIGTERM, or wait for it to exit by itself and read its exit code:
//
//	bin := testproc.Build(t, "github.com/herald-cdc/herald/cmd/herald-bridge")
//	p := testproc.Start(t, bin, append(os.Environ(), "HERALD_METRICS_ADDR="))
//	testproc.WaitFor(t, time.Minute, "the bridge to lead", leads)
//	require.Equal(t, 0, p.Stop(30*time.Second))
package testproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDirPrefix names the directories Build builds into.
const binDirPrefix = "herald-testbin-"

// ownerFile, in a build directory, holds the pid of the test binary that
// made it.
const ownerFile = "owner"

var builds struct {
	dirOnce sync.Once
	dir     string
	dirErr  error

	mu     sync.Mutex
	byPath map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Build builds the command at importPath (a package main of this module)
// once per test binary, and returns the binary's path. A test binary often
// ends with os.Exit (pgtest.Main) and cannot remove what it built, so the
// binaries go into a directory of its own that records its pid, and the
// first Build removes the directories of test binaries that are gone.
func Build(t testing.TB, importPath string) string {
	t.Helper()
	builds.mu.Lock()
	if builds.byPath == nil {
		builds.byPath = map[string]*build{}
	}
	b := builds.byPath[importPath]
	if b == nil {
		b = &build{}
		builds.byPath[importPath] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() {
		dir, err := binDir()
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, path.Base(importPath))
		out, err := exec.Command("go", "build", "-o", b.path, importPath).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", importPath, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// binDir returns this test binary's build directory, made on first use.
func binDir() (string, error) {
	builds.dirOnce.Do(func() {
		removeStaleBinDirs(os.TempDir())
		dir, err := os.MkdirTemp("", binDirPrefix)
		if err != nil {
			builds.dirErr = fmt.Errorf("making a directory for test binaries: %w", err)
			return
		}
		if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			builds.dirErr = fmt.Errorf("recording the owner of %s: %w", dir, err)
			return
		}
		builds.dir = dir
	})
	return builds.dir, builds.dirErr
}

// removeStaleBinDirs removes the build directories under root whose owner
// has exited. A directory without an owner file may be one another test
// binary is making right now: it is left alone.
func removeStaleBinDirs(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, binDirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}

// Proc is a program started by Start. It is reaped in the background, so a
// test can wait for it to exit by itself.
type Proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	out  *Buffer
	done chan struct{} // closed once the process has exited and been reaped
}

// Start starts bin with args and env as its whole environment (nil: this
// process's). The process gets SIGKILL when the test binary dies, so a
// crashed test leaves nothing running; its stdout and stderr are kept for
// Output, and logged when the test has failed. It is killed when the test
// ends.
func Start(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	p := &Proc{t: t, name: filepath.Base(bin), cmd: cmd, out: &Buffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("%s (pid %d) output:\n%s", p.name, cmd.Process.Pid, p.out.String())
		}
	})
	return p
}

// Kill sends SIGKILL and waits until the process is reaped.
func (p *Proc) Kill() {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Wait waits for the process to exit by itself and returns its exit code
// (-1 when a signal ended it). After timeout it kills the process and
// fails the test.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		p.t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM and returns the exit code. After timeout it kills the
// process and fails the test.
func (p *Proc) Stop(timeout time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("sending SIGTERM to %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		p.t.Fatalf("%s did not exit within %s of SIGTERM", p.name, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// Output returns what the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Buffer collects output that one goroutine writes while another reads it:
// a child's, or a logger's in a program run in-process. The zero value is
// an empty buffer.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write appends p.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// maxPoll is the longest pause between two checks of a condition: short
// enough to add little to a test's time, long enough not to load a
// database that a check queries.
const maxPoll = 50 * time.Millisecond

// Eventually checks cond until it returns "" (met) or d has passed, then
// fails the test with cond's last answer. It checks at once, then after
// pauses growing from 1ms to 50ms.
func Eventually(t testing.TB, d time.Duration, cond func() string) {
	t.Helper()
	if msg := poll(d, cond); msg != "" {
		t.Fatalf("condition not met within %s: %s", d, msg)
	}
}

// WaitFor checks cond until it holds or timeout has passed, then fails the
// test naming what it waited for. It checks as Eventually does.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	msg := poll(timeout, func() string {
		if cond() {
			return ""
		}
		return what
	})
	if msg != "" {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// poll checks cond until it returns "" or d has passed, and returns its
// last answer.
func poll(d time.Duration, cond func() string) string {
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for {
		msg := cond()
		if msg == "" || time.Now().After(deadline) {
			return msg
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPoll)
	}
}
