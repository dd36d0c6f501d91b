//! Roles and bans: changing a member's role (and handing a room over),
//! removing a member, and banning users from a room.
//!
//! The invariant kept here, on both backends, is that a room has exactly
//! one owner: the owner cannot be removed or banned, and gives the role up
//! only by handing it to another member, in one transaction. Role changes
//! and bans first take the room's lock ([`Dialect::ROOM_LOG`]): on Postgres
//! concurrent changes of one room queue there (and with them the room's
//! writers, briefly), so each sees the one before it; under SQLite's single
//! writer they are apart anyway. `memberships_one_owner` (a unique index on
//! the owner's row) backs the invariant up.

use chat_core::{RoomId, UserId};

use super::rooms::{find_membership, page};
use super::rows::{self, db_err, decode_all, decode_opt, Columns};
use super::{exists, stmt, AsExecutor, Dialect};
use crate::backend::Backend;
use crate::{Ban, Membership, Result, Role, StoreError};

/// The columns of a ban with the banned user's profile, from `bans b` joined
/// with `users u`.
macro_rules! ban_select {
    () => {
        "SELECT b.room_id, b.user_id, b.banned_by, b.banned_at, u.username, u.display_name \
         FROM bans b JOIN users u ON u.id = b.user_id "
    };
}

fn decode_ban(row: &impl Columns) -> Result<Ban> {
    Ok(Ban {
        room_id: row.id("room_id")?,
        user_id: row.id("user_id")?,
        username: row.text("username")?,
        display_name: row.text("display_name")?,
        banned_by: row.id("banned_by")?,
        banned_at: row.int("banned_at")?,
    })
}

/// Sets the role of `user` (not the owner: see [`set_role`]).
async fn update_role<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    room: RoomId,
    user: UserId,
    role: Role,
) -> Result<()> {
    stmt::<D>("UPDATE memberships SET role = $1 WHERE room_id = $2 AND user_id = $3")
        .bind(role.as_str())
        .bind_id(room.0)
        .bind_id(user.0)
        .execute(ex)
        .await?;
    Ok(())
}

/// [`crate::Store::set_member_role`].
pub(crate) async fn set_role<B: Backend>(
    store: &B,
    room: RoomId,
    by: UserId,
    user: UserId,
    role: Role,
) -> Result<Membership> {
    let mut tx = store.write_tx().await?;
    if !exists(tx.executor(), B::Db::ROOM_LOG, room.0).await? {
        return Err(StoreError::NotFound);
    }
    let caller = find_membership(tx.executor(), room, by).await?;
    if caller.map(|m| m.role) != Some(Role::Owner) {
        return Err(StoreError::Forbidden);
    }
    let target = find_membership(tx.executor(), room, user)
        .await?
        .ok_or(StoreError::NotFound)?;
    if user == by {
        return match role {
            Role::Owner => Ok(target),
            Role::Admin | Role::Member => Err(StoreError::SoleOwner),
        };
    }
    if role == Role::Owner {
        // The old owner first: the room never has two.
        update_role(tx.executor(), room, by, Role::Admin).await?;
    }
    update_role(tx.executor(), room, user, role).await?;
    let changed = find_membership(tx.executor(), room, user)
        .await?
        .ok_or_else(|| rows::corrupt("membership vanished in its role change"))?;
    tx.commit().await.map_err(db_err)?;
    Ok(changed)
}

/// [`crate::Store::remove_member`]: one statement that spares the owner,
/// so a transfer committed meanwhile is seen (Postgres re-checks the row).
pub(crate) async fn remove_member<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
) -> Result<bool> {
    let removed = stmt::<B::Db>(
        "DELETE FROM memberships WHERE room_id = $1 AND user_id = $2 AND role <> 'owner'",
    )
    .bind_id(room.0)
    .bind_id(user.0)
    .execute(store.writer())
    .await?;
    if removed > 0 {
        return Ok(true);
    }
    match find_membership(store.reader(), room, user).await? {
        Some(m) if m.role == Role::Owner => Err(StoreError::SoleOwner),
        _ => Ok(false),
    }
}

/// True if `user` is banned from `room`.
pub(crate) async fn is_banned<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    room: RoomId,
    user: UserId,
) -> Result<bool> {
    let row = stmt::<D>("SELECT 1 FROM bans WHERE room_id = $1 AND user_id = $2")
        .bind_id(room.0)
        .bind_id(user.0)
        .fetch_optional(ex)
        .await?;
    Ok(row.is_some())
}

