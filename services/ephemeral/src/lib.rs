//! The Ephemeral seam: fast, losable state. Revoked sessions (so a logged-out
//! access token stops working before it expires), presence and rate-limit
//! counters. Nothing here is the source of truth: losing it logs nobody out
//! and loses no message (revocations are re-seeded from the store at start).

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use chat_core::{SessionId, UserId};
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryEphemeral;
pub use redis::RedisEphemeral;

#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error("ephemeral store configuration: {0}")]
    Config(String),
    #[error("ephemeral store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = EphemeralError> = std::result::Result<T, E>;

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
    /// Which of `users` have an open connection.
    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>>;
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
