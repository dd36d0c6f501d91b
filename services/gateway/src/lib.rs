//! The gateway: the edge every client talks to.
//!
//! REST (`/api/v1/…`) and WebSocket (`/ws`) per the client contract, served
//! by axum. It reaches auth and room only through their gRPC interfaces
//! (`Backends`: generated clients over a channel, in-process or remote), and
//! fans room events out from the bus to its local connections, one bus
//! subscription per room (reference-counted, see [`ws::hub`]).

pub mod app;
pub mod backends;
pub mod client_addr;
pub mod extract;
pub mod http;
pub mod metrics;
mod rest;
pub mod room_api;
pub mod wire;
pub mod ws;

use chat_bus::{Bus, Subjects};
use chat_core::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backends::Backends;
pub use rest::bodies;

/// Tunables of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest WebSocket frame a client may send (1009 above).
    pub max_frame_bytes: usize,
    /// Largest REST body (413 above).
    pub max_body_bytes: usize,
    /// Room hand-offs queued for one connection's task (while it
    /// subscribes or backfills) before it is closed with 4009.
    pub outbound_queue: usize,
    /// Bytes waiting for one connection's socket before it is closed with
    /// 4009.
    pub outbound_bytes: usize,
    /// Time a browser has to send its `auth` frame.
    pub auth_timeout: Duration,
    /// Deadline of every call to auth and room.
    pub rpc_timeout: Duration,
    /// Lets the gateway call room and auth on a connected user's behalf.
    pub internal_secret: String,
    /// Client frames per connection per second before 4008.
    pub ws_frames_per_sec: u32,
    /// How long a busy room's events may wait, at most, to be handed to
    /// connections together (an idle room's first event goes at once; the
    /// wait adapts to the room's size below this).
    pub fanout_linger: Duration,
    /// The wait is this many times what the room's last hand-off took.
    pub fanout_linger_factor: f64,
    /// How long a room event that arrived ahead of a gap waits for the
    /// missing events on the bus before the gap is read from the log.
    pub bus_gap_wait: Duration,
    /// WebSocket subscribes checked with room at once; more wait their turn.
    pub subscribe_concurrency: usize,
    /// Browser origins allowed to open a WebSocket; empty allows any.
    pub allowed_origins: Vec<String>,
    /// A user's typing notices reach a room at most once per this long;
    /// zero relays every one.
    pub typing_interval: Duration,
    /// WebSockets one user may hold open, across gateways (429 before the
    /// upgrade, 4008 after it).
    pub max_sockets_per_user: u32,
    /// WebSockets one client address may hold open on this gateway (429
    /// past it; 0: no limit).
    pub max_sockets_per_addr: usize,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often an idle WebSocket is pinged (zero: never).
    pub ws_ping_interval: Duration,
    /// A WebSocket that sends nothing, not even a pong, for this long is
    /// dropped.
    pub ws_idle_timeout: Duration,
    /// How often the room hubs check their rooms' log ends with room, to
    /// deliver events whose publish the bus lost (zero: never).
    pub tail_check: Duration,

    /// How often this gateway tells the ephemeral store that it (and so
    /// each of its users) is alive, and looks for crashed gateways.
    pub presence_heartbeat: Duration,
    /// A gateway not heard from for this long is deemed crashed: its users
    /// go offline.
    pub presence_ttl: Duration,
    /// How often every open WebSocket's session is re-checked with auth
    /// (the store); zero: only after a bus reconnect.
    pub session_check_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024,
            outbound_queue: 4096,
            outbound_bytes: 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            internal_secret: String::new(),
            ws_frames_per_sec: 200,
            fanout_linger: Duration::from_millis(100),
            fanout_linger_factor: ws::hub::Linger::DEFAULT_FACTOR,
            bus_gap_wait: Duration::from_millis(DEFAULT_BUS_GAP_WAIT_MS),
            subscribe_concurrency: 64,
            allowed_origins: Vec::new(),
            typing_interval: Duration::from_secs(2),
            max_sockets_per_user: 64,
            max_sockets_per_addr: 1000,
            trusted_proxies: Vec::new(),
            ws_ping_interval: Duration::from_secs(30),
            ws_idle_timeout: Duration::from_secs(75),
            tail_check: Duration::from_secs(1),

            presence_heartbeat: Duration::from_secs(4),
            presence_ttl: Duration::from_secs(12),
            session_check_interval: Duration::from_millis(DEFAULT_SESSION_CHECK_MS),
        }
    }
}

