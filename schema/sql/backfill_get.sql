SELECT last_key, rows_done, finished_at IS NOT NULL
FROM herald.backfill WHERE schema_name = $1 AND table_name = $2
