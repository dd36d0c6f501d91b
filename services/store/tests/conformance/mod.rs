//! The Store conformance suite: what every backend must do, written against
//! `Arc<dyn Store>` only.
//!
//! Each case is a `pub async fn case(store: Arc<dyn Store>)` that makes its
//! own users and rooms (names carry a random tag), so the cases can run on a
//! fresh store each or all on one shared store ([`store_conformance`]). A
//! backend instantiates them with [`for_each_case!`]:
//!
//! ```ignore
//! macro_rules! my_backend_cases {
//!     ($($case:ident),* $(,)?) => {$(
//!         #[tokio::test]
//!         async fn $case() { suite::$case(open_my_backend().await).await }
//!     )*};
//! }
//! suite::for_each_case!(my_backend_cases);
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use chat_core::{MessageId, RoomId, Seq, SessionId, UserId};
use chat_store::{
    EditMessage, Event, EventKind, Message, NewMessage, NewRoom, NewSession, NewUser, Role, Room,
    RoomKind, RoomPatch, RotateOutcome, SessionLimits, Store, StoreError, User, Visibility,
};
use uuid::Uuid;

mod keys;
mod roles;
mod sessions;
pub use keys::*;
pub use roles::*;
pub use sessions::*;

/// Calls `$m! { case, case, … }` with every case of the suite.
macro_rules! for_each_case {
    ($m:ident) => {
        $m! {
            usernames_are_unique_case_insensitively,
            deleted_users_free_their_name_and_lose_their_sessions,
            refresh_rotation_spends_the_old_token_and_issues_a_new_one,
            reusing_a_spent_refresh_token_revokes_the_session,
            a_spent_refresh_token_within_the_grace_gets_its_successor_again,
            revoked_sessions_refuse_rotation_and_leave_the_live_list,
            a_session_past_its_max_age_refuses_rotation_and_ends,
            an_idle_refresh_token_is_refused_and_ends_its_session,
            ended_sessions_are_the_revoked_deleted_expired_and_unknown,
            concurrent_appends_get_gapless_unique_seqs,
            appends_in_flight_together_each_get_their_own_answer,
            a_repeated_client_msg_id_returns_the_original_message,
            only_members_can_append_to_a_live_room,
            edits_and_deletions_are_events_with_their_own_seq,
            list_messages_pages_in_all_three_modes,
            list_events_returns_every_kind_after_a_seq,
            unread_counts_only_live_messages_by_others,
            mark_read_moves_forward_only_and_not_past_the_end,
            open_dm_returns_the_same_room_in_either_order,
            public_room_search_escapes_like_wildcards,
            rooms_and_memberships_follow_their_rules,
            room_access_reads_the_room_and_the_callers_membership,
            last_seqs_reads_many_live_rooms_at_once,
            only_the_owner_changes_roles_and_a_transfer_keeps_one_owner,
            concurrent_transfers_leave_exactly_one_owner,
            a_ban_ends_the_membership_and_keeps_the_user_out,
            a_deleted_owner_hands_each_room_to_its_next_member,
            signing_keys_have_one_active_key_and_rotate,
        }
    };
}
pub(crate) use for_each_case;

macro_rules! define_store_conformance {
    ($($case:ident),* $(,)?) => {
        /// Every case, one after another, on one shared store.
        pub async fn store_conformance(store: Arc<dyn Store>) {
            $( $case(store.clone()).await; )*
        }
    };
}
for_each_case!(define_store_conformance);

// ---- helpers ----

const T0: i64 = 1_700_000_000_000;

/// A short random tag that keeps names unique on a shared store.
fn tag() -> String {
    Uuid::new_v4().simple().to_string()[..10].to_string()
}

fn hash(label: &str) -> Vec<u8> {
    format!("hash-{label}-{}", Uuid::new_v4()).into_bytes()
}

async fn user(store: &dyn Store, name: &str) -> User {
    let username = format!("{name}_{}", tag());
    store
        .create_user(&NewUser {
            id: UserId::new(),
            display_name: format!("{name} display"),
            username,
            password_hash: "argon2-hash".into(),
            created_at: T0,
        })
        .await
        .expect("create user")
}

async fn session(store: &dyn Store, user: UserId, created_at: i64, token: &[u8]) -> SessionId {
    let id = SessionId::new();
    store
        .create_session(
            &NewSession {
                id,
                user_id: user,
                user_agent: "test-agent".into(),
                created_at,
            },
            token,
        )
        .await
        .expect("create session");
    id
}

/// The ids of the user's live sessions, newest first.
async fn live_sessions(store: &dyn Store, user: UserId) -> Vec<SessionId> {
    store
        .list_sessions(user)
        .await
        .expect("list sessions")
        .iter()
        .map(|x| x.id)
        .collect()
}

fn new_room(name: &str, visibility: Visibility, kind: RoomKind) -> NewRoom {
    NewRoom {
        id: RoomId::new(),
        name: name.into(),
        topic: "a topic".into(),
        visibility,
        kind,
        created_at: T0,
    }
}

async fn group(store: &dyn Store, owner: UserId, members: &[UserId]) -> Room {
    let room = store
        .create_room(
            &new_room(
                &format!("room {}", tag()),
                Visibility::Public,
                RoomKind::Group,
            ),
            owner,
        )
        .await
        .expect("create room");
    for &m in members {
        store
            .add_member(room.id, m, Role::Member, T0)
            .await
            .expect("add member");
    }
    room
}

fn new_message(room: RoomId, sender: UserId, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        room_id: room,
        id: MessageId::new(),
        sender_id: sender,
        client_msg_id: client_msg_id.into(),
        body: body.into(),
        created_at: T0 + 1,
    }
}

