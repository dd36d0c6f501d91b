//! Command-line flags (each also an environment variable where it is
//! useful in scripts).

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// N connections subscribed to one room and held for --duration
    /// seconds, nothing sent: the server's resident memory per connection.
    Idle,
    /// N connections in ONE room, --rate messages/s in total for
    /// --duration seconds from --senders of them: deliveries/s, latency,
    /// nothing lost.
    Room,
    /// N connections spread over --rooms rooms (default N/10), one sender
    /// per room by default: durable messages/s (acks/s) and ack latency.
    Rooms,
    /// N connections in one room while messages flow; after
    /// --disconnect-after seconds every connection that is not a sender
    /// drops at once, reconnects and resumes with `since_seq`: recovery
    /// time, nothing lost.
    Reconnect,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Room => "room",
            Scenario::Rooms => "rooms",
            Scenario::Reconnect => "reconnect",
        }
    }
}

/// Which server a run drives: ours, or a peer through its protocol
/// adapter ([`crate::peers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// This backend's client contract: REST setup, `subscribe`, `send`
    /// with acks, per-room seq checks.
    #[default]
    Chat,
    /// A gorilla/websocket broadcast hub (loadtest/peers/gorilla): every
    /// text frame goes to every connection; queued messages are joined
    /// with newlines in one frame.
    Gorilla,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket): `join` a room, emit
    /// with an ack, the server broadcasts to the room.
    Socketio,
    /// The Pusher protocol (Sockudo): a private channel, client events
    /// (not echoed to their sender).
    Pusher,
    /// Centrifuge's JSON protocol: connect, subscribe, publish with a
    /// reply.
    Centrifuge,
    /// nginx with nchan: one WebSocket pub/sub location per channel.
    Nchan,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Chat => "chat",
            Protocol::Gorilla => "gorilla",
            Protocol::Socketio => "socketio",
            Protocol::Pusher => "pusher",
            Protocol::Centrifuge => "centrifuge",
            Protocol::Nchan => "nchan",
        }
    }

    /// A peer server rather than ours.
    pub fn is_peer(self) -> bool {
        self != Protocol::Chat
    }
}

const ABOUT: &str = "Load generator for the chat backend: opens N WebSocket connections, \
sends at a fixed rate and checks that every connection gets every message once and in order.";

const AFTER_HELP: &str = "\
SERVER LIMITS A RUN MEETS
  The server's default limits hold a run whose users stay within them: the origin's
  target (--scenario room --connections 15000 --rate 117 --senders 24) runs against
  `chat` with no flags at all. Setup comes from the connections' 127.0.0.x addresses
  (signups are limited per address) and a user holds 50 connections (the cap is 64).
  Raise a limit when a run asks more of one user or one address:
  --send-limit 0          a sender's user sends more than 100 messages per 10 s
                          (--rate / --senders above 10)
  --membership-limit 0    a user joins more than 60 rooms a minute in setup (rooms
                          scenario with more rooms than users)
  --create-limit 0        a user creates more than 20 rooms a minute in setup
  --signup-limit 0        more than 20 users per source address (--source-ips)
  --ws-frames-per-sec N   above the per-sender rate (--rate / --senders)
  --ws-max-per-user N     above --connections / --users (64 by default)
  --argon2-memory-kib 256 --argon2-iterations 1   faster signups (setup only)
  --ws-queue N            outbound queue per connection (a slow one is closed with 4009)
  --access-token-ttl S    above the run's length when reconnects happen late in a long run
  The server also needs `ulimit -n` above the connections it is to hold (20000 at most here).
  The distributed gateways take the same flags (room: --send-limit; auth: --argon2-*).

EXAMPLES
  loadtest --scenario idle  --connections 19000 --duration 20
  loadtest --scenario room  --connections 2000 --rate 50 --duration 10
  loadtest --scenario rooms --connections 10000 --rooms 1000 --rate 2000 --duration 30
  loadtest --scenario reconnect --connections 2000 --rate 50 --duration 15
  loadtest --url http://127.0.0.1:8081,http://127.0.0.1:8082 --scenario room ...

