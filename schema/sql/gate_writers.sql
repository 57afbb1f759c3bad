-- Transactions that may have read the gate closed: those holding
-- RowExclusiveLock on the log table right after the gate opened.
SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}')
FROM pg_catalog.pg_locks
WHERE relation = 'herald.log'::regclass AND mode = 'RowExclusiveLock' AND granted
  AND pid <> pg_backend_pid()
