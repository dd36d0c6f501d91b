//! The gateway calling room as itself (`x-chat-service: gateway` with the
//! internal secret, no user): a hub backfills a room's log for all its
//! subscribers at once, so `ListEvents` serves it any live room, and no
//! other call takes it; `LastSeqs` (the tail check) takes only it.
//!
//! Room is served over gRPC on `127.0.0.1:0` (a SQLite store, the
//! in-process bus and ephemeral store) and called through a tonic client,
//! so the assertion travels as the gateway sends it: in request metadata.

mod common;

use chat_auth::token::Issuer;
use chat_auth::{SigningKey, Verifier};
use chat_authn::internal::{assert_service, GATEWAY};
use chat_bus::{MemoryBus, Subjects};
use chat_core::RoomId;
use chat_ephemeral::MemoryEphemeral;
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_client::RoomServiceClient;
use chat_proto::v1::room_service_server::RoomServiceServer;
use chat_room::{RoomConfig, RoomSvc};
use chat_store::Store;
use common::as_user;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};

const SECRET: &str = "the internal secret";

/// Room, served until dropped.
struct Served {
    _dir: tempfile::TempDir,
    client: RoomServiceClient<Channel>,
    store: Arc<dyn Store>,
    issuer: Issuer,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Served {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store = chat_store::connect(&url).await.unwrap();
        let ephemeral = Arc::new(MemoryEphemeral::default());
        let key = SigningKey::generate().unwrap();
        let verifier =
            Verifier::new(&[key.public_key()], ephemeral.clone()).with_internal_secret(SECRET);
        let svc = RoomSvc::new(
            store.clone(),
            Arc::new(MemoryBus::default()),
            ephemeral,
            Subjects::default(),
            verifier,
            RoomConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let routes = tonic::service::Routes::new(RoomServiceServer::new(svc));
        tokio::spawn(chat_core::serve::grpc(listener, routes, stop.clone()));
        let client = RoomServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Served {
            _dir: dir,
            client,
            store,
            issuer: Issuer::new(&key, Duration::from_secs(600)),
            stop,
        }
    }

    /// Room with a public room of alice's in it.
    async fn with_a_public_room() -> (Self, String) {
        let served = Self::start().await;
        let alice = served.user("alice").await;
        let id = served.room(&alice, "public").await;
        (served, id)
    }

    /// A new user's access token.
    async fn user(&self, name: &str) -> String {
        common::user(&*self.store, &self.issuer, name).await
    }

    /// A room of `owner`'s with one message in it.
    async fn room(&self, owner: &str, visibility: &str) -> String {
        let mut client = self.client.clone();
        let room = client
            .create_room(as_user(
                owner,
                pb::CreateRoomRequest {
                    name: "general".into(),
                    topic: String::new(),
                    visibility: visibility.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        client
            .post_message(as_user(owner, post(&room.id, "hello")))
            .await
            .unwrap();
        room.id
    }

    async fn list_events(&self, req: Request<pb::ListEventsRequest>) -> Result<Vec<String>, Code> {
        let page = timeout(self.client.clone().list_events(req)).await?;
        Ok(page
            .into_inner()
            .items
            .into_iter()
            .map(|e| match e.kind {
                Some(pb::room_event::Kind::Message(m)) => m.body,
                other => panic!("not a message: {other:?}"),
            })
            .collect())
    }
}

async fn timeout<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, Code> {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("room answers in time")
        .map_err(|s| s.code())
}

fn as_service<T>(service: &str, secret: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    assert_service(r.metadata_mut(), service, secret);
    r
}

fn events(room: &str) -> pb::ListEventsRequest {
    pb::ListEventsRequest {
        room_id: room.into(),
        after_seq: 0,
        limit: 50,
    }
}

fn post(room: &str, body: &str) -> pb::PostMessageRequest {
    pb::PostMessageRequest {
        room_id: room.into(),
        client_msg_id: uuid::Uuid::new_v4().to_string(),
        body: body.into(),
    }
}

#[tokio::test]
async fn the_gateway_lists_any_rooms_events_without_being_a_member() {
    let room = Served::start().await;
    let alice = room.user("alice").await;
    for visibility in ["public", "private"] {
        let id = room.room(&alice, visibility).await;
        let got = room
            .list_events(as_service(GATEWAY, SECRET, events(&id)))
            .await;
        assert_eq!(got, Ok(vec!["hello".to_owned()]), "a {visibility} room");
    }
    // A room that does not exist is not found, for the gateway too.
    let nowhere = events(&RoomId::new().to_string());
    let got = room.list_events(as_service(GATEWAY, SECRET, nowhere)).await;
    assert_eq!(got, Err(Code::NotFound));
}

#[tokio::test]
async fn a_service_assertion_with_a_wrong_secret_is_refused() {
    let (room, id) = Served::with_a_public_room().await;
    let got = room
        .list_events(as_service(GATEWAY, "a guess", events(&id)))
        .await;
    assert_eq!(got, Err(Code::Unauthenticated));
}

#[tokio::test]
async fn only_the_gateway_reads_a_log_as_a_service() {
    let (room, id) = Served::with_a_public_room().await;
    let got = room
        .list_events(as_service("loadtest", SECRET, events(&id)))
        .await;
    assert_eq!(got, Err(Code::Unauthenticated));
}

#[tokio::test]
async fn the_gateway_cannot_post_as_itself() {
    let (room, id) = Served::with_a_public_room().await;
    let mut client = room.client.clone();
    let posted = timeout(client.post_message(as_service(GATEWAY, SECRET, post(&id, "hi")))).await;
    assert_eq!(posted.err(), Some(Code::Unauthenticated));
    let joined = timeout(client.join_room(as_service(
        GATEWAY,
        SECRET,
        pb::JoinRoomRequest {
            room_id: id.clone(),
        },
    )))
    .await;
    assert_eq!(joined.err(), Some(Code::Unauthenticated));
    // Nothing was posted.
    let got = room
        .list_events(as_service(GATEWAY, SECRET, events(&id)))
        .await;
    assert_eq!(got, Ok(vec!["hello".to_owned()]));
}

#[tokio::test]
async fn the_gateway_reads_many_rooms_last_seqs_in_one_call_and_nobody_else_does() {
    let room = Served::start().await;
    let alice = room.user("alice").await;
    let public = room.room(&alice, "public").await;
    let private = room.room(&alice, "private").await;
    let ask = |ids: Vec<String>| pb::LastSeqsRequest { room_ids: ids };
    let ids = vec![public.clone(), private.clone(), RoomId::new().to_string()];
    let mut client = room.client.clone();

    let got = timeout(client.last_seqs(as_service(GATEWAY, SECRET, ask(ids.clone()))))
        .await
        .expect("the gateway may ask");
    let mut got: Vec<(String, i64)> = got
        .into_inner()
        .rooms
        .into_iter()
        .map(|r| (r.room_id, r.last_seq))
        .collect();
    got.sort();
    let mut want = vec![(public, 1), (private, 1)];
    want.sort();
    assert_eq!(got, want, "an unknown room is left out");

    let as_alice = timeout(client.last_seqs(as_user(&alice, ask(ids.clone())))).await;
    assert_eq!(as_alice.err(), Some(Code::PermissionDenied));
    let as_other = timeout(client.last_seqs(as_service("loadtest", SECRET, ask(ids)))).await;
    assert_eq!(as_other.err(), Some(Code::Unauthenticated));
    let too_many = (0..=chat_room::service::MAX_LAST_SEQS)
        .map(|_| RoomId::new().to_string())
        .collect();
    let too_many = timeout(client.last_seqs(as_service(GATEWAY, SECRET, ask(too_many)))).await;
    assert_eq!(too_many.err(), Some(Code::InvalidArgument));
}
