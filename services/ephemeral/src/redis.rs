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
//! - presence (see below): `{prefix}:pres:gws`, `{prefix}:pres:gw:{gateway}`,
//!   `{prefix}:pres:u:{user_id}` and `{prefix}:pres:synced:{gateway}`;
//! - `{prefix}:recent:{room_id}`: the room's recent events, a sorted set
//!   scored by seq whose members are the 8-byte big-endian seq followed by
//!   the encoded event (so equal payloads at different seqs stay distinct),
//!   expiring [`DEFAULT_RECENT_TTL`] after the room's last cache write.
//!
//! Memory: Redis runs with `maxmemory` and `volatile-lru` (docs/deploy.md).
//! Every key but the revocation list has a TTL, so under memory pressure
//! Redis evicts the least recently used of those: mostly idle rooms' event
//! caches (safe: a resume checks the cache before trusting it), and rate
//! counters that nobody touched lately. A revocation is never evicted, so
//! memory pressure cannot un-revoke a session. Presence keys have no TTL
//! either (they are as many as the users online, and each gateway rewrites
//! its own when they are lost).
//!
//! Every read-modify-write is one Lua script, so it is atomic and one round
//! trip. Commands time out (a dead Redis gives errors, not hangs); the client
//! reconnects on its own, forever, with backoff.
//!
//! Presence and crashed gateways. Each handle (one per gateway process) is
//! a gateway with a random id, and counts its open connections per user
//! twice: in its own hash `pres:gw:{gateway}` (user → connections) and in
//! the user's hash `pres:u:{user}` (gateway → connections). The sorted set
//! `pres:gws` scores each gateway by when its heartbeat ends (Redis's
//! clock, Unix ms): [`Ephemeral::presence_heartbeat`] moves it TTL ahead,
//! one command per interval whatever the number of users. A user is online
//! while they have connections on a gateway whose heartbeat has not ended
//! (or that never sent one yet), so reads are exact as soon as a crashed
//! gateway's heartbeat ends. [`Ephemeral::reap_presence`] (any gateway,
//! every second) then removes such a gateway's counts, a batch of users per
//! script, and returns the users left with no connection anywhere, for
//! their rooms to be told. Each script is atomic, so two gateways reaping
//! at once never return the same user twice.
//!
//! Healing: each gateway also keeps its counts in memory (the truth about
//! its own sockets). While its state in Redis is known complete, the key
//! `pres:synced:{gateway}` exists (expiring with the heartbeat). When it is
//! gone (Redis restarted or was flushed, the gateway was reaped after a
//! long pause) or a presence write failed, the next heartbeat rewrites the
//! gateway's counts from memory: O(its users), batched, rare.

use crate::{Ephemeral, EphemeralError, RateDecision, Result, DEFAULT_RECENT_TTL};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use chat_core::{RoomId, Seq, SessionId, UserId};
use fred::prelude::*;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// How long one command (or the handshake of one connection) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may have a command unanswered before it is deemed
/// dead, closed and reopened.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(5);
/// How long a gateway counts as alive after a connection opens on it,
/// until its first heartbeat says otherwise (see the module doc).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(12);
/// Users written per script when a gateway rewrites its presence.
const RESYNC_BATCH: usize = 500;

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

/// `live(user_key, gws)`: the user's connections on gateways whose
/// heartbeat has not ended (a gateway with no heartbeat yet counts).
const LIVE: &str = r"
local function live(ukey, gws)
  local f = redis.call('HGETALL', ukey)
  local n = 0
  for i = 1, #f, 2 do
    local c = tonumber(f[i + 1]) or 0
    if c > 0 then
      local ends = redis.call('ZSCORE', gws, f[i])
      if (not ends) or tonumber(ends) > now then
        n = n + c
      end
    end
  end
  return n
end
";

