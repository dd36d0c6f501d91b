//! The results: the summary table, the JSON file and the verdict.
//!
//! A run fails for any of these reasons ([`Report::failures`]): a delivery
//! lost, duplicated or out of order; a connection that could not connect;
//! a send never acked by the end of the drain; or, for a run that sends,
//! fewer acks on time (by the end of sending + `--ack-grace`) than
//! `--min-ack-ratio` of the asked rate × the sending duration (sends the
//! server refused count as not acked).

use crate::hist::Latency;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything a run measured. The JSON file is this, serialised.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// `chat`, or the peer's protocol (`--protocol`).
    #[serde(default)]
    pub protocol: String,
    pub run_id: String,
    pub urls: Vec<String>,
    pub processes: u64,
    pub users: u64,
    pub rooms: u64,
    pub senders: u64,
    /// Requested total messages/s and seconds of sending (or holding).
    pub rate: f64,
    pub duration_s: f64,

    pub connections_requested: u64,
    /// Connections that connected and subscribed.
    pub connections_held: u64,
    pub connect_failures: u64,
    pub connect_errors: BTreeMap<String, u64>,

    pub sent: u64,
    pub acked: u64,
    pub send_errors: u64,
    pub send_error_codes: BTreeMap<String, u64>,
    /// Sent, neither acked nor refused by the end of the drain.
    pub unacked: u64,
    /// Acked messages × the room's subscribers.
    pub expected_deliveries: u64,
    /// Distinct (connection, seq) deliveries.
    pub delivered: u64,
    /// Seqs up to each room's highest acked seq that a subscriber never got.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,

    /// Text frames this tool received and the socket reads that brought
    /// them: how much the server batches its writes.
    pub frames_received: u64,
    pub socket_reads: u64,
    pub frames_per_read: f64,

    /// From sending start to the end of the drain.
    pub window_s: f64,
    pub deliveries_per_s: f64,
    /// Durable messages per second (acks / window).
    pub acks_per_s: f64,
    /// Acks that arrived by the end of sending + `ack_grace_s`: what the
    /// server kept up with while the load was on.
    #[serde(default)]
    pub acked_on_time: u64,
    /// `acked_on_time` / `duration_s`: the rate the server held, against
    /// `rate`.
    #[serde(default)]
    pub on_time_acks_per_s: f64,
    /// `--ack-grace`: seconds after sending ends in which an ack still
    /// counts as on time.
    #[serde(default)]
    pub ack_grace_s: f64,
    /// `--min-ack-ratio`: the share of the asked rate a run must hold.
    #[serde(default)]
    pub min_ack_ratio: f64,
    /// Send → receive (the body's send time to the frame's arrival).
    pub latency_ms: Latency,
    /// Send → ack (the message is durable).
    pub ack_latency_ms: Latency,
    /// reconnect: per dropped connection, drop → resumed (`subscribed`
    /// after the missed events).
    pub recovery_ms: Option<Latency>,
    pub reconnects: u64,
    pub reconnect_errors: BTreeMap<String, u64>,
    /// Server-initiated closes (and 1006 for a lost connection) by code.
    pub closes: BTreeMap<String, u64>,
    /// Connections open at the end of the drain: after closes and
    /// reconnects, how many were back.
    pub connections_open_at_end: u64,

    pub server_pids: Vec<u32>,
    pub server_rss_bytes_baseline: u64,
    pub server_rss_bytes_max: u64,
    /// (max − baseline) / connections held.
    pub server_rss_per_conn_bytes: u64,
    /// Average over the window, percent of one core (summed over pids).
    pub server_cpu_percent: f64,
    /// This tool's own CPU over the window (all its processes).
    pub loadtest_cpu_percent: f64,

    pub setup_s: f64,
    pub connect_s: f64,
    pub elapsed_s: f64,
    /// Tasks that did not stop in time (should be 0).
    pub stuck_tasks: u64,
    /// Why the run failed, one line per reason (empty: it passed).
    #[serde(default)]
    pub failures: Vec<String>,
    /// `failures` is empty.
    pub passed: bool,
}

