//! The `semikv-bench` load generator: its public API, over one module per concept.
//!
//! Many clients, each a connection with `pipeline` requests in flight, a
//! SET:GET mix over a keyspace, latency in HDR histograms, and every read
//! checked against what that client last wrote for the key.
//!
//! - `config`: what to run, and the settings that make no sense;
//! - `model`: the workload (seeded choices, a lane's keys, tagged values)
//!   and what each read must return;
//! - `run`: one run from start to end, and the state its connections share;
//! - `driver`: one connection's task, all its lanes' requests in flight;
//! - `wire`: those requests' bytes;
//! - `report`: what a run measured, as text or JSON;
//! - `progress`: the live progress line.

mod config;
mod driver;
mod model;
mod progress;
mod report;
mod run;
mod wire;

pub use config::{BenchConfig, BenchError, Stop};
pub use model::Rng;
pub use progress::{progress_line, Progress, MAX_PROGRESS_WIDTH, PROGRESS_INTERVAL};
pub use report::Report;
pub use run::{run, run_with_progress, Phase};
