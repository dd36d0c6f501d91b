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
