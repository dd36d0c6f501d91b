//! Overload is refused, not queued (issue #11): while room is at its
//! `--max-concurrent-calls`, a send is answered at once with `503`, the
//! error body and `Retry-After` over REST, and with an `unavailable`
//! `error` frame carrying `retry_after_ms` over the WebSocket (which stays
//! open); once room has a free place again, sends go through.
//!
//! Room gets one place, and the test takes it with a gRPC call of its own
//! that never ends: a request whose message never comes (room admits the
//! call, then waits for its body). Nothing else calls room meanwhile (the
//! gateways' tail check is off).

use crate::helpers::{cmid, spawn_app_with, within, TestApp};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_client::RoomServiceClient;
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

type HeldCall = JoinHandle<Result<tonic::Response<pb::GetRoomResponse>, tonic::Status>>;

/// Starts a `GetRoom` whose request message never comes: once room admits
/// it, it holds one of room's places until the task is aborted.
async fn open_held_call(url: &str) -> HeldCall {
    let channel = within(
        "a gRPC connection",
        tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("room's URL")
            .connect(),
    )
    .await
    .expect("room's gRPC port");
    let mut grpc = tonic::client::Grpc::new(channel);
    tokio::spawn(async move {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let never = futures_util::stream::pending::<pb::GetRoomRequest>();
        grpc.client_streaming(
            tonic::Request::new(never),
            PathAndQuery::from_static("/chat.v1.RoomService/GetRoom"),
            tonic_prost::ProstCodec::<pb::GetRoomRequest, pb::GetRoomResponse>::default(),
        )
        .await
    })
}

/// Takes room's only place; returns the call that holds it.
async fn fill_room(app: &TestApp) -> HeldCall {
    let mut probe = within(
        "a gRPC connection",
        RoomServiceClient::connect(app.room_grpc.clone()),
    )
    .await
    .expect("room's gRPC port");
    within(
        "room to be full",
        take_the_place(&app.room_grpc, &mut probe),
    )
    .await
}

/// A probe call refused for load means the place is taken: by the held
/// call, unless that was itself refused (it raced with an earlier probe,
/// or with a gateway's readiness check), which its ending shows within
/// moments; then it is opened again.
async fn take_the_place(url: &str, probe: &mut RoomServiceClient<Channel>) -> HeldCall {
    let mut held = open_held_call(url).await;
    loop {
        if held.is_finished() {
            held = open_held_call(url).await;
        }
        match probe.get_room(pb::GetRoomRequest::default()).await {
            Err(s) if chat_core::is_overload(&s) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !held.is_finished() {
                    return held;
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn a_send_to_an_overloaded_room_is_refused_at_once_with_a_retry_hint() {
    let app = spawn_app_with(|cfg| {
        cfg.admission.max_concurrent_calls = 1;
        cfg.gateway.tail_check_ms = 0;
    })
    .await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    let mut ws = app.ws(&alice).await;

    let held = fill_room(&app).await;
    let refused_rest = cmid();
    let r = app
        .post_message(&alice.access, &room, "over REST", &refused_rest)
        .await;
    r.expect_error(503, "unavailable");
    let retry = r.headers.get("retry-after").and_then(|v| v.to_str().ok());
    assert_eq!(retry, Some("1"), "a Retry-After header: {:?}", r.headers);

    let refused_ws = cmid();
    let f = ws
        .send_and_wait(&room, &refused_ws, "over the WebSocket")
        .await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "unavailable", "{f}");
    assert_eq!(f["retry_after_ms"], 1000, "{f}");
    assert!(ws.ping_barrier().await.is_empty(), "the socket stays open");

    // Room has a place again: sends go through (the first ones may still
    // find it taken, until room has seen the held call go).
    held.abort();
    within("a send to go through", async {
        loop {
            let r = app
                .post_message(&alice.access, &room, "later", &cmid())
                .await;
            match r.status.as_u16() {
                201 => break,
                503 => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => panic!("unexpected answer: {}", r.text),
            }
        }
    })
    .await;
    let f = ws.send_and_wait(&room, &cmid(), "later").await;
    assert_eq!(f["type"], "ack", "{f}");
    let (_, _, items) = app.history(&alice, &room, "").await;
    let stored: Vec<_> = items.iter().map(|m| m["client_msg_id"].clone()).collect();
    for refused in [refused_rest, refused_ws] {
        assert!(
            !stored.contains(&refused.clone().into()),
            "a refused send stored nothing"
        );
    }
}
