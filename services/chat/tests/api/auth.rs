//! Accounts, sessions and tokens: signup rules, login, refresh rotation with
//! reuse detection, logout and password changes ending sessions (including
//! their open WebSockets), and forged tokens.

use crate::helpers::{refused, spawn_app, spawn_app_with, unique, ws_connect, TestApp, PASSWORD};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

async fn me(app: &TestApp, token: &str) -> u16 {
    app.get("/api/v1/users/me", token).await.status.as_u16()
}

#[tokio::test]
async fn signup_returns_the_user_and_a_token_pair() {
    let app = spawn_app().await;
    let username = unique("alice");
    let r = app
        .signup_raw(json!({"username": username, "password": PASSWORD, "display_name": "Alice A."}))
        .await;
    let b = r.expect(201);
    let user = &b["user"];
    assert_eq!(user["username"], username.as_str());
    assert_eq!(user["display_name"], "Alice A.");
    assert_eq!(user["id"].as_str().map(str::len), Some(36), "{b}");
    assert!(
        user["created_at"].as_str().is_some_and(|s| s.contains('T')),
        "{b}"
    );
    assert!(b["access_token"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(b["refresh_token"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(b["expires_in"].as_i64().is_some_and(|s| s > 0), "{b}");
    assert!(!r.text.contains(PASSWORD), "the password never comes back");
    let token = b["access_token"].as_str().unwrap();
    let got = app.get("/api/v1/users/me", token).await;
    assert_eq!(&got.expect(200)["id"], &user["id"]);
}

#[tokio::test]
async fn signup_rejects_bad_fields_and_names_them() {
    let app = spawn_app().await;
    let cases = [
        (json!({"username": "ab", "password": PASSWORD}), "username"),
        (
            json!({"username": "a".repeat(33), "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "bad name!", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "ålice", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": unique("u"), "password": "short"}),
            "password",
        ),
        (
            json!({"username": unique("u"), "password": "p".repeat(129)}),
            "password",
        ),
        (
            json!({"username": unique("u"), "password": PASSWORD, "display_name": ""}),
            "display_name",
        ),
    ];
    for (body, field) in cases {
        let r = app.signup_raw(body.clone()).await;
        r.expect_error(400, "invalid_request");
        assert!(r.message().contains(field), "{body} → {}", r.text);
    }
    // A missing field is a bad request too, never a 500.
    let r = app.signup_raw(json!({"username": unique("u")})).await;
    r.expect_error(400, "invalid_request");
    // The shortest and longest valid values are fine.
    app.signup_raw(json!({"username": "a-b", "password": "8 chars!"}))
        .await
        .expect(201);
    let long = format!("{}{}", "z".repeat(20), &unique("")[1..]);
    assert_eq!(long.len(), 32);
    app.signup_raw(json!({"username": long, "password": "p".repeat(128)}))
        .await
        .expect(201);
}

#[tokio::test]
async fn usernames_are_unique_case_insensitively() {
    let app = spawn_app().await;
    let name = unique("Alice");
    app.signup_raw(json!({"username": name, "password": PASSWORD}))
        .await
        .expect(201);
    let r = app
        .signup_raw(json!({"username": name, "password": PASSWORD}))
        .await;
    r.expect_error(409, "conflict");
    let r = app
        .signup_raw(json!({"username": name.to_lowercase(), "password": PASSWORD}))
        .await;
    r.expect_error(409, "conflict");
    let r = app
        .signup_raw(json!({"username": name.to_uppercase(), "password": PASSWORD}))
        .await;
    r.expect_error(409, "conflict");
}

#[tokio::test]
async fn login_fails_alike_for_an_unknown_user_and_a_wrong_password() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let wrong = app.login(&alice.username, "not the password").await;
    wrong.expect_error(401, "unauthorized");
    let unknown = app.login(&unique("nobody"), PASSWORD).await;
    unknown.expect_error(401, "unauthorized");
    assert_eq!(
        wrong.message(),
        unknown.message(),
        "no hint which one was wrong"
    );

    let ok = app.login(&alice.username, PASSWORD).await;
    let b = ok.expect(200);
    assert_eq!(b["user"]["id"], alice.id.as_str());
    assert_ne!(b["access_token"], alice.access.as_str());
    assert_eq!(me(&app, b["access_token"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn repeated_login_failures_are_rate_limited_with_retry_after() {
    let app = spawn_app_with(|cfg| cfg.auth.login_max_failures = 3).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    for _ in 0..3 {
        app.login(&alice.username, "wrong password")
            .await
            .expect_error(401, "unauthorized");
    }
    let r = app.login(&alice.username, "wrong password").await;
    r.expect_error(429, "rate_limited");
    let retry = r.headers.get("retry-after").and_then(|v| v.to_str().ok());
    assert!(
        retry
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s > 0),
        "Retry-After: {retry:?}"
    );
    // Other accounts are not affected.
    app.login(&bob.username, PASSWORD).await.expect(200);
}

#[tokio::test]
async fn refresh_rotates_the_pair_and_reusing_a_spent_token_revokes_the_session() {
    // No grace: a second use right away counts as reuse (within the grace
    // it would get the same new pair: `auth_abuse`).
    let app = spawn_app_with(|cfg| cfg.auth.refresh_grace_secs = 0).await;
    let alice = app.signup("alice").await;

    let r = app.refresh(&alice.refresh).await;
    let b = r.expect(200).clone();
    let access2 = b["access_token"].as_str().expect("access_token").to_owned();
    let refresh2 = b["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    assert_ne!(refresh2, alice.refresh);
    assert!(b["expires_in"].as_i64().is_some_and(|s| s > 0));
    assert_eq!(me(&app, &access2).await, 200);

    // The spent token fails, and its reuse ends the whole session.
    app.refresh(&alice.refresh)
        .await
        .expect_error(401, "unauthorized");
    app.refresh(&refresh2)
        .await
        .expect_error(401, "unauthorized");
    assert_eq!(
        me(&app, &access2).await,
        401,
        "the session's access tokens die too"
    );
    // Other sessions live on.
    let (access3, refresh3) = app.new_session(&alice).await;
    assert_eq!(me(&app, &access3).await, 200);
    app.refresh(&refresh3).await.expect(200);

    app.refresh("not-a-refresh-token")
        .await
        .expect_error(401, "unauthorized");
}

#[tokio::test]
async fn logout_ends_the_session_and_closes_its_websockets_with_4001() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let (other_access, _) = app.new_session(&alice).await;
    let mut ws = app.ws(&alice).await;
    let mut other_ws = app.ws_with_token(&other_access).await;

    app.post("/api/v1/auth/logout", &alice.access, json!({}))
        .await
        .expect(204);
    ws.expect_close_code(4001).await;
    assert_eq!(me(&app, &alice.access).await, 401);
    app.refresh(&alice.refresh)
        .await
        .expect_error(401, "unauthorized");
    let err = ws_connect(&app.ws_url, &alice.access)
        .await
        .err()
        .expect("a logged-out token cannot open a socket");
    assert_eq!(refused(err).0, 401);

    // The other session is untouched.
    assert_eq!(me(&app, &other_access).await, 200);
    assert!(other_ws.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn the_current_user_can_be_read_and_updated() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let r = app.get("/api/v1/users/me", &alice.access).await;
    let b = r.expect(200);
    assert_eq!(b["id"], alice.id.as_str());
    assert_eq!(b["username"], alice.username.as_str());
    assert!(b["created_at"].is_string());

    let r = app
        .patch(
            "/api/v1/users/me",
            &alice.access,
            json!({"display_name": "Alice Liddell"}),
        )
        .await;
    assert_eq!(r.expect(200)["display_name"], "Alice Liddell");
    let r = app.get("/api/v1/users/me", &alice.access).await;
    assert_eq!(r.expect(200)["display_name"], "Alice Liddell");

    let r = app
        .patch(
            "/api/v1/users/me",
            &alice.access,
            json!({"display_name": "x".repeat(65)}),
        )
        .await;
    r.expect_error(400, "invalid_request");
    assert!(r.message().contains("display_name"), "{}", r.text);

    // Others see the public profile only.
    let r = app
        .get(&format!("/api/v1/users/{}", alice.id), &bob.access)
        .await;
    let profile = r.expect(200);
    let mut keys: Vec<&str> = profile
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["display_name", "id", "username"]);
    assert_eq!(profile["display_name"], "Alice Liddell");
    app.get(
        "/api/v1/users/00000000-0000-7000-8000-000000000000",
        &bob.access,
    )
    .await
    .expect_error(404, "not_found");
}

#[tokio::test]
async fn changing_the_password_revokes_every_other_session() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let (other_access, other_refresh) = app.new_session(&alice).await;
    let mut other_ws = app.ws_with_token(&other_access).await;
    let new_password = "a much better passphrase";

    let r = app
        .put(
            "/api/v1/users/me/password",
            &alice.access,
            json!({"current_password": "wrong guess", "new_password": new_password}),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text);
    assert_eq!(
        me(&app, &other_access).await,
        200,
        "a failed change revokes nothing"
    );
    let r = app
        .put(
            "/api/v1/users/me/password",
            &alice.access,
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    r.expect_error(400, "invalid_request");

    app.put(
        "/api/v1/users/me/password",
        &alice.access,
        json!({"current_password": PASSWORD, "new_password": new_password}),
    )
    .await
    .expect(204);
    other_ws.expect_close_code(4001).await;
    assert_eq!(me(&app, &other_access).await, 401);
    app.refresh(&other_refresh)
        .await
        .expect_error(401, "unauthorized");
    assert_eq!(
        me(&app, &alice.access).await,
        200,
        "the current session stays"
    );
    app.login(&alice.username, PASSWORD)
        .await
        .expect_error(401, "unauthorized");
    app.login(&alice.username, new_password).await.expect(200);
}

#[tokio::test]
async fn sessions_can_be_listed_and_revoked() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let (other_access, _) = app.new_session(&alice).await;
    let r = app.get("/api/v1/auth/sessions", &alice.access).await;
    let b = r.expect(200);
    let items = b["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{b}");
    let current: Vec<&Value> = items.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{b}");
    let other = items
        .iter()
        .find(|s| s["current"] == false)
        .expect("the other session");
    let mut ws = app.ws_with_token(&other_access).await;
    app.delete(
        &format!("/api/v1/auth/sessions/{}", other["id"].as_str().unwrap()),
        &alice.access,
    )
    .await
    .expect(204);
    ws.expect_close_code(4001).await;
    assert_eq!(me(&app, &other_access).await, 401);
    assert_eq!(me(&app, &alice.access).await, 200);

    // Someone else's session is not ours to revoke.
    let bob = app.signup("bob").await;
    let r = app.get("/api/v1/auth/sessions", &bob.access).await;
    let bob_session = r.expect(200)["items"][0]["id"].as_str().unwrap().to_owned();
    let r = app
        .delete(
            &format!("/api/v1/auth/sessions/{bob_session}"),
            &alice.access,
        )
        .await;
    assert_eq!(r.status.as_u16(), 404, "{}", r.text);
    assert_eq!(me(&app, &bob.access).await, 200);
}

#[tokio::test]
async fn deleting_the_account_needs_the_password() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let r = app
        .request(
            reqwest::Method::DELETE,
            "/api/v1/users/me",
            Some(&alice.access),
            Some(json!({"password": "wrong guess"})),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text);
    assert_eq!(me(&app, &alice.access).await, 200);
    app.request(
        reqwest::Method::DELETE,
        "/api/v1/users/me",
        Some(&alice.access),
        Some(json!({"password": PASSWORD})),
    )
    .await
    .expect(204);
    app.login(&alice.username, PASSWORD)
        .await
        .expect_error(401, "unauthorized");
    assert_eq!(me(&app, &alice.access).await, 401);
}

#[tokio::test]
async fn first_frame_auth_authenticates_a_browser_socket() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let mut ws = app.ws_anonymous().await;
    ws.send_json(json!({"type": "auth", "token": alice.access}))
        .await;
    let hello = ws.recv_json().await;
    assert_eq!(hello["type"], "authenticated", "{hello}");
    assert_eq!(hello["user_id"], alice.id.as_str());
    assert!(hello["session_id"].is_string());
    let room = app.create_room(&alice, "public").await;
    ws.subscribe(&room, None).await;
    let f = ws.send_and_wait(&room, "c1", "from a browser").await;
    assert_eq!(f["type"], "ack", "{f}");
}

#[tokio::test]
async fn a_bad_first_frame_token_closes_the_socket_with_4001() {
    let app = spawn_app().await;
    let mut ws = app.ws_anonymous().await;
    ws.send_json(json!({"type": "auth", "token": "garbage"}))
        .await;
    ws.expect_close_code(4001).await;

    // Anything but an auth frame first is refused the same way.
    let mut ws = app.ws_anonymous().await;
    ws.send_json(json!({"type": "ping"})).await;
    ws.expect_close_code(4001).await;
}

#[tokio::test]
async fn header_auth_with_a_bad_token_is_refused_with_401() {
    let app = spawn_app().await;
    let err = ws_connect(&app.ws_url, "garbage")
        .await
        .err()
        .expect("the upgrade is refused");
    let (status, body) = refused(err);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
        .expect("JSON claims")
}

#[tokio::test]
async fn unsigned_and_tampered_tokens_are_rejected() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let parts: Vec<&str> = alice.access.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let mut claims = claims_of(&alice.access);
    assert_eq!(claims["sub"], alice.id.as_str());

    // `alg: none`, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    // Bob's id under Alice's signature.
    claims["sub"] = json!(bob.id);
    let swapped = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    // A flipped signature byte.
    let mut sig = parts[2].as_bytes().to_vec();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    // An HMAC header with the same kid.
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    header["alg"] = json!("HS256");
    let hs = format!("{}.{}.{}", b64(&header), parts[1], parts[2]);

    for (what, token) in [
        ("alg none", &none),
        ("swapped sub", &swapped),
        ("flipped signature", &flipped),
        ("HS256", &hs),
    ] {
        let r = app.get("/api/v1/users/me", token).await;
        assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.text);
        assert_eq!(r.code(), "unauthorized", "{what}");
        let err = ws_connect(&app.ws_url, token).await.err().expect(what);
        assert_eq!(refused(err).0, 401, "{what}");
    }
    assert_eq!(
        me(&app, &alice.access).await,
        200,
        "the genuine token still works"
    );
}

#[tokio::test]
async fn expired_access_tokens_are_rejected() {
    let app = spawn_app_with(|cfg| cfg.auth.access_token_ttl_secs = 1).await;
    let alice = app.signup("alice").await;
    let claims = claims_of(&alice.access);
    let exp = claims["exp"].as_i64().expect("exp");
    assert!(exp - claims["iat"].as_i64().expect("iat") <= 1);
    // The verifier allows a few seconds of clock skew: wait past it.
    crate::helpers::within_for(
        std::time::Duration::from_secs(20),
        "the token to expire",
        async {
            while me(&app, &alice.access).await == 200 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        },
    )
    .await;
    let r = app.get("/api/v1/users/me", &alice.access).await;
    r.expect_error(401, "unauthorized");
    // The refresh token still gets a fresh pair.
    let r = app.refresh(&alice.refresh).await;
    let fresh = r.expect(200)["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&app, &fresh).await, 200);
}
