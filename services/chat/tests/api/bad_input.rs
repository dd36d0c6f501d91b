//! Bad input of every kind gets the contract's error (never a 500, never a
//! closed socket for a bad frame) and changes nothing.

use crate::helpers::{cmid, spawn_app, TestApp, TestUser};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Sends a raw body with `Content-Type: application/json`.
async fn raw_json(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> crate::helpers::Resp {
    let mut rb = app
        .client
        .request(method, app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    app.send(rb).await
}

/// A room with one message, and a way to check that nothing changed.
async fn baseline(app: &TestApp) -> (TestUser, String) {
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    app.say(&alice, &room, "the only message").await;
    (alice, room)
}

async fn assert_unchanged(app: &TestApp, alice: &TestUser, room: &str) {
    let (seqs, _, items) = app.history(alice, room, "").await;
    assert_eq!(seqs, vec![1], "no message was added");
    assert_eq!(items[0]["body"], "the only message");
    let r = app.get("/api/v1/me/rooms", &alice.access).await;
    assert_eq!(
        r.expect(200)["items"].as_array().unwrap().len(),
        1,
        "no room was added"
    );
}

#[tokio::test]
async fn malformed_json_is_an_invalid_request_and_changes_nothing() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let bodies = [
        "{",
        "not json",
        "{\"body\": \"x\",}",
        "[]",
        "null",
        "",
        "{\"body\": \"\\ud800\"}",
    ];
    for body in bodies {
        for (method, path) in [
            (Method::POST, format!("/api/v1/rooms/{room}/messages")),
            (Method::POST, "/api/v1/rooms".to_owned()),
            (Method::POST, "/api/v1/auth/signup".to_owned()),
            (Method::PATCH, "/api/v1/users/me".to_owned()),
        ] {
            let r = raw_json(&app, method.clone(), &path, Some(&alice.access), body).await;
            assert_eq!(
                (r.status.as_u16(), r.code()),
                (400, "invalid_request"),
                "{method} {path} {body:?} → {}",
                r.text
            );
        }
    }
    // A JSON body without the JSON content type is refused too.
    let r = app
        .send(
            app.client
                .post(app.url(&format!("/api/v1/rooms/{room}/messages")))
                .bearer_auth(&alice.access)
                .body(json!({"body": "x", "client_msg_id": "c"}).to_string()),
        )
        .await;
    assert!(matches!(r.status.as_u16(), 400 | 415), "{}", r.text);
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn missing_or_wrongly_typed_fields_are_invalid_requests() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let messages = format!("/api/v1/rooms/{room}/messages");
    let cases: Vec<(Method, String, Value)> = vec![
        (Method::POST, messages.clone(), json!({"body": "no id"})),
        (
            Method::POST,
            messages.clone(),
            json!({"client_msg_id": "no body"}),
        ),
        (
            Method::POST,
            messages.clone(),
            json!({"body": 42, "client_msg_id": "c1"}),
        ),
        (
            Method::POST,
            messages.clone(),
            json!({"body": "x", "client_msg_id": ["c1"]}),
        ),
        (
            Method::POST,
            messages.clone(),
            json!({"body": "", "client_msg_id": "c2"}),
        ),
        (
            Method::POST,
            messages.clone(),
            json!({"body": "   ", "client_msg_id": "c3"}),
        ),
        (
            Method::POST,
            messages.clone(),
            json!({"body": "x", "client_msg_id": ""}),
        ),
        (
            Method::POST,
            messages.clone(),
            json!({"body": "x", "client_msg_id": "c".repeat(129)}),
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({"visibility": "public"}),
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({"name": 5, "visibility": "public"}),
        ),
        (
            Method::POST,
            "/api/v1/rooms".into(),
            json!({"name": "x".repeat(101), "visibility": "public"}),
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/read"),
            json!({"seq": "five"}),
        ),
        (
            Method::POST,
            format!("/api/v1/rooms/{room}/read"),
            json!({}),
        ),
        (Method::POST, "/api/v1/dms".into(), json!({"user_id": 7})),
        (Method::PATCH, format!("{messages}/1"), json!({"body": ""})),
        (
            Method::PATCH,
            format!("{messages}/abc"),
            json!({"body": "x"}),
        ),
        (
            Method::PATCH,
            format!("{messages}/-1"),
            json!({"body": "x"}),
        ),
        (
            Method::PATCH,
            "/api/v1/users/me".into(),
            json!({"display_name": 3}),
        ),
    ];
    for (method, path, body) in cases {
        let r = app
            .request(
                method.clone(),
                &path,
                Some(&alice.access),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (400, "invalid_request"),
            "{method} {path} {body} → {}",
            r.text
        );
    }
    for query in ["limit=abc", "limit=-1", "before_seq=x", "limit=0.5"] {
        let r = app.get(&format!("{messages}?{query}"), &alice.access).await;
        r.expect_error(400, "invalid_request");
    }
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn unknown_routes_and_malformed_ids_are_404() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    for path in [
        "/api/v1/nope",
        "/api/v2/rooms",
        "/nope",
        "/api/v1/rooms/not-a-uuid",
        "/api/v1/rooms/not-a-uuid/messages",
        "/api/v1/rooms/00000000-0000-7000-8000-000000000000",
        "/api/v1/rooms/'%20OR%201=1--",
        "/api/v1/users/not-a-uuid",
    ] {
        let r = app.get(path, &alice.access).await;
        r.expect_error(404, "not_found");
    }
    let r = app
        .post_message(&alice.access, "not-a-uuid", "x", &cmid())
        .await;
    r.expect_error(404, "not_found");
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn a_garbage_authorization_header_is_401() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    for header in [
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Bearer",
        "Bearer ",
        "Bearer a.b.c",
        "Bearer not-a-jwt",
        "Token abc",
        "Bearer eyJhbGciOiJFZERTQSJ9.e30.",
    ] {
        let r = app
            .send(
                app.client
                    .get(app.url("/api/v1/users/me"))
                    .header("authorization", header),
            )
            .await;
        r.expect_error(401, "unauthorized");
        let r = app
            .send(
                app.client
                    .post(app.url(&format!("/api/v1/rooms/{room}/messages")))
                    .header("authorization", header)
                    .json(&json!({"body": "x", "client_msg_id": "c"})),
            )
            .await;
        r.expect_error(401, "unauthorized");
    }
    let r = app.send(app.client.get(app.url("/api/v1/me/rooms"))).await;
    r.expect_error(401, "unauthorized");
    let err = crate::helpers::ws_connect_with_header(&app.ws_url, "Basic YWxpY2U6cGFzc3dvcmQ=")
        .await
        .err()
        .expect("the upgrade is refused");
    assert_eq!(crate::helpers::refused(err).0, 401);
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn a_body_over_4000_characters_is_too_large_over_rest_and_websocket() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let r = app
        .post_message(&alice.access, &room, &"x".repeat(4001), &cmid())
        .await;
    r.expect_error(413, "too_large");
    // Characters, not bytes: 4000 two-byte characters are fine...
    let ok = app
        .post_message(&alice.access, &room, &"é".repeat(4000), &cmid())
        .await;
    ok.expect(201);
    // ...and 4001 are not.
    let r = app
        .post_message(&alice.access, &room, &"é".repeat(4001), &cmid())
        .await;
    r.expect_error(413, "too_large");

    let mut ws = app.ws(&alice).await;
    let f = ws.send_and_wait(&room, &cmid(), &"x".repeat(4001)).await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "too_large");
    assert!(ws.ping_barrier().await.is_empty(), "the socket stays open");
    let (seqs, _, _) = app.history(&alice, &room, "").await;
    assert_eq!(seqs, vec![1, 2]);
    let r = app
        .patch(
            &format!("/api/v1/rooms/{room}/messages/1"),
            &alice.access,
            json!({"body": "y".repeat(4001)}),
        )
        .await;
    r.expect_error(413, "too_large");
}

