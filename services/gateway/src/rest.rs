//! The REST half of the client contract: thin handlers that validate the
//! shape of a request, forward it to auth or room with the caller's token,
//! and turn the answer (or the error) into the contract's JSON.

use crate::backends::{request, retrying, As};
use crate::extract::{Bearer, Json, Query, UserAgent};
use crate::wire::EventView;
use crate::Gateway;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use chat_core::{ApiError, RoomId, Seq, SessionId, UserId};
use chat_proto::v1 as pb;
use chat_proto::v1::auth_service_client::AuthServiceClient;
use chat_proto::v1::room_service_client::RoomServiceClient;
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tower_http::trace::TraceLayer;

type Res<T = Response> = Result<T, ApiError>;

pub fn router(gw: Gateway) -> Router {
    let max_body = gw.inner.cfg.max_body_bytes;
    let api = Router::new()
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
        .route("/rooms", post(create_room).get(list_public_rooms))
        .route("/me/rooms", get(list_my_rooms))
        .route(
            "/rooms/{id}",
            get(get_room).patch(update_room).delete(delete_room),
        )
        .route("/rooms/{id}/join", post(join_room))
        .route("/rooms/{id}/leave", post(leave_room))
        .route("/rooms/{id}/members", get(list_members).post(add_member))
        .route("/rooms/{id}/members/{user_id}", delete(remove_member))
        .route("/dms", post(open_dm))
        .route(
            "/rooms/{id}/messages",
            post(post_message).get(list_messages),
        )
        .route(
            "/rooms/{id}/messages/{seq}",
            patch(edit_message).delete(delete_message),
        )
        .route("/rooms/{id}/events", get(list_events))
        .route("/rooms/{id}/read", post(mark_read));
    Router::new()
        .nest("/api/v1", api)
        .route("/ws", get(crate::ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(gw): State<Gateway>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    gw.inner.metrics.render(),
                )
            }),
        )
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|m: Method| async move {
            let mut r =
                ApiError::invalid("method", format!("{m} is not allowed here")).into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let path = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".into());
                    tracing::info_span!("http", method = %req.method(), matched_path = %path)
                })
                .on_request(())
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "request"
                    );
                })
                .on_failure(()),
        )
        .with_state(gw)
}

