//! The client's frames: decoded and checked by [`super::client_frame`],
//! then one function per frame type.
//!
//! A bad frame gets an error frame (with the frame's `ref`) and the socket
//! stays open; only an `unauthorized` answer (the session was revoked
//! under a call) ends the connection, with 4001.

use super::client_frame::{decode, ClientFrame, Decoded, Refused};
use super::close::{Close, End};
use super::session::Session;
use crate::wire::{encode, error_frame, ErrorView, ServerFrame};
use axum::extract::ws::Utf8Bytes;
use chat_bus::Publisher;
use chat_core::{ApiError, ErrorCode, RoomId, Seq, UserId};
use chat_ephemeral::{Ephemeral, RateDecision};
use chat_proto::v1 as pb;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

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
        let Decoded { frame, r#ref } = match decode(text) {
            Ok(d) => d,
            Err(Refused { r#ref, error }) => {
                return self.session.send(&error_frame(r#ref.as_ref(), &error))
            }
        };
        let r = r#ref.as_ref();
        let answer = match frame {
            ClientFrame::Ping => Ok(Some(encode(&ServerFrame::Pong { r#ref: r }))),
            ClientFrame::Auth => Err(ApiError::invalid("type", "already authenticated").into()),
            ClientFrame::Subscribe {
                room,
                room_id,
                since_seq,
            } => self.subscribe(room, &room_id, since_seq, r).await,
            ClientFrame::SubscribeAll { since, invalid } => {
                self.subscribe_all(since, invalid, r).await
            }
            ClientFrame::Unsubscribe { room, room_id } => self.unsubscribe(room, &room_id, r),
            ClientFrame::Send {
                room,
                room_id,
                client_msg_id,
                body,
            } => self.send(room, &room_id, client_msg_id, body, r).await,
            ClientFrame::Typing { room } => self.typing(room, r).await,
            ClientFrame::Read { room, seq } => self.read(room, seq, r).await,
        };
        match answer {
            Ok(Some(reply)) => self.session.send(&reply),
            Ok(None) => Ok(()),
            Err(Failed::End(end)) => Err(end),
            Err(Failed::Api(_)) if self.session.closing().is_some() => Err(End::Gone),
            Err(Failed::Api(e)) => {
                let sent = self.session.send(&error_frame(r, &e));
                if e.code == ErrorCode::Unauthorized {
                    return Err(Close::UNAUTHORIZED.into());
                }
                sent
            }
        }
    }

    async fn subscribe(
        &mut self,
        room: RoomId,
        room_id: &str,
        since: Option<Seq>,
        r: Option<&Value>,
    ) -> Answer {
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
        since: HashMap<RoomId, Seq>,
        invalid: BTreeMap<String, ApiError>,
        r: Option<&Value>,
    ) -> Answer {
        let mut all = self.session.subscribe_all(&since).await?;
        all.errors.extend(invalid);
        let frame = encode(&ServerFrame::SubscribedAll {
            rooms: &all.rooms,
            errors: all
                .errors
                .iter()
                .map(|(room, e)| (room.as_str(), ErrorView::of(e)))
                .collect(),
            r#ref: r,
        });
        self.session.go_live(&self.session.rooms(), &frame)?;
        Ok(None)
    }

    fn unsubscribe(&mut self, room: RoomId, room_id: &str, r: Option<&Value>) -> Answer {
        self.session.unsubscribe(room);
        Ok(Some(encode(&ServerFrame::Unsubscribed {
            room_id,
            r#ref: r,
        })))
    }

    async fn send(
        &mut self,
        room: RoomId,
        room_id: &str,
        client_msg_id: String,
        body: String,
        r: Option<&Value>,
    ) -> Answer {
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

    async fn typing(&mut self, room: RoomId, r: Option<&Value>) -> Answer {
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

    async fn read(&mut self, room: RoomId, seq: Seq, r: Option<&Value>) -> Answer {
        let caller = self.session.caller();
        self.session
            .api()
            .rpc()
            .mark_read(&caller, room, seq)
            .await?;
        Ok(r.map(|r| encode(&ServerFrame::Ok { r#ref: Some(r) })))
    }
}
