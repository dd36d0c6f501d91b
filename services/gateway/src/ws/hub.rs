//! Room hubs: one bus subscription per room per gateway, shared by every
//! local connection subscribed to that room, and dropped with the last one.
//!
//! A hub decodes each bus payload once, encodes the client frame once and
//! hands the same bytes to every subscriber's bounded queue. A subscriber
//! whose queue is full is closed with 4009 (it resumes with `since_seq`)
//! rather than slowing the room down or growing memory.

use super::frames::{self, Batch};
use super::out::Refused;
use super::{ConnShared, Outbound};
use crate::backends::{request, retrying, As, Backends};
use crate::metrics::Metrics;
use crate::wire::{EventView, ServerFrame};
use chat_bus::{Bus, Subjects};
use chat_core::{ApiError, RoomId, Seq};
use chat_proto::v1 as pb;
use futures_util::{FutureExt, StreamExt};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Hubs {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    rooms: Mutex<HashMap<RoomId, Arc<Hub>>>,
    backfill: Backfill,
    metrics: Arc<Metrics>,
    linger: Linger,
}

/// How long a busy room's events wait to be written together: `factor`
/// times what the last hand-off took, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Linger {
    pub max: Duration,
    pub factor: f64,
}

impl Linger {
    /// The hand-off may take `1 / (1 + factor)` of the time a busy room's
    /// events keep coming: a third of a core at most for 2, a quarter for 3.
    pub const DEFAULT_FACTOR: f64 = 3.0;

    fn after(&self, took: Duration) -> Duration {
        took.mul_f64(self.factor).min(self.max)
    }
}

/// What a hub needs to read the log: room, and the right to call it on a
/// subscriber's behalf.
#[derive(Clone)]
pub struct Backfill {
    pub backends: Backends,
    pub internal_secret: String,
    pub timeout: Duration,
}

struct Hub {
    room: RoomId,
    metrics: Arc<Metrics>,
    subscribers: Mutex<Subscribers>,
    stop: CancellationToken,
    /// `None` until the bus subscription is tried, then whether it is in
    /// place.
    ready: tokio::sync::watch::Receiver<Option<bool>>,
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
                hubs.remove_if_empty(&self.hub);
            }
        }
    }
}

impl Hubs {
    pub fn new(
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        backfill: Backfill,
        metrics: Arc<Metrics>,
        linger: Linger,
    ) -> Self {
        Self {
            bus,
            subjects,
            rooms: Mutex::new(HashMap::new()),
            backfill,
            metrics,
            linger,
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
            let mut rooms = match self.rooms.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
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

    fn remove_if_empty(&self, hub: &Arc<Hub>) {
        self.remove(hub, true);
    }

    /// Takes the hub out of the map (if it is still the room's hub, and
    /// with `only_if_empty`, if nobody is subscribed) and stops it.
    fn remove(&self, hub: &Arc<Hub>, only_if_empty: bool) {
        let mut rooms = match self.rooms.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if only_if_empty && !hub.subs().is_empty() {
            return;
        }
        if rooms.get(&hub.room).is_some_and(|c| Arc::ptr_eq(c, hub)) {
            rooms.remove(&hub.room);
            hub.stop.cancel();
            self.metrics.hubs.dec();
        }
    }

    /// Rooms with a live hub on this gateway.
    pub fn len(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn start(&self, room: RoomId) -> Arc<Hub> {
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(None);
        self.metrics.hubs.inc();
        let hub = Arc::new(Hub {
            room,
            metrics: self.metrics.clone(),
            subscribers: Mutex::new(Subscribers::default()),
            stop: CancellationToken::new(),
            ready: ready_rx,
        });
        let bus = self.bus.clone();
        let subject = self.subjects.room(room);
        let weak = Arc::downgrade(&hub);
        let backfill = self.backfill.clone();
        let linger = self.linger;
        let mut reconnects = bus.reconnects();
        tokio::spawn(async move {
            let mut sub = match bus.subscribe(&subject).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%error, room_id = %room, "cannot subscribe to room subject");
                    let _ = ready_tx.send(Some(false));
                    return;
                }
            };
            let _ = ready_tx.send(Some(true));
            let stop = match weak.upgrade() {
                Some(h) => h.stop.clone(),
                None => return,
            };
            // The last seq this hub delivered; None until the first event.
            let mut last: Option<Seq> = None;
            let mut batch = Batcher::new(room, linger);
            let mut rolling = Rolling::default();
            loop {
                let due = batch.due();
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    changed = reconnects.changed() => {
                        if changed.is_err() { continue; }
                        let Some(hub) = weak.upgrade() else { break };
                        if let Some(l) = last {
                            tracing::info!(room_id = %room, after_seq = l, "bus reconnected; re-reading the log");
                            last = Some(hub.backfill(&backfill, l, None, &mut batch).await);
                            rolling.seal(&mut batch);
                        }
                    }
                    // A pass is under way: what arrived since the last
                    // slice joins it, then the next slice gets its write.
                    () = std::future::ready(()), if rolling.busy() => {
                        let Some(hub) = weak.upgrade() else { break };
                        if !hub.take_in_ready(&mut sub, &mut last, &mut batch, &backfill).await {
                            tracing::warn!(room_id = %room, "room subscription ended");
                            hub.close_all(1012);
                            break;
                        }
                        rolling.seal(&mut batch);
                        hub.hand_off_next(&mut rolling, &mut batch).await;
                    }
                    () = sleep_until(due), if due.is_some() => rolling.seal(&mut batch),
                    next = sub.next() => {
                        let Some(payload) = next else {
                            tracing::warn!(room_id = %room, "room subscription ended");
                            if let Some(hub) = weak.upgrade() { hub.close_all(1012); }
                            break;
                        };
                        let Some(hub) = weak.upgrade() else { break };
                        hub.take_in(&payload, &mut last, &mut batch, &backfill).await;
                        // Whatever else arrived meanwhile joins this batch
                        // (an end of the subscription shows on the next turn).
                        hub.take_in_ready(&mut sub, &mut last, &mut batch, &backfill).await;
                        if batch.flush_now() {
                            rolling.seal(&mut batch);
                        }
                    }
                }
            }
        });
        hub
    }
}

