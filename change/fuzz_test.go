package change

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func FuzzToken(f *testing.F) {
	for _, s := range []string{
		"", "alice", "42", "SHA=8f3a", "web-01", "ünïcode", "a.b", "*", ">", "%", "%T", "%H",
		"two words", "\t\n\r", "\x00\x1f\x7f", "\xff\xfe", "\xed\xa0\x80", "\u00a0\u2028\u3000",
		"🙂", "\uFFFD", strings.Repeat("a", 100), strings.Repeat("a", 101), strings.Repeat(".", 33),
		strings.Repeat(".", 34), strings.Repeat("é", 50), strings.Repeat("é", 51),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		tok := EncodeToken(value)
		hashed := strings.HasPrefix(tok, "%H")
		switch {
		case tok == "":
			t.Fatalf("EncodeToken(%q) is empty", value)
		case tok == TableToken:
			t.Fatalf("EncodeToken(%q) is the table token", value)
		case hashed && (len(tok) != 42 || !isLowerHex(tok[2:])):
			t.Fatalf("EncodeToken(%q) = %q: malformed hash token", value, tok)
		case !hashed && len(tok) > MaxTokenLen:
			t.Fatalf("EncodeToken(%q) = %q: %d bytes, over the cap", value, tok, len(tok))
		case !utf8.ValidString(tok):
			t.Fatalf("EncodeToken(%q) = %q: invalid UTF-8", value, tok)
		}
		for i, r := range tok {
			if r == '.' || r == '*' || r == '>' || r < 0x20 || r == 0x7f || unicode.IsSpace(r) || !unicode.IsPrint(r) {
				t.Fatalf("EncodeToken(%q) = %q: forbidden rune %q at %d", value, tok, r, i)
			}
		}
		if got := EncodeToken(value); got != tok {
			t.Fatalf("EncodeToken(%q) not deterministic: %q then %q", value, tok, got)
		}
		back, gotHashed, table, err := DecodeToken(tok)
		if err != nil {
			t.Fatalf("DecodeToken(EncodeToken(%q) = %q): %v", value, tok, err)
		}
		if table || gotHashed != hashed {
			t.Fatalf("DecodeToken(%q): hashed %v table %v", tok, gotHashed, table)
		}
		if !hashed && back != value {
			t.Fatalf("DecodeToken(EncodeToken(%q) = %q) = %q", value, tok, back)
		}
		// The other direction: a string DecodeToken accepts is canonical.
		if v, h, tb, err := DecodeToken(value); err == nil && !h && !tb && EncodeToken(v) != value {
			t.Fatalf("DecodeToken accepted %q (value %q) but EncodeToken gives %q", value, v, EncodeToken(v))
		}
	})
}

// fuzzKeys turns bytes into up to MaxKeyColumns key values, each a length byte
// followed by that many bytes, so every byte value can appear in a key.
func fuzzKeys(data []byte) []string {
	var keys []string
	for len(data) > 0 && len(keys) < MaxKeyColumns {
		n := min(int(data[0]), len(data)-1)
		keys = append(keys, string(data[1:1+n]))
		data = data[1+n:]
	}
	return keys
}

