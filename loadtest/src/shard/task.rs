//! One connection's task: connect, subscribe (or a peer's opening
//! frames), then one `select!` over the parent's word, the sender's
//! ticks, the receiver's drop and the socket's reads, handing every frame
//! of a read to the connection's checks ([`Conn`]); reconnect and resume
//! after a close; at the end count what is missing and close.

use super::conn::{Conn, PeerConn, SubWait};
use super::ctx::Ctx;
use super::schedule::{sleep_opt, tick_opt, wait_end, Ctl, Schedule};
use super::stats::bump;
use crate::clock::now_us;
use crate::peers::{Peer, PerSender};
use crate::ws::{Frame, WsConn};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Interval};

/// Why a task ends.
enum End {
    Finish,
    Abort,
    Failed,
}

/// The state of one connection's task.
pub(super) struct Task {
    ctx: Arc<Ctx>,
    ctl: watch::Receiver<Ctl>,
    c: Conn,
    /// Set when the server is a peer (`--protocol`).
    peer: Option<PeerConn>,
    ws: Option<WsConn>,
    seen_go: bool,
    seen_flush: u64,
    tick: Option<Interval>,
    send_end: Option<Instant>,
    drop_at: Option<Instant>,
    sub_deadline: Option<Instant>,
}

impl Task {
    pub(super) fn new(ctx: Arc<Ctx>, idx: usize) -> Self {
        let plan = &ctx.plan;
        let c = Conn::new(plan, idx);
        let proto = plan.protocol;
        let peer = proto.is_peer().then(|| PeerConn {
            proto: Peer::new(proto, &plan.rooms[0], &plan.pusher_key, &plan.pusher_secret),
            // No echo: a sender expects none of its own messages.
            from: PerSender::new(
                plan.senders,
                (!proto.echoes_sender() && plan.is_sender(idx)).then_some(idx),
            ),
        });
        let ctl = ctx.ctl.clone();
        Task {
            ctx,
            ctl,
            c,
            peer,
            ws: None,
            seen_go: false,
            seen_flush: 0,
            tick: None,
            send_end: None,
            drop_at: None,
            sub_deadline: None,
        }
    }

    /// Acts on the parent's latest word; `Some` ends the task.
    fn apply(&mut self, ctl: &Ctl) -> Option<End> {
        if ctl.abort {
            return Some(End::Abort);
        }
        if ctl.finish.is_some() {
            return Some(End::Finish);
        }
        if ctl.flush != self.seen_flush {
            self.seen_flush = ctl.flush;
            self.c.flush(&self.ctx, now_us());
        }
        if let (false, Some(go)) = (self.seen_go, ctl.go_us) {
            self.seen_go = true;
            let sender = self.c.sender.as_ref().map(|s| s.s);
            let s = Schedule::after_go(&self.ctx.plan, sender, go);
            self.tick = s.tick;
            self.send_end = s.send_end;
            self.c.on_time_until = s.on_time_until;
            self.drop_at = s.drop_at;
        }
        None
    }

    fn closed(&mut self, code: u16) {
        self.ws = None;
        // Recovery is timed from here to `subscribed` after the resume
        // (a planned drop sets it earlier, when it happens).
        self.c.dropped_at.get_or_insert_with(Instant::now);
        self.ctx.stats.open.fetch_sub(1, Relaxed);
        bump(&self.ctx.stats.closes, code.to_string());
    }

