//! How an event takes its seq on Postgres: in the statement that inserts
//! it, from `rooms.last_seq`, with the room's row locked
//! (`FOR NO KEY UPDATE`, see [`Dialect::ROOM_LOG`](crate::sql::Dialect)).

use chat_core::Seq;
use sqlx::postgres::PgConnection;
use sqlx::Postgres;

use crate::sql::event::NewEvent;
use crate::sql::rows::{event_cols, Columns};
use crate::sql::stmt;
use crate::{Result, StoreError};

/// Bumps the room's `last_seq` and inserts the event with it, in one
/// statement (one round trip).
pub(super) async fn insert_event(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<Seq> {
    let insert = stmt::<Postgres>(concat!(
        "WITH bumped AS ( \
             UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq \
         ) \
         INSERT INTO events (",
        event_cols!(),
        ") SELECT $1, last_seq, $2, $3, $4, $5, $6, $7, $8, FALSE, $9 FROM bumped \
         RETURNING seq"
    ));
    let row = event
        .bind(insert)
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound)?;
    row.int("seq")
}
