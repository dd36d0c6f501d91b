//! The check every delivery goes through: one sequence of numbers (a
//! room's seqs on one connection, or one peer sender's message numbers)
//! checked for loss, duplicates and order. Shared by the chat connections
//! ([`crate::shard`]) and the peer adapters ([`crate::peers`]).
//!
//! A leaf: it uses no other module of the crate.

/// What one number of a checked sequence turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next one.
    InOrder,
    /// New, but after a gap or filling one late.
    OutOfOrder,
    /// Seen before (or from before the start).
    Duplicate,
}

/// One sequence checked for loss, duplicates and order: a room's seqs
/// on one connection, or one peer sender's message numbers.
#[derive(Clone, Debug)]
pub struct SeqCheck {
    /// The last number before this check started (the room's last seq
    /// at subscribe time; 0 for a peer sender).
    base: i64,
    /// The next number expected.
    expected: i64,
    /// Numbers skipped over (inclusive ranges) that may still come late.
    gaps: Vec<(i64, i64)>,
}

impl SeqCheck {
    /// Expects `base + 1` next.
    pub fn after(base: i64) -> Self {
        SeqCheck {
            base,
            expected: base + 1,
            gaps: Vec::new(),
        }
    }

    /// The last number seen in order (what a resume starts after).
    pub fn last(&self) -> i64 {
        self.expected - 1
    }

    pub fn see(&mut self, seq: i64) -> Seen {
        if seq == self.expected {
            self.expected += 1;
            Seen::InOrder
        } else if seq > self.expected {
            self.gaps.push((self.expected, seq - 1));
            self.expected = seq + 1;
            Seen::OutOfOrder
        } else if seq <= self.base {
            Seen::Duplicate
        } else if let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq <= b) {
            // A late arrival fills a gap: delivered, but out of order.
            let (a, b) = self.gaps[i];
            self.gaps.remove(i);
            if a < seq {
                self.gaps.push((a, seq - 1));
            }
            if seq < b {
                self.gaps.push((seq + 1, b));
            }
            Seen::OutOfOrder
        } else {
            Seen::Duplicate
        }
    }

    /// Numbers up to `max` (the highest acked) that never arrived.
    pub fn lost(&self, max: i64) -> u64 {
        let mut lost = (max - (self.expected - 1)).max(0) as u64;
        for &(a, b) in &self.gaps {
            let hi = b.min(max);
            if hi >= a {
                lost += (hi - a + 1) as u64;
            }
        }
        lost
    }
}