    pub(super) async fn run(mut self) {
        let idx = self.c.idx;
        match self.ctx.dialer.connect(&self.ctx.plan, idx).await {
            Ok(ws) => self.ws = Some(ws),
            Err(e) => {
                self.ctx.stats.failed.fetch_add(1, Relaxed);
                bump(&self.ctx.stats.connect_errors, e);
                return;
            }
        }
        self.ctx.stats.open.fetch_add(1, Relaxed);
        self.c.sub = Some(SubWait::Initial);
        let opening = match self.peer.as_mut() {
            Some(p) => {
                let (frames, subscribed) = p.proto.open();
                if subscribed {
                    self.c.subscribed_after(&self.ctx, 0);
                }
                frames
            }
            None => vec![self.c.subscribe_frame(&self.ctx, None)],
        };
        if let Some(ws) = self.ws.as_mut() {
            for frame in &opening {
                ws.queue_text(frame);
            }
            if ws.flush().await.is_err() {
                self.fail("connection closed before subscribe".into());
                return;
            }
        }
        self.sub_deadline = Some(Instant::now() + self.ctx.dialer.timeout);

        let end = loop {
            if self.ws.is_none() {
                match self.reconnect().await {
                    Some(ws) => self.ws = Some(ws),
                    None => break End::Finish,
                }
                let ctl = self.ctl.borrow().clone();
                if let Some(end) = self.apply(&ctl) {
                    break end;
                }
                continue;
            }
            let Some(sock) = self.ws.as_mut() else {
                continue;
            };
            let sub_deadline = if self.c.sub == Some(SubWait::Initial) {
                self.sub_deadline
            } else {
                None
            };
            tokio::select! {
                biased;
                changed = self.ctl.changed() => {
                    if changed.is_err() {
                        break End::Abort;
                    }
                    let ctl = self.ctl.borrow_and_update().clone();
                    if let Some(end) = self.apply(&ctl) {
                        break end;
                    }
                }
                () = sleep_opt(sub_deadline) => {
                    self.fail("no `subscribed` in time".into());
                    break End::Failed;
                }
                () = sleep_opt(self.c.resubscribe_at) => {
                    self.c.resubscribe_at = None;
                    let frame = self.c.subscribe_frame(&self.ctx, None);
                    if sock.send_text(&frame).await.is_err() {
                        self.fail("connection closed before subscribe".into());
                        break End::Failed;
                    }
                }
                () = sleep_opt(self.drop_at) => {
                    // reconnect: every receiver drops at once, no close handshake.
                    self.drop_at = None;
                    self.ws = None;
                    self.ctx.stats.open.fetch_sub(1, Relaxed);
                    self.c.dropped_at = Some(Instant::now());
                }
                () = tick_opt(&mut self.tick) => {
                    if self.send_end.is_some_and(|e| Instant::now() >= e) {
                        self.tick = None;
                    } else if let Some((n, frame)) =
                        self.c.next_send(&self.ctx, self.peer.as_ref().map(|p| &p.proto))
                    {
                        self.ctx.stats.sent.fetch_add(1, Relaxed);
                        if sock.send_text(&frame).await.is_err() {
                            self.closed(1006);
                        } else if !self.ctx.plan.protocol.acks() {
                            self.c.published(&self.ctx, n);
                        }
                    }
                }
                r = sock.read() => {
                    // Every frame this read brought, straight from the buffer.
                    let mut close = match r {
                        Ok(0) | Err(_) => Some(1006),
                        Ok(_) => None,
                    };
                    let now = now_us();
                    self.c.reads += 1;
                    let mut pong: Option<Vec<u8>> = None;
                    while close.is_none() {
                        match sock.next_frame() {
                            Ok(Some(Frame::Text(t))) => {
                                self.c.frames += 1;
                                let r = match self.peer.as_mut() {
                                    Some(p) => self.c.on_peer_frame(&self.ctx, p, t, now),
                                    None => self.c.on_frame(&self.ctx, t, now),
                                };
                                if let Err(e) = r {
                                    self.fail(e);
                                    break;
                                }
                            }
                            Ok(Some(Frame::Close(code))) => close = Some(code),
                            Ok(Some(Frame::Ping(p))) => pong = Some(p.to_vec()),
                            Ok(Some(Frame::Binary | Frame::Pong)) => {}
                            Ok(None) => break,
                            Err(_) => close = Some(1002),
                        }
                    }
                    if self.ws.is_none() {
                        // A refused subscribe (already counted by `fail`).
                        break End::Failed;
                    }
                    if let Some(code) = close {
                        if self.c.sub == Some(SubWait::Initial) {
                            self.fail(format!("closed with {code} before `subscribed`"));
                            break End::Failed;
                        }
                        self.closed(code);
                    } else if let Some(ws) = self.ws.as_mut() {
                        // Pongs, and what a peer's protocol answers.
                        if let Some(p) = pong {
                            ws.queue_pong(&p);
                        }
                        for f in self.peer.iter_mut().flat_map(|p| p.proto.outbox.drain(..)) {
                            ws.queue_text(&f);
                        }
                        if ws.flush().await.is_err() {
                            self.closed(1006);
                        }
                    }
                }
            }
        };

        self.c.flush(&self.ctx, now_us());
        if let End::Finish = end {
            let max = self.ctl.borrow().finish.clone();
            if let (Some(max), true) = (max, self.c.subscribed) {
                let lost = match &self.peer {
                    // Per sender, against its highest published n.
                    Some(p) => p.from.lost(&max),
                    None => self.c.lost(max.get(self.c.room).copied().unwrap_or(0)),
                };
                self.ctx.stats.lost.fetch_add(lost, Relaxed);
            }
        }
        if let Some(mut ws) = self.ws.take() {
            self.ctx.stats.open.fetch_sub(1, Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(1000)).await;
        }
    }

    /// The connection failed before it was subscribed: not a subscriber.
    fn fail(&mut self, reason: String) {
        if self.ws.take().is_some() {
            self.ctx.stats.open.fetch_sub(1, Relaxed);
        }
        self.ctx.stats.failed.fetch_add(1, Relaxed);
        bump(&self.ctx.stats.connect_errors, reason);
    }

    /// Connects again and resumes with `since_seq` (the last seq seen),
    /// then resends what was sent and not acked (same client_msg_id: the
    /// server acks it with the original seq). `None`: the run is ending.
    ///
    /// A peer has no resume: its connection stays closed (what it misses
    /// counts as lost) until the run ends.
    async fn reconnect(&mut self) -> Option<WsConn> {
        if self.peer.is_some() {
            wait_end(&mut self.ctl).await;
            return None;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            if Instant::now() >= self.ctx.deadline {
                return None;
            }
            {
                let c = self.ctl.borrow();
                if c.abort || c.finish.is_some() {
                    return None;
                }
            }
            let attempt = tokio::select! {
                r = self.ctx.dialer.connect(&self.ctx.plan, self.c.idx) => r,
                () = wait_end(&mut self.ctl) => return None,
            };
            let err = match attempt {
                Ok(mut ws) => {
                    let frame = self.c.subscribe_frame(&self.ctx, Some(self.c.seq.last()));
                    ws.queue_text(&frame);
                    if let Some(s) = &self.c.sender {
                        for f in s.unacked() {
                            ws.queue_text(f);
                        }
                    }
                    if ws.flush().await.is_ok() {
                        self.c.sub = Some(SubWait::Resume);
                        self.ctx.stats.open.fetch_add(1, Relaxed);
                        self.ctx.stats.reconnects.fetch_add(1, Relaxed);
                        return Some(ws);
                    }
                    "connection closed during resume".to_string()
                }
                Err(e) => e,
            };
            bump(&self.ctx.stats.reconnect_errors, err);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = wait_end(&mut self.ctl) => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
