//! What the two backends share: the SQL both run, how it is bound and run,
//! and the decoding of its rows, written once for any [`Dialect`].
//!
//! - [`rows`]: column lists, row decoders and the driver-error mapping.
//! - [`users`], [`sessions`], [`rooms`] (with [`roles`]), [`log`]: one
//!   aggregate each, as both backends run it.
//!
//! Every statement numbers its placeholders `$1`, `$2`, …: Postgres's own
//! form, which sqlx's SQLite driver binds by number too, so one text serves
//! both wherever the dialects agree. Where they do not (a row lock, `ILIKE`),
//! the statement is a [`Dialect`] constant, and the backend picks its text.
//!
//! # Why the traits
//!
//! sqlx states what a driver can bind and decode as bounds on the value
//! types (`i64: Encode<'q, DB>`), and Rust does not carry such bounds from a
//! trait to the code that uses it (rust-lang/rust#20671): a function generic
//! over `sqlx::Database` would have to repeat a dozen of them. Bounds on a
//! database's *associated types* do carry over, so [`Dialect`] states them
//! there, once: values are bound through [`Bind`] on its arguments type,
//! rows read through [`rows::Columns`] on its row type, a connection runs
//! statements through [`AsExecutor`]. [`Stmt`] puts these together as
//! `sqlx::query` does.

pub(crate) mod append;
pub(crate) mod event;
pub(crate) mod keys;
pub(crate) mod log;
pub(crate) mod roles;
pub(crate) mod rooms;
pub(crate) mod rows;
pub(crate) mod sessions;
pub(crate) mod users;

use sqlx::database::HasStatementCache;
use sqlx::error::BoxDynError;
use sqlx::query::Query;
use sqlx::{Arguments, Connection, Database, Decode, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use self::rows::{db_err, Columns};
use crate::Result;

/// A database as the shared code sees it: what its sqlx driver can bind,
/// decode and run (the bounds), how it keeps a UUID, and the statements it
/// spells its own way or locks rows in. Implemented for `sqlx::Postgres` and
/// `sqlx::Sqlite`, each in its backend's module.
pub(crate) trait Dialect:
    for<'q> Database<
        Row: Columns,
        QueryResult: RowsAffected,
        Connection: AsExecutor,
        Arguments<'q>: IntoArguments<'q, Self>
                           + Bind<'q, i64>
                           + Bind<'q, Option<i64>>
                           + Bind<'q, &'q str>
                           + Bind<'q, Option<&'q str>>
                           + Bind<'q, &'q String>
                           + Bind<'q, &'q [u8]>
                           + Bind<'q, <Self as Dialect>::Uuid>
                           + Bind<'q, Option<<Self as Dialect>::Uuid>>,
    > + HasStatementCache
{
    /// How the database keeps a UUID column: natively on Postgres, as
    /// hyphenated text on SQLite.
    type Uuid: for<'r> Decode<'r, Self> + Type<Self> + From<Uuid> + Into<Uuid> + Send;

    /// `$1` is a live user. Run before something is made for that user; a
    /// dialect whose writers run in parallel locks the row against deletion
    /// until the transaction ends.
    const LIVE_USER: &'static str;

    /// The refresh token `$1` being rotated: its `session_id`, `spent_at`,
    /// `next_hash` and `next_sealed`, the session's `revoked_at` and the
    /// user's `deleted_at`, locked against a concurrent rotation where
    /// writers run in parallel ([`sessions::rotating_token_sql`]).
    const ROTATING_TOKEN: &'static str;

    /// `$1` is a live room. Run before a member is added; a dialect whose
    /// writers run in parallel share-locks the row until the transaction
    /// ends, so no event is appended and the room is not deleted meanwhile
    /// (a new member's read marker is exactly the room's end).
    const LIVE_ROOM: &'static str;

    /// `$1` is a live room; the room's event log is then the caller's until
    /// the transaction ends. A dialect whose writers run in parallel locks
    /// the row so that writers of one room queue here (and writers of
    /// different rooms never meet); under a single writer it is a check.
    /// Role changes and bans take it too ([`roles`]).
    const ROOM_LOG: &'static str;

    /// Whether the batch statements built at run time number their
    /// placeholders (`$N`, Postgres) or leave them anonymous (`?`, SQLite:
    /// there `$N` is a *named* parameter, which its parser and
    /// `sqlite3_bind_parameter_name` look up among all the others, so a
    /// statement of thousands of them is quadratic to prepare and bind).
    const NUMBERED: bool;

    /// The live rooms among `{ids}` (a list of placeholders, spliced in),
    /// in id order, their logs then the caller's as with [`Self::ROOM_LOG`]:
    /// where writers run in parallel, every batch locks its rooms in this
    /// one order, so two batches queue rather than deadlock.
    const ROOMS_LOG: &'static str;

    /// Public group rooms whose name contains `$1` case-insensitively
    /// ([`rooms::public_rooms_sql`]: `ILIKE` or `LIKE`).
    const PUBLIC_ROOMS: &'static str;

    /// Moves a read marker forward ([`rooms::mark_read_sql`]: the dialect's
    /// two-value maximum and minimum).
    const MARK_READ: &'static str;
}

/// One type of value a driver's arguments take: sqlx's `Arguments::add`, as
/// a trait per value type so that [`Dialect`] can require it.
pub(crate) trait Bind<'q, T> {
    fn push(&mut self, value: T) -> Result<(), BoxDynError>;
}

