//! Real-time delivery over `/ws`: fan-out, ordering, resume, and the
//! no-gap/no-duplicate promise under concurrency.

use crate::helpers::{
    cmid, is_live_notice, message_seqs, spawn_app, within, within_for, TestUser, Ws,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Reads the sender's own ack and message frame for `r`, in either order.
async fn ack_and_echo(ws: &mut Ws, r: &str) -> (Value, Value) {
    let mut ack = None;
    let mut echo = None;
    while ack.is_none() || echo.is_none() {
        let f = ws.recv_event().await;
        match f["type"].as_str() {
            Some("ack") if f["ref"] == r => ack = Some(f),
            Some("message") => echo = Some(f),
            _ => panic!("unexpected frame while waiting for ack {r}: {f}"),
        }
    }
    (ack.expect("ack"), echo.expect("message"))
}

#[tokio::test]
async fn two_users_chatting_over_websockets_see_the_same_messages_in_the_same_order() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut a = app.ws(&alice).await;
    let mut b = app.ws(&bob).await;
    let (replayed, subscribed) = a.subscribe(&room, None).await;
    assert!(replayed.is_empty(), "nothing to replay: {replayed:?}");
    assert_eq!(subscribed["last_seq"], 0);
    b.subscribe(&room, None).await;

    let r = a.send_chat(&room, &cmid(), "hello bob").await;
    let (ack, a_first) = ack_and_echo(&mut a, &r).await;
    assert_eq!(ack["room_id"], room.as_str());
    assert_eq!(ack["seq"], 1);
    assert_eq!(a_first["seq"], ack["seq"]);
    assert_eq!(a_first["id"], ack["id"]);
    assert_eq!(a_first["sender_id"], alice.id.as_str());
    assert_eq!(a_first["body"], "hello bob");

    let b_first = b.recv_event().await;
    assert_eq!(b_first["type"], "message", "{b_first}");
    assert_eq!(b_first["seq"], ack["seq"]);
    assert_eq!(b_first["id"], ack["id"]);
    assert_eq!(b_first["room_id"], room.as_str());
    assert_eq!(b_first["body"], "hello bob");

    let r = b.send_chat(&room, &cmid(), "hi alice").await;
    let (ack, b_second) = ack_and_echo(&mut b, &r).await;
    assert_eq!(ack["seq"], 2);
    assert_eq!(b_second["sender_id"], bob.id.as_str());
    let a_second = a.recv_event().await;
    assert_eq!(a_second["type"], "message", "{a_second}");

    let seen_by_a: Vec<(i64, String)> = [&a_first, &a_second]
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let seen_by_b: Vec<(i64, String)> = [&b_first, &b_second]
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(seen_by_a, seen_by_b);
    assert_eq!(
        seen_by_a,
        vec![(1, "hello bob".to_owned()), (2, "hi alice".to_owned())]
    );
    assert!(a.ping_barrier().await.is_empty());
    assert!(b.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn resume_after_a_disconnect_replays_exactly_the_missed_messages_in_order() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;

    let mut b = app.ws(&bob).await;
    b.subscribe(&room, None).await;
    app.say(&alice, &room, "before").await;
    let first = b.recv_event().await;
    assert_eq!(first["type"], "message");
    let last_seen = first["seq"].as_i64().unwrap();
    b.close().await;

    let mut missed = Vec::new();
    for i in 0..5 {
        missed.push(app.say(&alice, &room, &format!("missed {i}")).await);
    }

    let mut b = app.ws(&bob).await;
    let (replayed, subscribed) = b.subscribe(&room, Some(last_seen)).await;
    assert_eq!(message_seqs(&replayed), vec![2, 3, 4, 5, 6]);
    let bodies: Vec<&str> = replayed
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["missed 0", "missed 1", "missed 2", "missed 3", "missed 4"]
    );
    for (got, sent) in replayed.iter().zip(&missed) {
        assert_eq!(got["id"], sent["id"]);
    }
    assert_eq!(subscribed["last_seq"], 6);

    app.say(&alice, &room, "live").await;
    let live = b.recv_event().await;
    assert_eq!(live["type"], "message", "{live}");
    assert_eq!(live["seq"], 7);
    assert_eq!(live["body"], "live");
    let extra = b.ping_barrier().await;
    assert!(extra.is_empty(), "no duplicates: {extra:?}");
}

