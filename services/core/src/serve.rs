//! Serving helpers shared by every binary: gRPC and HTTP on a bound
//! listener until a token is cancelled, with graceful shutdown under a
//! deadline. The HTTP side bounds every stage of a connection (first
//! byte, head, body, keep-alive idle) and the number of connections, so
//! that silent or slow clients cannot hold the process's descriptors.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves gRPC `routes` on `listener` until `stop` is cancelled; in-flight
/// calls finish first.
pub async fn grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    grpc_with(listener, routes, None, stop).await
}

/// [`grpc`], over TLS when `tls` is given (a plaintext client is refused).
pub async fn grpc_with(
    listener: TcpListener,
    routes: tonic::service::Routes,
    tls: Option<tonic::transport::ServerTlsConfig>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // h2's limit of pending reset streams (20, then GOAWAY) stays as it
        // is: it is the guard against rapid-reset floods. A call lost to a
        // GOAWAY is `unavailable`, which callers retry (docs/security.md).
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// How long each stage of an HTTP connection may take, and how many
/// connections one listener holds at once. Every stage is bounded, so a
/// client that connects and sends nothing (or a byte a minute) costs a
/// file descriptor for a bounded time only.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// From accept to the first byte of the first request.
    pub first_byte: Duration,
    /// From the first byte to the end of a request's head (hyper's header
    /// read timeout). On HTTP/1.1 hyper starts it again as soon as a
    /// response is written, so it also bounds the keep-alive wait.
    pub header: Duration,
    /// A keep-alive connection with no request in flight is closed after
    /// this long (HTTP/2; HTTP/1.1 is closed sooner by `header`).
    pub idle: Duration,
    /// From a request's head to the end of its body.
    pub body: Duration,
    /// Connections served at once; past it a connection gets the refusal
    /// of [`over_capacity`] (or is closed when the reserve is full too).
    pub max_connections: usize,
    /// Connections from one client address at once (0: no limit); past it
    /// the same refusal. Addresses in `proxies` are exempt: every client
    /// behind a proxy shares its address.
    pub max_per_ip: usize,
    /// Peers exempt from `max_per_ip` (the trusted proxies).
    pub proxies: Vec<ipnet::IpNet>,
    /// After `stop`, how long in-flight requests may take before their
    /// connections are dropped.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(10),
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(30),
            max_connections: default_max_connections(),
            max_per_ip: DEFAULT_MAX_PER_IP,
            proxies: Vec::new(),
            drain: Duration::from_secs(10),
        }
    }
}

impl HttpLimits {
    /// Limits of an admin listener (`/readyz`, `/metrics`): its clients are
    /// a few probes and scrapers, so it holds few connections.
    pub fn admin(drain: Duration) -> Self {
        Self {
            max_connections: ADMIN_MAX_CONNECTIONS,
            drain,
            ..Self::default()
        }
    }
}

pub use crate::config::DEFAULT_MAX_PER_IP;

