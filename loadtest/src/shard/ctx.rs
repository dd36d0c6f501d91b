//! What every connection task of a shard shares: the plan, the totals,
//! the parent's word, the dialer and the deadline.

use super::connect::Dialer;
use super::schedule::Ctl;
use super::stats::Stats;
use crate::plan::Plan;
use tokio::sync::watch;
use tokio::time::Instant;

pub(super) struct Ctx {
    pub(super) plan: Plan,
    pub(super) stats: Stats,
    pub(super) ctl: watch::Receiver<Ctl>,
    pub(super) dialer: Dialer,
    pub(super) deadline: Instant,
}
