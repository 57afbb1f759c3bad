-- Removes Herald's tables. Triggers of watched tables must be removed first
-- ("herald unwatch"); their functions live in schema herald and go with it.
DROP TABLE IF EXISTS herald.backfill, herald.gate, herald.watch, herald.log, herald.install;
