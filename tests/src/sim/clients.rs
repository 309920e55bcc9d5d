//! The simulation's clients: workload workers that record every operation
//! for the history checker, an observer that polls every replica for the
//! invariants, and the final check that waits for recovery and reads
//! everything back. All of them are turmoil clients or hosts on the one
//! simulation thread, so they share state through `Rc<RefCell<_>>`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::net::Net;
use semikv_protocol::{
    Command, Cond, Consistency, Hello, LogIndex, NodeRole, Op, Read, Reply, Role, TtlChange,
};

use crate::checker::{Action, Event, Outcome};
use crate::client::Client;
use crate::workload::{classify, request_for, unanswered, Rng};

/// Pause before reconnecting after a failed connect or a broken connection.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);
/// How often the observer asks each replica for its status.
const OBSERVE_EVERY: Duration = Duration::from_millis(25);
/// How long after the heal a write must succeed again.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// How long after recovery the replicas must agree.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);

/// One simulated clock for every host's history: turmoil's elapsed time,
/// with ties broken by the order events are recorded in. The simulation
/// runs on one thread, so that order is the order things happened.
#[derive(Debug)]
pub struct Clock {
    base: Instant,
    last: RefCell<Instant>,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        let base = Instant::now();
        Clock {
            base,
            last: RefCell::new(base),
        }
    }

    /// The current instant, strictly after every one handed out before.
    pub fn now(&self) -> Instant {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        let mut last = self.last.borrow_mut();
        let now = (self.base + elapsed).max(*last + Duration::from_nanos(1));
        *last = now;
        now
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Everything the clients learn, for the verdict.
#[derive(Debug, Default)]
pub struct Findings {
    /// Every workload operation.
    pub history: Vec<Event>,
    /// Every key read back through the balancer after recovery.
    pub final_state: BTreeMap<Bytes, Option<Bytes>>,
    /// Invariant violations seen along the way, in words.
    pub violations: Vec<String>,
    /// Simulated time the first write after the heal took, if one succeeded.
    pub recovered_after: Option<Duration>,
    /// Whether the final check got to the end.
    pub checked: bool,
    /// Workers still running.
    pub running: usize,
    /// When the final check failed: each replica's own state, read
    /// directly, or why it could not be read, so that the verdict can say
    /// which replica misses what.
    pub replica_states: Vec<(String, Result<State, String>)>,
}

/// Shared findings.
pub type Shared = Rc<RefCell<Findings>>;

/// A workload worker: gets, sets of unique values, deletes through
/// `balancer` until `until` (simulated time since the start). Odd workers
/// read `linearizable`, even ones at the balancer's default (`session`).
pub async fn worker(
    id: usize,
    balancer: String,
    keys: usize,
    seed: u64,
    until: Duration,
    clock: Rc<Clock>,
    findings: Shared,
) -> turmoil::Result {
    let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut conn: Option<Client> = None;
    let mut seq = 0u64;
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let client = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&balancer).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        let key = Bytes::from(format!("k{}", rng.below(keys as u64)));
        let roll = rng.below(100);
        // Writes the leader evaluates ride along with plain ones: a SET NX
        // and a DEL as commands, so that its evaluation against writes not
        // yet committed, and its no-op waits, face the faults too.
        let evaluated = roll >= 85 || (40..45).contains(&roll);
        let action = if roll < 40 {
            Action::Get(None)
        } else if roll < 50 {
            Action::Delete
        } else {
            seq += 1;
            Action::Set(Bytes::from(format!("c{id}-{seq}")))
        };
        let op = if evaluated {
            evaluated_request(&key, &action)
        } else if linearizable_reader(id) && matches!(action, Action::Get(_)) {
            Op::Read(Read {
                op: Box::new(request_for(&key, &action)),
                level: Some(Consistency::Linearizable),
                after: LogIndex(0),
            })
        } else {
            request_for(&key, &action)
        };
        let start = clock.now();
        let result = client.request(op).await;
        let end = clock.now();
        let (action, outcome, detail) = match result {
            Ok(Reply::Outcome(o)) if evaluated => {
                // A SET NX that did not apply wrote nothing, for sure: if
                // its value is ever read, it was applied after all.
                let outcome = if o.applied || action == Action::Delete {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                };
                (action, outcome, format!("{o:?}"))
            }
            Ok(reply) => classify(action, reply),
            Err(e) => {
                conn = None;
                unanswered(action, &e)
            }
        };
        findings.borrow_mut().history.push(Event {
            client: id,
            key,
            action,
            start,
            end,
            outcome,
            detail,
        });
        if conn.is_none() {
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }
    findings.borrow_mut().running -= 1;
    Ok(())
}

