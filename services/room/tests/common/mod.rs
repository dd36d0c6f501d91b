//! What the room tests share: users with access tokens, and requests that
//! carry one.

use chat_auth::token::Issuer;
use chat_core::{SessionId, UserId};
use chat_store::{NewUser, Store};
use tonic::Request;

/// A new user in `store`, and an access token of theirs.
pub async fn user(store: &dyn Store, issuer: &Issuer, name: &str) -> String {
    let id = UserId::new();
    store
        .create_user(&NewUser {
            id,
            username: name.into(),
            display_name: name.into(),
            password_hash: "not a hash".into(),
            created_at: 0,
        })
        .await
        .unwrap();
    issuer.issue(id, SessionId::new()).unwrap()
}

/// `msg` with `token` as its bearer.
pub fn as_user<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}
