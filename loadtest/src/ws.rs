//! A lean WebSocket client for the receive-heavy load: the handshake (with
//! tungstenite's key helpers), then frames parsed in place in one read
//! buffer. One `read` syscall brings as many frames as the server put in
//! its writes, and each is handed to the checks as a byte slice: no
//! zero-filled read buffer, no per-frame allocation or reference count,
//! no UTF-8 validation (the checks read ASCII fields only).
//!
//! Measured against tokio-tungstenite on this machine (2000 connections,
//! one room, ~58k deliveries/s): tokio-tungstenite spent 12% of the
//! tool's CPU zero-filling its read buffer before every read, and more on
//! per-frame `Bytes` bookkeeping and wakeups (see `loadtest scan-bench`
//! for the parsing part).
//!
//! Client frames are masked (RFC 6455 §5.3) with keys from a per-connection
//! xorshift generator; text is never fragmented by us, and fragmented
//! server messages are reassembled.

use bytes::{Buf, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// A frame as the reader hands it out (borrowing the read buffer).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The close code (1005 when the frame has none).
    Close(u16),
}

/// A protocol violation by the server.
#[derive(Debug)]
pub struct ProtocolError(pub &'static str);

/// Most a single message may be (the server's own limit is 64 KiB).
const MAX_MESSAGE: usize = 1 << 20;
const MAX_HANDSHAKE: usize = 16 * 1024;

pub struct WsConn {
    stream: TcpStream,
    rbuf: BytesMut,
    read_size: usize,
    /// Bytes of `rbuf` the last handed-out frame occupies (dropped on the
    /// next call).
    consumed: usize,
    /// A fragmented message being reassembled: (is text, data).
    frag: Option<(bool, Vec<u8>)>,
    frag_done: bool,
    wbuf: Vec<u8>,
    rng: u64,
    /// Bytes that came with the handshake's response (a server that
    /// speaks first, like Engine.IO's open packet): the first `read`
    /// hands them out without reading.
    early: bool,
}

/// A frame header.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// Header length (payload offset).
    hdr: usize,
    len: usize,
    mask: Option<[u8; 4]>,
}

/// The header of the frame at the start of `b`, or `None` when incomplete.
fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut hdr) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (
                usize::try_from(u64::from_be_bytes(a)).unwrap_or(usize::MAX),
                10,
            )
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if b.len() < hdr + 4 {
            return None;
        }
        let m = [b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]];
        hdr += 4;
        Some(m)
    } else {
        None
    };
    Some(Header {
        fin,
        opcode,
        hdr,
        len,
        mask,
    })
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

