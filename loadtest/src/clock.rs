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
