package filesync_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/internal/natstest"
	"github.com/herald-cdc/herald/internal/testproc"
)

const table = "__cmdb"

// rig is one filesync instance: a Syncer and the consumer running it.
type rig struct {
	s   *filesync.Syncer
	run *ct.Running
	dir string
}

func (r *rig) stop() {
	r.run.Stop()
	_ = r.s.Close()
}

// startSync starts filesync on dir with the given configuration, as the
// main does: the Syncer fills in the consumer's filter and quiet period.
func startSync(t *testing.T, js jetstream.JetStream, fc filesync.Config, cc consumers.Config, opts ...consumers.Option) *rig {
	t.Helper()
	if fc.Table == "" {
		fc.Table = "public." + table
	}
	reg := prometheus.NewRegistry()
	s, err := filesync.New(fc, filesync.WithLogger(ct.Logger(t)), filesync.WithRegisterer(reg))
	if err != nil {
		t.Fatalf("filesync.New: %v", err)
	}
	if cc.Durable == "" {
		cc.Durable = filesync.DefaultDurable
	}
	if cc.Backoff == nil {
		cc.Backoff = []time.Duration{50 * time.Millisecond}
	}
	if cc.AckWait == 0 {
		cc.AckWait = 10 * time.Second
	}
	run := ct.Start(t, js, reg, s.ConsumerConfig(cc), s, opts...)
	run.WaitReady(t)
	r := &rig{s: s, run: run, dir: fc.Dir}
	t.Cleanup(r.stop)
	return r
}

func env(key string, id int64, op change.Op, value string) *change.Envelope {
	row := ""
	if op != change.OpDelete && op != change.OpTruncate {
		k, _ := json.Marshal(key)
		row = fmt.Sprintf(`{"hostkey":%s,"value":%s}`, k, value)
	}
	var k []string
	if op != change.OpTruncate {
		k = []string{key}
	}
	e := ct.Env(table, k, id, op, row)
	if op == change.OpDelete {
		e.Old = nil
	}
	return e
}

func hostFile(dir, key string) string { return filepath.Join(dir, key, "host_specific.json") }

// waitFile waits until the host's file holds want (+ newline); want ""
// waits until the file is gone.
func waitFile(t *testing.T, dir, key, want string) {
	t.Helper()
	testproc.Eventually(t, ct.Wait, func() string {
		b, err := os.ReadFile(hostFile(dir, key))
		if want == "" {
			if err == nil {
				return fmt.Sprintf("%s still exists with %q", key, b)
			}
			return ""
		}
		if err != nil {
			return err.Error()
		}
		if string(b) != want+"\n" {
			return fmt.Sprintf("%s holds %q, want %q", key, b, want+"\n")
		}
		return ""
	})
}

func readFile(t *testing.T, dir, key string) string {
	t.Helper()
	b, err := os.ReadFile(hostFile(dir, key))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

func xattr(t *testing.T, path, name string) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return string(buf[:n])
}

func newServer(t *testing.T, preset ct.Preset) (*natstest.Server, jetstream.JetStream) {
	srv := natstest.Start(t, natstest.Options{})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, preset)
	return srv, js
}