/// Whether worker `id` reads `linearizable`.
fn linearizable_reader(id: usize) -> bool {
    id % 2 == 1
}

/// The part of `history` that must be linearizable: every write, and the
/// reads of the workers that read `linearizable`.
pub fn linearizable_part(history: &[Event]) -> Vec<Event> {
    history
        .iter()
        .filter(|e| !matches!(e.action, Action::Get(_)) || linearizable_reader(e.client))
        .cloned()
        .collect()
}

/// The evaluated form of a write: `SET key value NX` for a set, `DEL key`
/// as a command for a delete.
fn evaluated_request(key: &Bytes, action: &Action) -> Op {
    match action {
        Action::Set(value) => Op::Command(Command::Set {
            key: key.clone(),
            value: value.clone(),
            cond: Cond::IfAbsent,
            ttl: TtlChange::Persist,
            get_old: false,
        }),
        Action::Delete => Op::Command(Command::Delete {
            keys: vec![key.clone()],
        }),
        Action::Get(_) => request_for(key, action),
    }
}

async fn connect(addr: &str) -> anyhow::Result<Client> {
    let stream = tokio::time::timeout(Duration::from_secs(2), Net::Turmoil.connect(addr)).await??;
    Client::over(stream, Hello::new(Role::Client, None), addr).await
}

/// Polls every replica's status, checking that no two replicas lead at one
/// epoch and that no replica's commit index goes back while its process
/// lives (a broken connection may mean a restart, which starts over).
pub async fn observer(replicas: Vec<String>, findings: Shared) -> turmoil::Result {
    let mut conns: Vec<Option<Client>> = replicas.iter().map(|_| None).collect();
    let mut commits: Vec<Option<u64>> = replicas.iter().map(|_| None).collect();
    let mut leaders: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    loop {
        for (i, addr) in replicas.iter().enumerate() {
            if conns[i].is_none() {
                conns[i] = connect(addr).await.ok();
                commits[i] = None;
            }
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            let status = match tokio::time::timeout(OBSERVE_EVERY * 4, conn.status()).await {
                Ok(Ok(status)) => status,
                _ => {
                    conns[i] = None;
                    continue;
                }
            };
            let commit = status.commit_index.0;
            if let Some(before) = commits[i] {
                if commit < before {
                    findings.borrow_mut().violations.push(format!(
                        "{addr}: commit index went back from {before} to {commit} \
                         within one process"
                    ));
                }
            }
            commits[i] = Some(commit);
            if status.role == NodeRole::Leader {
                let at = leaders.entry(status.epoch.to_string()).or_default();
                at.insert(i);
                if at.len() > 1 {
                    let names: Vec<&str> = at.iter().map(|&j| replicas[j].as_str()).collect();
                    findings.borrow_mut().violations.push(format!(
                        "two leaders of epoch {}: {}",
                        status.epoch,
                        names.join(", ")
                    ));
                }
            }
        }
        tokio::time::sleep(OBSERVE_EVERY).await;
    }
}