/// One more connection of user `ARGV[1]` on gateway `ARGV[2]`; KEYS: gws,
/// the gateway's hash, the user's hash. A gateway that opens a connection
/// is alive for `ARGV[3]` ms at least. Returns the user's live count.
const OPENED: &str = r"
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[3]), ARGV[2])
return live(KEYS[3], KEYS[1])
";

/// One fewer (never below zero: at zero the field goes); as [`OPENED`].
const CLOSED: &str = r"
local function down(key, field)
  local n = tonumber(redis.call('HGET', key, field) or '0') or 0
  if n <= 1 then
    redis.call('HDEL', key, field)
  else
    redis.call('HINCRBY', key, field, -1)
  end
end
down(KEYS[2], ARGV[1])
down(KEYS[3], ARGV[2])
return live(KEYS[3], KEYS[1])
";

/// Live counts of the users whose hashes are `KEYS[2..]` (`KEYS[1]`: gws).
const LIVE_COUNTS: &str = r"
local out = {}
for i = 2, #KEYS do
  out[i - 1] = live(KEYS[i], KEYS[1])
end
return out
";

/// Gateway `ARGV[1]` is alive for `ARGV[2]` ms more; 1 when its state is
/// known complete (`KEYS[2]`, the synced key, exists and is refreshed),
/// 0 when it must be rewritten.
const HEARTBEAT: &str = r"
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'XX') then
  return 1
end
return 0
";

/// Forgets every count of gateway `ARGV[1]` (`KEYS[1]`: its hash; `ARGV[2]`:
/// the users' key prefix), before a rewrite.
const CLEAR: &str = r"
local users = redis.call('HKEYS', KEYS[1])
for _, u in ipairs(users) do
  redis.call('HDEL', ARGV[2] .. u, ARGV[1])
end
redis.call('DEL', KEYS[1])
return #users
";

/// Writes counts of gateway `ARGV[1]`: `ARGV[3..]` = (user, count) pairs.
const WRITE: &str = r"
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', ARGV[2] .. ARGV[i], ARGV[1], ARGV[i + 1])
end
return 1
";

/// Reaps up to `ARGV[2]` users of one gateway whose heartbeat ended
/// (`KEYS[1]`: gws; `ARGV[1]`: the presence key prefix). HSCAN's COUNT is
/// only a hint, hence the explicit bound. Returns `{}` when
/// there is none, else the gateway and the users left with no connection.
const REAP: &str = r"
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #dead == 0 then
  return {}