#[tokio::test]
async fn a_rest_body_over_64_kib_is_413() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let huge = json!({"body": "x".repeat(70 * 1024), "client_msg_id": cmid()});
    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            &alice.access,
            huge,
        )
        .await;
    r.expect_error(413, "too_large");
    let r = app
        .signup_raw(json!({"username": "x".repeat(70 * 1024), "password": "y".repeat(10)}))
        .await;
    r.expect_error(413, "too_large");
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn bad_websocket_frames_get_an_error_frame_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let mut ws = app.ws(&alice).await;

    let bad_frames = [
        json!({"type": "launch_missiles", "ref": "u1"}),
        json!({"type": "send", "ref": "u2", "room_id": room}),
        json!({"type": "send", "ref": "u3", "room_id": room, "client_msg_id": 1, "body": "x"}),
        json!({"type": "subscribe", "ref": "u4", "room_id": "not-a-uuid"}),
        json!({"type": "subscribe", "ref": "u5", "room_id": room, "since_seq": -1}),
        json!({"type": "send", "ref": "u6", "room_id": "not-a-uuid", "client_msg_id": "c", "body": "x"}),
        json!({"type": "auth", "ref": "u7", "token": alice.access}),
        json!({"ref": "u8"}),
    ];
    for frame in &bad_frames {
        ws.send_json(frame.clone()).await;
        let r = frame["ref"].as_str().unwrap();
        let f = ws.reply_to(r).await;
        assert_eq!(f["type"], "error", "{frame} → {f}");
        assert_eq!(f["code"], "invalid_request", "{frame} → {f}");
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    for text in ["not json", "{", "[1,2]", "42", "\"subscribe\""] {
        ws.send_text(text).await;
        let f = ws.recv_event().await;
        assert_eq!(f["type"], "error", "{text} → {f}");
        assert_eq!(f["code"], "invalid_request", "{text} → {f}");
    }
    ws.send_message(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let f = ws.recv_event().await;
    assert_eq!(f["type"], "error", "binary → {f}");

    assert!(ws.ping_barrier().await.is_empty(), "still answers ping");
    let f = ws.send_and_wait(&room, "after-errors", "still works").await;
    assert_eq!(f["type"], "ack", "{f}");
    assert_eq!(f["seq"], 2);
}

#[tokio::test]
async fn a_websocket_frame_over_64_kib_closes_with_1009() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    // In a cluster through HAProxy: the gateway reads the rest of the frame
    // before it lets the socket go, so the close frame is not overtaken by
    // a reset.
    let mut ws = app.ws(&alice).await;
    let frame = json!({"type": "send", "room_id": room, "client_msg_id": "huge", "body": "x".repeat(70 * 1024)});
    // The server may stop reading before the whole frame is written.
    let _ = ws.send_message(Message::text(frame.to_string())).await;
    ws.expect_close_code(1009).await;
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn sql_metacharacters_round_trip_unchanged_and_break_nothing() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let nasty = [
        "'; DROP TABLE users; --",
        "Robert'); DROP TABLE messages;--",
        "100% of _all_ \\ rooms",
        "\" OR 1=1 --",
        "%",
        "_",
        "\\",
        "é 🦀 שלום עולם",
    ];
    for (i, s) in nasty.iter().enumerate() {
        let r = app
            .post(
                "/api/v1/rooms",
                &alice.access,
                json!({"name": s, "topic": s, "visibility": "public"}),
            )
            .await;
        let room = r.expect(201).clone();
        assert_eq!(room["name"], *s);
        assert_eq!(room["topic"], *s);
        let id = room["id"].as_str().unwrap().to_owned();
        let got = app.get(&format!("/api/v1/rooms/{id}"), &bob.access).await;
        assert_eq!(got.expect(200)["name"], *s);

        let c = format!("{s}#{i}");
        let m = app.post_message(&alice.access, &id, s, &c).await;
        let m = m.expect(201);
        assert_eq!(m["body"], *s);
        assert_eq!(m["client_msg_id"], c.as_str());
        let again = app.post_message(&alice.access, &id, s, &c).await;
        assert_eq!(again.expect(200)["seq"], 1, "dedupe works with odd ids");
        let (_, _, items) = app.history(&alice, &id, "").await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["body"], *s);
        assert_eq!(items[0]["client_msg_id"], c.as_str());

        let r = app
            .patch("/api/v1/users/me", &bob.access, json!({"display_name": s}))
            .await;
        assert_eq!(r.expect(200)["display_name"], *s);
        let r = app
            .get(&format!("/api/v1/users/{}", bob.id), &alice.access)
            .await;
        assert_eq!(r.expect(200)["display_name"], *s);
    }

    // Searching with them matches literally.
    let all = app.get("/api/v1/rooms?limit=200", &alice.access).await;
    assert_eq!(
        all.expect(200)["items"].as_array().unwrap().len(),
        nasty.len()
    );
    for (q, expected) in [("%25", 2), ("_", 2), ("%5C", 2), ("DROP", 2), ("'", 2)] {
        let r = app
            .get(&format!("/api/v1/rooms?q={q}"), &alice.access)
            .await;
        let n = r.expect(200)["items"].as_array().unwrap().len();
        assert_eq!(n, expected, "q={q}");
    }

    // Everything still works.
    app.login(&alice.username, &alice.password)
        .await
        .expect(200);
    app.login(&bob.username, &bob.password).await.expect(200);
    let r = app.get("/api/v1/me/rooms", &alice.access).await;
    assert_eq!(
        r.expect(200)["items"].as_array().unwrap().len(),
        nasty.len()
    );
}

