//! Several gateways, and what happens when processes die.

use crate::cluster::{free_port, Options};
use crate::helpers::{
    cluster_options, cmid, message_seqs, start_cluster_with, within, within_for, TestApp, Ws,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn cluster_app(opts: Options) -> TestApp {
    let cluster = start_cluster_with(opts).await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    TestApp::for_cluster(cluster, dir, |_| {})
}

async fn wait_port(port: u16) {
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

fn base_options() -> Options {
    cluster_options(|_| {})
}

/// `chat_ws_connections` of one gateway (on its admin listener).
async fn connections_on(app: &TestApp, gateway_admin: &str) -> i64 {
    let text = app
        .client
        .get(format!("{gateway_admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix("chat_ws_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no chat_ws_connections in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_the_load_balancer_land_on_different_gateways_and_chat() {
    let app = cluster_app(base_options()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut wa = app.ws(&alice).await;
    let mut wb = app.ws(&bob).await;
    let gateways: Vec<String> = {
        let c = app.cluster();
        let c = c.lock().expect("lock");
        (0..2).map(|i| c.gateway_admin(i)).collect()
    };
    for g in &gateways {
        assert_eq!(connections_on(&app, g).await, 1, "one client on {g}");
    }
    wa.subscribe(&room, None).await;
    wb.subscribe(&room, None).await;
    let ack = wa
        .send_and_wait(&room, &cmid(), "hello from one gateway")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = wb
        .recv_until("alice's message", |f| f["type"] == "message")
        .await;
    assert_eq!(got["body"], "hello from one gateway");
    assert_eq!(got["seq"], ack["seq"]);
    let ack = wb
        .send_and_wait(&room, &cmid(), "and back from the other")
        .await;
    let got = wa
        .recv_until("bob's message", |f| {
            f["type"] == "message" && f["seq"] == ack["seq"]
        })
        .await;
    assert_eq!(got["body"], "and back from the other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_s_clients_resume_on_another_with_nothing_lost_or_doubled() {
    let app = cluster_app(base_options()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let gw0 = app.cluster().lock().expect("lock").gateway_ws(0);
    let mut wb = crate::helpers::ws_connect(&gw0, &bob.access)
        .await
        .expect("bob connects to gateway 0");
    assert_eq!(wb.recv_json().await["type"], "authenticated");
    wb.subscribe(&room, Some(0)).await;
    for i in 1..=5 {
        app.say(&alice, &room, &format!("before {i}")).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(wb.recv_event().await);
    }
    assert_eq!(message_seqs(&seen), vec![1, 2, 3, 4, 5]);

    // Gateway 0 dies mid-conversation; alice keeps talking (through the LB).
    let killer = app.cluster();
    tokio::task::spawn_blocking(move || killer.lock().expect("lock").gateways[0].kill())
        .await
        .expect("kill");
    within("bob's socket to drop", async {
        while let Some(Ok(_)) = wb.next_message().await {}
    })
    .await;
    for i in 6..=8 {
        app.say(&alice, &room, &format!("while away {i}")).await;
    }

    // Bob reconnects through the load balancer (only gateway 1 is left) and
    // resumes from the last seq he saw.
    let mut wb = app.ws(&bob).await;
    let (replayed, subscribed) = wb.subscribe(&room, Some(5)).await;
    assert_eq!(
        message_seqs(&replayed),
        vec![6, 7, 8],
        "exactly what he missed"
    );
    assert_eq!(subscribed["last_seq"], 8);
    app.say(&alice, &room, "live again").await;
    let live = wb.recv_event().await;
    assert_eq!(
        (live["seq"].as_i64(), live["body"].as_str()),
        (Some(9), Some("live again"))
    );
    assert!(wb.ping_barrier().await.is_empty(), "no duplicate");
}

/// Sends `count` messages over `ws`, retrying each with the same
/// client_msg_id (over a new connection if need be) until it is acked.
/// Returns (client_msg_id, acked seq, disturbed) in order: disturbed when
/// the client had to retry or the ack took over 200 ms (the gateway
/// retried for it).
async fn send_through_outages(
    app: &TestApp,
    user: &crate::helpers::TestUser,
    room: &str,
    count: usize,
) -> Vec<(String, i64, bool)> {
    let mut out = Vec::new();
    let mut ws: Option<Ws> = None;
    for i in 0..count {
        let id = cmid();
        let mut retried = false;
        let started = std::time::Instant::now();
        let seq = within_for(Duration::from_secs(60), "a message to be acked", async {
            loop {
                if ws.is_none() {
                    match crate::helpers::ws_connect(&app.ws_url, &user.access).await {
                        Ok(mut w) => {
                            let _ = tokio::time::timeout(Duration::from_secs(2), w.next_message()).await;
                            ws = Some(w);
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let Some(w) = ws.as_mut() else { continue };
                let r = w.new_ref();
                let frame = json!({"type": "send", "ref": r, "room_id": room, "client_msg_id": id, "body": format!("m{i}")});
                if w.send_message(tokio_tungstenite::tungstenite::Message::text(frame.to_string())).await.is_err() {
                    ws = None;
                    retried = true;
                    continue;
                }
                let reply = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match w.next_message().await {
                            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                                if v["ref"] == r.as_str() {
                                    return Some(v);
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => return None,
                        }
                    }
                })
                .await;
                match reply {
                    Ok(Some(v)) if v["type"] == "ack" => return v["seq"].as_i64().expect("seq"),
                    Ok(Some(v)) => {
                        // unavailable / internal during the outage: retry.
                        assert_ne!(v["code"], "invalid_request", "{v}");
                        retried = true;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => {
                        ws = None;
                        retried = true;
                    }
                }
            }
        })
        .await;
        let disturbed = retried || started.elapsed() > Duration::from_millis(200);
        out.push((id, seq, disturbed));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_auth_restarts_under_traffic_lose_no_acked_message() {
    let app = cluster_app(base_options()).await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;

    let cluster = app.cluster();
    let chaos = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = c.lock().expect("lock");
            c.rooms[0].kill();
            std::thread::sleep(Duration::from_millis(300));
            crate::cluster::Cluster::start_again(&mut c.rooms[0]);
            c.auth.kill();
            std::thread::sleep(Duration::from_millis(300));
            crate::cluster::Cluster::start_again(&mut c.auth);
        })
        .await
        .expect("restarts");
    });
    // At least 60 messages, and on until both restarts are over.
    let mut sent = send_through_outages(&app, &alice, &room, 60).await;
    while !chaos.is_finished() {
        sent.extend(send_through_outages(&app, &alice, &room, 10).await);
    }
    chaos.await.expect("chaos task");

    let stored = app.all_messages(&alice, &room).await;
    let seqs: Vec<i64> = stored.iter().filter_map(|m| m["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "gapless"
    );
    assert_eq!(
        stored.len(),
        sent.len(),
        "one message per client_msg_id, retries included"
    );
    for (id, seq, _) in &sent {
        let m = stored
            .iter()
            .find(|m| m["client_msg_id"] == id.as_str())
            .unwrap_or_else(|| panic!("acked message {id} is missing"));
        assert_eq!(
            m["seq"].as_i64(),
            Some(*seq),
            "the ack's seq is the stored one"
        );
    }
    assert!(
        sent.iter().any(|s| s.2),
        "the outage held up at least one send (a retry, by the client or the gateway)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_no_acked_message() {
    // A NATS of this test's own, so that restarting it disturbs nobody else.
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let start_nats = |dir: &std::path::Path| {
        KillOnDrop(
            std::process::Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server starts (it is installed by scripts/services.sh)"),
        )
    };
    let nats = start_nats(dir.path());
    wait_port(port).await;
    let mut opts = base_options();
    opts.nats_url = Some(format!("nats://127.0.0.1:{port}"));
    let app = cluster_app(opts).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let gw1 = app.cluster().lock().expect("lock").gateway_ws(1);
    let mut wb = crate::helpers::ws_connect(&gw1, &bob.access)
        .await
        .expect("bob on gateway 1");
    wb.recv_json().await;
    wb.subscribe(&room, Some(0)).await;
    for i in 1..=3 {
        app.say(&alice, &room, &format!("before {i}")).await;
    }

    drop(nats);
    // Sent while NATS is down: stored and acked, the publish is lost.
    for i in 4..=6 {
        app.say(&alice, &room, &format!("during {i}")).await;
    }
    // A socket opened meanwhile cannot get its user's notices (a
    // revocation would miss it): it is closed with 1012, to come back.
    let carol = app.signup("carol").await;
    let gw0 = app.cluster().lock().expect("lock").gateway_ws(0);
    let mut wc = crate::helpers::ws_connect(&gw0, &carol.access)
        .await
        .expect("the upgrade itself is accepted");
    wc.expect_close_code(1012).await;
    let nats = start_nats(dir.path());
    wait_port(port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = Vec::new();
    within_for(
        Duration::from_secs(30),
        "every message to reach bob",
        async {
            let mut i = 7;
            while message_seqs(&got).last().copied().unwrap_or(0) < 6 {
                match tokio::time::timeout(Duration::from_secs(2), wb.recv_event()).await {
                    Ok(f) => got.push(f),
                    Err(_) => {
                        app.say(&alice, &room, &format!("after {i}")).await;
                        i += 1;
                    }
                }
            }
        },
    )
    .await;
    let seqs = message_seqs(&got);
    let want: Vec<i64> = (1..=*seqs.last().expect("some")).collect();
    assert_eq!(seqs, want, "every message once, in order");

    // Carol comes back, and her notices flow: logging out closes the socket.
    let mut wc = crate::helpers::ws_connect(&gw0, &carol.access)
        .await
        .expect("carol on gateway 0");
    assert_eq!(wc.recv_json().await["type"], "authenticated");
    let r = app
        .post("/api/v1/auth/logout", &carol.access, json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 204);
    wc.expect_close_code(4001).await;
    drop(nats);
}

/// A child process that dies with the test, even a failing one.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_on_every_gateway_and_room_replica_get_one_gapless_order() {
    const SENDERS: usize = 4;
    const EACH: usize = 25;
    let mut opts = base_options();
    opts.rooms = 2;
    let app = cluster_app(opts).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let (gw0, gw1) = {
        let c = app.cluster();
        let c = c.lock().expect("lock");
        (c.gateway_ws(0), c.gateway_ws(1))
    };
    let mut watchers = Vec::new();
    for url in [&gw0, &gw1] {
        let mut w = crate::helpers::ws_connect(url, &bob.access)
            .await
            .expect("bob connects");
        w.recv_json().await;
        w.subscribe(&room, None).await;
        watchers.push(w);
    }
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        // Alternate gateways; room calls are balanced over both replicas.
        let url = if s % 2 == 0 { gw0.clone() } else { gw1.clone() };
        let (token, room) = (alice.access.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = crate::helpers::ws_connect(&url, &token)
                .await
                .expect("connect");
            ws.recv_json().await;
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let ack = ws
                    .send_and_wait(&room, &cmid(), &format!("s{s} m{i}"))
                    .await;
                assert_eq!(ack["type"], "ack", "{ack}");
                seqs.push(ack["seq"].as_i64().expect("seq"));
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("sender"));
    }
    acked.sort_unstable();
    let total = (SENDERS * EACH) as i64;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "unique, gapless seqs"
    );
    for w in &mut watchers {
        let mut got: Vec<Value> = Vec::new();
        within_for(
            Duration::from_secs(30),
            "every message on every gateway",
            async {
                while message_seqs(&got).last().copied().unwrap_or(0) < total {
                    got.push(w.recv_event().await);
                }
            },
        )
        .await;
        assert_eq!(message_seqs(&got), (1..=total).collect::<Vec<_>>());
    }
}
