package deploy

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// unit is a systemd unit file: each "Section.Key" with its values in order.
type unit map[string][]string

// last returns the value that wins for a key set several times.
func (u unit) last(key string) string {
	v := u[key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "%s: %q", path, line)
			require.NotEmpty(t, section, "%s: %q before any section", path, line)
			require.False(t, strings.HasSuffix(v, `\`), "%s: continuation lines are not expected", path)
			u[section+"."+strings.TrimSpace(k)] = append(u[section+"."+strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	require.NoError(t, sc.Err())
	return u
}

// wantCaps are the capabilities each unit keeps.
var wantCaps = map[string][]string{
	"herald-bridge":    nil,
	"herald-filesync":  nil,
	"herald-mailstore": {"CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"},
}

func TestSystemdUnits(t *testing.T) {
	dir := filepath.Join(root, "deploy", "systemd")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".service"); ok {
			require.Contains(t, daemons, name, "deploy/systemd/%s runs no program of ours", e.Name())
		}
	}
	sysusers, err := os.ReadFile(filepath.Join(dir, "herald.sysusers.conf"))
	require.NoError(t, err)

	for _, daemon := range daemons {
		t.Run(daemon, func(t *testing.T) {
			path := filepath.Join(dir, daemon+".service")
			u := parseUnit(t, path)
			bin := binary(t, daemon)

			require.Equal(t, "/usr/local/bin/"+daemon, u.last("Service.ExecStart"))
			require.Equal(t, []string{"/etc/herald/" + daemon + ".env"}, u["Service.EnvironmentFile"])
			_, err := os.Stat(envFilePath(daemon))
			require.NoError(t, err, "the unit reads an environment file deploy/env has no example of")

			require.Equal(t, "on-failure", u.last("Service.Restart"))
			for key, want := range map[string]string{
				"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
				"PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
				"ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
				"LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
				"AmbientCapabilities": "",
			} {
				require.Equal(t, want, u.last("Service."+key), "%s=", key)
			}
			require.Equal(t, "@system-service", u["Service.SystemCallFilter"][0])
			require.ElementsMatch(t, wantCaps[daemon], strings.Fields(u.last("Service.CapabilityBoundingSet")), "CapabilityBoundingSet=")
			if len(wantCaps[daemon]) == 0 {
				require.Equal(t, "herald", u.last("Service.User"), "runs as the unprivileged user herald")
				require.Contains(t, string(sysusers), "u herald ", "herald.sysusers.conf creates the user")
			} else {
				require.Empty(t, u.last("Service.User"), "%s changes ownership, which takes root (bounded by CapabilityBoundingSet)", daemon)
			}

			// The consumer's root, as its example environment sets it, is writable.
			if rv, ok := rootVar[daemon]; ok {
				set, _ := envFileVars(t, envFilePath(daemon))
				rootDir := set[rv]
				require.NotEmpty(t, rootDir, "deploy/env/%s.env sets no %s", daemon, rv)
				writable := slices.Clone(u["Service.ReadWritePaths"])
				for _, sd := range u["Service.StateDirectory"] {
					writable = append(writable, "/var/lib/"+sd)
				}
				require.True(t, slices.ContainsFunc(writable, func(w string) bool {
					w = strings.TrimPrefix(w, "-")
					return rootDir == w || strings.HasPrefix(rootDir, strings.TrimSuffix(w, "/")+"/")
				}), "%s=%s is not writable under ProtectSystem=strict (ReadWritePaths %v)", rv, rootDir, writable)
			}

			// RestartPreventExitStatus=2 means "configuration error, restarting
			// cannot help": the program must exit 2 on one.
			if u.last("Service.RestartPreventExitStatus") != "" {
				require.Equal(t, "2", u.last("Service.RestartPreventExitStatus"))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, bin)
				cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HERALD_LOG_FORMAT=yaml"}
				out, err := cmd.CombinedOutput()
				var ee *exec.ExitError
				require.ErrorAs(t, err, &ee, "%s with HERALD_LOG_FORMAT=yaml: %s", daemon, out)
				require.Equal(t, 2, ee.ExitCode(), "%s with a bad configuration: %s", daemon, out)
			}

			t.Run("systemd-analyze verify", func(t *testing.T) {
				analyze, err := exec.LookPath("systemd-analyze")
				if err != nil {
					t.Skip("systemd-analyze is not installed")
				}
				// The unit as installed, but starting the binary built here.
				text, err := os.ReadFile(path)
				require.NoError(t, err)
				tmp := filepath.Join(t.TempDir(), daemon+".service")
				require.NoError(t, os.WriteFile(tmp, []byte(strings.Replace(string(text), "ExecStart=/usr/local/bin/"+daemon, "ExecStart="+bin, 1)), 0o644))
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", tmp).CombinedOutput()
				require.NoError(t, err, "systemd-analyze verify: %s", out)
				require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify has remarks")
			})
		})
	}
}
