//! One row of the event log before it has a seq: what the shared log code
//! hands a backend's `insert_event`.

use chat_core::{RoomId, Seq, UserId};
use uuid::Uuid;

use super::{Dialect, Stmt};

/// One row of the event log, before it has a seq.
pub(crate) struct NewEvent<'a> {
    pub(crate) room_id: RoomId,
    pub(crate) kind: &'static str,
    pub(crate) message_id: Uuid,
    pub(crate) sender_id: UserId,
    pub(crate) body: &'a str,
    pub(crate) client_msg_id: Option<&'a str>,
    pub(crate) created_at: i64,
    pub(crate) edited_at: Option<i64>,
    pub(crate) target_seq: Option<Seq>,
}

impl NewEvent<'_> {
    /// Binds the event as `$1` room_id, `$2` kind, `$3` message_id, `$4`
    /// sender_id, `$5` body, `$6` client_msg_id, `$7` created_at, `$8`
    /// edited_at, `$9` target_seq: the order every backend's insert takes.
    pub(crate) fn bind<'q, D: Dialect>(&'q self, stmt: Stmt<'q, D>) -> Stmt<'q, D> {
        stmt.bind_id(self.room_id.0)
            .bind(self.kind)
            .bind_id(self.message_id)
            .bind_id(self.sender_id.0)
            .bind(self.body)
            .bind(self.client_msg_id)
            .bind(self.created_at)
            .bind(self.edited_at)
            .bind(self.target_seq)
    }
}
