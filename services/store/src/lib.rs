//! The Store seam: the source of truth for users, sessions, rooms,
//! memberships and each room's event log.
//!
//! Services hold an `Arc<dyn Store>` and never know which backend runs;
//! [`connect`] picks one from the URL scheme: `sqlite://…` for the
//! all-in-one mode, `postgres://…` (or `postgresql://…`) for the distributed
//! one. Every backend passes the same conformance suite
//! (`tests/conformance.rs`, `tests/conformance_postgres.rs`).
//!
//! The two backends run the same statements and decode rows the same way
//! (`sql/`, one module per aggregate: users, sessions, rooms, log); each
//! of `postgres/` and `sqlite/` holds only what its dialect and locking
//! model make different, and `backend.rs` implements [`Store`] for both.
//!
//! Times are milliseconds since the epoch; ids are UUIDs; a room's `seq`
//! starts at 1 and grows by exactly one per durable event (message, edit,
//! deletion).

mod backend;
pub mod error;
mod group_commit;
pub mod model;
pub mod postgres;
mod sql;
mod sql_store;
pub mod sqlite;

use async_trait::async_trait;
use chat_core::{RoomId, Seq, SessionId, UserId};
use std::sync::Arc;

pub use error::StoreError;
pub use group_commit::DEFAULT_QUEUE as DEFAULT_APPEND_QUEUE;
pub use model::*;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Room ids [`Store::last_seqs`] puts in one statement (well under the
/// bound parameters either database takes).
pub const LAST_SEQS_CHUNK: usize = 500;

/// Opens the store named by `url` and applies its migrations, with the
/// default [`StoreOptions`]. `postgres://` URLs take `schema=` and
/// `max_connections=` parameters too (see [`postgres`]).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, &StoreOptions::default()).await
}

/// How a store behaves beyond what its URL says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Message appends that may wait for a group-commit writer; one more
    /// is refused at once with [`StoreError::Busy`].
    pub append_queue: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            append_queue: DEFAULT_APPEND_QUEUE,
        }
    }
}

