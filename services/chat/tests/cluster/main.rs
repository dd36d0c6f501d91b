//! Tests of the distributed mode itself: real `auth`, `room` and `gateway`
//! processes behind HAProxy on the machine's Postgres, Redis and NATS. (The
//! behaviour suite in `tests/api` also runs against a cluster with
//! `CHAT_TEST_MODE=cluster`; these are the tests only a cluster can have:
//! several gateways, killed processes, a restarted NATS, lost publishes.)

#[path = "../common/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod admin;
mod busauth;
mod failover;
mod gaps;
mod keys;
mod presence;
mod revocation;
mod tls;
mod tools;
