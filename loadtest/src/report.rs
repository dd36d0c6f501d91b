//! The results: the summary table and the JSON file.

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
    /// lost, duplicated, out_of_order and connect_failures are all 0.
    pub passed: bool,
}

impl Report {
    pub fn check(&mut self) {
        self.passed = self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.connect_failures == 0;
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
        let _ = writeln!(
            w,
            "  result          {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        s
    }
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
