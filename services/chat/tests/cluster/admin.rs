//! What operators reach and clients do not: a gateway's `/readyz` and
//! `/metrics` on its admin listener only, readiness still naming a
//! dependency that is down.

use crate::helpers::{cluster_options, start_cluster_with, within_for};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_s_readyz_is_on_its_admin_port_and_names_a_room_that_is_down() {
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(
        start_cluster_with(cluster_options(|_| {})).await,
    ));
    let (lb, public, admin) = {
        let c = cluster.lock().expect("lock");
        (c.lb.clone(), c.gateway_http(0), c.gateway_admin(0))
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(&url).send().await.expect("a response");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    for base in [&lb, &public] {
        for path in ["/readyz", "/metrics"] {
            let (status, body) = get(format!("{base}{path}")).await;
            assert_eq!(status, 404, "{base}{path}: {body}");
        }
        assert_eq!(get(format!("{base}/healthz")).await.0, 200);
    }
    assert_eq!(get(format!("{admin}/readyz")).await.0, 200);
    let (status, metrics) = get(format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("chat_ws_connections"), "{metrics}");

    // Every room replica stops: the admin /readyz says so, and which.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = c.lock().expect("lock");
        for r in c.rooms.iter_mut() {
            r.kill();
        }
    })
    .await
    .expect("kill rooms");
    let body = within_for(Duration::from_secs(30), "readyz to report room", async {
        loop {
            let (status, body) = get(format!("{admin}/readyz")).await;
            if status == 503 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "unavailable", "{body}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("room"), "{body}");
    // The load balancer's check is liveness: the gateway stays alive.
    assert_eq!(get(format!("{public}/healthz")).await.0, 200);
    drop(cluster);
}
