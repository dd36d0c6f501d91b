//! The Postgres backend of [`Store`]: the distributed mode's source of truth,
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
//!   taken from `rooms.last_seq` in the statement that inserts the event, so
//!   seqs have no gaps (a rollback gives the seq back) and no repeats.
//! - The dedupe lookup of `append_message` runs after the lock is taken, in
//!   a statement of its own (a fresh snapshot): a concurrent identical send
//!   waits for the first to commit and then finds it. The partial unique
//!   index `events_dedupe` backs this up.
//! - Rows a write depends on are locked too: the user (`FOR SHARE`) when a
//!   session, room or membership is made for them, so `delete_user` cannot
//!   slip in between the check and the insert; the refresh token
//!   (`FOR UPDATE`) when it is rotated, so two rotations of one token are
//!   one rotation and one reuse, as on SQLite.
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
//! Only runtime-checked queries with bound parameters; rows are decoded in
//! `rows`, where a corrupt row becomes a `Backend` error.

mod rooms;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{RoomId, Seq, SessionId, UserId};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, Transaction};
use uuid::Uuid;

use crate::backend::Backend;
use crate::sql::rooms::{self as shared_rooms, mark_read_sql, public_rooms_sql};
use crate::sql::rows::{self, db_err, decode_all, decode_opt, event_cols, Columns};
use crate::sql::sessions::{self, rotating_token_sql};
use crate::sql::{users, Dialect, RowsAffected};
use crate::{
    EditMessage, Event, EventKind, MemberProfile, Membership, Message, NewMessage, NewRoom,
    NewSession, NewUser, Result, Role, Room, RoomPatch, RotateOutcome, Session, Store, StoreError,
    User, UserAuth, UserRoom,
};

/// Pool size unless the URL says `max_connections=N`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long a query waits for a pooled connection (or for a new one to
/// connect) before it fails instead of hanging the request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest schema name Postgres keeps whole (NAMEDATALEN - 1).
const MAX_SCHEMA_LEN: usize = 63;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Dialect for Postgres {
    type Uuid = Uuid;
    const LIVE_USER: &'static str =
        "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL FOR SHARE";
    const ROTATING_TOKEN: &'static str = rotating_token_sql!(" FOR UPDATE OF t");
    const LIVE_ROOM: &'static str =
        "SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL FOR SHARE";
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
}

impl PgStore {
    /// Connects to the database at `url` (see the module docs for the URL
    /// and its `schema` and `max_connections` parameters), creating the
    /// schema if one is named and missing, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
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
        Ok(Self { pool })
    }
}

impl Backend for PgStore {
    type Db = Postgres;

    fn reader(&self) -> impl Executor<'_, Database = Postgres> {
        &self.pool
    }

    fn writer(&self) -> impl Executor<'_, Database = Postgres> {
        &self.pool
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db_err)
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

/// Cuts a page fetched with `limit + 1` rows to `limit`; true if it was cut.
fn cut<T>(items: &mut Vec<T>, limit: u32) -> bool {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    more
}

/// Takes the room's write lock for its event log, or false if the room is
/// not live. `NO KEY UPDATE` conflicts with itself (writers of the room
/// queue here) but not with the key-share locks that foreign-key checks
/// take, so inserting a membership does not wait for it.
async fn lock_room_log(conn: &mut PgConnection, id: RoomId) -> Result<bool> {
    let row =
        sqlx::query("SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE")
            .bind(id.0)
            .fetch_optional(conn)
            .await
            .map_err(db_err)?;
    Ok(row.is_some())
}

/// One row of the event log, before it has a seq.
struct NewEvent<'a> {
    room_id: RoomId,
    kind: &'static str,
    message_id: Uuid,
    sender_id: UserId,
    body: &'a str,
    client_msg_id: Option<&'a str>,
    created_at: i64,
    edited_at: Option<i64>,
    target_seq: Option<Seq>,
}

