//! When a connection acts: the parent's word so far ([`Ctl`], watched by
//! every task), the sender's rate schedule and the receiver's reconnect
//! drop that start at `go` ([`Schedule`]), and the optional timers a
//! task's `select!` waits on.

use crate::clock::instant_at;
use crate::plan::Plan;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// What the parent has told the shard so far (watched by every task).
#[derive(Clone, Debug, Default)]
pub(super) struct Ctl {
    pub(super) go_us: Option<u64>,
    pub(super) flush: u64,
    pub(super) finish: Option<Arc<Vec<i64>>>,
    pub(super) abort: bool,
}

/// Returns once the parent asks to finish or abort.
pub(super) async fn wait_end(ctl: &mut watch::Receiver<Ctl>) {
    loop {
        {
            let c = ctl.borrow();
            if c.abort || c.finish.is_some() {
                return;
            }
        }
        if ctl.changed().await.is_err() {
            return;
        }
    }
}

/// What one connection does from `go` on.
#[derive(Default)]
pub(super) struct Schedule {
    /// A sender's sends, and when they stop.
    pub(super) tick: Option<Interval>,
    pub(super) send_end: Option<Instant>,
    /// A sender's acks up to this instant are on time.
    pub(super) on_time_until: Option<Instant>,
    /// A receiver's drop (the reconnect scenario).
    pub(super) drop_at: Option<Instant>,
}

impl Schedule {
    /// The schedule of a connection that is sender `sender` (else a
    /// receiver) when the parent says go at `go_us` (unix µs).
    pub(super) fn after_go(plan: &Plan, sender: Option<usize>, go_us: u64) -> Self {
        let start = instant_at(go_us);
        let mut s = Schedule::default();
        if let Some(sender) = sender {
            if plan.rate > 0.0 {
                let period = Duration::from_secs_f64(plan.senders as f64 / plan.rate);
                // Sender s starts s/rate after go: together they send evenly.
                let first = start + Duration::from_secs_f64(sender as f64 / plan.rate);
                let mut iv = tokio::time::interval_at(first, period);
                iv.set_missed_tick_behavior(MissedTickBehavior::Burst);
                s.tick = Some(iv);
                let end = start + Duration::from_secs_f64(plan.duration_s);
                s.send_end = Some(end);
                s.on_time_until = Some(end + Duration::from_secs_f64(plan.ack_grace_s.max(0.0)));
            }
        } else if let Some(after) = plan.disconnect_after_s {
            s.drop_at = Some(start + Duration::from_secs_f64(after));
        }
        s
    }
}

/// Sleeps until `at`, or forever.
pub(super) async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next tick of `t`, or never.
pub(super) async fn tick_opt(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
