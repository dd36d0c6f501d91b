//! A room hub's hot path: one batch handed to every local connection.
//!
//! N real loopback TCP connections, each behind an [`Out`] whose room
//! cursor sits just before the batch, so every `deliver` takes the common
//! case: one `write` of the whole batch's bytes. The client ends are read
//! and dropped by tasks on one runtime thread (the bench thread writes,
//! like a hub on its worker), and between hand-offs the bench waits,
//! untimed, until they have read everything: each hand-off starts with
//! empty socket buffers, as with clients that keep up.
//!
//! Loopback caveat: the kernel's receive-side work for a write largely
//! runs in the writer's system call, so the time is somewhat above what
//! the same write to a remote client costs.

mod common;

use chat_core::{RoomId, Seq};
use chat_gateway::ws::out::{Cursor, Out};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Connection counts; each is two file descriptors here (server and
/// client end), within the 20,000 open-file limit.
const SIZES: [usize; 3] = [100, 1000, 5000];

/// Bytes a connection may have waiting before it is closed: the gateway's
/// default (`--ws-buffer-bytes`).
const MAX_PENDING: usize = 1 << 20;

/// A room with `n` live connections.
struct Room {
    /// Runs the clients and the connections' drains; dropped first, it
    /// ends them and closes their sockets.
    _rt: Runtime,
    room: RoomId,
    outs: Vec<Arc<Out>>,
    /// Bytes the client ends have read, all together.
    read: Arc<AtomicU64>,
    /// Bytes written to them, all together.
    written: u64,
    /// Every connection's cursor.
    seq: Seq,
    /// Deliveries refused or handed to a connection's task.
    missed: u64,
}

impl Room {
    fn open(n: usize) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let room = RoomId::new();
        let seq = 1000;
        let read = Arc::new(AtomicU64::new(0));
        let outs = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let mut outs = Vec::with_capacity(n);
            for _ in 0..n {
                let client = TcpStream::connect(addr).await?;
                let (server, _) = listener.accept().await?;
                server.set_nodelay(true)?;
                tokio::spawn(read_all(client, read.clone()));
                let out = Arc::new(Out::new(Arc::new(server), MAX_PENDING));
                out.lock().set_cursor(room, Cursor { seq, live: true });
                tokio::spawn(drain(out.clone()));
                outs.push(out);
            }
            io::Result::Ok(outs)
        })?;
        Ok(Self {
            _rt: rt,
            room,
            outs,
            read,
            written: 0,
            seq,
            missed: 0,
        })
    }

    /// `iters` hand-offs, each of the next batch; returns the time spent
    /// in them alone.
    fn hand_off(&mut self, iters: u64) -> Duration {
        let mut spent = Duration::ZERO;
        for _ in 0..iters {
            let batch = common::batch(self.room, self.seq + 1);
            let start = Instant::now();
            for out in &self.outs {
                if !matches!(out.lock().deliver(&batch, 0, true), Ok(None)) {
                    self.missed += 1;
                }
            }
            spent += start.elapsed();
            self.seq = batch.last.expect("a batch of events");
            self.written += (batch.bytes.len() * self.outs.len()) as u64;
            self.wait_read();
        }
        spent
    }

    /// Waits until the clients have read all that was written.
    fn wait_read(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.read.load(Ordering::Relaxed) < self.written {
            assert!(Instant::now() < deadline, "the clients stopped reading");
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// A client: reads and counts whatever arrives.
async fn read_all(sock: TcpStream, read: Arc<AtomicU64>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        loop {
            // On the thread's stack, not in each task's future.
            let mut scratch = [0u8; 64 * 1024];
            match sock.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => {
                    read.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

/// What a connection's task does with bytes the socket did not take at
/// once.
async fn drain(out: Arc<Out>) {
    loop {
        out.woken().await;
        if out.drain().await.is_err() {
            return;
        }
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in SIZES {
        let mut room = Room::open(n).expect("loopback connections");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("batch16", n), |b| {
            b.iter_custom(|iters| room.hand_off(iters))
        });
        assert_eq!(
            room.missed, 0,
            "every connection should take every batch directly"
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // A 5,000-connection hand-off takes milliseconds: few samples suffice.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fanout
}
criterion_main!(benches);
