//! The bytes a room event becomes, and back.
//!
//! `encode`: what a gateway does once per event whatever the room's size
//! (JSON of the client view, then a WebSocket text frame in the batch
//! buffer), alone and as a 16-event batch. `decode`: what a client does
//! with a batch's bytes: walk the frame headers with tungstenite's parser,
//! then read each payload fully (`serde_json`) or only scan it for `"seq":`
//! (what the load tester does).

mod common;

use chat_core::{RoomId, Seq};
use chat_gateway::ws::frames::Builder;
use common::BATCH;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

fn encode(c: &mut Criterion) {
    let room = RoomId::new();
    let events: Vec<_> = (1..=BATCH as Seq)
        .map(|seq| common::message_event(room, seq))
        .collect();
    let json = common::encode(&events[0]);
    let mut builder = Builder::new(room);

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json", |b| b.iter(|| common::encode(black_box(&events[0]))));
    let mut seq = 0;
    g.bench_function("frame", |b| {
        b.iter(|| {
            seq += 1;
            builder.event(seq, black_box(&json));
            // Bounds the buffer; its cost spreads over 1024 frames.
            if builder.len() == 1024 {
                black_box(builder.take());
            }
        })
    });
    builder.take();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("batch16", |b| {
        b.iter(|| {
            for ev in &events {
                builder.event(ev.seq, &common::encode(black_box(ev)));
            }
            builder.take()
        })
    });
    g.finish();
}

/// Calls `each` with every frame's payload in `bytes`, as a client's
/// WebSocket reader would find them.
fn frames(bytes: &[u8], mut each: impl FnMut(&[u8])) {
    let mut cur = Cursor::new(bytes);
    while (cur.position() as usize) < bytes.len() {
        let (h, len) = FrameHeader::parse(&mut cur)
            .expect("a valid header")
            .expect("a whole header");
        debug_assert_eq!(h.opcode, OpCode::Data(Data::Text));
        let at = cur.position() as usize;
        let end = at + len as usize;
        each(&bytes[at..end]);
        cur.set_position(end as u64);
    }
}

/// The seqs' sum (a check that every frame was read), reading each frame
/// as a JSON object.
fn seqs_json(bytes: &[u8]) -> Seq {
    let mut sum = 0;
    frames(bytes, |p| {
        let v: serde_json::Value = serde_json::from_slice(p).expect("a JSON frame");
        sum += v["seq"].as_i64().expect("a seq");
    });
    sum
}

/// The same sum, finding only the digits after `"seq":`.
fn seqs_scan(bytes: &[u8]) -> Seq {
    const KEY: &[u8] = b"\"seq\":";
    let mut sum = 0;
    frames(bytes, |p| {
        let at = p.windows(KEY.len()).position(|w| w == KEY).expect("a seq") + KEY.len();
        sum += p[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0, |n, b| n * 10 + Seq::from(b - b'0'));
    });
    sum
}

fn decode(c: &mut Criterion) {
    let batch = common::batch(RoomId::new(), 1);
    let bytes = &batch.bytes[..];
    let want: Seq = (1..=BATCH as Seq).sum();
    assert_eq!(seqs_json(bytes), want);
    assert_eq!(seqs_scan(bytes), want);

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("batch16_headers", |b| {
        b.iter(|| {
            let mut n = 0;
            frames(black_box(bytes), |p| n += p.len());
            n
        })
    });
    g.bench_function("batch16_json", |b| b.iter(|| seqs_json(black_box(bytes))));
    g.bench_function("batch16_scan", |b| b.iter(|| seqs_scan(black_box(bytes))));
    g.finish();
}

criterion_group! {
    name = benches;
    // Microsecond routines settle fast; keeps the whole run short on a
    // shared machine.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = encode, decode
}
criterion_main!(benches);
