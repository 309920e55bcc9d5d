//! Harness for semikv's integration tests: builds the real binaries, runs
//! them as child processes owned by guards, and talks to them over the wire;
//! and runs the same code in-process under a deterministic simulation.
//!
//! - [`bin`]: `semikv-server` / `semikv-lb` built once per test process into
//!   the target dir `cargo test` already uses.
//! - [`process`]: [`Proc`], a child that is SIGKILLed when dropped, with
//!   SIGSTOP/SIGCONT/SIGTERM and its captured stderr.
//! - [`node`]: starting one replica or balancer and waiting for its ready file.
//! - [`cluster`]: N replicas (+ a balancer) in one temp dir.
//! - [`client`]: an async test client and a raw-bytes connection.
//! - [`wait`]: bounded polling.
//! - [`workload`]: concurrent recorded clients for fault tests.
//! - [`probe`]: single writes aimed at a fault (when do writes flow again,
//!   does a deposed leader acknowledge).
//! - [`checker`]: the history checker behind guarantees 1-3.
//! - [`readback`]: every key of a history read back from one address.
//! - [`timing`]: failover figures from a history (first write, longest gap).
//! - [`proxy`]: a TCP fault relay (delay, blackhole per role, cut).
//! - [`relayed`]: a balancer that knows the replicas through relays of its
//!   own, to partition replicas per role.
//! - [`torn_tail`]: a WAL tail torn as by a crash mid-append.
//! - [`hostile`]: peers that misbehave at the wire level, byte by byte,
//!   and frames built by hand.
//! - [`tmpfs`]: small file systems to fill, for disk-full tests.
//! - [`sim`]: the whole cluster in one deterministic simulation (turmoil),
//!   seeded fault schedules checked like the fault suite's.
//!
//! The failover timing harness (`benches/failover_timing/`) is built from
//! the same pieces.
//!
//! Every wait is bounded; nothing here sleeps as synchronisation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bin;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod hostile;
pub mod node;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod readback;
pub mod relayed;
pub mod secured;
pub mod sim;
pub mod timing;
pub mod tmpfs;
pub mod torn_tail;
pub mod wait;
pub mod workload;

pub use client::{Client, RawConn};
pub use cluster::Cluster;
pub use node::{
    start_balancer, start_balancer_at, start_replica, start_replica_at,
    start_replica_with_open_files, Balancer, Replica,
};
pub use process::Proc;
pub use wait::{wait_for, wait_until, Deadline};
