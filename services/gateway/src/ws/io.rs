//! A connection's socket: tungstenite reads the client's frames from it
//! (and answers pings, and does the close handshake); everything the
//! server sends goes through [`Out`], in order.

use super::close::Close;
use super::out::{Out, SockIo};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

/// A connection's initial read buffer; larger client frames grow it.
const READ_BUFFER: usize = 1024;

/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long a connection closed with 4009 waits for the client to read up
/// to its close frame (as nginx's `lingering_timeout`).
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The socket of one WebSocket connection.
pub struct Io {
    ws: WebSocketStream<SockIo>,
    out: Arc<Out>,
}

/// The size limits of a connection.
#[derive(Clone, Copy, Debug)]
pub struct IoLimits {
    /// Largest client frame (1009 above).
    pub max_frame_bytes: usize,
    /// Bytes waiting for the socket before the client is too slow (4009).
    pub max_pending_bytes: usize,
}

impl Io {
    /// Takes over an upgraded socket; `prefix` is what was read past the
    /// upgrade request.
    pub async fn new(sock: Arc<TcpStream>, prefix: bytes::Bytes, limits: IoLimits) -> Self {
        let max = limits.max_frame_bytes;
        let out = Arc::new(Out::new(sock, limits.max_pending_bytes));
        let config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            // Small buffers: most connections are idle most of the time,
            // and the read buffer grows when a frame needs it.
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0);
        let ws = WebSocketStream::from_raw_socket(
            SockIo::new(out.clone(), prefix),
            Role::Server,
            Some(config),
        )
        .await;
        Self { ws, out }
    }

    /// The outbound side, shared with the hubs.
    pub fn out(&self) -> &Arc<Out> {
        &self.out
    }

    /// The client's next frame; `None` when it has gone.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        self.ws.next().await
    }

    /// Sends a close frame after what is pending (or instead of it, when
    /// the client was too slow for it), waits briefly for the client's
    /// close, and lets the socket go.
    ///
    /// A client closed for being too slow (4009) is given longer: it may be
    /// seconds behind, and the close frame reaches it only once it reads
    /// again. What was pending for it is dropped already, so the wait holds
    /// a socket, not memory.
    pub async fn close(&mut self, close: Close) {
        let too_slow = close.code == Close::TOO_SLOW.code;
        self.out.lock().close(too_slow);
        let frame = CloseFrame {
            code: CloseCode::from(close.code),
            reason: close.reason.into(),
        };
        let wait = if too_slow {
            SLOW_CLOSE_WAIT
        } else {
            CLOSE_WAIT
        };
        let _ = tokio::time::timeout(wait, async {
            if self.ws.close(Some(frame)).await.is_ok() {
                // The client answers with its close frame; reading up to it
                // also takes in whatever it sent before (an oversized
                // frame's payload), so the socket ends with FIN, not RST.
                while let Some(Ok(_)) = self.ws.next().await {}
            }
            self.out.drain_input().await;
        })
        .await;
    }
}
