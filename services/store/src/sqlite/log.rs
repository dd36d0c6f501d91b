//! How an event takes its seq on SQLite: the write transaction holds the
//! database's one write lock (`BEGIN IMMEDIATE`), so the seq is bumped in
//! one statement and the event inserted in the next.

use chat_core::Seq;
use sqlx::sqlite::SqliteConnection;
use sqlx::Sqlite;

use crate::sql::event::NewEvent;
use crate::sql::rows::{event_cols, Columns};
use crate::sql::stmt;
use crate::{Result, StoreError};

pub(super) async fn insert_event(conn: &mut SqliteConnection, event: &NewEvent<'_>) -> Result<Seq> {
    let seq =
        stmt::<Sqlite>("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
            .bind_id(event.room_id.0)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?
            .int("last_seq")?;
    // The columns in the order `NewEvent::bind` binds them, the seq last.
    let insert = stmt::<Sqlite>(concat!(
        "INSERT INTO events (",
        event_cols!(),
        ") VALUES ($1, $10, $2, $3, $4, $5, $6, $7, $8, FALSE, $9)"
    ));
    event.bind(insert).bind(seq).execute(conn).await?;
    Ok(seq)
}
