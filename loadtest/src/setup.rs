//! Setup over REST: users (signed up, or logged in if they exist), rooms,
//! memberships; many requests in flight so setup is not the bottleneck.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The REST side of the server(s).
#[derive(Clone)]
pub struct Rest {
    /// One client per source address (one in all when the server is not
    /// on loopback): the server limits signups per client address, and
    /// the run's users come from as many addresses as its connections.
    clients: Vec<Client>,
    /// `http://host:port`, one per --url.
    pub bases: Vec<String>,
}

impl Rest {
    /// Clients from `sources` (none: the kernel picks the address).
    pub fn new(bases: Vec<String>, sources: &[IpAddr]) -> Result<Self> {
        let build = |from: Option<IpAddr>| {
            Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .local_address(from)
                .build()
        };
        let clients = if sources.is_empty() {
            vec![build(None)?]
        } else {
            sources
                .iter()
                .map(|s| build(Some(*s)))
                .collect::<reqwest::Result<_>>()?
        };
        Ok(Rest { clients, bases })
    }

    /// The client of the first source address.
    pub fn client(&self) -> &Client {
        &self.clients[0]
    }

    fn base(&self, i: usize) -> &str {
        &self.bases[i % self.bases.len()]
    }

    /// Fails clearly when a server does not answer.
    pub async fn check(&self) -> Result<()> {
        for base in &self.bases {
            let r = self
                .client()
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .with_context(|| format!("cannot reach the server at {base}"))?;
            if !r.status().is_success() {
                bail!("{base}/healthz answered {}", r.status());
            }
        }
        Ok(())
    }

    /// A JSON call, retried on 429 and 503 (bounded).
    async fn call(
        &self,
        i: usize,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.base(i));
        let mut wait = Duration::from_millis(100);
        for attempt in 0.. {
            let client = &self.clients[i % self.clients.len()];
            let mut req = client.post(&url).json(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.with_context(|| format!("POST {url}"))?;
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            let retry = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if retry && attempt < 8 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                continue;
            }
            return Ok((status, v));
        }
        unreachable!("the loop returns")
    }
}

/// The source addresses setup's REST calls come from: the connections'
/// (127.0.0.2 and up) when every server is on IPv4 loopback, else none.
pub fn sources(bases: &[String], source_ips: usize) -> Vec<std::net::IpAddr> {
    let on_loopback = bases.iter().all(|b| {
        reqwest::Url::parse(b)
            .ok()
            .and_then(|u| u.host_str()?.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|ip| ip.is_loopback())
    });
    if !on_loopback {
        return Vec::new();
    }
    (0..source_ips.min(253))
        .filter_map(|k| crate::plan::source_ip(k, source_ips).map(std::net::IpAddr::V4))
        .collect()
}

fn describe(status: StatusCode, v: &Value) -> String {
    match v.pointer("/error/message").and_then(Value::as_str) {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// What setup made: tokens per user, ids per room.
pub struct Made {
    pub tokens: Vec<String>,
    pub rooms: Vec<String>,
    pub joins: usize,
    pub took: Duration,
}

/// What setup is to make.
#[derive(Clone, Copy)]
pub struct Want<'a> {
    pub run_id: &'a str,
    pub password: &'a str,
    pub users: usize,
    pub rooms: usize,
    pub connections: usize,
    pub concurrency: usize,
    pub quiet: bool,
}

/// Signs up (or logs in) `users` users, creates `rooms` rooms and joins
/// each user to the rooms its connections are in (`user_of`).
pub async fn run(rest: &Rest, want: &Want<'_>) -> Result<Made> {
    let Want {
        run_id,
        password,
        users,
        rooms,
        connections,
        concurrency,
        quiet,
    } = *want;
    let start = Instant::now();
    let conc = concurrency.max(1);
    let tokens: Vec<String> = stream::iter(0..users)
        .map(|u| async move {
            let username = format!("lt{run_id}_{u}");
            let body = json!({"username": username, "password": password});
            let (status, v) = rest.call(u, "/api/v1/auth/signup", None, &body).await?;
            let (status, v) = if status == StatusCode::CONFLICT {
                rest.call(u, "/api/v1/auth/login", None, &body).await?
            } else {
                (status, v)
            };
            if !status.is_success() {
                bail!("signup of {username} failed: {}", describe(status, &v));
            }
            v.get("access_token")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("signup of {username}: no access_token in the answer"))
        })
        .buffered(conc)
        .try_collect()
        .await?;
    if !quiet {
        eprintln!(
            "setup: {} users in {:.1}s",
            tokens.len(),
            start.elapsed().as_secs_f64()
        );
    }

    // Room r is created by the user of its first connection (i = r).
    let creator = |r: usize| crate::plan::user_of(r, users, rooms);
    let room_ids: Vec<String> = stream::iter(0..rooms)
        .map(|r| {
            let token = tokens[creator(r)].clone();
            async move {
                let body = json!({"name": format!("lt-{run_id}-{r}"), "visibility": "public"});
                let (status, v) = rest.call(r, "/api/v1/rooms", Some(&token), &body).await?;
                if !status.is_success() {
                    bail!("creating room {r} failed: {}", describe(status, &v));
                }
                v.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("creating room {r}: no id in the answer"))
            }
        })
        .buffered(conc)
        .try_collect()
        .await?;

    let pairs: BTreeSet<(usize, usize)> = (0..connections)
        .map(|i| (crate::plan::user_of(i, users, rooms), i % rooms))
        .filter(|&(u, r)| u != creator(r))
        .collect();
    let joins = pairs.len();
    stream::iter(pairs)
        .map(|(u, r)| {
            let token = tokens[u].clone();
            let room = room_ids[r].clone();
            async move {
                let path = format!("/api/v1/rooms/{room}/join");
                let (status, v) = rest.call(u, &path, Some(&token), &json!({})).await?;
                if !status.is_success() {
                    bail!("user {u} joining room {r} failed: {}", describe(status, &v));
                }
                Ok(())
            }
        })
        .buffer_unordered(conc)
        .try_collect::<()>()
        .await?;
    let took = start.elapsed();
    if !quiet {
        eprintln!(
            "setup: {} rooms, {joins} joins; {:.1}s in all",
            room_ids.len(),
            took.as_secs_f64()
        );
    }
    Ok(Made {
        tokens,
        rooms: room_ids,
        joins,
        took,
    })
}
