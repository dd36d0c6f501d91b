//! Rooms and their memberships: creating, reading, changing and listing
//! rooms, joining and read markers (leaving, roles and bans: [`super::roles`]).
//!
//! Opening a DM is the one room write whose steps differ by backend (how a
//! concurrent opener of the same DM is met); each backend's `rooms` module
//! has it, built from the pieces here.

use chat_core::{RoomId, Seq, UserId};
use sqlx::Database;
use uuid::Uuid;

use super::rows::{self, db_err, decode_all, decode_opt, membership_cols, room_cols, Columns};
use super::{exists, stmt, AsExecutor, Dialect, Stmt};
use crate::backend::Backend;
use crate::{
    MemberProfile, Membership, NewRoom, Result, Role, Room, RoomKind, RoomPatch, StoreError,
    UserRoom, Visibility,
};

/// Inserts a room: `$1` id, `$2` name, `$3` topic, `$4` visibility, `$5`
/// kind, `$6` created_at, `$7` dm_key (see [`insert_room`]).
macro_rules! insert_room_sql {
    () => {
        "INSERT INTO rooms (id, name, topic, visibility, kind, created_at, last_seq, dm_key) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7)"
    };
}

/// Public group rooms whose name matches the pattern `$1` under `$like`, the
/// dialect's case-insensitive `LIKE`, by id after `$2`, at most `$3`. For
/// [`Dialect::PUBLIC_ROOMS`].
macro_rules! public_rooms_sql {
    ($like:literal) => {
        concat!(
            "SELECT ",
            $crate::sql::rows::room_cols!(),
            " FROM rooms \
             WHERE visibility = 'public' AND kind = 'group' AND deleted_at IS NULL \
             AND name ",
            $like,
            " $1 ESCAPE '\\' AND ($2 IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        )
    };
}

/// Moves the read marker of `$3` in room `$2` to `$1`, forward only and not
/// past the room's end, with `$max` and `$min` the dialect's scalar
/// functions for two values. For [`Dialect::MARK_READ`].
macro_rules! mark_read_sql {
    ($max:literal, $min:literal) => {
        concat!(
            "UPDATE memberships SET last_read_seq = ",
            $max,
            "(last_read_seq, ",
            $min,
            "($1, COALESCE((SELECT last_seq FROM rooms WHERE id = $2), 0))) \
             WHERE room_id = $2 AND user_id = $3"
        )
    };
}

/// The live DM whose key is `$1`, followed by `$lock`: the row lock the
/// backend's way of opening a DM needs, if any (see [`find_dm`]).
macro_rules! live_dm_sql {
    ($lock:literal) => {
        concat!(
            "SELECT ",
            $crate::sql::rows::room_cols!(),
            " FROM rooms WHERE dm_key = $1 AND deleted_at IS NULL",
            $lock
        )
    };
}

pub(crate) use insert_room_sql;
pub(crate) use live_dm_sql;
pub(crate) use mark_read_sql;
pub(crate) use public_rooms_sql;

/// `q` as a `LIKE … ESCAPE '\'` pattern matching names that contain it
/// literally (`%`, `_` and `\` in `q` are not special).
pub(crate) fn contains_pattern(q: &str) -> String {
    let mut pattern = String::with_capacity(q.len() + 2);
    pattern.push('%');
    for c in q.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The one key of the DM between two users, whatever the order.
pub(crate) fn dm_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// `room` as a DM: private and two-person whatever the caller filled in.
pub(crate) fn as_dm(room: &NewRoom) -> NewRoom {
    NewRoom {
        kind: RoomKind::Dm,
        visibility: Visibility::Private,
        ..room.clone()
    }
}

/// The room `room` becomes once inserted.
pub(crate) fn new_room(room: &NewRoom) -> Room {
    Room {
        id: room.id,
        name: room.name.clone(),
        topic: room.topic.clone(),
        visibility: room.visibility,
        kind: room.kind,
        created_at: room.created_at,
        last_seq: 0,
    }
}

/// Runs `sql`, [`insert_room_sql`] or a variant of it, for `room`; the
/// number of rooms it inserted.
pub(crate) async fn insert_room<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    sql: &str,
    room: &NewRoom,
    dm_key: Option<&str>,
) -> Result<u64> {
    stmt::<D>(sql)
        .bind_id(room.id.0)
        .bind(&room.name)
        .bind(&room.topic)
        .bind(room.visibility.as_str())
        .bind(room.kind.as_str())
        .bind(room.created_at)
        .bind(dm_key)
        .execute(ex)
        .await
}

/// Adds the membership unless it exists; true if it was added. The read
/// marker starts at the room's current end.
pub(crate) async fn insert_membership<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    room: RoomId,
    user: UserId,
    role: Role,
    now: i64,
) -> Result<bool> {
    let added = stmt::<D>(
        "INSERT INTO memberships (room_id, user_id, role, joined_at, last_read_seq) \
         VALUES ($1, $2, $3, $4, COALESCE((SELECT last_seq FROM rooms WHERE id = $1), 0)) \
         ON CONFLICT (room_id, user_id) DO NOTHING",
    )
    .bind_id(room.0)
    .bind_id(user.0)
    .bind(role.as_str())
    .bind(now)
    .execute(ex)
    .await?;
    Ok(added == 1)
}

