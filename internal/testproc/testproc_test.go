package testproc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// childPath is the import path of the program these tests run.
const childPath = "github.com/herald-cdc/herald/internal/testproc/testdata/child"

func TestBuildOncePerBinary(t *testing.T) {
	bin := Build(t, childPath)
	if filepath.Base(bin) != "child" {
		t.Fatalf("built %s, want a binary named child", bin)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o100 == 0 {
		t.Fatalf("%s has mode %v, want it executable", bin, fi.Mode())
	}
	owner, err := os.ReadFile(filepath.Join(filepath.Dir(bin), ownerFile))
	if err != nil {
		t.Fatal(err)
	}
	if string(owner) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("owner file holds %q, want this process's pid %d", owner, os.Getpid())
	}
	// A second Build, from several goroutines at once, reuses the first.
	var wg sync.WaitGroup
	paths := make([]string, 4)
	for i := range paths {
		wg.Go(func() { paths[i] = Build(t, childPath) })
	}
	wg.Wait()
	for _, p := range paths {
		if p != bin {
			t.Fatalf("second Build returned %s, want %s", p, bin)
		}
	}
	after, err := os.Stat(bin)
	if err != nil || !after.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("the binary was built again (%v)", err)
	}
}

func TestBuildFailureShowsCompilerOutput(t *testing.T) {
	ft := &fatalTB{TB: t}
	ft.run(func() { Build(ft, "github.com/herald-cdc/herald/internal/testproc/testdata/none") })
	if !ft.failed || !strings.Contains(ft.msg, "go build github.com/herald-cdc/herald/internal/testproc/testdata/none") {
		t.Fatalf("Build of a missing package: failed %v, message %q", ft.failed, ft.msg)
	}
}

func TestRemoveStaleBinDirs(t *testing.T) {
	// A pid that certainly belongs to no process any more.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	tests := []struct {
		name  string
		owner string // "" for no owner file
		kept  bool
	}{
		{"exited owner", strconv.Itoa(gone.Process.Pid), false},
		{"live owner", strconv.Itoa(os.Getpid()), true},
		{"no owner file", "", true},
		{"unreadable owner", "not a pid", true},
		{"nonsense pid", "0", true},
	}
	for i, tc := range tests {
		dir := filepath.Join(root, fmt.Sprintf("%s%d", binDirPrefix, i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if tc.owner != "" {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(tc.owner), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	other := filepath.Join(root, "something-else")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}

	removeStaleBinDirs(root)

	for i, tc := range tests {
		_, err := os.Stat(filepath.Join(root, fmt.Sprintf("%s%d", binDirPrefix, i)))
		if kept := err == nil; kept != tc.kept {
			t.Errorf("%s: kept %v, want %v", tc.name, kept, tc.kept)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a directory of another name was touched: %v", err)
	}
}

func TestWaitReturnsExitCodeAndOutput(t *testing.T) {
	p := Start(t, Build(t, childPath), []string{"HERALD_X=1"}, "print", "to stdout", "stderr", "to stderr", "env", "HERALD_X", "env", "PATH", "exit", "7")
	if code := p.Wait(time.Minute); code != 7 {
		t.Fatalf("exit code %d, want 7; output:\n%s", code, p.Output())
	}
	if p.Running() {
		t.Fatal("Running after Wait")
	}
	for _, want := range []string{"to stdout\n", "to stderr\n", "HERALD_X=1\n", "PATH unset\n"} {
		if !strings.Contains(p.Output(), want) {
			t.Errorf("output lacks %q (env is the whole environment); output:\n%s", want, p.Output())
		}
	}
}

func TestNilEnvInherits(t *testing.T) {
	t.Setenv("HERALD_TESTPROC_INHERITED", "yes")
	p := Start(t, Build(t, childPath), nil, "env", "HERALD_TESTPROC_INHERITED", "exit", "0")
	if code := p.Wait(time.Minute); code != 0 || !strings.Contains(p.Output(), "HERALD_TESTPROC_INHERITED=yes") {
		t.Fatalf("exit %d, output %q", code, p.Output())
	}
}

func TestStopSendsSIGTERM(t *testing.T) {
	p := Start(t, Build(t, childPath), nil, "term", "3", "print", "ready", "block")
	WaitFor(t, time.Minute, "the child to catch SIGTERM", func() bool { return strings.Contains(p.Output(), "ready") })
	if !p.Running() {
		t.Fatalf("not running; output:\n%s", p.Output())
	}
	if code := p.Stop(time.Minute); code != 3 {
		t.Fatalf("exit code %d after SIGTERM, want the child's 3; output:\n%s", code, p.Output())
	}
	if !strings.Contains(p.Output(), "got SIGTERM") {
		t.Fatalf("the child did not see SIGTERM; output:\n%s", p.Output())
	}
}

// TestGivingUpKillsAndFails: a Stop or Wait that times out kills the
// child and fails the test, saying how long it waited.
func TestGivingUpKillsAndFails(t *testing.T) {
	tests := []struct {
		name string
		wait func(*Proc)
		want string
	}{
		{"Stop", func(p *Proc) { p.Stop(200 * time.Millisecond) }, "child did not exit within 200ms of SIGTERM"},
		{"Wait", func(p *Proc) { p.Wait(100 * time.Millisecond) }, "child did not exit within 100ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Start(t, Build(t, childPath), nil, "ignore-term", "print", "ready", "block")
			WaitFor(t, time.Minute, "the child to ignore SIGTERM", func() bool { return strings.Contains(p.Output(), "ready") })
			ft := &fatalTB{TB: t}
			p.t = ft
			ft.run(func() { tc.wait(p) })
			if !ft.failed || ft.msg != tc.want {
				t.Fatalf("failed %v, message %q; want %q", ft.failed, ft.msg, tc.want)
			}
			if p.Running() {
				t.Fatalf("the child still runs after %s gave up", tc.name)
			}
		})
	}
}

func TestKill(t *testing.T) {
	p := Start(t, Build(t, childPath), nil, "block")
	p.Kill()
	if p.Running() {
		t.Fatal("Running after Kill")
	}
	if code := p.Wait(time.Second); code != -1 {
		t.Fatalf("exit code %d after SIGKILL, want -1", code)
	}
	p.Kill() // a second Kill does nothing
}

// TestChildDiesWithTestBinary runs this test binary as a parent that starts
// a child and exits without cleaning up: the kernel must kill the child.
func TestChildDiesWithTestBinary(t *testing.T) {
	parent := exec.Command(os.Args[0], "-test.run=^TestParentExitsWithoutCleanup$")
	parent.Env = append(os.Environ(), "HERALD_TESTPROC_CHILD="+Build(t, childPath))
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	pid := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "child pid "); ok {
			pid, _ = strconv.Atoi(s)
		}
	}
	if err := parent.Wait(); err != nil {
		t.Fatalf("parent: %v", err)
	}
	if pid == 0 {
		t.Fatal("the parent did not report its child")
	}
	t.Cleanup(func() {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL) // the test failed: leave nothing behind
		}
	})
	WaitFor(t, 10*time.Second, fmt.Sprintf("child %d to die with its parent", pid), func() bool { return !alive(pid) })
}

