//! Internal assertions: a gateway calling auth or room on a connected
//! user's behalf, proven with the shared internal secret (see
//! [`Verifier`](crate::Verifier)). The metadata names are the contract
//! between the gateway, which writes them, and the verifier, which reads them.

/// The shared internal secret.
pub const INTERNAL_KEY: &str = "x-chat-internal";
/// The asserted user's id.
pub const USER_KEY: &str = "x-chat-user";
/// The asserted user's session id (so a revoked session is refused).
pub const SESSION_KEY: &str = "x-chat-session";
