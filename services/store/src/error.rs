//! Seam errors: what a backend's driver errors become, in domain terms.

use chat_core::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error("not a member of the room")]
    NotMember,
    #[error("forbidden")]
    Forbidden,
    /// The user is banned from the room: they cannot join or be added.
    #[error("banned from the room")]
    Banned,
    /// The change would leave the room without its owner (the owner
    /// leaving, being removed or banned, or giving up the role other than
    /// by handing it to another member).
    #[error("the room's owner must transfer ownership first")]
    SoleOwner,
    #[error("store configuration: {0}")]
    Config(String),
    #[error("store backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Every pooled connection stayed busy for the pool's timeout, or the
    /// group commit's queue is full: an overload, refused with a retry hint
    /// (503 + `Retry-After`), not a fault (500).
    #[error("store busy")]
    Busy,
    /// The connection to the database failed or the server is shutting
    /// down or restarting: nothing was committed by the failed call, and a
    /// retry may well succeed (503), not a fault (500).
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        let e: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        match e.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::PoolTimedOut) => StoreError::Busy,
            Some(se) if connection_lost(se) => StoreError::Unavailable(e),
            _ => StoreError::Backend(e),
        }
    }
}

/// The database went away under the call (a crash, a restart, a network
/// fault), as opposed to a fault in the call itself.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // Postgres: class 08 (connection exception), 57P01..57P03
            // (admin or crash shutdown, cannot connect now).
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

impl From<StoreError> for ApiError {
    /// Generic mapping; services usually match the domain variants first to
    /// say what was not found or conflicted.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists => ApiError::conflict("already exists"),
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::NotMember => ApiError::forbidden("not a member of this room"),
            StoreError::Forbidden => ApiError::forbidden("not allowed"),
            StoreError::Banned => {
                ApiError::forbidden("banned from this room; an admin must lift the ban first")
            }
            StoreError::SoleOwner => {
                ApiError::conflict("the owner must transfer ownership to another member first")
            }
            StoreError::Busy => ApiError::overloaded(1),
            StoreError::Unavailable(_) => ApiError::unavailable("the store is unavailable; retry"),
            StoreError::Config(_) | StoreError::Backend(_) => ApiError::internal(&e),
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_unavailable_not_internal() {
        let e = StoreError::backend(sqlx::Error::PoolTimedOut);
        assert!(matches!(e, StoreError::Busy));
        let api = ApiError::from(e);
        assert_eq!(api.code, chat_core::ErrorCode::Unavailable);
        // An overload: the client gets a retry hint, the gateway does not
        // retry it behind the client's back.
        assert_eq!(api.retry_after, Some(1));
        let other = StoreError::backend(sqlx::Error::RowNotFound);
        assert_eq!(ApiError::from(other).code, chat_core::ErrorCode::Internal);
    }

    #[test]
    fn a_lost_database_connection_is_unavailable_not_internal() {
        // What an in-flight call gets when PostgreSQL crashes or restarts.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for e in [sqlx::Error::Io(reset), sqlx::Error::PoolClosed] {
            let e = StoreError::backend(e);
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
            assert_eq!(ApiError::from(e).code, chat_core::ErrorCode::Unavailable);
        }
    }
}
