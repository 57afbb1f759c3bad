package filesync_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers/filesync"
)

// BenchmarkHandleBatch measures one group commit of 64 changes of distinct
// keys, over 1,000 keys in turn (as herald bench latency writes them), on
// the file system of TMPDIR. Each change has new content, so each is a new
// file: what a group commit costs in system calls and device flushes.
func BenchmarkHandleBatch(b *testing.B) {
	s, err := filesync.New(filesync.Config{Dir: b.TempDir(), Table: "public." + table})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	const keys, group = 1000, 64
	pad := strings.Repeat("x", 200)
	id := int64(0)
	next := func() []*change.Envelope {
		batch := make([]*change.Envelope, group)
		for i := range batch {
			id++
			batch[i] = env(fmt.Sprintf("host%04d", id%keys), id, change.OpUpdate, fmt.Sprintf(`{"id":%d,"pad":%q}`, id, pad))
		}
		return batch
	}
	for range keys / group {
		_ = s.HandleBatch(context.Background(), next())
	}
	b.ResetTimer()
	for b.Loop() {
		for i, err := range s.HandleBatch(context.Background(), next()) {
			if err != nil {
				b.Fatalf("change %d: %v", i, err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*group), "µs/change")
}