/// See `--ws-session-check-ms`.
pub const DEFAULT_SESSION_CHECK_MS: u64 = 60_000;

/// How long an event ahead of a gap waits for the bus, by default (ms).
pub const DEFAULT_BUS_GAP_WAIT_MS: u64 = 100;

pub use chat_core::health::ReadyCheck;

/// Everything a request or connection handler needs; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub backends: Backends,
    pub verifier: chat_authn::Verifier,
    pub ephemeral: Arc<dyn chat_ephemeral::Ephemeral>,
    pub cfg: GatewayConfig,
    pub hubs: Arc<ws::hub::Hubs>,
    pub metrics: Arc<metrics::Metrics>,
    pub conns: ws::registry::Registry,
    /// RoomService for the WebSocket side.
    pub api: room_api::RoomApi,
    /// Presence announcements, bounded and tracked.
    pub presence: ws::presence::Presence,
    /// Typed bus events (typing, presence).
    pub publisher: chat_bus::Publisher,
    /// Open WebSockets per client address (`max_sockets_per_addr`).
    pub ws_addrs: chat_core::per_addr::PerAddr,
    /// Permits for subscribes' calls to room (`subscribe_concurrency`).
    pub subscribes: Arc<tokio::sync::Semaphore>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub ready: Vec<ReadyCheck>,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backends: Backends,
        verifier: chat_authn::Verifier,
        ephemeral: Arc<dyn chat_ephemeral::Ephemeral>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        cfg: GatewayConfig,
        ready: Vec<ReadyCheck>,
        shutdown: CancellationToken,
    ) -> Self {
        let tracker = TaskTracker::new();
        let metrics = {
            let mut m = metrics::Metrics::default();
            m.watch_bus(bus.clone());
            Arc::new(m)
        };
        let api = room_api::RoomApi::new(Arc::new(room_api::GrpcRoom::new(
            backends.clone(),
            cfg.internal_secret.clone(),
            cfg.rpc_timeout,
        )));
        let publisher = chat_bus::Publisher::new(bus.clone(), subjects.clone());
        let hubs = Arc::new(ws::hub::Hubs::new(
            bus.clone(),
            subjects.clone(),
            api.clone(),
            metrics.clone(),
            ws::hub::Linger {
                max: cfg.fanout_linger,
                factor: cfg.fanout_linger_factor,
            },
            cfg.bus_gap_wait,
        ));
        if !cfg.tail_check.is_zero() {
            // Ends with the shutdown (or the hubs); not tracked, so that
            // draining the connections does not wait for it.
            tokio::spawn(ws::hub::Hubs::check_tails(
                Arc::downgrade(&hubs),
                cfg.tail_check,
                shutdown.clone(),
            ));
        }

        let presence = ws::presence::Presence::new(
            api.clone(),
            publisher.clone(),
            tracker.clone(),
            shutdown.clone(),
            ws::presence::MAX_ANNOUNCING,
        );
        let conns = ws::registry::Registry::new(bus.clone(), subjects.clone());
        let rechecks = ws::recheck::Rechecks {
            registry: conns.clone(),
            auth: ws::recheck::AuthSessions {
                auth: backends.auth.clone(),
                internal_secret: cfg.internal_secret.clone(),
                rpc_timeout: cfg.rpc_timeout,
            },
            every: cfg.session_check_interval,
        };
        tokio::spawn(rechecks.run(bus.reconnects(), shutdown.clone()));
        presence.keep_alive(ephemeral.clone(), cfg.presence_heartbeat, cfg.presence_ttl);
        Self {
            inner: Arc::new(Inner {
                metrics,
                hubs,
                conns,
                presence,
                publisher,
                api,
                ws_addrs: chat_core::per_addr::PerAddr::new(cfg.max_sockets_per_addr, Vec::new()),
                subscribes: Arc::new(tokio::sync::Semaphore::new(
                    cfg.subscribe_concurrency.max(1),
                )),
                backends,
                verifier,
                ephemeral,
                cfg,
                shutdown,
                tracker,
                ready,
            }),
        }
    }

    /// The public axum router: REST, WebSocket, `/healthz`.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The admin router (`/readyz`, `/metrics`), for `--admin-addr`.
    pub fn admin_router(&self) -> axum::Router {
        http::admin_router(self.clone())
    }

    /// Closes every WebSocket with 1012 and waits (up to `deadline`) for the
    /// connection tasks to finish. Call after `shutdown` was cancelled.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.conns.close_all(ws::close::Close::RESTARTING);
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
        chat_core::health::ready(&self.inner.ready).await
    }
}