PEERS
  --protocol gorilla|socketio|pusher|centrifuge|nchan drives another server through its
  protocol (scenarios room and idle; no REST setup, one channel): loadtest/peers/ starts
  each, loadtest/peers/compare.sh runs them side by side.
    loadtest --protocol socketio --url http://127.0.0.1:7102 --connections 2000 --rate 50

VERDICT
  A run FAILS, and its last line and the JSON's `failures` say why, when any of these
  happened: deliveries lost, duplicated or out of order; connections that could not
  connect; sends never acked by the end of the drain; or (runs that send) acks on time
  below --min-ack-ratio (95%) of --rate: acks that arrived by the end of sending +
  --ack-grace, over --duration seconds (a refused send is not acked).

CEILING
  --find-max runs the scenario again and again at rising rates (from --rate, times
  --find-max-factor while it passes, then halving the gap between the last pass and the
  first fail, at most --find-max-steps runs) and reports the highest rate that passed.
    loadtest --scenario rooms --connections 10000 --rooms 1000 --rate 500 --duration 10 --find-max

EXIT STATUS
  0 all good (--find-max: a rate passed); 1 the verdict failed (--allow-loss lets lost,
  duplicated and out-of-order deliveries and failed connections through, not unacked or
  slow sends); 2 the run could not be made (setup, server, limits).";

