//! Verifying access tokens (EdDSA JWTs with a `kid`) and internal
//! assertions, locally, in any service.

use crate::internal::{CLIENT_ADDR_KEY, INTERNAL_KEY, SERVICE_KEY, SESSION_KEY, USER_KEY};
use crate::keys::PublicKey;
use arc_swap::ArcSwap;
use chat_core::{ApiError, SessionId, UserId};
use chat_ephemeral::Ephemeral;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;

/// The `iss` of every access token.
pub const ISSUER: &str = "chat";

/// What an access token says (auth's `Issuer` signs them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session (refresh-token family) id.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

/// Who is calling: what a verified token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// Unix seconds when the token expires.
    pub expires_at: i64,
}

/// Who is calling, when a call may come from a service as well as a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A user: an access token, or a gateway's assertion of one.
    User(Caller),
    /// A service calling as itself, for no user (the name it asserted, e.g.
    /// `gateway`); only [`Verifier::verify_principal`] accepts it.
    Service(String),
}

/// Verifies access tokens with the public keys and the revocation list.
///
/// It also accepts a gateway's assertion of who is calling (`x-chat-internal`
/// with the shared internal secret, plus `x-chat-user` and `x-chat-session`):
/// a WebSocket outlives its access token, so the gateway authenticates the
/// user once at connect, follows revocations on the bus, and from then on
/// calls on the user's behalf. A revoked session is refused either way.
/// With the secret and `x-chat-service` instead of a user, a service calls
/// as itself ([`Principal::Service`]); only calls that need no user take it.
///
/// The verifying keys are a set that can be swapped while tokens are being
/// verified ([`Self::set_keys`]): auth publishes every key that is not
/// retired, so tokens signed before a rotation keep verifying. With a
/// [`KeySource`] ([`Self::with_key_source`]) a token whose `kid` is unknown
/// makes the verifier fetch the keys again, at most once per interval, and
/// [`Self::keep_keys_fresh`] fetches them periodically.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<ArcSwap<HashMap<String, DecodingKey>>>,
    refresh: Option<Arc<Refresh>>,
    ephemeral: Arc<dyn Ephemeral>,
    validation: Arc<Validation>,
    internal: Option<Arc<[u8; 32]>>,
}

/// Where a verifier gets the current public keys again.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// Every key that verifies tokens now; an error says why there are none.
    async fn public_keys(&self) -> Result<Vec<PublicKey>, String>;
}

