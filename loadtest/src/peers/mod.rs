//! Protocol adapters for the peers: the servers a user would pick instead
//! of this one (`loadtest/peers/` starts them), driven by the same
//! connections, sender schedule and checks as a chat run.
//!
//! A peer has no server-side seq, so the body carries it: the senders
//! send the chat body, `t=<unix µs>;s<sender>n<n>;` padded, and every
//! receiver checks each sender's `n` with a [`SeqCheck`] of its own
//! ([`PerSender`]): once, in increasing order, none missing up to the
//! highest `n` the sender published. Latency is arrival − `t`.
//!
//! [`Peer`] is one connection's protocol state: the frames that subscribe
//! it to the run's one channel, the frame that publishes a body, and what
//! each frame from the server means ([`Got`]). Frames the protocol wants
//! written back (subscribe steps, pongs) go to [`Peer::outbox`], written
//! after the read that brought them. The receive path stays cheap: a
//! frame that carries bodies is classified by a prefix and scanned with
//! [`scan::bodies`]; nothing is parsed as JSON.

use crate::args::Protocol;
use crate::scan::{self, Body};
use crate::seqcheck::{Seen, SeqCheck};
use anyhow::{anyhow, Result};
use ring::hmac;
use std::time::Duration;

/// Fails clearly when a peer does not accept TCP connections (there is no
/// health endpoint common to them all).
pub async fn check_reachable(bases: &[String]) -> Result<()> {
    for base in bases {
        let addr = base.trim_start_matches("http://");
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("cannot reach the peer at {base}: connect timed out"))?
            .map_err(|e| anyhow!("cannot reach the peer at {base}: {e}"))?;
    }
    Ok(())
}

impl Protocol {
    /// The WebSocket path when the URL has none: the one the peer's own
    /// clients use (see `loadtest/peers/<name>/`).
    pub fn default_path(self, channel: &str, pusher_key: &str) -> String {
        match self {
            Protocol::Chat | Protocol::Gorilla => "/ws".into(),
            Protocol::Socketio => "/socket.io/?EIO=4&transport=websocket".into(),
            Protocol::Pusher => {
                format!("/app/{pusher_key}?protocol=7&client=loadtest&version=1.0")
            }
            Protocol::Centrifuge => "/connection/websocket".into(),
            Protocol::Nchan => format!("/ws/{channel}"),
        }
    }

    /// The run's channel (room) name. Pusher client events need a private
    /// channel.
    pub fn channel(self, run_id: &str) -> String {
        match self {
            Protocol::Pusher => format!("private-lt{run_id}"),
            _ => format!("lt{run_id}"),
        }
    }

    /// The server confirms each publish (Socket.IO's ack, Centrifuge's
    /// reply); otherwise a message counts as published once written.
    pub fn acks(self) -> bool {
        matches!(
            self,
            Protocol::Chat | Protocol::Socketio | Protocol::Centrifuge
        )
    }

    /// The sender gets its own messages too (Pusher never echoes a client
    /// event to the connection that sent it).
    pub fn echoes_sender(self) -> bool {
        self != Protocol::Pusher
    }
}

/// One connection's view of every sender's message numbers.
#[derive(Clone, Debug)]
pub struct PerSender {
    checks: Vec<SeqCheck>,
    /// This connection's own sender index, when the protocol does not echo
    /// its messages back (so none are expected).
    skip: Option<usize>,
}

impl PerSender {
    pub fn new(senders: usize, skip: Option<usize>) -> Self {
        PerSender {
            checks: vec![SeqCheck::after(0); senders],
            skip,
        }
    }

    /// `None`: not one of this run's senders (ignored).
    pub fn see(&mut self, sender: u64, n: u64) -> Option<Seen> {
        let s = usize::try_from(sender).ok()?;
        let n = i64::try_from(n).ok()?;
        Some(self.checks.get_mut(s)?.see(n))
    }

    /// Messages never received: per sender, up to the highest it published
    /// (`max_n[sender]`).
    pub fn lost(&self, max_n: &[i64]) -> u64 {
        self.checks
            .iter()
            .enumerate()
            .filter(|(s, _)| Some(*s) != self.skip)
            .map(|(s, c)| c.lost(max_n.get(s).copied().unwrap_or(0)))
            .sum()
    }
}

/// What a frame from the peer meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    /// A delivered message.
    Body(Body),
    /// The connection is now subscribed to the channel.
    Subscribed,
    /// The server confirmed the publish of message `n`.
    Ack(u64),
    /// The server refused the publish of message `n`.
    SendRefused(u64, String),
    /// The server refused the connection or the subscription.
    Refused(String),
}