/// A refusal of `field`: 400 `invalid_request`, the message naming it.
#[track_caller]
fn assert_refused(r: &crate::helpers::Resp, field: &str) {
    r.expect_error(400, "invalid_request");
    assert!(
        r.message().starts_with(&format!("{field}: ")),
        "the message names {field}: {}",
        r.text
    );
}

/// The same for a WebSocket error frame.
#[track_caller]
fn assert_refused_frame(f: &Value, field: &str) {
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "invalid_request", "{f}");
    assert!(
        f["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("{field}: "))),
        "the message names {field}: {f}"
    );
}

#[tokio::test]
async fn a_nul_in_a_message_body_is_refused_over_rest_and_websocket() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    for body in ["a\u{0}b", "\u{0}", "trailing\u{0}"] {
        let r = app.post_message(&alice.access, &room, body, &cmid()).await;
        assert_refused(&r, "body");
        let r = app
            .patch(
                &format!("/api/v1/rooms/{room}/messages/1"),
                &alice.access,
                json!({ "body": body }),
            )
            .await;
        assert_refused(&r, "body");
    }
    let mut ws = app.ws(&alice).await;
    let f = ws.send_and_wait(&room, &cmid(), "a\u{0}b").await;
    assert_refused_frame(&f, "body");
    assert!(ws.ping_barrier().await.is_empty(), "the socket stays open");
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn a_nul_in_a_client_msg_id_is_refused_over_rest_and_websocket() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let r = app.post_message(&alice.access, &room, "x", "c\u{0}1").await;
    assert_refused(&r, "client_msg_id");
    let mut ws = app.ws(&alice).await;
    let f = ws.send_and_wait(&room, "c\u{0}2", "x").await;
    assert_refused_frame(&f, "client_msg_id");
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn a_nul_in_a_room_name_or_topic_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let before = app
        .get(&format!("/api/v1/rooms/{room}"), &alice.access)
        .await;
    let before = before.expect(200).clone();
    for (field, body) in [
        ("name", json!({"name": "a\u{0}b", "visibility": "public"})),
        ("topic", json!({"name": "ok", "topic": "a\u{0}b"})),
    ] {
        let r = app.post("/api/v1/rooms", &alice.access, body).await;
        assert_refused(&r, field);
    }
    for (field, body) in [
        ("name", json!({"name": "a\u{0}b"})),
        ("topic", json!({"topic": "a\u{0}b"})),
        ("topic", json!({"topic": "\u{0}"})),
    ] {
        let r = app
            .patch(&format!("/api/v1/rooms/{room}"), &alice.access, body)
            .await;
        assert_refused(&r, field);
    }
    let after = app
        .get(&format!("/api/v1/rooms/{room}"), &alice.access)
        .await;
    assert_eq!(after.expect(200), &before, "the room is unchanged");
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn a_nul_in_a_display_name_is_refused_at_signup_and_on_update() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let username = crate::helpers::unique("bob");
    let r = app
        .signup_raw(
            json!({"username": username, "password": "pass-word-1", "display_name": "B\u{0}b"}),
        )
        .await;
    assert_refused(&r, "display_name");
    let r = app
        .patch(
            "/api/v1/users/me",
            &alice.access,
            json!({"display_name": "a\u{0}"}),
        )
        .await;
    assert_refused(&r, "display_name");
    let me = app.get("/api/v1/users/me", &alice.access).await;
    assert_eq!(me.expect(200)["display_name"], alice.username.as_str());
    // The refused signup stored nothing: the name is still free.
    let r = app
        .signup_raw(json!({"username": username, "password": "pass-word-1"}))
        .await;
    r.expect(201);
}

