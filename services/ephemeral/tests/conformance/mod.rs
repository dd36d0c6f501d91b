//! The behaviour every `Ephemeral` must have, run against each implementation
//! (see `memory.rs` and `redis.rs`). Each check takes two handles on one
//! store: the same in-process store twice, or two Redis connections (two
//! gateways). Keys are random per test, so tests can share a store.

use chat_core::{SessionId, UserId};
use chat_ephemeral::{Ephemeral, RateDecision};
use std::time::Duration;

fn key() -> String {
    format!("k{}", uuid::Uuid::new_v4().simple())
}

pub async fn rate_limit_allows_up_to_the_limit_then_says_when(
    a: &dyn Ephemeral,
    b: &dyn Ephemeral,
) {
    let (k, w) = (key(), Duration::from_secs(60));
    // The hits of both handles count against one limit.
    for e in [a, b, a] {
        assert_eq!(e.hit(&k, 3, w).await.unwrap(), RateDecision::Allowed);
    }
    for e in [b, a] {
        match e.hit(&k, 3, w).await.unwrap() {
            RateDecision::Limited(d) => assert!(d <= w && d > Duration::from_secs(50), "{d:?}"),
            RateDecision::Allowed => panic!("a hit over the limit must be limited"),
        }
    }
    // Another key has its own count.
    assert_eq!(b.hit(&key(), 3, w).await.unwrap(), RateDecision::Allowed);
}

pub async fn the_window_ends(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let (k, w) = (key(), Duration::from_millis(300));
    assert_eq!(a.hit(&k, 1, w).await.unwrap(), RateDecision::Allowed);
    match b.hit(&k, 1, w).await.unwrap() {
        RateDecision::Limited(d) => assert!(d <= w, "{d:?}"),
        RateDecision::Allowed => panic!("second hit must be limited"),
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(b.over_limit(&k, 1).await.unwrap(), None);
    assert_eq!(a.hit(&k, 1, w).await.unwrap(), RateDecision::Allowed);
}

pub async fn over_limit_looks_without_counting(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let (k, w) = (key(), Duration::from_secs(60));
    assert_eq!(b.over_limit(&k, 2).await.unwrap(), None, "no counter yet");
    a.hit(&k, 2, w).await.unwrap();
    assert_eq!(b.over_limit(&k, 2).await.unwrap(), None, "one hit of two");
    // Looking did not count: the second hit is still allowed.
    assert_eq!(a.hit(&k, 2, w).await.unwrap(), RateDecision::Allowed);
    let left = b.over_limit(&k, 2).await.unwrap().expect("at the limit");
    assert!(left <= w && left > Duration::from_secs(50), "{left:?}");
    assert!(b.over_limit(&k, 3).await.unwrap().is_none());
}

pub async fn reset_clears_a_counter(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let (k, w) = (key(), Duration::from_secs(60));
    for _ in 0..3 {
        a.hit(&k, 2, w).await.unwrap();
    }
    assert!(a.over_limit(&k, 2).await.unwrap().is_some());
    b.reset(&k).await.unwrap();
    assert_eq!(a.over_limit(&k, 2).await.unwrap(), None);
    assert_eq!(a.hit(&k, 2, w).await.unwrap(), RateDecision::Allowed);
    // Resetting what does not exist is fine.
    b.reset(&key()).await.unwrap();
}

pub async fn presence_counts_connections_across_handles(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let (u, v) = (UserId::new(), UserId::new());
    assert_eq!(a.connection_opened(u).await.unwrap(), 1);
    assert_eq!(b.connection_opened(u).await.unwrap(), 2);
    assert_eq!(a.online(&[u, v]).await.unwrap(), vec![true, false]);
    assert_eq!(
        b.online(&[v, u, v]).await.unwrap(),
        vec![false, true, false]
    );
    assert_eq!(b.online(&[]).await.unwrap(), Vec::<bool>::new());
    assert_eq!(a.connection_closed(u).await.unwrap(), 1);
    assert_eq!(b.online(&[u]).await.unwrap(), vec![true]);
    assert_eq!(b.connection_closed(u).await.unwrap(), 0);
    assert_eq!(a.online(&[u]).await.unwrap(), vec![false]);
    // A close too many stays at zero and does not poison the next open.
    assert_eq!(a.connection_closed(u).await.unwrap(), 0);
    assert_eq!(a.connection_closed(v).await.unwrap(), 0);
    assert_eq!(a.online(&[u, v]).await.unwrap(), vec![false, false]);
    assert_eq!(b.connection_opened(u).await.unwrap(), 1);
    assert_eq!(a.online(&[u]).await.unwrap(), vec![true]);
}

pub async fn revocations_are_shared_and_expire(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let (s, other) = (SessionId::new(), SessionId::new());
    a.revoke_session(s, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(b.is_session_revoked(s).await.unwrap());
    assert!(!b.is_session_revoked(other).await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(!a.is_session_revoked(s).await.unwrap());
    assert!(!b.is_session_revoked(s).await.unwrap());
}

pub async fn ping_answers(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    a.ping().await.unwrap();
    b.ping().await.unwrap();
}

/// One `#[tokio::test]` per check above; `$pair` is an async block giving
/// two `Arc<dyn Ephemeral>` on the same store.
#[macro_export]
macro_rules! ephemeral_conformance {
    ($pair:expr) => {
        $crate::ephemeral_conformance!(@tests $pair;
            rate_limit_allows_up_to_the_limit_then_says_when,
            the_window_ends,
            over_limit_looks_without_counting,
            reset_clears_a_counter,
            presence_counts_connections_across_handles,
            revocations_are_shared_and_expire,
            ping_answers,
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
