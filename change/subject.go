package change

import (
	"fmt"
	"strings"
)

// MaxPrefixLen is the longest subject prefix ValidatePrefix accepts.
const MaxPrefixLen = 64

// MaxKeyColumns is the most key columns a change may have: PostgreSQL's limit
// on the columns of an index, hence of a unique key. With it, MaxPrefixLen and
// MaxTokenLen, every subject stays under 3500 bytes, inside the server's
// 4096-byte control line with room for the reply subject.
const MaxKeyColumns = 32

// ValidatePrefix checks a subject prefix: one or more dot-separated tokens of
// ASCII letters, digits, '_' and '-', at most MaxPrefixLen bytes. Wildcards,
// empty tokens and a leading '$' (the server's own subjects) are refused.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return fmt.Errorf("subject prefix is empty; use something like \"herald\"")
	}
	if len(prefix) > MaxPrefixLen {
		return fmt.Errorf("subject prefix %q is %d bytes; the limit is %d", prefix, len(prefix), MaxPrefixLen)
	}
	if prefix[0] == '$' {
		return fmt.Errorf("subject prefix %q starts with '$', which the server reserves for its own subjects", prefix)
	}
	for tok := range strings.SplitSeq(prefix, ".") {
		if tok == "" {
			return fmt.Errorf("subject prefix %q has an empty token; separate tokens with single dots and do not start or end with one", prefix)
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return fmt.Errorf("subject prefix %q contains %q; use only letters, digits, '_' and '-' in dot-separated tokens", prefix, c)
			}
		}
	}
	return nil
}

// appendTableSubject appends "<prefix>.<schema token>.<table token>".
func appendTableSubject(buf []byte, prefix, schema, table string) []byte {
	buf = append(buf, prefix...)
	buf = append(buf, '.')
	buf = appendToken(buf, schema)
	buf = append(buf, '.')
	return appendToken(buf, table)
}

// appendKeyTokens appends ".<key token>..." or, for an empty key, ".%T".
func appendKeyTokens(buf []byte, key []string) []byte {
	if len(key) == 0 {
		buf = append(buf, '.')
		return append(buf, TableToken...)
	}
	for _, k := range key {
		buf = append(buf, '.')
		buf = appendToken(buf, k)
	}
	return buf
}

func subjectCap(prefix, schema, table string, key []string) int {
	n := len(prefix) + len(schema) + len(table) + 8
	for _, k := range key {
		n += len(k) + 1
	}
	return n
}

// Subject returns the subject of a change: "<prefix>.<schema>.<table>.<key
// token>...", every part but the prefix encoded with EncodeToken, one token per
// key column in key order. An empty key (a table-level event such as TRUNCATE)
// gives TableToken in place of the key. The prefix must pass ValidatePrefix.
func Subject(prefix, schema, table string, key []string) string {
	buf := make([]byte, 0, subjectCap(prefix, schema, table, key))
	buf = appendTableSubject(buf, prefix, schema, table)
	return string(appendKeyTokens(buf, key))
}

// TableFilter returns the filter subject matching every change of one table,
// table-level events included: "<prefix>.<schema>.<table>.>".
func TableFilter(prefix, schema, table string) string {
	buf := make([]byte, 0, subjectCap(prefix, schema, table, nil))
	buf = appendTableSubject(buf, prefix, schema, table)
	return string(append(buf, ".>"...))
}

// KeyFilter returns the filter subject matching every change of one key. It is
// the subject of that key, as Subject gives it, since key tokens contain no
// wildcards.
func KeyFilter(prefix, schema, table string, key []string) string {
	return Subject(prefix, schema, table, key)
}

// SubjectParts is a subject taken apart by ParseSubject.
type SubjectParts struct {
	Schema, Table string
	// Key holds the decoded key values, in key order; nil for a table-level
	// event. A hashed value is "" and has Hashed set: its text is only in the
	// message body.
	Key    []string
	Hashed []bool
	// TableLevel is set for the TableToken subject of a table-level event.
	TableLevel bool
	// SchemaHashed and TableHashed are set when the name was too long to
	// encode (possible only for names full of escaped characters); the name is
	// then "" and only in the body and the Herald-Table header.
	SchemaHashed, TableHashed bool
}

// ParseSubject takes apart a subject that Subject built with the same prefix.
// Anything else, including a subject of another prefix or one with a
// non-canonical token, is an error wrapping ErrMalformed.
func ParseSubject(prefix, subject string) (SubjectParts, error) {
	var p SubjectParts
	if err := ValidatePrefix(prefix); err != nil {
		return p, err
	}
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok || !strings.HasPrefix(rest, ".") {
		return p, &DecodeError{Reason: fmt.Sprintf("subject %q does not start with prefix %q", subject, prefix+".")}
	}
	toks := strings.Split(rest[1:], ".")
	if len(toks) < 3 {
		return p, &DecodeError{Reason: fmt.Sprintf("subject %q has no <schema>.<table>.<key> after the prefix", subject)}
	}
	if len(toks)-2 > MaxKeyColumns {
		return p, &DecodeError{Reason: fmt.Sprintf("subject %q has %d key tokens; the limit is %d", subject, len(toks)-2, MaxKeyColumns)}
	}
	var table bool
	var err error
	if p.Schema, p.SchemaHashed, table, err = DecodeToken(toks[0]); err != nil {
		return SubjectParts{}, err
	} else if table {
		return SubjectParts{}, &DecodeError{Reason: fmt.Sprintf("subject %q has the table token in place of the schema", subject)}
	}
	if p.Table, p.TableHashed, table, err = DecodeToken(toks[1]); err != nil {
		return SubjectParts{}, err
	} else if table {
		return SubjectParts{}, &DecodeError{Reason: fmt.Sprintf("subject %q has the table token in place of the table", subject)}
	}
	keys := toks[2:]
	if len(keys) == 1 && keys[0] == TableToken {
		p.TableLevel = true
		return p, nil
	}
	p.Key = make([]string, len(keys))
	p.Hashed = make([]bool, len(keys))
	for i, tok := range keys {
		if p.Key[i], p.Hashed[i], table, err = DecodeToken(tok); err != nil {
			return SubjectParts{}, err
		} else if table {
			return SubjectParts{}, &DecodeError{Reason: fmt.Sprintf("subject %q has the table token among key tokens", subject)}
		}
	}
	return p, nil
}

// DLQSubject returns the subject under which a consumer dead-letters
// messages: "<prefix>_dlq.<consumer token>". It lies outside "<prefix>.>", so
// dead letters live in their own stream, never under the data stream's limits.
func DLQSubject(prefix, consumer string) string {
	buf := make([]byte, 0, len(prefix)+len(consumer)+8)
	buf = append(buf, prefix...)
	buf = append(buf, "_dlq."...)
	return string(appendToken(buf, consumer))
}
