//! The end of a run: once every replica has applied the leader's commit
//! index, every key written is read back through the balancer and from each
//! replica, and the history checker judges each of those states; the writes
//! answered with an error must be on every replica or on none.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use semikv_protocol::Role;
use semikv_tests::checker::{self, Action, Event, Outcome, Violation};
use semikv_tests::readback::{read_back, ReadBack};
use semikv_tests::Cluster;

/// The checker's verdict on one source's read-back.
pub struct SourceCheck {
    /// `balancer` or `replica N`.
    pub name: String,
    /// Keys of acknowledged writes the source does not hold.
    pub lost: Vec<String>,
    /// Keys with any other violation: a value never written, a write
    /// refused for sure that was applied anyway.
    pub mismatched: Vec<String>,
    /// Keys it could not read.
    pub unreadable: usize,
}

/// Where the writes answered with an error ended up on the replicas.
#[derive(Debug, Default)]
pub struct Unacked {
    /// Writes answered with an error (or no answer).
    pub total: usize,
    /// On every replica.
    pub applied: usize,
    /// On no replica.
    pub absent: usize,
    /// On some replicas only: they diverged.
    pub diverged: Vec<String>,
    /// Not readable on some replica.
    pub unreadable: usize,
}

/// Everything the read-back found.
#[derive(Default)]
pub struct Verdict {
    /// The balancer's, then each replica's.
    pub checks: Vec<SourceCheck>,
    /// Where the unacknowledged writes went.
    pub unacked: Unacked,
}

impl Verdict {
    /// Whether a guarantee was broken (the deposed leader's acks aside).
    pub fn broken(&self) -> bool {
        self.checks
            .iter()
            .any(|c| !c.lost.is_empty() || !c.mismatched.is_empty())
            || !self.unacked.diverged.is_empty()
    }

    /// Keys some source could not read.
    pub fn unreadable(&self) -> usize {
        self.checks.iter().map(|c| c.unreadable).sum()
    }
}

/// Converges the cluster (within `wait` for each step), reads every key of
/// `history` back and judges it.
///
/// # Errors
/// The cluster did not converge, or a read-back connection failed.
pub async fn verify(
    cluster: &Cluster,
    history: &[Event],
    wait: Duration,
) -> anyhow::Result<Verdict> {
    converge(cluster, wait)
        .await
        .context("convergence before read-back")?;
    let mut keys: Vec<Bytes> = history.iter().map(|e| e.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let mut verdict = Verdict::default();
    let state = read_back(cluster.balancer_addr(), &keys).await?;
    verdict
        .checks
        .push(check_source("balancer".into(), history, &state));
    let mut states = Vec::new();
    for i in 0..cluster.len() {
        let r = cluster.replica(i);
        let state = read_back(r.addr, &keys).await?;
        let name = format!("replica {}", r.id);
        verdict.checks.push(check_source(name, history, &state));
        states.push(state);
    }
    verdict.unacked = unacked(history, &states);
    Ok(verdict)
}

/// Waits until every replica has applied the leader's commit index (the
/// writers have stopped, so it no longer moves).
async fn converge(cluster: &Cluster, wait: Duration) -> anyhow::Result<()> {
    let leader = cluster.wait_steady(wait).await?;
    let commit = cluster
        .connect(leader, Role::Client)
        .await?
        .status()
        .await?
        .commit_index;
    for i in 0..cluster.len() {
        cluster.wait_applied(i, commit).await?;
    }
    Ok(())
}

/// Judges `history` against what `state` holds, leaving out the keys it
/// could not read (their state is unknown, not absent).
fn check_source(name: String, history: &[Event], state: &ReadBack) -> SourceCheck {
    let readable: Vec<Event> = history
        .iter()
        .filter(|e| !state.unreadable.contains(&e.key))
        .cloned()
        .collect();
    let report = checker::check(&readable, &state.values);
    let mut check = SourceCheck {
        name,
        lost: Vec::new(),
        mismatched: Vec::new(),
        unreadable: state.unreadable.len(),
    };
    for v in &report.violations {
        let (list, key) = match v {
            Violation::LostWrite { key, .. } | Violation::RolledBackRead { key, .. } => {
                (&mut check.lost, key)
            }
            Violation::ReadOfUnwrittenValue { key, .. }
            | Violation::ReadOfFailedWrite { key, .. }
            | Violation::ReadFromTheFuture { key, .. }
            | Violation::FinalValueUnwritten { key, .. }
            | Violation::FinalValueOfFailedWrite { key, .. } => (&mut check.mismatched, key),
        };
        list.push(String::from_utf8_lossy(key).into_owned());
    }
    check
}

/// Where each write of `history` answered with an error is, on `replicas`.
/// Every write has a key of its own, so present means applied.
fn unacked(history: &[Event], replicas: &[ReadBack]) -> Unacked {
    let mut u = Unacked::default();
    let failed = history
        .iter()
        .filter(|e| !matches!(e.action, Action::Get(_)) && e.outcome != Outcome::Ok);
    for e in failed {
        u.total += 1;
        let held: Option<Vec<bool>> = replicas
            .iter()
            .map(|r| r.values.get(&e.key).map(Option::is_some))
            .collect();
        match held {
            None => u.unreadable += 1,
            Some(h) if h.iter().all(|&p| p) => u.applied += 1,
            Some(h) if h.iter().all(|&p| !p) => u.absent += 1,
            Some(_) => u
                .diverged
                .push(String::from_utf8_lossy(&e.key).into_owned()),
        }
    }
    u
}
