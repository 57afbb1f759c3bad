-- Writers queued on NOTIFY's commit lock. PostgreSQL serialises every
-- committing transaction that notified on one heavyweight lock (an object
-- lock on "database 0" of class pg_database, async.c), held across the
-- commit's WAL flush; a transaction waiting for it shows here ungranted.
SELECT count(*)::int
FROM pg_catalog.pg_locks
WHERE locktype = 'object' AND database = 0 AND classid = 'pg_catalog.pg_database'::regclass
  AND objid = 0 AND NOT granted
