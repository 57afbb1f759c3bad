-- The live columns of table $1 (oid), with types (domains resolved).
SELECT a.attname, a.attnum, a.attnotnull,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_sql,
       coalesce(bt.typname, t.typname) AS base_type,
       coalesce(bt.typtype, t.typtype)::text AS typtype
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
