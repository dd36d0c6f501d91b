//! The NATS bus of the distributed mode: core NATS subjects, no JetStream.
//!
//! Publishing is fire-and-forget (at most once): the payload goes to the
//! client's outbound queue and async-nats writes it out as soon as its
//! connection task gets to it, batching whatever queued up meanwhile, so
//! nothing waits for a timer and nothing is flushed per message. A payload
//! lost to a reconnect shows up as a `seq` gap (or, for every room at once, as
//! a bump of [`Bus::reconnects`]) and the gateway backfills it from the store.
//!
//! Connecting fails fast: a server that cannot be reached at start is a
//! configuration error, reported at once. Once connected, the client
//! reconnects on its own, forever, with backoff, and re-subscribes every live
//! subscription.

use crate::{Bus, BusError, Result, Subscription};
use async_nats::{ConnectOptions, Event, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long one attempt to reach a server (TCP, INFO/CONNECT) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a server round trip (`ping`, subscription confirmation) may take.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `publish` may wait for room in the client's outbound queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// A subject nobody subscribes to: a request to it comes back from the server
/// itself ("no responders"), which makes it a true round trip.
const ROUND_TRIP_SUBJECT: &str = "_CHAT.PING";

pub struct NatsBus {
    client: async_nats::Client,
    reconnects: watch::Receiver<u64>,
}

/// The credentials of the first server URL that has any
/// (`nats://user:pass@host` or `nats://token@host`): the client does not
/// take them from the URLs itself.
fn with_credentials(options: ConnectOptions, servers: &[ServerAddr]) -> ConnectOptions {
    let Some(s) = servers.iter().find(|s| s.username().is_some()) else {
        return options;
    };
    match (s.username(), s.password()) {
        (Some(user), Some(pass)) => options.user_and_password(user.into(), pass.into()),
        (Some(token), None) => options.token(token.into()),
        _ => options,
    }
}

impl NatsBus {
    /// Connects to `url`: one `nats://host:port` (or `tls://…`), or several
    /// separated by commas (a cluster's seed servers), with credentials as
    /// `nats://user:password@host:port` or `nats://token@host:port`. Fails at once when no
    /// server answers; reconnects on its own after that.
    pub async fn connect(url: &str) -> Result<Self> {
        let servers = url
            .split(',')
            .map(|s| s.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Config(format!("bad NATS URL {:?}: {e}", redact(url))))?;

        let (tx, reconnects) = watch::channel(0u64);
        let lost = Arc::new(AtomicBool::new(false));
        let options = with_credentials(ConnectOptions::new(), &servers)
            .name(client_name())
            .connection_timeout(CONNECT_TIMEOUT)
            // Unbounded reconnects (the default, spelled out); no retry of the
            // *first* connect (also the default): a bad URL must fail at start.
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = tx.clone();
                let lost = lost.clone();
                async move { on_event(event, &lost, &tx) }
            });
        let client = async_nats::connect_with_options(servers, options)
            .await
            .map_err(|e| {
                BusError::Unavailable(
                    format!("cannot connect to NATS at {}: {e}", redact(url)).into(),
                )
            })?;
        tracing::info!(url = %redact(url), "bus connected to NATS");
        Ok(Self { client, reconnects })
    }

    /// The underlying client, for its statistics (and tests, which force
    /// reconnects with it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// One request the server itself answers: when it returns, everything this
    /// connection sent before it has been processed by the server.
    async fn round_trip(&self) -> Result<()> {
        let answer = tokio::time::timeout(
            ROUND_TRIP_TIMEOUT,
            self.client.request(ROUND_TRIP_SUBJECT, Bytes::new()),
        )
        .await
        .map_err(|_| unavailable("NATS round trip timed out"))?;
        match answer {
            // Somebody answered: the server has processed it all the same.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(BusError::Unavailable(Box::new(e))),
        }
    }

    fn check_connected(&self) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(unavailable(format!("NATS connection is {state}"))),
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    /// Queues the payload and returns. While the connection is down this fails
    /// at once rather than queueing (the payload would be stale by the time it
    /// went out, and the room must not stall on the bus).
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        self.check_connected()?;
        tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.client.publish(subject.to_owned(), payload),
        )
        .await
        .map_err(|_| unavailable("NATS outbound queue is full"))?
        .map_err(|e| BusError::Unavailable(Box::new(e)))
    }

    /// Returns once the server has registered the subscription, so anything
    /// published (by anyone) after this returns is delivered to it: the
    /// gateway subscribes first, then backfills, and no event falls between.
    /// The stream ends only if the client is closed for good.
    async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.check_connected()?;
        let subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::Unavailable(Box::new(e)))?;
        self.round_trip().await?;
        Ok(subscriber.map(|m| m.payload).boxed())
    }

    async fn ping(&self) -> Result<()> {
        self.check_connected()?;
        self.round_trip().await
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.clone()
    }
}

/// Logs connection events and counts reconnects: a `Connected` after a
/// `Disconnected` (the first `Connected` is the initial connect).
fn on_event(event: Event, lost: &AtomicBool, reconnects: &watch::Sender<u64>) {
    match event {
        Event::Connected => {
            if lost.swap(false, Ordering::SeqCst) {
                reconnects.send_modify(|n| *n += 1);
                tracing::info!(
                    reconnects = *reconnects.borrow(),
                    "bus reconnected to NATS; payloads published meanwhile are lost"
                );
            }
        }
        Event::Disconnected => {
            lost.store(true, Ordering::SeqCst);
            tracing::warn!("bus disconnected from NATS; reconnecting");
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(sid, "bus subscription too slow; NATS payloads dropped");
        }
        Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
        Event::Draining => tracing::info!("bus connection draining"),
        Event::Closed => tracing::warn!("bus connection to NATS closed"),
        Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
        Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
    }
}

/// `chat-<binary>-<pid>`, so `nats server report connections` (or /connz)
/// tells the processes apart.
fn client_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "chat".to_owned());
    format!("chat-{binary}-{}", std::process::id())
}

/// The URL without credentials (`nats://user:pass@host` → `nats://***@host`).
fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn unavailable(msg: impl Into<String>) -> BusError {
    BusError::Unavailable(msg.into().into())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_not_logged() {
        assert_eq!(
            redact("nats://u:p@h:4222,nats://h2:4222"),
            "nats://***@h:4222,nats://h2:4222"
        );
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }
}
