-- The highest id in the log when a bridge takes over: every change a
-- previous leader may have published and not deleted has an id at most this.
SELECT coalesce(max(id), 0) FROM herald.log
