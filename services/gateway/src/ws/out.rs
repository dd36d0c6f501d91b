//! A connection's outbound side: the socket itself, shared.
//!
//! Every byte the server sends on a WebSocket goes through one [`Out`]:
//! the room hubs write a busy room's pre-framed batch straight to the
//! socket (one `write` per connection per batch, no task wake-up), the
//! connection's task writes its replies, and tungstenite writes its pongs
//! and close frames through [`SockIo`]. A lock orders them; whole frames
//! only ever enter the stream. What the socket does not take at once waits
//! in `pending` (shared `Bytes`, not copies) until the connection's task
//! drains it; past `max_pending` bytes the connection is too slow and is
//! closed with 4009.
//!
//! The lock also holds each subscribed room's cursor (the last `seq`
//! written), so a hub writing directly and the task writing a backfill
//! never duplicate or reorder an event.

use super::frames::Batch;
use bytes::{Buf, Bytes};
use chat_core::{RoomId, Seq};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A subscribed room's delivery state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last seq written.
    pub seq: Seq,
    /// Whether hubs may write the room's events directly: false while the
    /// connection's task is subscribing (its catch-up and `subscribed`
    /// frame come first).
    pub live: bool,
}

pub struct OutState {
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// Whether the front of `pending` is partly written already.
    front_started: bool,
    /// The socket failed: nothing more is written.
    dead: bool,
    /// The connection is closing: only its close frame (and tungstenite's
    /// replies) are written after what is pending.
    closing: bool,
    /// Subscribed rooms: few per connection, so a vector.
    rooms: Vec<(RoomId, Cursor)>,
}

/// Why bytes were not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// More than `max_pending` bytes wait: the client is too slow.
    Full,
    /// The socket failed or the connection is closing.
    Dead,
}

pub struct Out {
    sock: Arc<TcpStream>,
    state: Mutex<OutState>,
    /// Pending bytes appeared: the connection's task drains them.
    wake: Notify,
    max_pending: usize,
}

impl Out {
    pub fn new(sock: Arc<TcpStream>, max_pending: usize) -> Self {
        Self {
            sock,
            state: Mutex::new(OutState {
                pending: VecDeque::new(),
                pending_len: 0,
                front_started: false,
                dead: false,
                closing: false,
                rooms: Vec::new(),
            }),
            wake: Notify::new(),
            max_pending,
        }
    }

    pub fn lock(&self) -> Guard<'_> {
        Guard {
            out: self,
            st: match self.state.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            },
        }
    }

    /// Reads and drops whatever the client still sends, until it closes or
    /// pauses: a socket closed with unread input ends with a reset, which
    /// can overtake the close frame on its way to the client.
    pub async fn drain_input(&self) {
        // On the heap: a buffer here would sit in every connection's task.
        let mut scratch = vec![0u8; 4096];
        loop {
            match self.sock.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let pause = std::time::Duration::from_millis(100);
                    if !matches!(
                        tokio::time::timeout(pause, self.sock.readable()).await,
                        Ok(Ok(()))
                    ) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Resolves when there may be pending bytes to drain.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Writes what is pending, waiting for the socket as needed.
    pub async fn drain(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut g = self.lock();
                if g.st.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match g.write_pending() {
                    Ok(()) if g.st.pending.is_empty() => return Poll::Ready(Ok(())),
                    Ok(()) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(self.sock.poll_write_ready(cx))?;
        }
    }
}

/// The locked outbound state.
pub struct Guard<'a> {
    out: &'a Out,
    st: MutexGuard<'a, OutState>,
}

