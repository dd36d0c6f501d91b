//! The receive path's frame reader: it reads only what the checks need
//! (the frame type, `seq`, `ref` and the send time at the start of the
//! body) with a few byte comparisons instead of parsing the JSON.
//!
//! The server writes `{"type":"<kind>",...}` with the fields of a message
//! in a fixed order (`room_id`, `seq`, `id`, `sender_id`, `body`, ...), and
//! ids are 36-character UUIDs, so the fields are usually at fixed offsets:
//! those are tried first, then a search, so another field order still
//! works. `scan-bench` (a hidden subcommand) compares this with serde_json.
//! Peers' frames are read the same way: [`bodies`] finds the message
//! bodies wherever the protocol puts them.

/// The frame types the checks look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Ack,
    Subscribed,
    Error,
    Other,
}

const TYPE_PREFIX: &[u8] = b"{\"type\":\"";

/// The frame's `type`.
pub fn kind(f: &[u8]) -> Kind {
    let rest = if f.starts_with(TYPE_PREFIX) {
        &f[TYPE_PREFIX.len()..]
    } else {
        match find(f, b"\"type\":\"", 0) {
            Some(i) => &f[i + 8..],
            None => return Kind::Other,
        }
    };
    if rest.starts_with(b"message\"") {
        Kind::Message
    } else if rest.starts_with(b"ack\"") {
        Kind::Ack
    } else if rest.starts_with(b"subscribed\"") {
        Kind::Subscribed
    } else if rest.starts_with(b"error\"") {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// Where `"seq":` usually is in a message frame:
/// `{"type":"message","room_id":"<36>","seq":`.
const MSG_SEQ_AT: usize = 67;
/// From the end of the seq digits to the body text:
/// `,"id":"<36>","sender_id":"<36>","body":"`.
const SEQ_TO_BODY: usize = 7 + 36 + 15 + 36 + 10;

/// `seq` and the send time (unix µs, `t=<n>;` at the start of the body) of
/// a `message` frame.
pub fn message(f: &[u8]) -> Option<(i64, Option<u64>)> {
    let (seq, end) = if f.get(MSG_SEQ_AT..MSG_SEQ_AT + 6) == Some(b"\"seq\":") {
        int_at(f, MSG_SEQ_AT + 6)?
    } else {
        int_after(f, b"\"seq\":")?
    };
    let body = end + SEQ_TO_BODY;
    let t = if f.get(body - 8..body + 2) == Some(b"\"body\":\"t=") {
        uint_at(f, body + 2)
    } else {
        find(f, b"\"body\":\"t=", 0).and_then(|i| uint_at(f, i + 10))
    };
    Some((seq, t))
}

/// The integer after `key` (e.g. `"seq":`), searched from the start.
pub fn int_after(f: &[u8], key: &[u8]) -> Option<(i64, usize)> {
    let i = find(f, key, 0)?;
    int_at(f, i + key.len())
}

/// `ref` of an `ack` or `error`: a number (our sends) or a string (ours:
/// `"sub"` for a subscribe).
pub enum Ref<'a> {
    Num(u64),
    Str(&'a [u8]),
}

pub fn reference(f: &[u8]) -> Option<Ref<'_>> {
    let i = find(f, b"\"ref\":", 0)? + 6;
    match f.get(i)? {
        b'"' => {
            let rest = &f[i + 1..];
            let end = rest.iter().position(|&b| b == b'"')?;
            Some(Ref::Str(&rest[..end]))
        }
        _ => uint_at(f, i).map(Ref::Num),
    }
}

/// The string value of `key` (e.g. `"code":"`), up to the next quote.
pub fn str_after<'a>(f: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let i = find(f, key, 0)? + key.len();
    let rest = &f[i..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

fn int_at(f: &[u8], i: usize) -> Option<(i64, usize)> {
    let (neg, start) = match f.get(i) {
        Some(b'-') => (true, i + 1),
        _ => (false, i),
    };
    let mut n: i64 = 0;
    let mut j = start;
    while let Some(&b) = f.get(j) {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
        j += 1;
    }
    if j == start {
        return None;
    }
    Some((if neg { -n } else { n }, j))
}

fn uint_at(f: &[u8], i: usize) -> Option<u64> {
    uint_end(f, i).map(|(n, _)| n)
}

/// The unsigned integer at `i` and the index just past its digits.
pub fn uint_end(f: &[u8], i: usize) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut j = i;
    while let Some(&b) = f.get(j) {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        j += 1;
    }
    (j > i).then_some((n, j))
}

/// A message body as a peer delivers it: `t=<unix µs>;s<sender>n<n>;`
/// (the same body the chat scenarios send), wrapped in whatever the
/// protocol puts around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body {
    /// Send time, unix µs.
    pub t: u64,
    pub sender: u64,
    pub n: u64,
}