#[tokio::test]
async fn subscribing_without_since_seq_delivers_only_live_events() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    app.say(&alice, &room, "old").await;
    let mut a = app.ws(&alice).await;
    let (replayed, subscribed) = a.subscribe(&room, None).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(subscribed["last_seq"], 1);
    app.say(&alice, &room, "new").await;
    let f = a.recv_event().await;
    assert_eq!(
        (f["type"].as_str(), f["seq"].as_i64()),
        (Some("message"), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_messages_are_sent_has_no_gap_and_no_duplicate() {
    const TOTAL: i64 = 200;
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;

    let (progress_tx, mut progress) = tokio::sync::mpsc::channel::<i64>(8);
    let client = app.client.clone();
    let url = app.url(&format!("/api/v1/rooms/{room}/messages"));
    let token = alice.access.clone();
    let sender = tokio::spawn(async move {
        for i in 1..=TOTAL {
            let r = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"body": format!("m{i}"), "client_msg_id": format!("c{i}")}))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status().as_u16(), 201, "post {i}");
            if i % 40 == 0 {
                let _ = progress_tx.send(i).await;
            }
        }
    });

    // Three subscribers join midway: a full replay, a resume, live only.
    let mut subs: Vec<(Ws, Vec<Value>, i64)> = Vec::new();
    for since in [Some(0), Some(10), None] {
        within("the sender's progress", progress.recv())
            .await
            .expect("the sender stopped early");
        let mut ws = app.ws(&bob).await;
        let (replayed, subscribed) = ws.subscribe(&room, since).await;
        let last = subscribed["last_seq"].as_i64().expect("last_seq");
        let replayed_seqs = message_seqs(&replayed);
        // Live only: nothing before `subscribed`, everything after it.
        let first = since.map_or(last + 1, |s| s + 1);
        assert_eq!(
            replayed_seqs,
            (first..=last).collect::<Vec<_>>(),
            "events before `subscribed` run up to its last_seq"
        );
        subs.push((ws, replayed, first));
    }

    for (ws, frames, first) in &mut subs {
        within_for(Duration::from_secs(30), "every message to arrive", async {
            while message_seqs(frames).last().copied().unwrap_or(0) < TOTAL {
                let f = ws.recv_event().await;
                assert_eq!(f["type"], "message", "only messages: {f}");
                frames.push(f);
            }
        })
        .await;
        let extra = ws.ping_barrier().await;
        assert!(
            extra.is_empty(),
            "no duplicate after the last message: {extra:?}"
        );
        assert_eq!(message_seqs(frames), (*first..=TOTAL).collect::<Vec<_>>());
        for f in frames.iter() {
            assert_eq!(f["body"], format!("m{}", f["seq"]), "{f}");
        }
    }
    within("the sender to finish", sender)
        .await
        .expect("sender task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_live_only_answers_subscribed_before_any_event() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let client = app.client.clone();
    let url = app.url(&format!("/api/v1/rooms/{room}/messages"));
    let token = alice.access.clone();
    let sending = stop.clone();
    let sender = tokio::spawn(async move {
        let mut i = 0;
        while !sending.is_cancelled() && i < 2000 {
            i += 1;
            let r = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"body": format!("m{i}"), "client_msg_id": format!("c{i}")}))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status().as_u16(), 201);
        }
    });
    // "Without since_seq: subscribed, then live events only."
    let mut early = Vec::new();
    for _ in 0..10 {
        let mut ws = app.ws(&bob).await;
        let (before, subscribed) = ws.subscribe(&room, None).await;
        if !before.is_empty() {
            early.push((message_seqs(&before), subscribed["last_seq"].clone()));
        }
        ws.close().await;
    }
    stop.cancel();
    within("the sender to stop", sender).await.expect("sender");
    assert!(
        early.is_empty(),
        "events arrived before `subscribed` (seqs, last_seq): {early:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_unique_seqs_and_every_subscriber_sees_them_in_order() {
    const CONNS: usize = 4;
    const EACH: usize = 50;
    const TOTAL: i64 = (CONNS * EACH) as i64;
    let app = spawn_app().await;
    let mut users: Vec<TestUser> = Vec::new();
    for _ in 0..CONNS {
        users.push(app.signup("sender").await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    let room = app.room_with(&users[0], &others).await;
    let mut sockets = Vec::new();
    for u in &users {
        let mut ws = app.ws(u).await;
        ws.subscribe(&room, None).await;
        sockets.push(ws);
    }

    let mut tasks = Vec::new();
    for (k, mut ws) in sockets.into_iter().enumerate() {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut refs = HashMap::new();
            for i in 0..EACH {
                let c = format!("conn{k}-msg{i}");
                let r = ws.send_chat(&room, &c, &format!("from {k} #{i}")).await;
                refs.insert(r, c);
            }
            let mut acks: HashMap<String, i64> = HashMap::new();
            let mut messages = Vec::new();
            within_for(Duration::from_secs(60), "every ack and message", async {
                while acks.len() < EACH || (messages.len() as i64) < TOTAL {
                    let f = ws.recv_event().await;
                    match f["type"].as_str() {
                        Some("ack") => {
                            let r = f["ref"].as_str().expect("ack ref");
                            let c = refs.get(r).expect("an ack for one of our refs").clone();
                            assert!(acks.insert(c, f["seq"].as_i64().expect("seq")).is_none());
                        }
                        Some("message") => messages.push(f),
                        _ => panic!("unexpected frame: {f}"),
                    }
                }
            })
            .await;
            let extra = ws.ping_barrier().await;
            assert!(extra.is_empty(), "no duplicate: {extra:?}");
            (acks, messages)
        }));
    }

    let mut all_acks: BTreeMap<i64, String> = BTreeMap::new();
    let mut views = Vec::new();
    for t in tasks {
        let (acks, messages) = within_for(Duration::from_secs(90), "a connection task", t)
            .await
            .expect("connection task");
        for (c, seq) in acks {
            assert!(all_acks.insert(seq, c).is_none(), "seq {seq} acked twice");
        }
        views.push(messages);
    }
    assert_eq!(
        all_acks.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL).collect::<Vec<_>>()
    );
    for messages in &views {
        assert_eq!(message_seqs(messages), (1..=TOTAL).collect::<Vec<_>>());
        for m in messages {
            let seq = m["seq"].as_i64().unwrap();
            assert_eq!(m["client_msg_id"].as_str(), Some(all_acks[&seq].as_str()));
        }
        // Everyone sees the very same messages.
        assert_eq!(messages, &views[0]);
    }
}

