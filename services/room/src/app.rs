//! The `room` process of the distributed mode: the service on Postgres,
//! Redis and NATS, gRPC (with reflection only when `--grpc-reflection
//! true`), and health endpoints.

use crate::{RoomArgs, RoomSvc};
use anyhow::Context;
use chat_authn::Verifier;
use chat_core::config::{BackendArgs, GrpcClientArgs, ListenArgs};
use chat_core::serve::GrpcProcess;
use chat_proto::v1::room_service_server::RoomServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `room`: rooms, memberships and messages (distributed mode).
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "room", version, about)]
pub struct Config {
    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub backends: BackendArgs,

    /// auth's gRPC URL(s), comma-separated, to fetch the token-verifying
    /// public keys from (each is tried in turn; `https://…` with
    /// --grpc-tls-ca when auth serves TLS).
    #[arg(
        long,
        env = "CHAT_AUTH_URL",
        default_value = "http://127.0.0.1:50061",
        value_delimiter = ','
    )]
    pub auth_url: Vec<String>,

    #[command(flatten)]
    pub keys: chat_authn::KeyRefreshArgs,

    #[command(flatten)]
    pub grpc_client: GrpcClientArgs,

    #[command(flatten)]
    pub room: RoomArgs,
}

pub struct App {
    process: GrpcProcess,
    verifier: Verifier,
    refresh_keys: Duration,
}

impl App {
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        cfg.backends.check().map_err(anyhow::Error::msg)?;
        let b = &cfg.backends;
        let store = chat_store::connect_with(&b.database_url, &cfg.room.store_options())
            .await
            .context("cannot open the store")?;
        let bus = chat_bus::connect(&b.nats_url, chat_bus::BusKey::derive(&b.internal_secret))
            .await
            .context("cannot reach NATS")?;
        let ephemeral = chat_ephemeral::connect(&b.redis_url, &b.key_prefix)
            .await
            .context("cannot reach Redis")?;
        // Revocation checks fall back to the store when the list cannot
        // answer (unreachable, or emptied and not re-seeded yet).
        let ephemeral =
            chat_ephemeral::Revocations::wrap(ephemeral, Arc::new(StoreSessions(store.clone())));
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
        let svc = RoomSvc::new(
            store.clone(),
            bus.clone(),
            ephemeral.clone(),
            chat_bus::Subjects::new(b.subject_prefix.clone()),
            verifier.clone(),
            cfg.room.config(),
        );
        let routes = routes(Arc::new(svc), cfg.listen.grpc_reflection)?;
        let checks = vec![
            chat_store::ready_check(store),
            chat_bus::ready_check(bus),
            chat_ephemeral::ready_check(ephemeral),
        ];
        Ok(App {
            process: GrpcProcess::bind(&cfg.listen, routes, checks).await?,
            verifier,
            refresh_keys: cfg.keys.refresh_every(),
        })
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.process.grpc_addr()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.process.http_addr()
    }

    /// Serves until `stop`; in-flight calls finish first.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        self.verifier
            .keep_keys_fresh(self.refresh_keys, stop.clone());
        self.process.run(stop).await.map_err(|e| anyhow::anyhow!(e))
    }
}

/// RoomService's gRPC routes, with reflection when `reflection` is set.
/// [`GrpcProcess::bind`] puts them behind the admission limit.
pub fn routes(svc: Arc<RoomSvc>, reflection: bool) -> anyhow::Result<tonic::service::Routes> {
    Ok(chat_proto::with_reflection(
        tonic::service::Routes::new(RoomServiceServer::from_arc(svc)),
        &[chat_proto::ROOM_SERVICE],
        reflection,
    )?)
}

/// The store as the source of truth behind the revocation list: a session
/// revoked or whose user is gone (lifetimes are auth's to enforce, when a
/// refresh is refused).
struct StoreSessions(Arc<dyn chat_store::Store>);

#[async_trait::async_trait]
impl chat_ephemeral::SessionSource for StoreSessions {
    async fn ended(
        &self,
        ids: &[chat_core::SessionId],
    ) -> Result<Vec<chat_core::SessionId>, Box<dyn std::error::Error + Send + Sync>> {
        let limits = chat_store::SessionLimits::NONE;
        Ok(self
            .0
            .ended_sessions(ids, limits, chat_core::time::now_ms())
            .await?)
    }
}
