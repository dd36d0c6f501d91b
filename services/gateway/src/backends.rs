//! The gateway's way to auth and room: generated gRPC clients over a
//! `Channel`. In the all-in-one server that channel is in process; in the
//! distributed mode it is a network connection. The code is the same.

use chat_auth::token::{INTERNAL_KEY, SESSION_KEY, USER_KEY};
use chat_auth::Caller;
use chat_proto::v1::auth_service_client::AuthServiceClient;
use chat_proto::v1::room_service_client::RoomServiceClient;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Backends {
    pub auth: AuthServiceClient<Channel>,
    pub room: RoomServiceClient<Channel>,
}

impl Backends {
    pub fn new(auth: Channel, room: Channel) -> Self {
        Self {
            auth: AuthServiceClient::new(auth),
            room: RoomServiceClient::new(room),
        }
    }
}

/// How a call identifies the user it is for.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// Nobody (signup, login, refresh).
    Anonymous,
    /// The client's own access token (REST).
    Bearer(&'a str),
    /// A connected user, asserted with the internal secret (WebSocket).
    User(&'a Caller, &'a str),
}

/// A request with identity, deadline and the client's user agent.
pub fn request<T>(
    msg: T,
    who: As<'_>,
    timeout: Duration,
    user_agent: Option<&str>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    let md = req.metadata_mut();
    match who {
        As::Anonymous => {}
        As::Bearer(token) => {
            if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
                md.insert("authorization", v);
            }
        }
        As::User(caller, secret) => {
            if let Ok(v) = MetadataValue::try_from(secret) {
                md.insert(INTERNAL_KEY, v);
            }
            if let Ok(v) = MetadataValue::try_from(caller.user_id.to_string()) {
                md.insert(USER_KEY, v);
            }
            if let Ok(v) = MetadataValue::try_from(caller.session_id.to_string()) {
                md.insert(SESSION_KEY, v);
            }
        }
    }
    if let Some(ua) = user_agent.and_then(|u| MetadataValue::try_from(u).ok()) {
        md.insert("x-client-user-agent", ua);
    }
    req
}
