//! The shard's totals: what every connection task pushes its buffered
//! counts into (atomics, and a few mutex-held histograms and maps), and
//! what the shard reports from them: [`Ready`] once every connection is
//! subscribed or failed, a [`Snapshot`] as progress, a [`ShardResult`]
//! at the end.

use crate::hist::Hist;
use crate::plan::{Ready, ShardResult, Snapshot};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Counts one more `key`.
pub(super) fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

fn take_map(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock().map(|m| m.clone()).unwrap_or_default()
}

/// The shard's totals.
pub(super) struct Stats {
    pub(super) open: AtomicU64,
    pub(super) subscribed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) subs_per_room: Vec<AtomicU64>,
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) acked_on_time: AtomicU64,
    pub(super) send_errors: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) frames: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) duplicated: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) lost: AtomicU64,
    pub(super) acked_per_room: Vec<AtomicU64>,
    pub(super) max_seq_per_room: Vec<AtomicI64>,
    /// Peers: per sender, the highest n published.
    pub(super) max_n_per_sender: Vec<AtomicI64>,
    pub(super) latency: Mutex<Hist>,
    pub(super) ack_latency: Mutex<Hist>,
    pub(super) recovery: Mutex<Hist>,
    pub(super) connect_errors: Mutex<BTreeMap<String, u64>>,
    pub(super) closes: Mutex<BTreeMap<String, u64>>,
    pub(super) send_error_codes: Mutex<BTreeMap<String, u64>>,
    pub(super) reconnect_errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// `senders`: the peer senders whose highest n is tracked (0 for chat).
    pub(super) fn new(rooms: usize, senders: usize) -> Self {
        Stats {
            open: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            subs_per_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_on_time: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            acked_per_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            max_seq_per_room: (0..rooms).map(|_| AtomicI64::new(0)).collect(),
            max_n_per_sender: (0..senders).map(|_| AtomicI64::new(0)).collect(),
            latency: Mutex::new(Hist::new()),
            ack_latency: Mutex::new(Hist::new()),
            recovery: Mutex::new(Hist::new()),
            connect_errors: Mutex::default(),
            closes: Mutex::default(),
            send_error_codes: Mutex::default(),
            reconnect_errors: Mutex::default(),
        }
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let hist = |m: &Mutex<Hist>| m.lock().map(|h| h.clone()).unwrap_or_default();
        Snapshot {
            open: self.open.load(Relaxed),
            subscribed: self.subscribed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            acked_on_time: self.acked_on_time.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            frames: self.frames.load(Relaxed),
            reads: self.reads.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            acked_per_room: self
                .acked_per_room
                .iter()
                .map(|a| a.load(Relaxed))
                .collect(),
            max_seq_per_room: self
                .max_seq_per_room
                .iter()
                .map(|a| a.load(Relaxed))
                .collect(),
            max_n_per_sender: self
                .max_n_per_sender
                .iter()
                .map(|a| a.load(Relaxed))
                .collect(),
            latency: hist(&self.latency),
            ack_latency: hist(&self.ack_latency),
        }
    }

    /// Every connection is subscribed or failed: who subscribed where,
    /// and why the others failed.
    pub(super) fn ready(&self) -> Ready {
        Ready {
            subscribed: self.subscribed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            subs_per_room: self.subs_per_room.iter().map(|a| a.load(Relaxed)).collect(),
            connect_errors: take_map(&self.connect_errors),
            pid: std::process::id(),
        }
    }

    /// The shard's final figures; `stuck` tasks were aborted.
    pub(super) fn result(&self, stuck: u64) -> ShardResult {
        ShardResult {
            snapshot: self.snapshot(),
            lost: self.lost.load(Relaxed),
            recovery: self.recovery.lock().map(|h| h.clone()).unwrap_or_default(),
            closes: take_map(&self.closes),
            send_error_codes: take_map(&self.send_error_codes),
            reconnect_errors: take_map(&self.reconnect_errors),
            stuck,
        }
    }
}
