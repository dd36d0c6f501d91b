//! argon2id hashing, always off the async runtime (`spawn_blocking`).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use chat_core::ApiError;

/// Cost parameters. The defaults are OWASP's argon2id minimum (19 MiB, t=2).
#[derive(Clone, Copy, Debug)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

fn hasher(cost: HashCost) -> Result<Argon2<'static>, ApiError> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| ApiError::internal(&std::io::Error::other(e.to_string())))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string.
pub async fn hash(password: String, cost: HashCost) -> Result<String, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        let salt = SaltString::generate(&mut OsRng);
        hasher(cost)?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(&std::io::Error::other(e.to_string())))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
}

/// Checks a password against a PHC string (its own parameters apply).
pub async fn verify(password: String, phc: String) -> Result<bool, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        let Ok(parsed) = PasswordHash::new(&phc) else {
            tracing::error!("stored password hash is not a PHC string");
            return Ok(false);
        };
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let cost = HashCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let h = hash("correct horse".into(), cost).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!verify("wrong horse".into(), h).await.unwrap());
        assert!(!verify("x".into(), "garbage".into()).await.unwrap());
    }
}
