//! The room service's tunables: [`RoomConfig`], and [`RoomArgs`], the flags
//! that set them (shared by `room` and `chat`).

use chat_ephemeral::DEFAULT_RECENT_CACHE_BYTES;
use std::time::Duration;

/// How the room service behaves; see [`RoomArgs`] for each knob.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// Messages one user may send per `send_window` (0 = unlimited).
    pub send_limit: u32,
    pub send_window: Duration,
    /// Joins, leaves, adds and removals one user may make per
    /// `membership_window` (0 = unlimited).
    pub membership_limit: u32,
    pub membership_window: Duration,
    /// Rooms and DMs one user may create per `create_window` (0 =
    /// unlimited).
    pub create_limit: u32,
    pub create_window: Duration,
    /// Events of each room kept in the recent-event cache (0 = no cache;
    /// see the docs of the `recent` module).
    pub recent_cache: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            send_limit: 100,
            send_window: Duration::from_secs(10),
            membership_limit: 60,
            membership_window: Duration::from_secs(60),
            create_limit: 20,
            create_window: Duration::from_secs(60),
            recent_cache: DEFAULT_RECENT_CACHE,
        }
    }
}

/// Events per room in the recent-event cache, by default.
pub const DEFAULT_RECENT_CACHE: usize = 256;

/// The room service's tunables as flags (shared by `room` and `chat`).
#[derive(Clone, Debug, clap::Args)]
pub struct RoomArgs {
    /// Messages one user may send per --send-window-secs (0: unlimited).
    #[arg(long, env = "CHAT_SEND_LIMIT", default_value_t = 100)]
    pub send_limit: u32,

    /// The send rate-limit window in seconds.
    #[arg(long, env = "CHAT_SEND_WINDOW_SECS", default_value_t = 10)]
    pub send_window_secs: u64,

    /// Joins, leaves, member adds and removals one user may make per
    /// --membership-window-secs (0: unlimited). Each is a frame to every
    /// member of the room.
    #[arg(long, env = "CHAT_MEMBERSHIP_LIMIT", default_value_t = 60)]
    pub membership_limit: u32,

    /// The membership rate-limit window in seconds.
    #[arg(long, env = "CHAT_MEMBERSHIP_WINDOW_SECS", default_value_t = 60)]
    pub membership_window_secs: u64,

    /// Rooms and DMs one user may create per --create-window-secs (0:
    /// unlimited).
    #[arg(long, env = "CHAT_CREATE_LIMIT", default_value_t = 20)]
    pub create_limit: u32,

    /// The room-creation rate-limit window in seconds.
    #[arg(long, env = "CHAT_CREATE_WINDOW_SECS", default_value_t = 60)]
    pub create_window_secs: u64,

    /// Recent events per room kept in the ephemeral store (Redis in the
    /// distributed mode) to serve resumes and backfills (0: no cache).
    #[arg(long, env = "CHAT_RECENT_CACHE", default_value_t = DEFAULT_RECENT_CACHE)]
    pub recent_cache: usize,

    /// Bytes the recent-event cache may hold over every room in the
    /// all-in-one server; past it the least recently written rooms' caches
    /// are dropped (their resumes read the store). Redis, in the distributed
    /// mode, is bounded by its own `maxmemory` instead (see docs/deploy.md).
    #[arg(long, env = "CHAT_RECENT_CACHE_BYTES", default_value_t = DEFAULT_RECENT_CACHE_BYTES)]
    pub recent_cache_bytes: usize,

    /// Messages that may wait for the store's group commit; past it a send
    /// is refused at once with `unavailable` and a retry hint (503 +
    /// Retry-After), instead of queueing behind the others. At least 1.
    #[arg(long, env = "CHAT_APPEND_QUEUE", default_value_t = chat_store::DEFAULT_APPEND_QUEUE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub append_queue: u32,
}

impl RoomArgs {
    /// The store options these flags set.
    pub fn store_options(&self) -> chat_store::StoreOptions {
        chat_store::StoreOptions {
            append_queue: self.append_queue as usize,
        }
    }

    pub fn config(&self) -> RoomConfig {
        RoomConfig {
            send_limit: self.send_limit,
            send_window: Duration::from_secs(self.send_window_secs),
            membership_limit: self.membership_limit,
            membership_window: Duration::from_secs(self.membership_window_secs),
            create_limit: self.create_limit,
            create_window: Duration::from_secs(self.create_window_secs),
            recent_cache: self.recent_cache,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        room: RoomArgs,
    }

    #[test]
    fn the_append_queue_is_a_flag_of_at_least_one() {
        let parse = |args: &[&str]| Flags::try_parse_from([&["room"], args].concat());
        let default = parse(&[]).unwrap().room.store_options();
        assert_eq!(default.append_queue, chat_store::DEFAULT_APPEND_QUEUE);
        let set = parse(&["--append-queue", "16"])
            .unwrap()
            .room
            .store_options();
        assert_eq!(set.append_queue, 16);
        assert!(
            parse(&["--append-queue", "0"]).is_err(),
            "a queue of none would refuse every send"
        );
    }
}
