-- The bridge's own writes (gate, deletes) need no durability of their own:
-- a lost delete means a repeat that JetStream's dedup drops.
SET synchronous_commit = off
