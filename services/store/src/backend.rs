//! The seam between [`Store`] and its two SQL backends, `PgStore` and
//! `SqliteStore`.
//!
//! A backend is its pools and its locking model: each implements
//! [`Backend`], which says where reads and writes run, how a write
//! transaction begins, how an event takes its seq and how a DM is opened.
//! Both get [`Store`](crate::Store) from the one impl in
//! [`crate::sql_store`], which hands each method to the shared code of its
//! aggregate in [`crate::sql`] (`users`, `sessions`, `rooms`, `log`), where
//! the statements the dialects spell differently are [`Dialect`] constants.

use std::future::Future;

use chat_core::{Seq, UserId};
use sqlx::{Database, Executor, Transaction};

use crate::group_commit::GroupCommit;
use crate::sql::event::NewEvent;
use crate::sql::Dialect;
use crate::{NewRoom, Result, Room};

/// A store on one SQL database: `PgStore` or `SqliteStore`.
pub(crate) trait Backend: Send + Sync + 'static {
    type Db: Dialect;

    /// The queue in front of the group-commit writers, if this handle has
    /// one (the writers' own handles do not: their appends run directly).
    fn group_commit(&self) -> Option<&GroupCommit>;

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

    /// [`Store::open_dm`], whose steps depend on how the backend meets a
    /// concurrent opener of the same DM.
    fn find_or_create_dm(
        &self,
        room: &NewRoom,
        a: UserId,
        b: UserId,
    ) -> impl Future<Output = Result<Room>> + Send;
}
