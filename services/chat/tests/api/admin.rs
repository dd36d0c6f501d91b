//! The admin listener: `/readyz` and `/metrics` answer on `--admin-addr`
//! only, never on the public port.

use crate::helpers::spawn_app;
use reqwest::StatusCode;

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
async fn the_admin_port_serves_nothing_but_readyz_and_metrics() {
    let app = spawn_app().await;
    for path in ["/api/v1/auth/login", "/ws", "/healthz", "/debug"] {
        let r = app
            .send(app.client.get(format!("{}{path}", app.admin)))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "admin {path}: {}", r.text);
    }
}