/// The gateway's tunables as flags (shared by `gateway` and `chat`).
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayArgs {
    /// Room hand-offs queued for one WebSocket's task (while it subscribes
    /// or backfills) before it is closed with 4009.
    #[arg(long, env = "CHAT_WS_QUEUE", default_value_t = 4096)]
    pub ws_queue: usize,

    /// Bytes waiting for one WebSocket (a client that reads too slowly)
    /// before it is closed with 4009.
    #[arg(long, env = "CHAT_WS_BUFFER_BYTES", default_value_t = 1024 * 1024)]
    pub ws_buffer_bytes: usize,

    /// Largest WebSocket frame or REST body accepted, in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Client frames per WebSocket per second before it is closed with 4008.
    #[arg(long, env = "CHAT_WS_FRAMES_PER_SEC", default_value_t = 200)]
    pub ws_frames_per_sec: u32,

    /// How long a busy room's events may wait to be written together, at
    /// most, in milliseconds: fewer, larger writes for more latency. The
    /// wait is a few times what writing to the room's local connections
    /// takes (microseconds for a small room), capped by this; an idle
    /// room's first event is never delayed.
    #[arg(long, env = "CHAT_FANOUT_LINGER_MS", default_value_t = 100)]
    pub fanout_linger_ms: u64,

    /// The wait of a busy room's events is this many times what writing
    /// them to the room's local connections took (up to
    /// --fanout-linger-ms): writing then takes at most 1 / (1 + factor) of
    /// a core per busy room. Lower trades CPU for latency; 0 writes every
    /// event as soon as the last write is done.
    #[arg(long, env = "CHAT_FANOUT_LINGER_FACTOR",
          default_value_t = ws::hub::Linger::DEFAULT_FACTOR, value_parser = linger_factor)]
    pub fanout_linger_factor: f64,

    /// How long a room event that reached this gateway ahead of the one
    /// before it waits for that one on the bus, in milliseconds, before the
    /// gap is read from room's log. Replicas publish a commit's events
    /// from several tasks, so neighbours can swap on the way; a publish the
    /// bus lost costs this much more delay. 0 reads the log at once.
    #[arg(long, env = "CHAT_BUS_GAP_WAIT_MS", default_value_t = DEFAULT_BUS_GAP_WAIT_MS,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub bus_gap_wait_ms: u64,

    /// WebSocket subscribes this gateway checks with room at once; the
    /// others wait their turn (up to the RPC deadline, then `unavailable`).
    /// A connect storm then queues here instead of flooding room with calls
    /// that time out, are cancelled and are retried. A subscribe holds its
    /// turn for the access check only, not for its catch-up.
    #[arg(long, env = "CHAT_SUBSCRIBE_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub subscribe_concurrency: u32,

    /// Browser origins allowed to open a WebSocket, comma-separated (e.g.
    /// `https://chat.example.com`); empty allows any. A socket opened from
    /// another origin is closed with 4003 right after the handshake: a page
    /// cannot read why a handshake was refused, but it can read the close
    /// code. Clients that send no `Origin` (not browsers) are not affected.
    #[arg(long, env = "CHAT_WS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,

    /// A user's `typing` notices reach a room at most once per this many
    /// milliseconds (across sockets and gateways); the others are answered
    /// but not relayed. 0 relays every one.
    #[arg(long, env = "CHAT_TYPING_INTERVAL_MS", default_value_t = 2000)]
    pub typing_interval_ms: u64,

    /// WebSockets one user may hold open at once, across every gateway
    /// (counted in the ephemeral store). One more is refused with HTTP 429
    /// before the upgrade when its token is in the `Authorization` header,
    /// or closed with 4008 right after its `auth` frame.
    #[arg(long, env = "CHAT_WS_MAX_PER_USER", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_max_per_user: u32,

    /// WebSockets one client address may hold open on this gateway,
    /// authenticated or not; one more is refused with HTTP 429 before the
    /// upgrade. The address is the TCP peer's, or the one a trusted proxy
    /// forwarded (--trusted-proxies), so clients behind a load balancer are
    /// counted one by one. 0: no limit.
    #[arg(long, env = "CHAT_WS_MAX_PER_ADDR", default_value_t = 1000)]
    pub ws_max_per_addr: u32,

    /// How often the server pings each WebSocket, in milliseconds (0:
    /// never). Clients answer pings with pongs by themselves (browsers and
    /// WebSocket libraries do).
    #[arg(long, env = "CHAT_WS_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ws_ping_interval_ms: u64,

    /// A WebSocket that sends nothing, not even a pong, for this many
    /// milliseconds is dropped (checked at each ping): a dead peer or one
    /// that holds a socket without reading.
    #[arg(long, env = "CHAT_WS_IDLE_TIMEOUT_MS", default_value_t = 75_000)]
    pub ws_idle_timeout_ms: u64,

    /// Proxies (addresses or CIDR blocks, comma-separated) whose
    /// `X-Forwarded-For` names the client, e.g. the load balancer's
    /// address. Auth limits logins per client address; behind a proxy that
    /// is not listed here every client has the proxy's address. Never list
    /// a network clients can connect from directly: they could then choose
    /// their address.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = client_addr::parse_trusted)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// How often, in milliseconds, every open WebSocket's session is
    /// re-checked with auth against the store (one call per 5000 sessions
    /// for the whole gateway); a socket whose session was revoked or
    /// outlived its lifetime is closed with 4001. Revocation notices on the
    /// bus close sockets at once; this catches the ones that were lost. Keep
    /// it at most the access-token lifetime (`--access-token-ttl`), which
    /// bounds how long the revocation list remembers a revocation. 0: only
    /// after a bus reconnect (which always re-checks).
    #[arg(long, env = "CHAT_WS_SESSION_CHECK_MS", default_value_t = DEFAULT_SESSION_CHECK_MS)]
    pub ws_session_check_ms: u64,

    /// How often this gateway refreshes its users' presence in the
    /// ephemeral store (one batched write per interval, whatever the number
    /// of connections), in seconds.
    #[arg(long, env = "CHAT_PRESENCE_HEARTBEAT_SECS", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub presence_heartbeat_secs: u64,

    /// A gateway whose heartbeat is this many seconds old is deemed
    /// crashed: its users show offline and their rooms get `presence`
    /// events (from another gateway) within about this long after the
    /// crash. Must be more than --presence-heartbeat-secs (3 times is a
    /// good value: a heartbeat or two may be late without harm).
    #[arg(long, env = "CHAT_PRESENCE_TTL_SECS", default_value_t = 12,
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub presence_ttl_secs: u64,

    /// Deadline of each call to auth and room, in milliseconds.
    #[arg(long, env = "CHAT_RPC_TIMEOUT_MS", default_value_t = 10_000)]
    pub rpc_timeout_ms: u64,

    /// How often, in milliseconds, the gateway asks room where the log of
    /// each room with subscribers here ends (one call for all of them) and
    /// backfills the rooms whose events the bus lost. The bus loses no gap
    /// silently except a room's last events; this bounds how late those
    /// arrive: an acknowledged event reaches every subscribed WebSocket
    /// within this interval plus one log read. 0 turns the check off (a
    /// lost last event then waits for the room's next one).
    #[arg(long, env = "CHAT_TAIL_CHECK_MS", default_value_t = 1000)]
    pub tail_check_ms: u64,
}

