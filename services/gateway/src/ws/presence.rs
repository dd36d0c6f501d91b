//! Presence: a user's first connection (across gateways) announces them
//! online in each of their rooms, their last one offline.
//!
//! An announcement lists the user's rooms and publishes to each: work a
//! connect storm would multiply. So announcements run in the gateway's
//! tracked tasks (a shutdown cancels them and waits for them), a bounded
//! number at once; past that they are skipped (presence is best effort:
//! clients read `online` from the member list).
//!
//! A crashed gateway announces nothing, so every gateway also runs two
//! loops ([`Presence::keep_alive`]): a heartbeat that keeps its own users
//! online in the ephemeral store (one batched write per interval), and a
//! reaper that, every second, takes the users of gateways whose heartbeat
//! ended and announces those now offline everywhere (each user is handed
//! to one reaper only, so each is announced once). The reaper waits for its
//! announcements (a bounded number at once) rather than skipping them: a
//! crashed gateway may leave thousands of users at once.

use crate::room_api::RoomApi;
use chat_authn::Caller;
use chat_bus::Publisher;
use chat_core::{SessionId, UserId};
use chat_ephemeral::Ephemeral;
use chat_proto::v1 as pb;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rooms told about one user's presence change, at most.
const MAX_ROOMS: usize = 1000;

/// Announcements under way at once on one gateway, at most.
pub const MAX_ANNOUNCING: usize = 64;

/// How often the reaper looks for crashed gateways (at most; the heartbeat
/// interval when that is shorter).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Users taken from a crashed gateway per call to the store.
const REAP_BATCH: usize = 500;

/// Calls to the store per reaper tick, at most (the rest waits a tick).
const MAX_REAPS_PER_TICK: usize = 1000;

/// Offline announcements of reaped users under way at once.
const REAP_ANNOUNCING: usize = 16;

/// Announces users' presence in their rooms.
#[derive(Clone)]
pub struct Presence {
    api: RoomApi,
    publisher: Publisher,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    slots: Arc<Semaphore>,
}

impl Presence {
    pub fn new(
        api: RoomApi,
        publisher: Publisher,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        at_once: usize,
    ) -> Self {
        Self {
            api,
            publisher,
            tracker,
            shutdown,
            slots: Arc::new(Semaphore::new(at_once)),
        }
    }

    /// Tells the user's rooms that they came online or went offline, in
    /// the background; false when too many announcements are under way
    /// (this one is skipped).
    pub fn announce(&self, caller: Caller, online: bool) -> bool {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(user_id = %caller.user_id, "presence announcement skipped: too many at once");
            return false;
        };
        let (api, publisher) = (self.api.clone(), self.publisher.clone());
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tell_rooms(api, publisher, caller, online) => {}
            }
            drop(slot);
        });
        true
    }

    /// Starts the heartbeat and the reaper (see the module doc) as tracked
    /// tasks that end with the shutdown.
    pub fn keep_alive(&self, ephemeral: Arc<dyn Ephemeral>, every: Duration, ttl: Duration) {
        let every = every.max(Duration::from_millis(100));
        let shutdown = self.shutdown.clone();
        let store = ephemeral.clone();
        self.tracker.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = store.presence_heartbeat(ttl).await {
                    tracing::warn!(%error, "presence heartbeat failed");
                }
            }
        });
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut ticks = tokio::time::interval(every.min(REAP_EVERY));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    () = this.reap(ephemeral.as_ref()) => {}
                }
            }
        });
    }

    /// Takes every crashed gateway's users and announces those now offline.
    async fn reap(&self, store: &dyn Ephemeral) {
        // Bounded, so that a store that never says "done" cannot spin.
        for _ in 0..MAX_REAPS_PER_TICK {
            let users = match store.reap_presence(REAP_BATCH).await {
                Ok(Some(users)) => users,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot reap crashed gateways' presence");
                    return;
                }
            };
            futures_util::stream::iter(users)
                .for_each_concurrent(REAP_ANNOUNCING, |user| {
                    let (api, publisher) = (self.api.clone(), self.publisher.clone());
                    async move {
                        tracing::debug!(user_id = %user, "offline: their gateway crashed");
                        tell_rooms(api, publisher, on_behalf_of(user), false).await;
                    }
                })
                .await;
        }
    }
}

