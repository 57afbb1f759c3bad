package filesync_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-cdc/herald/change"
	"github.com/herald-cdc/herald/consumers"
	"github.com/herald-cdc/herald/consumers/filesync"
	ct "github.com/herald-cdc/herald/consumers/internal/consumertest"
	"github.com/herald-cdc/herald/internal/testproc"
)

// newSyncer opens a Syncer on dir without a consumer: the tests below call
// it the way the runtime does, in the order they choose.
func newSyncer(t *testing.T, dir string) *filesync.Syncer {
	t.Helper()
	s, err := filesync.New(filesync.Config{Dir: dir, Table: "public." + table}, filesync.WithLogger(ct.Logger(t)))
	if err != nil {
		t.Fatalf("filesync.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// apply is what the runtime does with one change: the guard, then the
// handler. It reports whether the handler was called.
func apply(t *testing.T, s *filesync.Syncer, e *change.Envelope) bool {
	t.Helper()
	v, ok, err := s.Applied(context.Background(), e)
	if err != nil {
		t.Fatalf("Applied(%s %d): %v", e.Op, e.ID, err)
	}
	if ok && !v.Less(e.Version()) {
		return false
	}
	if err := s.Handle(context.Background(), e); err != nil {
		t.Fatalf("Handle(%s %d): %v", e.Op, e.ID, err)
	}
	return true
}

func handle(t *testing.T, s *filesync.Syncer, e *change.Envelope) {
	t.Helper()
	if err := s.Handle(context.Background(), e); err != nil {
		t.Fatalf("Handle(%s %d): %v", e.Op, e.ID, err)
	}
}

func applied(t *testing.T, s *filesync.Syncer, e *change.Envelope) string {
	t.Helper()
	v, ok, err := s.Applied(context.Background(), e)
	if err != nil {
		t.Fatalf("Applied: %v", err)
	}
	if !ok {
		return "none"
	}
	return v.String()
}

// noTemps fails if a temporary file is left anywhere under dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".herald-tmp-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func TestHandleBatchWritesTheGroupAndReportsEachChange(t *testing.T) {
	dir := t.TempDir()
	s := newSyncer(t, dir)
	// In the way: a directory where a file goes (permanent), a regular file
	// where a directory goes (retryable: someone may fix it).
	if err := os.MkdirAll(hostFile(dir, "isdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "blocked"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	handle(t, s, env("same", 1, change.OpInsert, `{"same":true}`))
	before, err := os.Stat(hostFile(dir, "same"))
	if err != nil {
		t.Fatal(err)
	}

	batch := []*change.Envelope{
		env("good1", 10, change.OpInsert, `{"g":1}`),
		env("bad", 11, change.OpInsert, `"not { json"`),
		env("isdir", 12, change.OpInsert, `{"d":1}`),
		env("blocked", 13, change.OpInsert, `{"b":1}`),
		env("same", 14, change.OpUpdate, `{"same":true}`),
		env("good2", 15, change.OpSnapshot, `{"g":2}`),
		env("gone", 16, change.OpDelete, ""),
		env("../up", 17, change.OpInsert, `{"u":1}`),
	}
	errs := s.HandleBatch(context.Background(), batch)
	if len(errs) != len(batch) {
		t.Fatalf("%d results for %d changes", len(errs), len(batch))
	}
	for i, want := range []struct {
		err       bool
		permanent bool
	}{{}, {true, true}, {true, true}, {true, false}, {}, {}, {}, {true, true}} {
		e := batch[i]
		switch {
		case !want.err && errs[i] != nil:
			t.Errorf("%s: %v, want applied", e.Key[0], errs[i])
		case want.err && errs[i] == nil:
			t.Errorf("%s: applied, want an error", e.Key[0])
		case want.err && consumers.IsPermanent(errs[i]) != want.permanent:
			t.Errorf("%s: %v: permanent = %v, want %v", e.Key[0], errs[i], !want.permanent, want.permanent)
		}
	}
	if got := readFile(t, dir, "good1"); got != `{"g":1}` {
		t.Fatalf("good1 holds %q", got)
	}
	if got := readFile(t, dir, "good2"); got != `{"g":2}` {
		t.Fatalf("good2 holds %q", got)
	}
	if v := xattr(t, hostFile(dir, "good2"), filesync.XattrVersion); v != "1:15" {
		t.Fatalf("good2 version %q, want 1:15", v)
	}
	after, err := os.Stat(hostFile(dir, "same"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
		t.Fatal("identical content was rewritten inside a batch")
	}
	if v := xattr(t, hostFile(dir, "same"), filesync.XattrVersion); v != "1:14" {
		t.Fatalf("same version %q, want 1:14 (the version moves even when the bytes do not)", v)
	}
	if v := applied(t, s, env("gone", 1, change.OpInsert, `{}`)); v != "1:16" {
		t.Fatalf("the delete in the batch left version %s, want a tombstone at 1:16", v)
	}
	noTemps(t, dir)

	// Once the obstacle is gone, the retried change lands.
	if err := os.Remove(filepath.Join(dir, "blocked")); err != nil {
		t.Fatal(err)
	}
	if !apply(t, s, batch[3]) || readFile(t, dir, "blocked") != `{"b":1}` {
		t.Fatal("the retried change did not land")
	}
}

func TestCachedVersionNeverLetsAnOlderOneWin(t *testing.T) {
	dir := t.TempDir()
	s := newSyncer(t, dir)

	handle(t, s, env("h", 5, change.OpUpdate, `{"v":5}`))
	if v := applied(t, s, env("h", 3, change.OpUpdate, `{"v":3}`)); v != "1:5" {
		t.Fatalf("Applied = %s after writing 1:5", v)
	}
	// A redelivered older version that reaches the handler (no guard, or
	// a guard that looked before the newer one was written) changes
	// nothing: the commit checks again.
	handle(t, s, env("h", 3, change.OpUpdate, `{"v":3}`))
	handle(t, s, env("h", 5, change.OpUpdate, `{"v":"five again"}`))
	if got := readFile(t, dir, "h"); got != `{"v":5}` {
		t.Fatalf("file holds %s, want v5", got)
	}
	// Delete, then older changes of the key: it stays deleted.
	handle(t, s, env("h", 7, change.OpDelete, ""))
	handle(t, s, env("h", 6, change.OpUpdate, `{"v":6}`))
	handle(t, s, env("h", 4, change.OpDelete, ""))
	if got := readFile(t, dir, "h"); got != "" {
		t.Fatalf("deleted key came back with %s", got)
	}
	// A newer insert after the delete: written, and its tombstone goes.
	handle(t, s, env("h", 8, change.OpInsert, `{"v":8}`))
	if got := readFile(t, dir, "h"); got != `{"v":8}` {
		t.Fatalf("file holds %q, want v8", got)
	}
	tombs, err := os.ReadDir(filepath.Join(dir, ".herald-filesync", "public.__cmdb", "tombstones"))
	if err != nil || len(tombs) != 0 {
		t.Fatalf("tombstones left after the key came back: %v (%v)", tombs, err)
	}

	// Truncate: files older than it go, their directories too, and nothing
	// older is written again, although the key's directory was held open.
	handle(t, s, env("", 10, change.OpTruncate, ""))
	if _, err := os.Stat(filepath.Join(dir, "h")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("truncate left %v", err)
	}
	if v := applied(t, s, env("h", 9, change.OpUpdate, `{}`)); v != "1:10" {
		t.Fatalf("Applied = %s after the truncate, want the floor 1:10", v)
	}
	handle(t, s, env("h", 9, change.OpUpdate, `{"v":9}`))
	if got := readFile(t, dir, "h"); got != "" {
		t.Fatalf("a change older than the truncate wrote %s", got)
	}
	handle(t, s, env("h", 11, change.OpUpdate, `{"v":11}`))
	if got := readFile(t, dir, "h"); got != `{"v":11}` {
		t.Fatalf("file holds %q after the truncate, want v11", got)
	}
	noTemps(t, dir)
}

func TestWarmRootAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s1 := newSyncer(t, dir)
	handle(t, s1, env("h", 5, change.OpUpdate, `{"v":5}`))
	handle(t, s1, env("g", 7, change.OpDelete, ""))
	handle(t, s1, env("", 3, change.OpTruncate, ""))
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	// A new process knows nothing in memory: the disk answers.
	s2 := newSyncer(t, dir)
	for _, c := range []struct {
		e    *change.Envelope
		want string
	}{
		{env("h", 4, change.OpUpdate, `{"v":4}`), "1:5"},
		{env("g", 6, change.OpInsert, `{"g":6}`), "1:7"},
		{env("z", 2, change.OpInsert, `{"z":2}`), "1:3"},
	} {
		if got := applied(t, s2, c.e); got != c.want {
			t.Fatalf("Applied(%s) = %s after a restart, want %s", c.e.Key[0], got, c.want)
		}
		if apply(t, s2, c.e) {
			t.Fatalf("%s %d applied after a restart", c.e.Key[0], c.e.ID)
		}
		// Even straight to the handler.
		handle(t, s2, c.e)
	}
	if readFile(t, dir, "h") != `{"v":5}` || readFile(t, dir, "g") != "" || readFile(t, dir, "z") != "" {
		t.Fatal("an older version won after a restart")
	}
	if !apply(t, s2, env("h", 6, change.OpUpdate, `{"v":6}`)) || readFile(t, dir, "h") != `{"v":6}` {
		t.Fatal("a newer version was not applied after a restart")
	}
}

// Two processes sharing a root (modelled by two Syncers, each with its own
// lock file descriptor and memory): what one writes, the other's memory does
// not know, and still never lets an older version win.
func TestSharedRootSeesTheOtherProcess(t *testing.T) {
	dir := t.TempDir()
	a, b := newSyncer(t, dir), newSyncer(t, dir)

	handle(t, a, env("h", 5, change.OpUpdate, `{"v":5}`)) // a remembers 1:5
	handle(t, b, env("h", 7, change.OpUpdate, `{"v":7}`))
	handle(t, a, env("h", 6, change.OpUpdate, `{"v":6}`)) // a's memory says 1:5; the disk says 1:7
	if got := readFile(t, dir, "h"); got != `{"v":7}` {
		t.Fatalf("file holds %s: an older version overwrote the other process's newer one", got)
	}
	if v := applied(t, a, env("h", 6, change.OpUpdate, `{}`)); v != "1:7" {
		t.Fatalf("a's Applied = %s once it saw b's commit, want 1:7", v)
	}

	handle(t, b, env("h", 9, change.OpDelete, ""))
	handle(t, a, env("h", 8, change.OpUpdate, `{"v":8}`))
	if _, err := os.Stat(filepath.Join(dir, "h")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key deleted by the other process came back: %v", err)
	}
	handle(t, a, env("h", 10, change.OpInsert, `{"v":10}`))
	if got := readFile(t, dir, "h"); got != `{"v":10}` {
		t.Fatalf("file holds %q, want v10", got)
	}

	// The other process removes a directory this one holds open.
	handle(t, a, env("x", 12, change.OpInsert, `{"x":12}`))
	handle(t, b, env("x", 13, change.OpDelete, ""))
	handle(t, a, env("x", 14, change.OpInsert, `{"x":14}`))
	if got := readFile(t, dir, "x"); got != `{"x":14}` {
		t.Fatalf("file holds %q, want x14", got)
	}

	handle(t, a, env("k", 11, change.OpInsert, `{"k":11}`))
	handle(t, b, env("", 20, change.OpTruncate, ""))
	handle(t, a, env("k", 15, change.OpUpdate, `{"k":15}`))
	if got := readFile(t, dir, "k"); got != "" {
		t.Fatalf("a change older than the other process's truncate wrote %s", got)
	}
	noTemps(t, dir)
}

// Through the runtime: many versions of many keys, older ones redelivered
// after newer ones, applied in batches by two workers; each file ends with
// its key's newest version and every message is acked.
func TestBatchesThroughTheRuntimeKeepTheNewest(t *testing.T) {
	_, js := newServer(t, ct.Log(time.Hour))
	dir := t.TempDir()
	const keys, versions = 40, 4
	var envs []*change.Envelope
	id := int64(0)
	for v := 0; v < versions; v++ {
		for k := 0; k < keys; k++ {
			id++
			envs = append(envs, env(fmt.Sprintf("k%02d", k), id, change.OpUpdate, fmt.Sprintf(`{"id":%d}`, id)))
		}
	}
	newest := map[string]string{}
	for _, e := range envs {
		newest[e.Key[0]] = fmt.Sprintf(`{"id":%d}`, e.ID)
	}
	// Redeliveries: some older versions again, after everything.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 30 {
		e := *envs[rng.IntN(len(envs)-keys)]
		e.Source = "redelivered"
		envs = append(envs, &e)
	}
	ct.Publish(t, js, envs...)

	r := startSync(t, js, filesync.Config{Dir: dir}, consumers.Config{Workers: 2, DeliverPolicy: consumers.DeliverAll})
	for k, v := range newest {
		waitFile(t, dir, k, v)
	}
	testproc.Eventually(t, ct.Wait, ct.Settled(js, filesync.DefaultDurable))
	batches := r.run.Metric(t, "herald_consumer_batch_size")
	if batches == 0 {
		t.Fatal("the runtime never called HandleBatch")
	}
	t.Logf("%v changes applied in %v batches", r.run.Metric(t, "herald_consumer_processed_total"), batches)
	if n := r.run.Metric(t, "herald_consumer_dead_lettered_total"); n != 0 {
		t.Fatalf("%v dead letters", n)
	}
	noTemps(t, dir)
}

// The fsyncs of a group run concurrently: every temporary file and every
// directory is still synced before its change is reported, and a failed
// fsync fails that change alone, which is then retried and lands.
func TestGroupSyncFailureFailsOnlyItsChange(t *testing.T) {
	dir := t.TempDir()
	s := newSyncer(t, dir)
	handle(t, s, env("same", 1, change.OpInsert, `{"same":true}`))

	var mu sync.Mutex
	synced := map[string]int{}
	failing := true
	injected := errors.New("injected fsync failure")
	filesync.SetFsync(s, func(f *os.File) error {
		// Files are named relative to the root, directories may not be.
		name := strings.TrimPrefix(f.Name(), dir+string(os.PathSeparator))
		mu.Lock()
		fail := failing
		mu.Unlock()
		switch {
		case fail && strings.HasPrefix(name, "k03/"+".herald-tmp-"): // a temporary file
		case fail && name == "k07": // a directory, after its rename
		case fail && name == "same/host_specific.json": // a file whose version moves
		default:
			if err := f.Sync(); err != nil {
				return err
			}
			mu.Lock()
			synced[name]++
			mu.Unlock()
			return nil
		}
		return injected
	})

	var batch []*change.Envelope
	for k := range 20 {
		batch = append(batch, env(fmt.Sprintf("k%02d", k), int64(10+k), change.OpInsert, fmt.Sprintf(`{"k":%d}`, k)))
	}
	batch = append(batch, env("same", 40, change.OpUpdate, `{"same":true}`))
	errs := s.HandleBatch(context.Background(), batch)
	failed := map[string]bool{"k03": true, "k07": true, "same": true}
	for i, e := range batch {
		key := e.Key[0]
		if failed[key] {
			if !errors.Is(errs[i], injected) {
				t.Errorf("%s: %v, want the injected fsync failure", key, errs[i])
			}
			if v := applied(t, s, e); v == e.Version().String() {
				t.Errorf("%s: Applied = %s although its fsync failed: the retry would be skipped", key, v)
			}
			continue
		}
		if errs[i] != nil {
			t.Errorf("%s: %v, want applied", key, errs[i])
			continue
		}
		if got := readFile(t, dir, key); got != fmt.Sprintf(`{"k":%d}`, i) {
			t.Errorf("%s holds %q", key, got)
		}
		mu.Lock()
		dirSyncs, tempSyncs := synced[key], 0
		for name, n := range synced {
			if strings.HasPrefix(name, key+"/.herald-tmp-") {
				tempSyncs += n
			}
		}
		mu.Unlock()
		if dirSyncs != 1 || tempSyncs != 1 {
			t.Errorf("%s: its directory synced %d times and its temporary file %d times, want once each", key, dirSyncs, tempSyncs)
		}
	}
	if got := readFile(t, dir, "k03"); got != "" {
		t.Errorf("k03, whose temporary file failed to sync, was renamed into place: %q", got)
	}
	noTemps(t, dir)

	// The failed changes are retried (the runtime redelivers them) and land.
	mu.Lock()
	failing = false
	clear(synced)
	mu.Unlock()
	var retry []*change.Envelope
	for i, e := range batch {
		if errs[i] != nil {
			retry = append(retry, e)
		}
	}
	for i, err := range s.HandleBatch(context.Background(), retry) {
		if err != nil {
			t.Fatalf("retrying %s: %v", retry[i].Key[0], err)
		}
	}
	for key, want := range map[string]string{"k03": `{"k":3}`, "k07": `{"k":7}`} {
		if got := readFile(t, dir, key); got != want {
			t.Errorf("%s holds %q after the retry, want %s", key, got, want)
		}
	}
	// k07's file already holds its bytes: only its version moves, but its
	// directory, whose rename was never made durable, is synced too.
	for _, p := range []string{"k03", "k07", "k07/host_specific.json", "same/host_specific.json"} {
		if synced[p] == 0 {
			t.Errorf("the retry did not sync %s", p)
		}
	}
	if v := xattr(t, hostFile(dir, "same"), filesync.XattrVersion); v != "1:40" {
		t.Errorf("same: version %q after the retry, want 1:40", v)
	}
	if v := applied(t, s, batch[7]); v != "1:17" {
		t.Errorf("k07: Applied = %s after the retry, want 1:17", v)
	}
	noTemps(t, dir)
}

// A group commit holds each file it replaces open until the replacement is
// renamed in (so that freeing it happens outside the commit lock), and
// then lets it go: no descriptor is left behind, and a reader holding the
// old file open keeps reading the old content from the old inode.
func TestReplacedFilesAreReleased(t *testing.T) {
	dir := t.TempDir()
	s := newSyncer(t, dir)
	group := func(round int) {
		t.Helper()
		var batch []*change.Envelope
		for k := range 10 {
			batch = append(batch, env(fmt.Sprintf("r%d", k), int64(100*round+k), change.OpUpdate, fmt.Sprintf(`{"round":%d}`, round)))
		}
		for i, err := range s.HandleBatch(context.Background(), batch) {
			if err != nil {
				t.Fatalf("round %d, %s: %v", round, batch[i].Key[0], err)
			}
		}
	}
	openFDs := func() int {
		t.Helper()
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(fds)
	}
	group(1) // the directories are now open and kept
	reader, err := os.Open(hostFile(dir, "r0"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	before := openFDs()
	for round := 2; round <= 4; round++ {
		group(round)
	}
	if after := openFDs(); after != before {
		t.Fatalf("%d descriptors open after three groups, %d before", after, before)
	}
	old, err := io.ReadAll(reader)
	if err != nil {
		t.Fatal(err)
	}
	if string(old) != "{\"round\":1}\n" {
		t.Fatalf("a reader of the replaced file read %q, want its old content", old)
	}
	if got := readFile(t, dir, "r0"); got != `{"round":4}` {
		t.Fatalf("r0 holds %q, want round 4", got)
	}
}
