//! Room roles, kicks and bans (issue #9): the owner grants and revokes
//! `admin` and hands the room over, and cannot leave or be removed before
//! that; admins kick and ban members of lower role; a member adds only
//! themselves to a public room; a ban keeps a user out until it is lifted.
//! Over REST, WebSocket and gRPC.

use crate::helpers::{within, TestApp, TestUser};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_client::RoomServiceClient;
use serde_json::{json, Value};
use tonic::Code;

fn member_path(room: &str, user: &TestUser) -> String {
    format!("/api/v1/rooms/{room}/members/{}", user.id)
}

fn ban_path(room: &str, user: &TestUser) -> String {
    format!("/api/v1/rooms/{room}/bans/{}", user.id)
}

/// `PUT …/members/{user}` with `{"role": role}`, as `by`.
async fn set_role(app: &TestApp, by: &TestUser, room: &str, user: &TestUser, role: &str) -> Value {
    app.put(
        &member_path(room, user),
        &by.access,
        json!({ "role": role }),
    )
    .await
    .expect(200)
    .clone()
}

/// Every member's role, as `viewer` lists them: (user id, role).
async fn roles(app: &TestApp, viewer: &TestUser, room: &str) -> Vec<(String, String)> {
    let r = app
        .get(&format!("/api/v1/rooms/{room}/members"), &viewer.access)
        .await;
    r.expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            let id = m["user_id"].as_str().unwrap_or_default().to_owned();
            (id, m["role"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn role_of<'a>(roles: &'a [(String, String)], user: &TestUser) -> Option<&'a str> {
    roles
        .iter()
        .find(|(id, _)| *id == user.id)
        .map(|(_, role)| role.as_str())
}

async fn add(app: &TestApp, by: &TestUser, room: &str, user: &TestUser) -> crate::helpers::Resp {
    app.post(
        &format!("/api/v1/rooms/{room}/members"),
        &by.access,
        json!({"user_id": user.id}),
    )
    .await
}

async fn join(app: &TestApp, user: &TestUser, room: &str) -> crate::helpers::Resp {
    app.post(
        &format!("/api/v1/rooms/{room}/join"),
        &user.access,
        json!({}),
    )
    .await
}

#[tokio::test]
async fn the_owner_cannot_leave_or_be_removed_before_handing_the_room_over() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;

    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/leave"),
            &alice.access,
            json!({}),
        )
        .await;
    r.expect_error(409, "conflict");
    assert!(r.message().contains("transfer ownership"), "{}", r.text);
    let r = app.delete(&member_path(&room, &alice), &alice.access).await;
    r.expect_error(409, "conflict");
    assert!(r.message().contains("transfer ownership"), "{}", r.text);
    assert_eq!(
        role_of(&roles(&app, &bob, &room).await, &alice),
        Some("owner")
    );

    set_role(&app, &alice, &room, &bob, "owner").await;
    app.post(
        &format!("/api/v1/rooms/{room}/leave"),
        &alice.access,
        json!({}),
    )
    .await
    .expect(204);
    assert_eq!(
        roles(&app, &bob, &room).await,
        vec![(bob.id.clone(), "owner".into())]
    );
    // Deleting the room is the owner's other way out.
    app.delete(&format!("/api/v1/rooms/{room}"), &bob.access)
        .await
        .expect(204);
}

#[tokio::test]
async fn a_member_of_a_public_room_adds_only_themselves() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let dave = app.signup("dave").await;
    let room = app.room_with(&alice, &[&bob]).await;

    let r = add(&app, &bob, &room, &carol).await;
    r.expect_error(403, "forbidden");
    assert_eq!(role_of(&roles(&app, &alice, &room).await, &carol), None);

    let r = add(&app, &carol, &room, &carol).await;
    let m = r.expect(200);
    assert_eq!(
        (m["user_id"].as_str(), m["role"].as_str()),
        (Some(carol.id.as_str()), Some("member"))
    );
    let r = add(&app, &carol, &room, &dave).await;
    r.expect_error(403, "forbidden");

    // An admin adds anyone.
    set_role(&app, &alice, &room, &bob, "admin").await;
    add(&app, &bob, &room, &dave).await.expect(200);
    assert_eq!(
        role_of(&roles(&app, &alice, &room).await, &dave),
        Some("member")
    );
}

