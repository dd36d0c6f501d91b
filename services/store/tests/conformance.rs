//! Runs the Store conformance suite (`conformance/mod.rs`) on `SqliteStore`,
//! each case on its own database file in a temporary directory, plus the
//! checks only a file-backed SQLite store can have (reopening, corrupt rows).

#[path = "conformance/mod.rs"]
mod suite;

use std::path::Path;
use std::sync::Arc;

use chat_core::{RoomId, UserId};
use chat_store::sqlite::SqliteStore;
use chat_store::{NewRoom, NewUser, RoomKind, Store, StoreError, Visibility};
use tempfile::TempDir;

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A store on a new file in a new temporary directory (a nested one, so
/// `connect` must create it). Keep the `TempDir` alive as long as the store.
async fn open_temp() -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("chat.db");
    let store = SqliteStore::connect(&url(&path))
        .await
        .expect("open SQLite store");
    (dir, Arc::new(store))
}

macro_rules! sqlite_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_dir, store) = open_temp().await;
            suite::$case(store).await;
        }
    )*};
}
suite::for_each_case!(sqlite_cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_suite_passes_on_one_shared_store() {
    let (_dir, store) = open_temp().await;
    suite::store_conformance(store).await;
}

#[tokio::test]
async fn data_survives_dropping_and_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir.path().join("chat.db"));
    let user = NewUser {
        id: UserId::new(),
        username: "Persistent".into(),
        display_name: "P".into(),
        password_hash: "h".into(),
        created_at: 1,
    };
    let room_id = RoomId::new();
    {
        let store = SqliteStore::connect(&url).await.unwrap();
        store.create_user(&user).await.unwrap();
        store
            .create_room(
                &NewRoom {
                    id: room_id,
                    name: "kept".into(),
                    topic: String::new(),
                    visibility: Visibility::Public,
                    kind: RoomKind::Group,
                    created_at: 2,
                },
                user.id,
            )
            .await
            .unwrap();
        store
            .append_message(&chat_store::NewMessage {
                room_id,
                id: chat_core::MessageId::new(),
                sender_id: user.id,
                client_msg_id: "c1".into(),
                body: "still here".into(),
                created_at: 3,
            })
            .await
            .unwrap();
    }

    // Reopening runs the migrations again, which must be a no-op.
    let store = SqliteStore::connect(&url).await.unwrap();
    let found = store.user_by_username("persistent").await.unwrap().unwrap();
    assert_eq!(found.user.id, user.id);
    let room = store.room(room_id).await.unwrap().unwrap();
    assert_eq!(room.last_seq, 1);
    let msg = store.message(room_id, 1).await.unwrap().unwrap();
    assert_eq!(msg.body, "still here");
    let (again, new) = store
        .append_message(&chat_store::NewMessage {
            room_id,
            id: chat_core::MessageId::new(),
            sender_id: user.id,
            client_msg_id: "c1".into(),
            body: "retry after restart".into(),
            created_at: 4,
        })
        .await
        .unwrap();
    assert!(!new, "dedupe survives a restart");
    assert_eq!(again, msg);
}

#[tokio::test]
async fn corrupt_rows_are_backend_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir.path().join("chat.db"));
    let store = SqliteStore::connect(&url).await.unwrap();

    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO users (id, username, username_key, display_name, password_hash, created_at) \
         VALUES ('not-a-uuid', 'broken', 'broken', 'b', 'h', 0)",
    )
    .execute(&raw)
    .await
    .unwrap();
    raw.close().await;

    let res = store.user_by_username("broken").await;
    assert!(matches!(res, Err(StoreError::Backend(_))), "{res:?}");
}

#[tokio::test]
async fn an_in_memory_url_gives_a_working_store() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.ping().await.unwrap();
    let user = store
        .create_user(&NewUser {
            id: UserId::new(),
            username: "mem".into(),
            display_name: "m".into(),
            password_hash: "h".into(),
            created_at: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        store.user_by_id(user.id).await.unwrap().map(|u| u.user),
        Some(user)
    );
}

#[tokio::test]
async fn an_unsupported_url_is_a_config_error() {
    let res = chat_store::connect("mysql://localhost/chat").await;
    assert!(matches!(res, Err(StoreError::Config(_))));
}
