//! Presence: a user's first connection (across gateways) announces them
//! online in each of their rooms, their last one offline.

use crate::room_api::RoomApi;
use chat_authn::Caller;
use chat_bus::Publisher;
use chat_proto::v1 as pb;

/// Rooms told about one user's presence change, at most.
const MAX_ROOMS: usize = 1000;

/// Tells the user's rooms that they came online or went offline, in the
/// background.
pub fn announce(api: RoomApi, publisher: Publisher, caller: Caller, online: bool) {
    tokio::spawn(async move {
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
    });
}
