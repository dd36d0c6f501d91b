-- The Postgres schema of the Store seam, the distributed mode's source of
-- truth. It mirrors migrations/sqlite/0001_init.sql table for table: ids are
-- native `uuid` (v7 sorts by time, byte order = text order), times are
-- BIGINT ms since the epoch, refresh-token hashes BYTEA.
--
-- Names are unqualified on purpose: they land in the first schema of the
-- connection's search_path, so a `?schema=NAME` URL (see postgres.rs) puts
-- these tables, and sqlx's `_sqlx_migrations`, in that schema.

CREATE TABLE users (
    id            UUID   NOT NULL PRIMARY KEY,
    username      TEXT   NOT NULL,
    -- Lowercased username (computed in Rust, as SQLite does): the
    -- case-insensitive uniqueness key. Set to NULL when the user is deleted,
    -- so the name is free again.
    username_key  TEXT   UNIQUE,
    display_name  TEXT   NOT NULL,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);

CREATE TABLE sessions (
    id           UUID   NOT NULL PRIMARY KEY,
    user_id      UUID   NOT NULL REFERENCES users (id),
    user_agent   TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    revoked_at   BIGINT
);

CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX sessions_by_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    token_hash BYTEA  NOT NULL PRIMARY KEY,
    session_id UUID   NOT NULL REFERENCES sessions (id),
    created_at BIGINT NOT NULL,
    spent_at   BIGINT
);

CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE rooms (
    id         UUID   NOT NULL PRIMARY KEY,
    name       TEXT   NOT NULL,
    topic      TEXT   NOT NULL,
    visibility TEXT   NOT NULL CHECK (visibility IN ('public', 'private')),
    kind       TEXT   NOT NULL CHECK (kind IN ('group', 'dm')),
    created_at BIGINT NOT NULL,
    -- The seq of the room's newest event; the next event gets last_seq + 1.
    -- Writers of one room serialize on this row's lock (see append_message).
    last_seq   BIGINT NOT NULL DEFAULT 0,
    -- "smaller_user_id:larger_user_id" for a live DM, NULL otherwise.
    dm_key     TEXT   UNIQUE,
    deleted_at BIGINT
);

-- The public room directory, paged by id.
CREATE INDEX rooms_public_by_id ON rooms (id)
    WHERE visibility = 'public' AND kind = 'group' AND deleted_at IS NULL;

CREATE TABLE memberships (
    room_id       UUID   NOT NULL REFERENCES rooms (id),
    user_id       UUID   NOT NULL REFERENCES users (id),
    role          TEXT   NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    joined_at     BIGINT NOT NULL,
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);

CREATE INDEX memberships_by_user ON memberships (user_id, room_id);

-- The per-room event log. A 'message' row is the message itself and is
-- updated in place by edits and deletions (its current state); each edit or
-- deletion is also a row of its own, with its own seq and target_seq.
CREATE TABLE events (
    room_id       UUID    NOT NULL REFERENCES rooms (id),
    seq           BIGINT  NOT NULL,
    kind          TEXT    NOT NULL
                  CHECK (kind IN ('message', 'message_edited', 'message_deleted')),
    message_id    UUID,
    -- Author of a message, editor of an edit, deleter of a deletion.
    sender_id     UUID    NOT NULL REFERENCES users (id),
    body          TEXT    NOT NULL DEFAULT '',
    client_msg_id TEXT,
    created_at    BIGINT  NOT NULL,
    edited_at     BIGINT,
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    target_seq    BIGINT,
    PRIMARY KEY (room_id, seq),
    CHECK ((kind = 'message') = (target_seq IS NULL)),
    CHECK (kind <> 'message' OR (message_id IS NOT NULL AND client_msg_id IS NOT NULL))
);

-- A retried send (same room, sender and client_msg_id) finds the original.
CREATE UNIQUE INDEX events_dedupe ON events (room_id, sender_id, client_msg_id)
    WHERE kind = 'message';

-- The edits of a message, to scrub their bodies when it is deleted.
CREATE INDEX events_by_target ON events (room_id, target_seq)
    WHERE target_seq IS NOT NULL;
