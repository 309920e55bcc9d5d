//! Reading a run's keys back once it is over: every key a history touched,
//! from one address (the balancer, or a replica directly), pipelined so tens
//! of thousands of keys take a moment. The values read are the final state
//! [`checker::check`](crate::checker::check) judges the history against;
//! reading each replica on its own shows what each one holds, not only what
//! the balancer happens to route a read to.
//!
//! Call it once every replica has applied the leader's commit index
//! ([`Cluster::wait_applied`](crate::Cluster::wait_applied)), or the state
//! read may still be moving.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use semikv_protocol::{Reply, Role};

use crate::client::Client;

/// Passes over the keys whose read was answered with an error (an error,
/// not "no such key") before they count as unreadable.
pub const READ_PASSES: usize = 3;

/// What one address holds for a set of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBack {
    /// Every key read: its value, `None` when absent.
    pub values: BTreeMap<Bytes, Option<Bytes>>,
    /// Keys every pass got an error for: their state is unknown, so they
    /// must be left out of a check rather than counted as absent.
    pub unreadable: Vec<Bytes>,
}

/// Reads `keys` from `addr` (as a client), retrying keys answered with an
/// error for up to [`READ_PASSES`] passes.
///
/// # Errors
/// Connecting failed, or a connection broke or timed out mid-pass.
pub async fn read_back(addr: SocketAddr, keys: &[Bytes]) -> anyhow::Result<ReadBack> {
    let mut result = ReadBack::default();
    let mut todo: Vec<Bytes> = keys.to_vec();
    for _ in 0..READ_PASSES {
        if todo.is_empty() {
            break;
        }
        let mut client = Client::connect(addr, Role::Client).await?;
        let replies = client.get_many(&todo).await?;
        let mut retry = Vec::new();
        for (key, reply) in todo.into_iter().zip(replies) {
            match reply {
                Reply::Value(value) => {
                    result.values.insert(key, value);
                }
                _ => retry.push(key),
            }
        }
        todo = retry;
    }
    result.unreadable = todo;
    Ok(result)
}
