package schema

import (
	"errors"
	"fmt"
	"strings"
)

// checkFilterText rejects a row filter that is not one balanced SQL
// expression: a top-level ';', unbalanced parentheses, an unterminated
// string, quoted identifier, comment or dollar quote. The server then
// validates what it means (checkFilter in watch.go); this lexical check
// keeps the text from escaping the generated function it is placed in.
func checkFilterText(expr string) error {
	if strings.TrimSpace(expr) == "" {
		return errors.New("row filter is empty")
	}
	if strings.IndexByte(expr, 0) >= 0 {
		return errors.New("row filter contains a NUL byte")
	}
	depth := 0
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '\'':
			// E'..' strings may hold \' ; plain strings only ''.
			escapes := i > 0 && (expr[i-1] == 'E' || expr[i-1] == 'e')
			j := i + 1
			for ; j < len(expr); j++ {
				if escapes && expr[j] == '\\' {
					j++
					continue
				}
				if expr[j] == '\'' {
					if j+1 < len(expr) && expr[j+1] == '\'' {
						j++
						continue
					}
					break
				}
			}
			if j >= len(expr) {
				return errors.New("row filter has an unterminated string literal")
			}
			i = j + 1
		case c == '"':
			j := strings.IndexByte(expr[i+1:], '"')
			if j < 0 {
				return errors.New("row filter has an unterminated quoted identifier")
			}
			i += j + 2
		case c == '-' && strings.HasPrefix(expr[i:], "--"):
			return errors.New("row filter contains a comment (--); remove it")
		case c == '/' && strings.HasPrefix(expr[i:], "/*"):
			return errors.New("row filter contains a comment (/* */); remove it")
		case c == '$':
			// $1 parameters are meaningless here, and dollar quotes could
			// end the generated function's body.
			return errors.New("row filter contains '$' (dollar quotes and parameters are not allowed; use '…' strings)")
		case c == ';':
			return errors.New("row filter must be a single expression (it contains ';')")
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return errors.New("row filter has an unbalanced ')'")
			}
			i++
		default:
			i++
		}
	}
	if depth != 0 {
		return fmt.Errorf("row filter has %d unclosed '('", depth)
	}
	return nil
}
