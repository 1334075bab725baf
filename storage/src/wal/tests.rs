use super::*;
use crate::write::{FieldColumn, FieldValues, SeriesBlock, TableWrite};
use proptest::prelude::*;

fn write_n(n: usize) -> Vec<TableWrite> {
    (0..n)
        .map(|i| TableWrite {
            table: format!("t{}", i % 3),
            blocks: vec![SeriesBlock {
                item: i as u32,
                tags: vec![("host".into(), format!("h{i}"))],
                timestamps: (0..(i as i64 % 7 + 1)).collect(),
                fields: vec![FieldColumn {
                    name: "v".into(),
                    values: FieldValues::F64((0..(i % 7 + 1)).map(|x| x as f64 * 0.5).collect()),
                    validity: None,
                }],
            }],
        })
        .collect()
}

fn payload(w: &TableWrite) -> Vec<u8> {
    let mut buf = Vec::new();
    codec::encode("public", std::slice::from_ref(w), &mut buf);
    buf
}

/// Writes `writes` into a fresh WAL file, one record each, and returns the
/// file's path and the offset at which each record ends.
fn wal_file(dir: &Path, writes: &[TableWrite]) -> (PathBuf, Vec<u64>) {
    let wal = Wal::create(dir, 1, FsyncPolicy::Always).expect("create");
    let path = dir.join(file_name(1));
    let mut ends = Vec::new();
    for w in writes {
        wal.append(&payload(w)).expect("append");
        ends.push(fs::metadata(&path).expect("stat").len());
    }
    wal.close().expect("close");
    (path, ends)
}

