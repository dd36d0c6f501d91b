//! The auth service's tunables: [`AuthConfig`], and [`AuthArgs`], the flags
//! that set them (shared by `auth` and `chat`).

use crate::password::{self, HashCost};
use std::time::Duration;

/// A session's absolute lifetime by default: 30 days.
const DEFAULT_SESSION_MAX_AGE_SECS: u64 = 30 * 24 * 3600;
/// How long a refresh token may sit unused by default: 7 days.
const DEFAULT_SESSION_IDLE_SECS: u64 = 7 * 24 * 3600;
/// The longest either session limit may be set to: 10 years.
const MAX_SESSION_LIMIT_SECS: u64 = 10 * 365 * 24 * 3600;

/// Either session limit's flag: 0 (off) to [`MAX_SESSION_LIMIT_SECS`].
fn session_limit_secs() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(0..=MAX_SESSION_LIMIT_SECS)
}

/// Tunables of the auth service.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub access_ttl: Duration,
    pub hash_cost: HashCost,
    /// Login attempts per (client address, username) per window before
    /// 429; also wrong current passwords per user.
    pub login_max_failures: u32,
    /// Failed logins per client address (any username) per window.
    pub login_max_failures_per_addr: u32,
    /// Login attempts per username from every address per window: the
    /// ceiling for a guesser with many addresses.
    pub login_max_attempts_per_account: u32,
    pub login_window: Duration,
    /// Signups per client address per `signup_window` (0 = unlimited).
    pub signup_limit: u32,
    pub signup_window: Duration,
    /// Password hashes and verifies running at once.
    pub hash_concurrency: usize,
    /// Hashes waiting for a slot; beyond them a request is refused at once.
    pub hash_queue: usize,
    /// How long a spent refresh token still gets the pair it was rotated to.
    pub refresh_grace: Duration,
    /// A session ends this long after sign-in, however often it refreshes
    /// (zero: never).
    pub session_max_age: Duration,
    /// A refresh token unused for this long is refused and its session
    /// ends (zero: never).
    pub session_idle: Duration,
    /// Lets gateways call on a connected user's behalf (see [`Verifier`]).
    pub internal_secret: Option<String>,
    /// How often auth checks that the revocation list was not emptied (a
    /// Redis flush or restart) and re-seeds it from the store.
    pub reseed_check: Duration,
}

impl AuthConfig {
    /// The session lifetimes, as the store takes them.
    pub fn session_limits(&self) -> chat_store::SessionLimits {
        chat_store::SessionLimits {
            max_age_ms: self.session_max_age.as_millis() as i64,
            idle_ms: self.session_idle.as_millis() as i64,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(900),
            hash_cost: HashCost::default(),
            login_max_failures: 10,
            login_max_failures_per_addr: 100,
            login_max_attempts_per_account: 1000,
            login_window: Duration::from_secs(300),
            signup_limit: 20,
            signup_window: Duration::from_secs(3600),
            hash_concurrency: password::default_concurrency(),
            hash_queue: 4 * password::default_concurrency(),
            refresh_grace: Duration::from_secs(10),
            reseed_check: Duration::from_millis(DEFAULT_RESEED_CHECK_MS),
            session_max_age: Duration::from_secs(DEFAULT_SESSION_MAX_AGE_SECS),
            session_idle: Duration::from_secs(DEFAULT_SESSION_IDLE_SECS),
            internal_secret: None,
        }
    }
}

