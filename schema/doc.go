// Package schema owns the SQL that Herald installs in PostgreSQL: the
// versioned migrations of schema "herald" (change log, watch registry,
// wake-up gate, install epoch), the per-table capture triggers that
// "herald watch" generates, backfill, status, and the queries the bridge
// runs against the log.
//
// Capture runs inside the writer's transaction: AFTER ROW triggers (one per
// event, plus a TRUNCATE statement trigger) call a SECURITY DEFINER function
// generated for the table. The function reads the row only through
// to_jsonb(NEW) / to_jsonb(OLD), never NEW.col, so dropping a column cannot
// make the application's writes fail; it writes one row into herald.log and
// sends a NOTIFY only while the bridge holds the gate open.
//
// Static SQL lives in the embedded .sql files next to this package; generated
// DDL quotes every identifier with one function (quoteIdent) and every
// literal with another (quoteLiteral).
package schema
