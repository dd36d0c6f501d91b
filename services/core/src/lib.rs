//! Shared pieces every chat crate stands on: typed ids, the one error type
//! with its mapping to HTTP, gRPC and WebSocket close codes, input validation,
//! timestamps, shutdown, serving (with the gRPC admission limit) and
//! telemetry.

pub mod admission;
pub mod config;
pub mod debug;
pub mod error;
pub mod health;
pub mod ids;
pub mod per_addr;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod validate;

pub use error::{is_overload, ApiError, ErrorCode};
pub use ids::{MessageId, RoomId, Seq, SessionId, UserId};
