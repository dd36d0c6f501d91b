//! The `chat` server's integration tests, as one test binary: each module
//! drives a real server (see `helpers`) through the client contract only.

mod admin;
mod auth;
mod auth_abuse;
mod bad_input;
#[path = "../common/cluster.rs"]
mod cluster;
mod durability;
mod edge;
mod helpers;
mod keys;
mod messages;
mod overload;
mod reflection;
mod revocation;
mod roles;
mod rooms;
mod sessions;
mod subscribe_all;
mod websocket;
