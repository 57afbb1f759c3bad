package mailstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestMailboxPath(t *testing.T) {
	tests := []struct {
		domain, user string
		want         string // "" means refused
	}{
		{"example.org", "alice", "example.org/alice"},
		{"example.org", "alice.smith", "example.org/alice.smith"},
		{"example.org", "a+tag_x-y", "example.org/a+tag_x-y"},
		{"xn--bcher-kva.example", "bob", "xn--bcher-kva.example/bob"},
		{"bücher.example", "jürgen", "bücher.example/jürgen"},
		{"example.org", strings.Repeat("a", MaxNameLen), "example.org/" + strings.Repeat("a", MaxNameLen)},
		{"example.org", "", ""},
		{"", "alice", ""},
		{"example.org", ".", ""},
		{"example.org", "..", ""},
		{"..", "alice", ""},
		{"example.org", "a..b", ""},
		{"example.org", ".hidden", ""},
		{".archive", "alice", ""},
		{".herald-mailstore", "alice", ""},
		{"example.org", "a/b", ""},
		{"example.org", "../../etc", ""},
		{"/etc", "passwd", ""},
		{"example.org", "a\\b", ""},
		{"example.org", "a\x00b", ""},
		{"example.org", "a\nb", ""},
		{"example.org", "a b", ""},
		{"example.org", " alice", ""},
		{"example.org", "alice\t", ""},
		{"example.org", "a\u200bb", ""}, // zero-width space
		{"example.org", "a\u202eb", ""}, // right-to-left override
		{"example.org", "a\u00a0b", ""}, // no-break space
		{"example.org", "a\x7fb", ""},   // DEL
		{"example.org", "a\u0085b", ""}, // C1 next line
		{"example.org", "\xff\xfe", ""}, // not UTF-8
		{"example.org", "a\ufffdb", ""}, // replacement character
		{"example.org", "-rf", ""},
		{"example.org", strings.Repeat("a", MaxNameLen+1), ""},
	}
	for _, tc := range tests {
		got, err := MailboxPath(tc.domain, tc.user)
		if tc.want == "" {
			if err == nil {
				t.Errorf("MailboxPath(%q, %q) = %q, want an error", tc.domain, tc.user, got)
			} else if !errors.Is(err, ErrUnsafeName) {
				t.Errorf("MailboxPath(%q, %q) error %v does not wrap ErrUnsafeName", tc.domain, tc.user, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("MailboxPath(%q, %q) = %q, %v; want %q", tc.domain, tc.user, got, err, tc.want)
		}
	}
}

func TestArchiveName(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("X", 3600))
	got := archiveName(".archive", "example.org/alice", at)
	if want := ".archive/example.org/alice-20250304T040607.123456Z"; got != want {
		t.Errorf("archiveName = %q, want %q", got, want)
	}
	if got2 := archiveName(".archive", "example.org/alice", at.UTC()); got2 != got {
		t.Errorf("archiveName depends on the time zone: %q vs %q", got, got2)
	}
	long := strings.Repeat("u", MaxNameLen)
	name := filepath.Base(archiveName("a", "d/"+long, at) + "-" + strings.Repeat("f", 12))
	if len(name) > 255 {
		t.Errorf("the longest archive name is %d bytes, more than a file name may be", len(name))
	}
}

func TestArchiveDir(t *testing.T) {
	tests := []struct {
		root, archive, want string // want "" means refused
	}{
		{"/srv/mail", ".archive", ".archive"},
		{"/srv/mail", "old/deleted", "old/deleted"},
		{"/srv/mail", "./.archive/", ".archive"},
		{"/srv/mail", "/srv/mail/.archive", ".archive"},
		{"/srv/mail", "/srv/mail/x/../.trash", ".trash"},
		{"/srv/mail", "/srv/mail", ""},
		{"/srv/mail", "/srv/archive", ""},
		{"/srv/mail", "/srv/mail2/.archive", ""},
		{"/srv/mail", "../archive", ""},
		{"/srv/mail", ".archive/../../x", ""},
		{"/srv/mail", ".", ""},
		{"/srv/mail", ".herald-mailstore/archive", ""},
		{"/srv/mail", "a\x00b", ""},
	}
	for _, tc := range tests {
		got, err := archiveDir(tc.root, tc.archive)
		if tc.want == "" {
			if err == nil {
				t.Errorf("archiveDir(%q, %q) = %q, want an error", tc.root, tc.archive, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("archiveDir(%q, %q) = %q, %v; want %q", tc.root, tc.archive, got, err, tc.want)
		}
	}
}

// FuzzMailboxPath checks that no domain and username yield a path outside
// the root, in the archive's or the state's dot-folders, or anything but
// two plain elements — and that nothing panics.
func FuzzMailboxPath(f *testing.F) {
	for _, s := range []string{"alice", "example.org", "..", ".", "", "a/b", "../../etc/passwd", "a\x00b", ".x",
		"%2e%2e", "..\\..", "…", "a\u202eb", "\xff", strings.Repeat("a", 300), "-x", "x..", "x.", "/"} {
		f.Add("example.org", s)
		f.Add(s, "alice")
	}
	root := "/srv/mail"
	f.Fuzz(func(t *testing.T, domain, user string) {
		p, err := MailboxPath(domain, user)
		if err != nil {
			if !errors.Is(err, ErrUnsafeName) {
				t.Fatalf("MailboxPath(%q, %q) error %v does not wrap ErrUnsafeName", domain, user, err)
			}
			if p != "" {
				t.Fatalf("MailboxPath(%q, %q) returned %q with an error", domain, user, p)
			}
			return
		}
		if !filepath.IsLocal(p) || !utf8.ValidString(p) || strings.ContainsRune(p, 0) || filepath.Clean(p) != p {
			t.Fatalf("MailboxPath(%q, %q) = %q: not a clean local path", domain, user, p)
		}
		full := filepath.Join(root, p)
		if rel, err := filepath.Rel(root, full); err != nil || rel != p {
			t.Fatalf("MailboxPath(%q, %q) = %q lands at %q, outside %s", domain, user, p, full, root)
		}
		els := strings.Split(p, "/")
		if len(els) != 2 || els[0] != domain || els[1] != user {
			t.Fatalf("MailboxPath(%q, %q) = %q is not <domain>/<username>", domain, user, p)
		}
		for _, el := range els {
			if el == "" || strings.HasPrefix(el, ".") || len(el) > MaxNameLen {
				t.Fatalf("MailboxPath(%q, %q) = %q has element %q", domain, user, p, el)
			}
		}
		a := archiveName(".archive", p, time.Unix(0, 0))
		if !filepath.IsLocal(a) || !strings.HasPrefix(a, ".archive/"+domain+"/") || len(filepath.Base(a)) > 255-13 {
			t.Fatalf("archive name %q of %q is not inside the archive or too long", a, p)
		}
	})
}
