//! The gateway's way to auth and room: generated gRPC clients over a
//! [`Transport`]. In the distributed mode that is a network `Channel`; in
//! the all-in-one server it is the services' own router, called in process
//! (no HTTP/2 framing, no connection task: a call is a function call that
//! still encodes its messages, so both modes run the same service code with
//! the same metadata). The client code is the same.

use chat_authn::internal::{assert_service, assert_user, GATEWAY};
use chat_authn::Caller;
use chat_proto::v1::auth_service_client::AuthServiceClient;
use chat_proto::v1::room_service_client::RoomServiceClient;
use std::time::Duration;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceExt};

/// What a gRPC client of the gateway sends its HTTP requests through.
pub type Transport = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// A [`Transport`] that could not carry a call (a network channel's
/// connection error; the in-process transport has none).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(#[from] tonic::transport::Error);

/// A network channel as a [`Transport`].
pub fn network(channel: Channel) -> Transport {
    BoxCloneSyncService::new(channel.map_err(TransportError))
}

/// A server-side gRPC service (the all-in-one's router of auth and room)
/// as a [`Transport`], called in process. The `grpc-timeout` a client
/// sets is enforced here, as a network server would.
pub fn in_process<S>(service: S) -> Transport
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service_fn(move |req: http::Request<tonic::body::Body>| {
        let mut service = service.clone();
        async move {
            let deadline = req
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout);
            let call = match service.ready().await {
                Ok(ready) => ready.call(req),
                Err(never) => match never {},
            };
            let res = match deadline {
                Some(d) => match tokio::time::timeout(d, call).await {
                    Ok(res) => res,
                    Err(_) => Ok(tonic::Status::deadline_exceeded("deadline exceeded").into_http()),
                },
                None => call.await,
            };
            res.map_err(|never| match never {})
        }
    }))
}

/// A `grpc-timeout` header value (`<digits><unit>`, unit `H M S m u n`).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Clone)]
pub struct Backends {
    pub auth: AuthServiceClient<Transport>,
    pub room: RoomServiceClient<Transport>,
}

impl Backends {
    pub fn new(auth: Transport, room: Transport) -> Self {
        Self {
            auth: AuthServiceClient::new(auth),
            room: RoomServiceClient::new(room),
        }
    }
}

/// How a call identifies the user it is for.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// Nobody (signup, login, refresh).
    Anonymous,
    /// The client's own access token (REST).
    Bearer(&'a str),
    /// A connected user, asserted with the internal secret (WebSocket).
    User(&'a Caller, &'a str),
    /// The gateway itself, for no user, with the internal secret (a hub
    /// backfilling a room for all its subscribers).
    Service(&'a str),
}

/// A request with identity, deadline and the client's user agent.
pub fn request<T>(
    msg: T,
    who: As<'_>,
    timeout: Duration,
    user_agent: Option<&str>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    let md = req.metadata_mut();
    match who {
        As::Anonymous => {}
        As::Bearer(token) => {
            if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
                md.insert("authorization", v);
            }
        }
        As::User(caller, secret) => assert_user(md, caller, secret),
        As::Service(secret) => assert_service(md, GATEWAY, secret),
    }
    if let Some(ua) = user_agent.and_then(|u| MetadataValue::try_from(u).ok()) {
        md.insert("x-client-user-agent", ua);
    }
    req
}

/// Attempts of a call that is safe to repeat.
const ATTEMPTS: u32 = 4;

/// Runs `call` again while it fails with `UNAVAILABLE` (a replica restarting,
/// a connection being re-established), with a short backoff. Only for calls
/// that are safe to repeat: reads, and writes that are idempotent by design
/// (`PostMessage` dedupes on `client_msg_id`, `MarkRead` only moves forward).
///
/// A refusal for load ([`chat_core::is_overload`]: the backend is at its
/// `--max-concurrent-calls`) is not retried: a retry here would only hold
/// the client's request in the gateway, a queue in another place. It goes
/// back to the client at once, with the backend's retry hint.
pub async fn retrying<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    retry_while(call, |s| !chat_core::is_overload(s)).await
}

/// [`retrying`], waiting out a refusal for load too: for the gateway's own
/// reads for every subscriber of a room (a hub's backfill), where giving
/// up closes their sockets and each comes back with calls of its own.
pub async fn retrying_through_overload<T, F, Fut>(call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    retry_while(call, |_| true).await
}

/// Runs `call` again while it fails with an `UNAVAILABLE` that `retry`
/// accepts, [`ATTEMPTS`] times at most.
async fn retry_while<T, F, Fut>(
    mut call: F,
    retry: impl Fn(&tonic::Status) -> bool,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut wait = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(s) if s.code() == tonic::Code::Unavailable && retry(&s) && attempt < ATTEMPTS => {
                tracing::debug!(attempt, error = %s.message(), "backend unavailable; retrying");
                tokio::time::sleep(wait).await;
                wait *= 3;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        use super::parse_grpc_timeout as p;
        assert_eq!(p("5S"), Some(Duration::from_secs(5)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p(""), None);
        assert_eq!(p("S"), None);
        assert_eq!(p("5x"), None);
    }

    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn unavailable_is_retried_and_other_errors_are_not() {
        let calls = AtomicU32::new(0);
        let r = retrying(|| async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 2 {
                Err(tonic::Status::unavailable("restarting"))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::permission_denied("no"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("down"))
        })
        .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
    }

    #[tokio::test]
    async fn a_refusal_for_load_is_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::from(chat_core::ApiError::overloaded(1)))
        })
        .await;
        let s = r.unwrap_err();
        assert!(chat_core::is_overload(&s), "{s:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r = retrying_through_overload(|| async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(tonic::Status::from(chat_core::ApiError::overloaded(1))),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r.unwrap(), 1, "the gateway's own reads wait it out");
    }
}
