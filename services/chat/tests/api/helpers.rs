//! The harness every test uses: a real `chat` server per test (in this
//! process on port 0, or as a separate process for the crash tests), each
//! with its own temporary data dir, plus thin REST and WebSocket clients that
//! speak the client contract. Every wait is bounded by [`WAIT`].
//!
//! With `CHAT_TEST_MODE=cluster` the same tests run against the distributed
//! mode instead: each `spawn_app` starts its own cluster (auth, room, two
//! gateways, HAProxy in front; own Postgres schema, Redis key prefix and
//! NATS subject prefix) and the clients talk to the load balancer.

use chat::{App, Config};
use futures_util::{SinkExt, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::{Cluster, Options as ClusterOptions};

/// The longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The password every test user signs up with.
pub const PASSWORD: &str = "correct horse battery staple";

/// Fails the test if `fut` does not finish within [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(WAIT, what, fut).await
}

/// Fails the test if `fut` does not finish within `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            chat_core::telemetry::init("debug");
        }
    });
}

/// An HTTP client whose connections come from the source address `from`
/// (loopback has all of 127.0.0.0/8): a client somewhere else.
pub fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// A name no other test uses: `prefix` plus a uuid-derived suffix (valid as
/// a username when `prefix` is: at most 32 of `[A-Za-z0-9_.-]`).
pub fn unique(prefix: &str) -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// A fresh `client_msg_id`.
pub fn cmid() -> String {
    Uuid::new_v4().to_string()
}

/// The defaults of every in-process test server: cheap password hashing and
/// no send rate limit (tests that check the limit set one).
pub fn test_config(dir: &Path) -> Config {
    let mut cfg = Config::ephemeral(dir);
    cfg.auth.argon2_memory_kib = 256;
    cfg.auth.argon2_iterations = 1;
    cfg.room.send_limit = 0;
    cfg.auth.signup_limit = 0;
    cfg.room.membership_limit = 0;
    cfg.room.create_limit = 0;
    cfg.shutdown_timeout_secs = 5;
    cfg
}

/// A config change a test applies on top of [`test_config`].
pub type Tweak = fn(&mut Config);

/// Which deployment the suite drives (`CHAT_TEST_MODE`).
pub fn cluster_mode() -> bool {
    match std::env::var("CHAT_TEST_MODE").as_deref() {
        Ok("cluster") => true,
        Ok("all-in-one") | Ok("") | Err(_) => false,
        Ok(other) => panic!("CHAT_TEST_MODE must be all-in-one or cluster, not {other:?}"),
    }
}

/// A server running in this process, or a cluster behind a load balancer.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// `ws://127.0.0.1:<port>/ws`
    pub ws_url: String,
    pub http_addr: SocketAddr,
    /// `http://127.0.0.1:<port>` of the admin listener (`/readyz`,
    /// `/metrics`); in cluster mode, the first gateway's.
    pub admin: String,
    /// `http://127.0.0.1:<port>` of RoomService over gRPC: the all-in-one's
    /// `--grpc-addr`; in cluster mode, the first room replica's.
    pub room_grpc: String,
    pub dir: Arc<tempfile::TempDir>,
    pub client: reqwest::Client,
    tweak: Tweak,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    cluster: Option<Arc<std::sync::Mutex<Cluster>>>,
}

/// Starts a server with the test defaults on a new data dir.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with `tweak` applied to the test defaults.
pub async fn spawn_app_with(tweak: Tweak) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("cannot create a temp dir"));
    start(dir, tweak).await
}

async fn start(dir: Arc<tempfile::TempDir>, tweak: Tweak) -> TestApp {
    init_tracing();
    if cluster_mode() {
        return start_cluster(dir, tweak).await;
    }
    let mut cfg = test_config(dir.path());
    tweak(&mut cfg);
    let shutdown = CancellationToken::new();
    let app = within("the server to build", App::build(cfg, shutdown.clone()))
        .await
        .expect("the server builds");
    let http_addr = app.http_addr();
    let admin = format!("http://{}", app.admin_addr());
    let room_grpc = format!("http://{}", app.grpc_addr());
    let server = tokio::spawn(app.run());
    TestApp {
        base: format!("http://{http_addr}"),
        ws_url: format!("ws://{http_addr}/ws"),
        http_addr,
        admin,
        room_grpc,
        dir,
        client: http_client(),
        tweak,
        shutdown,
        server: Some(server),
        cluster: None,
    }
}

