//! `subscribe_all` follows every room the user becomes a member of,
//! however they became one (creating it, a DM either side opens, a join or
//! an add), and a room that cannot be subscribed is reported in the
//! `subscribed_all` frame's `errors` without dropping the others.

use crate::helpers::{spawn_app, unique, TestApp, TestUser, Ws};
use serde_json::{json, Value};

/// A server with two users.
async fn alice_and_bob() -> (TestApp, TestUser, TestUser) {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    (app, alice, bob)
}

/// A socket of `user` subscribed to all their rooms; returns it with its
/// `subscribed_all` frame.
async fn subscribed_all(app: &TestApp, user: &TestUser, since: Value) -> (Ws, Value) {
    let mut ws = app.ws(user).await;
    let r = ws.new_ref();
    ws.send_json(json!({"type": "subscribe_all", "since": since, "ref": r}))
        .await;
    let reply = ws.reply_to(&r).await;
    (ws, reply)
}

/// Waits until `ws` follows `room` (its unprompted `subscribed` frame).
async fn followed(ws: &mut Ws, room: &str) {
    ws.recv_until(&format!("{room} to be followed"), |f| {
        f["type"] == "subscribed" && f["room_id"] == room
    })
    .await;
}

/// The next event `ws` gets (live notices aside), which must be the
/// message `body` in `room`.
async fn receives(ws: &mut Ws, room: &str, body: &str) {
    let f = ws.recv_event().await;
    assert_eq!(f["type"], "message", "{f}");
    assert_eq!(f["room_id"], room, "{f}");
    assert_eq!(f["body"], body, "{f}");
}

async fn open_dm(app: &TestApp, from: &TestUser, to: &TestUser) -> String {
    let r = app
        .post("/api/v1/dms", &from.access, json!({"user_id": to.id}))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    r.body["id"].as_str().expect("dm id").to_owned()
}

#[tokio::test]
async fn subscribe_all_follows_a_room_the_user_creates() {
    let (app, alice, bob) = alice_and_bob().await;
    let (mut a, reply) = subscribed_all(&app, &alice, json!({})).await;
    assert_eq!(reply["type"], "subscribed_all", "{reply}");

    let room = app.create_room(&alice, "public").await;
    followed(&mut a, &room).await;
    app.join(&bob, &room).await;
    app.say(&bob, &room, "hello from bob").await;
    receives(&mut a, &room, "hello from bob").await;
}

#[tokio::test]
async fn subscribe_all_follows_a_dm_the_other_user_opens() {
    let (app, alice, bob) = alice_and_bob().await;
    let (mut a, _) = subscribed_all(&app, &alice, json!({})).await;
    let (mut b, _) = subscribed_all(&app, &bob, json!({})).await;

    let dm = open_dm(&app, &bob, &alice).await;
    followed(&mut a, &dm).await;
    followed(&mut b, &dm).await;
    app.say(&bob, &dm, "psst").await;
    receives(&mut a, &dm, "psst").await;
    receives(&mut b, &dm, "psst").await;
}

#[tokio::test]
async fn subscribe_all_follows_a_dm_the_user_opens() {
    let (app, alice, bob) = alice_and_bob().await;
    let (mut a, _) = subscribed_all(&app, &alice, json!({})).await;
    let mut a2 = app.ws(&alice).await;

    let dm = open_dm(&app, &alice, &bob).await;
    followed(&mut a, &dm).await;
    // Opening it again is no news: the next frame is the message.
    assert_eq!(open_dm(&app, &alice, &bob).await, dm);
    let ack = a2
        .send_and_wait(&dm, &unique("c"), "from another tab")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    receives(&mut a, &dm, "from another tab").await;
}

#[tokio::test]
async fn subscribe_all_reports_a_failed_room_and_subscribes_the_others() {
    let (app, alice, bob) = alice_and_bob().await;
    let mine = app.create_room(&alice, "public").await;
    let theirs = app.create_room(&bob, "private").await;
    app.say(&alice, &mine, "before").await;

    let since = json!({mine.as_str(): 0, theirs.as_str(): 0, "not-a-room": 0});
    let (mut a, reply) = subscribed_all(&app, &alice, since).await;
    assert_eq!(reply["type"], "subscribed_all", "{reply}");
    assert_eq!(reply["rooms"], json!({mine.as_str(): 1}), "{reply}");
    let errors = reply["errors"].as_object().expect("an errors map");
    assert_eq!(errors.len(), 2, "{reply}");
    let code = errors[&theirs]["code"].as_str().unwrap_or_default();
    assert!(
        code == "not_found" || code == "forbidden",
        "not a member of {theirs}: {reply}"
    );
    assert!(errors[&theirs]["message"].is_string(), "{reply}");
    assert_eq!(errors["not-a-room"]["code"], "invalid_request", "{reply}");

    // The next event is in `mine`: `theirs` was not subscribed.
    app.say(&bob, &theirs, "unseen").await;
    app.say(&alice, &mine, "live").await;
    receives(&mut a, &mine, "live").await;
}

#[tokio::test]
async fn subscribed_all_has_no_errors_when_every_room_subscribes() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    let (_a, reply) = subscribed_all(&app, &alice, json!({room.as_str(): 0})).await;
    assert_eq!(reply["rooms"], json!({room.as_str(): 0}), "{reply}");
    assert!(reply.get("errors").is_none(), "{reply}");
}
