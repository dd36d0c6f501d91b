//! The SQLite backend of [`Store`](crate::Store): the embedded mode's source of truth.
//!
//! Two pools share one database file in WAL mode. Every write goes through
//! the writer pool, which holds a single connection: writes are serialized
//! in-process, so our own writers never meet `SQLITE_BUSY`, and each write
//! transaction starts with `BEGIN IMMEDIATE` so that another process on the
//! same file waits (busy timeout) instead of failing mid-transaction. Reads
//! go through the reader pool and run beside the writer, as WAL allows.
//! `synchronous = FULL` makes a committed (acknowledged) message survive a
//! crash or power loss. Message appends are group-committed
//! (`crate::group_commit`): the one writer commits every append queued
//! while its last commit ran in one transaction, one fsync for them all.
//!
//! The statements, how they are bound and how their rows are decoded are
//! shared with Postgres in `crate::sql` (only runtime-checked queries with
//! bound parameters; a corrupt row is a `Backend` error). This module holds
//! what is SQLite's own: opening the pools, the `Dialect` constants (no
//! row locks: the single writer and `BEGIN IMMEDIATE` keep writers apart;
//! `LIKE`, `MAX`/`MIN`) and the `Backend` impl, with `log.rs` (taking a
//! seq) and `rooms.rs` (opening a DM).

mod log;
mod rooms;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chat_core::{Seq, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{Executor, Sqlite, Transaction};
use uuid::fmt::Hyphenated;

use crate::backend::Backend;
use crate::group_commit::GroupCommit;
use crate::sql::event::NewEvent;
use crate::sql::rooms::{mark_read_sql, public_rooms_sql};
use crate::sql::rows::db_err;
use crate::sql::sessions::rotating_token_sql;
use crate::sql::{Dialect, RowsAffected};
use crate::{NewRoom, Result, Room, StoreError, StoreOptions};

/// Connections in the reader pool.
const READERS: u32 = 4;
/// How long a connection waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite's spelling of the statements that differ. No row locks: every
/// write transaction already holds the database's one write lock.
impl Dialect for Sqlite {
    type Uuid = Hyphenated;
    const LIVE_USER: &'static str = "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL";
    const ROTATING_TOKEN: &'static str = rotating_token_sql!("");
    const LIVE_ROOM: &'static str = "SELECT 1 FROM rooms WHERE id = $1 AND deleted_at IS NULL";
    const ROOM_LOG: &'static str = Self::LIVE_ROOM;
    const NUMBERED: bool = false;
    const ROOMS_LOG: &'static str =
        "SELECT id FROM rooms WHERE deleted_at IS NULL AND id IN ({ids}) ORDER BY id";
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
    /// Message appends, committed in batches by one writer.
    group: Option<GroupCommit>,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) the database
    /// at `url` — `sqlite:///abs/path.db` or `sqlite://relative/path.db` —
    /// and applies the migrations. `sqlite::memory:` gives a private
    /// in-memory store on a single connection, for tests and demos.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &StoreOptions::default()).await
    }

    /// [`Self::connect`] with `store` options.
    pub async fn connect_with(url: &str, store: &StoreOptions) -> Result<Self> {
        let queue = store.append_queue;
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
            return Ok(Self::with_group_commit(pool.clone(), pool, queue));
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
        Ok(Self::with_group_commit(writer, reader, queue))
    }

    /// This store without its group commit: appends run one by one.
    #[cfg(test)]
    pub(crate) fn direct(&self) -> Self {
        Self {
            group: None,
            ..self.clone()
        }
    }

    /// The store on these pools, with its one group-commit writer (the
    /// writer pool has one connection: a second writer would only wait).
    fn with_group_commit(writer: SqlitePool, reader: SqlitePool, queue: usize) -> Self {
        let direct = Self {
            writer,
            reader,
            group: None,
        };
        Self {
            group: Some(GroupCommit::start(direct.clone(), 1, queue, true)),
            ..direct
        }
    }
}

impl Backend for SqliteStore {
    type Db = Sqlite;

    fn group_commit(&self) -> Option<&GroupCommit> {
        self.group.as_ref()
    }

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

    async fn find_or_create_dm(&self, room: &NewRoom, a: UserId, b: UserId) -> Result<Room> {
        rooms::open_dm(self, room, a, b).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewMessage, NewUser, RoomKind, Store, Visibility};
    use chat_core::{MessageId, RoomId};
    use sqlx::Row;

    #[tokio::test]
    async fn rows_keep_the_sqlite_storage_format() {
        // Files written before the backends shared their statements hold
        // ids as hyphenated UUID text and flags as integers: the shared
        // binds must write (and so read) the same.
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let user = store
            .create_user(&NewUser {
                id: UserId::new(),
                username: "fmt".into(),
                display_name: "f".into(),
                password_hash: "h".into(),
                created_at: 1,
            })
            .await
            .unwrap();
        let room = NewRoom {
            id: RoomId::new(),
            name: "r".into(),
            topic: String::new(),
            visibility: Visibility::Public,
            kind: RoomKind::Group,
            created_at: 2,
        };
        store.create_room(&room, user.id).await.unwrap();
        let msg_id = MessageId::new();
        store
            .append_message(&NewMessage {
                room_id: room.id,
                id: msg_id,
                sender_id: user.id,
                client_msg_id: "c".into(),
                body: "b".into(),
                created_at: 3,
            })
            .await
            .unwrap();

        let row = sqlx::query(
            "SELECT typeof(room_id) AS room_type, room_id, message_id, sender_id, \
             typeof(deleted) AS deleted_type, deleted FROM events",
        )
        .fetch_one(&store.reader)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("room_type"), "text");
        assert_eq!(row.get::<String, _>("room_id"), room.id.to_string());
        assert_eq!(row.get::<String, _>("message_id"), msg_id.to_string());
        assert_eq!(row.get::<String, _>("sender_id"), user.id.to_string());
        assert_eq!(row.get::<String, _>("deleted_type"), "integer");
        assert_eq!(row.get::<i64, _>("deleted"), 0);
    }

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
