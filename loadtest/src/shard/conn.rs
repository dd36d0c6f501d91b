//! One connection's checks and accounting: what each frame from the
//! server means (delivery, ack, `subscribed`, refusal), every delivery's
//! seq through a [`SeqCheck`] (or, for a peer, each sender's `n` through
//! [`PerSender`]), and the counts and latencies kept in the task and
//! flushed into the shard's totals ([`Stats`](super::stats::Stats))
//! every 64 deliveries or 250 ms, so there is no shared write per
//! delivery.

use super::ctx::Ctx;
use super::send::Sender;
use super::stats::bump;
use crate::clock::now_us;
use crate::peers::{Got, Peer, PerSender};
use crate::plan::Plan;
use crate::scan::{self, Kind, Ref};
use crate::seqcheck::{Seen, SeqCheck};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

/// What a connection is waiting for after a subscribe.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum SubWait {
    Initial,
    Resume,
}

/// One connection: its checks and its buffered counts.
pub(super) struct Conn {
    pub(super) idx: usize,
    pub(super) room: usize,
    pub(super) seq: SeqCheck,
    pub(super) sub: Option<SubWait>,
    pub(super) subscribed: bool,
    delivered: u64,
    /// Frames and socket reads since the last flush.
    pub(super) frames: u64,
    pub(super) reads: u64,
    duplicated: u64,
    out_of_order: u64,
    lat: Vec<u64>,
    last_flush_us: u64,
    pub(super) sender: Option<Sender>,
    /// A sender's acks up to this instant count as on time.
    pub(super) on_time_until: Option<Instant>,
    pub(super) dropped_at: Option<Instant>,
    /// A refused first subscribe that is worth repeating (the server was
    /// busy) goes again at this time; how many times it went.
    pub(super) resubscribe_at: Option<Instant>,
    subscribe_attempts: u32,
}

/// Server answers to a first subscribe that a client retries (with
/// backoff, within --connect-timeout) instead of giving up: an overload.
const RETRYABLE: [&str; 2] = ["unavailable", "rate_limited"];

const FLUSH_EVERY: usize = 64;
const FLUSH_US: u64 = 250_000;

impl Conn {
    /// Connection `idx` of `plan`, not yet connected.
    pub(super) fn new(plan: &Plan, idx: usize) -> Self {
        Conn {
            idx,
            room: plan.room_of(idx),
            seq: SeqCheck::after(0),
            sub: None,
            subscribed: false,
            delivered: 0,
            frames: 0,
            reads: 0,
            duplicated: 0,
            out_of_order: 0,
            lat: Vec::with_capacity(FLUSH_EVERY),
            last_flush_us: now_us(),
            sender: plan.is_sender(idx).then(|| Sender::new(idx)),
            on_time_until: None,
            dropped_at: None,
            resubscribe_at: None,
            subscribe_attempts: 0,
        }
    }

