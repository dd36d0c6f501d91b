//! What room publishes after a commit reaches the bus whatever becomes of
//! the call that committed it: a call dropped (deadline, disconnect) after
//! its commit still publishes, and a retry of a stored message publishes it
//! again, in case its first publish was lost.
//!
//! The service runs on a real SQLite store and the in-process bus, behind
//! a bus that injects the faults: it holds or loses publishes on room
//! subjects on demand and passes everything else through.

mod common;
#[path = "common/faulty_bus.rs"]
mod faulty_bus;

use chat_bus::{Bus, Subjects, Subscription};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use faulty_bus::World;
use futures_util::StreamExt;
use prost::Message as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl World {
    async fn room_events(&self) -> Subscription {
        self.bus
            .subscribe(&Subjects::default().room(&self.room))
            .await
            .unwrap()
    }
}

/// The next room event on `sub`, or a failure after a generous wait.
async fn next_event(sub: &mut Subscription) -> pb::RoomEvent {
    let payload = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event was published")
        .expect("subscription open");
    match pb::BusEvent::decode(payload).unwrap().kind {
        Some(pb::bus_event::Kind::RoomEvent(e)) => e,
        other => panic!("expected a room event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_is_published_even_when_its_call_is_dropped_after_the_commit() {
    let mut w = World::new().await;
    let mut sub = w.room_events().await;
    w.bus.hold();
    {
        // The call is dropped (as a deadline or a client going away drops
        // it) while its publish is under way, after the commit.
        let call = w.svc.post_message(w.post("m1"));
        tokio::select! {
            _ = call => panic!("the publish was held, the call cannot end"),
            _ = w.entered.recv() => {}
        }
    }
    w.bus.release(1);
    let event = next_event(&mut sub).await;
    assert_eq!(event.seq, 1);
}

#[tokio::test]
async fn a_retried_message_whose_publish_was_lost_is_published_again() {
    let w = World::new().await;
    let mut sub = w.room_events().await;
    w.bus.lose.store(1, Ordering::SeqCst);
    let first = w.svc.post_message(w.post("m1")).await.unwrap().into_inner();
    assert!(first.created);
    assert!(
        futures_util::FutureExt::now_or_never(sub.next()).is_none(),
        "the first publish was lost"
    );

    // The client retries (it saw no ack, or no event): the same message,
    // deduplicated, and on the bus this time.
    let retry = w.svc.post_message(w.post("m1")).await.unwrap().into_inner();
    assert!(!retry.created);
    let event = next_event(&mut sub).await;
    assert_eq!(event.seq, 1);
    match event.kind {
        Some(pb::room_event::Kind::Message(m)) => assert_eq!(m.client_msg_id, "m1"),
        other => panic!("expected the message, got {other:?}"),
    }
}
