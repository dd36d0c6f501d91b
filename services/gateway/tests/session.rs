//! A connection's session state machine (`ws::session`) against a fake
//! room: subscribe and catch-up, the cursor's dedupe, gap backfill,
//! resubscribe, membership changes and the 4009 closes.
//!
//! Each test owns a real session: a loopback TCP pair (the server end in an
//! `Out`, the client end read by tokio-tungstenite's client), the real room
//! hubs on an in-process `MemoryBus`, and a [`FakeRoom`] under `RoomApi`
//! whose log, membership and failures the test sets. Assertions are on the
//! frames the client receives and on the session's cursors.

use axum::extract::ws::Utf8Bytes;
use chat_authn::Caller;
use chat_bus::{Bus, MemoryBus, Subjects};
use chat_core::{ApiError, ErrorCode, RoomId, Seq, SessionId, UserId};
use chat_gateway::metrics::Metrics;
use chat_gateway::room_api::{EventsPage, RoomApi, RoomRpc, RoomsPage, Who};
use chat_gateway::wire::{encode, EventView, ServerFrame};
use chat_gateway::ws::close::{Close, End};
use chat_gateway::ws::frames::{Batch, Builder};
use chat_gateway::ws::hub::{Hubs, Linger};
use chat_gateway::ws::out::Out;
use chat_gateway::ws::session::{Session, SessionDeps};
use chat_gateway::ws::shared::{ConnShared, Outbound};
use chat_proto::v1 as pb;
use futures_util::StreamExt;
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// How long any one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

/// How long the test hubs wait for a missing event on the bus before
/// reading the log.
const GAP_WAIT: Duration = Duration::from_millis(50);

/// A frame the test writes through the session after an action: every
/// frame the client reads before it was written by that action.
const MARKER: &str = r#"{"type":"marker"}"#;

/// RoomService in memory: a log per room (seq 1..n), the rooms the user is
/// a member of, and switches that make calls fail.
#[derive(Default)]
struct FakeRoom {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    logs: HashMap<RoomId, Vec<pb::RoomEvent>>,
    /// The user's rooms, in the order `my_rooms` lists them.
    members: Vec<RoomId>,
    /// When set, `list_events` fails with it.
    list_fails: Option<ApiError>,
    /// When set, `member_last_seq` fails with it.
    member_fails: Option<ApiError>,
    /// When set, each `list_events` waits for a permit of it first.
    list_gate: Option<Arc<Semaphore>>,
    /// `list_events` calls so far.
    list_calls: usize,
}

impl FakeRoom {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .expect("the fake's lock is never poisoned")
    }

    /// A room whose log holds events 1..=`last` and whose member the user
    /// is.
    fn room(&self, last: Seq) -> RoomId {
        let room = RoomId::new();
        self.append(room, last);
        self.state().members.push(room);
        room
    }

    /// A room the user is not a member of.
    fn foreign_room(&self, last: Seq) -> RoomId {
        let room = RoomId::new();
        self.append(room, last);
        room
    }

    /// Commits events to the room's log up to `last`.
    fn append(&self, room: RoomId, last: Seq) {
        let mut st = self.state();
        let log = st.logs.entry(room).or_default();
        let next = log.len() as Seq + 1;
        log.extend((next..=last).map(|seq| event(room, seq)));
    }

    /// Commits one event with a seq past the end of the log, leaving a hole
    /// (what a real log never has; the session must not stall on it).
    fn append_at(&self, room: RoomId, seq: Seq) {
        self.state()
            .logs
            .entry(room)
            .or_default()
            .push(event(room, seq));
    }

    fn fail_list_events(&self, error: ApiError) {
        self.state().list_fails = Some(error);
    }

    fn fail_member_last_seq(&self, error: ApiError) {
        self.state().member_fails = Some(error);
    }

    fn join(&self, room: RoomId) {
        self.state().members.push(room);
    }

    /// Makes every `list_events` wait until the returned gate gets permits.
    fn gate_list_events(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.state().list_gate = Some(gate.clone());
        gate
    }

    fn list_calls(&self) -> usize {
        self.state().list_calls
    }
}

#[async_trait::async_trait]
impl RoomRpc for FakeRoom {
    async fn member_last_seq(&self, _who: &Caller, room: RoomId) -> Result<Seq, ApiError> {
        let st = self.state();
        if let Some(e) = &st.member_fails {
            return Err(e.clone());
        }
        if !st.members.contains(&room) {
            return Err(ApiError::forbidden("not a member of this room"));
        }
        Ok(st
            .logs
            .get(&room)
            .and_then(|l| l.last())
            .map_or(0, |e| e.seq))
    }

