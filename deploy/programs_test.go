package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// ourBinaries are the programs Herald ships: a service, a unit or an
// environment file may run only these.
var ourBinaries = []string{"herald", "herald-bridge", "herald-filesync", "herald-mailstore"}

// healthcheckBinary is the image's healthcheck program (deploy/herald-healthcheck).
const healthcheckBinary = "herald-healthcheck"

// daemons are the long-running programs, each with a systemd unit and an
// environment file.
var daemons = []string{"herald-bridge", "herald-filesync", "herald-mailstore"}

// root is the repository root, the build context of deploy/Dockerfile and
// the directory docker-compose.yml lives in.
var root = func() string {
	abs, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return abs
}()

// binDir holds the binaries built for this test binary; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// builds are the results of building every package deploy/Dockerfile
// builds, once per test binary.
var builds struct {
	once sync.Once
	err  error            // the Dockerfile could not be read
	errs map[string]error // per binary name
}

// binary returns the path of one of the binaries deploy/Dockerfile builds,
// built from this tree, or fails the test with the build's output.
func binary(t *testing.T, name string) string {
	t.Helper()
	builds.once.Do(buildAll)
	require.NoError(t, builds.err)
	err, ok := builds.errs[name]
	require.True(t, ok, "deploy/Dockerfile does not build %s (it builds %v)", name, slices.Sorted(maps.Keys(builds.errs)))
	require.NoError(t, err, "building %s", name)
	return filepath.Join(binDir, name)
}

// buildAll builds, in parallel, every package the Dockerfile's go build
// names: the binaries the image holds are the ones the tests run.
func buildAll() {
	df, err := parseDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		builds.err = err
		return
	}
	builds.errs = map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, pkg := range df.buildPackages {
		name := filepath.Base(pkg)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, name), pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("go build %s (as deploy/Dockerfile does): %w\n%s", pkg, err, out)
			}
			mu.Lock()
			builds.errs[name] = err
			mu.Unlock()
		})
	}
	wg.Wait()
}

// envVar is one variable a program lists in its -h output.
type envVar struct {
	Name    string
	Type    string // empty when the program does not print it
	Default string // "" for none
	Meaning string
	// Required is set when -h says the program refuses to start without it.
	Required bool
}

// program is what a binary's -h says it reads and does.
type program struct {
	name     string
	help     string
	vars     []envVar        // in the order -h prints them
	commands map[string]bool // herald's subcommands; nil for the others
}

// reads reports whether the program reads the variable.
func (p *program) reads(name string) bool {
	return p.variable(name) != nil
}

func (p *program) variable(name string) *envVar {
	for i := range p.vars {
		if p.vars[i].Name == name {
			return &p.vars[i]
		}
	}
	return nil
}

var (
	programsMu sync.Mutex
	programs   = map[string]*program{}
)

// programOf builds a binary, runs it with -h and parses what it prints.
func programOf(t *testing.T, name string) *program {
	t.Helper()
	require.Contains(t, ourBinaries, name, "%s is not one of Herald's binaries", name)
	bin := binary(t, name)
	programsMu.Lock()
	defer programsMu.Unlock()
	if p, ok := programs[name]; ok {
		return p
	}
	out, code := runHelp(t, bin, "-h")
	require.Equal(t, 0, code, "%s -h exits %d:\n%s", name, code, out)
	p := &program{name: name, help: out, vars: parseVars(out)}
	require.NotEmpty(t, p.vars, "%s -h lists no HERALD_* variable:\n%s", name, out)
	if name == "herald" {
		p.commands = parseCommands(out)
		require.NotEmpty(t, p.commands, "herald -h lists no command:\n%s", out)
	}
	programs[name] = p
	return p
}

// subcommandFlags returns the flags `herald SUB -h` lists.
func subcommandFlags(t *testing.T, sub string) map[string]bool {
	t.Helper()
	out, code := runHelp(t, binary(t, "herald"), sub, "-h")
	require.Equal(t, 0, code, "herald %s -h exits %d:\n%s", sub, code, out)
	flags := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(out, -1) {
		flags[m[1]] = true
	}
	return flags
}

