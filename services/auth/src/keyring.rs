//! The token signing keys of a deployment, kept in the store so that every
//! auth replica signs with the same key without a shared volume.
//!
//! Each key is a row: its `kid`, the public key, the PKCS#8 private key
//! sealed with the key-encryption key ([`Kek`], AES-256-GCM, the `kid` as
//! associated data), when it was made, and its state: `active` (signs new
//! tokens; at most one), `retiring` (no longer signs, still published so the
//! tokens it signed keep verifying) or `retired` (its tokens have all
//! expired: no longer published).
//!
//! A replica starting on an empty table creates the first key (or imports
//! the operator's key file); replicas starting at once agree on one (a
//! unique index on the active state). [`rotate`] makes a new key active
//! (`auth rotate-key`); [`KeyRing::sync`], run every poll interval on every
//! replica, follows it: signs with the active key, verifies with every key
//! not retired, and retires keys whose tokens have expired.

use crate::keys::{KeyError, PublicKey, SigningKey};
use crate::token::{Issuer, Verifier};
use arc_swap::ArcSwap;
use chat_core::time;
use chat_store::{KeyState, Store, StoreError, StoredSigningKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What can go wrong with the stored keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "the key-encryption key does not open signing key {kid}: wrong CHAT_KEY_ENCRYPTION_KEY?"
    )]
    WrongKek { kid: String },
    #[error("cannot seal a signing key")]
    Seal,
    #[error("cannot read or write the key-encryption key at {path}")]
    KekFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the key-encryption key file {0} is not 64 hex digits")]
    BadKekFile(String),
    #[error("the signing keys in the store")]
    Store(#[from] StoreError),
    #[error("the store has no active signing key")]
    NoActiveKey,
}

/// The operator's key-encryption secret as a flag takes it: kept out of
/// `Debug` output (configs are logged).
#[derive(Clone)]
pub struct KekSecret(String);

impl KekSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for KekSecret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for KekSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KekSecret(..)")
    }
}

/// The key-encryption key: seals and opens the private signing keys kept in
/// the store (AES-256-GCM).
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

const SEALED_VERSION: u8 = 1;

