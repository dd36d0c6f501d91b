//! The clock every process of a run shares: unix time in µs, which the
//! body's send time, the parent's `go` and the run's deadline are given
//! in, and the watchdog that holds a process to that deadline.
//!
//! A leaf: it uses no other module of the crate.

use std::time::Duration;
use tokio::time::Instant;

/// Unix time in µs (the clock the body's send time uses, shared by every
/// process on the machine).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A tokio instant for a unix µs time.
pub(crate) fn instant_at(us: u64) -> Instant {
    let now_us = now_us();
    let now = Instant::now();
    if us >= now_us {
        now + Duration::from_micros(us - now_us)
    } else {
        now.checked_sub(Duration::from_micros(now_us - us))
            .unwrap_or(now)
    }
}

/// Ends the process 30 s past the run's deadline (unix µs), whatever it is
/// doing: a run always stops by itself.
pub fn watchdog(deadline_us: u64) {
    std::thread::spawn(move || {
        let left = deadline_us.saturating_sub(now_us()) + 30_000_000;
        std::thread::sleep(Duration::from_micros(left));
        eprintln!("loadtest: hard deadline passed; exiting");
        std::process::exit(2);
    });
}

/// Whether a condition read from lagging figures has held long enough to
/// trust: the shards report their counts every 250 ms, so "every send
/// acked" can be read while the last sends are not counted yet. The drain
/// ends only once its condition has held for `hold` (at least two reports
/// of every shard), and counts from when it first held.
#[derive(Debug)]
pub struct Settle {
    hold: Duration,
    since: Option<std::time::Instant>,
}

impl Settle {
    pub fn new(hold: Duration) -> Self {
        Self { hold, since: None }
    }

    /// Takes the condition's value at `now`; `Some(t)` once it has held
    /// since `t` for `hold` without a break.
    pub fn observe(&mut self, holds: bool, now: std::time::Instant) -> Option<std::time::Instant> {
        if !holds {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        (now.duration_since(since) >= self.hold).then_some(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_settles_only_after_holding_without_a_break() {
        let t0 = std::time::Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut s = Settle::new(Duration::from_millis(600));
        // Every send looks acked, but the last send is not counted yet...
        assert_eq!(s.observe(true, at(0)), None);
        // ...and shows up unacked in the next report: not settled.
        assert_eq!(s.observe(false, at(250)), None);
        // Acked: it holds again from here, and settles 600 ms later.
        assert_eq!(s.observe(true, at(300)), None);
        assert_eq!(s.observe(true, at(800)), None);
        assert_eq!(s.observe(true, at(900)), Some(at(300)));
    }
}
