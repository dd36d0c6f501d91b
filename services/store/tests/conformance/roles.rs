//! Conformance cases for roles and bans: the room's one owner, ownership
//! transfer (also under concurrency), removals and bans.

use std::sync::Arc;

use chat_core::{RoomId, UserId};
use chat_store::{Role, Store, StoreError};

use super::{group, user, T0};

async fn role_of(s: &dyn Store, room: RoomId, user: UserId) -> Option<Role> {
    s.membership(room, user)
        .await
        .expect("membership")
        .map(|m| m.role)
}

async fn owners(s: &dyn Store, room: RoomId) -> usize {
    s.list_members(room, None, 100)
        .await
        .expect("list members")
        .iter()
        .filter(|m| m.membership.role == Role::Owner)
        .count()
}

pub async fn only_the_owner_changes_roles_and_a_transfer_keeps_one_owner(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;
    let dave = user(s, "dave").await;
    let room = group(s, alice.id, &[bob.id, carol.id]).await;

    let m = s
        .set_member_role(room.id, alice.id, bob.id, Role::Admin)
        .await
        .unwrap();
    assert_eq!((m.user_id, m.role), (bob.id, Role::Admin));
    assert!(matches!(
        s.set_member_role(room.id, bob.id, carol.id, Role::Admin)
            .await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        s.set_member_role(room.id, alice.id, dave.id, Role::Admin)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.set_member_role(room.id, alice.id, alice.id, Role::Member)
            .await,
        Err(StoreError::SoleOwner)
    ));
    let same = s
        .set_member_role(room.id, alice.id, alice.id, Role::Owner)
        .await
        .unwrap();
    assert_eq!(
        same.role,
        Role::Owner,
        "handing the room to oneself is a no-op"
    );
    let m = s
        .set_member_role(room.id, alice.id, bob.id, Role::Member)
        .await
        .unwrap();
    assert_eq!(m.role, Role::Member, "a revocation");

    let m = s
        .set_member_role(room.id, alice.id, carol.id, Role::Owner)
        .await
        .unwrap();
    assert_eq!(m.role, Role::Owner);
    assert_eq!(role_of(s, room.id, alice.id).await, Some(Role::Admin));
    assert_eq!(owners(s, room.id).await, 1);
    assert!(matches!(
        s.set_member_role(room.id, alice.id, bob.id, Role::Owner)
            .await,
        Err(StoreError::Forbidden),
    ));

    // The owner cannot be removed; anyone else can.
    assert!(matches!(
        s.remove_member(room.id, carol.id).await,
        Err(StoreError::SoleOwner)
    ));
    assert!(s.remove_member(room.id, alice.id).await.unwrap());
    assert!(!s.remove_member(room.id, alice.id).await.unwrap());
    assert!(matches!(
        s.set_member_role(RoomId::new(), carol.id, bob.id, Role::Admin)
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn concurrent_transfers_leave_exactly_one_owner(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let heirs = [user(s, "bob").await.id, user(s, "carol").await.id];
    let room = group(s, alice.id, &heirs).await;

    let tasks: Vec<_> = heirs
        .iter()
        .map(|&heir| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .set_member_role(room.id, alice.id, heir, Role::Owner)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.expect("transfer task") {
            Ok(m) => {
                assert_eq!(m.role, Role::Owner);
                won += 1;
            }
            Err(StoreError::Forbidden) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1, "one transfer wins; the other finds alice no owner");
    assert_eq!(owners(s, room.id).await, 1);
    assert_eq!(role_of(s, room.id, alice.id).await, Some(Role::Admin));
}

pub async fn a_ban_ends_the_membership_and_keeps_the_user_out(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;
    let room = group(s, alice.id, &[bob.id]).await;

    let (ban, removed) = s
        .ban_member(room.id, bob.id, alice.id, T0 + 1)
        .await
        .unwrap();
    assert!(removed);
    assert_eq!(
        (ban.room_id, ban.user_id, ban.banned_by, ban.banned_at),
        (room.id, bob.id, alice.id, T0 + 1)
    );
    assert_eq!(ban.username, bob.username);
    assert_eq!(role_of(s, room.id, bob.id).await, None);
    assert!(matches!(
        s.add_member(room.id, bob.id, Role::Member, T0 + 2).await,
        Err(StoreError::Banned)
    ));
    let (again, removed) = s
        .ban_member(room.id, bob.id, alice.id, T0 + 3)
        .await
        .unwrap();
    assert!(!removed);
    assert_eq!(again, ban, "banning twice keeps the first ban");

    // A non-member can be banned ahead; the owner and strangers cannot.
    let (_, removed) = s
        .ban_member(room.id, carol.id, alice.id, T0 + 4)
        .await
        .unwrap();
    assert!(!removed);
    assert!(matches!(
        s.ban_member(room.id, alice.id, alice.id, T0).await,
        Err(StoreError::SoleOwner)
    ));
    assert!(matches!(
        s.ban_member(room.id, UserId::new(), alice.id, T0).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.ban_member(RoomId::new(), bob.id, alice.id, T0).await,
        Err(StoreError::NotFound)
    ));

    // Bans by user id, with a cursor.
    let mut banned = [bob.id, carol.id];
    banned.sort();
    let first = s.list_bans(room.id, None, 1).await.unwrap();
    assert_eq!(
        first.iter().map(|b| b.user_id).collect::<Vec<_>>(),
        banned[..1]
    );
    let rest = s.list_bans(room.id, Some(banned[0]), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|b| b.user_id).collect::<Vec<_>>(),
        banned[1..]
    );

    assert!(s.unban_member(room.id, bob.id).await.unwrap());
    assert!(!s.unban_member(room.id, bob.id).await.unwrap());
    let (_, new) = s
        .add_member(room.id, bob.id, Role::Member, T0 + 5)
        .await
        .unwrap();
    assert!(new, "unbanned, bob can come back");
    assert_eq!(s.list_bans(room.id, None, 10).await.unwrap().len(), 1);
}

pub async fn a_deleted_owner_hands_each_room_to_its_next_member(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;
    let gone = user(s, "gone").await;
    // An admin comes first; then the member who joined first.
    let with_admin = group(s, alice.id, &[bob.id, carol.id]).await;
    s.set_member_role(with_admin.id, alice.id, carol.id, Role::Admin)
        .await
        .unwrap();
    let members_only = group(s, alice.id, &[bob.id, carol.id]).await;
    // A room nobody else is in, or only deleted users, goes with her.
    let alone = group(s, alice.id, &[]).await;
    let with_the_deleted = group(s, alice.id, &[gone.id]).await;
    s.delete_user(gone.id, T0 + 1).await.unwrap();
    // A room she merely belongs to is not touched.
    let bobs = group(s, bob.id, &[alice.id]).await;

    s.delete_user(alice.id, T0 + 2).await.unwrap();

    assert_eq!(role_of(s, with_admin.id, carol.id).await, Some(Role::Owner));
    assert_eq!(
        role_of(s, with_admin.id, alice.id).await,
        Some(Role::Member)
    );
    assert_eq!(owners(s, with_admin.id).await, 1);
    assert_eq!(role_of(s, members_only.id, bob.id).await, Some(Role::Owner));
    assert_eq!(
        role_of(s, members_only.id, carol.id).await,
        Some(Role::Member)
    );
    assert_eq!(owners(s, members_only.id).await, 1);
    for room in [alone.id, with_the_deleted.id] {
        assert!(s.room(room).await.unwrap().is_none(), "an empty room goes");
    }
    assert_eq!(role_of(s, bobs.id, bob.id).await, Some(Role::Owner));
    assert_eq!(owners(s, bobs.id).await, 1);
}
