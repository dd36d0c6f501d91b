//! `loadtest revoke`: are revoked sessions cut off everywhere, whatever
//! is failing at the time?
//!
//! Signs up `--users` users (one session each), opens one WebSocket per
//! user through `--url` (a load balancer spreads them over the gateways)
//! and keeps it open like a real client: answers pings, reconnects with
//! its access token when the connection drops. After `--logout-after`
//! seconds every user logs out (retried until the server answers 204, as a
//! client would); from each one's logout on, its socket must end: closed
//! with 4001, or, when it dropped for another reason, its reconnect
//! refused with 401. After `--watch` more seconds the sockets still open
//! are counted: a revoked session that can still read and send.
//!
//! The chaos harness (`loadtest/chaos.sh`) runs it beside each fault so
//! the logout happens while the fault is on.

use crate::os::io_reason;
use crate::ws::{Frame, WsConn};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Client, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What `loadtest revoke` is to do.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `http://host:port` of the server or load balancer.
    pub url: String,
    pub users: usize,
    pub logout_after: Duration,
    pub watch: Duration,
    pub password: String,
    pub run_id: String,
}

/// What it found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RevokeReport {
    pub users: usize,
    /// Sockets open when the logouts started.
    pub open_at_logout: usize,
    /// Logouts answered 204 (the others could not be made in time).
    pub logged_out: usize,
    /// Logout attempts refused or failed before one succeeded.
    pub logout_retries: u64,
    /// Sockets closed with 4001 after their session's logout.
    pub closed_4001: usize,
    /// Sockets that dropped otherwise and whose reconnect was refused.
    pub refused_on_reconnect: usize,
    /// Sockets that dropped and could not reach the server again by the end.
    pub unreachable: usize,
    /// Revoked sessions whose socket was still open at the end (must be 0).
    pub still_open: usize,
    /// Logout → cut off, in milliseconds (the slowest).
    pub cutoff_ms_max: u64,
    /// The median of the same.
    pub cutoff_ms_median: u64,
    /// Reasons sockets dropped or could not reconnect (by code or error).
    pub drops: BTreeMap<String, u64>,
    pub passed: bool,
}

struct User {
    access: String,
}

/// How a revoked session's socket was cut off.
enum How {
    /// Closed with 4001.
    Closed,
    /// It dropped otherwise and its reconnect was refused with 401.
    Refused,
    /// It dropped and the server could not be reached again before the
    /// end (not a revoked socket that still works, but not proof either).
    Unreachable,
}

/// How one user's socket ended up.
enum Outcome {
    Cut {
        after: Duration,
        how: How,
    },
    StillOpen,
    /// The logout itself never succeeded.
    NotLoggedOut,
}

/// What every user's task shares.
struct Shared {
    http: Client,
    base: String,
    addr: SocketAddr,
    open: AtomicUsize,
    drops: Mutex<BTreeMap<String, u64>>,
    retries: Arc<AtomicU64>,
}

