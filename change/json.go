package change

import (
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the JSON encoding of e to buf and returns the extended
// buffer. It is the bridge's fast path: no reflection, no allocation beyond
// growing buf. The result carries the same fields and values as json.Marshal
// would give (fields in the same order, "marker" only when set), except that
// "at" is always UTC with six fractional digits (nine if the time has
// sub-microsecond digits). New and Old are copied verbatim, without
// surrounding whitespace, after checking that each is a JSON object or null.
//
// An envelope that Decode would refuse (see Decode for the rules) is not
// encoded: the error wraps ErrInvalid and buf is returned unchanged.
func (e *Envelope) AppendJSON(buf []byte) ([]byte, error) {
	if e == nil {
		return buf, fmt.Errorf("%w: nil envelope", ErrInvalid)
	}
	if reason := e.check(); reason != "" {
		return buf, fmt.Errorf("%w (source %q, version %s, %s.%s): %s", ErrInvalid, e.Source, e.Version(), e.Schema, e.Table, reason)
	}
	buf = append(buf, `{"v":`...)
	buf = strconv.AppendInt(buf, int64(e.V), 10)
	buf = append(buf, `,"source":`...)
	buf = appendString(buf, e.Source)
	buf = append(buf, `,"epoch":`...)
	buf = strconv.AppendInt(buf, e.Epoch, 10)
	buf = append(buf, `,"id":`...)
	buf = strconv.AppendInt(buf, e.ID, 10)
	buf = append(buf, `,"txid":`...)
	buf = strconv.AppendInt(buf, e.TxID, 10)
	buf = append(buf, `,"at":"`...)
	buf = appendTime(buf, e.At)
	buf = append(buf, `","schema":`...)
	buf = appendString(buf, e.Schema)
	buf = append(buf, `,"table":`...)
	buf = appendString(buf, e.Table)
	buf = append(buf, `,"op":`...)
	buf = appendString(buf, string(e.Op))
	buf = append(buf, `,"key":`...)
	buf = appendStrings(buf, e.Key)
	buf = append(buf, `,"new":`...)
	buf = appendRaw(buf, e.New)
	buf = append(buf, `,"old":`...)
	buf = appendRaw(buf, e.Old)
	buf = append(buf, `,"changed":`...)
	buf = appendStrings(buf, e.Changed)
	if m := e.Marker; m != nil {
		buf = append(buf, `,"marker":{"reason":`...)
		buf = appendString(buf, m.Reason)
		buf = append(buf, `,"size":`...)
		buf = strconv.AppendInt(buf, m.Size, 10)
		buf = append(buf, `,"limit":`...)
		buf = strconv.AppendInt(buf, m.Limit, 10)
		buf = append(buf, '}')
	}
	return append(buf, '}'), nil
}

// appendTime appends t in UTC as RFC 3339 with six fractional digits
// (PostgreSQL's precision; a fixed width keeps bodies sortable as text), or
// nine when t has sub-microsecond digits, so that encoding never loses one. It
// is written out by hand because time.Format was a sixth of AppendJSON's cost;
// check has made sure the year has four digits.
func appendTime(buf []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	buf = appendDigits(buf, year, 4)
	buf = append(buf, '-')
	buf = appendDigits(buf, int(month), 2)
	buf = append(buf, '-')
	buf = appendDigits(buf, day, 2)
	buf = append(buf, 'T')
	buf = appendDigits(buf, hour, 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, minute, 2)
	buf = append(buf, ':')
	buf = appendDigits(buf, sec, 2)
	buf = append(buf, '.')
	if ns := t.Nanosecond(); ns%1000 != 0 {
		buf = appendDigits(buf, ns, 9)
	} else {
		buf = appendDigits(buf, ns/1000, 6)
	}
	return append(buf, 'Z')
}

// appendDigits appends the non-negative n as exactly width decimal digits.
func appendDigits(buf []byte, n, width int) []byte {
	buf = append(buf, "000000000"[:width]...)
	for i := len(buf) - 1; width > 0; i, width = i-1, width-1 {
		buf[i] = byte('0' + n%10)
		n /= 10
	}
	return buf
}

func appendRaw(buf []byte, raw []byte) []byte {
	if raw = trimJSONSpace(raw); len(raw) == 0 {
		return append(buf, "null"...)
	}
	return append(buf, raw...)
}

// appendStrings appends a JSON array of strings; nil gives null and an empty
// slice [], as with json.Marshal.
func appendStrings(buf []byte, ss []string) []byte {
	if ss == nil {
		return append(buf, "null"...)
	}
	buf = append(buf, '[')
	for i, s := range ss {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendString(buf, s)
	}
	return append(buf, ']')
}

// appendString appends s as a JSON string. It escapes what JSON requires and,
// like encoding/json, U+2028 and U+2029 (which break JavaScript) and invalid
// UTF-8 (as U+FFFD). It leaves '<', '>' and '&' as they are, to keep bodies
// readable; encoding/json's HTML escaping of them is equivalent JSON.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '"', '\\':
				buf = append(buf, '\\', b)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', lowerHex[b>>4], lowerHex[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', lowerHex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

const lowerHex = "0123456789abcdef"
