//! Runs the Store conformance suite (`conformance/mod.rs`) on `PgStore`
//! against a real Postgres, each case in a fresh schema of its own, plus
//! what only a shared server can show: several stores (pools, as separate
//! replicas would have) writing one room at once, and replicas migrating
//! one schema at once.
//!
//! The server is `CHAT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). These tests fail, never
//! skip, when it is unreachable: a green run means Postgres was tested.

#[path = "conformance/mod.rs"]
mod suite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_core::{MessageId, RoomId, UserId};
use chat_store::postgres::PgStore;
use chat_store::{NewMessage, NewRoom, NewUser, Role, RoomKind, Store, StoreError, Visibility};
use sqlx::Connection;
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Small pools: many tests run at once against one server.
const TEST_POOL: u32 = 4;

fn server_url() -> String {
    std::env::var("CHAT_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `server_url()` with our parameters appended.
fn store_url(schema: &str, max_connections: u32) -> String {
    let base = server_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={schema}&max_connections={max_connections}")
}

/// Runs `test` with a fresh schema name, then drops the schema, whether the
/// test passed or panicked (best effort), and re-raises its panic.
async fn in_fresh_schema<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = format!("test_{}", Uuid::new_v4().simple());
    let outcome = tokio::spawn(test(schema.clone())).await;
    drop_schema(&schema).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn drop_schema(schema: &str) {
    let Ok(mut conn) = sqlx::PgConnection::connect(&server_url()).await else {
        return;
    };
    // `schema` is ours (test_ + hex), not input.
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
}

async fn open(schema: &str) -> Arc<dyn Store> {
    Arc::new(open_pg(schema).await)
}

async fn open_pg(schema: &str) -> PgStore {
    PgStore::connect(&store_url(schema, TEST_POOL))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot open a PgStore on {} (set CHAT_TEST_POSTGRES_URL): {e:?}",
                server_url()
            )
        })
}

