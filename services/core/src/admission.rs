//! Admission control for the gRPC services: at most
//! `--max-concurrent-calls` calls in flight in the process, over every
//! connection; one more is refused at once rather than queued.
//!
//! A queue in front of a saturated service only moves the overload: every
//! queued call still holds its request, a task and its caller's deadline,
//! and answers late or not at all. A refusal is cheap and immediate, and
//! tells the caller when to come back: `UNAVAILABLE`, the `chat-error-code`
//! `unavailable` and a `chat-retry-after` of [`RETRY_AFTER_SECS`]. The
//! gateway passes it on as 503 with `Retry-After` (an `error` frame with
//! `retry_after_ms` on a WebSocket) and does not retry a user's call
//! itself ([`crate::error::is_overload`]).
//!
//! The limit is tower's [`GlobalConcurrencyLimitLayer`] under a
//! [`tower::load_shed::LoadShedLayer`], whose `Overloaded` error axum's
//! `HandleErrorLayer` turns into the refusal: one semaphore shared by every
//! connection, and by every server the same [`tonic::service::Routes`] is
//! served on (the all-in-one serves them over TCP and in process). A call
//! holds its place from its request head to its response (every call is
//! unary), so a call whose request body is slow to come holds one too.

use crate::ApiError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;

/// Calls in flight at once, by default. A call holds a task, its request
/// and, for most, a store connection or a place in the pool's queue (10
/// connections by default); a thousand queued on ten connections wait some
/// 100 ms at a few ms per query, well within the gateway's deadline. Past
/// that, waiting longer helps nobody.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// The retry hint of a refused call, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How many gRPC calls the process serves at once.
#[derive(Clone, Debug, clap::Args)]
pub struct AdmissionArgs {
    /// gRPC calls served at once by this process, over all connections;
    /// one more is refused at once with UNAVAILABLE (`unavailable`, retry
    /// after 1 s), not queued. 0: no limit.
    #[arg(long, env = "CHAT_MAX_CONCURRENT_CALLS",
          default_value_t = DEFAULT_MAX_CONCURRENT_CALLS)]
    pub max_concurrent_calls: usize,
}

impl AdmissionArgs {
    /// `routes` behind the limit (unchanged when it is 0).
    pub fn apply(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        admit(routes, self.max_concurrent_calls)
    }
}

/// `routes` with at most `max` calls in flight at once (0: no limit); one
/// more is answered with [`ApiError::overloaded`] at once. Every clone of
/// the result shares the one limit.
pub fn admit(routes: tonic::service::Routes, max: usize) -> tonic::service::Routes {
    if max == 0 {
        return routes;
    }
    let refused = Arc::new(AtomicU64::new(0));
    let stack = ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            move |error: tower::BoxError| std::future::ready(refuse(&error, &refused, max)),
        ))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(max));
    routes.into_axum_router().layer(stack).into()
}

/// The answer to a call the limit shed (the only error under it: the
/// routes themselves never fail).
fn refuse(error: &tower::BoxError, refused: &AtomicU64, max: usize) -> axum::response::Response {
    if !error.is::<tower::load_shed::error::Overloaded>() {
        tracing::error!(%error, "gRPC admission failed");
    }
    // One refusal in 1,000 is logged, with the count so far, so that an
    // overload does not also flood the logs.
    let n = refused.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(1000) {
        tracing::warn!(
            max_concurrent_calls = max,
            refused = n + 1,
            "at the concurrent call limit: refusing calls"
        );
    }
    tonic::Status::from(ApiError::overloaded(RETRY_AFTER_SECS)).into_http()
}