func TestInsertUpdateDeleteTruncateSnapshot(t *testing.T) {
	_, js := newServer(t, ct.State(1))
	dir := filepath.Join(t.TempDir(), "root")
	r := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{})

	exact := `{"big": 12345678901234567890.123456789, "list": [1, 2.50, "x"], "nested": {"k": null}}`
	ct.Publish(t, js,
		env("h1", 1, change.OpInsert, `{"a": 1}`),
		env("h2", 2, change.OpSnapshot, `{"b": true}`),
		env("h1", 3, change.OpUpdate, exact))
	waitFile(t, dir, "h1", exact)
	waitFile(t, dir, "h2", `{"b": true}`)

	fi, err := os.Stat(hostFile(dir, "h1"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want 0644", fi.Mode().Perm())
	}
	if v := xattr(t, hostFile(dir, "h1"), filesync.XattrVersion); v != "1:3" {
		t.Fatalf("version attribute %q, want 1:3", v)
	}
	if v := xattr(t, hostFile(dir, "h1"), filesync.XattrTable); v != "public.__cmdb" {
		t.Fatalf("table attribute %q", v)
	}

	// Delete: the file and its now-empty directory go.
	ct.Publish(t, js, env("h2", 4, change.OpDelete, ""))
	waitFile(t, dir, "h2", "")
	testproc.Eventually(t, ct.Wait, func() string {
		if _, err := os.Stat(filepath.Join(dir, "h2")); !errors.Is(err, os.ErrNotExist) {
			return fmt.Sprintf("directory of a deleted host left behind: %v", err)
		}
		return ""
	})

	// A file filesync did not write is not the table's: truncate keeps it.
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	ct.Publish(t, js, env("h3", 5, change.OpInsert, `{"c": 3}`))
	waitFile(t, dir, "h3", `{"c": 3}`)
	ct.Publish(t, js, env("", 6, change.OpTruncate, ""), env("h4", 7, change.OpInsert, `{"d": 4}`))
	waitFile(t, dir, "h4", `{"d": 4}`)
	waitFile(t, dir, "h1", "")
	waitFile(t, dir, "h3", "")
	if _, err := os.Stat(filepath.Join(dir, "README")); err != nil {
		t.Fatalf("truncate removed a file that is not the table's: %v", err)
	}
	testproc.Eventually(t, ct.Wait, ct.Settled(js, filesync.DefaultDurable))
	if got := r.run.Metric(t, "herald_consumer_dead_lettered_total"); got != 0 {
		t.Fatalf("%v dead letters", got)
	}
}

func TestIdenticalContentNotRewritten(t *testing.T) {
	_, js := newServer(t, ct.Log(time.Hour))
	dir := t.TempDir()
	r := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{})

	ct.Publish(t, js, env("h", 1, change.OpInsert, `{"a":1}`))
	waitFile(t, dir, "h", `{"a":1}`)
	before, err := os.Stat(hostFile(dir, "h"))
	if err != nil {
		t.Fatal(err)
	}

	ct.Publish(t, js, env("h", 2, change.OpUpdate, `{"a":1}`))
	r.run.WaitMetric(t, "herald_consumer_processed_total", 2)
	after, err := os.Stat(hostFile(dir, "h"))
	if err != nil {
		t.Fatal(err)
	}
	if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino || !before.ModTime().Equal(after.ModTime()) {
		t.Fatal("identical content was rewritten (inode or mtime changed)")
	}
	if got := r.run.Metric(t, "herald_filesync_files_written_total"); got != 1 {
		t.Fatalf("files written = %v, want 1", got)
	}
	if got := r.run.Metric(t, "herald_filesync_files_unchanged_total"); got != 1 {
		t.Fatalf("files unchanged = %v, want 1", got)
	}
	// The version still moved forward, so an older change cannot win.
	if v := xattr(t, hostFile(dir, "h"), filesync.XattrVersion); v != "1:2" {
		t.Fatalf("version attribute %q, want 1:2", v)
	}
}

func TestQuietPeriodOneWrite(t *testing.T) {
	_, js := newServer(t, ct.Log(time.Hour))
	dir := t.TempDir()
	clock := ct.NewClock()
	r := startSync(t, js, filesync.Config{Dir: dir, Quiet: 2 * time.Second}, consumers.Config{}, consumers.WithClock(clock))

	for i := int64(1); i <= 100; i++ {
		ct.Publish(t, js, env("h", i, change.OpUpdate, fmt.Sprintf(`{"n":%d}`, i)))
	}
	r.run.WaitMetric(t, "herald_consumer_held", 100)
	if _, err := os.Stat(hostFile(dir, "h")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file written inside the quiet period: %v", err)
	}
	clock.Advance(2 * time.Second)
	waitFile(t, dir, "h", `{"n":100}`)
	testproc.Eventually(t, ct.Wait, ct.Settled(js, filesync.DefaultDurable))
	if got := r.run.Metric(t, "herald_filesync_files_written_total"); got != 1 {
		t.Fatalf("files written = %v, want exactly 1", got)
	}
}