/// One reason a run fails.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    Lost(u64),
    Duplicated(u64),
    OutOfOrder(u64),
    ConnectFailures(u64),
    Unacked(u64),
    /// Acks per second on time, the asked rate, the share required.
    SlowAcks {
        held: f64,
        asked: f64,
        ratio: f64,
    },
}

impl Failure {
    /// `--allow-loss` lets these through: what a faulty network or an
    /// overloaded peer loses on the way to the receivers. A send the
    /// server never acked, or acked too slowly, is not one of them.
    pub fn is_loss(&self) -> bool {
        matches!(
            self,
            Failure::Lost(_)
                | Failure::Duplicated(_)
                | Failure::OutOfOrder(_)
                | Failure::ConnectFailures(_)
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Lost(n) => write!(f, "{} deliveries lost", thousands(*n)),
            Failure::Duplicated(n) => write!(f, "{} deliveries duplicated", thousands(*n)),
            Failure::OutOfOrder(n) => write!(f, "{} deliveries out of order", thousands(*n)),
            Failure::ConnectFailures(n) => write!(f, "{} connections failed", thousands(*n)),
            Failure::Unacked(n) => write!(f, "{} sends never acked", thousands(*n)),
            Failure::SlowAcks { held, asked, ratio } => write!(
                f,
                "acks {}/s < {:.0}% of {}/s asked",
                thousands(held.round() as u64),
                ratio * 100.0,
                thousands(asked.round() as u64)
            ),
        }
    }
}

impl Report {
    /// Sets `failures` and `passed` from the figures.
    pub fn check(&mut self) {
        self.failures = self.verdict().iter().map(ToString::to_string).collect();
        self.passed = self.failures.is_empty();
    }

    /// Every reason the run fails, in the order the table lists them.
    pub fn verdict(&self) -> Vec<Failure> {
        let mut v = Vec::new();
        let counts = [
            (self.lost, Failure::Lost(self.lost)),
            (self.duplicated, Failure::Duplicated(self.duplicated)),
            (self.out_of_order, Failure::OutOfOrder(self.out_of_order)),
            (
                self.connect_failures,
                Failure::ConnectFailures(self.connect_failures),
            ),
            (self.unacked, Failure::Unacked(self.unacked)),
        ];
        for (n, f) in counts {
            if n > 0 {
                v.push(f);
            }
        }
        // Only a run that sends at a rate holds one (idle has rate 0).
        let asked = self.rate * self.duration_s;
        if asked > 0.0 && self.min_ack_ratio > 0.0 {
            let held = self.acked_on_time as f64 / self.duration_s;
            if (self.acked_on_time as f64) < self.min_ack_ratio * asked {
                v.push(Failure::SlowAcks {
                    held,
                    asked: self.rate,
                    ratio: self.min_ack_ratio,
                });
            }
        }
        v
    }

