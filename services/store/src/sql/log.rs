//! The per-room event log: appending, editing and deleting messages, and
//! reading messages and events back.
//!
//! Every write to a room's log runs in one write transaction that first
//! takes the room's log lock ([`Dialect::ROOM_LOG`]) and then has the
//! backend insert the event with the room's next seq
//! ([`Backend::insert_event`]): the two places where the backends' locking
//! models differ.

use chat_core::{RoomId, Seq, UserId};
use sqlx::Transaction;

use super::event::NewEvent;
use super::rooms::find_membership;
use super::rows::{self, db_err, decode_all, decode_opt, event_cols};
use super::{exists, stmt, AsExecutor, Dialect};
use crate::backend::Backend;
use crate::{EditMessage, Event, EventKind, Message, NewMessage, Result, StoreError};

/// Cuts a page fetched with `limit + 1` rows to `limit`; true if it was cut.
fn cut<T>(items: &mut Vec<T>, limit: u32) -> bool {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    more
}

/// The message at `seq`, in its current state.
async fn find_message<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    room: RoomId,
    seq: Seq,
) -> Result<Option<Message>> {
    let row = stmt::<D>(concat!(
        "SELECT ",
        event_cols!(),
        " FROM events WHERE room_id = $1 AND seq = $2 AND kind = 'message'"
    ))
    .bind_id(room.0)
    .bind(seq)
    .fetch_optional(ex)
    .await?;
    decode_opt(row, rows::message)
}

/// Opens a write transaction on the room's log and finds the live message
/// at `target` in it: what an edit and a deletion start with.
async fn lock_message<B: Backend>(
    store: &B,
    room: RoomId,
    target: Seq,
) -> Result<(Transaction<'static, B::Db>, Message)> {
    let mut tx = store.write_tx().await?;
    if !exists(tx.executor(), B::Db::ROOM_LOG, room.0).await? {
        return Err(StoreError::NotFound);
    }
    match find_message(tx.executor(), room, target).await? {
        Some(m) if !m.deleted => Ok((tx, m)),
        _ => Err(StoreError::NotFound),
    }
}

/// Inserts the event with the room's next seq and commits: the last step of
/// every write to the log.
async fn commit_event<B: Backend>(
    mut tx: Transaction<'static, B::Db>,
    event: &NewEvent<'_>,
) -> Result<Seq> {
    let seq = B::insert_event(&mut tx, event).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(seq)
}

/// The message `sender` sent to `room` with `client_msg_id`, if any.
pub(crate) async fn sent<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    room: RoomId,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<Message>> {
    let row = stmt::<D>(concat!(
        "SELECT ",
        event_cols!(),
        " FROM events \
         WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3 AND kind = 'message'"
    ))
    .bind_id(room.0)
    .bind_id(sender.0)
    .bind(client_msg_id)
    .fetch_optional(ex)
    .await?;
    decode_opt(row, rows::message)
}

/// Appends `msg`: through the store's group commit when it has one, else
/// in a transaction of its own ([`append_one`]).
pub(crate) async fn append<B: Backend>(store: &B, msg: &NewMessage) -> Result<(Message, bool)> {
    match store.group_commit() {
        Some(group) => group.append(msg).await,
        None => append_one(store, msg).await,
    }
}

/// Appends `msg` in a write transaction of its own.
pub(crate) async fn append_one<B: Backend>(store: &B, msg: &NewMessage) -> Result<(Message, bool)> {
    let mut tx = store.write_tx().await?;
    // The lock comes first: a concurrent send of the same client_msg_id
    // waits here until ours commits, then finds it below.
    if !exists(tx.executor(), B::Db::ROOM_LOG, msg.room_id.0).await? {
        return Err(StoreError::NotFound);
    }
    if find_membership(tx.executor(), msg.room_id, msg.sender_id)
        .await?
        .is_none()
    {
        return Err(StoreError::NotMember);
    }
    let original = sent(
        tx.executor(),
        msg.room_id,
        msg.sender_id,
        &msg.client_msg_id,
    )
    .await?;
    if let Some(original) = original {
        return Ok((original, false));
    }

    let event = NewEvent {
        room_id: msg.room_id,
        kind: "message",
        message_id: msg.id.0,
        sender_id: msg.sender_id,
        body: &msg.body,
        client_msg_id: Some(&msg.client_msg_id),
        created_at: msg.created_at,
        edited_at: None,
        target_seq: None,
    };
    let seq = commit_event::<B>(tx, &event).await?;
    tracing::debug!(seq, "message appended");
    let message = Message {
        room_id: msg.room_id,
        seq,
        id: msg.id,
        sender_id: msg.sender_id,
        body: msg.body.clone(),
        client_msg_id: msg.client_msg_id.clone(),
        created_at: msg.created_at,
        edited_at: None,
        deleted: false,
    };
    Ok((message, true))
}

