//! A publish lost on the bus is backfilled from the log before later events.

use crate::helpers::{cluster_options, message_seqs, start_cluster_with, within, TestApp};
use chat_proto::v1::room_service_client::RoomServiceClient;
use chat_proto::v1::PostMessageRequest;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publish_is_backfilled_before_the_next_event_is_delivered() {
    let cluster = start_cluster_with(cluster_options(|_| {})).await;
    let app = TestApp::for_cluster(cluster, Arc::new(tempfile::tempdir().expect("dir")), |_| {});
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut wb = app.ws(&bob).await;
    wb.subscribe(&room, None).await;
    app.say(&alice, &room, "one").await;
    assert_eq!(wb.recv_event().await["seq"], 1);

    // A second room process whose publishes go to another subject prefix:
    // what it stores never reaches the gateways' subscriptions.
    let blackhole = {
        let c = app.cluster();
        let mut c = c.lock().expect("lock");
        let mut p = crate::cluster::Proc::clone_of(&c.rooms[0], "room-blackhole");
        p.set_env("CHAT_SUBJECT_PREFIX", "blackhole");
        let port = crate::cluster::free_port();
        let health = crate::cluster::free_port();
        p.set_args(&[
            "--grpc-addr".into(),
            format!("127.0.0.1:{port}"),
            "--http-addr".into(),
            format!("127.0.0.1:{health}"),
            "--auth-url".into(),
            c.auth_grpc.clone(),
        ]);
        p.health = format!("http://127.0.0.1:{health}/readyz");
        tokio::task::block_in_place(|| crate::cluster::Cluster::start_again(&mut p));
        c.rooms.push(p);
        format!("http://127.0.0.1:{port}")
    };
    let mut client = RoomServiceClient::connect(blackhole)
        .await
        .expect("grpc connect");
    let mut req = tonic::Request::new(PostMessageRequest {
        room_id: room.clone(),
        client_msg_id: "lost-publish".into(),
        body: "two (its publish is lost)".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", alice.access).parse().expect("header"),
    );
    let stored = client.post_message(req).await.expect("stored").into_inner();
    assert_eq!(stored.message.expect("message").seq, 2);

    // The next event through the normal path shows the gap: bob gets 2
    // (backfilled) before 3.
    app.say(&alice, &room, "three").await;
    let mut got = Vec::new();
    within("both messages", async {
        while got.len() < 2 {
            got.push(wb.recv_event().await);
        }
    })
    .await;
    assert_eq!(message_seqs(&got), vec![2, 3]);
    assert_eq!(got[0]["body"], "two (its publish is lost)");
    assert!(wb.ping_barrier().await.is_empty(), "no duplicate");
}
