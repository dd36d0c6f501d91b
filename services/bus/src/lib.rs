//! The Bus seam: how room sends what it committed to every gateway.
//!
//! Subjects (all under a configurable prefix, `chat` by default, so tests and
//! tenants never see each other's traffic):
//! - `<prefix>.room.<room_id>`: the room's events (sequenced) and live notices
//!   (typing, presence, membership), as encoded `chat.v1.BusEvent`s;
//! - `<prefix>.user.<user_id>`: notices for one user's connections (session
//!   revoked, room joined).
//!
//! Delivery is at most once: a subscriber may miss a payload (a lagging
//! in-process receiver, a NATS reconnect). Sequenced events carry their `seq`,
//! so a gap is visible and the gateway backfills it from the store.

pub mod memory;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::sync::Arc;

pub use memory::MemoryBus;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus configuration: {0}")]
    Config(String),
    #[error("bus unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// A live subscription; dropping it unsubscribes.
pub type Subscription = BoxStream<'static, Bytes>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()>;
    async fn subscribe(&self, subject: &str) -> Result<Subscription>;
    /// Reachability for `/readyz`.
    async fn ping(&self) -> Result<()>;
}

/// Opens the bus named by `url`: `memory` for the in-process bus.
pub async fn connect(url: &str) -> Result<Arc<dyn Bus>> {
    match url {
        "memory" | "memory://" => Ok(Arc::new(MemoryBus::default())),
        _ => Err(BusError::Config(format!(
            "unsupported bus URL {url:?} (expected memory)"
        ))),
    }
}

/// Builds subject names under one prefix.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn room(&self, room_id: impl std::fmt::Display) -> String {
        format!("{}.room.{room_id}", self.prefix)
    }

    pub fn user(&self, user_id: impl std::fmt::Display) -> String {
        format!("{}.user.{user_id}", self.prefix)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("chat")
    }
}
