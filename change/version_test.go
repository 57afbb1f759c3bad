package change

import (
	"math"
	"slices"
	"testing"
)

func TestVersionOrder(t *testing.T) {
	// Sorted ascending: epoch first, then id, so a reinstall (new epoch, ids
	// restarting at 1) still comes after everything before it.
	ordered := []Version{
		{Epoch: 1, ID: 1},
		{Epoch: 1, ID: 2},
		{Epoch: 1, ID: math.MaxInt64},
		{Epoch: 2, ID: 1},
		{Epoch: 1763839522123456, ID: 1},
		{Epoch: 1763839522123456, ID: 42},
	}
	for i := range ordered {
		for j := range ordered {
			if got, want := ordered[i].Less(ordered[j]), i < j; got != want {
				t.Fatalf("%v.Less(%v) = %v, want %v", ordered[i], ordered[j], got, want)
			}
		}
	}
	shuffled := []Version{ordered[4], ordered[0], ordered[5], ordered[3], ordered[2], ordered[1]}
	slices.SortFunc(shuffled, func(a, b Version) int {
		switch {
		case a.Less(b):
			return -1
		case b.Less(a):
			return 1
		}
		return 0
	})
	if !slices.Equal(shuffled, ordered) {
		t.Fatalf("sorted = %v, want %v", shuffled, ordered)
	}
}

func TestVersionString(t *testing.T) {
	tests := []struct {
		v    Version
		want string
	}{
		{Version{1763839522123456, 42}, "1763839522123456:42"},
		{Version{0, 0}, "0:0"},
		{Version{-5, 7}, "-5:7"},
		{Version{math.MaxInt64, math.MinInt64}, "9223372036854775807:-9223372036854775808"},
	}
	for _, tt := range tests {
		if got := tt.v.String(); got != tt.want {
			t.Fatalf("String() = %q, want %q", got, tt.want)
		}
		got, err := ParseVersion(tt.want)
		if err != nil {
			t.Fatalf("ParseVersion(%q): %v", tt.want, err)
		}
		if got != tt.v {
			t.Fatalf("ParseVersion(%q) = %v, want %v", tt.want, got, tt.v)
		}
	}
}

func TestParseVersionErrors(t *testing.T) {
	for _, s := range []string{
		"", "1", "1:", ":2", "a:b", "1:b", "+1:2", "1:+2", "01:2", "1:02", "-0:1",
		"1:2:3", " 1:2", "1: 2", "1.5:2", "9223372036854775808:1", "1:0x10",
	} {
		if v, err := ParseVersion(s); err == nil {
			t.Errorf("ParseVersion(%q) = %v; want an error", s, v)
		}
	}
}

func TestMsgID(t *testing.T) {
	if got, want := MsgID("main", Version{1763839522123456, 42}), "main:1763839522123456:42"; got != want {
		t.Fatalf("MsgID = %q, want %q", got, want)
	}
	e := &Envelope{Source: "db-2", Epoch: 3, ID: 9}
	if got, want := MsgID(e.Source, e.Version()), "db-2:3:9"; got != want {
		t.Fatalf("MsgID = %q, want %q", got, want)
	}
}
