//! What authenticating bus payloads costs: one `seal` per publish (room,
//! auth, a gateway's notices), one `open` per payload a gateway receives
//! on a subscription (once per room per gateway, whatever the room's
//! size). A chat message's `BusEvent` is a few hundred bytes.

use chat_bus::BusKey;
use chat_proto::v1 as pb;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message as _;
use std::hint::black_box;
use std::time::Duration;

fn message_event() -> Vec<u8> {
    let room = "01a23328-75d8-761e-8405-4418c67f5b60".to_owned();
    pb::BusEvent {
        kind: Some(pb::bus_event::Kind::RoomEvent(pb::RoomEvent {
            room_id: room.clone(),
            seq: 123_456,
            kind: Some(pb::room_event::Kind::Message(pb::Message {
                room_id: room,
                seq: 123_456,
                id: "01a23328-75d8-761e-8405-4418c67f5b61".into(),
                sender_id: "01a23328-75d8-761e-8405-4418c67f5b62".into(),
                body: "x".repeat(140),
                client_msg_id: "01a23328-75d8-761e-8405-4418c67f5b63".into(),
                created_at: "2026-12-01T19:50:32.123456Z".into(),
                ..Default::default()
            })),
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

fn seal_open(c: &mut Criterion) {
    let key = BusKey::derive("a cluster's internal secret, 32+ chars");
    let subject = "chat.room.01a23328-75d8-761e-8405-4418c67f5b60";
    let event = message_event();
    let sealed = key.seal(subject, &event);

    let mut g = c.benchmark_group("bus_auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal", |b| {
        b.iter(|| key.seal(black_box(subject), black_box(&event)))
    });
    g.bench_function("open", |b| {
        b.iter(|| key.open(black_box(subject), black_box(&sealed)))
    });
    g.bench_function("decode_only", |b| {
        b.iter(|| pb::BusEvent::decode(black_box(&event[..])))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = seal_open
}
criterion_main!(benches);
