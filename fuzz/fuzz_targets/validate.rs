//! Arbitrary strings through every text rule of `chat_core::validate`.
//! Whatever a rule accepts obeys the contract as `chat_fuzz` restates it
//! (lengths, no control characters but newline and tab in free text, no
//! bidi overrides, nothing hidden in names); whatever it refuses is a
//! client error naming the field.

#![no_main]

use chat_core::{validate, ApiError, ErrorCode};
use chat_fuzz::{chars, free_text_ok, name_ok, token_ok};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let n = chars(s);
    if rule("username", validate::username(s)) {
        assert!((3..=32).contains(&n) && name_ok(s), "{s:?}");
        assert!(s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
    }
    if rule("password", validate::password("password", s)) {
        assert!((8..=128).contains(&n));
    }
    match validate::body(s) {
        Ok(()) => assert!(
            !s.trim().is_empty() && n <= 4000 && free_text_ok(s),
            "{s:?}"
        ),
        Err(e) if e.code == ErrorCode::TooLarge => assert!(n > 4000, "{e:?}"),
        Err(e) => {
            rule("body", Err(e));
        }
    }
    if rule("client_msg_id", validate::client_msg_id(s)) {
        assert!((1..=128).contains(&s.len()) && token_ok(s), "{s:?}");
    }
    if rule("display_name", validate::display_name(s)) {
        assert!(
            (1..=64).contains(&n) && !s.trim().is_empty() && name_ok(s),
            "{s:?}"
        );
    }
    if rule("name", validate::room_name(s)) {
        assert!(
            (1..=100).contains(&n) && !s.trim().is_empty() && name_ok(s),
            "{s:?}"
        );
    }
    if rule("topic", validate::topic(s)) {
        assert!(n <= 1000 && free_text_ok(s), "{s:?}");
    }
    if rule("q", validate::search_query(s)) {
        assert!(n <= 100 && token_ok(s), "{s:?}");
    }
    if rule("visibility", validate::visibility(s)) {
        assert!(s == "public" || s == "private");
    }
    assert_eq!(
        rule("f", validate::token_chars("f", s)),
        token_ok(s),
        "{s:?}"
    );
    assert_eq!(
        rule("f", validate::free_text_chars("f", s)),
        free_text_ok(s),
        "{s:?}"
    );
    assert_eq!(rule("f", validate::name_chars("f", s)), name_ok(s), "{s:?}");
});

/// Whether `r` accepted; a refusal must be `invalid_request` naming `field`.
fn rule(field: &str, r: Result<(), ApiError>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
            assert!(e.message.starts_with(&format!("{field}: ")), "{e:?}");
            false
        }
    }
}
