//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer),
//! the same on every service.

use crate::ApiError;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// A named readiness probe.
#[derive(Clone)]
pub struct ReadyCheck {
    pub name: &'static str,
    pub check: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl ReadyCheck {
    /// Wraps an async probe; `f` is called on every `/readyz`.
    pub fn new<F, Fut, E>(name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        Self {
            name,
            check: Arc::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        }
    }
}

/// Runs every check (each bounded by 2 s); the first failure names itself.
pub async fn ready(checks: &[ReadyCheck]) -> Result<(), ApiError> {
    for c in checks {
        match tokio::time::timeout(Duration::from_secs(2), (c.check)()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiError::unavailable(format!("{}: {e}", c.name))),
            Err(_) => return Err(ApiError::unavailable(format!("{}: timed out", c.name))),
        }
    }
    Ok(())
}

/// A router with `/healthz`, `/readyz` and the debug routes, for services
/// whose only HTTP surface is for operators and probes (auth, room).
pub fn router(checks: Vec<ReadyCheck>) -> Router {
    let checks = Arc::new(checks);
    crate::debug::routes()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move {
                    ready(&checks).await?;
                    Ok::<_, ApiError>(Json(serde_json::json!({"status": "ready"})))
                }
            }),
        )
}
