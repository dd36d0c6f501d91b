//! Messages: posting, idempotent retries, history paging, edits and
//! deletions as events of their own, and the send rate limit.

use crate::helpers::{cmid, message_seqs, spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn posting_returns_the_stored_message() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    let c = cmid();
    let r = app.post_message(&alice.access, &room, "hello", &c).await;
    let m = r.expect(201);
    assert_eq!(m["room_id"], room.as_str());
    assert_eq!(m["seq"], 1);
    assert_eq!(m["sender_id"], alice.id.as_str());
    assert_eq!(m["body"], "hello");
    assert_eq!(m["client_msg_id"], c.as_str());
    assert!(m["id"].as_str().is_some_and(|s| s.len() == 36), "{m}");
    assert!(
        m["created_at"].as_str().is_some_and(|s| s.contains('T')),
        "{m}"
    );
    let room_json = app
        .get(&format!("/api/v1/rooms/{room}"), &alice.access)
        .await;
    assert_eq!(room_json.expect(200)["last_seq"], 1);
}

#[tokio::test]
async fn a_retried_client_msg_id_is_stored_once_over_rest_and_websocket() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut watcher = app.ws(&bob).await;
    watcher.subscribe(&room, None).await;

    // WebSocket: the retry is acked with the original seq and id.
    let mut a = app.ws(&alice).await;
    let ws_id = cmid();
    let first = a.send_and_wait(&room, &ws_id, "over ws").await;
    assert_eq!(first["type"], "ack", "{first}");
    let retry = a.send_and_wait(&room, &ws_id, "over ws").await;
    assert_eq!(retry["type"], "ack", "{retry}");
    assert_eq!(retry["seq"], first["seq"]);
    assert_eq!(retry["id"], first["id"]);

    // REST: 201 the first time, 200 with the same message after.
    let rest_id = cmid();
    let created = app
        .post_message(&alice.access, &room, "over rest", &rest_id)
        .await;
    let created = created.expect(201).clone();
    let again = app
        .post_message(&alice.access, &room, "over rest", &rest_id)
        .await;
    let again = again.expect(200);
    assert_eq!(again["seq"], created["seq"]);
    assert_eq!(again["id"], created["id"]);
    assert_eq!(again["body"], "over rest");

    // The same id over the other transport is still the same message.
    let cross = app
        .post_message(&alice.access, &room, "over ws", &ws_id)
        .await;
    assert_eq!(cross.expect(200)["seq"], first["seq"]);
    let cross = a.send_and_wait(&room, &rest_id, "over rest").await;
    assert_eq!(cross["seq"], created["seq"]);

    // Subscribers saw each message once.
    let mut seen = vec![watcher.recv_event().await, watcher.recv_event().await];
    seen.extend(watcher.ping_barrier().await);
    assert_eq!(message_seqs(&seen), vec![1, 2], "{seen:?}");
    let stored = app.all_messages(&alice, &room).await;
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn history_pages_with_before_seq_after_seq_and_limit() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    for i in 1..=25 {
        app.say(&alice, &room, &format!("m{i}")).await;
    }
    let range = |a: i64, b: i64| (a..=b).collect::<Vec<_>>();

    // No cursor: the newest page, in ascending order.
    let (seqs, more, items) = app.history(&alice, &room, "limit=10").await;
    assert_eq!((seqs, more), (range(16, 25), true));
    assert_eq!(items[0]["body"], "m16");
    let (seqs, more, _) = app.history(&alice, &room, "").await;
    assert_eq!((seqs, more), (range(1, 25), false), "default limit is 50");

    // Backward.
    let (seqs, more, _) = app.history(&alice, &room, "before_seq=16&limit=10").await;
    assert_eq!((seqs, more), (range(6, 15), true));
    let (seqs, more, _) = app.history(&alice, &room, "before_seq=6&limit=10").await;
    assert_eq!((seqs, more), (range(1, 5), false));
    let (seqs, more, _) = app.history(&alice, &room, "before_seq=1").await;
    assert_eq!((seqs, more), (vec![], false));

    // Forward.
    let (seqs, more, _) = app.history(&alice, &room, "after_seq=0&limit=10").await;
    assert_eq!((seqs, more), (range(1, 10), true));
    let (seqs, more, _) = app.history(&alice, &room, "after_seq=20&limit=10").await;
    assert_eq!((seqs, more), (range(21, 25), false));
    let (seqs, more, _) = app.history(&alice, &room, "after_seq=15&limit=10").await;
    assert_eq!((seqs, more), (range(16, 25), false));
    let (seqs, more, _) = app.history(&alice, &room, "after_seq=25").await;
    assert_eq!((seqs, more), (vec![], false));

    // Limits: max 200, above is an error naming the field.
    let (seqs, _, _) = app.history(&alice, &room, "limit=200").await;
    assert_eq!(seqs.len(), 25);
    let r = app
        .get(
            &format!("/api/v1/rooms/{room}/messages?limit=201"),
            &alice.access,
        )
        .await;
    r.expect_error(400, "invalid_request");
    assert!(r.message().contains("limit"), "{}", r.text);
    let r = app
        .get(
            &format!("/api/v1/rooms/{room}/messages?after_seq=-1"),
            &alice.access,
        )
        .await;
    r.expect_error(400, "invalid_request");
}

