package readme

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the README's generated blocks")

const readmePath = "../../README.md"

// commands lists the programs under cmd/ (every directory with a main).
func commands(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("../../cmd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "internal" {
			continue
		}
		if _, err := os.Stat(filepath.Join("../../cmd", e.Name(), "main.go")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func helpOutput(t *testing.T, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	cmd := exec.Command(bin, "-h")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // defaults, not this machine's HERALD_* values
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s -h: %v\n%s", name, err, out.String())
	}
	return strings.TrimRight(out.String(), "\n")
}

func TestConfigReferenceUpToDate(t *testing.T) {
	raw, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	dir := t.TempDir()
	changed := false
	for _, name := range commands(t) {
		begin := fmt.Sprintf("<!-- BEGIN %s -h -->", name)
		end := fmt.Sprintf("<!-- END %s -h -->", name)
		i := strings.Index(readme, begin)
		j := strings.Index(readme, end)
		if i < 0 || j < i {
			t.Errorf("README.md has no %q … %q block for cmd/%s; add the two markers under Configuration and run go test ./internal/readme -update", begin, end, name)
			continue
		}
		want := "\n```text\n$ " + name + " -h\n" + helpOutput(t, dir, name) + "\n```\n"
		if readme[i+len(begin):j] == want {
			continue
		}
		if !*update {
			t.Errorf("README.md's reference for %s is out of date; run: go test ./internal/readme -update", name)
			continue
		}
		readme = readme[:i+len(begin)] + want + readme[j:]
		changed = true
	}
	if changed {
		if err := os.WriteFile(readmePath, []byte(readme), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
