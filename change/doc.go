// Package change is Herald's message contract: how a row change captured in
// PostgreSQL becomes one JetStream message, and how a consumer reads it back.
// It is the only package both the bridge and the consumers import; it does no
// I/O.
//
// # Subjects
//
// Every change is published to
//
//	<prefix>.<schema>.<table>.<key token>[.<key token>...]
//
// with one token per key column, in key order (see Subject). The prefix
// (default "herald") is one or more plain tokens, checked by ValidatePrefix;
// schema, table and key values are encoded by EncodeToken. A consumer filters
// one table with TableFilter ("herald.public.mail_users.>") and one key with
// KeyFilter ("herald.public.mail_users.alice"). Table-level events
// (TRUNCATE) carry TableToken ("%T") in place of the key, so the table filter
// matches them as well. Dead letters go to DLQSubject,
// "<prefix>_dlq.<consumer>", outside the data stream's subjects.
//
// # Tokens
//
// EncodeToken is deterministic and reversible (DecodeToken), and leaves
// ordinary values readable:
//
//	alice          → alice
//	42             → 42
//	SHA=8f3a       → SHA=8f3a
//	ünïcode        → ünïcode
//	a.b            → a%2Eb
//	two words      → two%20words
//	50%            → 50%25
//	"" (empty)     → %
//	(> 100 bytes)  → %H3f2a…  (%H and 40 hex digits of SHA-256)
//
// ASCII letters, digits, printable punctuation other than '.', '*', '>' and
// '%', and printable non-space non-ASCII runes stay as they are. Every other
// byte (the separator, the wildcards, the escape character, whitespace,
// control bytes, DEL, invalid UTF-8) becomes '%' and two uppercase hex digits.
// A token longer than MaxTokenLen becomes a hash, so that with at most
// MaxKeyColumns key columns a subject always fits the server's control line;
// the full key is always in the body. '%' followed by anything but two
// uppercase hex digits never comes out of the escaping, which is why "%",
// "%T" and "%H…" cannot collide with an escaped value.
//
// # Headers
//
//	Nats-Msg-Id:   <source>:<epoch>:<log id>   (JetStream deduplication)
//	Herald-Op:     insert | update | delete | truncate | snapshot
//	Herald-Table:  <schema>.<table>            (raw names; see TableHeader)
//	Herald-Epoch:  <epoch>
//	Herald-Id:     <log id>
//	Herald-Marker: too-large                   (only on markers)
//
// NewMsg sets them all; FromMsg checks those present against the body.
//
// # Envelope
//
// The body is a JSON Envelope, version 1:
//
//	{
//	  "v": 1,
//	  "source": "main",
//	  "epoch": 1763839522123456,
//	  "id": 42,
//	  "txid": 90211,
//	  "at": "2026-11-22T19:25:22.123456Z",
//	  "schema": "public",
//	  "table": "mail_users",
//	  "op": "update",
//	  "key": ["alice"],
//	  "new": {"gid": 100, "username": "alice", "quota_bytes": 10737418240},
//	  "old": {"gid": 100, "username": "alice", "quota_bytes": 5368709120},
//	  "changed": ["quota_bytes"]
//	}
//
// A change's Version is (epoch, id): ids restart after a reinstall, the epoch
// keeps versions ordered. "at" is RFC 3339 in UTC with microseconds. "key" is
// the text of each key column (null for truncate); "new" and "old" hold the
// watched and key columns as PostgreSQL's jsonb renders them, or null; values
// are kept as raw JSON (json.RawMessage) so numbers stay exact. "changed"
// lists, for an update, the watched columns whose value differs (see
// Changed). A change too large for the server's maximum payload is published
// as a marker: "marker": {"reason": "too-large", "size": …, "limit": …}, with
// null "new" and "old". Consumers dead-letter markers; they never treat one as
// a delete.
//
// The bridge builds bodies with Envelope.AppendJSON (no reflection); consumers
// read them with Decode or FromMsg, which reject anything that breaks the
// contract with an error wrapping ErrMalformed.
package change
