-- A scratch copy of the watched table's columns, dropped at commit, on which
-- the row filter is tried as a stored generated column: the server then
-- refuses subqueries, aggregates and functions that are not immutable.
CREATE TEMP TABLE herald_filter_check (LIKE %s) ON COMMIT DROP
