//! The send rate limit: messages one user may post per window, counted in
//! the ephemeral store so that every room replica shares the count.

use crate::RoomConfig;
use chat_core::{ApiError, UserId};
use chat_ephemeral::{Ephemeral, RateDecision};
use std::sync::Arc;
use std::time::Duration;

/// [`RoomConfig::send_limit`] messages per [`RoomConfig::send_window`].
pub(crate) struct SendLimit {
    ephemeral: Arc<dyn Ephemeral>,
    limit: u32,
    window: Duration,
}

impl SendLimit {
    pub(crate) fn new(ephemeral: Arc<dyn Ephemeral>, cfg: &RoomConfig) -> Self {
        Self {
            ephemeral,
            limit: cfg.send_limit,
            window: cfg.send_window,
        }
    }

    /// Counts one message of `user`'s: `rate_limited` past the limit. An
    /// unreachable limiter lets the message through.
    pub(crate) async fn check(&self, user: UserId) -> Result<(), ApiError> {
        if self.limit == 0 {
            return Ok(());
        }
        match self
            .ephemeral
            .hit(&format!("send:{user}"), self.limit, self.window)
            .await
        {
            Ok(RateDecision::Limited(d)) => Err(ApiError::rate_limited(d.as_secs().max(1))),
            Ok(RateDecision::Allowed) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, "rate limiter unreachable; allowing");
                Ok(())
            }
        }
    }
}
