//! The WebSocket side's typed client of RoomService.
//!
//! [`RoomRpc`] is one call per method, each safe to repeat and retried
//! while room is unavailable ([`retrying`]; not when room refuses a user's
//! call for load, see `--max-concurrent-calls`); [`GrpcRoom`] makes them over
//! the gateway's gRPC channel. [`RoomApi`] adds what both the room hubs and
//! the connections need on top: reading a room's log after a seq, page by
//! page, and listing a user's rooms. Tests put a fake `RoomRpc` under it.
//!
//! Calls are made as a connected user (asserted with the internal secret:
//! the socket outlives the access token) or, for a hub reading a room's log
//! for every local subscriber, as the gateway itself ([`Who::Gateway`]).

use crate::backends::{request, retrying, retrying_through_overload, As, Backends};
use async_trait::async_trait;
use chat_authn::Caller;
use chat_core::{ApiError, RoomId, Seq};
use chat_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;

/// Who a call to room is made for.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    /// A connected user: room checks their membership.
    User(Caller),
    /// The gateway itself: may read any room's log, nothing else.
    Gateway,
}

/// A page of a room's log.
#[derive(Clone, Debug, Default)]
pub struct EventsPage {
    pub items: Vec<pb::RoomEvent>,
    pub has_more: bool,
}

/// A page of the rooms a user is a member of.
#[derive(Clone, Debug, Default)]
pub struct RoomsPage {
    pub rooms: Vec<RoomId>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// RoomService, one call per method.
#[async_trait]
pub trait RoomRpc: Send + Sync + 'static {
    /// The room's last seq, when `who` is a member (`forbidden` when not).
    async fn member_last_seq(&self, who: &Caller, room: RoomId) -> Result<Seq, ApiError>;
    /// Up to `limit` events after `after`.
    async fn list_events(
        &self,
        who: Who,
        room: RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<EventsPage, ApiError>;
    /// A page of the user's rooms, from `cursor` (empty: the first).
    async fn my_rooms(&self, who: &Caller, cursor: &str) -> Result<RoomsPage, ApiError>;
    /// Posts a message (idempotent on `client_msg_id`).
    async fn post_message(
        &self,
        who: &Caller,
        room: RoomId,
        client_msg_id: String,
        body: String,
    ) -> Result<pb::Message, ApiError>;
    /// Moves the user's read marker (only ever forward).
    async fn mark_read(&self, who: &Caller, room: RoomId, seq: Seq) -> Result<(), ApiError>;
    /// The last seq of each live room of `rooms` (at most
    /// [`LAST_SEQS_BATCH`]), asked as the gateway: the hubs' tail check.
    /// Without it (a room API that cannot say), there is no tail check.
    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, Seq)>, ApiError> {
        let _ = rooms;
        Err(ApiError::unavailable("no LastSeqs here"))
    }
}

/// Rooms per `LastSeqs` call (room takes at most this many).
pub const LAST_SEQS_BATCH: usize = 1000;

/// Events per page of a log read.
const PAGE: Seq = 200;

/// Rooms per page of a user's rooms.
const ROOMS_PAGE: u32 = 200;

/// RoomService with the helpers the WebSocket side needs; cheap to clone.
#[derive(Clone)]
pub struct RoomApi {
    rpc: Arc<dyn RoomRpc>,
}

impl RoomApi {
    pub fn new(rpc: Arc<dyn RoomRpc>) -> Self {
        Self { rpc }
    }

    /// The single calls.
    pub fn rpc(&self) -> &dyn RoomRpc {
        self.rpc.as_ref()
    }

    /// Reads the room's log after `after` (up to `until`, or to its end),
    /// a page at a time. `take` gets each page's events past the cursor (in
    /// seq order, none past `until`) and returns the cursor to go on from:
    /// the read stops at the end of the log, at `until`, or when a page
    /// moves the cursor no further.
    pub async fn events_after<E, F>(
        &self,
        who: Who,
        room: RoomId,
        after: Seq,
        until: Option<Seq>,
        mut take: F,
    ) -> Result<(), E>
    where
        E: From<ApiError>,
        F: FnMut(&[pb::RoomEvent]) -> Result<Seq, E>,
    {
        let mut cursor = after;
        loop {
            if until.is_some_and(|u| cursor >= u) {
                return Ok(());
            }
            let limit = until.map_or(PAGE, |u| (u - cursor).clamp(1, PAGE));
            let page = self
                .rpc
                .list_events(who, room, cursor, limit as u32)
                .await?;
            let items: Vec<pb::RoomEvent> = page
                .items
                .into_iter()
                .filter(|e| e.seq > cursor && until.is_none_or(|u| e.seq <= u))
                .collect();
            let now = take(&items)?;
            if !page.has_more || now == cursor {
                return Ok(());
            }
            cursor = now;
        }
    }

