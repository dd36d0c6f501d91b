//! Revocations and removals reach open WebSockets on every gateway, even
//! when their bus notice is lost (published while NATS was down), and the
//! revocation list in Redis is only a cache of the store's.

use crate::cluster::{free_port, Options};
use crate::helpers::{
    cluster_options, start_cluster_with, within, within_for, ws_connect, TestApp, TestUser, Ws,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn cluster_app(opts: Options) -> TestApp {
    let cluster = start_cluster_with(opts).await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    TestApp::for_cluster(cluster, dir, |_| {})
}

/// A nats-server of the test's own, to stop and start again.
struct Nats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Nats {
    async fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        n.up().await;
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        self.child = Some(
            std::process::Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .current_dir(self.dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server starts (it is installed by scripts/services.sh)"),
        );
        let port = self.port;
        within("nats-server to listen", async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

/// A cluster of two gateways on `nats`, re-checking sessions every
/// `check_ms` (0: only after a bus reconnect).
async fn cluster_on(nats: &Nats, check_ms: u64) -> TestApp {
    let mut opts = if check_ms == 0 {
        cluster_options(|cfg| cfg.gateway.ws_session_check_ms = 0)
    } else {
        cluster_options(|cfg| cfg.gateway.ws_session_check_ms = 1_000)
    };
    opts.nats_url = Some(nats.url());
    cluster_app(opts).await
}

/// `user` on gateway `i`, past its `authenticated` frame.
async fn on_gateway(app: &TestApp, i: usize, user: &TestUser) -> Ws {
    let url = app.cluster().lock().expect("lock").gateway_ws(i);
    let mut ws = ws_connect(&url, &user.access)
        .await
        .expect("the upgrade is accepted");
    assert_eq!(ws.recv_json().await["type"], "authenticated");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_a_bus_outage_closes_the_socket_after_the_reconnect() {
    let mut nats = Nats::start().await;
    let app = cluster_on(&nats, 0).await;
    let bob = app.signup("bob").await;
    let mut ws = on_gateway(&app, 1, &bob).await;

    nats.down();
    // Its notice is published to nobody: the bus is down.
    let r = app
        .post("/api/v1/auth/logout", &bob.access, json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.up().await;

    within_for(
        Duration::from_secs(30),
        "the logged-out socket to close after the bus came back",
        ws.expect_close_code(4001),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_logout_notice_was_lost_closes_within_the_check_interval() {
    let mut nats = Nats::start().await;
    let app = cluster_on(&nats, 1_000).await;
    let bob = app.signup("bob").await;
    let mut ws = on_gateway(&app, 1, &bob).await;

    nats.down();
    let r = app
        .post("/api/v1/auth/logout", &bob.access, json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    // The bus stays down: only the periodic re-check can tell.
    within_for(
        Duration::from_secs(30),
        "the logged-out socket to close with the bus down",
        ws.expect_close_code(4001),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_during_a_bus_outage_ends_the_subscription_on_another_gateway() {
    let mut nats = Nats::start().await;
    let app = cluster_on(&nats, 0).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;
    let mut wb = on_gateway(&app, 1, &bob).await;
    wb.subscribe(&room, None).await;
    let mut wc = on_gateway(&app, 1, &carol).await;
    wc.subscribe(&room, None).await;

    nats.down();
    let r = app
        .delete(
            &format!("/api/v1/rooms/{room}/members/{}", bob.id),
            &alice.access,
        )
        .await;
    assert!(r.status.is_success(), "kick: {} {}", r.status, r.text);
    let r = app
        .put(
            &format!("/api/v1/rooms/{room}/bans/{}", carol.id),
            &alice.access,
            json!({}),
        )
        .await;
    assert!(r.status.is_success(), "ban: {} {}", r.status, r.text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.up().await;

    for (who, ws) in [("bob", &mut wb), ("carol", &mut wc)] {
        let f = within_for(
            Duration::from_secs(30),
            "the removed member's subscription to end",
            ws.recv_until("unsubscribed", |f| {
                f["type"] == "unsubscribed" && f["room_id"] == room.as_str()
            }),
        )
        .await;
        assert!(f.get("ref").is_none(), "{who}: unprompted: {f}");
    }
    // And the room's events stop reaching them.
    app.say(&alice, &room, "after the kick").await;
    for ws in [&mut wb, &mut wc] {
        let before = ws.ping_barrier().await;
        assert!(
            before.iter().all(|f| f["type"] != "message"),
            "a removed member still reads the room: {before:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_and_a_ban_end_the_subscription_on_another_gateway() {
    let app = cluster_app(cluster_options(|_| {})).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;
    let mut wb = on_gateway(&app, 1, &bob).await;
    wb.subscribe(&room, None).await;
    let mut wc = on_gateway(&app, 1, &carol).await;
    wc.subscribe(&room, None).await;
    let r = app
        .delete(
            &format!("/api/v1/rooms/{room}/members/{}", bob.id),
            &alice.access,
        )
        .await;
    assert!(r.status.is_success(), "kick: {} {}", r.status, r.text);
    let r = app
        .put(
            &format!("/api/v1/rooms/{room}/bans/{}", carol.id),
            &alice.access,
            json!({}),
        )
        .await;
    assert!(r.status.is_success(), "ban: {} {}", r.status, r.text);
    for ws in [&mut wb, &mut wc] {
        // Promptly (at once, by the bus notice); the bound is generous
        // for a loaded test host.
        ws.recv_until("the removed member's subscription to end", |f| {
            f["type"] == "unsubscribed" && f["room_id"] == room.as_str()
        })
        .await;
    }
}

/// Deletes every key of the cluster's Redis prefix (only this test's keys:
/// others run on the same Redis at the same time).
fn flush_prefix(prefix: &str) -> usize {
    let out = std::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .expect("redis-cli runs");
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|k| !k.is_empty())
        .collect();
    for chunk in keys.chunks(100) {
        let status = std::process::Command::new("redis-cli")
            .arg("DEL")
            .args(chunk)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success());
    }
    keys.len()
}

fn redis_exists(key: &str) -> bool {
    let out = std::process::Command::new("redis-cli")
        .args(["EXISTS", key])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stay_refused_after_redis_loses_the_revocation_list() {
    let mut opts = cluster_options(|_| {});
    opts.auth_args.push("--revocation-reseed-ms=500".into());
    let app = cluster_app(opts).await;
    let prefix = format!("t{}", app.cluster().lock().expect("lock").id);
    let alice = app.signup("alice").await;
    let (other, _) = app.new_session(&alice).await;
    let r = app
        .post("/api/v1/auth/logout", &alice.access, json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 204);
    app.get("/api/v1/users/me", &alice.access)
        .await
        .expect_error(401, "unauthorized");

    // Redis restarted without persistence, or someone flushed it.
    assert!(
        flush_prefix(&prefix) > 0,
        "the revocation list was in Redis"
    );
    app.get("/api/v1/users/me", &alice.access)
        .await
        .expect_error(401, "unauthorized");
    let url = app.cluster().lock().expect("lock").gateway_ws(0);
    assert!(
        ws_connect(&url, &alice.access).await.is_err(),
        "a WebSocket with the revoked token is refused"
    );
    app.get("/api/v1/users/me", &other).await.expect(200);

    // Auth rebuilds the list from the store.
    let seeded = format!("{prefix}:revoked:seeded");
    within_for(Duration::from_secs(20), "the list to be re-seeded", async {
        while !redis_exists(&seeded) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    app.get("/api/v1/users/me", &alice.access)
        .await
        .expect_error(401, "unauthorized");
    app.get("/api/v1/users/me", &other).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stay_refused_while_redis_is_down() {
    // A Redis of the test's own, to stop.
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    within("redis-server to listen", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut opts = cluster_options(|_| {});
    opts.redis_url = Some(format!("redis://127.0.0.1:{port}"));
    let app = cluster_app(opts).await;
    let alice = app.signup("alice").await;
    let (other, _) = app.new_session(&alice).await;
    let r = app
        .post("/api/v1/auth/logout", &alice.access, json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 204);

    let _ = redis.kill();
    let _ = redis.wait();
    // The store still knows: the revoked token is refused, not trusted.
    let r = app.get("/api/v1/users/me", &alice.access).await;
    assert_eq!(r.status.as_u16(), 401, "{}", r.text);
    // And a live session keeps working, from the store.
    app.get("/api/v1/users/me", &other).await.expect(200);
}
