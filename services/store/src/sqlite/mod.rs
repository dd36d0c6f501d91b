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
use crate::sql::rooms::{self as shared_rooms, mark_read_sql, public_rooms_sql};
use crate::sql::rows::{self, db_err, decode_all, decode_opt, event_cols, Columns};
use crate::sql::sessions::{self, rotating_token_sql};
use crate::sql::{users, Dialect, RowsAffected};
use crate::{
    EditMessage, Event, EventKind, MemberProfile, Membership, Message, NewMessage, NewRoom,
    NewSession, NewUser, Result, Role, Room, RoomPatch, RotateOutcome, Session, Store, StoreError,
    User, UserAuth, UserRoom,
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

/// Cuts a page fetched with `limit + 1` rows to `limit`; true if it was cut.
fn cut<T>(items: &mut Vec<T>, limit: u32) -> bool {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    more
}

async fn room_is_live(conn: &mut SqliteConnection, id: RoomId) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM rooms WHERE id = ?1 AND deleted_at IS NULL")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(db_err)?;
    Ok(row.is_some())
}

/// Takes the room's next seq. Called inside the write transaction that
/// inserts the event, so seqs are gapless: a rollback gives it back.
async fn next_seq(conn: &mut SqliteConnection, room: RoomId) -> Result<Seq> {
    let row =
        sqlx::query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq")
            .bind(room.to_string())
            .fetch_optional(conn)
            .await
            .map_err(db_err)?
            .ok_or(StoreError::NotFound)?;
    row.int("last_seq")
}

async fn find_message(
    conn: &mut SqliteConnection,
    room: RoomId,
    seq: Seq,
) -> Result<Option<Message>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        event_cols!(),
        " FROM events WHERE room_id = ?1 AND seq = ?2 AND kind = 'message'"
    ))
    .bind(room.to_string())
    .bind(seq)
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    decode_opt(row, rows::message)
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
        let mut tx = self.write_tx().await?;
        if !room_is_live(&mut tx, msg.room_id).await? {
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
             WHERE room_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3 AND kind = 'message'"
        ))
        .bind(msg.room_id.to_string())
        .bind(msg.sender_id.to_string())
        .bind(&msg.client_msg_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(original) = decode_opt(original, rows::message)? {
            return Ok((original, false));
        }

        let seq = next_seq(&mut tx, msg.room_id).await?;
        sqlx::query(
            "INSERT INTO events \
             (room_id, seq, kind, message_id, sender_id, body, client_msg_id, created_at, deleted) \
             VALUES (?1, ?2, 'message', ?3, ?4, ?5, ?6, ?7, 0)",
        )
        .bind(msg.room_id.to_string())
        .bind(seq)
        .bind(msg.id.to_string())
        .bind(msg.sender_id.to_string())
        .bind(&msg.body)
        .bind(&msg.client_msg_id)
        .bind(msg.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
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
        let mut tx = self.write_tx().await?;
        if !room_is_live(&mut tx, edit.room_id).await? {
            return Err(StoreError::NotFound);
        }
        let mut message = match find_message(&mut tx, edit.room_id, edit.target).await? {
            Some(m) if !m.deleted => m,
            _ => return Err(StoreError::NotFound),
        };
        if message.sender_id != edit.editor {
            return Err(StoreError::Forbidden);
        }
        sqlx::query("UPDATE events SET body = ?1, edited_at = ?2 WHERE room_id = ?3 AND seq = ?4")
            .bind(&edit.body)
            .bind(edit.now)
            .bind(edit.room_id.to_string())
            .bind(edit.target)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let seq = next_seq(&mut tx, edit.room_id).await?;
        sqlx::query(
            "INSERT INTO events \
             (room_id, seq, kind, message_id, sender_id, body, created_at, edited_at, deleted, target_seq) \
             VALUES (?1, ?2, 'message_edited', ?3, ?4, ?5, ?6, ?6, 0, ?7)",
        )
        .bind(edit.room_id.to_string())
        .bind(seq)
        .bind(message.id.to_string())
        .bind(edit.editor.to_string())
        .bind(&edit.body)
        .bind(edit.now)
        .bind(edit.target)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
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
        let mut tx = self.write_tx().await?;
        if !room_is_live(&mut tx, room).await? {
            return Err(StoreError::NotFound);
        }
        let message = match find_message(&mut tx, room, target).await? {
            Some(m) if !m.deleted => m,
            _ => return Err(StoreError::NotFound),
        };
        sqlx::query("UPDATE events SET deleted = 1, body = '' WHERE room_id = ?1 AND seq = ?2")
            .bind(room.to_string())
            .bind(target)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        // The bodies its edits set go too: a tombstone keeps no text.
        sqlx::query(
            "UPDATE events SET body = '' \
             WHERE room_id = ?1 AND target_seq = ?2 AND kind = 'message_edited'",
        )
        .bind(room.to_string())
        .bind(target)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let seq = next_seq(&mut tx, room).await?;
        sqlx::query(
            "INSERT INTO events \
             (room_id, seq, kind, message_id, sender_id, body, created_at, deleted, target_seq) \
             VALUES (?1, ?2, 'message_deleted', ?3, ?4, '', ?5, 0, ?6)",
        )
        .bind(room.to_string())
        .bind(seq)
        .bind(message.id.to_string())
        .bind(by.to_string())
        .bind(now)
        .bind(target)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
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
        let mut conn = self.reader.acquire().await.map_err(db_err)?;
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
                 WHERE room_id = ?1 AND kind = 'message' AND seq > ?2 \
                 AND (?3 IS NULL OR seq < ?3) \
                 ORDER BY seq ASC LIMIT ?4"
            ))
            .bind(room.to_string())
            .bind(after)
            .bind(before)
            .bind(fetch)
            .fetch_all(&self.reader)
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
                 WHERE room_id = ?1 AND kind = 'message' AND (?2 IS NULL OR seq < ?2) \
                 ORDER BY seq DESC LIMIT ?3"
            ))
            .bind(room.to_string())
            .bind(before)
            .bind(fetch)
            .fetch_all(&self.reader)
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
            " FROM events WHERE room_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"
        ))
        .bind(room.to_string())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
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
