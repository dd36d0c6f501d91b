//! Opening a DM on SQLite: our writes are serialized, but another process
//! on the same file may open the same DM between our read and our insert.

use chat_core::UserId;
use sqlx::Sqlite;

use super::SqliteStore;
use crate::backend::Backend;
use crate::sql::rooms::{self, insert_room_sql, live_dm_sql};
use crate::sql::rows::db_err;
use crate::sql::AsExecutor;
use crate::{NewRoom, Result, Room, StoreError};

pub(super) async fn open_dm(
    store: &SqliteStore,
    room: &NewRoom,
    a: UserId,
    b: UserId,
) -> Result<Room> {
    let key = rooms::dm_key(a, b);
    let room = rooms::as_dm(room);
    let mut lost_race = false;
    loop {
        let mut tx = store.write_tx().await?;
        rooms::check_dm_users::<Sqlite>(&mut tx, a, b).await?;
        let find = live_dm_sql!("");
        if let Some(existing) = rooms::find_dm(tx.executor(), find, &key).await? {
            rooms::add_dm_members::<Sqlite>(&mut tx, existing.id, a, b, room.created_at).await?;
            tx.commit().await.map_err(db_err)?;
            return Ok(existing);
        }
        match rooms::insert_room(tx.executor(), insert_room_sql!(), &room, Some(&key)).await {
            Ok(_) => {}
            // Another process created this DM between our read and our
            // insert: read it on the next turn.
            Err(StoreError::AlreadyExists) if !lost_race => {
                lost_race = true;
                continue;
            }
            Err(e) => return Err(e),
        }
        rooms::add_dm_members::<Sqlite>(&mut tx, room.id, a, b, room.created_at).await?;
        tx.commit().await.map_err(db_err)?;
        return Ok(rooms::new_room(&room));
    }
}
