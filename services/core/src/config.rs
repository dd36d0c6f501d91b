//! Flags every distributed process shares: where the backends are, the
//! namespaces on them, and the secret gateways use to call on a user's
//! behalf.

use std::net::SocketAddr;

/// Backends and namespaces of a distributed process.
#[derive(Clone, Debug, clap::Args)]
pub struct BackendArgs {
    /// Postgres URL (`postgres://user@host:5432/db`, optionally `?schema=NAME`).
    #[arg(
        long,
        env = "CHAT_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,

    /// Redis URL for sessions' revocation list, presence and rate limits.
    #[arg(long, env = "CHAT_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// NATS URL for room events.
    #[arg(long, env = "CHAT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Prefix of every NATS subject (one cluster, one prefix).
    #[arg(long, env = "CHAT_SUBJECT_PREFIX", default_value = "chat")]
    pub subject_prefix: String,

    /// Prefix of every Redis key.
    #[arg(long, env = "CHAT_KEY_PREFIX", default_value = "chat")]
    pub key_prefix: String,

    /// Shared secret with which gateways call auth and room on behalf of a
    /// connected user. Required; keep it in a secret store.
    #[arg(long, env = "CHAT_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: String,
}

impl BackendArgs {
    /// Refuses a weak internal secret at start-up rather than running with it.
    pub fn check(&self) -> Result<(), String> {
        if self.internal_secret.len() < 16 {
            return Err("CHAT_INTERNAL_SECRET must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// Where a gRPC service listens, plus its health endpoint.
#[derive(Clone, Debug, clap::Args)]
pub struct ListenArgs {
    /// Address for gRPC.
    #[arg(long, env = "CHAT_GRPC_ADDR")]
    pub grpc_addr: SocketAddr,

    /// Address for `/healthz` and `/readyz`.
    #[arg(long, env = "CHAT_HTTP_ADDR")]
    pub http_addr: SocketAddr,
}
