//! Token signing keys in a cluster: auth replicas share them through the
//! database (no shared volume), a rotation logs nobody out, and gateways
//! learn a new key the first time they meet its `kid`.

use crate::cluster::{free_port, Cluster, Proc};
use crate::helpers::{cluster_options, start_cluster_with, within_for, TestApp, WAIT};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;

/// The `kid` in an access token's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("a JWT");
    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
            .expect("a JSON header");
    json["kid"].as_str().expect("a kid").to_owned()
}

/// `token` with its header's `kid` replaced (its signature no longer fits).
fn with_kid(token: &str, kid: &str) -> String {
    let (header, rest) = token.split_once('.').expect("a JWT");
    let mut json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
            .expect("a JSON header");
    json["kid"] = serde_json::json!(kid);
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(json.to_string()))
}

/// The token is accepted by the gateways: REST and a WebSocket connect.
async fn accepted(app: &TestApp, token: &str, what: &str) {
    let me = app.get("/api/v1/users/me", token).await;
    assert_eq!(me.status, 200, "{what}: GET /users/me: {}", me.text);
    let mut ws = crate::helpers::ws_connect(&app.ws_url, token)
        .await
        .unwrap_or_else(|e| panic!("{what}: the WebSocket upgrade is refused: {e}"));
    let hello = ws.recv_json().await;
    assert_eq!(
        hello["type"], "authenticated",
        "{what}: first frame: {hello}"
    );
}

/// Another auth process of `cluster`, on ports of its own, with `env` set.
fn another_auth(cluster: &Cluster, name: &str, env: &[(&str, String)]) -> (Proc, String) {
    let (grpc, http) = (free_port(), free_port());
    let mut p = Proc::clone_of(&cluster.auth, name);
    let mut args = p.args.clone();
    for (flag, port) in [("--grpc-addr", grpc), ("--http-addr", http)] {
        let at = args.iter().position(|a| a == flag).expect("the flag");
        args[at + 1] = format!("127.0.0.1:{port}");
    }
    p.set_args(&args);
    p.health = format!("http://127.0.0.1:{http}/readyz");
    for (k, v) in env {
        p.set_env(k, v);
    }
    (p, format!("http://127.0.0.1:{grpc}"))
}

async fn login_at(auth_url: &str, username: &str, password: &str) -> pb::AuthResponse {
    let mut client = within_for(
        Duration::from_secs(30),
        "auth to answer",
        pb::auth_service_client::AuthServiceClient::connect(auth_url.to_owned()),
    )
    .await
    .expect("auth's gRPC");
    client
        .login(pb::LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await
        .expect("a login")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_auth_replica_without_the_key_volume_signs_tokens_gateways_accept() {
    let cluster = start_cluster_with(cluster_options(|_| {})).await;
    let dir = Arc::new(tempfile::tempdir().expect("a temp dir"));
    // The second replica has no access to the first one's key file: its
    // own (empty) volume.
    let (mut second, second_url) = another_auth(
        &cluster,
        "auth-2",
        &[(
            "CHAT_JWT_KEY_FILE",
            dir.path().join("own.pk8").display().to_string(),
        )],
    );
    let second = tokio::task::spawn_blocking(move || {
        Cluster::start_again(&mut second);
        second
    })
    .await
    .expect("the second auth starts");
    let app = TestApp::for_cluster(cluster, dir, |_| {});
    let user = app.signup("two").await;
    let at_second = login_at(&second_url, &user.username, &user.password).await;
    accepted(
        &app,
        &at_second.access_token,
        "signed by the second replica",
    )
    .await;
    assert_eq!(kid(&at_second.access_token), kid(&user.access));
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_under_traffic_logs_nobody_out() {
    let mut opts = cluster_options(|c| c.auth.key_poll_interval_secs = 1);
    // No periodic fetch: the gateways learn the new key from its first
    // token only.
    opts.gateway_args.push("--keys-refresh-secs=0".into());
    let cluster = start_cluster_with(opts).await;
    let (program, env) = (cluster.auth.program.clone(), cluster.auth.env.clone());
    let dir = Arc::new(tempfile::tempdir().expect("a temp dir"));
    let app = TestApp::for_cluster(cluster, dir, |_| {});
    let user = app.signup("rot").await;
    let before = user.access.clone();
    accepted(&app, &before, "before the rotation").await;

    // Traffic while the key rotates: a WebSocket open from before, and
    // tokens with made-up kids at every gateway just before (they must
    // not get the new key's tokens refused).
    let mut open = app.ws(&user).await;
    let forged = with_kid(&before, "made-up");
    for i in 0..2 {
        let base = app.cluster().lock().expect("lock").gateway_http(i);
        let r = app
            .client
            .get(format!("{base}/api/v1/users/me"))
            .bearer_auth(&forged)
            .send()
            .await
            .expect("a response");
        assert_eq!(r.status(), 401, "a made-up kid at gateway {i}");
    }
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .arg("rotate-key")
            .envs(env)
            .output()
            .expect("auth rotate-key runs")
    })
    .await
    .expect("rotate-key");
    assert!(
        out.status.success(),
        "auth rotate-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Auth picks up the new key: new tokens carry another kid.
    let after = within_for(Duration::from_secs(30), "a token with the new key", async {
        loop {
            let (access, _) = app.new_session(&user).await;
            if kid(&access) != kid(&before) {
                return access;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    // The gateways have not seen this kid before: they fetch it once.
    accepted(&app, &after, "after the rotation").await;
    accepted(&app, &before, "from before the rotation").await;
    // Both gateways, directly.
    for i in 0..2 {
        let cluster = app.cluster();
        let base = cluster.lock().expect("lock").gateway_http(i);
        for token in [&before, &after] {
            let r = app
                .client
                .get(format!("{base}/api/v1/users/me"))
                .bearer_auth(token)
                .timeout(WAIT)
                .send()
                .await
                .expect("a response");
            assert_eq!(r.status(), 200, "gateway {i}");
        }
    }
    // The socket opened before the rotation still works.
    let room = app.create_room(&user, "public").await;
    open.send_json(serde_json::json!({"type": "subscribe", "room_id": room, "ref": "1"}))
        .await;
    let reply = open.recv_json().await;
    assert_ne!(reply["type"], "error", "{reply}");
}
