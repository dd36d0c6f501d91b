//! Input rules of the client contract, checked once at the service boundary
//! (so gRPC callers get the same answers as REST and WebSocket clients).
//!
//! Every string a client sends goes through one function here. Besides
//! lengths, each text field follows one of three character rules, applied
//! in both modes alike (SQLite would store a NUL; Postgres refuses it):
//!
//! - [`name_chars`] for usernames, display names and room names: no
//!   control characters, no bidi formatting characters (embeddings,
//!   overrides, isolates and marks), no zero-width characters, no line or
//!   paragraph separators. A name is shown next to other names, where any
//!   of these lets one name pass for another or reorder what follows it.
//! - [`free_text_chars`] for message bodies and topics: newline and tab
//!   are kept, other control characters are refused, and so are the bidi
//!   embeddings, overrides and isolates (they leak into the text around a
//!   message, as in `"\u{202E}gpj.exe"`). Bidi marks and zero-width
//!   characters stay: right-to-left text, emoji ZWJ sequences and scripts
//!   that need ZWNJ use them.
//! - [`token_chars`] for opaque client strings (`client_msg_id`, the room
//!   search `q`): no control characters.
//!
//! Passwords are only length-checked: they are hashed, never stored or shown
//! as text. Ids, cursors and seqs are parsed into their types.

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

/// Unicode general category Cc: C0 (including NUL), DEL and C1.
fn is_control(c: char) -> bool {
    c.is_control()
}

/// Bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069):
/// they change the order of the text after them until a terminator that a
/// client may never send.
fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Bidi marks: LRM, RLM and the Arabic letter mark.
fn is_bidi_mark(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Zero-width space, non-joiner and joiner, word joiner and the BOM.
fn is_zero_width(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

fn refuse(field: &str, what: &str, c: char) -> ApiError {
    ApiError::invalid(
        field,
        format!("must not contain {what} (found U+{:04X})", u32::from(c)),
    )
}

/// Opaque strings: no control characters at all.
pub fn token_chars(field: &str, s: &str) -> Result<(), ApiError> {
    match s.chars().find(|&c| is_control(c)) {
        Some(c) => Err(refuse(field, "control characters", c)),
        None => Ok(()),
    }
}

/// Free text (bodies, topics): newline and tab, but no other control
/// character and no bidi embedding, override or isolate.
pub fn free_text_chars(field: &str, s: &str) -> Result<(), ApiError> {
    for c in s.chars() {
        if is_control(c) && !matches!(c, '\n' | '\t') {
            return Err(refuse(field, "control characters", c));
        }
        if is_bidi_override(c) {
            return Err(refuse(field, "bidi overrides or isolates", c));
        }
    }
    Ok(())
}

/// Names: one line of visible text, nothing that reorders or hides.
pub fn name_chars(field: &str, s: &str) -> Result<(), ApiError> {
    for c in s.chars() {
        if is_control(c) || matches!(c, '\u{2028}' | '\u{2029}') {
            return Err(refuse(field, "control characters", c));
        }
        if is_bidi_override(c) || is_bidi_mark(c) {
            return Err(refuse(field, "bidi formatting characters", c));
        }
        if is_zero_width(c) {
            return Err(refuse(field, "zero-width characters", c));
        }
    }
    Ok(())
}

/// 3–32 of `[A-Za-z0-9_.-]`.
pub fn username(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if !(3..=32).contains(&n) {
        return Err(ApiError::invalid("username", "must be 3 to 32 characters"));
    }
    name_chars("username", s)?;
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
    free_text_chars("body", s)
}

pub fn client_msg_id(s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > CLIENT_MSG_ID_MAX {
        return Err(ApiError::invalid("client_msg_id", "must be 1 to 128 bytes"));
    }
    token_chars("client_msg_id", s)
}

pub fn display_name(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n == 0 || n > DISPLAY_NAME_MAX || s.trim().is_empty() {
        return Err(ApiError::invalid(
            "display_name",
            "must be 1 to 64 characters",
        ));
    }
    name_chars("display_name", s)
}

pub fn room_name(s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n == 0 || n > ROOM_NAME_MAX || s.trim().is_empty() {
        return Err(ApiError::invalid("name", "must be 1 to 100 characters"));
    }
    name_chars("name", s)
}

pub fn topic(s: &str) -> Result<(), ApiError> {
    if s.chars().count() > TOPIC_MAX {
        return Err(ApiError::invalid(
            "topic",
            "must be at most 1000 characters",
        ));
    }
    free_text_chars("topic", s)
}

/// The public-room search: at most a room name's length, matched literally.
pub fn search_query(s: &str) -> Result<(), ApiError> {
    if s.chars().count() > ROOM_NAME_MAX {
        return Err(ApiError::invalid("q", "must be at most 100 characters"));
    }
    token_chars("q", s)
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

    /// Runs `rule` over a table: `true` means accepted.
    #[track_caller]
    fn check(rule: fn(&str, &str) -> Result<(), ApiError>, table: &[(&str, bool)]) {
        for &(s, accepted) in table {
            match rule("f", s) {
                Ok(()) => assert!(accepted, "{s:?} was accepted"),
                Err(e) => {
                    assert!(!accepted, "{s:?} was refused: {}", e.message);
                    assert_eq!(e.code, ErrorCode::InvalidRequest);
                    assert!(
                        e.message.starts_with("f: must not contain "),
                        "{}",
                        e.message
                    );
                }
            }
        }
    }

    #[test]
    fn tokens_refuse_every_control_character() {
        check(
            token_chars,
            &[
                ("c-1", true),
                ("é 🦀 \u{202E} \u{200B}", true),
                ("a\u{0}b", false),
                ("\u{0}", false),
                ("a\nb", false),
                ("a\tb", false),
                ("\u{1B}[31m", false),
                ("\u{7F}", false),
                ("\u{85}", false),
                ("\u{9F}", false),
            ],
        );
    }

    #[test]
    fn free_text_keeps_line_breaks_rtl_and_joiners() {
        check(
            free_text_chars,
            &[
                ("hello", true),
                ("two\nlines\tand a tab", true),
                ("שלום \u{200F}(hello)", true),
                ("مرحبا\u{061C}", true),
                ("👨\u{200D}👩\u{200D}👧", true),
                ("می\u{200C}خواهم", true),
                ("zero\u{200B}width\u{2060}\u{FEFF}", true),
                ("a\u{0}b", false),
                ("a\r\nb", false),
                ("bell\u{7}", false),
                ("\u{7F}", false),
                ("c1\u{85}", false),
                ("\u{202A}x", false),
                ("\u{202E}gpj.exe", false),
                ("\u{2066}x\u{2069}", false),
                ("x\u{2069}", false),
            ],
        );
    }

    #[test]
    fn names_refuse_what_reorders_or_hides() {
        check(
            name_chars,
            &[
                ("alice", true),
                ("Zoë 🦀", true),
                ("שלום", true),
                ("name with spaces", true),
                ("a\u{0}", false),
                ("two\nlines", false),
                ("tab\there", false),
                ("line\u{2028}sep", false),
                ("para\u{2029}sep", false),
                ("adm\u{202E}in", false),
                ("\u{202B}x", false),
                ("\u{2067}x", false),
                ("x\u{200E}", false),
                ("x\u{200F}", false),
                ("x\u{061C}", false),
                ("ad\u{200B}min", false),
                ("ad\u{200C}min", false),
                ("ad\u{200D}min", false),
                ("ad\u{2060}min", false),
                ("\u{FEFF}admin", false),
            ],
        );
    }

    #[test]
    fn each_field_names_itself_when_refused() {
        let cases = [
            ("username", username("al\u{0}ice")),
            ("display_name", display_name("B\u{200B}ob")),
            ("name", room_name("r\u{202E}oom")),
            ("topic", topic("t\u{0}")),
            ("body", body("b\u{0}")),
            ("client_msg_id", client_msg_id("c\u{0}")),
            ("q", search_query("q\u{0}")),
        ];
        for (field, r) in cases {
            let e = r.expect_err(field);
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{field}");
            assert!(
                e.message.starts_with(&format!("{field}: must not contain")),
                "{}",
                e.message
            );
        }
        assert!(topic("").is_ok());
        assert!(search_query("").is_ok());
        assert!(search_query(&"q".repeat(101)).is_err());
    }

    #[test]
    fn limits_default_and_cap() {
        assert_eq!(limit(0).unwrap(), 50);
        assert_eq!(limit(200).unwrap(), 200);
        assert!(limit(201).is_err());
    }
}
