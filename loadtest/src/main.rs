//! `loadtest`: see `loadtest --help`.

use clap::Parser;
use loadtest::args::Command;
use loadtest::Args;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Worker) => {
            if let Err(e) = loadtest::workers::worker_main() {
                eprintln!("loadtest worker: {e:#}");
                return ExitCode::from(2);
            }
            return ExitCode::SUCCESS;
        }
        Some(Command::ScanBench { frames }) => {
            loadtest::scan::bench(frames);
            return ExitCode::SUCCESS;
        }
        Some(Command::Revoke {
            users,
            logout_after,
            watch,
        }) => return revoke(&args, users, logout_after, watch),
        None => {}
    }
    let soft = loadtest::os::raise_nofile_limit();
    if !args.quiet {
        eprintln!("open file limit: {soft}");
    }
    loadtest::clock::watchdog(loadtest::clock::now_us() + (args.deadline_secs() * 1e6) as u64);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let json = args.json.clone();
    let allow_loss = args.allow_loss;
    let report = match rt.block_on(loadtest::run(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = json {
        let text = match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("loadtest: cannot encode the results: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    // Connections are closed; do not wait for stray tasks.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if report.passed || allow_loss {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "loadtest: FAIL: {} lost, {} duplicated, {} out of order, {} connections failed",
            report.lost, report.duplicated, report.out_of_order, report.connect_failures
        );
        ExitCode::from(1)
    }
}

/// `loadtest revoke`: see [`loadtest::revoke`].
fn revoke(args: &Args, users: usize, logout_after: f64, watch: f64) -> ExitCode {
    let probe = loadtest::revoke::Probe {
        url: args.url.first().cloned().unwrap_or_default(),
        users,
        logout_after: std::time::Duration::from_secs_f64(logout_after.max(0.0)),
        watch: std::time::Duration::from_secs_f64(watch.max(0.0)),
        password: args.password.clone(),
        run_id: args
            .run_id
            .clone()
            .unwrap_or_else(|| format!("{:x}", loadtest::clock::now_us() & 0xff_ffff_ffff)),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match rt.block_on(loadtest::revoke::run(probe)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest revoke: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.line());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
