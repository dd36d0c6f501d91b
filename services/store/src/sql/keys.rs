//! Token signing keys: the active one and those still verifying, shared by
//! every auth replica. At most one key is active (a unique partial index),
//! so two replicas creating the first key, or two rotations at once, end
//! with one winner and an `AlreadyExists` for the other.

use super::rows::{self, Columns};
use super::{stmt, AsExecutor};
use crate::backend::Backend;
use crate::{KeyState, Result, StoredSigningKey};

macro_rules! key_cols {
    () => {
        "kid, public_key, private_sealed, created_at, state, retiring_at"
    };
}

fn key(row: &impl Columns) -> Result<StoredSigningKey> {
    let state = row.str("state")?;
    Ok(StoredSigningKey {
        kid: row.text("kid")?,
        public_key: row
            .opt_bytes("public_key")?
            .ok_or_else(|| rows::corrupt("signing key without a public key"))?,
        private_sealed: row
            .opt_bytes("private_sealed")?
            .ok_or_else(|| rows::corrupt("signing key without a private key"))?,
        created_at: row.int("created_at")?,
        state: KeyState::parse(state)
            .ok_or_else(|| rows::corrupt(format!("signing key state {state:?}")))?,
        retiring_at: row.opt_int("retiring_at")?,
    })
}

/// Every key not retired, oldest first.
pub(crate) async fn list<B: Backend>(store: &B) -> Result<Vec<StoredSigningKey>> {
    let rows = stmt::<B::Db>(concat!(
        "SELECT ",
        key_cols!(),
        " FROM signing_keys WHERE state <> 'retired' ORDER BY created_at, kid"
    ))
    .fetch_all(store.reader())
    .await?;
    rows::decode_all(&rows, key)
}

async fn insert<'c, B: Backend>(
    ex: impl sqlx::Executor<'c, Database = B::Db>,
    k: &StoredSigningKey,
    state: KeyState,
) -> Result<u64> {
    stmt::<B::Db>(concat!(
        "INSERT INTO signing_keys (",
        key_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&k.kid)
    .bind(k.public_key.as_slice())
    .bind(k.private_sealed.as_slice())
    .bind(k.created_at)
    .bind(state.as_str())
    .bind(k.retiring_at)
    .execute(ex)
    .await
}

/// Adds `k` as it is (`AlreadyExists`: the kid is known, or `k` is active
/// and another key is).
pub(crate) async fn add<B: Backend>(store: &B, k: &StoredSigningKey) -> Result<()> {
    insert::<B>(store.writer(), k, k.state).await.map(|_| ())
}

/// Makes `k` the active key; the one active until now starts retiring.
pub(crate) async fn rotate<B: Backend>(store: &B, k: &StoredSigningKey, now: i64) -> Result<()> {
    let mut tx = store.write_tx().await?;
    stmt::<B::Db>(
        "UPDATE signing_keys SET state = 'retiring', retiring_at = $1 WHERE state = 'active'",
    )
    .bind(now)
    .execute(tx.executor())
    .await?;
    insert::<B>(tx.executor(), k, KeyState::Active).await?;
    tx.commit().await.map_err(rows::db_err)
}

/// Retires the keys that started retiring before `before`; how many.
pub(crate) async fn retire<B: Backend>(store: &B, before: i64) -> Result<u64> {
    stmt::<B::Db>(
        "UPDATE signing_keys SET state = 'retired' \
         WHERE state = 'retiring' AND retiring_at < $1",
    )
    .bind(before)
    .execute(store.writer())
    .await
}
