//! Presence across gateways: a crashed gateway's users go offline (and
//! their rooms are told) within a bounded time, long-lived connections stay
//! online, and presence lost in Redis comes back by itself.

use crate::cluster::Options;
use crate::helpers::{
    cluster_options, start_cluster_with, within_for, ws_connect, TestApp, TestUser, Ws,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Heartbeat and TTL of these tests' gateways, in seconds: short, so that
/// a crash is noticed in seconds, with room for three late heartbeats on a
/// loaded host before a live gateway would be taken for a crashed one.
const HEARTBEAT_SECS: u64 = 1;
const TTL_SECS: u64 = 4;

/// How long a crashed gateway's users may show online, at most, in these
/// tests: the TTL plus a reaper tick, with plenty of room for a slow host.
const BOUND: Duration = Duration::from_secs(30);

fn presence_options() -> Options {
    let mut o = cluster_options(|_| {});
    o.gateway_args.extend([
        format!("--presence-heartbeat-secs={HEARTBEAT_SECS}"),
        format!("--presence-ttl-secs={TTL_SECS}"),
    ]);
    o
}

async fn cluster_app(opts: Options) -> TestApp {
    let cluster = start_cluster_with(opts).await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    TestApp::for_cluster(cluster, dir, |_| {})
}

/// A WebSocket straight to one gateway (not through the load balancer).
async fn ws_on(app: &TestApp, gateway: usize, user: &TestUser) -> Ws {
    let url = app.cluster().lock().expect("lock").gateway_ws(gateway);
    let mut ws = ws_connect(&url, &user.access)
        .await
        .expect("the WebSocket upgrade is accepted");
    let hello = ws.recv_json().await;
    assert_eq!(hello["type"], "authenticated", "first frame: {hello}");
    ws
}

/// Whether `user` is `online` in `room`'s member list, as `viewer` sees it.
async fn shown_online(app: &TestApp, viewer: &TestUser, room: &str, user: &TestUser) -> bool {
    let r = app
        .get(&format!("/api/v1/rooms/{room}/members"), &viewer.access)
        .await;
    let list = r.expect(200)["items"].as_array().expect("items").clone();
    let m = list
        .iter()
        .find(|m| m["user_id"] == user.id.as_str())
        .unwrap_or_else(|| panic!("{} is not in the member list: {list:?}", user.id));
    m["online"].as_bool().expect("online is a boolean")
}

async fn wait_shown(
    app: &TestApp,
    viewer: &TestUser,
    room: &str,
    user: &TestUser,
    online: bool,
    limit: Duration,
) {
    within_for(
        limit,
        &format!("{} to be shown online={online}", user.id),
        async {
            while shown_online(app, viewer, room, user).await != online {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}

fn presence_of(f: &Value, user: &TestUser, online: bool) -> bool {
    f["type"] == "presence" && f["user_id"] == user.id.as_str() && f["online"] == online
}

/// Every presence frame `ws` received before the answer to a `ping`.
async fn presence_frames_so_far(ws: &mut Ws) -> Vec<Value> {
    let r = ws.new_ref();
    ws.send_json(json!({"type": "ping", "ref": r})).await;
    let mut seen = Vec::new();
    loop {
        let f = ws.recv_json().await;
        if f["type"] == "pong" && f["ref"] == r {
            return seen;
        }
        if f["type"] == "presence" {
            seen.push(f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_gateways_users_go_offline_and_their_rooms_are_told() {
    let took = crashed_gateways_user_announced_offline(presence_options(), BOUND).await;
    eprintln!(
        "presence: a crashed gateway's user was announced offline {took:?} after \
         the crash (heartbeat {HEARTBEAT_SECS} s, TTL {TTL_SECS} s)"
    );
}

/// The measurement in docs/architecture.md ("Presence"): the default
/// flags (heartbeat 4 s, TTL 12 s) give at most the TTL plus a reaper tick
/// after the last heartbeat, so 8-13 s after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_flags_a_crashed_gateways_users_go_offline_within_the_ttl() {
    let took =
        crashed_gateways_user_announced_offline(cluster_options(|_| {}), Duration::from_secs(60))
            .await;
    eprintln!("presence: with the default flags, announced offline {took:?} after the crash");
    assert!(
        took >= Duration::from_secs(7),
        "not before the TTL (12 s) less a heartbeat (4 s): {took:?}"
    );
}

/// Kills a gateway under a user connected only there and returns how long
/// after the kill a member on another gateway was told they went offline.
async fn crashed_gateways_user_announced_offline(opts: Options, bound: Duration) -> Duration {
    let app = cluster_app(opts).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;

    // Alice watches from gateway 1; Bob is only on gateway 0; Carol is on
    // both.
    let mut a = ws_on(&app, 1, &alice).await;
    a.subscribe(&room, None).await;
    let _bob = ws_on(&app, 0, &bob).await;
    let _carol_0 = ws_on(&app, 0, &carol).await;
    let _carol_1 = ws_on(&app, 1, &carol).await;
    a.recv_until("bob's presence (online)", |f| presence_of(f, &bob, true))
        .await;
    assert!(shown_online(&app, &alice, &room, &bob).await);
    assert!(shown_online(&app, &alice, &room, &carol).await);

    app.cluster().lock().expect("lock").gateways[0].kill();
    let killed = Instant::now();

    let f = a
        .recv_until_for(bound, "bob's presence (offline)", |f| {
            presence_of(f, &bob, false) || presence_of(f, &carol, false)
        })
        .await;
    assert_eq!(
        f["user_id"],
        bob.id.as_str(),
        "carol is still online through gateway 1: {f}"
    );
    assert_eq!(f["room_id"], room.as_str(), "{f}");
    let took = killed.elapsed();
    assert!(!shown_online(&app, &alice, &room, &bob).await);
    assert!(
        shown_online(&app, &alice, &room, &carol).await,
        "carol is still connected to gateway 1"
    );
    let seen = presence_frames_so_far(&mut a).await;
    assert!(
        !seen.iter().any(|f| presence_of(f, &carol, false)),
        "carol never went offline: {seen:?}"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_older_than_the_presence_ttl_stays_online() {
    let app = cluster_app(presence_options()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut a = ws_on(&app, 1, &alice).await;
    a.subscribe(&room, None).await;
    let _bob = ws_on(&app, 0, &bob).await;
    a.recv_until("bob's presence (online)", |f| presence_of(f, &bob, true))
        .await;

    // Three TTLs without a new connection: only heartbeats keep bob online.
    tokio::time::sleep(Duration::from_secs(3 * TTL_SECS)).await;
    assert!(
        shown_online(&app, &alice, &room, &bob).await,
        "bob's connection is still open"
    );
    assert!(shown_online(&app, &bob, &room, &alice).await);
    let seen = presence_frames_so_far(&mut a).await;
    assert!(
        !seen.iter().any(|f| presence_of(f, &bob, false)),
        "bob never went offline: {seen:?}"
    );
}

/// Deletes every Redis key of the cluster's own prefix (what a Redis
/// restart without persistence does to it); other tests' keys stay.
fn flush_prefix(prefix: &str) {
    let out = std::process::Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .expect("redis-cli runs");
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|k| k.starts_with(&format!("{prefix}:")))
        .collect();
    assert!(!keys.is_empty(), "the cluster has keys under {prefix}:");
    for chunk in keys.chunks(100) {
        let ok = std::process::Command::new("redis-cli")
            .arg("DEL")
            .args(chunk)
            .output()
            .expect("redis-cli runs")
            .status
            .success();
        assert!(ok, "redis-cli DEL failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_in_redis_comes_back_at_the_next_heartbeat() {
    let app = cluster_app(presence_options()).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let _bob = ws_on(&app, 0, &bob).await;
    assert!(shown_online(&app, &alice, &room, &bob).await);

    let prefix = format!("t{}", app.cluster().lock().expect("lock").id);
    flush_prefix(&prefix);
    let flushed = Instant::now();
    wait_shown(&app, &alice, &room, &bob, true, BOUND).await;
    eprintln!("presence: back {:?} after Redis lost it", flushed.elapsed());
    // And it stays: the next heartbeats keep it.
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECS)).await;
    assert!(shown_online(&app, &alice, &room, &bob).await);
}
