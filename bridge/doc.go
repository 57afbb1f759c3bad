// Package bridge relays Herald's change log from PostgreSQL to NATS
// JetStream.
//
// One bridge per database is active: it holds a session-level advisory lock
// (keyed on the database's log table) on one dedicated connection, which
// also LISTENs for wake-ups and runs every query. Others wait as standbys
// and take over when the leader's session ends.
//
// The drain loop reads a batch of log rows in id order, publishes each as
// one JetStream message (a large batch as one atomic batch, a small one as
// async publishes with at most one unacknowledged message per subject), and
// deletes exactly the acknowledged ids in the same round trip as the next
// read. Nothing is deleted unpublished; a crash between ack and delete means
// a repeat, which the stream's duplicate window drops, and after any publish
// whose outcome is unknown the bridge checks each subject's last stored
// version so that it never stores a version after a newer one.
//
// Wake-ups follow the gated NOTIFY protocol of DESIGN.md: triggers notify
// only while the gate lease is open; the bridge keeps it open at low change
// rates and closes it (polling instead) at high rates, with hysteresis.
package bridge
