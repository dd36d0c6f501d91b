//! A room's local connections in slices: each slice gets its own write
//! turn, so the events that arrive during a pass over a busy room go to the
//! next slices at once instead of waiting for the pass to end.

use super::batcher::Batcher;
use crate::ws::frames::Batch;
use crate::ws::shared::ConnShared;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A room's local connections are written in this many slices (by
/// connection id), one after another; the events that arrive meanwhile go
/// to the next slices at once. So an event waits for at most one pass over
/// the room (plus its slice's turn), not for a whole pass to end and
/// another to reach it: in a room busy enough that passes run back to
/// back, that halves the worst latency for the same number of writes.
pub(super) const SLICES: usize = 8;

/// A room's local connections by slice, and a list of each slice for
/// hand-offs (built again only when someone joins or leaves it).
#[derive(Default)]
pub(super) struct Subscribers {
    slices: [HashMap<u64, Arc<ConnShared>>; SLICES],
    lists: [Option<Arc<[Arc<ConnShared>]>>; SLICES],
}

fn slice_of(id: u64) -> usize {
    (id % SLICES as u64) as usize
}

impl Subscribers {
    pub(super) fn insert(&mut self, conn: Arc<ConnShared>) {
        let k = slice_of(conn.id);
        self.slices[k].insert(conn.id, conn);
        self.lists[k] = None;
    }

    pub(super) fn remove(&mut self, id: u64) {
        let k = slice_of(id);
        if self.slices[k].remove(&id).is_some() {
            self.lists[k] = None;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slices.iter().map(HashMap::len).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slices.iter().all(HashMap::is_empty)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Arc<ConnShared>> {
        self.slices.iter().flat_map(HashMap::values)
    }

    pub(super) fn list(&mut self, k: usize) -> Arc<[Arc<ConnShared>]> {
        let slice = &self.slices[k];
        self.lists[k]
            .get_or_insert_with(|| slice.values().cloned().collect())
            .clone()
    }
}

/// The batches each slice has yet to get, and the pass under way.
#[derive(Default)]
pub(super) struct Rolling {
    pending: [Vec<Arc<Batch>>; SLICES],
    next: usize,
    pass: Option<Instant>,
}

impl Rolling {
    pub(super) fn busy(&self) -> bool {
        self.pass.is_some()
    }

    /// What the batcher holds goes to every slice.
    pub(super) fn seal(&mut self, batch: &mut Batcher) {
        if let Some(b) = batch.take() {
            let b = Arc::new(b);
            for p in &mut self.pending {
                p.push(b.clone());
            }
            self.pass.get_or_insert_with(Instant::now);
        }
    }

    /// The next slice (round robin) with batches pending, and them.
    pub(super) fn next(&mut self) -> Option<(usize, Vec<Arc<Batch>>)> {
        for i in 0..SLICES {
            let k = (self.next + i) % SLICES;
            if !self.pending[k].is_empty() {
                self.next = (k + 1) % SLICES;
                return Some((k, std::mem::take(&mut self.pending[k])));
            }
        }
        None
    }

    /// Ends the pass when every slice is served: how long it took.
    pub(super) fn finish(&mut self) -> Option<Duration> {
        if self.pending.iter().all(Vec::is_empty) {
            self.pass.take().map(|t| t.elapsed())
        } else {
            None
        }
    }
}
