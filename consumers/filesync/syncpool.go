package filesync

import "sync"

// syncParallel is the most fsyncs one group commit runs at once. An fsync
// mostly waits: for the file's blocks and inode to be written, then for the
// device to flush its cache. Issued together, the writes go out together and
// the block layer merges the flushes that wait at the same time, so a group
// costs a few device flushes instead of one per file. Each worker of the
// runtime commits its own group, so a process runs up to workers ×
// syncParallel at once.
const syncParallel = 16

// syncPool runs the fsyncs of one step of a group commit, at most
// syncParallel at once. A group of one change (every change, at a low rate)
// runs its fsync inline, without a goroutine.
type syncPool struct {
	inline bool
	sem    chan struct{}
	wg     sync.WaitGroup
}

// newSyncPool returns a pool for a group of n changes.
func newSyncPool(n int) *syncPool {
	if n <= 1 {
		return &syncPool{inline: true}
	}
	return &syncPool{sem: make(chan struct{}, syncParallel)}
}

// do runs f, on its own goroutine unless the pool is inline. It blocks
// while syncParallel calls are running. f must touch only what no one else
// touches until wait returns.
func (p *syncPool) do(f func()) {
	if p.inline {
		f()
		return
	}
	p.sem <- struct{}{}
	p.wg.Go(func() {
		defer func() { <-p.sem }()
		f()
	})
}

// wait returns once every f given to do has returned.
func (p *syncPool) wait() { p.wg.Wait() }
