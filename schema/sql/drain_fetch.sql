-- The next batch of changes in id order. $1: batch size; $2: the largest
-- old+new (bytes of JSON text) worth fetching: bigger changes are measured
-- here and come back without values, to be published as markers; $3: the
-- ids being published right now, not read again, as an int8multirange (one
-- range per run of consecutive ids; a lookup is a binary search, so a
-- batch of 500 in flight costs little even with a generic plan).
-- pg_column_size is cheap; below 2000 bytes a value is stored uncompressed,
-- so its text cannot approach a message limit and is not rendered twice.
SELECT l.id, l.txid::text::bigint, l.at, l.schema_name, l.table_name, l.op, l.key,
       CASE WHEN s.size > $2 THEN NULL ELSE l.old END,
       CASE WHEN s.size > $2 THEN NULL ELSE l.new END,
       s.size
FROM (SELECT * FROM herald.log WHERE NOT ($3::int8multirange @> id) ORDER BY id LIMIT $1) l
CROSS JOIN LATERAL (
    SELECT CASE WHEN coalesce(pg_column_size(l.old), 0) + coalesce(pg_column_size(l.new), 0) < 2000
                THEN coalesce(pg_column_size(l.old), 0) + coalesce(pg_column_size(l.new), 0)
                ELSE coalesce(octet_length(l.old::text), 0) + coalesce(octet_length(l.new::text), 0)
           END::bigint AS size
) s
ORDER BY l.id
