//! The log on a simulated disk that crashes: whatever a power cut leaves
//! of unsynced appends, recovery keeps every synced record, cuts a torn
//! tail, and goes on; a failed fsync poisons the log.

use super::*;

/// Crash seeds each test tries.
const SEEDS: u64 = 300;

fn tiny() -> WalOptions {
    WalOptions {
        segment_bytes: 150,
        max_record_len: 1024,
    }
}

#[test]
fn unsynced_appends_leave_a_prefix_that_recovery_cuts_cleanly() {
    let mut torn = 0;
    let mut kept_some_unsynced = 0;
    for seed in 0..SEEDS {
        let fx = Fixture::sim();
        let dir = fx.dir();
        let (mut wal, _) = reopen(&fx, &dir, 0, tiny());
        for i in 1..=10 {
            wal.append(&entries(i..=i, 1)).unwrap();
            wal.append(&[Record::Commit(LogIndex(i))]).unwrap();
        }
        wal.sync().unwrap();
        // Unsynced, across a segment roll or two.
        for i in 11..=16 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        fx.crash(seed);
        drop(wal);
        let (mut wal, rec) = Wal::open(fx.disk(), &dir, LogIndex(0), tiny())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let got = indexes(&rec);
        assert!(got.len() >= 10, "seed {seed}: synced records lost: {got:?}");
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert_eq!(rec.commit_index, LogIndex(10), "seed {seed}");
        torn += usize::from(rec.truncated_tail.is_some());
        kept_some_unsynced += usize::from(got.len() > 10);
        // The log goes on from what it recovered, and that survives too.
        let next = got.len() as u64 + 1;
        wal.append(&entries(next..=next + 2, 2)).unwrap();
        wal.sync().unwrap();
        fx.crash(seed.wrapping_mul(31).wrapping_add(7));
        drop(wal);
        let (_, rec) = Wal::open(fx.disk(), &dir, LogIndex(0), tiny()).unwrap();
        assert_eq!(
            indexes(&rec),
            (1..=next + 2).collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert!(rec.truncated_tail.is_none(), "seed {seed}");
    }
    // The seeds did exercise torn tails and partial survival.
    assert!(torn > SEEDS as usize / 10, "{torn} torn tails");
    assert!(
        kept_some_unsynced > SEEDS as usize / 10,
        "{kept_some_unsynced}"
    );
}

#[test]
fn a_failed_fsync_poisons_the_log_and_recovery_keeps_what_synced_before() {
    for seed in 0..SEEDS / 10 {
        let fx = Fixture::sim();
        let dir = fx.dir();
        let (mut wal, _) = reopen(&fx, &dir, 0, tiny());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.sync().unwrap();
        wal.append(&entries(4..=5, 1)).unwrap();
        fx.sim_disk().fail_next_syncs(1);
        let err = wal.sync().unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(!err.is_no_space());
        assert!(wal.is_poisoned());
        assert!(matches!(
            wal.append(&entries(6..=6, 1)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
        // The replica stops; whatever the failed fsync covered is gone.
        fx.crash(seed);
        drop(wal);
        let (_, rec) = reopen(&fx, &dir, 0, tiny());
        assert_eq!(indexes(&rec), vec![1, 2, 3], "seed {seed}");
    }
}

#[test]
fn a_failed_fsync_while_rolling_a_segment_poisons_the_log() {
    let fx = Fixture::sim();
    let dir = fx.dir();
    let (mut wal, _) = reopen(&fx, &dir, 0, tiny());
    let mut i = 0;
    while fx.files(&dir).len() < 2 {
        i += 1;
        wal.append(&entries(i..=i, 1)).unwrap();
    }
    let segments = fx.files(&dir).len();
    fx.sim_disk().fail_next_syncs(1);
    // Appends until the next roll, which fsyncs the segment it closes.
    let err = loop {
        i += 1;
        match wal.append(&entries(i..=i, 1)) {
            Ok(()) => assert_eq!(fx.files(&dir).len(), segments),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(wal.is_poisoned());
}

/// A process that dies between a write and its fsync leaves the bytes in
/// the page cache: the next start replays them and the node counts them as
/// durable (a follower acks them), so recovery must make them durable, the
/// segment's name in its directory included, before a power cut can come.
#[test]
fn what_a_restart_recovers_survives_a_later_crash() {
    for seed in 0..SEEDS / 10 {
        let fx = Fixture::sim();
        let dir = fx.dir();
        let (mut wal, _) = reopen(&fx, &dir, 0, tiny());
        for i in 1..=6 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        // The process dies, the machine does not.
        drop(wal);
        let (wal, rec) = reopen(&fx, &dir, 0, tiny());
        assert_eq!(indexes(&rec), (1..=6).collect::<Vec<_>>());
        fx.crash(seed);
        drop(wal);
        let (_, rec) = reopen(&fx, &dir, 0, tiny());
        assert_eq!(indexes(&rec), (1..=6).collect::<Vec<_>>(), "seed {seed}");
    }
}

/// A failed fsync may drop the pages it covered while reads still show
/// them: a restart without a power cut must not replay those entries as
/// durable, or entries synced after them would survive a later power cut
/// around a hole (found by the deterministic simulation, seed 120).
#[test]
fn a_restart_after_a_failed_fsync_replays_only_what_was_synced() {
    for seed in 0..SEEDS / 10 {
        let fx = Fixture::sim();
        let dir = fx.dir();
        let (mut wal, _) = reopen(&fx, &dir, 0, tiny());
        wal.append(&entries(1..=1, 1)).unwrap();
        wal.sync().unwrap();
        wal.append(&entries(2..=2, 1)).unwrap();
        fx.sim_disk().fail_next_syncs(1);
        assert!(wal.sync().is_err());
        // The process stops; the machine does not.
        drop(wal);
        let (mut wal, rec) = reopen(&fx, &dir, 0, tiny());
        assert_eq!(
            indexes(&rec),
            vec![1],
            "seed {seed}: replayed what never synced"
        );
        wal.append(&entries(2..=3, 2)).unwrap();
        wal.sync().unwrap();
        fx.crash(seed);
        drop(wal);
        let (_, rec) = reopen(&fx, &dir, 0, tiny());
        assert_eq!(indexes(&rec), vec![1, 2, 3], "seed {seed}");
    }
}
