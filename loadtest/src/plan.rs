//! What every process of a run agrees on: which connection is in which
//! room, as which user, through which gateway, from which source address;
//! and the messages between the parent and the shards (in-process or
//! worker processes, as JSON lines).

use crate::args::{Protocol, Scenario};
use crate::hist::Hist;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The run as the shards see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub run_id: String,
    pub scenario: Scenario,
    /// Ours, or a peer's (then `rooms` is the one channel and `tokens`
    /// is one empty token).
    #[serde(default)]
    pub protocol: Protocol,
    /// pusher: app key and secret (private-channel signatures).
    #[serde(default)]
    pub pusher_key: String,
    #[serde(default)]
    pub pusher_secret: String,
    /// WebSocket URLs (`ws://host:port/ws`); connection i uses i mod len.
    pub ws_urls: Vec<String>,
    pub connections: usize,
    /// Room ids; connection i is in room i mod len.
    pub rooms: Vec<String>,
    /// Access tokens of the users.
    pub tokens: Vec<String>,
    /// Connections 0..senders send.
    pub senders: usize,
    /// Total messages per second.
    pub rate: f64,
    pub body_bytes: usize,
    pub duration_s: f64,
    /// Seconds after sending ends in which an ack still counts as on
    /// time (`acked_on_time`).
    #[serde(default)]
    pub ack_grace_s: f64,
    pub disconnect_after_s: Option<f64>,
    pub source_ips: usize,
    pub connect_concurrency: usize,
    pub connect_timeout_s: f64,
    pub read_buffer: usize,
    /// Unix µs past which everything stops.
    pub deadline_us: u64,
}

impl Plan {
    pub fn room_of(&self, i: usize) -> usize {
        i % self.rooms.len()
    }

    /// The user of connection i: with at least as many users as rooms each
    /// user is in one room (users u ≡ r mod K share room r); with fewer,
    /// user r mod U is in room r. So joins are max(users, rooms).
    pub fn user_of(&self, i: usize) -> usize {
        user_of(i, self.tokens.len(), self.rooms.len())
    }

    pub fn is_sender(&self, i: usize) -> bool {
        i < self.senders
    }

    pub fn url_of(&self, i: usize) -> usize {
        i % self.ws_urls.len()
    }

    /// The source address of connection i (127.0.0.2 and up), when the
    /// run spreads over several.
    pub fn source_of(&self, i: usize) -> Option<Ipv4Addr> {
        source_ip(i, self.source_ips)
    }
}

/// The `i`th of `source_ips` loopback source addresses (127.0.0.2 and up,
/// 253 at most, taken in turn); none when `source_ips` is 0.
pub fn source_ip(i: usize, source_ips: usize) -> Option<Ipv4Addr> {
    let n = source_ips.min(253);
    (n > 0).then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8))
}

/// See [`Plan::user_of`].
pub fn user_of(i: usize, users: usize, rooms: usize) -> usize {
    let (u, k) = (users.max(1), rooms.max(1));
    let r = i % k;
    if u >= k {
        let in_room = (u - r).div_ceil(k);
        r + k * ((i / k) % in_room)
    } else {
        r % u
    }
}

/// One process's share of the connections: `first..first + count`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardSpec {
    pub plan: Plan,
    pub first: usize,
    pub count: usize,
    /// Runtime threads (worker processes).
    pub threads: usize,
}

/// Parent → shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Control {
    /// Start sending (and the reconnect clock) at this unix µs.
    Go { at_us: u64 },
    /// Push every connection's buffered counts into the shard's totals.
    Flush,
    /// Count what is missing against each room's highest acked seq (for
    /// peers: each sender's highest published n), close every connection
    /// and report.
    Finish { max_seq: Vec<i64> },
    /// Close everything and report, without counting losses.
    Abort,
}

/// Shard → parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every connection is subscribed or has failed.
    Ready(Ready),
    Progress(Box<Snapshot>),
    Done(Box<ShardResult>),
    Failed {
        error: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub subscribed: u64,
    pub failed: u64,
    pub subs_per_room: Vec<u64>,
    pub connect_errors: BTreeMap<String, u64>,
    pub pid: u32,
}

/// Running totals of one shard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Connections open now.
    pub open: u64,
    /// Connections that subscribed (initially) / failed to.
    pub subscribed: u64,
    pub failed: u64,
    pub sent: u64,
    pub acked: u64,
    /// Acked (published) by the end of sending + the ack grace.
    #[serde(default)]
    pub acked_on_time: u64,
    pub send_errors: u64,
    pub delivered: u64,
    /// Text frames received and the socket reads that brought them.
    pub frames: u64,
    pub reads: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub reconnects: u64,
    pub acked_per_room: Vec<u64>,
    pub max_seq_per_room: Vec<i64>,
    /// Peers: the highest n each sender published (acked, or sent when
    /// the protocol has no ack).
    #[serde(default)]
    pub max_n_per_sender: Vec<i64>,
    pub latency: Hist,
    pub ack_latency: Hist,
}

/// A shard's final figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardResult {
    pub snapshot: Snapshot,
    pub lost: u64,
    /// Per connection, mass disconnect → `subscribed` after the resume.
    pub recovery: Hist,
    pub closes: BTreeMap<String, u64>,
    pub send_error_codes: BTreeMap<String, u64>,
    pub reconnect_errors: BTreeMap<String, u64>,
    /// Tasks that did not end in time and were aborted.
    pub stuck: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn users_cover_rooms_with_few_joins() {
        for (users, rooms) in [(1, 1), (40, 1), (40, 7), (7, 40), (200, 1000), (1000, 200)] {
            let pairs: BTreeSet<(usize, usize)> = (0..10_000)
                .map(|i| (user_of(i, users, rooms), i % rooms))
                .collect();
            assert_eq!(
                pairs.len(),
                users.max(rooms),
                "{users} users, {rooms} rooms"
            );
            assert!(pairs.iter().all(|&(u, _)| u < users));
        }
    }
}