func TestOlderVersionNeverRollsBack(t *testing.T) {
	_, js := newServer(t, ct.Log(time.Hour))
	dir := t.TempDir()
	cc := consumers.Config{DeliverPolicy: consumers.DeliverAll}
	r := startSync(t, js, filesync.Config{Dir: dir}, cc)

	// Stream order v2, v1: v1 arrives after the newer version was applied,
	// as a redelivery would. (Published together, the two would be one
	// batch, where v1 is superseded before anything is applied.)
	ct.Publish(t, js, env("h", 2, change.OpUpdate, `{"v":2}`))
	waitFile(t, dir, "h", `{"v":2}`)
	ct.Publish(t, js, env("h", 1, change.OpUpdate, `{"v":1}`))
	r.run.WaitMetric(t, "herald_consumer_stale_skipped_total", 1)
	if got := readFile(t, dir, "h"); got != `{"v":2}` {
		t.Fatalf("file holds %s, want v2", got)
	}
	// Also a delete then an older insert: the key stays deleted.
	ct.Publish(t, js, env("g", 5, change.OpInsert, `{"g":5}`), env("g", 7, change.OpDelete, ""))
	testproc.Eventually(t, ct.Wait, ct.Settled(js, filesync.DefaultDurable))
	ct.Publish(t, js, env("g", 6, change.OpUpdate, `{"g":6}`))
	r.run.WaitMetric(t, "herald_consumer_stale_skipped_total", 2)
	waitFile(t, dir, "g", "")
	// And an insert older than a truncate.
	ct.Publish(t, js, env("", 20, change.OpTruncate, ""), env("z", 19, change.OpInsert, `{"z":19}`))
	r.run.WaitMetric(t, "herald_consumer_stale_skipped_total", 3)
	waitFile(t, dir, "h", "")
	r.stop()

	// A new process on the same root: its guard is on disk. Older
	// versions of every key are redelivered (a new durable replays the
	// whole stream) and none of them writes anything.
	for _, e := range []*change.Envelope{env("h", 2, change.OpUpdate, `{"v":2}`), env("g", 6, change.OpUpdate, `{"g":6}`), env("z", 19, change.OpInsert, `{"z":19}`)} {
		e.Source = "redelivered" // another message id: not deduplicated
		ct.Publish(t, js, e)
	}
	cc.Durable = "filesync-2"
	r2 := startSync(t, js, filesync.Config{Dir: dir}, cc)
	testproc.Eventually(t, ct.Wait, ct.Settled(js, "filesync-2"))
	if got := r2.run.Metric(t, "herald_filesync_files_written_total"); got != 0 {
		t.Fatalf("restarted filesync wrote %v files from older versions", got)
	}
	for _, k := range []string{"h", "g", "z"} {
		if got := readFile(t, dir, k); got != "" {
			t.Fatalf("%s resurrected with %s", k, got)
		}
	}
}

func TestStaleAcrossRestartSameDurable(t *testing.T) {
	_, js := newServer(t, ct.Log(time.Hour))
	dir := t.TempDir()
	r := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{})
	ct.Publish(t, js, env("h", 2, change.OpUpdate, `{"v":2}`))
	waitFile(t, dir, "h", `{"v":2}`)
	r.stop()

	ct.Publish(t, js, env("h", 1, change.OpUpdate, `{"v":1}`))
	r2 := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{})
	r2.run.WaitMetric(t, "herald_consumer_stale_skipped_total", 1)
	if got := readFile(t, dir, "h"); got != `{"v":2}` {
		t.Fatalf("file rolled back to %s after a restart", got)
	}
}

