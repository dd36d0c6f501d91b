//! The Postgres backend of [`Store`](crate::Store): the distributed mode's source of truth,
//! shared by every `auth` and `room` replica.
//!
//! One [`PgPool`] per process; any number of processes on one database. The
//! semantics are the SQLite backend's, decision for decision; what differs
//! is how writers are kept apart, since here they run in parallel, in
//! several processes, under `READ COMMITTED`:
//!
//! - Every write to a room's event log (append, edit, delete) first locks
//!   the room's row (`FOR NO KEY UPDATE`). Writers of one room queue on that
//!   lock; writers of different rooms never meet. Holding it, the seq is
//!   taken from `rooms.last_seq` in the statement that inserts the event
//!   (`log.rs`), so seqs have no gaps (a rollback gives the seq back) and no
//!   repeats.
//! - Message appends are group-committed (`crate::group_commit`, two
//!   writers per store): a batch locks all its rooms in one statement, in
//!   id order, so batches of two replicas sharing rooms queue on the first
//!   shared room instead of deadlocking.
//! - The dedupe lookup of `append_message` runs after the lock is taken, in
//!   a statement of its own (a fresh snapshot): a concurrent identical send
//!   waits for the first to commit and then finds it. The partial unique
//!   index `events_dedupe` backs this up.
//! - Rows a write depends on are locked too: the user (`FOR SHARE`) when a
//!   session, room or membership is made for them, so `delete_user` cannot
//!   slip in between the check and the insert; the refresh token
//!   (`FOR UPDATE`) when it is rotated, so two rotations of one token are
//!   one rotation and one reuse, as on SQLite.
//! - Two processes opening the same DM meet in the `dm_key` unique index
//!   (`rooms.rs`).
//! - Role changes and bans take the room's row lock as log writers do
//!   (`sql/roles.rs`): two ownership transfers of one room queue, and the
//!   second finds its caller no longer the owner. Adding a member share-locks
//!   the row, so a ban and a join of the same user cannot cross. Removing a
//!   member is one `DELETE … AND role <> 'owner'`, which Postgres re-checks
//!   against a transfer committed while it waited.
//!
//! # URL
//!
//! `postgres://user[:password]@host[:port]/database[?params]` (or
//! `postgresql://`), with every parameter sqlx knows (`sslmode`, `options`,
//! …) plus two of ours, which are taken out before sqlx sees the URL:
//!
//! - `max_connections=N`: the pool size (default [`DEFAULT_MAX_CONNECTIONS`]).
//! - `schema=NAME`: use (and create if missing) the schema `NAME`. Every
//!   connection starts with `search_path` set to it alone, so the tables and
//!   sqlx's `_sqlx_migrations` live there. This is how tests isolate
//!   themselves (a fresh `test_<uuid>` schema each) and how several
//!   deployments can share one database. `NAME` must be a plain lowercase
//!   identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes): it is the one thing
//!   spliced into SQL (`CREATE SCHEMA`), as a quoted identifier, because an
//!   identifier cannot be a bound parameter; it comes from configuration,
//!   never from a client.
//!
//! A `search_path` passed through sqlx's `options` (`?options=-csearch_path%3DNAME`)
//! works as well, but that schema must exist already.
//!
//! # Migrations
//!
//! `migrations/postgres`, embedded, run by `connect`. Replicas may start at
//! once: sqlx's Postgres migrator (0.8) holds `pg_advisory_lock` (keyed on
//! the database name) around the whole run, so one applies them and the
//! others wait, then find nothing to do. Each migration runs in a
//! transaction with its bookkeeping row.
//!
//! # Code
//!
//! The statements, how they are bound and how their rows are decoded are
//! shared with SQLite in `crate::sql` (only runtime-checked queries with
//! bound parameters; a corrupt row is a `Backend` error). This module holds
//! what is Postgres's own: connecting, the `Dialect` constants (the row
//! locks above, `ILIKE`, `GREATEST`/`LEAST`) and the `Backend` impl, with
//! `log.rs` (taking a seq) and `rooms.rs` (opening a DM).

mod log;
mod rooms;

use std::str::FromStr;
use std::time::Duration;