/// The load generator's flags.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadtest", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The scenario to run.
    #[arg(short, long, value_enum, env = "LOADTEST_SCENARIO", default_value_t = Scenario::Room)]
    pub scenario: Scenario,

    /// The server's protocol: ours (chat), or a peer's through its
    /// adapter (room and idle scenarios only).
    #[arg(long, value_enum, env = "LOADTEST_PROTOCOL", default_value_t = Protocol::Chat)]
    pub protocol: Protocol,

    /// pusher: the app key (in the WebSocket path and the signatures); the
    /// default matches loadtest/peers/sockudo/config.json.
    #[arg(long, env = "LOADTEST_PUSHER_KEY", default_value = "loadtest-key")]
    pub pusher_key: String,
    /// pusher: the app secret that signs private-channel subscriptions.
    #[arg(
        long,
        env = "LOADTEST_PUSHER_SECRET",
        default_value = "loadtest-secret"
    )]
    pub pusher_secret: String,

    /// Server base URL(s), comma-separated: the all-in-one server, a load
    /// balancer, or several gateways (connections are spread over them
    /// round-robin). http:// or ws://; the WebSocket is at /ws (peers:
    /// the protocol's usual path) unless the URL has a path.
    #[arg(
        short,
        long,
        env = "LOADTEST_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: Vec<String>,

    /// Number of WebSocket connections to open.
    #[arg(short, long, env = "LOADTEST_CONNECTIONS", default_value_t = 100)]
    pub connections: usize,

    /// Seconds of sending (idle: seconds to hold the connections).
    #[arg(short, long, env = "LOADTEST_DURATION", default_value_t = 10.0)]
    pub duration: f64,

    /// Total messages per second over all senders.
    #[arg(short, long, env = "LOADTEST_RATE", default_value_t = 10.0)]
    pub rate: f64,

    /// Number of rooms the connections are spread over (connection i is in
    /// room i mod K). Default: 1, or connections/10 for `rooms`.
    #[arg(long, env = "LOADTEST_ROOMS")]
    pub rooms: Option<usize>,

    /// Number of sending connections (connections 0..S; they also
    /// receive). Default: rate/10 (at least 1) for `room` and `reconnect`,
    /// one per room for `rooms`, none for `idle`.
    #[arg(long, env = "LOADTEST_SENDERS")]
    pub senders: Option<usize>,

    /// Number of users the connections are spread over (one user may hold
    /// many connections). Default: one per 50 connections.
    #[arg(long, env = "LOADTEST_USERS")]
    pub users: Option<usize>,

    /// Message body size in bytes (the body starts with the send time).
    #[arg(long, env = "LOADTEST_BODY_BYTES", default_value_t = 100)]
    pub body_bytes: usize,

    /// After sending stops, wait for the last acks and deliveries until
    /// nothing new has arrived for this many seconds (or --drain-max)
    /// before counting what is missing as lost.
    #[arg(long, env = "LOADTEST_DRAIN", default_value_t = 5.0)]
    pub drain: f64,

    /// The longest the drain may take in seconds, however much still
    /// arrives (a server far behind shows as late deliveries, then loss).
    #[arg(long, env = "LOADTEST_DRAIN_MAX", default_value_t = 60.0)]
    pub drain_max: f64,

    /// Hard limit on the whole run in seconds, setup included; the run is
    /// abandoned (and the process exits) past it. Default: 120 + 2 x
    /// duration + drain-max + connections/100.
    #[arg(long, env = "LOADTEST_DEADLINE")]
    pub deadline: Option<f64>,

    /// reconnect: seconds after sending starts when the receivers drop.
    /// Default: a third of --duration.
    #[arg(long, env = "LOADTEST_DISCONNECT_AFTER")]
    pub disconnect_after: Option<f64>,

    /// WebSocket connects (and reconnects) in flight at once, per process.
    #[arg(long, env = "LOADTEST_CONNECT_CONCURRENCY", default_value_t = 200)]
    pub connect_concurrency: usize,

    /// Seconds allowed for one connect + WebSocket handshake + subscribe.
    #[arg(long, env = "LOADTEST_CONNECT_TIMEOUT", default_value_t = 15.0)]
    pub connect_timeout: f64,

    /// Signups, room creations and joins in flight at once during setup.
    #[arg(long, env = "LOADTEST_SETUP_CONCURRENCY", default_value_t = 64)]
    pub setup_concurrency: usize,

    /// Source addresses to spread connections over when the server is on
    /// 127.x: 127.0.0.2 .. 127.0.0.(1+N) (each gives ~28k ports per
    /// destination). 0: let the kernel pick.
    #[arg(long, env = "LOADTEST_SOURCE_IPS", default_value_t = 64)]
    pub source_ips: usize,

    /// Most connections one process holds (the open-file limit is 20000
    /// here); a run that needs more spreads them over worker processes.
    #[arg(long, env = "LOADTEST_MAX_CONNS_PER_PROCESS", default_value_t = 19_000)]
    pub max_conns_per_process: usize,

    /// Number of worker processes holding the connections (0: the
    /// connections live in this process). Default: 0, or as many as
    /// --max-conns-per-process requires.
    #[arg(long, env = "LOADTEST_PROCESSES")]
    pub processes: Option<usize>,

    /// Runtime threads (per process; workers of a multi-process run get
    /// threads/processes, at least 1).
    #[arg(long, env = "LOADTEST_THREADS", default_value_t = 2)]
    pub threads: usize,

    /// Read buffer per connection in bytes (frames are read many at once).
    #[arg(long, env = "LOADTEST_READ_BUFFER", default_value_t = 16 * 1024)]
    pub read_buffer: usize,

    /// Server process id(s) to sample RSS and CPU from, comma-separated.
    /// Default: the process listening on each --url's port (behind a load
    /// balancer that is the balancer: give the gateways' pids instead).
    #[arg(long, env = "LOADTEST_SERVER_PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Also write the results as JSON to this file.
    #[arg(long, env = "LOADTEST_JSON")]
    pub json: Option<PathBuf>,

    /// Exit 0 even when deliveries were lost, duplicated or out of order
    /// or connections failed (not when sends went unacked or the rate was
    /// not held).
    #[arg(long, env = "LOADTEST_ALLOW_LOSS")]
    pub allow_loss: bool,

    /// A run that sends fails when fewer acks than this share of --rate ×
    /// --duration arrive on time (by the end of sending + --ack-grace).
    /// 0 turns the check off.
    #[arg(long, env = "LOADTEST_MIN_ACK_RATIO", default_value_t = 0.95)]
    pub min_ack_ratio: f64,

    /// Seconds after sending ends in which an ack still counts as on time
    /// (the last sends' round trip). A server that works through a backlog
    /// in the drain acks late: its acks count, but not as held rate.
    #[arg(long, env = "LOADTEST_ACK_GRACE", default_value_t = 0.5)]
    pub ack_grace: f64,

    /// Find the highest --rate the server holds: run the scenario at
    /// rising rates, a fresh run id (users, rooms) each, and report the
    /// highest rate whose run passed (room, rooms and reconnect).
    #[arg(long, env = "LOADTEST_FIND_MAX")]
    pub find_max: bool,

    /// --find-max: while runs pass, each next rate is this times the last.
    #[arg(long, env = "LOADTEST_FIND_MAX_FACTOR", default_value_t = 2.0)]
    pub find_max_factor: f64,

    /// --find-max: the most runs (steps) the search makes.
    #[arg(long, env = "LOADTEST_FIND_MAX_STEPS", default_value_t = 8)]
    pub find_max_steps: usize,

    /// --find-max: stop once the lowest failing rate is within this share
    /// above the highest passing one.
    #[arg(long, env = "LOADTEST_FIND_MAX_PRECISION", default_value_t = 0.05)]
    pub find_max_precision: f64,

    /// --find-max: seconds between runs, for the server to settle (close
    /// the last run's connections, finish its writes).
    #[arg(long, env = "LOADTEST_FIND_MAX_PAUSE", default_value_t = 3.0)]
    pub find_max_pause: f64,

    /// Run id: prefix of usernames, room names and client_msg_ids.
    /// Default: derived from the time and pid.
    #[arg(long, env = "LOADTEST_RUN_ID")]
    pub run_id: Option<String>,

    /// Password of the users the run signs up (or logs in, if they exist).
    #[arg(long, env = "LOADTEST_PASSWORD", default_value = "loadtest-password")]
    pub password: String,

    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// The executable the worker processes run (default: this one).
    #[arg(long, hide = true)]
    pub worker_exe: Option<PathBuf>,
}