/// The final check, once the window is over and everything healed: a
/// write must get through `balancer` within [`RECOVERY_BOUND`]; then every
/// replica must come to hold the same value for every key the history
/// names within [`CONVERGENCE_BOUND`] (read from each replica directly:
/// reads through the balancer may be served by a follower still catching
/// up), and that agreed state is the final state the history is checked
/// against.
pub async fn final_check(
    balancer: String,
    replicas: Vec<String>,
    heal_at: Duration,
    findings: Shared,
) -> turmoil::Result {
    while turmoil::sim_elapsed().unwrap_or_default() < heal_at || findings.borrow().running > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let healed = turmoil::sim_elapsed().unwrap_or_default();
    if let Err(last) = recover(&balancer, healed).await {
        findings.borrow_mut().violations.push(format!(
            "no write got through {balancer} within {RECOVERY_BOUND:?} of the heal; \
             the last attempt: {last}"
        ));
        let states = each_state(&replicas, &history_keys(&findings)).await;
        findings.borrow_mut().replica_states = states;
        return Ok(());
    }
    findings.borrow_mut().recovered_after =
        Some(turmoil::sim_elapsed().unwrap_or_default() - healed);
    let keys = history_keys(&findings);
    let deadline = turmoil::sim_elapsed().unwrap_or_default() + CONVERGENCE_BOUND;
    loop {
        let disagreement = match agreed(&replicas, &keys).await {
            Ok(Ok(state)) => {
                let mut f = findings.borrow_mut();
                f.final_state = state;
                f.checked = true;
                return Ok(());
            }
            Ok(Err(diff)) => diff,
            Err(e) => format!("{e:#}"),
        };
        if turmoil::sim_elapsed().unwrap_or_default() >= deadline {
            findings.borrow_mut().violations.push(format!(
                "the replicas did not converge within {CONVERGENCE_BOUND:?} of recovery: \
                 {disagreement}"
            ));
            let states = each_state(&replicas, &keys).await;
            findings.borrow_mut().replica_states = states;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gets one write through `balancer` before the recovery bound, or says
/// how the last attempt failed.
async fn recover(balancer: &str, healed: Duration) -> Result<(), String> {
    let mut attempt = 0u64;
    let mut last = String::from("no attempt");
    while turmoil::sim_elapsed().unwrap_or_default() < healed + RECOVERY_BOUND {
        attempt += 1;
        match connect(balancer).await {
            Ok(mut conn) => {
                let probe = Op::Set {
                    key: Bytes::from_static(b"sim-probe"),
                    value: Bytes::from(format!("probe-{attempt}")),
                };
                match tokio::time::timeout(Duration::from_secs(5), conn.request(probe)).await {
                    Ok(Ok(Reply::Written { .. })) => return Ok(()),
                    Ok(Ok(other)) => last = format!("answered {other:?}"),
                    Ok(Err(e)) => last = format!("{e:#}"),
                    Err(_) => last = "no answer within 5 s".to_string(),
                }
            }
            Err(e) => last = format!("connecting: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// Each key's value, as one replica or the agreed final state holds it.
pub type State = BTreeMap<Bytes, Option<Bytes>>;

/// Every key the history names.
fn history_keys(findings: &Shared) -> BTreeSet<Bytes> {
    findings
        .borrow()
        .history
        .iter()
        .map(|e| e.key.clone())
        .collect()
}

/// One replica's value of every key in `keys`, read from it directly.
async fn read_state(addr: &str, keys: &BTreeSet<Bytes>) -> anyhow::Result<State> {
    let mut conn = connect(addr).await?;
    let mut state = State::new();
    for key in keys {
        match conn.get(key.clone()).await? {
            Reply::Value(v) => {
                state.insert(key.clone(), v);
            }
            other => anyhow::bail!("{addr} answered a read of {key:?} with {other:?}"),
        }
    }
    Ok(state)
}

/// Each replica's own state, or why it could not be read.
async fn each_state(
    replicas: &[String],
    keys: &BTreeSet<Bytes>,
) -> Vec<(String, Result<State, String>)> {
    let mut out = Vec::new();
    for addr in replicas {
        let state = read_state(addr, keys).await.map_err(|e| format!("{e:#}"));
        out.push((addr.clone(), state));
    }
    out
}

/// Every replica's value of every key, read from each directly: the state
/// when they all agree, else the first difference.
async fn agreed(
    replicas: &[String],
    keys: &BTreeSet<Bytes>,
) -> anyhow::Result<Result<State, String>> {
    let mut first: Option<(&str, State)> = None;
    for addr in replicas {
        let state = read_state(addr, keys).await?;
        match &first {
            None => first = Some((addr, state)),
            Some((name, agreed)) => {
                if let Some((key, want)) = agreed.iter().find(|(k, v)| state.get(*k) != Some(v)) {
                    return Ok(Err(format!(
                        "{key:?} is {want:?} on {name} but {:?} on {addr}",
                        state.get(key).cloned().flatten()
                    )));
                }
            }
        }
    }
    Ok(Ok(first.map(|(_, state)| state).unwrap_or_default()))
}
