//! `loadtest`: the chat backend's load generator, as a library (the binary
//! is a thin `main`; tests call [`run`]).
//!
//! A run: sign up a pool of users and create the rooms over REST
//! ([`setup`]), open the connections in one or more shards
//! ([`shard`], in this process or in worker processes: [`workers`]), wait
//! until every connection is subscribed, start the senders at one instant,
//! print progress every second, drain, then have every connection count
//! what it is missing against its room's highest acked seq, and merge the
//! shards' figures into a [`Report`].
//!
//! ## Modules, in dependency order
//!
//! Each module uses only modules listed before it, so there is no import
//! cycle:
//!
//! 1. leaves, using no other module: [`args`], [`clock`], [`hist`],
//!    [`os`], [`procfs`], [`scan`], [`seqcheck`];
//! 2. [`plan`] (args, hist), [`report`] (hist), [`ws`] (os, scan),
//!    [`peers`] (args, scan, seqcheck);
//! 3. [`setup`] and `merge` (plan);
//! 4. [`shard`] (clock, hist, os, peers, plan, scan, seqcheck, ws; its
//!    own parts are ordered in its docs);
//! 5. [`workers`] (clock, os, plan, shard); [`revoke`] (os, ws);
//!    [`ceiling`] (report);
//! 6. this root, [`run`] and [`find_max`]: all of them. `main` calls the
//!    root, [`os`] and [`clock`].

pub mod args;
pub mod ceiling;
pub mod clock;
pub mod hist;
mod merge;
pub mod os;
pub mod peers;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod revoke;
pub mod scan;
pub mod seqcheck;
pub mod setup;
pub mod shard;
pub mod workers;
pub mod ws;

pub use args::{Args, Protocol, Scenario};
pub use report::Report;

use anyhow::{anyhow, bail, Context, Result};
use clock::now_us;
use hist::Hist;
use merge::{merge_map, Agg};
use plan::{Control, Plan, ShardSpec, Snapshot};
use procfs::Sampler;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `http://host:port` (REST) and `ws://host:port/ws` for each --url.
pub fn parse_urls(urls: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    parse_urls_with(urls, "/ws")
}

/// Like [`parse_urls`], with `default_path` for a URL without a path.
pub fn parse_urls_with(urls: &[String], default_path: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut bases = Vec::new();
    let mut ws = Vec::new();
    for u in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        let (scheme, rest) = u.split_once("://").unwrap_or(("http", u));
        if !matches!(scheme, "http" | "ws") {
            bail!("{u}: only http:// and ws:// URLs are supported (no TLS)");
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() {
            bail!("{u}: no host");
        }
        let path = if path.is_empty() || path == "/" {
            default_path
        } else {
            path
        };
        bases.push(format!("http://{host}"));
        ws.push(format!("ws://{host}{path}"));
    }
    if bases.is_empty() {
        bail!("--url: give at least one server URL");
    }
    Ok((bases, ws))
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(80)
}

