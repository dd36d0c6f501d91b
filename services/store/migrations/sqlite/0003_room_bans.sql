-- Room roles and bans (issue #9). A ban keeps a user out of a room until an
-- admin lifts it: it ends their membership and refuses their joins and adds.
-- Rooms are soft-deleted, so bans stay with them like memberships do.
CREATE TABLE bans (
    room_id   TEXT    NOT NULL REFERENCES rooms (id),
    user_id   TEXT    NOT NULL REFERENCES users (id),
    banned_by TEXT    NOT NULL REFERENCES users (id),
    banned_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;

-- At most one owner per room, whatever a writer does: a transfer demotes the
-- old owner before it promotes the new one (DMs have none).
CREATE UNIQUE INDEX memberships_one_owner ON memberships (room_id)
    WHERE role = 'owner';
