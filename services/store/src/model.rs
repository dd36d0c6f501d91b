//! The records the store keeps. Times are ms since the epoch.

use chat_core::{MessageId, RoomId, Seq, SessionId, UserId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub created_at: i64,
}

/// A user with the password hash, for auth only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserAuth {
    pub user: User,
    pub password_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub user_agent: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub user_agent: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub revoked_at: Option<i64>,
}

/// How long a session may live, in milliseconds; 0 turns a limit off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// From sign-in (the session's `created_at`), however often it is used.
    pub max_age_ms: i64,
    /// From the last rotation (the session's `last_used_at`).
    pub idle_ms: i64,
}

impl SessionLimits {
    /// Sessions that live until revoked.
    pub const NONE: Self = Self {
        max_age_ms: 0,
        idle_ms: 0,
    };

    /// Whether a session created at `created_at` and last used at
    /// `last_used_at` has ended by `now`.
    pub fn expired(&self, created_at: i64, last_used_at: i64, now: i64) -> bool {
        (self.max_age_ms > 0 && now - created_at >= self.max_age_ms)
            || (self.idle_ms > 0 && now - last_used_at >= self.idle_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was live: it is spent now and the new one issued.
    Rotated(Session),
    /// The token was spent within the grace window and its successor is
    /// still live: here is that successor again, as the caller sealed it.
    Replayed { session: Session, sealed: Vec<u8> },
    /// The token had been spent before: the session is revoked now.
    Reused(SessionId),
    /// The session is past its max age or the token was idle too long:
    /// the session is revoked now.
    Expired(SessionId),
    /// The token's session was already revoked.
    Revoked,
    /// No such token.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomKind {
    Group,
    Dm,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Group => "group",
            RoomKind::Dm => "dm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "group" => Some(RoomKind::Group),
            "dm" => Some(RoomKind::Dm),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRoom {
    pub id: RoomId,
    pub name: String,
    pub topic: String,
    pub visibility: Visibility,
    pub kind: RoomKind,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub topic: String,
    pub visibility: Visibility,
    pub kind: RoomKind,
    pub created_at: i64,
    pub last_seq: Seq,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomPatch {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub visibility: Option<Visibility>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub role: Role,
    pub joined_at: i64,
    pub last_read_seq: Seq,
}

/// A user banned from a room, with the profile a list shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    pub banned_by: UserId,
    pub banned_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberProfile {
    pub membership: Membership,
    pub username: String,
    pub display_name: String,
}

/// A room as seen by one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRoom {
    pub room: Room,
    pub membership: Membership,
    /// Live messages by others with `seq > last_read_seq`.
    pub unread: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub room_id: RoomId,
    pub id: MessageId,
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub body: String,
    pub created_at: i64,
}

/// A message in its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub room_id: RoomId,
    pub seq: Seq,
    pub id: MessageId,
    pub sender_id: UserId,
    /// Empty once deleted.
    pub body: String,
    pub client_msg_id: String,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditMessage {
    pub room_id: RoomId,
    pub target: Seq,
    pub editor: UserId,
    pub body: String,
    pub now: i64,
}

/// One durable room event, as the log recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub room_id: RoomId,
    pub seq: Seq,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new message, in its current state (an edit later changes the body
    /// shown here; the edit event itself carries the body it set).
    Message(Message),
    Edited {
        target_seq: Seq,
        body: String,
        sender_id: UserId,
        edited_at: i64,
    },
    Deleted {
        target_seq: Seq,
        deleted_by: UserId,
        at: i64,
    },
}

/// Where a token signing key is in its life: `Active` signs new tokens (at
/// most one is), `Retiring` no longer signs but still verifies the tokens
/// it signed until they expired, `Retired` is kept for the record only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retiring,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyState::Active),
            "retiring" => Some(KeyState::Retiring),
            "retired" => Some(KeyState::Retired),
            _ => None,
        }
    }
}

/// A token signing key as the store keeps it: the private half only
/// sealed (auth seals and opens it with its key-encryption key; the store
/// never sees it in the clear).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    pub kid: String,
    /// The raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// The PKCS#8 private key, sealed.
    pub private_sealed: Vec<u8>,
    pub created_at: i64,
    pub state: KeyState,
    /// When it stopped signing (`Retiring` and `Retired`).
    pub retiring_at: Option<i64>,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("state", &self.state)
            .field("retiring_at", &self.retiring_at)
            .finish_non_exhaustive()
    }
}
