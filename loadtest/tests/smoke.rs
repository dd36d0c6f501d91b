//! Smoke tests: each starts a real all-in-one server in this process (its
//! own data dir, ephemeral ports, limits raised as a load run needs) and
//! runs a scenario with tiny numbers through the library. They assert
//! correctness only (nothing lost, duplicated or out of order), never
//! timings.

use chat::{App, Config};
use loadtest::{Args, Report};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Server {
    url: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// A server whose config `change` alters after the load-run limits.
    async fn start_with(change: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = Config::ephemeral(dir.path());
        cfg.auth.argon2_memory_kib = 256;
        cfg.auth.argon2_iterations = 1;
        cfg.room.send_limit = 0;
        cfg.auth.signup_limit = 0;
        cfg.room.membership_limit = 0;
        cfg.room.create_limit = 0;
        cfg.gateway.ws_frames_per_sec = 100_000;
        cfg.shutdown_timeout_secs = 2;
        change(&mut cfg);
        let stop = CancellationToken::new();
        let app = App::build(cfg, stop.clone()).await.expect("server builds");
        let url = format!("http://{}", app.http_addr());
        let task = tokio::spawn(app.run());
        Server {
            url,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await;
    }
}

async fn run(server: &Server, flags: &[&str]) -> Report {
    let mut all = vec!["--url", &server.url, "--quiet", "--drain", "10"];
    all.extend_from_slice(flags);
    let args = Args::from_flags(all).expect("valid flags");
    let report = loadtest::run(args).await.expect("the run completes");
    eprintln!("{}", report.table());
    report
}

fn assert_nothing_lost(r: &Report) {
    assert_eq!(
        r.connect_failures, 0,
        "connect errors: {:?}",
        r.connect_errors
    );
    assert_eq!(r.lost, 0, "lost");
    assert_eq!(r.duplicated, 0, "duplicated");
    assert_eq!(r.out_of_order, 0, "out of order");
    assert!(r.sent > 0, "nothing sent");
    assert_eq!(r.acked, r.sent, "every send is acked");
    assert!(r.expected_deliveries > 0);
    assert_eq!(r.delivered, r.expected_deliveries);
    assert_eq!(r.latency_ms.count, r.delivered, "a latency per delivery");
    assert_eq!(r.ack_latency_ms.count, r.acked);
    assert!(r.passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_delivers_everything_once_in_order() {
    let server = Server::start().await;
    let r = run(
        &server,
        &[
            "--scenario",
            "room",
            "--connections",
            "20",
            "--rate",
            "20",
            "--duration",
            "3",
        ],
    )
    .await;
    assert_nothing_lost(&r);
    assert_eq!(r.connections_held, 20);
    assert_eq!(r.senders, 2);
    // Every connection, the senders too, gets every message.
    assert_eq!(r.expected_deliveries, r.acked * 20);

    // The JSON file's keys.
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "scenario",
        "connections_held",
        "sent",
        "acked",
        "expected_deliveries",
        "delivered",
        "lost",
        "duplicated",
        "out_of_order",
        "deliveries_per_s",
        "latency_ms",
        "ack_latency_ms",
        "server_rss_bytes_max",
        "server_cpu_percent",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            v["latency_ms"].get(key).is_some(),
            "missing latency_ms.{key}"
        );
        assert!(v["ack_latency_ms"].get(key).is_some());
    }
    assert_eq!(v["scenario"], "room");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_without_loss() {
    let server = Server::start().await;
    let r = run(
        &server,
        &[
            "--scenario",
            "reconnect",
            "--connections",
            "20",
            "--rate",
            "20",
            "--duration",
            "4",
            "--disconnect-after",
            "1.5",
        ],
    )
    .await;
    assert_nothing_lost(&r);
    // The 18 receivers dropped and came back.
    assert!(r.reconnects >= 18, "reconnects: {}", r.reconnects);
    let recovery = r.recovery_ms.expect("recovery measured");
    assert_eq!(recovery.count, 18);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_worker_processes() {
    let server = Server::start().await;
    let exe = env!("CARGO_BIN_EXE_loadtest");
    // The same server twice, once as a ws:// URL: connections alternate.
    let second = format!("{}/ws", server.url.replace("http://", "ws://"));
    let r = run(
        &server,
        &[
            "--url",
            &second,
            "--scenario",
            "rooms",
            "--connections",
            "30",
            "--rooms",
            "3",
            "--users",
            "5",
            "--rate",
            "15",
            "--duration",
            "2",
            "--processes",
            "2",
            "--worker-exe",
            exe,
        ],
    )
    .await;
    assert_nothing_lost(&r);
    assert_eq!(r.processes, 2);
    assert_eq!(r.urls.len(), 2);
    assert_eq!(r.connections_held, 30);
    assert_eq!(r.senders, 3, "one sender per room");
    // Each message reaches the 10 connections of its room.
    assert_eq!(r.expected_deliveries, r.acked * 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections() {
    let server = Server::start().await;
    let r = run(
        &server,
        &[
            "--scenario",
            "idle",
            "--connections",
            "25",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_eq!(r.connections_held, 25);
    assert_eq!(r.sent, 0);
    assert!(r.passed);
    // The server runs in this process, found by its port.
    assert_eq!(r.server_pids, vec![std::process::id()]);
    assert!(r.server_rss_bytes_max > 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_the_server_refuses_fail_the_run_and_say_why() {
    // One user may send 20 messages per 10 s; the run asks 40 in 2 s.
    let server = Server::start_with(|cfg| cfg.room.send_limit = 20).await;
    let r = run(
        &server,
        &[
            "--scenario",
            "room",
            "--connections",
            "5",
            "--users",
            "1",
            "--senders",
            "1",
            "--rate",
            "20",
            "--duration",
            "2",
        ],
    )
    .await;
    // Nothing lost: every acked message arrived everywhere.
    assert_eq!(r.lost + r.duplicated + r.out_of_order, 0);
    assert_eq!(r.acked, 20, "the limit lets 20 through");
    assert_eq!(r.send_errors, 20, "{:?}", r.send_error_codes);
    assert!(!r.passed);
    assert_eq!(r.failures, ["acks 10/s < 95% of 20/s asked"]);
    assert!(!r.passed_allowing(true), "--allow-loss does not hide it");
    assert!(
        r.table()
            .contains("result          FAIL: acks 10/s < 95% of 20/s asked"),
        "{}",
        r.table()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_finds_the_rate_a_send_limit_allows() {
    // One user may send 20 messages per 10 s: in a 1 s run, 20/s holds
    // and anything faster is refused in part. Each step signs up its own
    // user, so the steps do not share the limit.
    let server = Server::start_with(|cfg| cfg.room.send_limit = 20).await;
    let flags = [
        "--url",
        &server.url,
        "--quiet",
        "--drain",
        "10",
        "--scenario",
        "room",
        "--connections",
        "3",
        "--users",
        "1",
        "--senders",
        "1",
        "--rate",
        "5",
        "--duration",
        "1",
        "--find-max",
        "--find-max-steps",
        "5",
        "--find-max-pause",
        "0",
    ];
    let args = Args::from_flags(flags).expect("valid flags");
    let mut lines = Vec::new();
    let found = loadtest::find_max(args, &mut |s| lines.push(s.line(5)))
        .await
        .expect("the search runs");
    eprintln!("{}\n{}", lines.join("\n"), found.summary());
    let rates: Vec<f64> = found.steps.iter().map(|s| s.rate).collect();
    assert_eq!(rates, [5.0, 10.0, 20.0, 40.0, 30.0]);
    let passed: Vec<bool> = found.steps.iter().map(|s| s.passed).collect();
    assert_eq!(passed, [true, true, true, false, false]);
    let c = found.ceiling.clone().expect("a ceiling");
    assert_eq!(c.rate, 20.0);
    assert_eq!(c.step, 3);
    assert!((19..=20).contains(&c.report.acked), "{}", c.report.acked);
    assert_eq!(found.lowest_failing_rate, Some(30.0));
    // A fresh run id per step.
    let ids: std::collections::BTreeSet<_> = found
        .steps
        .iter()
        .filter_map(|s| s.report.as_ref().map(|r| r.run_id.clone()))
        .collect();
    assert_eq!(ids.len(), 5);
    let v = serde_json::to_value(&found).unwrap();
    assert_eq!(v["ceiling"]["rate"], 20.0);
    assert_eq!(
        v["steps"][3]["failures"][0],
        "acks 20/s < 95% of 40/s asked"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_is_not_there_is_a_clear_error() {
    let args = Args::from_flags([
        "--url",
        "http://127.0.0.1:1",
        "--quiet",
        "--connections",
        "1",
    ])
    .unwrap();
    let e = loadtest::run(args).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot reach the server"),
        "{e:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_finds_every_logged_out_socket_closed() {
    let server = Server::start().await;
    let r = loadtest::revoke::run(loadtest::revoke::Probe {
        url: server.url.clone(),
        users: 5,
        logout_after: std::time::Duration::from_millis(500),
        watch: std::time::Duration::from_secs(5),
        password: "loadtest-password".into(),
        run_id: "smoke".into(),
    })
    .await
    .expect("the probe runs");
    eprintln!("{}", r.line());
    assert_eq!(r.open_at_logout, 5, "every socket was open: {:?}", r.drops);
    assert_eq!(r.logged_out, 5);
    assert_eq!(r.closed_4001, 5, "each closed with 4001: {:?}", r.drops);
    assert_eq!(r.still_open, 0);
    assert!(r.passed);
    server.stop().await;
}
