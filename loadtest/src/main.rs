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
    let mut deadline_s = args.deadline_secs();
    if args.find_max {
        deadline_s = (deadline_s + args.find_max_pause) * args.find_max_steps as f64;
    }
    loadtest::clock::watchdog(loadtest::clock::now_us() + (deadline_s * 1e6) as u64);
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
    if args.find_max {
        let code = find_max(&rt, args);
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        return code;
    }
    let report = match rt.block_on(loadtest::run(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = json {
        if let Err(code) = write_json(&path, &report) {
            return code;
        }
    }
    // Connections are closed; do not wait for stray tasks.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if report.passed_allowing(allow_loss) {
        ExitCode::SUCCESS
    } else {
        eprintln!("loadtest: FAIL: {}", report.failures.join("; "));
        ExitCode::from(1)
    }
}

/// `--find-max`: a line per step, then the ceiling's table and the
/// ceiling. Exit 0 when a rate passed.
fn find_max(rt: &tokio::runtime::Runtime, args: Args) -> ExitCode {
    let json = args.json.clone();
    let max_steps = args.find_max_steps;
    let found = rt.block_on(loadtest::find_max(args, &mut |step| {
        println!("{}", step.line(max_steps));
    }));
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(c) = &found.ceiling {
        print!("{}", c.report.table());
    }
    println!("{}", found.summary());
    if let Some(path) = json {
        if let Err(code) = write_json(&path, &found) {
            return code;
        }
    }
    if found.ceiling.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<(), ExitCode> {
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        eprintln!("loadtest: cannot encode the results: {e}");
        ExitCode::from(2)
    })?;
    std::fs::write(path, text + "\n").map_err(|e| {
        eprintln!("loadtest: cannot write {}: {e}", path.display());
        ExitCode::from(2)
    })
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