use chat_core::{Seq, UserId};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, Transaction};
use uuid::Uuid;

use crate::backend::Backend;
use crate::group_commit::GroupCommit;
use crate::sql::event::NewEvent;
use crate::sql::rooms::{mark_read_sql, public_rooms_sql};
use crate::sql::rows::db_err;
use crate::sql::sessions::rotating_token_sql;
use crate::sql::{Dialect, RowsAffected};
use crate::{NewRoom, Result, Room, StoreError, StoreOptions};

/// Pool size unless the URL says `max_connections=N`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// Group-commit writers per store: while one commits, the next takes the
/// appends queued meanwhile (every writer holds a pooled connection).
const GROUP_COMMIT_WRITERS: usize = 2;
/// How long a query waits for a pooled connection (or for a new one to
/// connect) before it fails instead of hanging the request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest schema name Postgres keeps whole (NAMEDATALEN - 1).
const MAX_SCHEMA_LEN: usize = 63;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Postgres's spelling of the statements that differ, and its row locks
/// (see the module docs).
impl Dialect for Postgres {
    type Uuid = Uuid;
    const LIVE_USER: &'static str =
        "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL FOR SHARE";
    const ROTATING_TOKEN: &'static str = rotating_token_sql!(" FOR UPDATE OF t");
    const LIVE_ROOM: &'static str =
        "SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL FOR SHARE";
    /// `NO KEY UPDATE` conflicts with itself (writers of the room queue
    /// here) but not with the key-share locks that foreign-key checks take,
    /// so inserting a membership does not wait for it.
    const ROOM_LOG: &'static str =
        "SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE";
    const NUMBERED: bool = true;
    const ROOMS_LOG: &'static str = "SELECT id FROM rooms \
         WHERE deleted_at IS NULL AND id IN ({ids}) ORDER BY id FOR NO KEY UPDATE";
    const PUBLIC_ROOMS: &'static str = public_rooms_sql!("ILIKE");
    const MARK_READ: &'static str = mark_read_sql!("GREATEST", "LEAST");
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}

/// The Store on a Postgres database (see the module docs for the locking).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Message appends, committed in batches by [`GROUP_COMMIT_WRITERS`].
    group: Option<GroupCommit>,
}

impl PgStore {
    /// Connects to the database at `url` (see the module docs for the URL
    /// and its `schema` and `max_connections` parameters), creating the
    /// schema if one is named and missing, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Self::connect`] with `store` options.
    pub async fn connect_with(url: &str, store: &StoreOptions) -> Result<Self> {
        let url = StoreUrl::parse(url)?;
        // The message of a URL parse error never repeats the URL, which may
        // hold a password.
        let mut options = PgConnectOptions::from_str(&url.sqlx_url)
            .map_err(|e| StoreError::Config(format!("bad Postgres URL: {e}")))?;
        if let Some(schema) = &url.schema {
            ensure_schema(&options, schema).await?;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(url.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(StoreError::backend)?;
        MIGRATOR.run(&pool).await.map_err(StoreError::backend)?;
        tracing::debug!(
            schema = url.schema.as_deref().unwrap_or("(search_path)"),
            max_connections = url.max_connections,
            "postgres store ready"
        );
        let direct = Self { pool, group: None };
        let writers = GROUP_COMMIT_WRITERS.min(url.max_connections as usize);
        Ok(Self {
            group: Some(GroupCommit::start(
                direct.clone(),
                writers,
                store.append_queue,
                false,
            )),
            ..direct
        })
    }
}

impl Backend for PgStore {
    type Db = Postgres;

    fn group_commit(&self) -> Option<&GroupCommit> {
        self.group.as_ref()
    }

    fn reader(&self) -> impl Executor<'_, Database = Postgres> {
        &self.pool
    }

    fn writer(&self) -> impl Executor<'_, Database = Postgres> {
        &self.pool
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db_err)
    }

    async fn insert_event(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<Seq> {
        log::insert_event(conn, event).await
    }

    async fn find_or_create_dm(&self, room: &NewRoom, a: UserId, b: UserId) -> Result<Room> {
        rooms::open_dm(self, room, a, b).await
    }
}

