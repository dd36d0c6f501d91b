//! Logging setup shared by every binary: `RUST_LOG` filters (default `info`),
//! `CHAT_LOG_FORMAT=json` switches to JSON lines.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber once; later calls are no-ops (tests call it
/// from many places).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_target(false))
        .try_init();
}
