-- Herald's triggers on table $1 and how they are enabled.
SELECT t.tgname, t.tgenabled::text
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname LIKE 'herald\_capture\_%'
ORDER BY t.tgname
