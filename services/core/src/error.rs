//! The one error type that crosses every boundary.
//!
//! Only [`ErrorCode`] knows how an error looks on each wire: the HTTP status,
//! the contract's `code` string, the gRPC status code and the WebSocket close
//! code. Services return [`ApiError`]; it travels over gRPC as a `Status` with
//! the exact code in the `chat-error-code` metadata, and the gateway maps a
//! received `Status` back without losing anything.

use serde::Serialize;
use std::fmt;

/// The contract's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The contract's snake_case `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn http_status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            ErrorCode::InvalidRequest => S::BAD_REQUEST,
            ErrorCode::Unauthorized => S::UNAUTHORIZED,
            ErrorCode::Forbidden => S::FORBIDDEN,
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::Conflict => S::CONFLICT,
            ErrorCode::TooLarge => S::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => S::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => S::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            ErrorCode::InvalidRequest => C::InvalidArgument,
            ErrorCode::Unauthorized => C::Unauthenticated,
            ErrorCode::Forbidden => C::PermissionDenied,
            ErrorCode::NotFound => C::NotFound,
            ErrorCode::Conflict => C::AlreadyExists,
            ErrorCode::TooLarge => C::OutOfRange,
            ErrorCode::RateLimited => C::ResourceExhausted,
            ErrorCode::Unavailable => C::Unavailable,
            ErrorCode::Internal => C::Internal,
        }
    }

    /// The code a gRPC status maps to when it carries no `chat-error-code`
    /// (a transport failure, or a peer that is not ours).
    pub fn from_grpc(code: tonic::Code) -> Self {
        use tonic::Code as C;
        match code {
            C::InvalidArgument | C::FailedPrecondition => ErrorCode::InvalidRequest,
            C::Unauthenticated => ErrorCode::Unauthorized,
            C::PermissionDenied => ErrorCode::Forbidden,
            C::NotFound => ErrorCode::NotFound,
            C::AlreadyExists | C::Aborted => ErrorCode::Conflict,
            C::OutOfRange => ErrorCode::TooLarge,
            C::ResourceExhausted => ErrorCode::RateLimited,
            C::Unavailable | C::DeadlineExceeded | C::Cancelled => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The WebSocket close code when this error ends a connection.
    pub const fn close_code(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 4001,
            ErrorCode::Forbidden => 4003,
            ErrorCode::RateLimited => 4008,
            ErrorCode::TooLarge => 1009,
            ErrorCode::Unavailable => 1012,
            ErrorCode::InvalidRequest => 1008,
            ErrorCode::NotFound | ErrorCode::Conflict => 1008,
            ErrorCode::Internal => 1011,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client may see: a code and a human sentence. Internal causes
/// are logged where they happen and never put in `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for `rate_limited` and an overloaded server's
    /// `unavailable` (`Retry-After`).
    pub retry_after: Option<u64>,
}

const CODE_KEY: &str = "chat-error-code";
const RETRY_KEY: &str = "chat-retry-after";

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `invalid_request` naming the bad field: "`field`: message".
    pub fn invalid(field: &str, message: impl fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidRequest, format!("{field}: {message}"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            code: ErrorCode::RateLimited,
            message: format!("too many requests; retry in {retry_after_secs} s"),
            retry_after: Some(retry_after_secs.max(1)),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// `unavailable` with a retry hint: a server at capacity refusing a
    /// call at once (see [`crate::admission`]). The hint is what sets it
    /// apart from a backend that is down ([`is_overload`]).
    pub fn overloaded(retry_after_secs: u64) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            message: format!("the server is at capacity; retry in {retry_after_secs} s"),
            retry_after: Some(retry_after_secs.max(1)),
        }
    }

    /// Logs the cause once, with its chain, and hides it from the client.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = cause.to_string();
        let mut src = cause.source();
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// The contract's JSON body.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorInner {
                code: self.code.as_str(),
                message: &self.message,
            },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorInner<'a>,
}

