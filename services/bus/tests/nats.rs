//! The NATS bus against a real server: `CHAT_TEST_NATS_URL`, by default
//! `nats://127.0.0.1:4222`. These tests fail (they do not skip) when it is
//! unreachable. Each test uses subjects under its own random prefix.

mod conformance;

use bytes::Bytes;
use chat_bus::{Bus, BusError, NatsBus};
use conformance::{next, subjects};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn url() -> String {
    std::env::var("CHAT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn bus() -> NatsBus {
    let url = url();
    NatsBus::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS must be running at {url} for these tests: {e:?}"))
}

/// Two connections: two processes (room and a gateway, or two gateways).
async fn pair() -> (Arc<dyn Bus>, Arc<dyn Bus>) {
    (Arc::new(bus().await), Arc::new(bus().await))
}

bus_conformance!(pair());

#[tokio::test]
async fn connect_by_url_scheme() {
    let bus = chat_bus::connect(&url(), chat_bus::BusKey::random())
        .await
        .unwrap();
    bus.ping().await.unwrap();
    assert!(matches!(
        chat_bus::connect("nats://no such host:4222", chat_bus::BusKey::random()).await,
        Err(BusError::Config(_))
    ));
}

#[tokio::test]
async fn a_dropped_subscription_is_unsubscribed_at_the_server() {
    let (a, b) = (bus().await, bus().await);
    let room = subjects().room("r");
    let dropped = b.subscribe(&room).await.unwrap();
    let mut kept = b.subscribe(&room).await.unwrap();
    drop(dropped);
    b.ping().await.unwrap(); // the UNSUB has reached the server
    let before = b.client().statistics().in_messages.load(Ordering::Relaxed);
    for _ in 0..5 {
        a.publish(&room, Bytes::from_static(b"x")).await.unwrap();
    }
    for _ in 0..5 {
        assert_eq!(next(&mut kept).await, "x");
    }
    let after = b.client().statistics().in_messages.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        5,
        "the server still sends to the dropped one"
    );
}

#[tokio::test]
async fn a_reconnect_is_counted_and_subscriptions_survive_it() {
    let (a, b) = (bus().await, bus().await);
    let room = subjects().room("r");
    let mut sub = b.subscribe(&room).await.unwrap();
    let mut reconnects = b.reconnects();
    assert_eq!(*reconnects.borrow_and_update(), 0);

    b.client().force_reconnect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), reconnects.changed())
        .await
        .expect("no reconnect reported")
        .unwrap();
    assert_eq!(*reconnects.borrow(), 1);
    assert_eq!(*a.reconnects().borrow(), 0);

    // The subscription was restored by the client; wait until the server
    // has it again (a round trip on b's new connection), then deliver.
    b.ping().await.unwrap();
    a.publish(&room, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, "after");
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_fast() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = match NatsBus::connect(&format!("nats://127.0.0.1:{port}")).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connecting_to_a_silent_server_times_out() {
    // Accepts the TCP connection, never says INFO.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let result = NatsBus::connect(&format!("nats://127.0.0.1:{port}")).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    hold.abort();
}

/// A private `nats-server` (from `PATH`, or `CHAT_TEST_NATS_SERVER`) on its
/// own port, which this test may stop and start.
struct PrivateServer {
    port: u16,
    child: Option<tokio::process::Child>,
    /// Extra server arguments (e.g. `--user`, `--pass`).
    args: Vec<String>,
}

impl PrivateServer {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(args: &[&str]) -> Self {
        // Below the ephemeral range (32768+): while the server is stopped,
        // no outgoing connection can take its port as a source port.
        let from = (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let port = (0..12_000u16)
            .map(|i| 20_000 + (from + i) % 12_000)
            .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            .expect("a free port in 20000-31999");
        let mut s = Self {
            port,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.restart().await;
        s
    }

    async fn restart(&mut self) {
        let bin = std::env::var("CHAT_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = tokio::process::Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
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
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn an_outage_gives_quick_errors_and_a_counted_recovery() {
    let mut server = PrivateServer::start().await;
    let (a, b) = (
        NatsBus::connect(&server.url()).await.unwrap(),
        NatsBus::connect(&server.url()).await.unwrap(),
    );
    let room = subjects().room("r");
    let mut sub = b.subscribe(&room).await.unwrap();
    let (mut ra, mut rb) = (a.reconnects(), b.reconnects());

    server.stop().await;
    // Until the client notices, publishing may still "succeed" (at most
    // once); it must never hang, and soon it must fail.
    // Bounds far above the client's 2 s timeouts: a hang, not slowness.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        let r = a.publish(&room, Bytes::from_static(b"lost")).await;
        assert!(started.elapsed() < Duration::from_secs(10), "publish hung");
        if r.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "publish never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    assert!(b.ping().await.is_err());
    assert!(b.subscribe(&subjects().room("x")).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(15), "ping hung");

    server.restart().await;
    for r in [&mut ra, &mut rb] {
        tokio::time::timeout(Duration::from_secs(20), r.changed())
            .await
            .expect("no reconnect reported")
            .unwrap();
        assert_eq!(*r.borrow(), 1);
    }
    b.ping().await.unwrap(); // b's subscription is back at the server
    a.publish(&room, Bytes::from_static(b"back")).await.unwrap();
    // Payloads queued before the client noticed the outage may arrive late
    // (at most once, not "never"); then the new one.
    loop {
        match next(&mut sub).await.as_ref() {
            b"lost" => continue,
            got => {
                assert_eq!(got, b"back");
                break;
            }
        }
    }
}

/// A NATS server with authentication (as every deploy file runs it): the
/// credentials in the URL are used, and wrong ones fail at start naming
/// the cause, without printing the password.
#[tokio::test]
async fn credentials_in_the_url_authenticate() {
    let server = PrivateServer::start_with(&["--user", "chat", "--pass", "n4ts-pw"]).await;
    let url = |auth: &str| format!("nats://{auth}@127.0.0.1:{}", server.port);
    let bus = NatsBus::connect(&url("chat:n4ts-pw"))
        .await
        .expect("the right credentials connect");
    let room = subjects().room("auth");
    let mut sub = bus.subscribe(&room).await.unwrap();
    bus.publish(&room, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.as_ref(), b"hello");

    for wrong in ["chat:wrong", "nobody:n4ts-pw"] {
        let err = match NatsBus::connect(&url(wrong)).await {
            Ok(_) => panic!("{wrong} connected"),
            Err(e) => format!("{e:?}"),
        };
        assert!(err.contains("authorization"), "{err}");
        assert!(!err.contains("wrong") && !err.contains("n4ts-pw"), "{err}");
    }
    // No credentials at all: refused too.
    assert!(NatsBus::connect(&server.url()).await.is_err());
}
