//! The end of every fault scenario: stop the workload, wait until every
//! replica holds the leader's committed state, run the history checker over
//! the history against it, print the scenario's figures, and fail on any
//! violation, after proving on the same history that the checker could
//! have failed.

use std::collections::BTreeMap;

use bytes::Bytes;
use semikv_tests::checker::{self, Action, Event, Outcome};
use semikv_tests::readback::converged_state;
use semikv_tests::workload::Workload;
use semikv_tests::Cluster;

use super::rig::Rig;
use crate::CONVERGE;

/// Stops the workload, adds `extra` events, converges, checks, prints the
/// figures, and fails on any violation.
pub(super) async fn finish(
    name: &str,
    mut rig: Rig,
    workload: Workload,
    extra: Vec<Event>,
    faults: usize,
) {
    let keys = workload.keys();
    let mut history = workload.stop().await.unwrap();
    history.extend(extra);
    let relayed = rig.relayed.as_ref();
    let logs = |cluster: &Cluster| {
        let mut out = cluster.logs();
        if let Some(relayed) = relayed {
            out.push_str(&relayed.logs("balancer"));
        }
        out
    };
    verify(name, &mut rig.cluster, history, keys, faults, "", logs).await;
}

/// The end of every fault scenario: waits until every replica holds the
/// leader's committed state (the same values at the same applied index),
/// runs the checker over `history` against it, prints one `faults:` line
/// (with `figures` at its end), and panics with `logs` on any violation.
pub(crate) async fn verify(
    name: &str,
    cluster: &mut Cluster,
    mut history: Vec<Event>,
    mut keys: Vec<Bytes>,
    faults: usize,
    figures: &str,
    logs: impl Fn(&Cluster) -> String,
) {
    history.sort_by_key(|e| e.start);
    for e in &history {
        if !keys.contains(&e.key) {
            keys.push(e.key.clone());
        }
    }
    let final_state = match converged_state(cluster, &keys, CONVERGE).await {
        Ok(state) => state,
        Err(e) => panic!("{name}: {e:#}\n{}", logs(cluster)),
    };
    let report = checker::check(&history, &final_state);
    let slowest = history.iter().max_by_key(|e| e.end.duration_since(e.start));
    let (slowest_ms, slowest_kind) = slowest.map_or((0, ""), |e| {
        let kind = match e.action {
            Action::Get(_) => "get",
            Action::Set(_) => "set",
            Action::Delete => "delete",
        };
        (e.end.duration_since(e.start).as_millis(), kind)
    });
    eprintln!(
        "faults: scenario={name} faults_injected={faults} {report} slowest_op_ms={slowest_ms} slowest_op={slowest_kind} {figures}"
    );
    assert!(
        report.is_ok(),
        "{name}: {}\n{}",
        report.explain(&history),
        logs(cluster)
    );
    assert!(report.writes_acked > 0, "{name}: nothing was acknowledged");
    assert_checker_has_teeth(&history, &final_state);
}

/// The checker, fed this very history with one key's final value rolled
/// back to an older acknowledged value, must report it: proof that the green
/// verdict above came from a check that could fail.
fn assert_checker_has_teeth(history: &[Event], final_state: &BTreeMap<Bytes, Option<Bytes>>) {
    let acked_set = |e: &&Event| e.outcome == Outcome::Ok && matches!(e.action, Action::Set(_));
    for last in history.iter().filter(acked_set) {
        if final_state.get(&last.key).cloned().flatten().as_ref()
            != match &last.action {
                Action::Set(v) => Some(v),
                _ => None,
            }
        {
            continue;
        }
        let older = history
            .iter()
            .filter(acked_set)
            .find(|e| e.key == last.key && e.end < last.start);
        if let Some(Event {
            action: Action::Set(old),
            ..
        }) = older
        {
            let mut tampered = final_state.clone();
            tampered.insert(last.key.clone(), Some(old.clone()));
            let report = checker::check(history, &tampered);
            assert!(
                !report.is_ok(),
                "the checker missed an acknowledged write rolled back"
            );
            return;
        }
    }
    eprintln!("faults: checker self-test skipped: no key with two ordered acknowledged sets");
}
