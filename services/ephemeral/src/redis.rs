//! Ephemeral state in Redis (or Valkey), shared by every process of the
//! distributed mode.
//!
//! Keys, all under one prefix so deployments and tests can share a server:
//! - `{prefix}:revoked`: the revocation list, one sorted set of session ids
//!   scored by when their revocation ends (Unix ms, the access token's
//!   expiry); ended ones are pruned at each revocation. The set itself has
//!   no TTL, so a `volatile-*` eviction policy can never drop it (see
//!   below);
//! - `{prefix}:revoked:seeded`: set (without a TTL) once the list holds
//!   every recent revocation of the store. Its absence means the list was
//!   flushed or Redis restarted empty: a "not revoked" answer is then
//!   [`None`] (ask the store), until auth re-seeds the list;
//! - `{prefix}:rl:{key}`: a fixed-window counter, expiring with its window;
//! - `{prefix}:conns:{user_id}`: open connections of the user, summed over
//!   every gateway;
//! - `{prefix}:recent:{room_id}`: the room's recent events, a sorted set
//!   scored by seq whose members are the 8-byte big-endian seq followed by
//!   the encoded event (so equal payloads at different seqs stay distinct),
//!   expiring [`DEFAULT_RECENT_TTL`] after the room's last cache write.
//!
//! Memory: Redis runs with `maxmemory` and `volatile-lru` (docs/deploy.md).
//! Every key but the revocation list has a TTL, so under memory pressure
//! Redis evicts the least recently used of those: mostly idle rooms' event
//! caches (safe: a resume checks the cache before trusting it), and rate
//! counters or presence counts that nobody touched lately. A revocation
//! is never evicted, so memory pressure cannot un-revoke a session.
//!
//! Every read-modify-write is one Lua script, so it is atomic and one round
//! trip. Commands time out (a dead Redis gives errors, not hangs); the client
//! reconnects on its own, forever, with backoff.
//!
//! Presence and crashed gateways: a gateway that dies never sends its
//! `connection_closed`s, so its users would count as online forever. Each
//! `conns` key therefore expires [`DEFAULT_PRESENCE_TTL`] after the user's
//! last *opened* connection. The price: a user whose only connection stays
//! open longer than that (and who opens no other) shows offline until they
//! reconnect, and a crashed gateway's users show online for up to that long.
//! Exact presence would need per-gateway counts with heartbeats; this is the
//! cheap approximation the product can live with.

use crate::{Ephemeral, EphemeralError, RateDecision, Result, DEFAULT_RECENT_TTL};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use chat_core::{RoomId, Seq, SessionId, UserId};
use fred::prelude::*;
use fred::types::scripts::Script;
use std::time::Duration;

/// How long one command (or the handshake of one connection) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may have a command unanswered before it is deemed
/// dead, closed and reopened.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(5);
/// See the module doc.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(24 * 3600);

/// INCR; on the first hit of a window (or a counter that somehow lost its
/// expiry) start the window. Returns `{count, ms left in the window}`.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
";

/// `{count, ms left}` of a counter, without counting (`{0, -2}` if none).
const PEEK: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
return {n, redis.call('PTTL', KEYS[1])}
";

/// One more connection; (re)starts the presence expiry.
const OPENED: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
";

/// One fewer, never below zero: at zero the key goes.
const CLOSED: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if n <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
return redis.call('DECR', KEYS[1])
";

/// Redis's clock in Unix ms (one clock for every process that reads or
/// writes the revocation list).
const NOW_MS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Revokes `ARGV[1]` for `ARGV[2]` ms (never shortening a revocation), and
/// prunes the revocations that ended.
const REVOKE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ends = now + tonumber(ARGV[2])
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') or 0
if ends > old then
  redis.call('ZADD', KEYS[1], ends, ARGV[1])
end
return 1
";

/// 1 when `ARGV[1]` is revoked now, else 0.
const IS_REVOKED: &str = r"
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ends and tonumber(ends) > now then
  return 1
end
return 0
";

/// Like [`IS_REVOKED`], but -1 when the answer would be 0 and the list
/// lost its seed marker (`KEYS[2]`): a flush or a restart without
/// persistence emptied it, so "not revoked" cannot be trusted.
const IS_REVOKED_CHECKED: &str = r"
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ends and tonumber(ends) > now then
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
return 0
";

/// Caches a room's events: `ARGV` = keep, TTL in ms, then (seq, member)
/// pairs. Each seq's old member goes before the new one comes; then the
/// oldest beyond `keep` go, and the expiry restarts. Returns the size.
const CACHE: &str = r"
local key = KEYS[1]
for i = 3, #ARGV, 2 do
  redis.call('ZREMRANGEBYSCORE', key, ARGV[i], ARGV[i])
  redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
end
local keep = tonumber(ARGV[1])
if keep <= 0 then
  redis.call('DEL', key)
  return 0
