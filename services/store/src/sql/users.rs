//! Users: sign-up, look-up, profile and password changes, deletion.

use chat_core::{SessionId, UserId};

use super::rows::{self, decode_opt, user_cols, Columns};
use super::{stmt, AsExecutor};
use crate::backend::Backend;
use crate::{NewUser, Result, StoreError, User, UserAuth};

/// The case-insensitive uniqueness key of a username (lowercased in Rust,
/// so both backends agree on which names clash).
pub(crate) fn username_key(username: &str) -> String {
    username.to_lowercase()
}

pub(crate) async fn create<B: Backend>(store: &B, user: &NewUser) -> Result<User> {
    stmt::<B::Db>(
        "INSERT INTO users (id, username, username_key, display_name, password_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind_id(user.id.0)
    .bind(&user.username)
    .bind(&username_key(&user.username))
    .bind(&user.display_name)
    .bind(&user.password_hash)
    .bind(user.created_at)
    .execute(store.writer())
    .await?;
    Ok(User {
        id: user.id,
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        created_at: user.created_at,
    })
}

pub(crate) async fn by_username<B: Backend>(store: &B, username: &str) -> Result<Option<UserAuth>> {
    let row = stmt::<B::Db>(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE username_key = $1 AND deleted_at IS NULL"
    ))
    .bind(&username_key(username))
    .fetch_optional(store.reader())
    .await?;
    decode_opt(row, rows::user_auth)
}

pub(crate) async fn by_id<B: Backend>(store: &B, id: UserId) -> Result<Option<UserAuth>> {
    let row = stmt::<B::Db>(concat!(
        "SELECT ",
        user_cols!(),
        " FROM users WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind_id(id.0)
    .fetch_optional(store.reader())
    .await?;
    decode_opt(row, rows::user_auth)
}

pub(crate) async fn update_display_name<B: Backend>(
    store: &B,
    id: UserId,
    display_name: &str,
) -> Result<User> {
    let row = stmt::<B::Db>(concat!(
        "UPDATE users SET display_name = $1 WHERE id = $2 AND deleted_at IS NULL RETURNING ",
        user_cols!()
    ))
    .bind(display_name)
    .bind_id(id.0)
    .fetch_optional(store.writer())
    .await?;
    decode_opt(row, rows::user)?.ok_or(StoreError::NotFound)
}

pub(crate) async fn set_password_hash<B: Backend>(store: &B, id: UserId, hash: &str) -> Result<()> {
    let changed =
        stmt::<B::Db>("UPDATE users SET password_hash = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(hash)
            .bind_id(id.0)
            .execute(store.writer())
            .await?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Marks the user deleted, frees the username and revokes every session,
/// in one transaction; the revoked session ids.
pub(crate) async fn delete<B: Backend>(store: &B, id: UserId, now: i64) -> Result<Vec<SessionId>> {
    let mut tx = store.write_tx().await?;
    let changed = stmt::<B::Db>(
        "UPDATE users SET deleted_at = $1, username_key = NULL \
         WHERE id = $2 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind_id(id.0)
    .execute(tx.executor())
    .await?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    let revoked = stmt::<B::Db>(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE user_id = $2 AND revoked_at IS NULL RETURNING id",
    )
    .bind(now)
    .bind_id(id.0)
    .fetch_all(tx.executor())
    .await?;
    let revoked = revoked
        .iter()
        .map(|row| row.id("id"))
        .collect::<Result<Vec<_>>>()?;
    super::roles::hand_over_owned_rooms::<B>(&mut tx, id, now).await?;
    tx.commit().await.map_err(rows::db_err)?;
    Ok(revoked)
}