/// Fetching on an unknown `kid`: at most once per `min_interval`, one at a
/// time (concurrent requests with the same new kid wait for one fetch).
struct Refresh {
    source: Arc<dyn KeySource>,
    min_interval: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// Why a token's signature was not accepted.
enum SignatureError {
    /// A `kid` the key set does not hold: maybe a key newer than the set.
    UnknownKid,
    Invalid,
}

fn key_map(keys: &[PublicKey]) -> HashMap<String, DecodingKey> {
    keys.iter()
        .map(|k| (k.kid.clone(), k.decoding_key()))
        .collect()
}

impl Verifier {
    pub fn new(keys: &[PublicKey], ephemeral: Arc<dyn Ephemeral>) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            keys: Arc::new(ArcSwap::from_pointee(key_map(keys))),
            refresh: None,
            ephemeral,
            validation: Arc::new(validation),
            internal: None,
        }
    }

    /// Replaces the verifying keys (every clone of this verifier sees the
    /// new set at once).
    pub fn set_keys(&self, keys: &[PublicKey]) {
        self.keys.store(Arc::new(key_map(keys)));
    }

    /// The `kid`s of the verifying keys.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.load().keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Fetches the keys from `source` again when a token names an unknown
    /// `kid`, at most once per `min_interval` (so that tokens with made-up
    /// kids cannot make it hammer auth).
    pub fn with_key_source(mut self, source: Arc<dyn KeySource>, min_interval: Duration) -> Self {
        self.refresh = Some(Arc::new(Refresh {
            source,
            min_interval,
            last: tokio::sync::Mutex::new(None),
        }));
        self
    }

    /// Fetches the keys from the key source now and swaps them in; how many.
    /// A failure or an empty answer keeps the current set.
    pub async fn refresh_keys(&self) -> Result<usize, String> {
        let Some(refresh) = &self.refresh else {
            return Err("no key source".into());
        };
        let keys = refresh.source.public_keys().await?;
        if keys.is_empty() {
            return Err("the key source returned no key".into());
        }
        self.set_keys(&keys);
        Ok(keys.len())
    }

    /// Refreshes the keys every `every` until `stop` (a no-op without a
    /// key source), so keys retired by auth leave the set and new ones come
    /// in before any token needs them.
    pub fn keep_keys_fresh(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        if self.refresh.is_none() || every.is_zero() {
            return;
        }
        let verifier = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match verifier.refresh_keys().await {
                    Ok(n) => tracing::debug!(keys = n, "verifying keys refreshed"),
                    Err(error) => {
                        tracing::warn!(%error, "cannot refresh the verifying keys; keeping the current ones")
                    }
                }
            }
        });
    }

    /// After a token named an unknown `kid`: fetches the keys, at most once
    /// per interval; true if `kid` is now known.
    ///
    /// Requests for unknown kids queue here. One that began before the
    /// latest fetch started takes that fetch's answer (the fetch saw every
    /// key published before the request came). Otherwise it waits for the
    /// interval to pass and fetches: a token of a key auth began signing
    /// with a moment ago is accepted, a little late, even right after
    /// tokens with made-up kids, and those cost one fetch per interval
    /// however many there are.
    async fn refresh_for(&self, kid: &str) -> bool {
        let Some(refresh) = &self.refresh else {
            return false;
        };
        let began = Instant::now();
        let mut last = refresh.last.lock().await;
        if let Some(at) = *last {
            if at >= began || self.keys.load().contains_key(kid) {
                return self.keys.load().contains_key(kid);
            }
            let next = at + refresh.min_interval;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        *last = Some(Instant::now());
        match self.refresh_keys().await {
            Ok(n) => tracing::info!(
                kid,
                keys = n,
                "fetched the verifying keys for an unknown kid"
            ),
            Err(error) => tracing::warn!(%error, kid, "cannot fetch the verifying keys"),
        }
        self.keys.load().contains_key(kid)
    }

    /// Also trusts gateways that present `secret` (see the type's docs).
    pub fn with_internal_secret(mut self, secret: &str) -> Self {
        self.internal = Some(Arc::new(Sha256::digest(secret.as_bytes()).into()));
        self
    }

    /// The address of the client `req` is for: the one a gateway asserts
    /// (with the internal secret), else the gRPC peer's; `None` when
    /// neither is known (an in-process call without an assertion).
    pub fn client_addr<T>(&self, req: &tonic::Request<T>) -> Option<std::net::IpAddr> {
        let md = req.metadata();
        if let (Some(presented), Some(expected)) = (md.get(INTERNAL_KEY), &self.internal) {
            let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
            if &digest == expected.as_ref() {
                let asserted = md
                    .get(CLIENT_ADDR_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.parse().ok());
                if asserted.is_some() {
                    return asserted;
                }
            }
        }
        req.remote_addr().map(|a| a.ip())
    }

    /// Checks an internal assertion; `None` when the request carries none.
    /// A user's session is not checked for revocation here.
    fn internal_principal(&self, md: &MetadataMap) -> Option<Result<Principal, ApiError>> {
        let presented = md.get(INTERNAL_KEY)?;
        let bad = || ApiError::unauthorized("invalid internal credentials");
        let Some(expected) = &self.internal else {
            return Some(Err(bad()));
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if &digest != expected.as_ref() {
            return Some(Err(bad()));
        }
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        if md.get(USER_KEY).is_none() && md.get(SERVICE_KEY).is_some() {
            let service = get(SERVICE_KEY);
            return Some(if service.is_empty() {
                Err(bad())
            } else {
                Ok(Principal::Service(service.to_owned()))
            });
        }
        Some(
            UserId::parse(get(USER_KEY))
                .and_then(|u| SessionId::parse(get(SESSION_KEY)).map(|s| (u, s)))
                .map(|(user_id, session_id)| {
                    Principal::User(Caller {
                        user_id,
                        session_id,
                        expires_at: i64::MAX,
                    })
                })
                .map_err(|_| bad()),
        )
    }

    /// Signature, algorithm, `kid`, expiry and issuer; no revocation check.
    /// With the keys held now (see [`Self::verify_signature_fresh`]).
    pub fn verify_signature(&self, token: &str) -> Result<Caller, ApiError> {
        self.check_signature(token).map_err(|_| invalid_token())
    }

    /// [`Self::verify_signature`], but a token with an unknown `kid` first
    /// makes the verifier fetch the keys again (rate limited), so a key auth
    /// started signing with a moment ago is accepted.
    pub async fn verify_signature_fresh(&self, token: &str) -> Result<Caller, ApiError> {
        match self.check_signature(token) {
            Err(SignatureError::UnknownKid) if self.refresh.is_some() => {
                let kid = jsonwebtoken::decode_header(token)
                    .ok()
                    .and_then(|h| h.kid)
                    .unwrap_or_default();
                if self.refresh_for(&kid).await {
                    self.verify_signature(token)
                } else {
                    Err(invalid_token())
                }
            }
            other => other.map_err(|_| invalid_token()),
        }
    }

    fn check_signature(&self, token: &str) -> Result<Caller, SignatureError> {
        let bad = |_| SignatureError::Invalid;
        let header = jsonwebtoken::decode_header(token).map_err(bad)?;
        if header.alg != Algorithm::EdDSA {
            return Err(SignatureError::Invalid);
        }
        let kid = header.kid.ok_or(SignatureError::Invalid)?;
        let keys = self.keys.load();
        let key = keys.get(&kid).ok_or(SignatureError::UnknownKid)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(bad)?;
        let user_id = UserId::parse(&data.claims.sub).map_err(|_| SignatureError::Invalid)?;
        let session_id = SessionId::parse(&data.claims.sid).map_err(|_| SignatureError::Invalid)?;
        Ok(Caller {
            user_id,
            session_id,
            expires_at: data.claims.exp,
        })
    }

    /// Full check: signature and the session not revoked. The revocation
    /// list is a cache of the store's: built with a
    /// [`chat_ephemeral::Revocations`], the store answers when the list
    /// cannot. When nothing can answer the token is refused with
    /// `unavailable` (never trusted: a revoked session must not come back
    /// because Redis is down).
    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let caller = self.verify_signature_fresh(token).await?;
        self.check_revoked(caller).await
    }

    /// Whether `caller`'s session is still live (a socket re-checks the
    /// session it authenticated with): `unauthorized` when revoked,
    /// `unavailable` when nothing can tell.
    pub async fn check_session(&self, caller: Caller) -> Result<Caller, ApiError> {
        self.check_revoked(caller).await
    }

    async fn check_revoked(&self, caller: Caller) -> Result<Caller, ApiError> {
        match self.ephemeral.is_session_revoked(caller.session_id).await {
            Ok(true) => Err(ApiError::unauthorized("session revoked")),
            Ok(false) => Ok(caller),
            Err(error) => {
                tracing::warn!(error = %error, "cannot check revocations; refusing the token");
                Err(ApiError::unavailable(
                    "cannot check the session right now; retry",
                ))
            }
        }
    }

    /// Verifies the `authorization: Bearer …` metadata of a gRPC request.
    /// Or an internal assertion, when one is present: of a user, or of a
    /// service calling as itself.
    pub async fn verify_principal<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<Principal, ApiError> {
        match self.internal_principal(req.metadata()) {
            Some(Ok(Principal::User(asserted))) => {
                self.check_revoked(asserted).await.map(Principal::User)
            }
            Some(service_or_refusal) => service_or_refusal,
            None => {
                let token = bearer(req.metadata())?;
                self.verify(token).await.map(Principal::User)
            }
        }
    }

    /// Like [`Self::verify_principal`], for a call that needs a user: a
    /// service calling as itself is refused.
    pub async fn verify_request<T>(&self, req: &tonic::Request<T>) -> Result<Caller, ApiError> {
        match self.verify_principal(req).await? {
            Principal::User(caller) => Ok(caller),
            Principal::Service(_) => Err(ApiError::unauthorized("this call needs a user")),
        }
    }
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid or expired access token")
}

