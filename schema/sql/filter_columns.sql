-- The columns the generated column $1 (attnum) of temp table
-- herald_filter_check reads: its default expression's dependencies.
SELECT a.attname
FROM pg_catalog.pg_attrdef ad
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE ad.adrelid = 'herald_filter_check'::regclass AND ad.adnum = $1
  AND d.refobjid = 'herald_filter_check'::regclass AND d.refobjsubid > 0 AND d.refobjsubid <> $1
ORDER BY a.attnum