async fn send(store: &dyn Store, room: RoomId, sender: UserId, body: &str) -> Message {
    let (msg, new) = store
        .append_message(&new_message(
            room,
            sender,
            &Uuid::new_v4().to_string(),
            body,
        ))
        .await
        .expect("append message");
    assert!(new);
    msg
}

async fn edit(store: &dyn Store, room: RoomId, target: Seq, editor: UserId, body: &str) -> Event {
    store
        .edit_message(&EditMessage {
            room_id: room,
            target,
            editor,
            body: body.into(),
            now: T0 + 50,
        })
        .await
        .expect("edit message")
        .0
}

async fn unread(store: &dyn Store, user: UserId, room: RoomId) -> i64 {
    let rooms = store
        .list_user_rooms(user, None, 200)
        .await
        .expect("list user rooms");
    rooms
        .into_iter()
        .find(|r| r.room.id == room)
        .expect("room listed for its member")
        .unread
}

fn seqs(messages: &[Message]) -> Vec<Seq> {
    messages.iter().map(|m| m.seq).collect()
}

async fn last_read(store: &dyn Store, room: RoomId, user: UserId) -> Seq {
    store
        .membership(room, user)
        .await
        .expect("membership")
        .expect("is a member")
        .last_read_seq
}

// ---- users and sessions ----

pub async fn usernames_are_unique_case_insensitively(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "Alice").await;

    let clash = s
        .create_user(&NewUser {
            id: UserId::new(),
            username: alice.username.to_uppercase(),
            display_name: "impostor".into(),
            password_hash: "x".into(),
            created_at: T0,
        })
        .await;
    assert!(matches!(clash, Err(StoreError::AlreadyExists)), "{clash:?}");

    let found = s
        .user_by_username(&alice.username.to_lowercase())
        .await
        .unwrap()
        .expect("found case-insensitively");
    assert_eq!(found.user, alice, "the stored spelling is kept");
    assert_eq!(found.password_hash, "argon2-hash");
    assert_eq!(s.user_by_id(alice.id).await.unwrap().unwrap().user, alice);
    assert!(s.user_by_username("nobody_here").await.unwrap().is_none());
    assert!(s.user_by_id(UserId::new()).await.unwrap().is_none());

    let renamed = s.update_display_name(alice.id, "Alice A.").await.unwrap();
    assert_eq!(renamed.display_name, "Alice A.");
    assert!(matches!(
        s.update_display_name(UserId::new(), "x").await,
        Err(StoreError::NotFound)
    ));
    s.set_password_hash(alice.id, "new-hash").await.unwrap();
    let found = s.user_by_id(alice.id).await.unwrap().unwrap();
    assert_eq!(found.password_hash, "new-hash");
    assert_eq!(found.user.display_name, "Alice A.");
}

pub async fn deleted_users_free_their_name_and_lose_their_sessions(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let token = hash("alice");
    let sid = session(s, alice.id, T0, &token).await;
    let room = group(s, bob.id, &[alice.id]).await;
    let msg = send(s, room.id, alice.id, "before I go").await;

    let revoked = s.delete_user(alice.id, T0 + 10).await.unwrap();
    assert_eq!(revoked, vec![sid]);

    assert!(s.user_by_id(alice.id).await.unwrap().is_none());
    assert!(s.user_by_username(&alice.username).await.unwrap().is_none());
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 10)
    );
    assert!(s.list_sessions(alice.id).await.unwrap().is_empty());
    assert_eq!(
        s.rotate_refresh_token(
            &token,
            &hash("next"),
            b"sealed",
            T0 + 11,
            0,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Revoked
    );
    assert!(matches!(
        s.delete_user(alice.id, T0 + 12).await,
        Err(StoreError::NotFound)
    ));

    // The name is free again.
    let again = s
        .create_user(&NewUser {
            id: UserId::new(),
            username: alice.username.clone(),
            display_name: "new alice".into(),
            password_hash: "h".into(),
            created_at: T0 + 20,
        })
        .await
        .expect("name reusable after deletion");
    assert_eq!(
        s.user_by_username(&alice.username)
            .await
            .unwrap()
            .unwrap()
            .user
            .id,
        again.id
    );

    // Messages stay; the member list no longer shows the deleted user.
    let kept = s.message(room.id, msg.seq).await.unwrap().unwrap();
    assert_eq!(kept.sender_id, alice.id);
    let members = s.list_members(room.id, None, 50).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m.membership.user_id)
            .collect::<Vec<_>>(),
        vec![bob.id]
    );
}