func FuzzSubject(f *testing.F) {
	f.Add("public", "mail_users", []byte("\x05alice"))
	f.Add("public", "orders", []byte("\x04acme\x0242\x03a.b\x00"))
	f.Add("my schema", "t.x", []byte{})
	f.Add(strings.Repeat(" ", 63), strings.Repeat("*", 63), []byte(strings.Repeat("\xff"+strings.Repeat(".", 255), 32)))
	f.Add("%T", "%H", []byte("\x02%T\x02%H\x01%"))
	prefix := strings.Repeat("p", MaxPrefixLen)
	f.Fuzz(func(t *testing.T, schema, table string, data []byte) {
		key := fuzzKeys(data)
		subj := Subject(prefix, schema, table, key)
		if len(subj) > 4096 {
			t.Fatalf("subject of %d key columns is %d bytes", len(key), len(subj))
		}
		if strings.ContainsAny(subj, " \t\r\n*>") {
			t.Fatalf("subject %q contains whitespace or a wildcard", subj)
		}
		p, err := ParseSubject(prefix, subj)
		if err != nil {
			t.Fatalf("ParseSubject(%q): %v", subj, err)
		}
		if !p.SchemaHashed && p.Schema != schema || !p.TableHashed && p.Table != table {
			t.Fatalf("ParseSubject(%q) = %+v, want schema %q table %q", subj, p, schema, table)
		}
		if p.SchemaHashed != strings.HasPrefix(EncodeToken(schema), "%H") || p.TableHashed != strings.HasPrefix(EncodeToken(table), "%H") {
			t.Fatalf("ParseSubject(%q) = %+v: wrong hashed flags", subj, p)
		}
		if len(key) == 0 {
			if !p.TableLevel || p.Key != nil {
				t.Fatalf("ParseSubject(%q) = %+v, want table level", subj, p)
			}
			return
		}
		if p.TableLevel || len(p.Key) != len(key) {
			t.Fatalf("ParseSubject(%q) = %+v, want key %q", subj, p, key)
		}
		for i, k := range key {
			if p.Hashed[i] != strings.HasPrefix(EncodeToken(k), "%H") {
				t.Fatalf("key %d of %q: hashed = %v", i, subj, p.Hashed[i])
			}
			if !p.Hashed[i] && p.Key[i] != k {
				t.Fatalf("key %d of %q = %q, want %q", i, subj, p.Key[i], k)
			}
		}
	})
}

func FuzzDecode(f *testing.F) {
	for _, e := range sampleEnvelopes() {
		b, err := e.AppendJSON(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"", "{}", "null", "[]", `{"v":1}`, `{"v":1,"op":"truncate","source":"s","schema":"a","table":"b"}`,
		`{"v":1,"op":"insert","source":"s","schema":"a","table":"b","key":["k"],"new":{"x":1.50}}`,
		`{"v":1,"op":"insert","source":"s","schema":"a","table":"b","key":["k"],"at":"0000-01-01T00:00:00+01:00"}`,
		`{"v":1,"op":"insert","source":"s","schema":"a","table":"b","key":["\ud800"],"at":"2026-11-22T19:25:22.123456789Z"}`,
		`{"V":1,"OP":"delete","Source":"s","schema":"a","table":"b","key":[null],"old":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decode(data)
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned an envelope and error %v", err)
			}
			return
		}
		body, err := e.AppendJSON(nil)
		if err != nil {
			t.Fatalf("Decode accepted %q but AppendJSON refuses it: %v", data, err)
		}
		back, err := Decode(body)
		if err != nil {
			t.Fatalf("Decode(AppendJSON(Decode(%q)) = %s): %v", data, body, err)
		}
		if msg := envelopeDiff(e, back); msg != "" {
			t.Fatalf("round trip of %q: %s", data, msg)
		}
		// Whatever a consumer can decode, the bridge can publish and a
		// consumer reads back with its cross-checks.
		m, err := NewMsg("herald", e)
		if err != nil {
			t.Fatalf("NewMsg: %v", err)
		}
		if _, err := FromMsg(m.Subject, m.Header, m.Data); err != nil {
			t.Fatalf("FromMsg(NewMsg(Decode(%q))): %v", data, err)
		}
	})
}

// FuzzValidObject holds validObject to json.Valid's answer (plus UTF-8
// validity and the object check), since AppendJSON trusts it instead.
func FuzzValidObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` {"a":1} `, `{"a":[1,2.5e-3,-0,true,false,null,"x\u00e9\n"]}`, `{"a":{"b":{}}}`,
		`[]`, `1`, `"x"`, `{`, `{"a"}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":"\x"}`, `{"a":"` + "\x01" + `"}`,
		`{"a":"` + "\xff" + `"}`, `{"a":1,}`, `{,}`, `{"a":1}{}`, `{"a":tru}`, `{"a":"\u12"}`,
		strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70),
		strings.Repeat(`{"a":[`, 40) + strings.Repeat("]}", 40),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := trimJSONSpace(b)
		want := len(tr) > 0 && tr[0] == '{' && json.Valid(b) && utf8.Valid(b)
		if got := validObject(b); got != want {
			t.Fatalf("validObject(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}
