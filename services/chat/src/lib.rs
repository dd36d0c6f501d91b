//! The all-in-one server: auth, room and gateway in one process, on the
//! embedded backends (SQLite under the data dir, the in-process bus and
//! ephemeral store). The gateway reaches auth and room through the same
//! gRPC clients as in the distributed mode, calling their router in process
//! (`chat_gateway::backends::in_process`); the
//! same services are also served on `--grpc-addr` (with reflection unless
//! `--grpc-reflection false`). `/readyz` and `/metrics` are on their own
//! listener, `--admin-addr`.

pub mod config;

use anyhow::Context;
use chat_auth::{AuthSvc, KeyRing};
use chat_bus::Subjects;
use chat_ephemeral::{Ephemeral, MemoryEphemeral};
use chat_gateway::{Backends, Gateway};
use chat_proto::v1::auth_service_server::AuthServiceServer;
use chat_proto::v1::room_service_server::RoomServiceServer;
use chat_room::RoomSvc;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

pub use config::{Command, Config};

/// `chat rotate-key`: makes a new signing key active in the data dir's
/// store; a running server signs with it within --key-poll-interval-secs.
/// The new key's kid.
pub async fn rotate_key(
    cfg: &Config,
    key_file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    create_private_dir(&cfg.data_dir)?;
    let kek = cfg.kek()?;
    let store = chat_store::connect(&cfg.store_url())
        .await
        .context("cannot open the store")?;
    // A store without keys yet gets its first one (the old key file's).
    chat_auth::keyring::active_key(store.as_ref(), &kek, Some(&cfg.jwt_key_path())).await?;
    let key = key_file.map(chat_auth::SigningKey::load).transpose()?;
    Ok(chat_auth::keyring::rotate(store.as_ref(), &kek, key).await?)
}

/// Creates the data dir (and its parents) readable by this user only: it
/// holds password hashes, sessions and every message.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))
}

/// The SQLite files are this user's only, even in a data dir the operator
/// made with looser permissions (SQLite gives its -wal and -shm files the
/// database file's mode).
fn keep_private(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for name in ["chat.db", "chat.db-wal", "chat.db-shm"] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", path.display()))?;
        }
    }
    Ok(())
}

/// A built server: listeners bound, store migrated, services wired.
pub struct App {
    http: TcpListener,
    admin: TcpListener,
    grpc: TcpListener,
    router: axum::Router,
    admin_router: axum::Router,
    grpc_router: tonic::service::Routes,
    gateway: Gateway,
    shutdown: CancellationToken,
    drain: Duration,
    limits: chat_core::serve::HttpLimits,
}