impl Guard<'_> {
    /// Writes `bytes` after everything before it: straight to the socket
    /// when nothing is pending, otherwise queued for the connection's task.
    pub fn write(&mut self, bytes: Bytes) -> Result<(), Refused> {
        self.write_inner(bytes, true)
    }

    /// [`Self::write`] without the size limit (control frames).
    pub fn write_unbounded(&mut self, bytes: Bytes) -> Result<(), Refused> {
        self.write_inner(bytes, false)
    }

    fn write_inner(&mut self, mut bytes: Bytes, bounded: bool) -> Result<(), Refused> {
        if self.st.dead || (bounded && self.st.closing) {
            return Err(Refused::Dead);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if self.st.pending.is_empty() {
            match self.out.sock.try_write(&bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    bytes.advance(n);
                    self.st.front_started = n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.st.dead = true;
                    self.out.wake.notify_one();
                    return Err(Refused::Dead);
                }
            }
            self.out.wake.notify_one();
        } else if bounded && self.st.pending_len + bytes.len() > self.out.max_pending {
            return Err(Refused::Full);
        }
        self.st.pending_len += bytes.len();
        self.st.pending.push_back(bytes);
        Ok(())
    }

    /// Writes as much of `pending` as the socket takes now.
    fn write_pending(&mut self) -> io::Result<()> {
        while !self.st.pending.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); 16];
                let mut k = 0;
                for (slot, b) in slices.iter_mut().zip(self.st.pending.iter()) {
                    *slot = IoSlice::new(b);
                    k += 1;
                }
                match self.out.sock.try_write_vectored(&slices[..k]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => {
                        self.st.dead = true;
                        return Err(e);
                    }
                }
            };
            if n == 0 {
                self.st.dead = true;
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.consume(n);
        }
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        self.st.pending_len -= n;
        while n > 0 {
            let Some(front) = self.st.pending.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                self.st.pending.pop_front();
                self.st.front_started = false;
            } else {
                front.advance(n);
                self.st.front_started = true;
                n = 0;
            }
        }
    }

    /// From now on only unbounded writes (tungstenite's close frame) are
    /// taken. With `discard`, what is pending is dropped too (a client too
    /// slow for it), but for a partly written frame: the stream stays whole
    /// for the close frame.
    pub fn close(&mut self, discard: bool) {
        self.st.closing = true;
        if discard {
            let keep = usize::from(self.st.front_started);
            while self.st.pending.len() > keep {
                if let Some(b) = self.st.pending.pop_back() {
                    self.st.pending_len -= b.len();
                }
            }
        }
    }

    /// Writes the items of `batch` from `from` on that the room's cursor
    /// says are next (skipping what was written already), advancing it.
    /// Returns the item to hand to the connection's task, if any: the first
    /// one after a gap (the task backfills it from the log), or `from` when
    /// `direct` and the room is not live yet. A room not subscribed gets
    /// nothing.
    pub fn deliver(
        &mut self,
        batch: &Batch,
        from: usize,
        direct: bool,
    ) -> Result<Option<usize>, Refused> {
        let Some(mut cur) = self.cursor(batch.room) else {
            return Ok(None);
        };
        if direct && !cur.live {
            return Ok(Some(from));
        }
        if from == 0 && batch.contiguous && batch.first == cur.seq.checked_add(1) {
            // The common case: the whole batch, one write.
            self.write(batch.bytes.clone())?;
            if let Some(last) = batch.last {
                cur.seq = last;
            }
            self.set_cursor(batch.room, cur);
            return Ok(None);
        }
        let mut run: Option<(usize, usize)> = None;
        let mut handoff = None;
        for (i, item) in batch.items.iter().enumerate().skip(from) {
            let take = match item.seq {
                None => true,
                Some(s) if s <= cur.seq => false,
                Some(s) if s == cur.seq + 1 => {
                    cur.seq = s;
                    true
                }
                Some(_) => {
                    handoff = Some(i);
                    break;
                }
            };
            if take {
                let start = run.map_or_else(|| batch.start(i), |(s, _)| s);
                run = Some((start, item.end));
            } else if let Some((s, e)) = run.take() {
                self.write(batch.bytes.slice(s..e))?;
            }
        }
        if let Some((s, e)) = run {
            self.write(batch.bytes.slice(s..e))?;
        }
        self.set_cursor(batch.room, cur);
        Ok(handoff)
    }

    pub fn cursor(&self, room: RoomId) -> Option<Cursor> {
        self.st
            .rooms
            .iter()
            .find(|(r, _)| *r == room)
            .map(|(_, c)| *c)
    }

    pub fn set_cursor(&mut self, room: RoomId, cursor: Cursor) {
        match self.st.rooms.iter_mut().find(|(r, _)| *r == room) {
            Some((_, c)) => *c = cursor,
            None => self.st.rooms.push((room, cursor)),
        }
    }

    pub fn remove_room(&mut self, room: RoomId) {
        self.st.rooms.retain(|(r, _)| *r != room);
    }
}

/// The socket as tungstenite sees it: reads come from the socket (after
/// whatever hyper read past the upgrade request), writes go through
/// [`Out`] in order with everything else.
pub struct SockIo {
    out: Arc<Out>,
    prefix: Bytes,
}

impl SockIo {
    pub fn new(out: Arc<Out>, prefix: Bytes) -> Self {
        // A slice would keep hyper's whole read buffer alive.
        let prefix = Bytes::copy_from_slice(&prefix);
        Self { out, prefix }
    }
}

