//! Session lifetimes: a refresh token is refused once its session is past
//! its max age (`--session-max-age-secs`) or the token sat unused longer
//! than the idle time (`--session-idle-secs`); the session then ends.

use std::time::{Duration, Instant};

use crate::helpers::{spawn_app_with, Resp, TestApp, TestUser};
use serde_json::Value;

/// The new refresh token of a successful refresh.
fn refreshed(r: &Resp) -> String {
    r.expect(200)["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

/// The ids of the caller's live sessions.
async fn session_ids(app: &TestApp, access: &str) -> Vec<String> {
    let r = app.get("/api/v1/auth/sessions", access).await;
    r.expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

/// The id of the session `user`'s first access token belongs to.
async fn current_session(app: &TestApp, user: &TestUser) -> String {
    let r = app.get("/api/v1/auth/sessions", &user.access).await;
    r.expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|s| s["current"] == Value::Bool(true))
        .and_then(|s| s["id"].as_str())
        .expect("the current session")
        .to_owned()
}

/// Asserts the 401 that ends an expired session.
#[track_caller]
fn expect_expired(r: &Resp) {
    r.expect_error(401, "unauthorized");
    assert!(r.message().contains("expired"), "body: {}", r.text);
}

#[tokio::test]
async fn a_refresh_token_idle_too_long_is_refused_and_ends_the_session() {
    let app = spawn_app_with(|cfg| {
        cfg.auth.session_idle_secs = 1;
        cfg.auth.session_max_age_secs = 60;
    })
    .await;
    let alice = app.signup("alice").await;
    let sid = current_session(&app, &alice).await;

    // Each refresh within the idle time works and slides the window past
    // the first token's idle limit.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refresh2 = refreshed(&app.refresh(&alice.refresh).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refresh3 = refreshed(&app.refresh(&refresh2).await);
    // The other session is used only for listing, before it idles out.
    let (other_access, _) = app.new_session(&alice).await;

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    expect_expired(&app.refresh(&refresh3).await);
    let live = session_ids(&app, &other_access).await;
    assert!(!live.contains(&sid), "{live:?}");
    assert_eq!(live.len(), 1, "{live:?}");
    let r = app.get("/api/v1/users/me", &alice.access).await;
    assert_eq!(r.status.as_u16(), 401, "the session's access token dies");
}

#[tokio::test]
async fn a_session_used_continuously_still_ends_at_its_max_age() {
    let app = spawn_app_with(|cfg| {
        cfg.auth.session_idle_secs = 60;
        cfg.auth.session_max_age_secs = 2;
    })
    .await;
    let alice = app.signup("alice").await;
    let signed_up = Instant::now();
    let sid = current_session(&app, &alice).await;

    let mut refresh = alice.refresh.clone();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        refresh = refreshed(&app.refresh(&refresh).await);
    }
    let (other_access, _) = app.new_session(&alice).await;

    tokio::time::sleep_until((signed_up + Duration::from_millis(2_100)).into()).await;
    expect_expired(&app.refresh(&refresh).await);
    // The session stays ended.
    app.refresh(&refresh)
        .await
        .expect_error(401, "unauthorized");
    let live = session_ids(&app, &other_access).await;
    assert!(!live.contains(&sid), "{live:?}");
}
