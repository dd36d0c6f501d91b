//! A sending connection's side: numbering its messages, writing their
//! bodies and frames, and keeping what is sent and not yet acked (for the
//! ack latency, and for a resend after a reconnect).

use crate::clock::now_us;
use crate::peers::Peer;
use crate::plan::Plan;
use std::collections::HashMap;
use tokio::time::Instant;

/// A sending connection.
pub(super) struct Sender {
    /// Index among the senders (in `client_msg_id`).
    pub(super) s: usize,
    n: u64,
    /// Sent, not yet acked: ref → (send time, frame for a resend).
    pending: HashMap<u64, (Instant, String)>,
}

impl Sender {
    /// Sender `s`, before its first message.
    pub(super) fn new(s: usize) -> Self {
        Sender {
            s,
            n: 0,
            pending: HashMap::new(),
        }
    }

    /// The next `send` frame to room `room`: ref n, client_msg_id
    /// `<run>-<sender>-<n>`, body `t=<unix µs>;s<sender>n<n>;` padded to
    /// --body-bytes. A peer gets the same body in its protocol's publish
    /// frame. Kept as pending when the protocol acks.
    pub(super) fn next(&mut self, plan: &Plan, room: usize, peer: Option<&Peer>) -> (u64, String) {
        self.n += 1;
        let n = self.n;
        let mut body = format!("t={};s{}n{};", now_us(), self.s, n);
        if body.len() < plan.body_bytes {
            body.extend(std::iter::repeat_n('x', plan.body_bytes - body.len()));
        }
        let frame = match peer {
            Some(p) => p.publish(n, &body),
            None => format!(
                r#"{{"type":"send","ref":{n},"room_id":"{}","client_msg_id":"{}-{}-{n}","body":"{body}"}}"#,
                plan.rooms[room], plan.run_id, self.s
            ),
        };
        if plan.protocol.acks() {
            self.pending.insert(n, (Instant::now(), frame.clone()));
        }
        (n, frame)
    }

    pub(super) fn is_pending(&self, n: u64) -> bool {
        self.pending.contains_key(&n)
    }

    /// Message n is no longer pending (acked or refused): when it was
    /// sent, `None` when it was not pending.
    pub(super) fn settle(&mut self, n: u64) -> Option<Instant> {
        self.pending.remove(&n).map(|(sent_at, _)| sent_at)
    }

    /// The frames sent and not acked, in the order they were sent.
    pub(super) fn unacked(&self) -> Vec<&str> {
        let mut resend: Vec<_> = self.pending.iter().collect();
        resend.sort_by_key(|(n, _)| **n);
        resend.into_iter().map(|(_, (_, f))| f.as_str()).collect()
    }
}
