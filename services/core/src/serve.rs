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
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// Serves an axum router until `stop` is cancelled; in-flight requests
/// finish first.
pub async fn http(
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
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
