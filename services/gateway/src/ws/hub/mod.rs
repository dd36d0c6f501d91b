//! Room hubs: one bus subscription per room per gateway, shared by every
//! local connection subscribed to that room, and dropped with the last one.
//!
//! A hub decodes each bus payload once, encodes the client frame once and
//! writes the same bytes to every subscriber ([`fanout`]), a busy room's
//! events batched ([`batcher`]) and its connections served in slices
//! ([`slices`]). A subscriber too slow to take them is closed with 4009
//! (it resumes with `since_seq`) rather than slowing the room down or
//! growing memory. [`room`] is one hub and its task.
//!
//! The layers: `mod` (the map of hubs) -> `room` (one hub's task) ->
//! `batcher`, `slices`, `fanout`.
//!
//! The bus may reorder a room's events (a room replica publishes a
//! commit's events from several tasks) and may lose a publish. An event
//! ahead of the next one expected waits up to `--bus-gap-wait-ms` for the
//! missing ones on the bus; a gap still open then is backfilled from the
//! log; a room's *last* events show none, so the tail check
//! ([`Hubs::check_tails`], every `--tail-check-ms`) asks room, in one call
//! for all the rooms with local subscribers, where each log ends, and each
//! hub behind its log backfills. An acknowledged event thus reaches every
//! subscribed connection within one interval plus a log read of its
//! commit, whatever the bus lost.

mod batcher;
mod fanout;
mod room;
mod slices;

pub use batcher::Linger;

use crate::metrics::Metrics;
use crate::room_api::{RoomApi, LAST_SEQS_BATCH};
use crate::ws::shared::ConnShared;
use chat_bus::{Bus, Subjects};
use chat_core::{ApiError, RoomId, Seq};
use room::{Hub, HubDeps};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The room hubs of this gateway.
pub struct Hubs {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    rooms: Mutex<HashMap<RoomId, Arc<Hub>>>,
    api: RoomApi,
    metrics: Arc<Metrics>,
    linger: Linger,
    /// How long an event ahead of a gap waits for the missing events on
    /// the bus before the log is read.
    gap_wait: Duration,
}

/// Keeps a connection subscribed to a room; dropping it unsubscribes.
pub struct HubGuard {
    hubs: Weak<Hubs>,
    hub: Arc<Hub>,
    conn: u64,
}

impl Drop for HubGuard {
    fn drop(&mut self) {
        let empty = {
            let mut subs = self.hub.subs();
            subs.remove(self.conn);
            subs.is_empty()
        };
        if empty {
            if let Some(hubs) = self.hubs.upgrade() {
                hubs.remove(&self.hub, true);
            }
        }
    }
}

impl HubGuard {
    /// The subscribe found the room's log ending at `seq`, after the hub's
    /// bus subscription was live: a hub that has delivered nothing yet
    /// starts from there (see [`Hubs::check_tails`]).
    pub fn baseline(&self, seq: Seq) {
        self.hub.baseline(seq);
    }
}

impl Hubs {
    /// Hubs that read a room's log through `api` (as the gateway) to fill
    /// the gaps the bus leaves open for longer than `gap_wait`.
    pub fn new(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        api: RoomApi,
        metrics: Arc<Metrics>,
        linger: Linger,
        gap_wait: Duration,
    ) -> Self {
        Self {
            bus,
            subjects,
            rooms: Mutex::new(HashMap::new()),
            api,
            metrics,
            linger,
            gap_wait,
        }
    }

    /// Adds a connection to the room's hub, creating the hub (and its bus
    /// subscription) if this is the room's first subscriber here. Returns
    /// once the bus subscription is live, so nothing published after this
    /// returns can be missed by the hub; `unavailable` when the bus could
    /// not subscribe (the hub is dropped: the next subscribe tries again).
    pub async fn subscribe(
        self: &Arc<Self>,
        room: RoomId,
        conn: Arc<ConnShared>,
    ) -> Result<HubGuard, ApiError> {
        let hub = {
            let mut rooms = self.lock();
            let hub = rooms
                .entry(room)
                .or_insert_with(|| self.start(room))
                .clone();
            hub.subs().insert(conn.clone());
            hub
        };
        let mut ready = hub.ready.clone();
        let live = ready
            .wait_for(Option::is_some)
            .await
            .is_ok_and(|r| *r == Some(true));
        let guard = HubGuard {
            hubs: Arc::downgrade(self),
            hub,
            conn: conn.id,
        };
        if !live {
            self.remove(&guard.hub, false);
            return Err(ApiError::unavailable(
                "cannot subscribe to the room's events; retry",
            ));
        }
        Ok(guard)
    }

    /// The tail check, every `every` until `stop` (or until the hubs are
    /// gone): see [`Self::check_tails_once`].
    pub async fn check_tails(hubs: Weak<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(hubs) = hubs.upgrade() else {
                return;
            };
            hubs.check_tails_once().await;
        }
    }

    /// Asks room where the log of every room with a hub here ends, in one
    /// call (per [`LAST_SEQS_BATCH`] rooms), and tells each hub; a hub
    /// behind backfills. Nothing runs per message: one call per interval.
    pub async fn check_tails_once(&self) {
        let hubs: Vec<Arc<Hub>> = self.lock().values().cloned().collect();
        for chunk in hubs.chunks(LAST_SEQS_BATCH) {
            let rooms: Vec<RoomId> = chunk.iter().map(|h| h.room).collect();
            match self.api.rpc().last_seqs(&rooms).await {
                Ok(ends) => {
                    let ends: HashMap<RoomId, Seq> = ends.into_iter().collect();
                    for hub in chunk {
                        if let Some(&end) = ends.get(&hub.room) {
                            hub.tail_at(end);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, rooms = rooms.len(), "tail check failed");
                }
            }
        }
    }

    /// Rooms with a live hub on this gateway.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Arc<Hub>>> {
        match self.rooms.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Takes the hub out of the map (if it is still the room's hub, and
    /// with `only_if_empty`, if nobody is subscribed) and stops it.
    fn remove(&self, hub: &Arc<Hub>, only_if_empty: bool) {
        let mut rooms = self.lock();
        if only_if_empty && !hub.subs().is_empty() {
            return;
        }
        if rooms.get(&hub.room).is_some_and(|c| Arc::ptr_eq(c, hub)) {
            rooms.remove(&hub.room);
            hub.stop.cancel();
            self.metrics.hubs.dec();
        }
    }

    fn start(&self, room: RoomId) -> Arc<Hub> {
        self.metrics.hubs.inc();
        Hub::start(
            room,
            HubDeps {
                bus: self.bus.clone(),
                subject: self.subjects.room(room),
                api: self.api.clone(),
                metrics: self.metrics.clone(),
                linger: self.linger,
                gap_wait: self.gap_wait,
            },
        )
    }
}