// TestParentExitsWithoutCleanup is the parent of TestChildDiesWithTestBinary.
func TestParentExitsWithoutCleanup(t *testing.T) {
	bin := os.Getenv("HERALD_TESTPROC_CHILD")
	if bin == "" {
		t.Skip("run by TestChildDiesWithTestBinary")
	}
	p := Start(t, bin, nil, "print", "started", "block")
	WaitFor(t, time.Minute, "the child to start", func() bool { return strings.Contains(p.Output(), "started") })
	fmt.Printf("child pid %d\n", p.Pid())
	os.Exit(0) // no cleanup: only the kernel can end the child
}

// alive reports whether pid is a process that has not exited (a zombie
// waiting for its new parent to reap it counts as exited).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func TestPoll(t *testing.T) {
	tests := []struct {
		name    string
		metAt   int // the call from which cond holds; 0: never
		d       time.Duration
		want    string
		atLeast time.Duration
	}{
		{"met at once", 1, time.Minute, "", 0},
		{"met on the fifth check", 5, time.Minute, "", 0},
		{"never met", 0, 100 * time.Millisecond, "not yet 7", 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			start := time.Now()
			got := poll(tc.d, func() string {
				calls++
				if tc.metAt > 0 && calls >= tc.metAt {
					return ""
				}
				return fmt.Sprintf("not yet %d", min(calls, 7))
			})
			if got != tc.want {
				t.Fatalf("poll returned %q, want %q", got, tc.want)
			}
			if tc.metAt > 0 && calls != tc.metAt {
				t.Fatalf("%d checks, want %d", calls, tc.metAt)
			}
			if waited := time.Since(start); waited < tc.atLeast {
				t.Fatalf("gave up after %s, before the deadline %s", waited, tc.atLeast)
			}
		})
	}
}

func TestEventuallyAndWaitForFailWithTheReason(t *testing.T) {
	ft := &fatalTB{TB: t}
	ft.run(func() { Eventually(ft, 20*time.Millisecond, func() string { return "3 rows left" }) })
	if !ft.failed || ft.msg != "condition not met within 20ms: 3 rows left" {
		t.Fatalf("Eventually: failed %v, message %q", ft.failed, ft.msg)
	}
	ft = &fatalTB{TB: t}
	ft.run(func() { WaitFor(ft, 20*time.Millisecond, "the gate to open", func() bool { return false }) })
	if !ft.failed || ft.msg != "timed out after 20ms waiting for the gate to open" {
		t.Fatalf("WaitFor: failed %v, message %q", ft.failed, ft.msg)
	}
	ft = &fatalTB{TB: t}
	n := 0
	ft.run(func() { WaitFor(ft, time.Minute, "three checks", func() bool { n++; return n == 3 }) })
	if ft.failed || n != 3 {
		t.Fatalf("WaitFor of a condition met on the third check: failed %v (%q) after %d checks", ft.failed, ft.msg, n)
	}
}

// fatalTB is a testing.TB whose Fatal and Fatalf record the failure and end
// the goroutine instead of failing the test, to test how helpers fail.
type fatalTB struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatal(args ...any) {
	f.failed, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls fn on a goroutine of its own, which Fatal may end.
func (f *fatalTB) run(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

func TestBufferUnderConcurrentWrites(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				_, _ = b.Write([]byte("ab"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.String(); len(got) != 800 || strings.Count(got, "ab") != 400 {
		t.Fatalf("%d bytes, %d whole writes; want 800 and 400", len(got), strings.Count(got, "ab"))
	}
}