    async fn list_events(
        &self,
        _who: Who,
        room: RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<EventsPage, ApiError> {
        let gate = {
            let mut st = self.state();
            st.list_calls += 1;
            st.list_gate.clone()
        };
        if let Some(gate) = gate {
            gate.acquire()
                .await
                .expect("the gate is never closed")
                .forget();
        }
        let st = self.state();
        if let Some(e) = &st.list_fails {
            return Err(e.clone());
        }
        let after: Vec<pb::RoomEvent> = st
            .logs
            .get(&room)
            .map(|l| l.iter().filter(|e| e.seq > after).cloned().collect())
            .unwrap_or_default();
        let limit = limit as usize;
        Ok(EventsPage {
            has_more: after.len() > limit,
            items: after.into_iter().take(limit).collect(),
        })
    }

    async fn my_rooms(&self, _who: &Caller, _cursor: &str) -> Result<RoomsPage, ApiError> {
        Ok(RoomsPage {
            rooms: self.state().members.clone(),
            next: None,
        })
    }

    async fn post_message(
        &self,
        _who: &Caller,
        _room: RoomId,
        _client_msg_id: String,
        _body: String,
    ) -> Result<pb::Message, ApiError> {
        Err(ApiError::unavailable("the session never posts"))
    }

    async fn mark_read(&self, _who: &Caller, _room: RoomId, _seq: Seq) -> Result<(), ApiError> {
        Err(ApiError::unavailable("the session never marks read"))
    }

    async fn last_seqs(&self, rooms: &[RoomId]) -> Result<Vec<(RoomId, Seq)>, ApiError> {
        let st = self.state();
        Ok(rooms
            .iter()
            .filter_map(|r| Some((*r, st.logs.get(r)?.last().map_or(0, |e| e.seq))))
            .collect())
    }
}

/// Event `seq` of `room`, as room publishes it.
fn event(room: RoomId, seq: Seq) -> pb::RoomEvent {
    event_with_body(room, seq, format!("event {seq}"))
}

fn event_with_body(room: RoomId, seq: Seq, body: String) -> pb::RoomEvent {
    pb::RoomEvent {
        room_id: room.to_string(),
        seq,
        kind: Some(pb::room_event::Kind::Message(pb::Message {
            room_id: room.to_string(),
            seq,
            id: uuid::Uuid::new_v4().to_string(),
            body,
            ..Default::default()
        })),
    }
}

fn client_json(ev: &pb::RoomEvent) -> Vec<u8> {
    serde_json::to_vec(&EventView::of(ev).expect("a message has a client view"))
        .expect("an event view serialises")
}

/// A batch of the room's events `seqs`, framed as a hub frames it.
fn batch(room: RoomId, seqs: &[Seq]) -> Arc<Batch> {
    let mut b = Builder::new(room);
    for &seq in seqs {
        b.event(seq, &client_json(&event(room, seq)));
    }
    Arc::new(b.take())
}

/// What a hub hands the connection's task: the batch, from its start.
fn handed(room: RoomId, seqs: &[Seq]) -> Outbound {
    Outbound::Room {
        batch: batch(room, seqs),
        from: 0,
    }
}

/// Waits for `fut`, failing the test if it takes longer than [`WAIT`].
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {WAIT:?}"))
}

/// One connection's session, its socket's client end and its fake room.
struct Harness {
    room: Arc<FakeRoom>,
    session: Session,
    conn: Arc<ConnShared>,
    /// What the hubs hand the connection's task.
    rx: mpsc::Receiver<Outbound>,
    client: WebSocketStream<TcpStream>,
    hubs: Arc<Hubs>,
    bus: Arc<MemoryBus>,
    subjects: Subjects,
}

impl Harness {
    async fn new() -> Self {
        Self::with_max_pending(1 << 20).await
    }

    async fn with_max_pending(max_pending: usize) -> Self {
        let room = Arc::new(FakeRoom::default());
        Self::build(max_pending, room, Arc::new(Semaphore::new(4))).await
    }

