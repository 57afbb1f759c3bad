// Package mailstore provisions Maildirs and their quotas from a table of
// mail users: the consumer behind herald-mailstore. With the defaults it
// follows public.mail_users (columns gid, dba, username, quota_bytes; dba is
// the mailbox's domain) and keeps, under one root directory:
//
//	<root>/<dba>/<username>/Maildir/{cur,new,tmp}   mode 0700, owner UID:gid
//	<root>/<dba>/<username>/Maildir/maildirsize     Maildir++ quota, "<bytes>S" first
//	<root>/<dba>/<username>/.herald-mailstore       which row owns this mailbox
//	<root>/.archive/<dba>/<username>-<time>          deleted mailboxes, never removed by default
//	<root>/.herald-mailstore/<schema>.<table>/      the stale-version guard: one record per key
//
// An insert or snapshot creates the mailbox, built in a temporary directory
// and renamed into place, so a mail server never sees half of one. An update
// rewrites the quota line (temporary file and rename, usage lines kept),
// moves the mailbox when dba or username changed (renameat2 with
// RENAME_NOREPLACE: never onto an existing mailbox) and changes ownership
// recursively when gid changed. A delete moves the mailbox into the archive
// under a name derived from the time of the change, so a replay lands on the
// same name.
//
// Every file operation goes through an os.Root: nothing outside the root is
// touched and symlinks cannot lead out of it. A username or domain that
// cannot be one plain directory name is refused before anything is written,
// and the change is dead-lettered.
//
// The guard record of a key says which version was applied and where the
// key's mailbox is. It is written after the change took effect, and a
// pending create, move or archive is recorded before it starts, so a crash
// at any point is repaired by the redelivery: every step is idempotent and
// the record tells where to look for the mailbox. A delete leaves a
// tombstone record, so an older insert redelivered later does not bring the
// mailbox back.
package mailstore
