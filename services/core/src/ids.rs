//! Newtype ids. All are UUIDs (v7, time-ordered, when we mint them); parsing
//! one from client input is the only way to get one, so a malformed id is an
//! `invalid_request` at the edge and never reaches a query.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::ApiError;

/// A room's event sequence number: starts at 1, grows by one per durable event.
pub type Seq = i64;

macro_rules! uuid_id {
    ($name:ident, $field:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses client input; the error names the field.
            pub fn parse(s: &str) -> Result<Self, ApiError> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| ApiError::invalid($field, concat!($field, " must be a UUID")))
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(UserId, "user_id");
uuid_id!(RoomId, "room_id");
uuid_id!(SessionId, "session_id");
uuid_id!(MessageId, "message_id");
