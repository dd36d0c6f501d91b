//! The client's frames as they arrive: one text frame is decoded into a
//! [`ClientFrame`] whose fields are already checked (room ids parsed, seqs
//! not negative, bodies and `client_msg_id`s within the contract), before
//! [`super::commands`] acts on it with the session.
//!
//! A leaf without I/O or state, public so that the fuzz target
//! `fuzz/fuzz_targets/ws_client_frame.rs` runs exactly what a connection
//! runs on each text frame.

use chat_core::{validate, ApiError, RoomId, Seq};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A client frame after the `authenticated` frame, its fields checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// `auth` again: answered with an error (the token is not looked at).
    Auth,
    /// `room_id` is the client's own spelling, echoed in `subscribed`.
    Subscribe {
        room: RoomId,
        room_id: String,
        since_seq: Option<Seq>,
    },
    /// `invalid` holds the `since` keys that are not room ids, each with
    /// why: reported in `subscribed_all.errors`, the other rooms subscribe.
    SubscribeAll {
        since: HashMap<RoomId, Seq>,
        invalid: BTreeMap<String, ApiError>,
    },
    Unsubscribe {
        room: RoomId,
        room_id: String,
    },
    Send {
        room: RoomId,
        room_id: String,
        client_msg_id: String,
        body: String,
    },
    Typing {
        room: RoomId,
    },
    Read {
        room: RoomId,
        seq: Seq,
    },
    Ping,
}

/// A decoded frame and the `ref` the client attached (echoed in the answer).
#[derive(Debug)]
pub struct Decoded {
    pub frame: ClientFrame,
    pub r#ref: Option<Value>,
}

/// A refused frame: the error for the client, and the frame's `ref` if it
/// got that far.
#[derive(Debug)]
pub struct Refused {
    pub r#ref: Option<Value>,
    pub error: ApiError,
}

