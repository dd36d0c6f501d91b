//! The WebSocket half of the client contract.
//!
//! A stack where each layer only calls down:
//!
//! - [`upgrade`]: the handshake and authentication (header or first frame);
//! - [`conn`]: one connection's task, from `authenticated` to its close;
//! - [`commands`]: the client's frames, one function each, after
//!   [`client_frame`] decoded and checked them;
//! - [`session`]: the connection's rooms and cursors: subscribe, catch-up,
//!   gap backfill, membership changes;
//! - [`hub`] (one bus subscription per room per gateway, fanning a room's
//!   events out) and [`presence`]; [`registry`] (every connection, by
//!   user: revocations, membership notices, shutdown) and [`recheck`]
//!   (every socket's session and rooms re-checked, for lost notices);
//! - leaves: [`io`] (the socket), [`out`] (every byte the server sends),
//!   [`frames`] (pre-framed batches), [`shared`] (what others may touch of
//!   a connection), [`close`] (the close codes).
//!
//! The hot path does not go through a connection's task: the upgrade keeps
//! the `TcpStream` itself, and a room's hub writes each batch of
//! pre-framed bytes straight to every connection whose cursor is where the
//! batch starts (see [`out`]).

pub mod client_frame;
pub mod close;
mod commands;
mod conn;
pub mod frames;
pub mod hub;
mod io;
pub mod out;
pub mod presence;
pub mod recheck;
pub mod registry;
pub mod session;
pub mod shared;
mod upgrade;

pub use upgrade::upgrade;
