package change

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestSubject(t *testing.T) {
	long := strings.Repeat("k", 150)
	tests := []struct {
		name          string
		schema, table string
		key           []string
		want          string
	}{
		{"one column", "public", "mail_users", []string{"alice"}, "herald.public.mail_users.alice"},
		{"cmdb host", "public", "__cmdb", []string{"SHA=8f3a"}, "herald.public.__cmdb.SHA=8f3a"},
		{"multi-column", "public", "orders", []string{"acme", "42", "a.b"}, "herald.public.orders.acme.42.a%2Eb"},
		{"empty key value", "public", "t", []string{"", "x"}, "herald.public.t.%.x"},
		{"escaped names", "my schema", "t.x", []string{"1"}, "herald.my%20schema.t%2Ex.1"},
		{"nil key", "public", "t", nil, "herald.public.t.%T"},
		{"empty key slice", "public", "t", []string{}, "herald.public.t.%T"},
		{"hashed key", "public", "t", []string{long}, "herald.public.t." + hashOf(long)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Subject("herald", tt.schema, tt.table, tt.key)
			if got != tt.want {
				t.Fatalf("Subject = %q, want %q", got, tt.want)
			}
			if kf := KeyFilter("herald", tt.schema, tt.table, tt.key); kf != got {
				t.Fatalf("KeyFilter = %q, want the subject %q", kf, got)
			}
			p, err := ParseSubject("herald", got)
			if err != nil {
				t.Fatalf("ParseSubject(%q): %v", got, err)
			}
			if p.Schema != tt.schema || p.Table != tt.table || p.SchemaHashed || p.TableHashed {
				t.Fatalf("ParseSubject(%q) = %+v, want schema %q table %q", got, p, tt.schema, tt.table)
			}
			if len(tt.key) == 0 {
				if !p.TableLevel || p.Key != nil || p.Hashed != nil {
					t.Fatalf("ParseSubject(%q) = %+v, want table level", got, p)
				}
				return
			}
			if p.TableLevel || len(p.Key) != len(tt.key) || len(p.Hashed) != len(tt.key) {
				t.Fatalf("ParseSubject(%q) = %+v, want key %q", got, p, tt.key)
			}
			for i, k := range tt.key {
				hashed := len(EncodeToken(k)) == 42 && strings.HasPrefix(EncodeToken(k), "%H")
				if p.Hashed[i] != hashed {
					t.Fatalf("key %d: hashed = %v, want %v", i, p.Hashed[i], hashed)
				}
				if !hashed && p.Key[i] != k {
					t.Fatalf("key %d = %q, want %q", i, p.Key[i], k)
				}
			}
		})
	}
}

func TestFilters(t *testing.T) {
	if got, want := TableFilter("herald", "public", "__cmdb"), "herald.public.__cmdb.>"; got != want {
		t.Fatalf("TableFilter = %q, want %q", got, want)
	}
	if got, want := TableFilter("acme.herald", "a b", "t"), "acme.herald.a%20b.t.>"; got != want {
		t.Fatalf("TableFilter = %q, want %q", got, want)
	}
	if got, want := DLQSubject("herald", "filesync"), "herald_dlq.filesync"; got != want {
		t.Fatalf("DLQSubject = %q, want %q", got, want)
	}
	if got, want := DLQSubject("herald", "a.b"), "herald_dlq.a%2Eb"; got != want {
		t.Fatalf("DLQSubject = %q, want %q", got, want)
	}
}

func TestParseSubjectHashedNames(t *testing.T) {
	schema := strings.Repeat(" ", 40) // 120 bytes escaped
	subj := Subject("herald", schema, "t", []string{"k"})
	p, err := ParseSubject("herald", subj)
	if err != nil {
		t.Fatalf("ParseSubject(%q): %v", subj, err)
	}
	want := SubjectParts{Table: "t", Key: []string{"k"}, Hashed: []bool{false}, SchemaHashed: true}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("ParseSubject = %+v, want %+v", p, want)
	}
}

func TestParseSubjectErrors(t *testing.T) {
	tests := []struct{ name, subject string }{
		{"other prefix", "heraldx.public.t.a"},
		{"prefix only", "herald"},
		{"prefix without dot", "herald_public.t.a"},
		{"too few tokens", "herald.public.t"},
		{"empty key token", "herald.public.t."},
		{"empty schema", "herald..t.a"},
		{"table token as schema", "herald.%T.t.a"},
		{"table token as table", "herald.public.%T.a"},
		{"table token among keys", "herald.public.t.a.%T"},
		{"non-canonical key", "herald.public.t.a%2e"},
		{"wildcard key", "herald.public.t.*"},
		{"filter subject", "herald.public.t.>"},
		{"too many keys", "herald.public.t" + strings.Repeat(".k", 33)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseSubject("herald", tt.subject)
			if err == nil {
				t.Fatalf("ParseSubject(%q) = %+v; want an error", tt.subject, p)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseSubject(%q) error %v does not wrap ErrMalformed", tt.subject, err)
			}
		})
	}
	if _, err := ParseSubject("bad..prefix", "bad..prefix.a.b.c"); err == nil {
		t.Fatal("ParseSubject accepted an invalid prefix")
	}
}

func TestValidatePrefix(t *testing.T) {
	good := []string{"herald", "acme.herald", "a_b-c.D9", "x", strings.Repeat("a", 64), strings.Repeat("a.", 31) + "ab"}
	for _, p := range good {
		if err := ValidatePrefix(p); err != nil {
			t.Errorf("ValidatePrefix(%q): %v", p, err)
		}
	}
	bad := []string{
		"", ".", "a.", ".a", "a..b", "*", "a.*", "a.>", "a*", "$JS", "$SYS.x", "a.$b",
		"a b", "a\tb", "ü", "a/b", "a%b", strings.Repeat("a", 65),
	}
	for _, p := range bad {
		err := ValidatePrefix(p)
		if err == nil {
			t.Errorf("ValidatePrefix(%q) accepted a bad prefix", p)
		} else if !strings.Contains(err.Error(), "prefix") {
			t.Errorf("ValidatePrefix(%q) error %q does not name the prefix", p, err)
		}
	}
}

// TestSubjectWorstCase builds the longest subject the contract allows and
// checks it leaves room in the server's 4096-byte control line.
func TestSubjectWorstCase(t *testing.T) {
	prefix := strings.Repeat("p", MaxPrefixLen)
	name := strings.Repeat(" ", 63) // PostgreSQL's longest name, all escaped: hashed
	key := make([]string, MaxKeyColumns)
	for i := range key {
		key[i] = strings.Repeat("a", MaxTokenLen) // longest token that is not hashed
	}
	subj := Subject(prefix, strings.Repeat("s", MaxTokenLen), strings.Repeat("t", MaxTokenLen), key)
	if want := MaxPrefixLen + 1 + MaxTokenLen + 1 + MaxTokenLen + MaxKeyColumns*(1+MaxTokenLen); len(subj) != want {
		t.Fatalf("worst-case subject is %d bytes, want %d", len(subj), want)
	}
	if len(subj) > 3500 {
		t.Fatalf("worst-case subject is %d bytes; it must leave room for the reply subject in 4096", len(subj))
	}
	if s := Subject(prefix, name, name, key); len(s) > len(subj) {
		t.Fatalf("subject with hashed names is longer: %d", len(s))
	}
}
