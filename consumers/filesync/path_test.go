package filesync

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/herald-cdc/herald/change"
)

func TestKeyPath(t *testing.T) {
	tests := []struct {
		tmpl string
		key  []string
		want string // "" means an ErrUnsafeKey
	}{
		{DefaultPath, []string{"SHA=8f3a01"}, "SHA=8f3a01/host_specific.json"},
		{DefaultPath, []string{"alice"}, "alice/host_specific.json"},
		{DefaultPath, []string{"42"}, "42/host_specific.json"},
		{DefaultPath, []string{"host one"}, "host one/host_specific.json"},
		{DefaultPath, []string{"a.b"}, "a.b/host_specific.json"},
		{DefaultPath, []string{"ü-ñ"}, "ü-ñ/host_specific.json"},
		{"hosts/{key}.json", []string{"web1"}, "hosts/web1.json"},
		{"{key}/{key}.json", []string{"x"}, "x/x.json"},
		{DefaultPath, []string{"eu", "web1"}, "eu,web1/host_specific.json"},
		{"{key}", []string{"plain"}, "plain"},
		// Refused.
		{DefaultPath, []string{""}, ""},
		{DefaultPath, []string{"."}, ""},
		{DefaultPath, []string{".."}, ""},
		{DefaultPath, []string{".hidden"}, ""},
		{DefaultPath, []string{".herald-filesync"}, ""},
		{DefaultPath, []string{"a/b"}, ""},
		{DefaultPath, []string{"../../etc"}, ""},
		{DefaultPath, []string{"/etc"}, ""},
		{DefaultPath, []string{"a\x00b"}, ""},
		{DefaultPath, []string{"line\nbreak"}, ""},
		{DefaultPath, []string{"\xff\xfe"}, ""},
		{DefaultPath, []string{strings.Repeat("x", 256)}, ""},
		{DefaultPath, nil, ""},
		{DefaultPath, []string{"eu,west", "web1"}, ""},
		{DefaultPath, []string{"eu", ""}, ""},
		{DefaultPath, []string{"eu", ".."}, ""},
	}
	for _, tt := range tests {
		tmpl, err := parseTemplate(tt.tmpl)
		if err != nil {
			t.Fatalf("parseTemplate(%q): %v", tt.tmpl, err)
		}
		got, err := tmpl.render(tt.key)
		if tt.want == "" {
			if err == nil || !errors.Is(err, ErrUnsafeKey) {
				t.Errorf("render(%q, %q) = %q, %v; want ErrUnsafeKey", tt.tmpl, tt.key, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("render(%q, %q) = %q, %v; want %q", tt.tmpl, tt.key, got, err, tt.want)
		}
	}
}

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		tmpl    string
		wantErr string
	}{
		{DefaultPath, ""},
		{"hosts/{key}.json", ""},
		{"{key}", ""},
		{"", "empty"},
		{"host_specific.json", "no {key}"},
		{"/abs/{key}.json", "absolute"},
		{"../{key}.json", "inside the root"},
		{"a/./{key}", "inside the root"},
		{"a//{key}", "empty path element"},
		{"{key}/", "empty path element"},
		{"{key}/{name}.json", "braces"},
		{".herald-filesync/{key}", "own state"},
		{"a\x00/{key}", "NUL"},
	}
	for _, tt := range tests {
		_, err := parseTemplate(tt.tmpl)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("parseTemplate(%q) = %v", tt.tmpl, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("parseTemplate(%q) = %v, want an error mentioning %q", tt.tmpl, err, tt.wantErr)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{Dir: "/srv/cmdb"}, ""},
		{"no dir", Config{}, "Dir is required"},
		{"bad table", Config{Dir: "/x", Table: "public."}, "Table"},
		{"bad path", Config{Dir: "/x", Path: "../{key}"}, "Path"},
		{"bad key", Config{Dir: "/x", Keys: []string{"ok", "../x"}}, "Keys"},
		{"negative quiet", Config{Dir: "/x", Quiet: -1}, "Quiet"},
		{"mode with type bits", Config{Dir: "/x", FileMode: 0o4644}, "FileMode"},
		{"unreadable mode", Config{Dir: "/x", FileMode: 0o044}, "FileMode"},
		{"bad dir mode", Config{Dir: "/x", DirMode: 0o055}, "DirMode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				if cfg.Table != DefaultTable || cfg.Column != DefaultColumn || cfg.Path != DefaultPath || cfg.FileMode != 0o644 {
					t.Fatalf("defaults not filled in: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzKeyPath checks that no key, under any of a few templates, yields a
// path outside the root or in filesync's state directory, and that nothing
// panics.
func FuzzKeyPath(f *testing.F) {
	for _, k := range []string{"SHA=8f3a", "..", ".", "", "a/b", "../../etc/passwd", "a\x00b", ".x", "x,y", "%2e%2e", "..\\..", "…", strings.Repeat("a", 300)} {
		f.Add(k, "")
		f.Add(k, "b")
	}
	tmpls := []string{DefaultPath, "{key}", "hosts/{key}.json", "{key}/{key}/x", "pre-{key}-post"}
	root := "/srv/root"
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		keys := [][]string{{k1}}
		if k2 != "" {
			keys = append(keys, []string{k1, k2})
		}
		for _, raw := range tmpls {
			tmpl, err := parseTemplate(raw)
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range keys {
				p, err := tmpl.render(key)
				if err != nil {
					if !errors.Is(err, ErrUnsafeKey) {
						t.Fatalf("render(%q) error %v does not wrap ErrUnsafeKey", key, err)
					}
					continue
				}
				if !filepath.IsLocal(p) || !utf8.ValidString(p) || strings.ContainsRune(p, 0) {
					t.Fatalf("render(%q) = %q: not a local path", key, p)
				}
				full := filepath.Join(root, p)
				if rel, err := filepath.Rel(root, full); err != nil || strings.HasPrefix(rel, "..") || rel != p {
					t.Fatalf("render(%q) = %q lands at %q, outside %s", key, p, full, root)
				}
				first, _, _ := strings.Cut(p, "/")
				if first == stateDirName {
					t.Fatalf("render(%q) = %q is in the state directory", key, p)
				}
				for _, c := range strings.Split(p, "/") {
					if c == "" || c == "." || c == ".." || len(c) > nameMax {
						t.Fatalf("render(%q) = %q has element %q", key, p, c)
					}
				}
			}
		}
	})
}

// FuzzValue feeds arbitrary new rows to the column extraction: it never
// panics, and what it accepts is valid JSON ending with a newline.
func FuzzValue(f *testing.F) {
	for _, row := range []string{
		`{"value":{"a":1}}`, `{"value":"{\"a\":1}"}`, `{"value":"not json"}`, `{"value":12345678901234567890.5}`,
		`{"other":1}`, `null`, `[]`, `{"value":null}`, `{"value":"\"s\""}`, `{`, `{"value":"  [1, 2] "}`,
	} {
		f.Add([]byte(row))
	}
	s := &Syncer{cfg: Config{Column: "value"}}
	f.Fuzz(func(t *testing.T, row []byte) {
		e := &change.Envelope{Op: change.OpUpdate, New: row}
		out, err := s.value(e)
		if err != nil {
			return
		}
		if len(out) == 0 || out[len(out)-1] != '\n' || !json.Valid(out[:len(out)-1]) {
			t.Fatalf("value(%q) = %q: not JSON plus a newline", row, out)
		}
	})
}

func TestValue(t *testing.T) {
	s := &Syncer{cfg: Config{Column: "value"}}
	tests := []struct{ row, want string }{
		{`{"value":{"a": 1.50}}`, "{\"a\": 1.50}\n"},
		{`{"value":"{\"a\":1}"}`, "{\"a\":1}\n"},
		{`{"value":12345678901234567890.5}`, "12345678901234567890.5\n"},
		{`{"value":null}`, "null\n"},
		{`{"value":"not json"}`, ""},
		{`{"value":"\"quoted\""}`, "\"quoted\"\n"},
		{`{"other":1}`, ""},
		{``, ""},
	}
	for _, tt := range tests {
		out, err := s.value(&change.Envelope{Op: change.OpInsert, New: []byte(tt.row)})
		if tt.want == "" {
			if err == nil {
				t.Errorf("value(%s) = %q, want an error", tt.row, out)
			}
			continue
		}
		if err != nil || string(out) != tt.want {
			t.Errorf("value(%s) = %q, %v; want %q", tt.row, out, err, tt.want)
		}
	}
}
