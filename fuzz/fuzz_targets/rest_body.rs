//! Every JSON request body of the REST API, picked by the first byte,
//! through the gateway's own `Json` extractor and then the input rules the
//! handler or the service behind it applies to its fields (the services'
//! calls into `chat_core::validate`, restated here per body).
//!
//! Invariants: the extractor accepts exactly what `serde_json` accepts and
//! refuses with `invalid_request` naming `body`; a field rule refuses with
//! `invalid_request` (or `too_large` for a long message body) naming the
//! field; an accepted value obeys the contract (lengths, characters).

#![no_main]

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use chat_core::{validate, ApiError, ErrorCode, UserId};
use chat_fuzz::{block_on, chars, free_text_ok, name_ok, token_ok};
use chat_gateway::bodies::*;
use chat_gateway::extract::Json;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 13 {
        0 => body::<SignupBody>(json, &["username", "password", "display_name"], |b| {
            validate::username(&b.username)?;
            validate::password("password", &b.password)?;
            if let Some(d) = &b.display_name {
                validate::display_name(d)?;
                assert_display_name(d);
            }
            assert_username(&b.username);
            assert_password(&b.password);
            Ok(())
        }),
        // Log-in answers `unauthorized` for a name that cannot exist.
        1 => body::<LoginBody>(json, &["username"], |b| {
            validate::username(&b.username)?;
            assert_username(&b.username);
            Ok(())
        }),
        // Refresh tokens and current passwords are opaque: only decoded.
        2 => body::<RefreshBody>(json, &[], |_| Ok(())),
        3 => body::<UpdateMeBody>(json, &["display_name"], |b| {
            if let Some(d) = &b.display_name {
                validate::display_name(d)?;
                assert_display_name(d);
            }
            Ok(())
        }),
        4 => body::<PasswordBody>(json, &["new_password"], |b| {
            validate::password("new_password", &b.new_password)?;
            assert_password(&b.new_password);
            Ok(())
        }),
        5 => body::<DeleteMeBody>(json, &[], |_| Ok(())),
        6 => body::<CreateRoomBody>(json, &["name", "topic", "visibility"], |b| {
            validate::room_name(&b.name)?;
            validate::topic(&b.topic)?;
            if !b.visibility.is_empty() {
                validate::visibility(&b.visibility)?;
            }
            assert_room_name(&b.name);
            assert_topic(&b.topic);
            Ok(())
        }),
        7 => body::<UpdateRoomBody>(json, &["name", "topic", "visibility"], |b| {
            if let Some(n) = &b.name {
                validate::room_name(n)?;
                assert_room_name(n);
            }
            if let Some(t) = &b.topic {
                validate::topic(t)?;
                assert_topic(t);
            }
            if let Some(v) = &b.visibility {
                validate::visibility(v)?;
                assert!(v == "public" || v == "private", "{v:?}");
            }
            Ok(())
        }),
        8 => body::<UserBody>(json, &["user_id"], |b| {
            UserId::parse(&b.user_id)?;
            Ok(())
        }),
        9 => body::<PostBody>(json, &["client_msg_id", "body"], |b| {
            validate::client_msg_id(&b.client_msg_id)?;
            validate::body(&b.body)?;
            assert!((1..=128).contains(&b.client_msg_id.len()));
            assert!(token_ok(&b.client_msg_id), "{:?}", b.client_msg_id);
            assert_body(&b.body);
            Ok(())
        }),
        10 => body::<EditBody>(json, &["body"], |b| {
            validate::body(&b.body)?;
            assert_body(&b.body);
            Ok(())
        }),
        11 => body::<ReadBody>(json, &["seq"], |b| {
            validate::seq("seq", b.seq)?;
            assert!(b.seq >= 0);
            Ok(())
        }),
        _ => body::<RoleBody>(json, &["role"], |b| {
            // room's rule (`SetMemberRole`): one of the three role names.
            if !matches!(b.role.as_str(), "owner" | "admin" | "member") {
                return Err(ApiError::invalid("role", "must be owner, admin or member"));
            }
            Ok(())
        }),
    }
});

/// Decodes `json` as a `T` the way a handler gets it, then applies `rules`
/// (which may refuse with an error naming one of `fields`).
fn body<T: DeserializeOwned>(
    json: &[u8],
    fields: &[&str],
    rules: impl FnOnce(&T) -> Result<(), ApiError>,
) {
    let req = Request::builder()
        .method("POST")
        .uri("/")
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_vec()))
        .expect("a valid request");
    let extracted = block_on(Json::<T>::from_request(req, &()));
    let plain = serde_json::from_slice::<T>(json);
    let b = match extracted {
        Ok(Json(b)) => {
            assert!(plain.is_ok(), "the extractor took what serde_json refuses");
            b
        }
        Err(e) => {
            assert!(plain.is_err(), "the extractor refused a valid body: {e:?}");
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
            assert!(
                e.message.starts_with("body: ") && e.message.len() > 6,
                "{e:?}"
            );
            return;
        }
    };
    if let Err(e) = rules(&b) {
        let field = e.message.split_once(": ").map_or("", |(f, _)| f);
        assert!(fields.contains(&field), "{e:?}");
        match e.code {
            ErrorCode::InvalidRequest => {}
            ErrorCode::TooLarge => assert_eq!(field, "body", "{e:?}"),
            c => panic!("{c:?} for a bad field: {e:?}"),
        }
    }
}

fn assert_username(s: &str) {
    assert!((3..=32).contains(&chars(s)), "{s:?}");
    assert!(
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
        "{s:?}"
    );
}

fn assert_password(s: &str) {
    assert!((8..=128).contains(&chars(s)));
}

fn assert_display_name(s: &str) {
    assert!(
        (1..=64).contains(&chars(s)) && !s.trim().is_empty(),
        "{s:?}"
    );
    assert!(name_ok(s), "{s:?}");
}

fn assert_room_name(s: &str) {
    assert!(
        (1..=100).contains(&chars(s)) && !s.trim().is_empty(),
        "{s:?}"
    );
    assert!(name_ok(s), "{s:?}");
}

fn assert_topic(s: &str) {
    assert!(chars(s) <= 1000, "{s:?}");
    assert!(free_text_ok(s), "{s:?}");
}

fn assert_body(s: &str) {
    assert!(!s.trim().is_empty() && chars(s) <= 4000, "{s:?}");
    assert!(free_text_ok(s), "{s:?}");
}
