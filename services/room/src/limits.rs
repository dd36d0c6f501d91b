//! Per-user rate limits: messages sent, membership changes, rooms created.
//! Counted in the ephemeral store so that every room replica shares the
//! count.

use chat_core::{ApiError, UserId};
use chat_ephemeral::Ephemeral;
use std::sync::Arc;
use std::time::Duration;

/// `limit` calls of one kind per user per `window` (0 = unlimited).
pub(crate) struct UserLimit {
    ephemeral: Arc<dyn Ephemeral>,
    /// The kind of call, the counter's key prefix.
    kind: &'static str,
    limit: u32,
    window: Duration,
}

impl UserLimit {
    pub(crate) fn new(
        ephemeral: Arc<dyn Ephemeral>,
        kind: &'static str,
        limit: u32,
        window: Duration,
    ) -> Self {
        Self {
            ephemeral,
            kind,
            limit,
            window,
        }
    }

    /// Counts one call of `user`'s: `rate_limited` past the limit. An
    /// unreachable limiter lets the call through.
    pub(crate) async fn check(&self, user: UserId) -> Result<(), ApiError> {
        if self.limit == 0 {
            return Ok(());
        }
        let key = format!("{}:{user}", self.kind);
        chat_ephemeral::limit::count(self.ephemeral.as_ref(), &key, self.limit, self.window).await
    }
}
