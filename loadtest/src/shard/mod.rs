//! The connections of one process: connect, subscribe, send, receive and
//! check, one task per connection.
//!
//! The receive path is the hot one (it shares the cores with the server):
//! per frame it reads the type, `seq` and the body's send time with
//! [`crate::scan`], compares `seq` with the next expected one and keeps
//! counts and latencies in the task, pushing them into the shard's totals
//! every 64 frames or 250 ms, or when the parent asks (drain), so there is
//! no shared write per delivery.
//!
//! This module runs the shard: it resolves the URLs, starts the tasks,
//! passes the parent's [`Control`]s on to them and reports [`Event`]s.
//! Its parts, each using only those listed before it:
//!
//! - `stats`: the shard's totals and the reports made from them;
//! - `schedule`: the parent's word as the tasks watch it, the senders'
//!   rate and the reconnect drop;
//! - `connect`: resolving the URLs and opening one connection;
//! - `ctx`: what every task shares;
//! - `send`: a sender's messages and what is not yet acked;
//! - `conn`: one connection's checks and accounting, frame by frame;
//! - `task`: one connection's task, from connect to close.

mod conn;
mod connect;
mod ctx;
mod schedule;
mod send;
mod stats;
mod task;

/// Where the checks live since they are shared with [`crate::peers`];
/// still reachable here.
pub use crate::seqcheck::{Seen, SeqCheck};

use crate::clock::instant_at;
use crate::plan::{Control, Event, ShardSpec};
use anyhow::Result;
use connect::Dialer;
use ctx::Ctx;
use schedule::Ctl;
use stats::Stats;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use task::Task;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// Runs one shard: its connections until the parent says finish (or the
/// deadline), reporting on `events`.
pub async fn run(spec: ShardSpec, controls: mpsc::Receiver<Control>, events: mpsc::Sender<Event>) {
    if let Err(e) = run_inner(spec, controls, &events).await {
        let _ = events
            .send(Event::Failed {
                error: format!("{e:#}"),
            })
            .await;
    }
}

async fn run_inner(
    spec: ShardSpec,
    mut controls: mpsc::Receiver<Control>,
    events: &mpsc::Sender<Event>,
) -> Result<()> {
    let plan = spec.plan;
    let dialer = Dialer::new(&plan).await?;
    let deadline = instant_at(plan.deadline_us);
    let (ctl_tx, ctl_rx) = watch::channel(Ctl::default());
    let ctx = Arc::new(Ctx {
        stats: Stats::new(
            plan.rooms.len(),
            if plan.protocol.is_peer() {
                plan.senders
            } else {
                0
            },
        ),
        ctl: ctl_rx,
        dialer,
        deadline,
        plan,
    });

    let mut tasks = JoinSet::new();
    for idx in spec.first..spec.first + spec.count {
        tasks.spawn(Task::new(ctx.clone(), idx).run());
    }

    let mut progress = tokio::time::interval(Duration::from_millis(250));
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let count = spec.count as u64;
    let mut ready = false;
    let mut aborted = false;
    loop {
        let st = &ctx.stats;
        if !ready && st.subscribed.load(Relaxed) + st.failed.load(Relaxed) >= count {
            ready = true;
            if events.send(Event::Ready(st.ready())).await.is_err() {
                aborted = true;
                break;
            }
        }
        tokio::select! {
            c = controls.recv() => match c {
                Some(Control::Go { at_us }) => ctl_tx.send_modify(|c| c.go_us = Some(at_us)),
                Some(Control::Flush) => ctl_tx.send_modify(|c| c.flush += 1),
                Some(Control::Finish { max_seq }) => {
                    ctl_tx.send_modify(|c| c.finish = Some(Arc::new(max_seq)));
                    break;
                }
                Some(Control::Abort) | None => {
                    aborted = true;
                    break;
                }
            },
            _ = progress.tick() => {
                if events.send(Event::Progress(Box::new(st.snapshot()))).await.is_err() {
                    aborted = true;
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                aborted = true;
                break;
            }
        }
    }
    if aborted {
        ctl_tx.send_modify(|c| c.abort = true);
    }

    // Every task flushes, counts its losses and closes its socket.
    let mut stuck = 0;
    let all_done = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if all_done.is_err() {
        stuck = tasks.len() as u64;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let result = ctx.stats.result(stuck);
    let _ = events.send(Event::Done(Box::new(result))).await;
    Ok(())
}