/// The auth service's tunables as flags (shared by `auth` and `chat`).
#[derive(Clone, Debug, clap::Args)]
pub struct AuthArgs {
    /// Access token lifetime in seconds.
    #[arg(
        long = "access-token-ttl",
        env = "CHAT_ACCESS_TOKEN_TTL",
        default_value_t = 900
    )]
    pub access_token_ttl_secs: u64,

    /// argon2id memory cost in KiB.
    #[arg(long, env = "CHAT_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub argon2_memory_kib: u32,

    /// argon2id iterations.
    #[arg(long, env = "CHAT_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Login attempts per client address and username in 5 minutes before
    /// 429 (counted before the password is checked; a success clears
    /// them), and wrong current passwords per user on a password change or
    /// account deletion. A guesser elsewhere does not lock the user out.
    #[arg(long, env = "CHAT_LOGIN_MAX_FAILURES", default_value_t = 10)]
    pub login_max_failures: u32,

    /// Failed logins per client address, whatever the username, in 5
    /// minutes before 429.
    #[arg(long, env = "CHAT_LOGIN_MAX_FAILURES_PER_ADDR", default_value_t = 100)]
    pub login_max_failures_per_addr: u32,

    /// Login attempts per username from every address together in 5
    /// minutes before 429: the ceiling for a guesser with many addresses
    /// (a success by the user clears it).
    #[arg(
        long,
        env = "CHAT_LOGIN_MAX_ATTEMPTS_PER_ACCOUNT",
        default_value_t = 1000
    )]
    pub login_max_attempts_per_account: u32,

    /// Signups per client address per hour before 429 (0: unlimited).
    #[arg(long, env = "CHAT_SIGNUP_LIMIT", default_value_t = 20)]
    pub signup_limit: u32,

    /// Password hashes and verifies that may run at once, each holding
    /// argon2's memory (--argon2-memory-kib); default: the number of cores.
    #[arg(long, env = "CHAT_HASH_CONCURRENCY", default_value_t = password::default_concurrency())]
    pub hash_concurrency: usize,

    /// Password hashes and verifies (signups, logins, password checks)
    /// that may wait for a slot; beyond them the answer is 429 at once.
    /// Default: 4 x --hash-concurrency.
    #[arg(long, env = "CHAT_HASH_QUEUE")]
    pub hash_queue: Option<usize>,

    /// Seconds during which a spent refresh token presented again (a second
    /// tab, a retry) gets the refresh token it was rotated to instead of
    /// revoking the session; 0 turns the grace off.
    #[arg(long, env = "CHAT_REFRESH_GRACE_SECS", default_value_t = 10)]
    pub refresh_grace_secs: u64,

    /// Seconds after login or signup at which a session ends, however often
    /// it refreshes: its refresh token is then refused with 401; 0: never.
    #[arg(
        long,
        env = "CHAT_SESSION_MAX_AGE_SECS",
        default_value_t = DEFAULT_SESSION_MAX_AGE_SECS,
        value_parser = session_limit_secs()
    )]
    pub session_max_age_secs: u64,

    /// Seconds a refresh token may go unused: after that it is refused
    /// with 401 and its session ends; 0: never.
    #[arg(
        long,
        env = "CHAT_SESSION_IDLE_SECS",
        default_value_t = DEFAULT_SESSION_IDLE_SECS,
        value_parser = session_limit_secs()
    )]
    pub session_idle_secs: u64,

    /// Seconds between reads of the stored signing keys: a replica starts
    /// signing with a key `auth rotate-key` made active, publishes new
    /// keys and retires old ones within this.
    #[arg(long, env = "CHAT_KEY_POLL_INTERVAL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub key_poll_interval_secs: u64,

    /// A token with a `kid` this replica does not hold (one another replica
    /// began signing with) makes it read the stored keys, at most once per
    /// this many seconds; such a token may wait up to this long.
    #[arg(long, env = "CHAT_KEYS_UNKNOWN_KID_INTERVAL_SECS", default_value_t = 2)]
    pub keys_unknown_kid_interval_secs: u64,

    /// How often, in milliseconds, auth checks that the revocation list in
    /// Redis still holds its seed marker and, when a flush or a restart
    /// without persistence emptied it, re-seeds it from the store. Until
    /// then every service asks the store instead, so nothing revoked comes
    /// back meanwhile; this only bounds how long that slower path lasts.
    #[arg(long, env = "CHAT_REVOCATION_RESEED_MS", default_value_t = DEFAULT_RESEED_CHECK_MS,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub revocation_reseed_ms: u64,
}

/// See `--revocation-reseed-ms`.
pub const DEFAULT_RESEED_CHECK_MS: u64 = 5_000;

impl AuthArgs {
    pub fn key_poll_interval(&self) -> Duration {
        Duration::from_secs(self.key_poll_interval_secs)
    }

    pub fn keys_unknown_kid_interval(&self) -> Duration {
        Duration::from_secs(self.keys_unknown_kid_interval_secs)
    }

    /// How long after a key stopped signing it is retired: every token it
    /// signed has expired by then (the access-token lifetime, plus a poll
    /// interval during which a replica may still sign with it, plus a
    /// minute for clocks and leeway).
    pub fn key_retire_after(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs + self.key_poll_interval_secs + 60)
    }

    /// The service configuration these flags describe.
    pub fn config(&self, internal_secret: Option<String>) -> AuthConfig {
        AuthConfig {
            access_ttl: Duration::from_secs(self.access_token_ttl_secs),
            hash_cost: HashCost {
                memory_kib: self.argon2_memory_kib,
                iterations: self.argon2_iterations,
            },
            login_max_failures: self.login_max_failures,
            login_max_failures_per_addr: self.login_max_failures_per_addr,
            login_max_attempts_per_account: self.login_max_attempts_per_account,
            login_window: Duration::from_secs(300),
            signup_limit: self.signup_limit,
            signup_window: Duration::from_secs(3600),
            hash_concurrency: self.hash_concurrency.max(1),
            hash_queue: self.hash_queue.unwrap_or(4 * self.hash_concurrency.max(1)),
            refresh_grace: Duration::from_secs(self.refresh_grace_secs),
            session_max_age: Duration::from_secs(self.session_max_age_secs),
            session_idle: Duration::from_secs(self.session_idle_secs),
            internal_secret,
            reseed_check: Duration::from_millis(self.revocation_reseed_ms),
        }
    }
}
