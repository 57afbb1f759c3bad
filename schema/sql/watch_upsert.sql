INSERT INTO herald.watch AS w (schema_name, table_name, relid, columns, key_columns, key_types,
                               row_filter, filter_columns, always)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (schema_name, table_name) DO UPDATE
SET relid = EXCLUDED.relid, columns = EXCLUDED.columns, key_columns = EXCLUDED.key_columns,
    key_types = EXCLUDED.key_types, row_filter = EXCLUDED.row_filter,
    filter_columns = EXCLUDED.filter_columns, always = EXCLUDED.always, updated_at = now()
