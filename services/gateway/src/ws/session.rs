//! A connection's rooms: which it is subscribed to, and per room a cursor
//! (the last `seq` delivered, kept in [`Out`] so that the hubs writing
//! directly and this task never duplicate or reorder an event).
//!
//! Events at or below the cursor are dropped (no duplicate); an event past
//! `cursor + 1` first backfills the gap from room's log (no gap). So the
//! client sees every event once, in order, whatever races between the bus
//! and a resume.
//!
//! A subscribe registers with the room's hub *before* it reads the room's
//! `last_seq`: an event committed after that read is published after it
//! too, so the hub gets it; one committed before is at or below
//! `last_seq`. Until `subscribed` is written the room is not live: its hub
//! hands events to this task, which delivers them after it.

use super::close::{Close, End};
use super::frames::{self, Batch};
use super::hub::{HubGuard, Hubs};
use super::out::{Cursor, Out};
use super::shared::{ConnShared, Outbound};
use crate::room_api::{RoomApi, Who};
use crate::wire::{encode, EventView, ServerFrame};
use axum::extract::ws::Utf8Bytes;
use chat_authn::Caller;
use chat_core::{ApiError, ErrorCode, RoomId, Seq};
use chat_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What a session needs from the gateway.
#[derive(Clone)]
pub struct SessionDeps {
    pub api: RoomApi,
    pub hubs: Arc<Hubs>,
    /// Subscribes checked with room at once (`--subscribe-concurrency`).
    pub subscribes: Arc<Semaphore>,
    /// How long a subscribe waits for its turn.
    pub rpc_timeout: Duration,
}

/// One connection's subscriptions.
pub struct Session {
    conn: Arc<ConnShared>,
    deps: SessionDeps,
    rooms: HashMap<RoomId, HubGuard>,
    /// Subscribed to every room of the user (`subscribe_all`): rooms the
    /// user becomes a member of later are followed.
    all: bool,
}

impl Session {
    pub fn new(conn: Arc<ConnShared>, deps: SessionDeps) -> Self {
        Self {
            conn,
            deps,
            rooms: HashMap::new(),
            all: false,
        }
    }

    /// The user this connection is for.
    pub fn caller(&self) -> Caller {
        self.conn.caller
    }

    /// Who calls room for this connection.
    pub fn who(&self) -> Who {
        Who::User(self.conn.caller)
    }

    pub fn api(&self) -> &RoomApi {
        &self.deps.api
    }

    fn out(&self) -> &Out {
        &self.conn.out
    }

    pub fn is_subscribed(&self, room: RoomId) -> bool {
        self.rooms.contains_key(&room)
    }

    /// The close the connection was asked for, if any: nothing more is
    /// written to it then (not even an error frame).
    pub fn closing(&self) -> Option<Close> {
        self.conn.asked_to_close()
    }

    /// The last seq delivered of a subscribed room.
    pub fn cursor(&self, room: RoomId) -> Option<Seq> {
        self.out().lock().cursor(room).map(|c| c.seq)
    }

    /// Writes a frame after everything before it.
    pub fn send(&self, frame: &Utf8Bytes) -> Result<(), End> {
        Ok(self.out().lock().write(frames::text(frame.as_bytes()))?)
    }

    /// Stops delivering the room; whether it was subscribed.
    pub fn unsubscribe(&mut self, room: RoomId) -> bool {
        self.out().lock().remove_room(room);
        self.rooms.remove(&room).is_some()
    }

    /// Lets go of every room (the hubs stop writing to this connection).
    pub fn clear(&mut self) {
        for room in self.rooms.keys() {
            self.conn.out.lock().remove_room(*room);
        }
        self.rooms.clear();
    }

    /// Subscribes to a room and delivers the events after `since` (if
    /// given); the room is live once [`Self::go_live`] writes its
    /// `subscribed` frame. Returns the last seq delivered, for that frame.
    /// A subscribe to a room already subscribed starts over.
    pub async fn subscribe(&mut self, room: RoomId, since: Option<Seq>) -> Result<Seq, ApiError> {
        if let Some(s) = since {
            chat_core::validate::seq("since_seq", s)?;
        }
        self.unsubscribe(room);
        let r = self.subscribe_steps(room, since).await;
        if r.is_err() {
            // Nothing of a failed subscribe stays: no hub, no cursor.
            self.unsubscribe(room);
        }
        r
    }

