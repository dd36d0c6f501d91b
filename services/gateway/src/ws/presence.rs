//! Presence: a user's first connection (across gateways) announces them
//! online in each of their rooms, their last one offline.
//!
//! An announcement lists the user's rooms and publishes to each: work a
//! connect storm would multiply. So announcements run in the gateway's
//! tracked tasks (a shutdown cancels them and waits for them), a bounded
//! number at once; past that they are skipped (presence is best effort:
//! clients read `online` from the member list).

use crate::room_api::RoomApi;
use chat_authn::Caller;
use chat_bus::Publisher;
use chat_proto::v1 as pb;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rooms told about one user's presence change, at most.
const MAX_ROOMS: usize = 1000;

/// Announcements under way at once on one gateway, at most.
pub const MAX_ANNOUNCING: usize = 64;

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
