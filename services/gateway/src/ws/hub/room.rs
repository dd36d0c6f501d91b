//! One room's hub: its local subscribers, and the task that takes the
//! room's bus subject in, puts it in seq order (an event ahead of a gap
//! waits for the missing ones on the bus, up to the gap wait, then the gap
//! is backfilled from room's log; a duplicate is dropped), renders each
//! event once and hands the batches to the subscribers slice by slice.
//!
//! A room's last events leave no gap on the bus until its next event, so
//! the tail check ([`super::Hubs::check_tails`]) tells each hub where its
//! room's log ends ([`Hub::tail_at`]); a hub behind it backfills. A hub
//! that has delivered nothing yet starts from the seq its first
//! subscriber saw at subscribe time ([`Hub::baseline`]).

use super::batcher::{sleep_until, Batcher, Linger, BATCH_MAX};
use super::fanout::fan_out;
use super::slices::{Rolling, Subscribers};
use crate::metrics::Metrics;
use crate::room_api::{RoomApi, Who};
use crate::wire::{EventView, ServerFrame};
use crate::ws::close::Close;
use crate::ws::frames::Batch;
use chat_bus::Bus;
use chat_core::{ApiError, RoomId, Seq};
use chat_proto::v1 as pb;
use futures_util::{FutureExt, StreamExt};
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Local subscribers above which a room gets no presence or typing frames.
const CROWD: usize = 1000;

/// Events held back behind a gap at most; one more reads the log at once.
const AHEAD_MAX: usize = 1024;

/// What a hub's task needs besides the hub.
pub(super) struct HubDeps {
    pub bus: Arc<dyn Bus>,
    pub subject: String,
    pub api: RoomApi,
    pub metrics: Arc<Metrics>,
    pub linger: Linger,
    /// How long events ahead of a gap wait for the missing ones on the bus.
    pub gap_wait: Duration,
}

pub(super) struct Hub {
    pub room: RoomId,
    subscribers: Mutex<Subscribers>,
    pub stop: CancellationToken,
    /// `None` until the bus subscription is tried, then whether it is in
    /// place.
    pub ready: watch::Receiver<Option<bool>>,
    /// Where the room's log ended at the last tail check (for the task).
    tail: watch::Sender<Seq>,
    /// The lowest seq a subscriber's subscribe found the log at
    /// ([`NO_BASELINE`] until one did): where the task starts from while
    /// it has delivered nothing.
    baseline: AtomicI64,
}

/// No subscribe has told the hub where the log was yet.
const NO_BASELINE: i64 = i64::MAX;

impl Hub {
    /// A hub for `room`, its task started: it subscribes to the room's
    /// subject (see `ready`) and runs until `stop`.
    pub fn start(room: RoomId, deps: HubDeps) -> Arc<Hub> {
        let (ready_tx, ready) = watch::channel(None);
        let (tail, tail_rx) = watch::channel(0);
        let hub = Arc::new(Hub {
            room,
            subscribers: Mutex::new(Subscribers::default()),
            stop: CancellationToken::new(),
            ready,
            tail,
            baseline: AtomicI64::new(NO_BASELINE),
        });
        let pump = Pump {
            room,
            hub: Arc::downgrade(&hub),
            batch: Batcher::new(room, deps.linger),
            rolling: Rolling::default(),
            last: None,
            ahead: BTreeMap::new(),
            gap_wait: deps.gap_wait,
            gap_due: None,
            api: deps.api,
            metrics: deps.metrics,
        };
        let stop = hub.stop.clone();
        tokio::spawn(pump.run(deps.bus, deps.subject, ready_tx, tail_rx, stop));
        hub
    }

    /// A subscriber found the room's log ending at `seq` (after the bus
    /// subscription was live): whatever comes after it reaches the hub by
    /// the bus or is backfilled from here.
    pub fn baseline(&self, seq: Seq) {
        self.baseline.fetch_min(seq, Ordering::Relaxed);
    }

    /// The tail check found the room's log ending at `seq`: the task
    /// backfills up to it if it has not delivered that far.
    pub fn tail_at(&self, seq: Seq) {
        self.tail.send_replace(seq);
    }

    pub fn subs(&self) -> MutexGuard<'_, Subscribers> {
        match self.subscribers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn close_all(&self, close: Close) {
        for conn in self.subs().values() {
            conn.close(close);
        }
    }

    /// Whether this room has more local subscribers than live notices are
    /// worth.
    fn crowded(&self) -> bool {
        self.subs().len() > CROWD
    }
}

/// A hub's task: the bus subscription in, batches out.
struct Pump {
    room: RoomId,
    hub: Weak<Hub>,
    api: RoomApi,
    metrics: Arc<Metrics>,
    /// The last seq this hub delivered; `None` until the first event.
    last: Option<Seq>,
    /// Events that came ahead of a gap, by seq, waiting for it to fill.
    ahead: BTreeMap<Seq, pb::RoomEvent>,
    gap_wait: Duration,
    /// When the oldest open gap stops waiting for the bus.
    gap_due: Option<Instant>,
    batch: Batcher,
    rolling: Rolling,
}