impl<'q, A, T> Bind<'q, T> for A
where
    A: Arguments<'q>,
    T: 'q + Encode<'q, A::Database> + Type<A::Database>,
{
    fn push(&mut self, value: T) -> Result<(), BoxDynError> {
        self.add(value)
    }
}

/// `&mut` a connection as an executor: every driver's connection is one,
/// but sqlx says so as a bound on `&mut C`, which generic code cannot
/// assume; this says it on `C`.
pub(crate) trait AsExecutor: Connection {
    fn executor(&mut self) -> impl Executor<'_, Database = Self::Database>;
}

impl<C> AsExecutor for C
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    fn executor(&mut self) -> impl Executor<'_, Database = C::Database> {
        self
    }
}

/// What every driver's query result says but no sqlx trait does.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

/// `sqlx::query(sql)` for any [`Dialect`]: a statement, its bound values and
/// the first value that failed to encode (reported when it runs, as sqlx's
/// `Query::bind` does). Its runs map driver errors with [`db_err`].
pub(crate) fn stmt<D: Dialect>(sql: &str) -> Stmt<'_, D> {
    Stmt {
        sql,
        args: Default::default(),
        error: None,
        persistent: true,
    }
}

pub(crate) struct Stmt<'q, D: Dialect> {
    sql: &'q str,
    args: D::Arguments<'q>,
    error: Option<BoxDynError>,
    persistent: bool,
}

impl<'q, D: Dialect> Stmt<'q, D> {
    pub(crate) fn bind<T>(mut self, value: T) -> Self
    where
        D::Arguments<'q>: Bind<'q, T>,
    {
        if self.error.is_none() {
            self.error = self.args.push(value).err();
        }
        self
    }

    /// Not kept prepared on the connection: for statements built at run
    /// time (a batch's), whose texts are too many to cache.
    pub(crate) fn transient(mut self) -> Self {
        self.persistent = false;
        self
    }

    /// Binds an id the way the dialect keeps it.
    pub(crate) fn bind_id(self, id: Uuid) -> Self {
        self.bind(D::Uuid::from(id))
    }

    pub(crate) fn bind_opt_id(self, id: Option<Uuid>) -> Self {
        self.bind(id.map(D::Uuid::from))
    }

    fn query(self) -> Result<Query<'q, D, D::Arguments<'q>>> {
        match self.error {
            Some(e) => Err(db_err(sqlx::Error::Encode(e))),
            None => Ok(sqlx::query_with(self.sql, self.args).persistent(self.persistent)),
        }
    }

    /// Runs the statement; the number of rows it changed.
    pub(crate) async fn execute<'c>(self, ex: impl Executor<'c, Database = D>) -> Result<u64> {
        let done = self.query()?.execute(ex).await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn fetch_optional<'c>(
        self,
        ex: impl Executor<'c, Database = D>,
    ) -> Result<Option<D::Row>> {
        self.query()?.fetch_optional(ex).await.map_err(db_err)
    }

    pub(crate) async fn fetch_one<'c>(self, ex: impl Executor<'c, Database = D>) -> Result<D::Row> {
        self.query()?.fetch_one(ex).await.map_err(db_err)
    }

    pub(crate) async fn fetch_all<'c>(
        self,
        ex: impl Executor<'c, Database = D>,
    ) -> Result<Vec<D::Row>> {
        self.query()?.fetch_all(ex).await.map_err(db_err)
    }
}

/// True if the statement `sql` (a [`Dialect`] check such as
/// [`Dialect::LIVE_USER`]) finds a row for `id`.
pub(crate) async fn exists<'c, D: Dialect>(
    ex: impl Executor<'c, Database = D>,
    sql: &str,
    id: Uuid,
) -> Result<bool> {
    Ok(stmt::<D>(sql)
        .bind_id(id)
        .fetch_optional(ex)
        .await?
        .is_some())
}
