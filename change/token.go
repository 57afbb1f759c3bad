package change

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxTokenLen is the longest escaped token Herald puts in a subject. Longer
// values become a hash token, so that a subject with the maximum number of key
// columns still fits the server's 4096-byte control line; the full key always
// travels in the body.
const MaxTokenLen = 100

// TableToken is the key token of table-level events (TRUNCATE). No value
// encodes to it, and it sits where a key would, so a table filter
// "<prefix>.<schema>.<table>.>" matches these events too.
const TableToken = "%T"

const (
	// emptyToken stands for the empty string: NATS forbids empty tokens.
	emptyToken = "%"
	// hashPrefix starts a hash token: "%H" and the lowercase hex of the first
	// hashBytes bytes of the SHA-256 of the value.
	hashPrefix   = "%H"
	hashBytes    = 20
	hashTokenLen = len(hashPrefix) + 2*hashBytes
	upperHex     = "0123456789ABCDEF"
)

// keepASCII marks the ASCII bytes that stay as they are in a token: letters,
// digits and printable punctuation except the subject separator '.', the
// wildcards '*' and '>', and the escape character '%'.
var keepASCII = func() (t [utf8.RuneSelf]bool) {
	for b := byte(0x21); b < 0x7f; b++ {
		t[b] = b != '.' && b != '*' && b != '>' && b != '%'
	}
	return t
}()

// keepRune reports whether a non-ASCII rune decoded with the given size stays
// as is: valid UTF-8, printable and not a space.
func keepRune(r rune, size int) bool {
	if r == utf8.RuneError && size == 1 {
		return false // an invalid byte, not a real U+FFFD
	}
	return unicode.IsPrint(r) && !unicode.IsSpace(r)
}

// escapedLen returns the length of the escaped form of value and whether value
// needs no escaping at all. It stops counting once the length passes
// MaxTokenLen, since the exact length of a token that will be hashed does not
// matter.
func escapedLen(value string) (n int, plain bool) {
	plain = true
	for i := 0; i < len(value) && n <= MaxTokenLen; {
		b := value[i]
		if b < utf8.RuneSelf {
			if keepASCII[b] {
				n++
			} else {
				n += 3
				plain = false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(value[i:])
		if keepRune(r, size) {
			n += size
		} else {
			n += 3 * size
			plain = false
		}
		i += size
	}
	return n, plain
}

// EncodeToken maps any string to one NATS subject token. The mapping is
// deterministic and reversible (see DecodeToken): ordinary values such as
// "alice", "42" or "SHA=8f3a" stay as they are; '.', '*', '>', '%',
// whitespace, control bytes, DEL, non-printable runes and the bytes of invalid
// UTF-8 become "%XX" (uppercase hex of each byte); the empty string becomes
// "%"; a value whose escaped form is longer than MaxTokenLen becomes "%H"
// followed by the lowercase hex of the first 20 bytes of its SHA-256. The
// result is never empty and never TableToken.
func EncodeToken(value string) string {
	n, plain := escapedLen(value)
	if plain && n > 0 && n <= MaxTokenLen {
		return value // the common case costs no allocation
	}
	if n > MaxTokenLen {
		n = hashTokenLen
	}
	return string(appendToken(make([]byte, 0, max(n, 1)), value))
}

// appendToken appends EncodeToken(value) to buf.
func appendToken(buf []byte, value string) []byte {
	n, plain := escapedLen(value)
	switch {
	case len(value) == 0:
		return append(buf, emptyToken...)
	case n > MaxTokenLen:
		sum := sha256.Sum256([]byte(value))
		buf = append(buf, hashPrefix...)
		return hex.AppendEncode(buf, sum[:hashBytes])
	case plain:
		return append(buf, value...)
	}
	for i := 0; i < len(value); {
		b := value[i]
		if b < utf8.RuneSelf {
			if keepASCII[b] {
				buf = append(buf, b)
			} else {
				buf = append(buf, '%', upperHex[b>>4], upperHex[b&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(value[i:])
		if keepRune(r, size) {
			buf = append(buf, value[i:i+size]...)
		} else {
			for j := i; j < i+size; j++ {
				buf = append(buf, '%', upperHex[value[j]>>4], upperHex[value[j]&0xf])
			}
		}
		i += size
	}
	return buf
}

// DecodeToken reverses EncodeToken. For a hash token it returns hashed=true
// and an empty value (the value is then only in the message body); for
// TableToken it returns table=true. Any token EncodeToken cannot produce
// (an unnecessary or lowercase escape, a bare '%', an over-long token, a
// wildcard) is an error wrapping ErrMalformed, so every value has exactly one
// token and every token at most one value.
func DecodeToken(tok string) (value string, hashed, table bool, err error) {
	switch {
	case tok == "":
		return "", false, false, tokenError(tok, "empty token")
	case tok == TableToken:
		return "", false, true, nil
	case tok == emptyToken:
		return "", false, false, nil
	case strings.HasPrefix(tok, hashPrefix):
		if len(tok) != hashTokenLen || !isLowerHex(tok[len(hashPrefix):]) {
			return "", false, false, tokenError(tok, fmt.Sprintf("a hash token is %q and %d lowercase hex digits", hashPrefix, 2*hashBytes))
		}
		return "", true, false, nil
	}
	if strings.IndexByte(tok, '%') < 0 {
		if n, plain := escapedLen(tok); !plain || n > MaxTokenLen {
			return "", false, false, tokenError(tok, "not an encoded token (unescaped special character or too long)")
		}
		return tok, false, false, nil
	}
	raw := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		if tok[i] != '%' {
			raw = append(raw, tok[i])
			continue
		}
		if i+2 >= len(tok) {
			return "", false, false, tokenError(tok, "'%' must be followed by two uppercase hex digits")
		}
		hi, lo := unhexUpper(tok[i+1]), unhexUpper(tok[i+2])
		if hi < 0 || lo < 0 {
			return "", false, false, tokenError(tok, "'%' must be followed by two uppercase hex digits")
		}
		raw = append(raw, byte(hi<<4|lo))
		i += 2
	}
	value = string(raw)
	if string(appendToken(make([]byte, 0, len(tok)), value)) != tok {
		return "", false, false, tokenError(tok, "not in canonical form (escapes only what must be escaped)")
	}
	return value, false, false, nil
}

func tokenError(tok, reason string) error {
	return &DecodeError{Reason: fmt.Sprintf("subject token %q: %s", tok, reason)}
}

func unhexUpper(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
