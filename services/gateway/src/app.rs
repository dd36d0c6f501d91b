//! The `gateway` process of the distributed mode: REST and WebSocket for
//! clients, gRPC clients to auth and room (any number of replicas each),
//! NATS for room events and Redis for revocations, presence and limits.

use crate::{backends, Backends, Gateway, GatewayArgs};
use anyhow::Context;
use chat_core::config::{BackendArgs, GrpcClientArgs};
use chat_core::health::ReadyCheck;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// `gateway`: the client-facing edge (distributed mode).
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "gateway", version, about)]
pub struct Config {
    /// Address for the REST API, the WebSocket and `/healthz` (for load
    /// balancers).
    #[arg(long, env = "CHAT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address for `/readyz` and `/metrics`, for operators only: keep it off
    /// the public network (readiness names failing dependencies).
    #[arg(long, env = "CHAT_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// auth's gRPC URL(s), comma-separated; calls are balanced over them.
    /// `https://` ones are verified against --grpc-tls-ca.
    #[arg(
        long,
        env = "CHAT_AUTH_URL",
        default_value = "http://127.0.0.1:50061",
        value_delimiter = ','
    )]
    pub auth_url: Vec<String>,

    /// room's gRPC URL(s), comma-separated; calls are balanced over them.
    /// `https://` ones are verified against --grpc-tls-ca.
    #[arg(
        long,
        env = "CHAT_ROOM_URL",
        default_value = "http://127.0.0.1:50062",
        value_delimiter = ','
    )]
    pub room_url: Vec<String>,

    #[command(flatten)]
    pub grpc_client: GrpcClientArgs,

    #[command(flatten)]
    pub backends: BackendArgs,

    #[command(flatten)]
    pub gateway: GatewayArgs,

    #[command(flatten)]
    pub keys: chat_authn::KeyRefreshArgs,

    #[command(flatten)]
    pub http: chat_core::config::HttpArgs,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(long, env = "CHAT_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

/// A channel balanced over `urls`, connecting lazily (start-up order does
/// not matter) and reconnecting on its own; `https://` URLs over TLS.
pub fn balanced_channel(urls: &[String], client: &GrpcClientArgs) -> anyhow::Result<Channel> {
    let endpoints = urls
        .iter()
        .map(|u| {
            client
                .endpoint(u)
                .map(|e: Endpoint| {
                    e.connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_timeout(Duration::from_secs(10))
                })
                .map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!endpoints.is_empty(), "no gRPC URL given");
    Ok(Channel::balance_list(endpoints.into_iter()))
}

pub struct App {
    http: TcpListener,
    admin: TcpListener,
    gateway: Gateway,
    shutdown: CancellationToken,
    drain: Duration,
    limits: chat_core::serve::HttpLimits,
}

impl App {
    pub async fn build(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        cfg.backends.check().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            cfg.gateway.presence_ttl_secs > cfg.gateway.presence_heartbeat_secs,
            "--presence-ttl-secs must be more than --presence-heartbeat-secs"
        );
        let b = &cfg.backends;
        let bus = chat_bus::connect(&b.nats_url, chat_bus::BusKey::derive(&b.internal_secret))
            .await
            .context("cannot reach NATS")?;
        let ephemeral = chat_ephemeral::connect(&b.redis_url, &b.key_prefix)
            .await
            .context("cannot reach Redis")?;
        let auth_channel = balanced_channel(&cfg.auth_url, &cfg.grpc_client)?;
        // Revocation checks fall back to auth (the store) when the list
        // cannot answer (unreachable, or emptied and not re-seeded yet).
        let ephemeral = chat_ephemeral::Revocations::wrap(
            ephemeral,
            std::sync::Arc::new(crate::ws::recheck::AuthSessions {
                auth: chat_proto::v1::auth_service_client::AuthServiceClient::new(
                    backends::network(auth_channel.clone()),
                ),
                internal_secret: b.internal_secret.clone(),
                rpc_timeout: Duration::from_millis(cfg.gateway.rpc_timeout_ms),
            }),
        );
        let auth_keys = chat_authn::AuthKeys::from_endpoints(
            cfg.grpc_client
                .endpoints(&cfg.auth_url)
                .map_err(anyhow::Error::msg)?,
        );
        let verifier = chat_authn::verifier_from_auth(
            auth_keys,
            ephemeral.clone(),
            &b.internal_secret,
            cfg.keys.unknown_kid_interval(),
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("cannot fetch public keys from auth at {:?}", cfg.auth_url))?;
        verifier.keep_keys_fresh(cfg.keys.refresh_every(), shutdown.clone());
        let backends = Backends::new(
            backends::network(auth_channel),
            backends::network(balanced_channel(&cfg.room_url, &cfg.grpc_client)?),
        );
        let ready = vec![
            chat_bus::ready_check(bus.clone()),
            chat_ephemeral::ready_check(ephemeral.clone()),
            ReadyCheck::new("auth", {
                let c = backends.auth.clone();
                move || {
                    let mut c = c.clone();
                    async move {
                        c.get_public_keys(chat_proto::v1::GetPublicKeysRequest {})
                            .await
                            .map(|_| ())
                            .map_err(|s| s.message().to_owned())
                    }
                }
            }),
            ReadyCheck::new("room", {
                let c = backends.room.clone();
                move || {
                    let mut c = c.clone();
                    async move {
                        // Any answer but UNAVAILABLE means a replica is up
                        // (an unauthenticated call is refused, as it should);
                        // so does a refusal for load: it is up, and busy.
                        match c.get_room(chat_proto::v1::GetRoomRequest::default()).await {
                            Err(s)
                                if s.code() == tonic::Code::Unavailable
                                    && !chat_core::is_overload(&s) =>
                            {
                                Err(s.message().to_owned())
                            }
                            _ => Ok(()),
                        }
                    }
                }
            }),
        ];
        let gateway = Gateway::new(
            backends,
            verifier,
            ephemeral,
            bus,
            chat_bus::Subjects::new(b.subject_prefix.clone()),
            cfg.gateway.config(b.internal_secret.clone()),
            ready,
            shutdown.clone(),
        );
        Ok(App {
            http: chat_core::serve::bind(cfg.http_addr).await?,
            admin: chat_core::serve::bind(cfg.admin_addr).await?,
            gateway,
            shutdown,
            drain: Duration::from_secs(cfg.shutdown_timeout_secs),
            limits: chat_core::serve::HttpLimits {
                proxies: cfg.gateway.trusted_proxies.clone(),
                ..cfg
                    .http
                    .limits(Duration::from_secs(cfg.shutdown_timeout_secs))
            },
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serves until the shutdown token; then finishes in-flight requests and
    /// closes WebSockets with 1012.
    pub async fn run(self) -> anyhow::Result<()> {
        let admin = tokio::spawn(chat_core::serve::http(
            self.admin,
            self.gateway.admin_router(),
            chat_core::serve::HttpLimits::admin(self.drain),
            self.shutdown.clone(),
        ));
        chat_core::serve::http(
            self.http,
            self.gateway.router(),
            self.limits,
            self.shutdown.clone(),
        )
        .await?;
        self.gateway.drain(self.drain).await;
        admin.await.context("admin listener task")??;
        Ok(())
    }
}
