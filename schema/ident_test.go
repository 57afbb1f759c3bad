package schema

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseQualifiedName(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    QualifiedName
		wantErr string
	}{
		{in: "mail_users", want: QualifiedName{Name: "mail_users"}},
		{in: "Public.MyTable", want: QualifiedName{Schema: "public", Name: "mytable"}},
		{in: `"Mixed Case"`, want: QualifiedName{Name: "Mixed Case"}},
		{in: `"odd"."a.b"`, want: QualifiedName{Schema: "odd", Name: "a.b"}},
		{in: `"say ""hi"""`, want: QualifiedName{Name: `say "hi"`}},
		{in: `__cmdb`, want: QualifiedName{Name: "__cmdb"}},
		{in: `ünï`, want: QualifiedName{Name: "ünï"}},
		{in: `t$1`, want: QualifiedName{Name: "t$1"}},
		{in: "", wantErr: "empty name"},
		{in: `a.b.c`, wantErr: "3 parts"},
		{in: `"unterminated`, wantErr: "unterminated"},
		{in: `""`, wantErr: "zero-length"},
		{in: `1abc`, wantErr: "invalid identifier"},
		{in: `a b`, wantErr: "unexpected"},
		{in: `a;drop table x`, wantErr: "unexpected"},
		{in: `a.`, wantErr: "missing identifier"},
		{in: strings.Repeat("x", 64), wantErr: "longer than 63"},
	} {
		got, err := ParseQualifiedName(c.in)
		if c.wantErr != "" {
			require.ErrorIs(t, err, ErrBadName, c.in)
			require.Contains(t, err.Error(), c.wantErr, c.in)
			continue
		}
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
}

func TestParseIdentList(t *testing.T) {
	got, err := ParseIdentList(`gid, dba,"User Name" ,quota_bytes`)
	require.NoError(t, err)
	require.Equal(t, []string{"gid", "dba", "User Name", "quota_bytes"}, got)
	for _, bad := range []string{"", "a,,b", "a,a", `a"b`, "a b", "a,"} {
		_, err := ParseIdentList(bad)
		require.ErrorIs(t, err, ErrBadName, bad)
	}
}

func TestQuoting(t *testing.T) {
	require.Equal(t, `"a""b"`, quoteIdent(`a"b`))
	require.Equal(t, `E'it''s \\ here'`, quoteLiteral(`it's \ here`))
	require.Equal(t, `"s"."t"`, QualifiedName{Schema: "s", Name: "t"}.String())
}

func TestCheckFilterText(t *testing.T) {
	for _, ok := range []string{
		"active",
		"dba = 'x;y' AND (quota > 0)",
		`"Odd Col" <> 'it''s'`,
		`name LIKE E'a\'b%'`,
	} {
		require.NoError(t, checkFilterText(ok), ok)
	}
	for _, bad := range []string{
		"", "  ", "a; b", "(a", "a)", "a) OR (b", "'open", `"open`, "a -- c", "a /* c */", "$$x$$", "$1 = a", "a\x00",
	} {
		require.Error(t, checkFilterText(bad), bad)
	}
}

func FuzzParseQualifiedName(f *testing.F) {
	for _, s := range []string{"a", "a.b", `"a"."b"`, `"a""b"`, `x.`, `"`, "ÄÖ.ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		qn, err := ParseQualifiedName(s)
		if err != nil {
			return
		}
		// What parses renders back to SQL that parses to the same name.
		again, err := ParseQualifiedName(qn.String())
		if err != nil || again != qn {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, qn, qn.String(), again, err)
		}
		if qn.Name == "" || strings.IndexByte(qn.Name, 0) >= 0 || strings.IndexByte(qn.Schema, 0) >= 0 {
			t.Fatalf("%q gave an unusable name %+v", s, qn)
		}
	})
}
