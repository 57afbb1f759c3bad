package change

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func hashOf(value string) string {
	sum := sha256.Sum256([]byte(value))
	return "%H" + hex.EncodeToString(sum[:20])
}

func TestEncodeToken(t *testing.T) {
	long101 := strings.Repeat("a", 101)
	dots34 := strings.Repeat(".", 34) // 102 bytes escaped
	tests := []struct {
		name, value, want string
	}{
		// Ordinary values stay readable.
		{"letters", "alice", "alice"},
		{"digits", "42", "42"},
		{"hash-like", "SHA=8f3a", "SHA=8f3a"},
		{"hyphen", "web-01", "web-01"},
		{"unicode", "ünïcode", "ünïcode"},
		{"punctuation", `!"#$&'()+,-/:;<=?@[\]^_{|}~` + "`", `!"#$&'()+,-/:;<=?@[\]^_{|}~` + "`"},
		{"emoji", "🙂", "🙂"},
		{"real replacement char", "\uFFFD", "\uFFFD"},
		{"CJK", "東京", "東京"},
		// Escaped.
		{"dot", "a.b", "a%2Eb"},
		{"star", "*", "%2A"},
		{"gt", ">", "%3E"},
		{"percent", "50%", "50%25"},
		{"space", "two words", "two%20words"},
		{"tab", "a\tb", "a%09b"},
		{"newline", "\n", "%0A"},
		{"CRLF", "\r\n", "%0D%0A"},
		{"NUL", "\x00", "%00"},
		{"unit separator", "\x1f", "%1F"},
		{"DEL", "\x7f", "%7F"},
		{"invalid byte", "\xff", "%FF"},
		{"truncated rune", "a\xc3", "a%C3"},
		{"surrogate half", "\xed\xa0\x80", "%ED%A0%80"},
		{"NBSP", "\u00a0", "%C2%A0"},
		{"NEL", "\u0085", "%C2%85"},
		{"line separator", "\u2028", "%E2%80%A8"},
		{"zero-width space", "\u200b", "%E2%80%8B"},
		{"ideographic space", "\u3000", "%E3%80%80"},
		{"empty", "", "%"},
		{"looks like table token", "%T", "%25T"},
		{"looks like hash token", "%H", "%25H"},
		// Length cap.
		{"exactly 100", strings.Repeat("a", 100), strings.Repeat("a", 100)},
		{"101 plain", long101, hashOf(long101)},
		{"99 escaped", strings.Repeat(".", 33), strings.Repeat("%2E", 33)},
		{"102 escaped", dots34, hashOf(dots34)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := EncodeToken(tt.value)
			if got != tt.want {
				t.Fatalf("EncodeToken(%q) = %q, want %q", tt.value, got, tt.want)
			}
			if got == TableToken {
				t.Fatalf("EncodeToken(%q) produced the table token", tt.value)
			}
			value, hashed, table, err := DecodeToken(got)
			if err != nil {
				t.Fatalf("DecodeToken(%q): %v", got, err)
			}
			if table {
				t.Fatalf("DecodeToken(%q) says table token", got)
			}
			wantHashed := strings.HasPrefix(tt.want, "%H")
			if hashed != wantHashed {
				t.Fatalf("DecodeToken(%q) hashed = %v, want %v", got, hashed, wantHashed)
			}
			if !hashed && value != tt.value {
				t.Fatalf("DecodeToken(%q) = %q, want %q", got, value, tt.value)
			}
			if hashed && (value != "" || len(got) != 42) {
				t.Fatalf("hash token %q (len %d) decoded to %q", got, len(got), value)
			}
		})
	}
}

func TestDecodeTokenSpecial(t *testing.T) {
	if v, hashed, table, err := DecodeToken(TableToken); err != nil || !table || hashed || v != "" {
		t.Fatalf("DecodeToken(TableToken) = %q, %v, %v, %v", v, hashed, table, err)
	}
	if v, hashed, table, err := DecodeToken("%"); err != nil || table || hashed || v != "" {
		t.Fatalf(`DecodeToken("%%") = %q, %v, %v, %v`, v, hashed, table, err)
	}
}

func TestDecodeTokenErrors(t *testing.T) {
	tests := []struct{ name, tok string }{
		{"empty", ""},
		{"dot", "a.b"},
		{"space", "a b"},
		{"star", "*"},
		{"gt", ">"},
		{"tab", "a\tb"},
		{"control", "a\x01"},
		{"DEL", "\x7f"},
		{"invalid UTF-8", "\xff"},
		{"NBSP raw", "\u00a0"},
		{"lowercase escape", "a%2eb"},
		{"needless escape", "%41"},
		{"short escape", "%4"},
		{"escape at end", "a%"},
		{"bad hex", "%ZZ"},
		{"lowercase t", "%t"},
		{"hash too short", "%H0123"},
		{"hash uppercase", "%H" + strings.Repeat("A", 40)},
		{"hash too long", "%H" + strings.Repeat("a", 41)},
		{"too long plain", strings.Repeat("a", 101)},
		{"too long escaped", strings.Repeat("%2E", 34)},
		{"escaped empty in value", "a%"},
		{"escaped invalid then fine", "%FF%2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, hashed, table, err := DecodeToken(tt.tok)
			if err == nil {
				t.Fatalf("DecodeToken(%q) = %q, %v, %v; want an error", tt.tok, v, hashed, table)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeToken(%q) error %v does not wrap ErrMalformed", tt.tok, err)
			}
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason == "" {
				t.Fatalf("DecodeToken(%q) error %v is not a *DecodeError with a reason", tt.tok, err)
			}
		})
	}
}

// TestEncodeTokenNoAlloc guards the bridge's hot path: an ordinary value is
// returned as it is.
func TestEncodeTokenNoAlloc(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() { _ = EncodeToken("SHA=8f3a0b1c") })
	if allocs != 0 {
		t.Fatalf("EncodeToken of a plain value allocates %v times", allocs)
	}
}
