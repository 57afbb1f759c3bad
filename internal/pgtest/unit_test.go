package pgtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRenderConf(t *testing.T) {
	tests := []struct {
		name     string
		settings map[string]string
		want     []string // lines expected after the header, in order
		wantErr  string
	}{
		{name: "empty", settings: nil, want: nil},
		{name: "sorted and quoted", settings: map[string]string{"fsync": "off", "max_connections": "300"},
			want: []string{"fsync = 'off'", "max_connections = '300'"}},
		{name: "quote and backslash escaped", settings: map[string]string{"application_name": `it's a\b`},
			want: []string{`application_name = 'it''s a\\b'`}},
		{name: "custom dotted name", settings: map[string]string{"herald.mode": "test"},
			want: []string{"herald.mode = 'test'"}},
		{name: "bad name", settings: map[string]string{"fsync = off\nx": "y"}, wantErr: "not a valid PostgreSQL setting name"},
		{name: "empty name", settings: map[string]string{"": "y"}, wantErr: "not a valid PostgreSQL setting name"},
		{name: "newline in value", settings: map[string]string{"work_mem": "1MB\nfsync = on"}, wantErr: "line break"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := renderConf(tt.settings)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("renderConf error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")[1:]
			if len(lines) != len(tt.want) {
				t.Fatalf("renderConf lines = %q, want %q", lines, tt.want)
			}
			for i := range lines {
				if lines[i] != tt.want[i] {
					t.Fatalf("renderConf line %d = %q, want %q", i, lines[i], tt.want[i])
				}
			}
		})
	}
}

func TestDBName(t *testing.T) {
	tests := []struct {
		test string
		seq  int64
		want string
	}{
		{"TestX", 1, "t_testx_1"},
		{"TestFoo/sub_case#01", 7, "t_testfoo_sub_case_01_7"},
		{"TestÄrger//x", 2, "t_test_rger_x_2"},
		{"Test" + strings.Repeat("Long", 40), 123456, "t_test" + strings.Repeat("long", 9) + "lo_123456"},
		{"////", 3, "t_3"},
	}
	for _, tt := range tests {
		got := dbName(tt.test, tt.seq)
		if got != tt.want {
			t.Errorf("dbName(%q, %d) = %q, want %q", tt.test, tt.seq, got, tt.want)
		}
		if len(got) > 63 {
			t.Errorf("dbName(%q) = %q is longer than PostgreSQL's 63-byte identifiers", tt.test, got)
		}
	}
}

func TestBinDirHonoursEnv(t *testing.T) {
	real, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	// A directory of links to the real binaries is a valid choice that no
	// other lookup step would find.
	links := t.TempDir()
	for _, name := range []string{"initdb", "postgres"} {
		if err := os.Symlink(filepath.Join(real, name), filepath.Join(links, name)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(BinEnv, links)
	got, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if got != links {
		t.Fatalf("BinDir() = %q with %s=%s, want %q", got, BinEnv, links, links)
	}

	// A wrong directory is an error naming the variable, never a silent
	// fallback to another installation.
	empty := t.TempDir()
	t.Setenv(BinEnv, empty)
	if got, err := BinDir(); err == nil || !strings.Contains(err.Error(), BinEnv) {
		t.Fatalf("BinDir() = %q, %v with an empty %s, want an error naming %s", got, err, BinEnv, BinEnv)
	}
}
