//! The WebSocket half of the client contract.
//!
//! One task per connection owns the socket and a bounded queue of outbound
//! items fed by the room hubs. Per room it keeps a cursor: the last `seq`
//! delivered. Events at or below it are dropped (no duplicate), an event
//! past `cursor + 1` first backfills the gap from room (no gap), so the
//! client sees every event once, in order, whatever races between the bus
//! and a resume.
//!
//! The hot path does not go through the task: the upgrade keeps the
//! `TcpStream` itself, and a room's hub writes each batch of pre-framed
//! bytes straight to every connection whose cursor is where the batch
//! starts (see [`out`]). The task handles the client's frames, backfills
//! and what the socket could not take at once.

pub mod frames;
pub mod hub;
pub mod out;
pub mod registry;

use crate::backends::{request, retrying, As};
use crate::wire::{encode, error_frame, EventView, ServerFrame};
use crate::Gateway;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_authn::Caller;
use chat_core::{ApiError, RoomId, Seq};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_client::RoomServiceClient;
use futures_util::StreamExt;
use out::{Cursor, Out, Refused, SockIo};
use prost::Message as _;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// What the hubs and the registry hand a connection's task.
pub enum Outbound {
    /// A room batch from item `from` on, which the hub could not write
    /// directly: the room is still being subscribed, or there is a gap.
    Room {
        batch: Arc<frames::Batch>,
        from: usize,
    },
    /// The user joined or left a room (from the user's subject); boxed to
    /// keep every connection's queue small.
    Membership(Box<pb::MemberChange>),
}

/// The part of a connection others may touch.
pub struct ConnShared {
    pub id: u64,
    pub caller: Caller,
    pub tx: mpsc::Sender<Outbound>,
    pub out: Arc<Out>,
    kill: CancellationToken,
    code: AtomicU16,
}

impl ConnShared {
    /// Asks the connection to close with `code` (the first code wins).
    pub fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.kill.cancel();
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// `GET /ws`: the WebSocket handshake (RFC 6455), then the connection
/// runs on the socket itself.
pub async fn upgrade(State(gw): State<Gateway>, mut req: Request) -> Response {
    let headers = req.headers();
    let refuse = |status: StatusCode, msg: &'static str| (status, msg).into_response();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != axum::http::Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET");
    }
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return refuse(StatusCode::UPGRADE_REQUIRED, "this is a WebSocket endpoint");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    // Header auth is checked before the upgrade: a bad token is a plain 401.
    let header_caller = match header_auth(&gw, headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = gw.inner.tracker.clone();
    let fut = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        let parts = match upgraded.downcast::<hyper_util::rt::TokioIo<TcpStream>>() {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("WebSocket upgrade on a connection that is not a plain TcpStream");
                return;
            }
        };
        let sock = Arc::new(parts.io.into_inner());
        let mut io = Io::new(&gw, sock, parts.read_buf).await;
        let caller = match header_caller {
            Some(c) => Some(c),
            None => first_frame_auth(&gw, &mut io).await,
        };
        if let Some(caller) = caller {
            run(gw, io, caller).await;
        }
    };
    tracker.spawn(fut);
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

async fn header_auth(gw: &Gateway, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = h.to_str().ok().and_then(chat_authn::strip_bearer);
    match token {
        None => Err(ApiError::unauthorized("malformed authorization header")),
        Some(t) => gw.inner.verifier.verify(t).await.map(Some),
    }
}

/// A connection's socket: tungstenite reads the client's frames from it
/// (and answers pings, and does the close handshake); everything the
/// server sends goes through `out`.
struct Io {
    ws: WebSocketStream<SockIo>,
    out: Arc<Out>,
}

impl Io {
    async fn new(gw: &Gateway, sock: Arc<TcpStream>, prefix: bytes::Bytes) -> Self {
        let max = gw.inner.cfg.max_frame_bytes;
        let out = Arc::new(Out::new(sock, gw.inner.cfg.outbound_bytes));
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            // Small buffers: most connections are idle most of the time,
            // and the read buffer grows when a frame needs it.
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let ws = WebSocketStream::from_raw_socket(
            SockIo::new(out.clone(), prefix),
            Role::Server,
            Some(config),
        )
        .await;
        Self { ws, out }
    }

