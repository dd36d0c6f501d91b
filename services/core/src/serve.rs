//! Serving helpers shared by every binary: gRPC and HTTP on a bound
//! listener until a token is cancelled, with graceful shutdown.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves gRPC `routes` on `listener` until `stop` is cancelled; in-flight
/// calls finish first.
pub async fn grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // The callers are our own gateways, which cancel calls that time
        // out: under a connect storm that is many reset streams, and h2's
        // default (20) answers them with GOAWAY, failing every call on the
        // connection at once.
        .http2_max_pending_accept_reset_streams(Some(4096))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// Serves an axum router until `stop` is cancelled; in-flight requests
/// finish first.
///
/// HTTP/1.1 (with upgrades) and HTTP/2 with prior knowledge, each served
/// straight on the accepted `TcpStream`, so that a WebSocket upgrade hands
/// its handler the socket itself (`hyper::upgrade::Upgraded` downcasts to
/// `TokioIo<TcpStream>`): the gateway writes shared, pre-framed bytes to
/// it from the room hubs.
pub async fn http(
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt as _;

    let service = hyper_util::service::TowerToHyperService::new(router.into_service().map_request(
        |req: axum::http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
    ));
    // Connections still open when `stop` comes are asked to finish what
    // they are doing and close; upgraded ones (WebSockets) are their
    // handlers' to close.
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            // HTTP/2 with prior knowledge opens with "PRI * HTTP/2.0".
            let mut head = [0u8; 3];
            let h2 = matches!(tcp.peek(&mut head).await, Ok(3)) && &head == b"PRI";
            let io = TokioIo::new(tcp);
            // Runs a hyper connection until it ends, or asks it to finish
            // what it is doing when `stop` comes. (hyper has no trait for
            // graceful_shutdown shared by both connection types.)
            macro_rules! until_stopped {
                ($conn:expr) => {{
                    let mut conn = std::pin::pin!($conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }};
            }
            let result = if h2 {
                until_stopped!(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                )
            } else {
                until_stopped!(hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades())
            };
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
    Ok(())
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
}

impl GrpcProcess {
    /// Binds both listeners of `listen`; `/readyz` runs `checks`.
    pub async fn bind(
        listen: &crate::config::ListenArgs,
        routes: tonic::service::Routes,
        checks: Vec<crate::health::ReadyCheck>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            grpc: bind(listen.grpc_addr).await?,
            http: bind(listen.http_addr).await?,
            routes,
            health: crate::health::router(checks),
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
        let http = tokio::spawn(self::http(self.http, self.health, stop.clone()));
        grpc(self.grpc, self.routes, stop).await?;
        http.await??;
        Ok(())
    }
}
