//! The client's frames: parsed, then one function per frame type.
//!
//! A bad frame gets an error frame (with the frame's `ref`) and the socket
//! stays open; only an `unauthorized` answer (the session was revoked
//! under a call) ends the connection, with 4001.

use super::close::{Close, End};
use super::session::Session;
use crate::wire::{encode, error_frame, ServerFrame};
use axum::extract::ws::Utf8Bytes;
use chat_bus::Publisher;
use chat_core::{ApiError, ErrorCode, RoomId, Seq, UserId};
use chat_ephemeral::{Ephemeral, RateDecision};
use chat_proto::v1 as pb;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// Client frames.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
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

/// How a frame failed: an error for the client, or the connection ends.
enum Failed {
    Api(ApiError),
    End(End),
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Api(e)
    }
}

impl From<End> for Failed {
    fn from(e: End) -> Self {
        Failed::End(e)
    }
}

/// What a frame's function answers: a reply to write, if any.
type Answer = Result<Option<Utf8Bytes>, Failed>;

/// What the frames need besides the session.
pub struct Commands<'a> {
    pub session: &'a mut Session,
    pub publisher: &'a Publisher,
    /// Where the typing throttle counts (shared by every gateway).
    pub ephemeral: &'a dyn Ephemeral,
    /// A user's typing reaches a room at most once per this long.
    pub typing_interval: Duration,
}

impl Commands<'_> {
    /// Handles one text frame from the client.
    pub async fn handle(&mut self, text: &str) -> Result<(), End> {
        let (frame, r#ref) = match parse(text) {
            Ok(f) => f,
            Err((r#ref, e)) => return self.session.send(&error_frame(r#ref.as_ref(), &e)),
        };
        let r = r#ref.as_ref();
        let answer = match frame {
            ClientFrame::Ping {} => Ok(Some(encode(&ServerFrame::Pong { r#ref: r }))),
            ClientFrame::Auth { .. } => {
                Err(ApiError::invalid("type", "already authenticated").into())
            }
            ClientFrame::Subscribe { room_id, since_seq } => {
                self.subscribe(&room_id, since_seq, r).await
            }
            ClientFrame::SubscribeAll { since } => self.subscribe_all(since, r).await,
            ClientFrame::Unsubscribe { room_id } => self.unsubscribe(&room_id, r),
            ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            } => self.send(&room_id, client_msg_id, body, r).await,
            ClientFrame::Typing { room_id } => self.typing(&room_id, r).await,
            ClientFrame::Read { room_id, seq } => self.read(&room_id, seq, r).await,
        };
        match answer {
            Ok(Some(reply)) => self.session.send(&reply),
            Ok(None) => Ok(()),
            Err(Failed::End(end)) => Err(end),
            Err(Failed::Api(e)) => {
                let sent = self.session.send(&error_frame(r, &e));
                if e.code == ErrorCode::Unauthorized {
                    return Err(Close::UNAUTHORIZED.into());
                }
                sent
            }
        }
    }

    async fn subscribe(&mut self, room_id: &str, since: Option<Seq>, r: Option<&Value>) -> Answer {
        let room = RoomId::parse(room_id)?;
        let last = self.session.subscribe(room, since).await?;
        let subscribed = encode(&ServerFrame::Subscribed {
            room_id,
            last_seq: last,
            r#ref: r,
        });
        self.session.go_live(&[room], &subscribed)?;
        Ok(None)
    }

    async fn subscribe_all(
        &mut self,
        since: Option<HashMap<String, Seq>>,
        r: Option<&Value>,
    ) -> Answer {
        let mut from = HashMap::new();
        for (k, v) in since.unwrap_or_default() {
            from.insert(RoomId::parse(&k)?, chat_core::validate::seq("since", v)?);
        }
        let rooms = self.session.subscribe_all(&from).await?;
        let frame = encode(&ServerFrame::SubscribedAll {
            rooms: &rooms,
            r#ref: r,
        });
        self.session.go_live(&self.session.rooms(), &frame)?;
        Ok(None)
    }

    fn unsubscribe(&mut self, room_id: &str, r: Option<&Value>) -> Answer {
        let room = RoomId::parse(room_id)?;
        self.session.unsubscribe(room);
        Ok(Some(encode(&ServerFrame::Unsubscribed {
            room_id,
            r#ref: r,
        })))
    }

    async fn send(
        &mut self,
        room_id: &str,
        client_msg_id: String,
        body: String,
        r: Option<&Value>,
    ) -> Answer {
        let room = RoomId::parse(room_id)?;
        chat_core::validate::body(&body)?;
        chat_core::validate::client_msg_id(&client_msg_id)?;
        let caller = self.session.caller();
        let m = self
            .session
            .api()
            .rpc()
            .post_message(&caller, room, client_msg_id, body)
            .await?;
        Ok(Some(encode(&ServerFrame::Ack {
            r#ref: r,
            room_id,
            seq: m.seq,
            id: &m.id,
        })))
    }

    async fn typing(&mut self, room_id: &str, r: Option<&Value>) -> Answer {
        let room = RoomId::parse(room_id)?;
        if !self.session.is_subscribed(room) {
            return Err(ApiError::invalid("room_id", "subscribe to the room first").into());
        }
        let user = self.session.caller().user_id;
        if self.relay_typing(user, room).await {
            let typing = pb::bus_event::Kind::Typing(pb::Typing {
                room_id: room.to_string(),
                user_id: user.to_string(),
            });
            // Best effort: a lost typing notice is not worth an error.
            let _ = self.publisher.to_room(room, typing).await;
        }
        Ok(r.map(|r| encode(&ServerFrame::Ok { r#ref: Some(r) })))
    }

    /// Whether this typing notice goes to the room: the first of each
    /// interval per user and room does (clients send one per keystroke,
    /// and every notice is a frame to every member). When the counter
    /// cannot be reached the notice is dropped: typing is best effort, and
    /// an outage must not lift the limit.
    async fn relay_typing(&self, user: UserId, room: RoomId) -> bool {
        if self.typing_interval.is_zero() {
            return true;
        }
        let key = format!("typing:{user}:{room}");
        matches!(
            self.ephemeral.hit(&key, 1, self.typing_interval).await,
            Ok(RateDecision::Allowed)
        )
    }

    async fn read(&mut self, room_id: &str, seq: Seq, r: Option<&Value>) -> Answer {
        let room = RoomId::parse(room_id)?;
        let caller = self.session.caller();
        self.session
            .api()
            .rpc()
            .mark_read(&caller, room, seq)
            .await?;
        Ok(r.map(|r| encode(&ServerFrame::Ok { r#ref: Some(r) })))
    }
}

/// A client frame and its `ref`, or the error frame's `ref` and error.
#[allow(clippy::type_complexity)]
fn parse(text: &str) -> Result<(ClientFrame, Option<Value>), (Option<Value>, ApiError)> {
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