    /// A session on `room` whose subscribes take turns from `subscribes`
    /// (another session may share both).
    async fn build(max_pending: usize, room: Arc<FakeRoom>, subscribes: Arc<Semaphore>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (client, accepted) = within("connecting", async {
            tokio::join!(TcpStream::connect(addr), listener.accept())
        })
        .await;
        let client = client.expect("connect");
        let (server, _) = accepted.expect("accept");
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

        let caller = Caller {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            expires_at: i64::MAX,
        };
        let (tx, rx) = mpsc::channel(64);
        let out = Arc::new(Out::new(Arc::new(server), max_pending));
        let conn = Arc::new(ConnShared::new(caller, tx, out, CancellationToken::new()));

        let api = RoomApi::new(room.clone());
        let bus = Arc::new(MemoryBus::default());
        let subjects = Subjects::new(format!("test-{}", uuid::Uuid::new_v4()));
        let hubs = Arc::new(Hubs::new(
            bus.clone(),
            subjects.clone(),
            api.clone(),
            Arc::new(Metrics::default()),
            Linger {
                max: Duration::from_millis(5),
                factor: Linger::DEFAULT_FACTOR,
            },
            GAP_WAIT,
        ));
        let session = Session::new(
            conn.clone(),
            SessionDeps {
                api,
                hubs: hubs.clone(),
                subscribes,
                rpc_timeout: WAIT,
            },
        );
        Self {
            room,
            session,
            conn,
            rx,
            client,
            hubs,
            bus,
            subjects,
        }
    }

    /// Subscribes as the `subscribe` command does: `subscribe`, then the
    /// `subscribed` frame through `go_live`.
    async fn subscribe_live(&mut self, room: RoomId, since: Option<Seq>) -> Seq {
        let last = within("subscribe", self.session.subscribe(room, since))
            .await
            .expect("subscribe succeeds");
        let frame = encode(&ServerFrame::Subscribed {
            room_id: &room.to_string(),
            last_seq: last,
            r#ref: None,
        });
        self.session.go_live(&[room], &frame).expect("go live");
        last
    }

    async fn outbound(&mut self, item: Outbound) -> Result<(), End> {
        within("handing over", self.session.outbound(item)).await
    }

    /// The next frame the client receives, as JSON.
    async fn next_frame(&mut self) -> Value {
        let msg = within("the next frame", self.client.next())
            .await
            .expect("the socket is open")
            .expect("a valid WebSocket frame");
        let Message::Text(text) = msg else {
            panic!("the server sends text frames only, got {msg:?}");
        };
        serde_json::from_str(text.as_str()).expect("every frame is JSON")
    }

    /// Every frame the client receives until the marker, written now.
    async fn frames(&mut self) -> Vec<Value> {
        self.session
            .send(&Utf8Bytes::from_static(MARKER))
            .expect("the socket takes the marker");
        let mut seen = Vec::new();
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == "marker" {
                return seen;
            }
            seen.push(frame);
        }
    }

    /// Publishes the room's event `seq` on the bus, as room does after a
    /// commit.
    async fn publish(&self, room: RoomId, seq: Seq) {
        self.room.append(room, seq);
        self.publish_only(room, seq).await;
    }

    /// Publishes event `seq` on the bus without committing it: a forged or
    /// stray publish.
    async fn publish_only(&self, room: RoomId, seq: Seq) {
        let payload = pb::BusEvent {
            kind: Some(pb::bus_event::Kind::RoomEvent(event(room, seq))),
            ..Default::default()
        }
        .encode_to_vec();
        within(
            "publish",
            self.bus.publish(&self.subjects.room(room), payload.into()),
        )
        .await
        .expect("the memory bus publishes");
    }
}

/// The frames in short: `message <seq>` for an event of `room`,
/// `subscribed <last_seq>`, `subscribed_all`, `unsubscribed`; the room is
/// checked on every frame that names one.
fn summary(room: RoomId, frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            if let Some(r) = f.get("room_id") {
                assert_eq!(r, &json!(room.to_string()), "a frame of another room: {f}");
            }
            match f["type"].as_str() {
                Some("message") => format!("message {}", f["seq"]),
                Some("subscribed") => format!("subscribed {}", f["last_seq"]),
                Some(other) => other.to_owned(),
                None => panic!("a frame without a type: {f}"),
            }
        })
        .collect()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn subscribe_with_since_seq_replays_the_missed_events_in_order_before_subscribed() {
    let mut h = Harness::new().await;
    let room = h.room.room(5);

    let last = h.subscribe_live(room, Some(2)).await;

    assert_eq!(last, 5);
    let frames = h.frames().await;
    assert_eq!(
        summary(room, &frames),
        strings(&["message 3", "message 4", "message 5", "subscribed 5"])
    );
    assert_eq!(frames[0]["body"], "event 3", "the log's own event");
    assert_eq!(h.session.cursor(room), Some(5));
    assert!(h.session.is_subscribed(room));
}

