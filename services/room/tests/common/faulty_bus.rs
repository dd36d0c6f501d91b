//! The in-process bus with faults on demand: publishes on room subjects
//! held (until released) or lost; everything else passes through. A held
//! publish holds the `PostMessage` call that made it (the call waits for
//! its publish), which is how the tests keep calls in flight. [`World`]
//! is a room service on it.

use crate::common::{as_user, user};
use async_trait::async_trait;
use bytes::Bytes;
use chat_auth::token::Issuer;
use chat_auth::{SigningKey, Verifier};
use chat_bus::{Bus, MemoryBus, Subjects, Subscription};
use chat_ephemeral::MemoryEphemeral;
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use chat_room::{RoomConfig, RoomSvc};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// The room service on a real SQLite store and a [`FaultyBus`] (no send
/// limit), with a user, alice, and a room of hers.
pub struct World {
    /// The store's directory, removed with the world.
    _dir: tempfile::TempDir,
    pub bus: Arc<FaultyBus>,
    /// One item per publish being held.
    pub entered: mpsc::UnboundedReceiver<()>,
    pub svc: Arc<RoomSvc>,
    /// Alice's access token.
    pub alice: String,
    pub room: String,
}

impl World {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store = chat_store::connect(&url).await.unwrap();
        let (bus, entered) = FaultyBus::new();
        let key = SigningKey::generate().unwrap();
        let ephemeral = Arc::new(MemoryEphemeral::default());
        let verifier = Verifier::new(&[key.public_key()], ephemeral.clone());
        let svc = Arc::new(RoomSvc::new(
            store.clone(),
            bus.clone(),
            ephemeral,
            Subjects::default(),
            verifier,
            RoomConfig {
                send_limit: 0,
                ..RoomConfig::default()
            },
        ));
        let issuer = Issuer::new(&key, Duration::from_secs(600));
        let alice = user(store.as_ref(), &issuer, "alice").await;
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

    /// Alice's `PostMessage` of "hello" in her room.
    pub fn post(&self, client_msg_id: &str) -> tonic::Request<pb::PostMessageRequest> {
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

pub struct FaultyBus {
    inner: MemoryBus,
    /// Room publishes wait for a permit while this is set.
    pub hold: AtomicBool,
    pub gate: Semaphore,
    /// A held publish started waiting.
    entered: mpsc::UnboundedSender<()>,
    /// Room publishes to answer `Ok` without sending, as a lost publish.
    pub lose: AtomicUsize,
}

impl FaultyBus {
    /// A bus without faults yet, and where each held publish reports that
    /// it started waiting.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (entered, rx) = mpsc::unbounded_channel();
        let bus = Arc::new(FaultyBus {
            inner: MemoryBus::default(),
            hold: AtomicBool::new(false),
            gate: Semaphore::new(0),
            entered,
            lose: AtomicUsize::new(0),
        });
        (bus, rx)
    }

    /// Holds every room publish from now on, until [`Self::release`].
    pub fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Lets `n` held publishes go on and holds no more.
    pub fn release(&self, n: usize) {
        self.hold.store(false, Ordering::SeqCst);
        self.gate.add_permits(n);
    }
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
