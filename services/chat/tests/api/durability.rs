//! What survives a restart, a crash (`kill -9` right after acks) and a
//! graceful stop (SIGTERM: sockets closed with 1012, exit status 0).

use crate::helpers::{cmid, message_seqs, spawn_app, spawn_process, within, within_for, PASSWORD};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_accounts_sessions_rooms_and_messages() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    app.patch(
        "/api/v1/users/me",
        &alice.access,
        json!({"display_name": "Alice"}),
    )
    .await
    .expect(200);
    let room = app.room_with(&alice, &[&bob]).await;
    let private = app.create_room(&alice, "private").await;
    let dm = app
        .post("/api/v1/dms", &alice.access, json!({"user_id": bob.id}))
        .await;
    assert!(dm.status.is_success(), "{}", dm.text);
    let dm = dm.body["id"].as_str().expect("dm id").to_owned();
    let mut sent = Vec::new();
    for i in 1..=3 {
        sent.push(app.say(&alice, &room, &format!("m{i}")).await);
    }
    app.patch(
        &format!("/api/v1/rooms/{room}/messages/1"),
        &alice.access,
        json!({"body": "m1 edited"}),
    )
    .await
    .expect(200);
    app.post(
        &format!("/api/v1/rooms/{room}/read"),
        &bob.access,
        json!({"seq": 2}),
    )
    .await
    .expect(204);
    // A session ended before the restart stays ended after it.
    let (revoked_access, revoked_refresh) = app.new_session(&bob).await;
    app.post("/api/v1/auth/logout", &revoked_access, json!({}))
        .await
        .expect(204);
    let mut ws = app.ws(&alice).await;
    ws.subscribe(&room, None).await;

    let old_base = app.base.clone();
    let app = app.restart().await;
    if !crate::helpers::cluster_mode() {
        // (A cluster keeps its load balancer's address.)
        assert_ne!(app.base, old_base, "a new server");
    }
    ws.expect_close_code(1012).await;

    // Accounts and tokens: the same signing key, the same sessions.
    let me = app.get("/api/v1/users/me", &alice.access).await;
    let me = me.expect(200);
    assert_eq!(me["id"], alice.id.as_str());
    assert_eq!(me["display_name"], "Alice");
    app.login(&bob.username, PASSWORD).await.expect(200);
    let r = app.refresh(&alice.refresh).await;
    let fresh = r.expect(200)["access_token"].as_str().unwrap().to_owned();
    app.get("/api/v1/users/me", &fresh).await.expect(200);
    app.get("/api/v1/users/me", &revoked_access)
        .await
        .expect_error(401, "unauthorized");
    app.refresh(&revoked_refresh)
        .await
        .expect_error(401, "unauthorized");

    // Rooms, memberships, read markers.
    let r = app.get("/api/v1/me/rooms", &bob.access).await;
    let items = r.expect(200)["items"].as_array().unwrap().clone();
    let mine = items
        .iter()
        .find(|i| i["id"] == room.as_str())
        .expect("bob's room");
    assert_eq!(mine["role"], "member");
    assert_eq!(mine["last_seq"], 4);
    assert_eq!(mine["last_read_seq"], 2);
    assert!(
        items.iter().any(|i| i["id"] == dm.as_str()),
        "the DM survives"
    );
    let r = app
        .get(&format!("/api/v1/rooms/{room}/members"), &alice.access)
        .await;
    let members = r.expect(200)["items"].as_array().unwrap().clone();
    let owner = members
        .iter()
        .find(|m| m["user_id"] == alice.id.as_str())
        .expect("alice");
    assert_eq!(owner["role"], "owner");
    app.get(&format!("/api/v1/rooms/{private}"), &alice.access)
        .await
        .expect(200);
    app.get(&format!("/api/v1/rooms/{private}"), &bob.access)
        .await
        .expect_error(404, "not_found");
    let again = app
        .post("/api/v1/dms", &bob.access, json!({"user_id": alice.id}))
        .await;
    assert_eq!(again.body["id"], dm.as_str());

    // Messages, in their current state; the sequence carries on.
    let (seqs, _, items) = app.history(&bob, &room, "").await;
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(items[0]["body"], "m1 edited");
    for (got, want) in items.iter().zip(&sent) {
        assert_eq!(got["id"], want["id"]);
    }
    let retry = app
        .post_message(
            &alice.access,
            &room,
            "m3",
            sent[2]["client_msg_id"].as_str().unwrap(),
        )
        .await;
    assert_eq!(retry.expect(200)["seq"], 3, "dedupe survives the restart");
    let next = app.say(&alice, &room, "after restart").await;
    assert_eq!(next["seq"], 5);
    let mut ws = app.ws(&bob).await;
    let (replayed, subscribed) = ws.subscribe(&room, Some(0)).await;
    assert_eq!(replayed.len(), 5);
    assert_eq!(replayed[3]["type"], "message_edited");
    assert_eq!(subscribed["last_seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_kill_9() {
    const SENT: usize = 200;
    const KILL_AFTER: usize = 120;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = spawn_process(dir.path()).await;
    let api = server.api();
    let alice = api.signup("alice").await;
    let room = api.create_room(&alice).await;

    // A few over REST (201 means durable too)...
    let mut acked: Vec<(i64, String, String)> = Vec::new();
    for i in 0..10 {
        let (c, body) = (format!("rest-{i}"), format!("rest body {i}"));
        let r = api
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/rooms/{room}/messages"),
                Some(&alice.access),
                Some(json!({"body": body, "client_msg_id": c})),
            )
            .await;
        acked.push((r.expect(201)["seq"].as_i64().unwrap(), c, body));
    }
    // ...then many over the socket, pipelined; the kill lands while some
    // are still in flight.
    let mut ws = api.ws(&alice).await;
    let mut pending = std::collections::HashMap::new();
    for i in 0..SENT {
        let (c, body) = (format!("ws-{i}"), format!("ws body {i}"));
        let r = ws.send_chat(&room, &c, &body).await;
        pending.insert(r, (c, body));
    }
    while acked.len() < 10 + KILL_AFTER {
        let f = ws.recv_event().await;
        assert_eq!(f["type"], "ack", "{f}");
        let (c, body) = pending
            .remove(f["ref"].as_str().unwrap())
            .expect("one of ours");
        acked.push((f["seq"].as_i64().unwrap(), c, body));
    }
    within("the kill", server.child.kill())
        .await
        .expect("SIGKILL");
    drop(server);

    let server = spawn_process(dir.path()).await;
    let api = server.api();
    let stored = api.all_messages(&alice, &room).await;
    let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    let last = *seqs.last().expect("messages");
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "no gap in what was stored"
    );
    assert!(stored.len() >= acked.len());
    for (seq, c, body) in &acked {
        let m = &stored[(*seq - 1) as usize];
        assert_eq!(m["client_msg_id"], c.as_str(), "acked seq {seq}");
        assert_eq!(m["body"], body.as_str(), "acked seq {seq}");
    }

    // The resume path serves the same.
    let mut ws = api.ws(&alice).await;
    let (replayed, subscribed) = ws.subscribe(&room, Some(0)).await;
    assert_eq!(message_seqs(&replayed), seqs);
    assert_eq!(subscribed["last_seq"], last);
    for (seq, c, _) in &acked {
        assert_eq!(replayed[(*seq - 1) as usize]["client_msg_id"], c.as_str());
    }
    // And the log carries on where it stopped.
    let f = ws.send_and_wait(&room, &cmid(), "after the crash").await;
    assert_eq!(f["seq"], last + 1, "{f}");
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1012_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = spawn_process(dir.path()).await;
    let api = server.api();
    let alice = api.signup("alice").await;
    let room = api.create_room(&alice).await;
    let mut ws = api.ws(&alice).await;
    ws.subscribe(&room, None).await;
    // A browser that has not authenticated yet is told to go elsewhere too.
    let mut anon = crate::helpers::ws_connect_anonymous(&server.ws_url)
        .await
        .expect("upgrade");
    assert!(ws.ping_barrier().await.is_empty());

    server.sigterm().await;

    ws.expect_close_code(1012).await;
    anon.expect_close_code(1012).await;
    let exit = within_for(
        Duration::from_secs(20),
        "the process to exit",
        server.child.wait(),
    )
    .await
    .expect("wait");
    assert_eq!(exit.code(), Some(0), "exit status: {exit:?}");
}
