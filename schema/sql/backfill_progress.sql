UPDATE herald.backfill SET last_key = $3, rows_done = rows_done + $4, updated_at = now()
WHERE schema_name = $1 AND table_name = $2