    pub(super) fn subscribe_frame(&self, ctx: &Ctx, since: Option<i64>) -> String {
        let room = &ctx.plan.rooms[self.room];
        match since {
            None => format!(r#"{{"type":"subscribe","ref":"sub","room_id":"{room}"}}"#),
            Some(s) => {
                format!(r#"{{"type":"subscribe","ref":"sub","room_id":"{room}","since_seq":{s}}}"#)
            }
        }
    }

    /// The next message, when this connection sends (see
    /// [`Sender::next`]).
    pub(super) fn next_send(&mut self, ctx: &Ctx, peer: Option<&Peer>) -> Option<(u64, String)> {
        let room = self.room;
        Some(self.sender.as_mut()?.next(&ctx.plan, room, peer))
    }

    fn on_seq(&mut self, seq: i64) {
        let seen = self.seq.see(seq);
        self.count(seen);
    }

    /// Counts one delivery's outcome.
    fn count(&mut self, seen: Seen) {
        match seen {
            Seen::InOrder => self.delivered += 1,
            Seen::OutOfOrder => {
                self.delivered += 1;
                self.out_of_order += 1;
            }
            Seen::Duplicate => self.duplicated += 1,
        }
    }

    /// Keeps a delivery's latency (µs, when known), flushing the counts
    /// when due.
    fn after_delivery(&mut self, ctx: &Ctx, latency_us: Option<u64>, now: u64) {
        if let Some(us) = latency_us {
            self.lat.push(us);
        }
        if self.lat.len() >= FLUSH_EVERY
            || self.delivered >= FLUSH_EVERY as u64
            || now.saturating_sub(self.last_flush_us) >= FLUSH_US
        {
            self.flush(ctx, now);
        }
    }

    /// Handles a text frame; `Err` ends the connection (failed subscribe).
    /// `now` is the arrival time (unix µs) of the read that brought it.
    pub(super) fn on_frame(&mut self, ctx: &Ctx, f: &[u8], now: u64) -> Result<(), String> {
        match scan::kind(f) {
            Kind::Message => {
                if let Some((seq, t)) = scan::message(f) {
                    self.on_seq(seq);
                    self.after_delivery(ctx, t.map(|t| now.saturating_sub(t)), now);
                }
            }
            Kind::Ack => self.on_ack(ctx, f),
            Kind::Subscribed => self.on_subscribed(ctx, f),
            Kind::Error => {
                let code = scan::str_after(f, b"\"code\":\"").unwrap_or("unknown");
                match scan::reference(f) {
                    Some(Ref::Str(b"sub")) => {
                        if self.sub == Some(SubWait::Initial) {
                            if RETRYABLE.contains(&code) && self.subscribe_attempts < 30 {
                                // 250 ms doubling up to 8 s, spread by
                                // connection over up to a second, so a
                                // storm of retries thins out.
                                let backoff = 250u64 << self.subscribe_attempts.min(5);
                                let spread = (self.idx as u64 * 7919) % 1000;
                                self.subscribe_attempts += 1;
                                self.resubscribe_at =
                                    Some(Instant::now() + Duration::from_millis(backoff + spread));
                                bump(
                                    &ctx.stats.connect_errors,
                                    format!("subscribe retried: {code}"),
                                );
                                return Ok(());
                            }
                            return Err(format!("subscribe refused: {code}"));
                        }
                        bump(
                            &ctx.stats.reconnect_errors,
                            format!("resubscribe refused: {code}"),
                        );
                    }
                    Some(Ref::Num(n)) => {
                        if self.sender.as_ref().is_some_and(|s| s.is_pending(n)) {
                            self.refused(ctx, n, code);
                        }
                    }
                    _ => bump(
                        &ctx.stats.send_error_codes,
                        format!("unsolicited error: {code}"),
                    ),
                }
            }
            Kind::Other => {}
        }
        Ok(())
    }

    fn on_ack(&mut self, ctx: &Ctx, f: &[u8]) {
        let Some(Ref::Num(n)) = scan::reference(f) else {
            return;
        };
        if !self.acked(ctx, n) {
            return;
        }
        if let Some((seq, _)) = scan::int_after(f, b"\"seq\":") {
            ctx.stats.max_seq_per_room[self.room].fetch_max(seq, Relaxed);
        }
    }

    /// Message n was acked: its ack latency and the counts. `false` when
    /// it was not pending (a resend after a reconnect is acked again:
    /// the first ack counts).
    fn acked(&mut self, ctx: &Ctx, n: u64) -> bool {
        let Some(s) = self.sender.as_mut() else {
            return false;
        };
        let Some(sent_at) = s.settle(n) else {
            return false;
        };
        let us = sent_at.elapsed().as_micros() as u64;
        if let Ok(mut h) = ctx.stats.ack_latency.lock() {
            h.record(us);
        }
        self.published(ctx, n);
        true
    }

    /// Message n counts as published (acked, or written when the peer's
    /// protocol has no ack).
    pub(super) fn published(&mut self, ctx: &Ctx, n: u64) {
        ctx.stats.acked.fetch_add(1, Relaxed);
        if self.on_time_until.is_some_and(|t| Instant::now() <= t) {
            ctx.stats.acked_on_time.fetch_add(1, Relaxed);
        }
        ctx.stats.acked_per_room[self.room].fetch_add(1, Relaxed);
        if let Some(s) = &self.sender {
            if let Some(max) = ctx.stats.max_n_per_sender.get(s.s) {
                max.fetch_max(n as i64, Relaxed);
            }
        }
    }

    /// The server refused message n: a send error with its reason.
    fn refused(&mut self, ctx: &Ctx, n: u64, code: &str) {
        let was_pending = self.sender.as_mut().is_some_and(|s| s.settle(n).is_some());
        if was_pending {
            ctx.stats.send_errors.fetch_add(1, Relaxed);
            bump(&ctx.stats.send_error_codes, code.to_string());
        } else {
            bump(
                &ctx.stats.send_error_codes,
                format!("unsolicited error: {code}"),
            );
        }
    }

    /// Handles a peer's text frame; `Err` ends the connection (refused
    /// before it was subscribed).
    pub(super) fn on_peer_frame(
        &mut self,
        ctx: &Ctx,
        peer: &mut PeerConn,
        f: &[u8],
        now: u64,
    ) -> Result<(), String> {
        let PeerConn { proto, from } = peer;
        let mut refused = None;
        proto.on_frame(f, |got| match got {
            Got::Body(b) => {
                if let Some(seen) = from.see(b.sender, b.n) {
                    self.count(seen);
                    self.after_delivery(ctx, Some(now.saturating_sub(b.t)), now);
                }
            }
            Got::Subscribed => {
                if self.sub == Some(SubWait::Initial) {
                    self.subscribed_after(ctx, 0);
                }
            }
            Got::Ack(n) => {
                self.acked(ctx, n);
            }
            Got::SendRefused(n, why) => self.refused(ctx, n, &why),
            Got::Refused(why) if !self.subscribed => refused = Some(why),
            Got::Refused(why) => bump(&ctx.stats.closes, why),
        });
        refused.map_or(Ok(()), Err)
    }

    fn on_subscribed(&mut self, ctx: &Ctx, f: &[u8]) {
        let last = scan::int_after(f, b"\"last_seq\":").map_or(0, |x| x.0);
        match self.sub.take() {
            Some(SubWait::Initial) => self.subscribed_after(ctx, last),
            Some(SubWait::Resume) => {
                if let Some(t) = self.dropped_at.take() {
                    if let Ok(mut h) = ctx.stats.recovery.lock() {
                        h.record(t.elapsed().as_micros() as u64);
                    }
                }
            }
            None => {}
        }
    }

    /// The initial subscribe succeeded; the room was at seq `last`.
    pub(super) fn subscribed_after(&mut self, ctx: &Ctx, last: i64) {
        self.sub = None;
        self.seq = SeqCheck::after(last);
        self.subscribed = true;
        ctx.stats.subscribed.fetch_add(1, Relaxed);
        ctx.stats.subs_per_room[self.room].fetch_add(1, Relaxed);
    }

    pub(super) fn flush(&mut self, ctx: &Ctx, now: u64) {
        let st = &ctx.stats;
        if self.delivered > 0 {
            st.delivered.fetch_add(self.delivered, Relaxed);
            self.delivered = 0;
        }
        if self.reads > 0 {
            st.reads.fetch_add(self.reads, Relaxed);
            st.frames.fetch_add(self.frames, Relaxed);
            self.reads = 0;
            self.frames = 0;
        }
        if self.duplicated > 0 {
            st.duplicated.fetch_add(self.duplicated, Relaxed);
            self.duplicated = 0;
        }
        if self.out_of_order > 0 {
            st.out_of_order.fetch_add(self.out_of_order, Relaxed);
            self.out_of_order = 0;
        }
        if !self.lat.is_empty() {
            if let Ok(mut h) = st.latency.lock() {
                for &v in &self.lat {
                    h.record(v);
                }
            }
            self.lat.clear();
        }
        self.last_flush_us = now;
    }

    /// Seqs up to the room's highest acked one that never arrived.
    pub(super) fn lost(&self, max_seq: i64) -> u64 {
        self.seq.lost(max_seq)
    }
}

/// A peer connection's protocol state and its per-sender checks.
pub(super) struct PeerConn {
    pub(super) proto: Peer,
    pub(super) from: PerSender,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn {
            idx: 0,
            room: 0,
            seq: SeqCheck::after(10),
            sub: None,
            subscribed: true,
            delivered: 0,
            frames: 0,
            reads: 0,
            duplicated: 0,
            out_of_order: 0,
            lat: Vec::new(),
            last_flush_us: 0,
            sender: None,
            on_time_until: None,
            dropped_at: None,
            resubscribe_at: None,
            subscribe_attempts: 0,
        }
    }

    #[test]
    fn counts_gaps_duplicates_and_late_fills() {
        let mut c = conn();
        for s in [11, 12, 12, 15, 13, 17, 9] {
            c.on_seq(s);
        }
        // 11, 12, 15, 13, 17 are new; 12 again and 9 (before the base) are
        // duplicates; 15 and 17 jumped ahead, 13 filled a gap late.
        assert_eq!(c.delivered, 5);
        assert_eq!(c.duplicated, 2);
        assert_eq!(c.out_of_order, 3);
        // Missing: 14 and 16, and 18..=20 if the room got that far.
        assert_eq!(c.lost(17), 2);
        assert_eq!(c.lost(20), 5);
        assert_eq!(c.lost(15), 1);
    }

    #[test]
    fn in_order_delivery_loses_nothing() {
        let mut c = conn();
        for s in 11..=100 {
            c.on_seq(s);
        }
        assert_eq!((c.delivered, c.duplicated, c.out_of_order), (90, 0, 0));
        assert_eq!(c.lost(100), 0);
        assert_eq!(c.lost(101), 1);
    }
}
