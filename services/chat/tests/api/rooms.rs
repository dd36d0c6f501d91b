//! Rooms: creation, discovery, membership, read markers, presence in the
//! member list, privacy, and DMs.

use crate::helpers::{spawn_app, within, TestApp, TestUser};
use serde_json::{json, Value};
use std::time::Duration;

async fn my_room(app: &TestApp, user: &TestUser, room: &str) -> Value {
    let r = app.get("/api/v1/me/rooms", &user.access).await;
    let b = r.expect(200);
    assert!(
        b.get("next_cursor").is_some(),
        "a list has next_cursor: {b}"
    );
    b["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["id"] == room)
        .unwrap_or_else(|| panic!("room {room} is not in my rooms: {b}"))
        .clone()
}

async fn members(app: &TestApp, user: &TestUser, room: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/api/v1/rooms/{room}/members"), &user.access)
        .await;
    r.expect(200)["items"].as_array().expect("items").clone()
}

fn member<'a>(list: &'a [Value], user: &TestUser) -> Option<&'a Value> {
    list.iter().find(|m| m["user_id"] == user.id.as_str())
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn creating_a_room_makes_the_creator_its_owner() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let r = app
        .post(
            "/api/v1/rooms",
            &alice.access,
            json!({"name": "General", "topic": "anything", "visibility": "public"}),
        )
        .await;
    let room = r.expect(201).clone();
    let id = room["id"].as_str().expect("id");
    assert_eq!(id.len(), 36, "a uuid: {room}");
    assert_eq!(room["name"], "General");
    assert_eq!(room["topic"], "anything");
    assert_eq!(room["visibility"], "public");
    assert_eq!(room["kind"], "group");
    assert_eq!(room["last_seq"], 0);
    assert!(room["created_at"].as_str().is_some_and(|s| s.contains('T')));

    let got = app.get(&format!("/api/v1/rooms/{id}"), &alice.access).await;
    assert_eq!(got.expect(200), &room);
    let list = members(&app, &alice, id).await;
    assert_eq!(list.len(), 1);
    assert_eq!(member(&list, &alice).expect("the owner")["role"], "owner");
    let mine = my_room(&app, &alice, id).await;
    assert_eq!(mine["role"], "owner");

    let r = app
        .post(
            "/api/v1/rooms",
            &alice.access,
            json!({"name": "x", "visibility": "secret"}),
        )
        .await;
    r.expect_error(400, "invalid_request");
    assert!(r.message().contains("visibility"), "{}", r.text);
    let r = app
        .post(
            "/api/v1/rooms",
            &alice.access,
            json!({"name": "", "visibility": "public"}),
        )
        .await;
    r.expect_error(400, "invalid_request");
    assert!(r.message().contains("name"), "{}", r.text);
}

#[tokio::test]
async fn public_rooms_can_be_listed_and_searched_by_name() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    // Letters and digits only, so that only "snake_case" has an underscore.
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    for name in [
        format!("blue {tag}"),
        format!("green {tag}"),
        format!("100% {tag}"),
        "snake_case".to_owned(),
    ] {
        app.create_room_named(&alice.access, &name, "public").await;
    }
    app.create_room_named(&alice.access, &format!("blue secret {tag}"), "private")
        .await;

    let r = app.get("/api/v1/rooms?q=blue", &alice.access).await;
    assert_eq!(
        names(r.expect(200)),
        vec![format!("blue {tag}")],
        "private rooms are not listed"
    );

    let r = app.get("/api/v1/rooms", &alice.access).await;
    let all = r.expect(200);
    assert_eq!(names(all).len(), 4);
    assert_eq!(all["next_cursor"], Value::Null);

    // LIKE metacharacters are matched literally.
    let r = app.get("/api/v1/rooms?q=%25", &alice.access).await;
    assert_eq!(names(r.expect(200)), vec![format!("100% {tag}")]);
    let r = app.get("/api/v1/rooms?q=_", &alice.access).await;
    assert_eq!(names(r.expect(200)), vec!["snake_case".to_owned()]);
    let r = app.get("/api/v1/rooms?q=%5C", &alice.access).await;
    assert!(
        names(r.expect(200)).is_empty(),
        "a backslash is literal too"
    );
    let r = app
        .get("/api/v1/rooms?q=nothing-like-this", &alice.access)
        .await;
    assert!(names(r.expect(200)).is_empty());

    // Paging with the opaque cursor visits each room once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => "/api/v1/rooms?limit=1".to_owned(),
            Some(c) => format!("/api/v1/rooms?limit=1&cursor={c}"),
        };
        let page = app.get(&path, &alice.access).await;
        let page = page.expect(200);
        let got = names(page);
        assert!(got.len() <= 1);
        seen.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    let mut expected = names(all);
    expected.sort();
    assert_eq!(seen, expected);
    let r = app.get("/api/v1/rooms?limit=201", &alice.access).await;
    r.expect_error(400, "invalid_request");
}

