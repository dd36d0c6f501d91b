//! The parent's view of the shards: the latest word from each ([`Agg`]),
//! summed into run totals, and the deliveries the run expects from them.

use crate::plan::{Event, Ready, ShardResult, Snapshot};
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// The latest word from each shard.
pub(crate) struct Agg {
    pub(crate) ready: Vec<Option<Ready>>,
    progress: Vec<Snapshot>,
    pub(crate) done: Vec<Option<ShardResult>>,
    /// Senders get their own messages (false for Pusher client events).
    echo: bool,
}

impl Agg {
    pub(crate) fn new(n: usize, echo: bool) -> Self {
        Agg {
            ready: vec![None; n],
            progress: vec![Snapshot::default(); n],
            done: vec![None; n],
            echo,
        }
    }

    /// Takes one event; an error when a shard failed.
    pub(crate) fn take(&mut self, i: usize, ev: Event) -> Result<()> {
        match ev {
            Event::Ready(r) => self.ready[i] = Some(r),
            Event::Progress(p) => self.progress[i] = *p,
            Event::Done(d) => {
                self.progress[i] = d.snapshot.clone();
                self.done[i] = Some(*d);
            }
            Event::Failed { error } => bail!("shard {i} failed: {error}"),
        }
        Ok(())
    }

    pub(crate) fn total(&self) -> Snapshot {
        let mut t = Snapshot::default();
        for p in &self.progress {
            t.open += p.open;
            t.subscribed += p.subscribed;
            t.failed += p.failed;
            t.sent += p.sent;
            t.acked += p.acked;
            t.acked_on_time += p.acked_on_time;
            t.send_errors += p.send_errors;
            t.delivered += p.delivered;
            t.frames += p.frames;
            t.reads += p.reads;
            t.duplicated += p.duplicated;
            t.out_of_order += p.out_of_order;
            t.reconnects += p.reconnects;
            t.latency.merge(&p.latency);
            t.ack_latency.merge(&p.ack_latency);
            add_vec(&mut t.acked_per_room, &p.acked_per_room);
            max_vec(&mut t.max_seq_per_room, &p.max_seq_per_room);
            max_vec(&mut t.max_n_per_sender, &p.max_n_per_sender);
        }
        t
    }

    fn subs_per_room(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for r in self.ready.iter().flatten() {
            add_vec(&mut v, &r.subs_per_room);
        }
        v
    }

    /// Acked messages × their room's subscribers (less the sender's own
    /// copy when the protocol does not echo).
    pub(crate) fn expected(&self, acked_per_room: &[u64]) -> u64 {
        let subs = self.subs_per_room();
        let not_echoed = u64::from(!self.echo);
        acked_per_room
            .iter()
            .zip(&subs)
            .map(|(a, s)| a * s.saturating_sub(not_echoed))
            .sum()
    }
}

fn add_vec(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn max_vec(a: &mut Vec<i64>, b: &[i64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x).max(*y);
    }
}

/// Adds the counts of `from` to `into`.
pub(crate) fn merge_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}