    /// The rooms the user is a member of, `max` at most.
    pub async fn my_rooms(&self, who: &Caller, max: usize) -> Result<Vec<RoomId>, ApiError> {
        let mut rooms = Vec::new();
        let mut cursor = String::new();
        while rooms.len() < max {
            let page = self.rpc.my_rooms(who, &cursor).await?;
            rooms.extend(page.rooms);
            match page.next {
                Some(c) if !c.is_empty() => cursor = c,
                _ => break,
            }
        }
        rooms.truncate(max);
        Ok(rooms)
    }
}

/// [`RoomRpc`] over the gateway's gRPC channel to room.
pub struct GrpcRoom {
    backends: Backends,
    internal_secret: String,
    timeout: Duration,
}

impl GrpcRoom {
    pub fn new(backends: Backends, internal_secret: String, timeout: Duration) -> Self {
        Self {
            backends,
            internal_secret,
            timeout,
        }
    }

    fn who<'a>(&'a self, who: &'a Who) -> As<'a> {
        match who {
            Who::User(caller) => As::User(caller, &self.internal_secret),
            Who::Gateway => As::Service(&self.internal_secret),
        }
    }

    /// A call safe to repeat, made again while room is unavailable; a
    /// refusal for load only when the gateway calls for itself.
    async fn call<M, R, F, Fut>(&self, who: Who, msg: M, call: F) -> Result<R, ApiError>
    where
        M: Clone,
        F: Fn(
            pb::room_service_client::RoomServiceClient<crate::backends::Transport>,
            tonic::Request<M>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let attempt = || {
            let req = request(msg.clone(), self.who(&who), self.timeout, None);
            call(self.backends.room.clone(), req)
        };
        match who {
            Who::User(_) => retrying(attempt).await,
            Who::Gateway => retrying_through_overload(attempt).await,
        }
        .map(tonic::Response::into_inner)
        .map_err(ApiError::from)
    }
}

#[async_trait]
impl RoomRpc for GrpcRoom {
    async fn member_last_seq(&self, who: &Caller, room: RoomId) -> Result<Seq, ApiError> {
        let msg = pb::GetRoomRequest {
            room_id: room.to_string(),
        };
        let r = self
            .call(Who::User(*who), msg, |mut c, r| async move {
                c.get_room(r).await
            })
            .await?;
        if r.my_role.is_empty() {
            return Err(ApiError::forbidden("not a member of this room"));
        }
        Ok(r.room.map_or(0, |r| r.last_seq))
    }

    async fn list_events(
        &self,
        who: Who,
        room: RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<EventsPage, ApiError> {
        let msg = pb::ListEventsRequest {
            room_id: room.to_string(),
            after_seq: after,
            limit,
        };
        let r = self
            .call(who, msg, |mut c, r| async move { c.list_events(r).await })
            .await?;
        Ok(EventsPage {
            items: r.items,
            has_more: r.has_more,
        })
    }

    async fn my_rooms(&self, who: &Caller, cursor: &str) -> Result<RoomsPage, ApiError> {
        let msg = pb::ListMyRoomsRequest {
            cursor: cursor.to_owned(),
            limit: ROOMS_PAGE,
        };
        let r = self
            .call(Who::User(*who), msg, |mut c, r| async move {
                c.list_my_rooms(r).await
            })
            .await?;
        Ok(RoomsPage {
            rooms: r
                .items
                .iter()
                .filter_map(|i| i.room.as_ref())
                .filter_map(|r| RoomId::parse(&r.id).ok())
                .collect(),
            next: r.next_cursor,
        })
    }

    async fn post_message(
        &self,
        who: &Caller,
        room: RoomId,
        client_msg_id: String,
        body: String,
    ) -> Result<pb::Message, ApiError> {
        let msg = pb::PostMessageRequest {
            room_id: room.to_string(),
            client_msg_id,
            body,
        };
        let r = self
            .call(Who::User(*who), msg, |mut c, r| async move {
                c.post_message(r).await
            })
            .await?;
        Ok(r.message.unwrap_or_default())
    }

    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, Seq)>, ApiError> {
        let msg = pb::LastSeqsRequest {
            room_ids: rooms.iter().map(ToString::to_string).collect(),
        };
        let r = self
            .call(
                Who::Gateway,
                msg,
                |mut c, r| async move { c.last_seqs(r).await },
            )
            .await?;
        Ok(r.rooms
            .into_iter()
            .filter_map(|r| Some((RoomId::parse(&r.room_id).ok()?, r.last_seq)))
            .collect())
    }

    async fn mark_read(&self, who: &Caller, room: RoomId, seq: Seq) -> Result<(), ApiError> {
        let msg = pb::MarkReadRequest {
            room_id: room.to_string(),
            seq,
        };
        self.call(Who::User(*who), msg, |mut c, r| async move {
            c.mark_read(r).await
        })
        .await?;
        Ok(())
    }
}
