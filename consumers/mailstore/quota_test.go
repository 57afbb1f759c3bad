package mailstore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"

	"golang.org/x/sys/unix"
)

func TestParseQuotaFile(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		ok     bool
		limit  int64
		others []string
		usage  int
	}{
		{"new", "1000S\n0 0\n", true, 1000, nil, 1},
		{"count limit", "5000000S,1000C\n  1234   5\n-200 -1\n", true, 5000000, []string{"1000C"}, 2},
		{"count first", "10C,7S\n", true, 7, []string{"10C"}, 0},
		{"no limit", "0S\n0 0\n", true, 0, nil, 1},
		{"padded", "1000S\n        12345         3\n", true, 1000, nil, 1},
		{"empty", "", false, 0, nil, 0},
		{"no newline", "1000S\n0 0", false, 0, nil, 0},
		{"no S", "1000C\n0 0\n", false, 0, nil, 0},
		{"two S", "1S,2S\n", false, 0, nil, 0},
		{"unknown unit", "1000X\n", false, 0, nil, 0},
		{"negative limit", "-5S\n", false, 0, nil, 0},
		{"garbage usage", "1000S\nabc def\n", false, 0, nil, 0},
		{"three fields", "1000S\n1 2 3\n", false, 0, nil, 0},
		{"blank line", "1000S\n\n1 2\n", false, 0, nil, 0},
		{"empty definition", "\n1 2\n", false, 0, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, err := parseQuotaFile([]byte(tc.in))
			if (err == nil) != tc.ok {
				t.Fatalf("parseQuotaFile(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if q.limit != tc.limit || len(q.usage) != tc.usage || len(q.others) != len(tc.others) {
				t.Fatalf("parseQuotaFile(%q) = %+v", tc.in, q)
			}
			for i := range tc.others {
				if q.others[i] != tc.others[i] {
					t.Fatalf("others = %q, want %q", q.others, tc.others)
				}
			}
		})
	}
}

func TestWithLimit(t *testing.T) {
	scanned := func(b, c int64) func() (int64, int64, error) {
		return func() (int64, int64, error) { return b, c, nil }
	}
	tests := []struct {
		name    string
		in      string
		exists  bool
		limit   int64
		want    string
		changed bool
	}{
		{"missing file: built from the messages", "", false, 1000, "1000S\n300 2\n", true},
		{"same limit: untouched", "1000S\n12 1\n", true, 1000, "1000S\n12 1\n", false},
		{"new limit: usage kept verbatim", "1000S\n  12   1\n-5 -1\n", true, 2000, "2000S\n  12   1\n-5 -1\n", true},
		{"count limit kept", "1000S,50C\n12 1\n", true, 0, "0S,50C\n12 1\n", true},
		{"damaged: rebuilt", "1000S\nnonsense\n", true, 1000, "1000S\n300 2\n", true},
		{"cut short: rebuilt", "1000S\n12 1\n3", true, 1000, "1000S\n300 2\n", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, err := withLimit([]byte(tc.in), tc.exists, tc.limit, scanned(300, 2))
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tc.want || changed != tc.changed {
				t.Fatalf("withLimit = %q, %v; want %q, %v", out, changed, tc.want, tc.changed)
			}
			if _, err := parseQuotaFile(out); err != nil {
				t.Fatalf("result %q does not parse: %v", out, err)
			}
		})
	}
	if _, _, err := withLimit(nil, false, 1, func() (int64, int64, error) { return 0, 0, errors.New("boom") }); err == nil {
		t.Fatal("a failed scan was not reported")
	}
}

func TestScanUsage(t *testing.T) {
	fsys := fstest.MapFS{
		"Maildir/cur/1.M1P1.h,S=100,W=104:2,S":   {Data: make([]byte, 7)}, // S= wins over the file size
		"Maildir/new/2.M2P1.h,S=50":              {Data: make([]byte, 3)},
		"Maildir/new/3.M3P1.h":                   {Data: make([]byte, 42)}, // no S=: file size
		"Maildir/tmp/4.M4P1.h,S=999":             {Data: nil},              // tmp does not count
		"Maildir/.Sent/cur/5.M5P1.h,S=10:2,S":    {Data: nil},
		"Maildir/.Sent/new/.hidden":              {Data: make([]byte, 1000)},
		"Maildir/.Trash/cur/6.M6P1.h,S=1":        {Data: nil},
		"Maildir/maildirsize":                    {Data: []byte("1000S\n0 0\n")},
		"Maildir/dovecot.index.log":              {Data: make([]byte, 500)},
		"Maildir/notafolder/cur/7.M7P1.h,S=1000": {Data: nil},
	}
	b, c, err := scanUsage(fsys, "Maildir")
	if err != nil {
		t.Fatal(err)
	}
	if b != 100+50+42+10+1 || c != 5 {
		t.Fatalf("scanUsage = %d bytes, %d messages; want 203, 5", b, c)
	}
}

func TestSizeFromName(t *testing.T) {
	tests := []struct {
		name string
		size int64
		ok   bool
	}{
		{"1700000000.M1P2.host,S=1234,W=1260:2,S", 1234, true},
		{"1700000000.M1P2.host,W=1260,S=12:2,", 12, true},
		{"1700000000.M1P2.host:2,S", 0, false},
		{"1700000000.M1P2.host,S=x", 0, false},
		{"1700000000.M1P2.host,S=-3", 0, false},
	}
	for _, tc := range tests {
		n, ok := sizeFromName(tc.name)
		if n != tc.size || ok != tc.ok {
			t.Errorf("sizeFromName(%q) = %d, %v; want %d, %v", tc.name, n, ok, tc.size, tc.ok)
		}
	}
}

// TestRenameNoReplaceFallback runs the rename without RENAME_NOREPLACE, as
// on a kernel or file system that lacks it: it still moves, and still
// refuses to replace a mailbox.
func TestRenameNoReplaceFallback(t *testing.T) {
	for _, name := range []string{"renameat2", "fallback"} {
		t.Run(name, func(t *testing.T) {
			if name == "fallback" {
				saved := renameat2
				renameat2 = func(int, string, int, string, uint) error { return unix.ENOSYS }
				t.Cleanup(func() { renameat2 = saved })
			}
			dir := t.TempDir()
			for _, d := range []string{"a/x/Maildir", "b", "c/full/Maildir", "c/empty"} {
				if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			if err := renameNoReplace(root, "a/x", "b/x"); err != nil {
				t.Fatalf("rename: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "b/x/Maildir")); err != nil {
				t.Fatalf("moved mailbox is not at its new place: %v", err)
			}
			for _, target := range []string{"c/full", "c/empty"} {
				err := renameNoReplace(root, "b/x", target)
				if !errors.Is(err, os.ErrExist) {
					t.Fatalf("rename onto %s: %v, want an error wrapping ErrExist", target, err)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "c/full/Maildir")); err != nil {
				t.Fatalf("existing mailbox was touched: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "b/x/Maildir")); err != nil {
				t.Fatalf("source of a refused move is gone: %v", err)
			}
		})
	}
}
