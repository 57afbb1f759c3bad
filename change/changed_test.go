package change

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestChanged(t *testing.T) {
	tests := []struct {
		name     string
		old, new string
		want     []string
	}{
		{"identical", `{"a":1,"b":"x"}`, `{"a":1,"b":"x"}`, nil},
		{"whitespace only", `{"a": [1, 2], "b": {"c": null}}`, `{"a":[1,2],"b":{"c":null}}`, nil},
		{"jsonb text output", `{"a": 1, "b": "x y"}`, `{"a": 1, "b": "x y"}`, nil},
		{"changed value", `{"a":1,"b":"x"}`, `{"a":2,"b":"x"}`, []string{"a"}},
		{"added key", `{"a":1}`, `{"a":1,"c":true}`, []string{"c"}},
		{"removed key", `{"a":1,"b":2}`, `{"a":1}`, []string{"b"}},
		{"added removed changed sorted", `{"z":1,"m":2,"a":3}`, `{"m":3,"a":3,"b":0}`, []string{"b", "m", "z"}},
		{"nested value", `{"a":{"b":[1,{"c":1}]}}`, `{"a":{"b":[1,{"c":2}]}}`, []string{"a"}},
		{"numeric scale", `{"n":1.50}`, `{"n":1.5}`, []string{"n"}},
		{"null versus missing", `{"n":null}`, `{}`, []string{"n"}},
		{"null to value", `{"n":null}`, `{"n":0}`, []string{"n"}},
		{"string spaces matter", `{"s":"a b"}`, `{"s":"a  b"}`, []string{"s"}},
		{"escaped key names", `{"a\"b":1}`, `{"a\"b":2}`, []string{`a"b`}},
		{"old null", `null`, `{"a":1,"b":2}`, []string{"a", "b"}},
		{"new nil", `{"a":1}`, ``, []string{"a"}},
		{"both null", `null`, `null`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o, n json.RawMessage
			if tt.old != "" {
				o = json.RawMessage(tt.old)
			}
			if tt.new != "" {
				n = json.RawMessage(tt.new)
			}
			got, err := Changed(o, n)
			if err != nil {
				t.Fatalf("Changed: %v", err)
			}
			if !slices.Equal(got, tt.want) || (tt.want == nil) != (got == nil) {
				t.Fatalf("Changed = %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestChangedErrors(t *testing.T) {
	for _, tt := range []struct{ old, new string }{
		{`[1]`, `{}`},
		{`{}`, `"x"`},
		{`{"a":`, `{}`},
		{`{}`, `{"a":1}x`},
		{`{}`, `1`},
	} {
		if got, err := Changed(json.RawMessage(tt.old), json.RawMessage(tt.new)); err == nil {
			t.Errorf("Changed(%s, %s) = %v; want an error", tt.old, tt.new, got)
		}
	}
}
