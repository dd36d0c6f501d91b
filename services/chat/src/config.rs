//! `chat` configuration: flags, each also an environment variable.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The all-in-one chat server: REST + WebSocket on --http-addr, gRPC (with
/// reflection) on --grpc-addr, /readyz and /metrics on --admin-addr, data in
/// --data-dir.
#[derive(Clone, Debug, Parser)]
#[command(name = "chat", version, about, long_about = None)]
pub struct Config {
    /// Address for the REST API, the WebSocket (`/ws`) and `/healthz`.
    #[arg(long, env = "CHAT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address for `/readyz` and `/metrics`, for operators only: keep it off
    /// the public network (readiness names failing dependencies).
    #[arg(long, env = "CHAT_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// Address for the gRPC services (AuthService, RoomService, reflection).
    #[arg(long, env = "CHAT_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Serve gRPC server reflection on --grpc-addr (what grpcurl's `list`
    /// and `describe` use). On here for developers; `false` turns it off.
    #[arg(long, env = "CHAT_GRPC_REFLECTION", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,

    /// Directory for the SQLite database and the token signing key.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Store URL; defaults to sqlite://<data-dir>/chat.db.
    #[arg(long, env = "CHAT_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Ed25519 PKCS#8 key to start with: the first signing key when the
    /// store has none (default: <data-dir>/keys/jwt-ed25519.pk8 if it
    /// exists, as older versions made it); else a new key is made. Keys
    /// live in the store, sealed with the key-encryption key.
    #[arg(long, env = "CHAT_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    /// The key-encryption key that seals the stored signing keys (at least
    /// 32 random characters). Default: a random key made on first start in
    /// <data-dir>/keys/kek (mode 0600).
    #[arg(long, env = "CHAT_KEY_ENCRYPTION_KEY", hide_env_values = true)]
    pub key_encryption_key: Option<chat_auth::keyring::KekSecret>,

    #[command(flatten)]
    pub auth: chat_auth::AuthArgs,

    #[command(flatten)]
    pub room: chat_room::RoomArgs,

    #[command(flatten)]
    pub gateway: chat_gateway::GatewayArgs,

    #[command(flatten)]
    pub http: chat_core::config::HttpArgs,

    // One limit on gRPC calls over --grpc-addr and the gateway's
    // in-process channel together.
    #[command(flatten)]
    pub admission: chat_core::admission::AdmissionArgs,

    /// Bus subject prefix.
    #[arg(long, env = "CHAT_SUBJECT_PREFIX", default_value = "chat")]
    pub subject_prefix: String,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(long, env = "CHAT_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `chat` does other than serve.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Makes a new token signing key active in the data dir's store and
    /// exits; a running server signs with it within
    /// --key-poll-interval-secs, and tokens signed before keep verifying.
    /// Prints the new key's kid.
    RotateKey {
        /// Make this Ed25519 PKCS#8 key active instead of a new one.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

impl Config {
    /// The store's URL: --database-url, or the data dir's SQLite file.
    pub fn store_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("chat.db").display()))
    }

    /// Where the first signing key is read from, if it exists.
    pub fn jwt_key_path(&self) -> PathBuf {
        self.jwt_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("jwt-ed25519.pk8"))
    }

    /// The key-encryption key: the flag's, else the data dir's.
    pub fn kek(&self) -> anyhow::Result<chat_auth::Kek> {
        match &self.key_encryption_key {
            Some(secret) => {
                let secret = secret.expose();
                chat_core::config::check_secret("CHAT_KEY_ENCRYPTION_KEY", secret, 32)
                    .map_err(anyhow::Error::msg)?;
                Ok(chat_auth::Kek::from_secret(secret))
            }
            None => Ok(chat_auth::Kek::load_or_create_file(
                &self.data_dir.join("keys").join("kek"),
            )?),
        }
    }

    /// Defaults for a server on ephemeral ports with its data in `dir`
    /// (tests, embedding).
    pub fn ephemeral(dir: &std::path::Path) -> Self {
        let mut c = Config::parse_from(["chat"]);
        c.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.data_dir = dir.to_path_buf();
        c
    }
}
