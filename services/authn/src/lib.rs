//! Who is calling: the verifying half of authentication, for every service.
//!
//! Auth signs short-lived EdDSA access tokens; gateway and room verify them
//! here, locally, with auth's public keys ([`fetch_public_keys`]) and the
//! revocation list, so the hot path never calls auth. A gateway may also
//! assert who it calls for with the shared internal secret ([`internal`]).
//! Signing (the private key, the issuer, accounts) stays in `chat-auth`,
//! so a verifying service carries neither argon2 nor the store.

pub mod internal;
pub mod keys;
pub mod verifier;

pub use keys::{
    fetch_public_keys, fetch_public_keys_from, verifier_from_auth, AuthKeys, KeyRefreshArgs,
    PublicKey,
};
pub use verifier::{bearer, strip_bearer, Caller, Claims, KeySource, Principal, Verifier, ISSUER};
