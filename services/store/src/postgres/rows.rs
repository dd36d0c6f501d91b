//! Row decoding and driver-error mapping for the Postgres backend.
//!
//! Every column is read with `try_get`; ids are native `uuid` columns, so
//! the driver checks them. A row the schema should have made impossible (an
//! unknown enum string, a NULL where the kind needs a value) is a `Backend`
//! error, never a panic.

use chat_core::{RoomId, SessionId};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};
use uuid::Uuid;

use crate::{
    Event, EventKind, Membership, Message, Role, Room, RoomKind, Session, StoreError, User,
    UserAuth, Visibility,
};

type Result<T> = std::result::Result<T, StoreError>;

/// Column lists shared by the queries and the decoders below (macros so
/// `concat!` can build `&'static str` SQL). Unqualified, so they work in
/// `RETURNING` and in joins whose tables share no such column name.
macro_rules! user_cols {
    () => {
        "id, username, display_name, created_at, password_hash"
    };
}

macro_rules! session_cols {
    () => {
        "id, user_id, user_agent, created_at, last_used_at, revoked_at"
    };
}

macro_rules! room_cols {
    () => {
        "id, name, topic, visibility, kind, created_at, last_seq"
    };
}

macro_rules! membership_cols {
    () => {
        "room_id, user_id, role, joined_at, last_read_seq"
    };
}

macro_rules! event_cols {
    () => {
        "room_id, seq, kind, message_id, sender_id, body, client_msg_id, \
         created_at, edited_at, deleted, target_seq"
    };
}

pub(super) use event_cols;
pub(super) use membership_cols;
pub(super) use room_cols;
pub(super) use session_cols;
pub(super) use user_cols;

/// A row the schema should have made impossible.
#[derive(Debug, thiserror::Error)]
#[error("corrupt row: {0}")]
pub(super) struct CorruptRow(String);

pub(super) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::backend(CorruptRow(what.into()))
}

/// Driver errors in domain terms: a unique violation means the thing exists
/// already; a foreign-key violation means something it points at does not.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            return StoreError::AlreadyExists;
        }
        if d.is_foreign_key_violation() {
            return StoreError::NotFound;
        }
    }
    StoreError::backend(e)
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col).map_err(StoreError::backend)
}

fn id<T: From<Uuid>>(row: &PgRow, col: &str) -> Result<T> {
    get::<Uuid>(row, col).map(T::from)
}

fn required<T>(value: Option<T>, col: &str) -> Result<T> {
    value.ok_or_else(|| corrupt(format!("{col} is NULL")))
}

pub(super) fn room_id(row: &PgRow, col: &str) -> Result<RoomId> {
    id(row, col)
}

pub(super) fn session_id(row: &PgRow, col: &str) -> Result<SessionId> {
    id(row, col)
}

pub(super) fn int(row: &PgRow, col: &str) -> Result<i64> {
    get(row, col)
}

pub(super) fn opt_int(row: &PgRow, col: &str) -> Result<Option<i64>> {
    get(row, col)
}

pub(super) fn text(row: &PgRow, col: &str) -> Result<String> {
    get(row, col)
}

pub(super) fn opt_text(row: &PgRow, col: &str) -> Result<Option<String>> {
    get(row, col)
}

pub(super) fn user(row: &PgRow) -> Result<User> {
    Ok(User {
        id: id(row, "id")?,
        username: get(row, "username")?,
        display_name: get(row, "display_name")?,
        created_at: get(row, "created_at")?,
    })
}

pub(super) fn user_auth(row: &PgRow) -> Result<UserAuth> {
    Ok(UserAuth {
        user: user(row)?,
        password_hash: get(row, "password_hash")?,
    })
}

pub(super) fn session(row: &PgRow) -> Result<Session> {
    Ok(Session {
        id: id(row, "id")?,
        user_id: id(row, "user_id")?,
        user_agent: get(row, "user_agent")?,
        created_at: get(row, "created_at")?,
        last_used_at: get(row, "last_used_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

pub(super) fn room(row: &PgRow) -> Result<Room> {
    let visibility: &str = get(row, "visibility")?;
    let kind: &str = get(row, "kind")?;
    Ok(Room {
        id: id(row, "id")?,
        name: get(row, "name")?,
        topic: get(row, "topic")?,
        visibility: Visibility::parse(visibility)
            .ok_or_else(|| corrupt(format!("visibility {visibility:?}")))?,
        kind: RoomKind::parse(kind).ok_or_else(|| corrupt(format!("room kind {kind:?}")))?,
        created_at: get(row, "created_at")?,
        last_seq: get(row, "last_seq")?,
    })
}

pub(super) fn membership(row: &PgRow) -> Result<Membership> {
    let role: &str = get(row, "role")?;
    Ok(Membership {
        room_id: id(row, "room_id")?,
        user_id: id(row, "user_id")?,
        role: Role::parse(role).ok_or_else(|| corrupt(format!("role {role:?}")))?,
        joined_at: get(row, "joined_at")?,
        last_read_seq: get(row, "last_read_seq")?,
    })
}

/// A `kind = 'message'` event row as the message in its current state.
pub(super) fn message(row: &PgRow) -> Result<Message> {
    let kind: &str = get(row, "kind")?;
    if kind != "message" {
        return Err(corrupt(format!("expected a message row, got {kind:?}")));
    }
    let message_id: Option<Uuid> = get(row, "message_id")?;
    Ok(Message {
        room_id: id(row, "room_id")?,
        seq: get(row, "seq")?,
        id: required(message_id, "message_id")?.into(),
        sender_id: id(row, "sender_id")?,
        body: get(row, "body")?,
        client_msg_id: required(get(row, "client_msg_id")?, "client_msg_id")?,
        created_at: get(row, "created_at")?,
        edited_at: get(row, "edited_at")?,
        deleted: get(row, "deleted")?,
    })
}

pub(super) fn event(row: &PgRow) -> Result<Event> {
    let kind: &str = get(row, "kind")?;
    let kind = match kind {
        "message" => EventKind::Message(message(row)?),
        "message_edited" => EventKind::Edited {
            target_seq: required(get(row, "target_seq")?, "target_seq")?,
            body: get(row, "body")?,
            sender_id: id(row, "sender_id")?,
            edited_at: required(get(row, "edited_at")?, "edited_at")?,
        },
        "message_deleted" => EventKind::Deleted {
            target_seq: required(get(row, "target_seq")?, "target_seq")?,
            deleted_by: id(row, "sender_id")?,
            at: get(row, "created_at")?,
        },
        other => return Err(corrupt(format!("event kind {other:?}"))),
    };
    Ok(Event {
        room_id: id(row, "room_id")?,
        seq: get(row, "seq")?,
        kind,
    })
}
