//! The REST half of the client contract: thin handlers that validate the
//! shape of a request, forward it to auth or room with the caller's token,
//! and turn the answer (or the error) into the contract's JSON.
//!
//! One file per resource ([`auth`]: sign-up, sessions and users; [`rooms`]:
//! rooms, members and DMs; [`messages`]: messages, events and read marks),
//! each with its routes; [`routes`] puts them together for [`crate::http`]
//! to mount under `/api/v1`. What they share lives here: [`Rpc`], which
//! knows for each request message the call that takes it and whether it
//! may be repeated, [`Caller::call`] (the caller's token, deadline, retry,
//! error mapping in one place), and the success responses.

mod auth;
mod messages;
mod rooms;

/// The JSON request bodies, public for the fuzz targets (`fuzz/`), which
/// decode them as the handlers do; nothing else outside `rest` uses them.
pub mod bodies {
    pub use super::auth::{
        DeleteMeBody, LoginBody, PasswordBody, RefreshBody, SignupBody, UpdateMeBody,
    };
    pub use super::messages::{EditBody, PostBody, ReadBody};
    pub use super::rooms::{CreateRoomBody, RoleBody, UpdateRoomBody, UserBody};
}

use crate::backends::{request, retrying, As, Backends};
use crate::client_addr::ClientAddr;
use crate::extract::{Bearer, Json};
use crate::Gateway;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use chat_core::{ApiError, RoomId, Seq};
use chat_proto::v1 as pb;
use std::future::Future;

/// What every handler returns: a response, or the contract's error.
pub(crate) type Res<T = Response> = Result<T, ApiError>;

/// The REST API, its paths relative to `/api/v1`.
pub(crate) fn routes() -> Router<Gateway> {
    Router::new()
        .merge(auth::routes())
        .merge(rooms::routes())
        .merge(messages::routes())
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `200 OK` with `v` as the JSON body.
fn ok<T: serde::Serialize>(v: T) -> Res {
    reply(StatusCode::OK, v)
}

/// `201 Created` with `v` as the JSON body.
fn created<T: serde::Serialize>(v: T) -> Res {
    reply(StatusCode::CREATED, v)
}

fn reply<T: serde::Serialize>(status: StatusCode, v: T) -> Res {
    Ok((status, Json(v)).into_response())
}

fn no_content() -> Res {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A room id from the path; one that cannot be a room's is a room not found.
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

/// A signed-in caller: the gateway and the client's access token, taken
/// as one extractor by every handler but sign-up, log-in, refresh and keys.
/// The token is not checked here: auth or room verify it.
struct Caller {
    gw: Gateway,
    tok: Bearer,
}

impl FromRequestParts<Gateway> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Res<Self> {
        let tok = Bearer::from_request_parts(parts, gw).await?;
        Ok(Caller {
            gw: gw.clone(),
            tok,
        })
    }
}

impl Caller {
    /// Sends `msg` to auth or room with the client's own token.
    async fn call<M: Rpc>(&self, msg: M) -> Res<M::Reply> {
        self.gw.send(As::Bearer(&self.tok.0), None, msg).await
    }
}

impl Gateway {
    /// Sends `msg` for nobody yet (signup, login, refresh, keys), with the
    /// client's address (auth limits logins per address).
    async fn call_anonymous<M: Rpc>(
        &self,
        msg: M,
        user_agent: Option<&str>,
        client: ClientAddr,
    ) -> Res<M::Reply> {
        self.send_from(As::Anonymous, user_agent, client, msg).await
    }

    /// One call with identity and deadline, made again while the backend is
    /// unavailable if [`Rpc::RETRY`] says that is safe; a failure becomes
    /// the contract's error.
    async fn send<M: Rpc>(&self, who: As<'_>, user_agent: Option<&str>, msg: M) -> Res<M::Reply> {
        self.send_from(who, user_agent, ClientAddr(None), msg).await
    }

    async fn send_from<M: Rpc>(
        &self,
        who: As<'_>,
        user_agent: Option<&str>,
        client: ClientAddr,
        msg: M,
    ) -> Res<M::Reply> {
        let backends = &self.inner.backends;
        let secret = &self.inner.cfg.internal_secret;
        let req = |m| {
            let mut r = request(m, who, self.inner.cfg.rpc_timeout, user_agent);
            if let ClientAddr(Some(addr)) = client {
                chat_authn::internal::assert_client_addr(r.metadata_mut(), addr, secret);
            }
            r
        };
        let r = if M::RETRY {
            retrying(|| M::send(backends, req(msg.clone()))).await
        } else {
            M::send(backends, req(msg)).await
        };
        Ok(r?.into_inner())
    }
}

/// A request message of auth's or room's API, and the call that takes it.
trait Rpc: Clone + Send + Sync + 'static {
    type Reply: Send;
    /// Safe to repeat (see [`retrying`]): reads, and writes that are
    /// idempotent by design.
    const RETRY: bool;
    fn send(
        backends: &Backends,
        req: tonic::Request<Self>,
    ) -> impl Future<Output = Result<tonic::Response<Self::Reply>, tonic::Status>> + Send;
}