#[tokio::test]
async fn a_nul_in_a_username_at_signup_is_refused() {
    let app = spawn_app().await;
    let username = crate::helpers::unique("carol");
    for bad in [
        format!("{username}\u{0}"),
        format!("\u{0}{username}"),
        "ca\u{0}rol".to_owned(),
    ] {
        let r = app
            .signup_raw(json!({"username": bad, "password": "pass-word-1"}))
            .await;
        assert_refused(&r, "username");
    }
    let r = app
        .signup_raw(json!({"username": username, "password": "pass-word-1"}))
        .await;
    r.expect(201);
}

#[tokio::test]
async fn a_nul_in_a_search_query_is_refused() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    for q in ["%00", "a%00b", "%00%25"] {
        let r = app
            .get(&format!("/api/v1/rooms?q={q}"), &alice.access)
            .await;
        assert_refused(&r, "q");
    }
    assert_unchanged(&app, &alice, &room).await;
}

/// Invisible characters and bidi controls that make one name look like
/// another, or reorder the text around it.
const SPOOFERS: [&str; 14] = [
    "\u{202A}", "\u{202B}", "\u{202C}", "\u{202D}", "\u{202E}", "\u{2066}", "\u{2067}", "\u{2068}",
    "\u{2069}", "\u{200E}", "\u{200F}", "\u{061C}", "\u{200B}", "\u{FEFF}",
];

