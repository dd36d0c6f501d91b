//! The admin listener: `/readyz`, `/metrics` and the debug routes answer
//! on `--admin-addr` only, never on the public port.

use crate::helpers::{into_resp, spawn_app, spawn_process};
use reqwest::StatusCode;
use std::time::Duration;

#[tokio::test]
async fn metrics_and_readyz_answer_on_the_admin_port_and_not_on_the_public_one() {
    let app = spawn_app().await;

    for path in ["/readyz", "/metrics"] {
        let r = app.send(app.client.get(app.url(path))).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "public {path}: {}", r.text);
        assert_eq!(r.code(), "not_found", "public {path}: {}", r.text);
    }
    let r = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(r.status, StatusCode::OK, "load balancers keep /healthz");

    let r = app
        .send(app.client.get(format!("{}/readyz", app.admin)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "ready");
    let r = app
        .send(app.client.get(format!("{}/metrics", app.admin)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.text.contains("chat_ws_connections"),
        "Prometheus text: {}",
        r.text
    );
}

#[tokio::test]
async fn the_admin_port_serves_nothing_but_operator_routes() {
    let app = spawn_app().await;
    for path in ["/api/v1/auth/login", "/ws", "/healthz", "/debug"] {
        let r = app
            .send(app.client.get(format!("{}{path}", app.admin)))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "admin {path}: {}", r.text);
    }
}

#[tokio::test]
async fn debug_routes_answer_on_the_admin_port_only() {
    let app = spawn_app().await;
    for path in ["/debug/runtime", "/debug/pprof/profile?seconds=1"] {
        let r = app.send(app.client.get(app.url(path))).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "public {path}: {}", r.text);
    }
    let r = app
        .send(app.client.get(format!("{}/debug/runtime", app.admin)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.body["runtime"]["workers"].as_u64() > Some(0),
        "{}",
        r.text
    );
    assert!(
        r.body["runtime"]["alive_tasks"].as_u64() > Some(0),
        "{}",
        r.text
    );
    assert!(
        r.body["process"]["resident_bytes"].as_u64() > Some(1 << 20),
        "{}",
        r.text
    );
    assert!(
        r.body["process"]["open_files"].as_u64() > Some(2),
        "{}",
        r.text
    );
}

/// The profiler samples the process it runs in; the server runs as its
/// own process here, as it does for an operator.
#[tokio::test]
async fn a_cpu_profile_is_bounded_and_one_runs_at_a_time() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = spawn_process(dir.path()).await;
    let client = &server.client;
    let profile = |query: &str| format!("{}/debug/pprof/profile?{query}", server.admin);
    let get = |url: String| async move {
        into_resp(
            client
                .get(url)
                .send()
                .await
                .expect("the admin port answers"),
        )
        .await
    };
    for bad in ["seconds=0", "seconds=61", "format=pdf"] {
        get(profile(bad)).await.expect_error(400, "invalid_request");
    }
    let running = get(profile("seconds=3&format=folded"));
    let busy = async {
        // The first has started when the second asks.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = get(profile("seconds=1")).await;
        // Work for the profiler to see (it counts CPU time): requests
        // from several clients at once, until the profile has ended.
        let until = tokio::time::Instant::now() + Duration::from_millis(2500);
        let load = (0..8).map(|_| async {
            while tokio::time::Instant::now() < until {
                let r = client
                    .get(format!("{}/api/v1/users/me", server.base))
                    .bearer_auth("not-a-token")
                    .send()
                    .await
                    .expect("the server answers");
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            }
        });
        futures_util::future::join_all(load).await;
        second
    };
    let (first, second) = tokio::join!(running, busy);
    second.expect_error(429, "rate_limited");
    assert!(second.headers.contains_key("retry-after"));
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.headers["content-type"], "text/plain; charset=utf-8");
    // Folded stacks, one per line (how many depends on the CPU time the
    // server used while sampled).
    for line in first.text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count`");
        assert!(!stack.is_empty() && count.parse::<u64>().is_ok(), "{line}");
    }
    // The profiler is free again, and renders a flame graph.
    let r = get(profile("seconds=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["content-type"], "image/svg+xml");
    assert!(
        r.text.contains("<svg"),
        "an SVG: {}",
        &r.text[..r.text.len().min(200)]
    );
}
