SELECT schema_name, table_name, relid, columns, key_columns, key_types, row_filter, filter_columns, always,
       created_at, updated_at
FROM herald.watch
WHERE schema_name = $1 AND table_name = $2