/// Where the subscribe handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the server's greeting (Engine.IO open, Pusher
    /// connection_established) or the connect reply (Centrifuge).
    Greeting,
    /// Waiting for the namespace connect (Socket.IO).
    Namespace,
    /// Waiting for the subscription's confirmation.
    Subscribing,
    Subscribed,
}

/// Centrifuge command ids: connect, subscribe, then publishes (n + 2).
const CF_CONNECT: u64 = 1;
const CF_SUBSCRIBE: u64 = 2;

/// One connection's protocol state.
pub struct Peer {
    proto: Protocol,
    channel: String,
    pusher_key: String,
    pusher_secret: String,
    stage: Stage,
    /// Frames to write after the current read's frames are handled.
    pub outbox: Vec<String>,
}

impl Peer {
    pub fn new(proto: Protocol, channel: &str, pusher_key: &str, pusher_secret: &str) -> Self {
        Peer {
            proto,
            channel: channel.to_string(),
            pusher_key: pusher_key.to_string(),
            pusher_secret: pusher_secret.to_string(),
            stage: Stage::Greeting,
            outbox: Vec::new(),
        }
    }

    /// Right after the WebSocket handshake: the frames to send, and
    /// whether the connection is already subscribed (gorilla's hub and
    /// nchan subscribe by connecting).
    pub fn open(&mut self) -> (Vec<String>, bool) {
        match self.proto {
            Protocol::Chat | Protocol::Gorilla | Protocol::Nchan => {
                self.stage = Stage::Subscribed;
                (Vec::new(), true)
            }
            Protocol::Centrifuge => (
                vec![format!(r#"{{"id":{CF_CONNECT},"params":{{}}}}"#)],
                false,
            ),
            Protocol::Socketio | Protocol::Pusher => (Vec::new(), false),
        }
    }

    /// The frame that publishes message `n` with `body` (ASCII, no quotes).
    pub fn publish(&self, n: u64, body: &str) -> String {
        let ch = &self.channel;
        match self.proto {
            Protocol::Chat | Protocol::Gorilla | Protocol::Nchan => body.to_string(),
            Protocol::Socketio => format!(r#"42{n}["m","{body}"]"#),
            Protocol::Pusher => {
                format!(r#"{{"event":"client-m","channel":"{ch}","data":"{body}"}}"#)
            }
            Protocol::Centrifuge => format!(
                r#"{{"id":{},"method":3,"params":{{"channel":"{ch}","data":"{body}"}}}}"#,
                n + CF_SUBSCRIBE
            ),
        }
    }

    /// Handles one text frame from the server.
    pub fn on_frame(&mut self, f: &[u8], mut got: impl FnMut(Got)) {
        match self.proto {
            Protocol::Chat | Protocol::Gorilla | Protocol::Nchan => {
                scan::bodies(f, |b| got(Got::Body(b)))
            }
            Protocol::Socketio => self.socketio(f, &mut got),
            Protocol::Pusher => self.pusher(f, &mut got),
            Protocol::Centrifuge => {
                for line in f.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    self.centrifuge(line, &mut got);
                }
            }
        }
    }

    /// Engine.IO v4 packets (`0` open, `2` ping, `4` message) carrying
    /// Socket.IO packets (`40` connect, `42` event, `43` ack, `44` error).
    fn socketio(&mut self, f: &[u8], got: &mut impl FnMut(Got)) {
        match f {
            [b'4', b'2', ..] => scan::bodies(f, |b| got(Got::Body(b))),
            [b'4', b'3', rest @ ..] => match scan::uint_end(rest, 0) {
                Some((0, _)) if self.stage == Stage::Subscribing => {
                    self.stage = Stage::Subscribed;
                    got(Got::Subscribed);
                }
                Some((n, _)) if n > 0 => got(Got::Ack(n)),
                _ => {}
            },
            [b'2', ..] => self.outbox.push("3".into()),
            [b'0', ..] if self.stage == Stage::Greeting => {
                self.stage = Stage::Namespace;
                self.outbox.push("40".into());
            }
            [b'4', b'0', ..] if self.stage == Stage::Namespace => {
                self.stage = Stage::Subscribing;
                self.outbox
                    .push(format!(r#"420["join","{}"]"#, self.channel));
            }
            [b'4', b'4', ..] => got(Got::Refused(format!(
                "socket.io connect error: {}",
                String::from_utf8_lossy(f)
            ))),
            [b'4', b'1', ..] | [b'1', ..] => {
                got(Got::Refused("socket.io: disconnected by the server".into()))
            }
            _ => {}
        }
    }

    /// Pusher protocol 7 events: `{"event":"...","channel":"...","data":...}`.
    fn pusher(&mut self, f: &[u8], got: &mut impl FnMut(Got)) {
        let event = scan::str_after(f, b"\"event\":\"").unwrap_or("");
        if event.starts_with("client-") {
            return scan::bodies(f, |b| got(Got::Body(b)));
        }
        match event {
            "pusher:connection_established" if self.stage == Stage::Greeting => {
                let Some(socket_id) = pusher_socket_id(f) else {
                    return got(Got::Refused(
                        "pusher: no socket_id in connection_established".into(),
                    ));
                };
                self.stage = Stage::Subscribing;
                let frame = pusher_subscribe(
                    &self.pusher_key,
                    &self.pusher_secret,
                    socket_id,
                    &self.channel,
                );
                self.outbox.push(frame);
            }
            "pusher_internal:subscription_succeeded" if self.stage == Stage::Subscribing => {
                self.stage = Stage::Subscribed;
                got(Got::Subscribed);
            }
            "pusher:ping" => self
                .outbox
                .push(r#"{"event":"pusher:pong","data":{}}"#.into()),
            "pusher:error" | "pusher:subscription_error" => {
                let what = String::from_utf8_lossy(f).into_owned();
                if self.stage == Stage::Subscribed {
                    // Client events are not acked; an error after the
                    // subscription is about one of them.
                    got(Got::SendRefused(0, what));
                } else {
                    got(Got::Refused(format!("pusher: {what}")));
                }
            }
            _ => {}
        }
    }

    /// One Centrifuge JSON reply (`{"id":N,"result":...}` or
    /// `{"id":N,"error":...}`) or push (`{"result":{"channel":...}}`).
    fn centrifuge(&mut self, line: &[u8], got: &mut impl FnMut(Got)) {
        let Some(rest) = line.strip_prefix(b"{\"id\":") else {
            return scan::bodies(line, |b| got(Got::Body(b)));
        };
        let Some((id, end)) = scan::uint_end(rest, 0) else {
            return;
        };
        let error = rest[end..]
            .starts_with(b",\"error\"")
            .then(|| String::from_utf8_lossy(line).into_owned());
        match (id, error) {
            (CF_CONNECT, None) if self.stage == Stage::Greeting => {
                self.stage = Stage::Subscribing;
                self.outbox.push(format!(
                    r#"{{"id":{CF_SUBSCRIBE},"method":1,"params":{{"channel":"{}"}}}}"#,
                    self.channel
                ));
            }
            (CF_SUBSCRIBE, None) if self.stage == Stage::Subscribing => {
                self.stage = Stage::Subscribed;
                got(Got::Subscribed);
            }
            (CF_CONNECT | CF_SUBSCRIBE, Some(e)) => got(Got::Refused(format!("centrifuge: {e}"))),
            (id, None) if id > CF_SUBSCRIBE => got(Got::Ack(id - CF_SUBSCRIBE)),
            (id, Some(e)) if id > CF_SUBSCRIBE => got(Got::SendRefused(id - CF_SUBSCRIBE, e)),
            _ => {}
        }
    }
}

/// The socket id in `pusher:connection_established`, whose data is a
/// JSON string: `"data":"{\"socket_id\":\"123.456\",...}"`.
fn pusher_socket_id(f: &[u8]) -> Option<&str> {
    let i = scan::find(f, b"socket_id", 0)? + 9;
    let start = i + f[i..].iter().position(|b| b.is_ascii_digit())?;
    let len = f[start..]
        .iter()
        .position(|&b| !(b.is_ascii_digit() || b == b'.'))?;
    std::str::from_utf8(&f[start..start + len]).ok()
}

/// HMAC-SHA256 of `msg` under `key`, in lower-case hex.
fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, msg);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `pusher:subscribe` to a private channel, signed as an app server's
/// auth endpoint would: `key:hex(HMAC-SHA256(secret, "socket_id:channel"))`.
pub fn pusher_subscribe(key: &str, secret: &str, socket_id: &str, channel: &str) -> String {
    let hex = hmac_sha256_hex(
        secret.as_bytes(),
        format!("{socket_id}:{channel}").as_bytes(),
    );
    format!(
        r#"{{"event":"pusher:subscribe","data":{{"auth":"{key}:{hex}","channel":"{channel}"}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_matches_the_fips_vectors() {
        let sha256 = |m: &[u8]| hex(digest::digest(&digest::SHA256, m).as_ref());
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        // Test case 2 and test case 6 (a key longer than the block).
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac_sha256_hex(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