macro_rules! postgres_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            in_fresh_schema(|schema| async move {
                suite::$case(open(&schema).await).await;
            })
            .await;
        }
    )*};
}
suite::for_each_case!(postgres_cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_suite_passes_on_one_shared_store() {
    in_fresh_schema(|schema| async move {
        suite::store_conformance(open(&schema).await).await;
    })
    .await;
}

#[tokio::test]
async fn connect_through_the_seam_picks_postgres_for_both_schemes() {
    in_fresh_schema(|schema| async move {
        let url = store_url(&schema, 2);
        let rest = url.split_once("://").expect("a URL").1;
        for scheme in ["postgres", "postgresql"] {
            let store = chat_store::connect(&format!("{scheme}://{rest}"))
                .await
                .unwrap_or_else(|e| panic!("{scheme}: {e:?}"));
            store.ping().await.unwrap();
        }
    })
    .await;
}

// ---- helpers for the multi-replica tests ----

const T0: i64 = 1_700_000_000_000;

async fn make_user(store: &dyn Store, name: &str) -> UserId {
    store
        .create_user(&NewUser {
            id: UserId::new(),
            username: format!("{name}_{}", Uuid::new_v4().simple()),
            display_name: name.into(),
            password_hash: "h".into(),
            created_at: T0,
        })
        .await
        .expect("create user")
        .id
}

async fn make_room(store: &dyn Store, owner: UserId, members: &[UserId]) -> RoomId {
    let room = store
        .create_room(
            &NewRoom {
                id: RoomId::new(),
                name: "busy".into(),
                topic: String::new(),
                visibility: Visibility::Public,
                kind: RoomKind::Group,
                created_at: T0,
            },
            owner,
        )
        .await
        .expect("create room");
    for &m in members {
        store
            .add_member(room.id, m, Role::Member, T0)
            .await
            .expect("add member");
    }
    room.id
}

fn message(room: RoomId, sender: UserId, client_msg_id: &str) -> NewMessage {
    NewMessage {
        room_id: room,
        id: MessageId::new(),
        sender_id: sender,
        client_msg_id: client_msg_id.into(),
        body: format!("body of {client_msg_id}"),
        created_at: T0 + 1,
    }
}

// ---- several replicas on one database ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_appending_to_one_room_get_seqs_one_to_n_exactly() {
    const TASKS_PER_STORE: usize = 4;
    const PER_TASK: usize = 50;
    in_fresh_schema(|schema| async move {
        // Two stores = two pools = two replicas, as far as Postgres can tell.
        let stores: [Arc<dyn Store>; 2] = [open(&schema).await, open(&schema).await];
        let owner = make_user(&*stores[0], "owner").await;
        let mut senders = Vec::new();
        for i in 0..2 * TASKS_PER_STORE {
            senders.push(make_user(&*stores[i % 2], &format!("sender{i}")).await);
        }
        let room = make_room(&*stores[1], owner, &senders).await;

        let mut tasks = tokio::task::JoinSet::new();
        for (i, sender) in senders.into_iter().enumerate() {
            let store = stores[i % 2].clone();
            tasks.spawn(async move {
                let mut seqs = Vec::with_capacity(PER_TASK);
                for n in 0..PER_TASK {
                    let (msg, new) = store
                        .append_message(&message(room, sender, &format!("c{n}")))
                        .await
                        .expect("append");
                    assert!(new);
                    seqs.push(msg.seq);
                }
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
                seqs
            });
        }
        let mut all = Vec::new();
        while let Some(seqs) = tasks.join_next().await {
            all.extend(seqs.expect("task"));
        }
        all.sort_unstable();
        let total = (2 * TASKS_PER_STORE * PER_TASK) as i64;
        assert_eq!(all, (1..=total).collect::<Vec<_>>());
        for store in &stores {
            assert_eq!(store.room(room).await.unwrap().unwrap().last_seq, total);
            let (events, more) = store.list_events(room, 0, 1000).await.unwrap();
            assert!(!more);
            assert_eq!(
                events.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (1..=total).collect::<Vec<_>>()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_sends_on_two_replicas_store_one_message() {
    const ROUNDS: usize = 20;
    const COPIES_PER_STORE: usize = 3;
    in_fresh_schema(|schema| async move {
        let stores: [Arc<dyn Store>; 2] = [open(&schema).await, open(&schema).await];
        let sender = make_user(&*stores[0], "sender").await;
        let room = make_room(&*stores[0], sender, &[]).await;

        for round in 0..ROUNDS {
            let client_msg_id = format!("retry-{round}");
            // Every copy is released at once, so they really race.
            let barrier = Arc::new(tokio::sync::Barrier::new(2 * COPIES_PER_STORE));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..2 * COPIES_PER_STORE {
                let store = stores[i % 2].clone();
                let msg = message(room, sender, &client_msg_id);
                let barrier = barrier.clone();
                tasks.spawn(async move {
                    barrier.wait().await;
                    store.append_message(&msg).await.expect("append")
                });
            }
            let mut results = Vec::new();
            while let Some(res) = tasks.join_next().await {
                results.push(res.expect("task"));
            }
            let new: Vec<_> = results.iter().filter(|(_, new)| *new).collect();
            assert_eq!(new.len(), 1, "exactly one copy is stored: {results:?}");
            let original = &new[0].0;
            assert!(
                results.iter().all(|(m, _)| m == original),
                "every copy gets the original back"
            );
            assert_eq!(original.seq, round as i64 + 1, "no seq is burnt");
        }
        let (messages, more) = stores[1]
            .list_messages(room, None, None, 1000)
            .await
            .unwrap();
        assert!(!more);
        assert_eq!(messages.len(), ROUNDS);
        assert_eq!(
            stores[0].room(room).await.unwrap().unwrap().last_seq,
            ROUNDS as i64
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_migrate_one_fresh_schema_once() {
    const REPLICAS: usize = 4;
    in_fresh_schema(|schema| async move {
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..REPLICAS {
            let url = store_url(&schema, 2);
            starts.spawn(async move { PgStore::connect(&url).await });
        }
        let mut stores = Vec::new();
        while let Some(res) = starts.join_next().await {
            stores.push(res.expect("task").expect("every replica starts"));
        }
        for store in &stores {
            store.ping().await.unwrap();
        }

        // One user made through one replica is seen by all: one schema.
        let user = make_user(&stores[0], "shared").await;
        for store in &stores {
            assert!(store.user_by_id(user).await.unwrap().is_some());
        }

        // Every migration applied exactly once, and every table (sqlx's
        // bookkeeping included) lives in the test's schema.
        let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{schema}\"._sqlx_migrations WHERE success"
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
            })
            .count();
        assert_eq!(applied, files as i64);
        let mut tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY table_name",
        )
        .bind(&schema)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        tables.sort();
        assert_eq!(
            tables,
            [
                "_sqlx_migrations",
                "bans",
                "events",
                "memberships",
                "refresh_tokens",
                "rooms",
                "sessions",
                "signing_keys",
                "users"
            ]
        );
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn schemas_keep_stores_apart() {
    in_fresh_schema(|a| async move {
        in_fresh_schema(|b| async move {
            let (sa, sb) = (open(&a).await, open(&b).await);
            let user = make_user(&*sa, "only_in_a").await;
            assert!(sa.user_by_id(user).await.unwrap().is_some());
            assert!(sb.user_by_id(user).await.unwrap().is_none());
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn an_options_search_path_reaches_an_existing_schema() {
    in_fresh_schema(|schema| async move {
        let made = open(&schema).await;
        let user = make_user(&*made, "via_options").await;
        // sqlx's own form: the schema is not created, only used.
        let base = server_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}&max_connections=2");
        let reopened = PgStore::connect(&url).await.unwrap();
        assert!(reopened.user_by_id(user).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn corrupt_rows_are_backend_errors_not_panics() {
    in_fresh_schema(|schema| async move {
        let store = open(&schema).await;
        // A value the schema's CHECK would refuse, as a buggy migration or
        // a hand edit could leave behind.
        let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        let room = RoomId::new();
        sqlx::query(&format!(
            "ALTER TABLE \"{schema}\".rooms DROP CONSTRAINT rooms_kind_check"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".rooms (id, name, topic, visibility, kind, created_at) \
             VALUES ($1, 'odd', '', 'public', 'channel', 0)"
        ))
        .bind(room.0)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let res = store.room(room).await;
        assert!(matches!(res, Err(StoreError::Backend(_))), "{res:?}");
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_hang() {
    // Port 1 on loopback: nothing listens. sqlx retries a refused connect
    // until the acquire timeout (10 s), then gives up.
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        PgStore::connect("postgres://postgres@127.0.0.1:1/postgres"),
    )
    .await
    .expect("connect gives up within its acquire timeout");
    assert!(
        matches!(
            res,
            Err(StoreError::Backend(_) | StoreError::Busy | StoreError::Unavailable(_))
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn a_bad_schema_name_is_a_config_error() {
    let url = store_url("Robert%22);DROP", 2);
    let res = PgStore::connect(&url).await;
    assert!(matches!(res, Err(StoreError::Config(_))), "{res:?}");
}