#[tokio::test]
async fn my_rooms_count_unread_messages_and_the_read_marker_only_moves_forward() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    for i in 1..=3 {
        app.say(&alice, &room, &format!("a{i}")).await;
    }
    app.say(&bob, &room, "b1").await;

    let mine = my_room(&app, &bob, &room).await;
    assert_eq!(mine["role"], "member");
    assert_eq!(mine["last_seq"], 4);
    assert_eq!(mine["last_read_seq"], 0);
    assert_eq!(mine["unread"], 3, "only messages by others count: {mine}");
    for k in ["name", "topic", "visibility", "kind", "created_at"] {
        assert!(
            mine.get(k).is_some(),
            "my room has the room field {k}: {mine}"
        );
    }
    assert_eq!(my_room(&app, &alice, &room).await["unread"], 1);

    let read = |seq: i64| {
        let app = &app;
        let room = room.clone();
        let token = bob.access.clone();
        async move {
            app.post(
                &format!("/api/v1/rooms/{room}/read"),
                &token,
                json!({"seq": seq}),
            )
            .await
        }
    };
    read(2).await.expect(204);
    let mine = my_room(&app, &bob, &room).await;
    assert_eq!(
        (mine["last_read_seq"].as_i64(), mine["unread"].as_i64()),
        (Some(2), Some(1))
    );
    read(1).await.expect(204);
    let mine = my_room(&app, &bob, &room).await;
    assert_eq!(mine["last_read_seq"], 2, "the marker never moves back");

    // Deleted messages are not unread.
    app.delete(&format!("/api/v1/rooms/{room}/messages/3"), &alice.access)
        .await
        .expect(204);
    let mine = my_room(&app, &bob, &room).await;
    assert_eq!(mine["unread"], 0, "{mine}");

    // Over the WebSocket too.
    app.say(&alice, &room, "a4").await;
    assert_eq!(my_room(&app, &bob, &room).await["unread"], 1);
    let mut ws = app.ws(&bob).await;
    ws.send_json(json!({"type": "read", "room_id": room, "seq": 6, "ref": "rd"}))
        .await;
    let f = ws.reply_to("rd").await;
    assert_eq!(f["type"], "ok", "{f}");
    let mine = my_room(&app, &bob, &room).await;
    assert_eq!(
        (mine["last_read_seq"].as_i64(), mine["unread"].as_i64()),
        (Some(6), Some(0))
    );
}

