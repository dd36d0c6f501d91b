//! `chat.v1.AuthService`.

use crate::config::AuthConfig;
use crate::keyring::KeyRing;
use crate::keys::{PublicKey, SigningKey};
use crate::password::{Hasher, Verified};
use crate::token::{Caller, Issuer, Verifier};
use crate::tokens::{hash_token, new_refresh_token, seal, unseal};
use chat_bus::{Bus, Publisher, Subjects};
use chat_core::{time, validate, ApiError, SessionId, UserId};
use chat_ephemeral::{limit, Ephemeral};
use chat_proto::v1 as pb;
use chat_proto::v1::auth_service_server::AuthService;
use chat_store::{NewSession, NewUser, RotateOutcome, SessionLimits, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AuthSvc {
    store: Arc<dyn Store>,
    ephemeral: Arc<dyn Ephemeral>,
    publisher: Publisher,
    issuer: Issuer,
    public: PublicKey,
    verifier: Verifier,
    /// The stored keys this replica follows (none: `public` only).
    keys: Option<KeyRing>,
    cfg: AuthConfig,
    /// Every argon2 hash and verify, bounded (see [`Hasher`]).
    hasher: Hasher,
}

impl AuthSvc {
    pub fn new(
        store: Arc<dyn Store>,
        ephemeral: Arc<dyn Ephemeral>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        key: &SigningKey,
        cfg: AuthConfig,
    ) -> Self {
        // Revocation checks fall back to the store when the list cannot
        // answer (unreachable, or emptied and not re-seeded yet).
        let ephemeral = chat_ephemeral::Revocations::wrap(
            ephemeral,
            Arc::new(StoreSessions {
                store: store.clone(),
                limits: cfg.session_limits(),
            }),
        );
        let public = key.public_key();
        let mut verifier = Verifier::new(std::slice::from_ref(&public), ephemeral.clone());
        if let Some(secret) = &cfg.internal_secret {
            verifier = verifier.with_internal_secret(secret);
        }
        Self {
            verifier,
            issuer: Issuer::new(key, cfg.access_ttl),
            public,
            keys: None,
            store,
            ephemeral,
            publisher: Publisher::new(bus, subjects),
            hasher: Hasher::new(cfg.hash_cost, cfg.hash_concurrency, cfg.hash_queue),
            cfg,
        }
    }

    pub fn verifier(&self) -> Verifier {
        self.verifier.clone()
    }

    /// The issuer, whose signing key a [`KeyRing`] swaps on rotation.
    pub fn issuer(&self) -> Issuer {
        self.issuer.clone()
    }

    /// Follows the stored keys of `ring` (made with [`Self::issuer`] and
    /// [`Self::verifier`]): publishes them, and a token with an unknown
    /// `kid` makes the verifier read them again, at most once per
    /// `min_refresh`.
    pub fn with_key_ring(mut self, ring: KeyRing, min_refresh: Duration) -> Self {
        self.verifier = self
            .verifier
            .with_key_source(Arc::new(ring.clone()), min_refresh);
        self.keys = Some(ring);
        self
    }

    /// Puts sessions revoked within the last access-token lifetime back on the
    /// revocation list, then marks it seeded (run at start, and whenever the
    /// list is found emptied: the in-process list does not survive a restart,
    /// Redis may be flushed, the store keeps them all).
    pub async fn seed_revocations(&self) -> Result<usize, ApiError> {
        seed(
            self.store.as_ref(),
            self.ephemeral.as_ref(),
            self.revocation_ttl(),
        )
        .await
    }

    /// Re-seeds the revocation list whenever it finds it emptied (a Redis
    /// flush, or a restart without persistence), checking every `every`
    /// until `shutdown`. Until it is re-seeded, revocation checks ask the
    /// store ([`chat_ephemeral::Revocations`]).
    pub fn spawn_reseeder(&self, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let (store, ephemeral) = (self.store.clone(), self.ephemeral.clone());
        let ttl = self.revocation_ttl();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match ephemeral.revocations_seeded().await {
                    Ok(true) => {}
                    Ok(false) => match seed(store.as_ref(), ephemeral.as_ref(), ttl).await {
                        Ok(n) => tracing::info!(
                            sessions = n,
                            "revocation list found emptied; re-seeded from the store"
                        ),
                        Err(error) => tracing::warn!(%error, "cannot re-seed the revocation list"),
                    },
                    Err(error) => tracing::debug!(%error, "revocation list unreachable"),
                }
            }
        });
    }

    /// How long a revocation stays on the list: past the last access token
    /// of the session.
    fn revocation_ttl(&self) -> Duration {
        self.cfg.access_ttl + Duration::from_secs(10)
    }

    async fn issue_session(
        &self,
        user: chat_store::User,
        user_agent: String,
    ) -> Result<pb::AuthResponse, ApiError> {
        let session_id = SessionId::new();
        let refresh = new_refresh_token();
        self.store
            .create_session(
                &NewSession {
                    id: session_id,
                    user_id: user.id,
                    user_agent,
                    created_at: time::now_ms(),
                },
                &hash_token(&refresh),
            )
            .await?;
        self.respond(user, session_id, refresh)
    }

    fn respond(
        &self,
        user: chat_store::User,
        session_id: SessionId,
        refresh: String,
    ) -> Result<pb::AuthResponse, ApiError> {
        Ok(pb::AuthResponse {
            access_token: self.issuer.issue(user.id, session_id)?,
            refresh_token: refresh,
            expires_in: self.cfg.access_ttl.as_secs() as i64,
            session_id: session_id.to_string(),
            user: Some(user_pb(&user)),
        })
    }

    /// Makes revocations take effect everywhere: the revocation list (REST
    /// and gRPC stop accepting the access token) and the user's bus subject
    /// (gateways close the session's WebSockets with 4001).
    async fn announce_revoked(&self, user: UserId, sessions: &[SessionId]) {
        let ttl = self.revocation_ttl();
        for sid in sessions {
            if let Err(error) = self.ephemeral.revoke_session(*sid, ttl).await {
                tracing::warn!(%error, session_id = %sid, "cannot record revocation");
            }
            let revoked = pb::bus_event::Kind::SessionRevoked(pb::SessionRevoked {
                session_id: sid.to_string(),
                user_id: user.to_string(),
            });
            // A failure is logged by the publisher; the revocation list
            // still refuses the session's token everywhere.
            let _ = self.publisher.to_user(user, revoked).await;
        }
    }

    /// Announces a session the store has just revoked during a refresh.
    async fn end_session(&self, sid: SessionId) -> Result<(), ApiError> {
        if let Some(s) = self.store.session(sid).await? {
            self.announce_revoked(s.user_id, &[sid]).await;
        }
        Ok(())
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        self.verifier.verify_request(req).await
    }

    /// Fails with 429 while the account has too many failed password
    /// checks (logins and current-password checks count alike).
    async fn password_limit(&self, key: &str) -> Result<(), ApiError> {
        limit::not_over(self.ephemeral.as_ref(), key, self.cfg.login_max_failures).await
    }

    /// Counts a signup from `addr` before its password is hashed: 429 past
    /// `signup_limit` per `signup_window`. Without an address, or with an
    /// unreachable counter, the signup goes through (the hasher still
    /// bounds the cost).
    async fn signup_attempt(&self, addr: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        let Some(addr) = addr else { return Ok(()) };
        if self.cfg.signup_limit == 0 {
            return Ok(());
        }
        let (limit, window) = (self.cfg.signup_limit, self.cfg.signup_window);
        limit::count(
            self.ephemeral.as_ref(),
            &format!("signup:{addr}"),
            limit,
            window,
        )
        .await
    }

    /// Counts a login attempt before its password is checked (so that a
    /// burst cannot check more guesses than the limits allow): 429 when
    /// the address has failed too often, or this address and username (or
    /// this username from everywhere) has been tried too often. An
    /// unreachable counter lets the attempt through.
    async fn login_attempt(&self, keys: &LoginKeys) -> Result<(), ApiError> {
        let store = self.ephemeral.as_ref();
        if let Some(addr) = &keys.addr {
            limit::not_over(store, addr, self.cfg.login_max_failures_per_addr).await?;
        }
        let window = self.cfg.login_window;
        limit::count(store, &keys.pair, self.cfg.login_max_failures, window).await?;
        let per_account = self.cfg.login_max_attempts_per_account;
        limit::count(store, &keys.account, per_account, window).await
    }

    /// Counts a failed password check: `error`, or 429 once it is one too
    /// many.
    async fn password_failed(&self, key: &str, error: ApiError) -> ApiError {
        let (limit, window) = (self.cfg.login_max_failures, self.cfg.login_window);
        match limit::count(self.ephemeral.as_ref(), key, limit, window).await {
            Err(limited) => limited,
            Ok(()) => error,
        }
    }

    /// Checks the signed-in user's password before a change that needs it
    /// (password change, account deletion), limited like logins: with a
    /// stolen access token, guessing the password is no cheaper here.
    async fn check_current_password(
        &self,
        u: &chat_store::UserAuth,
        password: &str,
        field: &str,
    ) -> Result<(), ApiError> {
        let key = password_limit_key(&u.user.username);
        let ticket = self.hasher.admit()?;
        self.password_limit(&key).await?;
        if password.len() <= 1024 {
            let v = ticket
                .verify(password.to_owned(), Some(u.password_hash.clone()))
                .await?;
            if v.ok {
                return Ok(());
            }
        }
        let wrong = ApiError::forbidden(format!("{field} is wrong"));
        Err(self.password_failed(&key, wrong).await)
    }

    /// Replaces a hash made with older parameters once the password is
    /// known to be right, so every stored hash costs what the dummy does
    /// and a login's timing does not tell who exists. Best effort: a busy
    /// hasher or a failed write leaves the old hash, still valid.
    async fn rehash_if_stale(&self, user: UserId, password: String, v: Verified) {
        if !v.stale {
            return;
        }
        let hash = match self.hasher.hash(password).await {
            Ok(h) => h,
            Err(error) => {
                tracing::debug!(%error, "cannot rehash a stale password hash now");
                return;
            }
        };
        match self.store.set_password_hash(user, &hash).await {
            Ok(()) => tracing::debug!(user_id = %user, "rehashed a stale password hash"),
            Err(error) => tracing::warn!(%error, user_id = %user, "cannot store a rehash"),
        }
    }

    async fn live_user(&self, id: UserId) -> Result<chat_store::UserAuth, ApiError> {
        self.store
            .user_by_id(id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))
    }
}

