//! Store records → `chat.v1` messages.

use chat_core::time::rfc3339;
use chat_proto::v1 as pb;
use chat_store as st;

pub fn room(r: &st::Room) -> pb::Room {
    pb::Room {
        id: r.id.to_string(),
        name: r.name.clone(),
        topic: r.topic.clone(),
        visibility: r.visibility.as_str().into(),
        kind: r.kind.as_str().into(),
        created_at: rfc3339(r.created_at),
        last_seq: r.last_seq,
    }
}

pub fn message(m: &st::Message) -> pb::Message {
    pb::Message {
        room_id: m.room_id.to_string(),
        seq: m.seq,
        id: m.id.to_string(),
        sender_id: m.sender_id.to_string(),
        body: m.body.clone(),
        client_msg_id: m.client_msg_id.clone(),
        created_at: rfc3339(m.created_at),
        edited_at: m.edited_at.map(rfc3339),
        deleted: m.deleted,
    }
}

pub fn event(e: &st::Event) -> pb::RoomEvent {
    use pb::room_event::Kind;
    let kind = match &e.kind {
        st::EventKind::Message(m) => Kind::Message(message(m)),
        st::EventKind::Edited {
            target_seq,
            body,
            sender_id,
            edited_at,
        } => Kind::Edited(pb::MessageEdited {
            target_seq: *target_seq,
            body: body.clone(),
            edited_at: rfc3339(*edited_at),
            sender_id: sender_id.to_string(),
        }),
        st::EventKind::Deleted {
            target_seq,
            deleted_by,
            ..
        } => Kind::Deleted(pb::MessageDeleted {
            target_seq: *target_seq,
            deleted_by: deleted_by.to_string(),
        }),
    };
    pb::RoomEvent {
        room_id: e.room_id.to_string(),
        seq: e.seq,
        kind: Some(kind),
    }
}

pub fn member(m: &st::MemberProfile, online: bool) -> pb::Member {
    pb::Member {
        room_id: m.membership.room_id.to_string(),
        user_id: m.membership.user_id.to_string(),
        username: m.username.clone(),
        display_name: m.display_name.clone(),
        role: m.membership.role.as_str().into(),
        online,
        joined_at: rfc3339(m.membership.joined_at),
    }
}

pub fn ban(b: &st::Ban) -> pb::Ban {
    pb::Ban {
        room_id: b.room_id.to_string(),
        user_id: b.user_id.to_string(),
        username: b.username.clone(),
        display_name: b.display_name.clone(),
        banned_by: b.banned_by.to_string(),
        banned_at: rfc3339(b.banned_at),
    }
}
