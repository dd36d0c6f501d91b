//! One authenticated connection, from `authenticated` to its close.
//!
//! One task per connection reads the client's frames ([`Commands`]), takes
//! what the hubs and the registry hand it ([`Session::outbound`]), and
//! drains what the socket could not take at once. The hot path does not go
//! through it: the hubs write a room's batches straight to the socket.

use super::close::{Close, End};
use super::commands::Commands;
use super::io::Io;
use super::session::{Session, SessionDeps};
use super::shared::{ConnShared, Outbound};
use crate::wire::{encode, error_frame, ServerFrame};
use crate::Gateway;
use chat_authn::Caller;
use chat_core::ApiError;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
use tokio_tungstenite::tungstenite::Message;

/// Runs an authenticated connection until it ends.
pub async fn run(gw: Gateway, io: Io, caller: Caller) {
    let inner = &gw.inner;
    let (tx, mut rx) = mpsc::channel(inner.cfg.outbound_queue);
    let kill = inner.shutdown.child_token();
    let shared = Arc::new(ConnShared::new(caller, tx, io.out().clone(), kill));
    let span = tracing::info_span!("ws", conn_id = shared.id, user_id = %caller.user_id);
    let mut io = io;
    let Some(_registered) = inner.conns.register(shared.clone()).await else {
        // Without the user's notices a revoked session would stay open.
        io.close(Close::RESTARTING).await;
        return;
    };
    // A revocation between the token check and the subscription to the
    // user's notices was announced to nobody here: its mark on the
    // revocation list (written before the notice) is seen now.
    match inner.verifier.check_session(caller).await {
        Ok(_) => {}
        Err(e) if e.code == chat_core::ErrorCode::Unauthorized => {
            io.close(Close::UNAUTHORIZED.because("session revoked"))
                .await;
            return;
        }
        Err(error) => {
            tracing::warn!(parent: &span, %error, "cannot re-check the session");
            io.close(Close::RESTARTING).await;
            return;
        }
    }
    match inner.ephemeral.connection_opened(caller.user_id).await {
        Ok(n) if n > inner.cfg.max_sockets_per_user => {
            // One account must not hold an unbounded share of the
            // gateways' sockets (each is memory, a file and fan-out work).
            if let Err(error) = inner.ephemeral.connection_closed(caller.user_id).await {
                tracing::warn!(parent: &span, %error, "presence unavailable");
            }
            tracing::debug!(parent: &span, sockets = n, "too many sockets for this user");
            io.close(Close::RATE_LIMITED.because("too many connections for this user"))
                .await;
            return;
        }
        Ok(1) => {
            inner.presence.announce(caller, true);
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(parent: &span, %error, "presence unavailable"),
    }
    inner.metrics.connections.inc();
    tracing::debug!(parent: &span, "connected");
    let deps = SessionDeps {
        api: inner.api.clone(),
        hubs: inner.hubs.clone(),
        subscribes: inner.subscribes.clone(),
        rpc_timeout: inner.cfg.rpc_timeout,
    };
    let mut conn = Conn {
        gw: gw.clone(),
        shared: shared.clone(),
        session: Session::new(shared.clone(), deps),
        window: (Instant::now(), 0),
    };
    let authenticated = encode(&ServerFrame::Authenticated {
        user_id: caller.user_id.to_string(),
        session_id: caller.session_id.to_string(),
    });
    let ended = match conn.session.send(&authenticated) {
        Ok(()) => {
            // A bug in a handler closes this connection with 1011, not the
            // socket without a word.
            match AssertUnwindSafe(conn.serve(&mut io, &mut rx))
                .catch_unwind()
                .await
            {
                Ok(end) => end,
                Err(_) => {
                    tracing::error!(parent: &span, "connection task panicked");
                    End::Close(Close::INTERNAL)
                }
            }
        }
        Err(end) => end,
    };
    let close = match shared.asked_to_close() {
        Some(c) => Some(c),
        None if inner.shutdown.is_cancelled() => Some(Close::RESTARTING),
        None => match ended {
            End::Close(c) => Some(c),
            End::Gone => None,
        },
    };
    if let Some(close) = close {
        // Nothing more is delivered: the hubs let go before the handshake.
        conn.session.clear();
        if close.code == Close::TOO_SLOW.code {
            // A slow client's long close wait must not hold up a shutdown.
            tokio::select! {
                () = io.close(close) => {}
                () = inner.shutdown.cancelled() => {}
            }
        } else {
            io.close(close).await;
        }
    }
    drop(conn);
    inner.metrics.connections.dec();
    match inner.ephemeral.connection_closed(caller.user_id).await {
        Ok(0) => {
            inner.presence.announce(caller, false);
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(parent: &span, %error, "presence unavailable"),
    }
    tracing::debug!(parent: &span, close = ?close.map(|c| c.code), "disconnected");
}

/// A WebSocket ping frame from the server: FIN + opcode 9, no payload.
const PING: &[u8] = &[0x89, 0x00];

struct Conn {
    gw: Gateway,
    shared: Arc<ConnShared>,
    session: Session,
    /// Client frames in the current second: (its start, count).
    window: (Instant, u32),
}

impl Conn {
    /// Runs until the client leaves or the connection must close.
    async fn serve(&mut self, io: &mut Io, rx: &mut mpsc::Receiver<Outbound>) -> End {
        let out = io.out().clone();
        let shared = self.shared.clone();
        let (every, idle_limit) = (
            self.gw.inner.cfg.ws_ping_interval,
            self.gw.inner.cfg.ws_idle_timeout,
        );
        // The last time the client sent anything (a pong answers our pings).
        let mut heard = tokio::time::Instant::now();
        let ping = tokio::time::sleep(every);
        tokio::pin!(ping);
        loop {
            tokio::select! {
                biased;
                () = shared.killed() => return End::Gone,
                () = &mut ping, if !every.is_zero() => {
                    if heard.elapsed() >= idle_limit {
                        // Nothing, not even a pong, for that long: the peer
                        // is gone or hostile; a close frame would not reach it.
                        tracing::debug!("no pong: dropping an idle socket");
                        return End::Gone;
                    }
                    if let Err(refused) = out.lock().write(bytes::Bytes::from_static(PING)) {
                        return refused.into();
                    }
                    ping.as_mut().reset(tokio::time::Instant::now() + every);
                }
                () = out.woken() => {
                    tokio::select! {
                        () = shared.killed() => return End::Gone,
                        r = out.drain() => if r.is_err() { return End::Gone; },
                    }
                }
                item = rx.recv() => {
                    let Some(item) = item else { return End::Gone };
                    // Boxed: the rare, large futures stay out of every
                    // idle connection's task.
                    if let Err(end) = Box::pin(self.session.outbound(item)).await { return end; }
                }
                msg = io.next() => {
                    heard = tokio::time::Instant::now();
                    if let Err(end) = self.client_message(msg).await { return end; }
                }
            }
        }
    }

    async fn client_message(&mut self, msg: Option<Result<Message, Error>>) -> Result<(), End> {
        match msg {
            None | Some(Ok(Message::Close(_))) => Err(End::Gone),
            Some(Err(error)) => {
                tracing::debug!(%error, "websocket receive failed");
                Err(End::Close(match error {
                    Error::Capacity(CapacityError::MessageTooLong { .. }) => Close::TOO_LARGE,
                    _ => Close::PROTOCOL,
                }))
            }
            Some(Ok(Message::Text(t))) => {
                self.gw.inner.metrics.frames_in.inc();
                if self.over_rate() {
                    return Err(Close::RATE_LIMITED.into());
                }
                let inner = &self.gw.inner;
                let mut commands = Commands {
                    session: &mut self.session,
                    publisher: &inner.publisher,
                    ephemeral: inner.ephemeral.as_ref(),
                    typing_interval: inner.cfg.typing_interval,
                };
                Box::pin(commands.handle(t.as_str())).await
            }
            Some(Ok(Message::Binary(_))) => self.session.send(&error_frame(
                None,
                &ApiError::invalid("frame", "must be JSON text"),
            )),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Counts a client frame; whether the connection is over its rate.
    fn over_rate(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 > self.gw.inner.cfg.ws_frames_per_sec
    }
}
