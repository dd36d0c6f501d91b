//! A distributed cluster for tests: real `auth`, `room` and `gateway`
//! processes and HAProxy in front, on the machine's Postgres, Redis and
//! NATS, each cluster in its own Postgres schema, Redis key prefix and NATS
//! subject prefix, so clusters of parallel tests never meet.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const NATS: &str = "nats://127.0.0.1:4222";

/// A port nobody listens on now, below Linux's ephemeral range (32768 and
/// up): a port the kernel handed out for `:0` can be taken again, between
/// our check and the service's bind, by any outgoing connection of the
/// parallel tests; one below that range can only be taken by a listener.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports that are free now, from 20000-31999:
/// below Linux's ephemeral range (32768+), so no outgoing connection of
/// another test takes one before the process that is given it binds it.
/// A port is handed out once per test process, so a port given to a
/// process that binds it later (or rebinds it after a restart) is not given
/// to another test meanwhile.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let m = NEXT.fetch_add(7919, Ordering::Relaxed).wrapping_add(seed);
        let first = 20_000 + (m % (12_000 - u32::from(n))) as u16;
        let range = first..first + n;
        if given.iter().any(|p| range.contains(p)) {
            continue;
        }
        let held: Vec<TcpListener> = range
            .clone()
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            given.extend(range);
            return first;
        }
    }
    panic!("cannot find {n} free consecutive ports in 20000-31999")
}

/// How a cluster is made.
#[derive(Clone, Debug)]
pub struct Options {
    pub gateways: usize,
    pub rooms: usize,
    /// Extra flags for every auth / room / gateway process.
    pub auth_args: Vec<String>,
    pub room_args: Vec<String>,
    pub gateway_args: Vec<String>,
    /// A NATS of the test's own (e.g. to restart it); the shared one if None.
    pub nats_url: Option<String>,
    /// A Redis of the test's own (e.g. to stop it); the shared one if None.
    pub redis_url: Option<String>,
    /// gRPC between the services over TLS: auth and room serve this
    /// certificate, room and gateways check it against `ca` (https URLs).
    pub grpc_tls: Option<GrpcTls>,
}

/// PEM files for [`Options::grpc_tls`].
#[derive(Clone, Debug)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateways: 2,
            rooms: 1,
            auth_args: vec![],
            room_args: vec![],
            gateway_args: vec![],
            nats_url: None,
            redis_url: None,
            grpc_tls: None,
        }
    }
}

/// One service process.
pub struct Proc {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The address its `/readyz` answers on.
    pub health: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// A not-yet-started copy of `other` (same program, flags and env).
    pub fn clone_of(other: &Proc, name: &str) -> Proc {
        Proc {
            name: name.to_owned(),
            program: other.program.clone(),
            args: other.args.clone(),
            env: other.env.clone(),
            health: other.health.clone(),
            child: None,
            log: other.log.with_file_name(format!("{name}.log")),
        }
    }