pub(crate) async fn edit<B: Backend>(store: &B, edit: &EditMessage) -> Result<(Event, Message)> {
    let (mut tx, mut message) = lock_message(store, edit.room_id, edit.target).await?;
    if message.sender_id != edit.editor {
        return Err(StoreError::Forbidden);
    }
    stmt::<B::Db>("UPDATE events SET body = $1, edited_at = $2 WHERE room_id = $3 AND seq = $4")
        .bind(&edit.body)
        .bind(edit.now)
        .bind_id(edit.room_id.0)
        .bind(edit.target)
        .execute(tx.executor())
        .await?;
    let event = NewEvent {
        room_id: edit.room_id,
        kind: "message_edited",
        message_id: message.id.0,
        sender_id: edit.editor,
        body: &edit.body,
        client_msg_id: None,
        created_at: edit.now,
        edited_at: Some(edit.now),
        target_seq: Some(edit.target),
    };
    let seq = commit_event::<B>(tx, &event).await?;

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

pub(crate) async fn delete<B: Backend>(
    store: &B,
    room: RoomId,
    target: Seq,
    by: UserId,
    now: i64,
) -> Result<Event> {
    let (mut tx, message) = lock_message(store, room, target).await?;
    stmt::<B::Db>("UPDATE events SET deleted = TRUE, body = '' WHERE room_id = $1 AND seq = $2")
        .bind_id(room.0)
        .bind(target)
        .execute(tx.executor())
        .await?;
    // The bodies its edits set go too: a tombstone keeps no text.
    stmt::<B::Db>(
        "UPDATE events SET body = '' \
         WHERE room_id = $1 AND target_seq = $2 AND kind = 'message_edited'",
    )
    .bind_id(room.0)
    .bind(target)
    .execute(tx.executor())
    .await?;
    let event = NewEvent {
        room_id: room,
        kind: "message_deleted",
        message_id: message.id.0,
        sender_id: by,
        body: "",
        client_msg_id: None,
        created_at: now,
        edited_at: None,
        target_seq: Some(target),
    };
    let seq = commit_event::<B>(tx, &event).await?;
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

pub(crate) async fn message<B: Backend>(
    store: &B,
    room: RoomId,
    seq: Seq,
) -> Result<Option<Message>> {
    find_message(store.reader(), room, seq).await
}

pub(crate) async fn list_messages<B: Backend>(
    store: &B,
    room: RoomId,
    before: Option<Seq>,
    after: Option<Seq>,
    limit: u32,
) -> Result<(Vec<Message>, bool)> {
    let fetch = i64::from(limit) + 1;
    if let Some(after) = after {
        // Forward from `after`, oldest first.
        let rows = stmt::<B::Db>(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events \
             WHERE room_id = $1 AND kind = 'message' AND seq > $2 \
             AND ($3 IS NULL OR seq < $3) \
             ORDER BY seq ASC LIMIT $4"
        ))
        .bind_id(room.0)
        .bind(after)
        .bind(before)
        .bind(fetch)
        .fetch_all(store.reader())
        .await?;
        let mut messages = decode_all(&rows, rows::message)?;
        let more = cut(&mut messages, limit);
        Ok((messages, more))
    } else {
        // Backward from `before` (or the end): the newest page, then turned
        // to ascending order.
        let rows = stmt::<B::Db>(concat!(
            "SELECT ",
            event_cols!(),
            " FROM events \
             WHERE room_id = $1 AND kind = 'message' AND ($2 IS NULL OR seq < $2) \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind_id(room.0)
        .bind(before)
        .bind(fetch)
        .fetch_all(store.reader())
        .await?;
        let mut messages = decode_all(&rows, rows::message)?;
        let more = cut(&mut messages, limit);
        messages.reverse();
        Ok((messages, more))
    }
}

pub(crate) async fn list_events<B: Backend>(
    store: &B,
    room: RoomId,
    after: Seq,
    limit: u32,
) -> Result<(Vec<Event>, bool)> {
    let rows = stmt::<B::Db>(concat!(
        "SELECT ",
        event_cols!(),
        " FROM events WHERE room_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
    ))
    .bind_id(room.0)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(store.reader())
    .await?;
    let mut events = decode_all(&rows, rows::event)?;
    let more = cut(&mut events, limit);
    Ok((events, more))
}
