//! The membership handlers of [`RoomSvc`]: joining, leaving, listing,
//! adding and removing members, roles and bans. `service.rs` delegates its
//! `RoomService` methods for these here.
//!
//! The rules (the table in `docs/api.md`): the owner grants and revokes
//! `admin` and hands the room over; admins kick and ban members of lower
//! role and add anyone; a member adds only themselves to a public room.
//! The store keeps the room's one owner: the owner cannot leave, be
//! removed or banned until someone else owns the room (`conflict`). Each
//! change goes out live as membership does: `member_joined`/`member_left`
//! to the room and to the user's own connections (a removal or ban ends
//! their subscriptions), `member_role` to the room.

use super::{page, parse_cursor, store_err, RoomSvc, Rpc};
use crate::convert;
use chat_core::{time, validate, ApiError, RoomId, UserId};
use chat_proto::v1 as pb;
use chat_store::{Membership, Role, Room, RoomKind, StoreError, Visibility};
use tonic::{Request, Response};

impl RoomSvc {
    async fn publish_membership(&self, room: RoomId, user: UserId, joined: bool) {
        let change = member_change(room, user, joined);
        // Failures are logged by the publisher (see `committed`).
        let _ = self.publisher.to_room(room, change.clone()).await;
        // The user's own connections learn of it too (subscribe_all adds
        // the room; a kick ends the subscription).
        let _ = self.publisher.to_user(user, change).await;
    }

    /// Tells `users`' own connections that they became members of a room
    /// they did not join (they created it, or a DM was opened): their
    /// `subscribe_all` follows it as it follows a join. The room hears
    /// nothing: it has no one else to tell.
    pub(super) async fn publish_new_member(&self, room: RoomId, users: &[UserId]) {
        for &user in users {
            let change = member_change(room, user, true);
            let _ = self.publisher.to_user(user, change).await;
        }
    }

    async fn publish_role(&self, m: &Membership) {
        let change = pb::bus_event::Kind::MemberRole(pb::MemberRole {
            room_id: m.room_id.to_string(),
            user_id: m.user_id.to_string(),
            role: m.role.as_str().into(),
        });
        let _ = self.publisher.to_room(m.room_id, change).await;
    }

    async fn member_pb(&self, m: &Membership) -> Result<pb::Member, ApiError> {
        let u = self.store.user_by_id(m.user_id).await?;
        let online = self
            .ephemeral
            .online(&[m.user_id])
            .await
            .map(|v| v.first().copied().unwrap_or(false))
            .unwrap_or(false);
        Ok(pb::Member {
            room_id: m.room_id.to_string(),
            user_id: m.user_id.to_string(),
            username: u
                .as_ref()
                .map(|u| u.user.username.clone())
                .unwrap_or_default(),
            display_name: u.map(|u| u.user.display_name).unwrap_or_default(),
            role: m.role.as_str().into(),
            online,
            joined_at: time::rfc3339(m.joined_at),
        })
    }

    /// Adds `user` as a member and announces it if new; `Banned` becomes
    /// `forbidden`.
    async fn admit(&self, room: &Room, user: UserId) -> Result<Membership, ApiError> {
        let (m, new) = self
            .store
            .add_member(room.id, user, Role::Member, time::now_ms())
            .await
            .map_err(store_err("room"))?;
        if new {
            self.publish_membership(room.id, user, true).await;
        }
        Ok(m)
    }

    /// Ends `user`'s membership and announces it; `SoleOwner` becomes
    /// `conflict`.
    async fn dismiss(&self, room: RoomId, user: UserId) -> Result<(), ApiError> {
        if self
            .store
            .remove_member(room, user)
            .await
            .map_err(store_err("member"))?
        {
            self.publish_membership(room, user, false).await;
        }
        Ok(())
    }

    /// The room (not a DM) and the caller's membership, with at least `min`.
    async fn managed(
        &self,
        room_id: &str,
        user: UserId,
        min: Role,
    ) -> Result<(Room, Membership), ApiError> {
        let (room, me) = self.access.member_with_role(room_id, user, min).await?;
        if room.kind == RoomKind::Dm {
            return Err(ApiError::forbidden("a DM has no roles or bans"));
        }
        Ok((room, me))
    }