fn make_run_id() -> String {
    let mut n = (now_us() / 1000) ^ (u64::from(std::process::id()) << 40);
    let mut s = String::new();
    for _ in 0..8 {
        let d = (n % 36) as u32;
        s.push(std::char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    s
}

fn validate(a: &Args) -> Result<()> {
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if a.scenario != Scenario::Idle && !(a.rate > 0.0 && a.rate.is_finite()) {
        bail!("--rate must be a positive number of messages per second");
    }
    if !(1..=4000).contains(&a.body_bytes) {
        bail!("--body-bytes must be 1 to 4000 (the server's body limit)");
    }
    if let Some(id) = &a.run_id {
        if id.is_empty() || id.len() > 16 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("--run-id must be 1 to 16 letters or digits");
        }
    }
    if a.protocol.is_peer() && !matches!(a.scenario, Scenario::Room | Scenario::Idle) {
        bail!(
            "--protocol {}: only the room and idle scenarios run against a peer \
             (it has no rooms API for `rooms` and no resume for `reconnect`)",
            a.protocol.name()
        );
    }
    if !(0.0..=1.0).contains(&a.min_ack_ratio) {
        bail!("--min-ack-ratio must be from 0 to 1");
    }
    if !(a.ack_grace >= 0.0 && a.ack_grace.is_finite()) {
        bail!("--ack-grace must be 0 or more seconds");
    }
    if a.find_max {
        if a.scenario == Scenario::Idle {
            bail!("--find-max: the idle scenario sends nothing, it has no rate to find");
        }
        if !(a.find_max_factor > 1.0 && a.find_max_factor.is_finite()) {
            bail!("--find-max-factor must be above 1");
        }
        if !(1..=99).contains(&a.find_max_steps) {
            bail!("--find-max-steps must be 1 to 99");
        }
        if !(a.find_max_precision > 0.0 && a.find_max_precision.is_finite()) {
            bail!("--find-max-precision must be above 0");
        }
        if !(a.find_max_pause >= 0.0 && a.find_max_pause.is_finite()) {
            bail!("--find-max-pause must be 0 or more seconds");
        }
    }
    if let Some(d) = a.disconnect_after {
        if d < 0.0 || d >= a.duration {
            bail!("--disconnect-after must be within --duration");
        }
    }
    Ok(())
}

/// Runs one scenario and returns its figures. Progress goes to stderr
/// unless `quiet`.
pub async fn run(args: Args) -> Result<Report> {
    validate(&args)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.deadline_secs());
    let deadline_us = now_us() + (args.deadline_secs() * 1e6) as u64;
    let nofile = os::raise_nofile_limit();
    let run_id = args.run_id.clone().unwrap_or_else(make_run_id);
    let proto = args.protocol;
    let channel = proto.channel(&run_id);
    let (bases, ws_urls) =
        parse_urls_with(&args.url, &proto.default_path(&channel, &args.pusher_key))?;
    let quiet = args.quiet;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };

    let n = args.connections;
    let (users, rooms, senders) = if proto.is_peer() {
        (0, 1, args.senders())
    } else {
        (args.users(), args.rooms(), args.senders())
    };
    let say_start = || {
        say(format!(
            "loadtest {}{}: run {run_id}, {n} connections, {users} users, {rooms} rooms, {senders} senders, {} msg/s for {} s",
            args.scenario.name(),
            if proto.is_peer() { format!(" --protocol {}", proto.name()) } else { String::new() },
            args.rate,
            args.duration
        ))
    };
    let made = if proto.is_peer() {
        // A peer: no accounts, one channel, reachable or not.
        peers::check_reachable(&bases).await?;
        say_start();
        setup::Made {
            tokens: vec![String::new()],
            rooms: vec![channel],
            joins: 0,
            took: Duration::ZERO,
        }
    } else {
        let rest = setup::Rest::new(bases.clone(), &setup::sources(&bases, args.source_ips))?;
        rest.check().await?;
        say_start();
        tokio::time::timeout_at(
            deadline.into(),
            setup::run(
                &rest,
                &setup::Want {
                    run_id: &run_id,
                    password: &args.password,
                    users,
                    rooms,
                    connections: n,
                    concurrency: args.setup_concurrency,
                    quiet,
                },
            ),
        )
        .await
        .map_err(|_| anyhow!("hard deadline reached during setup"))??
    };

    // The server's processes.
    let server_pids = if args.server_pid.is_empty() {
        let mut pids: Vec<u32> = bases
            .iter()
            .flat_map(|b| procfs::pids_listening_on(port_of(b)))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    } else {
        args.server_pid.clone()
    };
    if server_pids.is_empty() {
        say("server: no process found listening on the URL's port; RSS and CPU not sampled (--server-pid)".into());
    }
    let per_server = n.div_ceil(server_pids.len().max(1)) as u64;
    for &pid in &server_pids {
        if let Some(lim) = procfs::max_open_files(pid) {
            if per_server + 64 > lim {
                say(format!(
                    "warning: server pid {pid} may hold at most {lim} open files, fewer than the ~{per_server} connections it is to get"
                ));
            }
        }
    }
    let mut server = Sampler::new(server_pids.clone());
    let baseline = server.sample();

    let plan = Plan {
        run_id: run_id.clone(),
        scenario: args.scenario,
        protocol: proto,
        pusher_key: args.pusher_key.clone(),
        pusher_secret: args.pusher_secret.clone(),
        ws_urls: ws_urls.clone(),
        connections: n,
        rooms: made.rooms.clone(),
        tokens: made.tokens.clone(),
        senders,
        rate: args.rate,
        body_bytes: args.body_bytes,
        duration_s: args.duration,
        ack_grace_s: args.ack_grace,
        disconnect_after_s: args.disconnect_after_secs(),
        source_ips: args.source_ips,
        connect_concurrency: args.connect_concurrency,
        connect_timeout_s: args.connect_timeout,
        read_buffer: args.read_buffer,
        deadline_us,
    };

    // One process or several.
    // Headroom for the files a process needs besides its sockets.
    let headroom = (nofile / 16).clamp(32, 256);
    let cap = args
        .max_conns_per_process
        .min(nofile.saturating_sub(headroom) as usize)
        .max(1);
    let procs = args
        .processes
        .unwrap_or(if n <= cap { 0 } else { n.div_ceil(cap) });
    if procs == 0 && n > cap {
        bail!(
            "open file limit: this process may hold {nofile} open files, too few for {n} connections; \
             use --processes {} (or leave --processes unset)",
            n.div_ceil(cap)
        );
    }
    let shard_count = procs.max(1);
    let threads = if procs > 1 {
        (args.threads / procs).max(1)
    } else {
        args.threads.max(1)
    };
    let specs: Vec<ShardSpec> = (0..shard_count)
        .map(|s| {
            let first = n * s / shard_count;
            let end = n * (s + 1) / shard_count;
            ShardSpec {
                plan: plan.clone(),
                first,
                count: end - first,
                threads,
            }
        })
        .filter(|s| s.count > 0)
        .collect();
    let connect_start = Instant::now();
    let mut shards = if procs == 0 {
        workers::Shards::local(specs)
    } else {
        let exe = match &args.worker_exe {
            Some(p) => p.clone(),
            None => {
                std::env::current_exe().context("cannot find this executable for the workers")?
            }
        };
        say(format!(
            "spreading {n} connections over {procs} worker processes (at most {cap} per process)"
        ));
        workers::Shards::spawn(exe, specs).await?
    };
    let mut me = Sampler::new({
        let mut p = vec![std::process::id()];
        p.extend(shards.pids());
        p
    });

    let result = drive(
        &args,
        &mut shards,
        &mut server,
        &mut me,
        deadline,
        &say,
        connect_start,
    )
    .await;
    if result.is_err() {
        shards.send(Control::Abort).await;
    }
    shards.reap().await;
    let (agg, t) = result?;

    // Merge.
    let total = agg.total();
    let mut r = Report {
        scenario: args.scenario.name().into(),
        protocol: proto.name().into(),
        run_id,
        urls: bases,
        processes: procs as u64,
        users: users as u64,
        rooms: rooms as u64,
        senders: senders as u64,
        rate: if args.scenario == Scenario::Idle {
            0.0
        } else {
            args.rate
        },
        duration_s: args.duration,
        ack_grace_s: args.ack_grace,
        min_ack_ratio: args.min_ack_ratio,
        connections_requested: n as u64,
        setup_s: made.took.as_secs_f64(),
        connect_s: t.connect_s,
        window_s: t.window_s,
        server_pids,
        server_rss_bytes_baseline: baseline.map_or(0, |b| b.rss),
        server_rss_bytes_max: server.rss_max,
        server_cpu_percent: t.server_cpu,
        loadtest_cpu_percent: t.own_cpu,
        connections_open_at_end: t.open_at_end,
        ..Report::default()
    };
    let mut recovery = Hist::new();
    for rd in agg.ready.iter().flatten() {
        r.connections_held += rd.subscribed;
        r.connect_failures += rd.failed;
        merge_map(&mut r.connect_errors, &rd.connect_errors);
    }
    for d in agg.done.iter().flatten() {
        r.lost += d.lost;
        r.stuck_tasks += d.stuck;
        recovery.merge(&d.recovery);
        merge_map(&mut r.closes, &d.closes);
        merge_map(&mut r.send_error_codes, &d.send_error_codes);
        merge_map(&mut r.reconnect_errors, &d.reconnect_errors);
    }
    r.sent = total.sent;
    r.acked = total.acked;
    r.acked_on_time = total.acked_on_time;
    r.on_time_acks_per_s = total.acked_on_time as f64 / args.duration;
    r.send_errors = total.send_errors;
    r.unacked = total.sent.saturating_sub(total.acked + total.send_errors);
    r.expected_deliveries = agg.expected(&total.acked_per_room);
    r.delivered = total.delivered;
    r.frames_received = total.frames;
    r.socket_reads = total.reads;
    if total.reads > 0 {
        r.frames_per_read = total.frames as f64 / total.reads as f64;
    }
    r.duplicated = total.duplicated;
    r.out_of_order = total.out_of_order;
    r.reconnects = total.reconnects;
    r.latency_ms = total.latency.summary();
    r.ack_latency_ms = total.ack_latency.summary();
    if args.scenario == Scenario::Reconnect || total.reconnects > 0 {
        r.recovery_ms = Some(recovery.summary());
    }
    if t.window_s > 0.0 {
        r.deliveries_per_s = r.delivered as f64 / t.window_s;
        r.acks_per_s = r.acked as f64 / t.window_s;
    }
    if r.connections_held > 0 && r.server_rss_bytes_max > r.server_rss_bytes_baseline {
        r.server_rss_per_conn_bytes =
            (r.server_rss_bytes_max - r.server_rss_bytes_baseline) / r.connections_held;
    }
    r.elapsed_s = started.elapsed().as_secs_f64();
    r.check();
    Ok(r)
}

