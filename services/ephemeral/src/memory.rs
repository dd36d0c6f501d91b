//! In-process ephemeral state for the all-in-one server.

use crate::{Ephemeral, RateDecision, Result};
use async_trait::async_trait;
use chat_core::{SessionId, UserId};
use dashmap::DashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct MemoryEphemeral {
    revoked: DashMap<SessionId, Instant>,
    counters: DashMap<String, (Instant, u32)>,
    connections: DashMap<UserId, u32>,
}

impl MemoryEphemeral {
    /// Drops expired entries; called now and then from writes so memory stays
    /// bounded without a background task.
    fn sweep(&self) {
        let now = Instant::now();
        self.revoked.retain(|_, until| *until > now);
        self.counters.retain(|_, (until, _)| *until > now);
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
    async fn revocations_expire() {
        let e = MemoryEphemeral::default();
        let s = SessionId::new();
        e.revoke_session(s, Duration::from_millis(30))
            .await
            .unwrap();
        assert!(e.is_session_revoked(s).await.unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!e.is_session_revoked(s).await.unwrap());
    }
}
