//! The Ephemeral seam: fast, losable state. Revoked sessions (so a logged-out
//! access token stops working before it expires), presence, rate-limit
//! counters and a cache of each room's recent events (so resumes and
//! backfills need not read the store). Nothing here is the source of truth:
//! losing it logs nobody out and loses no message. Revocations are only a
//! cache of the store's: [`Revocations`] asks the store when the list
//! cannot answer (unreachable, or emptied by a flush), and auth re-seeds
//! the list at start and whenever it finds it emptied; the event cache is
//! only ever a copy of the log.

pub mod limit;
pub mod memory;
pub mod redis;
pub mod revocations;

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{RoomId, Seq, SessionId, UserId};
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryEphemeral;
pub use redis::RedisEphemeral;
pub use revocations::{Revocations, SessionSource};

#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error("ephemeral store configuration: {0}")]
    Config(String),
    #[error("ephemeral store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = EphemeralError> = std::result::Result<T, E>;

/// How long a room's recent-event cache lives after its last write, by
/// default: idle rooms cost nothing.
pub const DEFAULT_RECENT_TTL: Duration = Duration::from_secs(3600);

/// The in-process store's bound on its recent-event cache, in bytes over
/// every room, by default. (Redis is bounded by its own `maxmemory`.)
pub const DEFAULT_RECENT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// The answer of a rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    /// Over the limit; retry after this long.
    Limited(Duration),
}

#[async_trait]
pub trait Ephemeral: Send + Sync + 'static {
    /// Remembers a revoked session for `ttl` (the access token lifetime).
    async fn revoke_session(&self, id: SessionId, ttl: Duration) -> Result<()>;
    async fn is_session_revoked(&self, id: SessionId) -> Result<bool>;
    /// Like [`Self::is_session_revoked`], but `None` instead of "not
    /// revoked" when the list cannot vouch for it: it lost its contents (a
    /// Redis flush or restart) and was not re-seeded from the store since.
    /// The caller then asks the store ([`Revocations`] does).
    async fn session_revocation(&self, id: SessionId) -> Result<Option<bool>> {
        self.is_session_revoked(id).await.map(Some)
    }
    /// Whether the revocation list was seeded from the store since it was
    /// last emptied (see [`Self::mark_revocations_seeded`]).
    async fn revocations_seeded(&self) -> Result<bool> {
        Ok(true)
    }
    /// Records that the list now holds every recent revocation of the
    /// store (after a re-seed).
    async fn mark_revocations_seeded(&self) -> Result<()> {
        Ok(())
    }
    /// Counts one hit on `key` in a fixed window of `window`; more than
    /// `limit` hits in the window are `Limited`.
    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision>;
    /// Without counting: `Some(time left in the window)` when `key` has
    /// reached `limit` hits.
    async fn over_limit(&self, key: &str, limit: u32) -> Result<Option<Duration>>;
    /// Clears a counter (a successful login clears its failures).
    async fn reset(&self, key: &str) -> Result<()>;
    /// One more open connection of the user; returns the new count.
    async fn connection_opened(&self, user: UserId) -> Result<u32>;
    /// One fewer; returns the new count.
    async fn connection_closed(&self, user: UserId) -> Result<u32>;
    /// The user's open connections, across gateways.
    async fn connections(&self, user: UserId) -> Result<u32>;
    /// Which of `users` have an open connection.
    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>>;
    /// Tells the store that this process (a gateway) and so its users'
    /// connections are alive for `ttl` more; call it every interval well
    /// under `ttl`. Past `ttl` without one, the gateway is deemed crashed:
    /// its users show offline and [`Ephemeral::reap_presence`] returns them.
    /// Also rewrites the gateway's presence when the store lost it. A no-op
    /// in process (one process cannot outlive its own connections).
    async fn presence_heartbeat(&self, _ttl: Duration) -> Result<()> {
        Ok(())
    }
    /// Forgets up to `max_users` connections of one crashed gateway (whose
    /// heartbeat ended); `None` when there is none, else the users that now
    /// have no connection anywhere (each returned once, to whichever
    /// process asked first), to be announced offline.
    async fn reap_presence(&self, _max_users: usize) -> Result<Option<Vec<UserId>>> {
        Ok(None)
    }

    /// Caches encoded events of `room`'s log (the recent-event cache; a copy,
    /// never the truth). Each `(seq, bytes)` replaces whatever the room had
    /// cached under that seq (an edit or a deletion rewrites its target
    /// message's entry; a seq given twice keeps the last); then only the
    /// newest `keep` seqs of the room stay (`keep == 0` empties the room's
    /// cache). The room's cache expires [`DEFAULT_RECENT_TTL`] (or the
    /// store's configured TTL) after its last write. One atomic step: a
    /// reader sees all of it or none of it.
    async fn cache_events(&self, room: RoomId, events: &[(Seq, Bytes)], keep: usize) -> Result<()>;
    /// The cached events of `room` with seq > `after`, ascending, at most
    /// `limit`. May have holes (a write that failed or is still in flight,
    /// a trimmed or expired cache): callers check before trusting it.
    async fn cached_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>>;

    async fn ping(&self) -> Result<()>;
}

/// Opens the ephemeral store named by `url`: `memory` for in-process (which
/// ignores `key_prefix`), `redis://…` (or `rediss://`, `valkey://`…) for Redis,
/// with every key under `key_prefix` (e.g. `chat`).
pub async fn connect(url: &str, key_prefix: &str) -> Result<Arc<dyn Ephemeral>> {
    match url {
        "memory" | "memory://" => Ok(Arc::new(MemoryEphemeral::default())),
        u if ["redis://", "rediss://", "valkey://", "valkeys://"]
            .iter()
            .any(|s| u.starts_with(s)) =>
        {
            Ok(Arc::new(RedisEphemeral::connect(u, key_prefix).await?))
        }
        _ => Err(EphemeralError::Config(format!(
            "unsupported ephemeral URL {url:?} (expected memory or redis://host:port)"
        ))),
    }
}

/// The `/readyz` probe of a ephemeral: its `ping`.
pub fn ready_check(s: Arc<dyn Ephemeral>) -> chat_core::health::ReadyCheck {
    chat_core::health::ReadyCheck::new("ephemeral", move || {
        let s = s.clone();
        async move { s.ping().await }
    })
}