pub async fn refresh_rotation_spends_the_old_token_and_issues_a_new_one(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let (h1, h2, h3) = (hash("1"), hash("2"), hash("3"));
    let sid = session(s, alice.id, T0, &h1).await;

    let created = s.session(sid).await.unwrap().unwrap();
    assert_eq!(created.user_id, alice.id);
    assert_eq!(created.user_agent, "test-agent");
    assert_eq!((created.created_at, created.last_used_at), (T0, T0));
    assert_eq!(created.revoked_at, None);

    let RotateOutcome::Rotated(after) = s
        .rotate_refresh_token(&h1, &h2, b"sealed", T0 + 5, 0, SessionLimits::NONE)
        .await
        .unwrap()
    else {
        panic!("first rotation must succeed");
    };
    assert_eq!(after.id, sid);
    assert_eq!(after.last_used_at, T0 + 5);
    assert_eq!(after.revoked_at, None);

    let second = s
        .rotate_refresh_token(&h2, &h3, b"sealed", T0 + 6, 0, SessionLimits::NONE)
        .await
        .unwrap();
    assert!(matches!(second, RotateOutcome::Rotated(ref s) if s.id == sid));
    assert_eq!(
        s.rotate_refresh_token(
            &hash("never issued"),
            &hash("x"),
            b"sealed",
            T0 + 7,
            0,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Unknown
    );
    assert_eq!(s.session(sid).await.unwrap().unwrap().revoked_at, None);
    assert!(s.session(SessionId::new()).await.unwrap().is_none());
}

pub async fn reusing_a_spent_refresh_token_revokes_the_session(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let (h1, h2) = (hash("1"), hash("2"));
    let sid = session(s, alice.id, T0, &h1).await;
    let other = session(s, alice.id, T0 + 1, &hash("other")).await;

    assert!(matches!(
        s.rotate_refresh_token(&h1, &h2, b"sealed", T0 + 10, 0, SessionLimits::NONE)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh_token(
            &h1,
            &hash("thief"),
            b"sealed",
            T0 + 20,
            0,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Reused(sid)
    );
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 20)
    );
    // The live token of the revoked session is dead too.
    assert_eq!(
        s.rotate_refresh_token(&h2, &hash("3"), b"sealed", T0 + 30, 0, SessionLimits::NONE)
            .await
            .unwrap(),
        RotateOutcome::Revoked
    );
    // Other sessions are untouched.
    assert_eq!(live_sessions(s, alice.id).await, vec![other]);
    let since = s.sessions_revoked_since(T0 + 20).await.unwrap();
    assert!(since.contains(&sid));
    assert!(!s
        .sessions_revoked_since(T0 + 21)
        .await
        .unwrap()
        .contains(&sid));
}

pub async fn a_spent_refresh_token_within_the_grace_gets_its_successor_again(
    store: Arc<dyn Store>,
) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let (h1, h2, h3) = (hash("1"), hash("2"), hash("3"));
    let sid = session(s, alice.id, T0, &h1).await;
    let grace = 1_000;

    assert!(matches!(
        s.rotate_refresh_token(&h1, &h2, b"sealed 2", T0 + 10, grace, SessionLimits::NONE)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    // A racing second use of the same token, within the grace: the
    // successor already issued comes back, and nothing is revoked or issued.
    for at in [T0 + 10, T0 + 500, T0 + 1_009] {
        let RotateOutcome::Replayed { session, sealed } = s
            .rotate_refresh_token(&h1, &hash("lost"), b"lost", at, grace, SessionLimits::NONE)
            .await
            .unwrap()
        else {
            panic!(
                "a use {} ms after the rotation is in the grace",
                at - T0 - 10
            );
        };
        assert_eq!(session.id, sid);
        assert_eq!(session.revoked_at, None);
        assert_eq!(sealed, b"sealed 2");
    }
    assert_eq!(
        s.rotate_refresh_token(
            &hash("lost"),
            &hash("x"),
            b"x",
            T0 + 1_009,
            grace,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Unknown,
        "a replay issues no token"
    );
    // The successor rotates normally; once it is spent, even a use within
    // the grace revokes the session, as does any use after it (below).
    assert!(matches!(
        s.rotate_refresh_token(
            &h2,
            &h3,
            b"sealed 3",
            T0 + 1_009,
            grace,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh_token(
            &h1,
            &hash("z"),
            b"z",
            T0 + 1_009,
            grace,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Reused(sid)
    );
    assert_eq!(
        s.session(sid).await.unwrap().unwrap().revoked_at,
        Some(T0 + 1_009)
    );

    // After the grace, a second use revokes at once.
    let bob = user(s, "bob").await;
    let (b1, b2) = (hash("b1"), hash("b2"));
    let bid = session(s, bob.id, T0, &b1).await;
    assert!(matches!(
        s.rotate_refresh_token(&b1, &b2, b"sealed b2", T0 + 10, grace, SessionLimits::NONE)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        s.rotate_refresh_token(
            &b1,
            &hash("late"),
            b"late",
            T0 + 1_010,
            grace,
            SessionLimits::NONE
        )
        .await
        .unwrap(),
        RotateOutcome::Reused(bid)
    );
}

pub async fn revoked_sessions_refuse_rotation_and_leave_the_live_list(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let mallory = user(s, "mallory").await;
    let h1 = hash("1");
    let s1 = session(s, alice.id, T0, &h1).await;
    let s2 = session(s, alice.id, T0 + 1, &hash("2")).await;
    let s3 = session(s, alice.id, T0 + 2, &hash("3")).await;

    let live: Vec<_> = s
        .list_sessions(alice.id)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(live, vec![s3, s2, s1], "newest first");

    assert!(
        !s.revoke_session(mallory.id, s1, T0 + 5).await.unwrap(),
        "only the owner revokes"
    );
    assert!(s.revoke_session(alice.id, s1, T0 + 5).await.unwrap());
    assert!(!s.revoke_session(alice.id, s1, T0 + 6).await.unwrap());
    assert_eq!(
        s.rotate_refresh_token(&h1, &hash("x"), b"sealed", T0 + 7, 0, SessionLimits::NONE)
            .await
            .unwrap(),
        RotateOutcome::Revoked
    );

    let revoked = s
        .revoke_user_sessions(alice.id, Some(s3), T0 + 8)
        .await
        .unwrap();
    assert_eq!(revoked, vec![s2]);
    assert_eq!(live_sessions(s, alice.id).await, vec![s3]);
    assert_eq!(
        s.revoke_user_sessions(alice.id, None, T0 + 9)
            .await
            .unwrap(),
        vec![s3]
    );
    assert!(s.list_sessions(alice.id).await.unwrap().is_empty());
    let since: BTreeSet<_> = s
        .sessions_revoked_since(T0 + 5)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!([s1, s2, s3].iter().all(|id| since.contains(id)));
}

// ---- the event log ----

pub async fn concurrent_appends_get_gapless_unique_seqs(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let s = &*store;
    let owner = user(s, "owner").await;
    let mut senders = Vec::new();
    for i in 0..TASKS {
        senders.push(user(s, &format!("sender{i}")).await.id);
    }
    let room = group(s, owner.id, &senders).await;

    let mut tasks = tokio::task::JoinSet::new();
    for sender in senders {
        let store = store.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let msg = new_message(room.id, sender, &format!("c{i}"), &format!("m{i}"));
                let (msg, new) = store.append_message(&msg).await.expect("append");
                assert!(new);
                seqs.push(msg.seq);
            }
            // Each sender sees its own messages in order.
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            seqs
        });
    }
    let mut all = Vec::new();
    while let Some(seqs) = tasks.join_next().await {
        all.extend(seqs.expect("task"));
    }
    all.sort_unstable();
    let total = (TASKS * PER_TASK) as Seq;
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    assert_eq!(s.room(room.id).await.unwrap().unwrap().last_seq, total);

    let (events, more) = s.list_events(room.id, 0, 1000).await.unwrap();
    assert!(!more);
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
}

/// Appends sent at once share commits (group commit): each must still get
/// exactly the answer it would get alone, whatever else is in its batch.
pub async fn appends_in_flight_together_each_get_their_own_answer(store: Arc<dyn Store>) {
    const ROOMS: usize = 5;
    const PER_ROOM: usize = 40;
    let s = &*store;
    let alice = user(s, "alice").await;
    let eve = user(s, "eve").await;
    let mut rooms = Vec::new();
    for _ in 0..ROOMS {
        rooms.push(group(s, alice.id, &[]).await.id);
    }
    let gone = group(s, alice.id, &[]).await.id;
    s.delete_room(gone, T0 + 5).await.unwrap();

    enum Want {
        New(RoomId),
        NotMember,
        NotFound,
        Repeat,
    }
    let mut sends = Vec::new();
    for i in 0..PER_ROOM {
        for &room in &rooms {
            sends.push((
                new_message(room, alice.id, &format!("c{i}"), "hi"),
                Want::New(room),
            ));
        }
        if i % 10 == 0 {
            sends.push((
                new_message(rooms[0], eve.id, &format!("e{i}"), "no"),
                Want::NotMember,
            ));
            sends.push((
                new_message(gone, alice.id, &format!("g{i}"), "no"),
                Want::NotFound,
            ));
            sends.push((
                new_message(RoomId::new(), alice.id, "x", "no"),
                Want::NotFound,
            ));
            // The same send five times at once: one message.
            for _ in 0..5 {
                sends.push((
                    new_message(rooms[1], alice.id, "same", "once"),
                    Want::Repeat,
                ));
            }
        }
    }
    let answers =
        futures_util::future::join_all(sends.iter().map(|(m, _)| s.append_message(m))).await;

    let mut seqs: std::collections::HashMap<RoomId, Vec<Seq>> = Default::default();
    let mut repeats = Vec::new();
    for ((sent, want), answer) in sends.iter().zip(answers) {
        match want {
            Want::New(room) => {
                let (msg, new) = answer.expect("a member's append");
                assert!(new);
                assert_eq!(
                    (msg.room_id, &msg.client_msg_id),
                    (*room, &sent.client_msg_id)
                );
                seqs.entry(*room).or_default().push(msg.seq);
            }
            Want::NotMember => assert!(matches!(answer, Err(StoreError::NotMember)), "{answer:?}"),
            Want::NotFound => assert!(matches!(answer, Err(StoreError::NotFound)), "{answer:?}"),
            Want::Repeat => repeats.push(answer.expect("a repeated append")),
        }
    }
    let created: Vec<_> = repeats.iter().filter(|(_, new)| *new).collect();
    assert_eq!(created.len(), 1, "one of the repeated sends appends");
    let original = &created[0].0;
    assert!(
        repeats.iter().all(|(m, _)| m == original),
        "the rest get it back"
    );
    seqs.entry(rooms[1]).or_default().push(original.seq);

    for &room in &rooms {
        let mut got = seqs.remove(&room).unwrap_or_default();
        got.sort_unstable();
        let n = got.len() as Seq;
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "gapless, unique seqs");
        let (events, _) = s.list_events(room, 0, 1000).await.unwrap();
        assert_eq!(
            events.len() as Seq,
            n,
            "exactly the new messages are stored"
        );
        assert_eq!(s.room(room).await.unwrap().unwrap().last_seq, n);
    }
    assert!(s.list_events(gone, 0, 10).await.unwrap().0.is_empty());
}

pub async fn a_repeated_client_msg_id_returns_the_original_message(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let room = group(s, alice.id, &[bob.id]).await;

    let (first, new) = s
        .append_message(&new_message(room.id, alice.id, "c-1", "hello"))
        .await
        .unwrap();
    assert!(new);
    assert_eq!(first.seq, 1);
    assert_eq!(first.body, "hello");
    assert_eq!(first.client_msg_id, "c-1");
    assert_eq!((first.edited_at, first.deleted), (None, false));

    let (again, new) = s
        .append_message(&new_message(room.id, alice.id, "c-1", "hello, retried"))
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(again, first, "the original, not the retry");
    assert_eq!(s.room(room.id).await.unwrap().unwrap().last_seq, 1);

    // The key is per sender.
    let (bobs, new) = s
        .append_message(&new_message(room.id, bob.id, "c-1", "mine"))
        .await
        .unwrap();
    assert!(new);
    assert_eq!(bobs.seq, 2);
    assert_eq!(s.message(room.id, 1).await.unwrap().unwrap(), first);
    // What a retry is answered with when it may not append (the send limit).
    let sent = |sender, cmid: &'static str| s.sent_message(room.id, sender, cmid);
    assert_eq!(sent(alice.id, "c-1").await.unwrap(), Some(first.clone()));
    assert_eq!(sent(bob.id, "c-1").await.unwrap().map(|m| m.seq), Some(2));
    assert_eq!(sent(alice.id, "c-2").await.unwrap(), None);
}

pub async fn only_members_can_append_to_a_live_room(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let eve = user(s, "eve").await;
    let room = group(s, alice.id, &[]).await;

    let res = s
        .append_message(&new_message(room.id, eve.id, "c", "hi"))
        .await;
    assert!(matches!(res, Err(StoreError::NotMember)), "{res:?}");
    let res = s
        .append_message(&new_message(RoomId::new(), alice.id, "c", "hi"))
        .await;
    assert!(matches!(res, Err(StoreError::NotFound)), "{res:?}");

    s.add_member(room.id, eve.id, Role::Member, T0)
        .await
        .unwrap();
    send(s, room.id, eve.id, "now I may").await;
    assert!(s.remove_member(room.id, eve.id).await.unwrap());
    let res = s
        .append_message(&new_message(room.id, eve.id, "c2", "hi"))
        .await;
    assert!(matches!(res, Err(StoreError::NotMember)), "{res:?}");

    s.delete_room(room.id, T0 + 5).await.unwrap();
    let res = s
        .append_message(&new_message(room.id, alice.id, "c3", "hi"))
        .await;
    assert!(matches!(res, Err(StoreError::NotFound)), "{res:?}");
    assert_eq!(
        s.list_messages(room.id, None, None, 10)
            .await
            .unwrap()
            .0
            .len(),
        1,
        "nothing appended after the refusals"
    );
}

pub async fn edits_and_deletions_are_events_with_their_own_seq(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let room = group(s, alice.id, &[bob.id]).await;
    let msg = send(s, room.id, alice.id, "helo").await;
    assert_eq!(msg.seq, 1);

    let forbidden = s
        .edit_message(&EditMessage {
            room_id: room.id,
            target: 1,
            editor: bob.id,
            body: "hijack".into(),
            now: T0 + 10,
        })
        .await;
    assert!(
        matches!(forbidden, Err(StoreError::Forbidden)),
        "{forbidden:?}"
    );

    let (event, edited) = s
        .edit_message(&EditMessage {
            room_id: room.id,
            target: 1,
            editor: alice.id,
            body: "hello".into(),
            now: T0 + 10,
        })
        .await
        .unwrap();
    assert_eq!(event.seq, 2);
    assert_eq!(event.room_id, room.id);
    assert_eq!(
        event.kind,
        EventKind::Edited {
            target_seq: 1,
            body: "hello".into(),
            sender_id: alice.id,
            edited_at: T0 + 10,
        }
    );
    assert_eq!(edited.seq, 1);
    assert_eq!(edited.body, "hello");
    assert_eq!(edited.edited_at, Some(T0 + 10));
    assert_eq!(s.message(room.id, 1).await.unwrap().unwrap(), edited);
    assert_eq!(s.room(room.id).await.unwrap().unwrap().last_seq, 2);

    // Only messages are edit targets.
    for target in [2, 99] {
        let res = s
            .edit_message(&EditMessage {
                room_id: room.id,
                target,
                editor: alice.id,
                body: "x".into(),
                now: T0 + 11,
            })
            .await;
        assert!(matches!(res, Err(StoreError::NotFound)), "{res:?}");
    }
    assert!(s.message(room.id, 2).await.unwrap().is_none());

    let deleted = s.delete_message(room.id, 1, bob.id, T0 + 20).await.unwrap();
    assert_eq!(deleted.seq, 3);
    assert_eq!(
        deleted.kind,
        EventKind::Deleted {
            target_seq: 1,
            deleted_by: bob.id,
            at: T0 + 20,
        }
    );
    let tomb = s.message(room.id, 1).await.unwrap().unwrap();
    assert!(tomb.deleted);
    assert_eq!(tomb.body, "");
    assert_eq!((tomb.id, tomb.sender_id), (msg.id, alice.id));

    let again = s.delete_message(room.id, 1, alice.id, T0 + 21).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
    let edit_dead = s
        .edit_message(&EditMessage {
            room_id: room.id,
            target: 1,
            editor: alice.id,
            body: "resurrect".into(),
            now: T0 + 22,
        })
        .await;
    assert!(
        matches!(edit_dead, Err(StoreError::NotFound)),
        "{edit_dead:?}"
    );
    let missing = s.delete_message(room.id, 42, alice.id, T0 + 23).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    assert_eq!(s.room(room.id).await.unwrap().unwrap().last_seq, 3);

    // The log: the message in its current state, then the two events.
    let (events, more) = s.list_events(room.id, 0, 10).await.unwrap();
    assert!(!more);
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].kind, EventKind::Message(tomb.clone()));
    assert!(
        matches!(&events[1].kind, EventKind::Edited { target_seq: 1, body, .. } if !body.contains("hello")),
        "a deleted message's text does not linger in its edits: {:?}",
        events[1]
    );
    assert_eq!(events[2], deleted);

    let (messages, _) = s.list_messages(room.id, None, None, 10).await.unwrap();
    assert_eq!(messages, vec![tomb]);
}

pub async fn list_messages_pages_in_all_three_modes(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let room = group(s, alice.id, &[]).await;
    for i in 1..=10 {
        send(s, room.id, alice.id, &format!("m{i}")).await;
    }
    edit(s, room.id, 2, alice.id, "m2 edited").await; // seq 11
    send(s, room.id, alice.id, "m12").await;
    send(s, room.id, alice.id, "m13").await;
    let page = |before: Option<Seq>, after: Option<Seq>, limit: u32| {
        let store = store.clone();
        async move {
            let (messages, more) = store
                .list_messages(room.id, before, after, limit)
                .await
                .expect("list messages");
            (seqs(&messages), more)
        }
    };

    // Neither bound: the newest page, ascending.
    assert_eq!(page(None, None, 5).await, (vec![8, 9, 10, 12, 13], true));
    assert_eq!(
        page(None, None, 20).await,
        (vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13], false)
    );
    assert!(!page(None, None, 12).await.1);

    // Only `before`: the newest page before it, ascending.
    assert_eq!(page(Some(8), None, 3).await, (vec![5, 6, 7], true));
    assert_eq!(page(Some(4), None, 3).await, (vec![1, 2, 3], false));
    assert_eq!(page(Some(13), None, 2).await, (vec![10, 12], true));
    assert_eq!(page(Some(1), None, 3).await, (vec![], false));

    // `after`: forward from it.
    assert_eq!(page(None, Some(9), 2).await, (vec![10, 12], true));
    assert_eq!(page(None, Some(10), 5).await, (vec![12, 13], false));
    assert_eq!(page(None, Some(13), 5).await, (vec![], false));

    // Both: forward from `after`, below `before`.
    assert_eq!(page(Some(5), Some(0), 10).await, (vec![1, 2, 3, 4], false));
    assert_eq!(page(Some(5), Some(0), 2).await, (vec![1, 2], true));
    assert_eq!(page(Some(12), Some(8), 10).await, (vec![9, 10], false));

    // Current state: the edit shows in the message.
    let (messages, _) = s.list_messages(room.id, Some(3), None, 1).await.unwrap();
    assert_eq!(messages[0].body, "m2 edited");
    assert!(messages[0].edited_at.is_some());
}

