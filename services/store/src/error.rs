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
    #[error("store configuration: {0}")]
    Config(String),
    #[error("store backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
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
            StoreError::Config(_) | StoreError::Backend(_) => ApiError::internal(&e),
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}