    /// A process not started yet, writing its output to `log`; `health`
    /// is the URL that answers 200 once it is up.
    pub fn new(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        health: String,
        log: PathBuf,
    ) -> Proc {
        Proc {
            name: name.to_owned(),
            program,
            args,
            env,
            health,
            child: None,
            log,
        }
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn set_args(&mut self, args: &[String]) {
        self.args = args.to_vec();
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("cannot open a process log");
        let err = log.try_clone().expect("cannot clone a log handle");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process's output so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub id: String,
    pub schema: String,
    /// `http://127.0.0.1:<port>` of HAProxy.
    pub lb: String,
    pub auth: Proc,
    pub rooms: Vec<Proc>,
    pub gateways: Vec<Proc>,
    pub haproxy: Proc,
    pub gateway_addrs: Vec<String>,
    /// The gateways' admin listeners (`/readyz`, `/metrics`).
    pub gateway_admins: Vec<String>,
    pub auth_grpc: String,
    pub room_grpcs: Vec<String>,
    pub dir: tempfile::TempDir,
}

fn bin(name: &str) -> PathBuf {
    let p = match name {
        "auth" => env!("CARGO_BIN_EXE_auth"),
        "room" => env!("CARGO_BIN_EXE_room"),
        "gateway" => env!("CARGO_BIN_EXE_gateway"),
        other => panic!("no binary {other}"),
    };
    PathBuf::from(p)
}

fn ready(url: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http_ok(url) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A minimal blocking `GET` that says whether the answer is 200.
pub fn http_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(addr) = host.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

impl Cluster {
    /// Starts auth, room(s), gateways and HAProxy and waits until every one
    /// is ready.
    pub fn start(opts: Options) -> Cluster {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let schema = format!("t_{id}");
        let dir = tempfile::tempdir().expect("cannot create a temp dir");
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let verbose = std::env::var_os("TEST_LOG").is_some();
        let env = vec![
            (
                "CHAT_DATABASE_URL".to_owned(),
                format!("{POSTGRES}?schema={schema}&max_connections=5"),
            ),
            (
                "CHAT_REDIS_URL".to_owned(),
                opts.redis_url.clone().unwrap_or_else(|| REDIS.to_owned()),
            ),
            (
                "CHAT_NATS_URL".to_owned(),
                opts.nats_url.clone().unwrap_or_else(|| NATS.to_owned()),
            ),
            ("CHAT_SUBJECT_PREFIX".to_owned(), format!("t{id}")),
            ("CHAT_KEY_PREFIX".to_owned(), format!("t{id}")),
            ("CHAT_INTERNAL_SECRET".to_owned(), secret),
            // Auth replicas share their signing keys through the store,
            // sealed with this key-encryption key.
            (
                "CHAT_KEY_ENCRYPTION_KEY".to_owned(),
                format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                ),
            ),
            ("CHAT_ARGON2_MEMORY_KIB".to_owned(), "256".to_owned()),
            ("CHAT_ARGON2_ITERATIONS".to_owned(), "1".to_owned()),
            ("CHAT_SEND_LIMIT".to_owned(), "0".to_owned()),
            ("CHAT_SHUTDOWN_TIMEOUT".to_owned(), "5".to_owned()),
            (
                "RUST_LOG".to_owned(),
                if verbose { "debug" } else { "info" }.to_owned(),
            ),
        ];
        let proc = |name: &str, program: &str, args: Vec<String>, health: String| Proc {
            name: name.to_owned(),
            program: bin(program),
            args,
            env: env.clone(),
            health,
            child: None,
            log: dir.path().join(format!("{name}.log")),
        };

        let (ag, ah) = (free_port(), free_port());
        let mut auth_args = vec![
            "--grpc-addr".into(),
            format!("127.0.0.1:{ag}"),
            "--http-addr".into(),
            format!("127.0.0.1:{ah}"),
        ];
        let scheme = if opts.grpc_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (serve_tls, client_tls) = match &opts.grpc_tls {
            Some(t) => (
                vec![
                    format!("--grpc-tls-cert={}", t.cert.display()),
                    format!("--grpc-tls-key={}", t.key.display()),
                ],
                vec![format!("--grpc-tls-ca={}", t.ca.display())],
            ),
            None => (vec![], vec![]),
        };
        auth_args.extend(serve_tls.iter().cloned());
        auth_args.extend(opts.auth_args.iter().cloned());
        let mut auth = proc(
            "auth",
            "auth",
            auth_args,
            format!("http://127.0.0.1:{ah}/readyz"),
        );
        auth.spawn();
        let auth_grpc = format!("{scheme}://127.0.0.1:{ag}");

        let mut rooms = Vec::new();
        let mut room_grpcs = Vec::new();
        for i in 0..opts.rooms {
            let (rg, rh) = (free_port(), free_port());
            let mut args = vec![
                "--grpc-addr".into(),
                format!("127.0.0.1:{rg}"),
                "--http-addr".into(),
                format!("127.0.0.1:{rh}"),
                "--auth-url".into(),
                auth_grpc.clone(),
            ];
            args.extend(serve_tls.iter().cloned());
            args.extend(client_tls.iter().cloned());
            args.extend(opts.room_args.iter().cloned());
            let mut p = proc(
                &format!("room-{i}"),
                "room",
                args,
                format!("http://127.0.0.1:{rh}/readyz"),
            );
            p.spawn();
            rooms.push(p);
            room_grpcs.push(format!("{scheme}://127.0.0.1:{rg}"));
        }

        let mut gateways = Vec::new();
        let mut gateway_addrs = Vec::new();
        let mut gateway_admins = Vec::new();
        for i in 0..opts.gateways {
            let (gp, ga) = (free_port(), free_port());
            let mut args = vec![
                "--http-addr".into(),
                format!("127.0.0.1:{gp}"),
                "--admin-addr".into(),
                format!("127.0.0.1:{ga}"),
                "--auth-url".into(),
                auth_grpc.clone(),
                "--room-url".into(),
                room_grpcs.join(","),
                // HAProxy, in front, names the client in X-Forwarded-For.
                "--trusted-proxies=127.0.0.1".into(),
            ];
            args.extend(client_tls.iter().cloned());
            args.extend(opts.gateway_args.iter().cloned());
            let mut p = proc(
                &format!("gateway-{i}"),
                "gateway",
                args,
                format!("http://127.0.0.1:{ga}/readyz"),
            );
            p.spawn();
            gateways.push(p);
            gateway_addrs.push(format!("127.0.0.1:{gp}"));
            gateway_admins.push(format!("127.0.0.1:{ga}"));
        }

        let lb_port = free_port();
        let cfg = haproxy_config(lb_port, &gateway_addrs);
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).expect("cannot write haproxy.cfg");
        let mut haproxy = Proc {
            name: "haproxy".into(),
            program: PathBuf::from("haproxy"),
            args: vec!["-db".into(), "-f".into(), cfg_path.display().to_string()],
            env: vec![],
            health: format!("http://127.0.0.1:{lb_port}/healthz"),
            child: None,
            log: dir.path().join("haproxy.log"),
        };

        let cluster_wait = Duration::from_secs(60);
        for p in std::iter::once(&auth).chain(&rooms).chain(&gateways) {
            assert!(
                ready(&p.health, cluster_wait),
                "{} did not become ready:\n{}",
                p.name,
                p.log_tail()
            );
        }
        haproxy.spawn();
        assert!(
            ready(&haproxy.health, cluster_wait),
            "haproxy did not come up:\n{}",
            haproxy.log_tail()
        );
        Cluster {
            id,
            schema,
            lb: format!("http://127.0.0.1:{lb_port}"),
            auth,
            rooms,
            gateways,
            haproxy,
            gateway_addrs,
            gateway_admins,
            auth_grpc,
            room_grpcs,
            dir,
        }
    }

    /// `ws://…/ws` through the load balancer.
    pub fn lb_ws(&self) -> String {
        format!("{}/ws", self.lb.replacen("http://", "ws://", 1))
    }

    pub fn gateway_ws(&self, i: usize) -> String {
        format!("ws://{}/ws", self.gateway_addrs[i])
    }

    pub fn gateway_http(&self, i: usize) -> String {
        format!("http://{}", self.gateway_addrs[i])
    }

    /// `http://…` of a gateway's admin listener (`/readyz`, `/metrics`).
    pub fn gateway_admin(&self, i: usize) -> String {
        format!("http://{}", self.gateway_admins[i])
    }

    /// Starts a process of this cluster again (same flags) and waits for it.
    pub fn restart(p: &mut Proc) {
        p.kill();
        p.spawn();
        assert!(
            ready(&p.health, Duration::from_secs(60)),
            "{} did not come back:\n{}",
            p.name,
            p.log_tail()
        );
    }

    /// Starts a stopped process again and waits until it is ready.
    pub fn start_again(p: &mut Proc) {
        p.spawn();
        assert!(
            ready(&p.health, Duration::from_secs(60)),
            "{} did not come back:\n{}",
            p.name,
            p.log_tail()
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.haproxy.kill();
        for p in self.gateways.iter_mut().chain(self.rooms.iter_mut()) {
            p.kill();
        }
        self.auth.kill();
        // Best effort: the schema is the cluster's alone.
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-c",
            ])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// HAProxy in front of the gateways: WebSocket upgrades pass through (HTTP
/// mode handles them), a dead gateway is taken out within a second and a
/// failed connect is retried on another.
pub fn haproxy_config(port: u16, gateways: &[String]) -> String {
    let servers: String = gateways
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server gw{i} {a} check\n"))
        .collect();
    format!(
        "global
    maxconn 4000
    # As deploy/local/cluster: a slow reader pushes back on its gateway.
    tune.rcvbuf.server 65536
    tune.sndbuf.client 65536

defaults
    mode http
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
    retries 3
    option redispatch

frontend chat
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    # The client's address, for the gateways (--trusted-proxies).
    option forwardfor
    # Liveness, not readiness: a backend every gateway depends on (room,
    # auth) being down must not take every gateway out of rotation.
    option httpchk GET /healthz
    http-check expect status 200
    # A check may take up to 2 s on a loaded machine; two failures take a
    # gateway out (a killed one is also skipped at once by redispatch).
    timeout check 2s
    default-server inter 300ms fall 2 rise 1
{servers}"
    )
}
