//! Bus events are authenticated: whoever can publish on NATS (but does not
//! hold the cluster's internal secret) cannot put typing, presence,
//! membership, role, session-revoked or room events in front of a user.

use crate::cluster::NATS;
use crate::helpers::{cluster_options, start_cluster_with, within, TestApp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_bus::{Bus, BusKey, NatsBus, Subjects};
use chat_proto::v1 as pb;
use prost::Message as _;
use serde_json::{json, Value};
use std::sync::Arc;

/// The session id (`sid` claim) of an access token.
fn session_of(access: &str) -> String {
    let payload = access.split('.').nth(1).expect("a JWT");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    claims["sid"].as_str().expect("a sid").to_owned()
}

/// Every kind of bus event a forger would try, for `room` (where alice and
/// bob are members) and alice's own subject.
fn forgeries(
    room: &str,
    alice: &str,
    bob: &str,
    alice_sid: &str,
) -> Vec<(bool, pb::bus_event::Kind)> {
    use pb::bus_event::Kind;
    let (room, alice, bob) = (room.to_owned(), alice.to_owned(), bob.to_owned());
    vec![
        (
            true,
            Kind::Typing(pb::Typing {
                room_id: room.clone(),
                user_id: bob.clone(),
            }),
        ),
        (
            true,
            Kind::Presence(pb::Presence {
                room_id: room.clone(),
                user_id: bob.clone(),
                online: false,
            }),
        ),
        (
            true,
            Kind::Member(pb::MemberChange {
                room_id: room.clone(),
                user_id: bob.clone(),
                joined: false,
            }),
        ),
        (
            true,
            Kind::MemberRole(pb::MemberRole {
                room_id: room.clone(),
                user_id: bob.clone(),
                role: "owner".into(),
            }),
        ),
        (
            true,
            Kind::RoomEvent(pb::RoomEvent {
                room_id: room.clone(),
                seq: 1,
                kind: Some(pb::room_event::Kind::Message(pb::Message {
                    room_id: room.clone(),
                    seq: 1,
                    id: uuid::Uuid::now_v7().to_string(),
                    sender_id: bob.clone(),
                    body: "forged".into(),
                    client_msg_id: "forged".into(),
                    created_at: "2026-01-01T00:00:00Z".into(),
                    ..Default::default()
                })),
            }),
        ),
        // On alice's own subject: end her session, take her out of the room.
        (
            false,
            Kind::SessionRevoked(pb::SessionRevoked {
                session_id: alice_sid.to_owned(),
                user_id: alice.clone(),
            }),
        ),
        (
            false,
            Kind::Member(pb::MemberChange {
                room_id: room,
                user_id: alice,
                joined: false,
            }),
        ),
    ]
}

/// The sum of a counter over the gateways' `/metrics`.
async fn metric_sum(app: &TestApp, name: &str) -> f64 {
    let admins: Vec<String> = {
        let c = app.cluster();
        let c = c.lock().expect("lock");
        (0..c.gateway_admins.len())
            .map(|i| c.gateway_admin(i))
            .collect()
    };
    let mut sum = 0.0;
    for a in admins {
        let text = app
            .client
            .get(format!("{a}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        sum += text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bus_events_reach_nobody_and_genuine_ones_still_flow() {
    let cluster = start_cluster_with(cluster_options(|_| {})).await;
    let subjects = Subjects::new(format!("t{}", cluster.id));
    let app = TestApp::for_cluster(cluster, Arc::new(tempfile::tempdir().expect("dir")), |_| {});
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut wa = app.ws(&alice).await;
    wa.subscribe(&room, None).await;
    let mut wb = app.ws(&bob).await;
    wb.subscribe(&room, None).await;
    // Whatever presence notices the two connections caused are behind us.
    wa.ping_barrier().await;

    // A forger with access to NATS but not to the internal secret: each
    // event without a seal, and sealed with a key of its own.
    let forger = within("a NATS connection", NatsBus::connect(NATS))
        .await
        .expect("NATS");
    let wrong = BusKey::derive("not the cluster's internal secret");
    let forged = forgeries(&room, &alice.id, &bob.id, &session_of(&alice.access));
    let sent = 2 * forged.len();
    for (to_room, kind) in forged {
        let subject = if to_room {
            subjects.room(&room)
        } else {
            subjects.user(&alice.id)
        };
        let payload = pb::BusEvent {
            kind: Some(kind),
            ..Default::default()
        }
        .encode_to_vec();
        for p in [payload.clone().into(), wrong.seal(&subject, &payload)] {
            forger.publish(&subject, p).await.expect("publish");
        }
    }
    within("a NATS flush", forger.ping()).await.expect("flush");

    // Up to bob's genuine message, published after every forgery, alice
    // sees none of them (bob's own coming online may show: it is genuine),
    // and her socket stays open.
    app.say(&bob, &room, "genuine").await;
    loop {
        let f = wa.recv_json().await;
        if f["type"] == "message" {
            assert_eq!(f["body"], "genuine", "a forged message was delivered: {f}");
            assert_eq!(f["seq"], 1, "{f}");
            break;
        }
        let genuine_presence = f["type"] == "presence" && f["online"] == true;
        assert!(genuine_presence, "a forged event was delivered: {f}");
    }

    // Genuine live notices still flow, and alice is still subscribed.
    wb.send_json(json!({"type": "typing", "room_id": room}))
        .await;
    let t = wa
        .recv_until("bob's typing notice", |f| f["type"] == "typing")
        .await;
    assert_eq!(t["user_id"], json!(bob.id));
    app.say(&bob, &room, "still here").await;
    assert_eq!(wa.recv_event().await["body"], "still here");
    assert!(wa.ping_barrier().await.is_empty());

    // The gateways counted what they threw away.
    let rejected = metric_sum(&app, "chat_bus_rejected_total").await;
    assert!(
        rejected >= sent as f64,
        "{rejected} bus events counted as rejected, {sent} forged"
    );
}