#[tokio::test]
async fn the_owner_grants_and_revokes_admin_and_admins_cannot_change_roles() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let dave = app.signup("dave").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;

    let m = set_role(&app, &alice, &room, &bob, "admin").await;
    assert_eq!(m["user_id"], bob.id.as_str());
    assert_eq!(m["room_id"], room.as_str());
    assert_eq!(m["role"], "admin");
    assert_eq!(m["username"], bob.username.as_str());
    assert!(m["joined_at"].is_string(), "the member shape: {m}");
    assert_eq!(
        role_of(&roles(&app, &carol, &room).await, &bob),
        Some("admin")
    );

    // An admin can neither grant nor take the room.
    for (who, role) in [(&carol, "admin"), (&bob, "owner"), (&alice, "member")] {
        app.put(
            &member_path(&room, who),
            &bob.access,
            json!({ "role": role }),
        )
        .await
        .expect_error(403, "forbidden");
    }
    app.put(
        &member_path(&room, &bob),
        &carol.access,
        json!({"role": "member"}),
    )
    .await
    .expect_error(403, "forbidden");
    app.put(
        &member_path(&room, &bob),
        &alice.access,
        json!({"role": "king"}),
    )
    .await
    .expect_error(400, "invalid_request");
    app.put(
        &member_path(&room, &dave),
        &alice.access,
        json!({"role": "admin"}),
    )
    .await
    .expect_error(404, "not_found");

    // An admin kicks members, not other admins or the owner.
    app.delete(&member_path(&room, &alice), &bob.access)
        .await
        .expect_error(403, "forbidden");
    app.delete(&member_path(&room, &carol), &bob.access)
        .await
        .expect(204);

    let m = set_role(&app, &alice, &room, &bob, "member").await;
    assert_eq!(m["role"], "member");
    app.delete(&member_path(&room, &alice), &bob.access)
        .await
        .expect_error(403, "forbidden");
    let r = roles(&app, &alice, &room).await;
    assert_eq!(
        (role_of(&r, &bob), role_of(&r, &carol)),
        (Some("member"), None)
    );
}

#[tokio::test]
async fn a_transfer_leaves_exactly_one_owner_and_is_announced() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;
    let mut c = app.ws(&carol).await;
    c.subscribe(&room, None).await;

    let m = set_role(&app, &alice, &room, &bob, "owner").await;
    assert_eq!(m["role"], "owner");
    let r = roles(&app, &carol, &room).await;
    let owners: Vec<_> = r.iter().filter(|(_, role)| role == "owner").collect();
    assert_eq!(owners, vec![&(bob.id.clone(), "owner".to_owned())]);
    assert_eq!(role_of(&r, &alice), Some("admin"));

    for (user, role) in [(&bob, "owner"), (&alice, "admin")] {
        let f = c
            .recv_until("a member_role frame", |f| {
                f["type"] == "member_role" && f["user_id"] == user.id.as_str()
            })
            .await;
        assert_eq!(
            (f["room_id"].as_str(), f["role"].as_str()),
            (Some(room.as_str()), Some(role))
        );
        assert!(f.get("seq").is_none(), "a live notice: {f}");
    }

    // The old owner is an admin now: no more transfers, no deletion.
    app.put(
        &member_path(&room, &carol),
        &alice.access,
        json!({"role": "owner"}),
    )
    .await
    .expect_error(403, "forbidden");
    app.delete(&format!("/api/v1/rooms/{room}"), &alice.access)
        .await
        .expect_error(403, "forbidden");
    let r = roles(&app, &carol, &room).await;
    assert_eq!(r.iter().filter(|(_, role)| role == "owner").count(), 1);
}