impl WsConn {
    /// Upgrades `stream` to a WebSocket at `path` on `host` with header
    /// auth (none when `token` is empty). An error is a short reason (e.g. `handshake: HTTP 401`).
    pub async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        token: &str,
        read_size: usize,
    ) -> Result<WsConn, String> {
        let key = generate_key();
        // Peers take no token.
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| crate::os::io_reason("handshake", &e))?;
        let mut rbuf = BytesMut::with_capacity(read_size.max(4096));
        let end = loop {
            if let Some(i) = crate::scan::find(&rbuf, b"\r\n\r\n", 0) {
                break i + 4;
            }
            if rbuf.len() > MAX_HANDSHAKE {
                return Err("handshake: response headers too large".into());
            }
            rbuf.reserve(4096);
            match stream.read_buf(&mut rbuf).await {
                Ok(0) => {
                    return Err(
                        "handshake: the server closed the connection (at its open file limit?)"
                            .into(),
                    )
                }
                Ok(_) => {}
                Err(e) => return Err(crate::os::io_reason("handshake", &e)),
            }
        };
        let head = String::from_utf8_lossy(&rbuf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?");
        if status != "101" {
            return Err(format!("handshake: HTTP {status}"));
        }
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_string());
        if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err("handshake: bad Sec-WebSocket-Accept".into());
        }
        rbuf.advance(end);
        let early = !rbuf.is_empty();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            ^ (key
                .as_bytes()
                .iter()
                .fold(0u64, |a, &b| a.rotate_left(5) ^ u64::from(b)));
        Ok(WsConn {
            stream,
            rbuf,
            read_size: read_size.max(4096),
            consumed: 0,
            frag: None,
            frag_done: false,
            wbuf: Vec::new(),
            rng: seed | 1,
            early,
        })
    }

    /// Reads what the socket has (cancel safe). `Ok(0)`: the server closed.
    pub async fn read(&mut self) -> io::Result<usize> {
        if std::mem::take(&mut self.early) {
            return Ok(self.rbuf.len());
        }
        self.drop_consumed();
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 4 {
            // Moves the unread tail to the front when it can, else grows.
            self.rbuf.reserve(self.read_size);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    fn drop_consumed(&mut self) {
        if self.consumed > 0 {
            self.rbuf.advance(self.consumed);
            self.consumed = 0;
        }
        if self.frag_done {
            self.frag = None;
            self.frag_done = false;
        }
    }

    /// The next complete frame in the buffer, if any. The slice is valid
    /// until the next call.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, ProtocolError> {
        self.drop_consumed();
        loop {
            let Some(Header {
                fin,
                opcode,
                hdr,
                len,
                mask,
            }) = parse_header(&self.rbuf)
            else {
                return Ok(None);
            };
            if len > MAX_MESSAGE {
                return Err(ProtocolError("frame too large"));
            }
            if self.rbuf.len() < hdr + len {
                // Make room for the whole frame.
                self.rbuf.reserve(hdr + len - self.rbuf.len());
                return Ok(None);
            }
            if let Some(m) = mask {
                apply_mask(&mut self.rbuf[hdr..hdr + len], m);
            }
            self.consumed = hdr + len;
            match opcode {
                0x1 if fin => return Ok(Some(Frame::Text(&self.rbuf[hdr..hdr + len]))),
                0x1 | 0x2 if !fin => {
                    // The first fragment of a message.
                    let text = opcode == 0x1;
                    let data = if text {
                        self.rbuf[hdr..hdr + len].to_vec()
                    } else {
                        Vec::new()
                    };
                    self.frag = Some((text, data));
                    self.drop_consumed();
                }
                0x2 => return Ok(Some(Frame::Binary)),
                0x0 => {
                    let Some((text, v)) = self.frag.as_mut() else {
                        return Err(ProtocolError("continuation without a first fragment"));
                    };
                    if *text {
                        v.extend_from_slice(&self.rbuf[hdr..hdr + len]);
                        if v.len() > MAX_MESSAGE {
                            return Err(ProtocolError("message too large"));
                        }
                    }
                    if !fin {
                        self.drop_consumed();
                        continue;
                    }
                    self.frag_done = true;
                    return Ok(Some(match &self.frag {
                        Some((true, v)) => Frame::Text(v),
                        _ => Frame::Binary,
                    }));
                }
                0x8 => {
                    let p = &self.rbuf[hdr..hdr + len];
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Ok(Some(Frame::Close(code)));
                }
                0x9 => return Ok(Some(Frame::Ping(&self.rbuf[hdr..hdr + len]))),
                0xA => return Ok(Some(Frame::Pong)),
                _ => return Err(ProtocolError("unknown opcode")),
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_be_bytes()
    }

    fn encode(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.next_mask();
        self.wbuf.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            self.wbuf.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.wbuf.push(0x80 | 126);
            self.wbuf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.wbuf.push(0x80 | 127);
            self.wbuf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.wbuf.extend_from_slice(&mask);
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        apply_mask(&mut self.wbuf[start..], mask);
    }

    /// Queues a text frame (written by [`WsConn::flush`]).
    pub fn queue_text(&mut self, text: &str) {
        self.encode(0x1, text.as_bytes());
    }

    pub fn queue_pong(&mut self, payload: &[u8]) {
        self.encode(0xA, payload);
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.queue_text(text);
        self.flush().await
    }

    /// A close handshake: our close frame, then read until the server's
    /// close or the end of the stream (bounded by the caller).
    pub async fn close(&mut self, code: u16) {
        self.wbuf.clear();
        self.encode(0x8, &code.to_be_bytes());
        if self.flush().await.is_err() {
            return;
        }
        loop {
            loop {
                match self.next_frame() {
                    Ok(Some(Frame::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            match self.read().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

    /// The reader against a reference implementation: a tokio-tungstenite
    /// server sending text (small, medium, large), a ping and a close.
    #[tokio::test]
    async fn talks_to_a_tungstenite_server() {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
            // What the client sends arrives intact (masked on the wire).
            let got = ws.next().await.unwrap().unwrap();
            assert_eq!(got, Message::text("hello server"));
            let big = "y".repeat(70_000);
            for m in ["a".to_string(), "m".repeat(300), big] {
                ws.feed(Message::text(m)).await.unwrap();
            }
            ws.feed(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
            ws.flush().await.unwrap();
            // The pong comes back.
            let pong = ws.next().await.unwrap().unwrap();
            assert_eq!(pong, Message::Pong(vec![1, 2, 3].into()));
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut c = WsConn::handshake(stream, &addr.to_string(), "/ws", "t", 4096)
            .await
            .unwrap();
        c.send_text("hello server").await.unwrap();
        let mut texts = Vec::new();
        let mut closed = None;
        while closed.is_none() {
            let n = c.read().await.unwrap();
            assert!(n > 0, "eof before close");
            loop {
                match c.next_frame().unwrap() {
                    Some(Frame::Text(t)) => texts.push(t.len()),
                    Some(Frame::Ping(p)) => {
                        let p = p.to_vec();
                        c.queue_pong(&p);
                        c.flush().await.unwrap();
                    }
                    Some(Frame::Close(code)) => {
                        closed = Some(code);
                        break;
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break,
                }
            }
        }
        assert_eq!(texts, vec![1, 300, 70_000]);
        assert_eq!(closed, Some(1005));
        drop(c);
        server.await.unwrap();
    }

    #[test]
    fn parses_headers() {
        assert_eq!(parse_header(&[0x81]), None);
        let h = |fin, opcode, hdr, len, mask| {
            Some(Header {
                fin,
                opcode,
                hdr,
                len,
                mask,
            })
        };
        assert_eq!(parse_header(&[0x81, 5]), h(true, 1, 2, 5, None));
        assert_eq!(parse_header(&[0x01, 126, 1, 0]), h(false, 1, 4, 256, None));
        assert_eq!(parse_header(&[0x81, 126, 1]), None);
        let mut b = vec![0x82, 127];
        b.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&b), h(true, 2, 10, 70_000, None));
        assert_eq!(
            parse_header(&[0x81, 0x83, 1, 2, 3, 4]),
            h(true, 1, 6, 3, Some([1, 2, 3, 4]))
        );
    }

    #[tokio::test]
    async fn reassembles_fragments() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if crate::scan::find(&got, b"\r\n\r\n", 0).is_some() {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&got).into_owned();
            let key = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .to_string();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            let mut out = resp.into_bytes();
            // "hel" + "lo" as two fragments, then a close 4009, in one write.
            out.extend_from_slice(&[0x01, 3, b'h', b'e', b'l', 0x80, 2, b'l', b'o']);
            out.extend_from_slice(&[0x88, 2, 0x0f, 0xa9]);
            s.write_all(&out).await.unwrap();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut c = WsConn::handshake(stream, "x", "/ws", "t", 4096)
            .await
            .unwrap();
        let mut frames = Vec::new();
        'outer: loop {
            loop {
                match c.next_frame().unwrap() {
                    Some(Frame::Text(t)) => frames.push(String::from_utf8(t.to_vec()).unwrap()),
                    Some(Frame::Close(code)) => {
                        frames.push(code.to_string());
                        break 'outer;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            assert!(c.read().await.unwrap() > 0);
        }
        assert_eq!(frames, vec!["hello".to_string(), "4009".to_string()]);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_upgrade_names_the_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let e = WsConn::handshake(stream, "x", "/ws", "t", 4096)
            .await
            .err()
            .unwrap();
        assert_eq!(e, "handshake: HTTP 401");
    }
}
