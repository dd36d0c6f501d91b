//! The in-process bus of the all-in-one server: one `broadcast` channel per
//! subject. A receiver that lags loses the oldest payloads; the gateway's
//! seq check notices and backfills.

use crate::{Bus, Result, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

/// Payloads buffered per room subject before a slow receiver starts losing
/// them (a busy room's burst during one long hand-off).
const CAPACITY: usize = 4096;

/// The same for a user's subject (revocations, membership changes: rare).
/// A broadcast channel allocates its whole buffer up front, and there is
/// one per connected user.
const USER_CAPACITY: usize = 64;

#[derive(Default)]
pub struct MemoryBus {
    subjects: DashMap<String, broadcast::Sender<Bytes>>,
    /// Never bumped: the in-process bus has no connection to lose. Kept (not
    /// dropped) so receivers wait forever instead of seeing it closed.
    reconnects: watch::Sender<u64>,
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        let unheard = match self.subjects.get(subject) {
            Some(tx) => tx.send(payload).is_err(),
            None => false,
        };
        if unheard {
            // Nobody listens any more: forget the subject (unless someone
            // subscribed in between).
            self.subjects
                .remove_if(subject, |_, tx| tx.receiver_count() == 0);
        }
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        let rx = self
            .subjects
            .entry(subject.to_owned())
            .or_insert_with(|| {
                let capacity = if subject.contains(".user.") {
                    USER_CAPACITY
                } else {
                    CAPACITY
                };
                broadcast::channel(capacity).0
            })
            .subscribe();
        let subject = subject.to_owned();
        Ok(BroadcastStream::new(rx)
            .filter_map(move |r| {
                let out = match r {
                    Ok(b) => Some(b),
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        tracing::warn!(subject = %subject, missed = n, "bus receiver lagged");
                        None
                    }
                };
                std::future::ready(out)
            })
            .boxed())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn subscribers_get_what_is_published_after_they_subscribe() {
        let bus = MemoryBus::default();
        bus.publish("a", Bytes::from_static(b"early"))
            .await
            .unwrap();
        let mut s1 = bus.subscribe("a").await.unwrap();
        let mut s2 = bus.subscribe("a").await.unwrap();
        let mut other = bus.subscribe("b").await.unwrap();
        bus.publish("a", Bytes::from_static(b"x")).await.unwrap();
        let t = Duration::from_secs(1);
        assert_eq!(
            tokio::time::timeout(t, s1.next()).await.unwrap().unwrap(),
            "x"
        );
        assert_eq!(
            tokio::time::timeout(t, s2.next()).await.unwrap().unwrap(),
            "x"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_subject_without_subscribers_is_forgotten() {
        let bus = MemoryBus::default();
        let s = bus.subscribe("a").await.unwrap();
        drop(s);
        bus.publish("a", Bytes::from_static(b"x")).await.unwrap();
        assert!(bus.subjects.is_empty());
    }
}
