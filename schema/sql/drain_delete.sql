-- Exactly the ids JetStream acknowledged: never a range, since a lower id
-- can commit after a higher one was read.
DELETE FROM herald.log WHERE id = ANY($1::bigint[])