/// `--find-max`: runs the scenario at the rates [`ceiling::search`] picks,
/// each step a fresh run (its own run id, so its own users and rooms),
/// `--find-max-pause` seconds apart; `on_step` sees each step as it ends.
pub async fn find_max(
    args: Args,
    on_step: &mut dyn FnMut(&ceiling::Step),
) -> Result<ceiling::FindMax> {
    validate(&args)?;
    let search = ceiling::Search {
        start: args.rate,
        factor: args.find_max_factor,
        max_steps: args.find_max_steps,
        precision: args.find_max_precision,
    };
    // A run id is at most 16 characters: room for the step number.
    let base: String = args
        .run_id
        .clone()
        .unwrap_or_else(make_run_id)
        .chars()
        .take(13)
        .collect();
    let pause = Duration::from_secs_f64(args.find_max_pause);
    let args = &args;
    let base = &base;
    ceiling::search(
        args.scenario.name(),
        search,
        |rate, step| async move {
            if step > 1 {
                tokio::time::sleep(pause).await;
            }
            let mut a = args.clone();
            a.rate = rate;
            a.run_id = Some(format!("{base}s{step}"));
            run(a).await
        },
        on_step,
    )
    .await
}

/// Timings `drive` measured.
struct Times {
    connect_s: f64,
    window_s: f64,
    server_cpu: f64,
    own_cpu: f64,
    /// Connections open when the drain ended (before the final close).
    open_at_end: u64,
}