#[tokio::test]
async fn edits_and_deletions_are_events_of_their_own() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    for i in 1..=3 {
        app.say(&alice, &room, &format!("m{i}")).await;
    }
    let mut b = app.ws(&bob).await;
    b.subscribe(&room, None).await;

    let r = app
        .patch(
            &format!("/api/v1/rooms/{room}/messages/2"),
            &alice.access,
            json!({"body": "m2 fixed"}),
        )
        .await;
    let edited = r.expect(200);
    assert_eq!(edited["seq"], 2, "a message keeps its seq");
    assert_eq!(edited["body"], "m2 fixed");
    assert!(edited["edited_at"].is_string(), "{edited}");
    app.delete(&format!("/api/v1/rooms/{room}/messages/3"), &alice.access)
        .await
        .expect(204);

    // Live, in order, with their own seqs.
    let e = b.recv_event().await;
    assert_eq!(e["type"], "message_edited", "{e}");
    assert_eq!(
        (e["seq"].as_i64(), e["target_seq"].as_i64()),
        (Some(4), Some(2))
    );
    assert_eq!(e["body"], "m2 fixed");
    assert!(e["edited_at"].is_string());
    let d = b.recv_event().await;
    assert_eq!(d["type"], "message_deleted", "{d}");
    assert_eq!(
        (d["seq"].as_i64(), d["target_seq"].as_i64()),
        (Some(5), Some(3))
    );

    // REST events: the same objects, after a seq.
    let r = app
        .get(
            &format!("/api/v1/rooms/{room}/events?after_seq=1"),
            &bob.access,
        )
        .await;
    let events = r.expect(200);
    assert_eq!(events["has_more"], false);
    let items = events["items"].as_array().unwrap();
    let kinds: Vec<(&str, i64)> = items
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("message", 2),
            ("message", 3),
            ("message_edited", 4),
            ("message_deleted", 5)
        ]
    );
    assert_eq!(items[2]["target_seq"], 2);
    assert_eq!(items[3]["target_seq"], 3);
    let r = app
        .get(
            &format!("/api/v1/rooms/{room}/events?after_seq=3&limit=1"),
            &bob.access,
        )
        .await;
    let page = r.expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);

    // A resume gets the edits and deletions too.
    let mut late = app.ws(&bob).await;
    let (replayed, subscribed) = late.subscribe(&room, Some(3)).await;
    let kinds: Vec<&str> = replayed
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["message_edited", "message_deleted"]);
    assert_eq!(subscribed["last_seq"], 5);

    // History shows the current state: edited body, a tombstone.
    let (seqs, _, items) = app.history(&bob, &room, "").await;
    assert_eq!(seqs, vec![1, 2, 3], "edits and deletions are not messages");
    assert_eq!(items[1]["body"], "m2 fixed");
    assert!(items[1]["edited_at"].is_string());
    assert_eq!(items[2]["deleted"], true);
    assert_ne!(items[2]["body"], "m3", "a tombstone does not keep the body");
    let room_json = app.get(&format!("/api/v1/rooms/{room}"), &bob.access).await;
    assert_eq!(room_json.expect(200)["last_seq"], 5);
}