#[tokio::test]
async fn subscribe_all_resumes_every_room_and_follows_rooms_joined_later() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let r1 = app.create_room(&alice, "public").await;
    let r2 = app.create_room(&alice, "public").await;
    for i in 0..3 {
        app.say(&alice, &r1, &format!("one {i}")).await;
    }
    for i in 0..2 {
        app.say(&alice, &r2, &format!("two {i}")).await;
    }

    let mut a = app.ws(&alice).await;
    a.send_json(json!({"type": "subscribe_all", "since": {r1.as_str(): 1}}))
        .await;
    let mut replayed = Vec::new();
    let done = loop {
        let f = a.recv_event().await;
        if f["type"] == "subscribed_all" {
            break f;
        }
        replayed.push(f);
    };
    let got: Vec<(String, i64)> = replayed
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "message", "{f}");
            (
                f["room_id"].as_str().unwrap().to_owned(),
                f["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(r1.clone(), 2), (r1.clone(), 3)],
        "r2 is live only"
    );
    assert_eq!(done["rooms"][&r1], 3);
    assert_eq!(done["rooms"][&r2], 2);

    app.say(&alice, &r2, "two live").await;
    let f = a.recv_event().await;
    assert_eq!(
        (f["room_id"].as_str(), f["seq"].as_i64()),
        (Some(r2.as_str()), Some(3))
    );

    // A room joined later is added to the subscription.
    let r3 = app.create_room(&bob, "public").await;
    app.join(&alice, &r3).await;
    a.recv_until("the new room to be followed", |f| {
        f["type"] == "subscribed" && f["room_id"] == r3.as_str()
    })
    .await;
    app.say(&bob, &r3, "welcome").await;
    let f = a.recv_event().await;
    assert_eq!(f["type"], "message", "{f}");
    assert_eq!(f["room_id"], r3.as_str());
    assert_eq!(f["body"], "welcome");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_for_that_room() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let room = app.create_room(&alice, "public").await;
    let mut a = app.ws(&alice).await;
    a.subscribe(&room, None).await;
    let r = a.new_ref();
    a.send_json(json!({"type": "unsubscribe", "room_id": room, "ref": r}))
        .await;
    let f = a.reply_to(&r).await;
    assert_eq!(f["type"], "unsubscribed", "{f}");
    app.say(&alice, &room, "unseen").await;
    // Deliveries are asynchronous: a second room's event, published after
    // the first, shows the first would have arrived by now.
    let other = app.create_room(&alice, "public").await;
    a.subscribe(&other, None).await;
    app.say(&alice, &other, "seen").await;
    let f = a.recv_event().await;
    assert_eq!(
        f["room_id"],
        other.as_str(),
        "only the subscribed room: {f}"
    );
    assert!(a.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn typing_is_relayed_live_to_other_subscribers() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut a = app.ws(&alice).await;
    let mut b = app.ws(&bob).await;
    a.subscribe(&room, None).await;
    b.subscribe(&room, None).await;
    a.send_json(json!({"type": "typing", "room_id": room}))
        .await;
    let f = b
        .recv_until("a typing notice", |f| f["type"] == "typing")
        .await;
    assert_eq!(f["room_id"], room.as_str());
    assert_eq!(f["user_id"], alice.id.as_str());
    assert!(f.get("seq").is_none(), "typing carries no seq: {f}");
}

#[tokio::test]
async fn typing_reaches_a_room_once_per_interval_per_user() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut a = app.ws(&alice).await;
    let mut a2 = app.ws(&alice).await;
    let mut b = app.ws(&bob).await;
    a.subscribe(&room, None).await;
    a2.subscribe(&room, None).await;
    b.subscribe(&room, None).await;
    // A keystroke each, from two tabs: every one is answered...
    for i in 0..10 {
        let ws = if i % 2 == 0 { &mut a } else { &mut a2 };
        let r = ws.new_ref();
        ws.send_json(json!({"type": "typing", "room_id": room, "ref": r}))
            .await;
        assert_eq!(ws.reply_to(&r).await["type"], "ok");
    }
    // ...but bob is told once in the interval (2 s by default).
    let mut notices = 0;
    let quiet = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(f) = tokio::time::timeout_at(quiet, b.recv_json()).await {
        if f["type"] == "typing" {
            assert_eq!(f["user_id"], alice.id.as_str());
            notices += 1;
        }
    }
    assert_eq!(
        notices, 1,
        "one typing notice per user per room per interval"
    );

    // The next interval relays the next one.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.send_json(json!({"type": "typing", "room_id": room}))
        .await;
    let f = b
        .recv_until("the next interval's typing notice", |f| {
            f["type"] == "typing"
        })
        .await;
    assert_eq!(f["user_id"], alice.id.as_str());
}

