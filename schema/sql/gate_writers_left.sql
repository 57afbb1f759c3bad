-- How many of the transactions $1 are still running.
SELECT count(*)
FROM pg_catalog.pg_locks
WHERE relation = 'herald.log'::regclass AND mode = 'RowExclusiveLock'
  AND virtualtransaction = ANY($1::text[])