pub async fn run(p: Probe) -> Result<RevokeReport> {
    let http = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("http client")?;
    let base = p.url.trim_end_matches('/').to_string();
    let addr = resolve(&base).await?;
    let mut users = Vec::with_capacity(p.users);
    for i in 0..p.users {
        let username = format!("rv{}_{i}", p.run_id);
        let body = json!({"username": username, "password": p.password});
        let r = http
            .post(format!("{base}/api/v1/auth/signup"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("signup of {username}"))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("signup of {username}: {status} {v}");
        }
        let access = v["access_token"]
            .as_str()
            .ok_or_else(|| anyhow!("signup of {username}: no access_token"))?
            .to_owned();
        users.push(User { access });
    }
    let logout_at = tokio::time::Instant::now() + p.logout_after;
    let end = logout_at + p.watch;
    let ctx = Arc::new(Shared {
        http,
        base,
        addr,
        open: AtomicUsize::new(0),
        drops: Mutex::default(),
        retries: Arc::default(),
    });
    let tasks = users.into_iter().map(|u| {
        let ctx = ctx.clone();
        tokio::spawn(async move { one_user(&ctx, u, logout_at, end).await })
    });
    let open_at_logout = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(logout_at).await;
            ctx.open.load(Relaxed)
        })
    };
    let outcomes = futures_util::future::join_all(tasks).await;
    let mut r = RevokeReport {
        users: p.users,
        open_at_logout: open_at_logout.await.unwrap_or(0),
        logout_retries: ctx.retries.load(Relaxed),
        ..RevokeReport::default()
    };
    let mut cut = Vec::new();
    for o in outcomes {
        match o {
            Ok(Outcome::Cut { after, how }) => {
                r.logged_out += 1;
                match how {
                    How::Closed => r.closed_4001 += 1,
                    How::Refused => r.refused_on_reconnect += 1,
                    How::Unreachable => r.unreachable += 1,
                }
                cut.push(after.as_millis() as u64);
            }
            Ok(Outcome::StillOpen) => {
                r.logged_out += 1;
                r.still_open += 1;
            }
            Ok(Outcome::NotLoggedOut) => {}
            Err(e) => *r.drops.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    cut.sort_unstable();
    r.cutoff_ms_max = cut.last().copied().unwrap_or(0);
    r.cutoff_ms_median = cut.get(cut.len() / 2).copied().unwrap_or(0);
    if let Ok(d) = ctx.drops.lock() {
        r.drops.extend(d.iter().map(|(k, v)| (k.clone(), *v)));
    }
    r.passed = r.still_open == 0 && r.logged_out == r.users;
    Ok(r)
}

/// Where a user's logout is.
#[derive(Clone, Copy, Default)]
struct Logout {
    /// When the attempt that succeeded (or the one under way) was sent: a
    /// 4001 can arrive before the 204 does.
    sent: Option<Instant>,
    /// Answered 204.
    done: bool,
}

/// The user's logout, made at `logout_at` whatever its socket is doing
/// (retried until 204), reported on the watch.
fn spawn_logout(
    http: Client,
    base: String,
    access: String,
    logout_at: tokio::time::Instant,
    end: tokio::time::Instant,
    retries: Arc<AtomicU64>,
) -> watch::Receiver<Logout> {
    let (tx, rx) = watch::channel(Logout::default());
    tokio::spawn(async move {
        tokio::time::sleep_until(logout_at).await;
        let ok = logout(&http, &base, &access, end, &retries, |at| {
            let _ = tx.send(Logout {
                sent: Some(at),
                done: false,
            });
        })
        .await;
        if ok {
            tx.send_modify(|l| l.done = true);
        }
        // Keep the sender until the end so the receiver never sees it gone.
        tokio::time::sleep_until(end).await;
    });
    rx
}

async fn one_user(
    ctx: &Shared,
    u: User,
    logout_at: tokio::time::Instant,
    end: tokio::time::Instant,
) -> Outcome {
    let note = |why: String| {
        if let Ok(mut d) = ctx.drops.lock() {
            *d.entry(why).or_default() += 1;
        }
    };
    let mut logged_out = spawn_logout(
        ctx.http.clone(),
        ctx.base.clone(),
        u.access.clone(),
        logout_at,
        end,
        ctx.retries.clone(),
    );
    let since = |rx: &watch::Receiver<Logout>| rx.borrow().sent.map(|t| t.elapsed());
    let done = |rx: &watch::Receiver<Logout>| rx.borrow().done;
    let mut ws: Option<WsConn> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if tokio::time::Instant::now() >= end {
            return match (since(&logged_out), ws.is_some()) {
                (None, _) => Outcome::NotLoggedOut,
                _ if !done(&logged_out) => Outcome::NotLoggedOut,
                (Some(_), true) => Outcome::StillOpen,
                // Dropped and unable to reconnect for another reason (the
                // server was unreachable): not a revoked socket that works.
                (Some(after), false) => Outcome::Cut {
                    after,
                    how: How::Unreachable,
                },
            };
        }
        let Some(sock) = ws.as_mut() else {
            match connect(ctx.addr, &ctx.base, &u.access).await {
                Ok(c) => {
                    ctx.open.fetch_add(1, Relaxed);
                    ws = Some(c);
                    backoff = Duration::from_millis(100);
                }
                Err(e) if e.contains("HTTP 401") && since(&logged_out).is_some() => {
                    return Outcome::Cut {
                        after: since(&logged_out).unwrap_or_default(),
                        how: How::Refused,
                    };
                }
                Err(e) => {
                    note(e);
                    let left = end.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            continue;
        };
        tokio::select! {
            _ = logged_out.changed() => {}
            () = tokio::time::sleep_until(end) => {}
            r = sock.read() => {
                let mut close = match r {
                    Ok(0) | Err(_) => Some(1006),
                    Ok(_) => None,
                };
                let mut pong = None;
                while close.is_none() {
                    match sock.next_frame() {
                        Ok(Some(Frame::Close(code))) => close = Some(code),
                        Ok(Some(Frame::Ping(p))) => pong = Some(p.to_vec()),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => close = Some(1002),
                    }
                }
                if let Some(code) = close {
                    ws = None;
                    ctx.open.fetch_sub(1, Relaxed);
                    if let (4001, Some(after)) = (code, since(&logged_out)) {
                        // Counted once the logout is answered 204.
                        if done(&logged_out) || wait_done(&mut logged_out, end).await {
                            return Outcome::Cut { after, how: How::Closed };
                        }
                        return Outcome::NotLoggedOut;
                    }
                    note(format!("closed {code}"));
                } else if let Some(p) = pong {
                    sock.queue_pong(&p);
                    if sock.flush().await.is_err() {
                        ws = None;
                        ctx.open.fetch_sub(1, Relaxed);
                        note("closed 1006".into());
                    }
                }
            }
        }
    }
}

/// Waits for the logout under way to be answered 204 (false: it was not
/// by `end`).
async fn wait_done(rx: &mut watch::Receiver<Logout>, end: tokio::time::Instant) -> bool {
    let until = tokio::time::timeout_at(end, rx.wait_for(|l| l.done)).await;
    matches!(until, Ok(Ok(_)))
}

/// Logs the session out, retrying until 204 or `end` (`sending` hears of
/// each attempt as it goes out); false when it could not.
async fn logout(
    http: &Client,
    base: &str,
    access: &str,
    end: tokio::time::Instant,
    retries: &AtomicU64,
    sending: impl Fn(Instant),
) -> bool {
    while tokio::time::Instant::now() < end {
        sending(Instant::now());
        let r = http
            .post(format!("{base}/api/v1/auth/logout"))
            .bearer_auth(access)
            .json(&json!({}))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => return true,
            _ => {
                retries.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    false
}

async fn connect(addr: SocketAddr, base: &str, token: &str) -> Result<WsConn, String> {
    let host = base
        .split_once("://")
        .map_or(base, |(_, h)| h)
        .trim_end_matches('/');
    let attempt = async {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| io_reason("connect", &e))?;
        WsConn::handshake(s, host, "/ws", token, 4096).await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r,
        Err(_) => Err("connect + handshake timed out".into()),
    }
}

async fn resolve(base: &str) -> Result<SocketAddr> {
    let host = base
        .split_once("://")
        .map(|(_, h)| h)
        .ok_or_else(|| anyhow!("{base}: expected http://host:port"))?;
    tokio::net::lookup_host(host)
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host}: no address"))
}

impl RevokeReport {
    /// One line for humans.
    pub fn line(&self) -> String {
        format!(
            "revoke: {} users, {} open at logout, {} logged out ({} retries); cut off: {} by 4001, {} refused on reconnect, {} unreachable; still open {}; cut-off ms median {} max {}",
            self.users,
            self.open_at_logout,
            self.logged_out,
            self.logout_retries,
            self.closed_4001,
            self.refused_on_reconnect,
            self.unreachable,
            self.still_open,
            self.cutoff_ms_median,
            self.cutoff_ms_max
        )
    }
}