pub async fn list_events_returns_every_kind_after_a_seq(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let room = group(s, alice.id, &[]).await;
    let empty = s.list_events(room.id, 0, 10).await.unwrap();
    assert_eq!(empty, (vec![], false));

    send(s, room.id, alice.id, "one").await; // 1
    send(s, room.id, alice.id, "two").await; // 2
    edit(s, room.id, 1, alice.id, "uno").await; // 3
    s.delete_message(room.id, 2, alice.id, T0 + 60)
        .await
        .unwrap(); // 4
    send(s, room.id, alice.id, "three").await; // 5

    let (first, more) = s.list_events(room.id, 0, 2).await.unwrap();
    assert!(more);
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(matches!(&first[0].kind, EventKind::Message(m) if m.body == "uno"));
    assert!(matches!(&first[1].kind, EventKind::Message(m) if m.deleted && m.body.is_empty()));

    let (rest, more) = s.list_events(room.id, 2, 10).await.unwrap();
    assert!(!more);
    assert_eq!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(matches!(
        &rest[0].kind,
        EventKind::Edited { target_seq: 1, body, sender_id, edited_at: _ }
            if body == "uno" && *sender_id == alice.id
    ));
    assert!(matches!(
        rest[1].kind,
        EventKind::Deleted { target_seq: 2, deleted_by, at } if deleted_by == alice.id && at == T0 + 60
    ));
    assert!(matches!(&rest[2].kind, EventKind::Message(m) if m.body == "three"));
    assert!(rest.iter().all(|e| e.room_id == room.id));

    let (exact, more) = s.list_events(room.id, 2, 3).await.unwrap();
    assert_eq!((exact.len(), more), (3, false));
    assert_eq!(
        s.list_events(room.id, 5, 10).await.unwrap(),
        (vec![], false)
    );
    assert_eq!(
        s.list_events(RoomId::new(), 0, 10).await.unwrap(),
        (vec![], false)
    );
}

