//! Room hubs: one bus subscription per room per gateway, shared by every
//! local connection subscribed to that room, and dropped with the last one.
//!
//! A hub decodes each bus payload once, encodes the client frame once and
//! hands the same bytes to every subscriber's bounded queue. A subscriber
//! whose queue is full is closed with 4009 (it resumes with `since_seq`)
//! rather than slowing the room down or growing memory.

use super::{ConnShared, Outbound};
use crate::wire::{encode, EventView, ServerFrame};
use chat_bus::{Bus, Subjects};
use chat_core::RoomId;
use chat_proto::v1 as pb;
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

pub struct Hubs {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    rooms: Mutex<HashMap<RoomId, Arc<Hub>>>,
}

struct Hub {
    room: RoomId,
    subscribers: RwLock<HashMap<u64, Arc<ConnShared>>>,
    stop: CancellationToken,
    /// Resolved once the bus subscription is in place.
    ready: tokio::sync::watch::Receiver<bool>,
}

/// Keeps a connection subscribed to a room; dropping it unsubscribes.
pub struct HubGuard {
    hubs: Weak<Hubs>,
    hub: Arc<Hub>,
    conn: u64,
}

impl Drop for HubGuard {
    fn drop(&mut self) {
        let empty = {
            let mut subs = match self.hub.subscribers.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            subs.remove(&self.conn);
            subs.is_empty()
        };
        if empty {
            if let Some(hubs) = self.hubs.upgrade() {
                hubs.remove_if_empty(&self.hub);
            }
        }
    }
}

impl Hubs {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        Self {
            bus,
            subjects,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a connection to the room's hub, creating the hub (and its bus
    /// subscription) if this is the room's first subscriber here. Returns
    /// once the bus subscription is live, so nothing published after this
    /// returns can be missed by the hub.
    pub async fn subscribe(self: &Arc<Self>, room: RoomId, conn: Arc<ConnShared>) -> HubGuard {
        let hub = {
            let mut rooms = match self.rooms.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let hub = rooms
                .entry(room)
                .or_insert_with(|| self.start(room))
                .clone();
            if let Ok(mut subs) = hub.subscribers.write() {
                subs.insert(conn.id, conn.clone());
            }
            hub
        };
        let mut ready = hub.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
        HubGuard {
            hubs: Arc::downgrade(self),
            hub,
            conn: conn.id,
        }
    }

    fn remove_if_empty(&self, hub: &Arc<Hub>) {
        let mut rooms = match self.rooms.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let empty = hub.subscribers.read().map(|s| s.is_empty()).unwrap_or(true);
        if empty {
            if let Some(current) = rooms.get(&hub.room) {
                if Arc::ptr_eq(current, hub) {
                    rooms.remove(&hub.room);
                    hub.stop.cancel();
                }
            }
        }
    }

    /// Rooms with a live hub on this gateway.
    pub fn len(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn start(&self, room: RoomId) -> Arc<Hub> {
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        let hub = Arc::new(Hub {
            room,
            subscribers: RwLock::new(HashMap::new()),
            stop: CancellationToken::new(),
            ready: ready_rx,
        });
        let bus = self.bus.clone();
        let subject = self.subjects.room(room);
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut sub = match bus.subscribe(&subject).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%error, room_id = %room, "cannot subscribe to room subject");
                    let _ = ready_tx.send(true);
                    if let Some(hub) = weak.upgrade() {
                        hub.close_all(1011);
                    }
                    return;
                }
            };
            let _ = ready_tx.send(true);
            let stop = match weak.upgrade() {
                Some(h) => h.stop.clone(),
                None => return,
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    next = sub.next() => {
                        let Some(payload) = next else {
                            tracing::warn!(room_id = %room, "room subscription ended");
                            if let Some(hub) = weak.upgrade() { hub.close_all(1012); }
                            break;
                        };
                        let Some(hub) = weak.upgrade() else { break };
                        hub.dispatch(&payload);
                    }
                }
            }
        });
        hub
    }
}

impl Hub {
    fn dispatch(&self, payload: &[u8]) {
        let ev = match pb::BusEvent::decode(payload) {
            Ok(ev) => ev,
            Err(error) => {
                tracing::warn!(%error, room_id = %self.room, "undecodable bus payload");
                return;
            }
        };
        use pb::bus_event::Kind;
        let item = match ev.kind {
            Some(Kind::RoomEvent(e)) => {
                let Some(view) = EventView::of(&e) else {
                    return;
                };
                Outbound::Event {
                    room: self.room,
                    seq: e.seq,
                    frame: encode(&view),
                }
            }
            Some(Kind::Typing(t)) => Outbound::Live {
                room: self.room,
                frame: encode(&ServerFrame::Typing {
                    room_id: &t.room_id,
                    user_id: &t.user_id,
                }),
            },
            Some(Kind::Presence(p)) => Outbound::Live {
                room: self.room,
                frame: encode(&ServerFrame::Presence {
                    room_id: &p.room_id,
                    user_id: &p.user_id,
                    online: p.online,
                }),
            },
            Some(Kind::Member(m)) => Outbound::Live {
                room: self.room,
                frame: encode(&if m.joined {
                    ServerFrame::MemberJoined {
                        room_id: &m.room_id,
                        user_id: &m.user_id,
                    }
                } else {
                    ServerFrame::MemberLeft {
                        room_id: &m.room_id,
                        user_id: &m.user_id,
                    }
                }),
            },
            Some(Kind::SessionRevoked(_)) | None => return,
        };
        let subs = match self.subscribers.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for conn in subs.values() {
            match conn.tx.try_send(item.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => conn.close(4009),
                Err(TrySendError::Closed(_)) => {}
            }
        }
    }

    fn close_all(&self, code: u16) {
        if let Ok(subs) = self.subscribers.read() {
            for conn in subs.values() {
                conn.close(code);
            }
        }
    }
}