#[tokio::test]
async fn group_commit_acknowledges_every_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    let mut tasks = Vec::new();
    for w in write_n(64) {
        let wal = Arc::clone(&wal);
        tasks.push(tokio::spawn(async move {
            let seq = wal.append(&payload(&w)).expect("append");
            wal.wait_durable(seq).await.expect("durable");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let fsyncs = wal.metrics.fsyncs.load(Ordering::Relaxed);
    assert!((1..=64).contains(&fsyncs), "{fsyncs} fsyncs");
    wal.close().expect("close");
    let (entries, end) = read_file(&dir.path().join(file_name(1))).expect("read");
    assert_eq!(end, ReadEnd::Clean);
    assert_eq!(entries.len(), 64);
}

#[test]
fn rotation_starts_a_new_numbered_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 7, FsyncPolicy::Always).expect("create");
    wal.append(&payload(&write_n(1)[0])).expect("append");
    assert_eq!(wal.rotate().expect("rotate"), 7);
    wal.append(&payload(&write_n(2)[1])).expect("append");
    wal.close().expect("close");
    let files = list_files(dir.path()).expect("list");
    assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![7, 8]);
    assert_eq!(read_file(&files[0].1).expect("read").0.len(), 1);
    assert_eq!(read_file(&files[1].1).expect("read").0[0].writes[0].table, "t1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Cutting the file anywhere keeps exactly the records that end before
    /// the cut, and reports the rest as a corrupt tail at the right offset.
    #[test]
    fn truncated_tail_keeps_every_complete_record(n in 1usize..20, cut_frac in 0.0f64..1.0) {
        let dir = tempfile::tempdir().expect("tempdir");
        let writes = write_n(n);
        let (path, ends) = wal_file(dir.path(), &writes);
        let total = *ends.last().expect("records");
        let cut = HEADER_LEN + ((total - HEADER_LEN) as f64 * cut_frac) as u64;
        truncate(&path, cut).expect("truncate");
        let (entries, end) = read_file(&path).expect("read");
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        prop_assert_eq!(entries.len(), complete);
        for (e, w) in entries.iter().zip(&writes) {
            prop_assert_eq!(&e.writes[0], w);
        }
        let last_good = if complete == 0 { HEADER_LEN } else { ends[complete - 1] };
        if last_good == cut {
            prop_assert_eq!(end, ReadEnd::Clean);
        } else {
            let is_corrupt_at_last_good = matches!(end, ReadEnd::Corrupt { offset, .. } if offset == last_good);
            prop_assert!(is_corrupt_at_last_good);
        }
    }

    /// Flipping any bit after the header loses the record it hits and every
    /// record after it, never a record before it, and never yields a wrong
    /// record.
    #[test]
    fn flipped_bit_stops_replay_at_the_damaged_record(n in 1usize..20, pos_frac in 0.0f64..1.0, bit in 0u8..8) {
        let dir = tempfile::tempdir().expect("tempdir");
        let writes = write_n(n);
        let (path, ends) = wal_file(dir.path(), &writes);
        let total = *ends.last().expect("records");
        let pos = HEADER_LEN + ((total - HEADER_LEN - 1) as f64 * pos_frac) as u64;
        let mut data = fs::read(&path).expect("read");
        data[pos as usize] ^= 1 << bit;
        fs::write(&path, &data).expect("write");
        let (entries, end) = read_file(&path).expect("read");
        let damaged = ends.iter().filter(|&&e| e <= pos).count();
        prop_assert_eq!(entries.len(), damaged);
        for (e, w) in entries.iter().zip(&writes) {
            prop_assert_eq!(&e.writes[0], w);
        }
        let is_corrupt = matches!(end, ReadEnd::Corrupt { .. });
        prop_assert!(is_corrupt);
    }
}

/// A failed append (a full disk) must wake every writer already waiting for
/// durability: they held the storage gate, and persist and shutdown hung
/// behind them. Records appended whole before the failure may still be
/// acknowledged; everything after gets the error, and the failure latches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_append_wakes_every_waiter_and_latches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    let record = payload(&write_n(1)[0]);
    let mut writers = Vec::new();
    for _ in 0..32 {
        let (wal, record) = (Arc::clone(&wal), record.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (0u32, 0u32);
            for _ in 0..2_000 {
                match wal.append(&record) {
                    Ok(seq) => match wal.wait_durable(seq).await {
                        Ok(()) => acked += 1,
                        Err(_) => failed += 1,
                    },
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let full = OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    wal.replace_file_for_tests(full);
    let mut failures = 0;
    for w in writers {
        let (_, failed) = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("a writer was never woken after the failed append")
            .expect("writer task");
        failures += failed;
    }
    assert!(failures > 0, "the injected failure was seen");
    let err = wal.append(&record).expect_err("latched");
    assert!(matches!(err, WalError::Failed(_)), "{err}");
    assert!(matches!(wal.rotate(), Err(WalError::Failed(_))));
}

/// Shipped pieces, sent once or again after a failure, rebuild the file
/// byte for byte; writers under `Sync` wait for their record's piece.
#[tokio::test]
async fn shipped_pieces_rebuild_each_file_and_sync_writers_wait_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    let writes = write_n(9);
    // A record before shipping starts is closed into its own file.
    wal.append(&payload(&writes[0])).expect("append");
    wal.ship(ShipMode::Sync, 1 << 20).expect("ship");
    assert_eq!(wal.current_file_seq(), 2);
    let mut sent: Vec<WalPiece> = Vec::new();
    let first = wal.append(&payload(&writes[1])).expect("append");
    wal.append(&payload(&writes[2])).expect("append");
    let waiter = {
        let wal = Arc::clone(&wal);
        tokio::spawn(async move { wal.wait_shipped(first).await })
    };
    let taken = wal.pieces_to_ship();
    assert_eq!(taken.len(), 1, "two records of one file make one piece");
    assert_eq!(taken[0].offset, HEADER_LEN);
    // Appended meanwhile: stays queued after the piece taken is shipped.
    wal.append(&payload(&writes[3])).expect("append");
    wal.shipped(&taken);
    sent.extend(taken);
    waiter.await.expect("join").expect("shipped");
    // A failed attempt answers the waiting writer and keeps the records.
    let later = wal.append(&payload(&writes[4])).expect("append");
    let waiter = {
        let wal = Arc::clone(&wal);
        tokio::spawn(async move { wal.wait_shipped(later).await })
    };
    let failed = wal.pieces_to_ship();
    // The failed attempt had in fact reached the bucket: it is there twice.
    sent.extend(failed.iter().cloned());
    tokio::task::yield_now().await;
    wal.ship_failed("the bucket timed out".into());
    let err = waiter.await.expect("join").expect_err("not shipped");
    assert!(err.to_string().contains("the bucket timed out"), "{err}");
    wal.rotate().expect("rotate");
    wal.append(&payload(&writes[5])).expect("append");
    let again = wal.pieces_to_ship();
    assert_eq!(again.len(), 2, "one piece per file: {again:?}");
    assert_eq!(again[0].offset, failed[0].offset, "the failed bytes go again");
    wal.shipped(&again);
    sent.extend(again);
    assert!(wal.pieces_to_ship().is_empty());
    assert_eq!(wal.ship_backlog(), 0);
    wal.close().expect("close");
    for seq in [2u64, 3] {
        let pieces: Vec<(u64, Vec<u8>)> =
            sent.iter().filter(|p| p.file_seq == seq).map(|p| (p.offset, p.bytes.clone())).collect();
        let rebuilt = assemble(pieces);
        assert_eq!(rebuilt.hole, None);
        let local = fs::read(dir.path().join(file_name(seq))).expect("read");
        assert_eq!(rebuilt.bytes, local, "file {seq}");
    }
}

/// A hole in the pieces stops the rebuilt file before it.
#[test]
fn a_missing_piece_ends_the_rebuilt_file_at_the_hole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    wal.ship(ShipMode::Background, 1 << 20).expect("ship");
    let mut pieces = Vec::new();
    for w in write_n(3) {
        wal.append(&payload(&w)).expect("append");
        let p = wal.pieces_to_ship();
        wal.shipped(&p);
        pieces.extend(p);
    }
    wal.close().expect("close");
    assert_eq!(pieces.len(), 3);
    let rebuilt =
        assemble(vec![(pieces[0].offset, pieces[0].bytes.clone()), (pieces[2].offset, pieces[2].bytes.clone())]);
    assert_eq!(rebuilt.hole, Some((pieces[1].offset, pieces[2].offset)));
    let path = dir.path().join("rebuilt.wal");
    fs::write(&path, &rebuilt.bytes).expect("write");
    let (entries, end) = read_file(&path).expect("read");
    assert_eq!(entries.len(), 1);
    assert_eq!(end, ReadEnd::Clean);
}

/// Appends beyond the backlog limit are refused, not queued without bound.
#[test]
fn a_backlog_over_its_limit_refuses_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    wal.ship(ShipMode::Background, 300).expect("ship");
    let writes = write_n(40);
    let err = writes.iter().find_map(|w| wal.append(&payload(w)).err()).expect("refused at some point");
    assert!(matches!(err, WalError::ShipBacklog { limit: 300, .. }), "{err}");
    assert!(wal.ship_backlog() <= 300);
    let p = wal.pieces_to_ship();
    wal.shipped(&p);
    wal.append(&payload(&writes[0])).expect("room again");
    wal.close().expect("close");
}

/// A shipper that stops for good answers the writers waiting, and later
/// ones, at once.
#[tokio::test]
async fn writers_waiting_for_a_stopped_shipper_are_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    wal.ship(ShipMode::Sync, 1 << 20).expect("ship");
    let writes = write_n(2);
    let first = wal.append(&payload(&writes[0])).expect("append");
    let waiter = {
        let wal = Arc::clone(&wal);
        tokio::spawn(async move { wal.wait_shipped(first).await })
    };
    tokio::task::yield_now().await;
    wal.stop_shipping("the lease is gone".into());
    let err = waiter.await.expect("join").expect_err("stopped");
    assert!(err.to_string().contains("the lease is gone"), "{err}");
    let later = wal.append(&payload(&writes[1])).expect("append");
    let err = wal.wait_shipped(later).await.expect_err("stopped");
    assert!(err.to_string().contains("the lease is gone"), "{err}");
    wal.close().expect("close");
}

