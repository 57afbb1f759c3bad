package pgtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// procID names one process across pid reuse: a pid alone may already belong
// to another process by the time it is checked again, its start time may not.
type procID struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // clock ticks after boot, field 22 of /proc/<pid>/stat
}

// procStat is what pgtest reads from /proc/<pid>/stat.
type procStat struct {
	state byte
	ppid  int
	start uint64
}

// readStat parses /proc/<pid>/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may itself hold spaces
	// or parentheses, so the fixed fields are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat: %d fields after the name", pid, len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("malformed ppid in /proc/%d/stat: %w", pid, err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed start time in /proc/%d/stat: %w", pid, err)
	}
	return procStat{state: f[0][0], ppid: ppid, start: start}, nil
}

// idOf returns the procID of a running pid.
func idOf(pid int) (procID, error) {
	st, err := readStat(pid)
	if err != nil {
		return procID{}, err
	}
	return procID{PID: pid, Start: st.start}, nil
}

// alive reports whether the process still exists and is not a zombie. A
// zombie has exited; only its parent has yet to reap it.
func alive(id procID) bool {
	st, err := readStat(id.PID)
	if err != nil || st.start != id.Start {
		return false
	}
	return st.state != 'Z' && st.state != 'X'
}

// anyAlive returns the processes in ids that are still alive.
func anyAlive(ids []procID) []procID {
	var out []procID
	for _, id := range ids {
		if alive(id) {
			out = append(out, id)
		}
	}
	return out
}

// scanProcs calls fn for every live, non-zombie process visible in /proc.
func scanProcs(fn func(pid int, st procStat)) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' {
			continue
		}
		fn(pid, st)
	}
}

// childrenOf lists the live children of ppid: a postmaster's backends and
// auxiliary processes.
func childrenOf(ppid int) []procID {
	var out []procID
	scanProcs(func(pid int, st procStat) {
		if st.ppid == ppid {
			out = append(out, procID{PID: pid, Start: st.start})
		}
	})
	return out
}

// procsIn lists the live processes whose working directory is dir or below
// it. Every PostgreSQL process works in its data directory, so this finds a
// cluster's processes even after they were re-parented away from the
// postmaster. Processes of other users are invisible to an ordinary user,
// which is fine: an ordinary user's clusters run as that user.
func procsIn(dir string) []procID {
	var out []procID
	scanProcs(func(pid int, st procStat) {
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
		if err != nil {
			return
		}
		if cwd == dir || strings.HasPrefix(cwd, dir+string(filepath.Separator)) {
			out = append(out, procID{PID: pid, Start: st.start})
		}
	})
	return out
}

// process is a child started by spawn.
type process struct {
	id   procID
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result; read only after done is closed
	// logDone is closed when the log pipe reaches EOF, that is when every
	// process holding its write end (the postmaster and all its children)
	// has exited. Nil when the output is not piped.
	logDone chan struct{}
}

// spawn starts cmd with Pdeathsig=SIGKILL (and cred, when not nil) from a
// goroutine locked to its OS thread, and keeps that goroutine blocked in
// cmd.Wait until the process exits.
//
// The kernel sends the parent-death signal when the *thread* that forked the
// child exits, not the process. Go parks and destroys threads at will, so a
// child forked from an ordinary goroutine could be killed in the middle of a
// test when that thread goes away. A locked thread that waits for the child
// lives exactly as long as the child needs it, and dies with the test binary
// however the binary ends.
func spawn(cmd *exec.Cmd, cred *syscall.Credential) (*process, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
		// A process group of its own keeps a terminal's Ctrl-C away from
		// the server: Main decides how clusters stop on SIGINT.
		Setpgid: true,
	}
	p := &process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns its thread exits,
		// which is harmless because the child is gone by then.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	p.id = procID{PID: cmd.Process.Pid}
	if id, err := idOf(cmd.Process.Pid); err == nil {
		p.id = id
	}
	return p, nil
}