#[tokio::test]
async fn a_user_past_the_socket_limit_is_closed_with_4008() {
    let app = crate::helpers::spawn_app_with(|cfg| cfg.gateway.ws_max_per_user = 2).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut first = app.ws(&alice).await;
    let _second = app.ws(&alice).await;
    // A browser authenticates after the upgrade, so its refusal is a close.
    let mut third = app.ws_anonymous().await;
    third
        .send_json(json!({"type": "auth", "token": alice.access}))
        .await;
    third.expect_close_code(4008).await;
    // The sockets she has keep working, and others are not held up.
    assert!(first.ping_barrier().await.is_empty());
    let _bob = app.ws(&bob).await;
    // A socket that closes frees its place.
    first.close().await;
    let mut again = None;
    for _ in 0..50 {
        let mut ws = crate::helpers::ws_connect(&app.ws_url, &alice.access)
            .await
            .expect("the upgrade is accepted");
        let first_frame = within("the first frame", ws.next_message()).await;
        if matches!(&first_frame, Some(Ok(Message::Text(t))) if t.contains("authenticated")) {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a closed socket's place is given back");
}

#[tokio::test]
async fn a_user_at_the_socket_limit_is_refused_with_429_before_the_upgrade() {
    let app = crate::helpers::spawn_app_with(|cfg| cfg.gateway.ws_max_per_user = 2).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let _first = app.ws(&alice).await;
    let _second = app.ws(&alice).await;
    let err = crate::helpers::ws_connect(&app.ws_url, &alice.access)
        .await
        .err()
        .expect("a third socket with the token in the header is refused");
    let (status, body) = crate::helpers::refused(err);
    assert_eq!(status, 429, "refusal: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "refusal: {body}");
    // Nobody else is held up.
    let _bob = app.ws(&bob).await;
}

/// Opens sockets as `user` from the source address `from` (optionally
/// saying `X-Forwarded-For: xff`) until one is refused; the ones accepted
/// and the refusal.
async fn sockets_until_refused(
    app: &crate::helpers::TestApp,
    token: &str,
    from: [u8; 4],
    xff: Option<&str>,
    most: usize,
) -> (Vec<crate::helpers::Ws>, (u16, Value)) {
    let mut open = Vec::new();
    for _ in 0..most {
        match crate::helpers::ws_connect_via(app.http_addr, token, from, xff).await {
            Ok(mut ws) => {
                let hello = ws.recv_json().await;
                assert_eq!(hello["type"], "authenticated", "first frame: {hello}");
                open.push(ws);
            }
            Err(err) => return (open, crate::helpers::refused(err)),
        }
    }
    panic!("{most} sockets from one address were all accepted");
}

/// Each replica counts its own sockets: behind the load balancer one
/// address holds at most the limit on each gateway.
fn per_addr_range(per_gateway: usize) -> std::ops::RangeInclusive<usize> {
    let replicas = if crate::helpers::cluster_mode() { 2 } else { 1 };
    per_gateway..=per_gateway * replicas
}

#[tokio::test]
async fn one_address_cannot_hold_every_websocket() {
    const PER_ADDR: usize = 2;
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.gateway.ws_max_per_addr = PER_ADDR as u32;
    })
    .await;
    let alice = app.signup("alice").await;
    let (open, (status, body)) =
        sockets_until_refused(&app, &alice.access, [127, 0, 0, 93], None, 8).await;
    assert_eq!(status, 429, "refusal: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "refusal: {body}");
    assert!(
        per_addr_range(PER_ADDR).contains(&open.len()),
        "{} sockets were accepted",
        open.len()
    );
    // Another address is served, and a closed socket gives its place back.
    let mut other =
        crate::helpers::ws_connect_via(app.http_addr, &alice.access, [127, 0, 0, 94], None)
            .await
            .expect("another address is accepted");
    assert_eq!(other.recv_json().await["type"], "authenticated");
    for ws in open {
        ws.close().await;
    }
    within("a place to be given back", async {
        loop {
            if let Ok(ws) =
                crate::helpers::ws_connect_via(app.http_addr, &alice.access, [127, 0, 0, 93], None)
                    .await
            {
                return ws;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit() {
    const PER_ADDR: usize = 1;
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.gateway.ws_max_per_addr = PER_ADDR as u32;
        cfg.gateway.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR block")];
    })
    .await;
    let alice = app.signup("alice").await;
    // Many clients behind one proxy: the proxy's own address is not what
    // is counted, each forwarded address is.
    let proxy = [127, 0, 0, 1];
    let (open, (status, body)) =
        sockets_until_refused(&app, &alice.access, proxy, Some("198.51.100.7"), 8).await;
    assert_eq!(status, 429, "refusal: {body}");
    assert!(
        per_addr_range(PER_ADDR).contains(&open.len()),
        "{} sockets were accepted",
        open.len()
    );
    let mut next =
        crate::helpers::ws_connect_via(app.http_addr, &alice.access, proxy, Some("198.51.100.8"))
            .await
            .expect("another client behind the same proxy is accepted");
    assert_eq!(next.recv_json().await["type"], "authenticated");
}

#[tokio::test]
async fn a_socket_that_never_answers_a_ping_is_dropped_and_one_that_does_stays() {
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.gateway.ws_ping_interval_ms = 200;
        cfg.gateway.ws_idle_timeout_ms = 1_000;
    })
    .await;
    let alice = app.signup("alice").await;
    let mut lively = app.ws(&alice).await;
    // The silent client reads nothing, so its library never answers the
    // server's pings.
    let mut silent = app.ws(&alice).await;
    // The lively one reads (and so answers pings) for longer than the
    // idle timeout, and stays open.
    let until = tokio::time::Instant::now() + Duration::from_millis(2_000);
    while tokio::time::timeout_at(until, lively.next_message())
        .await
        .is_ok()
    {}
    assert!(
        lively.ping_barrier().await.is_empty(),
        "the lively socket is open"
    );
    // The silent one was dropped: what it reads now ends (pings, then EOF
    // or a reset; no close frame: the server does not wait on a dead peer).
    let ended = within("the silent socket to end", async {
        loop {
            match silent.next_message().await {
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Text(t))) => panic!("unexpected frame {t}"),
                other => return other,
            }
        }
    })
    .await;
    assert!(
        !matches!(ended, Some(Ok(Message::Close(_)))),
        "dropped, not closed: {ended:?}"
    );
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let mut a = app.ws(&alice).await;
    a.send_json(json!({"type": "ping"})).await;
    let f = a.recv_event().await;
    assert_eq!(f["type"], "pong");
    let extra = a.ping_barrier().await;
    assert!(extra.is_empty());
}

#[tokio::test]
async fn joins_and_leaves_are_announced_live_without_a_seq() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&alice, "public").await;
    let mut a = app.ws(&alice).await;
    a.subscribe(&room, None).await;

    app.join(&bob, &room).await;
    let f = a
        .recv_until("member_joined", |f| f["type"] == "member_joined")
        .await;
    assert_eq!(f["room_id"], room.as_str());
    assert_eq!(f["user_id"], bob.id.as_str());
    assert!(f.get("seq").is_none(), "membership carries no seq: {f}");

    app.post(
        &format!("/api/v1/rooms/{room}/leave"),
        &bob.access,
        json!({}),
    )
    .await
    .expect(204);
    let f = a
        .recv_until("member_left", |f| f["type"] == "member_left")
        .await;
    assert_eq!(f["user_id"], bob.id.as_str());
    assert!(f.get("seq").is_none(), "{f}");
    // Neither consumed a seq.
    let next = app.say(&alice, &room, "still seq 1").await;
    assert_eq!(next["seq"], 1);
}

