//! The SQLite backend of [`Store`]: the embedded mode's source of truth.
//!
//! Two pools share one database file in WAL mode. Every write goes through
//! the writer pool, which holds a single connection: writes are serialized
//! in-process, so our own writers never meet `SQLITE_BUSY`, and each write
//! transaction starts with `BEGIN IMMEDIATE` so that another process on the
//! same file waits (busy timeout) instead of failing mid-transaction. Reads
//! go through the reader pool and run beside the writer, as WAL allows.
//! `synchronous = FULL` makes a committed (acknowledged) message survive a
//! crash or power loss.
//!
//! Only runtime-checked queries with bound parameters; rows are decoded in
//! `rows`, where a corrupt row becomes a `Backend` error.

mod log;
mod rooms;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{RoomId, Seq, SessionId, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{Executor, Sqlite, Transaction};
use uuid::fmt::Hyphenated;

use crate::backend::Backend;
use crate::sql::log::{self as shared_log, NewEvent};
use crate::sql::rooms::{self as shared_rooms, mark_read_sql, public_rooms_sql};
use crate::sql::rows::db_err;
use crate::sql::sessions::{self, rotating_token_sql};
use crate::sql::{users, Dialect, RowsAffected};
use crate::{
    EditMessage, Event, MemberProfile, Membership, Message, NewMessage, NewRoom, NewSession,
    NewUser, Result, Role, Room, RoomPatch, RotateOutcome, Session, Store, StoreError, User,
    UserAuth, UserRoom,
};

/// Connections in the reader pool.
const READERS: u32 = 4;
/// How long a connection waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Dialect for Sqlite {
    type Uuid = Hyphenated;
    const LIVE_USER: &'static str = "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL";
    const ROTATING_TOKEN: &'static str = rotating_token_sql!("");
    const ROOM_LOG: &'static str = "SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL";
    const LIVE_ROOM: &'static str = "SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL";
    const PUBLIC_ROOMS: &'static str = public_rooms_sql!("LIKE");
    const MARK_READ: &'static str = mark_read_sql!("MAX", "MIN");
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}

/// The Store on one SQLite file (see the module docs for the pool design).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write, in order.
    writer: SqlitePool,
    /// Several connections: reads only.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) the database
    /// at `url` — `sqlite:///abs/path.db` or `sqlite://relative/path.db` —
    /// and applies the migrations. `sqlite::memory:` gives a private
    /// in-memory store on a single connection, for tests and demos.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        if url.contains(":memory:") || url.contains("mode=memory") {
            // An in-memory database lives as long as its connection: keep
            // exactly one, forever, for reads and writes alike.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
                .map_err(StoreError::backend)?;
            MIGRATOR.run(&pool).await.map_err(StoreError::backend)?;
            return Ok(Self {
                writer: pool.clone(),
                reader: pool,
            });
        }

        create_parent_dir(options.get_filename()).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::backend)?;
        MIGRATOR.run(&writer).await.map_err(StoreError::backend)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await
            .map_err(StoreError::backend)?;
        Ok(Self { writer, reader })
    }
}

impl Backend for SqliteStore {
    type Db = Sqlite;

    fn reader(&self) -> impl Executor<'_, Database = Sqlite> {
        &self.reader
    }

    fn writer(&self) -> impl Executor<'_, Database = Sqlite> {
        &self.writer
    }

    /// A write transaction on the writer connection. `IMMEDIATE` takes the
    /// write lock up front, so a transaction that reads before it writes
    /// cannot be refused the upgrade by another process.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    async fn insert_event(conn: &mut SqliteConnection, event: &NewEvent<'_>) -> Result<Seq> {
        log::insert_event(conn, event).await
    }
}

async fn create_parent_dir(file: &Path) -> Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::Config(format!("cannot create directory {}: {e}", dir.display()))
            })
        }
        _ => Ok(()),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
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
        shared_log::append(self, msg).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(room_id = %edit.room_id, target_seq = edit.target)
    )]
    async fn edit_message(&self, edit: &EditMessage) -> Result<(Event, Message)> {
        shared_log::edit(self, edit).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room, target_seq = target))]
    async fn delete_message(
        &self,
        room: RoomId,
        target: Seq,
        by: UserId,
        now: i64,
    ) -> Result<Event> {
        shared_log::delete(self, room, target, by, now).await
    }

    async fn message(&self, room: RoomId, seq: Seq) -> Result<Option<Message>> {
        shared_log::message(self, room, seq).await
    }

    async fn list_messages(
        &self,
        room: RoomId,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        shared_log::list_messages(self, room, before, after, limit).await
    }

    async fn list_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<(Vec<Event>, bool)> {
        shared_log::list_events(self, room, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_pools_are_durable_wal_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a/b/chat.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        for pool in [&store.writer, &store.reader] {
            let pragma = |name: &'static str| async move {
                let row = sqlx::query(name).fetch_one(pool).await.unwrap();
                sqlx::Row::get::<i64, _>(&row, 0)
            };
            let row = sqlx::query("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(sqlx::Row::get::<String, _>(&row, 0), "wal");
            // 2 = FULL: a commit is fsynced before it returns.
            assert_eq!(pragma("PRAGMA synchronous").await, 2);
            assert_eq!(pragma("PRAGMA foreign_keys").await, 1);
            assert_eq!(pragma("PRAGMA busy_timeout").await, 5000);
        }
        assert_eq!(store.writer.options().get_max_connections(), 1);
        assert!(store.reader.options().get_max_connections() > 1);
    }

    #[test]
    fn absolute_and_relative_urls_name_the_expected_file() {
        let file = |url: &str| {
            SqliteConnectOptions::from_str(url)
                .unwrap()
                .get_filename()
                .to_path_buf()
        };
        assert_eq!(
            file("sqlite:///abs/dir/chat.db"),
            Path::new("/abs/dir/chat.db")
        );
        assert_eq!(
            file("sqlite://rel/dir/chat.db"),
            Path::new("rel/dir/chat.db")
        );
    }
}