var flagLine = regexp.MustCompile(`(?m)^\s+-([A-Za-z0-9][A-Za-z0-9_-]*)\b`)

// runHelp runs a binary without any HERALD_* variable, so that -h shows the
// defaults, and returns its standard output and exit status.
func runHelp(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String() + errb.String(), ee.ExitCode()
	}
	require.NoError(t, err, "running %s %v", bin, args)
	return out.String(), 0
}

var varLine = regexp.MustCompile(`^\s+(HERALD_[A-Z0-9_]+)(\s|$)`)

// parseVars reads the variables from -h output. Under a header line
// "VARIABLE TYPE DEFAULT MEANING" (the shared envcfg format, aligned by a
// tabwriter) it also takes each column; elsewhere just the names.
func parseVars(help string) []envVar {
	var vars []envVar
	seen := map[string]bool{}
	var cols []int // rune offsets of TYPE, DEFAULT, MEANING
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "VARIABLE") && strings.Contains(line, "DEFAULT") && strings.Contains(line, "MEANING") {
			cols = []int{strings.Index(line, "TYPE"), strings.Index(line, "DEFAULT"), strings.Index(line, "MEANING")}
			continue
		}
		m := varLine.FindStringSubmatch(line)
		if m == nil {
			if strings.TrimSpace(line) == "" {
				cols = nil
			}
			continue
		}
		v := envVar{Name: m[1]}
		if r := []rune(line); cols != nil && cols[0] > 0 && len(r) >= cols[2] {
			v.Type = strings.TrimSpace(string(r[cols[0]:cols[1]]))
			v.Default = strings.TrimSpace(string(r[cols[1]:cols[2]]))
			v.Meaning = strings.TrimSpace(string(r[cols[2]:]))
			v.Required = v.Default == "(required)"
			if v.Default == "-" || v.Required {
				v.Default = ""
			}
		}
		if !seen[v.Name] {
			seen[v.Name] = true
			vars = append(vars, v)
		}
	}
	return vars
}

var commandLine = regexp.MustCompile(`^  ([a-z][a-z0-9-]*)\s{2,}\S`)

// parseCommands reads herald's subcommands from the "Commands:" section of
// herald -h.
func parseCommands(help string) map[string]bool {
	cmds := map[string]bool{}
	in := false
	for line := range strings.Lines(help) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.TrimSpace(line) == "Commands:":
			in = true
		case in && strings.TrimSpace(line) == "":
			in = false
		case in:
			if m := commandLine.FindStringSubmatch(line); m != nil {
				cmds[m[1]] = true
			}
		}
	}
	return cmds
}

func TestParseVars(t *testing.T) {
	envcfgHelp := "intro\n\nConfigured through the environment:\n" +
		"  VARIABLE          TYPE      DEFAULT                MEANING\n" +
		"  HERALD_NATS_URL   String    nats://127.0.0.1:4222  NATS server URLs, comma-separated\n" +
		"  HERALD_SOURCE     String    -                      name of this database (default: the database name)\n" +
		"  HERALD_DIR        String    (required)             the root — nothing outside it\n" +
		"  HERALD_QUIET      Duration  0s                     quiet period\n"
	require.Equal(t, []envVar{
		{"HERALD_NATS_URL", "String", "nats://127.0.0.1:4222", "NATS server URLs, comma-separated", false},
		{"HERALD_SOURCE", "String", "", "name of this database (default: the database name)", false},
		{"HERALD_DIR", "String", "", "the root — nothing outside it", true},
		{"HERALD_QUIET", "Duration", "0s", "quiet period", false},
	}, parseVars(envcfgHelp))

	cliHelp := "Commands:\n  migrate  install\n  watch    capture: herald watch TABLE\n\nEnvironment:\n  HERALD_DATABASE_URL    PostgreSQL connection\n"
	require.Equal(t, []envVar{{Name: "HERALD_DATABASE_URL"}}, parseVars(cliHelp))
	require.Equal(t, map[string]bool{"migrate": true, "watch": true}, parseCommands(cliHelp))
}
