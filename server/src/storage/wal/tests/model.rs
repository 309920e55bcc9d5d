use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: u64,
        epoch: u64,
        commit: bool,
    },
    TruncateAfter {
        back: u64,
    },
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..6, 0u64..4, any::<bool>()).prop_map(|(count, epoch, commit)| Op::Append { count, epoch, commit }),
        2 => (0u64..12).prop_map(|back| Op::TruncateAfter { back }),
        1 => Just(Op::Sync),
        2 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_match_a_vec_model(ops in proptest::collection::vec(op(), 1..40), segment_bytes in 60u64..400) {
        for fx in [Fixture::os(), Fixture::sim()] {
            check(&fx, &ops, segment_bytes).map_err(|e| TestCaseError::fail(format!("on {}: {e}", fx.name())))?;
        }
    }
}

fn check(fx: &Fixture, ops: &[Op], segment_bytes: u64) -> Result<(), TestCaseError> {
    let dir = fx.dir();
    let opts = WalOptions {
        segment_bytes,
        max_record_len: 1024,
    };
    let mut model: Vec<Entry> = Vec::new();
    // (entries before the record, committed index) per Commit record.
    let mut commits: Vec<(u64, u64)> = Vec::new();
    let (mut wal, _) = reopen(fx, &dir, 0, opts);
    for op in ops {
        match *op {
            Op::Append {
                count,
                epoch,
                commit: with_commit,
            } => {
                let start = model.len() as u64 + 1;
                let mut batch: Vec<Record> = (start..start + count)
                    .map(|i| Record::Entry(entry(i, epoch)))
                    .collect();
                if with_commit {
                    let last = start + count - 1;
                    commits.push((last, last));
                    batch.push(Record::Commit(LogIndex(last)));
                }
                wal.append(&batch).unwrap();
                model.extend(batch.into_iter().filter_map(|r| match r {
                    Record::Entry(e) => Some(e),
                    Record::Commit(_) => None,
                }));
            }
            Op::TruncateAfter { back } => {
                let index = (model.len() as u64).saturating_sub(back);
                wal.truncate_after(LogIndex(index)).unwrap();
                model.truncate(index as usize);
                commits.retain(|&(before, _)| before <= index);
            }
            Op::Sync => wal.sync().unwrap(),
            Op::Reopen => {
                wal.sync().unwrap();
                drop(wal);
                let (w, rec) = reopen(fx, &dir, 0, opts);
                wal = w;
                prop_assert!(rec.truncated_tail.is_none());
                prop_assert_eq!(&rec.entries, &model);
                let commit = commits.iter().map(|&(_, c)| c).max().unwrap_or(0);
                prop_assert_eq!(rec.commit_index, LogIndex(commit));
            }
        }
        prop_assert_eq!(wal.last_index(), LogIndex(model.len() as u64));
    }
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = reopen(fx, &dir, 0, opts);
    prop_assert_eq!(&rec.entries, &model);
    Ok(())
}
