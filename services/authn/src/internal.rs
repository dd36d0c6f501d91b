//! Internal assertions: a gateway calling auth or room on a connected
//! user's behalf, or as itself, proven with the shared internal secret
//! (see [`Verifier`](crate::Verifier)). The metadata names are the contract
//! between the gateway, which writes them here, and the verifier, which
//! reads them.

use crate::Caller;
use tonic::metadata::{MetadataMap, MetadataValue};

/// The shared internal secret.
pub const INTERNAL_KEY: &str = "x-chat-internal";
/// The asserted user's id.
pub const USER_KEY: &str = "x-chat-user";
/// The asserted user's session id (so a revoked session is refused).
pub const SESSION_KEY: &str = "x-chat-session";
/// The calling service's own name (`gateway`), when it calls for no user.
pub const SERVICE_KEY: &str = "x-chat-service";

/// The address of the client a gateway calls for (signup, login,
/// refresh), as the gateway saw it; trusted only with the secret.
pub const CLIENT_ADDR_KEY: &str = "x-chat-client-addr";

/// The gateway's name when it calls as itself.
pub const GATEWAY: &str = "gateway";

/// Asserts that a call is made on behalf of `caller` (a user the gateway
/// authenticated at connect).
pub fn assert_user(md: &mut MetadataMap, caller: &Caller, secret: &str) {
    insert(md, INTERNAL_KEY, secret);
    insert(md, USER_KEY, &caller.user_id.to_string());
    insert(md, SESSION_KEY, &caller.session_id.to_string());
}

/// Asserts that a call is made by `service` itself, for no user (a
/// gateway backfilling a room's log for all its subscribers at once).
pub fn assert_service(md: &mut MetadataMap, service: &str, secret: &str) {
    insert(md, INTERNAL_KEY, secret);
    insert(md, SERVICE_KEY, service);
}

/// Asserts the address of the client an anonymous call is made for (auth
/// limits logins per address).
pub fn assert_client_addr(md: &mut MetadataMap, addr: std::net::IpAddr, secret: &str) {
    insert(md, INTERNAL_KEY, secret);
    insert(md, CLIENT_ADDR_KEY, &addr.to_string());
}

/// A value that cannot be metadata is left out: the call then fails
/// verification rather than going out with a half-made assertion's value.
fn insert(md: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(v) = MetadataValue::try_from(value) {
        md.insert(key, v);
    }
}
