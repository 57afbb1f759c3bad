package change

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Header names. Herald sets all of them but HeaderMarker on every message, so
// tools can route and deduplicate without parsing the body.
const (
	HeaderMsgID  = "Nats-Msg-Id"   // MsgID: "<source>:<epoch>:<log id>"
	HeaderOp     = "Herald-Op"     // the Op
	HeaderTable  = "Herald-Table"  // TableHeader: "schema.table"
	HeaderEpoch  = "Herald-Epoch"  // decimal install epoch
	HeaderID     = "Herald-Id"     // decimal log id
	HeaderMarker = "Herald-Marker" // present only on markers; the marker's reason, e.g. "too-large"
)

// TableHeader returns the value of HeaderTable: "schema.table" with the raw
// names, or, when that text would not survive a header (control characters,
// non-printable runes, invalid UTF-8, leading or trailing space, which the
// client trims or replaces), the two names encoded with EncodeToken. The
// header is a routing label; the body carries the exact names.
func TableHeader(schema, table string) string {
	if headerSafe(schema) && headerSafe(table) {
		return schema + "." + table
	}
	return EncodeToken(schema) + "." + EncodeToken(table)
}

// headerSafe reports whether s reaches the other side of a NATS header
// unchanged: printable UTF-8 without leading or trailing spaces.
func headerSafe(s string) bool {
	if s == "" {
		return true
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b < 0x20 || b == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if !keepRune(r, size) {
			return false
		}
		i += size
	}
	return true
}

// NewMsg builds the NATS message of a change: the subject from Subject(prefix,
// e.Schema, e.Table, e.Key) (TableToken for a truncate), every header, and the
// body from AppendJSON. An invalid prefix or envelope is an error, the latter
// wrapping ErrInvalid.
func NewMsg(prefix string, e *Envelope) (*nats.Msg, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("building message: %w", err)
	}
	if e == nil {
		return nil, fmt.Errorf("building message: %w: nil envelope", ErrInvalid)
	}
	body, err := e.AppendJSON(make([]byte, 0, 320+len(e.New)+len(e.Old)))
	if err != nil {
		return nil, fmt.Errorf("building message: %w", err)
	}
	h := make(nats.Header, 6)
	h[HeaderMsgID] = []string{MsgID(e.Source, e.Version())}
	h[HeaderOp] = []string{string(e.Op)}
	h[HeaderTable] = []string{TableHeader(e.Schema, e.Table)}
	h[HeaderEpoch] = []string{strconv.FormatInt(e.Epoch, 10)}
	h[HeaderID] = []string{strconv.FormatInt(e.ID, 10)}
	if e.Marker != nil {
		h[HeaderMarker] = []string{e.Marker.Reason}
	}
	return &nats.Msg{
		Subject: Subject(prefix, e.Schema, e.Table, e.Key), // check made sure a truncate has no key
		Header:  h,
		Data:    body,
	}, nil
}

// FromMsg decodes a received message (see Decode) and cross-checks it: each
// Herald-* header that is present must agree with the body, and a non-empty
// subject must end with the schema, table and key tokens of the body (the
// prefix is not checked, so a stream that maps the prefix still passes). Pass
// an empty subject for a message read from somewhere other than its original
// subject, such as a dead-letter stream. Errors wrap ErrMalformed.
func FromMsg(subject string, header nats.Header, data []byte) (*Envelope, error) {
	e, err := Decode(data)
	if err != nil {
		return nil, err
	}
	checks := [...]struct{ name, want string }{
		{HeaderOp, string(e.Op)},
		{HeaderTable, TableHeader(e.Schema, e.Table)},
		{HeaderEpoch, strconv.FormatInt(e.Epoch, 10)},
		{HeaderID, strconv.FormatInt(e.ID, 10)},
	}
	for _, c := range checks {
		if err := checkHeader(header, c.name, c.want); err != nil {
			return nil, err
		}
	}
	if vs, ok := header[HeaderMarker]; ok {
		if e.Marker == nil {
			return nil, &DecodeError{Reason: fmt.Sprintf("header %s is %q but the body has no marker", HeaderMarker, vs)}
		}
		if err := checkHeader(header, HeaderMarker, e.Marker.Reason); err != nil {
			return nil, err
		}
	}
	if subject != "" {
		tail := appendKeyTokens(appendTableSubject([]byte{}, "", e.Schema, e.Table), e.Key)
		if len(subject) <= len(tail) || !strings.HasSuffix(subject, string(tail)) {
			return nil, &DecodeError{Reason: fmt.Sprintf("subject %q does not end with %q, the subject of the body's schema, table and key", subject, tail)}
		}
	}
	return e, nil
}

func checkHeader(h nats.Header, name, want string) error {
	vs, ok := h[name]
	if !ok {
		return nil
	}
	if len(vs) != 1 || vs[0] != want {
		return &DecodeError{Reason: fmt.Sprintf("header %s is %q but the body says %q", name, vs, want)}
	}
	return nil
}
