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
//! in-process receiver, a NATS reconnect, a lost publish). Sequenced events
//! carry their `seq`, so a gap is visible and the gateway backfills it from
//! the store. A loss at the *end* of a room (the last events before a quiet
//! spell) shows no gap until the next event, so the gateway does not rely on
//! the bus for it: it re-checks every room it follows after a reconnect
//! ([`Bus::reconnects`]), and its tail check asks room where each room's log
//! ends every `--tail-check-ms` (one batched `LastSeqs` call) and backfills
//! what the bus lost, whatever the cause.
//!
//! Events go out through one [`Publisher`], which builds and encodes the
//! `BusEvent` and logs and counts what could not be sent.
//!
//! Every payload is authenticated: [`connect`] returns a [`SignedBus`], which
//! seals what it publishes with the cluster's [`BusKey`] and drops (and
//! counts) whatever it receives that was not sealed with it.

pub mod memory;
pub mod nats;
pub mod publisher;
pub mod signed;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::sync::Arc;

pub use memory::MemoryBus;
pub use nats::NatsBus;
pub use publisher::Publisher;
pub use signed::{BusKey, SignedBus};

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
    /// Sends `payload` to the current subscribers of `subject`, at most once.
    /// An error means it was certainly not sent (NATS: the connection is
    /// down); `Ok` does not mean anybody got it.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()>;
    /// Subscribes to `subject`. When this returns, the subscription is live:
    /// whatever is published after it is delivered (barring a lag or a
    /// reconnect), so subscribing *then* backfilling from the store misses
    /// nothing.
    async fn subscribe(&self, subject: &str) -> Result<Subscription>;
    /// Reachability for `/readyz`. NATS: a round trip to the server, so when
    /// it returns, whatever this handle published before has reached it.
    async fn ping(&self) -> Result<()>;
    /// A counter bumped each time the bus connection is re-established after
    /// it was lost. Payloads published around the outage may be lost for good
    /// (subscriptions themselves are restored), and the last events of a room
    /// leave no visible gap until the room's next event: on every change the
    /// gateway must re-check each room it follows against the store. Starts
    /// at 0; the in-process bus never changes it (and never closes it).
    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Payloads received and dropped because they failed authentication
    /// (see [`SignedBus`]); 0 for a bus that does not check.
    fn rejected(&self) -> u64 {
        0
    }
}

/// Opens the bus named by `url`: `memory` for the in-process bus,
/// `nats://host:port` (or `tls://…`, or several comma-separated) for NATS;
/// payloads on it are authenticated with `key` (see [`SignedBus`]).
pub async fn connect(url: &str, key: BusKey) -> Result<Arc<dyn Bus>> {
    let bus: Arc<dyn Bus> = match url {
        "memory" | "memory://" => Arc::new(MemoryBus::default()),
        u if u.starts_with("nats://") || u.starts_with("tls://") => {
            Arc::new(NatsBus::connect(u).await?)
        }
        _ => {
            return Err(BusError::Config(format!(
                "unsupported bus URL {url:?} (expected memory or nats://host:port)"
            )))
        }
    };
    Ok(Arc::new(SignedBus::new(bus, key)))
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

/// The `/readyz` probe of a bus: its `ping`.
pub fn ready_check(s: Arc<dyn Bus>) -> chat_core::health::ReadyCheck {
    chat_core::health::ReadyCheck::new("bus", move || {
        let s = s.clone();
        async move { s.ping().await }
    })
}
