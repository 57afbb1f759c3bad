package consumers

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestSplitTable(t *testing.T) {
	for in, want := range map[string][2]string{
		"public.__cmdb": {"public", "__cmdb"},
		"__cmdb":        {"public", "__cmdb"},
		"cf.hosts.v2":   {"cf", "hosts.v2"},
	} {
		s, tb, err := SplitTable(in)
		require.NoError(t, err, in)
		require.Equal(t, want, [2]string{s, tb}, in)
	}
	for _, bad := range []string{"", ".t", "s."} {
		_, _, err := SplitTable(bad)
		require.Error(t, err, bad)
	}
}

func TestTableCounterSharedAcrossConsumers(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := TableCounter(reg, "herald_test_things_total", "Things.", "public.a")
	require.NoError(t, err)
	b, err := TableCounter(reg, "herald_test_things_total", "Things.", "public.b")
	require.NoError(t, err, "a second consumer in the process reuses the vector")
	a.Inc()
	b.Add(2)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	require.Len(t, mfs[0].GetMetric(), 2)
	_, err = TableCounter(reg, "herald_test_things_total", "Other help.", "public.c")
	require.Error(t, err, "a different collector under the same name is refused")
}
