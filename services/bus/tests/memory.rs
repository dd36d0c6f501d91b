//! The shared bus behaviour, on the in-process bus.

mod conformance;

use chat_bus::{Bus, MemoryBus};
use std::sync::Arc;

async fn pair() -> (Arc<dyn Bus>, Arc<dyn Bus>) {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
    (bus.clone(), bus)
}

bus_conformance!(pair());

#[tokio::test]
async fn connect_picks_the_memory_bus_and_rejects_unknown_schemes() {
    chat_bus::connect("memory", chat_bus::BusKey::random())
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    assert!(matches!(
        chat_bus::connect("kafka://x", chat_bus::BusKey::random()).await,
        Err(chat_bus::BusError::Config(_))
    ));
}
