//! `chat.v1.RoomService`.

use crate::convert;
use chat_auth::{Caller, Verifier};
use chat_bus::{Bus, Subjects};
use chat_core::{time, validate, ApiError, MessageId, RoomId, Seq, UserId};
use chat_ephemeral::{Ephemeral, RateDecision};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use chat_store::{
    EditMessage, Membership, NewMessage, NewRoom, Role, Room, RoomKind, RoomPatch, Store,
    StoreError, Visibility,
};
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// Messages one user may send per `send_window` (0 = unlimited).
    pub send_limit: u32,
    pub send_window: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            send_limit: 100,
            send_window: Duration::from_secs(10),
        }
    }
}

pub struct RoomSvc {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    ephemeral: Arc<dyn Ephemeral>,
    subjects: Subjects,
    verifier: Verifier,
    cfg: RoomConfig,
}

type Rpc<T> = Result<Response<T>, Status>;

impl RoomSvc {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        ephemeral: Arc<dyn Ephemeral>,
        subjects: Subjects,
        verifier: Verifier,
        cfg: RoomConfig,
    ) -> Self {
        Self {
            store,
            bus,
            ephemeral,
            subjects,
            verifier,
            cfg,
        }
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        self.verifier.verify_request(req).await
    }

    /// The room and the caller's membership. A private room is `not_found`
    /// to non-members, so outsiders cannot probe for it.
    async fn access(
        &self,
        room_id: &str,
        user: UserId,
    ) -> Result<(Room, Option<Membership>), ApiError> {
        let id = RoomId::parse(room_id)?;
        let room = self
            .store
            .room(id)
            .await?
            .ok_or_else(|| ApiError::not_found("room"))?;
        let m = self.store.membership(id, user).await?;
        if m.is_none() && room.visibility == Visibility::Private {
            return Err(ApiError::not_found("room"));
        }
        Ok((room, m))
    }

    /// Like [`Self::access`], but the caller must be a member.
    async fn member(&self, room_id: &str, user: UserId) -> Result<(Room, Membership), ApiError> {
        match self.access(room_id, user).await? {
            (room, Some(m)) => Ok((room, m)),
            (_, None) => Err(ApiError::forbidden("not a member of this room")),
        }
    }

    async fn member_with_role(
        &self,
        room_id: &str,
        user: UserId,
        min: Role,
    ) -> Result<(Room, Membership), ApiError> {
        let (room, m) = self.member(room_id, user).await?;
        if m.role < min {
            return Err(ApiError::forbidden(format!(
                "requires the {} role or above",
                min.as_str()
            )));
        }
        Ok((room, m))
    }

    async fn publish(&self, room: RoomId, kind: pb::bus_event::Kind) {
        let ev = pb::BusEvent {
            kind: Some(kind),
            trace: Default::default(),
        };
        if let Err(error) = self
            .bus
            .publish(&self.subjects.room(room), ev.encode_to_vec().into())
            .await
        {
            // The event is durable; gateways see the gap at the next event
            // (or on resubscribe) and backfill it from the log.
            tracing::warn!(%error, room_id = %room, "cannot publish room event");
        }
    }

    async fn publish_event(&self, e: &chat_store::Event) {
        self.publish(e.room_id, pb::bus_event::Kind::RoomEvent(convert::event(e)))
            .await;
    }

    async fn publish_membership(&self, room: RoomId, user: UserId, joined: bool) {
        let change = pb::MemberChange {
            room_id: room.to_string(),
            user_id: user.to_string(),
            joined,
        };
        self.publish(room, pb::bus_event::Kind::Member(change.clone()))
            .await;
        // The user's own connections learn of it too (subscribe_all adds
        // the room; a kick ends the subscription).
        let ev = pb::BusEvent {
            kind: Some(pb::bus_event::Kind::Member(change)),
            trace: Default::default(),
        };
        if let Err(error) = self
            .bus
            .publish(&self.subjects.user(user), ev.encode_to_vec().into())
            .await
        {
            tracing::warn!(%error, user_id = %user, "cannot publish membership notice");
        }
    }

    async fn member_pb(&self, m: &Membership) -> Result<pb::Member, ApiError> {
        let u = self.store.user_by_id(m.user_id).await?;
        let online = self
            .ephemeral
            .online(&[m.user_id])
            .await
            .map(|v| v.first().copied().unwrap_or(false))
            .unwrap_or(false);
        Ok(pb::Member {
            room_id: m.room_id.to_string(),
            user_id: m.user_id.to_string(),
            username: u
                .as_ref()
                .map(|u| u.user.username.clone())
                .unwrap_or_default(),
            display_name: u.map(|u| u.user.display_name).unwrap_or_default(),
            role: m.role.as_str().into(),
            online,
            joined_at: time::rfc3339(m.joined_at),
        })
    }

    async fn rate_limit_send(&self, user: UserId) -> Result<(), ApiError> {
        if self.cfg.send_limit == 0 {
            return Ok(());
        }
        match self
            .ephemeral
            .hit(
                &format!("send:{user}"),
                self.cfg.send_limit,
                self.cfg.send_window,
            )
            .await
        {
            Ok(RateDecision::Limited(d)) => Err(ApiError::rate_limited(d.as_secs().max(1))),
            Ok(RateDecision::Allowed) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, "rate limiter unreachable; allowing");
                Ok(())
            }
        }
    }
}

