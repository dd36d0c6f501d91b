//! Accounts: sign-up and log-in, sessions, the signing keys, the caller's
//! own user and other users' public profiles. All of it is auth's; the
//! handlers only reshape requests and answers.

use super::{created, no_content, ok, Caller, Res};
use crate::client_addr::ClientAddr;
use crate::extract::{Json, UserAgent};
use crate::Gateway;
use axum::extract::{Path, State};
use axum::routing::{delete, get, post, put};
use axum::Router;
use chat_core::{ApiError, SessionId, UserId};
use chat_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/auth/signup", post(signup))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/sessions", get(list_sessions))
        .route("/auth/sessions/{id}", delete(revoke_session))
        .route("/auth/keys", get(public_keys))
        .route("/users/me", get(get_me).patch(update_me).delete(delete_me))
        .route("/users/me/password", put(change_password))
        .route("/users/{id}", get(get_user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub username: String,
    pub password: String,
    pub display_name: Option<String>,
}

async fn signup(
    State(gw): State<Gateway>,
    UserAgent(ua): UserAgent,
    client: ClientAddr,
    Json(b): Json<SignupBody>,
) -> Res {
    let msg = pb::SignupRequest {
        username: b.username,
        password: b.password,
        display_name: b.display_name,
    };
    created(gw.call_anonymous(msg, ua.as_deref(), client).await?)
}

#[derive(Deserialize)]
pub struct LoginBody {
    pub username: String,
    pub password: String,
}

async fn login(
    State(gw): State<Gateway>,
    UserAgent(ua): UserAgent,
    client: ClientAddr,
    Json(b): Json<LoginBody>,
) -> Res {
    let msg = pb::LoginRequest {
        username: b.username,
        password: b.password,
    };
    ok(gw.call_anonymous(msg, ua.as_deref(), client).await?)
}

#[derive(Deserialize)]
pub struct RefreshBody {
    pub refresh_token: String,
}

async fn refresh(State(gw): State<Gateway>, client: ClientAddr, Json(b): Json<RefreshBody>) -> Res {
    let msg = pb::RefreshRequest {
        refresh_token: b.refresh_token,
    };
    ok(gw.call_anonymous(msg, None, client).await?)
}

async fn logout(c: Caller) -> Res {
    c.call(pb::LogoutRequest {}).await?;
    no_content()
}

async fn list_sessions(c: Caller) -> Res {
    let r = c.call(pb::ListSessionsRequest {}).await?;
    ok(json!({"items": r.items, "next_cursor": null}))
}

async fn revoke_session(c: Caller, Path(id): Path<String>) -> Res {
    let id = SessionId::parse(&id).map_err(|_| ApiError::not_found("session"))?;
    let msg = pb::RevokeSessionRequest {
        session_id: id.to_string(),
    };
    c.call(msg).await?;
    no_content()
}

/// Auth's public keys as a JWK set, for clients that verify tokens.
async fn public_keys(State(gw): State<Gateway>) -> Res {
    let r = gw
        .call_anonymous(pb::GetPublicKeysRequest {}, None, ClientAddr(None))
        .await?;
    let keys: Vec<_> = r
        .keys
        .iter()
        .map(|k| json!({"kty": "OKP", "crv": "Ed25519", "alg": k.alg, "use": "sig", "kid": k.kid, "x": k.x}))
        .collect();
    ok(json!({ "keys": keys }))
}

async fn get_me(c: Caller) -> Res {
    ok(c.call(pb::GetMeRequest {}).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeBody {
    pub display_name: Option<String>,
}

async fn update_me(c: Caller, Json(b): Json<UpdateMeBody>) -> Res {
    let msg = pb::UpdateMeRequest {
        display_name: b.display_name,
    };
    ok(c.call(msg).await?)
}

#[derive(Deserialize)]
pub struct PasswordBody {
    pub current_password: String,
    pub new_password: String,
}

async fn change_password(c: Caller, Json(b): Json<PasswordBody>) -> Res {
    let msg = pb::ChangePasswordRequest {
        current_password: b.current_password,
        new_password: b.new_password,
    };
    c.call(msg).await?;
    no_content()
}

#[derive(Deserialize)]
pub struct DeleteMeBody {
    pub password: String,
}

async fn delete_me(c: Caller, Json(b): Json<DeleteMeBody>) -> Res {
    let msg = pb::DeleteMeRequest {
        password: b.password,
    };
    c.call(msg).await?;
    no_content()
}

async fn get_user(c: Caller, Path(id): Path<String>) -> Res {
    let id = UserId::parse(&id).map_err(|_| ApiError::not_found("user"))?;
    let msg = pb::GetUserRequest {
        user_id: id.to_string(),
    };
    ok(c.call(msg).await?)
}