impl App {
    /// Binds, opens and migrates the store, loads or creates the signing key.
    pub async fn build(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        create_private_dir(&cfg.data_dir)?;
        let store_url = cfg.store_url();
        let store = chat_store::connect_with(&store_url, &cfg.room.store_options())
            .await
            .with_context(|| format!("cannot open the store at {store_url}"))?;
        keep_private(&cfg.data_dir)?;
        let bus = chat_bus::connect("memory", chat_bus::BusKey::random()).await?;
        let ephemeral: Arc<dyn Ephemeral> = Arc::new(
            MemoryEphemeral::default().with_recent_cache_bytes(cfg.room.recent_cache_bytes),
        );
        let subjects = Subjects::new(cfg.subject_prefix.clone());
        let kek = cfg.kek()?;
        // The key file of older versions (or the operator's) is the first
        // key, so the tokens it signed keep verifying after an upgrade.
        let key_path = cfg.jwt_key_path();
        let key = chat_auth::keyring::active_key(store.as_ref(), &kek, Some(&key_path))
            .await
            .context("cannot load the token signing key")?;
        // In one process the gateway's internal secret never leaves memory.
        let internal_secret =
            uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();

        let auth = AuthSvc::new(
            store.clone(),
            ephemeral.clone(),
            bus.clone(),
            subjects.clone(),
            &key,
            cfg.auth.config(Some(internal_secret.clone())),
        );
        let keys = KeyRing::new(
            store.clone(),
            kek,
            auth.issuer(),
            auth.verifier(),
            cfg.auth.key_retire_after(),
        );
        keys.sync().await.context("cannot read the signing keys")?;
        keys.keep_in_sync(cfg.auth.key_poll_interval(), shutdown.clone());
        let auth = auth.with_key_ring(keys, cfg.auth.keys_unknown_kid_interval());
        let seeded = auth.seed_revocations().await?;
        if seeded > 0 {
            tracing::info!(sessions = seeded, "revocation list restored from the store");
        }
        let verifier = auth.verifier();
        let room = RoomSvc::new(
            store.clone(),
            bus.clone(),
            ephemeral.clone(),
            subjects.clone(),
            verifier.clone(),
            cfg.room.config(),
        );

        // Behind one admission limit, shared by both servers below: the
        // gateway's in-process calls and --grpc-addr's count together.
        let grpc_router = cfg.admission.apply(chat_proto::with_reflection(
            tonic::service::Routes::new(AuthServiceServer::new(auth))
                .add_service(RoomServiceServer::new(room)),
            &[chat_proto::AUTH_SERVICE, chat_proto::ROOM_SERVICE],
            cfg.grpc_reflection,
        )?);

        // The gateway calls auth and room through their router, in process.
        let in_process = chat_gateway::backends::in_process(grpc_router.clone());

        let ready = vec![
            chat_store::ready_check(store.clone()),
            chat_bus::ready_check(bus.clone()),
            chat_ephemeral::ready_check(ephemeral.clone()),
        ];
        let gateway = Gateway::new(
            Backends::new(in_process.clone(), in_process),
            verifier,
            ephemeral,
            bus,
            subjects,
            cfg.gateway.config(internal_secret),
            ready,
            shutdown.clone(),
        );
        let router = gateway.router();
        let admin_router = gateway.admin_router();

        let http = TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.http_addr))?;
        let grpc = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.grpc_addr))?;
        let admin = chat_core::serve::bind(cfg.admin_addr).await?;
        Ok(App {
            http,
            admin,
            grpc,
            router,
            admin_router,
            grpc_router,
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

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where `/readyz` and `/metrics` answer.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until the shutdown token is cancelled, then shuts down in
    /// order: stop accepting, finish in-flight requests, close WebSockets
    /// with 1012, and only then stop the gRPC services they depend on.
    pub async fn run(self) -> anyhow::Result<()> {
        let grpc_stop = CancellationToken::new();
        let tcp_grpc = {
            let routes = self.grpc_router.clone();
            let stop = grpc_stop.clone();
            let incoming = TcpListenerStream::new(self.grpc);
            tokio::spawn(async move {
                Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            })
        };
        let admin = tokio::spawn(chat_core::serve::http(
            self.admin,
            self.admin_router,
            chat_core::serve::HttpLimits::admin(self.drain),
            self.shutdown.clone(),
        ));
        let shutdown = self.shutdown.clone();
        chat_core::serve::http(self.http, self.router, self.limits, shutdown)
            .await
            .context("HTTP server failed")?;
        tracing::info!(
            connections = self.gateway.connections(),
            "closing WebSockets"
        );
        self.gateway.drain(self.drain).await;
        grpc_stop.cancel();
        match admin.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "admin listener ended with an error"),
            Err(error) => tracing::warn!(%error, "admin listener task failed"),
        }
        match tcp_grpc.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "gRPC server ended with an error"),
            Err(error) => tracing::warn!(%error, "gRPC server task failed"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[tokio::test]
    async fn the_data_dir_and_the_database_are_readable_by_this_user_only() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("new").join("data");
        let app = App::build(Config::ephemeral(&dir), CancellationToken::new())
            .await
            .expect("the server builds");
        assert_eq!(mode(&dir), 0o700, "a data dir it creates");
        assert_eq!(mode(&dir.join("chat.db")), 0o600, "the database");
        drop(app);

        // A data dir the operator made with looser permissions: the
        // database files are still private.
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).expect("dir");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let app = App::build(Config::ephemeral(&loose), CancellationToken::new())
            .await
            .expect("the server builds");
        assert_eq!(mode(&loose.join("chat.db")), 0o600);
        drop(app);
    }
}