/// Decodes and checks one text frame. A refusal is always an
/// `invalid_request` (or `too_large` for a long body) naming the field.
pub fn decode(text: &str) -> Result<Decoded, Refused> {
    let (wire, r#ref) = parse(text).map_err(|(r#ref, error)| Refused { r#ref, error })?;
    match check(wire) {
        Ok(frame) => Ok(Decoded { frame, r#ref }),
        Err(error) => Err(Refused { r#ref, error }),
    }
}

/// The frames as JSON has them.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Wire {
    Auth {
        #[allow(dead_code)]
        token: String,
    },
    Subscribe {
        room_id: String,
        since_seq: Option<Seq>,
    },
    SubscribeAll {
        since: Option<HashMap<String, Seq>>,
    },
    Unsubscribe {
        room_id: String,
    },
    Send {
        room_id: String,
        client_msg_id: String,
        body: String,
    },
    Typing {
        room_id: String,
    },
    Read {
        room_id: String,
        seq: Seq,
    },
    Ping {},
}

/// A client frame and its `ref`, or the error frame's `ref` and error.
#[allow(clippy::type_complexity)]
fn parse(text: &str) -> Result<(Wire, Option<Value>), (Option<Value>, ApiError)> {
    let mut value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err((None, ApiError::invalid("frame", "must be a JSON object"))),
        Err(_) => return Err((None, ApiError::invalid("frame", "is not valid JSON"))),
    };
    let r#ref = match &mut value {
        Value::Object(m) => m.remove("ref"),
        _ => None,
    };
    match serde_json::from_value(value) {
        Ok(f) => Ok((f, r#ref)),
        Err(e) => Err((r#ref, ApiError::invalid("frame", e))),
    }
}

/// The field rules, in the order the frame's fields are used.
fn check(wire: Wire) -> Result<ClientFrame, ApiError> {
    Ok(match wire {
        Wire::Auth { .. } => ClientFrame::Auth,
        Wire::Subscribe { room_id, since_seq } => {
            let room = RoomId::parse(&room_id)?;
            if let Some(s) = since_seq {
                validate::seq("since_seq", s)?;
            }
            ClientFrame::Subscribe {
                room,
                room_id,
                since_seq,
            }
        }
        Wire::SubscribeAll { since } => {
            let mut from = HashMap::new();
            let mut invalid = BTreeMap::new();
            for (k, v) in since.unwrap_or_default() {
                let seq = validate::seq("since", v)?;
                match RoomId::parse(&k) {
                    Ok(room) => {
                        from.insert(room, seq);
                    }
                    Err(e) => {
                        invalid.insert(k, e);
                    }
                }
            }
            ClientFrame::SubscribeAll {
                since: from,
                invalid,
            }
        }
        Wire::Unsubscribe { room_id } => ClientFrame::Unsubscribe {
            room: RoomId::parse(&room_id)?,
            room_id,
        },
        Wire::Send {
            room_id,
            client_msg_id,
            body,
        } => {
            let room = RoomId::parse(&room_id)?;
            validate::body(&body)?;
            validate::client_msg_id(&client_msg_id)?;
            ClientFrame::Send {
                room,
                room_id,
                client_msg_id,
                body,
            }
        }
        Wire::Typing { room_id } => ClientFrame::Typing {
            room: RoomId::parse(&room_id)?,
        },
        Wire::Read { room_id, seq } => ClientFrame::Read {
            room: RoomId::parse(&room_id)?,
            seq: validate::seq("seq", seq)?,
        },
        Wire::Ping {} => ClientFrame::Ping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::ErrorCode;
    use serde_json::json;

    const ROOM: &str = "0190f5a2-7c1e-7b3a-9d4e-2f6a8b1c3d5e";

    fn refused(text: &str) -> Refused {
        match decode(text) {
            Ok(d) => panic!("{text} was accepted: {d:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn a_frame_keeps_its_ref_and_the_room_as_sent() {
        let text = json!({"type": "subscribe", "room_id": format!(" {ROOM} "), "ref": 7});
        let d = decode(&text.to_string()).unwrap();
        assert_eq!(d.r#ref, Some(json!(7)));
        let ClientFrame::Subscribe { room, room_id, .. } = d.frame else {
            panic!("{:?}", d.frame);
        };
        assert_eq!(room.to_string(), ROOM);
        assert_eq!(room_id, format!(" {ROOM} "));
    }

    #[test]
    fn a_refused_field_keeps_the_ref_and_names_the_field() {
        let text = json!({"type": "send", "room_id": ROOM, "client_msg_id": "c",
                          "body": "a\u{0}b", "ref": "r1"});
        let r = refused(&text.to_string());
        assert_eq!(r.r#ref, Some(json!("r1")));
        assert_eq!(r.error.code, ErrorCode::InvalidRequest);
        assert!(r.error.message.starts_with("body: "), "{}", r.error.message);
    }

    #[test]
    fn negative_seqs_are_refused_before_any_call() {
        for (text, field) in [
            (json!({"type": "read", "room_id": ROOM, "seq": -1}), "seq: "),
            (
                json!({"type": "subscribe", "room_id": ROOM, "since_seq": -1}),
                "since_seq: ",
            ),
            (
                json!({"type": "subscribe_all", "since": {ROOM: -1}}),
                "since: ",
            ),
        ] {
            let r = refused(&text.to_string());
            assert!(r.error.message.starts_with(field), "{}", r.error.message);
        }
    }

    #[test]
    fn what_is_not_a_frame_is_refused_naming_the_frame() {
        for text in ["[]", "{", r#"{"type":"nope","ref":1}"#] {
            let r = refused(text);
            assert_eq!(r.error.code, ErrorCode::InvalidRequest);
            assert!(
                r.error.message.starts_with("frame: "),
                "{}",
                r.error.message
            );
        }
        assert!(refused(r#"{"type":"nope","ref":1}"#).r#ref.is_some());
    }
}
