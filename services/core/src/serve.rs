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