impl crate::config::HttpArgs {
    /// The limits, with `drain` as the shutdown deadline.
    pub fn limits(&self, drain: std::time::Duration) -> HttpLimits {
        use std::time::Duration;
        HttpLimits {
            first_byte: Duration::from_millis(self.first_byte_timeout_ms),
            header: Duration::from_millis(self.header_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
            body: Duration::from_millis(self.body_timeout_ms),
            max_connections: self
                .max_connections
                .map_or_else(default_max_connections, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            max_per_ip: usize::try_from(self.max_connections_per_ip).unwrap_or(usize::MAX),
            proxies: Vec::new(),
            drain,
        }
    }
}

/// Connections an admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// File descriptors kept for everything but client connections: the
/// store, gRPC channels, log files and the over-capacity reserve.
pub const FD_RESERVE: u64 = 256;

/// Connections past the cap that are still read (to answer `/healthz`
/// and to refuse the rest with 503) at once; beyond it they are closed
/// at once.
pub const OVER_CAP_RESERVE: usize = 64;

/// How long a connection past the cap may take to send its request.
pub const OVER_CAP_DEADLINE: Duration = Duration::from_secs(1);

/// The process's soft file limit minus [`FD_RESERVE`]: the default cap on
/// connections, so that `accept` never fails for want of a descriptor.
pub fn default_max_connections() -> usize {
    let soft = rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft.saturating_sub(FD_RESERVE).clamp(16, 1 << 20)).unwrap_or(1 << 20)
}

/// Serves an axum router until `stop` is cancelled; in-flight requests
/// finish first, for at most `limits.drain`.
///
/// HTTP/1.1 (with upgrades) and HTTP/2 with prior knowledge, each served
/// straight on the accepted `TcpStream`, so that a WebSocket upgrade hands
/// its handler the socket itself (`hyper::upgrade::Upgraded` downcasts to
/// `TokioIo<TcpStream>`): the gateway writes shared, pre-framed bytes to
/// it from the room hubs. An upgraded connection leaves this loop's
/// accounting: its handler owns it, and holds its [`ConnSlot`].
pub async fn http(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let body_deadline = limits.body;
    let service = hyper_util::service::TowerToHyperService::new(router.into_service().map_request(
        move |req: axum::http::Request<hyper::body::Incoming>| {
            req.map(|b| axum::body::Body::new(DeadlineBody::new(b, body_deadline)))
        },
    ));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = crate::per_addr::PerAddr::new(limits.max_per_ip, limits.proxies.clone());
    let reserve = Arc::new(tokio::sync::Semaphore::new(OVER_CAP_RESERVE));
    // Cancelled when the drain deadline has passed: what is still open then
    // is dropped.
    let force = CancellationToken::new();
    let conns = tokio_util::task::TaskTracker::new();
    let mut accept_errors = 0u32;
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    accept_errors = 0;
                    (tcp, peer)
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off (up
                    // to a second), don't spin.
                    accept_errors = accept_errors.saturating_add(1);
                    tracing::warn!(%error, "accept failed");
                    let pause = Duration::from_millis(10 << accept_errors.min(7));
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let (tcp, peer) = tcp;
        let _ = tcp.set_nodelay(true);
        let ip_slot = match per_ip.take(peer.ip()) {
            crate::per_addr::Taken::Slot(s) => Some(Some(Arc::new(s))),
            crate::per_addr::Taken::Free => Some(None),
            crate::per_addr::Taken::Full => None,
        };
        let slot = match (ip_slot, slots.clone().try_acquire_owned()) {
            (Some(ip), Ok(p)) => Some(ConnSlot {
                _permit: Arc::new(p),
                _ip: ip,
            }),
            _ => None,
        };
        let Some(slot) = slot else {
            match reserve.clone().try_acquire_owned() {
                Ok(permit) => {
                    conns.spawn(async move {
                        over_capacity(tcp).await;
                        drop(permit);
                    });
                }
                Err(_) => drop(tcp),
            }
            continue;
        };
        let service = service.clone();
        let (http1, http2) = (http1.clone(), http2.clone());
        let (stop, force) = (stop.clone(), force.clone());
        let limits = limits.clone();
        conns.spawn(async move {
            // HTTP/2 with prior knowledge opens with "PRI * HTTP/2.0".
            let mut head = [0u8; 3];
            let peeked = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(limits.first_byte, tcp.peek(&mut head)) => r,
            };
            let h2 = match peeked {
                Ok(Ok(n)) if n > 0 => n == 3 && &head == b"PRI",
                Ok(_) => return,
                Err(_) => {
                    tracing::debug!("no request within the first-byte timeout");
                    return;
                }
            };
            let io = TokioIo::new(tcp);
            let activity = Activity::new();
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |mut req: axum::http::Request<_>| {
                    req.extensions_mut().insert(slot.clone());
                    // The TCP peer: the client, or a proxy in front of it.
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let guard = activity.begin();
                    let fut = hyper::service::Service::call(&service, req);
                    async move {
                        let r = fut.await;
                        drop(guard);
                        r
                    }
                })
            };
            // Runs a hyper connection until it ends; asks it to finish
            // what it is doing when it has been idle too long or `stop`
            // comes, and drops it at `force`. (hyper has no trait for
            // graceful_shutdown shared by both connection types.)
            macro_rules! bounded {
                ($conn:expr) => {{
                    let mut conn = std::pin::pin!($conn);
                    let mut closing = false;
                    loop {
                        tokio::select! {
                            r = conn.as_mut() => break Some(r),
                            () = stop.cancelled(), if !closing => {
                                closing = true;
                                conn.as_mut().graceful_shutdown();
                            }
                            () = activity.idle_for(limits.idle), if !closing => {
                                closing = true;
                                conn.as_mut().graceful_shutdown();
                            }
                            () = force.cancelled() => break None,
                        }
                    }
                }};
            }
            let result = if h2 {
                bounded!(http2.serve_connection(io, service))
            } else {
                bounded!(http1.serve_connection(io, service).with_upgrades())
            };
            match result {
                Some(Err(error)) => {
                    tracing::debug!(%error, "HTTP connection ended with an error")
                }
                None => tracing::debug!("HTTP connection dropped at the shutdown deadline"),
                Some(Ok(())) => {}
            }
        });
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(limits.drain, conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = conns.len(),
            "HTTP connections still busy at the shutdown deadline; dropping them"
        );
        force.cancel();
        conns.wait().await;
    }
    Ok(())
}

