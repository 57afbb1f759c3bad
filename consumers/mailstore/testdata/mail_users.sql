-- Example table for herald-mailstore. The surrogate primary key makes a
-- rename (a new dba or username) an UPDATE of one key, so the mailbox is
-- moved rather than archived and created again. Watch it with:
--
--   herald watch mail_users --columns gid,dba,username,quota_bytes
--
-- dba is the mailbox's domain; quota_bytes 0 means no limit.
CREATE TABLE mail_users (
    id          bigserial PRIMARY KEY,
    gid         int       NOT NULL,
    dba         text      NOT NULL,
    username    text      NOT NULL,
    quota_bytes bigint    NOT NULL,
    UNIQUE (dba, username)
);
