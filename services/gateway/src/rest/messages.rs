//! A room's history: posting, listing, editing and deleting messages, the
//! event log a client catches up from, and read marks. Room stores and
//! orders it; the handlers only reshape requests and answers.

use super::{no_content, ok, reply, room_id, seq_param, Caller, Res};
use crate::extract::{Json, Query};
use crate::wire::EventView;
use crate::Gateway;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::Router;
use chat_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route(
            "/rooms/{id}/messages",
            post(post_message).get(list_messages),
        )
        .route(
            "/rooms/{id}/messages/{seq}",
            patch(edit_message).delete(delete_message),
        )
        .route("/rooms/{id}/events", get(list_events))
        .route("/rooms/{id}/read", post(mark_read))
}

#[derive(Deserialize)]
pub struct PostBody {
    pub body: String,
    pub client_msg_id: String,
}

/// `201` with the new message, or `200` with the one an earlier post with
/// the same `client_msg_id` created.
async fn post_message(c: Caller, Path(id): Path<String>, Json(b): Json<PostBody>) -> Res {
    let msg = pb::PostMessageRequest {
        room_id: room_id(&id)?,
        client_msg_id: b.client_msg_id,
        body: b.body,
    };
    let r = c.call(msg).await?;
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    reply(status, r.message)
}

/// A window of a room's history by `seq`.
#[derive(Deserialize)]
struct HistoryQuery {
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    #[serde(default)]
    limit: u32,
}

async fn list_messages(c: Caller, Path(id): Path<String>, Query(q): Query<HistoryQuery>) -> Res {
    let msg = pb::ListMessagesRequest {
        room_id: room_id(&id)?,
        before_seq: q.before_seq,
        after_seq: q.after_seq,
        limit: q.limit,
    };
    ok(c.call(msg).await?)
}

/// The events after `after_seq`, in the same shape as on the WebSocket.
async fn list_events(c: Caller, Path(id): Path<String>, Query(q): Query<HistoryQuery>) -> Res {
    let msg = pb::ListEventsRequest {
        room_id: room_id(&id)?,
        after_seq: q.after_seq.unwrap_or(0),
        limit: q.limit,
    };
    let r = c.call(msg).await?;
    let items: Vec<_> = r.items.iter().filter_map(EventView::of).collect();
    ok(json!({"items": items, "has_more": r.has_more}))
}

#[derive(Deserialize)]
pub struct EditBody {
    pub body: String,
}

async fn edit_message(
    c: Caller,
    Path((id, seq)): Path<(String, String)>,
    Json(b): Json<EditBody>,
) -> Res {
    let msg = pb::EditMessageRequest {
        room_id: room_id(&id)?,
        seq: seq_param(&seq)?,
        body: b.body,
    };
    ok(c.call(msg).await?)
}

async fn delete_message(c: Caller, Path((id, seq)): Path<(String, String)>) -> Res {
    let msg = pb::DeleteMessageRequest {
        room_id: room_id(&id)?,
        seq: seq_param(&seq)?,
    };
    c.call(msg).await?;
    no_content()
}

#[derive(Deserialize)]
pub struct ReadBody {
    pub seq: i64,
}

async fn mark_read(c: Caller, Path(id): Path<String>, Json(b): Json<ReadBody>) -> Res {
    let msg = pb::MarkReadRequest {
        room_id: room_id(&id)?,
        seq: b.seq,
    };
    c.call(msg).await?;
    no_content()
}