/// The test config's tunables as the distributed processes' flags.
pub fn cluster_options(tweak: Tweak) -> ClusterOptions {
    let mut cfg = test_config(Path::new("."));
    tweak(&mut cfg);
    let (a, r, g, h) = (&cfg.auth, &cfg.room, &cfg.gateway, &cfg.http);
    let mut gateway_args = vec![
        format!("--ws-queue={}", g.ws_queue),
        format!("--ws-buffer-bytes={}", g.ws_buffer_bytes),
        format!("--max-frame-bytes={}", g.max_frame_bytes),
        format!("--ws-frames-per-sec={}", g.ws_frames_per_sec),
        format!("--subscribe-concurrency={}", g.subscribe_concurrency),
        format!("--ws-allowed-origins={}", g.ws_allowed_origins.join(",")),
        format!("--typing-interval-ms={}", g.typing_interval_ms),
        format!("--ws-max-per-user={}", g.ws_max_per_user),
        format!("--ws-max-per-addr={}", g.ws_max_per_addr),
        format!("--ws-ping-interval-ms={}", g.ws_ping_interval_ms),
        format!("--ws-idle-timeout-ms={}", g.ws_idle_timeout_ms),
        format!("--ws-session-check-ms={}", g.ws_session_check_ms),
        format!("--tail-check-ms={}", g.tail_check_ms),
        format!("--first-byte-timeout-ms={}", h.first_byte_timeout_ms),
        format!("--header-timeout-ms={}", h.header_timeout_ms),
        format!("--idle-timeout-ms={}", h.idle_timeout_ms),
        format!("--body-timeout-ms={}", h.body_timeout_ms),
        format!("--shutdown-timeout-secs={}", cfg.shutdown_timeout_secs),
    ];
    if let Some(n) = h.max_connections {
        gateway_args.push(format!("--max-connections={n}"));
    }
    gateway_args.push(format!(
        "--max-connections-per-ip={}",
        h.max_connections_per_ip
    ));
    let mut auth_args = vec![
        format!("--access-token-ttl={}", a.access_token_ttl_secs),
        format!("--argon2-memory-kib={}", a.argon2_memory_kib),
        format!("--argon2-iterations={}", a.argon2_iterations),
        format!("--login-max-failures={}", a.login_max_failures),
        format!("--hash-concurrency={}", a.hash_concurrency),
        format!("--refresh-grace-secs={}", a.refresh_grace_secs),
        format!("--session-max-age-secs={}", a.session_max_age_secs),
        format!("--session-idle-secs={}", a.session_idle_secs),
        format!("--signup-limit={}", a.signup_limit),
        format!("--key-poll-interval-secs={}", a.key_poll_interval_secs),
    ];
    if let Some(q) = a.hash_queue {
        auth_args.push(format!("--hash-queue={q}"));
    }
    ClusterOptions {
        auth_args,
        room_args: vec![
            format!("--send-limit={}", r.send_limit),
            format!("--send-window-secs={}", r.send_window_secs),
            format!("--membership-limit={}", r.membership_limit),
            format!("--membership-window-secs={}", r.membership_window_secs),
            format!("--create-limit={}", r.create_limit),
            format!("--create-window-secs={}", r.create_window_secs),
            format!(
                "--max-concurrent-calls={}",
                cfg.admission.max_concurrent_calls
            ),
        ],
        gateway_args,
        ..ClusterOptions::default()
    }
}

async fn start_cluster(dir: Arc<tempfile::TempDir>, tweak: Tweak) -> TestApp {
    let cluster = start_cluster_with(cluster_options(tweak)).await;
    TestApp::for_cluster(cluster, dir, tweak)
}

