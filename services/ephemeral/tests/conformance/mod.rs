//! The behaviour every `Ephemeral` must have, run against each implementation
//! (see `memory.rs` and `redis.rs`). Each check takes two handles on one
//! store: the same in-process store twice, or two Redis connections (two
//! gateways). Keys are random per test, so tests can share a store.

use bytes::Bytes;
use chat_core::{RoomId, Seq, SessionId, UserId};
use chat_ephemeral::{Ephemeral, RateDecision};
use std::time::Duration;

fn key() -> String {
    format!("k{}", uuid::Uuid::new_v4().simple())
}

/// `(seq, payload)` entries from string payloads.
fn entries(items: &[(Seq, &str)]) -> Vec<(Seq, Bytes)> {
    items
        .iter()
        .map(|(s, p)| (*s, Bytes::copy_from_slice(p.as_bytes())))
        .collect()
}

/// Everything cached for `room` (after seq 0, up to 1000).
async fn all_cached(e: &dyn Ephemeral, room: RoomId) -> Vec<(Seq, Bytes)> {
    e.cached_events(room, 0, 1000).await.unwrap()
}

fn seqs(items: &[(Seq, Bytes)]) -> Vec<Seq> {
    items.iter().map(|(s, _)| *s).collect()
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
    let (k, w) = (key(), Duration::from_secs(2));
    assert_eq!(a.hit(&k, 1, w).await.unwrap(), RateDecision::Allowed);
    match b.hit(&k, 1, w).await.unwrap() {
        RateDecision::Limited(d) => assert!(d <= w, "{d:?}"),
        RateDecision::Allowed => panic!("second hit must be limited"),
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
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
    a.revoke_session(s, Duration::from_secs(2)).await.unwrap();
    assert!(b.is_session_revoked(s).await.unwrap());
    assert!(!b.is_session_revoked(other).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!a.is_session_revoked(s).await.unwrap());
    assert!(!b.is_session_revoked(s).await.unwrap());
}

pub async fn cached_events_replace_the_entry_of_their_seq(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let room = RoomId::new();
    a.cache_events(room, &entries(&[(1, "one"), (2, "two")]), 10)
        .await
        .unwrap();
    // An edit rewrites its target's entry; the other handle sees it.
    b.cache_events(room, &entries(&[(1, "one, edited"), (3, "edit of 1")]), 10)
        .await
        .unwrap();
    assert_eq!(
        all_cached(a, room).await,
        entries(&[(1, "one, edited"), (2, "two"), (3, "edit of 1")])
    );
    // Equal payloads under different seqs are different entries.
    a.cache_events(room, &entries(&[(4, "two")]), 10)
        .await
        .unwrap();
    assert_eq!(
        all_cached(b, room).await,
        entries(&[(1, "one, edited"), (2, "two"), (3, "edit of 1"), (4, "two")])
    );
    // A seq given twice in one write keeps the last; an empty payload is fine.
    b.cache_events(room, &entries(&[(2, "first"), (2, "second"), (5, "")]), 10)
        .await
        .unwrap();
    assert_eq!(
        all_cached(a, room).await,
        entries(&[
            (1, "one, edited"),
            (2, "second"),
            (3, "edit of 1"),
            (4, "two"),
            (5, ""),
        ])
    );
}

pub async fn the_cache_keeps_only_the_newest_seqs(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let room = RoomId::new();
    let ten: Vec<(Seq, Bytes)> = (1..=10)
        .map(|s| (s, Bytes::from(format!("m{s}"))))
        .collect();
    a.cache_events(room, &ten, 5).await.unwrap();
    assert_eq!(seqs(&all_cached(b, room).await), vec![6, 7, 8, 9, 10]);
    // An older seq written late is the oldest, so it goes at once.
    b.cache_events(room, &entries(&[(3, "late")]), 5)
        .await
        .unwrap();
    assert_eq!(seqs(&all_cached(a, room).await), vec![6, 7, 8, 9, 10]);
    // A new one pushes the oldest out.
    a.cache_events(room, &entries(&[(11, "m11")]), 5)
        .await
        .unwrap();
    let cached = all_cached(b, room).await;
    assert_eq!(seqs(&cached), vec![7, 8, 9, 10, 11]);
    assert_eq!(cached[0].1, Bytes::from("m7"));
    // A smaller keep trims what is there; an empty write creates nothing.
    b.cache_events(room, &[], 2).await.unwrap();
    assert_eq!(seqs(&all_cached(a, room).await), vec![10, 11]);
    let other = RoomId::new();
    a.cache_events(other, &[], 2).await.unwrap();
    assert!(all_cached(b, other).await.is_empty());
    // keep == 0 empties the room's cache.
    a.cache_events(room, &entries(&[(12, "m12")]), 0)
        .await
        .unwrap();
    assert!(all_cached(b, room).await.is_empty());
}

pub async fn cached_events_come_after_the_seq_in_ascending_order(
    a: &dyn Ephemeral,
    b: &dyn Ephemeral,
) {
    let room = RoomId::new();
    // Written out of order, in several writes.
    a.cache_events(room, &entries(&[(9, "i"), (2, "b")]), 100)
        .await
        .unwrap();
    b.cache_events(room, &entries(&[(5, "e"), (1, "a")]), 100)
        .await
        .unwrap();
    assert_eq!(
        all_cached(a, room).await,
        entries(&[(1, "a"), (2, "b"), (5, "e"), (9, "i")])
    );
    // Strictly after `after`, holes and all.
    assert_eq!(
        b.cached_events(room, 2, 100).await.unwrap(),
        entries(&[(5, "e"), (9, "i")])
    );
    assert_eq!(
        b.cached_events(room, 4, 100).await.unwrap(),
        entries(&[(5, "e"), (9, "i")])
    );
    assert!(a.cached_events(room, 9, 100).await.unwrap().is_empty());
    assert!(a.cached_events(room, 1000, 100).await.unwrap().is_empty());
    // A room never cached has nothing.
    assert!(a
        .cached_events(RoomId::new(), 0, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn cached_events_stop_at_the_limit(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let room = RoomId::new();
    let twenty: Vec<(Seq, Bytes)> = (1..=20)
        .map(|s| (s, Bytes::from(format!("m{s}"))))
        .collect();
    a.cache_events(room, &twenty, 100).await.unwrap();
    assert_eq!(
        seqs(&b.cached_events(room, 0, 3).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        seqs(&b.cached_events(room, 15, 3).await.unwrap()),
        vec![16, 17, 18]
    );
    assert_eq!(
        seqs(&b.cached_events(room, 18, 3).await.unwrap()),
        vec![19, 20]
    );
    assert!(b.cached_events(room, 0, 0).await.unwrap().is_empty());
    assert_eq!(b.cached_events(room, 0, usize::MAX).await.unwrap(), twenty);
}

pub async fn each_rooms_cache_is_its_own(a: &dyn Ephemeral, b: &dyn Ephemeral) {
    let (r1, r2) = (RoomId::new(), RoomId::new());
    a.cache_events(r1, &entries(&[(1, "r1 one"), (2, "r1 two")]), 10)
        .await
        .unwrap();
    b.cache_events(r2, &entries(&[(1, "r2 one")]), 10)
        .await
        .unwrap();
    // Same seq, other room: no replacement.
    assert_eq!(
        all_cached(b, r1).await,
        entries(&[(1, "r1 one"), (2, "r1 two")])
    );
    assert_eq!(all_cached(a, r2).await, entries(&[(1, "r2 one")]));
    // Trimming or emptying one room leaves the other alone.
    a.cache_events(r1, &entries(&[(3, "r1 three")]), 1)
        .await
        .unwrap();
    assert_eq!(all_cached(b, r1).await, entries(&[(3, "r1 three")]));
    b.cache_events(r2, &entries(&[(2, "r2 two")]), 0)
        .await
        .unwrap();
    assert!(all_cached(a, r2).await.is_empty());
    assert_eq!(all_cached(a, r1).await, entries(&[(3, "r1 three")]));
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
            cached_events_replace_the_entry_of_their_seq,
            the_cache_keeps_only_the_newest_seqs,
            cached_events_come_after_the_seq_in_ascending_order,
            cached_events_stop_at_the_limit,
            each_rooms_cache_is_its_own,
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
