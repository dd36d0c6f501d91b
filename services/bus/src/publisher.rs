//! The one way to put a bus event on a subject: encoded once, failures
//! logged and counted.

use crate::{Bus, Result, Subjects};
use chat_proto::v1 as pb;
use prost::Message as _;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Publishes typed bus events on a room's or a user's subject.
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
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    pub async fn to_room(&self, room: impl Display, kind: pb::bus_event::Kind) -> Result<()> {
        self.publish(self.subjects.room(room), kind).await
    }

    pub async fn to_user(&self, user: impl Display, kind: pb::bus_event::Kind) -> Result<()> {
        self.publish(self.subjects.user(user), kind).await
    }

    /// Publishes that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    async fn publish(&self, subject: String, kind: pb::bus_event::Kind) -> Result<()> {
        // The single place where trace context will be attached.
        let ev = pb::BusEvent {
            kind: Some(kind),
            trace: Default::default(),
        };
        let r = self.bus.publish(&subject, ev.encode_to_vec().into()).await;
        if let Err(error) = &r {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, subject, "cannot publish a bus event");
        }
        r
    }
}