/// Subcommands used internally.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// A worker process: reads its share of the run as JSON on stdin,
    /// prints JSON lines on stdout.
    #[command(hide = true)]
    Worker,
    /// Revocation under faults: signs up --users users with one socket
    /// each through --url, logs them all out after --logout-after seconds
    /// and counts the sockets still open --watch seconds later (must be
    /// 0). `loadtest/chaos.sh` runs it during each fault.
    Revoke {
        /// Users (sessions), one socket each.
        #[arg(long, default_value_t = 20)]
        users: usize,
        /// Seconds before every user logs out.
        #[arg(long, default_value_t = 10.0)]
        logout_after: f64,
        /// Seconds after the logouts before open sockets are counted.
        #[arg(long, default_value_t = 15.0)]
        watch: f64,
    },
    /// Measures the cost of the receive path's frame scanner against
    /// serde_json (ns per frame).
    #[command(hide = true)]
    ScanBench {
        #[arg(long, default_value_t = 2_000_000)]
        frames: usize,
    },
}

impl Args {
    /// Parses flags as the command line would (for tests and embedding).
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["loadtest".into()];
        all.extend(flags.into_iter().map(Into::into));
        Args::try_parse_from(all)
    }

    pub fn rooms(&self) -> usize {
        let k = self.rooms.unwrap_or(match self.scenario {
            Scenario::Rooms => (self.connections / 10).max(1),
            _ => 1,
        });
        k.clamp(1, self.connections.max(1))
    }

    pub fn senders(&self) -> usize {
        let s = self.senders.unwrap_or(match self.scenario {
            Scenario::Idle => 0,
            Scenario::Rooms => self.rooms(),
            Scenario::Room | Scenario::Reconnect => (self.rate / 10.0).ceil().max(1.0) as usize,
        });
        if self.scenario == Scenario::Idle {
            0
        } else {
            s.clamp(1, self.connections.max(1))
        }
    }

    pub fn users(&self) -> usize {
        self.users
            .unwrap_or(self.connections.div_ceil(50))
            .clamp(1, self.connections.max(1))
    }

    pub fn deadline_secs(&self) -> f64 {
        self.deadline.unwrap_or(
            120.0 + 2.0 * self.duration + self.drain_max + self.connections as f64 / 100.0,
        )
    }

    pub fn disconnect_after_secs(&self) -> Option<f64> {
        (self.scenario == Scenario::Reconnect)
            .then(|| self.disconnect_after.unwrap_or(self.duration / 3.0))
    }
}