end
redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
redis.call('PEXPIRE', key, ARGV[2])
return redis.call('ZCARD', key)
";

pub struct RedisEphemeral {
    client: Client,
    prefix: String,
    presence_ttl: Duration,
    recent_ttl: Duration,
    revoke: Script,
    is_revoked: Script,
    is_revoked_checked: Script,
    hit: Script,
    peek: Script,
    opened: Script,
    closed: Script,
    cache: Script,
}

impl RedisEphemeral {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`, or any URL
    /// fred understands) and checks it with a PING. Fails at once when the
    /// server cannot be reached; reconnects on its own after that. All keys go
    /// under `key_prefix` (`chat` in production; empty means none).
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self> {
        let config = Config::from_url(url)
            .map_err(|e| EphemeralError::Config(format!("bad Redis URL {:?}: {e}", redact(url))))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                c.unresponsive.max_timeout = Some(UNRESPONSIVE_AFTER);
                c.unresponsive.interval = Duration::from_secs(1);
            })
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            // Forever, 100 ms doubling up to 5 s. The first connect is not
            // retried (`fail_fast`, the default): a bad URL fails at start.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|e| EphemeralError::Config(format!("Redis client: {e}")))?;

        let unreachable = |e: Error| {
            EphemeralError::Unavailable(
                format!("cannot connect to Redis at {}: {e}", redact(url)).into(),
            )
        };
        // Dropping the handle detaches the connection task; it lives as long
        // as the client.
        let _task = client.init().await.map_err(unreachable)?;
        client.ping::<()>(None).await.map_err(unreachable)?;
        log_events(&client);
        tracing::info!(url = %redact(url), "ephemeral store connected to Redis");

        Ok(Self {
            client,
            prefix: key_prefix.to_owned(),
            presence_ttl: DEFAULT_PRESENCE_TTL,
            recent_ttl: DEFAULT_RECENT_TTL,
            revoke: Script::from_lua(format!("{NOW_MS}{REVOKE}")),
            is_revoked: Script::from_lua(format!("{NOW_MS}{IS_REVOKED}")),
            is_revoked_checked: Script::from_lua(format!("{NOW_MS}{IS_REVOKED_CHECKED}")),
            hit: Script::from_lua(HIT),
            peek: Script::from_lua(PEEK),
            opened: Script::from_lua(OPENED),
            closed: Script::from_lua(CLOSED),
            cache: Script::from_lua(CACHE),
        })
    }

    /// How long a user counts as online after their last opened connection
    /// when no close arrives (see the module doc).
    pub fn with_presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl;
        self
    }

    /// How long a room's event cache lives after its last write.
    pub fn with_recent_ttl(mut self, ttl: Duration) -> Self {
        self.recent_ttl = ttl;
        self
    }

    /// The underlying client (tests force reconnects with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The revocation list: one key (see the module doc).
    fn revoked_key(&self) -> String {
        if self.prefix.is_empty() {
            "revoked".to_owned()
        } else {
            format!("{}:revoked", self.prefix)
        }
    }

    /// Set once the revocation list holds every recent revocation of the
    /// store (see [`Ephemeral::mark_revocations_seeded`]); gone after a
    /// flush or a restart without persistence.
    fn seeded_key(&self) -> String {
        format!("{}:seeded", self.revoked_key())
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        if self.prefix.is_empty() {
            format!("{kind}:{id}")
        } else {
            format!("{}:{kind}:{id}", self.prefix)
        }
    }
}

#[async_trait]
impl Ephemeral for RedisEphemeral {
    async fn revoke_session(&self, id: SessionId, ttl: Duration) -> Result<()> {
        let _: i64 = self
            .revoke
            .evalsha_with_reload(
                &self.client,
                self.revoked_key(),
                vec![Value::from(id.to_string()), Value::from(millis(ttl))],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn is_session_revoked(&self, id: SessionId) -> Result<bool> {
        let n: i64 = self
            .is_revoked
            .evalsha_with_reload(&self.client, self.revoked_key(), id.to_string())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn session_revocation(&self, id: SessionId) -> Result<Option<bool>> {
        let n: i64 = self
            .is_revoked_checked
            .evalsha_with_reload(
                &self.client,
                vec![self.revoked_key(), self.seeded_key()],
                id.to_string(),
            )
            .await
            .map_err(unavailable)?;
        Ok(match n {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        })
    }

    async fn revocations_seeded(&self) -> Result<bool> {
        let n: i64 = self
            .client
            .exists(self.seeded_key())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn mark_revocations_seeded(&self) -> Result<()> {
        let () = self
            .client
            .set(self.seeded_key(), "1", None, None, false)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision> {
        let (n, ttl): (i64, i64) = self
            .hit
            .evalsha_with_reload(&self.client, self.key("rl", key), millis(window))
            .await
            .map_err(unavailable)?;
        Ok(if n > i64::from(limit) {
            RateDecision::Limited(from_millis(ttl))
        } else {
            RateDecision::Allowed
        })
    }

    async fn over_limit(&self, key: &str, limit: u32) -> Result<Option<Duration>> {
        let (n, ttl): (i64, i64) = self
            .peek
            .evalsha_with_reload(&self.client, self.key("rl", key), ())
            .await
            .map_err(unavailable)?;
        Ok((n >= i64::from(limit) && ttl > 0).then(|| from_millis(ttl)))
    }

    async fn reset(&self, key: &str) -> Result<()> {
        self.client
            .del::<(), _>(self.key("rl", key))
            .await
            .map_err(unavailable)
    }

    async fn connection_opened(&self, user: UserId) -> Result<u32> {
        let n: i64 = self
            .opened
            .evalsha_with_reload(
                &self.client,
                self.key("conns", user),
                millis(self.presence_ttl),
            )
            .await
            .map_err(unavailable)?;
        Ok(clamp(n))
    }

    async fn connection_closed(&self, user: UserId) -> Result<u32> {
        let n: i64 = self
            .closed
            .evalsha_with_reload(&self.client, self.key("conns", user), ())
            .await
            .map_err(unavailable)?;
        Ok(clamp(n))
    }

    async fn connections(&self, user: UserId) -> Result<u32> {
        let n: Option<i64> = self
            .client
            .get(self.key("conns", user))
            .await
            .map_err(unavailable)?;
        Ok(clamp(n.unwrap_or(0)))
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|u| self.key("conns", u)).collect();
        let counts: Vec<Option<i64>> = self.client.mget(keys).await.map_err(unavailable)?;
        Ok(counts.into_iter().map(|c| c.unwrap_or(0) > 0).collect())
    }

    async fn cache_events(&self, room: RoomId, events: &[(Seq, Bytes)], keep: usize) -> Result<()> {
        let mut args: Vec<Value> = Vec::with_capacity(2 + 2 * events.len());
        args.push(i64::try_from(keep).unwrap_or(i64::MAX).into());
        args.push(millis(self.recent_ttl).into());
        for (seq, bytes) in events {
            args.push((*seq).into());
            args.push(member(*seq, bytes).into());
        }
        let _size: i64 = self
            .cache
            .evalsha_with_reload(&self.client, self.key("recent", room), args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn cached_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Bytes)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let members: Vec<Bytes> = self
            .client
            .zrangebyscore(
                self.key("recent", room),
                format!("({after}"),
                "+inf",
                false,
                Some((0, i64::try_from(limit).unwrap_or(i64::MAX))),
            )
            .await
            .map_err(unavailable)?;
        members
            .into_iter()
            .map(|m| {
                split_member(m).ok_or_else(|| {
                    EphemeralError::Unavailable("malformed recent-event cache entry".into())
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        self.client.ping::<()>(None).await.map_err(unavailable)
    }
}

/// A cache member: the seq (8 bytes, big-endian), then the payload.
fn member(seq: Seq, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + payload.len());
    b.put_i64(seq);
    b.put_slice(payload);
    b.freeze()
}

/// A member back into `(seq, payload)`; `None` when it is too short.
fn split_member(mut m: Bytes) -> Option<(Seq, Bytes)> {
    if m.len() < 8 {
        return None;
    }
    let payload = m.split_off(8);
    let seq = Seq::from_be_bytes(m.as_ref().try_into().ok()?);
    Some((seq, payload))
}

fn log_events(client: &Client) {
    // Detached listener tasks; they end when the client is closed.
    drop(client.on_reconnect(|server| async move {
        tracing::info!(%server, "ephemeral store reconnected to Redis");
        Ok(())
    }));
    drop(client.on_error(|(error, server)| async move {
        let server = server.map(|s| s.to_string()).unwrap_or_default();
        tracing::warn!(%error, %server, "Redis connection error; reconnecting");
        Ok(())
    }));
    drop(client.on_unresponsive(|server| async move {
        tracing::warn!(%server, "Redis connection unresponsive; reconnecting");
        Ok(())
    }));
}

/// Milliseconds for PX/PEXPIRE: at least 1 (0 is an error or a delete).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn unavailable(e: Error) -> EphemeralError {
    EphemeralError::Unavailable(Box::new(e))
}

/// The URL without credentials (`redis://u:p@host` → `redis://***@host`).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_logged() {
        assert_eq!(redact("redis://u:p@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn cache_members_carry_their_seq_before_the_payload() {
        let m = member(258, b"payload");
        assert_eq!(&m[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(split_member(m), Some((258, Bytes::from_static(b"payload"))));
        assert_eq!(split_member(member(7, b"")), Some((7, Bytes::new())));
        assert_eq!(split_member(Bytes::from_static(b"short")), None);
    }

    #[test]
    fn durations_in_millis_are_never_zero() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(from_millis(-2), Duration::ZERO);
    }
}
