//! Conformance cases for token signing keys: one active key at most, a
//! rotation keeps the old key verifying until it is retired.

use std::sync::Arc;

use chat_store::{KeyState, Store, StoreError, StoredSigningKey};

use super::T0;

fn key(kid: &str, at: i64) -> StoredSigningKey {
    StoredSigningKey {
        kid: kid.to_owned(),
        public_key: vec![7; 32],
        private_sealed: format!("sealed {kid}").into_bytes(),
        created_at: at,
        state: KeyState::Active,
        retiring_at: None,
    }
}

pub async fn signing_keys_have_one_active_key_and_rotate(s: Arc<dyn Store>) {
    // The suite may share the store: only this case touches the keys.
    assert!(s.signing_keys().await.unwrap().is_empty());
    let first = key("k1", T0);
    s.add_signing_key(&first).await.unwrap();
    // A second replica creating its own first key loses the race.
    assert!(matches!(
        s.add_signing_key(&key("k1b", T0 + 1)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.signing_keys().await.unwrap(), vec![first.clone()]);

    s.rotate_signing_key(&key("k2", T0 + 10), T0 + 10)
        .await
        .unwrap();
    let keys = s.signing_keys().await.unwrap();
    let states: Vec<(&str, KeyState, Option<i64>)> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.state, k.retiring_at))
        .collect();
    assert_eq!(
        states,
        vec![
            ("k1", KeyState::Retiring, Some(T0 + 10)),
            ("k2", KeyState::Active, None)
        ]
    );
    assert_eq!(keys[0].private_sealed, first.private_sealed);
    // A known kid is refused.
    assert!(matches!(
        s.rotate_signing_key(&key("k2", T0 + 20), T0 + 20).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.signing_keys().await.unwrap().len(), 2);

    // Not yet past its retirement time: still listed.
    assert_eq!(s.retire_signing_keys(T0 + 10).await.unwrap(), 0);
    assert_eq!(s.retire_signing_keys(T0 + 11).await.unwrap(), 1);
    let kids: Vec<String> = s
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, vec!["k2".to_owned()]);
}