/// Every body in `f` (a frame may carry several: gorilla's hub joins
/// queued messages with newlines, Centrifuge sends replies line by line).
/// A body starts at the frame's start, after a quote or after a newline.
pub fn bodies(f: &[u8], mut each: impl FnMut(Body)) {
    let mut from = 0;
    while let Some(i) = find(f, b"t=", from) {
        from = i + 2;
        if i > 0 && !matches!(f[i - 1], b'"' | b'\n') {
            continue;
        }
        if let Some((body, end)) = body_at(f, i + 2) {
            each(body);
            from = end;
        }
    }
}

/// `<t>;s<sender>n<n>;` at `i` (just past `t=`).
fn body_at(f: &[u8], i: usize) -> Option<(Body, usize)> {
    let (t, j) = uint_end(f, i)?;
    if f.get(j..j + 2)? != b";s" {
        return None;
    }
    let (sender, j) = uint_end(f, j + 2)?;
    if f.get(j)? != &b'n' {
        return None;
    }
    let (n, j) = uint_end(f, j + 1)?;
    (f.get(j)? == &b';').then_some((Body { t, sender, n }, j + 1))
}

/// The first occurrence of `needle` in `hay` at or after `from`.
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += off;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// serde_json's cheapest equivalent (borrowed, unknown fields skipped), for
/// the comparison in `scan-bench`.
#[derive(serde::Deserialize)]
pub struct Borrowed<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    pub seq: Option<i64>,
    #[serde(borrow)]
    pub body: Option<&'a str>,
}

/// `seq` and send time through serde_json.
pub fn message_serde(f: &str) -> Option<(i64, Option<u64>)> {
    let b: Borrowed<'_> = serde_json::from_str(f).ok()?;
    if b.kind != "message" {
        return None;
    }
    let t = b
        .body
        .and_then(|body| body.strip_prefix("t="))
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok());
    Some((b.seq?, t))
}

/// A message frame as the server writes it (for tests and the bench).
pub fn sample_frame(seq: i64, t: u64) -> String {
    format!(
        concat!(
            r#"{{"type":"message","room_id":"0190a6f2-7f1e-7c3a-9a51-3b2d8e0f4c11","seq":{},"#,
            r#""id":"0190a6f2-8000-7000-8000-000000000001","#,
            r#""sender_id":"0190a6f2-7f1e-7c3a-9a51-3b2d8e0f4c12","#,
            r#""body":"t={};s0n1;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","#,
            r#""client_msg_id":"run-0-1","created_at":"2025-01-01T00:00:00.000000Z","deleted":false}}"#
        ),
        seq, t
    )
}

type Reader<'a> = &'a dyn Fn(&str) -> Option<(i64, Option<u64>)>;

