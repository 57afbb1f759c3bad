package change

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestValidObjectMutations compares validObject with json.Valid on every
// one-byte deletion, insertion and substitution of some valid rows: the
// near misses where a hand-written scanner goes wrong.
func TestValidObjectMutations(t *testing.T) {
	docs := []string{
		`{"a":1,"b":[true,false,null],"c":{"d":"e\"\\\/\b\f\n\r\t\u00e9"},"f":-0.5e+10,"g":0,"h":1E-2,"i":"ü🙂"}`,
		` { "n" : [ 1 , [ ] , { } , "" ] } `,
		`{"quota_bytes":10737418240,"ratio":1.50,"tags":["x","y"],"meta":{"k":[{"z":-12.0e3}]}}`,
	}
	alphabet := []byte(" \t\r\n{}[]:,\"\\/-+.0123456789eEabfnrtu\x00\x1f\x7f\xc3\xa9\xff")
	check := func(b []byte) {
		tr := trimJSONSpace(b)
		want := len(tr) > 0 && tr[0] == '{' && json.Valid(b) && utf8.Valid(b)
		if got := validObject(b); got != want {
			t.Fatalf("validObject(%q) = %v, json.Valid says %v", b, got, want)
		}
	}
	n := 0
	for _, d := range docs {
		check([]byte(d))
		for i := 0; i <= len(d); i++ {
			if i < len(d) {
				check([]byte(d[:i] + d[i+1:]))
				check([]byte(d[:i]))
				n += 2
			}
			for _, c := range alphabet {
				check([]byte(d[:i] + string(c) + d[i:]))
				n++
				if i < len(d) {
					check([]byte(d[:i] + string(c) + d[i+1:]))
					n++
				}
			}
		}
	}
	// Depth: the fast path hands deep input to json.Valid, which has its own limit.
	for _, depth := range []int{fastDepth - 1, fastDepth, fastDepth + 1, 10001} {
		check([]byte(strings.Repeat(`{"a":[`, depth) + strings.Repeat(`]}`, depth)))
		check([]byte(strings.Repeat(`{"a":[`, depth) + strings.Repeat(`]}`, depth-1)))
	}
	t.Logf("%d mutations agree", n)
}
