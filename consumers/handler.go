package consumers

import (
	"context"
	"errors"

	"github.com/herald-cdc/herald/change"
)

// Handler applies one change. It is called for one key at a time, never
// concurrently for the same subject. It returns nil once the change is
// applied (durably, if the consumer keeps state), an error wrapped with
// Permanent when retrying cannot help, or any other error to be retried.
//
// Too-large markers and malformed messages never reach a handler: the runtime
// dead-letters them.
type Handler interface {
	Handle(ctx context.Context, e *change.Envelope) error
}

// BatchHandler is a Handler that can also apply several changes at once,
// so that what makes them durable (an fsync, a transaction commit) is paid
// once per group instead of once per change. The runtime detects it: a
// worker then hands it every message it already has queued, up to
// Config.MaxBatch, without waiting for more.
//
// A batch holds changes of distinct keys (subjects) only, each already past
// the Guard. When a key appears more than once among the queued messages,
// the newest version is in the batch and the older ones are settled with it,
// as with the quiet period: acked once it is applied (or dead-lettered),
// given back with it when it is retried. So a BatchHandler must be a state
// consumer, for which only a key's newest version matters. Table-level
// changes (TRUNCATE) never reach HandleBatch: they go to Handle, alone,
// between two barriers.
//
// HandleBatch returns one error per change, errs[i] for batch[i]: nil once
// that change is applied durably, an error wrapped with Permanent, or any
// other error to retry it. A nil slice means every change was applied. Each
// change is then settled on its own: the applied ones are acked, a failed
// one is retried or dead-lettered alone. So HandleBatch must not report a
// change as applied before it is durable, whatever happened to the others.
// A panic, or a result of the wrong length, makes the runtime apply the
// batch's changes again one by one with Handle, which isolates the change
// that caused it.
type BatchHandler interface {
	Handler
	HandleBatch(ctx context.Context, batch []*change.Envelope) (errs []error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, e *change.Envelope) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, e *change.Envelope) error { return f(ctx, e) }

// Guard is the stale-version guard. Applied returns the newest version the
// consumer has applied for the envelope's key — for a table-level change, the
// newest table-level version — and false when it has applied none.
//
// The runtime calls Applied before the handler and acks, without calling the
// handler, a message whose version is not newer. The runtime keeps no
// version itself: the handler persists it with what it writes, in the same
// atomic step (an extended attribute set before a rename, a column in the
// same transaction), so that a redelivered older version never wins, even
// after a restart. A handler that is itself a Guard is used as one.
type Guard interface {
	Applied(ctx context.Context, e *change.Envelope) (v change.Version, ok bool, err error)
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent wraps err so the runtime dead-letters the message at once
// instead of retrying it. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was made with
// Permanent. Malformed messages (change.ErrMalformed) count as permanent too.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p) || errors.Is(err, change.ErrMalformed)
}