/// Records read as pieces arrive (a reader following shipped WAL): a
/// record cut by the end of the bytes waits for more; a damaged one is
/// told apart from it.
#[test]
fn records_are_read_as_their_bytes_arrive_and_damage_is_not_mistaken_for_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::create(dir.path(), 1, FsyncPolicy::Always).expect("create");
    for w in write_n(3) {
        wal.append(&payload(&w)).expect("append");
    }
    wal.close().expect("close");
    let file = fs::read(dir.path().join(file_name(1))).expect("read");
    let body = &file[HEADER_LEN as usize..];
    let all = read_records(body, HEADER_LEN);
    assert_eq!((all.entries.len(), all.end, all.stop), (3, file.len() as u64, None));

    // The first piece ends inside the second record.
    let first_end = HEADER_LEN + 8 + u64::from(u32::from_le_bytes([body[0], body[1], body[2], body[3]]));
    let cut = (first_end - HEADER_LEN) as usize + 5;
    let head = read_records(&body[..cut], HEADER_LEN);
    assert_eq!((head.entries.len(), head.end), (1, first_end));
    assert!(head.stop.as_ref().is_some_and(|s| s.incomplete), "{:?}", head.stop);
    let rest = read_records(&body[(first_end - HEADER_LEN) as usize..], first_end);
    assert_eq!((rest.entries.len(), rest.end, rest.stop), (2, file.len() as u64, None));

    // A flipped byte inside the second record's body: damaged, not cut.
    let mut bad = body.to_vec();
    bad[(first_end - HEADER_LEN) as usize + 12] ^= 0xff;
    let damaged = read_records(&bad, HEADER_LEN);
    assert_eq!((damaged.entries.len(), damaged.end), (1, first_end));
    assert!(damaged.stop.as_ref().is_some_and(|s| !s.incomplete && s.reason.contains("CRC")), "{:?}", damaged.stop);
}
