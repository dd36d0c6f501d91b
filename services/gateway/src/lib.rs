//! The gateway: the edge every client talks to.
//!
//! REST (`/api/v1/…`) and WebSocket (`/ws`) per the client contract, served
//! by axum. It reaches auth and room only through their gRPC interfaces
//! (`Backends`: generated clients over a channel, in-process or remote), and
//! fans room events out from the bus to its local connections, one bus
//! subscription per room (reference-counted, see [`ws::hub`]).

pub mod backends;
pub mod extract;
pub mod rest;
pub mod wire;
pub mod ws;

use chat_bus::{Bus, Subjects};
use chat_core::ApiError;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backends::Backends;

/// Tunables of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest WebSocket frame a client may send (1009 above).
    pub max_frame_bytes: usize,
    /// Largest REST body (413 above).
    pub max_body_bytes: usize,
    /// Frames queued for one connection before it is closed with 4009.
    pub outbound_queue: usize,
    /// Time a browser has to send its `auth` frame.
    pub auth_timeout: Duration,
    /// Deadline of every call to auth and room.
    pub rpc_timeout: Duration,
    /// Lets the gateway call room and auth on a connected user's behalf.
    pub internal_secret: String,
    /// Client frames per connection per second before 4008.
    pub ws_frames_per_sec: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024,
            outbound_queue: 4096,
            auth_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            internal_secret: String::new(),
            ws_frames_per_sec: 200,
        }
    }
}

/// A named readiness probe (`/readyz`).
pub type ReadyCheck = (
    &'static str,
    Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
);

/// Everything a request or connection handler needs; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub backends: Backends,
    pub verifier: chat_auth::Verifier,
    pub ephemeral: Arc<dyn chat_ephemeral::Ephemeral>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub cfg: GatewayConfig,
    pub hubs: Arc<ws::hub::Hubs>,
    pub conns: ws::registry::Registry,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub ready: Vec<ReadyCheck>,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backends: Backends,
        verifier: chat_auth::Verifier,
        ephemeral: Arc<dyn chat_ephemeral::Ephemeral>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        cfg: GatewayConfig,
        ready: Vec<ReadyCheck>,
        shutdown: CancellationToken,
    ) -> Self {
        let tracker = TaskTracker::new();
        Self {
            inner: Arc::new(Inner {
                hubs: Arc::new(ws::hub::Hubs::new(bus.clone(), subjects.clone())),
                conns: ws::registry::Registry::new(bus.clone(), subjects.clone()),
                backends,
                verifier,
                ephemeral,
                bus,
                subjects,
                cfg,
                shutdown,
                tracker,
                ready,
            }),
        }
    }

    /// The axum router: REST, WebSocket, health.
    pub fn router(&self) -> axum::Router {
        rest::router(self.clone())
    }

    /// Closes every WebSocket with 1012 and waits (up to `deadline`) for the
    /// connection tasks to finish. Call after `shutdown` was cancelled.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.conns.close_all(1012);
        self.inner.tracker.close();
        if tokio::time::timeout(deadline, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close before the deadline");
        }
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.inner.conns.len()
    }

    pub(crate) async fn readiness(&self) -> Result<(), ApiError> {
        for (name, check) in &self.inner.ready {
            if let Err(e) = check().await {
                return Err(ApiError::unavailable(format!("{name}: {e}")));
            }
        }
        Ok(())
    }
}
