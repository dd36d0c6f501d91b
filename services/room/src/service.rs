//! `chat.v1.RoomService`.
//!
//! # The recent-event cache
//!
//! Every committed event is also copied to a per-room cache in the
//! Ephemeral store (Redis in the distributed mode), the newest
//! [`RoomConfig::recent_cache`](crate::RoomConfig::recent_cache) events of each room, so that resumes and
//! gateway backfills (`ListEvents` from near the end of the log) need not
//! read the store. An edit or deletion also rewrites its target message's
//! entry (and a deletion blanks the cached bodies of the message's edits).
//! Cache writes are best effort: a failure is logged and forgotten.
//!
//! The store stays the truth, and `ListEvents` trusts the cache only when
//! it holds *every* event from `after_seq + 1` to the room's last seq (read
//! with the membership check), with no hole. A write that failed or is still
//! in flight (a writer commits seq N, then caches it) leaves a hole, so the
//! reader falls back to the store. Because such a run holds every later
//! event of each message in it, the reader also re-derives each message's
//! state from its edits and deletions (`settle`): a stale entry (a lost
//! or late rewrite of an edited message) is corrected, and a deleted
//! message's text never comes back.

use crate::access::Access;
use crate::convert;
use crate::limits::SendLimit;
use crate::RoomConfig;
use bytes::Bytes;
use chat_authn::Verifier;
use chat_bus::{Bus, Publisher, Subjects};
use chat_core::{time, validate, ApiError, MessageId, RoomId, Seq, UserId};
use chat_ephemeral::Ephemeral;
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use chat_store::{
    EditMessage, Event, EventKind, Membership, NewMessage, NewRoom, Role, Room, RoomKind,
    RoomPatch, Store, StoreError, Visibility,
};
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RoomSvc {
    store: Arc<dyn Store>,
    publisher: Publisher,
    ephemeral: Arc<dyn Ephemeral>,
    access: Access,
    send_limit: SendLimit,
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
            access: Access::new(store.clone(), verifier),
            store,
            publisher: Publisher::new(bus, subjects),
            send_limit: SendLimit::new(ephemeral.clone(), &cfg),
            ephemeral,
            cfg,
        }
    }

    /// After a commit: publishes `event` and, at the same time, caches it
    /// with the entries its commit changed (`target`: the seq of the message
    /// an edit or deletion changed).
    async fn committed(&self, room: RoomId, event: pb::RoomEvent, target: Option<Seq>) {
        let cached = async {
            if self.cfg.recent_cache == 0 {
                return;
            }
            let mut entries = Vec::new();
            if let Some(target) = target {
                if matches!(event.kind, Some(pb::room_event::Kind::Deleted(_))) {
                    entries = self.blanked_edits(room, target, event.seq).await;
                }
                // Read after the commit: a later edit or deletion may
                // already have changed it (readers settle either way).
                entries.extend(self.message_entry(room, target).await);
            }
            entries.push(event.clone());
            self.cache(room, &entries).await;
        };
        // A failed publish is logged by the publisher. The event is
        // durable; gateways see the gap at the next event (or on
        // resubscribe) and backfill it from the log.
        let _ = tokio::join!(
            self.publisher
                .to_room(room, pb::bus_event::Kind::RoomEvent(event.clone())),
            cached,
        );
    }

    /// Copies events to the room's recent-event cache; best effort.
    async fn cache(&self, room: RoomId, events: &[pb::RoomEvent]) {
        if self.cfg.recent_cache == 0 || events.is_empty() {
            return;
        }
        let entries: Vec<(Seq, Bytes)> = events
            .iter()
            .map(|e| (e.seq, Bytes::from(e.encode_to_vec())))
            .collect();
        if let Err(error) = self
            .ephemeral
            .cache_events(room, &entries, self.cfg.recent_cache)
            .await
        {
            // The event is durable; readers see the hole and use the store.
            tracing::warn!(%error, room_id = %room, "cannot cache room events");
        }
    }

    /// The message at `seq` in its current state, as the log shows it at
    /// that seq (to rewrite its cache entry after an edit or deletion).
    /// `None` when the cache is off or the store cannot say.
    async fn message_entry(&self, room: RoomId, seq: Seq) -> Option<pb::RoomEvent> {
        if self.cfg.recent_cache == 0 {
            return None;
        }
        match self.store.message(room, seq).await {
            Ok(Some(m)) => Some(convert::event(&Event {
                room_id: room,
                seq,
                kind: EventKind::Message(m),
            })),
            Ok(None) => None,
            Err(error) => {
                // The stale entry is harmless: readers settle it (see `settle`).
                tracing::warn!(%error, room_id = %room, seq, "cannot reread an edited message");
                None
            }
        }
    }

    /// The cached edits of the message at `target` (between it and its
    /// deletion at `deleted_at`), with their bodies blanked, as the store
    /// blanked them: a deleted message's text does not linger in the cache.
    async fn blanked_edits(
        &self,
        room: RoomId,
        target: Seq,
        deleted_at: Seq,
    ) -> Vec<pb::RoomEvent> {
        let between = usize::try_from(deleted_at - target - 1).unwrap_or(0);
        let n = between.min(self.cfg.recent_cache);
        if n == 0 {
            return Vec::new();
        }
        let cached = match self.ephemeral.cached_events(room, target, n).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, room_id = %room, "cannot read the recent-event cache");
                return Vec::new();
            }
        };
        cached
            .into_iter()
            .filter(|(seq, _)| *seq < deleted_at)
            .filter_map(|(seq, bytes)| {
                let mut e = pb::RoomEvent::decode(bytes).ok()?;
                match &mut e.kind {
                    Some(pb::room_event::Kind::Edited(ed))
                        if e.seq == seq && ed.target_seq == target =>
                    {
                        ed.body.clear();
                        Some(e)
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// `ListEvents` from the recent-event cache, or `None` to ask the store:
    /// only when the cache holds every event from `after + 1` to the room's
    /// last seq, contiguously (see the module docs).
    async fn cached_page(
        &self,
        room: &Room,
        after: Seq,
        limit: u32,
    ) -> Option<pb::ListEventsResponse> {
        let keep = self.cfg.recent_cache;
        if keep == 0 {
            return None;
        }
        if after >= room.last_seq {
            // Up to date: nothing to read anywhere.
            return Some(pb::ListEventsResponse {
                items: Vec::new(),
                has_more: false,
            });
        }
        let wanted = usize::try_from(room.last_seq - after).ok()?;
        if wanted > keep {
            return None;
        }
        let cached = match self.ephemeral.cached_events(room.id, after, wanted).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, room_id = %room.id, "recent-event cache unavailable");
                return None;
            }
        };
        if cached.len() != wanted {
            tracing::debug!(room_id = %room.id, after, "recent-event cache miss");
            return None;
        }
        let room_id = room.id.to_string();
        let mut run = Vec::with_capacity(wanted);
        for (expected, (seq, bytes)) in (after + 1..).zip(cached) {
            if seq != expected {
                tracing::debug!(room_id = %room.id, after, seq, "hole in the recent-event cache");
                return None;
            }
            let event = match pb::RoomEvent::decode(bytes) {
                Ok(e) if e.seq == seq && e.room_id == room_id && e.kind.is_some() => e,
                _ => {
                    tracing::warn!(room_id = %room.id, seq, "bad recent-event cache entry");
                    return None;
                }
            };
            run.push(event);
        }
        settle(&mut run);
        let has_more = run.len() > limit as usize;
        run.truncate(limit as usize);
        Some(pb::ListEventsResponse {
            items: run,
            has_more,
        })
    }

    async fn publish_membership(&self, room: RoomId, user: UserId, joined: bool) {
        let change = pb::MemberChange {
            room_id: room.to_string(),
            user_id: user.to_string(),
            joined,
        };
        let change = pb::bus_event::Kind::Member(change);
        // Failures are logged by the publisher (see `committed`).
        let _ = self.publisher.to_room(room, change.clone()).await;
        // The user's own connections learn of it too (subscribe_all adds
        // the room; a kick ends the subscription).
        let _ = self.publisher.to_user(user, change).await;
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
}

/// Brings a contiguous run of a room's log, read from the cache, to the
/// state the store shows: a message takes the body of its last edit in the
/// run; a message deleted (by a deletion in the run, or already a tombstone
/// in the cache) is a tombstone; and the edits of a deleted message have
/// no body. The run holds every event after its first, so every later edit
/// or deletion of each message in it is there: a stale message entry (a
/// rewrite that failed, or lost a race with a later one) cannot show.
fn settle(run: &mut [pb::RoomEvent]) {
    use pb::room_event::Kind;
    let mut deleted: HashSet<Seq> = HashSet::new();
    // target seq → (body, edited_at) of its last edit.
    let mut last_edit: HashMap<Seq, (String, String)> = HashMap::new();
    for e in run.iter() {
        match &e.kind {
            Some(Kind::Message(m)) if m.deleted => {
                deleted.insert(e.seq);
            }
            Some(Kind::Edited(ed)) => {
                last_edit.insert(ed.target_seq, (ed.body.clone(), ed.edited_at.clone()));
            }
            Some(Kind::Deleted(d)) => {
                deleted.insert(d.target_seq);
            }
            _ => {}
        }
    }
    if deleted.is_empty() && last_edit.is_empty() {
        return;
    }
    for e in run.iter_mut() {
        match &mut e.kind {
            Some(Kind::Message(m)) => {
                let edit = last_edit.get(&m.seq);
                if deleted.contains(&m.seq) {
                    m.deleted = true;
                    m.body.clear();
                    if let Some((_, at)) = edit {
                        m.edited_at = Some(at.clone());
                    }
                } else if let Some((body, at)) = edit {
                    m.body.clone_from(body);
                    m.edited_at = Some(at.clone());
                }
            }
            Some(Kind::Edited(ed)) if deleted.contains(&ed.target_seq) => ed.body.clear(),
            _ => {}
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

    #[tracing::instrument(skip_all)]
    async fn join_room(&self, req: Request<pb::JoinRoomRequest>) -> Rpc<pb::Member> {
        let c = self.access.caller(&req).await?;
        let (room, m) = self.access.room(&req.get_ref().room_id, c.user_id).await?;
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
        let c = self.access.caller(&req).await?;
        let (room, _) = self
            .access
            .member(&req.get_ref().room_id, c.user_id)
            .await?;
        if self.store.remove_member(room.id, c.user_id).await? {
            self.publish_membership(room.id, c.user_id, false).await;
        }
        Ok(Response::new(pb::LeaveRoomResponse {}))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Rpc<pb::ListMembersResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access.room(&r.room_id, c.user_id).await?;
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
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, me) = self.access.member(&r.room_id, c.user_id).await?;
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
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, me) = self
            .access
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
        let c = self.access.caller(&req).await?;
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
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let room_id = RoomId::parse(&r.room_id)?;
        validate::client_msg_id(&r.client_msg_id)?;
        validate::body(&r.body)?;
        self.send_limit.check(c.user_id).await?;
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
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access.member(&r.room_id, c.user_id).await?;
        let limit = validate::limit(r.limit)?;
        let after = validate::seq("after_seq", r.after_seq)?;
        if let Some(page) = self.cached_page(&room, after, limit).await {
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