/// [`connect`] with `options`.
pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect_with(url, options).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect_with(url, options).await?,
        ))
    } else {
        Err(StoreError::Config(format!(
            "unsupported store URL {url:?} (expected sqlite://PATH or postgres://USER@HOST/DB)"
        )))
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<()>;

    // ---- users ----

    /// `AlreadyExists` when the username is taken (case-insensitively).
    async fn create_user(&self, user: &NewUser) -> Result<User>;
    /// Live (not deleted) user by username, case-insensitively.
    async fn user_by_username(&self, username: &str) -> Result<Option<UserAuth>>;
    /// Live user by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserAuth>>;
    /// `NotFound` when the user does not exist.
    async fn update_display_name(&self, id: UserId, display_name: &str) -> Result<User>;
    async fn set_password_hash(&self, id: UserId, hash: &str) -> Result<()>;
    /// Marks the user deleted, frees the username and revokes every session;
    /// returns the revoked session ids. Messages stay (their sender id too).
    async fn delete_user(&self, id: UserId, now: i64) -> Result<Vec<SessionId>>;

    // ---- sessions and refresh tokens ----

    /// Creates a session whose first refresh token has hash `token_hash`.
    async fn create_session(&self, session: &NewSession, token_hash: &[u8]) -> Result<()>;
    /// Spends the refresh token with hash `old_hash` and issues `new_hash` in
    /// the same session, atomically, keeping `new_sealed` (the new token,
    /// sealed by the caller; opaque here) with the spent one. A token spent
    /// less than `grace_ms` ago whose successor is still live gets that
    /// successor's sealed token back (`Replayed`: two tabs, a retry after a
    /// timeout); any other spent token revokes the whole session (`Reused`).
    /// A session past `limits` at `now` is revoked in the same transaction
    /// (`Expired`), so no concurrent refresh slips past them.
    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        new_sealed: &[u8],
        now: i64,
        grace_ms: i64,
        limits: SessionLimits,
    ) -> Result<RotateOutcome>;
    async fn session(&self, id: SessionId) -> Result<Option<Session>>;
    /// The user's live sessions, newest first.
    async fn list_sessions(&self, user_id: UserId) -> Result<Vec<Session>>;
    /// Revokes one session of `user_id`; false when there was no such live one.
    async fn revoke_session(&self, user_id: UserId, id: SessionId, now: i64) -> Result<bool>;
    /// Revokes every live session of the user except `keep`; returns their ids.
    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        keep: Option<SessionId>,
        now: i64,
    ) -> Result<Vec<SessionId>>;
    /// Sessions revoked at or after `since` (to seed the revocation list at
    /// start-up, so a restart does not revive a logged-out access token).
    async fn sessions_revoked_since(&self, since: i64) -> Result<Vec<SessionId>>;
    /// Which of `ids` have ended at `now`: revoked, their user deleted,
    /// past `limits`, or unknown (the source of truth gateways re-check
    /// open WebSockets against; the revocation list is only its cache).
    async fn ended_sessions(
        &self,
        ids: &[SessionId],
        limits: SessionLimits,
        now: i64,
    ) -> Result<Vec<SessionId>>;

    // ---- token signing keys ----

    /// Every signing key not retired (the active one and those still
    /// verifying), oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>>;
    /// Adds a key in its state. `AlreadyExists` if the kid is known, or if
    /// the key is active and another one is (so that replicas creating the
    /// first key at once agree on one).
    async fn add_signing_key(&self, key: &StoredSigningKey) -> Result<()>;
    /// Makes `key` the active key; the one active until now starts
    /// retiring at `now`. `AlreadyExists` if a concurrent rotation won.
    async fn rotate_signing_key(&self, key: &StoredSigningKey, now: i64) -> Result<()>;
    /// Retires keys that started retiring before `before`; how many.
    async fn retire_signing_keys(&self, before: i64) -> Result<u64>;

    // ---- rooms and memberships ----

    /// Creates the room with `owner` as its first member (role owner).
    async fn create_room(&self, room: &NewRoom, owner: UserId) -> Result<Room>;
    /// The DM room between two users, created on first call; the same room
    /// every time, whatever the argument order. Both are members.
    async fn open_dm(&self, room: &NewRoom, a: UserId, b: UserId) -> Result<Room>;
    /// Live (not deleted) room.
    async fn room(&self, id: RoomId) -> Result<Option<Room>>;
    /// The last seq of each live room of `ids` (deleted and unknown rooms
    /// are left out), in no particular order: what a gateway's tail check
    /// compares what it delivered with. Any number of ids; the backend
    /// reads them [`LAST_SEQS_CHUNK`] at a time.
    async fn last_seqs(&self, ids: &[RoomId]) -> Result<Vec<(RoomId, Seq)>>;
    /// `NotFound` when the room does not exist.
    async fn update_room(&self, id: RoomId, patch: &RoomPatch) -> Result<Room>;
    async fn delete_room(&self, id: RoomId, now: i64) -> Result<()>;
    /// Public group rooms whose name contains `q` (case-insensitive), by id,
    /// starting after `after` (the cursor).
    async fn list_public_rooms(
        &self,
        q: &str,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<Room>>;
    /// Rooms the user belongs to, by room id after `after`, with unread counts.
    async fn list_user_rooms(
        &self,
        user_id: UserId,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<UserRoom>>;
    /// Every room id the user belongs to.
    async fn user_room_ids(&self, user_id: UserId) -> Result<Vec<RoomId>>;
    async fn membership(&self, room: RoomId, user: UserId) -> Result<Option<Membership>>;
    /// The live room and the user's membership of it, if any: what every
    /// room call checks access with, so a backend should answer it in one
    /// read.
    async fn room_access(
        &self,
        room: RoomId,
        user: UserId,
    ) -> Result<Option<(Room, Option<Membership>)>> {
        let Some(r) = self.room(room).await? else {
            return Ok(None);
        };
        Ok(Some((r, self.membership(room, user).await?)))
    }
    /// Adds a member; returns it and whether it is new (joining twice is fine).
    /// A new member's read marker starts at the room's last seq: history
    /// from before they joined does not count as unread. `Banned` when the
    /// user is banned from the room.
    async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
        now: i64,
    ) -> Result<(Membership, bool)>;
    /// False when the user was not a member; `SoleOwner` for the owner, who
    /// must hand the room over first ([`Store::set_member_role`]).
    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool>;
    /// Sets `user`'s role as `by`, in one transaction that holds the room's
    /// lock (so two transfers of one room queue, and the second finds `by`
    /// no longer the owner): `by` must be the owner (`Forbidden`), `user` a
    /// member (`NotFound`). `Role::Owner` hands the room over and makes `by`
    /// an admin at the same time, so a room always has exactly one owner;
    /// the owner's own role changes only that way (`SoleOwner`). Returns
    /// `user`'s membership as it now is.
    async fn set_member_role(
        &self,
        room: RoomId,
        by: UserId,
        user: UserId,
        role: Role,
    ) -> Result<Membership>;
    /// Bans `user` from the live room (`NotFound` for no such room or user)
    /// and ends their membership, in one transaction under the room's lock;
    /// `SoleOwner` for the owner. Banning twice keeps the first ban. Returns
    /// the ban and whether a membership ended. Who may ban whom is the
    /// caller's to check.
    async fn ban_member(
        &self,
        room: RoomId,
        user: UserId,
        by: UserId,
        now: i64,
    ) -> Result<(Ban, bool)>;
    /// Lifts a ban; false when there was none.
    async fn unban_member(&self, room: RoomId, user: UserId) -> Result<bool>;
    /// The room's bans with the banned users' profiles, by user id after
    /// `after`.
    async fn list_bans(&self, room: RoomId, after: Option<UserId>, limit: u32) -> Result<Vec<Ban>>;
    /// Members with their profile, by user id after `after`.
    async fn list_members(
        &self,
        room: RoomId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<MemberProfile>>;
    /// Moves the read marker forward only (never past the room's last seq).
    async fn mark_read(&self, room: RoomId, user: UserId, seq: Seq) -> Result<()>;

    // ---- the event log ----

    /// The hot path, in one transaction: the sender must be a member
    /// (`NotMember`), a repeated `(room, sender, client_msg_id)` returns the
    /// original message with `false`, otherwise the room's next seq is
    /// assigned and the message committed (`true`).
    async fn append_message(&self, msg: &NewMessage) -> Result<(Message, bool)>;
    /// The message `sender` sent to `room` with `client_msg_id`, if any:
    /// what a retry of it is answered with, without appending.
    async fn sent_message(
        &self,
        room: RoomId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>>;
    /// Appends a `message_edited` event and updates the message's body.
    /// `NotFound` for no such (live) message, `Forbidden` unless `editor` wrote it.
    async fn edit_message(&self, edit: &EditMessage) -> Result<(Event, Message)>;
    /// Appends a `message_deleted` event and tombstones the message. The
    /// caller has checked that `by` may delete it.
    async fn delete_message(
        &self,
        room: RoomId,
        target: Seq,
        by: UserId,
        now: i64,
    ) -> Result<Event>;
    /// One message by seq (in its current state).
    async fn message(&self, room: RoomId, seq: Seq) -> Result<Option<Message>>;
    /// Messages (not edit/delete events) in their current state, ascending
    /// seq, within the bounds; `has_more` tells whether the page was cut.
    /// With only `before`, the page is the newest `limit` before it.
    async fn list_messages(
        &self,
        room: RoomId,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)>;
    /// Every event with `seq > after`, ascending, at most `limit`.
    async fn list_events(&self, room: RoomId, after: Seq, limit: u32)
        -> Result<(Vec<Event>, bool)>;
}

/// The `/readyz` probe of a store: its `ping`.
pub fn ready_check(s: Arc<dyn Store>) -> chat_core::health::ReadyCheck {
    chat_core::health::ReadyCheck::new("store", move || {
        let s = s.clone();
        async move { s.ping().await }
    })
}
