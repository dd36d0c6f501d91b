//! The append path of each store, durable as in production (SQLite WAL
//! with `synchronous = FULL` on a file, Postgres with `synchronous_commit`
//! on):
//!
//! - `lone`: one append at a time, each awaited before the next: what a
//!   single message costs (one commit, one fsync). Before group commit this
//!   was also the SQLite store's ceiling, whatever the concurrency, since
//!   its one writer committed each message on its own.
//! - `in_flight_256`: 256 appends at once, spread over 64 rooms, as many
//!   senders in many rooms make them: what group commit does with them.
//!
//! Postgres is `CHAT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), in a fresh schema that
//! is dropped at the end; without a server the Postgres group fails.
//!
//! `cargo bench -p chat-store --bench append`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::{MessageId, RoomId, UserId};
use chat_store::{NewMessage, NewRoom, NewUser, RoomKind, Store, Visibility};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::future::join_all;
use sqlx::Connection;

const ROOMS: usize = 64;
const IN_FLIGHT: usize = 256;

struct Fixture {
    store: Arc<dyn Store>,
    rooms: Vec<RoomId>,
    sender: UserId,
}

async fn fixture(store: Arc<dyn Store>) -> Fixture {
    let sender = UserId::new();
    store
        .create_user(&NewUser {
            id: sender,
            username: format!("bench{}", &sender.0.simple().to_string()[..8]),
            display_name: "bench".into(),
            password_hash: "x".into(),
            created_at: 1,
        })
        .await
        .expect("user");
    let mut rooms = Vec::with_capacity(ROOMS);
    for i in 0..ROOMS {
        let room = NewRoom {
            id: RoomId::new(),
            name: format!("bench {i}"),
            topic: String::new(),
            visibility: Visibility::Public,
            kind: RoomKind::Group,
            created_at: 1,
        };
        store.create_room(&room, sender).await.expect("room");
        rooms.push(room.id);
    }
    Fixture {
        store,
        rooms,
        sender,
    }
}

fn message(f: &Fixture, i: usize) -> NewMessage {
    NewMessage {
        room_id: f.rooms[i % ROOMS],
        id: MessageId::new(),
        sender_id: f.sender,
        client_msg_id: MessageId::new().0.to_string(),
        body: "x".repeat(140),
        created_at: 2,
    }
}

/// Times `iters` rounds of `round` (each `per` appends) on `rt`.
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, round: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            round(i).await;
        }
        start.elapsed()
    })
}

fn bench_store(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, f: &Fixture) {
    let mut g = c.benchmark_group("store_append");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new(name, "lone"), |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, |i| async move {
                f.store
                    .append_message(&message(f, i as usize))
                    .await
                    .expect("append");
            })
        })
    });
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    g.bench_function(BenchmarkId::new(name, "in_flight_256"), |b| {
        b.iter_custom(|iters| {
            timed(rt, iters, |_| async move {
                let msgs: Vec<_> = (0..IN_FLIGHT).map(|i| message(f, i)).collect();
                for r in join_all(msgs.iter().map(|m| f.store.append_message(m))).await {
                    r.expect("append");
                }
            })
        })
    });
    g.finish();
}

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let f = rt.block_on(async {
        let store = chat_store::connect(&url).await.expect("sqlite store");
        fixture(store).await
    });
    bench_store(c, "sqlite", &rt, &f);
}

fn postgres(c: &mut Criterion) {
    let rt = runtime();
    let server = std::env::var("CHAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let f = rt.block_on(async {
        let store = chat_store::connect(&format!("{server}?schema={schema}"))
            .await
            .expect("postgres store (is Postgres running?)");
        fixture(store).await
    });
    bench_store(c, "postgres", &rt, &f);
    drop(f);
    rt.block_on(async {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&server).await {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&mut conn)
                .await;
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = sqlite, postgres
}
criterion_main!(benches);
