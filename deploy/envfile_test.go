package deploy

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite deploy/env/*.env from the programs' -h output")

// setting is a variable an example environment file sets.
type setting struct{ name, value string }

// envSettings are the lines each example file sets rather than leaves at
// the default: what the program needs on a host where PostgreSQL and NATS
// run locally, matching the paths the systemd units open for writing.
var envSettings = map[string][]setting{
	"herald-bridge":   {{"HERALD_DATABASE_URL", "postgres:///app?host=/run/postgresql&user=herald"}},
	"herald-filesync": {{"HERALD_FILESYNC_DIR", "/var/lib/herald/filesync"}},
	// The unit runs mailstore as root to give mailboxes their owners:
	// "always" makes it refuse to start rather than silently not chown,
	// and the uid is the mail user's (vmail's, say).
	"herald-mailstore": {
		{"HERALD_MAILSTORE_ROOT", "/var/lib/herald/mailstore"},
		{"HERALD_MAILSTORE_UID", "5000"},
		{"HERALD_MAILSTORE_CHOWN", "always"},
	},
}

func envFilePath(daemon string) string {
	return filepath.Join(root, "deploy", "env", daemon+".env")
}

// renderEnvFile writes the example environment file of a program: every
// variable it reads, with its meaning and default, commented out unless
// envSettings sets it.
func renderEnvFile(p *program, set []setting) string {
	var b strings.Builder
	intro := fmt.Sprintf("Environment of %[1]s, read by deploy/systemd/%[1]s.service. Install it as "+
		"/etc/herald/%[1]s.env, mode 0600, owner root: systemd reads it before dropping privileges, "+
		"and it may hold passwords. Every variable %[1]s reads is listed with its meaning, type and default; "+
		"a commented line keeps the default, uncomment it to change the value.", p.name)
	for _, line := range wrap(intro, 77) {
		b.WriteString("# " + line + "\n")
	}
	fmt.Fprintf(&b, "#\n# Generated from `%s -h`. When the program's variables change, run\n"+
		"#   go test ./deploy -run TestEnvFiles -update\n# (until then TestEnvFiles fails).\n", p.name)
	for _, v := range p.vars {
		b.WriteString("\n")
		meaning := v.Meaning
		if v.Type != "" {
			meaning += " [" + v.Type + "]"
		}
		if v.Required {
			meaning += " (required)"
		}
		for _, line := range wrap(meaning, 77) {
			b.WriteString("# " + line + "\n")
		}
		value, isSet := v.Default, false
		for _, s := range set {
			if s.name == v.Name {
				value, isSet = s.value, true
			}
		}
		if !isSet {
			b.WriteString("#")
		}
		b.WriteString(v.Name + "=" + value + "\n")
	}
	return b.String()
}

// wrap breaks text into lines of at most width bytes, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

var envLine = regexp.MustCompile(`^(#?)\s*(HERALD_[A-Z0-9_]+)=(.*)$`)

// envFileVars reads the variables an environment file names: those it sets
// and those it shows commented out.
func envFileVars(t *testing.T, path string) (set map[string]string, shown map[string]bool) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	set, shown = map[string]string{}, map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := envLine.FindStringSubmatch(line); m != nil {
			shown[m[2]] = true
			if m[1] == "" {
				set[m[2]] = m[3]
			}
			continue
		}
		require.True(t, line == "" || strings.HasPrefix(line, "#"), "%s: %q is neither a HERALD_* variable nor a comment", path, line)
	}
	require.NoError(t, sc.Err())
	return set, shown
}

func TestEnvFiles(t *testing.T) {
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Join(root, "deploy", "env"), 0o755))
	}
	entries, err := os.ReadDir(filepath.Join(root, "deploy", "env"))
	require.NoError(t, err)
	for _, e := range entries {
		require.Contains(t, daemons, strings.TrimSuffix(e.Name(), ".env"), "deploy/env/%s belongs to no program of ours", e.Name())
	}

	for _, daemon := range daemons {
		t.Run(daemon, func(t *testing.T) {
			prog := programOf(t, daemon)
			path := envFilePath(daemon)
			want := renderEnvFile(prog, envSettings[daemon])
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(want), 0o644))
			}

			set, shown := envFileVars(t, path)
			for name := range shown {
				require.True(t, prog.reads(name), "%s names %s, which %s does not read (%s -h)", path, name, daemon, daemon)
			}
			for _, v := range prog.vars {
				require.True(t, shown[v.Name], "%s does not show %s, which %s reads; run go test ./deploy -run TestEnvFiles -update", path, v.Name, daemon)
				if v.Required {
					require.NotEmpty(t, set[v.Name], "%s must set %s: %s refuses to start without it", path, v.Name, daemon)
				}
			}
			for _, s := range envSettings[daemon] {
				require.True(t, prog.reads(s.name), "envSettings: %s does not read %s", daemon, s.name)
			}
			if dsn, ok := set["HERALD_DATABASE_URL"]; ok {
				cfg, err := pgconn.ParseConfig(dsn)
				require.NoError(t, err, "%s: HERALD_DATABASE_URL", path)
				require.Equal(t, "/run/postgresql", cfg.Host, "the example connects over the local socket")
			}

			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, want, string(got), "%s is out of date with `%s -h`; run go test ./deploy -run TestEnvFiles -update", path, daemon)

			t.Run("a configuration the program accepts", func(t *testing.T) {
				if daemon == "herald-mailstore" && set["HERALD_MAILSTORE_CHOWN"] == "always" && os.Geteuid() != 0 {
					t.Skip("this example runs as root (see its unit) and refuses to start otherwise; run the test as root")
				}
				requireAccepted(t, prog, set)
			})
		})
	}
}

func TestWrap(t *testing.T) {
	tests := []struct {
		text  string
		width int
		want  []string
	}{
		{"", 10, []string{""}},
		{"short", 10, []string{"short"}},
		{"one two three four", 9, []string{"one two", "three", "four"}},
		{"averyveryverylongword next", 5, []string{"averyveryverylongword", "next"}},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, wrap(tc.text, tc.width), "%q", tc.text)
	}
}

// requireAccepted starts a program with the variables an example sets
// (its root moved to a temporary directory, NATS to a port nobody listens
// on, metrics to a free port) and checks that it does not exit with status
// 2, the status of a configuration error: it either runs on, trying to
// reach NATS, or gives up on the connection with status 1.
func requireAccepted(t *testing.T, prog *program, set map[string]string) {
	t.Helper()
	env := map[string]string{}
	maps.Copy(env, set)
	if rv, ok := rootVar[prog.name]; ok {
		env[rv] = t.TempDir()
	}
	env["HERALD_NATS_URL"] = "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	env["HERALD_METRICS_ADDR"] = "127.0.0.1:0"
	if prog.reads("HERALD_NATS_CONNECT_TIMEOUT") {
		env["HERALD_NATS_CONNECT_TIMEOUT"] = "1s"
	}
	cmd := exec.Command(binary(t, prog.name))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%s exited 0 without NATS: %s", prog.name, out.String())
		require.NotEqual(t, 2, ee.ExitCode(), "%s refuses the example configuration: %s", prog.name, out.String())
	case <-time.After(3 * time.Second):
		// Still running: the configuration passed validation and the
		// program is waiting for NATS.
		require.NoError(t, cmd.Process.Kill())
		<-done
	}
}
