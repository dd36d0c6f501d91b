//! The Redis store against a real server: `CHAT_TEST_REDIS_URL`, by default
//! `redis://127.0.0.1:6379`. These tests fail (they do not skip) when it is
//! unreachable. Each test uses its own random key prefix.

mod conformance;

use bytes::Bytes;
use chat_core::{RoomId, SessionId, UserId};
use chat_ephemeral::{Ephemeral, EphemeralError, RedisEphemeral, DEFAULT_RECENT_TTL};
use fred::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn prefix() -> String {
    format!("test{}", uuid::Uuid::new_v4().simple())
}

async fn store(prefix: &str) -> RedisEphemeral {
    let url = url();
    RedisEphemeral::connect(&url, prefix)
        .await
        .unwrap_or_else(|e| panic!("Redis must be running at {url} for these tests: {e:?}"))
}

/// Two connections under one prefix: two gateways.
async fn pair() -> (Arc<dyn Ephemeral>, Arc<dyn Ephemeral>) {
    let p = prefix();
    (Arc::new(store(&p).await), Arc::new(store(&p).await))
}

ephemeral_conformance!(pair());

#[tokio::test]
async fn connect_by_url_scheme() {
    let e = chat_ephemeral::connect(&url(), &prefix()).await.unwrap();
    e.ping().await.unwrap();
    assert!(matches!(
        chat_ephemeral::connect("redis://", "p").await,
        Err(EphemeralError::Config(_) | EphemeralError::Unavailable(_))
    ));
}

#[tokio::test]
async fn keys_live_under_the_prefix_with_expiries() {
    let p = prefix();
    let e = store(&p).await;
    let (s, u) = (SessionId::new(), UserId::new());
    e.revoke_session(s, Duration::from_secs(60)).await.unwrap();
    e.hit("login:x", 5, Duration::from_secs(60)).await.unwrap();
    e.connection_opened(u).await.unwrap();

    let c = e.client();
    let mut keys: Vec<String> = Vec::new();
    // The revocation list is one sorted set without a TTL (a volatile-*
    // eviction policy never drops it), scored by each revocation's end.
    let revoked = format!("{p}:revoked");
    let ttl: i64 = c.pttl(&revoked).await.unwrap();
    assert_eq!(ttl, -1, "{revoked} must exist without an expiry");
    let until: f64 = c.zscore(&revoked, s.to_string()).await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert!(
        (until - now_ms - 60_000.0).abs() < 10_000.0,
        "the revocation ends with its TTL: {until} vs now {now_ms}"
    );
    for k in [format!("{p}:rl:login:x")] {
        let ttl: i64 = c.pttl(&k).await.unwrap();
        assert!(ttl > 0, "{k} must exist and expire (pttl {ttl})");
        keys.push(k);
    }
    // Presence: counts per gateway and per user, without expiry (the
    // heartbeat, not a TTL, says whether they are current).
    let gw = e.gateway_id();
    for k in [
        format!("{p}:pres:u:{u}"),
        format!("{p}:pres:gw:{gw}"),
        format!("{p}:pres:gws"),
    ] {
        let ttl: i64 = c.pttl(&k).await.unwrap();
        assert_eq!(ttl, -1, "{k} must exist without an expiry");
    }

    // Another prefix sees none of it.
    let other = store(&prefix()).await;
    assert!(!other.is_session_revoked(s).await.unwrap());
    assert_eq!(other.online(&[u]).await.unwrap(), vec![false]);
    assert!(other.over_limit("login:x", 1).await.unwrap().is_none());
}

