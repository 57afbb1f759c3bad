-- Rows waiting to be published, and the age of the oldest.
SELECT count(*), coalesce(extract(epoch FROM now() - min(at)), 0)::float8 FROM herald.log
