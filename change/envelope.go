package change

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// EnvelopeVersion is the value of "v" in every body this package writes and
// the only one Decode accepts. A change that old consumers could misread gets
// a new version.
const EnvelopeVersion = 1

// Op is the kind of change.
type Op string

// The operations. Snapshot is a backfilled row: its current state, not a
// change a writer made; consumers treat it like an upsert.
const (
	OpInsert   Op = "insert"
	OpUpdate   Op = "update"
	OpDelete   Op = "delete"
	OpTruncate Op = "truncate"
	OpSnapshot Op = "snapshot"
)

// Valid reports whether o is one of the operations above.
func (o Op) Valid() bool {
	switch o {
	case OpInsert, OpUpdate, OpDelete, OpTruncate, OpSnapshot:
		return true
	}
	return false
}

// Envelope is the JSON body of a message, version 1. Column values stay
// json.RawMessage, exactly as PostgreSQL rendered them, so numbers keep every
// digit from the database to the consumer.
type Envelope struct {
	V      int       `json:"v"`      // EnvelopeVersion
	Source string    `json:"source"` // name of the bridge's source database
	Epoch  int64     `json:"epoch"`  // install epoch
	ID     int64     `json:"id"`     // log id
	TxID   int64     `json:"txid"`   // PostgreSQL transaction id
	At     time.Time `json:"at"`     // RFC 3339 UTC with microseconds when encoded
	Schema string    `json:"schema"`
	Table  string    `json:"table"`
	Op     Op        `json:"op"`
	// Key is the text of each key column, in key order; null for truncate.
	Key []string `json:"key"`
	// New and Old are objects column→value, or null (nil when decoded).
	New json.RawMessage `json:"new"`
	Old json.RawMessage `json:"old"`
	// Changed lists the watched columns whose value differs between Old and
	// New (updates only); null otherwise.
	Changed []string `json:"changed"`
	// Marker is set only on a too-large marker, whose New and Old are null.
	Marker *Marker `json:"marker,omitempty"`
}

// Marker marks a change too large to publish: the message carries its key,
// op and version but no values. Consumers dead-letter a marker; they must never
// act on it as if it were a delete.
type Marker struct {
	Reason string `json:"reason"` // e.g. MarkerTooLarge
	Size   int64  `json:"size"`   // measured size of the change in bytes
	Limit  int64  `json:"limit"`  // the limit it passed
}

// MarkerTooLarge is the reason of a marker for a change whose message would
// pass the server's maximum payload.
const MarkerTooLarge = "too-large"

// Version returns the version of the change, (Epoch, ID).
func (e *Envelope) Version() Version { return Version{Epoch: e.Epoch, ID: e.ID} }

// ErrMalformed is wrapped by every error about a message that does not follow
// the contract: a body, subject, token or header this package cannot accept.
// Consumers dead-letter such messages; retrying cannot fix them.
var ErrMalformed = errors.New("malformed herald message")

// ErrInvalid is wrapped by the errors of AppendJSON and NewMsg for an envelope
// that breaks the contract. The bridge cannot publish it as is; retrying
// cannot fix it.
var ErrInvalid = errors.New("invalid herald envelope")

// DecodeError says why a message is malformed. It wraps ErrMalformed and, when
// there is one, the underlying error (a JSON syntax error, for instance).
type DecodeError struct {
	Reason string
	Err    error
}

// Error implements error.
func (e *DecodeError) Error() string {
	if e.Err != nil {
		return ErrMalformed.Error() + ": " + e.Reason + ": " + e.Err.Error()
	}
	return ErrMalformed.Error() + ": " + e.Reason
}

// Unwrap returns ErrMalformed and the underlying error, if any.
func (e *DecodeError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrMalformed, e.Err}
	}
	return []error{ErrMalformed}
}

