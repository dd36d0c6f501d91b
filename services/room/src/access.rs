//! Who may do what in a room: the caller, from the request's token or a
//! gateway's assertion, and the room with the caller's membership and role.
//! Every handler starts here; a private room is `not_found` to outsiders.
//! Only `ListEvents` also takes the gateway calling as itself, and
//! `LastSeqs` takes nobody else.

use chat_authn::internal::GATEWAY;
use chat_authn::{Caller, Principal, Verifier};
use chat_core::{ApiError, RoomId, UserId};
use chat_store::{Membership, Role, Room, Store, Visibility};
use std::sync::Arc;
use tonic::Request;

/// The access checks, over the store and the token verifier.
pub(crate) struct Access {
    store: Arc<dyn Store>,
    verifier: Verifier,
}

impl Access {
    pub(crate) fn new(store: Arc<dyn Store>, verifier: Verifier) -> Self {
        Self { store, verifier }
    }

    /// The user calling (a service calling as itself is refused).
    pub(crate) async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, ApiError> {
        self.verifier.verify_request(req).await
    }

    /// The room and the caller's membership. A private room is `not_found`
    /// to non-members, so outsiders cannot probe for it.
    pub(crate) async fn room(
        &self,
        room_id: &str,
        user: UserId,
    ) -> Result<(Room, Option<Membership>), ApiError> {
        let id = RoomId::parse(room_id)?;
        let (room, m) = self
            .store
            .room_access(id, user)
            .await?
            .ok_or_else(|| ApiError::not_found("room"))?;
        if m.is_none() && room.visibility == Visibility::Private {
            return Err(ApiError::not_found("room"));
        }
        Ok((room, m))
    }

    /// Like [`Self::room`], but the caller must be a member.
    pub(crate) async fn member(
        &self,
        room_id: &str,
        user: UserId,
    ) -> Result<(Room, Membership), ApiError> {
        match self.room(room_id, user).await? {
            (room, Some(m)) => Ok((room, m)),
            (_, None) => Err(ApiError::forbidden("not a member of this room")),
        }
    }

    /// Like [`Self::member`], with at least the role `min`.
    pub(crate) async fn member_with_role(
        &self,
        room_id: &str,
        user: UserId,
        min: Role,
    ) -> Result<(Room, Membership), ApiError> {
        let (room, m) = self.member(room_id, user).await?;
        if m.role < min {
            return Err(ApiError::forbidden(format!(
                "requires the {} role or above",
                min.as_str()
            )));
        }
        Ok((room, m))
    }

    /// Only the gateway calling as itself (`LastSeqs`: its tail check of
    /// every room it has subscribers in; read-only, seqs only).
    pub(crate) async fn gateway<T>(&self, req: &Request<T>) -> Result<(), ApiError> {
        match self.verifier.verify_principal(req).await? {
            Principal::Service(name) if name == GATEWAY => Ok(()),
            Principal::Service(_) => Err(ApiError::unauthorized("this call needs the gateway")),
            Principal::User(_) => Err(ApiError::forbidden("this call is the gateway's")),
        }
    }

    /// The room whose event log the caller may read (`ListEvents`): a
    /// member's room, or any live room for the gateway calling as itself.
    /// A gateway's hub backfills a room once for all the room's local
    /// subscribers, each of whom it let subscribe as a member; the call is
    /// read-only and the events go to no one else.
    pub(crate) async fn log_reader<T>(
        &self,
        req: &Request<T>,
        room_id: &str,
    ) -> Result<Room, ApiError> {
        match self.verifier.verify_principal(req).await? {
            Principal::User(c) => Ok(self.member(room_id, c.user_id).await?.0),
            Principal::Service(name) if name == GATEWAY => self
                .store
                .room(RoomId::parse(room_id)?)
                .await?
                .ok_or_else(|| ApiError::not_found("room")),
            Principal::Service(_) => Err(ApiError::unauthorized("this call needs a user")),
        }
    }
}