/// `retry => { service.method(Request) -> Reply, … }` implements [`Rpc`].
macro_rules! rpcs {
    ($($retry:literal => { $($svc:ident.$method:ident($req:ident) -> $reply:ident,)* })*) => {
        $($(
            impl Rpc for pb::$req {
                type Reply = pb::$reply;
                const RETRY: bool = $retry;
                fn send(
                    backends: &Backends,
                    req: tonic::Request<Self>,
                ) -> impl Future<Output = Result<tonic::Response<Self::Reply>, tonic::Status>> + Send
                {
                    let mut client = backends.$svc.clone();
                    async move { client.$method(req).await }
                }
            }
        )*)*
    };
}

rpcs! {
    false => {
        auth.signup(SignupRequest) -> AuthResponse,
        auth.login(LoginRequest) -> AuthResponse,
        auth.refresh(RefreshRequest) -> AuthResponse,
        auth.logout(LogoutRequest) -> LogoutResponse,
        auth.list_sessions(ListSessionsRequest) -> ListSessionsResponse,
        auth.revoke_session(RevokeSessionRequest) -> RevokeSessionResponse,
        auth.get_public_keys(GetPublicKeysRequest) -> GetPublicKeysResponse,
        auth.get_me(GetMeRequest) -> User,
        auth.update_me(UpdateMeRequest) -> User,
        auth.change_password(ChangePasswordRequest) -> ChangePasswordResponse,
        auth.delete_me(DeleteMeRequest) -> DeleteMeResponse,
        auth.get_user(GetUserRequest) -> PublicUser,
        room.create_room(CreateRoomRequest) -> Room,
        room.list_public_rooms(ListPublicRoomsRequest) -> ListRoomsResponse,
        room.list_my_rooms(ListMyRoomsRequest) -> ListMyRoomsResponse,
        room.update_room(UpdateRoomRequest) -> Room,
        room.delete_room(DeleteRoomRequest) -> DeleteRoomResponse,
        room.leave_room(LeaveRoomRequest) -> LeaveRoomResponse,
        room.list_members(ListMembersRequest) -> ListMembersResponse,
        room.add_member(AddMemberRequest) -> Member,
        room.remove_member(RemoveMemberRequest) -> RemoveMemberResponse,
        room.set_member_role(SetMemberRoleRequest) -> Member,
        room.ban_member(BanMemberRequest) -> Ban,
        room.unban_member(UnbanMemberRequest) -> UnbanMemberResponse,
        room.open_dm(OpenDmRequest) -> Room,
        room.edit_message(EditMessageRequest) -> Message,
        room.delete_message(DeleteMessageRequest) -> DeleteMessageResponse,
    }
    // `PostMessage` dedupes on `client_msg_id`; `MarkRead` only moves forward.
    true => {
        room.get_room(GetRoomRequest) -> GetRoomResponse,
        room.join_room(JoinRoomRequest) -> Member,
        room.post_message(PostMessageRequest) -> PostMessageResponse,
        room.list_messages(ListMessagesRequest) -> ListMessagesResponse,
        room.list_bans(ListBansRequest) -> ListBansResponse,
        room.list_events(ListEventsRequest) -> ListEventsResponse,
        room.mark_read(MarkReadRequest) -> MarkReadResponse,
    }
}
