//! The WebSocket half of the client contract.
//!
//! One task per connection owns the socket and a bounded queue of outbound
//! items fed by the room hubs. Per room it keeps a cursor: the last `seq`
//! delivered. Events at or below it are dropped (no duplicate), an event
//! past `cursor + 1` first backfills the gap from room (no gap), so the
//! client sees every event once, in order, whatever races between the bus
//! and a resume. Queued frames are written with one flush per batch, so a
//! busy connection gets many frames per write.

pub mod hub;
pub mod registry;

use crate::backends::{request, retrying, As};
use crate::wire::{encode, error_frame, EventView, ServerFrame};
use crate::Gateway;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chat_auth::Caller;
use chat_core::{ApiError, RoomId, Seq};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_client::RoomServiceClient;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// What the hubs and the registry hand a connection.
#[derive(Clone)]
pub enum Outbound {
    /// A sequenced room event, encoded once for every connection.
    Event {
        room: RoomId,
        seq: Seq,
        frame: Utf8Bytes,
    },
    /// A live-only room notice (typing, presence, membership).
    Live { room: RoomId, frame: Utf8Bytes },
    /// Several of the above from one room, in order: a busy room's hub
    /// hands each connection one batch per linger interval, so that a
    /// connection wakes once and writes many frames with one flush.
    Batch(Arc<[Outbound]>),
    /// The user joined or left a room (from the user's subject).
    Membership(pb::MemberChange),
}

/// The part of a connection others may touch.
pub struct ConnShared {
    pub id: u64,
    pub caller: Caller,
    pub tx: mpsc::Sender<Outbound>,
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

/// `GET /ws`.
pub async fn upgrade(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Header auth is checked before the upgrade: a bad token is a plain 401.
    let header_caller = match headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(h) => {
            let token = h.to_str().ok().and_then(chat_auth::token::strip_bearer);
            match token {
                None => {
                    return ApiError::unauthorized("malformed authorization header").into_response()
                }
                Some(t) => match gw.inner.verifier.verify(t).await {
                    Ok(c) => Some(c),
                    Err(e) => return e.into_response(),
                },
            }
        }
    };
    let max = gw.inner.cfg.max_frame_bytes;
    let tracker = gw.inner.tracker.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small buffers: most connections are idle most of the time, and a
        // buffer grows when a frame needs it (tungstenite's default read
        // buffer is 128 KiB per connection, allocated up front).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let (sink, stream) = socket.split();
                let mut io = Io { sink, stream };
                let caller = match header_caller {
                    Some(c) => Some(c),
                    None => first_frame_auth(&gw, &mut io).await,
                };
                if let Some(caller) = caller {
                    run(gw, io, caller).await;
                }
            })
        })
}

struct Io {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
}