end
local gw = dead[1]
local gwkey = ARGV[1] .. 'gw:' .. gw
local limit = tonumber(ARGV[2])
-- Scan until enough fields or the end: a scan step may find none (empty
-- buckets), and returning none would not make progress.
local fields = {}
local cursor = '0'
repeat
  local r = redis.call('HSCAN', gwkey, cursor, 'COUNT', limit)
  cursor = r[1]
  for _, x in ipairs(r[2]) do
    fields[#fields + 1] = x
  end
until cursor == '0' or #fields >= 2 * limit
local out = {gw}
local seen = {}
local left = limit
for i = 1, #fields, 2 do
  local u = fields[i]
  if left > 0 and not seen[u] then
    seen[u] = true
    left = left - 1
    local ukey = ARGV[1] .. 'u:' .. u
    redis.call('HDEL', ukey, gw)
    redis.call('HDEL', gwkey, u)
    if redis.call('EXISTS', ukey) == 0 then
      out[#out + 1] = u
    end
  end
end
if redis.call('EXISTS', gwkey) == 0 then
  redis.call('ZREM', KEYS[1], gw)
  redis.call('DEL', ARGV[1] .. 'synced:' .. gw)
end
return out
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
    recent_ttl: Duration,
    revoke: Script,
    is_revoked: Script,
    is_revoked_checked: Script,
    hit: Script,
    peek: Script,
    opened: Script,
    closed: Script,
    live_counts: Script,
    heartbeat: Script,
    clear: Script,
    write: Script,
    reap: Script,
    cache: Script,
    presence: Presence,
}

/// This handle's side of presence (see the module doc).
struct Presence {
    /// This gateway's id in Redis.
    gateway: String,
    /// Open connections per user on this gateway: the truth Redis is
    /// rewritten from.
    local: std::sync::Mutex<HashMap<UserId, u32>>,
    /// Opens and closes hold it shared, a rewrite exclusively, so that a
    /// rewrite never writes a count an open or close is changing.
    writes: tokio::sync::RwLock<()>,
    /// A presence write failed: the next heartbeat rewrites.
    dirty: AtomicBool,
    /// The TTL of the last heartbeat, in ms.
    ttl_ms: AtomicI64,
}

impl Presence {
    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, u32>> {
        // Counts are updated in one step each: a panic leaves none half-made.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
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
            recent_ttl: DEFAULT_RECENT_TTL,
            revoke: Script::from_lua(format!("{NOW_MS}{REVOKE}")),
            is_revoked: Script::from_lua(format!("{NOW_MS}{IS_REVOKED}")),
            is_revoked_checked: Script::from_lua(format!("{NOW_MS}{IS_REVOKED_CHECKED}")),
            hit: Script::from_lua(HIT),
            peek: Script::from_lua(PEEK),
            opened: Script::from_lua(format!("{NOW_MS}{LIVE}{OPENED}")),
            closed: Script::from_lua(format!("{NOW_MS}{LIVE}{CLOSED}")),
            live_counts: Script::from_lua(format!("{NOW_MS}{LIVE}{LIVE_COUNTS}")),
            heartbeat: Script::from_lua(format!("{NOW_MS}{HEARTBEAT}")),
            clear: Script::from_lua(CLEAR),
            write: Script::from_lua(WRITE),
            reap: Script::from_lua(format!("{NOW_MS}{REAP}")),
            cache: Script::from_lua(CACHE),
            presence: Presence {
                gateway: uuid::Uuid::new_v4().simple().to_string(),
                local: std::sync::Mutex::new(HashMap::new()),
                writes: tokio::sync::RwLock::new(()),
                dirty: AtomicBool::new(false),
                ttl_ms: AtomicI64::new(millis(DEFAULT_PRESENCE_TTL)),
            },
        })
    }

    /// This handle's gateway id in the presence keys.
    pub fn gateway_id(&self) -> &str {
        &self.presence.gateway
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

    /// The prefix of every presence key (`{prefix}:pres:`).
    fn presence_prefix(&self) -> String {
        self.key("pres", "")
    }

    fn gateways_key(&self) -> String {
        self.key("pres", "gws")
    }

    fn gateway_key(&self) -> String {
        format!("{}gw:{}", self.presence_prefix(), self.presence.gateway)
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}u:{user}", self.presence_prefix())
    }

    fn synced_key(&self) -> String {
        format!("{}synced:{}", self.presence_prefix(), self.presence.gateway)
    }

    /// Runs [`OPENED`] or [`CLOSED`] for `user`; a failure marks the
    /// gateway's state for a rewrite at the next heartbeat.
    async fn count(&self, script: &Script, user: UserId, extra: Vec<Value>) -> Result<u32> {
        let keys = vec![self.gateways_key(), self.gateway_key(), self.user_key(user)];
        let mut args = vec![
            Value::from(user.to_string()),
            Value::from(self.presence.gateway.clone()),
        ];
        args.extend(extra);
        let r: Result<i64> = script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable);
        if r.is_err() {
            self.presence.dirty.store(true, Ordering::Relaxed);
        }
        r.map(clamp)
    }

    /// Rewrites this gateway's counts from memory (see the module doc).
    async fn rewrite(&self, ttl: Duration) -> Result<()> {
        let _exclusive = self.presence.writes.write().await;
        let users: Vec<(UserId, u32)> = self
            .presence
            .local()
            .iter()
            .map(|(u, n)| (*u, *n))
            .collect();
        let gw = Value::from(self.presence.gateway.clone());
        let users_prefix = Value::from(format!("{}u:", self.presence_prefix()));
        let _: i64 = self
            .clear
            .evalsha_with_reload(
                &self.client,
                self.gateway_key(),
                vec![gw.clone(), users_prefix.clone()],
            )
            .await
            .map_err(unavailable)?;
        for batch in users.chunks(RESYNC_BATCH) {
            let mut args = Vec::with_capacity(2 + 2 * batch.len());
            args.push(gw.clone());
            args.push(users_prefix.clone());
            for (u, n) in batch {
                args.push(Value::from(u.to_string()));
                args.push(Value::from(i64::from(*n)));
            }
            let _: i64 = self
                .write
                .evalsha_with_reload(&self.client, self.gateway_key(), args)
                .await
                .map_err(unavailable)?;
        }
        self.client
            .set::<(), _, _>(
                self.synced_key(),
                1,
                Some(Expiration::PX(millis(ttl))),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        tracing::info!(users = users.len(), "presence rewritten to Redis");
        Ok(())
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
        let _shared = self.presence.writes.read().await;
        *self.presence.local().entry(user).or_insert(0) += 1;
        let ttl = self.presence.ttl_ms.load(Ordering::Relaxed);
        self.count(&self.opened, user, vec![Value::from(ttl)]).await
    }

    async fn connection_closed(&self, user: UserId) -> Result<u32> {
        let _shared = self.presence.writes.read().await;
        {
            let mut local = self.presence.local();
            if let Some(n) = local.get_mut(&user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    local.remove(&user);
                }
            }
        }
        self.count(&self.closed, user, Vec::new()).await
    }

    async fn connections(&self, user: UserId) -> Result<u32> {
        let counts: Vec<i64> = self
            .live_counts
            .evalsha_with_reload(
                &self.client,
                vec![self.gateways_key(), self.user_key(user)],
                (),
            )
            .await
            .map_err(unavailable)?;
        Ok(clamp(counts.first().copied().unwrap_or(0)))
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(users.len() + 1);
        keys.push(self.gateways_key());
        keys.extend(users.iter().map(|u| self.user_key(*u)));
        let counts: Vec<i64> = self
            .live_counts
            .evalsha_with_reload(&self.client, keys, ())
            .await
            .map_err(unavailable)?;
        Ok(counts.into_iter().map(|c| c > 0).collect())
    }

    async fn presence_heartbeat(&self, ttl: Duration) -> Result<()> {
        let ttl_ms = millis(ttl);
        self.presence.ttl_ms.store(ttl_ms, Ordering::Relaxed);
        let synced: i64 = self
            .heartbeat
            .evalsha_with_reload(
                &self.client,
                vec![self.gateways_key(), self.synced_key()],
                vec![
                    Value::from(self.presence.gateway.clone()),
                    Value::from(ttl_ms),
                ],
            )
            .await
            .map_err(unavailable)?;
        if synced == 0 || self.presence.dirty.swap(false, Ordering::Relaxed) {
            if let Err(error) = self.rewrite(ttl).await {
                self.presence.dirty.store(true, Ordering::Relaxed);
                return Err(error);
            }
        }
        Ok(())
    }

    async fn reap_presence(&self, max_users: usize) -> Result<Option<Vec<UserId>>> {
        let reaped: Vec<String> = self
            .reap
            .evalsha_with_reload(
                &self.client,
                self.gateways_key(),
                vec![
                    Value::from(self.presence_prefix()),
                    Value::from(i64::try_from(max_users.max(1)).unwrap_or(i64::MAX)),
                ],
            )
            .await
            .map_err(unavailable)?;
        let mut reaped = reaped.into_iter();
        let Some(gateway) = reaped.next() else {
            return Ok(None);
        };
        let users: Vec<UserId> = reaped.filter_map(|u| UserId::parse(&u).ok()).collect();
        tracing::info!(%gateway, offline = users.len(), "presence reaped from a crashed gateway");
        Ok(Some(users))
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
