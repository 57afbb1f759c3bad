// Package lifecycle runs a Herald program's work next to its operational
// endpoints, from start to exit: until the work ends, the endpoints fail, or
// the program is asked to stop, and then no longer than the program's
// shutdown timeout allows.
package lifecycle

import (
	"cmp"
	"context"
	"time"
)

// Run runs work and serve (the metrics and health endpoints) side by side
// on a context derived from ctx, and returns when the program should exit:
//
//   - work returns by itself: Run stops serve and returns work's error.
//   - serve fails (its address is taken, say): a program nobody can observe
//     should not run, so Run cancels work, waits for it, and returns serve's
//     error.
//   - ctx ends (SIGTERM): Run gives work grace to finish what it is doing
//     and returns its error; after grace it returns late (which says what
//     was abandoned and what becomes of it) without waiting any longer. A
//     grace of 0 or less waits for work however long it takes.
//
// serve must return nil once its context ends, and an error only when it
// cannot serve.
func Run(ctx context.Context, work, serve func(context.Context) error, grace time.Duration, late error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveDone := make(chan error, 1)
	go func() { serveDone <- serve(ctx) }()
	workDone := make(chan error, 1)
	go func() { workDone <- work(ctx) }()

	var serveErr error
	served := false
	select {
	case err := <-workDone:
		cancel()
		return cmp.Or(err, <-serveDone)
	case serveErr = <-serveDone:
		// nil only once ctx has ended; then work has its grace as below.
		served = true
		cancel()
	case <-ctx.Done():
	}
	err, inTime := finish(workDone, grace)
	if !inTime {
		// No wait for serve either: the program is late already.
		return cmp.Or(serveErr, late)
	}
	if !served {
		serveErr = <-serveDone
	}
	return cmp.Or(serveErr, err)
}

// finish waits up to grace (forever when grace <= 0) for work's result;
// inTime is false when it did not come.
func finish(workDone <-chan error, grace time.Duration) (err error, inTime bool) {
	if grace <= 0 {
		return <-workDone, true
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-workDone:
		return err, true
	case <-t.C:
		return nil, false
	}
}