#[tokio::test]
async fn only_the_author_may_edit_and_only_author_or_admin_may_delete() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;
    app.say(&bob, &room, "bob's").await;
    app.say(&alice, &room, "alice's").await;

    let r = app
        .patch(
            &format!("/api/v1/rooms/{room}/messages/1"),
            &alice.access,
            json!({"body": "hijack"}),
        )
        .await;
    r.expect_error(403, "forbidden");
    let r = app
        .delete(&format!("/api/v1/rooms/{room}/messages/2"), &carol.access)
        .await;
    r.expect_error(403, "forbidden");
    let r = app
        .patch(
            &format!("/api/v1/rooms/{room}/messages/99"),
            &bob.access,
            json!({"body": "x"}),
        )
        .await;
    r.expect_error(404, "not_found");
    // The owner may delete someone else's message.
    app.delete(&format!("/api/v1/rooms/{room}/messages/1"), &alice.access)
        .await
        .expect(204);
    let (_, _, items) = app.history(&bob, &room, "").await;
    assert_eq!(items[0]["deleted"], true);
    assert_eq!(items[1]["body"], "alice's");
}

#[tokio::test]
async fn sending_faster_than_the_limit_is_rate_limited() {
    let app = spawn_app_with(|cfg| {
        cfg.room.send_limit = 3;
        cfg.room.send_window_secs = 60;
    })
    .await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    for i in 0..3 {
        app.say(&alice, &room, &format!("m{i}")).await;
    }
    let r = app
        .post_message(&alice.access, &room, "too many", &cmid())
        .await;
    r.expect_error(429, "rate_limited");
    let retry: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After header");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");

    let mut ws = app.ws(&alice).await;
    let f = ws.send_and_wait(&room, &cmid(), "still too many").await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "rate_limited");
    assert!(ws.ping_barrier().await.is_empty(), "the socket stays open");
    let (seqs, _, _) = app.history(&alice, &room, "").await;
    assert_eq!(seqs, vec![1, 2, 3]);
}

/// A client whose ack was lost retries with the same `client_msg_id`: it
/// gets its message's seq back even when it has used up its sends (issue
/// #10, "idempotency first"), over REST and over the WebSocket.
#[tokio::test]
async fn a_retry_past_the_send_limit_gets_its_original_seq() {
    let app = spawn_app_with(|cfg| {
        cfg.room.send_limit = 2;
        cfg.room.send_window_secs = 60;
    })
    .await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    let (first, second) = (cmid(), cmid());
    let r = app.post_message(&alice.access, &room, "one", &first).await;
    let seq = r.expect(201)["seq"].as_i64().expect("seq");
    let r = app.post_message(&alice.access, &room, "two", &second).await;
    let seq2 = r.expect(201)["seq"].as_i64().expect("seq");
    app.post_message(&alice.access, &room, "three", &cmid())
        .await
        .expect_error(429, "rate_limited");

    let again = app.post_message(&alice.access, &room, "one", &first).await;
    assert!(
        again.status.is_success(),
        "a retry is answered: {}",
        again.text
    );
    assert_eq!(again.body["seq"], seq);
    let mut ws = app.ws(&alice).await;
    let ack = ws.send_and_wait(&room, &second, "two").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], seq2);
    // Nothing new was stored, and new messages are still limited.
    let f = ws.send_and_wait(&room, &cmid(), "four").await;
    assert_eq!(f["code"], "rate_limited", "{f}");
    let (seqs, _, _) = app.history(&alice, &room, "").await;
    assert_eq!(seqs, vec![seq, seq2]);
}
