//! One WebSocket text frame through the decoder every connection runs
//! (`chat_gateway::ws::client_frame::decode`): JSON, the frame's shape,
//! then its fields. A refusal must be a client error naming the field; an
//! accepted frame must obey the contract's rules and decode to itself
//! again once written back as JSON.

#![no_main]

use chat_core::{ErrorCode, RoomId};
use chat_fuzz::{chars, free_text_ok, token_ok};
use chat_gateway::ws::client_frame::{decode, ClientFrame, Decoded, Refused};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8 by the time the connection sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Err(Refused { error, .. }) => {
            let (field, detail) = error
                .message
                .split_once(": ")
                .unwrap_or_else(|| panic!("no field in {:?}", error.message));
            assert!(
                !field.is_empty() && !detail.is_empty(),
                "{:?}",
                error.message
            );
            match error.code {
                ErrorCode::InvalidRequest => {}
                ErrorCode::TooLarge => assert_eq!(field, "body"),
                c => panic!("{c:?} for a bad frame: {:?}", error.message),
            }
        }
        Ok(Decoded { frame, r#ref }) => {
            assert!(
                matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_))),
                "accepted a frame that is not a JSON object"
            );
            accepted(&frame);
            let again = decode(&wire(&frame, r#ref.clone()).to_string())
                .unwrap_or_else(|r| panic!("{frame:?} written back is refused: {r:?}"));
            assert_eq!(again.frame, frame);
            if !r#ref.as_ref().is_some_and(has_float) {
                assert_eq!(again.r#ref, r#ref);
            }
        }
    }
});

/// The rules an accepted frame's fields obey.
fn accepted(frame: &ClientFrame) {
    match frame {
        ClientFrame::Subscribe { since_seq, .. } => assert!(since_seq.unwrap_or(0) >= 0),
        ClientFrame::SubscribeAll { since, invalid } => {
            assert!(since.values().all(|s| *s >= 0));
            assert!(invalid.keys().all(|k| RoomId::parse(k).is_err()), "{invalid:?}");
        }
        ClientFrame::Send {
            client_msg_id,
            body,
            ..
        } => {
            assert!(
                (1..=128).contains(&client_msg_id.len()),
                "{client_msg_id:?}"
            );
            assert!(token_ok(client_msg_id), "{client_msg_id:?}");
            assert!(!body.trim().is_empty() && chars(body) <= 4000, "{body:?}");
            assert!(free_text_ok(body), "{body:?}");
        }
        ClientFrame::Read { seq, .. } => assert!(*seq >= 0),
        ClientFrame::Auth
        | ClientFrame::Unsubscribe { .. }
        | ClientFrame::Typing { .. }
        | ClientFrame::Ping => {}
    }
}

/// `frame` as a client would send it.
fn wire(frame: &ClientFrame, r#ref: Option<Value>) -> Value {
    let mut v = match frame {
        ClientFrame::Auth => json!({"type": "auth", "token": "t"}),
        ClientFrame::Subscribe {
            room_id, since_seq, ..
        } => match since_seq {
            Some(s) => json!({"type": "subscribe", "room_id": room_id, "since_seq": s}),
            None => json!({"type": "subscribe", "room_id": room_id}),
        },
        ClientFrame::SubscribeAll { since, invalid } => {
            let since: Map<String, Value> = since
                .iter()
                .map(|(room, seq)| (room.to_string(), json!(seq)))
                .chain(invalid.keys().map(|k| (k.clone(), json!(0))))
                .collect();
            json!({"type": "subscribe_all", "since": since})
        }
        ClientFrame::Unsubscribe { room_id, .. } => {
            json!({"type": "unsubscribe", "room_id": room_id})
        }
        ClientFrame::Send {
            room_id,
            client_msg_id,
            body,
            ..
        } => {
            json!({"type": "send", "room_id": room_id, "client_msg_id": client_msg_id, "body": body})
        }
        ClientFrame::Typing { room } => json!({"type": "typing", "room_id": room.to_string()}),
        ClientFrame::Read { room, seq } => {
            json!({"type": "read", "room_id": room.to_string(), "seq": seq})
        }
        ClientFrame::Ping => json!({"type": "ping"}),
    };
    if let (Some(r), Value::Object(m)) = (r#ref, &mut v) {
        m.insert("ref".into(), r);
    }
    v
}

/// serde_json does not promise that a float survives a round trip.
fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}
