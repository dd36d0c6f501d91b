//! The membership handlers of [`RoomSvc`]: joining, leaving, listing,
//! adding and removing members. `service.rs` delegates its `RoomService`
//! methods for these here. Each change goes out live: `member_joined` or
//! `member_left` to the room and to the user's own connections (a removal
//! ends their subscriptions).

use super::{page, parse_cursor, store_err, RoomSvc, Rpc};
use chat_core::{time, validate, ApiError, RoomId, UserId};
use chat_proto::v1 as pb;
use chat_store::{Membership, Role, RoomKind, Visibility};
use tonic::{Request, Response};

impl RoomSvc {
    async fn publish_membership(&self, room: RoomId, user: UserId, joined: bool) {
        let change = pb::MemberChange {
            room_id: room.to_string(),
            user_id: user.to_string(),
            joined,
        };
        let change = pb::bus_event::Kind::Member(change);
        // Failures are logged by the publisher (see `committed`).
        let _ = self.publisher.to_room(room, change.clone()).await;
        // The user's own connections learn of it too (subscribe_all adds
        // the room; a kick ends the subscription).
        let _ = self.publisher.to_user(user, change).await;
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

    #[tracing::instrument(skip_all)]
    pub(super) async fn join(&self, req: Request<pb::JoinRoomRequest>) -> Rpc<pb::Member> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let (room, m) = self.access.room(&req.get_ref().room_id, c.user_id).await?;
        let m = match m {
            Some(m) => m,
            None => {
                if room.kind == RoomKind::Dm {
                    return Err(ApiError::not_found("room").into());
                }
                let (m, new) = self
                    .store
                    .add_member(room.id, c.user_id, Role::Member, time::now_ms())
                    .await
                    .map_err(store_err("room"))?;
                if new {
                    self.publish_membership(room.id, c.user_id, true).await;
                }
                m
            }
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
        if self.store.remove_member(room.id, c.user_id).await? {
            self.publish_membership(room.id, c.user_id, false).await;
        }
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
                .map(|(m, on)| crate::convert::member(m, on))
                .collect(),
            next_cursor,
        }))
    }

    #[tracing::instrument(skip_all)]
    pub(super) async fn add(&self, req: Request<pb::AddMemberRequest>) -> Rpc<pb::Member> {
        let c = self.access.caller(&req).await?;
        self.membership_limit.check(c.user_id).await?;
        let r = req.into_inner();
        let (room, me) = self.access.member(&r.room_id, c.user_id).await?;
        if room.kind == RoomKind::Dm {
            return Err(ApiError::forbidden("a DM has exactly two members").into());
        }
        if room.visibility == Visibility::Private && me.role < Role::Admin {
            return Err(
                ApiError::forbidden("only admins may add members to a private room").into(),
            );
        }
        let target = UserId::parse(&r.user_id)?;
        if self.store.user_by_id(target).await?.is_none() {
            return Err(ApiError::not_found("user").into());
        }
        let (m, new) = self
            .store
            .add_member(room.id, target, Role::Member, time::now_ms())
            .await
            .map_err(store_err("room"))?;
        if new {
            self.publish_membership(room.id, target, true).await;
        }
        Ok(Response::new(self.member_pb(&m).await?))
    }

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
        if self.store.remove_member(room.id, target).await? {
            self.publish_membership(room.id, target, false).await;
        }
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }
}
