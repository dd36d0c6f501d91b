//! The Ed25519 key that signs access tokens. Generated on first start and
//! kept (mode 0600) as PKCS#8 in the data dir, or loaded from a file the
//! operator provides. The `kid` is derived from the public key, so every
//! replica that loads the same key agrees on it without coordination.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the signing key at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key at {0} is not an Ed25519 PKCS#8 key")]
    Invalid(String),
    #[error("cannot generate a signing key")]
    Generate,
}

/// The private signing key with its id.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key (tests and first start).
    pub fn generate() -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref().to_vec(), "generated")
    }

    pub fn from_pkcs8(pkcs8: Vec<u8>, origin: &str) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| KeyError::Invalid(origin.to_owned()))?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = Sha256::digest(&public);
        let kid = URL_SAFE_NO_PAD.encode(&digest[..12]);
        Ok(Self { pkcs8, public, kid })
    }

    /// Loads the key at `path`, or generates and writes one there (0600).
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => Self::from_pkcs8(bytes, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let tmp = path.with_extension("tmp");
                write_private(&tmp, &key.pkcs8).map_err(io)?;
                std::fs::rename(&tmp, path).map_err(io)?;
                tracing::info!(path = %path.display(), kid = %key.kid, "generated a new token signing key");
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn encoding_key(&self) -> EncodingKey {
        EncodingKey::from_ed_der(&self.pkcs8)
    }

    /// The public half, as the verifier and the JWKS need it.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            kid: self.kid.clone(),
            raw: self.public.clone(),
        }
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

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Fetches the public keys from auth (`GetPublicKeys`), retrying until
/// `deadline` so that services may start in any order.
pub async fn fetch_public_keys(
    url: &str,
    deadline: std::time::Duration,
) -> Result<Vec<PublicKey>, tonic::Status> {
    use chat_proto::v1::auth_service_client::AuthServiceClient;
    let give_up = tokio::time::Instant::now() + deadline;
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut client = AuthServiceClient::connect(url.to_owned())
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_and_reloaded_with_the_same_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/jwt.pk8");
        let a = SigningKey::load_or_generate(&path).unwrap();
        let b = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn garbage_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.pk8");
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            SigningKey::load_or_generate(&path),
            Err(KeyError::Invalid(_))
        ));
    }
}