/// Starts a cluster (blocking work off the runtime), bounded in time.
pub async fn start_cluster_with(opts: ClusterOptions) -> Cluster {
    within_for(
        Duration::from_secs(90),
        "the cluster to start",
        tokio::task::spawn_blocking(move || Cluster::start(opts)),
    )
    .await
    .expect("the cluster starts")
}

impl TestApp {
    /// Clients of `cluster`, talking to its load balancer.
    pub fn for_cluster(cluster: Cluster, dir: Arc<tempfile::TempDir>, tweak: Tweak) -> TestApp {
        let http_addr: SocketAddr = cluster
            .lb
            .trim_start_matches("http://")
            .parse()
            .expect("the load balancer's address");
        TestApp {
            base: cluster.lb.clone(),
            ws_url: cluster.lb_ws(),
            http_addr,
            admin: cluster.gateway_admin(0),
            room_grpc: cluster.room_grpcs.first().cloned().expect("a room replica"),
            dir,
            client: http_client(),
            tweak,
            shutdown: CancellationToken::new(),
            server: None,
            cluster: Some(Arc::new(std::sync::Mutex::new(cluster))),
        }
    }

    /// The cluster behind this app (cluster mode only; the cluster tests
    /// use it, the api suite does not).
    #[allow(dead_code)]
    pub fn cluster(&self) -> Arc<std::sync::Mutex<Cluster>> {
        self.cluster.clone().expect("not a cluster")
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("cannot build the HTTP client")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer: status, headers and the body as JSON (`Null` if empty or
/// not JSON; `text` keeps it verbatim).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// The contract's `error.code`, or "" when the body is not an error.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The contract's `error.message`, or "".
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// Asserts the status and, for errors, the contract's error shape.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        &self.body
    }

    /// Asserts an error answer: status, `error.code` and a non-empty message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.code(),
            code,
            "unexpected error code; body: {}",
            self.text
        );
        assert!(
            !self.message().is_empty(),
            "an error carries a message; body: {}",
            self.text
        );
    }
}