// ---- rooms and memberships ----

pub async fn unread_counts_only_live_messages_by_others(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let room = group(s, alice.id, &[bob.id]).await;

    let b1 = send(s, room.id, bob.id, "b1").await; // 1
    let b2 = send(s, room.id, bob.id, "b2").await; // 2
    send(s, room.id, alice.id, "a1").await; // 3
    let b3 = send(s, room.id, bob.id, "b3").await; // 4
    send(s, room.id, alice.id, "a2").await; // 5
    assert_eq!(unread(s, alice.id, room.id).await, 3);
    assert_eq!(unread(s, bob.id, room.id).await, 2);

    // Edits are not messages; a deleted message is not unread.
    edit(s, room.id, b1.seq, bob.id, "b1!").await; // 6
    s.delete_message(room.id, b3.seq, bob.id, T0 + 70)
        .await
        .unwrap(); // 7
    assert_eq!(unread(s, alice.id, room.id).await, 2);

    s.mark_read(room.id, alice.id, b2.seq).await.unwrap();
    assert_eq!(unread(s, alice.id, room.id).await, 0);
    s.mark_read(room.id, bob.id, 3).await.unwrap();
    assert_eq!(unread(s, bob.id, room.id).await, 1);

    let listed = s.list_user_rooms(alice.id, None, 10).await.unwrap();
    let mine = listed.iter().find(|r| r.room.id == room.id).unwrap();
    assert_eq!(mine.room.last_seq, 7);
    assert_eq!(mine.membership.last_read_seq, b2.seq);
    assert_eq!(mine.membership.role, Role::Owner);
}