#[tokio::test]
async fn subscribe_without_since_seq_replays_nothing_and_starts_at_the_end_of_the_log() {
    let mut h = Harness::new().await;
    let room = h.room.room(4);

    let last = h.subscribe_live(room, None).await;

    assert_eq!(last, 4);
    assert_eq!(summary(room, &h.frames().await), strings(&["subscribed 4"]));
    assert_eq!(h.session.cursor(room), Some(4));
}

#[tokio::test]
async fn a_since_seq_past_the_end_of_the_log_starts_at_its_end() {
    let mut h = Harness::new().await;
    let room = h.room.room(3);

    let last = h.subscribe_live(room, Some(10)).await;

    assert_eq!(last, 3);
    assert_eq!(summary(room, &h.frames().await), strings(&["subscribed 3"]));
    // The next event is not mistaken for a duplicate.
    h.outbound(handed(room, &[4])).await.expect("written");
    assert_eq!(summary(room, &h.frames().await), strings(&["message 4"]));
}

#[tokio::test]
async fn a_negative_since_seq_is_invalid_and_leaves_nothing_behind() {
    let mut h = Harness::new().await;
    let room = h.room.room(3);

    let err = within("subscribe", h.session.subscribe(room, Some(-1)))
        .await
        .expect_err("refused");

    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert_eq!(h.session.cursor(room), None);
    assert!(h.hubs.is_empty());
    assert!(h.frames().await.is_empty());
}

#[tokio::test]
async fn a_batch_at_or_below_the_cursor_is_dropped_and_one_continuing_it_is_written_once() {
    let mut h = Harness::new().await;
    let room = h.room.room(3);
    h.subscribe_live(room, None).await;
    assert_eq!(summary(room, &h.frames().await), strings(&["subscribed 3"]));

    h.outbound(handed(room, &[2, 3])).await.expect("dropped");
    h.outbound(handed(room, &[3])).await.expect("dropped");
    assert!(
        h.frames().await.is_empty(),
        "nothing at or below the cursor"
    );

    h.outbound(handed(room, &[4])).await.expect("written");
    h.outbound(handed(room, &[4])).await.expect("dropped");
    h.outbound(handed(room, &[3, 4, 5]))
        .await
        .expect("5 written");

    assert_eq!(
        summary(room, &h.frames().await),
        strings(&["message 4", "message 5"])
    );
    assert_eq!(h.session.cursor(room), Some(5));
}

#[tokio::test]
async fn a_gap_is_backfilled_from_the_log_before_the_batch_so_the_client_sees_every_event_once() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    assert_eq!(summary(room, &h.frames().await), strings(&["subscribed 2"]));
    // Room commits 3..=6; the bus loses 3 and 4.
    h.room.append(room, 6);

    h.outbound(handed(room, &[5, 6])).await.expect("delivered");

    assert_eq!(
        summary(room, &h.frames().await),
        strings(&["message 3", "message 4", "message 5", "message 6"])
    );
    assert_eq!(h.session.cursor(room), Some(6));
}

#[tokio::test]
async fn every_gap_of_one_batch_is_backfilled_in_turn() {
    let mut h = Harness::new().await;
    let room = h.room.room(1);
    h.subscribe_live(room, None).await;
    h.frames().await;
    h.room.append(room, 8);

    h.outbound(handed(room, &[3, 4, 7, 8]))
        .await
        .expect("delivered");

    assert_eq!(
        summary(room, &h.frames().await),
        strings(&[
            "message 2",
            "message 3",
            "message 4",
            "message 5",
            "message 6",
            "message 7",
            "message 8"
        ])
    );
    assert_eq!(h.session.cursor(room), Some(8));
}

#[tokio::test]
async fn a_gap_the_log_does_not_have_is_stepped_over_rather_than_stalling_the_room() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    h.frames().await;
    h.room.append_at(room, 5);

    h.outbound(handed(room, &[5])).await.expect("delivered");
    h.outbound(handed(room, &[6])).await.expect("delivered");

    assert_eq!(
        summary(room, &h.frames().await),
        strings(&["message 5", "message 6"])
    );
    assert_eq!(h.session.cursor(room), Some(6));
}

#[tokio::test]
async fn a_gap_the_log_cannot_fill_ends_the_session_with_4009() {
    let mut h = Harness::new().await;
    let room = h.room.room(3);
    h.subscribe_live(room, None).await;
    h.frames().await;
    h.room.append(room, 6);
    h.room
        .fail_list_events(ApiError::unavailable("room is restarting"));

    let end = h.outbound(handed(room, &[6])).await;

    assert_eq!(end, Err(End::Close(Close::TOO_SLOW)));
    assert_eq!(Close::TOO_SLOW.code, 4009);
    assert!(
        h.frames().await.is_empty(),
        "nothing past the gap is written"
    );
    assert_eq!(h.session.cursor(room), Some(3), "the client resumes from 3");
}

