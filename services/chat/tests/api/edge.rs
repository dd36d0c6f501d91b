//! The edge against hostile clients (issue #9): every stage of an HTTP
//! connection has a deadline, the number of connections a cap that keeps
//! `/healthz` answering, and shutdown does not wait for silent clients.
//!
//! These tests speak raw TCP. In cluster mode they connect straight to the
//! first gateway, not to HAProxy: HAProxy in front has timeouts of its own
//! (`timeout http-request`) and would close a silent client itself, so
//! through it they would test HAProxy, not the gateway. HAProxy's health
//! checks of the gateways still run throughout, which (c) relies on.

use crate::helpers::{spawn_app_with, spawn_process, within, within_for, TestApp};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP listener under test: the server's own, or the first gateway's
/// in cluster mode (see the module comment).
fn edge(app: &TestApp) -> SocketAddr {
    if crate::helpers::cluster_mode() {
        let c = app.cluster();
        let c = c.lock().expect("cluster lock");
        c.gateway_addrs[0].parse().expect("a gateway address")
    } else {
        app.http_addr
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within("a TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what it sent and how long that took. Fails after `limit`.
async fn until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    within_for(limit, "the server to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (got, start.elapsed())
}

/// One `Connection: close` request on a new connection: (status, body).
async fn raw_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = connect(addr).await;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    within("a request write", tcp.write_all(req.as_bytes()))
        .await
        .expect("write");
    let (got, _) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    parse_response(&got)
}

fn parse_response(got: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(got);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_first_byte_timeout() {
    let app = spawn_app_with(|c| c.http.first_byte_timeout_ms = 1_000).await;
    let mut tcp = connect(edge(&app)).await;
    let (got, took) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "nothing is sent to a silent client");
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.http.header_timeout_ms = 1_000).await;
    let mut tcp = connect(edge(&app)).await;
    within(
        "a write",
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "),
    )
    .await
    .expect("write");
    let (_, took) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn a_body_slower_than_the_body_timeout_fails_the_request() {
    let app = spawn_app_with(|c| c.http.body_timeout_ms = 1_000).await;
    let mut tcp = connect(edge(&app)).await;
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user";
    within("a write", tcp.write_all(head.as_bytes()))
        .await
        .expect("write");
    let (got, took) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    let (status, body) = parse_response(&got);
    assert_eq!(status, 400, "body: {body}");
    assert!(
        took >= Duration::from_millis(800),
        "failed too early: {took:?}"
    );
}

#[tokio::test]
async fn at_the_connection_cap_healthz_answers_and_the_rest_is_refused_fast() {
    const CAP: usize = 50;
    let app = spawn_app_with(|c| {
        c.http.max_connections = Some(CAP as u64);
        c.http.first_byte_timeout_ms = 60_000;
    })
    .await;
    let addr = edge(&app);
    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(connect(addr).await);
    }
    // Connections are accepted in order, so this one comes after the cap.
    let (status, body) = raw_request(addr, "GET", "/api/v1/users/me").await;
    assert_eq!(status, 503, "body: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let (status, _) = raw_request(addr, "GET", "/healthz").await;
    assert_eq!(
        status, 200,
        "the load balancer still sees the process alive"
    );
    // A silent client past the cap is not held either.
    let mut extra = connect(addr).await;
    let (_, took) = until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "held for {took:?}");

    drop(silent);
    served_again(addr, LOCALHOST).await;
}

#[tokio::test]
async fn websockets_count_against_the_connection_cap() {
    const CAP: usize = 3;
    let app = spawn_app_with(|c| c.http.max_connections = Some(CAP as u64)).await;
    let addr = edge(&app);
    let user = app.signup("capped").await;
    // (The test client's pooled connection may hold a place too.)
    let mut sockets = Vec::new();
    let refusal = loop {
        match crate::helpers::ws_connect(&format!("ws://{addr}/ws"), &user.access).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => break crate::helpers::refused(e),
        }
        assert!(sockets.len() <= CAP, "more WebSockets than the cap");
    };
    assert_eq!(refusal.0, 503, "{refusal:?}");
    assert_eq!(refusal.1["error"]["code"], "unavailable", "{refusal:?}");
    assert!(!sockets.is_empty());
    let (status, body) = raw_request(addr, "GET", "/api/v1/users/me").await;
    assert_eq!(
        status, 503,
        "upgraded sockets hold their places; body: {body}"
    );
    for ws in sockets {
        ws.close().await;
    }
    served_again(addr, LOCALHOST).await;
}