/// The membership, whether or not the room is live.
pub(crate) async fn find_membership<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    room: RoomId,
    user: UserId,
) -> Result<Option<Membership>> {
    let row = stmt::<D>(concat!(
        "SELECT ",
        membership_cols!(),
        " FROM memberships WHERE room_id = $1 AND user_id = $2"
    ))
    .bind_id(room.0)
    .bind_id(user.0)
    .fetch_optional(ex)
    .await?;
    decode_opt(row, rows::membership)
}

/// Runs `sql`, [`live_dm_sql`] with the backend's lock, for the DM `key`.
pub(crate) async fn find_dm<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    sql: &str,
    key: &str,
) -> Result<Option<Room>> {
    let row = stmt::<D>(sql).bind(key).fetch_optional(ex).await?;
    decode_opt(row, rows::room)
}

/// Reads one page of a list paged by id: `sql` with `$1` bound (what is
/// listed) takes the id to start after as `$2` and the page size as `$3`.
pub(crate) async fn page<'q, B: Backend>(
    store: &B,
    sql: Stmt<'q, B::Db>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<<B::Db as Database>::Row>> {
    sql.bind_opt_id(after)
        .bind(i64::from(limit))
        .fetch_all(store.reader())
        .await
}

/// `NotFound` unless both users of a DM are live ([`Dialect::LIVE_USER`]).
pub(crate) async fn check_dm_users<D: Dialect>(
    conn: &mut D::Connection,
    a: UserId,
    b: UserId,
) -> Result<()> {
    for user in [a, b] {
        if !exists(conn.executor(), D::LIVE_USER, user.0).await? {
            return Err(StoreError::NotFound);
        }
    }
    Ok(())
}

/// Makes both users members of their DM, even after one of them left.
pub(crate) async fn add_dm_members<D: Dialect>(
    conn: &mut D::Connection,
    dm: RoomId,
    a: UserId,
    b: UserId,
    now: i64,
) -> Result<()> {
    for user in [a, b] {
        insert_membership(conn.executor(), dm, user, Role::Member, now).await?;
    }
    Ok(())
}

/// Creates the room with `owner` as its first member, in one transaction.
pub(crate) async fn create<B: Backend>(store: &B, room: &NewRoom, owner: UserId) -> Result<Room> {
    let mut tx = store.write_tx().await?;
    if !exists(tx.executor(), B::Db::LIVE_USER, owner.0).await? {
        return Err(StoreError::NotFound);
    }
    insert_room(tx.executor(), insert_room_sql!(), room, None).await?;
    insert_membership(tx.executor(), room.id, owner, Role::Owner, room.created_at).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(new_room(room))
}