/// A connection's place under the cap, in each of its requests'
/// extensions: a WebSocket handler keeps it for as long as the upgraded
/// socket lives, so WebSockets count against `--max-connections` too.
#[derive(Clone, Debug)]
pub struct ConnSlot {
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    _ip: Option<Arc<crate::per_addr::AddrSlot>>,
}

/// A connection past the cap: read one HTTP/1.1 request within
/// [`OVER_CAP_DEADLINE`]; `/healthz` is answered (the process is alive,
/// which is what a load balancer asks), anything else gets 503
/// `unavailable`, and the connection is closed.
async fn over_capacity(tcp: tokio::net::TcpStream) {
    use axum::response::IntoResponse as _;
    let service = hyper::service::service_fn(|req: axum::http::Request<hyper::body::Incoming>| {
        let resp = if req.uri().path() == "/healthz" {
            "ok".into_response()
        } else {
            crate::ApiError::unavailable("the server is at its connection limit; retry later")
                .into_response()
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(resp))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(OVER_CAP_DEADLINE)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
    let _ = tokio::time::timeout(OVER_CAP_DEADLINE * 2, conn).await;
}

/// Requests in flight on one connection and when the last one ended: what
/// the idle timeout looks at.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_end: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: 0.into(),
            last_end: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Counts a request in flight until the guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let since = *self.last_end.lock().unwrap_or_else(|p| p.into_inner());
            tokio::time::sleep_until(since + idle).await;
            let now_since = *self.last_end.lock().unwrap_or_else(|p| p.into_inner());
            if self.in_flight.load(Ordering::Relaxed) == 0 && now_since == since {
                return;
            }
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                // Busy: look again in a while.
                tokio::time::sleep(idle.min(Duration::from_secs(1))).await;
            }
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body that fails once its deadline (set when the head was
/// read) has passed: a client that drips its body a byte at a time holds
/// its connection for that long at most.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: hyper::body::Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("the request body timed out".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// A gRPC service process (auth, room): its gRPC listener and the HTTP
/// listener for `/healthz` and `/readyz`, bound and ready to run.
pub struct GrpcProcess {
    grpc: TcpListener,
    http: TcpListener,
    routes: tonic::service::Routes,
    health: axum::Router,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The server TLS settings of `--grpc-tls-cert`/`--grpc-tls-key`, checked
/// now (a bad file fails the start, not the first call).
async fn server_tls(
    listen: &crate::config::ListenArgs,
) -> std::io::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&listen.grpc_tls_cert, &listen.grpc_tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        let p = p.to_owned();
        async move {
            tokio::fs::read(&p).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
            })
        }
    };
    let identity = tonic::transport::Identity::from_pem(read(cert).await?, read(key).await?);
    let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    tonic::transport::Server::builder()
        .tls_config(tls.clone())
        .map_err(|e| std::io::Error::other(format!("bad --grpc-tls-cert/--grpc-tls-key: {e}")))?;
    Ok(Some(tls))
}

impl GrpcProcess {
    /// Binds both listeners of `listen`; `/readyz` runs `checks`. The
    /// routes are served behind `listen`'s admission limit.
    pub async fn bind(
        listen: &crate::config::ListenArgs,
        routes: tonic::service::Routes,
        checks: Vec<crate::health::ReadyCheck>,
    ) -> std::io::Result<Self> {
        let tls = server_tls(listen).await?;
        Ok(Self {
            grpc: bind(listen.grpc_addr).await?,
            http: bind(listen.http_addr).await?,
            routes: listen.admission.apply(routes),
            health: crate::health::router(checks),
            tls,
        })
    }

    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc.local_addr().ok()
    }

    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.local_addr().ok()
    }

    /// Serves until `stop`; in-flight calls finish first.
    pub async fn run(
        self,
        stop: CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let http = tokio::spawn(self::http(
            self.http,
            self.health,
            HttpLimits::default(),
            stop.clone(),
        ));
        grpc_with(self.grpc, self.routes, self.tls, stop).await?;
        http.await??;
        Ok(())
    }
}
