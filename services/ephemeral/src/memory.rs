//! In-process ephemeral state for the all-in-one server.

use crate::{Ephemeral, RateDecision, Result, DEFAULT_RECENT_TTL};
use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{RoomId, Seq, SessionId, UserId};
use dashmap::DashMap;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

pub struct MemoryEphemeral {
    revoked: DashMap<SessionId, Instant>,
    counters: DashMap<String, (Instant, u32)>,
    connections: DashMap<UserId, u32>,
    /// Each room's cached events and when they expire.
    recent: DashMap<RoomId, Recent>,
    recent_ttl: Duration,
}

struct Recent {
    until: Instant,
    events: BTreeMap<Seq, Bytes>,
}

impl Default for MemoryEphemeral {
    fn default() -> Self {
        Self {
            revoked: DashMap::new(),
            counters: DashMap::new(),
            connections: DashMap::new(),
            recent: DashMap::new(),
            recent_ttl: DEFAULT_RECENT_TTL,
        }
    }
}

impl MemoryEphemeral {
    /// How long a room's event cache lives after its last write.
    pub fn with_recent_ttl(mut self, ttl: Duration) -> Self {
        self.recent_ttl = ttl;
        self
    }

    /// Drops expired entries; called now and then from writes so memory stays
    /// bounded without a background task.
    fn sweep(&self) {
        let now = Instant::now();
        self.revoked.retain(|_, until| *until > now);
        self.counters.retain(|_, (until, _)| *until > now);
    }

    fn sweep_recent(&self) {
        let now = Instant::now();
        self.recent.retain(|_, r| r.until > now);
    }
}

#[async_trait]
impl Ephemeral for MemoryEphemeral {
    async fn revoke_session(&self, id: SessionId, ttl: Duration) -> Result<()> {
        if self.revoked.len() % 1024 == 1023 {
            self.sweep();
        }
        self.revoked.insert(id, Instant::now() + ttl);
        Ok(())
    }

    async fn is_session_revoked(&self, id: SessionId) -> Result<bool> {
        Ok(self
            .revoked
            .get(&id)
            .is_some_and(|until| *until > Instant::now()))
    }

    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision> {
        if self.counters.len() % 4096 == 4095 {
            self.sweep();
        }
        let now = Instant::now();
        let mut entry = self
            .counters
            .entry(key.to_owned())
            .or_insert((now + window, 0));
        if entry.0 <= now {
            *entry = (now + window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > limit {
            Ok(RateDecision::Limited(
                entry.0.saturating_duration_since(now),
            ))
        } else {
            Ok(RateDecision::Allowed)
        }
    }

    async fn over_limit(&self, key: &str, limit: u32) -> Result<Option<Duration>> {
        let now = Instant::now();
        Ok(self.counters.get(key).and_then(|e| {
            let (until, n) = *e;
            (until > now && n >= limit).then(|| until.saturating_duration_since(now))
        }))
    }

    async fn reset(&self, key: &str) -> Result<()> {
        self.counters.remove(key);
        Ok(())
    }

    async fn connection_opened(&self, user: UserId) -> Result<u32> {
        let mut c = self.connections.entry(user).or_insert(0);
        *c += 1;
        Ok(*c)
    }

    async fn connection_closed(&self, user: UserId) -> Result<u32> {
        let left = match self.connections.get_mut(&user) {
            Some(mut c) => {
                *c = c.saturating_sub(1);
                *c
            }
            None => 0,
        };
        if left == 0 {
            self.connections.remove_if(&user, |_, c| *c == 0);
        }
        Ok(left)
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        Ok(users
            .iter()
            .map(|u| self.connections.get(u).is_some_and(|c| *c > 0))
            .collect())
    }

    async fn cache_events(&self, room: RoomId, events: &[(Seq, Bytes)], keep: usize) -> Result<()> {
        if keep == 0 {
            self.recent.remove(&room);
            return Ok(());
        }
        let now = Instant::now();
        if events.is_empty() {
            // Trim and refresh what exists; create nothing.
            if let Some(mut r) = self.recent.get_mut(&room) {
                if r.until > now {
                    r.until = now + self.recent_ttl;
                    trim(&mut r.events, keep);
                }
            }
            return Ok(());
        }
        if self.recent.len() % 256 == 255 {
            self.sweep_recent();
        }
        // The entry's lock is held throughout: readers see all or nothing.
        let mut r = self.recent.entry(room).or_insert_with(|| Recent {
            until: now,
            events: BTreeMap::new(),
        });
        if r.until <= now {
            r.events.clear();
        }
        r.until = now + self.recent_ttl;
        for (seq, bytes) in events {
            r.events.insert(*seq, bytes.clone());
        }
        trim(&mut r.events, keep);
        Ok(())
    }

    async fn cached_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>> {
        let Some(r) = self.recent.get(&room) else {
            return Ok(Vec::new());
        };
        if r.until <= Instant::now() {
            return Ok(Vec::new());
        }
        Ok(r.events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(seq, bytes)| (*seq, bytes.clone()))
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Keeps the newest `keep` seqs.
fn trim(events: &mut BTreeMap<Seq, Bytes>, keep: usize) {
    while events.len() > keep {
        events.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rate_limit_allows_up_to_the_limit_then_says_when() {
        let e = MemoryEphemeral::default();
        let w = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(e.hit("k", 3, w).await.unwrap(), RateDecision::Allowed);
        }
        match e.hit("k", 3, w).await.unwrap() {
            RateDecision::Limited(d) => assert!(d <= w && d > Duration::from_secs(50)),
            RateDecision::Allowed => panic!("fourth hit must be limited"),
        }
        assert!(e.over_limit("k", 3).await.unwrap().is_some());
        assert!(e.over_limit("other", 3).await.unwrap().is_none());
        e.reset("k").await.unwrap();
        assert_eq!(e.hit("k", 3, w).await.unwrap(), RateDecision::Allowed);
    }

    #[tokio::test]
    async fn presence_counts_connections_per_user() {
        let e = MemoryEphemeral::default();
        let (a, b) = (UserId::new(), UserId::new());
        e.connection_opened(a).await.unwrap();
        e.connection_opened(a).await.unwrap();
        assert_eq!(e.online(&[a, b]).await.unwrap(), vec![true, false]);
        assert_eq!(e.connection_closed(a).await.unwrap(), 1);
        assert_eq!(e.connection_closed(a).await.unwrap(), 0);
        assert_eq!(e.online(&[a]).await.unwrap(), vec![false]);
    }

    #[tokio::test]
    async fn a_rooms_event_cache_expires_after_its_last_write() {
        let e = MemoryEphemeral::default().with_recent_ttl(Duration::from_secs(2));
        let room = RoomId::new();
        e.cache_events(room, &[(1, Bytes::from_static(b"a"))], 10)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A write refreshes the whole room's expiry.
        e.cache_events(room, &[(2, Bytes::from_static(b"b"))], 10)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(e.cached_events(room, 0, 10).await.unwrap().len(), 2);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(e.cached_events(room, 0, 10).await.unwrap().is_empty());
        // An expired cache starts afresh, without the old entries.
        e.cache_events(room, &[(3, Bytes::from_static(b"c"))], 10)
            .await
            .unwrap();
        let seqs: Vec<Seq> = e
            .cached_events(room, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, vec![3]);
    }

    #[tokio::test]
    async fn revocations_expire() {
        let e = MemoryEphemeral::default();
        let s = SessionId::new();
        e.revoke_session(s, Duration::from_secs(1)).await.unwrap();
        assert!(e.is_session_revoked(s).await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!e.is_session_revoked(s).await.unwrap());
    }
}
