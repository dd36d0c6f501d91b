//! The shared ephemeral behaviour, on the in-process store.

mod conformance;

use chat_ephemeral::{Ephemeral, EphemeralError, MemoryEphemeral};
use std::sync::Arc;

async fn pair() -> (Arc<dyn Ephemeral>, Arc<dyn Ephemeral>) {
    let e: Arc<dyn Ephemeral> = Arc::new(MemoryEphemeral::default());
    (e.clone(), e)
}

ephemeral_conformance!(pair());

#[tokio::test]
async fn connect_picks_memory_and_rejects_unknown_schemes() {
    chat_ephemeral::connect("memory", "ignored")
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    assert!(matches!(
        chat_ephemeral::connect("memcached://x", "p").await,
        Err(EphemeralError::Config(_))
    ));
}
