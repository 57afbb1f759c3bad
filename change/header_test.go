package change

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestNewMsgSample(t *testing.T) {
	e := sampleUpdate()
	m, err := NewMsg("herald", e)
	if err != nil {
		t.Fatalf("NewMsg: %v", err)
	}
	if want := "herald.public.mail_users.alice"; m.Subject != want {
		t.Fatalf("subject = %q, want %q", m.Subject, want)
	}
	wantHeader := nats.Header{
		"Nats-Msg-Id":  {"main:1763839522123456:42"},
		"Herald-Op":    {"update"},
		"Herald-Table": {"public.mail_users"},
		"Herald-Epoch": {"1763839522123456"},
		"Herald-Id":    {"42"},
	}
	if !reflect.DeepEqual(m.Header, wantHeader) {
		t.Fatalf("header = %v, want %v", m.Header, wantHeader)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(m.Data, &body); err != nil {
		t.Fatalf("body %s does not parse: %v", m.Data, err)
	}
	for field, want := range map[string]string{
		"v": "1", "source": `"main"`, "epoch": "1763839522123456", "id": "42", "txid": "90211",
		"at": `"2026-11-22T19:25:22.123456Z"`, "schema": `"public"`, "table": `"mail_users"`,
		"op": `"update"`, "key": `["alice"]`, "changed": `["quota_bytes"]`,
		"new": `{"gid":100,"username":"alice","quota_bytes":10737418240,"ratio":1.50}`,
		"old": `{"gid":100,"username":"alice","quota_bytes":5368709120,"ratio":1.50}`,
	} {
		if got := string(body[field]); got != want {
			t.Errorf("body field %s = %s, want %s", field, got, want)
		}
	}
	if len(body) != 13 {
		t.Errorf("body has %d fields, want 13: %s", len(body), m.Data)
	}
	back, err := FromMsg(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatalf("FromMsg: %v", err)
	}
	if msg := envelopeDiff(e, back); msg != "" {
		t.Fatal(msg)
	}
}

func TestNewMsgTruncateAndMarker(t *testing.T) {
	envs := sampleEnvelopes()
	m, err := NewMsg("acme.herald", envs["truncate"])
	if err != nil {
		t.Fatalf("NewMsg(truncate): %v", err)
	}
	if want := "acme.herald.public.mail_users.%T"; m.Subject != want {
		t.Fatalf("truncate subject = %q, want %q", m.Subject, want)
	}
	if m.Header.Get(HeaderOp) != "truncate" || m.Header.Get(HeaderMarker) != "" {
		t.Fatalf("truncate header = %v", m.Header)
	}
	m, err = NewMsg("herald", envs["marker"])
	if err != nil {
		t.Fatalf("NewMsg(marker): %v", err)
	}
	if got := m.Header.Get(HeaderMarker); got != "too-large" {
		t.Fatalf("Herald-Marker = %q, want too-large", got)
	}
	if _, err := FromMsg(m.Subject, m.Header, m.Data); err != nil {
		t.Fatalf("FromMsg(marker): %v", err)
	}
	m, err = NewMsg("herald", envs["odd"])
	if err != nil {
		t.Fatalf("NewMsg(odd): %v", err)
	}
	if got, want := m.Header.Get(HeaderTable), `my schema.t"q\`; got != want {
		t.Fatalf("Herald-Table = %q, want %q", got, want)
	}
	if _, err := FromMsg(m.Subject, m.Header, m.Data); err != nil {
		t.Fatalf("FromMsg(odd): %v", err)
	}
	if _, err := NewMsg("bad prefix", sampleUpdate()); err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Fatalf("NewMsg with a bad prefix: err = %v", err)
	}
	if _, err := NewMsg("herald", nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("NewMsg(nil): err = %v", err)
	}
}

func TestTableHeader(t *testing.T) {
	tests := []struct{ schema, table, want string }{
		{"public", "mail_users", "public.mail_users"},
		{"my schema", "ünïcode", "my schema.ünïcode"},
		{"a.b", "c", "a.b.c"}, // raw names: a label, not parseable
		{"public", "new\nline", "public.new%0Aline"},
		{" lead", "t", "%20lead.t"},
		{"s", "trail ", "s.trail%20"},
		{"s", "tab\there", "s.tab%09here"},
		{"s", "\xff", "s.%FF"},
	}
	for _, tt := range tests {
		if got := TableHeader(tt.schema, tt.table); got != tt.want {
			t.Errorf("TableHeader(%q, %q) = %q, want %q", tt.schema, tt.table, got, tt.want)
		}
	}
}

func TestFromMsgCrossCheck(t *testing.T) {
	m, err := NewMsg("herald", sampleUpdate())
	if err != nil {
		t.Fatal(err)
	}
	withHeader := func(name string, vs ...string) nats.Header {
		h := nats.Header{}
		for k, v := range m.Header {
			h[k] = v
		}
		h[name] = vs
		return h
	}
	ok := []struct {
		name    string
		subject string
		header  nats.Header
	}{
		{"as published", m.Subject, m.Header},
		{"no headers", m.Subject, nil},
		{"no subject (dead letter)", "", m.Header},
		{"other prefix", "mirror.x.public.mail_users.alice", m.Header},
	}
	for _, tt := range ok {
		if _, err := FromMsg(tt.subject, tt.header, m.Data); err != nil {
			t.Errorf("%s: FromMsg: %v", tt.name, err)
		}
	}
	bad := []struct {
		name    string
		subject string
		header  nats.Header
	}{
		{"op", m.Subject, withHeader(HeaderOp, "delete")},
		{"table", m.Subject, withHeader(HeaderTable, "public.other")},
		{"epoch", m.Subject, withHeader(HeaderEpoch, "1")},
		{"id", m.Subject, withHeader(HeaderID, "43")},
		{"two ids", m.Subject, withHeader(HeaderID, "42", "42")},
		{"marker on a normal change", m.Subject, withHeader(HeaderMarker, "too-large")},
		{"other key", "herald.public.mail_users.bob", m.Header},
		{"other table", "herald.public.users.alice", m.Header},
		{"tail only", ".public.mail_users.alice", m.Header},
		{"no prefix", "public.mail_users.alice", m.Header},
		{"extra key token", "herald.public.mail_users.alice.x", m.Header},
	}
	for _, tt := range bad {
		if _, err := FromMsg(tt.subject, tt.header, m.Data); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: FromMsg err = %v, want ErrMalformed", tt.name, err)
		}
	}
	if _, err := FromMsg(m.Subject, m.Header, []byte("{")); !errors.Is(err, ErrMalformed) {
		t.Errorf("FromMsg of a broken body: err = %v", err)
	}
}