#[tokio::test]
async fn a_rooms_event_cache_is_one_expiring_sorted_set_under_the_prefix() {
    let p = prefix();
    let e = store(&p).await;
    let room = RoomId::new();
    let events = [
        (1, Bytes::from_static(b"same")),
        (2, Bytes::from_static(b"same")),
        (3, Bytes::from_static(b"other")),
    ];
    e.cache_events(room, &events, 10).await.unwrap();

    let c = e.client();
    let k = format!("{p}:recent:{room}");
    let ttl: i64 = c.pttl(&k).await.unwrap();
    let max = i64::try_from(DEFAULT_RECENT_TTL.as_millis()).unwrap();
    assert!(
        ttl > max - 60_000 && ttl <= max,
        "{k} must expire in about an hour (pttl {ttl})"
    );
    let kind: String = c.r#type(&k).await.unwrap();
    assert_eq!(kind, "zset");
    // Scored by seq; each member is the big-endian seq, then the payload.
    let members: Vec<(Bytes, f64)> = c.zrange(&k, 0, -1, None, false, None, true).await.unwrap();
    assert_eq!(
        members.len(),
        3,
        "equal payloads at two seqs are two members"
    );
    for ((member, score), (seq, payload)) in members.iter().zip(&events) {
        assert_eq!(*score, *seq as f64);
        assert_eq!(&member[..8], &seq.to_be_bytes());
        assert_eq!(&member[8..], &payload[..]);
    }
    // Nothing else was written under the prefix.
    let (mut cursor, mut keys) = ("0".to_owned(), Vec::<String>::new());
    loop {
        let (next, page): (String, Vec<String>) = c
            .scan_page(cursor, format!("{p}:*"), Some(1000), None)
            .await
            .unwrap();
        keys.extend(page);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert_eq!(keys, vec![k.clone()]);

    // Another prefix has its own cache.
    let other = store(&prefix()).await;
    assert!(other.cached_events(room, 0, 10).await.unwrap().is_empty());

    // keep == 0 deletes the key.
    e.cache_events(room, &[], 0).await.unwrap();
    let n: u32 = c.exists(&k).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn revocations_outlive_memory_pressure_and_old_caches_go() {
    // As the deploy files run it: bounded, evicting keys with a TTL.
    let server =
        PrivateServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru"])
            .await;
    let e = RedisEphemeral::connect(&server.url(), &prefix())
        .await
        .unwrap();
    let revoked: Vec<SessionId> = (0..100).map(|_| SessionId::new()).collect();
    for s in &revoked {
        e.revoke_session(*s, Duration::from_secs(600))
            .await
            .unwrap();
    }
    // ~16 MB of event caches into 4 MB.
    let payload = Bytes::from(vec![b'x'; 4000]);
    let rooms: Vec<RoomId> = (0..200).map(|_| RoomId::new()).collect();
    for room in &rooms {
        let events: Vec<(i64, Bytes)> = (1..=20).map(|seq| (seq, payload.clone())).collect();
        // Best effort, as the room service writes it.
        let _ = e.cache_events(*room, &events, 256).await;
    }
    for s in &revoked {
        assert!(
            e.is_session_revoked(*s).await.unwrap(),
            "un-revoked by eviction"
        );
    }
    // Redis's LRU is approximate (it samples keys), so no one room is sure
    // to go; the oldest quarter of them, as a whole, is.
    let mut evicted = 0;
    for room in &rooms[..50] {
        if e.cached_events(*room, 0, 100).await.unwrap().is_empty() {
            evicted += 1;
        }
    }
    assert!(
        evicted >= 45,
        "the oldest rooms' caches were evicted: {evicted} of 50"
    );
    // Revocations still work after the pressure.
    let late = SessionId::new();
    e.revoke_session(late, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(e.is_session_revoked(late).await.unwrap());
}

#[tokio::test]
async fn a_rooms_event_cache_expires_after_its_last_write() {
    let e = store(&prefix())
        .await
        .with_recent_ttl(Duration::from_secs(3));
    let room = RoomId::new();
    e.cache_events(room, &[(1, Bytes::from_static(b"a"))], 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A write restarts the whole room's expiry.
    e.cache_events(room, &[(2, Bytes::from_static(b"b"))], 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(e.cached_events(room, 0, 10).await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(e.cached_events(room, 0, 10).await.unwrap().is_empty());
}

/// Heartbeats from `e` every 200 ms for `how_long`.
async fn beat_for(e: &RedisEphemeral, ttl: Duration, how_long: Duration) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        e.presence_heartbeat(ttl).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_crashed_gateways_users_go_offline_and_are_reaped_once() {
    let p = prefix();
    let ttl = Duration::from_secs(1);
    let (crashed, alive, other) = (store(&p).await, store(&p).await, store(&p).await);
    let (u, v) = (UserId::new(), UserId::new());
    crashed.presence_heartbeat(ttl).await.unwrap();
    alive.presence_heartbeat(ttl).await.unwrap();
    crashed.connection_opened(u).await.unwrap();
    crashed.connection_opened(v).await.unwrap();
    assert_eq!(alive.connection_opened(v).await.unwrap(), 2);
    assert_eq!(alive.online(&[u, v]).await.unwrap(), vec![true, true]);
    assert_eq!(alive.reap_presence(100).await.unwrap(), None);

    drop(crashed); // never closes its connections, never beats again
    beat_for(&alive, ttl, Duration::from_millis(1600)).await;
    // Shown offline as soon as the heartbeat ended, before any reaping.
    assert_eq!(alive.online(&[u, v]).await.unwrap(), vec![false, true]);
    assert_eq!(alive.connections(v).await.unwrap(), 1);
    // One reaper gets the user left with no connection; nobody gets v.
    assert_eq!(alive.reap_presence(100).await.unwrap(), Some(vec![u]));
    assert_eq!(other.reap_presence(100).await.unwrap(), None);
    assert_eq!(alive.reap_presence(100).await.unwrap(), None);
    assert_eq!(alive.online(&[u, v]).await.unwrap(), vec![false, true]);
    // A late close does not go negative.
    assert_eq!(alive.connection_closed(u).await.unwrap(), 0);
}

#[tokio::test]
async fn a_big_crashed_gateway_is_reaped_in_batches() {
    let p = prefix();
    let ttl = Duration::from_millis(500);
    let (crashed, alive) = (store(&p).await, store(&p).await);
    crashed.presence_heartbeat(ttl).await.unwrap();
    let users: Vec<UserId> = (0..250).map(|_| UserId::new()).collect();
    for u in &users {
        crashed.connection_opened(*u).await.unwrap();
    }
    drop(crashed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut reaped = Vec::new();
    let mut calls = 0;
    while let Some(batch) = alive.reap_presence(100).await.unwrap() {
        calls += 1;
        assert!(calls < 50, "reaping must end");
        reaped.extend(batch);
    }
    assert!(calls >= 3, "batches of about 100: {calls}");
    reaped.sort();
    let mut want = users.clone();
    want.sort();
    assert_eq!(reaped, want);
}

#[tokio::test]
async fn a_connection_open_longer_than_the_presence_ttl_stays_online() {
    let e = store(&prefix()).await;
    let ttl = Duration::from_secs(1);
    let u = UserId::new();
    e.presence_heartbeat(ttl).await.unwrap();
    e.connection_opened(u).await.unwrap();
    beat_for(&e, ttl, Duration::from_millis(2500)).await;
    assert_eq!(
        e.online(&[u]).await.unwrap(),
        vec![true],
        "the connection is open"
    );
    assert_eq!(e.reap_presence(100).await.unwrap(), None);
}

#[tokio::test]
async fn presence_lost_in_redis_is_rewritten_at_the_next_heartbeat() {
    let p = prefix();
    let e = store(&p).await;
    let ttl = Duration::from_secs(5);
    let (u, v) = (UserId::new(), UserId::new());
    e.presence_heartbeat(ttl).await.unwrap();
    e.connection_opened(u).await.unwrap();
    e.connection_opened(u).await.unwrap();
    e.connection_opened(v).await.unwrap();
    e.connection_closed(v).await.unwrap();
    // Redis loses the prefix (a restart without persistence).
    let keys: Vec<String> = e
        .client()
        .custom(
            fred::types::CustomCommand::new_static("KEYS", None, false),
            vec![format!("{p}:*")],
        )
        .await
        .unwrap();
    assert!(!keys.is_empty());
    e.client().del::<(), _>(keys).await.unwrap();
    assert_eq!(e.online(&[u]).await.unwrap(), vec![false]);
    e.presence_heartbeat(ttl).await.unwrap();
    assert_eq!(e.online(&[u, v]).await.unwrap(), vec![true, false]);
    assert_eq!(e.connections(u).await.unwrap(), 2);
}

#[tokio::test]
async fn commands_work_after_a_reconnect() {
    let e = store(&prefix()).await;
    let u = UserId::new();
    e.connection_opened(u).await.unwrap();
    e.client().force_reconnection().await.unwrap();
    assert_eq!(e.online(&[u]).await.unwrap(), vec![true]);
    e.ping().await.unwrap();
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_fast() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = match RedisEphemeral::connect(&format!("redis://127.0.0.1:{port}"), "p").await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    assert!(matches!(err, EphemeralError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connecting_to_a_silent_server_times_out() {
    // Accepts the TCP connection, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let result = RedisEphemeral::connect(&format!("redis://127.0.0.1:{port}"), "p").await;
    assert!(matches!(result, Err(EphemeralError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    hold.abort();
}

/// A private `redis-server` (from `PATH`, or `CHAT_TEST_REDIS_SERVER`) on its
/// own port, which this test may stop and start.
struct PrivateServer {
    port: u16,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
}

impl PrivateServer {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With more `redis-server` flags.
    async fn start_with(args: &[&str]) -> Self {
        // Below the ephemeral range (32768+): while the server is stopped,
        // no outgoing connection can take its port as a source port.
        let from = (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let port = (0..12_000u16)
            .map(|i| 20_000 + (from + i) % 12_000)
            .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            .expect("a free port in 20000-31999");
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut s = Self {
            port,
            args,
            child: None,
        };
        s.restart().await;
        s
    }

    async fn restart(&mut self) {
        let bin = std::env::var("CHAT_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = tokio::process::Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (the outage test needs it): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn an_outage_gives_quick_errors_then_recovers() {
    let mut server = PrivateServer::start().await;
    let e = RedisEphemeral::connect(&server.url(), &prefix())
        .await
        .unwrap();
    let u = UserId::new();
    e.connection_opened(u).await.unwrap();

    server.stop().await;
    let started = Instant::now();
    assert!(e.ping().await.is_err());
    assert!(e.connection_opened(u).await.is_err());
    assert!(e.hit("k", 1, Duration::from_secs(1)).await.is_err());
    assert!(
        // Three 2 s command timeouts, and room for a loaded machine.
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.ping().await.is_err() {
        assert!(Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A fresh server: the state is gone (it is ephemeral), the store works.
    assert_eq!(e.online(&[u]).await.unwrap(), vec![false]);
    assert_eq!(e.connection_opened(u).await.unwrap(), 1);
    // The next heartbeat rewrites the gateway's presence: three opens
    // (one of which failed to reach Redis), none closed.
    e.presence_heartbeat(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e.connections(u).await.unwrap(), 3);
}

#[tokio::test]
async fn an_emptied_revocation_list_cannot_vouch_for_a_session_until_reseeded() {
    let p = prefix();
    let e = store(&p).await;
    let (revoked, live) = (SessionId::new(), SessionId::new());
    e.revoke_session(revoked, Duration::from_secs(60))
        .await
        .unwrap();
    // Never seeded: "not revoked" is not an answer.
    assert!(!e.revocations_seeded().await.unwrap());
    assert_eq!(e.session_revocation(live).await.unwrap(), None);
    assert_eq!(e.session_revocation(revoked).await.unwrap(), Some(true));
    e.mark_revocations_seeded().await.unwrap();
    assert!(e.revocations_seeded().await.unwrap());
    assert_eq!(e.session_revocation(live).await.unwrap(), Some(false));
    let c = e.client();
    let ttl: i64 = c.pttl(format!("{p}:revoked:seeded")).await.unwrap();
    assert_eq!(ttl, -1, "the seed mark never expires (nor is evicted)");

    // A flush of this prefix's keys (a restart without persistence).
    let _: i64 = c
        .del(vec![format!("{p}:revoked"), format!("{p}:revoked:seeded")])
        .await
        .unwrap();
    assert!(!e.revocations_seeded().await.unwrap());
    assert_eq!(e.session_revocation(revoked).await.unwrap(), None);
    assert_eq!(e.session_revocation(live).await.unwrap(), None);
}
