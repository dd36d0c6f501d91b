//! The behaviour every `Bus` must have, run against each implementation (see
//! `memory.rs` and `nats.rs`). Each check takes two handles on one broker:
//! the same in-process bus twice, or two NATS connections (two processes).

use bytes::Bytes;
use chat_bus::{Bus, Subjects, Subscription};
use futures_util::StreamExt;
use std::time::Duration;

/// Long enough for a healthy broker on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long we wait to conclude that nothing arrives.
const QUIET: Duration = Duration::from_millis(200);

/// Subjects no other test (or run) shares.
pub fn subjects() -> Subjects {
    Subjects::new(format!("test{}", uuid::Uuid::new_v4().simple()))
}

pub async fn next(s: &mut Subscription) -> Bytes {
    tokio::time::timeout(PATIENCE, s.next())
        .await
        .expect("no payload in time")
        .expect("subscription ended")
}

pub async fn nothing_more(s: &mut Subscription) {
    if let Ok(got) = tokio::time::timeout(QUIET, s.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

pub async fn roundtrip_between_handles(a: &dyn Bus, b: &dyn Bus) {
    let subjects = subjects();
    let room = subjects.room(uuid::Uuid::now_v7());
    let mut sub = b.subscribe(&room).await.unwrap();
    a.publish(&room, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, "hello");
    // And back the other way.
    let mut sub_a = a.subscribe(&room).await.unwrap();
    b.publish(&room, Bytes::from_static(b"back")).await.unwrap();
    assert_eq!(next(&mut sub_a).await, "back");
    assert_eq!(next(&mut sub).await, "back");
}

pub async fn every_subscriber_gets_it_and_only_its_subject(a: &dyn Bus, b: &dyn Bus) {
    let subjects = subjects();
    let (room, other) = (subjects.room("r1"), subjects.room("r2"));
    let mut subs = vec![
        a.subscribe(&room).await.unwrap(),
        b.subscribe(&room).await.unwrap(),
        b.subscribe(&room).await.unwrap(),
    ];
    let mut elsewhere = b.subscribe(&other).await.unwrap();
    let mut user = b.subscribe(&subjects.user("u1")).await.unwrap();
    a.publish(&room, Bytes::from_static(b"x")).await.unwrap();
    for s in &mut subs {
        assert_eq!(next(s).await, "x");
    }
    nothing_more(&mut elsewhere).await;
    nothing_more(&mut user).await;
}

pub async fn nothing_arrives_from_before_the_subscription(a: &dyn Bus, b: &dyn Bus) {
    let subjects = subjects();
    let room = subjects.room("r");
    a.publish(&room, Bytes::from_static(b"early"))
        .await
        .unwrap();
    // `publish` returning means sent, not arrived (NATS: it may still be in
    // a's outbound buffer); a ping is a round trip that settles it.
    a.ping().await.unwrap();
    let mut sub = b.subscribe(&room).await.unwrap();
    a.publish(&room, Bytes::from_static(b"late")).await.unwrap();
    assert_eq!(next(&mut sub).await, "late");
}

pub async fn one_publishers_order_is_kept(a: &dyn Bus, b: &dyn Bus) {
    const N: u32 = 1000;
    let subjects = subjects();
    let room = subjects.room("r");
    let mut sub = b.subscribe(&room).await.unwrap();
    for i in 0..N {
        a.publish(&room, Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    for i in 0..N {
        let got = next(&mut sub).await;
        assert_eq!(got.as_ref(), i.to_be_bytes(), "payload {i} out of order");
    }
    nothing_more(&mut sub).await;
}

pub async fn a_dropped_subscription_stops_quietly(a: &dyn Bus, b: &dyn Bus) {
    let subjects = subjects();
    let room = subjects.room("r");
    let dropped = b.subscribe(&room).await.unwrap();
    let mut kept = b.subscribe(&room).await.unwrap();
    drop(dropped);
    for _ in 0..10 {
        a.publish(&room, Bytes::from_static(b"x")).await.unwrap();
    }
    for _ in 0..10 {
        assert_eq!(next(&mut kept).await, "x");
    }
    drop(kept);
    // Nobody listens now: publishing is still fine.
    a.publish(&room, Bytes::from_static(b"y")).await.unwrap();
    // `publish` only queues: the round trip on `a` makes sure the broker has
    // routed "y" (to nobody) before the new subscription exists.
    a.ping().await.unwrap();
    b.ping().await.unwrap();
    // And the subject can be subscribed again.
    let mut again = b.subscribe(&room).await.unwrap();
    a.publish(&room, Bytes::from_static(b"z")).await.unwrap();
    assert_eq!(next(&mut again).await, "z");
}

pub async fn ping_and_no_reconnects(a: &dyn Bus, b: &dyn Bus) {
    a.ping().await.unwrap();
    b.ping().await.unwrap();
    let r = a.reconnects();
    assert_eq!(*r.borrow(), 0);
    assert!(!r.has_changed().unwrap());
}

/// One `#[tokio::test]` per check above; `$pair` is an async block giving
/// two `Arc<dyn Bus>` on the same broker.
#[macro_export]
macro_rules! bus_conformance {
    ($pair:expr) => {
        $crate::bus_conformance!(@tests $pair;
            roundtrip_between_handles,
            every_subscriber_gets_it_and_only_its_subject,
            nothing_arrives_from_before_the_subscription,
            one_publishers_order_is_kept,
            a_dropped_subscription_stops_quietly,
            ping_and_no_reconnects,
        );
    };
    (@tests $pair:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (a, b) = $pair.await;
                conformance::$name(&*a, &*b).await;
            }
        )*
    };
}
