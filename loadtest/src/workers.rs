//! The shards of a run, in this process or in worker processes (the binary
//! re-executed as `loadtest worker`), behind one interface: send them a
//! [`Control`], receive their [`Event`]s.
//!
//! A worker reads its [`ShardSpec`] as the first line of stdin, then one
//! [`Control`] per line; it writes one [`Event`] per line on stdout, the
//! last one `done` with its figures (histograms in HdrHistogram's V2
//! encoding, base64). When its stdin closes (the parent died) it aborts.

use crate::plan::{Control, Event, ShardSpec};
use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

enum Ctl {
    Local(mpsc::Sender<Control>),
    Remote(ChildStdin),
}

/// The running shards.
pub struct Shards {
    ctls: Vec<Ctl>,
    children: Vec<Child>,
    events: mpsc::Receiver<(usize, Event)>,
    pub len: usize,
}

impl Shards {
    /// Runs every spec in this process.
    pub fn local(specs: Vec<ShardSpec>) -> Self {
        let (tx, events) = mpsc::channel(1024);
        let mut ctls = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let (ctl_tx, ctl_rx) = mpsc::channel(16);
            let (ev_tx, mut ev_rx) = mpsc::channel(16);
            tokio::spawn(crate::shard::run(spec, ctl_rx, ev_tx));
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = ev_rx.recv().await {
                    if tx.send((i, ev)).await.is_err() {
                        break;
                    }
                }
            });
            ctls.push(Ctl::Local(ctl_tx));
        }
        let len = ctls.len();
        Shards {
            ctls,
            children: Vec::new(),
            events,
            len,
        }
    }

    /// Runs each spec in a worker process.
    pub async fn spawn(exe: PathBuf, specs: Vec<ShardSpec>) -> Result<Self> {
        let (tx, events) = mpsc::channel(1024);
        let mut ctls = Vec::new();
        let mut children = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {}", exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(&spec)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut done = false;
                while let Ok(Some(l)) = lines.next_line().await {
                    let ev = match serde_json::from_str::<Event>(&l) {
                        Ok(ev) => ev,
                        Err(e) => Event::Failed {
                            error: format!("worker {i} wrote a bad line ({e}): {l:.200}"),
                        },
                    };
                    done |= matches!(ev, Event::Done(_) | Event::Failed { .. });
                    if tx.send((i, ev)).await.is_err() {
                        return;
                    }
                }
                if !done {
                    let _ = tx
                        .send((
                            i,
                            Event::Failed {
                                error: format!("worker {i} exited without results"),
                            },
                        ))
                        .await;
                }
            });
            ctls.push(Ctl::Remote(stdin));
            children.push(child);
        }
        let len = ctls.len();
        Ok(Shards {
            ctls,
            children,
            events,
            len,
        })
    }

    /// The worker processes' pids (for the tool's own CPU figure).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    pub async fn send(&mut self, c: Control) {
        let line = serde_json::to_string(&c).unwrap_or_default() + "\n";
        for ctl in &mut self.ctls {
            match ctl {
                Ctl::Local(tx) => {
                    let _ = tx.send(c.clone()).await;
                }
                Ctl::Remote(stdin) => {
                    let _ = stdin.write_all(line.as_bytes()).await;
                    let _ = stdin.flush().await;
                }
            }
        }
    }

    pub async fn next(&mut self) -> Option<(usize, Event)> {
        self.events.recv().await
    }

    /// Waits (bounded) for the worker processes to exit.
    pub async fn reap(&mut self) {
        self.ctls.clear();
        for c in &mut self.children {
            match tokio::time::timeout(std::time::Duration::from_secs(10), c.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = c.kill().await;
                }
            }
        }
    }
}

/// `loadtest worker`: one shard, driven over stdin/stdout.
pub fn worker_main() -> Result<()> {
    let mut first = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut first)
        .context("reading the worker spec")?;
    let spec: ShardSpec = serde_json::from_str(&first).context("parsing the worker spec")?;
    crate::os::raise_nofile_limit();
    crate::clock::watchdog(spec.plan.deadline_us);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        // Controls: one per stdin line; EOF (the parent is gone) aborts.
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                if let Ok(c) = serde_json::from_str::<Control>(&line) {
                    if ctl_tx.blocking_send(c).is_err() {
                        return;
                    }
                }
            }
            let _ = ctl_tx.blocking_send(Control::Abort);
        });
        tokio::spawn(crate::shard::run(spec, ctl_rx, ev_tx));
        let mut out = std::io::stdout().lock();
        while let Some(ev) = ev_rx.recv().await {
            let last = matches!(ev, Event::Done(_) | Event::Failed { .. });
            let line = serde_json::to_string(&ev)?;
            writeln!(out, "{line}")?;
            out.flush()?;
            if last {
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Do not wait for the stdin thread.
    std::process::exit(0)
}
