-- The bridge's own writes (gate, deletes) need no durability of their own:
-- a lost delete means a repeat that JetStream's dedup drops.
SET synchronous_commit = off;
-- Plan with the values: the drain query's list of ids in flight is then a
-- constant, looked up by hash rather than compared one by one per row.
SET plan_cache_mode = force_custom_plan