/// From connecting to the shards' final figures.
async fn drive(
    args: &Args,
    shards: &mut workers::Shards,
    server: &mut Sampler,
    me: &mut Sampler,
    deadline: Instant,
    say: &dyn Fn(String),
    connect_start: Instant,
) -> Result<(Agg, Times)> {
    let mut agg = Agg::new(shards.len, args.protocol.echoes_sender());
    let n = args.connections as u64;
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    second.tick().await;

    // 1. Every connection subscribed (or failed).
    while agg.ready.iter().any(Option::is_none) {
        tokio::select! {
            ev = shards.next() => {
                let (i, ev) = ev.ok_or_else(|| anyhow!("the shards stopped"))?;
                agg.take(i, ev)?;
            }
            _ = second.tick() => {
                server.sample();
                let t = agg.total();
                say(format!(
                    "[{:6.1}s] connecting: {} subscribed, {} failed of {n}",
                    connect_start.elapsed().as_secs_f64(), t.subscribed, t.failed
                ));
            }
            () = tokio::time::sleep_until(deadline.into()) => bail!("hard deadline reached while connecting"),
        }
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let held: u64 = agg.ready.iter().flatten().map(|r| r.subscribed).sum();
    let failed: u64 = agg.ready.iter().flatten().map(|r| r.failed).sum();
    say(format!(
        "connected: {held} of {n} subscribed in {connect_s:.1}s ({failed} failed)"
    ));
    if failed > 0 {
        let mut errors = BTreeMap::new();
        for r in agg.ready.iter().flatten() {
            merge_map(&mut errors, &r.connect_errors);
        }
        for (e, c) in &errors {
            say(format!("  {c} × {e}"));
        }
    }
    if held == 0 {
        bail!("no connection could be made and subscribed");
    }

    // 2. Send (or hold).
    let idle = args.scenario == Scenario::Idle;
    let go_us = now_us() + 300_000;
    let go = Instant::now() + Duration::from_micros(300_000);
    if !idle {
        shards.send(Control::Go { at_us: go_us }).await;
    }
    tokio::time::sleep_until(go.into()).await;
    let s0 = server.sample();
    let m0 = me.sample();
    let send_end = go + Duration::from_secs_f64(args.duration);
    let mut last = agg.total();
    let mut last_at = Instant::now();
    let progress = |agg: &Agg, last: &Snapshot, secs: f64, server: &mut Sampler| {
        let t = agg.total();
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs.max(1e-3);
        let srv = server.sample().map_or(String::new(), |s| {
            format!(" | server rss {:.1} MiB", report::mib(s.rss))
        });
        if idle {
            return format!(
                "[{:6.1}s] open {} | reconnects {}{srv}",
                go.elapsed().as_secs_f64(),
                t.open,
                t.reconnects
            );
        }
        format!(
            "[{:6.1}s] open {} | sent {:.0}/s acked {:.0}/s | delivered {:.0}/s | p99 {:.2} ms (ack {:.2}) | pending {} dup {} ooo {} reconnects {}{srv}",
            go.elapsed().as_secs_f64(),
            t.open,
            rate(t.sent, last.sent),
            rate(t.acked, last.acked),
            rate(t.delivered, last.delivered),
            t.latency.quantile_ms(0.99),
            t.ack_latency.quantile_ms(0.99),
            t.sent.saturating_sub(t.acked + t.send_errors),
            t.duplicated,
            t.out_of_order,
            t.reconnects,
        )
    };
    while Instant::now() < send_end {
        tokio::select! {
            ev = shards.next() => {
                let (i, ev) = ev.ok_or_else(|| anyhow!("the shards stopped"))?;
                agg.take(i, ev)?;
            }
            _ = second.tick() => {
                say(progress(&agg, &last, last_at.elapsed().as_secs_f64(), server));
                last = agg.total();
                last_at = Instant::now();
            }
            () = tokio::time::sleep_until(send_end.into()) => {}
            () = tokio::time::sleep_until(deadline.into()) => bail!("hard deadline reached while sending"),
        }
    }

    // 3. Drain: until every sent message is acked (or refused) and every
    // expected delivery arrived; or nothing new for --drain seconds; or
    // --drain-max.
    let mut window_end = Instant::now();
    if !idle {
        let drain_start = Instant::now();
        let drain_max = drain_start + Duration::from_secs_f64(args.drain_max.max(0.0));
        let quiet_for = Duration::from_secs_f64(args.drain.max(0.0));
        let mut moved_at = drain_start;
        let mut seen = (0, 0);
        let mut flush = tokio::time::interval(Duration::from_millis(250));
        // The figures lag the shards by up to two reports: the last sends
        // may not be counted yet when everything counted is acked.
        let mut settle = clock::Settle::new(Duration::from_millis(600));
        loop {
            let t = agg.total();
            let pending = t.sent.saturating_sub(t.acked + t.send_errors);
            let expected = agg.expected(&t.acked_per_room);
            if let Some(since) =
                settle.observe(pending == 0 && t.delivered >= expected, Instant::now())
            {
                window_end = since;
                break;
            }
            if (t.delivered, t.acked + t.send_errors) != seen {
                seen = (t.delivered, t.acked + t.send_errors);
                moved_at = Instant::now();
            }
            let now = Instant::now();
            if now >= drain_max || now.duration_since(moved_at) >= quiet_for {
                say(format!(
                    "drain: gave up after {:.1}s ({}) with {pending} unacked and {} of {expected} delivered",
                    now.duration_since(drain_start).as_secs_f64(),
                    if now >= drain_max { "--drain-max" } else { "nothing new for --drain seconds" },
                    t.delivered
                ));
                // The window ends with the last thing that arrived.
                window_end = moved_at;
                break;
            }
            tokio::select! {
                ev = shards.next() => {
                    let (i, ev) = ev.ok_or_else(|| anyhow!("the shards stopped"))?;
                    agg.take(i, ev)?;
                }
                _ = flush.tick() => shards.send(Control::Flush).await,
                _ = second.tick() => {
                    say(progress(&agg, &last, last_at.elapsed().as_secs_f64(), server));
                    last = agg.total();
                    last_at = Instant::now();
                }
            }
        }
    }
    let s1 = server.sample();
    let m1 = me.sample();
    let window_s = if idle {
        args.duration
    } else {
        window_end.duration_since(go).as_secs_f64()
    };

    // 4. Count what is missing, close, collect.
    let total = agg.total();
    let open_at_end = total.open;
    let max_seq = if args.protocol.is_peer() {
        total.max_n_per_sender
    } else {
        total.max_seq_per_room
    };
    shards.send(Control::Finish { max_seq }).await;
    let collect_end = Instant::now() + Duration::from_secs(60);
    while agg.done.iter().any(Option::is_none) {
        tokio::select! {
            ev = shards.next() => {
                let (i, ev) = ev.ok_or_else(|| anyhow!("the shards stopped before reporting"))?;
                agg.take(i, ev)?;
            }
            () = tokio::time::sleep_until(collect_end.into()) => bail!("the shards did not report within 60 s of finishing"),
        }
    }
    Ok((
        agg,
        Times {
            connect_s,
            window_s,
            server_cpu: procfs::cpu_percent(s0, s1).unwrap_or(0.0),
            own_cpu: procfs::cpu_percent(m0, m1).unwrap_or(0.0),
            open_at_end,
        },
    ))
}