/// Local subscribers above which a room gets no presence or typing frames.
const CROWD: usize = 1000;

/// Items handed over at once, at most.
const BATCH_MAX: usize = 256;

/// Coalesces a busy room's items: the first item after a quiet spell goes
/// out at once (an idle room adds no latency); items that follow within
/// the linger of the last hand-off wait for the next one, so that each
/// connection gets them with one write.
///
/// The linger adapts to the room: it is a few times what the last hand-off
/// took (writing to every local subscriber), capped by `max_linger`. A
/// room with a handful of subscribers hands off in microseconds and so
/// barely waits; one with 15,000 waits long enough that each connection
/// gets many frames per write, which is what keeps the gateway ahead of a
/// busy room (the cost of a write hardly depends on its size).
struct Batcher {
    policy: Linger,
    linger: Duration,
    pending: frames::Builder,
    last_flush: Instant,
}

impl Batcher {
    fn new(room: RoomId, policy: Linger) -> Self {
        Self {
            policy,
            linger: Duration::ZERO,
            pending: frames::Builder::new(room),
            last_flush: Instant::now()
                .checked_sub(policy.max)
                .unwrap_or_else(Instant::now),
        }
    }

    /// Whether to hand over now rather than at [`Self::due`].
    fn flush_now(&self) -> bool {
        !self.pending.is_empty()
            && (self.linger.is_zero()
                || self.pending.len() >= BATCH_MAX
                || self.last_flush.elapsed() >= self.linger)
    }