#[tokio::test]
async fn members_can_join_and_leave_public_rooms() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&alice, "public").await;

    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/join"),
            &bob.access,
            json!({}),
        )
        .await;
    let m = r.expect(200);
    assert_eq!(m["role"], "member");
    assert_eq!(m["user_id"], bob.id.as_str());
    let list = members(&app, &alice, &room).await;
    assert_eq!(
        member(&list, &bob).expect("bob is a member")["role"],
        "member"
    );
    assert_eq!(
        member(&list, &bob).unwrap()["username"],
        bob.username.as_str()
    );
    app.say(&bob, &room, "hi").await;

    app.post(
        &format!("/api/v1/rooms/{room}/leave"),
        &bob.access,
        json!({}),
    )
    .await
    .expect(204);
    let list = members(&app, &alice, &room).await;
    assert!(member(&list, &bob).is_none(), "bob left: {list:?}");
    let r = app
        .post_message(&bob.access, &room, "after leaving", "x1")
        .await;
    r.expect_error(403, "forbidden");
    let r = app.get("/api/v1/me/rooms", &bob.access).await;
    assert!(r.expect(200)["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_member_list_shows_roles_and_who_is_online() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;

    let list = members(&app, &alice, &room).await;
    assert_eq!(member(&list, &alice).unwrap()["role"], "owner");
    assert_eq!(member(&list, &bob).unwrap()["role"], "member");
    assert_eq!(member(&list, &bob).unwrap()["online"], false);

    let ws = app.ws(&bob).await;
    let list = members(&app, &alice, &room).await;
    assert_eq!(member(&list, &bob).unwrap()["online"], true, "{list:?}");

    ws.close().await;
    within("bob to be shown offline", async {
        loop {
            let list = members(&app, &alice, &room).await;
            if member(&list, &bob).unwrap()["online"] == false {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn private_rooms_are_invisible_to_outsiders() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&alice, "private").await;
    app.say(&alice, &room, "secret").await;

    let base = format!("/api/v1/rooms/{room}");
    app.get(&base, &bob.access)
        .await
        .expect_error(404, "not_found");
    app.post(&format!("{base}/join"), &bob.access, json!({}))
        .await
        .expect_error(404, "not_found");
    app.get(&format!("{base}/messages"), &bob.access)
        .await
        .expect_error(404, "not_found");
    app.post_message(&bob.access, &room, "let me in", "c1")
        .await
        .expect_error(404, "not_found");
    app.get(&format!("{base}/members"), &bob.access)
        .await
        .expect_error(404, "not_found");
    app.get(&format!("{base}/events"), &bob.access)
        .await
        .expect_error(404, "not_found");
    let mut ws = app.ws(&bob).await;
    let f = ws.try_subscribe(&room).await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "not_found");
    assert!(ws.ping_barrier().await.is_empty());
    let r = app.get("/api/v1/rooms", &bob.access).await;
    assert!(names(r.expect(200)).is_empty());

    // An admin can invite bob in.
    app.post(
        &format!("{base}/members"),
        &alice.access,
        json!({"user_id": bob.id}),
    )
    .await
    .expect(200);
    app.get(&base, &bob.access).await.expect(200);
    let (seqs, _, _) = app.history(&bob, &room, "").await;
    assert_eq!(seqs, vec![1]);
    // A plain member may not invite others into a private room.
    let carol = app.signup("carol").await;
    app.post(
        &format!("{base}/members"),
        &bob.access,
        json!({"user_id": carol.id}),
    )
    .await
    .expect_error(403, "forbidden");
    app.get(&base, &carol.access)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn non_members_of_a_public_room_cannot_post_read_or_subscribe() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&alice, "public").await;
    app.say(&alice, &room, "members only").await;

    app.get(&format!("/api/v1/rooms/{room}"), &bob.access)
        .await
        .expect(200);
    app.post_message(&bob.access, &room, "hi", "c1")
        .await
        .expect_error(403, "forbidden");
    app.get(&format!("/api/v1/rooms/{room}/messages"), &bob.access)
        .await
        .expect_error(403, "forbidden");
    let mut ws = app.ws(&bob).await;
    let f = ws.try_subscribe(&room).await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{f}"
    );
    let f = ws.send_and_wait(&room, "c2", "hi").await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{f}"
    );
    assert!(ws.ping_barrier().await.is_empty(), "the socket stays open");
    let (seqs, _, _) = app.history(&alice, &room, "").await;
    assert_eq!(seqs, vec![1]);
}