#[tokio::test]
async fn a_kicked_user_can_rejoin_a_public_room() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;

    app.delete(&member_path(&room, &bob), &alice.access)
        .await
        .expect(204);
    assert_eq!(role_of(&roles(&app, &alice, &room).await, &bob), None);
    let m = join(&app, &bob, &room).await;
    assert_eq!(m.expect(200)["role"], "member");
}

#[tokio::test]
async fn a_banned_user_cannot_rejoin_or_be_added_until_unbanned() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob, &carol]).await;

    let r = app
        .put(&ban_path(&room, &bob), &alice.access, json!({}))
        .await;
    let ban = r.expect(200);
    assert_eq!(ban["user_id"], bob.id.as_str());
    assert_eq!(ban["username"], bob.username.as_str());
    assert_eq!(ban["banned_by"], alice.id.as_str());
    assert!(ban["banned_at"].is_string(), "{ban}");
    assert_eq!(role_of(&roles(&app, &alice, &room).await, &bob), None);

    let r = join(&app, &bob, &room).await;
    r.expect_error(403, "forbidden");
    assert!(r.message().contains("banned"), "{}", r.text);
    let r = add(&app, &alice, &room, &bob).await;
    r.expect_error(403, "forbidden");
    assert!(r.message().contains("banned"), "{}", r.text);
    let r = add(&app, &bob, &room, &bob).await;
    r.expect_error(403, "forbidden");

    // The list is for admins.
    let bans = app
        .get(&format!("/api/v1/rooms/{room}/bans"), &alice.access)
        .await;
    let b = bans.expect(200);
    assert_eq!(b["items"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(b["items"][0]["user_id"], bob.id.as_str());
    assert!(b["next_cursor"].is_null(), "{b}");
    app.get(&format!("/api/v1/rooms/{room}/bans"), &carol.access)
        .await
        .expect_error(403, "forbidden");
    app.delete(&ban_path(&room, &bob), &carol.access)
        .await
        .expect_error(403, "forbidden");

    app.delete(&ban_path(&room, &bob), &alice.access)
        .await
        .expect(204);
    app.delete(&ban_path(&room, &bob), &alice.access)
        .await
        .expect_error(404, "not_found");
    join(&app, &bob, &room).await.expect(200);
}

#[tokio::test]
async fn admins_ban_only_users_of_lower_role_and_the_list_pages() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let dave = app.signup("dave").await;
    let erin = app.signup("erin").await;
    let room = app.room_with(&alice, &[&bob, &carol, &dave]).await;
    set_role(&app, &alice, &room, &bob, "admin").await;
    set_role(&app, &alice, &room, &carol, "admin").await;

    for target in [&alice, &carol, &bob] {
        app.put(&ban_path(&room, target), &bob.access, json!({}))
            .await
            .expect_error(403, "forbidden");
    }
    app.put(&ban_path(&room, &bob), &dave.access, json!({}))
        .await
        .expect_error(403, "forbidden");
    app.put(&ban_path(&room, &alice), &alice.access, json!({}))
        .await
        .expect_error(403, "forbidden");

    // A member, and a user who never joined.
    app.put(&ban_path(&room, &dave), &bob.access, json!({}))
        .await
        .expect(200);
    app.put(&ban_path(&room, &erin), &bob.access, json!({}))
        .await
        .expect(200);
    join(&app, &erin, &room)
        .await
        .expect_error(403, "forbidden");

    let path = format!("/api/v1/rooms/{room}/bans");
    let first = app.get(&format!("{path}?limit=1"), &bob.access).await;
    let first = first.expect(200).clone();
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = app
        .get(&format!("{path}?limit=1&cursor={cursor}"), &bob.access)
        .await;
    let rest = rest.expect(200);
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let mut seen = vec![
        first["items"][0]["user_id"].as_str().unwrap_or_default(),
        rest["items"][0]["user_id"].as_str().unwrap_or_default(),
    ];
    seen.sort();
    let mut want = vec![dave.id.as_str(), erin.id.as_str()];
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_banned_users_socket_stops_receiving_the_room() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let other = app.room_with(&alice, &[&bob]).await;
    let mut a = app.ws(&alice).await;
    a.subscribe(&room, None).await;
    let mut b = app.ws(&bob).await;
    b.subscribe(&room, None).await;
    b.subscribe(&other, None).await;

    app.put(&ban_path(&room, &bob), &alice.access, json!({}))
        .await
        .expect(200);
    let f = a
        .recv_until("member_left", |f| f["type"] == "member_left")
        .await;
    assert_eq!(f["user_id"], bob.id.as_str());
    app.assert_put_out(&mut b, &alice, &room, &other).await;
}

