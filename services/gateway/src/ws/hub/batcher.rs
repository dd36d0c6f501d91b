//! A busy room's events wait a little to be written together: one write
//! per connection for many events (the cost of a write hardly depends on
//! its size).

use crate::ws::frames::{self, Batch};
use chat_core::RoomId;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// How long a busy room's events wait to be written together: `factor`
/// times what the last hand-off took, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Linger {
    pub max: Duration,
    pub factor: f64,
}

impl Linger {
    /// The hand-off may take `1 / (1 + factor)` of the time a busy room's
    /// events keep coming: a third of a core at most for 2, a quarter for 3.
    pub const DEFAULT_FACTOR: f64 = 3.0;

    fn after(&self, took: Duration) -> Duration {
        took.mul_f64(self.factor).min(self.max)
    }
}

/// Items handed over at once, at most.
pub(super) const BATCH_MAX: usize = 256;

/// Coalesces a busy room's items: the first item after a quiet spell goes
/// out at once (an idle room adds no latency); items that follow within
/// the linger of the last hand-off wait for the next one, so that each
/// connection gets them with one write.
///
/// The linger adapts to the room: it is a few times what the last hand-off
/// took (writing to every local subscriber), capped by `max_linger`. A
/// room with a handful of subscribers hands off in microseconds and so
/// barely waits; one with 15,000 waits long enough that each connection
/// gets many frames per write, which is what keeps the gateway ahead of a
/// busy room (the cost of a write hardly depends on its size).
pub(super) struct Batcher {
    policy: Linger,
    linger: Duration,
    pub(super) pending: frames::Builder,
    last_flush: Instant,
    /// Users with a typing notice in `pending`: one per user per batch.
    typing: HashSet<String>,
}

impl Batcher {
    pub(super) fn new(room: RoomId, policy: Linger) -> Self {
        Self {
            policy,
            linger: Duration::ZERO,
            pending: frames::Builder::new(room),
            typing: HashSet::new(),
            last_flush: Instant::now()
                .checked_sub(policy.max)
                .unwrap_or_else(Instant::now),
        }
    }

    /// Whether to hand over now rather than at [`Self::due`].
    pub(super) fn flush_now(&self) -> bool {
        !self.pending.is_empty()
            && (self.linger.is_zero()
                || self.pending.len() >= BATCH_MAX
                || self.last_flush.elapsed() >= self.linger)
    }

    /// When the pending items must go out.
    pub(super) fn due(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| self.last_flush + self.linger)
    }

    /// Whether a typing notice of `user` may join the pending batch (none
    /// of theirs is in it yet).
    pub(super) fn first_typing_of(&mut self, user: &str) -> bool {
        self.typing.insert(user.to_owned())
    }

    pub(super) fn take(&mut self) -> Option<Batch> {
        self.last_flush = Instant::now();
        self.typing.clear();
        (!self.pending.is_empty()).then(|| self.pending.take())
    }

    /// Sets the next linger from how long a hand-off took.
    pub(super) fn handed_off_in(&mut self, took: Duration) {
        self.linger = self.policy.after(took);
    }
}

pub(super) async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::Seq;

    fn linger(max: Duration) -> Linger {
        Linger {
            max,
            factor: Linger::DEFAULT_FACTOR,
        }
    }

    #[test]
    fn a_quiet_room_hands_over_at_once_and_a_busy_one_in_batches() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_secs(60)));
        assert!(b.due().is_none());
        b.pending.event(1, b"{}");
        assert!(
            b.flush_now(),
            "the first event after a quiet spell is not delayed"
        );
        assert_eq!(b.take().map(|t| t.first), Some(Some(1)));
        b.handed_off_in(Duration::from_secs(10));

        b.pending.event(2, b"{}");
        b.pending.event(3, b"{}");
        assert!(
            !b.flush_now(),
            "events right after a slow hand-off wait for the linger"
        );
        let due = b.due().expect("due");
        assert!(due > Instant::now() + Duration::from_secs(25));
        let t = b.take().expect("a batch");
        assert_eq!((t.first, t.last, t.items.len()), (Some(2), Some(3), 2));
        assert!(b.take().is_none());
    }

    #[test]
    fn the_linger_follows_the_hand_off_time_up_to_the_cap() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_millis(100)));
        b.handed_off_in(Duration::from_micros(20));
        assert_eq!(b.linger, Duration::from_micros(60));
        b.handed_off_in(Duration::from_millis(20));
        assert_eq!(b.linger, Duration::from_millis(60));
        b.handed_off_in(Duration::from_millis(80));
        assert_eq!(b.linger, Duration::from_millis(100));
    }

    #[test]
    fn the_factor_sets_the_linger_and_zero_turns_it_off() {
        let mut b = Batcher::new(
            RoomId::new(),
            Linger {
                max: Duration::from_millis(100),
                factor: 0.5,
            },
        );
        b.handed_off_in(Duration::from_millis(20));
        assert_eq!(b.linger, Duration::from_millis(10));
        b.policy.factor = 0.0;
        b.handed_off_in(Duration::from_millis(20));
        b.pending.event(1, b"{}");
        assert!(b.flush_now(), "no wait after a hand-off");
    }

    #[test]
    fn a_full_batch_goes_out_without_waiting() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_secs(60)));
        b.pending.event(0, b"{}");
        b.take();
        b.handed_off_in(Duration::from_secs(60));
        for s in 1..BATCH_MAX as Seq {
            b.pending.event(s, b"{}");
            assert!(!b.flush_now());
        }
        b.pending.event(BATCH_MAX as Seq, b"{}");
        assert!(b.flush_now());
    }

    #[test]
    fn a_batch_holds_one_typing_notice_per_user() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::from_secs(60)));
        assert!(b.first_typing_of("alice"));
        assert!(!b.first_typing_of("alice"), "a second one joins nothing");
        assert!(b.first_typing_of("bob"));
        b.pending.live(b"{}");
        b.take();
        assert!(
            b.first_typing_of("alice"),
            "the next batch may hold one again"
        );
    }

    #[test]
    fn no_linger_means_no_batching() {
        let mut b = Batcher::new(RoomId::new(), linger(Duration::ZERO));
        b.pending.event(1, b"{}");
        assert!(b.flush_now());
        b.take();
        b.handed_off_in(Duration::from_millis(5));
        b.pending.event(2, b"{}");
        assert!(b.flush_now());
    }
}
