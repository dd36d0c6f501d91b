//! [`Store`] once, for every SQL [`Backend`]: each method hands its work
//! to the shared code of its aggregate in [`crate::sql`] (`users`,
//! `sessions`, `rooms`, `log`), with the backend's pools and locking.

use async_trait::async_trait;
use chat_core::{RoomId, Seq, SessionId, UserId};

use crate::backend::Backend;
use crate::sql::log;
use crate::sql::{keys, roles, rooms, sessions, stmt, users};
use crate::{
    Ban, EditMessage, Event, MemberProfile, Membership, Message, NewMessage, NewRoom, NewSession,
    NewUser, Result, Role, Room, RoomPatch, RotateOutcome, Session, SessionLimits, Store,
    StoredSigningKey, User, UserAuth, UserRoom,
};

#[async_trait]
impl<B: Backend> Store for B {
    async fn ping(&self) -> Result<()> {
        stmt::<B::Db>("SELECT 1").execute(self.reader()).await?;
        Ok(())
    }

    // ---- users ----

    async fn create_user(&self, user: &NewUser) -> Result<User> {
        users::create(self, user).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserAuth>> {
        users::by_username(self, username).await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserAuth>> {
        users::by_id(self, id).await
    }

    async fn update_display_name(&self, id: UserId, display_name: &str) -> Result<User> {
        users::update_display_name(self, id, display_name).await
    }

    async fn set_password_hash(&self, id: UserId, hash: &str) -> Result<()> {
        users::set_password_hash(self, id, hash).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
    async fn delete_user(&self, id: UserId, now: i64) -> Result<Vec<SessionId>> {
        users::delete(self, id, now).await
    }

    // ---- sessions and refresh tokens ----

    async fn create_session(&self, session: &NewSession, token_hash: &[u8]) -> Result<()> {
        sessions::create(self, session, token_hash).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        new_sealed: &[u8],
        now: i64,
        grace_ms: i64,
        limits: SessionLimits,
    ) -> Result<RotateOutcome> {
        sessions::rotate_refresh_token(self, old_hash, new_hash, new_sealed, now, grace_ms, limits)
            .await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>> {
        sessions::get(self, id).await
    }

    async fn list_sessions(&self, user_id: UserId) -> Result<Vec<Session>> {
        sessions::list(self, user_id).await
    }

    async fn revoke_session(&self, user_id: UserId, id: SessionId, now: i64) -> Result<bool> {
        sessions::revoke(self, user_id, id, now).await
    }

    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        keep: Option<SessionId>,
        now: i64,
    ) -> Result<Vec<SessionId>> {
        sessions::revoke_all(self, user_id, keep, now).await
    }

    async fn sessions_revoked_since(&self, since: i64) -> Result<Vec<SessionId>> {
        sessions::revoked_since(self, since).await
    }

    async fn ended_sessions(
        &self,
        ids: &[SessionId],
        limits: SessionLimits,
        now: i64,
    ) -> Result<Vec<SessionId>> {
        sessions::ended(self, ids, limits, now).await
    }

    // ---- token signing keys ----

    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>> {
        keys::list(self).await
    }

    async fn add_signing_key(&self, key: &StoredSigningKey) -> Result<()> {
        keys::add(self, key).await
    }

    async fn rotate_signing_key(&self, key: &StoredSigningKey, now: i64) -> Result<()> {
        keys::rotate(self, key, now).await
    }

    async fn retire_signing_keys(&self, before: i64) -> Result<u64> {
        keys::retire(self, before).await
    }

    // ---- rooms and memberships ----

    async fn create_room(&self, room: &NewRoom, owner: UserId) -> Result<Room> {
        rooms::create(self, room, owner).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room.id))]
    async fn open_dm(&self, room: &NewRoom, a: UserId, b: UserId) -> Result<Room> {
        self.find_or_create_dm(room, a, b).await
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        rooms::get(self, id).await
    }

    async fn last_seqs(&self, ids: &[RoomId]) -> Result<Vec<(RoomId, Seq)>> {
        rooms::last_seqs(self, ids).await
    }

    async fn update_room(&self, id: RoomId, patch: &RoomPatch) -> Result<Room> {
        rooms::update(self, id, patch).await
    }

    async fn delete_room(&self, id: RoomId, now: i64) -> Result<()> {
        rooms::delete(self, id, now).await
    }

    async fn list_public_rooms(
        &self,
        q: &str,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<Room>> {
        rooms::list_public(self, q, after, limit).await
    }

    async fn list_user_rooms(
        &self,
        user_id: UserId,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<UserRoom>> {
        rooms::list_for_user(self, user_id, after, limit).await
    }

    async fn user_room_ids(&self, user_id: UserId) -> Result<Vec<RoomId>> {
        rooms::ids_for_user(self, user_id).await
    }

    async fn membership(&self, room: RoomId, user: UserId) -> Result<Option<Membership>> {
        rooms::membership(self, room, user).await
    }

    async fn room_access(
        &self,
        room: RoomId,
        user: UserId,
    ) -> Result<Option<(Room, Option<Membership>)>> {
        rooms::access(self, room, user).await
    }

    async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
        now: i64,
    ) -> Result<(Membership, bool)> {
        rooms::add_member(self, room, user, role, now).await
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        roles::remove_member(self, room, user).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room, user_id = %user))]
    async fn set_member_role(
        &self,
        room: RoomId,
        by: UserId,
        user: UserId,
        role: Role,
    ) -> Result<Membership> {
        roles::set_role(self, room, by, user, role).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room, user_id = %user))]
    async fn ban_member(
        &self,
        room: RoomId,
        user: UserId,
        by: UserId,
        now: i64,
    ) -> Result<(Ban, bool)> {
        roles::ban_member(self, room, user, by, now).await
    }

    async fn unban_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        roles::unban_member(self, room, user).await
    }

    async fn list_bans(&self, room: RoomId, after: Option<UserId>, limit: u32) -> Result<Vec<Ban>> {
        roles::list_bans(self, room, after, limit).await
    }

    async fn list_members(
        &self,
        room: RoomId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<MemberProfile>> {
        rooms::list_members(self, room, after, limit).await
    }

    async fn mark_read(&self, room: RoomId, user: UserId, seq: Seq) -> Result<()> {
        rooms::mark_read(self, room, user, seq).await
    }

    // ---- the event log ----

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(room_id = %msg.room_id, client_msg_id = %msg.client_msg_id)
    )]
    async fn append_message(&self, msg: &NewMessage) -> Result<(Message, bool)> {
        log::append(self, msg).await
    }

    async fn sent_message(
        &self,
        room: RoomId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>> {
        log::sent(self.reader(), room, sender, client_msg_id).await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(room_id = %edit.room_id, target_seq = edit.target)
    )]
    async fn edit_message(&self, edit: &EditMessage) -> Result<(Event, Message)> {
        log::edit(self, edit).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(room_id = %room, target_seq = target))]
    async fn delete_message(
        &self,
        room: RoomId,
        target: Seq,
        by: UserId,
        now: i64,
    ) -> Result<Event> {
        log::delete(self, room, target, by, now).await
    }

    async fn message(&self, room: RoomId, seq: Seq) -> Result<Option<Message>> {
        log::message(self, room, seq).await
    }

    async fn list_messages(
        &self,
        room: RoomId,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        log::list_messages(self, room, before, after, limit).await
    }

    async fn list_events(
        &self,
        room: RoomId,
        after: Seq,
        limit: u32,
    ) -> Result<(Vec<Event>, bool)> {
        log::list_events(self, room, after, limit).await
    }
}
