//! Refresh tokens: random, stored only as hashes; a spent token's successor
//! is kept sealed with a key only the spent token gives (the refresh grace).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};

pub(crate) fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Refresh tokens are stored only as SHA-256 hashes: they are 256-bit random
/// values, so a fast hash is enough (nothing to brute-force).
pub(crate) fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The key that seals a refresh token's successor: derived from the spent
/// token itself (which the store never sees; it keeps a SHA-256 of it under
/// another label), so only a holder of that token can open it, and only
/// through a refresh within the grace. Each key seals exactly one value.
fn seal_key(spent: &str) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"chat refresh successor seal\0");
    h.update(spent.as_bytes());
    h.finalize().into()
}

/// Seals `next` (a 43-character token) for the holder of `spent`.
pub(crate) fn seal(spent: &str, next: &str) -> Vec<u8> {
    let key = seal_key(spent);
    next.bytes().zip(key).map(|(b, k)| b ^ k).collect()
}

/// Opens what [`seal`] made; `None` if it is not a token.
pub(crate) fn unseal(spent: &str, sealed: &[u8]) -> Option<String> {
    if sealed.len() > 64 {
        return None;
    }
    let key = seal_key(spent);
    String::from_utf8(sealed.iter().zip(key).map(|(b, k)| b ^ k).collect()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_spent_token_opens_its_sealed_successor() {
        let (spent, next) = (new_refresh_token(), new_refresh_token());
        let sealed = seal(&spent, &next);
        assert_ne!(sealed, next.as_bytes(), "not stored in the clear");
        assert_eq!(unseal(&spent, &sealed).as_deref(), Some(next.as_str()));
        assert_ne!(
            unseal(&new_refresh_token(), &sealed).as_deref(),
            Some(next.as_str())
        );
    }
}
