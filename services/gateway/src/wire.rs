//! The JSON objects of the client contract that are not plain `chat.v1`
//! messages: room events and WebSocket server frames. Events are encoded
//! here once per gateway and the bytes shared by every connection.

use axum::extract::ws::Utf8Bytes;
use chat_core::ApiError;
use chat_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A sequenced room event as REST `events` and the WebSocket show it.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventView<'a> {
    Message(&'a pb::Message),
    MessageEdited {
        room_id: &'a str,
        seq: i64,
        target_seq: i64,
        body: &'a str,
        edited_at: &'a str,
        sender_id: &'a str,
    },
    MessageDeleted {
        room_id: &'a str,
        seq: i64,
        target_seq: i64,
    },
}

impl<'a> EventView<'a> {
    pub fn of(ev: &'a pb::RoomEvent) -> Option<Self> {
        use pb::room_event::Kind;
        Some(match ev.kind.as_ref()? {
            Kind::Message(m) => EventView::Message(m),
            Kind::Edited(e) => EventView::MessageEdited {
                room_id: &ev.room_id,
                seq: ev.seq,
                target_seq: e.target_seq,
                body: &e.body,
                edited_at: &e.edited_at,
                sender_id: &e.sender_id,
            },
            Kind::Deleted(d) => EventView::MessageDeleted {
                room_id: &ev.room_id,
                seq: ev.seq,
                target_seq: d.target_seq,
            },
        })
    }
}

/// An error as a frame shows it: its contract code and sentence.
#[derive(Serialize)]
pub struct ErrorView<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl<'a> ErrorView<'a> {
    pub fn of(e: &'a ApiError) -> Self {
        Self {
            code: e.code.as_str(),
            message: &e.message,
        }
    }
}

/// Frames the server sends.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Authenticated {
        user_id: String,
        session_id: String,
    },
    Subscribed {
        room_id: &'a str,
        last_seq: i64,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
    },
    SubscribedAll {
        rooms: &'a BTreeMap<String, i64>,
        /// The rooms that could not be subscribed (the others were): only
        /// when there are any, so the frame stays what it was without.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        errors: BTreeMap<&'a str, ErrorView<'a>>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
    },
    Unsubscribed {
        room_id: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
        room_id: &'a str,
        seq: i64,
        id: &'a str,
    },
    Ok {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<&'a Value>,
        code: &'a str,
        message: &'a str,
        /// When to try again (`rate_limited`, and `unavailable` from a
        /// server at capacity): REST's `Retry-After`, in milliseconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Typing {
        room_id: &'a str,
        user_id: &'a str,
    },
    Presence {
        room_id: &'a str,
        user_id: &'a str,
        online: bool,
    },
    MemberJoined {
        room_id: &'a str,
        user_id: &'a str,
    },
    MemberLeft {
        room_id: &'a str,
        user_id: &'a str,
    },
    MemberRole {
        room_id: &'a str,
        user_id: &'a str,
        role: &'a str,
    },
}

/// Encodes a frame as WebSocket text. Serialising these types cannot fail
/// (no maps with non-string keys, no foreign `Serialize` impls).
pub fn encode<T: Serialize>(v: &T) -> Utf8Bytes {
    match serde_json::to_string(v) {
        Ok(s) => Utf8Bytes::from(s),
        Err(error) => {
            tracing::error!(%error, "cannot encode a frame");
            Utf8Bytes::from_static(
                r#"{"type":"error","code":"internal","message":"internal error"}"#,
            )
        }
    }
}

pub fn error_frame(r#ref: Option<&Value>, e: &chat_core::ApiError) -> Utf8Bytes {
    encode(&ServerFrame::Error {
        r#ref,
        code: e.code.as_str(),
        message: &e.message,
        retry_after_ms: e.retry_after.map(|s| s.saturating_mul(1000)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_contract_shape() {
        let ev = pb::RoomEvent {
            room_id: "r".into(),
            seq: 7,
            kind: Some(pb::room_event::Kind::Edited(pb::MessageEdited {
                target_seq: 5,
                body: "hi".into(),
                edited_at: "t".into(),
                sender_id: "u".into(),
            })),
        };
        let v: Value = serde_json::to_value(EventView::of(&ev).unwrap()).unwrap();
        assert_eq!(v["type"], "message_edited");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["target_seq"], 5);
        let m = pb::RoomEvent {
            room_id: "r".into(),
            seq: 1,
            kind: Some(pb::room_event::Kind::Message(pb::Message {
                room_id: "r".into(),
                seq: 1,
                body: "x".into(),
                ..Default::default()
            })),
        };
        let v: Value = serde_json::to_value(EventView::of(&m).unwrap()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 1);
        assert!(v.get("edited_at").is_none());
    }

    #[test]
    fn ack_echoes_the_ref() {
        let r = serde_json::json!("abc");
        let s = encode(&ServerFrame::Ack {
            r#ref: Some(&r),
            room_id: "r",
            seq: 3,
            id: "m",
        });
        let v: Value = serde_json::from_str(s.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"ack","ref":"abc","room_id":"r","seq":3,"id":"m"})
        );
    }
}