/// A store URL split into what sqlx gets and what we act on ourselves.
#[derive(Debug, PartialEq, Eq)]
struct StoreUrl {
    sqlx_url: String,
    schema: Option<String>,
    max_connections: u32,
}

impl StoreUrl {
    fn parse(url: &str) -> Result<Self> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let mut schema = None;
        let mut max_connections = DEFAULT_MAX_CONNECTIONS;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "schema" => {
                    if !is_plain_identifier(value) {
                        return Err(StoreError::Config(format!(
                            "schema {value:?} in the Postgres URL must match \
                             [a-z_][a-z0-9_]* (at most {MAX_SCHEMA_LEN} bytes)"
                        )));
                    }
                    schema = Some(value.to_owned());
                }
                "max_connections" => {
                    max_connections =
                        value.parse().ok().filter(|&n: &u32| n > 0).ok_or_else(|| {
                            StoreError::Config(format!(
                                "max_connections {value:?} in the Postgres URL must be a \
                                 positive integer"
                            ))
                        })?;
                }
                "" => {}
                _ => kept.push(pair),
            }
        }
        let sqlx_url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(Self {
            sqlx_url,
            schema,
            max_connections,
        })
    }
}

fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_SCHEMA_LEN
}

/// Creates `schema` unless it exists. Several processes may do this at once
/// on a fresh schema, and `CREATE SCHEMA IF NOT EXISTS` is not safe against
/// that race (one of them can still fail on the catalog's unique index), so
/// "it exists now" errors count as success.
async fn ensure_schema(options: &PgConnectOptions, schema: &str) -> Result<()> {
    let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
        .await
        .map_err(|_| {
            StoreError::Config(format!(
                "timed out after {ACQUIRE_TIMEOUT:?} connecting to Postgres"
            ))
        })?
        .map_err(StoreError::backend)?;
    // Checked first so a role that may not CREATE in the database can still
    // use a schema made for it.
    let exists = sqlx::query("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(&mut conn)
        .await
        .map_err(StoreError::backend)?
        .is_some();
    if !exists {
        // `schema` is a checked plain identifier (see `StoreUrl::parse`).
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        match sqlx::query(&create).execute(&mut conn).await {
            Ok(_) => tracing::info!(schema, "created Postgres schema"),
            Err(sqlx::Error::Database(d))
                if matches!(d.code().as_deref(), Some("42P06" | "23505")) => {}
            Err(e) => return Err(StoreError::backend(e)),
        }
    }
    conn.close().await.map_err(StoreError::backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_url_parameters_are_taken_out_and_the_rest_kept() {
        let url = StoreUrl::parse(
            "postgres://u:p@h:5432/db?sslmode=disable&schema=test_1&max_connections=3&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url,
            StoreUrl {
                sqlx_url: "postgres://u:p@h:5432/db?sslmode=disable&application_name=x".into(),
                schema: Some("test_1".into()),
                max_connections: 3,
            }
        );
        let url = StoreUrl::parse("postgresql://h/db?schema=_s").unwrap();
        assert_eq!(url.sqlx_url, "postgresql://h/db");
        assert_eq!(url.max_connections, DEFAULT_MAX_CONNECTIONS);
        let url = StoreUrl::parse("postgres://h/db").unwrap();
        assert_eq!(
            (url.sqlx_url.as_str(), url.schema),
            ("postgres://h/db", None)
        );
    }

    #[test]
    fn only_plain_schema_names_and_positive_pool_sizes_pass() {
        for bad in [
            "schema=",
            "schema=Upper",
            "schema=1abc",
            "schema=a-b",
            "schema=a%22b",
            "schema=\"x\"",
            "max_connections=0",
            "max_connections=lots",
        ] {
            let res = StoreUrl::parse(&format!("postgres://h/db?{bad}"));
            assert!(matches!(res, Err(StoreError::Config(_))), "{bad}: {res:?}");
        }
        let long = "a".repeat(MAX_SCHEMA_LEN + 1);
        assert!(StoreUrl::parse(&format!("postgres://h/db?schema={long}")).is_err());
        assert!(StoreUrl::parse(&format!("postgres://h/db?schema={}", &long[1..])).is_ok());
    }
}