// Decode parses and validates a message body. Besides the JSON syntax it
// checks what consumers rely on: v is EnvelopeVersion, op is valid, source,
// schema and table are set, a key of 1 to MaxKeyColumns columns is present
// unless op is truncate (which has none), new and old are objects or null, a
// marker has a reason and no values. Unknown fields are ignored, so later
// additions to version 1 do not break older consumers. A null new or old
// decodes to nil. Errors are *DecodeError wrapping ErrMalformed.
func Decode(data []byte) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(data, &e); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, &DecodeError{Reason: "body is not valid JSON", Err: err}
		}
		return nil, &DecodeError{Reason: "body does not match envelope v1", Err: err}
	}
	e.New = nullToNil(e.New)
	e.Old = nullToNil(e.Old)
	if reason := e.check(); reason != "" {
		return nil, &DecodeError{Reason: reason}
	}
	return &e, nil
}

// check returns why e breaks the contract, or "" when it does not. Decode,
// AppendJSON and NewMsg share it, so whatever the bridge publishes a consumer
// can decode.
func (e *Envelope) check() string {
	switch {
	case e.V != EnvelopeVersion:
		return fmt.Sprintf("v is %d; this version of Herald reads only v %d", e.V, EnvelopeVersion)
	case !e.Op.Valid():
		return fmt.Sprintf("op %q is not one of insert, update, delete, truncate, snapshot", e.Op)
	case e.Source == "":
		return "source is empty"
	case !headerSafe(e.Source):
		return fmt.Sprintf("source %q is not printable text without surrounding spaces", e.Source)
	case e.Schema == "" || e.Table == "":
		return "schema or table is empty"
	case !utf8.ValidString(e.Schema) || !utf8.ValidString(e.Table):
		return "schema or table is not valid UTF-8"
	case e.Op == OpTruncate && len(e.Key) != 0:
		return "a truncate has no key"
	case e.Op != OpTruncate && len(e.Key) == 0:
		return fmt.Sprintf("key is missing; an %s needs the text of each key column", e.Op)
	case len(e.Key) > MaxKeyColumns:
		return fmt.Sprintf("key has %d columns; the limit is %d", len(e.Key), MaxKeyColumns)
	}
	if y := e.At.UTC().Year(); y < 0 || y > 9999 {
		return fmt.Sprintf("at is in year %d (UTC); RFC 3339 allows 0 to 9999", y)
	}
	for i, k := range e.Key {
		if !utf8.ValidString(k) {
			return fmt.Sprintf("key column %d is not valid UTF-8", i+1)
		}
	}
	for _, c := range e.Changed {
		if !utf8.ValidString(c) {
			return fmt.Sprintf("changed column %q is not valid UTF-8", c)
		}
	}
	if reason := checkRow("new", e.New); reason != "" {
		return reason
	}
	if reason := checkRow("old", e.Old); reason != "" {
		return reason
	}
	if m := e.Marker; m != nil {
		switch {
		case m.Reason == "":
			return "marker has no reason"
		case !headerSafe(m.Reason):
			return fmt.Sprintf("marker reason %q is not printable text without surrounding spaces", m.Reason)
		case !isNull(e.New) || !isNull(e.Old):
			return "a marker carries no values; new and old must be null"
		}
	}
	return ""
}

// checkRow returns why raw is neither null nor a JSON object, or "".
func checkRow(name string, raw json.RawMessage) string {
	t := trimJSONSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return ""
	}
	if !validObject(t) {
		return name + " is not a JSON object of valid UTF-8 text, nor null"
	}
	return ""
}

func isNull(raw json.RawMessage) bool {
	t := trimJSONSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func nullToNil(raw json.RawMessage) json.RawMessage {
	if isNull(raw) {
		return nil
	}
	return raw
}

// trimJSONSpace drops the whitespace JSON allows around a value (and no other:
// bytes.TrimSpace would also drop Unicode spaces, which JSON does not allow).
func trimJSONSpace(b []byte) []byte {
	for len(b) > 0 && isJSONSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isJSONSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }
