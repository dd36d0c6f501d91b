//! The revocation list with the store behind it.
//!
//! The store (Postgres or SQLite) is the source of truth for which sessions
//! have ended; the list in the ephemeral store is only its cache, fast and
//! losable. [`Revocations`] wraps an ephemeral store so that a revocation
//! check never fails open: when the list cannot answer (the ephemeral store
//! is unreachable, or was flushed or restarted empty and not re-seeded yet)
//! it asks the [`SessionSource`] (the store, directly or through auth).
//! Everything else passes through unchanged (every method of the trait is
//! forwarded, defaulted ones included: a new one must be added here too).

use crate::{Ephemeral, EphemeralError, RateDecision, Result};
use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{RoomId, Seq, SessionId, UserId};
use std::sync::Arc;
use std::time::Duration;

/// Where the truth about sessions lives: the store, or auth in front of it.
#[async_trait]
pub trait SessionSource: Send + Sync + 'static {
    /// Which of `ids` have ended: revoked, their user deleted, past their
    /// lifetime, or unknown.
    async fn ended(
        &self,
        ids: &[SessionId],
    ) -> std::result::Result<Vec<SessionId>, Box<dyn std::error::Error + Send + Sync>>;
}

/// An ephemeral store whose revocation checks fall back to a
/// [`SessionSource`] (see the module doc).
pub struct Revocations {
    cache: Arc<dyn Ephemeral>,
    source: Arc<dyn SessionSource>,
}

impl Revocations {
    pub fn wrap(cache: Arc<dyn Ephemeral>, source: Arc<dyn SessionSource>) -> Arc<dyn Ephemeral> {
        Arc::new(Self { cache, source })
    }

    async fn ask_source(&self, id: SessionId) -> Result<bool> {
        let ended = self
            .source
            .ended(&[id])
            .await
            .map_err(EphemeralError::Unavailable)?;
        Ok(ended.contains(&id))
    }
}

#[async_trait]
impl Ephemeral for Revocations {
    async fn revoke_session(&self, id: SessionId, ttl: Duration) -> Result<()> {
        self.cache.revoke_session(id, ttl).await
    }

    /// The list's answer when it has one; else the source's. An error only
    /// when neither can answer (the caller must then refuse, not trust).
    async fn is_session_revoked(&self, id: SessionId) -> Result<bool> {
        match self.cache.session_revocation(id).await {
            Ok(Some(revoked)) => Ok(revoked),
            Ok(None) => {
                tracing::debug!(session_id = %id, "revocation list not seeded; asking the store");
                self.ask_source(id).await
            }
            Err(error) => {
                tracing::warn!(%error, "revocation list unreachable; asking the store");
                self.ask_source(id).await
            }
        }
    }

    async fn session_revocation(&self, id: SessionId) -> Result<Option<bool>> {
        self.is_session_revoked(id).await.map(Some)
    }

    async fn revocations_seeded(&self) -> Result<bool> {
        self.cache.revocations_seeded().await
    }

    async fn mark_revocations_seeded(&self) -> Result<()> {
        self.cache.mark_revocations_seeded().await
    }

    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision> {
        self.cache.hit(key, limit, window).await
    }

    async fn over_limit(&self, key: &str, limit: u32) -> Result<Option<Duration>> {
        self.cache.over_limit(key, limit).await
    }

    async fn reset(&self, key: &str) -> Result<()> {
        self.cache.reset(key).await
    }

    async fn connection_opened(&self, user: UserId) -> Result<u32> {
        self.cache.connection_opened(user).await
    }

    async fn connection_closed(&self, user: UserId) -> Result<u32> {
        self.cache.connection_closed(user).await
    }

    async fn connections(&self, user: UserId) -> Result<u32> {
        self.cache.connections(user).await
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        self.cache.online(users).await
    }

    async fn presence_heartbeat(&self, ttl: Duration) -> Result<()> {
        self.cache.presence_heartbeat(ttl).await
    }

    async fn reap_presence(&self, max_users: usize) -> Result<Option<Vec<UserId>>> {
        self.cache.reap_presence(max_users).await
    }

    async fn cache_events(&self, room: RoomId, events: &[(Seq, Bytes)], keep: usize) -> Result<()> {
        self.cache.cache_events(room, events, keep).await
    }

    async fn cached_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>> {
        self.cache.cached_events(room, after, limit).await
    }

    async fn ping(&self) -> Result<()> {
        self.cache.ping().await
    }
}
