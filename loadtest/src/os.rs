//! The operating system's limits as a run meets them: the open-file limit
//! raised at start, and socket errors turned into short reasons that
//! group well in the report (EMFILE, ENFILE, out of local ports, refused,
//! reset).
//!
//! A leaf: it uses no other module of the crate.

/// Raises the soft open-file limit to the hard one; returns the soft limit.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::Resource::NOFILE.get().map(|l| l.0))
        .unwrap_or(1024)
}

/// A connect failure as a short reason that groups well.
pub(crate) fn io_reason(stage: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(24) => format!(
            "open file limit reached: {stage} failed with EMFILE (this process may hold at most {} open files; \
             lower --max-conns-per-process so more worker processes share the connections)",
            rlimit::Resource::NOFILE.get().map_or(0, |l| l.0)
        ),
        Some(23) => format!("system-wide open file limit reached: {stage} failed with ENFILE"),
        Some(99) | Some(98) => format!(
            "out of local ports: {stage} failed ({e}); raise --source-ips"
        ),
        Some(111) => format!("{stage}: connection refused (is the server up? its accept queue full?)"),
        Some(104) => format!(
            "{stage}: connection reset by the server (at its open file limit? accept queue overflow?)"
        ),
        _ => format!("{stage}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_limit_is_named() {
        let e = std::io::Error::from_raw_os_error(24);
        assert!(io_reason("socket", &e).starts_with("open file limit reached"));
        let e = std::io::Error::from_raw_os_error(99);
        assert!(io_reason("connect", &e).contains("--source-ips"));
    }
}