#[tokio::test]
async fn a_resubscribe_with_a_lower_since_seq_starts_over_from_there() {
    let mut h = Harness::new().await;
    let room = h.room.room(5);
    h.subscribe_live(room, Some(3)).await;
    assert_eq!(
        summary(room, &h.frames().await),
        strings(&["message 4", "message 5", "subscribed 5"])
    );

    let last = h.subscribe_live(room, Some(1)).await;

    assert_eq!(last, 5);
    assert_eq!(
        summary(room, &h.frames().await),
        strings(&[
            "message 2",
            "message 3",
            "message 4",
            "message 5",
            "subscribed 5"
        ])
    );
    assert_eq!(h.session.cursor(room), Some(5));
    assert_eq!(h.session.rooms(), vec![room]);
    assert_eq!(h.hubs.len(), 1, "one hub for the room, not two");
}

#[tokio::test]
async fn subscribing_to_a_room_the_user_is_not_a_member_of_is_forbidden_and_leaves_nothing_behind()
{
    let mut h = Harness::new().await;
    let room = h.room.foreign_room(3);

    let err = within("subscribe", h.session.subscribe(room, Some(0)))
        .await
        .expect_err("not a member");

    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(h.session.cursor(room), None);
    assert!(!h.session.is_subscribed(room));
    assert!(h.session.rooms().is_empty());
    assert!(h.hubs.is_empty(), "the room's hub is let go");
    // A batch of the room that was on its way is not written.
    h.outbound(handed(room, &[4])).await.expect("ignored");
    assert!(h.frames().await.is_empty());
}

#[tokio::test]
async fn a_subscribe_room_cannot_answer_fails_unavailable_and_leaves_nothing_behind() {
    let mut h = Harness::new().await;
    let room = h.room.room(3);
    h.room
        .fail_member_last_seq(ApiError::unavailable("room is restarting"));

    let err = within("subscribe", h.session.subscribe(room, None))
        .await
        .expect_err("room is down");

    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(h.session.cursor(room), None);
    assert!(!h.session.is_subscribed(room));
    assert!(h.hubs.is_empty());
}

#[tokio::test]
async fn a_subscribe_whose_history_cannot_be_read_fails_unavailable_and_leaves_nothing_behind() {
    let mut h = Harness::new().await;
    let room = h.room.room(5);
    h.room
        .fail_list_events(ApiError::unavailable("room is restarting"));

    let err = within("subscribe", h.session.subscribe(room, Some(2)))
        .await
        .expect_err("no history");

    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(h.session.cursor(room), None);
    assert!(!h.session.is_subscribed(room));
    assert!(h.hubs.is_empty());
    assert!(h.frames().await.is_empty());
}

#[tokio::test]
async fn a_client_too_slow_to_read_ends_with_4009_and_what_it_took_stays_whole_and_in_order() {
    let mut h = Harness::with_max_pending(64 * 1024).await;
    let room = h.room.room(0);
    h.subscribe_live(room, None).await;
    assert_eq!(summary(room, &h.frames().await), strings(&["subscribed 0"]));

    // The client reads nothing; the hub keeps handing 16 KiB events.
    let body = "x".repeat(16 * 1024);
    let mut end = None;
    for seq in 1..=20_000 {
        let mut b = Builder::new(room);
        b.event(seq, &client_json(&event_with_body(room, seq, body.clone())));
        let item = Outbound::Room {
            batch: Arc::new(b.take()),
            from: 0,
        };
        if let Err(e) = h.outbound(item).await {
            end = Some(e);
            break;
        }
    }

    assert_eq!(end, Some(End::Close(Close::TOO_SLOW)));
    let taken = h.session.cursor(room).expect("still subscribed");
    assert!(taken > 0);
    // What the socket took before the refusal reaches the client whole.
    let out = h.conn.out.clone();
    let read = async {
        let mut seqs = Vec::new();
        while seqs.len() < taken as usize {
            let f = h.next_frame().await;
            assert_eq!(f["body"].as_str().map(str::len), Some(body.len()));
            seqs.push(f["seq"].as_i64().expect("an event"));
        }
        seqs
    };
    let (drained, seqs) = tokio::join!(within("draining", out.drain()), read);
    drained.expect("the socket takes what is pending");
    assert_eq!(seqs, (1..=taken).collect::<Vec<_>>());
}

