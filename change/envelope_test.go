package change

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

var sampleAt = time.Date(2026, 11, 22, 19, 25, 22, 123456000, time.UTC)

func sampleUpdate() *Envelope {
	return &Envelope{
		V:       EnvelopeVersion,
		Source:  "main",
		Epoch:   1763839522123456,
		ID:      42,
		TxID:    90211,
		At:      sampleAt,
		Schema:  "public",
		Table:   "mail_users",
		Op:      OpUpdate,
		Key:     []string{"alice"},
		New:     json.RawMessage(`{"gid":100,"username":"alice","quota_bytes":10737418240,"ratio":1.50}`),
		Old:     json.RawMessage(`{"gid":100,"username":"alice","quota_bytes":5368709120,"ratio":1.50}`),
		Changed: []string{"quota_bytes"},
	}
}

// sampleEnvelopes covers every op, a marker, escapes in strings and empty
// versus nil slices.
func sampleEnvelopes() map[string]*Envelope {
	ins := sampleUpdate()
	ins.Op, ins.Old, ins.Changed = OpInsert, nil, nil
	del := sampleUpdate()
	del.Op, del.New, del.Changed = OpDelete, nil, nil
	snap := sampleUpdate()
	snap.Op, snap.Old, snap.Changed = OpSnapshot, nil, nil
	trunc := sampleUpdate()
	trunc.Op, trunc.Key, trunc.New, trunc.Old, trunc.Changed = OpTruncate, nil, nil, nil, nil
	marker := sampleUpdate()
	marker.New, marker.Old, marker.Changed = nil, nil, nil
	marker.Marker = &Marker{Reason: MarkerTooLarge, Size: 9 << 20, Limit: 1 << 20}
	odd := sampleUpdate()
	odd.Schema, odd.Table = "my schema", `t"q\`
	odd.Key = []string{"a.b", "line\nbreak\ttab\x01\x1f", "ünïcode 🙂 <&> \u2028\u2029", ""}
	odd.New = json.RawMessage(" {\"a\" : [1, 2.50, {\"b\": null}], \"s\": \"\\u00e9\"}\n")
	odd.Changed = []string{}
	odd.At = time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	return map[string]*Envelope{
		"update": sampleUpdate(), "insert": ins, "delete": del, "snapshot": snap,
		"truncate": trunc, "marker": marker, "odd": odd,
	}
}

// jsonValue decodes JSON keeping numbers exact, for semantic comparison.
func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("invalid JSON %s: %v", b, err)
	}
	return v
}

func TestAppendJSONMatchesMarshal(t *testing.T) {
	for name, e := range sampleEnvelopes() {
		t.Run(name, func(t *testing.T) {
			got, err := e.AppendJSON(nil)
			if err != nil {
				t.Fatalf("AppendJSON: %v", err)
			}
			// json.Marshal renders time in its own zone and trims zeros; the
			// contract is UTC with microseconds, so compare against a copy
			// whose At json.Marshal renders the same way.
			ref := *e
			ref.At = e.At.UTC()
			want, err := json.Marshal(&ref)
			if err != nil {
				t.Fatalf("json.Marshal: %v", err)
			}
			gv, wv := jsonValue(t, got), jsonValue(t, want)
			gm, wm := gv.(map[string]any), wv.(map[string]any)
			gat, wat := gm["at"].(string), wm["at"].(string)
			gt, err := time.Parse(time.RFC3339Nano, gat)
			if err != nil || !gt.Equal(e.At) || !strings.HasSuffix(gat, "Z") || len(gat) != len("2026-11-22T19:25:22.123456Z") {
				t.Fatalf("at = %q (%v), want RFC 3339 UTC with microseconds of %v", gat, err, e.At)
			}
			wt, _ := time.Parse(time.RFC3339Nano, wat)
			if !gt.Equal(wt) {
				t.Fatalf("at = %q, json.Marshal gives %q", gat, wat)
			}
			delete(gm, "at")
			delete(wm, "at")
			if !reflect.DeepEqual(gv, wv) {
				t.Fatalf("AppendJSON:\n%s\njson.Marshal:\n%s", got, want)
			}
			if !json.Valid(got) {
				t.Fatalf("AppendJSON gave invalid JSON: %s", got)
			}
			// And it decodes back to the same envelope.
			back, err := Decode(got)
			if err != nil {
				t.Fatalf("Decode(%s): %v", got, err)
			}
			if msg := envelopeDiff(e, back); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

func TestAppendJSONAt(t *testing.T) {
	tests := []struct {
		at   time.Time
		want string
	}{
		{sampleAt, "2026-11-22T19:25:22.123456Z"},
		{time.Date(2026, 11, 22, 20, 25, 22, 123456000, time.FixedZone("", 3600)), "2026-11-22T19:25:22.123456Z"},
		{time.Date(2026, 11, 22, 19, 25, 22, 0, time.UTC), "2026-11-22T19:25:22.000000Z"},
		{time.Date(2026, 11, 22, 19, 25, 22, 120000000, time.UTC), "2026-11-22T19:25:22.120000Z"},
		{time.Date(2026, 11, 22, 19, 25, 22, 123456789, time.UTC), "2026-11-22T19:25:22.123456789Z"},
		{time.Time{}, "0001-01-01T00:00:00.000000Z"},
	}
	for _, tt := range tests {
		e := sampleUpdate()
		e.At = tt.at
		b, err := e.AppendJSON(nil)
		if err != nil {
			t.Fatalf("AppendJSON: %v", err)
		}
		if want := `"at":"` + tt.want + `"`; !bytes.Contains(b, []byte(want)) {
			t.Fatalf("body %s lacks %s", b, want)
		}
	}
	e := sampleUpdate()
	e.At = time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("", -7200)) // year 10000 in UTC
	if _, err := e.AppendJSON(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("AppendJSON of year 10000: err = %v, want ErrInvalid", err)
	}
}

func TestAppendJSONAppends(t *testing.T) {
	e := sampleUpdate()
	prefix := []byte("xyz")
	got, err := e.AppendJSON(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, prefix) || !json.Valid(got[3:]) {
		t.Fatalf("AppendJSON did not append to the buffer: %s", got)
	}
	bad := sampleUpdate()
	bad.Op = "upsert"
	out, err := bad.AppendJSON(prefix)
	if !errors.Is(err, ErrInvalid) || string(out) != "xyz" {
		t.Fatalf("invalid envelope: out %q, err %v; want buffer unchanged and ErrInvalid", out, err)
	}
	var nilEnv *Envelope
	if _, err := nilEnv.AppendJSON(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil envelope: err = %v", err)
	}
	buf := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() { _, _ = e.AppendJSON(buf[:0]) })
	if allocs != 0 {
		t.Fatalf("AppendJSON into a large enough buffer allocates %v times", allocs)
	}
}

func TestAppendJSONInvalid(t *testing.T) {
	tests := map[string]func(e *Envelope){
		"v 0":                  func(e *Envelope) { e.V = 0 },
		"v 2":                  func(e *Envelope) { e.V = 2 },
		"bad op":               func(e *Envelope) { e.Op = "UPDATE" },
		"no source":            func(e *Envelope) { e.Source = "" },
		"source newline":       func(e *Envelope) { e.Source = "a\nb" },
		"no schema":            func(e *Envelope) { e.Schema = "" },
		"no table":             func(e *Envelope) { e.Table = "" },
		"no key":               func(e *Envelope) { e.Key = nil },
		"empty key":            func(e *Envelope) { e.Key = []string{} },
		"33 key columns":       func(e *Envelope) { e.Key = make([]string, 33) },
		"truncate with key":    func(e *Envelope) { e.Op = OpTruncate },
		"key invalid UTF-8":    func(e *Envelope) { e.Key = []string{"\xff"} },
		"schema invalid UTF-8": func(e *Envelope) { e.Schema = "\xff" },
		"new array":            func(e *Envelope) { e.New = json.RawMessage(`[1]`) },
		"new string":           func(e *Envelope) { e.New = json.RawMessage(`"x"`) },
		"new broken":           func(e *Envelope) { e.New = json.RawMessage(`{"a":`) },
		"old trailing junk":    func(e *Envelope) { e.Old = json.RawMessage(`{} {}`) },
		"new invalid UTF-8":    func(e *Envelope) { e.New = json.RawMessage("{\"a\":\"\xff\"}") },
		"marker no reason":     func(e *Envelope) { e.New, e.Old, e.Marker = nil, nil, &Marker{} },
		"marker with values":   func(e *Envelope) { e.Marker = &Marker{Reason: MarkerTooLarge} },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			e := sampleUpdate()
			mutate(e)
			if b, err := e.AppendJSON(nil); !errors.Is(err, ErrInvalid) {
				t.Fatalf("AppendJSON = %s, %v; want ErrInvalid", b, err)
			}
			if _, err := NewMsg("herald", e); !errors.Is(err, ErrInvalid) {
				t.Fatalf("NewMsg error %v, want ErrInvalid", err)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	valid, err := sampleUpdate().AppendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) string {
		s := strings.Replace(string(valid), old, new, 1)
		if s == string(valid) {
			t.Fatalf("%q not in sample body", old)
		}
		return s
	}
	tests := map[string]string{
		"empty":              "",
		"not JSON":           "hello",
		"JSON array":         "[1,2]",
		"JSON null":          "null",
		"JSON string":        `"v"`,
		"truncated":          string(valid[:len(valid)/2]),
		"truncated at end":   string(valid[:len(valid)-1]),
		"trailing garbage":   string(valid) + "x",
		"v missing":          replace(`"v":1,`, ""),
		"v 2":                replace(`"v":1`, `"v":2`),
		"v string":           replace(`"v":1`, `"v":"1"`),
		"bad op":             replace(`"op":"update"`, `"op":"upsert"`),
		"op missing":         replace(`"op":"update",`, ""),
		"op number":          replace(`"op":"update"`, `"op":3`),
		"key missing":        replace(`"key":["alice"],`, ""),
		"key null":           replace(`"key":["alice"]`, `"key":null`),
		"key empty":          replace(`"key":["alice"]`, `"key":[]`),
		"key string":         replace(`"key":["alice"]`, `"key":"alice"`),
		"key numbers":        replace(`"key":["alice"]`, `"key":[1]`),
		"new array":          replace(`"new":{`, `"new":[{`) + "]",
		"new string":         replace(`"new":{"gid":100,`, `"new":"x","n":{"gid":100,`),
		"new number":         replace(`"new":{"gid":100,`, `"new":1,"n":{"gid":100,`),
		"old true":           replace(`"old":{"gid":100,`, `"old":true,"o":{"gid":100,`),
		"epoch float":        replace(`"epoch":1763839522123456`, `"epoch":1.5`),
		"epoch overflow":     replace(`"epoch":1763839522123456`, `"epoch":99999999999999999999`),
		"id string":          replace(`"id":42`, `"id":"42"`),
		"at not RFC 3339":    replace(`"at":"2026-11-22T19:25:22.123456Z"`, `"at":"22/11/2026"`),
		"at number":          replace(`"at":"2026-11-22T19:25:22.123456Z"`, `"at":1`),
		"at year 10000 UTC":  replace(`"at":"2026-11-22T19:25:22.123456Z"`, `"at":"9999-12-31T23:00:00-02:00"`),
		"source missing":     replace(`"source":"main",`, ""),
		"schema missing":     replace(`"schema":"public",`, ""),
		"changed not list":   replace(`"changed":["quota_bytes"]`, `"changed":"quota_bytes"`),
		"marker not object":  replace(`"changed":["quota_bytes"]`, `"changed":null,"marker":"big"`),
		"marker with values": replace(`"changed":["quota_bytes"]`, `"changed":null,"marker":{"reason":"too-large"}`),
		"truncate with key":  replace(`"op":"update"`, `"op":"truncate"`),
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := Decode([]byte(body))
			if err == nil {
				t.Fatalf("Decode(%s) = %+v; want an error", body, e)
			}
			if e != nil {
				t.Fatalf("Decode returned an envelope with the error %v", err)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason == "" {
				t.Fatalf("error %v is not a *DecodeError with a reason", err)
			}
			if !strings.HasPrefix(err.Error(), "malformed herald message: ") {
				t.Fatalf("error text %q", err)
			}
		})
	}
}

func TestDecodeLenient(t *testing.T) {
	// Unknown fields (later additions to v1) are ignored; null new/old become
	// nil; whitespace around values is fine; a truncate may spell its key [].
	body := `{ "v" : 1, "source":"main", "epoch":1, "id":2, "txid":3, "at":"2026-11-22T19:25:22Z",
		"schema":"public", "table":"t", "op":"truncate", "key":[], "new":null, "old":null,
		"changed":null, "future":{"x":[1,2]} }`
	e, err := Decode([]byte(body))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if e.New != nil || e.Old != nil || e.Key == nil || len(e.Key) != 0 || e.Op != OpTruncate || e.Version() != (Version{1, 2}) {
		t.Fatalf("Decode = %+v", e)
	}
}

// envelopeDiff describes how two envelopes differ, or returns "". Times
// compare as instants; raw values compare as bytes, with nil and "null" equal.
func envelopeDiff(a, b *Envelope) string {
	if !a.At.Equal(b.At) {
		return "at differs: " + a.At.String() + " vs " + b.At.String()
	}
	if !bytes.Equal(trimJSONSpace(nullToNil(a.New)), trimJSONSpace(nullToNil(b.New))) {
		return "new differs: " + string(a.New) + " vs " + string(b.New)
	}
	if !bytes.Equal(trimJSONSpace(nullToNil(a.Old)), trimJSONSpace(nullToNil(b.Old))) {
		return "old differs: " + string(a.Old) + " vs " + string(b.Old)
	}
	ac, bc := *a, *b
	ac.At, bc.At = time.Time{}, time.Time{}
	ac.New, bc.New, ac.Old, bc.Old = nil, nil, nil, nil
	if !reflect.DeepEqual(ac, bc) {
		ja, _ := json.Marshal(ac)
		jb, _ := json.Marshal(bc)
		return "envelopes differ:\n" + string(ja) + "\n" + string(jb)
	}
	return ""
}

// TestAppendTimeMatchesFormat holds the hand-written time encoder to the
// standard library's formatting over the whole four-digit year range.
func TestAppendTimeMatchesFormat(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	lo := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano() / 1e9
	hi := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).UnixNano() / 1e9
	times := []time.Time{
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2024, 2, 29, 12, 0, 0, 1000, time.UTC),
	}
	for range 10000 {
		sec := lo + rng.Int64N(hi-lo)
		ns := rng.Int64N(1e9)
		if rng.IntN(2) == 0 {
			ns -= ns % 1000 // microsecond precision, as from PostgreSQL
		}
		times = append(times, time.Unix(sec, ns).In(time.FixedZone("", rng.IntN(50000)-25000)))
	}
	for _, tm := range times {
		layout := "2006-01-02T15:04:05.000000Z"
		if tm.Nanosecond()%1000 != 0 {
			layout = "2006-01-02T15:04:05.000000000Z"
		}
		want := tm.UTC().Format(layout)
		if got := string(appendTime(nil, tm)); got != want {
			t.Fatalf("appendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}
