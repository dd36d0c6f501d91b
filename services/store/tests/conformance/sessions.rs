//! Conformance cases for session lifetimes: a refresh past the session's
//! absolute age or its idle time ends the session, inside the rotation.

use std::sync::Arc;

use chat_store::{RotateOutcome, SessionLimits, Store};

use super::{hash, session, user, T0};

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
        s.rotate_refresh_token(&h1, &h2, b"sealed", T0 + 9_999, 0, limits)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh_token(&h2, &hash("3"), b"sealed", T0 + 10_000, 0, limits)
            .await
            .unwrap(),
        RotateOutcome::Expired(sid)
    );
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 10_000)
    );
    let live: Vec<_> = s
        .list_sessions(alice.id)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(live, vec![other]);
    assert_eq!(
        s.rotate_refresh_token(&h2, &hash("4"), b"sealed", T0 + 10_001, 0, limits)
            .await
            .unwrap(),
        RotateOutcome::Revoked
    );
    assert!(s
        .sessions_revoked_since(T0 + 10_000)
        .await
        .unwrap()
        .contains(&sid));

    // Without limits, age does not matter.
    assert!(matches!(
        s.rotate_refresh_token(
            &hash("other-unknown"),
            &hash("x"),
            b"x",
            T0 + 10_000,
            0,
            limits
        )
        .await
        .unwrap(),
        RotateOutcome::Unknown
    ));
    let bob = user(s, "bob").await;
    let b1 = hash("b1");
    session(s, bob.id, T0, &b1).await;
    let years = 10 * 365 * 24 * 3_600 * 1_000;
    assert!(matches!(
        s.rotate_refresh_token(
            &b1,
            &hash("b2"),
            b"sealed",
            T0 + years,
            0,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
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
        s.rotate_refresh_token(&h1, &h2, b"sealed 2", T0 + 999, grace, limits)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    // A concurrent refresh within the grace still gets the successor.
    assert!(matches!(
        s.rotate_refresh_token(&h1, &hash("lost"), b"lost", T0 + 1_050, grace, limits)
            .await
            .unwrap(),
        RotateOutcome::Replayed { .. }
    ));
    assert!(matches!(
        s.rotate_refresh_token(&h2, &h3, b"sealed 3", T0 + 1_998, grace, limits)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh_token(&h3, &hash("4"), b"sealed 4", T0 + 2_998, grace, limits)
            .await
            .unwrap(),
        RotateOutcome::Expired(sid)
    );
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 2_998)
    );
    assert!(s.list_sessions(alice.id).await.unwrap().is_empty());
}
