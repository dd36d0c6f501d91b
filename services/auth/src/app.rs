//! The `auth` process of the distributed mode: the service on Postgres,
//! Redis and NATS, gRPC (with reflection only when `--grpc-reflection
//! true`), and health endpoints.

use crate::{AuthArgs, AuthSvc, SigningKey};
use anyhow::Context;
use chat_core::config::{BackendArgs, ListenArgs};
use chat_core::serve::GrpcProcess;
use chat_proto::v1::auth_service_server::AuthServiceServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// `auth`: accounts, sessions and tokens (distributed mode).
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "auth", version, about)]
pub struct Config {
    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub backends: BackendArgs,

    /// Ed25519 PKCS#8 signing key, shared by every auth replica (generated
    /// there if missing).
    #[arg(long, env = "CHAT_JWT_KEY_FILE")]
    pub jwt_key_file: PathBuf,

    #[command(flatten)]
    pub auth: AuthArgs,
}

pub struct App(GrpcProcess);

impl App {
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        cfg.backends.check().map_err(anyhow::Error::msg)?;
        let b = &cfg.backends;
        let store = chat_store::connect(&b.database_url)
            .await
            .context("cannot open the store")?;
        let bus = chat_bus::connect(&b.nats_url, chat_bus::BusKey::derive(&b.internal_secret))
            .await
            .context("cannot reach NATS")?;
        let ephemeral = chat_ephemeral::connect(&b.redis_url, &b.key_prefix)
            .await
            .context("cannot reach Redis")?;
        let key = SigningKey::load_or_generate(&cfg.jwt_key_file)?;
        let svc = AuthSvc::new(
            store.clone(),
            ephemeral.clone(),
            bus.clone(),
            chat_bus::Subjects::new(b.subject_prefix.clone()),
            &key,
            cfg.auth.config(Some(b.internal_secret.clone())),
        );
        svc.seed_revocations().await?;
        let routes = chat_proto::with_reflection(
            tonic::service::Routes::new(AuthServiceServer::new(svc)),
            &[chat_proto::AUTH_SERVICE],
            cfg.listen.grpc_reflection,
        )?;
        let checks = vec![
            chat_store::ready_check(store),
            chat_bus::ready_check(bus),
            chat_ephemeral::ready_check(ephemeral),
        ];
        Ok(App(GrpcProcess::bind(&cfg.listen, routes, checks).await?))
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.0.grpc_addr()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.0.http_addr()
    }

    /// Serves until `stop`; in-flight calls finish first.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        self.0.run(stop).await.map_err(|e| anyhow::anyhow!(e))
    }
}
