package change

import (
	"encoding/json"
	"unicode/utf8"
)

// fastDepth is the nesting depth up to which validObject decides alone. Rows
// rendered by jsonb are rarely nested more than a few levels; deeper input
// falls back to json.Valid, which also enforces encoding/json's own depth
// limit, so the answer is always the same as json.Valid's.
const fastDepth = 64

// validObject reports whether b is exactly one JSON object (surrounding JSON
// whitespace allowed) and valid UTF-8: the same answer as json.Valid plus
// utf8.Valid plus a check of the first byte, in one pass and about four times
// faster. AppendJSON validates New and Old of every change with it; a fuzz
// target compares it with json.Valid.
func validObject(b []byte) bool {
	s := jsonScanner{b: b}
	s.skipSpace()
	if s.i >= len(b) || b[s.i] != '{' {
		return false
	}
	ok := s.value(0)
	if s.deep {
		t := trimJSONSpace(b)
		return len(t) > 0 && t[0] == '{' && json.Valid(b) && utf8.Valid(b)
	}
	if !ok {
		return false
	}
	s.skipSpace()
	return s.i == len(b)
}

type jsonScanner struct {
	b    []byte
	i    int
	deep bool // nesting passed fastDepth; the result is undecided
}

// plainStringByte marks the bytes that stand for themselves inside a JSON
// string: ASCII from 0x20 up, except '"' and '\\'.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (s *jsonScanner) skipSpace() {
	for s.i < len(s.b) && isJSONSpace(s.b[s.i]) {
		s.i++
	}
}

// value scans one value starting at s.i (no leading whitespace).
func (s *jsonScanner) value(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		if depth >= fastDepth {
			s.deep = true
			return false
		}
		s.i++
		s.skipSpace()
		if s.i < len(s.b) && s.b[s.i] == '}' {
			s.i++
			return true
		}
		for {
			if s.i >= len(s.b) || s.b[s.i] != '"' || !s.str() {
				return false
			}
			s.skipSpace()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return false
			}
			s.i++
			s.skipSpace()
			if !s.value(depth + 1) {
				return false
			}
			s.skipSpace()
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case ',':
				s.i++
				s.skipSpace()
			case '}':
				s.i++
				return true
			default:
				return false
			}
		}
	case c == '[':
		if depth >= fastDepth {
			s.deep = true
			return false
		}
		s.i++
		s.skipSpace()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			s.skipSpace()
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case ',':
				s.i++
				s.skipSpace()
			case ']':
				s.i++
				return true
			default:
				return false
			}
		}
	case c == '"':
		return s.str()
	case c == '-' || c >= '0' && c <= '9':
		return s.num()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return false
}

// str scans a string starting at its opening quote.
func (s *jsonScanner) str() bool {
	s.i++
	for s.i < len(s.b) {
		c := s.b[s.i]
		if plainStringByte[c] {
			s.i++
			continue
		}
		switch {
		case c == '"':
			s.i++
			return true
		case c == '\\':
			if s.i+1 >= len(s.b) {
				return false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return false
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				s.i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			r, size := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && size == 1 {
				return false
			}
			s.i += size
		}
	}
	return false
}

// num scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *jsonScanner) num() bool {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return false
		}
	}
	return true
}

func (s *jsonScanner) digits() int {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

func (s *jsonScanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}
