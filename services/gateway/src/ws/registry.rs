//! Every open connection on this gateway, so that a revoked session's
//! sockets close with 4001, membership changes reach the user's sockets, and
//! shutdown closes them all with 1012. Each connected user's bus subject is
//! subscribed once per gateway (reference-counted, like room hubs).

use super::close::Close;
use super::shared::{ConnShared, Outbound};
use chat_bus::{Bus, Subjects};
use chat_core::{SessionId, UserId};
use chat_proto::v1 as pb;
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Registry {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    users: Arc<Mutex<HashMap<UserId, UserEntry>>>,
}

struct UserEntry {
    conns: HashMap<u64, Arc<ConnShared>>,
    stop: CancellationToken,
    /// `None` while the user's bus subject is being subscribed, then
    /// whether it is: every connection of the user waits for it.
    live: watch::Receiver<Option<bool>>,
}

/// Deregisters the connection when dropped.
pub struct Registered {
    users: Arc<Mutex<HashMap<UserId, UserEntry>>>,
    user: UserId,
    conn: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut users = match self.users.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = users.get_mut(&self.user) {
            e.conns.remove(&self.conn);
            if e.conns.is_empty() {
                e.stop.cancel();
                users.remove(&self.user);
            }
        }
    }
}

impl Registry {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        Self {
            bus,
            subjects,
            users: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Registers a connection. Returns once the user's notices flow (the
    /// first connection of a user on this gateway subscribes to them, the
    /// others wait for that), or `None` when the bus cannot subscribe: the
    /// connection must not run without them (it would miss a revocation).
    /// The next connection of the user tries again.
    pub async fn register(&self, conn: Arc<ConnShared>) -> Option<Registered> {
        let user = conn.caller.user_id;
        let (start, stop, mut live) = {
            let mut users = self.lock();
            let mut start = None;
            let e = users.entry(user).or_insert_with(|| {
                let (tx, rx) = watch::channel(None);
                start = Some(tx);
                UserEntry {
                    conns: HashMap::new(),
                    stop: CancellationToken::new(),
                    live: rx,
                }
            });
            e.conns.insert(conn.id, conn.clone());
            (start, e.stop.clone(), e.live.clone())
        };
        let registered = Registered {
            users: self.users.clone(),
            user,
            conn: conn.id,
        };
        if let Some(tx) = start {
            match self.bus.subscribe(&self.subjects.user(user)).await {
                Ok(mut sub) => {
                    let users = self.users.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                () = stop.cancelled() => break,
                                next = sub.next() => match next {
                                    Some(p) => notice(&users, user, &p),
                                    None => break,
                                },
                            }
                        }
                    });
                    let _ = tx.send(Some(true));
                }
                Err(error) => {
                    tracing::warn!(%error, user_id = %user, "cannot subscribe to user notices");
                    let _ = tx.send(Some(false));
                    let mut users = self.lock();
                    if users
                        .get(&user)
                        .is_some_and(|e| *e.live.borrow() == Some(false))
                    {
                        users.remove(&user);
                    }
                }
            }
        }
        let subscribed = live
            .wait_for(Option::is_some)
            .await
            .is_ok_and(|v| *v == Some(true));
        subscribed.then_some(registered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, UserEntry>> {
        match self.users.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn close_all(&self, close: Close) {
        let users = self.lock();
        for e in users.values() {
            for c in e.conns.values() {
                c.close(close);
            }
        }
    }

    /// The sessions of the open connections, each once.
    pub fn sessions(&self) -> Vec<SessionId> {
        let users = self.lock();
        let set: HashSet<SessionId> = users
            .values()
            .flat_map(|e| e.conns.values().map(|c| c.caller.session_id))
            .collect();
        set.into_iter().collect()
    }

    /// Closes every connection of the `ended` sessions with `close`; how
    /// many.
    pub fn close_sessions(&self, ended: &HashSet<SessionId>, close: Close) -> usize {
        let users = self.lock();
        let mut n = 0;
        for c in users.values().flat_map(|e| e.conns.values()) {
            if ended.contains(&c.caller.session_id) {
                c.close(close);
                n += 1;
            }
        }
        n
    }

    /// Asks every connection to re-check that its user is still a member
    /// of each room it is subscribed to (after notices may have been lost).
    pub fn recheck_memberships(&self) {
        let users = self.lock();
        for c in users.values().flat_map(|e| e.conns.values()) {
            if c.tx.try_send(Outbound::Recheck).is_err() {
                c.close(Close::TOO_SLOW);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users
            .lock()
            .map(|u| u.values().map(|e| e.conns.len()).sum())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn notice(users: &Mutex<HashMap<UserId, UserEntry>>, user: UserId, payload: &[u8]) {
    let Ok(ev) = pb::BusEvent::decode(payload) else {
        tracing::warn!(user_id = %user, "undecodable user notice");
        return;
    };
    let users = match users.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let Some(e) = users.get(&user) else { return };
    match ev.kind {
        Some(pb::bus_event::Kind::SessionRevoked(r)) => {
            let Ok(sid) = SessionId::parse(&r.session_id) else {
                return;
            };
            for c in e.conns.values().filter(|c| c.caller.session_id == sid) {
                c.close(Close::UNAUTHORIZED.because("session revoked"));
            }
        }
        Some(pb::bus_event::Kind::Member(m)) => {
            for c in e.conns.values() {
                if c.tx
                    .try_send(Outbound::Membership(Box::new(m.clone())))
                    .is_err()
                {
                    c.close(Close::TOO_SLOW);
                }
            }
        }
        _ => {}
    }
}