#[tokio::test]
async fn leaving_a_subscribed_room_writes_unsubscribed_and_drops_the_room() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    h.frames().await;

    let left = pb::MemberChange {
        room_id: room.to_string(),
        user_id: h.session.caller().user_id.to_string(),
        joined: false,
    };
    h.outbound(Outbound::Membership(Box::new(left.clone())))
        .await
        .expect("written");

    let frames = h.frames().await;
    assert_eq!(
        frames,
        vec![json!({"type": "unsubscribed", "room_id": room.to_string()})]
    );
    assert!(!h.session.is_subscribed(room));
    assert_eq!(h.session.cursor(room), None);
    assert!(h.hubs.is_empty());

    // Its events stop; leaving again says nothing.
    h.outbound(handed(room, &[3])).await.expect("ignored");
    h.outbound(Outbound::Membership(Box::new(left)))
        .await
        .expect("ignored");
    assert!(h.frames().await.is_empty());
}

#[tokio::test]
async fn subscribe_all_replays_each_room_from_its_since_seq_then_follows_rooms_joined_later() {
    let mut h = Harness::new().await;
    let a = h.room.room(4);
    let b = h.room.room(2);
    let since = HashMap::from([(a, 2)]);

    let all = within("subscribe_all", h.session.subscribe_all(&since))
        .await
        .expect("subscribed");
    assert!(all.errors.is_empty(), "{:?}", all.errors);
    let rooms = all.rooms;
    let frame = encode(&ServerFrame::SubscribedAll {
        rooms: &rooms,
        errors: BTreeMap::new(),
        r#ref: None,
    });
    h.session
        .go_live(&h.session.rooms(), &frame)
        .expect("go live");

    assert_eq!(
        rooms,
        BTreeMap::from([(a.to_string(), 4), (b.to_string(), 2)])
    );
    let frames = h.frames().await;
    assert_eq!(
        summary(a, &frames[..2]),
        strings(&["message 3", "message 4"]),
        "only `a` had a since_seq"
    );
    assert_eq!(
        frames[2],
        json!({"type": "subscribed_all", "rooms": {a.to_string(): 4, b.to_string(): 2}})
    );
    assert_eq!(frames.len(), 3);
    assert_eq!(
        (h.session.cursor(a), h.session.cursor(b)),
        (Some(4), Some(2))
    );

    // The user joins another room: it is followed, live at once.
    let c = h.room.foreign_room(7);
    h.room.join(c);
    let joined = pb::MemberChange {
        room_id: c.to_string(),
        user_id: h.session.caller().user_id.to_string(),
        joined: true,
    };
    h.outbound(Outbound::Membership(Box::new(joined)))
        .await
        .expect("followed");
    h.outbound(handed(c, &[8])).await.expect("written");

    assert_eq!(
        summary(c, &h.frames().await),
        strings(&["subscribed 7", "message 8"])
    );
    let subscribed: HashSet<RoomId> = h.session.rooms().into_iter().collect();
    assert_eq!(subscribed, HashSet::from([a, b, c]));
}

#[tokio::test]
async fn subscribe_all_reports_the_rooms_it_cannot_subscribe_and_subscribes_the_others() {
    let mut h = Harness::new().await;
    let unreadable = h.room.room(4);
    let fine = h.room.room(2);
    let foreign = h.room.foreign_room(3);
    h.room
        .fail_list_events(ApiError::unavailable("the log is down"));
    let since = HashMap::from([(unreadable, 1), (foreign, 0)]);

    let all = within("subscribe_all", h.session.subscribe_all(&since))
        .await
        .expect("the frame as a whole succeeds");

    assert_eq!(all.rooms, BTreeMap::from([(fine.to_string(), 2)]));
    let codes: BTreeMap<String, ErrorCode> = all
        .errors
        .iter()
        .map(|(room, e)| (room.clone(), e.code))
        .collect();
    assert_eq!(
        codes,
        BTreeMap::from([
            (unreadable.to_string(), ErrorCode::Unavailable),
            (foreign.to_string(), ErrorCode::Forbidden),
        ])
    );
    assert!(h.session.is_subscribed(fine));
    assert!(!h.session.is_subscribed(unreadable));
    assert!(!h.session.is_subscribed(foreign));
    assert_eq!(h.session.cursor(unreadable), None);
}

#[tokio::test]
async fn subscribe_all_fails_as_a_whole_when_the_session_is_refused() {
    let mut h = Harness::new().await;
    h.room.room(2);
    h.room
        .fail_member_last_seq(ApiError::unauthorized("session revoked"));

    let e = within("subscribe_all", h.session.subscribe_all(&HashMap::new()))
        .await
        .expect_err("refused");

    assert_eq!(e.code, ErrorCode::Unauthorized);
}

