//! `GET /ws`: the WebSocket handshake (RFC 6455) and authentication.
//!
//! A client with an `Authorization` header is checked before the upgrade
//! (a bad token is a plain HTTP 401). Browsers cannot set headers: they
//! send `{"type":"auth","token"}` as their first frame, within
//! `auth_timeout`, or the socket closes with 4001. A browser page from an
//! origin not in `--ws-allowed-origins` is closed with 4003. Then the
//! connection runs on the socket itself ([`conn::run`]).
//!
//! Before the upgrade: one client address holds at most
//! `--ws-max-per-addr` sockets on this gateway, and a user whose token is
//! in the header at most `--ws-max-per-user` across gateways; past either
//! the answer is HTTP 429 `rate_limited`.

use super::close::Close;
use super::conn;
use super::io::{Io, IoLimits};
use crate::Gateway;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_authn::Caller;
use chat_core::per_addr::Taken;
use chat_core::ApiError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// `GET /ws`.
pub async fn upgrade(State(gw): State<Gateway>, mut req: Request) -> Response {
    let headers = req.headers();
    let accept = match handshake(&req) {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    // One client address holds at most so many sockets on this gateway,
    // from the upgrade on (an unauthenticated socket holds a place too).
    let addr_slot = match client_ip(&req, &gw) {
        Some(ip) => match gw.inner.ws_addrs.take(ip) {
            Taken::Slot(s) => Some(s),
            Taken::Free => None,
            Taken::Full => return too_many("too many WebSockets from this address"),
        },
        None => None,
    };
    let origin_ok = origin_allowed(&gw.inner.cfg.allowed_origins, headers);
    // Header auth is checked before the upgrade: a bad token is a plain 401,
    // a user at their socket limit a plain 429.
    let header_caller = if origin_ok {
        match header_auth(&gw, headers).await {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    if let Some(c) = &header_caller {
        if at_user_limit(&gw, c).await {
            return too_many("too many WebSockets for this user");
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The socket keeps its place under the connection cap while it lives.
    let slot = req.extensions_mut().remove::<chat_core::serve::ConnSlot>();
    let tracker = gw.inner.tracker.clone();
    tracker.spawn(async move {
        let _slot = slot;
        let _addr_slot = addr_slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<hyper_util::rt::TokioIo<TcpStream>>() else {
            tracing::error!("WebSocket upgrade on a connection that is not a plain TcpStream");
            return;
        };
        let sock = Arc::new(parts.io.into_inner());
        let limits = IoLimits {
            max_frame_bytes: gw.inner.cfg.max_frame_bytes,
            max_pending_bytes: gw.inner.cfg.outbound_bytes,
        };
        let mut io = Io::new(sock, parts.read_buf, limits).await;
        if !origin_ok {
            io.close(Close::FORBIDDEN.because("origin not allowed"))
                .await;
            return;
        }
        let caller = match header_caller {
            Some(c) => Some(c),
            None => first_frame_auth(&gw, &mut io).await,
        };
        if let Some(caller) = caller {
            conn::run(gw, io, caller).await;
        }
    });
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// The client's address: the TCP peer's, or the one a trusted proxy
/// forwarded.
fn client_ip(req: &Request, gw: &Gateway) -> Option<std::net::IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(crate::client_addr::client_ip(
        peer,
        req.headers(),
        &gw.inner.cfg.trusted_proxies,
    ))
}

/// Whether the user already holds their share of sockets. The count is
/// the ephemeral store's, across gateways; when it cannot be read the
/// socket goes ahead and the check after the upgrade (4008) decides.
async fn at_user_limit(gw: &Gateway, c: &Caller) -> bool {
    match gw.inner.ephemeral.connections(c.user_id).await {
        Ok(n) => n >= gw.inner.cfg.max_sockets_per_user,
        Err(error) => {
            tracing::debug!(%error, "socket count unavailable");
            false
        }
    }
}

/// A 429 in the contract's error shape, before the upgrade.
fn too_many(why: &'static str) -> Response {
    ApiError {
        message: format!("{why}; retry in {REFUSED_RETRY_SECS} s"),
        ..ApiError::rate_limited(REFUSED_RETRY_SECS)
    }
    .into_response()
}

/// Seconds a client refused for holding too many sockets is told to wait.
const REFUSED_RETRY_SECS: u64 = 5;

/// Checks the upgrade request; the `Sec-WebSocket-Accept` value, or the
/// HTTP answer refusing it.
#[allow(clippy::result_large_err)]
fn handshake(req: &Request) -> Result<String, Response> {
    let headers = req.headers();
    let refuse = |status: StatusCode, msg: &'static str| (status, msg).into_response();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != axum::http::Method::GET {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrades use GET",
        ));
    }
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is missing",
        ));
    };
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Whether the request's `Origin` (if any) may open a WebSocket.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    origin.to_str().is_ok_and(|o| {
        let o = o.trim().trim_end_matches('/');
        allowed.iter().any(|a| a.eq_ignore_ascii_case(o))
    })
}

async fn header_auth(gw: &Gateway, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = h.to_str().ok().and_then(chat_authn::strip_bearer);
    match token {
        None => Err(ApiError::unauthorized("malformed authorization header")),
        Some(t) => gw.inner.verifier.verify(t).await.map(Some),
    }
}

#[derive(Deserialize)]
struct AuthFrame {
    #[serde(rename = "type")]
    kind: String,
    token: String,
}

/// Browsers cannot set headers: they send `{"type":"auth","token"}` first.
async fn first_frame_auth(gw: &Gateway, io: &mut Io) -> Option<Caller> {
    let deadline = gw.inner.cfg.auth_timeout;
    let first = tokio::select! {
        () = gw.inner.shutdown.cancelled() => {
            io.close(Close::RESTARTING).await;
            return None;
        }
        r = tokio::time::timeout(deadline, io.next()) => r,
    };
    let refuse = |reason| Close::UNAUTHORIZED.because(reason);
    let text = match first {
        Err(_) => {
            io.close(refuse("authentication timed out")).await;
            return None;
        }
        Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => {
            io.close(refuse("expected an auth frame")).await;
            return None;
        }
    };
    let frame: Option<AuthFrame> = serde_json::from_str(text.as_str()).ok();
    let Some(frame) = frame.filter(|f| f.kind == "auth") else {
        io.close(refuse("expected an auth frame")).await;
        return None;
    };
    match gw.inner.verifier.verify(&frame.token).await {
        Ok(c) => Some(c),
        Err(_) => {
            io.close(refuse("invalid or expired access token")).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn only_listed_origins_may_open_a_socket_when_a_list_is_set() {
        let allowed = vec!["https://chat.example.com".to_owned()];
        assert!(origin_allowed(
            &allowed,
            &with_origin(Some("https://chat.example.com"))
        ));
        assert!(origin_allowed(
            &allowed,
            &with_origin(Some("HTTPS://Chat.Example.com/"))
        ));
        assert!(!origin_allowed(
            &allowed,
            &with_origin(Some("https://evil.example"))
        ));
        assert!(!origin_allowed(&allowed, &with_origin(Some("null"))));
        assert!(
            origin_allowed(&allowed, &with_origin(None)),
            "a client that is not a browser sends no Origin"
        );
        assert!(origin_allowed(
            &[],
            &with_origin(Some("https://evil.example"))
        ));
    }
}