    /// Writes one text frame after everything before it.
    fn send(&self, frame: &Utf8Bytes) -> Result<(), Refused> {
        self.out.lock().write(frames::text(frame.as_bytes()))
    }

    /// Sends a close frame after what is pending (or instead of it, when
    /// the client was too slow for it), waits briefly for the client's
    /// close, and lets the socket go.
    ///
    /// A client closed for being too slow (4009) is given longer: it may be
    /// seconds behind, and the close frame reaches it only once it reads
    /// again. What was pending for it is dropped already, so the wait holds
    /// a socket, not memory.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let too_slow = code == 4009;
        self.out.lock().close(too_slow);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let wait = if too_slow {
            SLOW_CLOSE_WAIT
        } else {
            CLOSE_WAIT
        };
        let _ = tokio::time::timeout(wait, async {
            if self.ws.close(Some(frame)).await.is_ok() {
                // The client answers with its close frame; reading up to it
                // also takes in whatever it sent before (an oversized
                // frame's payload), so the socket ends with FIN, not RST.
                while let Some(Ok(_)) = self.ws.next().await {}
            }
            self.out.drain_input().await;
        })
        .await;
    }
}

/// A connection's initial read buffer; larger client frames grow it.
const READ_BUFFER: usize = 1024;

/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long a connection closed with 4009 waits for the client to read up
/// to its close frame (as nginx's `lingering_timeout`).
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct AuthFrame {
    #[serde(rename = "type")]
    kind: String,
    token: String,
}

/// Browsers cannot set headers: they send `{"type":"auth","token"}` first.
async fn first_frame_auth(gw: &Gateway, io: &mut Io) -> Option<Caller> {
    let deadline = gw.inner.cfg.auth_timeout;
    let first = tokio::select! {
        () = gw.inner.shutdown.cancelled() => {
            io.close(1012, "server restarting").await;
            return None;
        }
        r = tokio::time::timeout(deadline, io.ws.next()) => r,
    };
    let text = match first {
        Err(_) => {
            io.close(4001, "authentication timed out").await;
            return None;
        }
        Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => {
            io.close(4001, "expected an auth frame").await;
            return None;
        }
    };
    let frame: Option<AuthFrame> = serde_json::from_str(text.as_str()).ok();
    let Some(frame) = frame.filter(|f| f.kind == "auth") else {
        io.close(4001, "expected an auth frame").await;
        return None;
    };
    match gw.inner.verifier.verify(&frame.token).await {
        Ok(c) => Some(c),
        Err(_) => {
            io.close(4001, "invalid or expired access token").await;
            None
        }
    }
}

/// Client frames.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Auth {
        #[allow(dead_code)]
        token: String,
    },
    Subscribe {
        room_id: String,
        since_seq: Option<Seq>,
    },
    SubscribeAll {
        since: Option<HashMap<String, Seq>>,
    },
    Unsubscribe {
        room_id: String,
    },
    Send {
        room_id: String,
        client_msg_id: String,
        body: String,
    },
    Typing {
        room_id: String,
    },
    Read {
        room_id: String,
        seq: Seq,
    },
    Ping {},
}

struct RoomSub {
    _guard: hub::HubGuard,
}

struct Conn {
    gw: Gateway,
    shared: Arc<ConnShared>,
    io: Io,
    rooms: HashMap<RoomId, RoomSub>,
    all: bool,
    window: (Instant, u32),
}

