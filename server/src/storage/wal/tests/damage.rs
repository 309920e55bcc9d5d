use super::*;

#[test]
fn torn_tail_at_every_byte_is_truncated_and_earlier_records_kept() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.append(&[Record::Commit(LogIndex(3))]).unwrap();
        wal.append(&entries(4..=4, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = fx.files(&dir).pop().unwrap();
        let full = fx.read(&path);
        let last_start = *record_offsets(fx, &path).last().unwrap();
        for cut in last_start..full.len() {
            fx.write(&path, &full[..cut]);
            let (mut wal, rec) = reopen(fx, &dir, 0, WalOptions::default());
            assert_eq!(indexes(&rec), vec![1, 2, 3], "cut at {cut}");
            assert_eq!(rec.commit_index, LogIndex(3));
            if cut == last_start {
                assert!(rec.truncated_tail.is_none());
            } else {
                assert_eq!(
                    rec.truncated_tail,
                    Some((path.clone(), last_start as u64)),
                    "cut at {cut}"
                );
            }
            assert_eq!(fx.len(&path), last_start as u64);
            // The log continues cleanly after the cut.
            wal.append(&entries(4..=4, 2)).unwrap();
            wal.sync().unwrap();
            drop(wal);
            let (_, rec) = reopen(fx, &dir, 0, WalOptions::default());
            assert_eq!(rec.entries.last(), Some(&entry(4, 2)));
            assert!(rec.truncated_tail.is_none());
        }
    });
}

#[test]
fn zero_filled_tail_is_torn() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = fx.files(&dir).pop().unwrap();
        let good_len = fx.len(&path);
        let mut bytes = fx.read(&path);
        bytes.extend_from_slice(&[0u8; 4096]);
        fx.write(&path, &bytes);
        let (_, rec) = reopen(fx, &dir, 0, WalOptions::default());
        assert_eq!(indexes(&rec), vec![1, 2]);
        assert_eq!(rec.truncated_tail, Some((path.clone(), good_len)));
    });
}

#[test]
fn flipped_bit_in_a_middle_record_is_refused_naming_file_and_offset() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=5, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = fx.files(&dir).pop().unwrap();
        let offsets = record_offsets(fx, &path);
        let original = fx.read(&path);
        // Every byte of record 3 (index 2), header included.
        for at in offsets[2]..offsets[3] {
            let mut bytes = original.clone();
            bytes[at] ^= 0x04;
            fx.write(&path, &bytes);
            let err = Wal::open(fx.disk(), &dir, LogIndex(0), WalOptions::default()).unwrap_err();
            let StorageError::Corrupt {
                path: p, offset, ..
            } = &err
            else {
                panic!("flip at {at}: {err}");
            };
            assert_eq!(p, &path);
            assert_eq!(*offset, offsets[2] as u64, "flip at {at}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains(&path.display().to_string())
                    && shown.contains(&offsets[2].to_string())
            );
            // Refusing must not have modified the file.
            assert_eq!(fx.read(&path), bytes);
        }
    });
}

#[test]
fn flipped_bit_in_the_final_record_is_torn() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=3, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let path = fx.files(&dir).pop().unwrap();
        let last = *record_offsets(fx, &path).last().unwrap();
        let original = fx.read(&path);
        // Every byte of the final record, header included.
        for at in last..original.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = original.clone();
                bytes[at] ^= bit;
                fx.write(&path, &bytes);
                let (_, rec) = reopen(fx, &dir, 0, WalOptions::default());
                assert_eq!(indexes(&rec), vec![1, 2], "flip at {at}");
                assert_eq!(rec.truncated_tail, Some((path.clone(), last as u64)));
            }
        }
    });
}

#[test]
fn damage_in_an_earlier_segment_is_fatal_even_at_its_end() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, small());
        for i in 1..=10 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let files = fx.files(&dir);
        assert!(files.len() >= 3);
        let first = &files[0];
        let bytes = fx.read(first);
        fx.write(first, &bytes[..bytes.len() - 3]);
        let err = Wal::open(fx.disk(), &dir, LogIndex(0), small()).unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { path, .. } if path == first),
            "{err}"
        );
    });
}

#[test]
fn a_missing_segment_is_a_gap() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, small());
        for i in 1..=10 {
            wal.append(&entries(i..=i, 1)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let files = fx.files(&dir);
        fx.remove(&files[1]);
        let err = Wal::open(fx.disk(), &dir, LogIndex(0), small()).unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { path, offset: 0, .. } if path == &files[2]),
            "{err}"
        );
        // Without a snapshot, a log that does not start at 1 is missing entries.
        fx.remove(&files[0]);
        let err = Wal::open(fx.disk(), &dir, LogIndex(0), small()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    });
}

#[test]
fn segment_named_wrongly_is_refused() {
    each_disk(|fx| {
        let dir = fx.dir();
        let (mut wal, _) = reopen(fx, &dir, 0, WalOptions::default());
        wal.append(&entries(1..=2, 1)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let files = fx.files(&dir);
        fx.rename(&files[0], &segment_path(&dir, LogIndex(0)));
        let err = Wal::open(fx.disk(), &dir, LogIndex(0), WalOptions::default()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset: 0, .. }),
            "{err}"
        );
    });
}
