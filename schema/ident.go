package schema

import (
	"errors"
	"fmt"
	"strings"
)

// maxIdentLen is PostgreSQL's NAMEDATALEN-1: longer identifiers would be
// truncated silently by the server, so Herald refuses them instead.
const maxIdentLen = 63

// ErrBadName means a table or column argument is not a valid identifier.
var ErrBadName = errors.New("invalid name")

// QualifiedName is a table name as PostgreSQL parses it: an optional schema
// and a relation name, both already unquoted (and unquoted parts folded to
// lower case).
type QualifiedName struct {
	Schema string // empty: resolved through search_path
	Name   string
}

// String renders the name quoted, ready to be put into SQL.
func (q QualifiedName) String() string {
	if q.Schema == "" {
		return quoteIdent(q.Name)
	}
	return quoteIdent(q.Schema) + "." + quoteIdent(q.Name)
}

// ParseQualifiedName parses a table argument the way PostgreSQL parses an
// identifier chain: `name`, `schema.name`, with quoted parts ("Mixed Case",
// "with ""quotes"""), unquoted parts folded to lower case.
func ParseQualifiedName(s string) (QualifiedName, error) {
	parts, err := parseIdentChain(s)
	if err != nil {
		return QualifiedName{}, fmt.Errorf("%w: table %q: %v", ErrBadName, s, err)
	}
	switch len(parts) {
	case 1:
		return QualifiedName{Name: parts[0]}, nil
	case 2:
		return QualifiedName{Schema: parts[0], Name: parts[1]}, nil
	default:
		return QualifiedName{}, fmt.Errorf("%w: table %q: expected name or schema.name, got %d parts (quote a name that contains a dot)", ErrBadName, s, len(parts))
	}
}

// ParseIdentList parses a comma-separated list of column identifiers
// (`a,b,"Mixed Case"`), as given to --columns and --key.
func ParseIdentList(s string) ([]string, error) {
	var out []string
	rest := strings.TrimSpace(s)
	if rest == "" {
		return nil, fmt.Errorf("%w: empty column list", ErrBadName)
	}
	for {
		name, n, err := scanIdent(rest)
		if err != nil {
			return nil, fmt.Errorf("%w: column list %q: %v", ErrBadName, s, err)
		}
		out = append(out, name)
		rest = strings.TrimLeft(rest[n:], " \t")
		if rest == "" {
			break
		}
		if rest[0] != ',' {
			return nil, fmt.Errorf("%w: column list %q: expected ',' before %q", ErrBadName, s, rest)
		}
		rest = strings.TrimLeft(rest[1:], " \t")
	}
	seen := map[string]bool{}
	for _, c := range out {
		if seen[c] {
			return nil, fmt.Errorf("%w: column list %q: column %q named twice", ErrBadName, s, c)
		}
		seen[c] = true
	}
	return out, nil
}

func parseIdentChain(s string) ([]string, error) {
	rest := strings.TrimSpace(s)
	if rest == "" {
		return nil, errors.New("empty name")
	}
	var parts []string
	for {
		name, n, err := scanIdent(rest)
		if err != nil {
			return nil, err
		}
		parts = append(parts, name)
		rest = rest[n:]
		if rest == "" {
			return parts, nil
		}
		if rest[0] != '.' {
			return nil, fmt.Errorf("unexpected %q after %q (quote names with special characters)", rest, name)
		}
		rest = rest[1:]
	}
}

// scanIdent reads one identifier from the start of s and returns it with the
// number of bytes consumed.
func scanIdent(s string) (string, int, error) {
	if s == "" {
		return "", 0, errors.New("missing identifier")
	}
	if s[0] == '"' {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] != '"' {
				b.WriteByte(s[i])
				continue
			}
			if i+1 < len(s) && s[i+1] == '"' {
				b.WriteByte('"')
				i++
				continue
			}
			name := b.String()
			if name == "" {
				return "", 0, errors.New("zero-length quoted identifier")
			}
			if strings.IndexByte(name, 0) >= 0 {
				return "", 0, errors.New("identifier contains a NUL byte")
			}
			if len(name) > maxIdentLen {
				return "", 0, fmt.Errorf("identifier %q is longer than %d bytes", name, maxIdentLen)
			}
			return name, i + 1, nil
		}
		return "", 0, errors.New("unterminated quoted identifier")
	}
	i := 0
	for i < len(s) {
		c := s[i]
		ok := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80 ||
			(i > 0 && (c == '$' || (c >= '0' && c <= '9')))
		if !ok {
			break
		}
		i++
	}
	if i == 0 {
		return "", 0, fmt.Errorf("invalid identifier at %q (quote it with double quotes)", s)
	}
	name := asciiLower(s[:i])
	if len(name) > maxIdentLen {
		return "", 0, fmt.Errorf("identifier %q is longer than %d bytes", name, maxIdentLen)
	}
	return name, i, nil
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// quoteIdent quotes an identifier for SQL. Every identifier in generated DDL
// goes through here.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// quoteLiteral renders s as an E” string literal, which reads the same
// whatever standard_conforming_strings says in the session that later runs
// the generated function body.
func quoteLiteral(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `''`)
	return "E'" + r.Replace(s) + "'"
}
