-- The bridge leader's session lock, keyed on this database's log table (not
-- on a source name), so two bridges of any source never both drain it.
-- High 32 bits 'HRLD', low 32 bits the log table's oid.
SELECT pg_try_advisory_lock((x'48524c44'::bigint << 32) | 'herald.log'::regclass::oid::bigint)
