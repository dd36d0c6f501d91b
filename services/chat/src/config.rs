//! `chat` configuration: flags, each also an environment variable.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The all-in-one chat server: REST + WebSocket on --http-addr, gRPC (with
/// reflection) on --grpc-addr, data in --data-dir.
#[derive(Clone, Debug, Parser)]
#[command(name = "chat", version, about, long_about = None)]
pub struct Config {
    /// Address for the REST API and the WebSocket (`/ws`).
    #[arg(long, env = "CHAT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address for the gRPC services (AuthService, RoomService, reflection).
    #[arg(long, env = "CHAT_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

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

    /// Access token lifetime in seconds.
    #[arg(long, env = "CHAT_ACCESS_TOKEN_TTL", default_value_t = 900)]
    pub access_token_ttl_secs: u64,

    /// argon2id memory cost in KiB.
    #[arg(long, env = "CHAT_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub argon2_memory_kib: u32,

    /// argon2id iterations.
    #[arg(long, env = "CHAT_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Failed logins per username in 5 minutes before 429.
    #[arg(long, env = "CHAT_LOGIN_MAX_FAILURES", default_value_t = 10)]
    pub login_max_failures: u32,

    /// Messages one user may send per --send-window-secs (0: unlimited).
    #[arg(long, env = "CHAT_SEND_LIMIT", default_value_t = 100)]
    pub send_limit: u32,

    /// The send rate-limit window in seconds.
    #[arg(long, env = "CHAT_SEND_WINDOW_SECS", default_value_t = 10)]
    pub send_window_secs: u64,

    /// Frames queued for one WebSocket before it is closed with 4009.
    #[arg(long, env = "CHAT_WS_QUEUE", default_value_t = 4096)]
    pub ws_queue: usize,

    /// Largest WebSocket frame or REST body accepted, in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Client frames per WebSocket per second before it is closed with 4008.
    #[arg(long, env = "CHAT_WS_FRAMES_PER_SEC", default_value_t = 200)]
    pub ws_frames_per_sec: u32,

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
        c.data_dir = dir.to_path_buf();
        c
    }
}