/// `loadtest scan-bench`: ns per frame of the scanner and of serde_json.
pub fn bench(frames: usize) {
    let samples: Vec<String> = (0..64)
        .map(|i| sample_frame(1000 + i, 1_700_000_000_000_000 + i as u64))
        .collect();
    let run = |name: &str, f: Reader<'_>| {
        let start = std::time::Instant::now();
        let mut acc = 0i64;
        for i in 0..frames {
            let s = &samples[i % samples.len()];
            if let Some((seq, t)) = f(std::hint::black_box(s)) {
                acc = acc.wrapping_add(seq).wrapping_add(t.unwrap_or(0) as i64);
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / frames as f64;
        println!("{name:<12} {ns:8.1} ns/frame (checksum {acc})");
    };
    run("scanner", &|s: &str| {
        (kind(s.as_bytes()) == Kind::Message)
            .then(|| message(s.as_bytes()))
            .flatten()
    });
    run("serde_json", &message_serde);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_message_frame_at_the_fixed_offsets() {
        let f = sample_frame(42, 1_700_000_000_123_456);
        assert_eq!(kind(f.as_bytes()), Kind::Message);
        assert_eq!(
            message(f.as_bytes()),
            Some((42, Some(1_700_000_000_123_456)))
        );
        assert_eq!(message_serde(&f), Some((42, Some(1_700_000_000_123_456))));
    }

    #[test]
    fn reads_fields_in_another_order() {
        let f = r#"{"seq":7,"type":"message","body":"t=99;x","room_id":"r"}"#;
        assert_eq!(kind(f.as_bytes()), Kind::Message);
        assert_eq!(message(f.as_bytes()), Some((7, Some(99))));
        let no_t = r#"{"type":"message","room_id":"r","seq":8,"body":"hello"}"#;
        assert_eq!(message(no_t.as_bytes()), Some((8, None)));
    }

    #[test]
    fn reads_acks_errors_and_subscribed() {
        let ack = r#"{"type":"ack","ref":17,"room_id":"r","seq":12,"id":"x"}"#;
        assert_eq!(kind(ack.as_bytes()), Kind::Ack);
        assert!(matches!(reference(ack.as_bytes()), Some(Ref::Num(17))));
        assert_eq!(
            int_after(ack.as_bytes(), b"\"seq\":").map(|x| x.0),
            Some(12)
        );
        let err = r#"{"type":"error","ref":"sub","code":"forbidden","message":"no"}"#;
        assert_eq!(kind(err.as_bytes()), Kind::Error);
        assert!(matches!(reference(err.as_bytes()), Some(Ref::Str(b"sub"))));
        assert_eq!(str_after(err.as_bytes(), b"\"code\":\""), Some("forbidden"));
        let sub = r#"{"type":"subscribed","room_id":"r","last_seq":5}"#;
        assert_eq!(kind(sub.as_bytes()), Kind::Subscribed);
        assert_eq!(
            int_after(sub.as_bytes(), b"\"last_seq\":").map(|x| x.0),
            Some(5)
        );
        let other = r#"{"type":"presence","room_id":"r","user_id":"u","online":true}"#;
        assert_eq!(kind(other.as_bytes()), Kind::Other);
        assert_eq!(kind(b"garbage"), Kind::Other);
    }

    #[test]
    fn finds_every_peer_body_in_a_frame() {
        let mut got = Vec::new();
        let f = b"t=10;s1n2;xxx\nt=11;s0n3;xx\nt=oops;s1n4;";
        bodies(f, |b| got.push((b.t, b.sender, b.n)));
        assert_eq!(got, vec![(10, 1, 2), (11, 0, 3)]);
        got.clear();
        let f = br#"42["m","t=1700000000000001;s4n17;xxxx"]"#;
        bodies(f, |b| got.push((b.t, b.sender, b.n)));
        assert_eq!(got, vec![(1_700_000_000_000_001, 4, 17)]);
        got.clear();
        // Not at a field's start, or cut short: no body.
        bodies(br#"{"a":"lat=1;s1n1;","b":"t=5;s1n"}"#, |b| {
            got.push((b.t, b.sender, b.n))
        });
        assert!(got.is_empty());
    }

    #[test]
    fn find_handles_edges() {
        assert_eq!(find(b"abcabd", b"abd", 0), Some(3));
        assert_eq!(find(b"ab", b"abc", 0), None);
        assert_eq!(find(b"aaa", b"a", 2), Some(2));
        assert_eq!(find(b"", b"a", 0), None);
    }
}