impl GatewayArgs {
    pub fn config(&self, internal_secret: String) -> GatewayConfig {
        GatewayConfig {
            max_frame_bytes: self.max_frame_bytes,
            max_body_bytes: self.max_frame_bytes,
            outbound_queue: self.ws_queue,
            outbound_bytes: self.ws_buffer_bytes,
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms),
            internal_secret,
            ws_frames_per_sec: self.ws_frames_per_sec,
            fanout_linger: Duration::from_millis(self.fanout_linger_ms),
            bus_gap_wait: Duration::from_millis(self.bus_gap_wait_ms),
            fanout_linger_factor: self.fanout_linger_factor,
            subscribe_concurrency: self.subscribe_concurrency as usize,
            typing_interval: Duration::from_millis(self.typing_interval_ms),
            max_sockets_per_user: self.ws_max_per_user,
            max_sockets_per_addr: usize::try_from(self.ws_max_per_addr).unwrap_or(usize::MAX),
            trusted_proxies: self.trusted_proxies.clone(),
            ws_ping_interval: Duration::from_millis(self.ws_ping_interval_ms),
            ws_idle_timeout: Duration::from_millis(self.ws_idle_timeout_ms),
            session_check_interval: Duration::from_millis(self.ws_session_check_ms),
            tail_check: Duration::from_millis(self.tail_check_ms),

            presence_heartbeat: Duration::from_secs(self.presence_heartbeat_secs),
            presence_ttl: Duration::from_secs(self.presence_ttl_secs),
            allowed_origins: self
                .ws_allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
            ..GatewayConfig::default()
        }
    }
}

fn linger_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=100.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 100")),
    }
}