async fn readyz(State(gw): State<Gateway>) -> Res {
    let started = Instant::now();
    gw.readiness().await?;
    Ok(
        Json(json!({"status": "ready", "check_ms": started.elapsed().as_millis() as u64}))
            .into_response(),
    )
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl Gateway {
    fn auth(&self) -> AuthServiceClient<Channel> {
        self.inner.backends.auth.clone()
    }

    fn room(&self) -> RoomServiceClient<Channel> {
        self.inner.backends.room.clone()
    }
}

impl Bearer {
    /// A request to auth or room made with the client's own token.
    fn req<T>(&self, gw: &Gateway, msg: T) -> tonic::Request<T> {
        request(msg, As::Bearer(&self.0), gw.inner.cfg.rpc_timeout, None)
    }
}

impl Gateway {
    /// A call to room with the client's token that is safe to repeat
    /// (see [`retrying`]), made again while room is unavailable.
    async fn room_call<M, R, F, Fut>(
        &self,
        tok: &Bearer,
        msg: M,
        call: F,
    ) -> Result<R, tonic::Status>
    where
        M: Clone,
        F: Fn(RoomServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        retrying(|| call(self.room(), tok.req(self, msg.clone()))).await
    }
}

/// A request made for nobody yet (signup, login, refresh, keys).
fn anonymous<T>(gw: &Gateway, msg: T, user_agent: Option<&str>) -> tonic::Request<T> {
    request(msg, As::Anonymous, gw.inner.cfg.rpc_timeout, user_agent)
}

fn ok<T: serde::Serialize>(v: T) -> Res {
    Ok(Json(v).into_response())
}

fn created<T: serde::Serialize>(v: T) -> Res {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn no_content() -> Res {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn room_id(s: &str) -> Res<String> {
    RoomId::parse(s)
        .map(|r| r.to_string())
        .map_err(|_| ApiError::not_found("room"))
}

fn seq_param(s: &str) -> Res<Seq> {
    s.parse::<Seq>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| ApiError::invalid("seq", "must be a positive integer"))
}

// ---- auth ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    username: String,
    password: String,
    display_name: Option<String>,
}

async fn signup(
    State(gw): State<Gateway>,
    UserAgent(ua): UserAgent,
    Json(b): Json<SignupBody>,
) -> Res {
    let r = gw
        .auth()
        .signup(anonymous(
            &gw,
            pb::SignupRequest {
                username: b.username,
                password: b.password,
                display_name: b.display_name,
            },
            ua.as_deref(),
        ))
        .await?;
    created(r.into_inner())
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(gw): State<Gateway>,
    UserAgent(ua): UserAgent,
    Json(b): Json<LoginBody>,
) -> Res {
    let r = gw
        .auth()
        .login(anonymous(
            &gw,
            pb::LoginRequest {
                username: b.username,
                password: b.password,
            },
            ua.as_deref(),
        ))
        .await?;
    ok(r.into_inner())
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(State(gw): State<Gateway>, Json(b): Json<RefreshBody>) -> Res {
    let r = gw
        .auth()
        .refresh(anonymous(
            &gw,
            pb::RefreshRequest {
                refresh_token: b.refresh_token,
            },
            None,
        ))
        .await?;
    ok(r.into_inner())
}

async fn logout(State(gw): State<Gateway>, tok: Bearer) -> Res {
    gw.auth().logout(tok.req(&gw, pb::LogoutRequest {})).await?;
    no_content()
}

async fn list_sessions(State(gw): State<Gateway>, tok: Bearer) -> Res {
    let r = gw
        .auth()
        .list_sessions(tok.req(&gw, pb::ListSessionsRequest {}))
        .await?;
    ok(json!({"items": r.into_inner().items, "next_cursor": null}))
}

async fn revoke_session(State(gw): State<Gateway>, tok: Bearer, Path(id): Path<String>) -> Res {
    let id = SessionId::parse(&id).map_err(|_| ApiError::not_found("session"))?;
    gw.auth()
        .revoke_session(tok.req(
            &gw,
            pb::RevokeSessionRequest {
                session_id: id.to_string(),
            },
        ))
        .await?;
    no_content()
}

async fn public_keys(State(gw): State<Gateway>) -> Res {
    let r = gw
        .auth()
        .get_public_keys(anonymous(&gw, pb::GetPublicKeysRequest {}, None))
        .await?
        .into_inner();
    let keys: Vec<_> = r
        .keys
        .iter()
        .map(|k| json!({"kty": "OKP", "crv": "Ed25519", "alg": k.alg, "use": "sig", "kid": k.kid, "x": k.x}))
        .collect();
    ok(json!({ "keys": keys }))
}

async fn get_me(State(gw): State<Gateway>, tok: Bearer) -> Res {
    let r = gw.auth().get_me(tok.req(&gw, pb::GetMeRequest {})).await?;
    ok(r.into_inner())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateMeBody {
    display_name: Option<String>,
}

async fn update_me(State(gw): State<Gateway>, tok: Bearer, Json(b): Json<UpdateMeBody>) -> Res {
    let r = gw
        .auth()
        .update_me(tok.req(
            &gw,
            pb::UpdateMeRequest {
                display_name: b.display_name,
            },
        ))
        .await?;
    ok(r.into_inner())
}

#[derive(Deserialize)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(gw): State<Gateway>,
    tok: Bearer,
    Json(b): Json<PasswordBody>,
) -> Res {
    gw.auth()
        .change_password(tok.req(
            &gw,
            pb::ChangePasswordRequest {
                current_password: b.current_password,
                new_password: b.new_password,
            },
        ))
        .await?;
    no_content()
}

#[derive(Deserialize)]
struct DeleteMeBody {
    password: String,
}

async fn delete_me(State(gw): State<Gateway>, tok: Bearer, Json(b): Json<DeleteMeBody>) -> Res {
    gw.auth()
        .delete_me(tok.req(
            &gw,
            pb::DeleteMeRequest {
                password: b.password,
            },
        ))
        .await?;
    no_content()
}

async fn get_user(State(gw): State<Gateway>, tok: Bearer, Path(id): Path<String>) -> Res {
    let id = UserId::parse(&id).map_err(|_| ApiError::not_found("user"))?;
    let r = gw
        .auth()
        .get_user(tok.req(
            &gw,
            pb::GetUserRequest {
                user_id: id.to_string(),
            },
        ))
        .await?;
    ok(r.into_inner())
}

// ---- rooms ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoomBody {
    name: String,
    #[serde(default)]
    topic: String,
    #[serde(default = "public")]
    visibility: String,
}

fn public() -> String {
    "public".into()
}

async fn create_room(State(gw): State<Gateway>, tok: Bearer, Json(b): Json<CreateRoomBody>) -> Res {
    let r = gw
        .room()
        .create_room(tok.req(
            &gw,
            pb::CreateRoomRequest {
                name: b.name,
                topic: b.topic,
                visibility: b.visibility,
            },
        ))
        .await?;
    created(r.into_inner())
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    limit: u32,
}

async fn list_public_rooms(
    State(gw): State<Gateway>,
    tok: Bearer,
    Query(q): Query<PageQuery>,
) -> Res {
    let r = gw
        .room()
        .list_public_rooms(tok.req(
            &gw,
            pb::ListPublicRoomsRequest {
                q: q.q,
                cursor: q.cursor,
                limit: q.limit,
            },
        ))
        .await?;
    ok(r.into_inner())
}

async fn list_my_rooms(State(gw): State<Gateway>, tok: Bearer, Query(q): Query<PageQuery>) -> Res {
    let r = gw
        .room()
        .list_my_rooms(tok.req(
            &gw,
            pb::ListMyRoomsRequest {
                cursor: q.cursor,
                limit: q.limit,
            },
        ))
        .await?;
    ok(r.into_inner())
}

async fn get_room(State(gw): State<Gateway>, tok: Bearer, Path(id): Path<String>) -> Res {
    let r = gw
        .room_call(
            &tok,
            pb::GetRoomRequest {
                room_id: room_id(&id)?,
            },
            |mut c, r| async move { c.get_room(r).await },
        )
        .await?
        .into_inner();
    ok(r.room)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRoomBody {
    name: Option<String>,
    topic: Option<String>,
    visibility: Option<String>,
}

async fn update_room(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Json(b): Json<UpdateRoomBody>,
) -> Res {
    let r = gw
        .room()
        .update_room(tok.req(
            &gw,
            pb::UpdateRoomRequest {
                room_id: room_id(&id)?,
                name: b.name,
                topic: b.topic,
                visibility: b.visibility,
            },
        ))
        .await?;
    ok(r.into_inner())
}

async fn delete_room(State(gw): State<Gateway>, tok: Bearer, Path(id): Path<String>) -> Res {
    gw.room()
        .delete_room(tok.req(
            &gw,
            pb::DeleteRoomRequest {
                room_id: room_id(&id)?,
            },
        ))
        .await?;
    no_content()
}

async fn join_room(State(gw): State<Gateway>, tok: Bearer, Path(id): Path<String>) -> Res {
    let r = gw
        .room_call(
            &tok,
            pb::JoinRoomRequest {
                room_id: room_id(&id)?,
            },
            |mut c, r| async move { c.join_room(r).await },
        )
        .await?;
    ok(r.into_inner())
}

async fn leave_room(State(gw): State<Gateway>, tok: Bearer, Path(id): Path<String>) -> Res {
    gw.room()
        .leave_room(tok.req(
            &gw,
            pb::LeaveRoomRequest {
                room_id: room_id(&id)?,
            },
        ))
        .await?;
    no_content()
}

async fn list_members(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Res {
    let r = gw
        .room()
        .list_members(tok.req(
            &gw,
            pb::ListMembersRequest {
                room_id: room_id(&id)?,
                cursor: q.cursor,
                limit: q.limit,
            },
        ))
        .await?;
    ok(r.into_inner())
}

#[derive(Deserialize)]
struct UserBody {
    user_id: String,
}

async fn add_member(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Json(b): Json<UserBody>,
) -> Res {
    let r = gw
        .room()
        .add_member(tok.req(
            &gw,
            pb::AddMemberRequest {
                room_id: room_id(&id)?,
                user_id: b.user_id,
            },
        ))
        .await?;
    ok(r.into_inner())
}

async fn remove_member(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path((id, user)): Path<(String, String)>,
) -> Res {
    let user = UserId::parse(&user).map_err(|_| ApiError::not_found("member"))?;
    gw.room()
        .remove_member(tok.req(
            &gw,
            pb::RemoveMemberRequest {
                room_id: room_id(&id)?,
                user_id: user.to_string(),
            },
        ))
        .await?;
    no_content()
}

async fn open_dm(State(gw): State<Gateway>, tok: Bearer, Json(b): Json<UserBody>) -> Res {
    let r = gw
        .room()
        .open_dm(tok.req(&gw, pb::OpenDmRequest { user_id: b.user_id }))
        .await?;
    ok(r.into_inner())
}

// ---- messages ----

#[derive(Deserialize)]
struct PostBody {
    body: String,
    client_msg_id: String,
}

async fn post_message(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Json(b): Json<PostBody>,
) -> Res {
    let r = gw
        .room_call(
            &tok,
            pb::PostMessageRequest {
                room_id: room_id(&id)?,
                client_msg_id: b.client_msg_id,
                body: b.body,
            },
            |mut c, r| async move { c.post_message(r).await },
        )
        .await?
        .into_inner();
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(r.message)).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    #[serde(default)]
    limit: u32,
}

async fn list_messages(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Res {
    let r = gw
        .room_call(
            &tok,
            pb::ListMessagesRequest {
                room_id: room_id(&id)?,
                before_seq: q.before_seq,
                after_seq: q.after_seq,
                limit: q.limit,
            },
            |mut c, r| async move { c.list_messages(r).await },
        )
        .await?;
    ok(r.into_inner())
}

async fn list_events(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Res {
    let r = gw
        .room_call(
            &tok,
            pb::ListEventsRequest {
                room_id: room_id(&id)?,
                after_seq: q.after_seq.unwrap_or(0),
                limit: q.limit,
            },
            |mut c, r| async move { c.list_events(r).await },
        )
        .await?
        .into_inner();
    let items: Vec<_> = r.items.iter().filter_map(EventView::of).collect();
    ok(json!({"items": items, "has_more": r.has_more}))
}

#[derive(Deserialize)]
struct EditBody {
    body: String,
}

async fn edit_message(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path((id, seq)): Path<(String, String)>,
    Json(b): Json<EditBody>,
) -> Res {
    let r = gw
        .room()
        .edit_message(tok.req(
            &gw,
            pb::EditMessageRequest {
                room_id: room_id(&id)?,
                seq: seq_param(&seq)?,
                body: b.body,
            },
        ))
        .await?;
    ok(r.into_inner())
}

async fn delete_message(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path((id, seq)): Path<(String, String)>,
) -> Res {
    gw.room()
        .delete_message(tok.req(
            &gw,
            pb::DeleteMessageRequest {
                room_id: room_id(&id)?,
                seq: seq_param(&seq)?,
            },
        ))
        .await?;
    no_content()
}

#[derive(Deserialize)]
struct ReadBody {
    seq: i64,
}

async fn mark_read(
    State(gw): State<Gateway>,
    tok: Bearer,
    Path(id): Path<String>,
    Json(b): Json<ReadBody>,
) -> Res {
    gw.room_call(
        &tok,
        pb::MarkReadRequest {
            room_id: room_id(&id)?,
            seq: b.seq,
        },
        |mut c, r| async move { c.mark_read(r).await },
    )
    .await?;
    no_content()
}
