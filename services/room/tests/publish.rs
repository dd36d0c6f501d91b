//! What room publishes after a commit reaches the bus whatever becomes of
//! the call that committed it: a call dropped (deadline, disconnect) after
//! its commit still publishes, and a retry of a stored message publishes it
//! again, in case its first publish was lost.
//!
//! The service runs on a real SQLite store and the in-process bus, behind
//! a bus that injects the faults: it holds or loses publishes on room
//! subjects on demand and passes everything else through.

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use chat_auth::token::Issuer;
use chat_auth::{SigningKey, Verifier};
use chat_bus::{Bus, MemoryBus, Subjects, Subscription};
use chat_ephemeral::MemoryEphemeral;
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use chat_room::{RoomConfig, RoomSvc};
use common::as_user;
use futures_util::StreamExt;
use prost::Message as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// The in-process bus, with publishes on room subjects held (until
/// released) or lost on demand.
struct FaultyBus {
    inner: MemoryBus,
    /// Room publishes wait for a permit while this is set.
    hold: AtomicBool,
    gate: Semaphore,
    /// A held publish started waiting.
    entered: mpsc::UnboundedSender<()>,
    /// Room publishes to answer `Ok` without sending, as a lost publish.
    lose: AtomicUsize,
}

#[async_trait]
impl Bus for FaultyBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> chat_bus::Result<()> {
        if subject.contains(".room.") {
            if self.hold.load(Ordering::SeqCst) {
                let _ = self.entered.send(());
                let permit = self.gate.acquire().await;
                drop(permit);
            }
            let lost = self
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lost {
                return Ok(());
            }
        }
        self.inner.publish(subject, payload).await
    }
    async fn subscribe(&self, subject: &str) -> chat_bus::Result<Subscription> {
        self.inner.subscribe(subject).await
    }
    async fn ping(&self) -> chat_bus::Result<()> {
        self.inner.ping().await
    }
    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.reconnects()
    }
}

struct World {
    _dir: tempfile::TempDir,
    bus: Arc<FaultyBus>,
    entered: mpsc::UnboundedReceiver<()>,
    svc: RoomSvc,
    alice: String,
    room: String,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store = chat_store::connect(&url).await.unwrap();
        let (tx, entered) = mpsc::unbounded_channel();
        let bus = Arc::new(FaultyBus {
            inner: MemoryBus::default(),
            hold: AtomicBool::new(false),
            gate: Semaphore::new(0),
            entered: tx,
            lose: AtomicUsize::new(0),
        });
        let key = SigningKey::generate().unwrap();
        let ephemeral = Arc::new(MemoryEphemeral::default());
        let verifier = Verifier::new(&[key.public_key()], ephemeral.clone());
        let svc = RoomSvc::new(
            store.clone(),
            bus.clone(),
            ephemeral,
            Subjects::default(),
            verifier,
            RoomConfig::default(),
        );
        let issuer = Issuer::new(&key, Duration::from_secs(600));
        let alice = common::user(store.as_ref(), &issuer, "alice").await;
        let room = svc
            .create_room(as_user(
                &alice,
                pb::CreateRoomRequest {
                    name: "r".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .id;
        World {
            _dir: dir,
            bus,
            entered,
            svc,
            alice,
            room,
        }
    }

    async fn room_events(&self) -> Subscription {
        self.bus
            .subscribe(&Subjects::default().room(&self.room))
            .await
            .unwrap()
    }

    fn post(&self, client_msg_id: &str) -> tonic::Request<pb::PostMessageRequest> {
        as_user(
            &self.alice,
            pb::PostMessageRequest {
                room_id: self.room.clone(),
                client_msg_id: client_msg_id.into(),
                body: "hello".into(),
            },
        )
    }
}

/// The next room event on `sub`, or a failure after a generous wait.
async fn next_event(sub: &mut Subscription) -> pb::RoomEvent {
    let payload = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event was published")
        .expect("subscription open");
    match pb::BusEvent::decode(payload).unwrap().kind {
        Some(pb::bus_event::Kind::RoomEvent(e)) => e,
        other => panic!("expected a room event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_is_published_even_when_its_call_is_dropped_after_the_commit() {
    let mut w = World::new().await;
    let mut sub = w.room_events().await;
    w.bus.hold.store(true, Ordering::SeqCst);
    {
        // The call is dropped (as a deadline or a client going away drops
        // it) while its publish is under way, after the commit.
        let call = w.svc.post_message(w.post("m1"));
        tokio::select! {
            _ = call => panic!("the publish was held, the call cannot end"),
            _ = w.entered.recv() => {}
        }
    }
    w.bus.hold.store(false, Ordering::SeqCst);
    w.bus.gate.add_permits(1);
    let event = next_event(&mut sub).await;
    assert_eq!(event.seq, 1);
}

#[tokio::test]
async fn a_retried_message_whose_publish_was_lost_is_published_again() {
    let w = World::new().await;
    let mut sub = w.room_events().await;
    w.bus.lose.store(1, Ordering::SeqCst);
    let first = w.svc.post_message(w.post("m1")).await.unwrap().into_inner();
    assert!(first.created);
    assert!(
        futures_util::FutureExt::now_or_never(sub.next()).is_none(),
        "the first publish was lost"
    );

    // The client retries (it saw no ack, or no event): the same message,
    // deduplicated, and on the bus this time.
    let retry = w.svc.post_message(w.post("m1")).await.unwrap().into_inner();
    assert!(!retry.created);
    let event = next_event(&mut sub).await;
    assert_eq!(event.seq, 1);
    match event.kind {
        Some(pb::room_event::Kind::Message(m)) => assert_eq!(m.client_msg_id, "m1"),
        other => panic!("expected the message, got {other:?}"),
    }
}
