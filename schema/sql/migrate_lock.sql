-- Serialise migrations across processes: held until the transaction ends.
SELECT pg_advisory_xact_lock(hashtext('herald.migrate'))
