use super::*;

#[test]
fn append_and_replay() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, rec) = reopen(fx, &dir, 0, WalOptions::default());
        assert!(rec.entries.is_empty());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(2))]).unwrap();
        wal.append(&entries(4..=4, 2)).unwrap();
        wal.sync().unwrap();
        assert!(wal.size_bytes() > 0);
        drop(wal);
        let (wal, rec) = reopen(fx, &dir, 0, WalOptions::default());
        assert_eq!(
            rec.entries,
            vec![entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 2)]
        );
        assert_eq!(rec.commit_index, LogIndex(2));
        assert!(rec.truncated_tail.is_none());
        assert_eq!(wal.last_index(), LogIndex(4));
        // Entries covered by a snapshot are checked but not returned.
        drop(wal);
        let (_, rec) = reopen(fx, &dir, 2, WalOptions::default());
        assert_eq!(indexes(&rec), vec![3, 4]);
    });
}

#[test]
fn restart_keeps_every_synced_record_and_continues() {
    each_disk(|fx| {
        let dir = fx.dir();
        for round in 0..5u64 {
            let (mut wal, rec) = reopen(fx, &dir, 0, small());
            assert_eq!(indexes(&rec), (1..=round * 4).collect::<Vec<_>>());
            wal.append(&entries(round * 4 + 1..=round * 4 + 4, round))
                .unwrap();
            wal.sync().unwrap();
        }
        assert!(fx.files(&dir).len() > 1, "expected rolls");
    });
}

#[test]
fn commit_only_segments_do_not_roll_onto_themselves() {
    each_disk(|fx| {
        let dir = fx.dir();
        let opts = WalOptions {
            segment_bytes: 1,
            max_record_len: 1024,
        };
        let (mut wal, _) = reopen(fx, &dir, 0, opts);
        wal.append(&entries(1..=1, 1)).unwrap();
        for _ in 0..3 {
            wal.append(&[Record::Commit(LogIndex(1))]).unwrap();
        }
        wal.append(&entries(2..=3, 1)).unwrap();
        wal.append(&entries(4..=4, 1)).unwrap();
        wal.sync().unwrap();
        assert_eq!(fx.files(&dir).len(), 3);
        drop(wal);
        let (_, rec) = reopen(fx, &dir, 0, opts);
        assert_eq!(indexes(&rec), vec![1, 2, 3, 4]);
        assert_eq!(rec.commit_index, LogIndex(1));
    });
}

#[test]
fn out_of_order_append_is_refused_without_writing() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        let err = wal.append(&entries(4..=4, 1)).unwrap_err();
        assert!(matches!(
            err,
            StorageError::OutOfOrder {
                expected: LogIndex(3),
                got: LogIndex(4)
            }
        ));
        let err = wal.append(&entries(2..=2, 1)).unwrap_err();
        assert!(matches!(err, StorageError::OutOfOrder { .. }));
        assert!(!wal.is_poisoned());
        wal.append(&entries(3..=3, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            indexes(&reopen(fx, &dir, 0, WalOptions::default()).1),
            vec![1, 2, 3]
        );
    });
}

#[test]
fn oversized_record_is_refused_without_writing() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, small());
        let big = Entry {
            index: LogIndex(1),
            epoch: Epoch::from_raw(1),
            op: WriteOp::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![7u8; 2000]),
            },
        };
        let err = wal.append(&[Record::Entry(big)]).unwrap_err();
        assert!(matches!(err, StorageError::Unencodable { .. }));
        assert!(!wal.is_poisoned());
        assert_eq!(wal.size_bytes(), 0);
        wal.append(&entries(1..=1, 1)).unwrap();
    });
}

#[test]
fn commit_index_is_recovered_and_capped() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(2)), Record::Commit(LogIndex(1))])
            .unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            reopen(fx, &dir, 0, WalOptions::default()).1.commit_index,
            LogIndex(2)
        );
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&[Record::Commit(LogIndex(9))]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(
            reopen(fx, &dir, 0, WalOptions::default()).1.commit_index,
            LogIndex(3)
        );
        // Truncating entries takes the commit records after them too.
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.truncate_after(LogIndex(1)).unwrap();
        drop(wal);
        assert_eq!(
            reopen(fx, &dir, 0, WalOptions::default()).1.commit_index,
            LogIndex(0)
        );
        // A snapshot's index is committed even without a commit record.
        assert_eq!(
            reopen(fx, &dir, 1, WalOptions::default()).1.commit_index,
            LogIndex(1)
        );
    });
}

