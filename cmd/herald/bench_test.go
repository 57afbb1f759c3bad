package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The tiny runs keep every scenario working end to end — real PostgreSQL,
// NATS and the bridge as processes of their own — in a few seconds each.
// They assert that numbers were reported and nothing was lost, never a
// timing: benchmarks do not fail builds.

func readBenchJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, v))
}

// TestBenchCaptureTiny keeps the capture benchmark working: a tiny run,
// numbers reported, none asserted.
func TestBenchCaptureTiny(t *testing.T) {
	out := filepath.Join(t.TempDir(), "capture.json")
	r := herald(t, "", "bench", "capture", "--clients", "2", "--duration", "1s", "--variants", "herald,herald+bridge,seed-notify", "--json", out)
	require.Equal(t, 0, r.code, r.stderr+r.stdout)
	var rep struct {
		Machine struct {
			NProc int `json:"nproc"`
		} `json:"machine"`
		NATS *struct {
			SyncInterval string `json:"sync_interval"`
		} `json:"nats"`
		Results []struct {
			Variant       string  `json:"variant"`
			Clients       int     `json:"clients"`
			TPS           float64 `json:"tps"`
			Published     int64   `json:"published"`
			BridgePeakMiB float64 `json:"bridge_peak_rss_mib"`
			Bridge        *struct {
				Published float64 `json:"published"`
			} `json:"bridge"`
			CPU struct {
				Machine float64 `json:"machine"`
			} `json:"cpu_percent_of_one_core"`
		} `json:"results"`
	}
	readBenchJSON(t, out, &rep)
	require.Positive(t, rep.Machine.NProc)
	require.NotNil(t, rep.NATS, "the NATS settings of the herald+bridge figure are recorded")
	require.Equal(t, "always", rep.NATS.SyncInterval)
	var names []string
	for _, res := range rep.Results {
		names = append(names, res.Variant)
		require.Equal(t, 2, res.Clients)
		require.Positive(t, res.TPS, "pgbench reported a rate for %s", res.Variant)
		require.Positive(t, res.CPU.Machine, "CPU use recorded for %s", res.Variant)
		if res.Variant == "herald+bridge" {
			require.Positive(t, res.Published, "the bridge published while pgbench wrote")
			require.Positive(t, res.BridgePeakMiB)
			require.NotNil(t, res.Bridge, "the bridge's metrics were read")
			require.Positive(t, res.Bridge.Published)
		}
	}
	require.Equal(t, []string{"plain", "herald", "herald+bridge", "seed-notify"}, names)
	require.Contains(t, r.stdout, "herald+bridge")
}

func TestBenchDrainTiny(t *testing.T) {
	out := filepath.Join(t.TempDir(), "drain.json")
	r := herald(t, "", "bench", "drain", "--rows", "3000", "--raw-fast-rows", "500", "--json", out)
	require.Equal(t, 0, r.code, r.stderr+r.stdout)
	var rep drainReport
	readBenchJSON(t, out, &rep)
	require.EqualValues(t, 3000, rep.Rows)
	require.EqualValues(t, 3000, rep.Raw.Msgs, "the raw publisher sent every change of the backlog")
	require.Positive(t, rep.Raw.Rate)
	require.Positive(t, rep.Bridge.Rate)
	require.Positive(t, rep.Bridge.PeakRSSMiB)
	require.Positive(t, rep.Ratio)
	require.Zero(t, rep.Bridge.LeftInLog, "the bridge deleted everything it published")
	require.Equal(t, "always", rep.NATS.SyncInterval)
	require.NotNil(t, rep.RawFast)
	require.EqualValues(t, 500, rep.RawFast.Msgs)
	require.NotNil(t, rep.Bridge.Stats)
	require.EqualValues(t, 3000, rep.Bridge.Stats.Published, "the bridge's own count agrees")
	require.Contains(t, r.stdout, "bridge / raw")
}

