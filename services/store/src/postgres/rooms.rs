//! Opening a DM on Postgres, where two processes may open the same DM at
//! once: the insert meets a concurrent one in the `dm_key` unique index.

use chat_core::UserId;
use sqlx::Postgres;

use super::PgStore;
use crate::backend::Backend;
use crate::sql::rooms::{self, insert_room_sql, live_dm_sql};
use crate::sql::rows::db_err;
use crate::sql::AsExecutor;
use crate::{NewRoom, Result, Room, StoreError};

pub(super) async fn open_dm(store: &PgStore, room: &NewRoom, a: UserId, b: UserId) -> Result<Room> {
    /// Rounds of "find it, else create it". A round only repeats when the
    /// DM another process just created was deleted before we could read
    /// it, so two are plenty; the bound keeps a pathological create/delete
    /// storm from spinning us forever.
    const ROUNDS: usize = 3;
    let key = rooms::dm_key(a, b);
    let room = rooms::as_dm(room);
    for _ in 0..ROUNDS {
        let mut tx = store.write_tx().await?;
        rooms::check_dm_users::<Postgres>(&mut tx, a, b).await?;
        // Insert unless a live DM has the key. A concurrent creator's
        // uncommitted row makes this wait for its outcome; if it commits,
        // nothing is inserted and the next statement (a fresh snapshot)
        // reads its room.
        let insert = concat!(insert_room_sql!(), " ON CONFLICT (dm_key) DO NOTHING");
        let created = rooms::insert_room(tx.executor(), insert, &room, Some(&key)).await? == 1;
        let dm = if created {
            rooms::new_room(&room)
        } else {
            let find = live_dm_sql!(" FOR SHARE");
            match rooms::find_dm(tx.executor(), find, &key).await? {
                Some(existing) => existing,
                // Deleted between the insert and the read: try again.
                None => continue,
            }
        };
        rooms::add_dm_members::<Postgres>(&mut tx, dm.id, a, b, room.created_at).await?;
        tx.commit().await.map_err(db_err)?;
        return Ok(dm);
    }
    Err(StoreError::backend(std::io::Error::other(
        "open_dm: the DM kept vanishing while being opened",
    )))
}