#[test]
fn truncate_after_then_reopen() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=6, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(6))]).unwrap();
        wal.truncate_after(LogIndex(3)).unwrap();
        assert_eq!(wal.last_index(), LogIndex(3));
        // No sync: truncate_after must be durable on its own, and new
        // entries at the cut index replace the old ones.
        wal.append(&entries(4..=5, 2)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, rec) = reopen(fx, &dir, 0, WalOptions::default());
        assert_eq!(
            rec.entries,
            vec![
                entry(1, 1),
                entry(2, 1),
                entry(3, 1),
                entry(4, 2),
                entry(5, 2)
            ]
        );
        // The commit record followed entry 4, so it went with it.
        assert_eq!(rec.commit_index, LogIndex(0));
        wal.truncate_after(LogIndex(0)).unwrap();
        wal.truncate_after(LogIndex(7)).unwrap();
        drop(wal);
        let (_, rec) = reopen(fx, &dir, 0, WalOptions::default());
        assert!(rec.entries.is_empty());
        assert_eq!(rec.commit_index, LogIndex(0));
    });
}

#[test]
fn truncate_after_across_segment_boundaries() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, small());
        for i in 1..=12 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        let before = fx.files(&dir);
        assert!(before.len() >= 4, "{before:?}");
        // Cut exactly at the start of the third segment: it goes entirely.
        let third_first =
            parse_segment_name(before[2].file_name().unwrap().to_str().unwrap()).unwrap();
        wal.truncate_after(third_first.prev()).unwrap();
        assert_eq!(fx.files(&dir), before[..2].to_vec());
        wal.append(&entries(third_first.0..=third_first.0, 2))
            .unwrap();
        // Cut in the middle of the first segment.
        wal.truncate_after(LogIndex(1)).unwrap();
        assert_eq!(fx.files(&dir), before[..1].to_vec());
        wal.append(&entries(2..=8, 3)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = reopen(fx, &dir, 0, small());
        assert_eq!(rec.entries[0], entry(1, 1));
        assert_eq!(
            rec.entries[1..],
            (2..=8).map(|i| entry(i, 3)).collect::<Vec<_>>()[..]
        );
    });
}

#[test]
fn segment_roll_compact_reopen() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, small());
        for i in 1..=20 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        wal.sync().unwrap();
        let files = fx.files(&dir);
        assert!(files.len() >= 4);
        let firsts: Vec<LogIndex> = files
            .iter()
            .map(|f| parse_segment_name(f.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        let size = wal.size_bytes();
        // Everything up to just before the third segment is in a snapshot.
        let upto = firsts[2].prev();
        wal.compact(upto).unwrap();
        assert_eq!(fx.files(&dir), files[2..].to_vec());
        assert!(wal.size_bytes() < size);
        // Compacting past the end never deletes the active segment.
        wal.compact(LogIndex(1000)).unwrap();
        assert_eq!(fx.files(&dir), files[files.len() - 1..].to_vec());
        drop(wal);
        // Opening with the snapshot index works; entries after it are all there.
        let active_first = *firsts.last().unwrap();
        let (_, rec) = reopen(fx, &dir, active_first.0, small());
        assert_eq!(indexes(&rec), (active_first.0 + 1..=20).collect::<Vec<_>>());
        // A snapshot older than the compaction leaves a gap: refused.
        assert!(matches!(
            Wal::open(fx.disk(), &dir, LogIndex(upto.0), small()),
            Err(StorageError::Corrupt { .. })
        ));
    });
}

#[test]
fn reset_then_append_then_reopen() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, small());
        wal.append(&entries(1..=9, 1)).unwrap();
        wal.reset(LogIndex(100)).unwrap();
        assert!(fx.files(&dir).is_empty());
        assert_eq!(wal.size_bytes(), 0);
        assert!(matches!(
            wal.append(&entries(5..=5, 1)),
            Err(StorageError::OutOfOrder { .. })
        ));
        wal.append(&entries(101..=103, 2)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = reopen(fx, &dir, 100, small());
        assert_eq!(indexes(&rec), vec![101, 102, 103]);
        // Without the snapshot the log's start is a gap.
        assert!(matches!(
            Wal::open(fx.disk(), &dir, LogIndex(0), small()),
            Err(StorageError::Corrupt { .. })
        ));
    });
}

