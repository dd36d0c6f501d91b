//! Token signing keys: a rotation while users are connected logs nobody
//! out, and the server signs with the new key soon after.

use crate::helpers::{spawn_app_with, within_for, ws_connect, TestApp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::time::Duration;

fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("a JWT");
    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
            .expect("a JSON header");
    json["kid"].as_str().expect("a kid").to_owned()
}

async fn accepted(app: &TestApp, token: &str, what: &str) {
    let me = app.get("/api/v1/users/me", token).await;
    assert_eq!(me.status, 200, "{what}: GET /users/me: {}", me.text);
    let mut ws = ws_connect(&app.ws_url, token)
        .await
        .unwrap_or_else(|e| panic!("{what}: the WebSocket upgrade is refused: {e}"));
    let hello = ws.recv_json().await;
    assert_eq!(
        hello["type"], "authenticated",
        "{what}: first frame: {hello}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_before_and_after_a_key_rotation_are_both_accepted() {
    let app = spawn_app_with(|c| c.auth.key_poll_interval_secs = 1).await;
    let user = app.signup("rotate").await;
    let before = user.access.clone();
    let mut open = app.ws(&user).await;

    let new_kid = app.rotate_signing_key().await;
    assert_ne!(new_kid, kid(&before));
    let after = within_for(Duration::from_secs(30), "a token of the new key", async {
        loop {
            let (access, _) = app.new_session(&user).await;
            if kid(&access) == new_kid {
                return access;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    accepted(&app, &after, "signed with the new key").await;
    accepted(&app, &before, "signed with the old key").await;
    // A refresh after the rotation gets a token of the new key.
    let refreshed = app.refresh(&user.refresh).await;
    let body = refreshed.expect(200);
    let access = body["access_token"].as_str().expect("access_token");
    assert_eq!(kid(access), new_kid);
    accepted(&app, access, "refreshed").await;
    // The socket opened before the rotation still works.
    let room = app.create_room(&user, "public").await;
    open.send_json(serde_json::json!({"type": "subscribe", "room_id": room}))
        .await;
    let reply = open.recv_json().await;
    assert_ne!(reply["type"], "error", "{reply}");
}