pub async fn mark_read_moves_forward_only_and_not_past_the_end(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let eve = user(s, "eve").await;
    let room = group(s, alice.id, &[]).await;
    for i in 0..3 {
        send(s, room.id, alice.id, &format!("m{i}")).await;
    }
    assert_eq!(last_read(s, room.id, alice.id).await, 0);

    s.mark_read(room.id, alice.id, 2).await.unwrap();
    assert_eq!(last_read(s, room.id, alice.id).await, 2);
    s.mark_read(room.id, alice.id, 1).await.unwrap();
    assert_eq!(last_read(s, room.id, alice.id).await, 2, "never backwards");
    s.mark_read(room.id, alice.id, 100).await.unwrap();
    assert_eq!(
        last_read(s, room.id, alice.id).await,
        3,
        "never past last_seq"
    );

    let res = s.mark_read(room.id, eve.id, 1).await;
    assert!(matches!(res, Err(StoreError::NotMember)), "{res:?}");
}

pub async fn open_dm_returns_the_same_room_in_either_order(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;

    let dm = s
        .open_dm(
            &new_room("dm", Visibility::Private, RoomKind::Dm),
            alice.id,
            bob.id,
        )
        .await
        .unwrap();
    assert_eq!(dm.kind, RoomKind::Dm);
    assert_eq!(dm.visibility, Visibility::Private);

    let again = s
        .open_dm(
            &new_room("dm", Visibility::Private, RoomKind::Dm),
            bob.id,
            alice.id,
        )
        .await
        .unwrap();
    assert_eq!(again.id, dm.id);
    let same = s
        .open_dm(
            &new_room("dm", Visibility::Private, RoomKind::Dm),
            alice.id,
            bob.id,
        )
        .await
        .unwrap();
    assert_eq!(same.id, dm.id);

    for u in [alice.id, bob.id] {
        let m = s.membership(dm.id, u).await.unwrap().expect("both members");
        assert_eq!(m.role, Role::Member);
    }
    assert!(s.membership(dm.id, carol.id).await.unwrap().is_none());
    assert_eq!(s.list_members(dm.id, None, 10).await.unwrap().len(), 2);

    let other = s
        .open_dm(
            &new_room("dm", Visibility::Private, RoomKind::Dm),
            alice.id,
            carol.id,
        )
        .await
        .unwrap();
    assert_ne!(other.id, dm.id);

    // Leaving does not make a second DM; reopening brings both back.
    assert!(s.remove_member(dm.id, bob.id).await.unwrap());
    let reopened = s
        .open_dm(
            &new_room("dm", Visibility::Private, RoomKind::Dm),
            alice.id,
            bob.id,
        )
        .await
        .unwrap();
    assert_eq!(reopened.id, dm.id);
    assert!(s.membership(dm.id, bob.id).await.unwrap().is_some());

    let ghost = s
        .open_dm(
            &new_room("dm", Visibility::Private, RoomKind::Dm),
            alice.id,
            UserId::new(),
        )
        .await;
    assert!(matches!(ghost, Err(StoreError::NotFound)), "{ghost:?}");

    let public = s.list_public_rooms("", None, 200).await.unwrap();
    assert!(public.iter().all(|r| r.id != dm.id));
}

