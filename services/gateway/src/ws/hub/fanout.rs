//! The hand-off: the same pre-framed bytes written to every connection of
//! a slice, split over the runtime's worker threads when the slice is
//! large.

use crate::metrics::Metrics;
use crate::ws::close::Close;
use crate::ws::frames::Batch;
use crate::ws::out::Refused;
use crate::ws::shared::{ConnShared, Outbound};
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;

/// Connections of a slice above which its hand-off is split over worker
/// threads.
const PARALLEL_FANOUT_MIN: usize = 1024;

/// The same bytes to every connection of a slice. A large slice is split
/// over the runtime's worker threads (the writes are the gateway's main
/// cost); the hand-off ends when every part is done, so a connection's
/// batches never overtake each other.
pub(super) async fn fan_out(
    subs: &Arc<[Arc<ConnShared>]>,
    batch: Arc<Batch>,
    metrics: &Arc<Metrics>,
) {
    let parts = if subs.len() >= PARALLEL_FANOUT_MIN {
        tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .clamp(1, 8)
    } else {
        1
    };
    let chunk = subs.len().div_ceil(parts).max(1);
    let mut others = Vec::with_capacity(parts.saturating_sub(1));
    for start in (chunk..subs.len()).step_by(chunk) {
        let (subs, batch, metrics) = (subs.clone(), batch.clone(), metrics.clone());
        others.push(tokio::spawn(async move {
            let end = (start + chunk).min(subs.len());
            deliver_to(&subs[start..end], &batch, &metrics);
        }));
    }
    deliver_to(&subs[..chunk.min(subs.len())], &batch, metrics);
    for part in others {
        let _ = part.await;
    }
    metrics
        .deliveries
        .inc_by((subs.len() * batch.items.len()) as u64);
}

/// Writes a batch to each connection whose cursor is where the batch
/// starts (one write, no wake-up), or queues it for the connection's task
/// (subscribing, or a gap to backfill). A connection too slow to take it
/// is closed with 4009.
fn deliver_to(subs: &[Arc<ConnShared>], batch: &Arc<Batch>, metrics: &Metrics) {
    for conn in subs {
        let handoff = conn.out.lock().deliver(batch, 0, true);
        let too_slow = match handoff {
            Ok(None) | Err(Refused::Dead) => false,
            Ok(Some(from)) => {
                let item = Outbound::Room {
                    batch: batch.clone(),
                    from,
                };
                matches!(conn.tx.try_send(item), Err(TrySendError::Full(_)))
            }
            Err(Refused::Full) => true,
        };
        if too_slow {
            metrics.slow_closes.inc();
            conn.close(Close::TOO_SLOW);
        }
    }
}
