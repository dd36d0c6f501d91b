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

    /// Ed25519 PKCS#8 key that signs access tokens; generated in
    /// <data-dir>/keys on first start when not given.
    #[arg(long, env = "CHAT_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,

    #[command(flatten)]
    pub auth: chat_auth::AuthArgs,

    #[command(flatten)]
    pub room: chat_room::RoomArgs,

    #[command(flatten)]
    pub gateway: chat_gateway::GatewayArgs,

    #[command(flatten)]
    pub http: chat_core::config::HttpArgs,

    /// Bus subject prefix.
    #[arg(long, env = "CHAT_SUBJECT_PREFIX", default_value = "chat")]
    pub subject_prefix: String,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(long, env = "CHAT_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

impl Config {
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
