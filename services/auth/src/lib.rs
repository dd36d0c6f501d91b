//! The auth service: accounts with argon2id password hashes, sessions as
//! refresh-token families (rotated on use; reuse revokes the family, except
//! a second use within a short grace, which gets the same successor), and
//! short-lived EdDSA access tokens that every other service verifies locally
//! with the public key ([`Verifier`], from `chat-authn`), so the hot path
//! never calls auth.

pub mod app;
pub mod config;
pub mod keyring;
pub mod keys;
pub mod password;
pub mod service;
pub mod token;
mod tokens;

pub use config::{AuthArgs, AuthConfig};
pub use keyring::{Kek, KeyRing};
pub use keys::SigningKey;
pub use service::AuthSvc;
pub use token::{Caller, Claims, Verifier};