fn parse_cursor<T>(
    cursor: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    parse(cursor)
        .map(Some)
        .map_err(|_| ApiError::invalid("cursor", "is not a cursor this server issued"))
}

/// Cuts a page fetched with `limit + 1` rows and returns the next cursor.
fn page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        let next = items.last().map(key);
        (items, next)
    } else {
        (items, None)
    }
}

fn store_err(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(what),
        StoreError::NotMember => ApiError::forbidden("not a member of this room"),
        StoreError::Forbidden => ApiError::forbidden("not allowed"),
        e => e.into(),
    }
}

#[tonic::async_trait]
impl RoomService for RoomSvc {
    #[tracing::instrument(skip_all)]
    async fn create_room(&self, req: Request<pb::CreateRoomRequest>) -> Rpc<pb::Room> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        validate::room_name(&r.name)?;
        validate::topic(&r.topic)?;
        let visibility = if r.visibility.is_empty() {
            "public"
        } else {
            r.visibility.as_str()
        };
        validate::visibility(visibility)?;
        let room = self
            .store
            .create_room(
                &NewRoom {
                    id: RoomId::new(),
                    name: r.name,
                    topic: r.topic,
                    visibility: Visibility::parse(visibility).unwrap_or(Visibility::Public),
                    kind: RoomKind::Group,
                    created_at: time::now_ms(),
                },
                c.user_id,
            )
            .await?;
        tracing::info!(room_id = %room.id, user_id = %c.user_id, "room created");
        Ok(Response::new(convert::room(&room)))
    }

    async fn get_room(&self, req: Request<pb::GetRoomRequest>) -> Rpc<pb::GetRoomResponse> {
        let c = self.caller(&req).await?;
        let (room, m) = self.access(&req.get_ref().room_id, c.user_id).await?;
        Ok(Response::new(pb::GetRoomResponse {
            room: Some(convert::room(&room)),
            my_role: m.map(|m| m.role.as_str().to_owned()).unwrap_or_default(),
        }))
    }

    async fn update_room(&self, req: Request<pb::UpdateRoomRequest>) -> Rpc<pb::Room> {
        let c = self.caller(&req).await?;
        let (room, _) = self
            .member_with_role(&req.get_ref().room_id, c.user_id, Role::Admin)
            .await?;
        let r = req.into_inner();
        if room.kind == RoomKind::Dm {
            return Err(ApiError::forbidden("a DM cannot be changed").into());
        }
        if let Some(n) = &r.name {
            validate::room_name(n)?;
        }
        if let Some(t) = &r.topic {
            validate::topic(t)?;
        }
        let visibility = match &r.visibility {
            Some(v) => {
                validate::visibility(v)?;
                Visibility::parse(v)
            }
            None => None,
        };
        let room = self
            .store
            .update_room(
                room.id,
                &RoomPatch {
                    name: r.name,
                    topic: r.topic,
                    visibility,
                },
            )
            .await
            .map_err(store_err("room"))?;
        Ok(Response::new(convert::room(&room)))
    }

    async fn delete_room(
        &self,
        req: Request<pb::DeleteRoomRequest>,
    ) -> Rpc<pb::DeleteRoomResponse> {
        let c = self.caller(&req).await?;
        let (room, _) = self
            .member_with_role(&req.get_ref().room_id, c.user_id, Role::Owner)
            .await?;
        self.store
            .delete_room(room.id, time::now_ms())
            .await
            .map_err(store_err("room"))?;
        tracing::info!(room_id = %room.id, "room deleted");
        Ok(Response::new(pb::DeleteRoomResponse {}))
    }

    async fn list_public_rooms(
        &self,
        req: Request<pb::ListPublicRoomsRequest>,
    ) -> Rpc<pb::ListRoomsResponse> {
        self.caller(&req).await?;
        let r = req.into_inner();
        let limit = validate::limit(r.limit)?;
        if r.q.chars().count() > validate::ROOM_NAME_MAX {
            return Err(ApiError::invalid("q", "must be at most 100 characters").into());
        }
        let after = parse_cursor(&r.cursor, RoomId::parse)?;
        let rooms = self.store.list_public_rooms(&r.q, after, limit + 1).await?;
        let (rooms, next_cursor) = page(rooms, limit, |r| r.id.to_string());
        Ok(Response::new(pb::ListRoomsResponse {
            items: rooms.iter().map(convert::room).collect(),
            next_cursor,
        }))
    }

    async fn list_my_rooms(
        &self,
        req: Request<pb::ListMyRoomsRequest>,
    ) -> Rpc<pb::ListMyRoomsResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let limit = validate::limit(r.limit)?;
        let after = parse_cursor(&r.cursor, RoomId::parse)?;
        let rooms = self
            .store
            .list_user_rooms(c.user_id, after, limit + 1)
            .await?;
        let (rooms, next_cursor) = page(rooms, limit, |r| r.room.id.to_string());
        Ok(Response::new(pb::ListMyRoomsResponse {
            items: rooms
                .iter()
                .map(|r| pb::MyRoom {
                    room: Some(convert::room(&r.room)),
                    role: r.membership.role.as_str().into(),
                    last_read_seq: r.membership.last_read_seq,
                    unread: r.unread,
                })
                .collect(),
            next_cursor,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn join_room(&self, req: Request<pb::JoinRoomRequest>) -> Rpc<pb::Member> {
        let c = self.caller(&req).await?;
        let (room, m) = self.access(&req.get_ref().room_id, c.user_id).await?;
        let m = match m {
            Some(m) => m,
            None => {
                if room.kind == RoomKind::Dm {
                    return Err(ApiError::not_found("room").into());
                }
                let (m, new) = self
                    .store
                    .add_member(room.id, c.user_id, Role::Member, time::now_ms())
                    .await
                    .map_err(store_err("room"))?;
                if new {
                    self.publish_membership(room.id, c.user_id, true).await;
                }
                m
            }
        };
        Ok(Response::new(self.member_pb(&m).await?))
    }

    async fn leave_room(&self, req: Request<pb::LeaveRoomRequest>) -> Rpc<pb::LeaveRoomResponse> {
        let c = self.caller(&req).await?;
        let (room, _) = self.member(&req.get_ref().room_id, c.user_id).await?;
        if self.store.remove_member(room.id, c.user_id).await? {
            self.publish_membership(room.id, c.user_id, false).await;
        }
        Ok(Response::new(pb::LeaveRoomResponse {}))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Rpc<pb::ListMembersResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access(&r.room_id, c.user_id).await?;
        let limit = validate::limit(r.limit)?;
        let after = parse_cursor(&r.cursor, UserId::parse)?;
        let members = self.store.list_members(room.id, after, limit + 1).await?;
        let (members, next_cursor) = page(members, limit, |m| m.membership.user_id.to_string());
        let ids: Vec<UserId> = members.iter().map(|m| m.membership.user_id).collect();
        let online = self.ephemeral.online(&ids).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "presence unavailable");
            vec![false; ids.len()]
        });
        Ok(Response::new(pb::ListMembersResponse {
            items: members
                .iter()
                .zip(online.into_iter().chain(std::iter::repeat(false)))
                .map(|(m, on)| convert::member(m, on))
                .collect(),
            next_cursor,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Rpc<pb::Member> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, me) = self.member(&r.room_id, c.user_id).await?;
        if room.kind == RoomKind::Dm {
            return Err(ApiError::forbidden("a DM has exactly two members").into());
        }
        if room.visibility == Visibility::Private && me.role < Role::Admin {
            return Err(
                ApiError::forbidden("only admins may add members to a private room").into(),
            );
        }
        let target = UserId::parse(&r.user_id)?;
        if self.store.user_by_id(target).await?.is_none() {
            return Err(ApiError::not_found("user").into());
        }
        let (m, new) = self
            .store
            .add_member(room.id, target, Role::Member, time::now_ms())
            .await
            .map_err(store_err("room"))?;
        if new {
            self.publish_membership(room.id, target, true).await;
        }
        Ok(Response::new(self.member_pb(&m).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Rpc<pb::RemoveMemberResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, me) = self
            .member_with_role(&r.room_id, c.user_id, Role::Admin)
            .await?;
        let target = UserId::parse(&r.user_id)?;
        let them = self
            .store
            .membership(room.id, target)
            .await?
            .ok_or_else(|| ApiError::not_found("member"))?;
        if target != c.user_id && them.role >= me.role {
            return Err(
                ApiError::forbidden("cannot remove a member of equal or higher role").into(),
            );
        }
        if self.store.remove_member(room.id, target).await? {
            self.publish_membership(room.id, target, false).await;
        }
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn open_dm(&self, req: Request<pb::OpenDmRequest>) -> Rpc<pb::Room> {
        let c = self.caller(&req).await?;
        let other = UserId::parse(&req.get_ref().user_id)?;
        if other == c.user_id {
            return Err(ApiError::invalid("user_id", "cannot open a DM with yourself").into());
        }
        if self.store.user_by_id(other).await?.is_none() {
            return Err(ApiError::not_found("user").into());
        }
        let room = self
            .store
            .open_dm(
                &NewRoom {
                    id: RoomId::new(),
                    name: "dm".into(),
                    topic: String::new(),
                    visibility: Visibility::Private,
                    kind: RoomKind::Dm,
                    created_at: time::now_ms(),
                },
                c.user_id,
                other,
            )
            .await?;
        Ok(Response::new(convert::room(&room)))
    }

    #[tracing::instrument(skip_all, fields(room_id = %req.get_ref().room_id, client_msg_id = %req.get_ref().client_msg_id))]
    async fn post_message(
        &self,
        req: Request<pb::PostMessageRequest>,
    ) -> Rpc<pb::PostMessageResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let room_id = RoomId::parse(&r.room_id)?;
        validate::client_msg_id(&r.client_msg_id)?;
        validate::body(&r.body)?;
        self.rate_limit_send(c.user_id).await?;
        let appended = self
            .store
            .append_message(&NewMessage {
                room_id,
                id: MessageId::new(),
                sender_id: c.user_id,
                client_msg_id: r.client_msg_id,
                body: r.body,
                created_at: time::now_ms(),
            })
            .await;
        let (msg, created) = match appended {
            Ok(v) => v,
            // Do not tell outsiders a private room exists.
            Err(StoreError::NotMember) => {
                self.access(&r.room_id, c.user_id).await?;
                return Err(ApiError::forbidden("not a member of this room").into());
            }
            Err(e) => return Err(store_err("room")(e).into()),
        };
        if created {
            tracing::debug!(seq = msg.seq, "message stored");
            self.publish_event(&chat_store::Event {
                room_id,
                seq: msg.seq,
                kind: chat_store::EventKind::Message(msg.clone()),
            })
            .await;
        }
        Ok(Response::new(pb::PostMessageResponse {
            message: Some(convert::message(&msg)),
            created,
        }))
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Rpc<pb::ListMessagesResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.member(&r.room_id, c.user_id).await?;
        let limit = validate::limit(r.limit)?;
        let before = r
            .before_seq
            .map(|s| validate::seq("before_seq", s))
            .transpose()?;
        let after = r
            .after_seq
            .map(|s| validate::seq("after_seq", s))
            .transpose()?;
        let (items, has_more) = self
            .store
            .list_messages(room.id, before, after, limit)
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            items: items.iter().map(convert::message).collect(),
            has_more,
        }))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Rpc<pb::ListEventsResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.member(&r.room_id, c.user_id).await?;
        let limit = validate::limit(r.limit)?;
        let after = validate::seq("after_seq", r.after_seq)?;
        let (items, has_more) = self.store.list_events(room.id, after, limit).await?;
        Ok(Response::new(pb::ListEventsResponse {
            items: items.iter().map(convert::event).collect(),
            has_more,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn edit_message(&self, req: Request<pb::EditMessageRequest>) -> Rpc<pb::Message> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.member(&r.room_id, c.user_id).await?;
        validate::body(&r.body)?;
        let (event, msg) = self
            .store
            .edit_message(&EditMessage {
                room_id: room.id,
                target: r.seq,
                editor: c.user_id,
                body: r.body,
                now: time::now_ms(),
            })
            .await
            .map_err(|e| match e {
                StoreError::Forbidden => ApiError::forbidden("only the author may edit a message"),
                e => store_err("message")(e),
            })?;
        self.publish_event(&event).await;
        Ok(Response::new(convert::message(&msg)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> Rpc<pb::DeleteMessageResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, me) = self.member(&r.room_id, c.user_id).await?;
        let msg = self
            .store
            .message(room.id, r.seq)
            .await?
            .filter(|m| !m.deleted)
            .ok_or_else(|| ApiError::not_found("message"))?;
        if msg.sender_id != c.user_id && me.role < Role::Admin {
            return Err(
                ApiError::forbidden("only the author or an admin may delete a message").into(),
            );
        }
        let event = self
            .store
            .delete_message(room.id, r.seq, c.user_id, time::now_ms())
            .await
            .map_err(store_err("message"))?;
        self.publish_event(&event).await;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    async fn mark_read(&self, req: Request<pb::MarkReadRequest>) -> Rpc<pb::MarkReadResponse> {
        let c = self.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.member(&r.room_id, c.user_id).await?;
        let seq: Seq = validate::seq("seq", r.seq)?;
        self.store
            .mark_read(room.id, c.user_id, seq)
            .await
            .map_err(store_err("room"))?;
        Ok(Response::new(pb::MarkReadResponse {}))
    }
}

/// The room service's tunables as flags (shared by `room` and `chat`).
#[derive(Clone, Debug, clap::Args)]
pub struct RoomArgs {
    /// Messages one user may send per --send-window-secs (0: unlimited).
    #[arg(long, env = "CHAT_SEND_LIMIT", default_value_t = 100)]
    pub send_limit: u32,

    /// The send rate-limit window in seconds.
    #[arg(long, env = "CHAT_SEND_WINDOW_SECS", default_value_t = 10)]
    pub send_window_secs: u64,
}

impl RoomArgs {
    pub fn config(&self) -> RoomConfig {
        RoomConfig {
            send_limit: self.send_limit,
            send_window: Duration::from_secs(self.send_window_secs),
        }
    }
}
