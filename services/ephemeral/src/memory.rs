//! In-process ephemeral state for the all-in-one server.
//!
//! The recent-event cache is bounded in bytes over every room
//! ([`MemoryEphemeral::with_recent_cache_bytes`]): each write counts its
//! payloads (plus a fixed overhead per entry and per room), and past the
//! bound the caches of the least recently written rooms go, whole, until
//! the total is back under it. An evicted room's next resume reads the
//! store (the cache is only trusted when it holds every event asked for).

use crate::{Ephemeral, RateDecision, Result, DEFAULT_RECENT_CACHE_BYTES, DEFAULT_RECENT_TTL};
use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{RoomId, Seq, SessionId, UserId};
use dashmap::DashMap;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one cached event costs beyond its payload (map node, seq, handle):
/// an estimate, so that tiny events count too.
const ENTRY_OVERHEAD: usize = 64;
/// What one room's cache costs beyond its entries.
const ROOM_OVERHEAD: usize = 128;

pub struct MemoryEphemeral {
    revoked: DashMap<SessionId, Instant>,
    counters: DashMap<String, (Instant, u32)>,
    connections: DashMap<UserId, u32>,
    /// A std mutex: every section is short and never awaits.
    recent: Mutex<RecentRooms>,
    recent_ttl: Duration,
}

/// Every room's cached events, in the order of their last write.
#[derive(Default)]
struct RecentRooms {
    rooms: HashMap<RoomId, Recent>,
    /// Rooms by the stamp of their last write, oldest first: the order of
    /// both expiry (the TTL restarts at each write) and eviction.
    order: BTreeMap<u64, RoomId>,
    next_stamp: u64,
    /// The cost of everything cached (see [`ENTRY_OVERHEAD`]).
    bytes: usize,
    max_bytes: usize,
}

struct Recent {
    until: Instant,
    stamp: u64,
    bytes: usize,
    events: BTreeMap<Seq, Bytes>,
}

impl Default for MemoryEphemeral {
    fn default() -> Self {
        Self {
            revoked: DashMap::new(),
            counters: DashMap::new(),
            connections: DashMap::new(),
            recent: Mutex::new(RecentRooms {
                max_bytes: DEFAULT_RECENT_CACHE_BYTES,
                ..RecentRooms::default()
            }),
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

    /// The bound on the recent-event cache over every room, in bytes
    /// (default [`DEFAULT_RECENT_CACHE_BYTES`]); past it the least recently
    /// written rooms' caches are dropped.
    pub fn with_recent_cache_bytes(self, max: usize) -> Self {
        self.recent_rooms().max_bytes = max;
        self
    }

    /// What the recent-event cache holds now, in bytes as it counts them
    /// (payloads plus a fixed overhead per entry and per room).
    pub fn recent_cache_bytes(&self) -> usize {
        self.recent_rooms().bytes
    }

    fn recent_rooms(&self) -> std::sync::MutexGuard<'_, RecentRooms> {
        // A panic cannot leave the maps half-updated in a way readers
        // would trust wrongly (the cache is checked before use): go on.
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops expired entries; called now and then from writes so memory stays
    /// bounded without a background task.
    fn sweep(&self) {
        let now = Instant::now();
        self.revoked.retain(|_, until| *until > now);
        self.counters.retain(|_, (until, _)| *until > now);
    }
}

impl RecentRooms {
    fn remove(&mut self, room: RoomId) {
        if let Some(r) = self.rooms.remove(&room) {
            self.order.remove(&r.stamp);
            self.bytes -= r.bytes;
        }
    }

    /// Drops the rooms whose cache expired: the oldest writes.
    fn expire(&mut self, now: Instant) {
        while let Some((_, &room)) = self.order.first_key_value() {
            if self.rooms.get(&room).is_some_and(|r| r.until > now) {
                break;
            }
            self.remove(room);
        }
    }

    /// Drops the least recently written rooms until the total fits.
    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((_, &room)) = self.order.first_key_value() else {
                break;
            };
            self.remove(room);
            tracing::debug!(room_id = %room, "recent-event cache full: room evicted");
        }
    }

