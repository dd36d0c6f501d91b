//! The seam between [`Store`](crate::Store) and its two SQL backends: what
//! a backend must say about itself for the shared queries in [`crate::sql`]
//! to run on it.
//!
//! A backend is its pools and its locking model; all else is shared.

use std::future::Future;

use chat_core::Seq;
use sqlx::{Database, Executor, Transaction};

use crate::sql::log::NewEvent;
use crate::sql::Dialect;
use crate::Result;

/// A store on one SQL database: `PgStore` or `SqliteStore`.
pub(crate) trait Backend: Send + Sync + 'static {
    type Db: Dialect;

    /// Where reads run.
    fn reader(&self) -> impl Executor<'_, Database = Self::Db>;

    /// Where single-statement writes run.
    fn writer(&self) -> impl Executor<'_, Database = Self::Db>;

    /// A transaction for a write of several statements.
    fn write_tx(&self) -> impl Future<Output = Result<Transaction<'static, Self::Db>>> + Send;

    /// Takes the room's next seq and inserts `event` with it; the seq.
    /// Called in the write transaction that commits the event, with the
    /// room's log lock held ([`Dialect::ROOM_LOG`]), so seqs have no gaps (a
    /// rollback gives the seq back) and no repeats.
    fn insert_event(
        conn: &mut <Self::Db as Database>::Connection,
        event: &NewEvent<'_>,
    ) -> impl Future<Output = Result<Seq>> + Send;
}
