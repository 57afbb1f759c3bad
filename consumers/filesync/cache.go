package filesync

import (
	"container/list"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/herald-cdc/herald/change"
)

// keyState is what filesync knows of one key on disk.
type keyState struct {
	v    change.Version // newest version applied to the key: its file's or its tombstone's
	has  bool           // v is set
	tomb bool           // a tombstone file may exist for the key
	file bool           // the key's file holds content whose hash is sum
	sum  uint64
	// unsynced: a rename into the key's directory failed to be made
	// durable; the next write syncs the directory even if the file's
	// content turns out unchanged.
	unsynced bool
}

// unsure is st after a failed write: without what it says about the file's
// content, which the write may have changed, and, when the write may have
// renamed the file, with its directory to be synced.
func (st keyState) unsure(renamed bool) keyState {
	st.file, st.sum = false, 0
	st.unsynced = st.unsynced || renamed
	return st
}

// newer returns the newest of st's version and the floor.
func (st keyState) newer(floor change.Version, hasFloor bool) (change.Version, bool) {
	switch {
	case !st.has:
		return floor, hasFloor
	case hasFloor && st.v.Less(floor):
		return floor, true
	}
	return st.v, true
}

// stateCache keeps the guard's state in memory: per key (by file path) the
// newest applied version and whether a tombstone exists, and the table's
// truncate floor. The files' extended attributes, the tombstones and the
// floor file stay the truth; the cache is filled from them on first use and
// updated by every commit of this process.
//
// Why a cache can never let an older version win: a key's applied version
// on disk (the newest of its file's, its tombstone's and the floor) only
// ever grows — every writer, in this process or another one sharing the
// root, checks the newest version before it writes. So an entry read from
// disk, or written by this process's own commit, is at most the truth, even
// if another process wrote since: a change that the cache finds stale is
// stale. The opposite answer is only a decision to write, and every write
// is checked again under the commit lock, where a commit by another process
// is seen (commitLock) and the entries are then read from disk again.
type stateCache struct {
	mu       sync.Mutex
	gen      uint64 // moves whenever the cache is dropped: fills begun earlier are discarded
	keys     map[string]keyState
	max      int
	floor    change.Version
	hasFloor bool
	floorOK  bool
}

// maxCachedKeys bounds the memory of the version cache: beyond it, entries
// are evicted (and read from disk again when needed).
const maxCachedKeys = 1 << 18

func newStateCache(max int) *stateCache {
	return &stateCache{keys: make(map[string]keyState), max: max}
}

func (c *stateCache) get(p string) (keyState, bool) {
	c.mu.Lock()
	st, ok := c.keys[p]
	c.mu.Unlock()
	return st, ok
}

// generation is read before reading a key's state from disk; fill stores
// that state only if nothing dropped the cache meanwhile.
func (c *stateCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *stateCache) fill(gen uint64, p string, st keyState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == c.gen {
		c.store(p, st)
	}
}

// set records the state a commit of this process left, under the commit
// lock.
func (c *stateCache) set(p string, st keyState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.store(p, st)
}

func (c *stateCache) store(p string, st keyState) {
	if _, ok := c.keys[p]; !ok && len(c.keys) >= c.max {
		for k := range c.keys { // any one: the map's order is random
			delete(c.keys, k)
			break
		}
	}
	c.keys[p] = st
}

// forget drops one key, after a commit whose outcome on disk is unknown.
func (c *stateCache) forget(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.keys, p)
}

// dropAll forgets everything (another process committed, or a truncate).
func (c *stateCache) dropAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.keys)
	c.floorOK = false
}

func (c *stateCache) getFloor() (v change.Version, has, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.floor, c.hasFloor, c.floorOK
}

func (c *stateCache) fillFloor(gen uint64, v change.Version, has bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == c.gen {
		c.floor, c.hasFloor, c.floorOK = v, has, true
	}
}

func (c *stateCache) setFloor(v change.Version) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.floor, c.hasFloor, c.floorOK = v, true, true
}

// dirHandle is an open directory of the root: files are created, renamed
// and synced in it by name, one openat/renameat/fsync each, instead of
// os.Root walking the path from the root for every call. It is opened
// through os.Root, so it is inside the root; the names used in it are single
// elements that are never followed as symlinks.
type dirHandle struct {
	f       *os.File
	fd      int
	path    string // relative to the root
	refs    int
	dropped bool
	elem    *list.Element
	// newDir is set when this process created the directory.
	newDir atomic.Bool
	// syncParents is set until the directory's entries in its parents have
	// been synced through this handle. A fresh handle cannot know whether
	// whoever created the directory (another worker or process, or this
	// one before the handle was evicted) synced them, so it does it once.
	syncParents atomic.Bool
}

// dirCache keeps recently used directories open, at most max of them. A
// handle in use when it is evicted or dropped is closed when released.
type dirCache struct {
	mu  sync.Mutex
	m   map[string]*dirHandle
	lru list.List // front: most recently used
	max int
}

func newDirCache(max int) *dirCache {
	return &dirCache{m: make(map[string]*dirHandle), max: max}
}

// dirCacheSize is how many directories stay open: enough for one per key
// of a few thousand hosts, and never more than a quarter of the process's
// file descriptor limit.
func dirCacheSize() int {
	n := 4096
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur/4 < uint64(n) {
		n = int(rl.Cur / 4)
	}
	return max(n, 16)
}

// get returns the open handle of dir, or nil. The caller releases it.
func (c *dirCache) get(dir string) *dirHandle {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.m[dir]
	if h == nil {
		return nil
	}
	h.refs++
	c.lru.MoveToFront(h.elem)
	return h
}

// add caches f as dir's handle and returns it acquired; if another caller
// added one first, f is closed and that one is returned.
func (c *dirCache) add(dir string, f *os.File) *dirHandle {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h := c.m[dir]; h != nil {
		_ = f.Close()
		h.refs++
		c.lru.MoveToFront(h.elem)
		return h
	}
	h := &dirHandle{f: f, fd: int(f.Fd()), path: dir, refs: 1}
	h.elem = c.lru.PushFront(h)
	c.m[dir] = h
	for len(c.m) > c.max {
		c.dropLocked(c.lru.Back().Value.(*dirHandle))
	}
	return h
}

func (c *dirCache) release(h *dirHandle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h.refs--
	if h.dropped && h.refs == 0 {
		_ = h.f.Close()
	}
}

// drop forgets dir (it was removed, or turned out to be gone).
func (c *dirCache) drop(dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h := c.m[dir]; h != nil {
		c.dropLocked(h)
	}
}

// dropHandle forgets h if it is still the cached handle of its directory.
func (c *dirCache) dropHandle(h *dirHandle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[h.path] == h {
		c.dropLocked(h)
	}
}

func (c *dirCache) dropAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.m {
		c.dropLocked(h)
	}
}

func (c *dirCache) dropLocked(h *dirHandle) {
	delete(c.m, h.path)
	c.lru.Remove(h.elem)
	h.dropped = true
	if h.refs == 0 {
		_ = h.f.Close()
	}
}
