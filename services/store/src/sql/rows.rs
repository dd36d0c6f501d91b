//! Row decoding and driver-error mapping, for both backends.
//!
//! Every column is read with `try_get` through [`Columns`], which any sqlx
//! row type of a [`Dialect`] has; ids are read as the dialect stores them (a
//! native `uuid` on Postgres, checked hyphenated text on SQLite). A row the
//! schema should have made impossible (bad UUID text, an unknown enum
//! string, a NULL where the kind needs a value) is a `Backend` error, never
//! a panic.

use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::Dialect;
use crate::{
    Event, EventKind, Membership, Message, Result, Role, Room, RoomKind, Session, StoreError, User,
    UserAuth, Visibility,
};

/// Column lists shared by the queries and the decoders below. Macros rather
/// than consts so `concat!` can build `&'static str` SQL from them. They are
/// unqualified (the decoders read by plain column name), so they also work
/// in `RETURNING` and in joins whose tables share no such column name.
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

pub(crate) use event_cols;
pub(crate) use membership_cols;
pub(crate) use room_cols;
pub(crate) use session_cols;
pub(crate) use user_cols;

/// A row the schema should have made impossible.
#[derive(Debug, thiserror::Error)]
#[error("corrupt row: {0}")]
struct CorruptRow(String);

pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::backend(CorruptRow(what.into()))
}

/// Driver errors in domain terms: a unique violation means the thing exists
/// already; a foreign-key violation means something it points at does not.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
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

/// The typed column reads the decoders need, on any row of a [`Dialect`].
///
/// sqlx states what a row can decode as bounds on the value types
/// (`i64: Decode<'r, DB>`), which generic code would have to repeat at every
/// use; this trait states them once, in its one impl below.
pub(crate) trait Columns {
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn str(&self, col: &str) -> Result<&str>;
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;

    /// A non-NULL id column, as the id type it holds.
    fn id<T: From<Uuid>>(&self, col: &str) -> Result<T> {
        required(self.opt_uuid(col)?, col).map(T::from)
    }
}

impl<R> Columns for R
where
    R: Row,
    R::Database: Dialect,
    for<'a> &'a str: ColumnIndex<R>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    bool: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, col: &str) -> Result<i64> {
        get(self, col)
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        get(self, col)
    }

    fn flag(&self, col: &str) -> Result<bool> {
        get(self, col)
    }

    fn text(&self, col: &str) -> Result<String> {
        get(self, col)
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        get(self, col)
    }

    fn str(&self, col: &str) -> Result<&str> {
        get(self, col)
    }

    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        let id: Option<<R::Database as Dialect>::Uuid> = get(self, col)?;
        Ok(id.map(Into::into))
    }

    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        get(self, col)
    }
}

fn get<'r, R, T>(row: &'r R, col: &str) -> Result<T>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(col).map_err(StoreError::backend)
}

fn required<T>(value: Option<T>, col: &str) -> Result<T> {
    value.ok_or_else(|| corrupt(format!("{col} is NULL")))
}

pub(crate) fn decode_all<R, T>(rows: &[R], f: fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

pub(crate) fn decode_opt<R, T>(row: Option<R>, f: fn(&R) -> Result<T>) -> Result<Option<T>> {
    row.as_ref().map(f).transpose()
}

pub(crate) fn user(row: &impl Columns) -> Result<User> {
    Ok(User {
        id: row.id("id")?,
        username: row.text("username")?,
        display_name: row.text("display_name")?,
        created_at: row.int("created_at")?,
    })
}

pub(crate) fn user_auth(row: &impl Columns) -> Result<UserAuth> {
    Ok(UserAuth {
        user: user(row)?,
        password_hash: row.text("password_hash")?,
    })
}

pub(crate) fn session(row: &impl Columns) -> Result<Session> {
    Ok(Session {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        user_agent: row.text("user_agent")?,
        created_at: row.int("created_at")?,
        last_used_at: row.int("last_used_at")?,
        revoked_at: row.opt_int("revoked_at")?,
    })
}

pub(crate) fn room(row: &impl Columns) -> Result<Room> {
    let visibility = row.str("visibility")?;
    let kind = row.str("kind")?;
    Ok(Room {
        id: row.id("id")?,
        name: row.text("name")?,
        topic: row.text("topic")?,
        visibility: Visibility::parse(visibility)
            .ok_or_else(|| corrupt(format!("visibility {visibility:?}")))?,
        kind: RoomKind::parse(kind).ok_or_else(|| corrupt(format!("room kind {kind:?}")))?,
        created_at: row.int("created_at")?,
        last_seq: row.int("last_seq")?,
    })
}

pub(crate) fn membership(row: &impl Columns) -> Result<Membership> {
    let role = row.str("role")?;
    Ok(Membership {
        room_id: row.id("room_id")?,
        user_id: row.id("user_id")?,
        role: Role::parse(role).ok_or_else(|| corrupt(format!("role {role:?}")))?,
        joined_at: row.int("joined_at")?,
        last_read_seq: row.int("last_read_seq")?,
    })
}

/// A `kind = 'message'` event row as the message in its current state.
pub(crate) fn message(row: &impl Columns) -> Result<Message> {
    let kind = row.str("kind")?;
    if kind != "message" {
        return Err(corrupt(format!("expected a message row, got {kind:?}")));
    }
    Ok(Message {
        room_id: row.id("room_id")?,
        seq: row.int("seq")?,
        id: row.id("message_id")?,
        sender_id: row.id("sender_id")?,
        body: row.text("body")?,
        client_msg_id: required(row.opt_text("client_msg_id")?, "client_msg_id")?,
        created_at: row.int("created_at")?,
        edited_at: row.opt_int("edited_at")?,
        deleted: row.flag("deleted")?,
    })
}

pub(crate) fn event(row: &impl Columns) -> Result<Event> {
    let kind = match row.str("kind")? {
        "message" => EventKind::Message(message(row)?),
        "message_edited" => EventKind::Edited {
            target_seq: required(row.opt_int("target_seq")?, "target_seq")?,
            body: row.text("body")?,
            sender_id: row.id("sender_id")?,
            edited_at: required(row.opt_int("edited_at")?, "edited_at")?,
        },
        "message_deleted" => EventKind::Deleted {
            target_seq: required(row.opt_int("target_seq")?, "target_seq")?,
            deleted_by: row.id("sender_id")?,
            at: row.int("created_at")?,
        },
        other => return Err(corrupt(format!("event kind {other:?}"))),
    };
    Ok(Event {
        room_id: row.id("room_id")?,
        seq: row.int("seq")?,
        kind,
    })
}