func TestBenchLatencyTiny(t *testing.T) {
	out := filepath.Join(t.TempDir(), "latency.json")
	natsProf := filepath.Join(t.TempDir(), "nats.prof")
	r := herald(t, "", "bench", "latency", "--rates", "300", "--duration", "2s", "--warmup", "500ms", "--keys", "64", "--writers", "4",
		"--cpuprofile-nats", natsProf, "--json", out)
	require.Equal(t, 0, r.code, r.stderr+r.stdout)
	prof, err := os.Stat(natsProf)
	require.NoError(t, err, "the NATS process wrote its CPU profile")
	require.Positive(t, prof.Size())
	var rep latencyReport
	readBenchJSON(t, out, &rep)
	require.Len(t, rep.Phases, 2, "the rate twice: the bridge alone, then with filesync")
	require.False(t, rep.Phases[0].Filesync)
	require.True(t, rep.Phases[1].Filesync)
	for _, ph := range rep.Phases {
		require.Positive(t, ph.Measured)
		want := 2
		if ph.Filesync {
			want = int(numPaths)
		}
		require.Len(t, ph.Paths, want)
		for name, s := range ph.Paths {
			require.Equal(t, ph.Measured, s.Count+s.Missing, "%s at %.0f/s", name, ph.Rate)
			require.Zero(t, s.Missing, "every measured change reached %s", name)
			require.LessOrEqual(t, s.P50, s.Max)
		}
		require.NotNil(t, ph.Bridge)
		require.Positive(t, ph.Bridge.Published, "the bridge's metrics were read")
	}
	require.Positive(t, rep.BridgePeakMiB)
	for _, title := range probePathTitles {
		require.Contains(t, r.stdout, title)
	}
}

func TestBenchSustainedTiny(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "sustained.json")
	r := herald(t, "", "bench", "sustained", "--rate", "200", "--duration", "2s", "--sample", "200ms", "--window", "500ms", "--keys", "64", "--writers", "4", "--json", out)
	require.Equal(t, 0, r.code, r.stderr+r.stdout)
	var rep sustainedReport
	readBenchJSON(t, out, &rep)
	require.NotEmpty(t, rep.Samples)
	require.Len(t, rep.Windows, 4)
	require.Positive(t, rep.BridgePeakMiB)
	require.True(t, rep.Filesync)
	require.Zero(t, rep.Paths["file"].Missing)
	require.EqualValues(t, 400, rep.Paths["file"].Count, "every change written to its file (itself or a newer one of its key)")
	last := rep.Samples[len(rep.Samples)-1]
	require.Positive(t, last.Committed)

	// The plot command draws both scenarios' JSON.
	lat := filepath.Join(dir, "latency.json")
	b, err := json.Marshal(syntheticLatency())
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(lat, b, 0o644))
	plots := filepath.Join(dir, "plots")
	r = herald(t, "", "bench", "plot", "--latency", lat, "--sustained", out, "--out", plots)
	require.Equal(t, 0, r.code, r.stderr+r.stdout)
	for _, f := range []string{"latency.svg", "sustained.svg"} {
		svg, err := os.ReadFile(filepath.Join(plots, f))
		require.NoError(t, err)
		requireSVG(t, svg)
	}
}

func TestBenchUsage(t *testing.T) {
	r := herald(t, "", "bench", "-h")
	require.Equal(t, 0, r.code)
	for _, s := range []string{"capture", "drain", "latency", "sustained", "plot"} {
		require.Contains(t, r.stdout, s)
	}
	require.NotContains(t, r.stdout, "nats-server", "the rig's own subcommands stay hidden")
	for _, args := range [][]string{
		{"bench", "latency", "--rates", "fast"},
		{"bench", "latency", "--filesync", "maybe"},
		{"bench", "sustained", "--filesync", "both"},
		{"bench", "capture", "--bridge-small-batch", "2000"},
		{"bench", "latency", "--bridge-in-flight", "0"},
		{"bench", "sustained", "--bridge-poll-gather", "5s"},
		{"bench", "latency", "--bridge-gate-queue-waiters", "0"},
		{"bench", "latency", "--bridge-gate-queue-for", "10ms"},
		{"bench", "sustained", "--sync", "sometimes"},
		{"bench", "drain", "--rows", "0"},
		{"bench", "plot"},
		{"bench", "nosuch"},
	} {
		r := herald(t, "", args...)
		require.Equal(t, 2, r.code, "%v: %s", args, r.stdout)
		requireOneLineError(t, r, "herald bench")
	}
}

