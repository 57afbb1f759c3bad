package bridge

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/herald-cdc/herald/change"
)

// TestCanFly: a batch joins the flights in the air only when it shares no
// subject with them, holds no truncate, the bridge is not recovering and
// the limit for the gate's state is not reached.
func TestCanFly(t *testing.T) {
	msg := func(subject string, op change.Op) outMsg {
		return outMsg{msg: &nats.Msg{Subject: subject}, op: op}
	}
	inAir := func(subjects ...string) *flight {
		f := &flight{subjects: map[string]struct{}{}, done: make(chan struct{})}
		for _, s := range subjects {
			f.subjects[s] = struct{}{}
		}
		return f
	}
	tests := []struct {
		name       string
		gateOpen   bool
		recovering bool
		flights    []*flight
		batch      []outMsg
		want       bool
	}{
		{"nothing in the air", false, false, nil, []outMsg{msg("a", change.OpUpdate)}, true},
		{"disjoint, gate open", true, false, []*flight{inAir("a")}, []outMsg{msg("b", change.OpUpdate)}, true},
		{"shared subject", true, false, []*flight{inAir("a"), inAir("b")}, []outMsg{msg("c", change.OpInsert), msg("b", change.OpUpdate)}, false},
		{"truncate waits for everything older", true, false, []*flight{inAir("a")}, []outMsg{msg("t", change.OpTruncate)}, false},
		{"recovering", true, true, []*flight{inAir("a")}, []outMsg{msg("b", change.OpUpdate)}, false},
		{"limit reached", true, false, []*flight{inAir("a"), inAir("b")}, []outMsg{msg("c", change.OpUpdate)}, false},
		{"polling: one at a time", false, false, []*flight{inAir("a")}, []outMsg{msg("b", change.OpUpdate)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &drainer{cfg: Config{InFlight: 2}, gateOpen: tt.gateOpen, recovering: tt.recovering, flights: tt.flights}
			require.Equal(t, tt.want, d.canFly(tt.batch))
		})
	}
}

func TestIDRanges(t *testing.T) {
	for _, tt := range []struct {
		ids  []int64
		want string
	}{
		{nil, "{}"},
		{[]int64{7}, "{[7,8)}"},
		{[]int64{5, 3, 4}, "{[3,6)}"},
		{[]int64{1, 2, 4, 9, 10, 11}, "{[1,3),[4,5),[9,12)}"},
		{[]int64{2, 2, 3}, "{[2,4)}"},
	} {
		require.Equal(t, tt.want, idRanges(tt.ids), "%v", tt.ids)
	}
}