#[tokio::test]
async fn stop_closes_silent_and_idle_connections_at_once() {
    let mut app = spawn_app_with(|c| {
        c.http.first_byte_timeout_ms = 60_000;
        c.http.header_timeout_ms = 60_000;
        c.http.idle_timeout_ms = 60_000;
        c.shutdown_timeout_secs = 30;
    })
    .await;
    let addr = edge(&app);
    let mut silent = connect(addr).await;
    // A kept-alive connection that has had its answer and waits.
    let mut idle = connect(addr).await;
    within(
        "a write",
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .expect("write");
    let mut buf = [0u8; 1024];
    let n = within("the answer", idle.read(&mut buf))
        .await
        .expect("read");
    assert_eq!(parse_response(&buf[..n]).0, 200);

    let start = Instant::now();
    within_for(Duration::from_secs(60), "the stop", app.stop()).await;
    let took = start.elapsed();
    // In cluster mode every process gets SIGTERM in turn; a gateway that
    // waited for these clients would take its shutdown timeout (5 s).
    assert!(took < Duration::from_secs(4), "stop took {took:?}");
    until_closed(&mut silent, Duration::from_secs(2)).await;
    until_closed(&mut idle, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn stop_drops_a_busy_connection_at_the_shutdown_deadline() {
    let mut app = spawn_app_with(|c| {
        c.http.body_timeout_ms = 60_000;
        c.shutdown_timeout_secs = 2;
    })
    .await;
    let mut busy = connect(edge(&app)).await;
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user";
    within("a write", busy.write_all(head.as_bytes()))
        .await
        .expect("write");
    // Let the server start on the request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    within_for(Duration::from_secs(60), "the stop", app.stop()).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    until_closed(&mut busy, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sigterm_with_a_silent_client_exits_0_at_once() {
    // The all-in-one binary in both modes: the cluster's gateways are
    // covered by `stop_closes_silent_and_idle_connections_at_once`.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = spawn_process(dir.path()).await;
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let _silent = connect(addr).await;
    server.sigterm().await;
    // The process's shutdown timeout is 5 s; a silent client must not make
    // it wait even that long.
    let exit = within_for(
        Duration::from_secs(4),
        "the process to exit",
        server.child.wait(),
    )
    .await
    .expect("wait");
    assert_eq!(exit.code(), Some(0), "exit status: {exit:?}");
}

/// A TCP connection to `addr` from the source address `from` (loopback
/// has all of 127.0.0.0/8).
async fn connect_from(addr: SocketAddr, from: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    within("a TCP connect", socket.connect(addr))
        .await
        .expect("connect")
}

/// The source address of the tests' other connections.
const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

/// Waits until a request from `from` is served again (401: it reached the
/// API) after the connections that held the places went away; until then
/// it must be refused (503), nothing else.
async fn served_again(addr: SocketAddr, from: [u8; 4]) {
    within("connections to be served again", async {
        loop {
            match status_from(addr, from, "/api/v1/users/me").await {
                401 => return,
                status => assert_eq!(status, 503),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// One `Connection: close` request from `from`: its status.
async fn status_from(addr: SocketAddr, from: [u8; 4], path: &str) -> u16 {
    let mut tcp = connect_from(addr, from).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    within("a request write", tcp.write_all(req.as_bytes()))
        .await
        .expect("write");
    let (got, _) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    let head = String::from_utf8_lossy(&got);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"))
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    const PER_IP: usize = 3;
    let app = spawn_app_with(|c| {
        c.http.max_connections_per_ip = PER_IP as u64;
        c.http.first_byte_timeout_ms = 60_000;
    })
    .await;
    let addr = edge(&app);
    let (hog, other) = ([127, 0, 0, 90], [127, 0, 0, 91]);
    let mut silent = Vec::new();
    for _ in 0..PER_IP {
        silent.push(connect_from(addr, hog).await);
    }
    assert_eq!(
        status_from(addr, hog, "/api/v1/users/me").await,
        503,
        "one more from the same address is refused"
    );
    assert_eq!(
        status_from(addr, other, "/api/v1/users/me").await,
        401,
        "another address is served"
    );
    drop(silent);
    served_again(addr, hog).await;
}
