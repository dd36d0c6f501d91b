//! Debug routes for the admin listeners (operators only, never a public
//! port): `/debug/runtime`, the async runtime's and the process's gauges,
//! and `/debug/pprof/profile`, a CPU profile of the whole process as a
//! flame graph (SVG) or folded stacks (text, for `inferno` or
//! `flamegraph.pl`). A profile samples every thread at 99 Hz for `seconds`
//! (1 to 60, default 10); one runs at a time per process (429 while one
//! does), so the routes cannot be used to load the process.

use crate::ApiError;
use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The debug routes, to merge into an admin router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/debug/runtime", get(runtime))
        .route("/debug/pprof/profile", get(profile))
}

/// `GET /debug/runtime`.
async fn runtime() -> Result<Json<Value>, ApiError> {
    let m = tokio::runtime::Handle::current().metrics();
    let process = tokio::task::spawn_blocking(process_gauges)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({
        "runtime": {
            "workers": m.num_workers(),
            "alive_tasks": m.num_alive_tasks(),
            "global_queue_depth": m.global_queue_depth(),
        },
        "process": process,
    })))
}

/// Resident memory, threads and open files, from `/proc/self` (null
/// where the system has no such files).
fn process_gauges() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let open_files = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
    json!({
        "resident_bytes": field("VmRSS:").map(|kib| kib * 1024),
        "threads": field("Threads:"),
        "open_files": open_files,
    })
}

#[derive(Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
    format: Option<String>,
}

/// What a profile is rendered as.
#[derive(Clone, Copy)]
enum Format {
    Flamegraph,
    Folded,
}

/// The longest profile one request may ask for.
pub const MAX_PROFILE_SECS: u64 = 60;
const DEFAULT_PROFILE_SECS: u64 = 10;
const SAMPLES_PER_SEC: i32 = 99;

/// Set while a profile runs: the profiler is one per process.
static PROFILING: AtomicBool = AtomicBool::new(false);

struct Profiling;

impl Profiling {
    fn start() -> Option<Self> {
        PROFILING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Profiling)
    }
}

impl Drop for Profiling {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::Release);
    }
}

/// `GET /debug/pprof/profile?seconds=&format=flamegraph|folded`.
async fn profile(Query(q): Query<ProfileQuery>) -> Result<Response, ApiError> {
    let seconds = q.seconds.unwrap_or(DEFAULT_PROFILE_SECS);
    if !(1..=MAX_PROFILE_SECS).contains(&seconds) {
        return Err(ApiError::invalid(
            "seconds",
            format!("must be 1 to {MAX_PROFILE_SECS}"),
        ));
    }
    let format = match q.format.as_deref() {
        None | Some("flamegraph") => Format::Flamegraph,
        Some("folded") => Format::Folded,
        Some(_) => return Err(ApiError::invalid("format", "must be flamegraph or folded")),
    };
    let Some(running) = Profiling::start() else {
        return Err(ApiError {
            message: "a profile is already running".into(),
            ..ApiError::rate_limited(seconds)
        });
    };
    // The profiler's guard lives on one thread; the wait is a blocking
    // sleep there, one thread at most (see `Profiling`).
    let rendered = tokio::task::spawn_blocking(move || {
        let _running = running;
        sample(Duration::from_secs(seconds), format)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let content_type = match format {
        Format::Flamegraph => "image/svg+xml",
        Format::Folded => "text/plain; charset=utf-8",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], rendered).into_response())
}

/// Samples the process for `length` and renders the report.
fn sample(length: Duration, format: Format) -> Result<Vec<u8>, ApiError> {
    let fail = |e: pprof::Error| ApiError::unavailable(format!("the profiler failed: {e}"));
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(SAMPLES_PER_SEC)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(fail)?;
    std::thread::sleep(length);
    let report = guard.report().build().map_err(fail)?;
    let mut out = Vec::new();
    match format {
        Format::Folded => out.extend_from_slice(folded(&report).as_bytes()),
        Format::Flamegraph if report.data.is_empty() => out.extend_from_slice(IDLE_SVG),
        Format::Flamegraph => report.flamegraph(&mut out).map_err(fail)?,
    }
    Ok(out)
}

/// What an idle process's flame graph shows: no samples were taken (the
/// profiler counts CPU time).
const IDLE_SVG: &[u8] = br#"<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40"><text x="10" y="25">no samples: the process used no CPU</text></svg>"#;

/// One line per stack: `thread;outermost;...;innermost count`.
fn folded(report: &pprof::Report) -> String {
    let mut out = String::new();
    for (frames, count) in &report.data {
        out.push_str(&frames.thread_name_or_id());
        for frame in frames.frames.iter().rev() {
            for symbol in frame.iter().rev() {
                let _ = write!(out, ";{symbol}");
            }
        }
        let _ = writeln!(out, " {count}");
    }
    out
}