/// The status code of a failed call; `None` when it succeeded.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

/// `msg` with `user`'s access token, as a client of RoomService sends it.
fn as_user<T>(user: &TestUser, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let bearer = format!("Bearer {}", user.access)
        .parse()
        .expect("a token is a valid header value");
    r.metadata_mut().insert("authorization", bearer);
    r
}

#[tokio::test]
async fn the_role_rules_hold_over_grpc() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.room_with(&alice, &[&bob]).await;
    let mut rpc = within(
        "a gRPC connection",
        RoomServiceClient::connect(app.room_grpc.clone()),
    )
    .await
    .expect("room's gRPC port");
    let role = |user: &TestUser, role: &str| pb::SetMemberRoleRequest {
        room_id: room.clone(),
        user_id: user.id.clone(),
        role: role.into(),
    };
    let ban = |user: &TestUser| pb::BanMemberRequest {
        room_id: room.clone(),
        user_id: user.id.clone(),
    };

    let m = within(
        "SetMemberRole",
        rpc.set_member_role(as_user(&alice, role(&bob, "admin"))),
    )
    .await
    .expect("the owner grants admin")
    .into_inner();
    assert_eq!(m.role, "admin");
    let r = within(
        "SetMemberRole",
        rpc.set_member_role(as_user(&bob, role(&alice, "member"))),
    )
    .await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
    let r = within(
        "SetMemberRole",
        rpc.set_member_role(as_user(&alice, role(&bob, "king"))),
    )
    .await;
    assert_eq!(code(r), Some(Code::InvalidArgument));
    let leave = pb::LeaveRoomRequest {
        room_id: room.clone(),
    };
    let r = within("LeaveRoom", rpc.leave_room(as_user(&alice, leave.clone()))).await;
    assert_eq!(
        code(r),
        Some(Code::AlreadyExists),
        "conflict: hand the room over first"
    );

    within("BanMember", rpc.ban_member(as_user(&bob, ban(&carol))))
        .await
        .expect("an admin bans a non-member");
    let join = pb::JoinRoomRequest {
        room_id: room.clone(),
    };
    let r = within("JoinRoom", rpc.join_room(as_user(&carol, join.clone()))).await;
    assert_eq!(code(r), Some(Code::PermissionDenied));
    let list = pb::ListBansRequest {
        room_id: room.clone(),
        cursor: String::new(),
        limit: 10,
    };
    let bans = within("ListBans", rpc.list_bans(as_user(&bob, list)))
        .await
        .expect("an admin lists bans")
        .into_inner();
    assert_eq!(
        bans.items
            .iter()
            .map(|b| b.user_id.as_str())
            .collect::<Vec<_>>(),
        [carol.id.as_str()]
    );
    let unban = pb::UnbanMemberRequest {
        room_id: room.clone(),
        user_id: carol.id.clone(),
    };
    within("UnbanMember", rpc.unban_member(as_user(&bob, unban)))
        .await
        .expect("an admin lifts a ban");
    within("JoinRoom", rpc.join_room(as_user(&carol, join)))
        .await
        .expect("carol is welcome again");

    let m = within(
        "SetMemberRole",
        rpc.set_member_role(as_user(&alice, role(&carol, "owner"))),
    )
    .await
    .expect("the owner hands the room over")
    .into_inner();
    assert_eq!(m.role, "owner");
    within("LeaveRoom", rpc.leave_room(as_user(&alice, leave)))
        .await
        .expect("the old owner may leave");
    let r = roles(&app, &bob, &room).await;
    assert_eq!(
        (role_of(&r, &carol), role_of(&r, &alice)),
        (Some("owner"), None)
    );
}