    /// Writes `events` to `room` (created if new), keeps its newest `keep`,
    /// and makes it the most recently written room.
    fn write(
        &mut self,
        room: RoomId,
        events: &[(Seq, Bytes)],
        keep: usize,
        until: Instant,
        create: bool,
    ) {
        if !self.rooms.contains_key(&room) {
            if !create {
                return;
            }
            self.bytes += ROOM_OVERHEAD;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let r = self.rooms.entry(room).or_insert(Recent {
            until,
            stamp,
            bytes: ROOM_OVERHEAD,
            events: BTreeMap::new(),
        });
        self.order.remove(&r.stamp);
        self.order.insert(stamp, room);
        r.stamp = stamp;
        r.until = until;
        let before = r.bytes;
        for (seq, bytes) in events {
            r.bytes += ENTRY_OVERHEAD + bytes.len();
            if let Some(old) = r.events.insert(*seq, bytes.clone()) {
                r.bytes -= ENTRY_OVERHEAD + old.len();
            }
        }
        while r.events.len() > keep {
            if let Some((_, old)) = r.events.pop_first() {
                r.bytes -= ENTRY_OVERHEAD + old.len();
            }
        }
        self.bytes = self.bytes - before + r.bytes;
        self.evict();
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

    async fn connections(&self, user: UserId) -> Result<u32> {
        Ok(self.connections.get(&user).map_or(0, |c| *c))
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        Ok(users
            .iter()
            .map(|u| self.connections.get(u).is_some_and(|c| *c > 0))
            .collect())
    }

    async fn cache_events(&self, room: RoomId, events: &[(Seq, Bytes)], keep: usize) -> Result<()> {
        let now = Instant::now();
        let mut recent = self.recent_rooms();
        recent.expire(now);
        if keep == 0 {
            recent.remove(room);
            return Ok(());
        }
        // No events: trim and refresh what exists; create nothing.
        let create = !events.is_empty();
        recent.write(room, events, keep, now + self.recent_ttl, create);
        Ok(())
    }

    async fn cached_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>> {
        let recent = self.recent_rooms();
        let Some(r) = recent.rooms.get(&room) else {
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
    async fn the_event_cache_stays_under_its_bound_by_dropping_the_oldest_rooms() {
        let max = 64 * 1024;
        let e = MemoryEphemeral::default().with_recent_cache_bytes(max);
        let rooms: Vec<RoomId> = (0..40).map(|_| RoomId::new()).collect();
        let payload = Bytes::from(vec![b'x'; 1000]);
        for room in &rooms {
            for seq in 1..=4 {
                e.cache_events(*room, &[(seq, payload.clone())], 256)
                    .await
                    .unwrap();
                assert!(e.recent_cache_bytes() <= max, "{}", e.recent_cache_bytes());
            }
        }
        // 40 rooms of ~4.4 KB do not fit in 64 KiB: the oldest went whole,
        // the newest are whole.
        let mut cached = Vec::new();
        for room in &rooms {
            cached.push(e.cached_events(*room, 0, 10).await.unwrap().len());
        }
        assert_eq!(cached[0], 0);
        assert_eq!(cached[39], 4);
        let first_kept = cached.iter().position(|&n| n > 0).unwrap();
        assert!(first_kept > 20, "{cached:?}");
        assert!(cached[first_kept..].iter().all(|&n| n == 4), "{cached:?}");
        let per_room = ROOM_OVERHEAD + 4 * (ENTRY_OVERHEAD + 1000);
        assert_eq!(e.recent_cache_bytes(), (40 - first_kept) * per_room);

        // A write makes a room the newest: the next eviction spares it.
        let oldest = rooms[first_kept];
        e.cache_events(oldest, &[(5, payload.clone())], 4)
            .await
            .unwrap();
        let four: Vec<(Seq, Bytes)> = (1..=4).map(|seq| (seq, payload.clone())).collect();
        e.cache_events(RoomId::new(), &four, 4).await.unwrap();
        assert_eq!(e.cached_events(oldest, 0, 10).await.unwrap().len(), 4);
        assert!(e
            .cached_events(rooms[first_kept + 1], 0, 10)
            .await
            .unwrap()
            .is_empty());

        // Rewrites and trims are counted, not added; emptied rooms free all.
        e.cache_events(oldest, &[(5, Bytes::from_static(b"y"))], 4)
            .await
            .unwrap();
        let all: Vec<RoomId> = e.recent_rooms().rooms.keys().copied().collect();
        for room in all {
            e.cache_events(room, &[], 0).await.unwrap();
        }
        assert_eq!(e.recent_cache_bytes(), 0);
    }

    #[tokio::test]
    async fn a_room_larger_than_the_bound_is_not_kept() {
        let e = MemoryEphemeral::default().with_recent_cache_bytes(1024);
        let room = RoomId::new();
        e.cache_events(room, &[(1, Bytes::from(vec![0; 2000]))], 10)
            .await
            .unwrap();
        assert!(e.cached_events(room, 0, 10).await.unwrap().is_empty());
        assert_eq!(e.recent_cache_bytes(), 0);
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
