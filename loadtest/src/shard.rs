//! The connections of one process: connect, subscribe, send, receive and
//! check, one task per connection.
//!
//! The receive path is the hot one (it shares the cores with the server):
//! per frame it reads the type, `seq` and the body's send time with
//! [`crate::scan`], compares `seq` with the next expected one and keeps
//! counts and latencies in the task, pushing them into the shard's totals
//! every 64 frames or 250 ms, or when the parent asks (drain), so there is
//! no shared write per delivery.

use crate::clock::{instant_at, now_us};
use crate::hist::Hist;
use crate::os::io_reason;
use crate::peers::{Got, Peer, PerSender};
use crate::plan::{Control, Event, Ready, ShardResult, ShardSpec, Snapshot};
use crate::scan::{self, Kind, Ref};
use crate::ws::{Frame, WsConn};
use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The checks live in [`crate::seqcheck`], shared with [`crate::peers`];
/// still reachable here.
pub use crate::seqcheck::{Seen, SeqCheck};

type Ws = WsConn;

/// What the parent has told the shard so far (watched by every task).
#[derive(Clone, Debug, Default)]
struct Ctl {
    go_us: Option<u64>,
    flush: u64,
    finish: Option<Arc<Vec<i64>>>,
    abort: bool,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

fn take_map(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock().map(|m| m.clone()).unwrap_or_default()
}

/// The shard's totals.
struct Stats {
    open: AtomicU64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    subs_per_room: Vec<AtomicU64>,
    sent: AtomicU64,
    acked: AtomicU64,
    send_errors: AtomicU64,
    delivered: AtomicU64,
    frames: AtomicU64,
    reads: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    reconnects: AtomicU64,
    lost: AtomicU64,
    acked_per_room: Vec<AtomicU64>,
    max_seq_per_room: Vec<AtomicI64>,
    /// Peers: per sender, the highest n published.
    max_n_per_sender: Vec<AtomicI64>,
    latency: Mutex<Hist>,
    ack_latency: Mutex<Hist>,
    recovery: Mutex<Hist>,
    connect_errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    send_error_codes: Mutex<BTreeMap<String, u64>>,
    reconnect_errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// `senders`: the peer senders whose highest n is tracked (0 for chat).
    fn new(rooms: usize, senders: usize) -> Self {
        Stats {
            open: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            subs_per_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
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

    fn snapshot(&self) -> Snapshot {
        let hist = |m: &Mutex<Hist>| m.lock().map(|h| h.clone()).unwrap_or_default();
        Snapshot {
            open: self.open.load(Relaxed),
            subscribed: self.subscribed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
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
}

/// Where connections go.
struct Target {
    addr: SocketAddr,
    /// The Host header and the path of the WebSocket URL.
    host: String,
    path: String,
    /// The server is on 127.x: connections may come from 127.0.0.2...
    bind_source: bool,
}

struct Ctx {
    plan: crate::plan::Plan,
    stats: Stats,
    ctl: watch::Receiver<Ctl>,
    sem: Semaphore,
    targets: Vec<Target>,
    connect_timeout: Duration,
    deadline: Instant,
}

async fn connect(ctx: &Ctx, idx: usize) -> Result<Ws, String> {
    let _permit = ctx
        .sem
        .acquire()
        .await
        .map_err(|_| "shutting down".to_string())?;
    let target = &ctx.targets[ctx.plan.url_of(idx)];
    let attempt = async {
        let sock = if target.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io_reason("socket", &e))?;
        if target.bind_source {
            if let Some(src) = ctx.plan.source_of(idx) {
                sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
                    .map_err(|e| io_reason("bind", &e))?;
            }
        }
        let stream = sock
            .connect(target.addr)
            .await
            .map_err(|e| io_reason("connect", &e))?;
        let _ = stream.set_nodelay(true);
        let token = &ctx.plan.tokens[ctx.plan.user_of(idx)];
        WsConn::handshake(
            stream,
            &target.host,
            &target.path,
            token,
            ctx.plan.read_buffer,
        )
        .await
    };
    match tokio::time::timeout(ctx.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "connect + handshake timed out after {:?}",
            ctx.connect_timeout
        )),
    }
}

/// What a connection is waiting for after a subscribe.
#[derive(Clone, Copy, PartialEq)]
enum SubWait {
    Initial,
    Resume,
}

/// A sending connection.
struct Sender {
    /// Index among the senders (in `client_msg_id`).
    s: usize,
    n: u64,
    /// Sent, not yet acked: ref → (send time, frame for a resend).
    pending: HashMap<u64, (Instant, String)>,
}

/// Why a task ends.
enum End {
    Finish,
    Abort,
    Failed,
}

/// One connection: its checks and its buffered counts.
struct Conn {
    idx: usize,
    room: usize,
    seq: SeqCheck,
    sub: Option<SubWait>,
    subscribed: bool,
    delivered: u64,
    /// Frames and socket reads since the last flush.
    frames: u64,
    reads: u64,
    duplicated: u64,
    out_of_order: u64,
    lat: Vec<u64>,
    last_flush_us: u64,
    sender: Option<Sender>,
    dropped_at: Option<Instant>,
    /// A refused first subscribe that is worth repeating (the server was
    /// busy) goes again at this time; how many times it went.
    resubscribe_at: Option<Instant>,
    subscribe_attempts: u32,
}

/// Server answers to a first subscribe that a client retries (with
/// backoff, within --connect-timeout) instead of giving up: an overload.
const RETRYABLE: [&str; 2] = ["unavailable", "rate_limited"];

const FLUSH_EVERY: usize = 64;
const FLUSH_US: u64 = 250_000;

impl Conn {
    fn subscribe_frame(&self, ctx: &Ctx, since: Option<i64>) -> String {
        let room = &ctx.plan.rooms[self.room];
        match since {
            None => format!(r#"{{"type":"subscribe","ref":"sub","room_id":"{room}"}}"#),
            Some(s) => {
                format!(r#"{{"type":"subscribe","ref":"sub","room_id":"{room}","since_seq":{s}}}"#)
            }
        }
    }

    /// The next `send` frame: ref n, client_msg_id `<run>-<sender>-<n>`,
    /// body `t=<unix µs>;s<sender>n<n>;` padded to --body-bytes. A peer
    /// gets the same body in its protocol's publish frame.
    fn next_send(&mut self, ctx: &Ctx, peer: Option<&Peer>) -> Option<(u64, String)> {
        let s = self.sender.as_mut()?;
        s.n += 1;
        let n = s.n;
        let mut body = format!("t={};s{}n{};", now_us(), s.s, n);
        if body.len() < ctx.plan.body_bytes {
            body.extend(std::iter::repeat_n('x', ctx.plan.body_bytes - body.len()));
        }
        let frame = match peer {
            Some(p) => p.publish(n, &body),
            None => format!(
                r#"{{"type":"send","ref":{n},"room_id":"{}","client_msg_id":"{}-{}-{n}","body":"{body}"}}"#,
                ctx.plan.rooms[self.room], ctx.plan.run_id, s.s
            ),
        };
        if ctx.plan.protocol.acks() {
            s.pending.insert(n, (Instant::now(), frame.clone()));
        }
        Some((n, frame))
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
    fn on_frame(&mut self, ctx: &Ctx, f: &[u8], now: u64) -> Result<(), String> {
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
                        if self
                            .sender
                            .as_ref()
                            .is_some_and(|s| s.pending.contains_key(&n))
                        {
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
        let Some((sent_at, _)) = s.pending.remove(&n) else {
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
    fn published(&mut self, ctx: &Ctx, n: u64) {
        ctx.stats.acked.fetch_add(1, Relaxed);
        ctx.stats.acked_per_room[self.room].fetch_add(1, Relaxed);
        if let Some(s) = &self.sender {
            if let Some(max) = ctx.stats.max_n_per_sender.get(s.s) {
                max.fetch_max(n as i64, Relaxed);
            }
        }
    }

    /// The server refused message n: a send error with its reason.
    fn refused(&mut self, ctx: &Ctx, n: u64, code: &str) {
        let was_pending = self
            .sender
            .as_mut()
            .is_some_and(|s| s.pending.remove(&n).is_some());
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
    fn on_peer_frame(
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
    fn subscribed_after(&mut self, ctx: &Ctx, last: i64) {
        self.sub = None;
        self.seq = SeqCheck::after(last);
        self.subscribed = true;
        ctx.stats.subscribed.fetch_add(1, Relaxed);
        ctx.stats.subs_per_room[self.room].fetch_add(1, Relaxed);
    }

    fn flush(&mut self, ctx: &Ctx, now: u64) {
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
    fn lost(&self, max_seq: i64) -> u64 {
        self.seq.lost(max_seq)
    }
}

/// A peer connection's protocol state and its per-sender checks.
struct PeerConn {
    proto: Peer,
    from: PerSender,
}

/// The state of one connection's task.
struct Task {
    ctx: Arc<Ctx>,
    ctl: watch::Receiver<Ctl>,
    c: Conn,
    /// Set when the server is a peer (`--protocol`).
    peer: Option<PeerConn>,
    ws: Option<Ws>,
    seen_go: bool,
    seen_flush: u64,
    tick: Option<Interval>,
    send_end: Option<Instant>,
    drop_at: Option<Instant>,
    sub_deadline: Option<Instant>,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Returns once the parent asks to finish or abort.
async fn wait_end(ctl: &mut watch::Receiver<Ctl>) {
    loop {
        {
            let c = ctl.borrow();
            if c.abort || c.finish.is_some() {
                return;
            }
        }
        if ctl.changed().await.is_err() {
            return;
        }
    }
}

impl Task {
    fn new(ctx: Arc<Ctx>, idx: usize) -> Self {
        let plan = &ctx.plan;
        let sender = plan.is_sender(idx).then(|| Sender {
            s: idx,
            n: 0,
            pending: HashMap::new(),
        });
        let c = Conn {
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
            sender,
            dropped_at: None,
            resubscribe_at: None,
            subscribe_attempts: 0,
        };
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
            let plan = &self.ctx.plan;
            let start = instant_at(go);
            if let Some(s) = &self.c.sender {
                if plan.rate > 0.0 {
                    let period = Duration::from_secs_f64(plan.senders as f64 / plan.rate);
                    // Sender s starts s/rate after go: together they send evenly.
                    let first = start + Duration::from_secs_f64(s.s as f64 / plan.rate);
                    let mut iv = tokio::time::interval_at(first, period);
                    iv.set_missed_tick_behavior(MissedTickBehavior::Burst);
                    self.tick = Some(iv);
                    self.send_end = Some(start + Duration::from_secs_f64(plan.duration_s));
                }
            } else if let Some(after) = plan.disconnect_after_s {
                self.drop_at = Some(start + Duration::from_secs_f64(after));
            }
        }
        None
    }

    fn closed(&mut self, code: u16) {
        self.ws = None;
        self.ctx.stats.open.fetch_sub(1, Relaxed);
        bump(&self.ctx.stats.closes, code.to_string());
    }

    async fn run(mut self) {
        let idx = self.c.idx;
        match connect(&self.ctx, idx).await {
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
        self.sub_deadline = Some(Instant::now() + self.ctx.connect_timeout);

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
    async fn reconnect(&mut self) -> Option<Ws> {
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
                r = connect(&self.ctx, self.c.idx) => r,
                () = wait_end(&mut self.ctl) => return None,
            };
            let err = match attempt {
                Ok(mut ws) => {
                    let frame = self.c.subscribe_frame(&self.ctx, Some(self.c.seq.last()));
                    ws.queue_text(&frame);
                    if let Some(s) = &self.c.sender {
                        let mut resend: Vec<_> = s.pending.iter().collect();
                        resend.sort_by_key(|(n, _)| **n);
                        for (_, (_, f)) in resend {
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

/// `ws://host:port/path` → the address to connect to, the Host header
/// and the path.
async fn resolve(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("{url}: only ws:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = host;
    let host_port = if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    let mut addrs = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("cannot resolve {host_port}"))?;
    let addr = addrs
        .next()
        .ok_or_else(|| anyhow!("{host_port} resolves to nothing"))?;
    Ok((addr, host.to_string(), path.to_string()))
}

/// Runs one shard: its connections until the parent says finish (or the
/// deadline), reporting on `events`.
pub async fn run(spec: ShardSpec, controls: mpsc::Receiver<Control>, events: mpsc::Sender<Event>) {
    if let Err(e) = run_inner(spec, controls, &events).await {
        let _ = events
            .send(Event::Failed {
                error: format!("{e:#}"),
            })
            .await;
    }
}

async fn run_inner(
    spec: ShardSpec,
    mut controls: mpsc::Receiver<Control>,
    events: &mpsc::Sender<Event>,
) -> Result<()> {
    let plan = spec.plan;
    let mut targets = Vec::new();
    for url in &plan.ws_urls {
        let (addr, host, path) = resolve(url).await?;
        let bind_source = matches!(addr.ip(), IpAddr::V4(v4) if v4.is_loopback());
        targets.push(Target {
            addr,
            host,
            path,
            bind_source,
        });
    }
    let deadline = instant_at(plan.deadline_us);
    let (ctl_tx, ctl_rx) = watch::channel(Ctl::default());
    let ctx = Arc::new(Ctx {
        stats: Stats::new(
            plan.rooms.len(),
            if plan.protocol.is_peer() {
                plan.senders
            } else {
                0
            },
        ),
        ctl: ctl_rx,
        sem: Semaphore::new(plan.connect_concurrency.max(1)),
        targets,
        connect_timeout: Duration::from_secs_f64(plan.connect_timeout_s.max(0.1)),
        deadline,
        plan,
    });

    let mut tasks = JoinSet::new();
    for idx in spec.first..spec.first + spec.count {
        tasks.spawn(Task::new(ctx.clone(), idx).run());
    }

    let mut progress = tokio::time::interval(Duration::from_millis(250));
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let count = spec.count as u64;
    let mut ready = false;
    let mut aborted = false;
    loop {
        let st = &ctx.stats;
        if !ready && st.subscribed.load(Relaxed) + st.failed.load(Relaxed) >= count {
            ready = true;
            let r = Ready {
                subscribed: st.subscribed.load(Relaxed),
                failed: st.failed.load(Relaxed),
                subs_per_room: st.subs_per_room.iter().map(|a| a.load(Relaxed)).collect(),
                connect_errors: take_map(&st.connect_errors),
                pid: std::process::id(),
            };
            if events.send(Event::Ready(r)).await.is_err() {
                aborted = true;
                break;
            }
        }
        tokio::select! {
            c = controls.recv() => match c {
                Some(Control::Go { at_us }) => ctl_tx.send_modify(|c| c.go_us = Some(at_us)),
                Some(Control::Flush) => ctl_tx.send_modify(|c| c.flush += 1),
                Some(Control::Finish { max_seq }) => {
                    ctl_tx.send_modify(|c| c.finish = Some(Arc::new(max_seq)));
                    break;
                }
                Some(Control::Abort) | None => {
                    aborted = true;
                    break;
                }
            },
            _ = progress.tick() => {
                if events.send(Event::Progress(Box::new(st.snapshot()))).await.is_err() {
                    aborted = true;
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                aborted = true;
                break;
            }
        }
    }
    if aborted {
        ctl_tx.send_modify(|c| c.abort = true);
    }

    // Every task flushes, counts its losses and closes its socket.
    let mut stuck = 0;
    let all_done = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if all_done.is_err() {
        stuck = tasks.len() as u64;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let st = &ctx.stats;
    let result = ShardResult {
        snapshot: st.snapshot(),
        lost: st.lost.load(Relaxed),
        recovery: st.recovery.lock().map(|h| h.clone()).unwrap_or_default(),
        closes: take_map(&st.closes),
        send_error_codes: take_map(&st.send_error_codes),
        reconnect_errors: take_map(&st.reconnect_errors),
        stuck,
    };
    let _ = events.send(Event::Done(Box::new(result))).await;
    Ok(())
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
