UPDATE herald.backfill SET finished_at = now(), updated_at = now()
WHERE schema_name = $1 AND table_name = $2