#[derive(Serialize)]
pub struct ErrorInner<'a> {
    pub code: &'static str,
    pub message: &'a str,
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut status = tonic::Status::new(e.code.grpc_code(), e.message);
        let md = status.metadata_mut();
        md.insert(
            CODE_KEY,
            tonic::metadata::MetadataValue::from_static(e.code.as_str()),
        );
        if let Some(r) = e.retry_after {
            if let Ok(v) = r.to_string().parse() {
                md.insert(RETRY_KEY, v);
            }
        }
        status
    }
}

/// Whether `s` is a server's refusal for load ([`ApiError::overloaded`]):
/// `UNAVAILABLE` with a retry hint. Retrying it at once would only add to
/// the load, unlike an `UNAVAILABLE` from a restart or a lost connection.
pub fn is_overload(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.metadata().contains_key(RETRY_KEY)
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let md = s.metadata();
        let code = md
            .get(CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::parse);
        match code {
            Some(code) => ApiError {
                code,
                message: s.message().to_owned(),
                retry_after: md
                    .get(RETRY_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            },
            None => {
                let code = match ErrorCode::from_grpc(s.code()) {
                    // The connection to the backend failed under the call
                    // (reset, GOAWAY): nothing the backend said; retryable.
                    ErrorCode::Internal
                        if s.code() == tonic::Code::Unknown
                            && s.message().starts_with("transport error") =>
                    {
                        ErrorCode::Unavailable
                    }
                    c => c,
                };
                if code == ErrorCode::Internal {
                    tracing::error!(grpc_code = ?s.code(), error = %s.message(), "upstream error");
                    ApiError::new(code, "internal error")
                } else if code == ErrorCode::Unavailable {
                    tracing::warn!(grpc_code = ?s.code(), error = %s.message(), "upstream unavailable");
                    ApiError::unavailable("a backend service is unavailable; retry shortly")
                } else {
                    ApiError::new(code, s.message().to_owned())
                }
            }
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut resp = (self.code.http_status(), axum::Json(self.body())).into_response();
        if let Some(r) = self.retry_after {
            if let Ok(v) = axum::http::HeaderValue::from_str(&r.to_string()) {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_grpc_round_trip() {
        for code in ErrorCode::ALL {
            let e = ApiError::new(code, "why");
            let back = ApiError::from(tonic::Status::from(e.clone()));
            assert_eq!(back, e);
        }
    }

    #[test]
    fn retry_after_survives_a_grpc_round_trip() {
        let e = ApiError::rate_limited(7);
        let back = ApiError::from(tonic::Status::from(e));
        assert_eq!(back.retry_after, Some(7));
        assert_eq!(back.code, ErrorCode::RateLimited);
    }

    #[test]
    fn an_overload_refusal_keeps_its_hint_and_is_told_apart() {
        let s = tonic::Status::from(ApiError::overloaded(1));
        assert!(is_overload(&s));
        let back = ApiError::from(s);
        assert_eq!(back.code, ErrorCode::Unavailable);
        assert_eq!(back.retry_after, Some(1));
        let down = tonic::Status::from(ApiError::unavailable("the store is unavailable"));
        assert!(!is_overload(&down));
        assert!(!is_overload(&tonic::Status::unavailable(
            "connection refused"
        )));
    }

    #[test]
    fn a_connection_lost_under_a_call_is_unavailable_not_internal() {
        let e = ApiError::from(tonic::Status::unknown("transport error"));
        assert_eq!(e.code, ErrorCode::Unavailable);
        let e = ApiError::from(tonic::Status::unknown("something else"));
        assert_eq!(e.code, ErrorCode::Internal);
    }

    #[test]
    fn a_foreign_status_maps_by_grpc_code() {
        let e = ApiError::from(tonic::Status::unavailable("connection refused"));
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(
            !e.message.contains("refused"),
            "transport details stay internal"
        );
    }

    #[test]
    fn body_matches_the_contract_shape() {
        let e = ApiError::invalid("username", "is too short");
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["message"], "username: is too short");
    }
}
