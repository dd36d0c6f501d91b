//! Conformance cases for session lifetimes: a refresh past the session's
//! absolute age or its idle time ends the session, inside the rotation.

use std::sync::Arc;

use chat_store::{RotateOutcome, SessionLimits, Store};

use super::{hash, live_sessions, session, user, T0};

/// Rotates `old` to `new` at `at` under `limits`.
async fn rotate(
    s: &dyn Store,
    old: &[u8],
    new: &[u8],
    at: i64,
    grace_ms: i64,
    limits: SessionLimits,
) -> RotateOutcome {
    s.rotate_refresh_token(old, new, b"sealed", at, grace_ms, limits)
        .await
        .expect("rotate")
}

pub async fn a_session_past_its_max_age_refuses_rotation_and_ends(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let (h1, h2) = (hash("1"), hash("2"));
    let sid = session(s, alice.id, T0, &h1).await;
    let other = session(s, alice.id, T0, &hash("other")).await;
    let limits = SessionLimits {
        max_age_ms: 10_000,
        idle_ms: 0,
    };

    // Used continuously, the session still ends at its max age.
    assert!(matches!(
        rotate(s, &h1, &h2, T0 + 9_999, 0, limits).await,
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        rotate(s, &h2, &hash("3"), T0 + 10_000, 0, limits).await,
        RotateOutcome::Expired(sid)
    );
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 10_000)
    );
    assert_eq!(live_sessions(s, alice.id).await, vec![other]);
    assert_eq!(
        rotate(s, &h2, &hash("4"), T0 + 10_001, 0, limits).await,
        RotateOutcome::Revoked
    );
    assert!(s
        .sessions_revoked_since(T0 + 10_000)
        .await
        .unwrap()
        .contains(&sid));

    // Without limits, age does not matter.
    let bob = user(s, "bob").await;
    let b1 = hash("b1");
    session(s, bob.id, T0, &b1).await;
    let years = 10 * 365 * 24 * 3_600 * 1_000;
    assert!(matches!(
        rotate(s, &b1, &hash("b2"), T0 + years, 0, SessionLimits::NONE).await,
        RotateOutcome::Rotated(_)
    ));
}

pub async fn an_idle_refresh_token_is_refused_and_ends_its_session(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let (h1, h2, h3) = (hash("1"), hash("2"), hash("3"));
    let sid = session(s, alice.id, T0, &h1).await;
    let grace = 100;
    let limits = SessionLimits {
        max_age_ms: 0,
        idle_ms: 1_000,
    };

    // Each rotation slides the idle window.
    assert!(matches!(
        rotate(s, &h1, &h2, T0 + 999, grace, limits).await,
        RotateOutcome::Rotated(_)
    ));
    // A concurrent refresh within the grace still gets the successor.
    assert!(matches!(
        rotate(s, &h1, &hash("lost"), T0 + 1_050, grace, limits).await,
        RotateOutcome::Replayed { .. }
    ));
    assert!(matches!(
        rotate(s, &h2, &h3, T0 + 1_998, grace, limits).await,
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        rotate(s, &h3, &hash("4"), T0 + 2_998, grace, limits).await,
        RotateOutcome::Expired(sid)
    );
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 2_998)
    );
    assert!(live_sessions(s, alice.id).await.is_empty());
}

pub async fn ended_sessions_are_the_revoked_deleted_expired_and_unknown(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let live = session(s, alice.id, T0, &hash("live")).await;
    let revoked = session(s, alice.id, T0, &hash("revoked")).await;
    let old = session(s, alice.id, T0 - 10_000, &hash("old")).await;
    let deleted = session(s, bob.id, T0, &hash("deleted")).await;
    let unknown = chat_core::SessionId::new();
    assert!(s.revoke_session(alice.id, revoked, T0 + 1).await.unwrap());
    s.delete_user(bob.id, T0 + 2).await.unwrap();
    let ids = [live, revoked, old, deleted, unknown];
    let ended = s
        .ended_sessions(&ids, SessionLimits::NONE, T0 + 3)
        .await
        .unwrap();
    assert_eq!(ended, vec![revoked, deleted, unknown]);
    let limits = SessionLimits {
        max_age_ms: 5_000,
        idle_ms: 0,
    };
    let ended = s.ended_sessions(&ids, limits, T0 + 3).await.unwrap();
    assert_eq!(ended, vec![revoked, old, deleted, unknown]);
    // More ids than one statement binds.
    let many: Vec<_> = (0..1_200).map(|_| chat_core::SessionId::new()).collect();
    let mut with_live = many.clone();
    with_live.push(live);
    let ended = s
        .ended_sessions(&with_live, SessionLimits::NONE, T0 + 3)
        .await
        .unwrap();
    assert_eq!(ended, many);
    assert!(s
        .ended_sessions(&[], SessionLimits::NONE, T0)
        .await
        .unwrap()
        .is_empty());
}