pub async fn public_room_search_escapes_like_wildcards(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let t = tag();
    let make = |name: String, visibility: Visibility| {
        let store = store.clone();
        async move {
            store
                .create_room(&new_room(&name, visibility, RoomKind::Group), alice.id)
                .await
                .expect("create room")
        }
    };
    let percent = make(format!("{t} 50% off"), Visibility::Public).await;
    let fifty = make(format!("{t} 500 things"), Visibility::Public).await;
    let underscore = make(format!("{t} a_b"), Visibility::Public).await;
    let axb = make(format!("{t} axb"), Visibility::Public).await;
    let backslash = make(format!("{t} c:\\dir"), Visibility::Public).await;
    let hidden = make(format!("{t} 50% secret"), Visibility::Private).await;
    let gone = make(format!("{t} 50% gone"), Visibility::Public).await;
    s.delete_room(gone.id, T0 + 1).await.unwrap();

    let ids = |rooms: Vec<Room>| rooms.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let search = |q: String| {
        let store = store.clone();
        async move { ids(store.list_public_rooms(&q, None, 200).await.unwrap()) }
    };

    let sorted = |mut v: Vec<RoomId>| {
        v.sort();
        v
    };

    assert_eq!(search(format!("{t} 50%")).await, vec![percent.id]);
    assert_eq!(search(format!("{t} a_b")).await, vec![underscore.id]);
    assert_eq!(search(format!("{t} c:\\")).await, vec![backslash.id]);
    assert_eq!(
        search(format!("{} 50", t.to_uppercase())).await,
        sorted(vec![percent.id, fifty.id]),
        "case-insensitive, by id"
    );
    let all = search(t.clone()).await;
    assert_eq!(
        all,
        sorted(vec![
            percent.id,
            fifty.id,
            underscore.id,
            axb.id,
            backslash.id
        ])
    );
    assert!(!all.contains(&hidden.id));

    // Cursor paging by id.
    let first = ids(s.list_public_rooms(&t, None, 2).await.unwrap());
    assert_eq!(first, all[..2]);
    let next = ids(s.list_public_rooms(&t, Some(first[1]), 2).await.unwrap());
    assert_eq!(next, all[2..4]);
    let last = ids(s.list_public_rooms(&t, Some(next[1]), 2).await.unwrap());
    assert_eq!(last, all[4..]);
}

