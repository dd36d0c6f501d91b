//! The Ed25519 key that signs access tokens. Generated on first start and
//! kept (mode 0600) as PKCS#8 in the data dir, or loaded from a file the
//! operator provides. The `kid` is derived from the public key, so every
//! replica that loads the same key agrees on it without coordination.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::EncodingKey;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use std::path::Path;

pub use chat_authn::PublicKey;

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

    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pkcs8(bytes, &path.display().to_string())
    }

    /// The PKCS#8 document (to seal it for the store).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
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

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
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