pub async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status();
    let headers = r.headers().clone();
    let text = within("a response body", r.text())
        .await
        .expect("cannot read the response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

/// A signed-up user and the tokens of its first session.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub username: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request (JSON body if given, bearer token if given).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.send(rb).await
    }

    /// Sends a hand-built request (raw bodies, odd headers).
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb
            .send()
            .await
            .expect("the request fails at the transport level");
        into_resp(r).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.request(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.request(Method::PUT, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// `POST /auth/signup` with whatever body (no assertion).
    pub async fn signup_raw(&self, body: Value) -> Resp {
        self.request(Method::POST, "/api/v1/auth/signup", None, Some(body))
            .await
    }

    /// Signs up a new user named `prefix_<unique>`.
    pub async fn signup(&self, prefix: &str) -> TestUser {
        let username = unique(prefix);
        let r = self
            .signup_raw(json!({"username": username, "password": PASSWORD}))
            .await;
        let b = r.expect(201);
        TestUser {
            id: b["user"]["id"].as_str().expect("user.id").to_owned(),
            username,
            password: PASSWORD.to_owned(),
            access: b["access_token"].as_str().expect("access_token").to_owned(),
            refresh: b["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> Resp {
        self.request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": username, "password": password})),
        )
        .await
    }

    /// Logs `user` in again: a second session. Returns (access, refresh).
    pub async fn new_session(&self, user: &TestUser) -> (String, String) {
        let r = self.login(&user.username, &user.password).await;
        let b = r.expect(200);
        (
            b["access_token"].as_str().expect("access_token").to_owned(),
            b["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        )
    }

    pub async fn refresh(&self, refresh_token: &str) -> Resp {
        self.request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_token})),
        )
        .await
    }

    /// Creates a room; returns its JSON.
    pub async fn create_room_named(&self, token: &str, name: &str, visibility: &str) -> Value {
        let r = self
            .post(
                "/api/v1/rooms",
                token,
                json!({"name": name, "visibility": visibility}),
            )
            .await;
        r.expect(201).clone()
    }

    /// Creates a room owned by `owner`; returns its id.
    pub async fn create_room(&self, owner: &TestUser, visibility: &str) -> String {
        let room = self
            .create_room_named(&owner.access, &unique("room"), visibility)
            .await;
        room["id"].as_str().expect("room.id").to_owned()
    }

    pub async fn join(&self, user: &TestUser, room: &str) {
        self.post(
            &format!("/api/v1/rooms/{room}/join"),
            &user.access,
            json!({}),
        )
        .await
        .expect(200);
    }

    /// A public room owned by the first user that every other user joined.
    pub async fn room_with(&self, owner: &TestUser, others: &[&TestUser]) -> String {
        let room = self.create_room(owner, "public").await;
        for u in others {
            self.join(u, &room).await;
        }
        room
    }

    pub async fn post_message(&self, token: &str, room: &str, body: &str, cmid: &str) -> Resp {
        self.post(
            &format!("/api/v1/rooms/{room}/messages"),
            token,
            json!({"body": body, "client_msg_id": cmid}),
        )
        .await
    }

    /// Posts a message over REST; returns the stored message.
    pub async fn say(&self, user: &TestUser, room: &str, body: &str) -> Value {
        let r = self.post_message(&user.access, room, body, &cmid()).await;
        r.expect(201).clone()
    }

    /// Checks that `ws`, subscribed to `room` and `other`, was put out of
    /// `room` (removed or banned): the server ends that subscription and
    /// says so, a message `sender` then posts there never arrives while one
    /// in `other` does, and subscribing again is refused.
    pub async fn assert_put_out(&self, ws: &mut Ws, sender: &TestUser, room: &str, other: &str) {
        ws.recv_until("the end of the subscription", |f| {
            f["type"] == "unsubscribed" && f["room_id"] == room
        })
        .await;
        self.say(sender, room, "not for the one put out").await;
        self.say(sender, other, "for them").await;
        let f = ws.recv_event().await;
        assert_eq!(f["room_id"], other, "nothing from the room they left: {f}");
        assert_eq!(f["body"], "for them");
        assert!(ws.ping_barrier().await.is_empty());
        let f = ws.try_subscribe(room).await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{f}"
        );
    }

    /// `GET messages` with a query string; returns (seqs, has_more, items).
    pub async fn history(
        &self,
        user: &TestUser,
        room: &str,
        query: &str,
    ) -> (Vec<i64>, bool, Vec<Value>) {
        let r = self
            .get(
                &format!("/api/v1/rooms/{room}/messages?{query}"),
                &user.access,
            )
            .await;
        let b = r.expect(200);
        let items = b["items"].as_array().expect("items").clone();
        let seqs = items
            .iter()
            .map(|m| m["seq"].as_i64().expect("seq"))
            .collect();
        (seqs, b["has_more"].as_bool().expect("has_more"), items)
    }

    /// Every message of the room, oldest first (all pages).
    pub async fn all_messages(&self, user: &TestUser, room: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let (_, more, items) = self
                .history(user, room, &format!("after_seq={after}&limit=200"))
                .await;
            if let Some(last) = items.last() {
                after = last["seq"].as_i64().expect("seq");
            }
            out.extend(items);
            if !more {
                return out;
            }
        }
    }

    /// A WebSocket authenticated with the header; the `authenticated` frame
    /// has been read.
    pub async fn ws(&self, user: &TestUser) -> Ws {
        self.ws_with_token(&user.access).await
    }

    pub async fn ws_with_token(&self, token: &str) -> Ws {
        let mut ws = ws_connect(&self.ws_url, token)
            .await
            .expect("the WebSocket upgrade is accepted");
        let hello = ws.recv_json().await;
        assert_eq!(hello["type"], "authenticated", "first frame: {hello}");
        ws
    }

    /// A header-authenticated WebSocket whose TCP receive buffer is tiny,
    /// so that the server's writes back up as soon as the test stops reading.
    pub async fn ws_small_buffer(&self, user: &TestUser) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(128 * 1024).expect("SO_RCVBUF");
        let tcp = within("a TCP connect", socket.connect(self.http_addr))
            .await
            .expect("connect");
        let mut req = self.ws_url.as_str().into_client_request().expect("request");
        let value = HeaderValue::from_str(&format!("Bearer {}", user.access)).expect("header");
        req.headers_mut().insert("authorization", value);
        let (stream, _) = within(
            "the WebSocket handshake",
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("the WebSocket upgrade is accepted");
        let mut ws = Ws {
            stream,
            next_ref: 0,
        };
        let hello = ws.recv_json().await;
        assert_eq!(hello["type"], "authenticated", "first frame: {hello}");
        ws
    }

    /// A WebSocket with no `Authorization` header (a browser).
    pub async fn ws_anonymous(&self) -> Ws {
        ws_connect_anonymous(&self.ws_url)
            .await
            .expect("the WebSocket upgrade is accepted")
    }

    /// Makes a new token signing key active, as an operator would: `chat
    /// rotate-key` on the data dir, or `auth rotate-key` with the
    /// cluster's environment. The new key's kid.
    pub async fn rotate_signing_key(&self) -> String {
        if let Some(c) = &self.cluster {
            let (program, env) = {
                let c = c.lock().expect("cluster lock");
                (c.auth.program.clone(), c.auth.env.clone())
            };
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
            let stdout = String::from_utf8_lossy(&out.stdout);
            return stdout.lines().last().unwrap_or_default().trim().to_owned();
        }
        let mut cfg = test_config(self.dir.path());
        (self.tweak)(&mut cfg);
        within("chat rotate-key", chat::rotate_key(&cfg, None))
            .await
            .expect("chat rotate-key")
    }

    /// Stops the server: cancels its token and waits for `run` to return.
    /// (A cluster: every service process gets SIGTERM and exits.)
    pub async fn stop(&mut self) {
        if let Some(c) = &self.cluster {
            let c = c.clone();
            within_for(
                Duration::from_secs(60),
                "the cluster to stop",
                tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().expect("cluster lock");
                    let c = &mut *c;
                    for p in c.gateways.iter_mut().chain(c.rooms.iter_mut()) {
                        p.terminate();
                    }
                    c.auth.terminate();
                }),
            )
            .await
            .expect("the cluster stops");
            return;
        }
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            within_for(Duration::from_secs(20), "the server to stop", server)
                .await
                .expect("the server task panicked")
                .expect("the server stops cleanly");
        }
    }

    /// Stops the server and starts a new one on the same data dir (and the
    /// same config tweak). The new server listens on a new port.
    /// A cluster restarts every service process on the same schema and
    /// keeps its load balancer.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        if let Some(c) = self.cluster.clone() {
            within_for(
                Duration::from_secs(90),
                "the cluster to come back",
                tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().expect("cluster lock");
                    let c = &mut *c;
                    Cluster::start_again(&mut c.auth);
                    for p in c.rooms.iter_mut().chain(c.gateways.iter_mut()) {
                        Cluster::start_again(p);
                    }
                    let lb = c.haproxy.health.clone();
                    let deadline = std::time::Instant::now() + Duration::from_secs(30);
                    while !crate::cluster::http_ok(&lb) && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }),
            )
            .await
            .expect("the cluster restarts");
            return self;
        }
        start(self.dir.clone(), self.tweak).await
    }
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that speaks the contract's JSON frames.
pub struct Ws {
    stream: Stream,
    next_ref: u64,
}