/// The token of an `authorization: Bearer …` metadata entry.
pub fn bearer(md: &MetadataMap) -> Result<&str, ApiError> {
    let value = md
        .get("authorization")
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let s = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed authorization header"))?;
    strip_bearer(s).ok_or_else(|| ApiError::unauthorized("malformed authorization header"))
}

/// `Bearer <token>` → `<token>` (scheme case-insensitive).
pub fn strip_bearer(s: &str) -> Option<&str> {
    let (scheme, token) = s.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::{assert_service, assert_user};
    use chat_core::ErrorCode;
    use chat_ephemeral::MemoryEphemeral;
    use std::time::Duration;

    #[tokio::test]
    async fn internal_assertions_need_the_shared_secret() {
        let eph = Arc::new(MemoryEphemeral::default());
        let v = Verifier::new(&[], eph.clone()).with_internal_secret("s3cret");
        let (u, s) = (UserId::new(), SessionId::new());
        let req = |secret: &str| {
            let mut r = tonic::Request::new(());
            let md = r.metadata_mut();
            md.insert(INTERNAL_KEY, secret.parse().unwrap());
            md.insert(USER_KEY, u.to_string().parse().unwrap());
            md.insert(SESSION_KEY, s.to_string().parse().unwrap());
            r
        };
        assert_eq!(v.verify_request(&req("s3cret")).await.unwrap().user_id, u);
        assert!(v.verify_request(&req("guess")).await.is_err());
        let plain = Verifier::new(&[], eph.clone());
        assert!(plain.verify_request(&req("s3cret")).await.is_err());
        eph.revoke_session(s, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(v.verify_request(&req("s3cret")).await.is_err());
    }

    fn verifier() -> (Verifier, Arc<MemoryEphemeral>) {
        let eph = Arc::new(MemoryEphemeral::default());
        let v = Verifier::new(&[], eph.clone()).with_internal_secret("s3cret");
        (v, eph)
    }

    fn as_service(service: &str, secret: &str) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        assert_service(r.metadata_mut(), service, secret);
        r
    }

    fn as_user(caller: &Caller, secret: &str) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        assert_user(r.metadata_mut(), caller, secret);
        r
    }

    fn caller() -> Caller {
        Caller {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            expires_at: 0,
        }
    }

    #[tokio::test]
    async fn a_service_assertion_with_the_secret_is_a_service_principal() {
        let (v, _) = verifier();
        assert_eq!(
            v.verify_principal(&as_service("gateway", "s3cret"))
                .await
                .unwrap(),
            Principal::Service("gateway".into())
        );
    }

    fn unauthorized<T: std::fmt::Debug>(r: Result<T, ApiError>) -> bool {
        matches!(r, Err(e) if e.code == ErrorCode::Unauthorized)
    }

    #[tokio::test]
    async fn a_service_assertion_with_a_wrong_secret_is_refused() {
        let (v, _) = verifier();
        let plain = Verifier::new(&[], Arc::new(MemoryEphemeral::default()));
        let wrong = as_service("gateway", "guess");
        assert!(unauthorized(v.verify_principal(&wrong).await));
        let right = as_service("gateway", "s3cret");
        assert!(unauthorized(plain.verify_principal(&right).await));
        let nameless = as_service("", "s3cret");
        assert!(unauthorized(v.verify_principal(&nameless).await));
    }

    #[tokio::test]
    async fn a_call_that_needs_a_user_refuses_a_service() {
        let (v, _) = verifier();
        let service = as_service("gateway", "s3cret");
        assert!(unauthorized(v.verify_request(&service).await));
    }

    #[tokio::test]
    async fn user_assertions_are_users_until_their_session_is_revoked() {
        let (v, eph) = verifier();
        let c = caller();
        let expected = Caller {
            expires_at: i64::MAX,
            ..c
        };
        assert_eq!(
            v.verify_request(&as_user(&c, "s3cret")).await.unwrap(),
            expected
        );
        assert_eq!(
            v.verify_principal(&as_user(&c, "s3cret")).await.unwrap(),
            Principal::User(expected)
        );
        // A user and a service name: the user is who calls.
        let mut both = as_user(&c, "s3cret");
        both.metadata_mut()
            .insert(SERVICE_KEY, "gateway".parse().unwrap());
        assert_eq!(
            v.verify_principal(&both).await.unwrap(),
            Principal::User(expected)
        );
        assert!(v.verify_principal(&as_user(&c, "guess")).await.is_err());
        eph.revoke_session(c.session_id, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(v.verify_principal(&as_user(&c, "s3cret")).await.is_err());
        assert!(v.verify_request(&as_user(&c, "s3cret")).await.is_err());
    }

    #[test]
    fn bearer_scheme_is_parsed_strictly() {
        assert_eq!(strip_bearer("Bearer abc"), Some("abc"));
        assert_eq!(strip_bearer("bearer abc"), Some("abc"));
        assert_eq!(strip_bearer("Basic abc"), None);
        assert_eq!(strip_bearer("Bearer "), None);
        assert_eq!(strip_bearer("abc"), None);
    }
}
