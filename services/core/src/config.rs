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
    /// Refuses a weak internal secret at start-up rather than running with
    /// it: a short one, one with few distinct characters, or one that reads
    /// like a placeholder from a published file (an older
    /// docker-compose.yml shipped `change-me-please-32-characters`).
    pub fn check(&self) -> Result<(), String> {
        check_secret("CHAT_INTERNAL_SECRET", &self.internal_secret, 16)
    }
}

/// Refuses a weak secret named `name` (its environment variable): shorter
/// than `min_len`, with few distinct characters, or reading like a
/// placeholder from a published file.
pub fn check_secret(name: &str, secret: &str, min_len: usize) -> Result<(), String> {
    if secret.len() < min_len {
        return Err(format!("{name} must be at least {min_len} characters"));
    }
    let distinct: std::collections::BTreeSet<char> = secret.chars().collect();
    let folded: String = secret
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let placeholder = PLACEHOLDERS.iter().any(|p| folded.contains(p));
    if distinct.len() < 8 || placeholder {
        return Err(format!(
            "{name} looks like a placeholder: generate a random one \
             (e.g. `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`)"
        ));
    }
    Ok(())
}

/// Words of placeholder secrets (compared lowercased, letters and digits
/// only).
const PLACEHOLDERS: &[&str] = &["changeme", "replaceme", "secret", "password", "example"];

/// Where a gRPC service listens, plus its health endpoint.
#[derive(Clone, Debug, clap::Args)]
pub struct ListenArgs {
    /// Address for gRPC.
    #[arg(long, env = "CHAT_GRPC_ADDR")]
    pub grpc_addr: SocketAddr,

    /// Address for `/healthz` and `/readyz` (operators and probes only).
    #[arg(long, env = "CHAT_HTTP_ADDR")]
    pub http_addr: SocketAddr,

    /// Serve gRPC server reflection (grpcurl's `list`, `describe`). Off by
    /// default: it tells anyone who reaches the port every call and
    /// message; turn it on (`true`) for debugging.
    #[arg(long, env = "CHAT_GRPC_REFLECTION", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,

    /// PEM certificate (chain) to serve gRPC over TLS with; clients then
    /// use `https://` URLs and `--grpc-tls-ca`. Unset: plaintext gRPC (keep
    /// the port on a private network).
    #[arg(long, env = "CHAT_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "CHAT_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub admission: crate::admission::AdmissionArgs,
}

/// How a process calls other services' gRPC: `https://` URLs are verified
/// against this CA.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GrpcClientArgs {
    /// PEM CA certificate(s) that services' gRPC TLS certificates are
    /// checked against; needed for `https://` service URLs.
    #[arg(long, env = "CHAT_GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<std::path::PathBuf>,
}

impl GrpcClientArgs {
    /// The client TLS settings, when a CA is configured.
    pub fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        let Some(path) = &self.grpc_tls_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read --grpc-tls-ca {}: {e}", path.display()))?;
        Ok(Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        ))
    }

    /// An endpoint for `url`: over TLS (checked against the CA) for
    /// `https://`, plaintext for `http://`.
    pub fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, String> {
        let e = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("bad gRPC URL {url:?}: {e}"))?;
        if !url.starts_with("https://") {
            return Ok(e);
        }
        let tls = self
            .tls()?
            .ok_or_else(|| format!("gRPC URL {url:?} is https: set --grpc-tls-ca"))?;
        e.tls_config(tls)
            .map_err(|e| format!("TLS for gRPC URL {url:?}: {e}"))
    }

    /// [`Self::endpoint`] for each of `urls`.
    pub fn endpoints(&self, urls: &[String]) -> Result<Vec<tonic::transport::Endpoint>, String> {
        urls.iter().map(|u| self.endpoint(u)).collect()
    }
}

/// Limits of the client-facing HTTP listener (`chat`, `gateway`): every
/// stage of a connection has a deadline and the number of connections a
/// cap, so silent or slow clients cannot exhaust the process's files.
#[derive(Clone, Debug, clap::Args)]
pub struct HttpArgs {
    /// Milliseconds from accepting a TCP connection to its first byte; a
    /// connection that sends nothing is closed after it.
    #[arg(long, env = "CHAT_FIRST_BYTE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub first_byte_timeout_ms: u64,

    /// Milliseconds to receive a request's whole head (request line and
    /// headers); on HTTP/1.1 this also bounds the wait for the next request
    /// on a kept-alive connection. The connection is closed after it.
    #[arg(long, env = "CHAT_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// Milliseconds a kept-alive connection may stay open with no request
    /// in flight (HTTP/2; HTTP/1.1 is closed sooner, at
    /// --header-timeout-ms).
    #[arg(long, env = "CHAT_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,

    /// Milliseconds to receive a request's whole body, from the end of its
    /// head; a slower body fails the request with 400.
    #[arg(long, env = "CHAT_BODY_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,

    /// HTTP connections served at once (WebSockets count until upgraded);
    /// past it `/healthz` is still answered and any other request gets 503.
    /// Default: the process's file limit minus 256.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// HTTP connections (and WebSockets) from one client address at once;
    /// past it the same refusal as past --max-connections. 0: no limit.
    /// The gateway's --trusted-proxies are exempt (their clients share
    /// their address).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP",
          default_value_t = DEFAULT_MAX_PER_IP as u64)]
    pub max_connections_per_ip: u64,
}

/// Connections from one address at once, by default: a busy NAT holds
/// many, one client cannot hold the whole server.
pub const DEFAULT_MAX_PER_IP: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(secret: &str) -> BackendArgs {
        BackendArgs {
            database_url: String::new(),
            redis_url: String::new(),
            nats_url: String::new(),
            subject_prefix: "chat".into(),
            key_prefix: "chat".into(),
            internal_secret: secret.into(),
        }
    }

    #[test]
    fn short_and_published_internal_secrets_are_refused() {
        for weak in [
            "short",
            // The default an older docker-compose.yml shipped.
            "change-me-please-32-characters",
            "CHANGEME-CHANGEME-CHANGEME",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "your-internal-secret-goes-here",
        ] {
            assert!(with_secret(weak).check().is_err(), "{weak:?} was accepted");
        }
        let random = "3f9a1c07d2e84b6a95c1e0f7a2b3d4c5";
        assert!(with_secret(random).check().is_ok());
    }
}