/// Takes the room's next seq and inserts the event with it, in one
/// statement. Called with the room's log lock held (`lock_room_log`), inside
/// the transaction that commits the event: a rollback gives the seq back.
async fn insert_event(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<Seq> {
    let row = sqlx::query(
        "WITH bumped AS ( \
             UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq \
         ) \
         INSERT INTO events (room_id, seq, kind, message_id, sender_id, body, client_msg_id, \
                             created_at, edited_at, deleted, target_seq) \
         SELECT $1, last_seq, $2, $3, $4, $5, $6, $7, $8, FALSE, $9 FROM bumped \
         RETURNING seq",
    )
    .bind(event.room_id.0)
    .bind(event.kind)
    .bind(event.message_id)
    .bind(event.sender_id.0)
    .bind(event.body)
    .bind(event.client_msg_id)
    .bind(event.created_at)
    .bind(event.edited_at)
    .bind(event.target_seq)
    .fetch_optional(conn)
    .await
    .map_err(db_err)?
    .ok_or(StoreError::NotFound)?;
    row.int("seq")
}

async fn find_message(conn: &mut PgConnection, room: RoomId, seq: Seq) -> Result<Option<Message>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        event_cols!(),
        " FROM events WHERE room_id = $1 AND seq = $2 AND kind = 'message'"
    ))
    .bind(room.0)
    .bind(seq)
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    decode_opt(row, rows::message)
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // ---- users ----

    async fn create_user(&self, user: &NewUser) -> Result<User> {
        users::create(self, user).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserAuth>> {
        users::by_username(self, username).await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserAuth>> {
        users::by_id(self, id).await
    }

    async fn update_display_name(&self, id: UserId, display_name: &str) -> Result<User> {
        users::update_display_name(self, id, display_name).await
    }

    async fn set_password_hash(&self, id: UserId, hash: &str) -> Result<()> {
        users::set_password_hash(self, id, hash).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
    async fn delete_user(&self, id: UserId, now: i64) -> Result<Vec<SessionId>> {
        users::delete(self, id, now).await
    }

    // ---- sessions and refresh tokens ----

    async fn create_session(&self, session: &NewSession, token_hash: &[u8]) -> Result<()> {
        sessions::create(self, session, token_hash).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        now: i64,
    ) -> Result<RotateOutcome> {
        sessions::rotate_refresh_token(self, old_hash, new_hash, now).await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>> {
        sessions::get(self, id).await
    }

    async fn list_sessions(&self, user_id: UserId) -> Result<Vec<Session>> {
        sessions::list(self, user_id).await
    }

    async fn revoke_session(&self, user_id: UserId, id: SessionId, now: i64) -> Result<bool> {
        sessions::revoke(self, user_id, id, now).await
    }

    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        keep: Option<SessionId>,
        now: i64,
    ) -> Result<Vec<SessionId>> {
        sessions::revoke_all(self, user_id, keep, now).await
    }

    async fn sessions_revoked_since(&self, since: i64) -> Result<Vec<SessionId>> {
        sessions::revoked_since(self, since).await
    }

    // ---- rooms and memberships ----

    async fn create_room(&self, room: &NewRoom, owner: UserId) -> Result<Room> {
        shared_rooms::create(self, room, owner).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room.id))]
    async fn open_dm(&self, room: &NewRoom, a: UserId, b: UserId) -> Result<Room> {
        self::rooms::open_dm(self, room, a, b).await
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        shared_rooms::get(self, id).await
    }

    async fn update_room(&self, id: RoomId, patch: &RoomPatch) -> Result<Room> {
        shared_rooms::update(self, id, patch).await
    }

    async fn delete_room(&self, id: RoomId, now: i64) -> Result<()> {
        shared_rooms::delete(self, id, now).await
    }

    async fn list_public_rooms(
        &self,
        q: &str,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<Room>> {
        shared_rooms::list_public(self, q, after, limit).await
    }

    async fn list_user_rooms(
        &self,
        user_id: UserId,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<UserRoom>> {
        shared_rooms::list_for_user(self, user_id, after, limit).await
    }

    async fn user_room_ids(&self, user_id: UserId) -> Result<Vec<RoomId>> {
        shared_rooms::ids_for_user(self, user_id).await
    }

    async fn membership(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        shared_rooms::membership(self, room, user).await
    }

    async fn room_access(
        &self,
        room: RoomId,
        user: UserId,
    ) -> Result<Option<(Room, Option<Membership>)>> {
        shared_rooms::access(self, room, user).await
    }

    async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
        now: i64,
    ) -> Result<(Membership, bool)> {
        shared_rooms::add_member(self, room, user, role, now).await
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        shared_rooms::remove_member(self, room, user).await
    }

    async fn list_members(
        &self,
        room: RoomId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<MemberProfile>> {
        shared_rooms::list_members(self, room, after, limit).await
    }

    async fn mark_read(&self, room: RoomId, user: UserId, seq: Seq) -> Result<()> {
        shared_rooms::mark_read(self, room, user, seq).await
    }

    // ---- the event log ----

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(room_id = %msg.room_id, client_msg_id = %msg.client_msg_id)
    )]
    async fn append_message(&self, msg: &NewMessage) -> Result<(Message, bool)> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // The lock comes first: a concurrent send of the same client_msg_id
        // waits here until ours commits, then finds it below.
        if !lock_room_log(&mut tx, msg.room_id).await? {
            return Err(StoreError::NotFound);
        }
        if shared_rooms::find_membership(&mut *tx, msg.room_id, msg.sender_id)
            .await?
            .is_none()
        {
            return Err(StoreError::NotMember);
        }
        let original = sqlx::query(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events \
             WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3 AND kind = 'message'"
        ))
        .bind(msg.room_id.0)
        .bind(msg.sender_id.0)
        .bind(&msg.client_msg_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(original) = decode_opt(original, rows::message)? {
            return Ok((original, false));
        }

        let seq = insert_event(
            &mut tx,
            &NewEvent {
                room_id: msg.room_id,
                kind: "message",
                message_id: msg.id.0,
                sender_id: msg.sender_id,
                body: &msg.body,
                client_msg_id: Some(&msg.client_msg_id),
                created_at: msg.created_at,
                edited_at: None,
                target_seq: None,
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        tracing::debug!(seq, "message appended");
        Ok((
            Message {
                room_id: msg.room_id,
                seq,
                id: msg.id,
                sender_id: msg.sender_id,
                body: msg.body.clone(),
                client_msg_id: msg.client_msg_id.clone(),
                created_at: msg.created_at,
                edited_at: None,
                deleted: false,
            },
            true,
        ))
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(room_id = %edit.room_id, target_seq = edit.target)
    )]
    async fn edit_message(&self, edit: &EditMessage) -> Result<(Event, Message)> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if !lock_room_log(&mut tx, edit.room_id).await? {
            return Err(StoreError::NotFound);
        }
        let mut message = match find_message(&mut tx, edit.room_id, edit.target).await? {
            Some(m) if !m.deleted => m,
            _ => return Err(StoreError::NotFound),
        };
        if message.sender_id != edit.editor {
            return Err(StoreError::Forbidden);
        }
        sqlx::query("UPDATE events SET body = $1, edited_at = $2 WHERE room_id = $3 AND seq = $4")
            .bind(&edit.body)
            .bind(edit.now)
            .bind(edit.room_id.0)
            .bind(edit.target)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let seq = insert_event(
            &mut tx,
            &NewEvent {
                room_id: edit.room_id,
                kind: "message_edited",
                message_id: message.id.0,
                sender_id: edit.editor,
                body: &edit.body,
                client_msg_id: None,
                created_at: edit.now,
                edited_at: Some(edit.now),
                target_seq: Some(edit.target),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;

        message.body.clone_from(&edit.body);
        message.edited_at = Some(edit.now);
        let event = Event {
            room_id: edit.room_id,
            seq,
            kind: EventKind::Edited {
                target_seq: edit.target,
                body: edit.body.clone(),
                sender_id: edit.editor,
                edited_at: edit.now,
            },
        };
        Ok((event, message))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room, target_seq = target))]
    async fn delete_message(
        &self,
        room: RoomId,
        target: Seq,
        by: UserId,
        now: i64,
    ) -> Result<Event> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if !lock_room_log(&mut tx, room).await? {
            return Err(StoreError::NotFound);
        }
        let message = match find_message(&mut tx, room, target).await? {
            Some(m) if !m.deleted => m,
            _ => return Err(StoreError::NotFound),
        };
        sqlx::query("UPDATE events SET deleted = TRUE, body = '' WHERE room_id = $1 AND seq = $2")
            .bind(room.0)
            .bind(target)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        // The bodies its edits set go too: a tombstone keeps no text.
        sqlx::query(
            "UPDATE events SET body = '' \
             WHERE room_id = $1 AND target_seq = $2 AND kind = 'message_edited'",
        )
        .bind(room.0)
        .bind(target)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let seq = insert_event(
            &mut tx,
            &NewEvent {
                room_id: room,
                kind: "message_deleted",
                message_id: message.id.0,
                sender_id: by,
                body: "",
                client_msg_id: None,
                created_at: now,
                edited_at: None,
                target_seq: Some(target),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Event {
            room_id: room,
            seq,
            kind: EventKind::Deleted {
                target_seq: target,
                deleted_by: by,
                at: now,
            },
        })
    }

    async fn message(&self, room: RoomId, seq: Seq) -> Result<Option<Message>> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        find_message(&mut conn, room, seq).await
    }

    async fn list_messages(
        &self,
        room: RoomId,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        let fetch = i64::from(limit) + 1;
        if let Some(after) = after {
            // Forward from `after`, oldest first.
            let rows = sqlx::query(concat!(
                "SELECT ",
                event_cols!(),
                " FROM events \
                 WHERE room_id = $1 AND kind = 'message' AND seq > $2 \
                 AND ($3::bigint IS NULL OR seq < $3) \
                 ORDER BY seq ASC LIMIT $4"
            ))
            .bind(room.0)
            .bind(after)
            .bind(before)
            .bind(fetch)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            let mut messages = decode_all(&rows, rows::message)?;
            let more = cut(&mut messages, limit);
            Ok((messages, more))
        } else {
            // Backward from `before` (or the end): the newest page, then
            // turned to ascending order.
            let rows = sqlx::query(concat!(
                "SELECT ",
                event_cols!(),
                " FROM events \
                 WHERE room_id = $1 AND kind = 'message' AND ($2::bigint IS NULL OR seq < $2) \
                 ORDER BY seq DESC LIMIT $3"
            ))
            .bind(room.0)
            .bind(before)
            .bind(fetch)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            let mut messages = decode_all(&rows, rows::message)?;
            let more = cut(&mut messages, limit);
            messages.reverse();
            Ok((messages, more))
        }
    }

    async fn list_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<(Vec<Event>, bool)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
        ))
        .bind(room.0)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut events = decode_all(&rows, rows::event)?;
        let more = cut(&mut events, limit);
        Ok((events, more))
    }
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