impl AsyncRead for SockIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.out.sock.poll_read_ready(cx))?;
            match self.out.sock.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SockIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.out.lock().write_unbounded(Bytes::copy_from_slice(buf)) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(_) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_drain(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frames::Builder;
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// An `Out` on one end of a loopback connection, and the other end.
    async fn pair() -> (Out, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Out::new(Arc::new(server), 1 << 20), client)
    }

    /// The seqs (or 0 for a notice) of the frames the client got so far.
    async fn received(client: &mut TcpStream, frames: usize) -> Vec<i64> {
        let mut buf = Vec::new();
        let mut seqs = Vec::new();
        while seqs.len() < frames {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
            seqs.clear();
            let mut at = 0;
            // Server frames are small here: a 2-byte header, then JSON.
            while at + 2 <= buf.len() && at + 2 + usize::from(buf[at + 1]) <= buf.len() {
                let len = usize::from(buf[at + 1]);
                let json: serde_json::Value =
                    serde_json::from_slice(&buf[at + 2..at + 2 + len]).expect("JSON");
                seqs.push(json["seq"].as_i64().unwrap_or(0));
                at += 2 + len;
            }
        }
        seqs
    }

    fn batch(room: RoomId, items: &[Option<Seq>]) -> Batch {
        let mut b = Builder::new(room);
        for i in items {
            match i {
                Some(s) => b.event(*s, format!(r#"{{"seq":{s}}}"#).as_bytes()),
                None => b.live(br#"{"type":"typing"}"#),
            }
        }
        b.take()
    }

    #[tokio::test]
    async fn the_hub_writes_only_what_continues_the_cursor() {
        let (out, mut client) = pair().await;
        let room = RoomId::new();
        let other = RoomId::new();
        let live = |seq| Cursor { seq, live: true };

        // Not subscribed: nothing, and nothing to hand over.
        let b = batch(room, &[Some(1)]);
        assert_eq!(out.lock().deliver(&b, 0, true), Ok(None));

        // Subscribing (not live): the hub hands the batch to the task.
        out.lock().set_cursor(
            room,
            Cursor {
                seq: 0,
                live: false,
            },
        );
        assert_eq!(out.lock().deliver(&b, 0, true), Ok(Some(0)));
        // The task itself writes it.
        assert_eq!(out.lock().deliver(&b, 0, false), Ok(None));
        assert_eq!(
            out.lock().cursor(room),
            Some(Cursor {
                seq: 1,
                live: false
            })
        );

        // Live: a batch that continues the cursor goes out whole.
        out.lock().set_cursor(room, live(1));
        let b = batch(room, &[Some(2), None, Some(3)]);
        assert_eq!(out.lock().deliver(&b, 0, true), Ok(None));
        assert_eq!(out.lock().cursor(room), Some(live(3)));

        // Overlapping: what was written is skipped, the rest goes out.
        let b = batch(room, &[Some(2), Some(3), Some(4), Some(5)]);
        assert_eq!(out.lock().deliver(&b, 0, true), Ok(None));
        assert_eq!(out.lock().cursor(room), Some(live(5)));

        // A gap: what comes before it goes out, the rest is handed over
        // from the first event past the gap.
        let b = batch(room, &[Some(6), None, Some(9), Some(10)]);
        assert_eq!(out.lock().deliver(&b, 0, true), Ok(Some(2)));
        assert_eq!(out.lock().cursor(room), Some(live(6)));

        // Another room's cursor is its own.
        out.lock().set_cursor(other, live(0));
        assert_eq!(
            out.lock().deliver(&batch(other, &[Some(1)]), 0, true),
            Ok(None)
        );

        assert_eq!(
            received(&mut client, 9).await,
            vec![1, 2, 0, 3, 4, 5, 6, 0, 1],
            "each event once, in order, notices where they were"
        );
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_fills_its_buffer_and_is_refused() {
        let (server, _client) = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = TcpStream::connect(addr).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            (Out::new(Arc::new(server), 64 * 1024), client)
        };
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut refused = None;
        for _ in 0..10_000 {
            if let Err(r) = server.lock().write(chunk.clone()) {
                refused = Some(r);
                break;
            }
        }
        assert_eq!(
            refused,
            Some(Refused::Full),
            "the socket's buffers fill, then ours"
        );
        // A closing connection takes its close frame even so.
        let mut g = server.lock();
        g.close(true);
        assert_eq!(g.write(chunk.clone()), Err(Refused::Dead));
        assert_eq!(g.write_unbounded(Bytes::from_static(b"close")), Ok(()));
    }
}