impl Pump {
    async fn run(
        mut self,
        bus: Arc<dyn Bus>,
        subject: String,
        ready: watch::Sender<Option<bool>>,
        mut tail: watch::Receiver<Seq>,
        stop: CancellationToken,
    ) {
        let mut reconnects = bus.reconnects();
        let mut sub = match bus.subscribe(&subject).await {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, room_id = %self.room, "cannot subscribe to room subject");
                let _ = ready.send(Some(false));
                return;
            }
        };
        let _ = ready.send(Some(true));
        while self.hub.strong_count() > 0 {
            let due = self.batch.due();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = reconnects.changed() => {
                    if changed.is_ok() {
                        self.after_reconnect().await;
                    }
                }
                // A pass is under way: what arrived since the last slice
                // joins it, then the next slice gets its write.
                () = std::future::ready(()), if self.rolling.busy() => {
                    if !self.take_in_ready(&mut sub).await {
                        self.ended();
                        break;
                    }
                    self.rolling.seal(&mut self.batch);
                    if !self.hand_off_next().await {
                        break;
                    }
                }
                () = sleep_until(due), if due.is_some() => self.rolling.seal(&mut self.batch),
                () = sleep_until(self.gap_due), if self.gap_due.is_some() => {
                    self.fill_gap().await;
                    self.rolling.seal(&mut self.batch);
                }
                next = sub.next() => {
                    let Some(payload) = next else {
                        self.ended();
                        break;
                    };
                    self.take_in(&payload).await;
                    // Whatever else arrived meanwhile joins this batch (an
                    // end of the subscription shows on the next turn).
                    self.take_in_ready(&mut sub).await;
                    if self.batch.flush_now() {
                        self.rolling.seal(&mut self.batch);
                    }
                }
                // Last: what the bus brought before the check was answered
                // is taken in first, so an event merely in flight at the
                // check is seldom read from the log as well.
                changed = tail.changed() => {
                    if changed.is_ok() {
                        let end = *tail.borrow_and_update();
                        self.at_tail(end).await;
                    }
                }
            }
        }
    }

    /// The bus came back: what was published meanwhile may be lost, and
    /// the room's last events leave no visible gap, so the log is read
    /// again from the last seq delivered.
    async fn after_reconnect(&mut self) {
        if let Some(l) = self.position() {
            tracing::info!(room_id = %self.room, after_seq = l, "bus reconnected; re-reading the log");
            self.backfill(l, None).await;
            self.release_ahead();
            self.rolling.seal(&mut self.batch);
        }
    }

    /// Where the hub stands in the room's log: the last seq delivered, or
    /// (before any) the subscribe-time baseline.
    fn position(&self) -> Option<Seq> {
        self.last.or_else(|| {
            let b = self.hub.upgrade()?.baseline.load(Ordering::Relaxed);
            (b != NO_BASELINE).then_some(b)
        })
    }

    /// The tail check found the log ending at `end`: events up to it that
    /// the bus lost (a quiet room's last ones show no gap) are read from
    /// the log.
    async fn at_tail(&mut self, end: Seq) {
        let Some(from) = self.position() else {
            return;
        };
        if end <= from {
            return;
        }
        tracing::debug!(room_id = %self.room, after_seq = from, seq = end, "behind the log's end; backfilling");
        self.metrics.tail_backfills.inc();
        self.backfill(from, Some(end)).await;
        self.release_ahead();
        self.rolling.seal(&mut self.batch);
    }

    /// The subscription ended (the bus gave up on it): the subscribers
    /// reconnect, to a hub that subscribes again.
    fn ended(&self) {
        tracing::warn!(room_id = %self.room, "room subscription ended");
        if let Some(hub) = self.hub.upgrade() {
            hub.close_all(Close::RESTARTING);
        }
    }

    /// Reads the log after `after` (up to `until`) as the gateway and
    /// queues it for delivery, advancing `last`; false when the log could
    /// not be read.
    async fn backfill(&mut self, after: Seq, until: Option<Seq>) -> bool {
        let (room, api) = (self.room, self.api.clone());
        let mut last = after;
        let read = api
            .events_after(Who::Gateway, room, after, until, |events| {
                for e in events {
                    last = e.seq;
                    self.push_event(e);
                }
                Ok::<_, ApiError>(last)
            })
            .await;
        if let Err(error) = &read {
            tracing::warn!(%error, room_id = %room, "hub backfill failed");
        }
        self.last = Some(self.last.map_or(last, |l| l.max(last)));
        read.is_ok()
    }

    /// One bus payload into the batch: a room event in seq order (one
    /// ahead of a gap held back for it), a duplicate dropped, or a notice.
    async fn take_in(&mut self, payload: &[u8]) {
        match decode(payload) {
            Some(pb::bus_event::Kind::RoomEvent(e)) => {
                if let Some(l) = self.position() {
                    if e.seq <= l || self.ahead.contains_key(&e.seq) {
                        return;
                    }
                    if e.seq > l + 1 {
                        self.ahead.insert(e.seq, e);
                        if self.ahead.len() > AHEAD_MAX {
                            self.fill_gap().await;
                        } else if self.gap_due.is_none() {
                            self.gap_due = Some(Instant::now() + self.gap_wait);
                        }
                        return;
                    }
                }
                self.last = Some(e.seq);
                self.push_event(&e);
                self.release_ahead();
            }
            Some(pb::bus_event::Kind::Typing(t)) if !self.batch.first_typing_of(&t.user_id) => {
                // The batch already tells everyone this user is typing.
            }
            Some(other) => {
                let crowded = self.hub.upgrade().is_some_and(|h| h.crowded());
                if let Some(json) = render_notice(other, crowded) {
                    self.batch.pending.live(&json);
                }
            }
            None => {}
        }
    }

    /// Delivers the held-back events that now continue the room's order
    /// (dropping the ones delivered meanwhile); the gap wait ends when none
    /// is left waiting.
    fn release_ahead(&mut self) {
        while let Some(&seq) = self.ahead.keys().next() {
            let next = self.position().map_or(seq, |l| l + 1);
            if seq > next {
                break;
            }
            if let Some(e) = self.ahead.remove(&seq) {
                if seq == next {
                    self.last = Some(e.seq);
                    self.push_event(&e);
                }
            }
        }
        if self.ahead.is_empty() {
            self.gap_due = None;
        }
    }

    /// The bus left a gap open for the gap wait (or too many events wait
    /// behind it): reads the log up to the last held-back event, the log
    /// being the truth, then lets the rest go.
    async fn fill_gap(&mut self) {
        self.gap_due = None;
        let (Some(l), Some(&until)) = (self.position(), self.ahead.keys().next_back()) else {
            self.release_ahead();
            return;
        };
        tracing::info!(room_id = %self.room, after_seq = l, seq = until, "gap on the bus; backfilling");
        self.metrics.backfills.inc();
        if self.backfill(l, Some(until)).await {
            if self.last.is_some_and(|r| r < until) {
                // Committed events are readable before they are published:
                // one the log lacks was never committed (a forged or stray
                // publish). Taking it would move the room past its real
                // events, which would then be dropped as duplicates.
                tracing::warn!(room_id = %self.room, seq = until, "events ahead of the log; dropped");
            }
            self.ahead.clear();
        } else {
            // Could not read the log: the held-back events go out, and each
            // connection's cursor finds the gap and backfills it itself.
            tracing::warn!(room_id = %self.room, "hub backfill incomplete");
            let ahead = std::mem::take(&mut self.ahead);
            for e in ahead.into_values() {
                if self.position().is_none_or(|l| e.seq > l) {
                    self.last = Some(e.seq);
                    self.push_event(&e);
                }
            }
        }
        self.release_ahead();
    }

    /// Takes in every payload already waiting on the subscription (up to a
    /// full batch) without waiting for more; false when it has ended.
    async fn take_in_ready(&mut self, sub: &mut chat_bus::Subscription) -> bool {
        while self.batch.pending.len() < BATCH_MAX {
            match sub.next().now_or_never() {
                Some(Some(payload)) => self.take_in(&payload).await,
                Some(None) => return false,
                None => break,
            }
        }
        true
    }

    /// The event, encoded once for every connection.
    fn push_event(&mut self, e: &pb::RoomEvent) {
        if let Some(view) = EventView::of(e) {
            match serde_json::to_vec(&view) {
                Ok(json) => self.batch.pending.event(e.seq, &json),
                Err(error) => tracing::error!(%error, "cannot encode an event"),
            }
        }
    }

    /// Writes the next slice that has batches pending (all of them, as one
    /// write per connection); when the pass is over, sets the next linger
    /// from how long it took. False when the hub is gone.
    async fn hand_off_next(&mut self) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return false;
        };
        if let Some((k, parts)) = self.rolling.next() {
            if let Some(b) = Batch::concat(&parts) {
                let subs = hub.subs().list(k);
                if !subs.is_empty() {
                    self.metrics.handoff_frames.observe(b.items.len() as f64);
                    fan_out(&subs, b, &self.metrics).await;
                }
            }
        }
        if let Some(took) = self.rolling.finish() {
            self.metrics.handoff_seconds.observe(took.as_secs_f64());
            self.batch.handed_off_in(took);
        }
        true
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

/// A live notice as the client frame, or `None` when it is not for the
/// room's sockets.
fn render_notice(kind: pb::bus_event::Kind, crowded: bool) -> Option<Vec<u8>> {
    use pb::bus_event::Kind;
    if matches!(kind, Kind::Presence(_) | Kind::Typing(_)) && crowded {
        // In a crowd, every member coming and going (or typing) would be a
        // frame to everyone: N² frames. Clients of large rooms read
        // `online` from the member list instead.
        return None;
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
        Kind::MemberRole(m) => serde_json::to_vec(&ServerFrame::MemberRole {
            room_id: &m.room_id,
            user_id: &m.user_id,
            role: &m.role,
        }),
        Kind::RoomEvent(_) | Kind::SessionRevoked(_) => return None,
    };
    match json {
        Ok(json) => Some(json),
        Err(error) => {
            tracing::error!(%error, "cannot encode a notice");
            None
        }
    }
}