/// Opens `/ws` with `Authorization: Bearer <token>`; no frame is read.
pub async fn ws_connect(url: &str, token: &str) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header-safe token");
    req.headers_mut().insert("authorization", value);
    ws_connect_request(req).await
}

/// Opens `/ws` with `Authorization: Bearer <token>` and an `Origin`, as a
/// browser page on that origin would; no frame is read.
pub async fn ws_connect_from(
    url: &str,
    token: &str,
    origin: &str,
) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header-safe token");
    req.headers_mut().insert("authorization", value);
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_str(origin).expect("a header-safe origin"),
    );
    ws_connect_request(req).await
}

/// Opens `/ws` with an arbitrary `Authorization` header value.
pub async fn ws_connect_with_header(url: &str, header: &str) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(header).expect("a header-safe value"),
    );
    ws_connect_request(req).await
}

/// Opens `/ws` at `addr` with `Authorization: Bearer <token>` over a TCP
/// connection from the source address `from` (loopback has all of
/// 127.0.0.0/8), saying `X-Forwarded-For: xff` when given (what a proxy
/// in front of the server would add); no frame is read.
pub async fn ws_connect_via(
    addr: SocketAddr,
    token: &str,
    from: [u8; 4],
    xff: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    let tcp = within("a TCP connect", socket.connect(addr))
        .await
        .expect("connect");
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header-safe token");
    req.headers_mut().insert("authorization", value);
    if let Some(xff) = xff {
        req.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_str(xff).expect("a header-safe address"),
        );
    }
    let (stream, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
    )
    .await?;
    Ok(Ws {
        stream,
        next_ref: 0,
    })
}

