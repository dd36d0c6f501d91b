//! Latency histograms (microseconds) and their wire form between worker
//! processes and the parent: HdrHistogram's V2 encoding, base64.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest recordable value: one hour in µs.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in µs.
#[derive(Clone, Debug)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        // 3 significant figures from 1 µs to an hour: ~190 KB of counts.
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds everywhere, so adding cannot fail; saturate anyway.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                let _ = self
                    .0
                    .record_n(v.value_iterated_to().min(MAX_US), v.count_at_value());
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A quantile in milliseconds (0 when empty).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The summary the report shows.
    pub fn summary(&self) -> Latency {
        let empty = self.0.is_empty();
        Latency {
            count: self.0.len(),
            p50: self.quantile_ms(0.50),
            p90: self.quantile_ms(0.90),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
            max: if empty {
                0.0
            } else {
                self.0.max() as f64 / 1000.0
            },
            mean: if empty { 0.0 } else { self.0.mean() / 1000.0 },
        }
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if V2Serializer::new().serialize(&self.0, &mut buf).is_err() {
            buf.clear();
        }
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    pub fn decode(s: &str) -> anyhow::Result<Hist> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
        if bytes.is_empty() {
            return Ok(Hist::new());
        }
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        let mut out = Hist::new();
        out.merge(&Hist(h));
        Ok(out)
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hist::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// Percentiles in milliseconds, as the report and the JSON show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_merges() {
        let mut a = Hist::new();
        for us in 1..=1000 {
            a.record(us * 10);
        }
        let b = Hist::decode(&a.encode()).unwrap();
        assert_eq!(b.len(), 1000);
        assert_eq!(b.0.max(), a.0.max());
        let mut c = Hist::new();
        c.record(0);
        c.record(u64::MAX);
        c.merge(&b);
        assert_eq!(c.len(), 1002);
        let s = a.summary();
        assert!(s.p50 > 4.9 && s.p50 < 5.1, "{s:?}");
        assert_eq!(Hist::new().summary(), Latency::default());
        let json = serde_json::to_string(&a).unwrap();
        let d: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(d.len(), 1000);
    }
}