impl Kek {
    /// The key an operator's secret (`--key-encryption-key`) names: its
    /// SHA-256 under a label, so any long random string will do.
    pub fn from_secret(secret: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"chat signing-key encryption v1\0");
        h.update(secret.as_bytes());
        Self::from_bytes(&h.finalize().into())
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        Kek(LessSafeKey::new(key))
    }

    /// The all-in-one mode's key: 32 random bytes (hex) in a file of mode
    /// 0600, made on first start.
    pub fn load_or_create_file(path: &Path) -> Result<Self, KeyRingError> {
        let io = |source| KeyRingError::KekFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| KeyRingError::BadKekFile(path.display().to_string()))?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| KeyRingError::Seal)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let tmp = path.with_extension("tmp");
                crate::keys::write_private(&tmp, hex::encode(bytes).as_bytes()).map_err(io)?;
                std::fs::rename(&tmp, path).map_err(io)?;
                tracing::info!(path = %path.display(), "generated a key-encryption key");
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// `version || nonce || ciphertext+tag`, bound to `kid`.
    pub fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, KeyRingError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyRingError::Seal)?;
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut body,
            )
            .map_err(|_| KeyRingError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Self::seal`] made for `kid`; a wrong key (or a sealed
    /// value of another kid, or a tampered one) is refused.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyRingError> {
        let wrong = || KeyRingError::WrongKek {
            kid: kid.to_owned(),
        };
        let (&version, rest) = sealed.split_first().ok_or_else(wrong)?;
        if version != SEALED_VERSION || rest.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut body)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

fn stored(kek: &Kek, key: &SigningKey, now: i64) -> Result<StoredSigningKey, KeyRingError> {
    Ok(StoredSigningKey {
        kid: key.kid().to_owned(),
        public_key: key.public_key().raw,
        private_sealed: kek.seal(key.kid(), key.pkcs8())?,
        created_at: now,
        state: KeyState::Active,
        retiring_at: None,
    })
}

fn unseal(kek: &Kek, row: &StoredSigningKey) -> Result<SigningKey, KeyRingError> {
    let pkcs8 = kek.open(&row.kid, &row.private_sealed)?;
    let key = SigningKey::from_pkcs8(pkcs8, &format!("stored key {}", row.kid))?;
    if key.kid() != row.kid {
        return Err(KeyRingError::WrongKek {
            kid: row.kid.clone(),
        });
    }
    Ok(key)
}

fn public(rows: &[StoredSigningKey]) -> Vec<PublicKey> {
    rows.iter()
        .filter(|r| r.state != KeyState::Retired)
        .map(|r| PublicKey {
            kid: r.kid.clone(),
            raw: r.public_key.clone(),
        })
        .collect()
}

/// The active key of the store, opened: creates it first if the store has
/// none (from `key_file` when it exists, else a new one). Replicas doing
/// this at once end with the same key.
pub async fn active_key(
    store: &dyn Store,
    kek: &Kek,
    key_file: Option<&Path>,
) -> Result<SigningKey, KeyRingError> {
    let file_key = match key_file {
        Some(path) if path.exists() => Some(SigningKey::load(path)?),
        Some(path) => {
            tracing::info!(path = %path.display(), "no signing key file there; using the store's keys");
            None
        }
        None => None,
    };
    for _ in 0..3 {
        let rows = store.signing_keys().await?;
        if let Some(row) = rows.iter().find(|r| r.state == KeyState::Active) {
            if let Some(file) = &file_key {
                if !rows.iter().any(|r| r.kid == file.kid()) {
                    tracing::warn!(
                        file_kid = %file.kid(),
                        active_kid = %row.kid,
                        "the signing key file is not the store's active key and is not used; \
                         `auth rotate-key --key-file` makes it active"
                    );
                }
            }
            return unseal(kek, row);
        }
        let key = match &file_key {
            Some(file) => SigningKey::from_pkcs8(file.pkcs8().to_vec(), "the key file")?,
            None => SigningKey::generate()?,
        };
        match store
            .add_signing_key(&stored(kek, &key, time::now_ms())?)
            .await
        {
            Ok(()) => {
                tracing::info!(kid = %key.kid(), "stored a new active token signing key");
                return Ok(key);
            }
            // Another replica made one first (or the file's key is known
            // but not active): use the store's active key.
            Err(StoreError::AlreadyExists) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(KeyRingError::NoActiveKey)
}

/// Makes `key` (a new one if `None`) the active signing key; the one
/// active until now keeps verifying until its tokens have expired. The new
/// key's `kid`.
pub async fn rotate(
    store: &dyn Store,
    kek: &Kek,
    key: Option<SigningKey>,
) -> Result<String, KeyRingError> {
    // The current key must open with this KEK: a rotation with a wrong one
    // would leave replicas with a key they cannot open.
    if let Some(active) = store
        .signing_keys()
        .await?
        .iter()
        .find(|r| r.state == KeyState::Active)
    {
        unseal(kek, active)?;
    }
    let key = match key {
        Some(k) => k,
        None => SigningKey::generate()?,
    };
    let now = time::now_ms();
    store
        .rotate_signing_key(&stored(kek, &key, now)?, now)
        .await?;
    tracing::info!(kid = %key.kid(), "rotated the token signing key");
    Ok(key.kid().to_owned())
}

/// A replica's view of the stored keys: keeps its issuer signing with the
/// active key and its verifier (and JWKS) holding every key not retired.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    kek: Kek,
    issuer: Issuer,
    verifier: Verifier,
    /// How long after it stopped signing a key is retired: every token it
    /// signed has expired by then.
    retire_after: Duration,
    published: ArcSwap<Vec<PublicKey>>,
}

impl KeyRing {
    /// `retire_after`: the access-token lifetime plus the poll interval (a
    /// replica may sign with the old key until it polls) and some margin.
    pub fn new(
        store: Arc<dyn Store>,
        kek: Kek,
        issuer: Issuer,
        verifier: Verifier,
        retire_after: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                kek,
                issuer,
                verifier,
                retire_after,
                published: ArcSwap::from_pointee(Vec::new()),
            }),
        }
    }

    /// Follows the store: retires keys whose tokens have expired, signs
    /// with the active key, verifies with every key not retired.
    pub async fn sync(&self) -> Result<(), KeyRingError> {
        let i = &self.inner;
        let before = time::now_ms() - i.retire_after.as_millis() as i64;
        let retired = i.store.retire_signing_keys(before).await?;
        if retired > 0 {
            tracing::info!(keys = retired, "retired token signing keys");
        }
        let rows = i.store.signing_keys().await?;
        let active = rows
            .iter()
            .find(|r| r.state == KeyState::Active)
            .ok_or(KeyRingError::NoActiveKey)?;
        if active.kid != i.issuer.kid() {
            let key = unseal(&i.kek, active)?;
            i.issuer.set_key(&key);
            tracing::info!(kid = %key.kid(), "signing with the new active key");
        }
        let keys = public(&rows);
        i.verifier.set_keys(&keys);
        i.published.store(Arc::new(keys));
        Ok(())
    }

    /// The keys that verify tokens now, as the JWKS publishes them: read
    /// from the store (so a key another replica started signing with a
    /// moment ago is there), or the last known ones if it cannot be read.
    pub async fn published(&self) -> Vec<PublicKey> {
        match self.inner.store.signing_keys().await {
            Ok(rows) => {
                let keys = public(&rows);
                if !keys.is_empty() {
                    self.inner.published.store(Arc::new(keys.clone()));
                }
                keys
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the signing keys; publishing the last known");
                self.inner.published.load().as_ref().clone()
            }
        }
    }

    /// Runs [`Self::sync`] every `every` until `stop`.
    pub fn keep_in_sync(&self, every: Duration, stop: CancellationToken) {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(error) = ring.sync().await {
                    tracing::warn!(error = %error, "cannot follow the stored signing keys");
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl chat_authn::KeySource for KeyRing {
    async fn public_keys(&self) -> Result<Vec<PublicKey>, String> {
        let rows = self
            .inner
            .store
            .signing_keys()
            .await
            .map_err(|e| e.to_string())?;
        Ok(public(&rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_with_the_same_kek_only() {
        let key = SigningKey::generate().unwrap();
        let kek = Kek::from_secret("9c1f0a7e3b2d4c58a6e1f09b7d3c2a14");
        let sealed = kek.seal(key.kid(), key.pkcs8()).unwrap();
        assert!(
            !sealed.windows(key.pkcs8().len()).any(|w| w == key.pkcs8()),
            "the private key is not kept in the clear"
        );
        assert_eq!(kek.open(key.kid(), &sealed).unwrap(), key.pkcs8());

        let wrong = Kek::from_secret("0d4b8e2f6a1c3e5b7d9f1a3c5e7b9d2f");
        assert!(matches!(
            wrong.open(key.kid(), &sealed),
            Err(KeyRingError::WrongKek { .. })
        ));
        // Bound to its kid: moved to another row, it does not open.
        assert!(kek.open("another-kid", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(kek.open(key.kid(), &tampered).is_err());
        assert!(kek.open(key.kid(), b"").is_err());
    }

    #[test]
    fn a_local_kek_file_is_made_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/kek");
        let a = Kek::load_or_create_file(&path).unwrap();
        let sealed = a.seal("k", b"secret bytes").unwrap();
        let b = Kek::load_or_create_file(&path).unwrap();
        assert_eq!(b.open("k", &sealed).unwrap(), b"secret bytes");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            Kek::load_or_create_file(&path),
            Err(KeyRingError::BadKekFile(_))
        ));
    }

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        (dir, chat_store::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn replicas_share_the_stored_key_and_a_wrong_kek_is_refused() {
        let (_dir, store) = sqlite().await;
        let kek = Kek::from_secret("9c1f0a7e3b2d4c58a6e1f09b7d3c2a14");
        let first = active_key(store.as_ref(), &kek, None).await.unwrap();
        let second = active_key(store.as_ref(), &kek, None).await.unwrap();
        assert_eq!(first.kid(), second.kid());
        let wrong = Kek::from_secret("0d4b8e2f6a1c3e5b7d9f1a3c5e7b9d2f");
        assert!(matches!(
            active_key(store.as_ref(), &wrong, None).await,
            Err(KeyRingError::WrongKek { .. })
        ));
        assert!(rotate(store.as_ref(), &wrong, None).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_at_once_on_postgres_agree_on_one_key() {
        let schema = format!("t_keys_{}", uuid::Uuid::new_v4().simple());
        let url = format!("postgres://postgres@127.0.0.1:5432/postgres?schema={schema}");
        let mut replicas = Vec::new();
        for _ in 0..4 {
            let url = url.clone();
            replicas.push(tokio::spawn(async move {
                let store = chat_store::connect(&url).await.unwrap();
                let kek = Kek::from_secret("9c1f0a7e3b2d4c58a6e1f09b7d3c2a14");
                active_key(store.as_ref(), &kek, None)
                    .await
                    .unwrap()
                    .kid()
                    .to_owned()
            }));
        }
        let mut kids = Vec::new();
        for r in replicas {
            kids.push(r.await.unwrap());
        }
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-c",
            ])
            .arg(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .output();
        kids.dedup();
        assert_eq!(kids.len(), 1, "{kids:?}");
    }

    fn ring(store: Arc<dyn Store>, key: &SigningKey, retire_after: Duration) -> KeyRing {
        let issuer = Issuer::new(key, Duration::from_secs(60));
        let verifier = Verifier::new(
            &[key.public_key()],
            Arc::new(chat_ephemeral::MemoryEphemeral::default()),
        );
        KeyRing::new(
            store,
            Kek::from_secret("9c1f0a7e3b2d4c58a6e1f09b7d3c2a14"),
            issuer,
            verifier,
            retire_after,
        )
    }

    #[tokio::test]
    async fn a_replica_follows_a_rotation_and_retires_the_old_key_after_its_tokens() {
        let (_dir, store) = sqlite().await;
        let kek = Kek::from_secret("9c1f0a7e3b2d4c58a6e1f09b7d3c2a14");
        let old = active_key(store.as_ref(), &kek, None).await.unwrap();
        let keys = ring(store.clone(), &old, Duration::from_secs(3600));
        keys.sync().await.unwrap();
        let (u, s) = (chat_core::UserId::new(), chat_core::SessionId::new());
        let old_token = keys.inner.issuer.issue(u, s).unwrap();

        let new_kid = rotate(store.as_ref(), &kek, None).await.unwrap();
        keys.sync().await.unwrap();
        assert_eq!(keys.inner.issuer.kid(), new_kid, "signs with the new key");
        let new_token = keys.inner.issuer.issue(u, s).unwrap();
        let verifier = &keys.inner.verifier;
        assert!(verifier.verify(&old_token).await.is_ok());
        assert!(verifier.verify(&new_token).await.is_ok());
        let mut published: Vec<String> =
            keys.published().await.into_iter().map(|k| k.kid).collect();
        published.sort();
        let mut both = vec![old.kid().to_owned(), new_kid.clone()];
        both.sort();
        assert_eq!(published, both);

        // Once the old key's tokens have expired (here: at once), it is
        // retired and no longer verifies or is published.
        let expired = ring(store.clone(), &old, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(5)).await;
        expired.sync().await.unwrap();
        assert_eq!(expired.inner.verifier.kids(), vec![new_kid.clone()]);
        let published: Vec<String> = expired
            .published()
            .await
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(published, vec![new_kid]);
    }
}