fn user_agent<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("x-client-user-agent")
        .or_else(|| req.metadata().get("user-agent"))
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
        .unwrap_or_default()
}

pub fn user_pb(u: &chat_store::User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        username: u.username.clone(),
        display_name: u.display_name.clone(),
        created_at: time::rfc3339(u.created_at),
    }
}

/// The counters of a login: per (client address, username), per address
/// and per username. Without an address (an in-process call that asserts
/// none) the pair counts per username.
struct LoginKeys {
    pair: String,
    addr: Option<String>,
    account: String,
}

impl LoginKeys {
    fn new(addr: Option<std::net::IpAddr>, username: &str) -> Self {
        let name = username.to_lowercase();
        let at = addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        Self {
            pair: format!("login-pair:{at}:{name}"),
            addr: addr.map(|a| format!("login-addr:{a}")),
            account: format!("login-account:{name}"),
        }
    }
}

/// The wrong-current-password counter of an account (a signed-in user's
/// password change or account deletion); logins wait while it is full.
fn password_limit_key(username: &str) -> String {
    format!("login-fail:{}", username.to_lowercase())
}

#[tonic::async_trait]
impl AuthService for AuthSvc {
    #[tracing::instrument(skip_all)]
    async fn signup(
        &self,
        req: Request<pb::SignupRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        let ua = user_agent(&req);
        let addr = self.verifier.client_addr(&req);
        let r = req.into_inner();
        validate::username(&r.username)?;
        validate::password("password", &r.password)?;
        // A busy hasher's refusal first: it is not a signup attempt.
        let ticket = self.hasher.admit()?;
        self.signup_attempt(addr).await?;
        let display_name = match r.display_name {
            Some(d) => {
                validate::display_name(&d)?;
                d
            }
            None => r.username.clone(),
        };
        let password_hash = ticket.hash(r.password).await?;
        let user = self
            .store
            .create_user(&NewUser {
                id: UserId::new(),
                username: r.username,
                display_name,
                password_hash,
                created_at: time::now_ms(),
            })
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists => ApiError::conflict("username is already taken"),
                e => e.into(),
            })?;
        tracing::info!(user_id = %user.id, "user signed up");
        Ok(Response::new(self.issue_session(user, ua).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        let ua = user_agent(&req);
        let addr = self.verifier.client_addr(&req);
        let r = req.into_inner();
        let bad = || ApiError::unauthorized("unknown username or wrong password");
        if validate::username(&r.username).is_err()
            || r.password.is_empty()
            || r.password.len() > 1024
        {
            return Err(bad().into());
        }
        let keys = LoginKeys::new(addr, &r.username);
        // A busy hasher's refusal first: it is not a login attempt.
        let ticket = self.hasher.admit()?;
        // Wrong current passwords (an authenticated user's own) hold the
        // account's logins too.
        self.password_limit(&password_limit_key(&r.username))
            .await?;
        self.login_attempt(&keys).await?;
        let found = self.store.user_by_username(&r.username).await?;
        let v = ticket
            .verify(
                r.password.clone(),
                found.as_ref().map(|u| u.password_hash.clone()),
            )
            .await?;
        match found {
            Some(u) if v.ok => {
                let _ = self.ephemeral.reset(&keys.pair).await;
                let _ = self.ephemeral.reset(&keys.account).await;
                self.rehash_if_stale(u.user.id, r.password, v).await;
                Ok(Response::new(self.issue_session(u.user, ua).await?))
            }
            _ => {
                if let Some(key) = &keys.addr {
                    let _ = self
                        .ephemeral
                        .hit(
                            key,
                            self.cfg.login_max_failures_per_addr,
                            self.cfg.login_window,
                        )
                        .await;
                }
                Err(bad().into())
            }
        }
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        let r = req.into_inner();
        let bad = || ApiError::unauthorized("invalid refresh token");
        if r.refresh_token.is_empty() || r.refresh_token.len() > 256 {
            return Err(bad().into());
        }
        let next = new_refresh_token();
        let outcome = self
            .store
            .rotate_refresh_token(
                &hash_token(&r.refresh_token),
                &hash_token(&next),
                &seal(&r.refresh_token, &next),
                time::now_ms(),
                self.cfg.refresh_grace.as_millis() as i64,
                self.cfg.session_limits(),
            )
            .await?;
        match outcome {
            RotateOutcome::Rotated(session) => {
                let user = self.live_user(session.user_id).await?;
                Ok(Response::new(self.respond(user.user, session.id, next)?))
            }
            RotateOutcome::Replayed { session, sealed } => {
                // A second tab or a retry raced the rotation: it gets the
                // refresh token already issued, so both hold a live one.
                let next = unseal(&r.refresh_token, &sealed).ok_or_else(bad)?;
                tracing::debug!(session_id = %session.id, "refresh replayed within the grace");
                let user = self.live_user(session.user_id).await?;
                Ok(Response::new(self.respond(user.user, session.id, next)?))
            }
            RotateOutcome::Reused(sid) => {
                tracing::warn!(session_id = %sid, "refresh token reused; session revoked");
                self.end_session(sid).await?;
                Err(ApiError::unauthorized("refresh token reused; the session is revoked").into())
            }
            RotateOutcome::Expired(sid) => {
                tracing::info!(session_id = %sid, "refresh past the session's lifetime");
                self.end_session(sid).await?;
                Err(ApiError::unauthorized("the session has expired; log in again").into())
            }
            RotateOutcome::Revoked | RotateOutcome::Unknown => Err(bad().into()),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let c = self.caller(&req).await?;
        self.store
            .revoke_session(c.user_id, c.session_id, time::now_ms())
            .await?;
        self.announce_revoked(c.user_id, &[c.session_id]).await;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn check_sessions(
        &self,
        req: Request<pb::CheckSessionsRequest>,
    ) -> Result<Response<pb::CheckSessionsResponse>, Status> {
        match self.verifier.verify_principal(&req).await? {
            chat_authn::Principal::Service(_) => {}
            chat_authn::Principal::User(_) => {
                return Err(ApiError::forbidden("for services only").into());
            }
        }
        let r = req.into_inner();
        if r.session_ids.len() > MAX_CHECKED_SESSIONS {
            return Err(ApiError::invalid("session_ids", "at most 10000 at once").into());
        }
        let ids = r
            .session_ids
            .iter()
            .map(|s| SessionId::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let ended = self
            .store
            .ended_sessions(&ids, self.cfg.session_limits(), time::now_ms())
            .await?;
        Ok(Response::new(pb::CheckSessionsResponse {
            ended: ended.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let c = self.caller(&req).await?;
        let items = self
            .store
            .list_sessions(c.user_id)
            .await?
            .into_iter()
            .map(|s| pb::Session {
                id: s.id.to_string(),
                created_at: time::rfc3339(s.created_at),
                last_used_at: time::rfc3339(s.last_used_at),
                user_agent: s.user_agent,
                current: s.id == c.session_id,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { items }))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let c = self.caller(&req).await?;
        let sid = SessionId::parse(&req.get_ref().session_id)?;
        if !self
            .store
            .revoke_session(c.user_id, sid, time::now_ms())
            .await?
        {
            return Err(ApiError::not_found("session").into());
        }
        self.announce_revoked(c.user_id, &[sid]).await;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    async fn get_me(&self, req: Request<pb::GetMeRequest>) -> Result<Response<pb::User>, Status> {
        let c = self.caller(&req).await?;
        Ok(Response::new(user_pb(
            &self.live_user(c.user_id).await?.user,
        )))
    }

    async fn update_me(
        &self,
        req: Request<pb::UpdateMeRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let user = match r.display_name {
            Some(d) => {
                validate::display_name(&d)?;
                self.store
                    .update_display_name(c.user_id, &d)
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound => {
                            ApiError::unauthorized("the account no longer exists")
                        }
                        e => e.into(),
                    })?
            }
            None => self.live_user(c.user_id).await?.user,
        };
        Ok(Response::new(user_pb(&user)))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        validate::password("new_password", &r.new_password)?;
        let u = self.live_user(c.user_id).await?;
        self.check_current_password(&u, &r.current_password, "current_password")
            .await?;
        let hash = self.hasher.hash(r.new_password).await?;
        self.store.set_password_hash(c.user_id, &hash).await?;
        let revoked = self
            .store
            .revoke_user_sessions(c.user_id, Some(c.session_id), time::now_ms())
            .await?;
        self.announce_revoked(c.user_id, &revoked).await;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_me(
        &self,
        req: Request<pb::DeleteMeRequest>,
    ) -> Result<Response<pb::DeleteMeResponse>, Status> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let u = self.live_user(c.user_id).await?;
        self.check_current_password(&u, &r.password, "password")
            .await?;
        let revoked = self.store.delete_user(c.user_id, time::now_ms()).await?;
        self.announce_revoked(c.user_id, &revoked).await;
        tracing::info!(user_id = %c.user_id, "user deleted");
        Ok(Response::new(pb::DeleteMeResponse {}))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::PublicUser>, Status> {
        self.caller(&req).await?;
        let id = UserId::parse(&req.get_ref().user_id)?;
        let u = self
            .store
            .user_by_id(id)
            .await?
            .ok_or_else(|| ApiError::not_found("user"))?
            .user;
        Ok(Response::new(pb::PublicUser {
            id: u.id.to_string(),
            username: u.username,
            display_name: u.display_name,
        }))
    }

    async fn get_public_keys(
        &self,
        _req: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        let keys = match &self.keys {
            Some(ring) => ring.published().await,
            None => vec![self.public.clone()],
        };
        Ok(Response::new(pb::GetPublicKeysResponse {
            keys: keys
                .iter()
                .map(|k| pb::PublicKey {
                    kid: k.kid.clone(),
                    alg: "EdDSA".into(),
                    x: k.x(),
                })
                .collect(),
        }))
    }
}

/// See [`AuthSvc::seed_revocations`].
async fn seed(
    store: &dyn Store,
    ephemeral: &dyn Ephemeral,
    ttl: Duration,
) -> Result<usize, ApiError> {
    let since = time::now_ms() - ttl.as_millis() as i64;
    let ids = store.sessions_revoked_since(since).await?;
    for id in &ids {
        if let Err(error) = ephemeral.revoke_session(*id, ttl).await {
            tracing::warn!(%error, "cannot seed revocation list");
            return Ok(0);
        }
    }
    // Only a complete list is marked: until then checks ask the store.
    if let Err(error) = ephemeral.mark_revocations_seeded().await {
        tracing::warn!(%error, "cannot mark the revocation list seeded");
    }
    Ok(ids.len())
}

/// Session ids one `CheckSessions` call may ask about.
const MAX_CHECKED_SESSIONS: usize = 10_000;

/// The store as a [`chat_ephemeral::SessionSource`].
struct StoreSessions {
    store: Arc<dyn Store>,
    limits: SessionLimits,
}

#[async_trait::async_trait]
impl chat_ephemeral::SessionSource for StoreSessions {
    async fn ended(
        &self,
        ids: &[SessionId],
    ) -> Result<Vec<SessionId>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self
            .store
            .ended_sessions(ids, self.limits, time::now_ms())
            .await?)
    }
}