#[tokio::test]
async fn a_member_coming_online_and_going_offline_is_announced_to_the_room() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut a = app.ws(&alice).await;
    a.subscribe(&room, None).await;

    let b = app.ws(&bob).await;
    let online = |f: &Value| f["type"] == "presence" && f["user_id"] == bob.id.as_str();
    let f = a.recv_until("bob's presence (online)", online).await;
    assert_eq!(f["room_id"], room.as_str());
    assert_eq!(f["online"], true, "{f}");
    b.close().await;
    let f = a.recv_until("bob's presence (offline)", online).await;
    assert_eq!(f["online"], false, "{f}");
}

#[tokio::test]
async fn a_removed_member_stops_receiving_the_rooms_events() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let other = app.room_with(&alice, &[&bob]).await;
    let mut b = app.ws(&bob).await;
    b.subscribe(&room, None).await;
    b.subscribe(&other, None).await;

    app.delete(
        &format!("/api/v1/rooms/{room}/members/{}", bob.id),
        &alice.access,
    )
    .await
    .expect(204);
    app.assert_put_out(&mut b, &alice, &room, &other).await;
}

#[tokio::test]
async fn too_many_frames_per_second_close_the_socket_with_4008() {
    let app = crate::helpers::spawn_app_with(|cfg| cfg.gateway.ws_frames_per_sec = 20).await;
    let alice = app.signup("alice").await;
    let mut a = app.ws(&alice).await;
    for _ in 0..40 {
        // The server may close before the last ones are written.
        if a.send_message(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "ping"}).to_string(),
        ))
        .await
        .is_err()
        {
            break;
        }
    }
    let closed = a.expect_close_code(4008).await;
    assert!(closed.frames.iter().all(|f| f["type"] == "pong"));
}

