//! One typed way to put a `chat.v1.BusEvent` on the bus: room and auth
//! (and the gateway's live notices) name a room or a user and the event's
//! kind; the publisher builds, encodes and sends it, and on failure logs
//! it, counts it and hands the error back.

use crate::{Bus, Result, Subjects};
use chat_proto::v1 as pb;
use prost::Message as _;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Publishes bus events on room and user subjects. Cheap to clone; the
/// clones share one failure count.
#[derive(Clone)]
pub struct Publisher {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    failures: Arc<AtomicU64>,
}

impl Publisher {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        Self {
            bus,
            subjects,
            failures: Arc::default(),
        }
    }

    /// To the gateways following `room` (sequenced events, live notices).
    pub async fn to_room(&self, room: impl Display, kind: pb::bus_event::Kind) -> Result<()> {
        self.publish(self.subjects.room(room), kind).await
    }

    /// To `user`'s own connections, wherever they are.
    pub async fn to_user(&self, user: impl Display, kind: pb::bus_event::Kind) -> Result<()> {
        self.publish(self.subjects.user(user), kind).await
    }

    /// Publishes that failed so far (they were logged as they failed).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    async fn publish(&self, subject: String, kind: pb::bus_event::Kind) -> Result<()> {
        // The single place a bus event is built: the publisher's trace
        // context will be attached here.
        let event = pb::BusEvent {
            kind: Some(kind),
            trace: Default::default(),
        };
        let sent = self
            .bus
            .publish(&subject, event.encode_to_vec().into())
            .await;
        if let Err(error) = &sent {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, %subject, "cannot publish bus event");
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BusError, MemoryBus, Subscription};
    use async_trait::async_trait;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::time::Duration;

    fn typing(room: &str) -> pb::bus_event::Kind {
        pb::bus_event::Kind::Typing(pb::Typing {
            room_id: room.into(),
            ..Default::default()
        })
    }

    async fn next(s: &mut Subscription) -> pb::BusEvent {
        let payload = tokio::time::timeout(Duration::from_secs(1), s.next())
            .await
            .unwrap()
            .unwrap();
        pb::BusEvent::decode(payload).unwrap()
    }

    #[tokio::test]
    async fn a_published_event_decodes_back_on_its_subject() {
        let bus = Arc::new(MemoryBus::default());
        let subjects = Subjects::new("t");
        let publisher = Publisher::new(bus.clone(), subjects.clone());
        let mut room = bus.subscribe(&subjects.room("r1")).await.unwrap();
        let mut user = bus.subscribe(&subjects.user("u1")).await.unwrap();

        publisher.to_room("r1", typing("r1")).await.unwrap();
        publisher.to_user("u1", typing("r2")).await.unwrap();

        assert_eq!(next(&mut room).await.kind, Some(typing("r1")));
        assert_eq!(next(&mut user).await.kind, Some(typing("r2")));
        assert_eq!(publisher.failures(), 0);
    }

    /// A bus whose connection is down.
    struct DownBus;

    #[async_trait]
    impl Bus for DownBus {
        async fn publish(&self, _: &str, _: Bytes) -> Result<()> {
            Err(BusError::Unavailable("down".into()))
        }
        async fn subscribe(&self, _: &str) -> Result<Subscription> {
            Err(BusError::Unavailable("down".into()))
        }
        async fn ping(&self) -> Result<()> {
            Err(BusError::Unavailable("down".into()))
        }
        fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
            tokio::sync::watch::channel(0).1
        }
    }

    #[tokio::test]
    async fn failed_publishes_are_returned_and_counted() {
        let publisher = Publisher::new(Arc::new(DownBus), Subjects::default());
        assert!(publisher.to_room("r1", typing("r1")).await.is_err());
        assert!(publisher.to_user("u1", typing("r1")).await.is_err());
        assert_eq!(publisher.failures(), 2);
        assert_eq!(publisher.clone().failures(), 2);
    }
}
