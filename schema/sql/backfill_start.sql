INSERT INTO herald.backfill AS b (schema_name, table_name) VALUES ($1, $2)
ON CONFLICT (schema_name, table_name) DO UPDATE
SET last_key = NULL, rows_done = 0, started_at = now(), updated_at = now(), finished_at = NULL
