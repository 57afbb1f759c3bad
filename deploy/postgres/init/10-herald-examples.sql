-- Herald's two example tables, created on the first start of the postgres
-- container (the image runs /docker-entrypoint-initdb.d/* once, on an empty
-- data directory, in the database POSTGRES_DB). The herald-init services of
-- docker-compose.yml then install Herald and watch them; Herald installs
-- nothing here, so the same file works for a database Herald never touches.

-- Host-specific data, one JSON document per host (CFEngine's cf-reactor
-- example). herald-filesync writes each row's value to
-- <root>/<hostkey>/host_specific.json.
CREATE TABLE IF NOT EXISTS public.__cmdb (
    hostkey    text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    epoch      bigint NOT NULL DEFAULT 0
);

-- Mailboxes. herald-mailstore provisions <root>/<dba>/<username>/Maildir
-- with the quota, owned by the row's gid. The key is a surrogate id, so that
-- renaming a user (username or dba) is an UPDATE that moves the mailbox,
-- not a delete and an insert that would archive it and start an empty one.
CREATE TABLE IF NOT EXISTS public.mail_users (
    id          bigserial PRIMARY KEY,
    gid         int NOT NULL,
    dba         text NOT NULL,
    username    text NOT NULL,
    quota_bytes bigint NOT NULL,
    UNIQUE (dba, username)
);
