//! Open WebSockets follow their session to its end, even when nobody
//! tells them: the gateway re-checks every socket's session against the
//! store (`--ws-session-check-ms`), and a logout racing a connect is
//! caught once the socket listens for its user's notices.

use std::time::Duration;

use crate::helpers::{spawn_app_with, within_for, ws_connect};
use serde_json::json;

#[tokio::test]
async fn a_socket_closes_with_4001_once_its_session_outlives_its_max_age() {
    let app = spawn_app_with(|cfg| {
        cfg.auth.session_max_age_secs = 2;
        cfg.gateway.ws_session_check_ms = 300;
    })
    .await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    let mut ws = app.ws(&alice).await;
    ws.subscribe(&room, None).await;
    // Nothing announces the end of a session that simply grows old: the
    // socket must find out by itself, and stop reading the room.
    within_for(
        Duration::from_secs(20),
        "the socket of the expired session to close",
        ws.expect_close_code(4001),
    )
    .await;
}

#[tokio::test]
async fn a_logout_racing_a_connect_never_leaves_the_socket_open() {
    // Only notices and the connect-time re-check may close these sockets:
    // the periodic re-check is off.
    let app = spawn_app_with(|cfg| cfg.gateway.ws_session_check_ms = 0).await;
    let alice = app.signup("alice").await;
    for round in 0..30u64 {
        let (access, _) = app.new_session(&alice).await;
        let url = app.ws_url.clone();
        let token = access.clone();
        let connect = tokio::spawn(async move { ws_connect(&url, &token).await });
        // Land the logout somewhere between the connect's token check and
        // its subscription to the user's notices, on some round.
        tokio::time::sleep(Duration::from_micros(round * 150)).await;
        let r = app.post("/api/v1/auth/logout", &access, json!({})).await;
        assert_eq!(r.status.as_u16(), 204, "round {round}: {}", r.text);
        let Ok(mut ws) = connect.await.expect("the connect task") else {
            // Refused at the handshake: the logout came first.
            continue;
        };
        within_for(
            Duration::from_secs(15),
            "the logged-out socket to close",
            ws.expect_close_code(4001),
        )
        .await;
    }
}
