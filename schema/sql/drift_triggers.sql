-- Herald's triggers on table $1 with their enabled state (O origin, A always, R replica, D disabled).
SELECT t.tgname, t.tgenabled::text
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname LIKE 'herald\_capture\_%'