pub(crate) async fn get<B: Backend>(store: &B, id: RoomId) -> Result<Option<Room>> {
    let row = stmt::<B::Db>(concat!(
        "SELECT ",
        room_cols!(),
        " FROM rooms WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind_id(id.0)
    .fetch_optional(store.reader())
    .await?;
    decode_opt(row, rows::room)
}

/// [`crate::Store::last_seqs`]: one `IN (…)` statement per chunk of ids.
pub(crate) async fn last_seqs<B: Backend>(store: &B, ids: &[RoomId]) -> Result<Vec<(RoomId, Seq)>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(crate::LAST_SEQS_CHUNK) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, last_seq FROM rooms WHERE deleted_at IS NULL AND id IN ({})",
            marks.join(", ")
        );
        let mut q = stmt::<B::Db>(&sql);
        for id in chunk {
            q = q.bind_id(id.0);
        }
        for row in q.fetch_all(store.reader()).await? {
            out.push((row.id("id")?, row.int("last_seq")?));
        }
    }
    Ok(out)
}

pub(crate) async fn update<B: Backend>(store: &B, id: RoomId, patch: &RoomPatch) -> Result<Room> {
    let row = stmt::<B::Db>(concat!(
        "UPDATE rooms SET name = COALESCE($1, name), topic = COALESCE($2, topic), \
         visibility = COALESCE($3, visibility) \
         WHERE id = $4 AND deleted_at IS NULL RETURNING ",
        room_cols!()
    ))
    .bind(patch.name.as_deref())
    .bind(patch.topic.as_deref())
    .bind(patch.visibility.map(Visibility::as_str))
    .bind_id(id.0)
    .fetch_optional(store.writer())
    .await?;
    decode_opt(row, rows::room)?.ok_or(StoreError::NotFound)
}

pub(crate) async fn delete<B: Backend>(store: &B, id: RoomId, now: i64) -> Result<()> {
    // Freeing dm_key lets the two users open a fresh DM later.
    let changed = stmt::<B::Db>(
        "UPDATE rooms SET deleted_at = $1, dm_key = NULL WHERE id = $2 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind_id(id.0)
    .execute(store.writer())
    .await?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(crate) async fn list_public<B: Backend>(
    store: &B,
    q: &str,
    after: Option<RoomId>,
    limit: u32,
) -> Result<Vec<Room>> {
    let pattern = contains_pattern(q);
    let query = stmt::<B::Db>(B::Db::PUBLIC_ROOMS).bind(pattern.as_str());
    let rows = page(store, query, after.map(|a| a.0), limit).await?;
    decode_all(&rows, rows::room)
}

pub(crate) async fn list_for_user<B: Backend>(
    store: &B,
    user_id: UserId,
    after: Option<RoomId>,
    limit: u32,
) -> Result<Vec<UserRoom>> {
    let query = stmt::<B::Db>(concat!(
        "SELECT ",
        room_cols!(),
        ", ",
        membership_cols!(),
        ", (SELECT COUNT(*) FROM events e \
            WHERE e.room_id = m.room_id AND e.seq > m.last_read_seq \
            AND e.kind = 'message' AND NOT e.deleted AND e.sender_id <> m.user_id) AS unread \
         FROM memberships m JOIN rooms r ON r.id = m.room_id \
         WHERE m.user_id = $1 AND r.deleted_at IS NULL AND ($2 IS NULL OR m.room_id > $2) \
         ORDER BY m.room_id LIMIT $3"
    ))
    .bind_id(user_id.0);
    let rows = page(store, query, after.map(|a| a.0), limit).await?;
    rows.iter()
        .map(|row| {
            Ok(UserRoom {
                room: rows::room(row)?,
                membership: rows::membership(row)?,
                unread: row.int("unread")?,
            })
        })
        .collect()
}

pub(crate) async fn ids_for_user<B: Backend>(store: &B, user_id: UserId) -> Result<Vec<RoomId>> {
    let rows = stmt::<B::Db>(
        "SELECT m.room_id FROM memberships m JOIN rooms r ON r.id = m.room_id \
         WHERE m.user_id = $1 AND r.deleted_at IS NULL ORDER BY m.room_id",
    )
    .bind_id(user_id.0)
    .fetch_all(store.reader())
    .await?;
    rows.iter().map(|row| row.id("room_id")).collect()
}

/// The membership, if the room is live.
pub(crate) async fn membership<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
) -> Result<Option<Membership>> {
    let row = stmt::<B::Db>(concat!(
        "SELECT ",
        membership_cols!(),
        " FROM memberships m JOIN rooms r ON r.id = m.room_id \
         WHERE m.room_id = $1 AND m.user_id = $2 AND r.deleted_at IS NULL"
    ))
    .bind_id(room.0)
    .bind_id(user.0)
    .fetch_optional(store.reader())
    .await?;
    decode_opt(row, rows::membership)
}

/// The live room and the user's membership of it, in one read.
pub(crate) async fn access<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
) -> Result<Option<(Room, Option<Membership>)>> {
    // The column names of the two tables do not overlap.
    let row = stmt::<B::Db>(concat!(
        "SELECT ",
        room_cols!(),
        ", ",
        membership_cols!(),
        " FROM rooms r LEFT JOIN memberships m ON m.room_id = r.id AND m.user_id = $2 \
         WHERE r.id = $1 AND r.deleted_at IS NULL"
    ))
    .bind_id(room.0)
    .bind_id(user.0)
    .fetch_optional(store.reader())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let membership = match row.opt_text("role")? {
        Some(_) => Some(rows::membership(&row)?),
        None => None,
    };
    Ok(Some((rows::room(&row)?, membership)))
}