    /// The exit status's verdict: passed, or failed only for reasons
    /// `--allow-loss` lets through.
    pub fn passed_allowing(&self, allow_loss: bool) -> bool {
        self.verdict().iter().all(|f| allow_loss && f.is_loss())
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let lat = |l: &Latency| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            )
        };
        let _ = writeln!(
            w,
            "loadtest {} (run {}) against {}{}",
            self.scenario,
            self.run_id,
            self.urls.join(", "),
            if self.protocol.is_empty() || self.protocol == "chat" {
                String::new()
            } else {
                format!(" (--protocol {})", self.protocol)
            }
        );
        let _ = writeln!(
            w,
            "  connections     {} held of {} ({} failed; {} users, {} rooms, {} senders, {} process{})",
            self.connections_held,
            self.connections_requested,
            self.connect_failures,
            self.users,
            self.rooms,
            self.senders,
            self.processes.max(1),
            if self.processes > 1 { "es" } else { "" }
        );
        for (e, n) in &self.connect_errors {
            let _ = writeln!(w, "    {n} × {e}");
        }
        if self.scenario != "idle" {
            let _ = writeln!(
                w,
                "  messages        sent {}  acked {}  refused {}  unacked {}  ({:.1}/s asked, {:.1} acks/s)",
                self.sent, self.acked, self.send_errors, self.unacked, self.rate, self.acks_per_s
            );
            let _ = writeln!(
                w,
                "  held rate       {:.1} acks/s on time ({} acked by {:.1} s after sending ended, over {:.1} s), {:.0}% of the asked rate",
                self.on_time_acks_per_s,
                self.acked_on_time,
                self.ack_grace_s,
                self.duration_s,
                if self.rate > 0.0 { 100.0 * self.on_time_acks_per_s / self.rate } else { 0.0 }
            );
            for (e, n) in &self.send_error_codes {
                let _ = writeln!(w, "    {n} × {e}");
            }
            let _ = writeln!(
                w,
                "  deliveries      {} of {} expected  ({:.0}/s over {:.1} s)",
                self.delivered, self.expected_deliveries, self.deliveries_per_s, self.window_s
            );
            let _ = writeln!(
                w,
                "  correctness     lost {}  duplicated {}  out of order {}  (lost: not arrived by the end of the drain)",
                self.lost, self.duplicated, self.out_of_order
            );
            let _ = writeln!(
                w,
                "  reads           {} frames in {} socket reads ({:.1} frames per read)",
                self.frames_received, self.socket_reads, self.frames_per_read
            );
            let _ = writeln!(w, "  latency ms      {}", lat(&self.latency_ms));
            let _ = writeln!(w, "  ack latency ms  {}", lat(&self.ack_latency_ms));
        }
        if let Some(r) = &self.recovery_ms {
            let _ = writeln!(w, "  recovery ms     {}", lat(r));
        }
        if self.reconnects > 0 || !self.closes.is_empty() {
            let closes: Vec<String> = self
                .closes
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let _ = writeln!(
                w,
                "  reconnects      {}  closes by code: {}",
                self.reconnects,
                if closes.is_empty() {
                    "none".into()
                } else {
                    closes.join(", ")
                }
            );
            for (e, n) in &self.reconnect_errors {
                let _ = writeln!(w, "    {n} × {e}");
            }
        }
        if self.server_pids.is_empty() {
            let _ = writeln!(
                w,
                "  server          not sampled (no --server-pid, none found by port)"
            );
        } else {
            let _ = writeln!(
                w,
                "  server          pid {:?}: rss {:.1} MiB max ({:.1} MiB before, {:.2} KiB per connection), cpu {:.0}%",
                self.server_pids,
                mib(self.server_rss_bytes_max),
                mib(self.server_rss_bytes_baseline),
                self.server_rss_per_conn_bytes as f64 / 1024.0,
                self.server_cpu_percent
            );
        }
        let _ = writeln!(
            w,
            "  loadtest        cpu {:.0}%; setup {:.1} s, connect {:.1} s, {:.1} s in all",
            self.loadtest_cpu_percent, self.setup_s, self.connect_s, self.elapsed_s
        );
        if self.stuck_tasks > 0 {
            let _ = writeln!(
                w,
                "  warning         {} connection tasks did not stop in time",
                self.stuck_tasks
            );
        }
        if self.failures.is_empty() {
            let _ = writeln!(w, "  result          PASS");
        } else {
            let _ = writeln!(w, "  result          FAIL: {}", self.failures.join("; "));
        }
        s
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rooms run that held its rate with nothing lost.
    fn healthy() -> Report {
        Report {
            scenario: "rooms".into(),
            rate: 1000.0,
            duration_s: 10.0,
            connections_requested: 100,
            connections_held: 100,
            sent: 10_000,
            acked: 10_000,
            acked_on_time: 10_000,
            on_time_acks_per_s: 1000.0,
            ack_grace_s: 0.5,
            min_ack_ratio: 0.95,
            ..Report::default()
        }
    }

    fn checked(mut r: Report) -> Report {
        r.check();
        r
    }

    #[test]
    fn a_healthy_run_passes() {
        let r = checked(healthy());
        assert!(r.passed);
        assert!(r.failures.is_empty());
        assert!(r.table().contains("result          PASS"));
    }

    #[test]
    fn sends_never_acked_fail_the_run() {
        let mut r = healthy();
        r.acked = 8_750;
        r.acked_on_time = 8_750;
        r.unacked = 1_250;
        let r = checked(r);
        assert!(!r.passed, "one send in eight never acked passed");
        assert!(r.failures.contains(&"1,250 sends never acked".to_string()));
    }

    #[test]
    fn acks_below_the_asked_rate_fail_the_run_and_say_so() {
        let mut r = healthy();
        r.rate = 10_000.0;
        r.sent = 100_000;
        r.acked = 12_500;
        r.acked_on_time = 12_500;
        r.unacked = 87_500;
        let r = checked(r);
        assert!(!r.passed);
        assert_eq!(
            r.failures,
            [
                "87,500 sends never acked",
                "acks 1,250/s < 95% of 10,000/s asked"
            ]
        );
        assert!(
            r.table()
                .contains("FAIL: 87,500 sends never acked; acks 1,250/s < 95% of 10,000/s asked"),
            "{}",
            r.table()
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["failures"][1], "acks 1,250/s < 95% of 10,000/s asked");
    }

    #[test]
    fn acks_that_came_only_after_sending_ended_are_not_held() {
        // Every send acked in the end, but the server worked through a
        // backlog in the drain: half the acks came late.
        let mut r = healthy();
        r.acked_on_time = 5_000;
        let r = checked(r);
        assert!(!r.passed);
        assert_eq!(r.failures, ["acks 500/s < 95% of 1,000/s asked"]);
    }

    #[test]
    fn refused_sends_count_as_not_acked() {
        let mut r = healthy();
        r.acked = 9_000;
        r.acked_on_time = 9_000;
        r.send_errors = 1_000;
        let r = checked(r);
        assert_eq!(r.failures, ["acks 900/s < 95% of 1,000/s asked"]);
    }

    #[test]
    fn a_little_short_of_the_rate_passes() {
        // In-flight acks at the end and a sender's last tick: 96%.
        let mut r = healthy();
        r.acked_on_time = 9_600;
        assert!(checked(r).passed);
    }

    #[test]
    fn runs_that_do_not_send_hold_no_rate() {
        let r = checked(Report {
            scenario: "idle".into(),
            rate: 0.0,
            duration_s: 10.0,
            min_ack_ratio: 0.95,
            connections_requested: 100,
            connections_held: 100,
            ..Report::default()
        });
        assert!(r.passed, "{:?}", r.failures);
    }

    #[test]
    fn a_min_ack_ratio_of_zero_turns_the_rate_check_off() {
        let mut r = healthy();
        r.acked_on_time = 10;
        r.min_ack_ratio = 0.0;
        assert!(checked(r).passed);
    }

    #[test]
    fn allow_loss_lets_loss_through_but_not_unacked_or_slow_sends() {
        let mut lossy = healthy();
        lossy.lost = 3;
        lossy.connect_failures = 2;
        let lossy = checked(lossy);
        assert_eq!(
            lossy.failures,
            ["3 deliveries lost", "2 connections failed"]
        );
        assert!(!lossy.passed_allowing(false));
        assert!(lossy.passed_allowing(true));

        let mut unacked = lossy.clone();
        unacked.unacked = 1;
        assert!(!unacked.passed_allowing(true));

        let mut slow = lossy;
        slow.acked_on_time = 100;
        assert!(!slow.passed_allowing(true));
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
