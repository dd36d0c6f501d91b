//! Publishes lost on the bus: every acknowledged event still reaches the
//! subscribed sockets, backfilled from the log before later events, and
//! without any later event when it was a room's last (the gateways' tail
//! check).
//!
//! A publish is lost through a real second room process whose publishes go
//! to another subject prefix: what it stores never reaches the gateways'
//! subscriptions (the "blackhole room").

use crate::helpers::{
    cluster_options, message_seqs, start_cluster_with, within, TestApp, TestUser,
};
use chat_proto::v1::room_service_client::RoomServiceClient;
use chat_proto::v1::PostMessageRequest;
use std::sync::Arc;
use tonic::transport::Channel;

/// Starts the blackhole room next to the cluster's and connects to it.
async fn blackhole_room(app: &TestApp) -> RoomServiceClient<Channel> {
    let url = {
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
    RoomServiceClient::connect(url).await.expect("grpc connect")
}

/// Posts through the blackhole room: stored and acknowledged, its publish
/// lost. Returns its seq.
async fn post_lost(
    client: &mut RoomServiceClient<Channel>,
    user: &TestUser,
    room: &str,
    client_msg_id: &str,
    body: &str,
) -> i64 {
    let mut req = tonic::Request::new(PostMessageRequest {
        room_id: room.into(),
        client_msg_id: client_msg_id.into(),
        body: body.into(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", user.access).parse().expect("header"),
    );
    let stored = client.post_message(req).await.expect("stored").into_inner();
    stored.message.expect("message").seq
}

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

    let mut blackhole = blackhole_room(&app).await;
    let seq = post_lost(
        &mut blackhole,
        &alice,
        &room,
        "lost-publish",
        "two (its publish is lost)",
    )
    .await;
    assert_eq!(seq, 2);

    // The next event through the normal path shows the gap (if the tail
    // check has not filled it already): bob gets 2 before 3, once each.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_message_of_a_quiet_room_arrives_though_its_publish_was_lost() {
    let cluster = start_cluster_with(cluster_options(|_| {})).await;
    let app = TestApp::for_cluster(cluster, Arc::new(tempfile::tempdir().expect("dir")), |_| {});
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    // A room whose hub has delivered an event, and a new one whose hub
    // has seen none yet (it knows where the log ended at subscribe time).
    let busy = app.room_with(&alice, &[&bob]).await;
    let fresh = app.room_with(&alice, &[&bob]).await;
    let mut wb = app.ws(&bob).await;
    wb.subscribe(&busy, None).await;
    wb.subscribe(&fresh, None).await;
    app.say(&alice, &busy, "one").await;
    assert_eq!(wb.recv_event().await["seq"], 1);

    let mut blackhole = blackhole_room(&app).await;
    post_lost(&mut blackhole, &alice, &busy, "lost-1", "last in busy").await;
    post_lost(&mut blackhole, &alice, &fresh, "lost-2", "first in fresh").await;

    // Nothing else happens in either room: the gateway's tail check finds
    // both behind the log (within --tail-check-ms and a read; the wait is
    // generous for a slow host).
    let mut got = Vec::new();
    within("both lost messages", async {
        while got.len() < 2 {
            got.push(wb.recv_event().await);
        }
    })
    .await;
    got.sort_by_key(|f| f["room_id"].as_str().map(str::to_owned));
    let mut want = vec![
        (busy.clone(), 2, "last in busy"),
        (fresh.clone(), 1, "first in fresh"),
    ];
    want.sort();
    for (f, (room, seq, body)) in got.iter().zip(want) {
        assert_eq!(f["type"], "message", "{f}");
        assert_eq!(f["room_id"], room.as_str());
        assert_eq!(f["seq"], seq);
        assert_eq!(f["body"], body);
    }
    assert!(wb.ping_barrier().await.is_empty(), "no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_message_whose_publish_was_lost_delivers_it() {
    // No tail check: only the retry can bring the message.
    let opts = cluster_options(|cfg| cfg.gateway.tail_check_ms = 0);
    let cluster = start_cluster_with(opts).await;
    let app = TestApp::for_cluster(cluster, Arc::new(tempfile::tempdir().expect("dir")), |_| {});
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut wb = app.ws(&bob).await;
    wb.subscribe(&room, None).await;
    app.say(&alice, &room, "one").await;
    assert_eq!(wb.recv_event().await["seq"], 1);

    let mut blackhole = blackhole_room(&app).await;
    post_lost(&mut blackhole, &alice, &room, "retried", "two").await;
    assert!(wb.ping_barrier().await.is_empty(), "its publish was lost");

    // Alice saw no ack (say it timed out) and retries: the same message,
    // now on the bus.
    let r = app
        .post_message(&alice.access, &room, "two", "retried")
        .await;
    assert!(r.status.is_success(), "retry: {}", r.text);
    assert_eq!(r.body["seq"], 2);
    let f = within("the retried message", wb.recv_event()).await;
    assert_eq!(f["type"], "message", "{f}");
    assert_eq!(f["seq"], 2);
    assert_eq!(f["body"], "two");
    assert!(wb.ping_barrier().await.is_empty(), "no duplicate");
}