/// Who room is asked for the rooms of a user whose gateway crashed: the
/// user, asserted by this gateway (the internal secret), in a session of
/// its own (the user's session died with their gateway).
fn on_behalf_of(user_id: UserId) -> Caller {
    Caller {
        user_id,
        session_id: SessionId::new(),
        expires_at: chat_core::time::now_ms() / 1000 + 60,
    }
}

async fn tell_rooms(api: RoomApi, publisher: Publisher, caller: Caller, online: bool) {
    let rooms = match api.my_rooms(&caller, MAX_ROOMS).await {
        Ok(r) => r,
        Err(error) => {
            tracing::debug!(%error, "cannot list rooms for presence");
            return;
        }
    };
    for room in rooms {
        let presence = pb::bus_event::Kind::Presence(pb::Presence {
            room_id: room.to_string(),
            user_id: caller.user_id.to_string(),
            online,
        });
        if publisher.to_room(room, presence).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room_api::{EventsPage, RoomRpc, RoomsPage, Who};
    use chat_bus::{MemoryBus, Subjects};
    use chat_core::{ApiError, RoomId, Seq, SessionId, UserId};
    use std::time::Duration;

    /// Lists one room, once `gate` lets it.
    struct Gated {
        gate: Arc<Semaphore>,
        room: RoomId,
    }

    #[async_trait::async_trait]
    impl RoomRpc for Gated {
        async fn member_last_seq(&self, _: &Caller, _: RoomId) -> Result<Seq, ApiError> {
            Err(ApiError::unavailable("not used"))
        }
        async fn list_events(
            &self,
            _: Who,
            _: RoomId,
            _: Seq,
            _: u32,
        ) -> Result<EventsPage, ApiError> {
            Err(ApiError::unavailable("not used"))
        }
        async fn my_rooms(&self, _: &Caller, _: &str) -> Result<RoomsPage, ApiError> {
            let _ = self.gate.acquire().await;
            Ok(RoomsPage {
                rooms: vec![self.room],
                next: None,
            })
        }
        async fn post_message(
            &self,
            _: &Caller,
            _: RoomId,
            _: String,
            _: String,
        ) -> Result<pb::Message, ApiError> {
            Err(ApiError::unavailable("not used"))
        }
        async fn mark_read(&self, _: &Caller, _: RoomId, _: Seq) -> Result<(), ApiError> {
            Err(ApiError::unavailable("not used"))
        }
    }

    fn caller() -> Caller {
        Caller {
            user_id: UserId::new(),
            session_id: SessionId::new(),
            expires_at: i64::MAX,
        }
    }

    #[tokio::test]
    async fn announcements_are_bounded_tracked_and_cancelled_by_a_shutdown() {
        let gate = Arc::new(Semaphore::new(0));
        let room = RoomId::new();
        let api = RoomApi::new(Arc::new(Gated {
            gate: gate.clone(),
            room,
        }));
        let publisher = Publisher::new(Arc::new(MemoryBus::default()), Subjects::new("t"));
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let presence = Presence::new(api, publisher, tracker.clone(), shutdown.clone(), 2);

        assert!(presence.announce(caller(), true));
        assert!(presence.announce(caller(), true));
        assert!(
            !presence.announce(caller(), true),
            "a third at once is skipped"
        );
        assert_eq!(
            tracker.len(),
            2,
            "the announcements are the gateway's tracked tasks"
        );

        // A shutdown ends them although room never answers.
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("a shutdown cancels the announcements under way");
        assert_eq!(gate.available_permits(), 0);
    }
}
