//! Access tokens: EdDSA JWTs with a `kid`, signed here and verified
//! locally by any service with `chat-authn`.

use crate::keys::SigningKey;
use arc_swap::ArcSwap;
use chat_core::{ApiError, SessionId, UserId};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Arc;
use std::time::Duration;

pub use chat_authn::{Caller, Claims, Verifier, ISSUER};

/// Signs access tokens, with a key that can be swapped while it signs
/// (a rotation: every clone signs with the new key at once).
#[derive(Clone)]
pub struct Issuer {
    key: Arc<ArcSwap<ActiveKey>>,
    pub ttl: Duration,
}

struct ActiveKey {
    key: EncodingKey,
    kid: String,
}

impl ActiveKey {
    fn of(key: &SigningKey) -> Self {
        Self {
            key: key.encoding_key(),
            kid: key.kid().to_owned(),
        }
    }
}

impl Issuer {
    pub fn new(key: &SigningKey, ttl: Duration) -> Self {
        Self {
            key: Arc::new(ArcSwap::from_pointee(ActiveKey::of(key))),
            ttl,
        }
    }

    /// Signs with `key` from now on.
    pub fn set_key(&self, key: &SigningKey) {
        self.key.store(Arc::new(ActiveKey::of(key)));
    }

    /// The `kid` of the key that signs now.
    pub fn kid(&self) -> String {
        self.key.load().kid.clone()
    }

    pub fn issue(&self, user: UserId, session: SessionId) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            iss: ISSUER.to_owned(),
        };
        let active = self.key.load();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(active.kid.clone());
        jsonwebtoken::encode(&header, &claims, &active.key).map_err(|e| ApiError::internal(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use chat_ephemeral::{Ephemeral, MemoryEphemeral};

    fn setup() -> (Issuer, Verifier, Arc<MemoryEphemeral>) {
        let key = SigningKey::generate().unwrap();
        let eph = Arc::new(MemoryEphemeral::default());
        (
            Issuer::new(&key, Duration::from_secs(60)),
            Verifier::new(&[key.public_key()], eph.clone()),
            eph,
        )
    }

    #[tokio::test]
    async fn an_issued_token_verifies_until_its_session_is_revoked() {
        let (issuer, verifier, eph) = setup();
        let (u, s) = (UserId::new(), SessionId::new());
        let t = issuer.issue(u, s).unwrap();
        let c = verifier.verify(&t).await.unwrap();
        assert_eq!((c.user_id, c.session_id), (u, s));
        eph.revoke_session(s, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(verifier.verify(&t).await.is_err());
    }

    #[test]
    fn tampered_foreign_and_alg_none_tokens_are_refused() {
        let (issuer, verifier, _) = setup();
        let t = issuer.issue(UserId::new(), SessionId::new()).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        // Another user's id in the payload, original signature.
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = serde_json::json!(UserId::new().to_string());
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert!(verifier.verify_signature(&forged).is_err());
        // alg: none, no signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(verifier.verify_signature(&none).is_err());
        // Signed by a key we do not know.
        let (other, _, _) = setup();
        let foreign = other.issue(UserId::new(), SessionId::new()).unwrap();
        assert!(verifier.verify_signature(&foreign).is_err());
        assert!(verifier.verify_signature("garbage").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let key = SigningKey::generate().unwrap();
        let verifier = Verifier::new(&[key.public_key()], Arc::new(MemoryEphemeral::default()));
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: UserId::new().to_string(),
            sid: SessionId::new().to_string(),
            iat: now - 120,
            exp: now - 60,
            iss: ISSUER.into(),
        };
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(key.kid().to_owned());
        let t = jsonwebtoken::encode(&h, &claims, &key.encoding_key()).unwrap();
        assert!(verifier.verify_signature(&t).is_err());
    }

    /// Keys a test hands out, counting the fetches.
    struct Published {
        keys: std::sync::Mutex<Vec<chat_authn::PublicKey>>,
        fetches: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl chat_authn::KeySource for Published {
        async fn public_keys(&self) -> Result<Vec<chat_authn::PublicKey>, String> {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.keys.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_the_keys_once_per_interval() {
        let (old, new, made_up) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let source = Arc::new(Published {
            keys: std::sync::Mutex::new(vec![old.public_key()]),
            fetches: Default::default(),
        });
        let verifier = Verifier::new(&[old.public_key()], Arc::new(MemoryEphemeral::default()))
            .with_key_source(source.clone(), Duration::from_millis(300));
        let fetches = || source.fetches.load(std::sync::atomic::Ordering::SeqCst);
        let (u, s) = (UserId::new(), SessionId::new());
        let before = Issuer::new(&old, Duration::from_secs(60))
            .issue(u, s)
            .unwrap();
        assert!(verifier.verify(&before).await.is_ok());
        assert_eq!(fetches(), 0, "a known kid needs no fetch");

        // Made-up kids, many at once: refused, and they cost a fetch or
        // two, not one each.
        let forged = Issuer::new(&made_up, Duration::from_secs(60))
            .issue(u, s)
            .unwrap();
        let attempts = (0..50).map(|_| verifier.verify(&forged));
        let results = futures_util::future::join_all(attempts).await;
        assert!(results.iter().all(|r| r.is_err()));
        let after_forged = fetches();
        assert!((1..=2).contains(&after_forged), "{after_forged} fetches");

        // Auth rotates right after: the new kid is fetched (after the
        // interval) and accepted, not refused because of the forgeries.
        source.keys.lock().unwrap().push(new.public_key());
        let after = Issuer::new(&new, Duration::from_secs(60))
            .issue(u, s)
            .unwrap();
        assert!(verifier.verify_signature(&after).is_err());
        assert_eq!(verifier.verify(&after).await.unwrap().user_id, u);
        assert_eq!(fetches(), after_forged + 1);
        assert!(
            verifier.verify(&before).await.is_ok(),
            "the old key still verifies"
        );
        assert!(verifier.verify(&after).await.is_ok());
        assert_eq!(fetches(), after_forged + 1, "a known kid needs no fetch");
    }
}