// requireSVG checks that b is well-formed XML with an svg root and some
// drawing in it.
func requireSVG(t *testing.T, b []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	elems := map[string]int{}
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, "well-formed SVG")
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			elems[se.Name.Local]++
		}
	}
	require.Equal(t, "svg", root)
	require.Positive(t, elems["text"])
	require.Positive(t, elems["line"])
}

func syntheticLatency() *latencyReport {
	rep := &latencyReport{reportHead: reportHead{Scenario: "latency", NATS: benchNATSSettings("always"), Machine: machineInfo{NProc: 2}}}
	for _, rate := range []float64{1000, 5000} {
		ph := latencyPhase{Rate: rate, Paths: map[string]latencyStats{}}
		for i, name := range probePathNames {
			f := float64(i+1) * rate / 1000
			ph.Paths[name] = latencyStats{Count: 10, P50: 0.3 * f, P90: 0.6 * f, P99: 1.2 * f, Max: 7 * f}
		}
		rep.Phases = append(rep.Phases, ph)
	}
	return rep
}

func TestPlotsAreSVG(t *testing.T) {
	requireSVG(t, []byte(plotLatency(syntheticLatency())))
	sus := &sustainedReport{reportHead: reportHead{NATS: benchNATSSettings("always")}, Rate: 2000, Duration: "30s"}
	for i := range 30 {
		sus.Samples = append(sus.Samples, sustainedSample{T: float64(i), BacklogRows: int64(i % 7), BacklogAge: float64(i % 5)})
	}
	for i := range 3 {
		sus.Windows = append(sus.Windows, sustainedWindow{T: float64(10 * i), Paths: map[string]latencyStats{
			"stream": {Count: 5, P50: 0.4, P99: 2}, "file": {Count: 5, P50: 1, P99: 4},
		}})
	}
	svg := plotSustained(sus)
	requireSVG(t, []byte(svg))
	require.Equal(t, 6, strings.Count(svg, "<polyline"), "p50 and p99 of two paths, backlog rows, backlog age")
}