pub async fn rooms_and_memberships_follow_their_rules(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;

    let spec = new_room("general", Visibility::Public, RoomKind::Group);
    let room = s.create_room(&spec, alice.id).await.unwrap();
    assert_eq!(room.id, spec.id);
    assert_eq!(room.last_seq, 0);
    assert_eq!(s.room(room.id).await.unwrap().unwrap(), room);
    let owner = s.membership(room.id, alice.id).await.unwrap().unwrap();
    assert_eq!((owner.role, owner.joined_at), (Role::Owner, T0));
    assert!(matches!(
        s.create_room(&spec, alice.id).await,
        Err(StoreError::AlreadyExists)
    ));

    let (m, new) = s
        .add_member(room.id, bob.id, Role::Admin, T0 + 1)
        .await
        .unwrap();
    assert!(new);
    assert_eq!(
        (m.role, m.joined_at, m.last_read_seq),
        (Role::Admin, T0 + 1, 0)
    );
    let (again, new) = s
        .add_member(room.id, bob.id, Role::Member, T0 + 2)
        .await
        .unwrap();
    assert!(!new, "joining twice is fine");
    assert_eq!(again, m, "and changes nothing");
    assert!(matches!(
        s.add_member(room.id, UserId::new(), Role::Member, T0).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.add_member(RoomId::new(), carol.id, Role::Member, T0)
            .await,
        Err(StoreError::NotFound)
    ));
    s.add_member(room.id, carol.id, Role::Member, T0 + 3)
        .await
        .unwrap();

    // Members by user id, with a cursor.
    let mut users = [alice.id, bob.id, carol.id];
    users.sort();
    let members = s.list_members(room.id, None, 2).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m.membership.user_id)
            .collect::<Vec<_>>(),
        users[..2]
    );
    let rest = s
        .list_members(room.id, Some(members[1].membership.user_id), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].membership.user_id, users[2]);
    let bob_profile = members
        .iter()
        .chain(&rest)
        .find(|m| m.membership.user_id == bob.id)
        .unwrap();
    assert_eq!(bob_profile.username, bob.username);
    assert_eq!(bob_profile.display_name, bob.display_name);

    // The user's rooms by room id, with a cursor.
    let second = s
        .create_room(
            &new_room("second", Visibility::Private, RoomKind::Group),
            bob.id,
        )
        .await
        .unwrap();
    let mut bobs = [room.id, second.id];
    bobs.sort();
    assert_eq!(s.user_room_ids(bob.id).await.unwrap(), bobs);
    let page = s.list_user_rooms(bob.id, None, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].room.id, bobs[0]);
    let page = s.list_user_rooms(bob.id, Some(bobs[0]), 10).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.room.id).collect::<Vec<_>>(),
        bobs[1..]
    );

    let patched = s
        .update_room(
            room.id,
            &RoomPatch {
                topic: Some("new topic".into()),
                visibility: Some(Visibility::Private),
                ..RoomPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.name, "general");
    assert_eq!(patched.topic, "new topic");
    assert_eq!(patched.visibility, Visibility::Private);
    assert_eq!(s.room(room.id).await.unwrap().unwrap(), patched);

    assert!(s.remove_member(room.id, carol.id).await.unwrap());
    assert!(!s.remove_member(room.id, carol.id).await.unwrap());
    assert!(s.membership(room.id, carol.id).await.unwrap().is_none());
    assert!(s.user_room_ids(carol.id).await.unwrap().is_empty());

    s.delete_room(room.id, T0 + 9).await.unwrap();
    assert!(s.room(room.id).await.unwrap().is_none());
    assert!(matches!(
        s.update_room(room.id, &RoomPatch::default()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_room(room.id, T0 + 10).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.user_room_ids(bob.id).await.unwrap(), vec![second.id]);
    assert!(s
        .list_user_rooms(alice.id, None, 10)
        .await
        .unwrap()
        .is_empty());
    s.ping().await.unwrap();
}

pub async fn room_access_reads_the_room_and_the_callers_membership(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let room = s
        .create_room(
            &new_room("access", Visibility::Public, RoomKind::Group),
            alice.id,
        )
        .await
        .unwrap();
    s.append_message(&new_message(room.id, alice.id, "m1", "one"))
        .await
        .unwrap();

    let (r, m) = s.room_access(room.id, alice.id).await.unwrap().unwrap();
    assert_eq!(r.last_seq, 1, "the room as it is now");
    assert_eq!(r, s.room(room.id).await.unwrap().unwrap());
    assert_eq!(m, s.membership(room.id, alice.id).await.unwrap());
    assert_eq!(m.map(|m| m.role), Some(Role::Owner));

    let (r, m) = s.room_access(room.id, bob.id).await.unwrap().unwrap();
    assert_eq!(r.id, room.id);
    assert_eq!(m, None, "not a member");

    assert!(s
        .room_access(RoomId::new(), alice.id)
        .await
        .unwrap()
        .is_none());
    s.delete_room(room.id, T0 + 10).await.unwrap();
    assert!(s.room_access(room.id, alice.id).await.unwrap().is_none());
}

pub async fn last_seqs_reads_many_live_rooms_at_once(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user(s, "alice").await;
    let quiet = group(s, alice.id, &[]).await;
    let busy = group(s, alice.id, &[]).await;
    let gone = group(s, alice.id, &[]).await;
    for _ in 0..3 {
        send(s, busy.id, alice.id, "hi").await;
    }
    send(s, gone.id, alice.id, "bye").await;
    s.delete_room(gone.id, T0 + 10).await.unwrap();

    let mut got = s
        .last_seqs(&[quiet.id, busy.id, gone.id, RoomId::new()])
        .await
        .unwrap();
    got.sort();
    let mut want = vec![(quiet.id, 0), (busy.id, 3)];
    want.sort();
    assert_eq!(got, want, "live rooms only, each with its last seq");
    assert!(s.last_seqs(&[]).await.unwrap().is_empty());

    // More ids than one statement takes.
    let mut many: Vec<RoomId> = (0..chat_store::LAST_SEQS_CHUNK + 10)
        .map(|_| RoomId::new())
        .collect();
    many.push(busy.id);
    assert_eq!(s.last_seqs(&many).await.unwrap(), vec![(busy.id, 3)]);
}
