//! Room's gRPC server refuses calls past `--max-concurrent-calls` at once,
//! with `UNAVAILABLE`, the `chat-error-code` `unavailable` and a
//! `chat-retry-after` hint, instead of queueing them; calls within the
//! limit are served.
//!
//! Room runs as the `room` process serves it (`GrpcProcess` on TCP, the
//! routes of `chat_room::app::routes`) on a real SQLite store. Calls are
//! kept in flight deterministically: the bus holds every room publish, and
//! a `PostMessage` waits for its publish.

mod common;
#[path = "common/faulty_bus.rs"]
mod faulty_bus;

use chat_core::admission::AdmissionArgs;
use chat_core::config::ListenArgs;
use chat_core::serve::GrpcProcess;
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_client::RoomServiceClient;
use common::as_user;
use faulty_bus::World;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The longest any wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// A [`World`]'s room service, served on a port of its own with `max`
/// concurrent calls.
struct Room {
    world: World,
    url: String,
    stop: CancellationToken,
}

impl Room {
    async fn start(max: usize) -> Self {
        let world = World::new().await;
        let listen = ListenArgs {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_reflection: false,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            admission: AdmissionArgs {
                max_concurrent_calls: max,
            },
        };
        let routes = chat_room::app::routes(world.svc.clone(), false).unwrap();
        let process = GrpcProcess::bind(&listen, routes, vec![]).await.unwrap();
        let url = format!("http://{}", process.grpc_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(process.run(stop.clone()));
        Room { world, url, stop }
    }

    /// A new connection to room.
    async fn client(&self) -> RoomServiceClient<Channel> {
        within("a connection", RoomServiceClient::connect(self.url.clone()))
            .await
            .unwrap()
    }

    /// Starts `PostMessage` calls that stay in flight (their publishes are
    /// held) and returns once every one of them is in room's handler.
    async fn hold_posts(
        &mut self,
        client: &RoomServiceClient<Channel>,
        ids: &[&str],
    ) -> Vec<JoinHandle<Result<pb::PostMessageResponse, tonic::Status>>> {
        self.world.bus.hold();
        let calls = ids
            .iter()
            .map(|id| {
                let mut c = client.clone();
                let req = self.world.post(id);
                tokio::spawn(async move { c.post_message(req).await.map(|r| r.into_inner()) })
            })
            .collect();
        for _ in ids {
            within("a call to be in flight", self.world.entered.recv())
                .await
                .unwrap();
        }
        calls
    }

    /// The room's message seqs, by `client_msg_id`, read straight from
    /// room.
    async fn stored(&self, client: &mut RoomServiceClient<Channel>) -> Vec<(String, i64)> {
        let req = as_user(
            &self.world.alice,
            pb::ListMessagesRequest {
                room_id: self.world.room.clone(),
                after_seq: Some(0),
                ..Default::default()
            },
        );
        let r = within("ListMessages", client.list_messages(req))
            .await
            .unwrap()
            .into_inner();
        r.items
            .into_iter()
            .map(|m| (m.client_msg_id, m.seq))
            .collect()
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Asserts the refusal of a call past the limit: `UNAVAILABLE`, our error
/// code and a retry hint of 1 s.
#[track_caller]
fn assert_refused(s: &tonic::Status) {
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    let md = s.metadata();
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(
        get("chat-error-code").as_deref(),
        Some("unavailable"),
        "{s:?}"
    );
    assert_eq!(get("chat-retry-after").as_deref(), Some("1"), "{s:?}");
}

#[tokio::test]
async fn a_call_past_the_limit_is_refused_at_once_and_calls_within_it_are_served() {
    let mut room = Room::start(2).await;
    let client = room.client().await;
    let held = room.hold_posts(&client, &["m1", "m2"]).await;

    // Two calls are in flight: a third is refused, not queued (queued, it
    // would wait for the held publishes and time out), on the same
    // connection and on another one, whatever the method.
    let refused = within(
        "a refusal",
        client.clone().post_message(room.world.post("m3")),
    )
    .await
    .expect_err("a call past the limit is refused");
    assert_refused(&refused);
    let mut other = room.client().await;
    let req = as_user(
        &room.world.alice,
        pb::GetRoomRequest {
            room_id: room.world.room.clone(),
        },
    );
    let refused = within("a refusal", other.get_room(req))
        .await
        .expect_err("the limit is over all connections");
    assert_refused(&refused);

    // The calls within the limit finish, and free their places.
    room.world.bus.release(2);
    for call in held {
        let r = within("a held call", call).await.unwrap().unwrap();
        assert!(r.created);
    }
    let r = within(
        "a call after the others",
        other.post_message(room.world.post("m3")),
    )
    .await
    .expect("a call within the limit is served")
    .into_inner();
    assert!(r.created, "the refused call stored nothing");
    let stored = room.stored(&mut other).await;
    let mut ids: Vec<_> = stored.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert_eq!(stored.last().map(|(id, _)| id.as_str()), Some("m3"));
}

#[tokio::test]
async fn with_no_limit_every_call_is_served() {
    let mut room = Room::start(0).await;
    let client = room.client().await;
    let held = room.hold_posts(&client, &["m1", "m2", "m3"]).await;
    room.world.bus.release(3);
    for call in held {
        let r = within("a held call", call).await.unwrap().unwrap();
        assert!(r.created);
    }
}
