//! What both benches share: a realistic `chat.v1` message event, encoded
//! and framed the way a room hub does it (`Hub::push_event`).

use chat_core::{time, MessageId, RoomId, Seq, UserId};
use chat_gateway::wire::EventView;
use chat_gateway::ws::frames::{Batch, Builder};
use chat_proto::v1 as pb;
use uuid::Uuid;

/// Events per batch: a busy room's hand-off once the linger kicks in.
pub const BATCH: usize = 16;

/// A typical chat line, 101 bytes.
const BODY: &str = "Pushed the fix for the reconnect storm to staging; \
                    can someone check the p99 graph before we ship it?";

/// A message event as room publishes it: UUID ids, an RFC 3339 time.
pub fn message_event(room: RoomId, seq: Seq) -> pb::RoomEvent {
    let room_id = room.to_string();
    pb::RoomEvent {
        room_id: room_id.clone(),
        seq,
        kind: Some(pb::room_event::Kind::Message(pb::Message {
            room_id,
            seq,
            id: MessageId::new().to_string(),
            sender_id: UserId::new().to_string(),
            body: BODY.into(),
            client_msg_id: Uuid::new_v4().to_string(),
            created_at: time::rfc3339(time::now_ms()),
            edited_at: None,
            deleted: false,
        })),
    }
}

/// The event's client JSON, encoded once per gateway.
pub fn encode(ev: &pb::RoomEvent) -> Vec<u8> {
    let view = EventView::of(ev).expect("a message event has a client view");
    serde_json::to_vec(&view).expect("an event view always serialises")
}

/// [`BATCH`] contiguous events from `first` on, framed as one batch.
pub fn batch(room: RoomId, first: Seq) -> Batch {
    let mut b = Builder::new(room);
    for seq in first..first + BATCH as Seq {
        b.event(seq, &encode(&message_event(room, seq)));
    }
    b.take()
}
