//! `chat.v1.RoomService`: the handlers. Each finds out who calls and what
//! they may do in the room (`access`), validates, commits to the store, then
//! publishes what it committed on the room's bus subject and copies it to
//! the recent-event cache (`recent`), from which `ListEvents` answers when
//! it can. The membership handlers (joining, leaving, adding, removing,
//! roles and bans) are in [`members`].

mod members;

use crate::access::Access;
use crate::convert;
use crate::limits::UserLimit;
use crate::recent::RecentCache;
use crate::RoomConfig;
use chat_authn::Verifier;
use chat_bus::{Bus, Publisher, Subjects};
use chat_core::{time, validate, ApiError, MessageId, RoomId, Seq, UserId};
use chat_ephemeral::Ephemeral;
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use chat_store::{
    EditMessage, Event, EventKind, NewMessage, NewRoom, Role, RoomKind, RoomPatch, Store,
    StoreError, Visibility,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

/// The room service: one per process, behind `RoomServiceServer`.
pub struct RoomSvc {
    store: Arc<dyn Store>,
    publisher: Publisher,
    ephemeral: Arc<dyn Ephemeral>,
    access: Access,
    send_limit: UserLimit,
    /// Joins, leaves, adds and removals a user makes.
    membership_limit: UserLimit,
    /// Rooms (and DMs) a user creates.
    create_limit: UserLimit,
    recent: Arc<RecentCache>,
}

type Rpc<T> = Result<Response<T>, Status>;

/// Room ids one `LastSeqs` call may ask about.
pub const MAX_LAST_SEQS: usize = 1000;

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
            access: Access::new(store.clone(), verifier),
            send_limit: UserLimit::new(ephemeral.clone(), "send", cfg.send_limit, cfg.send_window),
            membership_limit: UserLimit::new(
                ephemeral.clone(),
                "membership",
                cfg.membership_limit,
                cfg.membership_window,
            ),
            create_limit: UserLimit::new(
                ephemeral.clone(),
                "create",
                cfg.create_limit,
                cfg.create_window,
            ),
            recent: Arc::new(RecentCache::new(store.clone(), ephemeral.clone(), &cfg)),
            store,
            publisher: Publisher::new(bus, subjects),
            ephemeral,
        }
    }

    /// The message `r` already stored for `sender`, if they sent it and
    /// are still a member (what a retry of it is answered with).
    async fn resent(
        &self,
        r: &pb::PostMessageRequest,
        sender: UserId,
    ) -> Option<chat_store::Message> {
        self.access.member(&r.room_id, sender).await.ok()?;
        let room = RoomId::parse(&r.room_id).ok()?;
        match self
            .store
            .sent_message(room, sender, &r.client_msg_id)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "cannot look a retried message up");
                None
            }
        }
    }

    /// After a commit: publishes `event` and, at the same time, caches it
    /// with the entries its commit changed (`target`: the seq of the message
    /// an edit or deletion changed).
    ///
    /// The work runs as a task of its own: the commit is durable, so its
    /// publish must not depend on the call that made it, which a deadline
    /// or a client going away drops. The call still waits for it, so an
    /// ack normally follows the publish.
    async fn committed(&self, room: RoomId, event: pb::RoomEvent, target: Option<Seq>) {
        let (publisher, recent) = (self.publisher.clone(), self.recent.clone());
        let task = tokio::spawn(
            async move {
                // A failed publish is logged by the publisher. The event is
                // durable; gateways backfill it from the log when they see
                // the gap (at the room's next event or their tail check).
                let _ = tokio::join!(
                    publisher.to_room(room, pb::bus_event::Kind::RoomEvent(event.clone())),
                    recent.committed(room, &event, target),
                );
            }
            .in_current_span(),
        );
        if let Err(error) = task.await {
            tracing::error!(%error, room_id = %room, "the publish of a commit failed");
        }
    }

    /// A retry of a stored message: publishes it again, as a task of its
    /// own like [`Self::committed`]. Its first publish may have been lost
    /// (and the client retries because it saw neither ack nor event);
    /// gateways drop the event if they have it already.
    async fn republish(&self, room: RoomId, msg: &chat_store::Message) {
        let event = convert::event(&Event {
            room_id: room,
            seq: msg.seq,
            kind: EventKind::Message(msg.clone()),
        });
        let publisher = self.publisher.clone();
        let task = tokio::spawn(
            async move {
                let _ = publisher
                    .to_room(room, pb::bus_event::Kind::RoomEvent(event))
                    .await;
            }
            .in_current_span(),
        );
        if let Err(error) = task.await {
            tracing::error!(%error, room_id = %room, "the publish of a retry failed");
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
        let c = self.access.caller(&req).await?;
        self.create_limit.check(c.user_id).await?;
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
        self.publish_new_member(room.id, &[c.user_id]).await;
        Ok(Response::new(convert::room(&room)))
    }

    async fn get_room(&self, req: Request<pb::GetRoomRequest>) -> Rpc<pb::GetRoomResponse> {
        let c = self.access.caller(&req).await?;
        let (room, m) = self.access.room(&req.get_ref().room_id, c.user_id).await?;
        Ok(Response::new(pb::GetRoomResponse {
            room: Some(convert::room(&room)),
            my_role: m.map(|m| m.role.as_str().to_owned()).unwrap_or_default(),
        }))
    }

    async fn update_room(&self, req: Request<pb::UpdateRoomRequest>) -> Rpc<pb::Room> {
        let c = self.access.caller(&req).await?;
        let (room, _) = self
            .access
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
        let c = self.access.caller(&req).await?;
        let (room, _) = self
            .access
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
        self.access.caller(&req).await?;
        let r = req.into_inner();
        let limit = validate::limit(r.limit)?;
        validate::search_query(&r.q)?;
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
        let c = self.access.caller(&req).await?;
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

    async fn join_room(&self, req: Request<pb::JoinRoomRequest>) -> Rpc<pb::Member> {
        self.join(req).await
    }

    async fn leave_room(&self, req: Request<pb::LeaveRoomRequest>) -> Rpc<pb::LeaveRoomResponse> {
        self.leave(req).await
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Rpc<pb::ListMembersResponse> {
        self.members(req).await
    }

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Rpc<pb::Member> {
        self.add(req).await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Rpc<pb::RemoveMemberResponse> {
        self.remove(req).await
    }

    async fn set_member_role(&self, req: Request<pb::SetMemberRoleRequest>) -> Rpc<pb::Member> {
        self.set_role(req).await
    }

    async fn ban_member(&self, req: Request<pb::BanMemberRequest>) -> Rpc<pb::Ban> {
        self.ban(req).await
    }

    async fn unban_member(
        &self,
        req: Request<pb::UnbanMemberRequest>,
    ) -> Rpc<pb::UnbanMemberResponse> {
        self.unban(req).await
    }

    async fn list_bans(&self, req: Request<pb::ListBansRequest>) -> Rpc<pb::ListBansResponse> {
        self.bans(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn open_dm(&self, req: Request<pb::OpenDmRequest>) -> Rpc<pb::Room> {
        let c = self.access.caller(&req).await?;
        self.create_limit.check(c.user_id).await?;
        let other = UserId::parse(&req.get_ref().user_id)?;
        if other == c.user_id {
            return Err(ApiError::invalid("user_id", "cannot open a DM with yourself").into());
        }
        if self.store.user_by_id(other).await?.is_none() {
            return Err(ApiError::not_found("user").into());
        }
        let id = RoomId::new();
        let room = self
            .store
            .open_dm(
                &NewRoom {
                    id,
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
        // The store hands back the DM it found, or ours when it made it.
        if room.id == id {
            self.publish_new_member(room.id, &[c.user_id, other]).await;
        }
        Ok(Response::new(convert::room(&room)))
    }

    #[tracing::instrument(skip_all, fields(room_id = %req.get_ref().room_id, client_msg_id = %req.get_ref().client_msg_id))]
    async fn post_message(
        &self,
        req: Request<pb::PostMessageRequest>,
    ) -> Rpc<pb::PostMessageResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let room_id = RoomId::parse(&r.room_id)?;
        validate::client_msg_id(&r.client_msg_id)?;
        validate::body(&r.body)?;
        if let Err(limited) = self.send_limit.check(c.user_id).await {
            // A retry of a stored message (its ack was lost) gets it back,
            // whatever the limit: it appends nothing.
            return match self.resent(&r, c.user_id).await {
                Some(message) => Ok(Response::new(pb::PostMessageResponse {
                    message: Some(convert::message(&message)),
                    created: false,
                })),
                None => Err(limited.into()),
            };
        }
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
                self.access.room(&r.room_id, c.user_id).await?;
                return Err(ApiError::forbidden("not a member of this room").into());
            }
            Err(e) => return Err(store_err("room")(e).into()),
        };
        if created {
            tracing::debug!(seq = msg.seq, "message stored");
            let event = convert::event(&Event {
                room_id,
                seq: msg.seq,
                kind: EventKind::Message(msg.clone()),
            });
            self.committed(room_id, event, None).await;
        } else {
            // A retry within the send limit (the limited path above does not
            // republish, so retries cannot flood the bus).
            tracing::debug!(seq = msg.seq, "message retried; publishing it again");
            self.republish(room_id, &msg).await;
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
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access.member(&r.room_id, c.user_id).await?;
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
        let room = self.access.log_reader(&req, &req.get_ref().room_id).await?;
        let r = req.into_inner();
        let limit = validate::limit(r.limit)?;
        let after = validate::seq("after_seq", r.after_seq)?;
        if let Some(page) = self.recent.page(&room, after, limit).await {
            return Ok(Response::new(page));
        }
        let (items, has_more) = self.store.list_events(room.id, after, limit).await?;
        Ok(Response::new(pb::ListEventsResponse {
            items: items.iter().map(convert::event).collect(),
            has_more,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn edit_message(&self, req: Request<pb::EditMessageRequest>) -> Rpc<pb::Message> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access.member(&r.room_id, c.user_id).await?;
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
        self.committed(room.id, convert::event(&event), Some(r.seq))
            .await;
        Ok(Response::new(convert::message(&msg)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> Rpc<pb::DeleteMessageResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, me) = self.access.member(&r.room_id, c.user_id).await?;
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
        self.committed(room.id, convert::event(&event), Some(r.seq))
            .await;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    async fn last_seqs(&self, req: Request<pb::LastSeqsRequest>) -> Rpc<pb::LastSeqsResponse> {
        self.access.gateway(&req).await?;
        let ids = &req.get_ref().room_ids;
        if ids.len() > MAX_LAST_SEQS {
            return Err(ApiError::invalid(
                "room_ids",
                format!("at most {MAX_LAST_SEQS} rooms per call"),
            )
            .into());
        }
        let rooms = ids
            .iter()
            .map(|id| RoomId::parse(id))
            .collect::<Result<Vec<_>, _>>()?;
        let seqs = self.store.last_seqs(&rooms).await?;
        Ok(Response::new(pb::LastSeqsResponse {
            rooms: seqs
                .into_iter()
                .map(|(room, last_seq)| pb::RoomLastSeq {
                    room_id: room.to_string(),
                    last_seq,
                })
                .collect(),
        }))
    }

    async fn mark_read(&self, req: Request<pb::MarkReadRequest>) -> Rpc<pb::MarkReadResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access.member(&r.room_id, c.user_id).await?;
        let seq: Seq = validate::seq("seq", r.seq)?;
        self.store
            .mark_read(room.id, c.user_id, seq)
            .await
            .map_err(store_err("room"))?;
        Ok(Response::new(pb::MarkReadResponse {}))
    }
}