func TestPercentile(t *testing.T) {
	ds := func(ms ...int) []time.Duration {
		var out []time.Duration
		for _, m := range ms {
			out = append(out, time.Duration(m)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ds(7), 50, 7 * time.Millisecond},
		{ds(7), 99, 7 * time.Millisecond},
		{ds(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ds(1, 2, 3, 4), 75, 3 * time.Millisecond},
		{ds(1, 2, 3, 4), 100, 4 * time.Millisecond},
		{ds(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
		{ds(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
	} {
		require.Equal(t, tc.want, percentile(tc.in, tc.p), "p%v of %v", tc.p, tc.in)
	}
	s := summarize(ds(5, 1, 3, 2, 4), 1, 2)
	require.Equal(t, latencyStats{Count: 5, Missing: 1, Early: 2, P50: 3, P90: 5, P99: 5, P999: 5, Max: 5, Mean: 3}, s)
}

func TestMsgSeq(t *testing.T) {
	for _, tc := range []struct {
		body string
		want int64
		ok   bool
	}{
		{`{"key":["h"],"new":{"value": {"pad": "x", "seq": 42}, "hostkey": "h"},"old":{"value": {"pad": "x", "seq": 7}}}`, 42, true},
		{`{"new":{"value":{"seq":3}},"old":null}`, 3, true},
		{`{"new":{"value":{"seq": 12345678901}}}`, 12345678901, true},
		{`{"new":{"value":{}},"old":{"value":{"seq":9}}}`, 0, false},
		{`{"old":{"value":{"seq":9}}}`, 0, false},
		{`{"new":{"value":{"seq":"9"}}}`, 0, false},
		{`{"new":{"value":{"seq": -1}}}`, 0, false},
		{``, 0, false},
	} {
		got, ok := msgSeq([]byte(tc.body))
		require.Equal(t, tc.ok, ok, tc.body)
		require.Equal(t, tc.want, got, tc.body)
	}
}

func FuzzMsgSeq(f *testing.F) {
	f.Add([]byte(`{"new":{"value":{"seq":3}},"old":null}`))
	f.Add([]byte(`"new":"seq":99999999999999999999`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, ok := msgSeq(b); ok && n < 0 {
			t.Fatalf("negative sequence %d from %q", n, b)
		}
	})
}

func TestParseEvent(t *testing.T) {
	for _, tc := range []struct {
		line    string
		kind    byte
		seq, at int64
		ok      bool
	}{
		{"h 12 1700000000000000000", 'h', 12, 1700000000000000000, true},
		{"f 0 5", 'f', 0, 5, true},
		{"x 1 2", 0, 0, 0, false},
		{"h 1", 0, 0, 0, false},
		{"h one 2", 0, 0, 0, false},
		{"ready", 0, 0, 0, false},
	} {
		kind, seq, at, ok := parseEvent([]byte(tc.line))
		require.Equal(t, tc.ok, ok, tc.line)
		if ok {
			require.Equal(t, tc.kind, kind)
			require.Equal(t, tc.seq, seq)
			require.Equal(t, tc.at, at)
		}
	}
}

func TestBridgeStats(t *testing.T) {
	s := parseBridgeStats(diffMetrics(map[string]float64{
		"herald_bridge_published_total":                    110,
		"herald_bridge_batches_total{kind=atomic}":         3,
		"herald_bridge_batches_total{kind=async}":          10,
		"herald_bridge_batch_size_sum":                     110,
		"herald_bridge_batch_size_count":                   13,
		"herald_bridge_publish_seconds{kind=atomic}_sum":   0.03,
		"herald_bridge_publish_seconds{kind=atomic}_count": 3,
		"herald_bridge_wakeups_total{reason=poll}":         7,
		"herald_bridge_notifications_covered_total":        4,
		"herald_bridge_gate_closes_total{reason=queue}":    2,
	}, map[string]float64{
		"herald_bridge_published_total":           10,
		"herald_bridge_batches_total{kind=async}": 5,
		"herald_bridge_batch_size_sum":            10,
		"herald_bridge_batch_size_count":          3,
	}))
	require.Equal(t, 100.0, s.Published)
	require.Equal(t, map[string]float64{"atomic": 3, "async": 5}, s.Batches)
	require.InDelta(t, 10, s.MeanBatch, 1e-9)
	require.InDelta(t, 10, s.MeanPublish["atomic"], 1e-9)
	require.Equal(t, map[string]float64{"poll": 7}, s.Wakeups)
	require.Equal(t, 4.0, s.Covered)
	require.Equal(t, map[string]float64{"queue": 2}, s.GateCloses)
	require.Contains(t, s.String(), "published 100")
}

func TestLogScaleTicks(t *testing.T) {
	s := logScale(0.3, 40, 0, 100)
	require.Equal(t, 0.1, s.lo)
	require.Equal(t, 100.0, s.hi)
	require.Equal(t, []float64{0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}, roundAll(s.ticks()))
	require.InDelta(t, 0, s.pos(0.1), 1e-9)
	require.InDelta(t, 100, s.pos(100), 1e-9)
	require.InDelta(t, 0, s.pos(0), 1e-9, "values below the axis sit on it")
	l := linScale(7, 0, 10)
	require.Equal(t, 8.0, l.hi)
	require.Equal(t, []float64{0, 2, 4, 6, 8}, roundAll(l.ticks()))
	l = linScale(600, 0, 10)
	require.Equal(t, 600.0, l.hi)
	require.Equal(t, []float64{0, 200, 400, 600}, roundAll(l.ticks()))
	l = linScale(99, 0, 10)
	require.Equal(t, 100.0, l.hi)
}

func roundAll(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int64(x*1000+0.5)) / 1000
	}
	return out
}
