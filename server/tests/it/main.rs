//! The replica's integration tests: replicas run in-process on
//! 127.0.0.1:0, driven over the wire by a test that plays the balancer, a
//! leader or a client. One test binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod divergence;
mod inline;
mod reads;
mod recovery;
mod replication;
mod sim_disk;
mod snapshot_install;
mod stalls;
mod support;