pub async fn ws_connect_anonymous(url: &str) -> Result<Ws, tungstenite::Error> {
    ws_connect_request(url.into_client_request()?).await
}

async fn ws_connect_request(
    req: tungstenite::handshake::client::Request,
) -> Result<Ws, tungstenite::Error> {
    let (stream, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(req),
    )
    .await?;
    Ok(Ws {
        stream,
        next_ref: 0,
    })
}

/// What a refused upgrade answered: (status, body JSON).
pub fn refused(err: tungstenite::Error) -> (u16, Value) {
    match err {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (status, body)
        }
        other => panic!("expected an HTTP refusal of the upgrade, got {other:?}"),
    }
}

/// Live-only notices, which may arrive at any time and carry no seq.
pub fn is_live_notice(frame: &Value) -> bool {
    matches!(
        frame["type"].as_str(),
        Some("presence" | "typing" | "member_joined" | "member_left" | "member_role")
    )
}

/// How a socket ended, as the client saw it.
#[derive(Debug)]
pub struct Closed {
    /// The close code, `None` if the server sent a close frame without one.
    pub code: Option<u16>,
    /// Text frames read before the close frame.
    pub frames: Vec<Value>,
}

impl Ws {
    /// A fresh `ref` for a client frame.
    pub fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("r{}", self.next_ref)
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        within("a WebSocket send", self.stream.send(Message::text(text)))
            .await
            .expect("the WebSocket send fails");
    }

    pub async fn send_message(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        within("a WebSocket send", self.stream.send(msg)).await
    }

    /// The next raw message (control frames included), within [`WAIT`].
    pub async fn next_message(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        within("a WebSocket frame", self.stream.next()).await
    }

    /// The next text frame as JSON. Fails on close, error or timeout.
    pub async fn recv_json(&mut self) -> Value {
        within("a WebSocket frame", self.read_json()).await
    }

    /// The next text frame as JSON, unbounded (callers bound it).
    async fn read_json(&mut self) -> Value {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("the server sent non-JSON text {t:?}: {e}"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(b))) => {
                    panic!("unexpected binary frame ({} bytes)", b.len())
                }
                Some(Ok(Message::Close(c))) => panic!("the server closed the socket: {c:?}"),
                Some(Err(e)) => panic!("the WebSocket failed: {e}"),
                None => panic!("the WebSocket ended"),
            }
        }
    }

    /// The next frame that is not a live-only notice (presence, typing,
    /// membership): room events and replies.
    pub async fn recv_event(&mut self) -> Value {
        loop {
            let f = self.recv_json().await;
            if !is_live_notice(&f) {
                return f;
            }
        }
    }

    /// Skips frames until one matches `pred`, which is returned.
    pub async fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.recv_until_for(WAIT, what, pred).await
    }

    /// [`Ws::recv_until`] with a bound of `limit` instead of [`WAIT`].
    pub async fn recv_until_for(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        within_for(limit, what, async {
            loop {
                let f = self.read_json().await;
                if pred(&f) {
                    return f;
                }
            }
        })
        .await
    }

    /// Skips frames until the reply carrying `r`.
    pub async fn reply_to(&mut self, r: &str) -> Value {
        self.recv_until(&format!("the reply to {r}"), |f| f["ref"] == r)
            .await
    }

    /// Subscribes to `room` (resuming after `since` if given) and returns the
    /// replayed events and the `subscribed` frame.
    pub async fn subscribe(&mut self, room: &str, since: Option<i64>) -> (Vec<Value>, Value) {
        let r = self.new_ref();
        let mut frame = json!({"type": "subscribe", "room_id": room, "ref": r});
        if let Some(s) = since {
            frame["since_seq"] = json!(s);
        }
        self.send_json(frame).await;
        let mut replayed = Vec::new();
        loop {
            let f = self.recv_event().await;
            match f["type"].as_str() {
                Some("subscribed") if f["room_id"] == room => return (replayed, f),
                Some("error") => panic!("subscribe to {room} failed: {f}"),
                _ => replayed.push(f),
            }
        }
    }

    /// Sends a subscribe and returns the reply frame, error or not.
    pub async fn try_subscribe(&mut self, room: &str) -> Value {
        let r = self.new_ref();
        self.send_json(json!({"type": "subscribe", "room_id": room, "ref": r}))
            .await;
        self.reply_to(&r).await
    }

    /// Sends a `send` frame; returns its ref.
    pub async fn send_chat(&mut self, room: &str, client_msg_id: &str, body: &str) -> String {
        let r = self.new_ref();
        self.send_json(json!({
            "type": "send",
            "ref": r,
            "room_id": room,
            "client_msg_id": client_msg_id,
            "body": body,
        }))
        .await;
        r
    }

    /// Sends a message and waits for its ack (or error), skipping anything
    /// else; returns the reply.
    pub async fn send_and_wait(&mut self, room: &str, client_msg_id: &str, body: &str) -> Value {
        let r = self.send_chat(room, client_msg_id, body).await;
        self.reply_to(&r).await
    }

    /// Sends a `ping` and returns every event (live notices skipped) read
    /// before its `pong`: as the server answers frames in order, this shows
    /// what it had queued for us, e.g. a duplicate.
    pub async fn ping_barrier(&mut self) -> Vec<Value> {
        let r = self.new_ref();
        self.send_json(json!({"type": "ping", "ref": r})).await;
        let mut before = Vec::new();
        loop {
            let f = self.recv_event().await;
            if f["type"] == "pong" && f["ref"] == r {
                return before;
            }
            before.push(f);
        }
    }

    /// Waits for the server to close the socket; returns the close code and
    /// the text frames read before it.
    pub async fn expect_close(&mut self) -> Closed {
        let mut frames = Vec::new();
        loop {
            match self.next_message().await {
                Some(Ok(Message::Close(c))) => {
                    return Closed {
                        code: c.map(|c| u16::from(c.code)),
                        frames,
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    frames.push(serde_json::from_str(t.as_str()).unwrap_or(Value::Null));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!(
                    "the socket failed before a close frame: {e} (frames before: {frames:?})"
                ),
                None => {
                    panic!("the socket ended without a close frame (frames before: {frames:?})")
                }
            }
        }
    }

    /// Waits for a close frame and asserts its code.
    pub async fn expect_close_code(&mut self, code: u16) -> Closed {
        let closed = self.expect_close().await;
        assert_eq!(
            closed.code,
            Some(code),
            "close code; frames before: {:?}",
            closed.frames
        );
        closed
    }

    /// Closes the socket from our side (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.stream.close(None)).await;
    }
}

