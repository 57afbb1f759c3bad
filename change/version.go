package change

import (
	"fmt"
	"strconv"
	"strings"
)

// Version orders changes: the install epoch first, then the log id. Log ids
// restart after a reinstall or a restore; the epoch, which grows with every
// fresh install, keeps versions ordered and message ids unique across both.
type Version struct{ Epoch, ID int64 }

// Less reports whether v comes before o.
func (v Version) Less(o Version) bool {
	return v.Epoch < o.Epoch || v.Epoch == o.Epoch && v.ID < o.ID
}

// String renders v as "<epoch>:<id>", the form ParseVersion reads.
func (v Version) String() string {
	return string(v.append(make([]byte, 0, 40)))
}

func (v Version) append(buf []byte) []byte {
	buf = strconv.AppendInt(buf, v.Epoch, 10)
	buf = append(buf, ':')
	return strconv.AppendInt(buf, v.ID, 10)
}

// ParseVersion reads "<epoch>:<id>" as Version.String writes it: two decimal
// integers without sign prefix '+' or leading zeros, so that each version has
// one spelling.
func ParseVersion(s string) (Version, error) {
	es, is, ok := strings.Cut(s, ":")
	if !ok {
		return Version{}, fmt.Errorf("parsing version %q: want <epoch>:<id>, such as 1763839522123456:42", s)
	}
	epoch, err := parseCanonicalInt(es)
	if err != nil {
		return Version{}, fmt.Errorf("parsing version %q: epoch: %w", s, err)
	}
	id, err := parseCanonicalInt(is)
	if err != nil {
		return Version{}, fmt.Errorf("parsing version %q: id: %w", s, err)
	}
	return Version{Epoch: epoch, ID: id}, nil
}

func parseCanonicalInt(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if strconv.FormatInt(n, 10) != s {
		return 0, fmt.Errorf("%q is not written canonically (no '+', no leading zeros)", s)
	}
	return n, nil
}

// MsgID returns the JetStream message id of a change, "<source>:<epoch>:<id>".
// The server drops a second message with the same id inside the duplicate
// window, which makes a republish after a bridge crash harmless.
func MsgID(source string, v Version) string {
	buf := make([]byte, 0, len(source)+41)
	buf = append(buf, source...)
	buf = append(buf, ':')
	return string(v.append(buf))
}