#[tokio::test]
async fn bidi_controls_and_zero_width_characters_are_refused_in_names() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let before = app
        .get(&format!("/api/v1/rooms/{room}"), &alice.access)
        .await;
    let before = before.expect(200).clone();
    let spoofers = SPOOFERS
        .iter()
        .copied()
        .chain(["\u{200C}", "\u{200D}", "\u{2060}"]);
    for c in spoofers {
        let name = format!("adm{c}in");
        let r = app
            .signup_raw(json!({"username": name, "password": "pass-word-1"}))
            .await;
        assert_refused(&r, "username");
        let r = app
            .signup_raw(json!({
                "username": crate::helpers::unique("dave"),
                "password": "pass-word-1",
                "display_name": name,
            }))
            .await;
        assert_refused(&r, "display_name");
        let r = app
            .patch(
                "/api/v1/users/me",
                &alice.access,
                json!({"display_name": name}),
            )
            .await;
        assert_refused(&r, "display_name");
        let r = app
            .post(
                "/api/v1/rooms",
                &alice.access,
                json!({"name": name, "visibility": "public"}),
            )
            .await;
        assert_refused(&r, "name");
        let r = app
            .patch(
                &format!("/api/v1/rooms/{room}"),
                &alice.access,
                json!({"name": name}),
            )
            .await;
        assert_refused(&r, "name");
    }
    let me = app.get("/api/v1/users/me", &alice.access).await;
    assert_eq!(me.expect(200)["display_name"], alice.username.as_str());
    let after = app
        .get(&format!("/api/v1/rooms/{room}"), &alice.access)
        .await;
    assert_eq!(after.expect(200), &before, "the room is unchanged");
    assert_unchanged(&app, &alice, &room).await;
}

#[tokio::test]
async fn bodies_and_topics_keep_line_breaks_rtl_text_and_joiners_but_not_overrides() {
    let app = spawn_app().await;
    let (alice, room) = baseline(&app).await;
    let path = format!("/api/v1/rooms/{room}");
    // Free text: newlines, tabs, right-to-left text with its marks, emoji
    // joined with ZWJ and Persian with ZWNJ are all kept as sent.
    let kept = [
        "two\nlines\tand a tab",
        "שלום \u{200F}(hello)",
        "family: 👨\u{200D}👩\u{200D}👧",
        "می\u{200C}خواهم",
    ];
    for (i, s) in kept.iter().enumerate() {
        let m = app.post_message(&alice.access, &room, s, &cmid()).await;
        assert_eq!(m.expect(201)["body"], *s);
        let r = app.patch(&path, &alice.access, json!({"topic": s})).await;
        assert_eq!(r.expect(200)["topic"], *s, "topic #{i}");
    }
    let topic = kept[kept.len() - 1];
    // Other control characters, and the bidi embeddings, overrides and
    // isolates that leak into the text around them, are refused.
    let refused = [
        "a\rb",
        "bell\u{7}",
        "esc\u{1b}[31m",
        "del\u{7f}",
        "c1\u{85}",
        "\u{202E}txt.exe",
        "\u{2066}x",
        "x\u{2069}",
    ];
    for s in refused {
        let r = app.post_message(&alice.access, &room, s, &cmid()).await;
        assert_refused(&r, "body");
        let r = app.patch(&path, &alice.access, json!({"topic": s})).await;
        assert_refused(&r, "topic");
    }
    let r = app.get(&path, &alice.access).await;
    assert_eq!(r.expect(200)["topic"], topic, "the topic is unchanged");
    let (seqs, _, _) = app.history(&alice, &room, "").await;
    assert_eq!(seqs.len(), 1 + kept.len(), "no refused message was stored");
}