#[tokio::test]
async fn a_page_from_an_origin_not_allowed_is_closed_with_4003() {
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.gateway.ws_allowed_origins = vec!["https://chat.example.com".into()];
    })
    .await;
    let alice = app.signup("alice").await;

    let mut foreign =
        crate::helpers::ws_connect_from(&app.ws_url, &alice.access, "https://evil.example")
            .await
            .expect("the upgrade is accepted, so that the page can read the close code");
    let closed = foreign.expect_close_code(4003).await;
    assert!(
        closed.frames.is_empty(),
        "nothing before the close: {:?}",
        closed.frames
    );

    let mut allowed =
        crate::helpers::ws_connect_from(&app.ws_url, &alice.access, "https://chat.example.com")
            .await
            .expect("the upgrade is accepted");
    assert_eq!(allowed.recv_json().await["type"], "authenticated");
    // A client that is not a browser sends no Origin.
    let mut plain = app.ws(&alice).await;
    assert!(plain.ping_barrier().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_closed_with_4009_and_resumes_with_since_seq() {
    const TOTAL: i64 = 600;
    // A small budget for what waits for bob's socket (and for what waits
    // in his task): in a cluster, HAProxy's buffers sit in between too.
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.gateway.ws_queue = 8;
        cfg.gateway.ws_buffer_bytes = 64 * 1024;
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut slow = app.ws_small_buffer(&bob).await;
    slow.subscribe(&room, None).await;

    // While bob reads nothing: the TCP buffers fill, then the server's
    // queue for bob.
    post_big_messages(&app, &alice, &room, TOTAL).await;

    let mut seen = Vec::new();
    let code = within_for(Duration::from_secs(30), "the slow reader's close", async {
        loop {
            match slow.next_message().await {
                Some(Ok(Message::Text(t))) => {
                    let f: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if f["type"] == "message" {
                        seen.push(f["seq"].as_i64().expect("seq"));
                        assert!(
                            *seen.last().unwrap() < TOTAL,
                            "the reader got everything: it never fell behind"
                        );
                    }
                }
                Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(code, Some(4009));
    let last_seen = seen.last().copied().unwrap_or(0);
    assert_eq!(
        seen,
        (1..=last_seen).collect::<Vec<_>>(),
        "in order up to the close"
    );

    let mut again = app.ws(&bob).await;
    let (replayed, subscribed) = again.subscribe(&room, Some(last_seen)).await;
    assert_eq!(
        message_seqs(&replayed),
        (last_seen + 1..=TOTAL).collect::<Vec<_>>()
    );
    assert_eq!(subscribed["last_seq"], TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_beyond_the_gateways_concurrency_wait_their_turn() {
    // One subscribe at a time per gateway: a crowd subscribing (and
    // resuming, which reads the log under the same permit) all get in.
    let app = crate::helpers::spawn_app_with(|cfg| cfg.gateway.subscribe_concurrency = 1).await;
    let alice = app.signup("alice").await;
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(app.signup(&format!("m{i}")).await);
    }
    let refs: Vec<&TestUser> = members.iter().collect();
    let rooms = [
        app.room_with(&alice, &refs).await,
        app.room_with(&alice, &refs).await,
    ];
    for room in &rooms {
        app.say(&alice, room, "history").await;
    }
    let mut tasks = Vec::new();
    for m in &members {
        let mut ws = app.ws(m).await;
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for room in &rooms {
                let (replayed, subscribed) = ws.subscribe(room, Some(0)).await;
                assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
                got.push(message_seqs(&replayed));
            }
            got
        }));
    }
    for t in tasks {
        let got = within_for(Duration::from_secs(30), "every subscribe", t)
            .await
            .expect("subscriber");
        assert_eq!(got, vec![vec![1], vec![1]], "each room's history, once");
    }
}

/// A resume bigger than what waits for a slow socket (issue #10: "a
/// 5 MiB resume") ends in 4009, never in part of the history followed by
/// an error frame; resuming from the last event received, again as often
/// as needed, gets every event once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_bigger_than_the_socket_buffer_ends_in_4009_and_resumes_cleanly() {
    const TOTAL: i64 = 600;
    let app = crate::helpers::spawn_app_with(|cfg| {
        cfg.gateway.ws_buffer_bytes = 64 * 1024;
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    // About 9.6 MB of history.
    post_big_messages(&app, &alice, &room, TOTAL).await;

    let mut got: Vec<i64> = Vec::new();
    let mut closes = 0;
    loop {
        assert!(
            closes < 40,
            "no progress after {closes} resumes: {}",
            got.len()
        );
        let mut ws = app.ws_small_buffer(&bob).await;
        let since = got.last().copied().unwrap_or(0);
        ws.send_json(json!({"type": "subscribe", "room_id": room, "since_seq": since}))
            .await;
        // Read nothing for a while: the history piles up past the socket's
        // buffers and what may wait for it.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        let done = within_for(Duration::from_secs(30), "a resume to end", async {
            loop {
                match ws.next_message().await {
                    Some(Ok(Message::Text(t))) => {
                        let f: Value = serde_json::from_str(t.as_str()).expect("JSON");
                        match f["type"].as_str() {
                            Some("message") => got.push(f["seq"].as_i64().expect("seq")),
                            Some("subscribed") => return true,
                            _ => {
                                assert!(is_live_notice(&f), "an unexpected frame in a resume: {f}")
                            }
                        }
                    }
                    Some(Ok(Message::Close(c))) => {
                        assert_eq!(c.map(|c| u16::from(c.code)), Some(4009));
                        return false;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("the socket ended without a close frame: {other:?}"),
                }
            }
        })
        .await;
        if done {
            break;
        }
        closes += 1;
    }
    assert!(
        closes > 0,
        "the history fit in the buffers: the test proves nothing"
    );
    assert_eq!(
        got,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every event once, in order"
    );
}

/// Posts `total` messages of ~16 KB (4000 four-byte characters) as
/// `sender` to `room`, from four concurrent clients; each is stored (201).
async fn post_big_messages(
    app: &crate::helpers::TestApp,
    sender: &TestUser,
    room: &str,
    total: i64,
) {
    let body = "\u{1F980}".repeat(4000);
    let mut senders = Vec::new();
    for k in 0..4 {
        let (client, token, body) = (app.client.clone(), sender.access.clone(), body.clone());
        let url = app.url(&format!("/api/v1/rooms/{room}/messages"));
        senders.push(tokio::spawn(async move {
            for i in 0..total / 4 {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"body": body, "client_msg_id": format!("{k}-{i}")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status().as_u16(), 201);
            }
        }));
    }
    for s in senders {
        within_for(Duration::from_secs(60), "the senders", s)
            .await
            .expect("sender");
    }
}
