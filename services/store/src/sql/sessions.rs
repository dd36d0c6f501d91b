//! Sessions and their refresh tokens: sign-in, rotation, listing and
//! revocation.

use chat_core::{SessionId, UserId};

use super::rows::{self, db_err, decode_all, decode_opt, session_cols, Columns};
use super::{exists, stmt, AsExecutor, Dialect};
use crate::backend::Backend;
use crate::{NewSession, Result, RotateOutcome, Session, SessionLimits, StoreError};

/// The refresh token `$1` with what decides its fate (is it spent, is its
/// session or user gone, is the session too old or idle), followed by `$lock`: the row lock that makes a
/// concurrent rotation of the token wait, in a dialect whose writers run in
/// parallel. For [`Dialect::ROTATING_TOKEN`].
macro_rules! rotating_token_sql {
    ($lock:literal) => {
        concat!(
            "SELECT t.session_id, t.spent_at, t.next_hash, t.next_sealed, \
             s.created_at AS session_created_at, s.last_used_at, \
             s.revoked_at, u.deleted_at \
             FROM refresh_tokens t \
             JOIN sessions s ON s.id = t.session_id \
             JOIN users u ON u.id = s.user_id \
             WHERE t.token_hash = $1",
            $lock
        )
    };
}

pub(crate) use rotating_token_sql;

pub(crate) async fn create<B: Backend>(
    store: &B,
    session: &NewSession,
    token_hash: &[u8],
) -> Result<()> {
    let mut tx = store.write_tx().await?;
    if !exists(tx.executor(), B::Db::LIVE_USER, session.user_id.0).await? {
        return Err(StoreError::NotFound);
    }
    stmt::<B::Db>(
        "INSERT INTO sessions (id, user_id, user_agent, created_at, last_used_at) \
         VALUES ($1, $2, $3, $4, $4)",
    )
    .bind_id(session.id.0)
    .bind_id(session.user_id.0)
    .bind(&session.user_agent)
    .bind(session.created_at)
    .execute(tx.executor())
    .await?;
    stmt::<B::Db>(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash)
    .bind_id(session.id.0)
    .bind(session.created_at)
    .execute(tx.executor())
    .await?;
    tx.commit().await.map_err(db_err)
}

/// Spends `old_hash` and issues `new_hash` in its session, in one
/// transaction; a spent token coming back within `grace_ms` gets its live
/// successor again, any later (or whose successor is spent) revokes the
/// session, as does a session past `limits`.
pub(crate) async fn rotate_refresh_token<B: Backend>(
    store: &B,
    old_hash: &[u8],
    new_hash: &[u8],
    new_sealed: &[u8],
    now: i64,
    grace_ms: i64,
    limits: SessionLimits,
) -> Result<RotateOutcome> {
    let mut tx = store.write_tx().await?;
    let row = stmt::<B::Db>(B::Db::ROTATING_TOKEN)
        .bind(old_hash)
        .fetch_optional(tx.executor())
        .await?;
    let Some(row) = row else {
        return Ok(RotateOutcome::Unknown);
    };
    let session_id: SessionId = row.id("session_id")?;
    let (spent_at, revoked_at, user_deleted_at) = (
        row.opt_int("spent_at")?,
        row.opt_int("revoked_at")?,
        row.opt_int("deleted_at")?,
    );

    if revoked_at.is_some() || user_deleted_at.is_some() {
        return Ok(RotateOutcome::Revoked);
    }
    // Checked under the token's lock, so a concurrent refresh sees the
    // session either live and rotated or already ended.
    if limits.expired(
        row.int("session_created_at")?,
        row.int("last_used_at")?,
        now,
    ) {
        end_session::<B::Db>(tx.executor(), session_id, now).await?;
        tx.commit().await.map_err(db_err)?;
        tracing::info!(session_id = %session_id, "session expired");
        return Ok(RotateOutcome::Expired(session_id));
    }
    if let Some(spent_at) = spent_at {
        let in_grace = grace_ms > 0 && spent_at > now - grace_ms;
        if let (true, Some(next_hash), Some(sealed)) = (
            in_grace,
            row.opt_bytes("next_hash")?,
            row.opt_bytes("next_sealed")?,
        ) {
            // The rotation it raced with has just happened: answer with the
            // same successor, as long as nobody has spent that one either.
            let next = stmt::<B::Db>("SELECT spent_at FROM refresh_tokens WHERE token_hash = $1")
                .bind(next_hash.as_slice())
                .fetch_optional(tx.executor())
                .await?;
            if let Some(next) = next {
                if next.opt_int("spent_at")?.is_none() {
                    let session = stmt::<B::Db>(concat!(
                        "SELECT ",
                        session_cols!(),
                        " FROM sessions WHERE id = $1"
                    ))
                    .bind_id(session_id.0)
                    .fetch_one(tx.executor())
                    .await?;
                    let session = rows::session(&session)?;
                    tx.commit().await.map_err(db_err)?;
                    return Ok(RotateOutcome::Replayed { session, sealed });
                }
            }
        }
        // A spent token came back: someone holds a copy. End the session
        // for both holders.
        end_session::<B::Db>(tx.executor(), session_id, now).await?;
        tx.commit().await.map_err(db_err)?;
        tracing::warn!(session_id = %session_id, "refresh token reused; session revoked");
        return Ok(RotateOutcome::Reused(session_id));
    }

    // Sealed successors are needed only within their grace window; the
    // session's older ones go now, so a stolen spent token plus a copy of
    // the database cannot open the live one later.
    stmt::<B::Db>(
        "UPDATE refresh_tokens SET next_sealed = NULL \
         WHERE session_id = $1 AND next_sealed IS NOT NULL AND spent_at <= $2",
    )
    .bind_id(session_id.0)
    .bind(now - grace_ms)
    .execute(tx.executor())
    .await?;
    stmt::<B::Db>(
        "UPDATE refresh_tokens SET spent_at = $1, next_hash = $2, next_sealed = $3 \
         WHERE token_hash = $4",
    )
    .bind(now)
    .bind(new_hash)
    .bind(new_sealed)
    .bind(old_hash)
    .execute(tx.executor())
    .await?;
    stmt::<B::Db>(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(new_hash)
    .bind_id(session_id.0)
    .bind(now)
    .execute(tx.executor())
    .await?;
    let row = stmt::<B::Db>(concat!(
        "UPDATE sessions SET last_used_at = $1 WHERE id = $2 RETURNING ",
        session_cols!()
    ))
    .bind(now)
    .bind_id(session_id.0)
    .fetch_one(tx.executor())
    .await?;
    let session = rows::session(&row)?;
    tx.commit().await.map_err(db_err)?;
    Ok(RotateOutcome::Rotated(session))
}

/// Revokes session `id` at `now`, whatever ended it.
async fn end_session<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    id: SessionId,
    now: i64,
) -> Result<()> {
    stmt::<D>("UPDATE sessions SET revoked_at = $1 WHERE id = $2")
        .bind(now)
        .bind_id(id.0)
        .execute(ex)
        .await?;
    Ok(())
}

