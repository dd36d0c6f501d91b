//! Rate limits as the services answer them: a counter in the ephemeral
//! store becomes `429 rate_limited` with a `Retry-After`. A store that
//! cannot be reached lets the call through (logged): losing Redis must not
//! stop sign-ups, logins or sends.

use crate::{Ephemeral, RateDecision};
use chat_core::ApiError;
use std::time::Duration;

/// Counts one call on `key`: `rate_limited` once more than `limit` were
/// counted in the `window`. (Callers whose flag reads 0 as "no limit" skip
/// the call.)
pub async fn count(
    store: &dyn Ephemeral,
    key: &str,
    limit: u32,
    window: Duration,
) -> Result<(), ApiError> {
    match store.hit(key, limit, window).await {
        Ok(RateDecision::Limited(d)) => Err(limited(d)),
        Ok(RateDecision::Allowed) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, key, "rate limiter unreachable; allowing");
            Ok(())
        }
    }
}

/// Without counting: `rate_limited` while `key` holds `limit` calls.
pub async fn not_over(store: &dyn Ephemeral, key: &str, limit: u32) -> Result<(), ApiError> {
    match store.over_limit(key, limit).await {
        Ok(Some(d)) => Err(limited(d)),
        Ok(None) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, key, "rate limiter unreachable; allowing");
            Ok(())
        }
    }
}

fn limited(retry_after: Duration) -> ApiError {
    ApiError::rate_limited(retry_after.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryEphemeral;
    use chat_core::ErrorCode;

    #[tokio::test]
    async fn past_the_limit_is_rate_limited_with_a_retry_after() {
        let store = MemoryEphemeral::default();
        let window = Duration::from_secs(60);
        for _ in 0..2 {
            count(&store, "k", 2, window).await.unwrap();
        }
        not_over(&store, "k", 3).await.unwrap();
        let e = count(&store, "k", 2, window).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        let e = not_over(&store, "k", 2).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        not_over(&store, "never counted", 1).await.unwrap();
    }
}