func TestKeysLimitOnlyWritesThoseKeys(t *testing.T) {
	_, js := newServer(t, ct.State(1))
	dir := t.TempDir()
	other := t.TempDir()
	// Another host's file, written by some other instance into a shared
	// root: a truncate seen by the A-only instance must leave it alone.
	rb := startSync(t, js, filesync.Config{Dir: other}, consumers.Config{Durable: "all"})
	r := startSync(t, js, filesync.Config{Dir: dir, Keys: []string{"A"}}, consumers.Config{Durable: "only-a"})

	ct.Publish(t, js,
		env("A", 1, change.OpInsert, `{"k":"a"}`),
		env("B", 2, change.OpInsert, `{"k":"b"}`),
		env("C", 3, change.OpInsert, `{"k":"c"}`))
	waitFile(t, dir, "A", `{"k":"a"}`)
	waitFile(t, other, "B", `{"k":"b"}`)
	waitFile(t, other, "C", `{"k":"c"}`)
	testproc.Eventually(t, ct.Wait, ct.Settled(js, "only-a"))
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{".herald-filesync", "A"}) {
		t.Fatalf("root holds %v, want only A (and the state directory)", names)
	}
	if got := r.run.Metric(t, "herald_consumer_processed_total"); got != 1 {
		t.Fatalf("the A-only instance received %v changes, want 1", got)
	}
	_ = rb

	// Files of other keys in its root are not its to truncate.
	if err := os.MkdirAll(filepath.Join(dir, "B"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(hostFile(other, "B"))
	if err := os.WriteFile(hostFile(dir, "B"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	copyXattrs(t, hostFile(other, "B"), hostFile(dir, "B"))
	ct.Publish(t, js, env("", 4, change.OpTruncate, ""))
	waitFile(t, dir, "A", "")
	if got := readFile(t, dir, "B"); got != `{"k":"b"}` {
		t.Fatalf("the A-only instance's truncate removed B's file")
	}
}

func copyXattrs(t *testing.T, from, to string) {
	t.Helper()
	for _, name := range []string{filesync.XattrTable, filesync.XattrKey, filesync.XattrVersion} {
		if err := unix.Setxattr(to, name, []byte(xattr(t, from, name)), 0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	_, js := newServer(t, ct.State(1))
	base := t.TempDir()
	dir := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	r := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{MaxDeliver: 2})
	// A symlink inside the root that points out of it.
	if err := os.Symlink(outside, filepath.Join(dir, "evil")); err != nil {
		t.Fatal(err)
	}

	marker := env("big", 9, change.OpUpdate, "")
	marker.New = nil
	marker.Marker = &change.Marker{Reason: change.MarkerTooLarge, Size: 5 << 20, Limit: 1 << 20}
	poison := []*change.Envelope{
		env("..", 1, change.OpInsert, `{"x":1}`),
		env(".", 2, change.OpInsert, `{"x":1}`),
		env("", 3, change.OpInsert, `{"x":1}`),
		env(".hidden", 4, change.OpInsert, `{"x":1}`),
		env("a/b", 5, change.OpInsert, `{"x":1}`),
		env("../../outside/pwn", 6, change.OpInsert, `{"x":1}`),
		env("nul\x00byte", 7, change.OpInsert, `{"x":1}`),
		env("notjson", 8, change.OpInsert, `"this is { not json"`),
		marker,
		env("evil", 10, change.OpInsert, `{"x":1}`),
	}
	ct.Publish(t, js, poison...)
	ct.PublishMsg(t, js, &nats.Msg{Subject: "herald.public.__cmdb.garbage", Data: []byte("\x00\x01 garbage")})
	for i := 0; i < 10; i++ {
		ct.Publish(t, js, env(fmt.Sprintf("good%d", i), int64(100+i), change.OpInsert, fmt.Sprintf(`{"i":%d}`, i)))
	}
	for i := 0; i < 10; i++ {
		waitFile(t, dir, fmt.Sprintf("good%d", i), fmt.Sprintf(`{"i":%d}`, i))
	}
	want := float64(len(poison) + 1)
	r.run.WaitMetric(t, "herald_consumer_dead_lettered_total", want)
	testproc.Eventually(t, ct.Wait, ct.Settled(js, filesync.DefaultDurable))

	reasons := map[string]string{}
	for _, m := range ct.DeadLetters(t, js) {
		reasons[m.Header.Get(consumers.HeaderDLQSubject)] = m.Header.Get(consumers.HeaderDLQReason)
	}
	for subj, want := range map[string]string{
		change.Subject("herald", "public", table, []string{".."}):      "key cannot be used",
		change.Subject("herald", "public", table, []string{"a/b"}):     "key cannot be used",
		change.Subject("herald", "public", table, []string{"notjson"}): "not a JSON value",
		change.Subject("herald", "public", table, []string{"big"}):     "too large",
		change.Subject("herald", "public", table, []string{"evil"}):    "failed 2 deliveries",
		"herald.public.__cmdb.garbage":                                 "malformed",
	} {
		if !strings.Contains(reasons[subj], want) {
			t.Errorf("dead letter of %s: reason %q, want it to mention %q", subj, reasons[subj], want)
		}
	}
	// Nothing was written outside the root, through the symlink or not.
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("files written outside the root: %v", entries)
	}
	if entries, _ := os.ReadDir(base); len(entries) != 2 {
		t.Fatalf("unexpected entries next to the root: %v", entries)
	}

	// Many dead letters are all kept.
	for i := 0; i < 50; i++ {
		ct.PublishMsg(t, js, &nats.Msg{Subject: fmt.Sprintf("herald.public.__cmdb.junk%d", i), Data: []byte("junk")})
	}
	r.run.WaitMetric(t, "herald_consumer_dead_lettered_total", want+50)
	testproc.Eventually(t, ct.Wait, func() string {
		if n := ct.CountDeadLetters(js); n != int(want)+50 {
			return fmt.Sprintf("%d dead letters stored, want %d", n, int(want)+50)
		}
		return ""
	})
}

func TestRebuildFromStreamAfterWipe(t *testing.T) {
	_, js := newServer(t, ct.State(1))
	dir := t.TempDir()
	const hosts = 30
	want := map[string]string{}
	id := int64(0)
	for v := 0; v < 3; v++ {
		for h := 0; h < hosts; h++ {
			id++
			key := fmt.Sprintf("SHA=%04d", h)
			want[key] = fmt.Sprintf(`{"host":%d,"v":%d}`, h, v)
			ct.Publish(t, js, env(key, id, change.OpUpdate, want[key]))
		}
	}
	r := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{})
	for k, v := range want {
		waitFile(t, dir, k, v)
	}
	r.stop()

	// Wipe everything: the files, the state, the durable.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(ctx, ct.StreamName, filesync.DefaultDurable); err != nil {
		t.Fatal(err)
	}
	r2 := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{})
	for k, v := range want {
		waitFile(t, dir, k, v)
	}
	testproc.Eventually(t, ct.Wait, ct.Settled(js, filesync.DefaultDurable))
	if got := r2.run.Metric(t, "herald_filesync_files_written_total"); got != hosts {
		t.Fatalf("rebuild wrote %v files, want %d (last message per subject only)", got, hosts)
	}
}

func TestConvergesAcrossServerRestart(t *testing.T) {
	srv := natstest.Start(t, natstest.Options{SyncAlways: true})
	js := srv.JetStream(t)
	ct.CreateStream(t, js, ct.State(1))
	dir := t.TempDir()
	startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{Workers: 4})

	const hosts = 20
	want := map[string]string{}
	var mu sync.Mutex
	publish := func(from, to int64) {
		for id := from; id <= to; id++ {
			key := fmt.Sprintf("h%02d", id%hosts)
			val := fmt.Sprintf(`{"id":%d}`, id)
			ct.Publish(t, js, env(key, id, change.OpUpdate, val))
			mu.Lock()
			want[key] = val
			mu.Unlock()
		}
	}
	publish(1, 60)
	srv.Restart(t) // stop and start: the consumer is mid-stream
	publish(61, 120)
	for k, v := range want {
		waitFile(t, dir, k, v)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	if _, err := filesync.New(filesync.Config{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Fatalf("New without Dir = %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := filesync.New(filesync.Config{Dir: file}); err == nil {
		t.Fatal("New accepted a regular file as its root")
	}
}
