//! The room service: rooms, memberships and roles, messages with a per-room
//! sequence, history, read markers and DMs. Everything it commits it then
//! publishes on the room's bus subject, for the gateways to fan out.

mod access;
pub mod app;
pub mod config;
pub mod convert;
mod limits;
mod recent;
pub mod service;

pub use config::{RoomArgs, RoomConfig, DEFAULT_RECENT_CACHE};
pub use service::RoomSvc;