#[tokio::test]
async fn a_room_joined_is_not_followed_without_subscribe_all() {
    let mut h = Harness::new().await;
    let room = h.room.foreign_room(3);
    h.room.join(room);

    let joined = pb::MemberChange {
        room_id: room.to_string(),
        user_id: h.session.caller().user_id.to_string(),
        joined: true,
    };
    h.outbound(Outbound::Membership(Box::new(joined)))
        .await
        .expect("ignored");

    assert!(h.frames().await.is_empty());
    assert!(!h.session.is_subscribed(room));
}

#[tokio::test]
async fn an_event_published_while_subscribing_is_held_for_the_task_until_the_room_is_live() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    let last = within("subscribe", h.session.subscribe(room, None))
        .await
        .expect("subscribed");

    // Room commits 3 before the `subscribed` frame is out: the hub may not
    // write it, it hands it to the connection's task.
    h.publish(room, 3).await;
    let held = within("the hub's hand-off", h.rx.recv())
        .await
        .expect("the hub hands the event over");
    assert!(h.frames().await.is_empty(), "nothing before `subscribed`");

    let frame = encode(&ServerFrame::Subscribed {
        room_id: &room.to_string(),
        last_seq: last,
        r#ref: None,
    });
    h.session.go_live(&[room], &frame).expect("go live");
    h.outbound(held).await.expect("written");
    assert_eq!(
        summary(room, &h.frames().await),
        strings(&["subscribed 2", "message 3"])
    );

    // Live now: the hub writes the next event itself.
    h.publish(room, 4).await;
    assert_eq!(
        summary(room, &[h.next_frame().await]),
        strings(&["message 4"])
    );
    assert_eq!(h.session.cursor(room), Some(4));
    assert!(h.rx.try_recv().is_err(), "nothing more handed over");
}