async fn run(gw: Gateway, io: Io, caller: Caller) {
    let (tx, mut rx) = mpsc::channel(gw.inner.cfg.outbound_queue);
    let shared = Arc::new(ConnShared {
        id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
        caller,
        tx,
        out: io.out.clone(),
        kill: gw.inner.shutdown.child_token(),
        code: AtomicU16::new(0),
    });
    let span = tracing::info_span!("ws", conn_id = shared.id, user_id = %caller.user_id);
    let Some(_registered) = gw.inner.conns.register(shared.clone()).await else {
        // Without the user's notices a revoked session would stay open.
        let mut io = io;
        io.close(1012, "server unavailable: reconnect").await;
        return;
    };
    gw.inner.metrics.connections.inc();
    match gw.inner.ephemeral.connection_opened(caller.user_id).await {
        Ok(1) => announce_presence(&gw, caller, true),
        Ok(_) => {}
        Err(error) => tracing::warn!(parent: &span, %error, "presence unavailable"),
    }
    tracing::debug!(parent: &span, "connected");
    let mut conn = Conn {
        gw: gw.clone(),
        shared: shared.clone(),
        io,
        rooms: HashMap::new(),
        all: false,
        window: (Instant::now(), 0),
    };
    let authenticated = encode(&ServerFrame::Authenticated {
        user_id: caller.user_id.to_string(),
        session_id: caller.session_id.to_string(),
    });
    let close = if conn.io.send(&authenticated).is_ok() {
        conn.serve(&mut rx).await
    } else {
        None
    };
    let code = match shared.code.load(Ordering::Acquire) {
        0 if gw.inner.shutdown.is_cancelled() => Some(1012),
        0 => close,
        c => Some(c),
    };
    if let Some(code) = code {
        // Nothing more is delivered: the hubs let go before the handshake.
        conn.rooms.clear();
        if code == 4009 {
            // A slow client's long close wait must not hold up a shutdown.
            tokio::select! {
                () = conn.io.close(code, reason(code)) => {}
                () = gw.inner.shutdown.cancelled() => {}
            }
        } else {
            conn.io.close(code, reason(code)).await;
        }
    }
    drop(conn);
    gw.inner.metrics.connections.dec();
    match gw.inner.ephemeral.connection_closed(caller.user_id).await {
        Ok(0) => announce_presence(&gw, caller, false),
        Ok(_) => {}
        Err(error) => tracing::warn!(parent: &span, %error, "presence unavailable"),
    }
    tracing::debug!(parent: &span, close = ?code, "disconnected");
}

/// Rooms told about one user's presence change, at most.
const PRESENCE_MAX_ROOMS: usize = 1000;

/// Tells the user's rooms that they came online (first connection, across
/// gateways) or went offline (last one), in the background.
fn announce_presence(gw: &Gateway, caller: Caller, online: bool) {
    let gw = gw.clone();
    tokio::spawn(async move {
        let inner = &gw.inner;
        let mut cursor = String::new();
        let mut told = 0;
        while told < PRESENCE_MAX_ROOMS {
            let page = inner
                .backends
                .room
                .clone()
                .list_my_rooms(request(
                    pb::ListMyRoomsRequest {
                        cursor: cursor.clone(),
                        limit: 200,
                    },
                    As::User(&caller, &inner.cfg.internal_secret),
                    inner.cfg.rpc_timeout,
                    None,
                ))
                .await;
            let page = match page {
                Ok(p) => p.into_inner(),
                Err(status) => {
                    tracing::debug!(error = %status.message(), "cannot list rooms for presence");
                    return;
                }
            };
            for room in page.items.iter().filter_map(|r| r.room.as_ref()) {
                let ev = pb::BusEvent {
                    kind: Some(pb::bus_event::Kind::Presence(pb::Presence {
                        room_id: room.id.clone(),
                        user_id: caller.user_id.to_string(),
                        online,
                    })),
                    trace: Default::default(),
                };
                let subject = inner.subjects.room(&room.id);
                if let Err(error) = inner.bus.publish(&subject, ev.encode_to_vec().into()).await {
                    tracing::debug!(%error, "cannot publish presence");
                    return;
                }
                told += 1;
            }
            match page.next_cursor {
                Some(c) if !c.is_empty() => cursor = c,
                _ => return,
            }
        }
    });
}

fn reason(code: u16) -> &'static str {
    match code {
        4001 => "unauthorized or session revoked",
        4003 => "forbidden",
        4008 => "rate limited",
        4009 => "too slow: resubscribe with since_seq",
        1009 => "frame too large",
        1012 => "server restarting",
        _ => "",
    }
}

