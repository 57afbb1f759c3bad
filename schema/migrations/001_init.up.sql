-- Herald's schema: the change log, the watch registry, the wake-up gate,
-- the install epoch and backfill progress.

CREATE TABLE herald.install (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Grows with every fresh install (install time in microseconds): a change's
    -- version is (epoch, log id), and log ids restart after a reinstall or restore.
    epoch        bigint NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO herald.install (epoch)
VALUES ((extract(epoch FROM clock_timestamp()) * 1000000)::bigint);

-- One row per captured change. Written only by the capture triggers and by
-- backfill; deleted by the bridge once JetStream acknowledged the message.
CREATE TABLE herald.log (
    -- CACHE 1: ids must follow the order in which writers holding a key's row
    -- lock insert them; a larger cache hands out ids out of that order.
    id          bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    op          text NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'truncate', 'snapshot')),
    key         text[],           -- text of each key column, NULL for truncate
    old         jsonb,            -- watched and key columns before the change
    new         jsonb             -- watched and key columns after the change
) WITH (
    -- A queue table: rows live for milliseconds. Vacuum it early and often so
    -- dead tuples do not pile up under a steady change rate.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- The registry of watched tables: what "herald watch" installed.
CREATE TABLE herald.watch (
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    relid        oid NOT NULL,
    columns      text[],          -- NULL: every column
    key_columns  text[] NOT NULL,
    key_types    text[] NOT NULL,
    row_filter   text,
    filter_columns text[],        -- the columns the row filter reads, in the filter function's argument order
    always       boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);

-- The wake-up gate: triggers notify only while armed_until lies in the
-- future. A lease, so a bridge that dies while armed stops costing writers
-- the notify lock once it runs out.
CREATE TABLE herald.gate (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    armed_until timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    armed_by    integer
);
INSERT INTO herald.gate DEFAULT VALUES;

-- Backfill progress, so an interrupted backfill resumes after its last key.
CREATE TABLE herald.backfill (
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    last_key    text[],
    rows_done   bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (schema_name, table_name)
);
