//! What the processes' HTTP listeners share (`--http ADDR` on the balancer
//! and the replicas): one serving loop with the limits a hostile client
//! meets ([`serve`]), and the pieces of their Prometheus `/metrics`
//! ([`metrics`]). Each process brings its own routes.

pub mod metrics;
pub mod serve;

pub use serve::{serve, HttpLimits};
