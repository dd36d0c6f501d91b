//! The `auth` process of the distributed mode: the service on Postgres,
//! Redis and NATS, gRPC (with reflection only when `--grpc-reflection
//! true`), and health endpoints.

use crate::{AuthArgs, AuthSvc, Kek, KeyRing, SigningKey};
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

    /// An Ed25519 PKCS#8 signing key to start with: used as the first key
    /// when the store has none (later keys come from `auth rotate-key`).
    /// Optional: replicas share their keys through the store.
    #[arg(long, env = "CHAT_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// The key-encryption key: the stored private signing keys are sealed
    /// with it (AES-256-GCM). Required, at least 32 random characters, the
    /// same on every auth replica; keep it in a secret store.
    #[arg(long, env = "CHAT_KEY_ENCRYPTION_KEY", hide_env_values = true)]
    pub key_encryption_key: crate::keyring::KekSecret,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `auth` does other than serve.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Makes a new signing key active and exits. Replicas sign with it
    /// within --key-poll-interval-secs; the previous key keeps verifying
    /// until the tokens it signed have expired, then it is retired: nobody
    /// is logged out. Prints the new key's kid.
    RotateKey(RotateKeyArgs),
}

/// `auth rotate-key`: only the store and the key-encryption key are needed.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "auth rotate-key")]
pub struct RotateKeyArgs {
    /// Postgres URL of the auth replicas.
    #[arg(
        long,
        env = "CHAT_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,

    /// The auth replicas' key-encryption key.
    #[arg(long, env = "CHAT_KEY_ENCRYPTION_KEY", hide_env_values = true)]
    pub key_encryption_key: crate::keyring::KekSecret,

    /// Make this Ed25519 PKCS#8 key active instead of a new one.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

/// The key-encryption key `secret` names, refused if it is weak.
fn kek(secret: &str) -> anyhow::Result<Kek> {
    chat_core::config::check_secret("CHAT_KEY_ENCRYPTION_KEY", secret, 32)
        .map_err(anyhow::Error::msg)?;
    Ok(Kek::from_secret(secret))
}

/// `auth rotate-key`: the new key's kid.
pub async fn rotate_key(args: &RotateKeyArgs) -> anyhow::Result<String> {
    let kek = kek(args.key_encryption_key.expose())?;
    let store = chat_store::connect(&args.database_url)
        .await
        .context("cannot open the store")?;
    let key = args.key_file.as_deref().map(SigningKey::load).transpose()?;
    Ok(crate::keyring::rotate(store.as_ref(), &kek, key).await?)
}

pub struct App {
    process: GrpcProcess,
    keys: KeyRing,
    poll: std::time::Duration,
    stop_reseeder: CancellationToken,
}

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
        let kek = kek(cfg.key_encryption_key.expose())?;
        let key = crate::keyring::active_key(store.as_ref(), &kek, cfg.jwt_key_file.as_deref())
            .await
            .context("cannot load the token signing key")?;
        let auth_cfg = cfg.auth.config(Some(b.internal_secret.clone()));
        let svc_reseed_check = auth_cfg.reseed_check;
        let svc = AuthSvc::new(
            store.clone(),
            ephemeral.clone(),
            bus.clone(),
            chat_bus::Subjects::new(b.subject_prefix.clone()),
            &key,
            auth_cfg,
        );
        let keys = KeyRing::new(
            store.clone(),
            kek,
            svc.issuer(),
            svc.verifier(),
            cfg.auth.key_retire_after(),
        );
        keys.sync().await.context("cannot read the signing keys")?;
        let svc = svc.with_key_ring(keys.clone(), cfg.auth.keys_unknown_kid_interval());
        svc.seed_revocations().await?;
        let stop_reseeder = CancellationToken::new();
        svc.spawn_reseeder(svc_reseed_check, stop_reseeder.clone());
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
        Ok(App {
            process: GrpcProcess::bind(&cfg.listen, routes, checks).await?,
            keys,
            poll: cfg.auth.key_poll_interval(),
            stop_reseeder,
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
        let _stop_reseeder = self.stop_reseeder.drop_guard();
        self.keys.keep_in_sync(self.poll, stop.clone());
        self.process.run(stop).await.map_err(|e| anyhow::anyhow!(e))
    }
}
