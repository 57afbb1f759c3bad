-- Herald's generated functions for table oid $1, as regprocedure text ready for DROP FUNCTION.
SELECT p.oid::regprocedure::text
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'herald'::regnamespace
  AND p.proname IN ('capture_' || $1::oid::text, 'filter_' || $1::oid::text)
