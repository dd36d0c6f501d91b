//! The gateway's HTTP surface, in two routers. The public one: the REST
//! API (`rest`) under `/api/v1`, the WebSocket upgrade at `/ws` (see
//! [`crate::ws`]) and liveness (`/healthz`, what load balancers ask). The
//! admin one, for the `--admin-addr` listener that only operators reach:
//! readiness (`/readyz`, which names the failing dependency and its error),
//! Prometheus `/metrics` and the debug routes ([`chat_core::debug`]). Unknown paths and methods answer in the
//! contract's error shape; every request gets a body limit and a tracing
//! span.

use crate::extract::Json;
use crate::{rest, Gateway};
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chat_core::ApiError;
use serde_json::json;
use std::time::{Duration, Instant};
use tower_http::trace::TraceLayer;

/// Every route clients may reach, with its state and layers.
pub fn router(gw: Gateway) -> Router {
    let max_body = gw.inner.cfg.max_body_bytes;
    layered(
        Router::new()
            .nest("/api/v1", rest::routes())
            .route("/ws", get(crate::ws::upgrade))
            .route("/healthz", get(|| async { "ok" })),
        max_body,
    )
    .with_state(gw)
}

/// The operators' routes: `/readyz`, `/metrics` and `/debug/*`. They tell a client
/// more than it should know (upstream error text, load), so they are
/// served on their own listener, never on the public one.
pub fn admin_router(gw: Gateway) -> Router {
    layered(
        Router::new()
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .merge(chat_core::debug::routes()),
        0,
    )
    .with_state(gw)
}

/// Error-shaped fallbacks, the body limit and the request span.
fn layered(routes: Router<Gateway>, max_body: usize) -> Router<Gateway> {
    routes
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let path = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".into());
                    tracing::info_span!("http", method = %req.method(), matched_path = %path)
                })
                .on_request(())
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "request"
                    );
                })
                .on_failure(()),
        )
}

/// `200` when every readiness check passes, else `unavailable` naming the
/// first that failed.
async fn readyz(State(gw): State<Gateway>) -> rest::Res {
    let started = Instant::now();
    gw.readiness().await?;
    Ok(
        Json(json!({"status": "ready", "check_ms": started.elapsed().as_millis() as u64}))
            .into_response(),
    )
}

async fn metrics(State(gw): State<Gateway>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.inner.metrics.render(),
    )
}

/// `405` in the contract's error shape (`invalid_request`, field `method`).
async fn method_not_allowed(m: Method) -> Response {
    let mut r = ApiError::invalid("method", format!("{m} is not allowed here")).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
