//! Auth's public keys: what a verifier needs of the signing key, and how a
//! service in its own process fetches them from auth at start.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;

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
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    fetch_public_keys_from(endpoint, deadline).await
}

/// [`fetch_public_keys`] through `endpoint` (e.g. one set up for TLS).
pub async fn fetch_public_keys_from(
    endpoint: tonic::transport::Endpoint,
    deadline: std::time::Duration,
) -> Result<Vec<PublicKey>, tonic::Status> {
    use chat_proto::v1::auth_service_client::AuthServiceClient;
    let url = endpoint.uri().to_string();
    let url = url.as_str();
    let give_up = tokio::time::Instant::now() + deadline;
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        let attempt = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
            let mut client = AuthServiceClient::new(channel);
            let mut req = tonic::Request::new(chat_proto::v1::GetPublicKeysRequest {});
            req.set_timeout(std::time::Duration::from_secs(5));
            client.get_public_keys(req).await
        };
        match attempt.await {
            Ok(r) => {
                let keys: Vec<PublicKey> = r
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
                return Ok(keys);
            }
            Err(e) if tokio::time::Instant::now() + wait < give_up => {
                tracing::info!(error = %e.message(), url, "auth not reachable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}
