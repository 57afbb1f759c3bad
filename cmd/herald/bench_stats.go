package main

import (
	"bytes"
	"slices"
	"strconv"
	"time"
)

// latencyStats summarises one latency path. Durations are milliseconds.
type latencyStats struct {
	Count   int `json:"count"`
	Missing int `json:"missing"` // measured changes that never arrived on this path
	Early   int `json:"early"`   // arrived before the writer saw COMMIT return (counted as 0)
	// Superseded changes were dropped from the stream (the state preset
	// keeps the last message per subject) before this path read them; their
	// latency is that of the newer change of the same key that arrived.
	Superseded int     `json:"superseded"`
	P50        float64 `json:"p50_ms"`
	P90        float64 `json:"p90_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	Max        float64 `json:"max_ms"`
	Mean       float64 `json:"mean_ms"`
}

// percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of
// sorted, or 0 for an empty slice.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarize sorts ds in place and summarises it.
func summarize(ds []time.Duration, missing, early int) latencyStats {
	slices.Sort(ds)
	s := latencyStats{Count: len(ds), Missing: missing, Early: early}
	if len(ds) == 0 {
		return s
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	s.P50 = ms(percentile(ds, 50))
	s.P90 = ms(percentile(ds, 90))
	s.P99 = ms(percentile(ds, 99))
	s.P999 = ms(percentile(ds, 99.9))
	s.Max = ms(ds[len(ds)-1])
	s.Mean = ms(sum / time.Duration(len(ds)))
	return s
}

// msgSeq finds the sequence number of the new row in a message body: the
// envelope holds the old row too, after the new one, with an older number.
func msgSeq(body []byte) (int64, bool) {
	i := bytes.Index(body, []byte(`"new":`))
	if i < 0 {
		return 0, false
	}
	body = body[i:]
	if j := bytes.Index(body, []byte(`"old":`)); j >= 0 {
		body = body[:j]
	}
	return parseSeq(body)
}

// parseSeq finds the benchmark's sequence number in a change: the number
// after the last `"seq":` in the JSON (jsonb renders `"seq": 12`).
func parseSeq(b []byte) (int64, bool) {
	const tag = `"seq":`
	i := bytes.LastIndex(b, []byte(tag))
	if i < 0 {
		return 0, false
	}
	j := i + len(tag)
	for j < len(b) && (b[j] == ' ' || b[j] == '\t' || b[j] == '\n' || b[j] == '\r') {
		j++
	}
	k := j
	for k < len(b) && b[k] >= '0' && b[k] <= '9' {
		k++
	}
	if k == j || k-j > 18 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(b[j:k]), 10, 64)
	return n, err == nil
}