#[tokio::test]
async fn a_long_catch_up_does_not_hold_up_the_other_subscribes() {
    // One turn for the whole gateway: if a catch-up held it, every other
    // subscribe would wait for the whole log to be read.
    let room = Arc::new(FakeRoom::default());
    let turns = Arc::new(Semaphore::new(1));
    let mut a = Harness::build(1 << 20, room.clone(), turns.clone()).await;
    let mut b = Harness::build(1 << 20, room.clone(), turns).await;
    let long = room.room(500);
    let gate = room.gate_list_events();

    let catching_up = tokio::spawn(async move {
        let r = a.session.subscribe(long, Some(0)).await;
        (a, r)
    });
    within("a's catch-up to start reading the log", async {
        while room.list_calls() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let last = within(
        "a live subscribe while another connection catches up",
        b.session.subscribe(long, None),
    )
    .await
    .expect("the live subscribe gets its turn");
    assert_eq!(last, 500);

    gate.add_permits(1_000);
    let (a, r) = within("the catch-up to end", catching_up)
        .await
        .expect("the catch-up task does not panic");
    assert_eq!(r.expect("the catch-up succeeds"), 500);
    assert_eq!(a.session.cursor(long), Some(500));
}

/// Anyone who can publish on the bus could once silence a room with one
/// event far ahead of its log: the hub took its seq as the room's last,
/// and dropped the real events after it as duplicates (issue #10).
#[tokio::test]
async fn an_event_ahead_of_the_log_is_dropped_and_the_room_goes_on() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    h.frames().await;
    h.publish(room, 3).await;
    let reads = h.room.list_calls();
    h.publish_only(room, 1_000_000).await;
    // The hub reads the log on the gap the forged event shows.
    within("the hub to take the forged event in", async {
        while h.room.list_calls() == reads {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    h.publish(room, 4).await;
    let mut frames = within("the real events", async {
        let mut seen = Vec::new();
        while !seen.iter().any(|f: &Value| f["seq"] == 4) {
            seen.push(h.next_frame().await);
        }
        seen
    })
    .await;
    frames.extend(h.frames().await);
    assert_eq!(
        summary(room, &frames),
        strings(&["message 3", "message 4"]),
        "the forged event is not delivered"
    );
    assert_eq!(h.session.cursor(room), Some(4));
}

/// A catch-up that fails after part of the history went out (here the
/// log stops answering after the first page) must not leave the client
/// with that part and an error frame: the connection is asked to close
/// with 4009, and the client resumes from the last event it got.
#[tokio::test]
async fn a_catch_up_failing_half_way_asks_for_4009_not_an_error_frame() {
    let room = Arc::new(FakeRoom::default());
    let mut h = Harness::build(1 << 20, room.clone(), Arc::new(Semaphore::new(64))).await;
    let long = room.room(500);
    let gate = room.gate_list_events();
    let catching_up = tokio::spawn(async move {
        let r = h.session.subscribe(long, Some(0)).await;
        (h, r)
    });
    // The first page goes out; the log fails before the second.
    gate.add_permits(1);
    within("the first page", async {
        while room.list_calls() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    room.fail_list_events(ApiError::unavailable("room is restarting"));
    gate.add_permits(1);
    let (mut h, r) = within("the catch-up to end", catching_up)
        .await
        .expect("the catch-up task does not panic");
    assert!(r.is_err(), "the subscribe fails");
    assert_eq!(h.conn.asked_to_close(), Some(Close::TOO_SLOW));
    let frames = h.frames().await;
    assert!(!frames.is_empty(), "part of the history went out");
    assert!(
        frames.iter().all(|f| f["type"] == "message"),
        "no error frame: {:?}",
        summary(long, &frames)
    );
}

/// The bus lost the room's last event and nothing follows it: the tail
/// check finds the log ahead of the hub, which delivers it, once.
#[tokio::test]
async fn a_lost_last_event_reaches_the_client_at_the_tail_check() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    h.frames().await;
    h.publish(room, 3).await;
    assert_eq!(
        summary(room, &[h.next_frame().await]),
        strings(&["message 3"])
    );
    // Room commits 4; its publish is lost.
    h.room.append(room, 4);

    h.hubs.check_tails_once().await;
    assert_eq!(
        summary(room, &[h.next_frame().await]),
        strings(&["message 4"])
    );
    h.hubs.check_tails_once().await;
    assert!(h.frames().await.is_empty(), "no duplicate");
    assert_eq!(h.session.cursor(room), Some(4));
}

/// Room replicas publish what one commit appended from several tasks, so
/// consecutive events can reach the bus in the wrong order. The hub holds
/// an early event back for the one before it instead of reading the log
/// (a read per reordering stalled the room for the read's round trip).
#[tokio::test]
async fn events_swapped_on_the_bus_are_delivered_in_order_without_reading_the_log() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    h.frames().await;
    let reads = h.room.list_calls();
    h.room.append(room, 5);

    h.publish_only(room, 4).await;
    h.publish_only(room, 3).await;
    h.publish_only(room, 5).await;

    let got: Vec<Value> = vec![
        h.next_frame().await,
        h.next_frame().await,
        h.next_frame().await,
    ];
    assert_eq!(
        summary(room, &got),
        strings(&["message 3", "message 4", "message 5"])
    );
    assert_eq!(h.room.list_calls(), reads, "the log was not read");
    assert!(h.frames().await.is_empty(), "no duplicate");
}

/// An event whose predecessor never arrives (its publish was lost) waits
/// no longer than the hub's gap wait: then the log fills the gap.
#[tokio::test]
async fn a_gap_the_bus_does_not_fill_is_read_from_the_log_after_the_gap_wait() {
    let mut h = Harness::new().await;
    let room = h.room.room(2);
    h.subscribe_live(room, None).await;
    h.frames().await;
    // Room commits 3 and 4; the publish of 3 is lost.
    h.room.append(room, 4);

    let sent = std::time::Instant::now();
    h.publish_only(room, 4).await;

    let got: Vec<Value> = vec![h.next_frame().await, h.next_frame().await];
    assert_eq!(summary(room, &got), strings(&["message 3", "message 4"]));
    assert!(
        sent.elapsed() >= GAP_WAIT,
        "the hub waited for the bus first ({:?})",
        sent.elapsed()
    );
    assert!(h.frames().await.is_empty(), "no duplicate");
}

/// A hub that has delivered nothing counts from where its subscriber found
/// the log: the tail check delivers what came after, not the history.
#[tokio::test]
async fn a_hub_that_delivered_nothing_backfills_from_the_subscribe_time_end() {
    let mut h = Harness::new().await;
    let room = h.room.room(5);
    h.subscribe_live(room, None).await;
    h.frames().await;
    h.hubs.check_tails_once().await;
    assert!(h.frames().await.is_empty(), "nothing new, nothing sent");
    // Room commits 6; its publish is lost.
    h.room.append(room, 6);

    h.hubs.check_tails_once().await;
    assert_eq!(
        summary(room, &[h.next_frame().await]),
        strings(&["message 6"])
    );
    assert!(h.frames().await.is_empty(), "no duplicate");
}
