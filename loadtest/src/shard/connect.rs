//! Opening a connection: each WebSocket URL resolved once to a
//! [`Target`], then per connection a TCP socket (from its 127.0.0.x
//! source address when the server is on loopback), the handshake with the
//! user's token, under the shard's connect concurrency and timeout.

use crate::os::io_reason;
use crate::plan::Plan;
use crate::ws::WsConn;
use anyhow::{anyhow, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

/// Where connections go.
struct Target {
    addr: SocketAddr,
    /// The Host header and the path of the WebSocket URL.
    host: String,
    path: String,
    /// The server is on 127.x: connections may come from 127.0.0.2...
    bind_source: bool,
}

/// Connects the shard's connections to the run's URLs.
pub(super) struct Dialer {
    sem: Semaphore,
    targets: Vec<Target>,
    /// For connect + handshake (and for the first `subscribed`).
    pub(super) timeout: Duration,
}

impl Dialer {
    /// Resolves every URL of the plan.
    pub(super) async fn new(plan: &Plan) -> Result<Self> {
        let mut targets = Vec::new();
        for url in &plan.ws_urls {
            let (addr, host, path) = resolve(url).await?;
            let bind_source = matches!(addr.ip(), IpAddr::V4(v4) if v4.is_loopback());
            targets.push(Target {
                addr,
                host,
                path,
                bind_source,
            });
        }
        Ok(Dialer {
            sem: Semaphore::new(plan.connect_concurrency.max(1)),
            targets,
            timeout: Duration::from_secs_f64(plan.connect_timeout_s.max(0.1)),
        })
    }

    /// Opens connection `idx` of `plan`; an error is a short reason.
    pub(super) async fn connect(&self, plan: &Plan, idx: usize) -> Result<WsConn, String> {
        let _permit = self
            .sem
            .acquire()
            .await
            .map_err(|_| "shutting down".to_string())?;
        let target = &self.targets[plan.url_of(idx)];
        let attempt = async {
            let sock = if target.addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| io_reason("socket", &e))?;
            if target.bind_source {
                if let Some(src) = plan.source_of(idx) {
                    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
                        .map_err(|e| io_reason("bind", &e))?;
                }
            }
            let stream = sock
                .connect(target.addr)
                .await
                .map_err(|e| io_reason("connect", &e))?;
            let _ = stream.set_nodelay(true);
            let token = &plan.tokens[plan.user_of(idx)];
            WsConn::handshake(stream, &target.host, &target.path, token, plan.read_buffer).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connect + handshake timed out after {:?}",
                self.timeout
            )),
        }
    }
}

/// `ws://host:port/path` → the address to connect to, the Host header
/// and the path.
async fn resolve(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("{url}: only ws:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = host;
    let host_port = if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    let mut addrs = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("cannot resolve {host_port}"))?;
    let addr = addrs
        .next()
        .ok_or_else(|| anyhow!("{host_port} resolves to nothing"))?;
    Ok((addr, host.to_string(), path.to_string()))
}