/// Message-frame seqs in `frames`, in order.
pub fn message_seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_i64().expect("message seq"))
        .collect()
}

// ---- a server as a separate process (crash and signal tests) ----

/// `chat` running as its own process, killed when dropped.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
    /// The admin listener's base URL.
    pub admin: String,
    pub ws_url: String,
    pub client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

/// Starts the `chat` binary on `data_dir` and waits for `/healthz`.
pub async fn spawn_process(data_dir: &Path) -> ServerProcess {
    spawn_process_with(data_dir, &[]).await
}

/// [`spawn_process`] with `env` set after the test defaults (so it can
/// override them, e.g. `CHAT_ARGON2_MEMORY_KIB`).
pub async fn spawn_process_with(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
    init_tracing();
    let client = http_client();
    // A free port may be taken again before the server binds it: retry.
    for _ in 0..5 {
        let (http, grpc, admin) = (free_port(), free_port(), free_port());
        let log = std::env::var_os("TEST_LOG").is_some();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("CHAT_ARGON2_MEMORY_KIB", "256")
            .env("CHAT_ARGON2_ITERATIONS", "1")
            .env("CHAT_SEND_LIMIT", "0")
            .env("CHAT_SHUTDOWN_TIMEOUT", "5")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the chat binary");
        let base = format!("http://127.0.0.1:{http}");
        let healthy = within_for(
            Duration::from_secs(30),
            "the server process to be healthy",
            async {
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        return false;
                    }
                    if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                        if r.status() == StatusCode::OK {
                            return true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
        if healthy {
            return ServerProcess {
                child,
                ws_url: format!("ws://127.0.0.1:{http}/ws"),
                base,
                admin: format!("http://127.0.0.1:{admin}"),
                client,
            };
        }
    }
    panic!("the chat binary did not start");
}

impl ServerProcess {
    /// A view of the process as a [`TestApp`]-like REST client.
    pub fn api(&self) -> ProcessApi<'_> {
        ProcessApi { p: self }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Sends the process SIGTERM (what an orchestrator stops it with).
    pub async fn sigterm(&self) {
        let status = within(
            "kill -TERM",
            tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(self.pid().to_string())
                .status(),
        )
        .await
        .expect("cannot run kill");
        assert!(status.success());
    }
}

/// REST helpers against a [`ServerProcess`].
pub struct ProcessApi<'a> {
    p: &'a ServerProcess,
}

impl ProcessApi<'_> {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut rb = self
            .p
            .client
            .request(method, format!("{}{}", self.p.base, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb
            .send()
            .await
            .expect("the request fails at the transport level");
        into_resp(r).await
    }

    pub async fn signup(&self, prefix: &str) -> TestUser {
        let username = unique(prefix);
        let r = self
            .request(
                Method::POST,
                "/api/v1/auth/signup",
                None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        let b = r.expect(201);
        TestUser {
            id: b["user"]["id"].as_str().expect("user.id").to_owned(),
            username,
            password: PASSWORD.to_owned(),
            access: b["access_token"].as_str().expect("access_token").to_owned(),
            refresh: b["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }

    pub async fn create_room(&self, owner: &TestUser) -> String {
        let r = self
            .request(
                Method::POST,
                "/api/v1/rooms",
                Some(&owner.access),
                Some(json!({"name": unique("room"), "visibility": "public"})),
            )
            .await;
        r.expect(201)["id"].as_str().expect("room.id").to_owned()
    }

    /// Every message of the room, oldest first.
    pub async fn all_messages(&self, user: &TestUser, room: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let r = self
                .request(
                    Method::GET,
                    &format!("/api/v1/rooms/{room}/messages?after_seq={after}&limit=200"),
                    Some(&user.access),
                    None,
                )
                .await;
            let b = r.expect(200);
            let items = b["items"].as_array().expect("items").clone();
            if let Some(last) = items.last() {
                after = last["seq"].as_i64().expect("seq");
            }
            out.extend(items);
            if !b["has_more"].as_bool().expect("has_more") {
                return out;
            }
        }
    }

    pub async fn ws(&self, user: &TestUser) -> Ws {
        let mut ws = ws_connect(&self.p.ws_url, &user.access)
            .await
            .expect("the WebSocket upgrade is accepted");
        let hello = ws.recv_json().await;
        assert_eq!(hello["type"], "authenticated", "first frame: {hello}");
        ws
    }
}
