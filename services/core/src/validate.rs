//! Input rules of the client contract, checked once at the service boundary
//! (so gRPC callers get the same answers as REST and WebSocket clients).

use crate::ApiError;

pub const BODY_MAX_CHARS: usize = 4000;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const ROOM_NAME_MAX: usize = 100;
pub const TOPIC_MAX: usize = 1000;
pub const DISPLAY_NAME_MAX: usize = 64;
pub const CLIENT_MSG_ID_MAX: usize = 128;
pub const LIMIT_DEFAULT: u32 = 50;
pub const LIMIT_MAX: u32 = 200;

/// 3–32 of `[A-Za-z0-9_.-]`.
pub fn username(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if !(3..=32).contains(&n) {
        return Err(ApiError::invalid("username", "must be 3 to 32 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ApiError::invalid(
            "username",
            "may contain only letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(())
}

/// 8–128 characters.
pub fn password(field: &str, s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(ApiError::invalid(field, "must be 8 to 128 characters"));
    }
    Ok(())
}

/// 1–4000 characters; longer is `too_large` (413), empty is `invalid_request`.
pub fn body(s: &str) -> Result<(), ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::invalid("body", "must not be empty"));
    }
    if s.chars().count() > BODY_MAX_CHARS {
        return Err(ApiError::too_large(format!(
            "body: must be at most {BODY_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

pub fn client_msg_id(s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > CLIENT_MSG_ID_MAX {
        return Err(ApiError::invalid("client_msg_id", "must be 1 to 128 bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "client_msg_id",
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn display_name(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n == 0 || n > DISPLAY_NAME_MAX || s.trim().is_empty() {
        return Err(ApiError::invalid(
            "display_name",
            "must be 1 to 64 characters",
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "display_name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn room_name(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n == 0 || n > ROOM_NAME_MAX || s.trim().is_empty() {
        return Err(ApiError::invalid("name", "must be 1 to 100 characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn topic(s: &str) -> Result<(), ApiError> {
    if s.chars().count() > TOPIC_MAX {
        return Err(ApiError::invalid(
            "topic",
            "must be at most 1000 characters",
        ));
    }
    Ok(())
}

/// `public` or `private`.
pub fn visibility(s: &str) -> Result<(), ApiError> {
    match s {
        "public" | "private" => Ok(()),
        _ => Err(ApiError::invalid(
            "visibility",
            "must be \"public\" or \"private\"",
        )),
    }
}

/// 0 means the default; above the max is an error, not a silent clamp.
pub fn limit(l: u32) -> Result<u32, ApiError> {
    match l {
        0 => Ok(LIMIT_DEFAULT),
        1..=LIMIT_MAX => Ok(l),
        _ => Err(ApiError::invalid("limit", "must be between 1 and 200")),
    }
}

pub fn seq(field: &str, s: i64) -> Result<i64, ApiError> {
    if s < 0 {
        return Err(ApiError::invalid(field, "must not be negative"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn usernames_follow_the_contract() {
        assert!(username("al").is_err());
        assert!(username("alice").is_ok());
        assert!(username("a.l-i_c3").is_ok());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("al ice").is_err());
        assert!(username("robert'); DROP TABLE users;--").is_err());
        assert!(username("ålice").is_err());
    }

    #[test]
    fn bodies_are_counted_in_characters() {
        assert!(body(&"é".repeat(4000)).is_ok());
        assert_eq!(
            body(&"é".repeat(4001)).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert_eq!(body("  ").unwrap_err().code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn limits_default_and_cap() {
        assert_eq!(limit(0).unwrap(), 50);
        assert_eq!(limit(200).unwrap(), 200);
        assert!(limit(201).is_err());
    }
}
