//! Server frames as bytes on the wire: each event is serialized and framed
//! once per gateway, a batch's frames lie back to back in one buffer, and
//! every connection gets the same bytes (or a slice of them).

use bytes::{BufMut, Bytes, BytesMut};
use chat_core::{RoomId, Seq};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Appends `payload` as one unmasked, final text frame.
pub fn put_text(buf: &mut BytesMut, payload: &[u8]) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    buf.reserve(header.len(len) + payload.len());
    // Writing into a BytesMut cannot fail.
    let _ = header.format(len, &mut buf.writer());
    buf.put_slice(payload);
}

/// `payload` as one text frame of its own.
pub fn text(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    put_text(&mut buf, payload);
    buf.freeze()
}

/// One item of a [`Batch`]: a sequenced room event or a live-only notice
/// (typing, presence, membership), ending at byte `end` of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub seq: Option<Seq>,
    pub end: usize,
}

/// A room's frames handed to every local connection at once, in order.
#[derive(Debug)]
pub struct Batch {
    pub room: RoomId,
    pub bytes: Bytes,
    pub items: Vec<Item>,
    /// The events' seqs: first and last, and whether each follows the one
    /// before it (so a connection at `first - 1` takes all the bytes).
    pub first: Option<Seq>,
    pub last: Option<Seq>,
    pub contiguous: bool,
}

impl Batch {
    /// Where item `i` starts.
    pub fn start(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.items.get(i - 1).map_or(0, |p| p.end),
        }
    }
}

impl Batch {
    /// Several batches of one room as one, in order (what a connection gets
    /// with one write when it missed them all).
    pub fn concat(parts: &[std::sync::Arc<Batch>]) -> Option<std::sync::Arc<Batch>> {
        let (head, rest) = parts.split_first()?;
        if rest.is_empty() {
            return Some(head.clone());
        }
        let len = parts.iter().map(|p| p.bytes.len()).sum();
        let mut bytes = BytesMut::with_capacity(len);
        let mut items = Vec::with_capacity(parts.iter().map(|p| p.items.len()).sum());
        let (mut first, mut last) = (None, None::<Seq>);
        let mut contiguous = true;
        for p in parts {
            let base = bytes.len();
            bytes.extend_from_slice(&p.bytes);
            items.extend(p.items.iter().map(|i| Item {
                seq: i.seq,
                end: base + i.end,
            }));
            if let (Some(f), Some(l)) = (p.first, p.last) {
                if let Some(prev) = last {
                    contiguous &= f == prev + 1;
                }
                contiguous &= p.contiguous;
                first = first.or(Some(f));
                last = Some(l);
            }
        }
        Some(std::sync::Arc::new(Batch {
            room: head.room,
            bytes: bytes.freeze(),
            items,
            first,
            last,
            contiguous,
        }))
    }
}

/// Builds a [`Batch`].
pub struct Builder {
    room: RoomId,
    buf: BytesMut,
    items: Vec<Item>,
    first: Option<Seq>,
    last: Option<Seq>,
    contiguous: bool,
}

impl Builder {
    pub fn new(room: RoomId) -> Self {
        Self {
            room,
            buf: BytesMut::new(),
            items: Vec::new(),
            first: None,
            last: None,
            contiguous: true,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A sequenced event; `json` is its client object.
    pub fn event(&mut self, seq: Seq, json: &[u8]) {
        if let Some(last) = self.last {
            self.contiguous &= seq == last + 1;
        }
        self.first.get_or_insert(seq);
        self.last = Some(seq);
        self.push(Some(seq), json);
    }

    /// A live-only notice.
    pub fn live(&mut self, json: &[u8]) {
        self.push(None, json);
    }

    fn push(&mut self, seq: Option<Seq>, json: &[u8]) {
        put_text(&mut self.buf, json);
        self.items.push(Item {
            seq,
            end: self.buf.len(),
        });
    }

    /// The batch, leaving the builder empty for the next one.
    pub fn take(&mut self) -> Batch {
        let batch = Batch {
            room: self.room,
            bytes: std::mem::take(&mut self.buf).freeze(),
            items: std::mem::take(&mut self.items),
            first: self.first.take(),
            last: self.last.take(),
            contiguous: self.contiguous,
        };
        self.contiguous = true;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Parses back the text frames in `bytes` with tungstenite's own
    /// header parser.
    fn parse(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = std::io::Cursor::new(bytes);
        while (cur.position() as usize) < bytes.len() {
            let (h, len) = FrameHeader::parse(&mut cur)
                .expect("a valid header")
                .expect("a whole header");
            assert!(h.is_final && h.mask.is_none());
            assert_eq!(h.opcode, OpCode::Data(Data::Text));
            let at = cur.position() as usize;
            out.push(String::from_utf8(bytes[at..at + len as usize].to_vec()).expect("UTF-8"));
            cur.set_position((at + len as usize) as u64);
        }
        out
    }

    #[test]
    fn frames_of_every_length_class_parse_back() {
        for n in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload = "x".repeat(n);
            let mut buf = BytesMut::new();
            put_text(&mut buf, payload.as_bytes());
            assert_eq!(parse(&buf), vec![payload]);
        }
    }

    #[test]
    fn a_batch_lays_its_frames_back_to_back() {
        let mut b = Builder::new(RoomId::new());
        b.event(4, br#"{"seq":4}"#);
        b.live(br#"{"type":"typing"}"#);
        b.event(5, br#"{"seq":5}"#);
        let batch = b.take();
        assert_eq!(batch.first, Some(4));
        assert_eq!(batch.last, Some(5));
        assert!(batch.contiguous);
        assert_eq!(
            parse(&batch.bytes),
            vec![r#"{"seq":4}"#, r#"{"type":"typing"}"#, r#"{"seq":5}"#]
        );
        let second = &batch.bytes[batch.start(1)..batch.items[1].end];
        assert_eq!(parse(second), vec![r#"{"type":"typing"}"#]);
        assert!(b.is_empty());

        b.event(7, b"{}");
        b.event(9, b"{}");
        assert!(!b.take().contiguous, "a gap shows");
        b.event(10, b"{}");
        assert!(b.take().contiguous, "a new batch starts afresh");
    }

    #[test]
    fn batches_concatenate_in_order() {
        use std::sync::Arc;
        let room = RoomId::new();
        let mut b = Builder::new(room);
        b.event(1, br#"{"seq":1}"#);
        let one = Arc::new(b.take());
        b.live(br#"{"type":"typing"}"#);
        let notice = Arc::new(b.take());
        b.event(2, br#"{"seq":2}"#);
        b.event(3, br#"{"seq":3}"#);
        let two = Arc::new(b.take());
        let all = Batch::concat(&[one.clone(), notice, two]).expect("a batch");
        assert_eq!(
            (all.first, all.last, all.contiguous),
            (Some(1), Some(3), true)
        );
        assert_eq!(
            parse(&all.bytes),
            vec![
                r#"{"seq":1}"#,
                r#"{"type":"typing"}"#,
                r#"{"seq":2}"#,
                r#"{"seq":3}"#
            ]
        );
        let third = &all.bytes[all.start(3)..all.items[3].end];
        assert_eq!(parse(third), vec![r#"{"seq":3}"#]);
        b.event(5, b"{}");
        let gap = Batch::concat(&[one.clone(), Arc::new(b.take())]).expect("a batch");
        assert!(!gap.contiguous, "1 then 5 is not contiguous");
        assert!(Arc::ptr_eq(
            &Batch::concat(std::slice::from_ref(&one)).expect("one"),
            &one
        ));
        assert!(Batch::concat(&[]).is_none());
    }
}
