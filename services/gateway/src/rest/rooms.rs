//! Rooms: creating, finding, reading and changing them, joining and
//! leaving, their members and roles, bans, and direct-message rooms. Who may do what is
//! room's to decide; the handlers only reshape requests and answers.

use super::{created, no_content, ok, room_id, Caller, Res};
use crate::extract::{Json, Query};
use crate::Gateway;
use axum::extract::Path;
use axum::routing::{get, post, put};
use axum::Router;
use chat_core::{ApiError, UserId};
use chat_proto::v1 as pb;
use serde::Deserialize;

pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/rooms", post(create_room).get(list_public_rooms))
        .route("/me/rooms", get(list_my_rooms))
        .route(
            "/rooms/{id}",
            get(get_room).patch(update_room).delete(delete_room),
        )
        .route("/rooms/{id}/join", post(join_room))
        .route("/rooms/{id}/leave", post(leave_room))
        .route("/rooms/{id}/members", get(list_members).post(add_member))
        .route(
            "/rooms/{id}/members/{user_id}",
            put(set_member_role).delete(remove_member),
        )
        .route("/rooms/{id}/bans", get(list_bans))
        .route(
            "/rooms/{id}/bans/{user_id}",
            put(ban_member).delete(unban_member),
        )
        .route("/dms", post(open_dm))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomBody {
    pub name: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default = "public")]
    pub visibility: String,
}

fn public() -> String {
    "public".into()
}

async fn create_room(c: Caller, Json(b): Json<CreateRoomBody>) -> Res {
    let msg = pb::CreateRoomRequest {
        name: b.name,
        topic: b.topic,
        visibility: b.visibility,
    };
    created(c.call(msg).await?)
}

/// A page of a list: `q` (public rooms only), `cursor`, `limit`.
#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    limit: u32,
}

async fn list_public_rooms(c: Caller, Query(q): Query<PageQuery>) -> Res {
    let msg = pb::ListPublicRoomsRequest {
        q: q.q,
        cursor: q.cursor,
        limit: q.limit,
    };
    ok(c.call(msg).await?)
}

async fn list_my_rooms(c: Caller, Query(q): Query<PageQuery>) -> Res {
    let msg = pb::ListMyRoomsRequest {
        cursor: q.cursor,
        limit: q.limit,
    };
    ok(c.call(msg).await?)
}

async fn get_room(c: Caller, Path(id): Path<String>) -> Res {
    let room_id = room_id(&id)?;
    ok(c.call(pb::GetRoomRequest { room_id }).await?.room)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomBody {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub visibility: Option<String>,
}

async fn update_room(c: Caller, Path(id): Path<String>, Json(b): Json<UpdateRoomBody>) -> Res {
    let msg = pb::UpdateRoomRequest {
        room_id: room_id(&id)?,
        name: b.name,
        topic: b.topic,
        visibility: b.visibility,
    };
    ok(c.call(msg).await?)
}

async fn delete_room(c: Caller, Path(id): Path<String>) -> Res {
    let room_id = room_id(&id)?;
    c.call(pb::DeleteRoomRequest { room_id }).await?;
    no_content()
}

async fn join_room(c: Caller, Path(id): Path<String>) -> Res {
    let room_id = room_id(&id)?;
    ok(c.call(pb::JoinRoomRequest { room_id }).await?)
}

async fn leave_room(c: Caller, Path(id): Path<String>) -> Res {
    let room_id = room_id(&id)?;
    c.call(pb::LeaveRoomRequest { room_id }).await?;
    no_content()
}

async fn list_members(c: Caller, Path(id): Path<String>, Query(q): Query<PageQuery>) -> Res {
    let msg = pb::ListMembersRequest {
        room_id: room_id(&id)?,
        cursor: q.cursor,
        limit: q.limit,
    };
    ok(c.call(msg).await?)
}

#[derive(Deserialize)]
pub struct UserBody {
    pub user_id: String,
}

async fn add_member(c: Caller, Path(id): Path<String>, Json(b): Json<UserBody>) -> Res {
    let msg = pb::AddMemberRequest {
        room_id: room_id(&id)?,
        user_id: b.user_id,
    };
    ok(c.call(msg).await?)
}

/// The room and user ids of a `…/{id}/…/{user_id}` path; a user id that
/// cannot be one is `what` not found.
fn room_and_user(id: &str, user: &str, what: &str) -> Res<(String, String)> {
    let user = UserId::parse(user).map_err(|_| ApiError::not_found(what))?;
    Ok((room_id(id)?, user.to_string()))
}

async fn remove_member(c: Caller, Path((id, user)): Path<(String, String)>) -> Res {
    let (room_id, user_id) = room_and_user(&id, &user, "member")?;
    c.call(pb::RemoveMemberRequest { room_id, user_id }).await?;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    pub role: String,
}

async fn set_member_role(
    c: Caller,
    Path((id, user)): Path<(String, String)>,
    Json(b): Json<RoleBody>,
) -> Res {
    let (room_id, user_id) = room_and_user(&id, &user, "member")?;
    let msg = pb::SetMemberRoleRequest {
        room_id,
        user_id,
        role: b.role,
    };
    ok(c.call(msg).await?)
}

async fn ban_member(c: Caller, Path((id, user)): Path<(String, String)>) -> Res {
    let (room_id, user_id) = room_and_user(&id, &user, "user")?;
    ok(c.call(pb::BanMemberRequest { room_id, user_id }).await?)
}

async fn unban_member(c: Caller, Path((id, user)): Path<(String, String)>) -> Res {
    let (room_id, user_id) = room_and_user(&id, &user, "ban")?;
    c.call(pb::UnbanMemberRequest { room_id, user_id }).await?;
    no_content()
}

async fn list_bans(c: Caller, Path(id): Path<String>, Query(q): Query<PageQuery>) -> Res {
    let msg = pb::ListBansRequest {
        room_id: room_id(&id)?,
        cursor: q.cursor,
        limit: q.limit,
    };
    ok(c.call(msg).await?)
}

async fn open_dm(c: Caller, Json(b): Json<UserBody>) -> Res {
    let msg = pb::OpenDmRequest { user_id: b.user_id };
    ok(c.call(msg).await?)
}
