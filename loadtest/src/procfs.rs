//! Server (and own) resource use from /proc: finding a server by the port
//! it listens on, and sampling resident memory and CPU time.

use std::collections::BTreeSet;
use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat times: `sysconf(_SC_CLK_TCK)`
/// (USER_HZ); `None` when the system does not say.
pub fn ticks_per_second() -> Option<u64> {
    match rustix::param::clock_ticks_per_second() {
        0 => None,
        t => Some(t),
    }
}

/// The pids of the processes with a listening TCP socket on `port`.
pub fn pids_listening_on(port: u16) -> Vec<u32> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let Some(p) = cols[1].rsplit(':').next() else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port) {
                if let Ok(inode) = cols[9].parse::<u64>() {
                    if inode != 0 {
                        inodes.insert(inode);
                    }
                }
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if target.to_str().is_some_and(|t| wanted.contains(t)) {
                    pids.insert(pid);
                    break;
                }
            }
        }
    }
    pids.into_iter().collect()
}

/// Resident memory in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The soft open-file limit of a process.
pub fn max_open_files(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One reading of a set of processes.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub rss: u64,
    pub ticks: u64,
}

/// Samples a set of processes: their summed RSS and CPU time.
#[derive(Clone, Debug, Default)]
pub struct Sampler {
    pub pids: Vec<u32>,
    pub rss_max: u64,
}

impl Sampler {
    pub fn new(pids: Vec<u32>) -> Self {
        Sampler { pids, rss_max: 0 }
    }

    pub fn sample(&mut self) -> Option<Sample> {
        if self.pids.is_empty() {
            return None;
        }
        let mut rss = 0;
        let mut ticks = 0;
        for &pid in &self.pids {
            rss += rss_bytes(pid).unwrap_or(0);
            ticks += cpu_ticks(pid).unwrap_or(0);
        }
        self.rss_max = self.rss_max.max(rss);
        Some(Sample {
            at: Instant::now(),
            rss,
            ticks,
        })
    }
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_percent(a: Option<Sample>, b: Option<Sample>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let per_sec = ticks_per_second()? as f64;
    Some(b.ticks.saturating_sub(a.ticks) as f64 / per_sec / secs * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(max_open_files(me).unwrap() > 0);
    }

    #[test]
    fn clock_ticks_come_from_the_system() {
        let hz = ticks_per_second().expect("sysconf(_SC_CLK_TCK)");
        assert!((1..=10_000).contains(&hz), "{hz} ticks per second");
    }

    #[test]
    fn cpu_percent_is_ticks_over_wall_time() {
        let hz = ticks_per_second().expect("sysconf(_SC_CLK_TCK)");
        let at = Instant::now();
        let a = Sample {
            at,
            rss: 0,
            ticks: 0,
        };
        // Two seconds of one core's time over four seconds: 50 %.
        let b = Sample {
            at: at + std::time::Duration::from_secs(4),
            rss: 0,
            ticks: 2 * hz,
        };
        let pct = cpu_percent(Some(a), Some(b)).expect("a percentage");
        assert!((pct - 50.0).abs() < 1e-9, "{pct}");
        assert_eq!(cpu_percent(Some(b), Some(a)), None);
    }

    #[test]
    fn finds_a_listener_by_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pids_listening_on(port), vec![std::process::id()]);
    }
}