#[tokio::test]
async fn room_settings_are_for_admins_and_deletion_for_the_owner() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let path = format!("/api/v1/rooms/{room}");

    app.patch(&path, &bob.access, json!({"topic": "bob was here"}))
        .await
        .expect_error(403, "forbidden");
    let r = app
        .patch(&path, &alice.access, json!({"topic": "new topic"}))
        .await;
    assert_eq!(r.expect(200)["topic"], "new topic");
    app.delete(&path, &bob.access)
        .await
        .expect_error(403, "forbidden");
    app.delete(&format!("{path}/members/{}", alice.id), &bob.access)
        .await
        .expect_error(403, "forbidden");

    app.delete(&format!("{path}/members/{}", bob.id), &alice.access)
        .await
        .expect(204);
    app.post_message(&bob.access, &room, "kicked", "c1")
        .await
        .expect_error(403, "forbidden");
    app.delete(&path, &alice.access).await.expect(204);
    app.get(&path, &alice.access)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn a_dm_is_the_same_room_both_ways() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;

    let r = app
        .post("/api/v1/dms", &alice.access, json!({"user_id": bob.id}))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let dm = r.body.clone();
    assert_eq!(dm["kind"], "dm");
    assert_eq!(dm["visibility"], "private");
    let id = dm["id"].as_str().expect("id").to_owned();

    let r = app
        .post("/api/v1/dms", &bob.access, json!({"user_id": alice.id}))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    assert_eq!(
        r.body["id"],
        id.as_str(),
        "the same room from the other side"
    );
    let r = app
        .post("/api/v1/dms", &alice.access, json!({"user_id": bob.id}))
        .await;
    assert_eq!(r.body["id"], id.as_str(), "the same room every time");

    app.say(&alice, &id, "psst").await;
    let (seqs, _, _) = app.history(&bob, &id, "").await;
    assert_eq!(seqs, vec![1]);
    assert_eq!(my_room(&app, &bob, &id).await["unread"], 1);
    app.get(&format!("/api/v1/rooms/{id}"), &carol.access)
        .await
        .expect_error(404, "not_found");

    let r = app
        .post(
            "/api/v1/dms",
            &alice.access,
            json!({"user_id": "00000000-0000-7000-8000-000000000000"}),
        )
        .await;
    assert!(matches!(r.status.as_u16(), 400 | 404), "{}", r.text);
}

#[tokio::test]
async fn joining_and_leaving_faster_than_the_limit_is_rate_limited() {
    // Each join or leave is a frame to every member: a loop of them from one
    // free account would flood a room.
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.room.membership_limit = 4;
        cfg.room.membership_window_secs = 60;
    })
    .await;
    let alice = app.signup("alice").await;
    let mallory = app.signup("mallory").await;
    let room = app.create_room(&alice, "public").await;
    for _ in 0..2 {
        app.post(
            &format!("/api/v1/rooms/{room}/join"),
            &mallory.access,
            json!({}),
        )
        .await
        .expect(200);
        app.post(
            &format!("/api/v1/rooms/{room}/leave"),
            &mallory.access,
            json!({}),
        )
        .await
        .expect(204);
    }
    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/join"),
            &mallory.access,
            json!({}),
        )
        .await;
    r.expect_error(429, "rate_limited");
    assert!(
        r.headers.get("retry-after").is_some(),
        "a Retry-After header"
    );
    // Nothing changed: mallory is not a member.
    let members = members(&app, &alice, &room).await;
    assert!(
        members.iter().all(|m| m["user_id"] != mallory.id.as_str()),
        "{members:?}"
    );
    // Another user is not held up by mallory's limit.
    let bob = app.signup("bob").await;
    app.join(&bob, &room).await;
}

#[tokio::test]
async fn creating_rooms_faster_than_the_limit_is_rate_limited() {
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.room.create_limit = 2;
        cfg.room.create_window_secs = 60;
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    app.create_room(&alice, "public").await;
    app.create_room(&alice, "private").await;
    app.post(
        "/api/v1/rooms",
        &alice.access,
        json!({"name": "one too many", "visibility": "public"}),
    )
    .await
    .expect_error(429, "rate_limited");
    // A DM is a room too.
    app.post("/api/v1/dms", &alice.access, json!({"user_id": bob.id}))
        .await
        .expect_error(429, "rate_limited");
}