impl Io {
    async fn send(&mut self, frame: Utf8Bytes) -> bool {
        self.sink.send(Message::Text(frame)).await.is_ok()
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
        let _ = self.sink.close().await;
    }
}

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
        r = tokio::time::timeout(deadline, io.stream.next()) => r,
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
    cursor: Seq,
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
        kill: gw.inner.shutdown.child_token(),
        code: AtomicU16::new(0),
    });
    let span = tracing::info_span!("ws", conn_id = shared.id, user_id = %caller.user_id);
    let _registered = gw.inner.conns.register(shared.clone()).await;
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
    let close = if conn.io.send(authenticated).await {
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
        conn.io.close(code, reason(code)).await;
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

/// Outbound items written per flush at most.
const BATCH: usize = 256;

impl Conn {
    /// Runs until the client leaves or the connection must close; returns the
    /// close code to send, if any.
    async fn serve(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> Option<u16> {
        let kill = self.shared.kill.clone();
        loop {
            tokio::select! {
                biased;
                () = kill.cancelled() => return None,
                item = rx.recv() => {
                    let item = item?;
                    if let Err(code) = self.outbound(item).await { return code; }
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(item) => if let Err(code) = self.outbound(item).await { return code; },
                            Err(_) => break,
                        }
                    }
                    if self.io.sink.flush().await.is_err() { return None; }
                }
                msg = self.io.stream.next() => match msg {
                    None => return None,
                    Some(Err(error)) => {
                        // tungstenite: "Space limit exceeded: Message too long".
                        let text = error.to_string();
                        tracing::debug!(error = %text, "websocket receive failed");
                        return Some(if text.contains("too long") || text.contains("Space limit") { 1009 } else { 1002 });
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Err(code) = self.client_frame(t.as_str()).await { return code; }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if !self.reply(error_frame(None, &ApiError::invalid("frame", "must be JSON text"))).await {
                            return None;
                        }
                    }
                    Some(Ok(Message::Close(_))) => return None,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Buffers a frame (flushed with the batch).
    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Option<u16>> {
        self.io
            .sink
            .feed(Message::Text(frame))
            .await
            .map_err(|_| None)
    }

    /// Sends a reply now.
    async fn reply(&mut self, frame: Utf8Bytes) -> bool {
        self.io.send(frame).await
    }

    async fn outbound(&mut self, item: Outbound) -> Result<(), Option<u16>> {
        match item {
            Outbound::Batch(items) => {
                for item in items.iter() {
                    self.room_item(item).await?;
                }
            }
            Outbound::Event { .. } | Outbound::Live { .. } => self.room_item(&item).await?,
            Outbound::Membership(m) => self.membership(m).await?,
        }
        Ok(())
    }

    /// A room event (delivered once, in seq order, gaps backfilled) or a
    /// live notice of a subscribed room.
    async fn room_item(&mut self, item: &Outbound) -> Result<(), Option<u16>> {
        match item {
            Outbound::Event { room, seq, frame } => {
                let (room, seq) = (*room, *seq);
                let Some(cursor) = self.rooms.get(&room).map(|r| r.cursor) else {
                    return Ok(());
                };
                if seq <= cursor {
                    return Ok(());
                }
                if seq > cursor + 1 {
                    self.catch_up(room, Some(seq - 1)).await?;
                }
                self.feed(frame.clone()).await?;
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.cursor = r.cursor.max(seq);
                }
            }
            Outbound::Live { room, frame } => {
                if self.rooms.contains_key(room) {
                    self.feed(frame.clone()).await?;
                }
            }
            Outbound::Batch(_) | Outbound::Membership(_) => {}
        }
        Ok(())
    }

    /// The user joined a room (followed when subscribed to all) or left it.
    async fn membership(&mut self, m: pb::MemberChange) -> Result<(), Option<u16>> {
        let Ok(room) = RoomId::parse(&m.room_id) else {
            return Ok(());
        };
        if !m.joined {
            if self.rooms.remove(&room).is_some() {
                let id = room.to_string();
                let frame = encode(&ServerFrame::Unsubscribed {
                    room_id: &id,
                    r#ref: None,
                });
                self.feed(frame).await?;
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
                self.feed(frame).await?;
                self.catch_up(room, None).await
            }
            Err(e) => {
                tracing::debug!(error = %e, room_id = %room, "cannot follow a joined room");
                Ok(())
            }
        }
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
            let Some(cursor) = self.rooms.get(&room).map(|r| r.cursor) else {
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
            let mut last = cursor;
            for ev in &page.items {
                if ev.seq <= last || until.is_some_and(|u| ev.seq > u) {
                    continue;
                }
                if let Some(view) = EventView::of(ev) {
                    self.feed(encode(&view)).await?;
                }
                last = ev.seq;
            }
            if let Some(r) = self.rooms.get_mut(&room) {
                r.cursor = last;
            }
            if !page.has_more || last == cursor {
                return Ok(());
            }
        }
    }

    /// Subscribes to a room: access check, hub registration, then the
    /// events after `since` (if given). Returns the last seq delivered, for
    /// the `subscribed` frame. Live events queue up meanwhile and are
    /// de-duplicated against the cursor.
    ///
    /// Without `since`, events committed between reading the room and the
    /// hub going live are *live* events: they must follow `subscribed`, so
    /// the caller sends it and then calls [`Self::catch_up_live`].
    async fn subscribe(&mut self, room: RoomId, since: Option<Seq>) -> Result<Seq, ApiError> {
        if let Some(s) = since {
            chat_core::validate::seq("since_seq", s)?;
        }
        let r = self
            .room_call(
                pb::GetRoomRequest {
                    room_id: room.to_string(),
                },
                |mut c, r| async move { c.get_room(r).await },
            )
            .await?
            .into_inner();
        if r.my_role.is_empty() {
            return Err(ApiError::forbidden("not a member of this room"));
        }
        let last = r.room.map(|r| r.last_seq).unwrap_or(0);
        let hubs = self.hubs();
        let guard = hubs.subscribe(room, self.shared.clone()).await;
        let cursor = since.map_or(last, |s| s.min(last));
        self.rooms.insert(
            room,
            RoomSub {
                cursor,
                _guard: guard,
            },
        );
        if since.is_some() {
            // The events the client missed, before `subscribed`.
            self.catch_up(room, None)
                .await
                .map_err(|_| ApiError::unavailable("cannot read the room's history; retry"))?;
        }
        Ok(self.rooms.get(&room).map_or(last, |r| r.cursor))
    }

    /// After `subscribed` of a live-only subscribe: delivers what was
    /// committed while the hub subscription was being set up.
    async fn catch_up_live(&mut self, room: RoomId) -> Result<(), Handled> {
        self.catch_up(room, None).await.map_err(Handled::Close)?;
        self.flush().await
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
                if self.reply(frame).await {
                    Ok(())
                } else {
                    Err(None)
                }
            }
            Ok(None) => Ok(()),
            Err(Handled::Close(code)) => Err(code),
            Err(Handled::Api(e)) => {
                if e.code == chat_core::ErrorCode::Unauthorized {
                    let _ = self.reply(error_frame(r, &e)).await;
                    return Err(Some(4001));
                }
                self.fail(r, e).await
            }
        }
    }

    async fn fail(&mut self, r: Option<&Value>, e: ApiError) -> Result<(), Option<u16>> {
        if self.reply(error_frame(r, &e)).await {
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
                if self.rooms.contains_key(&room) {
                    // A resubscribe starts over from the given point.
                    self.rooms.remove(&room);
                }
                let last = self
                    .subscribe(room, since_seq)
                    .await
                    .map_err(Handled::from)?;
                let subscribed = encode(&ServerFrame::Subscribed {
                    room_id: &room_id,
                    last_seq: last,
                    r#ref: r,
                });
                self.feed(subscribed).await.map_err(Handled::Close)?;
                if since_seq.is_none() {
                    self.catch_up_live(room).await?;
                }
                self.flush().await?;
                Ok(None)
            }
            ClientFrame::SubscribeAll { since } => {
                let mut since_rooms = HashMap::new();
                for (k, v) in since.unwrap_or_default() {
                    since_rooms.insert(RoomId::parse(&k)?, chat_core::validate::seq("since", v)?);
                }
                let mut rooms = BTreeMap::new();
                let mut live_only = Vec::new();
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
                            if since.is_none() {
                                live_only.push(id);
                            }
                            rooms.insert(room.id.clone(), last);
                        } else if let Some(s) = self.rooms.get(&id) {
                            rooms.insert(room.id.clone(), s.cursor);
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
                self.feed(frame).await.map_err(Handled::Close)?;
                for id in live_only {
                    self.catch_up_live(id).await?;
                }
                self.flush().await?;
                Ok(None)
            }
            ClientFrame::Unsubscribe { room_id } => {
                let room = RoomId::parse(&room_id)?;
                self.rooms.remove(&room);
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

    async fn flush(&mut self) -> Result<(), Handled> {
        self.io.sink.flush().await.map_err(|_| Handled::Close(None))
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