pub(crate) async fn get<B: Backend>(store: &B, id: SessionId) -> Result<Option<Session>> {
    let row = stmt::<B::Db>(concat!(
        "SELECT ",
        session_cols!(),
        " FROM sessions WHERE id = $1"
    ))
    .bind_id(id.0)
    .fetch_optional(store.reader())
    .await?;
    decode_opt(row, rows::session)
}

pub(crate) async fn list<B: Backend>(store: &B, user_id: UserId) -> Result<Vec<Session>> {
    let rows = stmt::<B::Db>(concat!(
        "SELECT ",
        session_cols!(),
        " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL \
         ORDER BY created_at DESC, id DESC"
    ))
    .bind_id(user_id.0)
    .fetch_all(store.reader())
    .await?;
    decode_all(&rows, rows::session)
}

pub(crate) async fn revoke<B: Backend>(
    store: &B,
    user_id: UserId,
    id: SessionId,
    now: i64,
) -> Result<bool> {
    let changed = stmt::<B::Db>(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind_id(id.0)
    .bind_id(user_id.0)
    .execute(store.writer())
    .await?;
    Ok(changed > 0)
}

pub(crate) async fn revoke_all<B: Backend>(
    store: &B,
    user_id: UserId,
    keep: Option<SessionId>,
    now: i64,
) -> Result<Vec<SessionId>> {
    let rows = stmt::<B::Db>(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE user_id = $2 AND revoked_at IS NULL AND ($3 IS NULL OR id <> $3) \
         RETURNING id",
    )
    .bind(now)
    .bind_id(user_id.0)
    .bind_opt_id(keep.map(|k| k.0))
    .fetch_all(store.writer())
    .await?;
    rows.iter().map(|row| row.id("id")).collect()
}

pub(crate) async fn revoked_since<B: Backend>(store: &B, since: i64) -> Result<Vec<SessionId>> {
    let rows =
        stmt::<B::Db>("SELECT id FROM sessions WHERE revoked_at >= $1 ORDER BY revoked_at, id")
            .bind(since)
            .fetch_all(store.reader())
            .await?;
    rows.iter().map(|row| row.id("id")).collect()
}

/// Ids bound per `IN (…)` list: well below every dialect's bind limit.
const ENDED_CHUNK: usize = 500;

/// Which of `ids` have ended at `now`: revoked, their user deleted, past
/// `limits`, or unknown.
pub(crate) async fn ended<B: Backend>(
    store: &B,
    ids: &[SessionId],
    limits: SessionLimits,
    now: i64,
) -> Result<Vec<SessionId>> {
    let mut ended = Vec::new();
    for chunk in ids.chunks(ENDED_CHUNK) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT s.id, s.created_at, s.last_used_at, s.revoked_at, u.deleted_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id IN ({list})"
        );
        let mut q = stmt::<B::Db>(&sql);
        for id in chunk {
            q = q.bind_id(id.0);
        }
        let rows = q.fetch_all(store.reader()).await?;
        let mut live = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: SessionId = row.id("id")?;
            let over = row.opt_int("revoked_at")?.is_some()
                || row.opt_int("deleted_at")?.is_some()
                || limits.expired(row.int("created_at")?, row.int("last_used_at")?, now);
            if !over {
                live.insert(id);
            }
        }
        ended.extend(chunk.iter().filter(|id| !live.contains(id)).copied());
    }
    Ok(ended)
}
