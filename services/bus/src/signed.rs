//! Authenticated bus payloads: whoever can publish on NATS is not thereby
//! able to put events in front of users.
//!
//! [`SignedBus`] wraps any [`Bus`]. Every payload it publishes goes out as a
//! `chat.v1.SignedBusEvent` envelope whose `mac` is HMAC-SHA256 over the
//! subject and the payload, keyed with the cluster's [`BusKey`]; every
//! payload it receives is checked against it and, when the check fails
//! (no envelope, a wrong key, or an event replayed from another subject),
//! dropped, counted ([`Bus::rejected`]) and logged (rate limited). Subscribers
//! therefore only ever see the inner payloads of genuine events.
//!
//! The key is derived from the internal secret every service already shares
//! ([`BusKey::derive`]), so there is nothing new to configure; the
//! in-process bus of the all-in-one server uses a random one per process.
//! Cost: one HMAC per publish and one per payload received per
//! subscription (a room's payload once per gateway, not per connection).

use crate::{Bus, Result, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use chat_proto::v1 as pb;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// The label the bus key is derived under: another use of the internal
/// secret never yields the same key.
const LABEL: &[u8] = b"chat.v1 bus event authentication key";

/// At most one warning about rejected payloads per this interval (each says
/// how many there were in all), so a flood of forgeries cannot flood logs.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The secret key bus payloads are authenticated with, shared by every
/// process of one cluster.
#[derive(Clone)]
pub struct BusKey {
    /// Keyed once; cloned per payload (cheaper than keying again).
    mac: HmacSha256,
}

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

impl BusKey {
    /// The cluster's key: HMAC-SHA256(internal secret, a fixed label).
    pub fn derive(internal_secret: &str) -> Self {
        let mut k = keyed(internal_secret.as_bytes());
        k.update(LABEL);
        Self::from_bytes(&k.finalize().into_bytes())
    }

    /// A key of this process alone (the in-process bus of the all-in-one
    /// server, where nobody else can publish anyway).
    pub fn random() -> Self {
        Self::from_bytes(&rand::random::<[u8; 32]>())
    }

    fn from_bytes(key: &[u8]) -> Self {
        Self { mac: keyed(key) }
    }

    fn tag(&self, subject: &str, payload: &[u8]) -> HmacSha256 {
        let mut m = self.mac.clone();
        // The subject's length first: no (subject, payload) pair can be
        // re-split into another.
        m.update(&(subject.len() as u64).to_be_bytes());
        m.update(subject.as_bytes());
        m.update(payload);
        m
    }

    /// `payload` in its envelope, for `subject`.
    pub fn seal(&self, subject: &str, payload: &[u8]) -> Bytes {
        let mac = self.tag(subject, payload).finalize().into_bytes().to_vec();
        pb::SignedBusEvent {
            event: payload.to_vec(),
            mac,
        }
        .encode_to_vec()
        .into()
    }

    /// The payload inside `envelope` when it was sealed with this key for
    /// `subject`.
    pub fn open(&self, subject: &str, envelope: &[u8]) -> Option<Bytes> {
        let env = pb::SignedBusEvent::decode(envelope).ok()?;
        self.tag(subject, &env.event)
            .verify_slice(&env.mac)
            .ok()
            .map(|()| env.event.into())
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// A [`Bus`] that seals what it publishes and opens what it receives.
pub struct SignedBus {
    inner: Arc<dyn Bus>,
    key: BusKey,
    rejections: Arc<Rejections>,
}

impl SignedBus {
    pub fn new(inner: Arc<dyn Bus>, key: BusKey) -> Self {
        Self {
            inner,
            key,
            rejections: Arc::new(Rejections::new()),
        }
    }
}

#[async_trait]
impl Bus for SignedBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        self.inner
            .publish(subject, self.key.seal(subject, &payload))
            .await
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        let sub = self.inner.subscribe(subject).await?;
        let (key, rejections, subject) = (
            self.key.clone(),
            self.rejections.clone(),
            subject.to_owned(),
        );
        Ok(sub
            .filter_map(move |payload| {
                let opened = key.open(&subject, &payload);
                if opened.is_none() {
                    rejections.record(&subject);
                }
                std::future::ready(opened)
            })
            .boxed())
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.reconnects()
    }

    fn rejected(&self) -> u64 {
        self.rejections.count.load(Ordering::Relaxed)
    }
}

/// Payloads that failed authentication, and when that was last logged.
struct Rejections {
    count: AtomicU64,
    start: Instant,
    /// Milliseconds after `start` of the last warning, plus one (0: never).
    logged_at: AtomicU64,
}

impl Rejections {
    fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            start: Instant::now(),
            logged_at: AtomicU64::new(0),
        }
    }

    fn record(&self, subject: &str) {
        let total = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %subject,
                rejected_total = total,
                "dropped a bus payload that failed authentication (not published by \
                 this cluster's services, or they disagree on CHAT_INTERNAL_SECRET)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBus;

    async fn next(s: &mut Subscription) -> Option<Bytes> {
        tokio::time::timeout(Duration::from_millis(200), s.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn only_payloads_sealed_with_the_key_for_the_subject_come_through() {
        let raw: Arc<dyn Bus> = Arc::new(MemoryBus::default());
        let key = BusKey::derive("the cluster's internal secret");
        let ours = SignedBus::new(raw.clone(), key.clone());
        let theirs = SignedBus::new(raw.clone(), BusKey::derive("another cluster's secret"));
        let mut sub = ours.subscribe("t.room.r1").await.unwrap();

        // Unsealed, sealed with another key, sealed for another subject,
        // a sealed one with its payload changed, and garbage.
        raw.publish("t.room.r1", Bytes::from_static(b"forged"))
            .await
            .unwrap();
        theirs
            .publish("t.room.r1", Bytes::from_static(b"x"))
            .await
            .unwrap();
        raw.publish("t.room.r1", key.seal("t.room.r2", b"replayed"))
            .await
            .unwrap();
        let mut env = pb::SignedBusEvent::decode(key.seal("t.room.r1", b"good")).unwrap();
        env.event = b"evil".to_vec();
        raw.publish("t.room.r1", env.encode_to_vec().into())
            .await
            .unwrap();
        raw.publish("t.room.r1", Bytes::from_static(&[0xff; 40]))
            .await
            .unwrap();
        ours.publish("t.room.r1", Bytes::from_static(b"genuine"))
            .await
            .unwrap();

        assert_eq!(next(&mut sub).await.as_deref(), Some(&b"genuine"[..]));
        assert_eq!(next(&mut sub).await, None);
        assert_eq!(ours.rejected(), 5);
    }

    #[test]
    fn the_key_depends_on_the_secret_and_a_random_key_on_nothing() {
        let a = BusKey::derive("secret one");
        let sealed = a.seal("s", b"p");
        assert!(BusKey::derive("secret one").open("s", &sealed).is_some());
        assert!(BusKey::derive("secret two").open("s", &sealed).is_none());
        assert!(BusKey::random().open("s", &sealed).is_none());
        assert_eq!(format!("{a:?}"), "BusKey(..)");
    }
}
