//! Re-checking open WebSockets against the source of truth.
//!
//! A socket outlives its access token. Revocations reach it as bus notices
//! on the user's subject ([`super::registry`]), but a notice is at most
//! once: one published while the bus was down, or while the socket was
//! between its token check and its subscription, is gone. So this task
//! re-checks every local socket's session with auth (which asks the store,
//! the source of truth: the revocation list is only its cache)
//!
//! - every `--ws-session-check-ms` (at most an access-token lifetime, so a
//!   socket never outlives the list's memory of a revocation), and
//! - at once after every bus reconnect, when it also asks every socket to
//!   re-check its rooms' memberships (a kick or ban notice lost in the
//!   outage ends the subscription with the same `unsubscribed` frame).
//!
//! Ended sessions' sockets close with 4001. One call per
//! [`CHECK_BATCH`] sessions per round, for the whole gateway.

use super::close::Close;
use super::registry::Registry;
use crate::backends::{request, As};
use chat_core::SessionId;
use chat_ephemeral::SessionSource;
use chat_proto::v1 as pb;
use chat_proto::v1::auth_service_client::AuthServiceClient;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Sessions asked about per call to auth.
pub const CHECK_BATCH: usize = 5_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How soon a failed round after a reconnect is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What the task needs.
pub struct Rechecks {
    pub registry: Registry,
    pub auth: AuthSessions,
    /// Every session is re-checked this often (zero: only after a bus
    /// reconnect).
    pub every: Duration,
}

impl Rechecks {
    /// Runs until `shutdown`, re-checking on each tick and after each bus
    /// reconnect (`reconnects`, see `Bus::reconnects`).
    pub async fn run(self, mut reconnects: watch::Receiver<u64>, shutdown: CancellationToken) {
        let mut tick = (!self.every.is_zero()).then(|| {
            let mut t =
                tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut bus_open = true;
        // A round after a reconnect that could not reach auth: tried again.
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            let after_reconnect = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => false,
                changed = reconnects.changed(), if bus_open => {
                    if changed.is_err() {
                        bus_open = false;
                        continue;
                    }
                    tracing::info!("bus reconnected: re-checking every socket's session and rooms");
                    self.registry.recheck_memberships();
                    true
                }
                () = async { tokio::time::sleep_until(retry.expect("guarded")).await }, if retry.is_some() => true,
            };
            retry = None;
            if let Err(error) = self.round().await {
                tracing::warn!(%error, "cannot re-check sessions with auth");
                if after_reconnect {
                    retry = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }

    /// One re-check of every local session; closes the ended ones' sockets.
    pub async fn round(&self) -> Result<(), BoxError> {
        let sessions = self.registry.sessions();
        for chunk in sessions.chunks(CHECK_BATCH) {
            let ended: HashSet<SessionId> = self.auth.ended(chunk).await?.into_iter().collect();
            if !ended.is_empty() {
                let n = self
                    .registry
                    .close_sessions(&ended, Close::UNAUTHORIZED.because("session ended"));
                tracing::info!(
                    sessions = ended.len(),
                    sockets = n,
                    "closed the sockets of ended sessions"
                );
            }
        }
        Ok(())
    }
}

/// Auth as the source of truth behind the gateway's revocation list
/// (`chat_ephemeral::Revocations`): its `CheckSessions`.
pub struct AuthSessions {
    pub auth: AuthServiceClient<crate::backends::Transport>,
    pub internal_secret: String,
    pub rpc_timeout: Duration,
}

#[async_trait::async_trait]
impl chat_ephemeral::SessionSource for AuthSessions {
    async fn ended(&self, ids: &[SessionId]) -> Result<Vec<SessionId>, BoxError> {
        let msg = pb::CheckSessionsRequest {
            session_ids: ids.iter().map(ToString::to_string).collect(),
        };
        let req = request(
            msg,
            As::Service(&self.internal_secret),
            self.rpc_timeout,
            None,
        );
        let r = self.auth.clone().check_sessions(req).await?;
        Ok(r.into_inner()
            .ended
            .iter()
            .filter_map(|s| SessionId::parse(s).ok())
            .collect())
    }
}