/// Adds the member (if new) to the live room, in one transaction.
pub(crate) async fn add_member<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
    role: Role,
    now: i64,
) -> Result<(Membership, bool)> {
    let mut tx = store.write_tx().await?;
    if !exists(tx.executor(), B::Db::LIVE_ROOM, room.0).await?
        || !exists(tx.executor(), B::Db::LIVE_USER, user.0).await?
    {
        return Err(StoreError::NotFound);
    }
    // The room's lock above keeps a ban from landing between this check and
    // the insert (a ban takes the room's log lock, which waits for it).
    if super::roles::is_banned(tx.executor(), room, user).await? {
        return Err(StoreError::Banned);
    }
    let added = insert_membership(tx.executor(), room, user, role, now).await?;
    let membership = find_membership(tx.executor(), room, user)
        .await?
        .ok_or_else(|| rows::corrupt("membership vanished after insert"))?;
    tx.commit().await.map_err(db_err)?;
    Ok((membership, added))
}

pub(crate) async fn list_members<B: Backend>(
    store: &B,
    room: RoomId,
    after: Option<UserId>,
    limit: u32,
) -> Result<Vec<MemberProfile>> {
    let query = stmt::<B::Db>(concat!(
        "SELECT ",
        membership_cols!(),
        ", u.username, u.display_name \
         FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.room_id = $1 AND u.deleted_at IS NULL AND ($2 IS NULL OR m.user_id > $2) \
         ORDER BY m.user_id LIMIT $3"
    ))
    .bind_id(room.0);
    let rows = page(store, query, after.map(|a| a.0), limit).await?;
    rows.iter()
        .map(|row| {
            Ok(MemberProfile {
                membership: rows::membership(row)?,
                username: row.text("username")?,
                display_name: row.text("display_name")?,
            })
        })
        .collect()
}

pub(crate) async fn mark_read<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
    seq: Seq,
) -> Result<()> {
    let changed = stmt::<B::Db>(B::Db::MARK_READ)
        .bind(seq)
        .bind_id(room.0)
        .bind_id(user.0)
        .execute(store.writer())
        .await?;
    if changed == 0 {
        return Err(StoreError::NotMember);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_pattern_escapes_wildcards_and_the_escape_char() {
        assert_eq!(contains_pattern("50%"), "%50\\%%");
        assert_eq!(contains_pattern("a_b"), "%a\\_b%");
        assert_eq!(contains_pattern("c:\\x"), "%c:\\\\x%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn dm_key_ignores_argument_order() {
        let (a, b) = (UserId::new(), UserId::new());
        assert_eq!(dm_key(a, b), dm_key(b, a));
        assert_ne!(dm_key(a, b), dm_key(a, a));
    }
}
