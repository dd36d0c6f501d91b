//! Auth's public keys: what a verifier needs of the signing key, and how a
//! service in its own process fetches them from auth at start.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;

/// How a verifying service (gateway, room) keeps auth's public keys
/// current: a periodic fetch, and one when a token names a `kid` it does
/// not know (a key auth started signing with after the last fetch).
#[derive(Clone, Debug, clap::Args)]
pub struct KeyRefreshArgs {
    /// Seconds between fetches of auth's public keys (keys retired by auth
    /// leave, new ones arrive); 0: only on an unknown kid.
    #[arg(long, env = "CHAT_KEYS_REFRESH_SECS", default_value_t = 300)]
    pub keys_refresh_secs: u64,

    /// A token with an unknown `kid` makes the service fetch the keys
    /// again, at most once per this many seconds (made-up kids cannot make
    /// it hammer auth); such a token may wait up to this long.
    #[arg(long, env = "CHAT_KEYS_UNKNOWN_KID_INTERVAL_SECS", default_value_t = 2)]
    pub keys_unknown_kid_interval_secs: u64,
}

impl KeyRefreshArgs {
    pub fn refresh_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keys_refresh_secs)
    }

    pub fn unknown_kid_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keys_unknown_kid_interval_secs)
    }
}

/// An Ed25519 public key with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub raw: Vec<u8>,
}

impl PublicKey {
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(&self.raw)
    }

    /// JWK `x`: base64url without padding.
    pub fn x(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.raw)
    }

    pub fn from_x(kid: &str, x: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(x).ok()?;
        (raw.len() == 32).then(|| Self {
            kid: kid.to_owned(),
            raw,
        })
    }
}

/// Fetches the public keys from auth (`GetPublicKeys`), retrying until
/// `deadline` so that services may start in any order.
pub async fn fetch_public_keys(
    url: &str,
    deadline: std::time::Duration,
) -> Result<Vec<PublicKey>, tonic::Status> {
    fetch_public_keys_from(&AuthKeys::new(vec![url.to_owned()]), deadline).await
}

/// [`fetch_public_keys`] from the first of `source`'s replicas that
/// answers (each is tried in turn), retrying until `deadline`.
pub async fn fetch_public_keys_from(
    source: &AuthKeys,
    deadline: std::time::Duration,
) -> Result<Vec<PublicKey>, tonic::Status> {
    let give_up = tokio::time::Instant::now() + deadline;
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match source.fetch().await {
            Ok(keys) => return Ok(keys),
            Err(e)
                if e.code() != tonic::Code::Internal
                    && tokio::time::Instant::now() + wait < give_up =>
            {
                tracing::info!(error = %e.message(), "auth not reachable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The verifier of a service other than auth: auth's public keys fetched
/// from `source` (waiting up to `deadline` for a replica to answer, so that
/// services may start in any order), and fetched from it again when a token
/// names an unknown `kid` (at most once per `unknown_kid_interval`).
pub async fn verifier_from_auth(
    source: AuthKeys,
    ephemeral: std::sync::Arc<dyn chat_ephemeral::Ephemeral>,
    internal_secret: &str,
    unknown_kid_interval: std::time::Duration,
    deadline: std::time::Duration,
) -> Result<crate::Verifier, tonic::Status> {
    let keys = fetch_public_keys_from(&source, deadline).await?;
    Ok(crate::Verifier::new(&keys, ephemeral)
        .with_internal_secret(internal_secret)
        .with_key_source(std::sync::Arc::new(source), unknown_kid_interval))
}

/// Auth's `GetPublicKeys` at any of several replicas: a [`KeySource`] that
/// asks each in turn until one answers.
#[derive(Clone, Debug)]
pub struct AuthKeys {
    /// Each replica's URL (for logs) and endpoint (TLS set up, if any), or
    /// why its URL is not one.
    endpoints: Vec<(String, Result<tonic::transport::Endpoint, String>)>,
}

impl AuthKeys {
    /// Plain-text (or system-default TLS) endpoints at `urls`.
    pub fn new(urls: Vec<String>) -> Self {
        let endpoints = urls
            .into_iter()
            .map(|u| {
                let e =
                    tonic::transport::Endpoint::from_shared(u.clone()).map_err(|e| e.to_string());
                (u, e)
            })
            .collect();
        Self { endpoints }
    }

    /// Endpoints made by the caller (e.g. with the CA for `https://`).
    pub fn from_endpoints(endpoints: Vec<tonic::transport::Endpoint>) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|e| (e.uri().to_string(), Ok(e)))
            .collect();
        Self { endpoints }
    }

    async fn fetch_one(
        endpoint: &Result<tonic::transport::Endpoint, String>,
    ) -> Result<Vec<PublicKey>, tonic::Status> {
        use chat_proto::v1::auth_service_client::AuthServiceClient;
        let timeout = std::time::Duration::from_secs(5);
        let endpoint = endpoint
            .clone()
            .map_err(tonic::Status::invalid_argument)?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = AuthServiceClient::new(channel);
        let mut req = tonic::Request::new(chat_proto::v1::GetPublicKeysRequest {});
        req.set_timeout(timeout);
        let keys: Vec<PublicKey> = client
            .get_public_keys(req)
            .await?
            .into_inner()
            .keys
            .iter()
            .filter(|k| k.alg == "EdDSA")
            .filter_map(|k| PublicKey::from_x(&k.kid, &k.x))
            .collect();
        if keys.is_empty() {
            return Err(tonic::Status::internal(
                "auth returned no usable public key",
            ));
        }
        Ok(keys)
    }

    /// The keys from the first URL that answers; the last error if none.
    pub async fn fetch(&self) -> Result<Vec<PublicKey>, tonic::Status> {
        let mut last = tonic::Status::invalid_argument("no auth URL given");
        for (url, endpoint) in &self.endpoints {
            match Self::fetch_one(endpoint).await {
                Ok(keys) => return Ok(keys),
                Err(e) => {
                    tracing::debug!(error = %e.message(), url, "cannot fetch public keys");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

#[async_trait::async_trait]
impl crate::verifier::KeySource for AuthKeys {
    async fn public_keys(&self) -> Result<Vec<PublicKey>, String> {
        self.fetch().await.map_err(|e| e.message().to_owned())
    }
}
