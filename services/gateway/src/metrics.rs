//! The gateway's Prometheus metrics (`GET /metrics`, text format).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Rooms with a bus subscription on this gateway.
    pub hubs: Gauge,
    /// Room events and notices handed to connections.
    pub deliveries: Counter,
    /// Frames received from clients.
    pub frames_in: Counter,
    /// Gaps in a room's seq that a hub filled from the log.
    pub backfills: Counter,
    pub tail_backfills: Counter,
    /// Connections closed with 4009 because they fell behind.
    pub slow_closes: Counter,
    /// Seconds a hub's pass over its local connections took (from the
    /// first batch sealed until every slice had all of them).
    pub handoff_seconds: Histogram,
    /// Frames written to each connection of a slice at once.
    pub handoff_frames: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chat");
        let m = Self {
            connections: Gauge::default(),
            hubs: Gauge::default(),
            deliveries: Counter::default(),
            frames_in: Counter::default(),
            backfills: Counter::default(),
            tail_backfills: Counter::default(),
            slow_closes: Counter::default(),
            // 100 µs .. ~3.3 s
            handoff_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 .. 256
            handoff_frames: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            registry: Registry::default(),
        };
        registry.register(
            "ws_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "room_hubs",
            "Rooms with a bus subscription on this gateway",
            m.hubs.clone(),
        );
        registry.register(
            "deliveries",
            "Room events and notices handed to connections",
            m.deliveries.clone(),
        );
        registry.register(
            "frames_in",
            "Frames received from clients",
            m.frames_in.clone(),
        );
        registry.register(
            "backfills",
            "Gaps in a room's seq filled from the log by a hub",
            m.backfills.clone(),
        );
        registry.register(
            "tail_backfills",
            "Rooms the tail check found behind their log's end and backfilled",
            m.tail_backfills.clone(),
        );
        registry.register(
            "slow_closes",
            "Connections closed with 4009 for falling behind",
            m.slow_closes.clone(),
        );
        registry.register(
            "handoff_seconds",
            "Time a room hub's pass over its local connections took",
            m.handoff_seconds.clone(),
        );
        registry.register(
            "handoff_frames",
            "Frames written at once to each connection of a room hub's slice",
            m.handoff_frames.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Exposes `bus`'s count of payloads dropped for failing authentication
    /// as `chat_bus_rejected_total` (forgeries, or a service with another
    /// internal secret).
    pub fn watch_bus(&mut self, bus: std::sync::Arc<dyn chat_bus::Bus>) {
        self.registry.register_collector(Box::new(BusRejected(bus)));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

/// Reads the bus's rejection count at scrape time.
struct BusRejected(std::sync::Arc<dyn chat_bus::Bus>);

impl std::fmt::Debug for BusRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusRejected")
    }
}

impl prometheus_client::collector::Collector for BusRejected {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let counter = prometheus_client::metrics::counter::ConstCounter::new(self.0.rejected());
        let metric = encoder.encode_descriptor(
            "bus_rejected",
            "Bus payloads dropped because they failed authentication",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chat_bus::{Bus, BusKey, MemoryBus, SignedBus};
    use futures_util::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn rejected_bus_payloads_are_exposed() {
        let raw: Arc<dyn Bus> = Arc::new(MemoryBus::default());
        let bus: Arc<dyn Bus> = Arc::new(SignedBus::new(raw.clone(), BusKey::random()));
        let mut m = Metrics::default();
        m.watch_bus(bus.clone());
        assert!(m.render().contains("chat_bus_rejected_total 0"));
        let mut sub = bus.subscribe("s").await.unwrap();
        raw.publish("s", Bytes::from_static(b"forged"))
            .await
            .unwrap();
        bus.publish("s", Bytes::from_static(b"ok")).await.unwrap();
        assert_eq!(sub.next().await.as_deref(), Some(&b"ok"[..]));
        assert!(
            m.render().contains("chat_bus_rejected_total 1"),
            "{}",
            m.render()
        );
    }
}
