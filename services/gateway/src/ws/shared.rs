//! The part of a connection that others touch: the room hubs write to its
//! socket and queue hand-offs for its task, the registry closes it when its
//! session is revoked or the gateway shuts down.

use super::close::Close;
use super::frames::Batch;
use super::out::Out;
use chat_authn::Caller;
use chat_proto::v1 as pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the hubs and the registry hand a connection's task.
pub enum Outbound {
    /// A room batch from item `from` on, which the hub could not write
    /// directly: the room is still being subscribed, or there is a gap.
    Room { batch: Arc<Batch>, from: usize },
    /// The user joined or left a room (from the user's subject); boxed to
    /// keep every connection's queue small.
    Membership(Box<pb::MemberChange>),
    /// Notices may have been lost (a bus reconnect): re-check with room
    /// that the user is still a member of every room subscribed, and end
    /// the subscriptions of the rooms it no longer is.
    Recheck,
}

/// A connection as the hubs and the registry see it.
pub struct ConnShared {
    pub id: u64,
    pub caller: Caller,
    pub tx: mpsc::Sender<Outbound>,
    pub out: Arc<Out>,
    kill: CancellationToken,
    close: OnceLock<Close>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl ConnShared {
    /// A new connection with the next id; `kill` ends its task.
    pub fn new(
        caller: Caller,
        tx: mpsc::Sender<Outbound>,
        out: Arc<Out>,
        kill: CancellationToken,
    ) -> Self {
        Self {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            caller,
            tx,
            out,
            kill,
            close: OnceLock::new(),
        }
    }

    /// Asks the connection to close with `close` (the first one asked for
    /// wins).
    pub fn close(&self, close: Close) {
        let _ = self.close.set(close);
        self.kill.cancel();
    }

    /// The close another party asked for, if any.
    pub fn asked_to_close(&self) -> Option<Close> {
        self.close.get().copied()
    }

    /// Resolves when the connection is asked to close (or the gateway shuts
    /// down).
    pub async fn killed(&self) {
        self.kill.cancelled().await;
    }
}
