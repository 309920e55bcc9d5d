//! Reading a run's keys back once it is over: every key a history touched,
//! from one address (the balancer, or a replica directly), pipelined so tens
//! of thousands of keys take a moment. The values read are the final state
//! [`checker::check`](crate::checker::check) judges the history against;
//! reading each replica on its own shows what each one holds, not only what
//! the balancer happens to route a read to.
//!
//! Call it once every replica has applied the leader's commit index
//! ([`Cluster::wait_applied`](crate::Cluster::wait_applied)), or the state
//! read may still be moving; or let [`converged_state`] wait for every
//! replica to hold the same values and return them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use bytes::Bytes;
use semikv_protocol::{NodeStatus, Reply, Role};

use crate::client::Client;
use crate::cluster::Cluster;
use crate::wait::Deadline;

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

/// Waits until every replica of `cluster` has applied the leader's commit
/// index and holds the same values for `keys`, and returns those values:
/// the final state a history is checked against. The leader is the replica
/// that says it leads at the highest epoch ([`Cluster::leader_index`]), so
/// no balancer is asked.
///
/// # Errors
/// Two replicas lead one epoch, a replica could not be read (down, or a
/// key stayed unreadable), or they did not agree within `timeout`.
pub async fn converged_state(
    cluster: &mut Cluster,
    keys: &[Bytes],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<Bytes, Option<Bytes>>> {
    let deadline = Deadline::new(timeout, "every replica to converge on the leader's state");
    loop {
        if let Some(leader) = cluster.leader_index().await? {
            let (lead, lead_values) = replica_state(cluster, leader, keys).await?;
            let mut agree = lead.applied_index >= lead.commit_index;
            for i in (0..cluster.len()).filter(|&i| i != leader) {
                let (other, values) = replica_state(cluster, i, keys).await?;
                agree &= other.applied_index == lead.commit_index && values == lead_values;
            }
            if agree {
                return Ok(lead_values);
            }
        }
        deadline.tick().await?;
    }
}

/// Replica `i`'s status, then its value of every one of `keys`.
async fn replica_state(
    cluster: &Cluster,
    i: usize,
    keys: &[Bytes],
) -> anyhow::Result<(NodeStatus, BTreeMap<Bytes, Option<Bytes>>)> {
    let status = cluster.connect(i, Role::Client).await?.status().await?;
    let read = read_back(cluster.replica(i).addr, keys).await?;
    ensure!(
        read.unreadable.is_empty(),
        "replica {i} answered {} of {} keys with an error {READ_PASSES} times",
        read.unreadable.len(),
        keys.len()
    );
    Ok((status, read.values))
}