    #[tracing::instrument(skip_all)]
    pub(super) async fn join(&self, req: Request<pb::JoinRoomRequest>) -> Rpc<pb::Member> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let (room, m) = self.access.room(&req.get_ref().room_id, c.user_id).await?;
        let m = match m {
            Some(m) => m,
            None if room.kind == RoomKind::Dm => return Err(ApiError::not_found("room").into()),
            None => self.admit(&room, c.user_id).await?,
        };
        Ok(Response::new(self.member_pb(&m).await?))
    }

    pub(super) async fn leave(
        &self,
        req: Request<pb::LeaveRoomRequest>,
    ) -> Rpc<pb::LeaveRoomResponse> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let (room, _) = self
            .access
            .member(&req.get_ref().room_id, c.user_id)
            .await?;
        self.dismiss(room.id, c.user_id).await?;
        Ok(Response::new(pb::LeaveRoomResponse {}))
    }

    pub(super) async fn members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Rpc<pb::ListMembersResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.access.room(&r.room_id, c.user_id).await?;
        let limit = validate::limit(r.limit)?;
        let after = parse_cursor(&r.cursor, UserId::parse)?;
        let members = self.store.list_members(room.id, after, limit + 1).await?;
        let (members, next_cursor) = page(members, limit, |m| m.membership.user_id.to_string());
        let ids: Vec<UserId> = members.iter().map(|m| m.membership.user_id).collect();
        let online = self.ephemeral.online(&ids).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "presence unavailable");
            vec![false; ids.len()]
        });
        Ok(Response::new(pb::ListMembersResponse {
            items: members
                .iter()
                .zip(online.into_iter().chain(std::iter::repeat(false)))
                .map(|(m, on)| convert::member(m, on))
                .collect(),
            next_cursor,
        }))
    }

    /// Admins add anyone; a user adds themselves to a public room (a join).
    #[tracing::instrument(skip_all)]
    pub(super) async fn add(&self, req: Request<pb::AddMemberRequest>) -> Rpc<pb::Member> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let r = req.into_inner();
        let target = UserId::parse(&r.user_id)?;
        let (room, me) = self.access.room(&r.room_id, c.user_id).await?;
        if room.kind == RoomKind::Dm {
            return Err(ApiError::forbidden("a DM has exactly two members").into());
        }
        let my_role = me.map(|m| m.role);
        let own_join = target == c.user_id && room.visibility == Visibility::Public;
        if my_role < Some(Role::Admin) && !own_join {
            return Err(match (my_role, room.visibility) {
                (None, _) => ApiError::forbidden("not a member of this room"),
                (Some(_), Visibility::Private) => {
                    ApiError::forbidden("only admins may add members to a private room")
                }
                (Some(_), Visibility::Public) => {
                    ApiError::forbidden("only admins may add other users to a room")
                }
            }
            .into());
        }
        if self.store.user_by_id(target).await?.is_none() {
            return Err(ApiError::not_found("user").into());
        }
        let m = self.admit(&room, target).await?;
        Ok(Response::new(self.member_pb(&m).await?))
    }

    /// A kick: admins remove members of lower role; anyone but the owner
    /// removes themselves.
    #[tracing::instrument(skip_all)]
    pub(super) async fn remove(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Rpc<pb::RemoveMemberResponse> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let r = req.into_inner();
        let (room, me) = self
            .access
            .member_with_role(&r.room_id, c.user_id, Role::Admin)
            .await?;
        let target = UserId::parse(&r.user_id)?;
        let them = self
            .store
            .membership(room.id, target)
            .await?
            .ok_or_else(|| ApiError::not_found("member"))?;
        if target != c.user_id && them.role >= me.role {
            return Err(
                ApiError::forbidden("cannot remove a member of equal or higher role").into(),
            );
        }
        self.dismiss(room.id, target).await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    #[tracing::instrument(skip_all)]
    pub(super) async fn set_role(&self, req: Request<pb::SetMemberRoleRequest>) -> Rpc<pb::Member> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let r = req.into_inner();
        let role = Role::parse(&r.role)
            .ok_or_else(|| ApiError::invalid("role", "must be owner, admin or member"))?;
        let (room, _) = self.managed(&r.room_id, c.user_id, Role::Owner).await?;
        let target = UserId::parse(&r.user_id).map_err(|_| ApiError::not_found("member"))?;
        let m = self
            .store
            .set_member_role(room.id, c.user_id, target, role)
            .await
            .map_err(|e| match e {
                StoreError::Forbidden => ApiError::forbidden("only the owner may change roles"),
                e => store_err("member")(e),
            })?;
        // The new role first; for a transfer, the old owner's after it.
        self.publish_role(&m).await;
        if role == Role::Owner && target != c.user_id {
            tracing::info!(room_id = %room.id, user_id = %target, "ownership transferred");
            if let Some(old) = self.store.membership(room.id, c.user_id).await? {
                self.publish_role(&old).await;
            }
        }
        Ok(Response::new(self.member_pb(&m).await?))
    }

    /// Admins ban users of lower role (members or not); the ban ends the
    /// membership as a removal does.
    #[tracing::instrument(skip_all)]
    pub(super) async fn ban(&self, req: Request<pb::BanMemberRequest>) -> Rpc<pb::Ban> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let r = req.into_inner();
        let (room, me) = self.managed(&r.room_id, c.user_id, Role::Admin).await?;
        let target = UserId::parse(&r.user_id).map_err(|_| ApiError::not_found("user"))?;
        let them = self.store.membership(room.id, target).await?;
        if target == c.user_id {
            return Err(ApiError::forbidden("cannot ban yourself").into());
        }
        if them.is_some_and(|t| t.role >= me.role) {
            return Err(ApiError::forbidden("cannot ban a member of equal or higher role").into());
        }
        let (ban, removed) = self
            .store
            .ban_member(room.id, target, c.user_id, time::now_ms())
            .await
            .map_err(store_err("user"))?;
        tracing::info!(room_id = %room.id, user_id = %target, "user banned");
        if removed {
            self.publish_membership(room.id, target, false).await;
        }
        Ok(Response::new(convert::ban(&ban)))
    }

    pub(super) async fn unban(
        &self,
        req: Request<pb::UnbanMemberRequest>,
    ) -> Rpc<pb::UnbanMemberResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.managed(&r.room_id, c.user_id, Role::Admin).await?;
        let target = UserId::parse(&r.user_id).map_err(|_| ApiError::not_found("ban"))?;
        if !self.store.unban_member(room.id, target).await? {
            return Err(ApiError::not_found("ban").into());
        }
        Ok(Response::new(pb::UnbanMemberResponse {}))
    }

    pub(super) async fn bans(
        &self,
        req: Request<pb::ListBansRequest>,
    ) -> Rpc<pb::ListBansResponse> {
        let c = self.access.caller(&req).await?;
        let r = req.into_inner();
        let (room, _) = self.managed(&r.room_id, c.user_id, Role::Admin).await?;
        let limit = validate::limit(r.limit)?;
        let after = parse_cursor(&r.cursor, UserId::parse)?;
        let bans = self.store.list_bans(room.id, after, limit + 1).await?;
        let (bans, next_cursor) = page(bans, limit, |b| b.user_id.to_string());
        Ok(Response::new(pb::ListBansResponse {
            items: bans.iter().map(convert::ban).collect(),
            next_cursor,
        }))
    }
}

/// The bus notice that `user` joined or left `room`.
fn member_change(room: RoomId, user: UserId, joined: bool) -> pb::bus_event::Kind {
    pb::bus_event::Kind::Member(pb::MemberChange {
        room_id: room.to_string(),
        user_id: user.to_string(),
        joined,
    })
}
