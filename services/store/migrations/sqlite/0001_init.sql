-- The SQLite schema of the Store seam. Ids are hyphenated UUID text (v7
-- sorts by time as text), times are INTEGER ms since the epoch.

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    username      TEXT    NOT NULL,
    -- Lowercased username: the case-insensitive uniqueness key. Set to NULL
    -- when the user is deleted, so the name is free again.
    username_key  TEXT    UNIQUE,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    deleted_at    INTEGER
) STRICT;

CREATE TABLE sessions (
    id           TEXT    NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id),
    user_agent   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
CREATE INDEX sessions_by_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    session_id TEXT    NOT NULL REFERENCES sessions (id),
    created_at INTEGER NOT NULL,
    spent_at   INTEGER
) STRICT;

CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE rooms (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    visibility TEXT    NOT NULL CHECK (visibility IN ('public', 'private')),
    kind       TEXT    NOT NULL CHECK (kind IN ('group', 'dm')),
    created_at INTEGER NOT NULL,
    -- The seq of the room's newest event; the next event gets last_seq + 1.
    last_seq   INTEGER NOT NULL DEFAULT 0,
    -- "smaller_user_id:larger_user_id" for a live DM, NULL otherwise.
    dm_key     TEXT    UNIQUE,
    deleted_at INTEGER
) STRICT;

CREATE TABLE memberships (
    room_id       TEXT    NOT NULL REFERENCES rooms (id),
    user_id       TEXT    NOT NULL REFERENCES users (id),
    role          TEXT    NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    joined_at     INTEGER NOT NULL,
    last_read_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX memberships_by_user ON memberships (user_id, room_id);

-- The per-room event log. A 'message' row is the message itself and is
-- updated in place by edits and deletions (its current state); each edit or
-- deletion is also a row of its own, with its own seq and target_seq.
CREATE TABLE events (
    room_id       TEXT    NOT NULL REFERENCES rooms (id),
    seq           INTEGER NOT NULL,
    kind          TEXT    NOT NULL
                  CHECK (kind IN ('message', 'message_edited', 'message_deleted')),
    message_id    TEXT,
    -- Author of a message, editor of an edit, deleter of a deletion.
    sender_id     TEXT    NOT NULL REFERENCES users (id),
    body          TEXT    NOT NULL DEFAULT '',
    client_msg_id TEXT,
    created_at    INTEGER NOT NULL,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT 0,
    target_seq    INTEGER,
    PRIMARY KEY (room_id, seq),
    CHECK ((kind = 'message') = (target_seq IS NULL)),
    CHECK (kind <> 'message' OR (message_id IS NOT NULL AND client_msg_id IS NOT NULL))
) STRICT;

-- A retried send (same room, sender and client_msg_id) finds the original.
CREATE UNIQUE INDEX events_dedupe ON events (room_id, sender_id, client_msg_id)
    WHERE kind = 'message';

-- The edits of a message, to scrub their bodies when it is deleted.
CREATE INDEX events_by_target ON events (room_id, target_seq)
    WHERE target_seq IS NOT NULL;