/// A write that finds the disk full (`/dev/full` answers every write with
/// ENOSPC, as a full file system does; the simulated disk takes the first
/// bytes, then says ENOSPC) appends nothing and leaves the log usable: the
/// same records go in once there is room, and a reopen finds exactly what
/// was appended.
#[test]
fn an_append_that_finds_the_disk_full_is_cut_back_and_can_be_retried() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        let len = fx.len(&wal.segments[0].path);
        match &fx.sim {
            None => {
                let full = std::fs::OpenOptions::new()
                    .append(true)
                    .open("/dev/full")
                    .expect("this test needs /dev/full (Linux)");
                wal.active = Some(Box::new(full));
            }
            Some(sim) => sim.set_capacity(Some(sim.used_bytes() + 10)),
        }
        let err = wal.append(&entries(4..=5, 1)).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert!(!wal.is_poisoned());
        assert_eq!(wal.last_index(), LogIndex(3));
        assert_eq!(fx.len(&wal.segments[0].path), len);
        // Room again (the cut-back reopened the real segment).
        if let Some(sim) = &fx.sim {
            sim.set_capacity(None);
        }
        wal.append(&entries(4..=5, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, recovered) = reopen(fx, &dir, 0, WalOptions::default());
        assert_eq!(indexes(&recovered), vec![1, 2, 3, 4, 5]);
    });
}

#[test]
fn append_failure_poisons_the_log() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=1, 1)).unwrap();
        // A failure that is not a full disk: a read-only handle fails with EBADF.
        let seg = &wal.segments[0].path;
        wal.active = Some(fx.disk().open(seg, Access::Read).unwrap());
        let err = wal.append(&entries(2..=2, 1)).unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(wal.is_poisoned());
        assert!(matches!(
            wal.append(&entries(2..=2, 1)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
        assert!(matches!(
            wal.truncate_after(LogIndex(0)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(
            wal.compact(LogIndex(0)),
            Err(StorageError::Poisoned)
        ));
        assert!(matches!(
            wal.reset(LogIndex(0)),
            Err(StorageError::Poisoned)
        ));
    });
}

#[test]
fn failed_directory_operation_poisons_the_log() {
    each_disk(|fx| {
        let dir = fx.dir();
        let wal_dir = dir.join("wal");
        let (mut wal, _) = reopen(fx, &wal_dir, 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        match &fx.sim {
            // The segment vanishing under us is an I/O failure on reset.
            None => std::fs::remove_dir_all(&wal_dir).unwrap(),
            // So is the directory fsync after the removal failing.
            Some(sim) => sim.fail_next_syncs(1),
        }
        let err = wal.reset(LogIndex(0)).unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err}");
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
    });
}

/// Frozen bytes of every record variant: a change here breaks every
/// existing log on disk.
#[test]
fn golden_record_bytes() {
    let cases: [(Record, &[u8]); 5] = [
        (
            Record::Entry(Entry {
                index: LogIndex(1),
                epoch: Epoch::from_raw(2),
                op: WriteOp::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                },
            }),
            &[0, 0, 0, 8, 210, 222, 211, 58, 0, 1, 2, 0, 1, 107, 1, 118],
        ),
        (
            Record::Entry(Entry {
                index: LogIndex(300),
                epoch: Epoch::from_raw(1),
                op: WriteOp::Delete {
                    key: Bytes::from_static(b"k"),
                },
            }),
            &[0, 0, 0, 7, 243, 119, 217, 72, 0, 172, 2, 1, 1, 1, 107],
        ),
        (
            Record::Entry(Entry {
                index: LogIndex(3),
                epoch: Epoch::from_raw(3),
                op: WriteOp::Noop,
            }),
            &[0, 0, 0, 4, 230, 33, 83, 170, 0, 3, 3, 2],
        ),
        (
            Record::Commit(LogIndex(7)),
            &[0, 0, 0, 2, 198, 166, 182, 29, 1, 7],
        ),
        // Protocol 5: a leader's evaluated write, a set with an expiry and a
        // delete in one entry.
        (
            Record::Entry(Entry {
                index: LogIndex(4),
                epoch: Epoch::from_raw(3),
                op: WriteOp::Batch(vec![
                    semikv_protocol::Mutation {
                        key: Bytes::from_static(b"k"),
                        value: Some(Bytes::from_static(b"v")),
                        expires_at: Some(semikv_protocol::UnixMillis(1000)),
                    },
                    semikv_protocol::Mutation {
                        key: Bytes::from_static(b"d"),
                        value: None,
                        expires_at: None,
                    },
                ]),
            }),
            &[
                0, 0, 0, 17, 115, 106, 183, 120, 0, 4, 3, 3, 2, 1, 107, 1, 1, 118, 1, 232, 7, 1,
                100, 0, 0,
            ],
        ),
    ];
    for (record, golden) in cases {
        let mut buf = BytesMut::new();
        frame::encode(&record, 1024, &mut buf).unwrap();
        assert_eq!(&buf[..], golden, "{record:?}");
        let (back, used) = read_record(golden, 1024).ok().unwrap();
        assert_eq!(back, record);
        assert_eq!(used, golden.len());
    }
}

#[test]
fn errors_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<StorageError>();
    check::<Wal>();
}
