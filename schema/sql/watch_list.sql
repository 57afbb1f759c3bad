SELECT schema_name, table_name, relid, columns, key_columns, key_types, row_filter, filter_columns, always,
       created_at, updated_at
FROM herald.watch
ORDER BY schema_name, table_name