impl Conn {
    /// Runs until the client leaves or the connection must close; returns the
    /// close code to send, if any.
    async fn serve(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> Option<u16> {
        let kill = self.shared.kill.clone();
        let out = self.io.out.clone();
        loop {
            tokio::select! {
                biased;
                () = kill.cancelled() => return None,
                () = out.woken() => {
                    tokio::select! {
                        () = kill.cancelled() => return None,
                        r = out.drain() => if r.is_err() { return None; },
                    }
                }
                item = rx.recv() => {
                    let item = item?;
                    // Boxed: the rare, large futures stay out of every
                    // idle connection's task.
                    if let Err(code) = Box::pin(self.outbound(item)).await { return code; }
                }
                msg = self.io.ws.next() => match msg {
                    None => return None,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "websocket receive failed");
                        use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
                        return Some(match error {
                            Error::Capacity(CapacityError::MessageTooLong { .. }) => 1009,
                            _ => 1002,
                        });
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Err(code) = Box::pin(self.client_frame(t.as_str())).await { return code; }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if !self.reply(error_frame(None, &ApiError::invalid("frame", "must be JSON text"))) {
                            return None;
                        }
                    }
                    Some(Ok(Message::Close(_))) => return None,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Writes a frame after everything before it; `Err` ends the connection
    /// (with 4009 when the client is too slow to take it).
    fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Option<u16>> {
        self.io.send(&frame).map_err(closing)
    }

    /// Sends a reply; false when the connection is gone.
    fn reply(&mut self, frame: Utf8Bytes) -> bool {
        self.io.send(&frame).is_ok()
    }

    async fn outbound(&mut self, item: Outbound) -> Result<(), Option<u16>> {
        match item {
            Outbound::Room { batch, from } => self.room_batch(&batch, from).await,
            Outbound::Membership(m) => self.membership(*m).await,
        }
    }

    /// Room items the hub handed over: written in seq order from the
    /// room's cursor, duplicates dropped, a gap first backfilled from the
    /// log.
    async fn room_batch(&mut self, batch: &frames::Batch, from: usize) -> Result<(), Option<u16>> {
        let mut from = from;
        loop {
            let handoff = self.io.out.lock().deliver(batch, from, false);
            let Some(gap_at) = handoff.map_err(closing)? else {
                return Ok(());
            };
            let Some(seq) = batch.items.get(gap_at).and_then(|i| i.seq) else {
                return Ok(());
            };
            self.catch_up(batch.room, Some(seq - 1)).await?;
            let mut g = self.io.out.lock();
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

    /// The user joined a room (followed when subscribed to all) or left it.
    async fn membership(&mut self, m: pb::MemberChange) -> Result<(), Option<u16>> {
        let Ok(room) = RoomId::parse(&m.room_id) else {
            return Ok(());
        };
        if !m.joined {
            if self.drop_room(room) {
                let id = room.to_string();
                let frame = encode(&ServerFrame::Unsubscribed {
                    room_id: &id,
                    r#ref: None,
                });
                self.feed(frame)?;
            }
            return Ok(());
        }
        if !self.all || self.rooms.contains_key(&room) {
            return Ok(());
        }
        match self.subscribe(room, None).await {
            Ok(last) => {
                let id = room.to_string();
                let frame = encode(&ServerFrame::Subscribed {
                    room_id: &id,
                    last_seq: last,
                    r#ref: None,
                });
                self.go_live(&[room], frame)
            }
            Err(e) => {
                tracing::debug!(error = %e, room_id = %room, "cannot follow a joined room");
                Ok(())
            }
        }
    }

    /// Writes the rooms' `subscribed` (or `subscribed_all`) frame; from
    /// then on their hubs write their events directly.
    fn go_live(&mut self, rooms: &[RoomId], subscribed: Utf8Bytes) -> Result<(), Option<u16>> {
        let mut g = self.io.out.lock();
        g.write(frames::text(subscribed.as_bytes()))
            .map_err(closing)?;
        for &room in rooms {
            if let Some(mut c) = g.cursor(room) {
                c.live = true;
                g.set_cursor(room, c);
            }
        }
        Ok(())
    }

    /// Stops delivering the room; whether it was subscribed.
    fn drop_room(&mut self, room: RoomId) -> bool {
        self.io.out.lock().remove_room(room);
        self.rooms.remove(&room).is_some()
    }

    /// The last seq delivered of a subscribed room.
    fn cursor(&self, room: RoomId) -> Option<Seq> {
        self.io.out.lock().cursor(room).map(|c| c.seq)
    }

    fn who(&self) -> As<'_> {
        As::User(&self.shared.caller, &self.gw.inner.cfg.internal_secret)
    }

    /// A call to room on the user's behalf that is safe to repeat (see
    /// [`retrying`]), made again while room is unavailable.
    async fn room_call<M, R, F, Fut>(&self, msg: M, call: F) -> Result<R, tonic::Status>
    where
        M: Clone,
        F: Fn(RoomServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        let timeout = self.gw.inner.cfg.rpc_timeout;
        retrying(|| {
            let req = request(msg.clone(), self.who(), timeout, None);
            call(self.gw.inner.backends.room.clone(), req)
        })
        .await
    }

    /// Delivers every event after the room's cursor (up to `until`, or to
    /// the end of the log), advancing the cursor.
    async fn catch_up(&mut self, room: RoomId, until: Option<Seq>) -> Result<(), Option<u16>> {
        loop {
            let Some(cursor) = self.cursor(room) else {
                return Ok(());
            };
            if until.is_some_and(|u| cursor >= u) {
                return Ok(());
            }
            let limit = until.map_or(200, |u| (u - cursor).clamp(1, 200) as u32);
            let page = self
                .room_call(
                    pb::ListEventsRequest {
                        room_id: room.to_string(),
                        after_seq: cursor,
                        limit,
                    },
                    |mut c, r| async move { c.list_events(r).await },
                )
                .await;
            let page = match page {
                Ok(p) => p.into_inner(),
                Err(status) => {
                    let e = ApiError::from(status);
                    tracing::warn!(error = %e, room_id = %room, "backfill failed; asking the client to resume");
                    return Err(Some(4009));
                }
            };
            let mut batch = frames::Builder::new(room);
            for ev in &page.items {
                if ev.seq <= cursor || until.is_some_and(|u| ev.seq > u) {
                    continue;
                }
                if let Some(json) = EventView::of(ev).and_then(|v| serde_json::to_vec(&v).ok()) {
                    batch.event(ev.seq, &json);
                }
            }
            let batch = batch.take();
            // Events the hub wrote meanwhile are skipped.
            self.io
                .out
                .lock()
                .deliver(&batch, 0, false)
                .map_err(closing)?;
            let now = self.cursor(room).unwrap_or(cursor);
            if !page.has_more || now == cursor {
                return Ok(());
            }
        }
    }

    /// Subscribes to a room: hub registration, access check, then the
    /// events after `since` (if given). Returns the last seq delivered, for
    /// the `subscribed` frame. Live events queue up meanwhile and are
    /// de-duplicated against the cursor.
    ///
    /// The hub is live *before* the room's `last_seq` is read: an event
    /// committed after that read is published after it too, so the hub
    /// gets it; one committed before is at or below `last_seq`. So a
    /// live-only subscribe needs no read of the log.
    async fn subscribe(&mut self, room: RoomId, since: Option<Seq>) -> Result<Seq, ApiError> {
        if let Some(s) = since {
            chat_core::validate::seq("since_seq", s)?;
        }
        let r = self.subscribe_steps(room, since).await;
        if r.is_err() {
            // Nothing of a failed subscribe stays: no hub, no cursor.
            self.drop_room(room);
        }
        r
    }

    async fn subscribe_steps(&mut self, room: RoomId, since: Option<Seq>) -> Result<Seq, ApiError> {
        // Until `subscribed` is written the room is not live: its hub hands
        // events to this task, which delivers them after it.
        let pending = Cursor {
            seq: 0,
            live: false,
        };
        self.io.out.lock().set_cursor(room, pending);
        let guard = self.hubs().subscribe(room, self.shared.clone()).await?;
        // Held through the access check and the backfill.
        let gw = self.gw.clone();
        let inner = &gw.inner;
        let _permit =
            match tokio::time::timeout(inner.cfg.rpc_timeout, inner.subscribes.acquire()).await {
                Ok(Ok(p)) => p,
                _ => {
                    return Err(ApiError::unavailable(
                        "too many subscribes at once here; retry",
                    ))
                }
            };
        let last = self
            .room_call(
                pb::GetRoomRequest {
                    room_id: room.to_string(),
                },
                |mut c, r| async move { c.get_room(r).await },
            )
            .await
            .map_err(ApiError::from)
            .and_then(|r| {
                let r = r.into_inner();
                if r.my_role.is_empty() {
                    Err(ApiError::forbidden("not a member of this room"))
                } else {
                    Ok(r.room.map(|r| r.last_seq).unwrap_or(0))
                }
            })?;
        let cursor = since.map_or(last, |s| s.min(last));
        self.io.out.lock().set_cursor(
            room,
            Cursor {
                seq: cursor,
                live: false,
            },
        );
        self.rooms.insert(room, RoomSub { _guard: guard });
        if since.is_some() {
            // The events the client missed, before `subscribed`.
            self.catch_up(room, None)
                .await
                .map_err(|_| ApiError::unavailable("cannot read the room's history; retry"))?;
        }
        Ok(self.cursor(room).unwrap_or(last))
    }

    fn hubs(&self) -> Arc<hub::Hubs> {
        self.gw.inner.hubs.clone()
    }

    fn over_rate(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 > self.gw.inner.cfg.ws_frames_per_sec
    }

    /// Handles one client frame. `Err(code)` ends the connection.
    async fn client_frame(&mut self, text: &str) -> Result<(), Option<u16>> {
        self.gw.inner.metrics.frames_in.inc();
        if self.over_rate() {
            return Err(Some(4008));
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self
                    .fail(None, ApiError::invalid("frame", "must be a JSON object"))
                    .await;
            }
            Err(_) => {
                return self
                    .fail(None, ApiError::invalid("frame", "is not valid JSON"))
                    .await
            }
        };
        let r#ref = value.get("ref").cloned();
        let mut value = value;
        if let Value::Object(m) = &mut value {
            m.remove("ref");
        }
        let frame: ClientFrame = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .fail(r#ref.as_ref(), ApiError::invalid("frame", e))
                    .await
            }
        };
        let r = r#ref.as_ref();
        let result = self.handle(frame, r).await;
        match result {
            Ok(Some(frame)) => {
                if self.reply(frame) {
                    Ok(())
                } else {
                    Err(None)
                }
            }
            Ok(None) => Ok(()),
            Err(Handled::Close(code)) => Err(code),
            Err(Handled::Api(e)) => {
                if e.code == chat_core::ErrorCode::Unauthorized {
                    let _ = self.reply(error_frame(r, &e));
                    return Err(Some(4001));
                }
                self.fail(r, e).await
            }
        }
    }

    async fn fail(&mut self, r: Option<&Value>, e: ApiError) -> Result<(), Option<u16>> {
        if self.reply(error_frame(r, &e)) {
            Ok(())
        } else {
            Err(None)
        }
    }

    async fn handle(
        &mut self,
        frame: ClientFrame,
        r: Option<&Value>,
    ) -> Result<Option<Utf8Bytes>, Handled> {
        let t = self.gw.inner.cfg.rpc_timeout;
        match frame {
            ClientFrame::Ping {} => Ok(Some(encode(&ServerFrame::Pong { r#ref: r }))),
            ClientFrame::Auth { .. } => {
                Err(ApiError::invalid("type", "already authenticated").into())
            }
            ClientFrame::Subscribe { room_id, since_seq } => {
                let room = RoomId::parse(&room_id)?;
                // A resubscribe starts over from the given point.
                self.drop_room(room);
                let last = self
                    .subscribe(room, since_seq)
                    .await
                    .map_err(Handled::from)?;
                let subscribed = encode(&ServerFrame::Subscribed {
                    room_id: &room_id,
                    last_seq: last,
                    r#ref: r,
                });
                self.go_live(&[room], subscribed).map_err(Handled::Close)?;
                Ok(None)
            }
            ClientFrame::SubscribeAll { since } => {
                let mut since_rooms = HashMap::new();
                for (k, v) in since.unwrap_or_default() {
                    since_rooms.insert(RoomId::parse(&k)?, chat_core::validate::seq("since", v)?);
                }
                let mut rooms = BTreeMap::new();
                let mut cursor = String::new();
                loop {
                    let page = self
                        .gw
                        .inner
                        .backends
                        .room
                        .clone()
                        .list_my_rooms(request(
                            pb::ListMyRoomsRequest {
                                cursor: cursor.clone(),
                                limit: 200,
                            },
                            self.who(),
                            t,
                            None,
                        ))
                        .await
                        .map_err(ApiError::from)?
                        .into_inner();
                    for item in &page.items {
                        let Some(room) = &item.room else { continue };
                        let Ok(id) = RoomId::parse(&room.id) else {
                            continue;
                        };
                        if !self.rooms.contains_key(&id) {
                            let since = since_rooms.get(&id).copied();
                            let last = self.subscribe(id, since).await?;
                            rooms.insert(room.id.clone(), last);
                        } else if let Some(c) = self.cursor(id) {
                            rooms.insert(room.id.clone(), c);
                        }
                    }
                    match page.next_cursor {
                        Some(c) if !c.is_empty() => cursor = c,
                        _ => break,
                    }
                }
                self.all = true;
                let frame = encode(&ServerFrame::SubscribedAll {
                    rooms: &rooms,
                    r#ref: r,
                });
                let ids: Vec<RoomId> = self.rooms.keys().copied().collect();
                self.go_live(&ids, frame).map_err(Handled::Close)?;
                Ok(None)
            }
            ClientFrame::Unsubscribe { room_id } => {
                let room = RoomId::parse(&room_id)?;
                self.drop_room(room);
                Ok(Some(encode(&ServerFrame::Unsubscribed {
                    room_id: &room_id,
                    r#ref: r,
                })))
            }
            ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            } => {
                let room = RoomId::parse(&room_id)?;
                chat_core::validate::body(&body)?;
                chat_core::validate::client_msg_id(&client_msg_id)?;
                let resp = self
                    .room_call(
                        pb::PostMessageRequest {
                            room_id: room.to_string(),
                            client_msg_id,
                            body,
                        },
                        |mut c, r| async move { c.post_message(r).await },
                    )
                    .await
                    .map_err(ApiError::from)?
                    .into_inner();
                let m = resp.message.unwrap_or_default();
                Ok(Some(encode(&ServerFrame::Ack {
                    r#ref: r,
                    room_id: &room_id,
                    seq: m.seq,
                    id: &m.id,
                })))
            }
            ClientFrame::Typing { room_id } => {
                let room = RoomId::parse(&room_id)?;
                if !self.rooms.contains_key(&room) {
                    return Err(ApiError::invalid("room_id", "subscribe to the room first").into());
                }
                let ev = pb::BusEvent {
                    kind: Some(pb::bus_event::Kind::Typing(pb::Typing {
                        room_id: room.to_string(),
                        user_id: self.shared.caller.user_id.to_string(),
                    })),
                    trace: Default::default(),
                };
                if let Err(error) = self
                    .gw
                    .inner
                    .bus
                    .publish(
                        &self.gw.inner.subjects.room(room),
                        ev.encode_to_vec().into(),
                    )
                    .await
                {
                    tracing::warn!(%error, "cannot publish typing");
                }
                Ok(r.map(|r| encode(&ServerFrame::Ok { r#ref: Some(r) })))
            }
            ClientFrame::Read { room_id, seq } => {
                let room = RoomId::parse(&room_id)?;
                self.room_call(
                    pb::MarkReadRequest {
                        room_id: room.to_string(),
                        seq,
                    },
                    |mut c, r| async move { c.mark_read(r).await },
                )
                .await
                .map_err(ApiError::from)?;
                Ok(r.map(|r| encode(&ServerFrame::Ok { r#ref: Some(r) })))
            }
        }
    }
}

/// What a refused write means for the connection.
fn closing(r: Refused) -> Option<u16> {
    match r {
        Refused::Full => Some(4009),
        Refused::Dead => None,
    }
}

enum Handled {
    Api(ApiError),
    Close(Option<u16>),
}

impl From<ApiError> for Handled {
    fn from(e: ApiError) -> Self {
        Handled::Api(e)
    }
}