    /// When the pending items must go out.
    fn due(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| self.last_flush + self.linger)
    }

    fn take(&mut self) -> Option<Batch> {
        self.last_flush = Instant::now();
        (!self.pending.is_empty()).then(|| self.pending.take())
    }

    /// Sets the next linger from how long a hand-off took.
    fn handed_off_in(&mut self, took: Duration) {
        self.linger = self.policy.after(took);
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn decode(payload: &[u8]) -> Option<pb::bus_event::Kind> {
    match pb::BusEvent::decode(payload) {
        Ok(ev) => ev.kind,
        Err(error) => {
            tracing::warn!(%error, "undecodable bus payload");
            None
        }
    }
}

impl Hub {
    /// Reads the log after `after` (up to `until`) on a subscriber's behalf
    /// and queues it for delivery; returns the last seq queued.
    async fn backfill(
        &self,
        b: &Backfill,
        after: Seq,
        until: Option<Seq>,
        out: &mut Batcher,
    ) -> Seq {
        let mut last = after;
        loop {
            if until.is_some_and(|u| last >= u) {
                return last;
            }
            let Some(caller) = self.any_caller() else {
                return last;
            };
            let limit = until.map_or(200, |u| (u - last).clamp(1, 200) as u32);
            let page = {
                let msg = pb::ListEventsRequest {
                    room_id: self.room.to_string(),
                    after_seq: last,
                    limit,
                };
                retrying(|| {
                    let mut c = b.backends.room.clone();
                    let req = request(
                        msg.clone(),
                        As::User(&caller, &b.internal_secret),
                        b.timeout,
                        None,
                    );
                    async move { c.list_events(req).await }
                })
                .await
            };
            let page = match page {
                Ok(p) => p.into_inner(),
                Err(status) => {
                    let e = ApiError::from(status);
                    tracing::warn!(error = %e, room_id = %self.room, "hub backfill failed");
                    return last;
                }
            };
            let before = last;
            for e in &page.items {
                if e.seq <= last || until.is_some_and(|u| e.seq > u) {
                    continue;
                }
                last = e.seq;
                self.push_event(e, out);
            }
            if !page.has_more || last == before {
                return last;
            }
        }
    }

    /// One bus payload into the batch: a room event in seq order (a gap
    /// first backfilled from the log, a duplicate dropped) or a notice.
    async fn take_in(
        &self,
        payload: &[u8],
        last: &mut Option<Seq>,
        batch: &mut Batcher,
        backfill: &Backfill,
    ) {
        match decode(payload) {
            Some(pb::bus_event::Kind::RoomEvent(e)) => {
                if let Some(l) = *last {
                    if e.seq <= l {
                        return;
                    }
                    if e.seq > l + 1 {
                        tracing::info!(room_id = %self.room, after_seq = l, seq = e.seq, "gap on the bus; backfilling");
                        self.metrics.backfills.inc();
                        let reached = self.backfill(backfill, l, Some(e.seq - 1), batch).await;
                        if reached < e.seq - 1 {
                            // Could not fill it: let each connection's
                            // cursor find the gap and backfill itself.
                            tracing::warn!(room_id = %self.room, "hub backfill incomplete");
                        }
                    }
                }
                *last = Some(e.seq);
                self.push_event(&e, batch);
            }
            Some(other) => self.push_notice(other, batch),
            None => {}
        }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        match self.subscribers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Takes in every payload already waiting on the subscription (up to a
    /// full batch) without waiting for more; false when it has ended.
    async fn take_in_ready(
        &self,
        sub: &mut chat_bus::Subscription,
        last: &mut Option<Seq>,
        batch: &mut Batcher,
        backfill: &Backfill,
    ) -> bool {
        while batch.pending.len() < BATCH_MAX {
            match sub.next().now_or_never() {
                Some(Some(payload)) => self.take_in(&payload, last, batch, backfill).await,
                Some(None) => return false,
                None => break,
            }
        }
        true
    }

    fn any_caller(&self) -> Option<chat_authn::Caller> {
        self.subs().values().next().map(|c| c.caller)
    }

    /// The event, encoded once for every connection.
    fn push_event(&self, e: &pb::RoomEvent, out: &mut Batcher) {
        if let Some(view) = EventView::of(e) {
            match serde_json::to_vec(&view) {
                Ok(json) => out.pending.event(e.seq, &json),
                Err(error) => tracing::error!(%error, "cannot encode an event"),
            }
        }
    }

    fn push_notice(&self, kind: pb::bus_event::Kind, out: &mut Batcher) {
        use pb::bus_event::Kind;
        if matches!(kind, Kind::Presence(_) | Kind::Typing(_)) && self.crowded() {
            // In a crowd, every member coming and going (or typing) would
            // be a frame to everyone: N² frames. Clients of large rooms
            // read `online` from the member list instead.
            return;
        }
        let json = match kind {
            Kind::Typing(t) => serde_json::to_vec(&ServerFrame::Typing {
                room_id: &t.room_id,
                user_id: &t.user_id,
            }),
            Kind::Presence(p) => serde_json::to_vec(&ServerFrame::Presence {
                room_id: &p.room_id,
                user_id: &p.user_id,
                online: p.online,
            }),
            Kind::Member(m) if m.joined => serde_json::to_vec(&ServerFrame::MemberJoined {
                room_id: &m.room_id,
                user_id: &m.user_id,
            }),
            Kind::Member(m) => serde_json::to_vec(&ServerFrame::MemberLeft {
                room_id: &m.room_id,
                user_id: &m.user_id,
            }),
            Kind::RoomEvent(_) | Kind::SessionRevoked(_) => return,
        };
        match json {
            Ok(json) => out.pending.live(&json),
            Err(error) => tracing::error!(%error, "cannot encode a notice"),
        }
    }

    /// Whether this room has more local subscribers than live notices are
    /// worth.
    fn crowded(&self) -> bool {
        self.subs().len() > CROWD
    }

    /// Writes the next slice that has batches pending (all of them, as one
    /// write per connection); when the pass is over, sets the next linger
    /// from how long it took.
    async fn hand_off_next(&self, rolling: &mut Rolling, batch: &mut Batcher) {
        if let Some((k, parts)) = rolling.next() {
            if let Some(b) = Batch::concat(&parts) {
                let subs = self.subs().list(k);
                if !subs.is_empty() {
                    self.metrics.handoff_frames.observe(b.items.len() as f64);
                    self.fan_out(&subs, b).await;
                }
            }
        }
        if let Some(took) = rolling.finish() {
            self.metrics.handoff_seconds.observe(took.as_secs_f64());
            batch.handed_off_in(took);
        }
    }

    /// The same bytes to every connection of a slice. A large slice is
    /// split over the runtime's worker threads (the writes are the
    /// gateway's main cost); the hand-off ends when every part is done, so
    /// a connection's batches never overtake each other.
    async fn fan_out(&self, subs: &Arc<[Arc<ConnShared>]>, batch: Arc<Batch>) {
        let parts = if subs.len() >= PARALLEL_FANOUT_MIN {
            tokio::runtime::Handle::current()
                .metrics()
                .num_workers()
                .clamp(1, 8)
        } else {
            1
        };
        let chunk = subs.len().div_ceil(parts).max(1);
        let mut others = Vec::with_capacity(parts.saturating_sub(1));
        for start in (chunk..subs.len()).step_by(chunk) {
            let (subs, batch, metrics) = (subs.clone(), batch.clone(), self.metrics.clone());
            others.push(tokio::spawn(async move {
                let end = (start + chunk).min(subs.len());
                deliver_to(&subs[start..end], &batch, &metrics);
            }));
        }
        deliver_to(&subs[..chunk.min(subs.len())], &batch, &self.metrics);
        for part in others {
            let _ = part.await;
        }
        self.metrics
            .deliveries
            .inc_by((subs.len() * batch.items.len()) as u64);
    }

    fn close_all(&self, code: u16) {
        for conn in self.subs().values() {
            conn.close(code);
        }
    }
}

/// Connections of a slice above which its hand-off is split over worker
/// threads.
const PARALLEL_FANOUT_MIN: usize = 1024;

/// A room's local connections are written in this many slices (by
/// connection id), one after another; the events that arrive meanwhile go
/// to the next slices at once. So an event waits for at most one pass over
/// the room (plus its slice's turn), not for a whole pass to end and
/// another to reach it: in a room busy enough that passes run back to
/// back, that halves the worst latency for the same number of writes.
const SLICES: usize = 8;

/// A room's local connections by slice, and a list of each slice for
/// hand-offs (built again only when someone joins or leaves it).
#[derive(Default)]
struct Subscribers {
    slices: [HashMap<u64, Arc<ConnShared>>; SLICES],
    lists: [Option<Arc<[Arc<ConnShared>]>>; SLICES],
}

fn slice_of(id: u64) -> usize {
    (id % SLICES as u64) as usize
}

impl Subscribers {
    fn insert(&mut self, conn: Arc<ConnShared>) {
        let k = slice_of(conn.id);
        self.slices[k].insert(conn.id, conn);
        self.lists[k] = None;
    }

    fn remove(&mut self, id: u64) {
        let k = slice_of(id);
        if self.slices[k].remove(&id).is_some() {
            self.lists[k] = None;
        }
    }

    fn len(&self) -> usize {
        self.slices.iter().map(HashMap::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.slices.iter().all(HashMap::is_empty)
    }

    fn values(&self) -> impl Iterator<Item = &Arc<ConnShared>> {
        self.slices.iter().flat_map(HashMap::values)
    }

    fn list(&mut self, k: usize) -> Arc<[Arc<ConnShared>]> {
        let slice = &self.slices[k];
        self.lists[k]
            .get_or_insert_with(|| slice.values().cloned().collect())
            .clone()
    }
}

/// The batches each slice has yet to get, and the pass under way.
#[derive(Default)]
struct Rolling {
    pending: [Vec<Arc<Batch>>; SLICES],
    next: usize,
    pass: Option<Instant>,
}

impl Rolling {
    fn busy(&self) -> bool {
        self.pass.is_some()
    }

    /// What the batcher holds goes to every slice.
    fn seal(&mut self, batch: &mut Batcher) {
        if let Some(b) = batch.take() {
            let b = Arc::new(b);
            for p in &mut self.pending {
                p.push(b.clone());
            }
            self.pass.get_or_insert_with(Instant::now);
        }
    }

    /// The next slice (round robin) with batches pending, and them.
    fn next(&mut self) -> Option<(usize, Vec<Arc<Batch>>)> {
        for i in 0..SLICES {
            let k = (self.next + i) % SLICES;
            if !self.pending[k].is_empty() {
                self.next = (k + 1) % SLICES;
                return Some((k, std::mem::take(&mut self.pending[k])));
            }
        }
        None
    }

    /// Ends the pass when every slice is served: how long it took.
    fn finish(&mut self) -> Option<Duration> {
        if self.pending.iter().all(Vec::is_empty) {
            self.pass.take().map(|t| t.elapsed())
        } else {
            None
        }
    }
}

/// Writes a batch to each connection whose cursor is where the batch
/// starts (one write, no wake-up), or queues it for the connection's task
/// (subscribing, or a gap to backfill). A connection too slow to take it
/// is closed with 4009.
fn deliver_to(subs: &[Arc<ConnShared>], batch: &Arc<Batch>, metrics: &Metrics) {
    for conn in subs {
        let handoff = conn.out.lock().deliver(batch, 0, true);
        let too_slow = match handoff {
            Ok(None) | Err(Refused::Dead) => false,
            Ok(Some(from)) => {
                let item = Outbound::Room {
                    batch: batch.clone(),
                    from,
                };
                matches!(conn.tx.try_send(item), Err(TrySendError::Full(_)))
            }
            Err(Refused::Full) => true,
        };
        if too_slow {
            metrics.slow_closes.inc();
            conn.close(4009);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linger(max: Duration) -> Linger {
        Linger {
            max,
            factor: Linger::DEFAULT_FACTOR,
        }
    }

    #[test]
    fn a_quiet_room_hands_over_at_once_and_a_busy_one_in_batches() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_secs(60)));
        assert!(b.due().is_none());
        b.pending.event(1, b"{}");
        assert!(
            b.flush_now(),
            "the first event after a quiet spell is not delayed"
        );
        assert_eq!(b.take().map(|t| t.first), Some(Some(1)));
        b.handed_off_in(Duration::from_secs(10));

        b.pending.event(2, b"{}");
        b.pending.event(3, b"{}");
        assert!(
            !b.flush_now(),
            "events right after a slow hand-off wait for the linger"
        );
        let due = b.due().expect("due");
        assert!(due > Instant::now() + Duration::from_secs(25));
        let t = b.take().expect("a batch");
        assert_eq!((t.first, t.last, t.items.len()), (Some(2), Some(3), 2));
        assert!(b.take().is_none());
    }

    #[test]
    fn the_linger_follows_the_hand_off_time_up_to_the_cap() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_millis(100)));
        b.handed_off_in(Duration::from_micros(20));
        assert_eq!(b.linger, Duration::from_micros(60));
        b.handed_off_in(Duration::from_millis(20));
        assert_eq!(b.linger, Duration::from_millis(60));
        b.handed_off_in(Duration::from_millis(80));
        assert_eq!(b.linger, Duration::from_millis(100));
    }

    #[test]
    fn the_factor_sets_the_linger_and_zero_turns_it_off() {
        let mut b = Batcher::new(
            RoomId::new(),
            Linger {
                max: Duration::from_millis(100),
                factor: 0.5,
            },
        );
        b.handed_off_in(Duration::from_millis(20));
        assert_eq!(b.linger, Duration::from_millis(10));
        b.policy.factor = 0.0;
        b.handed_off_in(Duration::from_millis(20));
        b.pending.event(1, b"{}");
        assert!(b.flush_now(), "no wait after a hand-off");
    }

    #[test]
    fn a_full_batch_goes_out_without_waiting() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_secs(60)));
        b.pending.event(0, b"{}");
        b.take();
        b.handed_off_in(Duration::from_secs(60));
        for s in 1..BATCH_MAX as Seq {
            b.pending.event(s, b"{}");
            assert!(!b.flush_now());
        }
        b.pending.event(BATCH_MAX as Seq, b"{}");
        assert!(b.flush_now());
    }

    #[test]
    fn no_linger_means_no_batching() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::ZERO));
        b.pending.event(1, b"{}");
        assert!(b.flush_now());
        b.take();
        b.handed_off_in(Duration::from_millis(5));
        b.pending.event(2, b"{}");
        assert!(b.flush_now());
    }
}