    async fn subscribe_steps(&mut self, room: RoomId, since: Option<Seq>) -> Result<Seq, ApiError> {
        let pending = Cursor {
            seq: 0,
            live: false,
        };
        self.out().lock().set_cursor(room, pending);
        let guard = self.deps.hubs.subscribe(room, self.conn.clone()).await?;
        // Held through the access check only: a long catch-up must not
        // hold up every other subscribe on this gateway.
        let turn = self.deps.subscribes.clone();
        let permit = match tokio::time::timeout(self.deps.rpc_timeout, turn.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(ApiError::unavailable(
                    "too many subscribes at once here; retry",
                ))
            }
        };
        let caller = self.conn.caller;
        let last = self.deps.api.rpc().member_last_seq(&caller, room).await?;
        drop(permit);
        guard.baseline(last);
        let cursor = since.map_or(last, |s| s.min(last));
        self.out().lock().set_cursor(
            room,
            Cursor {
                seq: cursor,
                live: false,
            },
        );
        self.rooms.insert(room, guard);
        if since.is_some() {
            // The events the client missed, before `subscribed`. When this
            // fails after part of them went out (the client reads too
            // slowly for the room's history, or the log stopped answering),
            // an error frame would leave it with a partial resume: the
            // connection closes with 4009 instead, and the client resumes
            // from the last event it got. Nothing out yet: an error.
            if let Err(end) = self.catch_up(room, None).await {
                let went_out = self.cursor(room).is_some_and(|c| c > cursor);
                if let (true, End::Close(close)) = (went_out, end) {
                    self.conn.close(close);
                }
                return Err(ApiError::unavailable(
                    "cannot read the room's history; retry",
                ));
            }
        }
        Ok(self.cursor(room).unwrap_or(last))
    }

    /// Subscribes to every room of the user (from `since` where given;
    /// rooms already subscribed stay as they are) and follows the rooms
    /// the user becomes a member of later. A room of `since` the user is
    /// not a member of is tried too, so that the client learns why it is
    /// not subscribed. A room that fails is reported in
    /// [`AllSubscribed::errors`] and the others still subscribe; only an
    /// unreadable room list or a refused session fails the whole frame.
    pub async fn subscribe_all(
        &mut self,
        since: &HashMap<RoomId, Seq>,
    ) -> Result<AllSubscribed, ApiError> {
        let mut rooms: BTreeSet<RoomId> = self
            .deps
            .api
            .my_rooms(&self.conn.caller, usize::MAX)
            .await?
            .into_iter()
            .collect();
        rooms.extend(since.keys().copied());
        let mut all = AllSubscribed::default();
        for room in rooms {
            let last = match self.cursor(room) {
                Some(c) if self.is_subscribed(room) => Ok(c),
                _ => self.subscribe(room, since.get(&room).copied()).await,
            };
            match last {
                Ok(last) => {
                    all.rooms.insert(room.to_string(), last);
                }
                Err(e) if e.code == ErrorCode::Unauthorized => return Err(e),
                // A resume that failed half-way asked for 4009: the client
                // resumes every room from what it got (see `subscribe`).
                Err(e) if self.closing().is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, room_id = %room, "subscribe_all left a room out");
                    all.errors.insert(room.to_string(), e);
                }
            }
        }
        self.all = true;
        Ok(all)
    }

    /// The rooms subscribed.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().copied().collect()
    }

    /// Writes the rooms' `subscribed` (or `subscribed_all`) frame; from
    /// then on their hubs write their events directly.
    pub fn go_live(&self, rooms: &[RoomId], subscribed: &Utf8Bytes) -> Result<(), End> {
        let mut g = self.out().lock();
        g.write(frames::text(subscribed.as_bytes()))?;
        for &room in rooms {
            if let Some(mut c) = g.cursor(room) {
                c.live = true;
                g.set_cursor(room, c);
            }
        }
        Ok(())
    }

    /// Delivers every event after the room's cursor (up to `until`, or to
    /// the end of the log), advancing the cursor. A log that cannot be read
    /// ends the connection with 4009: the client resumes from its cursor.
    async fn catch_up(&self, room: RoomId, until: Option<Seq>) -> Result<(), End> {
        let Some(from) = self.cursor(room) else {
            return Ok(());
        };
        let read = self
            .deps
            .api
            .events_after(self.who(), room, from, until, |events| {
                let mut batch = frames::Builder::new(room);
                for ev in events {
                    if let Some(json) = EventView::of(ev).and_then(|v| serde_json::to_vec(&v).ok())
                    {
                        batch.event(ev.seq, &json);
                    }
                }
                // Events the hub wrote meanwhile are skipped.
                self.out().lock().deliver(&batch.take(), 0, false)?;
                Ok::<_, Caught>(self.cursor(room).unwrap_or(from))
            })
            .await;
        match read {
            Ok(()) => Ok(()),
            Err(Caught::End(end)) => Err(end),
            Err(Caught::Api(error)) => {
                tracing::warn!(%error, room_id = %room, "backfill failed; asking the client to resume");
                Err(End::Close(Close::TOO_SLOW))
            }
        }
    }

    /// What a hub or the registry handed this connection's task.
    pub async fn outbound(&mut self, item: Outbound) -> Result<(), End> {
        match item {
            Outbound::Room { batch, from } => self.room_batch(&batch, from).await,
            Outbound::Membership(m) => self.membership(*m).await,
            Outbound::Recheck => self.recheck_memberships().await,
        }
    }

    /// Ends, with `unsubscribed`, the subscriptions of rooms the user is no
    /// longer a member of (a kick or ban whose notice was lost); under
    /// `subscribe_all`, also follows the rooms joined meanwhile. Runs in
    /// the connection's task, so no subscribe of this connection races it;
    /// a later removal comes as a notice. A session refused meanwhile
    /// closes the connection with 4001.
    async fn recheck_memberships(&mut self) -> Result<(), End> {
        if self.rooms.is_empty() && !self.all {
            return Ok(());
        }
        // Each a call to room: after a reconnect every socket asks at once,
        // so they take turns with the subscribes.
        let turn = self.deps.subscribes.clone();
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.deps.rpc_timeout, turn.acquire_owned()).await
        else {
            tracing::warn!("no turn to re-check memberships");
            return Ok(());
        };
        let mine: BTreeSet<RoomId> =
            match self.deps.api.my_rooms(&self.conn.caller, usize::MAX).await {
                Ok(rooms) => rooms.into_iter().collect(),
                Err(e) if e.code == ErrorCode::Unauthorized => {
                    return Err(End::Close(Close::UNAUTHORIZED.because("session ended")));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot re-check memberships");
                    return Ok(());
                }
            };
        for room in self.rooms() {
            if !mine.contains(&room) && self.unsubscribe(room) {
                tracing::debug!(room_id = %room, "no longer a member: unsubscribed");
                self.send(&encode(&ServerFrame::Unsubscribed {
                    room_id: &room.to_string(),
                    r#ref: None,
                }))?;
            }
        }
        if self.all {
            // Rooms joined meanwhile, followed as their notice would have.
            for room in mine {
                if !self.is_subscribed(room) {
                    let joined = pb::MemberChange {
                        room_id: room.to_string(),
                        user_id: self.conn.caller.user_id.to_string(),
                        joined: true,
                    };
                    Box::pin(self.membership(joined)).await?;
                }
            }
        }
        Ok(())
    }

    /// Room items the hub handed over: written in seq order from the
    /// room's cursor, duplicates dropped, a gap first backfilled from the
    /// log.
    async fn room_batch(&mut self, batch: &Batch, from: usize) -> Result<(), End> {
        let mut from = from;
        loop {
            let Some(gap_at) = self.out().lock().deliver(batch, from, false)? else {
                return Ok(());
            };
            let Some(seq) = batch.items.get(gap_at).and_then(|i| i.seq) else {
                return Ok(());
            };
            self.catch_up(batch.room, Some(seq - 1)).await?;
            let mut g = self.out().lock();
            if let Some(mut c) = g.cursor(batch.room) {
                if c.seq < seq - 1 {
                    // The log has nothing between: never seen, but the
                    // connection must not stall on it.
                    tracing::warn!(room_id = %batch.room, after_seq = c.seq, seq, "the log has a gap");
                    c.seq = seq - 1;
                    g.set_cursor(batch.room, c);
                }
            }
            from = gap_at;
        }
    }

    /// The user became a member of a room (joined, added, created it, or a
    /// DM was opened: followed when subscribed to all) or left it
    /// (`unsubscribed`, unprompted).
    async fn membership(&mut self, m: pb::MemberChange) -> Result<(), End> {
        let Ok(room) = RoomId::parse(&m.room_id) else {
            return Ok(());
        };
        let id = room.to_string();
        if !m.joined {
            if self.unsubscribe(room) {
                self.send(&encode(&ServerFrame::Unsubscribed {
                    room_id: &id,
                    r#ref: None,
                }))?;
            }
            return Ok(());
        }
        if !self.all || self.is_subscribed(room) {
            return Ok(());
        }
        match self.subscribe(room, None).await {
            Ok(last) => {
                let frame = encode(&ServerFrame::Subscribed {
                    room_id: &id,
                    last_seq: last,
                    r#ref: None,
                });
                self.go_live(&[room], &frame)
            }
            Err(e) => {
                tracing::debug!(error = %e, room_id = %room, "cannot follow a joined room");
                Ok(())
            }
        }
    }
}

/// What a `subscribe_all` did, by room id: each subscribed room's last seq
/// delivered, and why each other room is not subscribed.
#[derive(Debug, Default)]
pub struct AllSubscribed {
    pub rooms: BTreeMap<String, Seq>,
    pub errors: BTreeMap<String, ApiError>,
}

/// How a catch-up stopped: room could not be read, or the socket refused.
enum Caught {
    Api(ApiError),
    End(End),
}

impl From<ApiError> for Caught {
    fn from(e: ApiError) -> Self {
        Caught::Api(e)
    }
}

impl From<super::out::Refused> for Caught {
    fn from(r: super::out::Refused) -> Self {
        Caught::End(r.into())
    }
}