/// [`crate::Store::ban_member`].
pub(crate) async fn ban_member<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
    by: UserId,
    now: i64,
) -> Result<(Ban, bool)> {
    let mut tx = store.write_tx().await?;
    if !exists(tx.executor(), B::Db::ROOM_LOG, room.0).await?
        || !exists(tx.executor(), B::Db::LIVE_USER, user.0).await?
    {
        return Err(StoreError::NotFound);
    }
    let member = find_membership(tx.executor(), room, user).await?;
    if member.as_ref().is_some_and(|m| m.role == Role::Owner) {
        return Err(StoreError::SoleOwner);
    }
    let removed = match member {
        Some(_) => {
            stmt::<B::Db>("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2")
                .bind_id(room.0)
                .bind_id(user.0)
                .execute(tx.executor())
                .await?
                > 0
        }
        None => false,
    };
    stmt::<B::Db>(
        "INSERT INTO bans (room_id, user_id, banned_by, banned_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (room_id, user_id) DO NOTHING",
    )
    .bind_id(room.0)
    .bind_id(user.0)
    .bind_id(by.0)
    .bind(now)
    .execute(tx.executor())
    .await?;
    let row = stmt::<B::Db>(concat!(
        ban_select!(),
        "WHERE b.room_id = $1 AND b.user_id = $2"
    ))
    .bind_id(room.0)
    .bind_id(user.0)
    .fetch_optional(tx.executor())
    .await?;
    let ban =
        decode_opt(row, decode_ban)?.ok_or_else(|| rows::corrupt("ban vanished after insert"))?;
    tx.commit().await.map_err(db_err)?;
    Ok((ban, removed))
}

pub(crate) async fn unban_member<B: Backend>(
    store: &B,
    room: RoomId,
    user: UserId,
) -> Result<bool> {
    let lifted = stmt::<B::Db>("DELETE FROM bans WHERE room_id = $1 AND user_id = $2")
        .bind_id(room.0)
        .bind_id(user.0)
        .execute(store.writer())
        .await?;
    Ok(lifted > 0)
}

pub(crate) async fn list_bans<B: Backend>(
    store: &B,
    room: RoomId,
    after: Option<UserId>,
    limit: u32,
) -> Result<Vec<Ban>> {
    let query = stmt::<B::Db>(concat!(
        ban_select!(),
        "WHERE b.room_id = $1 AND ($2 IS NULL OR b.user_id > $2) ORDER BY b.user_id LIMIT $3"
    ))
    .bind_id(room.0);
    let rows = page(store, query, after.map(|a| a.0), limit).await?;
    decode_all(&rows, decode_ban)
}

/// When `user`'s account is deleted, in that transaction: each live group
/// room they own passes to its next member (the admin, then the member,
/// who joined first; deleted accounts are skipped), and a room with no
/// one left is deleted with them. The old owner's row stays, as a member.
pub(crate) async fn hand_over_owned_rooms<B: Backend>(
    tx: &mut sqlx::Transaction<'static, B::Db>,
    user: UserId,
    now: i64,
) -> Result<()> {
    let owned = stmt::<B::Db>(
        "SELECT m.room_id FROM memberships m JOIN rooms r ON r.id = m.room_id \
         WHERE m.user_id = $1 AND m.role = 'owner' AND r.kind = 'group' \
         AND r.deleted_at IS NULL ORDER BY m.room_id",
    )
    .bind_id(user.0)
    .fetch_all(tx.executor())
    .await?;
    let owned = owned
        .iter()
        .map(|row| row.id("room_id"))
        .collect::<Result<Vec<RoomId>>>()?;
    for room in owned {
        // The room's lock, as for any role change.
        if !exists(tx.executor(), B::Db::ROOM_LOG, room.0).await? {
            continue;
        }
        update_role(tx.executor(), room, user, Role::Member).await?;
        let next = stmt::<B::Db>(
            "SELECT m.user_id FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.room_id = $1 AND m.user_id <> $2 AND u.deleted_at IS NULL \
             ORDER BY CASE m.role WHEN 'admin' THEN 0 ELSE 1 END, m.joined_at, m.user_id \
             LIMIT 1",
        )
        .bind_id(room.0)
        .bind_id(user.0)
        .fetch_optional(tx.executor())
        .await?;
        match next {
            Some(row) => update_role(tx.executor(), room, row.id("user_id")?, Role::Owner).await?,
            None => {
                stmt::<B::Db>(
                    "UPDATE rooms SET deleted_at = $1, dm_key = NULL \
                     WHERE id = $2 AND deleted_at IS NULL",
                )
                .bind(now)
                .bind_id(room.0)
                .execute(tx.executor())
                .await?;
            }
        }
    }
    Ok(())
}
