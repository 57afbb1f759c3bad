package deploy

import (
	"bufio"
	"context"
	"fmt"
	"go/version"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// dockerfile is what the tests need to know of deploy/Dockerfile.
type dockerfile struct {
	instructions  []string // one per instruction, continuation lines joined
	buildPackages []string // the ./... packages its go build names
}

// parseDockerfile reads a Dockerfile's instructions and the packages its
// `go build` commands build.
func parseDockerfile(path string) (*dockerfile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	df := &dockerfile{}
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if rest, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(line)
		df.instructions = append(df.instructions, strings.Join(strings.Fields(cur.String()), " "))
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, ins := range df.instructions {
		if !strings.HasPrefix(ins, "RUN ") {
			continue
		}
		for cmd := range strings.SplitSeq(ins, "&&") {
			fields := strings.Fields(cmd)
			i := slices.Index(fields, "go")
			if i < 0 || i+1 >= len(fields) || fields[i+1] != "build" {
				continue
			}
			for _, a := range fields[i+2:] {
				if strings.HasPrefix(a, "./") {
					df.buildPackages = append(df.buildPackages, a)
				}
			}
		}
	}
	if len(df.buildPackages) == 0 {
		return nil, fmt.Errorf("%s builds no ./... package with go build", path)
	}
	return df, nil
}

// stages splits the instructions at each FROM.
func (df *dockerfile) stages() [][]string {
	var out [][]string
	for _, ins := range df.instructions {
		if strings.HasPrefix(ins, "FROM ") {
			out = append(out, nil)
		}
		if len(out) > 0 {
			out[len(out)-1] = append(out[len(out)-1], ins)
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	df, err := parseDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	require.NoError(t, err)

	t.Run("builds every binary of ours, from packages that exist", func(t *testing.T) {
		var names []string
		for _, pkg := range df.buildPackages {
			names = append(names, filepath.Base(pkg))
		}
		require.ElementsMatch(t, append(slices.Clone(ourBinaries), healthcheckBinary), names,
			"deploy/Dockerfile must build exactly Herald's binaries and the healthcheck")
		for _, pkg := range df.buildPackages {
			_, err := os.Stat(filepath.Join(root, pkg))
			require.NoError(t, err, "deploy/Dockerfile builds %s, which does not exist in this tree", pkg)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			out, err := goList(ctx, pkg)
			cancel()
			require.NoError(t, err, "go list %s: %s", pkg, out)
			require.Equal(t, "main", strings.TrimSpace(string(out)), "%s is not a main package", pkg)
		}
	})

	t.Run("the builder's Go is at least go.mod's", func(t *testing.T) {
		var goVersion string
		for _, ins := range df.instructions {
			if v, ok := strings.CutPrefix(ins, "ARG GO_VERSION="); ok {
				goVersion = v
			}
		}
		require.NotEmpty(t, goVersion, "ARG GO_VERSION=… picks the builder image")
		require.Contains(t, df.instructions, "FROM golang:${GO_VERSION} AS build")
		mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
		require.NoError(t, err)
		m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
		require.NotNil(t, m, "go.mod has no go line")
		require.True(t, version.IsValid("go"+goVersion), "GO_VERSION %q", goVersion)
		require.GreaterOrEqual(t, version.Compare("go"+goVersion, "go"+string(m[1])), 0,
			"GO_VERSION %s is older than go.mod's go %s, and the golang image will not fetch a newer toolchain", goVersion, m[1])
	})

	t.Run("static, trimmed binaries", func(t *testing.T) {
		text := strings.Join(df.instructions, "\n")
		require.Contains(t, text, "CGO_ENABLED=0")
		for _, ins := range df.instructions {
			if strings.Contains(ins, "go build") {
				require.Contains(t, ins, "-trimpath")
				require.Contains(t, ins, `-ldflags "-s -w"`)
				require.Contains(t, ins, "--mount=type=cache,target=/go/pkg/mod")
				require.Contains(t, ins, "--mount=type=cache,target=/root/.cache/go-build")
			}
		}
	})

	t.Run("runtime stage: no shell, non-root", func(t *testing.T) {
		stages := df.stages()
		require.GreaterOrEqual(t, len(stages), 2, "a builder stage and a runtime stage")
		final := stages[len(stages)-1]
		require.Equal(t, "FROM scratch", final[0], "the runtime image has nothing but Herald, no shell")
		require.Contains(t, final, "USER 10001:10001")
		for _, ins := range final {
			require.False(t, strings.HasPrefix(ins, "RUN "), "a RUN in the runtime stage needs a shell: %s", ins)
			if strings.HasPrefix(ins, "ENTRYPOINT") || strings.HasPrefix(ins, "CMD") {
				require.Contains(t, ins, "[", "exec form only, there is no shell: %s", ins)
			}
		}
	})
}

// goList returns the package name of pkg, resolved in the repository root.
func goList(ctx context.Context, pkg string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-f", "{{.Name}}", pkg)
	cmd.Dir = root
	return cmd.CombinedOutput()
}
