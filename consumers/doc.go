// Package consumers is the runtime every Herald consumer is built on: a
// durable pull consumer on the data stream that hands decoded changes to a
// Handler, one key at a time and many keys in parallel.
//
// What the runtime guarantees, and what it leaves to the handler:
//
//   - Delivery is at least once. A message is acked only after its handler
//     returned nil (or after a Guard said it was already applied), so a crash
//     at any point means a redelivery, never a loss.
//   - Per-key order: every message of one subject (one key) goes to the same
//     worker, so one key is applied serially; different keys run in parallel
//     on Config.Workers workers. A table-level message (TRUNCATE) is a
//     barrier: every earlier message is handled before it and every later one
//     after it.
//   - Redeliveries can still arrive after a newer version of the key was
//     applied (a retried message, a lost ack). A Guard persisted by the
//     handler, with what it writes, makes such a stale message a no-op: the
//     runtime acks it without calling the handler.
//   - A handler error is retryable unless wrapped with Permanent. Retryable
//     errors are retried with Config.Backoff until Config.MaxDeliver; then, or
//     at once for a permanent error, a too-large marker or a malformed
//     message, a copy goes to the dead-letter stream and the original is
//     terminated. Other keys keep flowing meanwhile.
//   - With Config.Quiet, changes to one key that arrive within the quiet
//     period collapse into the newest; the older ones are acked only after
//     the newest was applied.
//   - A handler that is also a BatchHandler gets, in one call, what a
//     worker has queued (one change per key, the newest; at most
//     Config.MaxBatch), so it can make the group durable at once. Each
//     change is still settled on its own.
//
// A consumer is built with New and run with Run, which returns once its
// context is cancelled and the work in flight is finished.
package consumers
