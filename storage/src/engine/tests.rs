use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::compact;
use crate::write::{FieldColumn, FieldValues, SeriesBlock};

fn block(item: u32, host: &str, ts: Vec<i64>, v: FieldValues) -> SeriesBlock {
    SeriesBlock {
        item,
        tags: vec![("host".into(), host.into())],
        timestamps: ts,
        fields: vec![FieldColumn { name: "v".into(), values: v, validity: None }],
    }
}

fn rows(s: &Storage, table: &str) -> usize {
    s.snapshot("public", table).map(|t| t.chunks.iter().map(|c| c.batch.num_rows()).sum()).unwrap_or(0)
        + s.snapshot("public", table).map(|t| t.segments.iter().map(|x| x.rows as usize).sum()).unwrap_or(0)
}

#[tokio::test]
async fn accepted_items_are_visible_and_rejected_ones_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
    let w = TableWrite {
        table: "t".into(),
        blocks: vec![
            block(0, "a", vec![1, 2], FieldValues::I64(vec![1, 2])),
            block(1, "b", vec![3], FieldValues::F64(vec![1.0])),
            block(2, "c", vec![4], FieldValues::I64(vec![3])),
        ],
    };
    let out = s.write("public", vec![w]).await.expect("write");
    assert_eq!(out.accepted_rows, 3);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].item, 1);
    assert!(matches!(out.rejected[0].error, WriteError::TypeConflict { .. }));
    assert_eq!(rows(&s, "t"), 3);
    // A write whose every item is bad creates no table.
    let bad = TableWrite { table: "u".into(), blocks: vec![block(0, "a", vec![-1], FieldValues::I64(vec![1]))] };
    assert_eq!(s.write("public", vec![bad]).await.expect("write").accepted_rows, 0);
    assert!(!s.table_exists("public", "u"));
}

#[tokio::test]
async fn persisted_and_replayed_rows_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
        let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![1, 2], FieldValues::I64(vec![1, 2]))] };
        s.write("public", vec![w]).await.expect("write");
        let stats = s.persist().await.expect("persist");
        assert_eq!((stats.rows, stats.segments), (2, 1));
        let w = TableWrite { table: "t".into(), blocks: vec![block(0, "b", vec![3], FieldValues::I64(vec![3]))] };
        s.write("public", vec![w]).await.expect("write");
        // Dropped without shutdown: the last write is only in the WAL.
    }
    let wal_files = wal::list_files(&dir.path().join("wal")).expect("list");
    assert_eq!(wal_files.len(), 1, "the persisted WAL file was deleted: {wal_files:?}");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("reopen");
    let snap = s.snapshot("public", "t").expect("table");
    assert_eq!(snap.segments.len(), 1);
    assert_eq!(snap.chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>(), 1);
    assert_eq!(s.metrics.wal_replayed_rows.load(Ordering::Relaxed), 1);
}

/// Every row of the table's segments as (host, ts, v, f), sorted.
fn segment_rows(s: &Storage) -> Vec<(String, i64, Option<i64>, Option<f64>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
    let snap = s.snapshot("public", "t").expect("table");
    let mut out = Vec::new();
    for seg in &snap.segments {
        for b in compact::read_segment(&snap.segment_path(seg), seg.row_range(), &snap.schema).expect("read") {
            let col = |n: &str| b.column(b.schema().index_of(n).expect("column")).clone();
            let host = col("host");
            let host = host.as_dictionary::<Int32Type>();
            let names = host.values().as_string::<i32>();
            let (ts, v, f) = (col("ts"), col("v"), col("f"));
            let (ts, v, f) = (
                ts.as_primitive::<TimestampNanosecondType>(),
                v.as_primitive::<Int64Type>(),
                f.as_primitive::<Float64Type>(),
            );
            for i in 0..b.num_rows() {
                out.push((
                    names.value(host.keys().value(i) as usize).to_string(),
                    ts.value(i),
                    v.is_valid(i).then(|| v.value(i)),
                    f.is_valid(i).then(|| f.value(i)),
                ));
            }
        }
    }
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

#[tokio::test]
async fn compaction_merges_segments_keeps_every_row_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = crate::config::CompactionConfig {
        cold_after: Duration::from_secs(u64::MAX / 4),
        grace: Duration::ZERO,
        ..Default::default()
    };
    let mut config = StorageConfig { compaction: live, ..StorageConfig::for_tests(dir.path()) };
    // The policy of one table's own files (packs: `small_tables_share_packs`).
    config.segments.pack_max_rows = 0;
    let s = Storage::open(config.clone()).await.expect("open");
    let mut expected = Vec::new();
    for p in 0..5i64 {
        let ts: Vec<i64> = (0..100).map(|i| p * 1_000 + i).collect();
        let mut blocks = vec![block(0, "a", ts.clone(), FieldValues::I64(ts.iter().map(|t| t % 7).collect()))];
        if p >= 2 {
            // A field that appears later, integral (stored as Int64 in
            // these segments) in persist 2 and fractional afterwards.
            let f: Vec<f64> = ts.iter().map(|&t| if p == 2 { t as f64 } else { t as f64 / 4.0 }).collect();
            blocks.push(SeriesBlock {
                item: 1,
                tags: vec![("host".into(), "b".into())],
                timestamps: ts.clone(),
                fields: vec![FieldColumn { name: "f".into(), values: FieldValues::F64(f.clone()), validity: None }],
            });
            expected.extend(ts.iter().zip(&f).map(|(&t, &f)| ("b".to_string(), t, None, Some(f))));
        }
        expected.extend(ts.iter().map(|&t| ("a".to_string(), t, Some(t % 7), None)));
        s.write("public", vec![TableWrite { table: "t".into(), blocks }]).await.expect("write");
        s.persist().await.expect("persist");
    }
    expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(s.snapshot("public", "t").expect("table").segments.len(), 5);
    assert_eq!(segment_rows(&s), expected);
    let inputs: Vec<PathBuf> =
        s.snapshot("public", "t").expect("table").segments.iter().map(|x| dir.path().join(&x.path)).collect();

    // Five level-0 segments (fan-in 4 reached) merge into one of level 1.
    let stats = s.compact().await.expect("compact");
    assert_eq!((stats.merges, stats.inputs, stats.outputs, stats.rows), (1, 5, 1, 800));
    let snap = s.snapshot("public", "t").expect("table");
    assert_eq!(snap.segments.iter().map(|x| x.level).collect::<Vec<_>>(), vec![1]);
    assert_eq!(segment_rows(&s), expected, "rows changed by compaction");
    assert!(inputs.iter().all(|p| p.exists()), "inputs are kept for the grace period");
    assert_eq!(s.purge_retired(), 5);
    assert!(inputs.iter().all(|p| !p.exists()), "inputs deleted after the grace period");
    // One more persist: a level-0 segment next to the level-1 one, below
    // fan-in, so nothing is due while the partition is live.
    let ts: Vec<i64> = (5_000..5_010).collect();
    expected.extend(ts.iter().map(|&t| ("a".to_string(), t, Some(t % 7), None)));
    expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let w = TableWrite {
        table: "t".into(),
        blocks: vec![block(0, "a", ts.clone(), FieldValues::I64(ts.iter().map(|t| t % 7).collect()))],
    };
    s.write("public", vec![w]).await.expect("write");
    s.persist().await.expect("persist");
    assert_eq!(s.compact().await.expect("compact").merges, 0, "nothing is due");
    s.shutdown().await.expect("shutdown");
    drop(s);

    // A stray file the manifest does not list is quarantined at start,
    // never deleted; a cold partition (these timestamps are in 1970)
    // merges into one.
    let stray = dir.path().join("segments/public/t/00000000000000000999.parquet");
    std::fs::copy(any_segment_file(dir.path()), &stray).expect("copy");
    let s = Storage::open(StorageConfig { segments: config.segments.clone(), ..StorageConfig::for_tests(dir.path()) })
        .await
        .expect("reopen");
    assert!(!stray.exists(), "unlisted segment moved away at start");
    let quarantined: Vec<String> = std::fs::read_dir(dir.path().join("quarantine"))
        .expect("quarantine")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].ends_with("00000000000000000999.parquet"), "{quarantined:?}");
    assert_eq!(segment_rows(&s), expected);
    let stats = s.compact().await.expect("compact");
    assert_eq!((stats.merges, stats.inputs, stats.outputs), (1, 2, 1));
    let snap = s.snapshot("public", "t").expect("table");
    assert_eq!(snap.segments.len(), 1);
    assert_eq!(snap.segments[0].level, 2);
    assert_eq!(segment_rows(&s), expected);
    assert_eq!(s.metrics.compactions.load(Ordering::Relaxed), 1, "counted since this start");
}

#[tokio::test]
async fn retention_drops_whole_segments_past_it_per_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = 86_400 * 1_000_000_000i64;
    let mut config = StorageConfig::for_tests(dir.path());
    config.retention.default = Some(Duration::from_secs(86_400));
    config.retention.tables.insert("public.keep".into(), None);
    config.compaction.grace = Duration::ZERO;
    let s = Storage::open(config.clone()).await.expect("open");
    let now = crate::now_ns();
    for table in ["t", "keep"] {
        let w = TableWrite {
            table: table.into(),
            blocks: vec![
                block(0, "old", vec![now - 3 * day, now - 3 * day + 1], FieldValues::I64(vec![1, 2])),
                block(1, "new", vec![now - 1_000], FieldValues::I64(vec![3])),
            ],
        };
        s.write("public", vec![w]).await.expect("write");
    }
    s.persist().await.expect("persist");
    assert_eq!(s.snapshot("public", "t").expect("t").segments.len(), 2, "two day partitions");
    let old_file = {
        let snap = s.snapshot("public", "t").expect("t");
        let old = snap.segments.iter().find(|x| x.max_ts < now - day).expect("old segment");
        snap.segment_path(old)
    };

    assert_eq!(s.expire().await.expect("expire"), (1, 2));
    assert_eq!(rows(&s, "t"), 1, "only the recent row of t is left");
    assert_eq!(rows(&s, "keep"), 3, "public.keep is kept forever");
    assert_eq!(s.expire().await.expect("expire"), (0, 0), "nothing more is due");
    // Both tables are small: their old rows share a pack, which stays
    // while public.keep holds a slice of it, until a compaction round
    // moves that slice into a pack of its own rows only.
    assert!(old_file.starts_with(dir.path().join("packs")), "{}", old_file.display());
    assert_eq!(s.purge_retired(), 0, "a pack another table still lists is not retired");
    assert!(old_file.exists());
    assert_eq!(rows_on_disk(dir.path()), 6, "t's 2 old rows are still in the pack");
    let stats = s.compact().await.expect("compact");
    assert_eq!((stats.merges, stats.repacked), (0, 1), "{stats:?}");
    assert_eq!(s.purge_retired(), 1);
    assert!(!old_file.exists(), "the pack with dropped rows is deleted");
    assert_eq!(rows_on_disk(dir.path()), 4, "only listed rows are on disk");
    assert_eq!(s.compact().await.expect("compact").repacked, 0, "nothing dead is left");
    s.shutdown().await.expect("shutdown");
    drop(s);
    let s = Storage::open(config.clone()).await.expect("reopen");
    assert_eq!(rows(&s, "t"), 1, "the drop is in the manifest");
    assert_eq!(rows(&s, "keep"), 3);
    s.shutdown().await.expect("shutdown");
    drop(s);
    // Without the exception, public.keep's old rows go too, and the pack
    // with them.
    config.retention.tables.clear();
    let s = Storage::open(config.clone()).await.expect("reopen");
    assert_eq!(s.expire().await.expect("expire"), (1, 2));
    assert_eq!((rows(&s, "t"), rows(&s, "keep")), (1, 1));
    assert_eq!(s.purge_retired(), 1);
    assert_eq!(rows_on_disk(dir.path()), 2);
}

/// Rows in every segment and pack file of the data directory `dir`, as
/// their footers count them.
fn rows_on_disk(dir: &Path) -> u64 {
    crate::recovery::data_files(dir).iter().map(|p| crate::segment::verify_segment(p).expect("footer")).sum()
}

/// A row accepted before a restart with a lower `max_string_bytes` (or
/// `max_tag_bytes`) was dropped on replay, and the next persist deleted
/// its WAL: replay never refuses what was acknowledged.
#[tokio::test]
async fn replay_keeps_rows_over_a_limit_lowered_since() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StorageConfig::for_tests(dir.path());
    {
        let s = Storage::open(config.clone()).await.expect("open");
        let w = TableWrite {
            table: "logs".into(),
            blocks: vec![SeriesBlock {
                item: 0,
                tags: vec![("host".into(), "h".repeat(1000))],
                timestamps: vec![1],
                fields: vec![FieldColumn {
                    name: "message".into(),
                    values: FieldValues::Str(vec!["m".repeat(10_000)]),
                    validity: None,
                }],
            }],
        };
        assert_eq!(s.write("public", vec![w]).await.expect("write").accepted_rows, 1);
        // No shutdown: the row is only in the WAL, as after a crash.
    }
    let mut lower = config.clone();
    lower.limits.max_string_bytes = 100;
    lower.limits.max_tag_bytes = 10;
    let s = Storage::open(lower).await.expect("reopen");
    assert_eq!(rows(&s, "logs"), 1, "replayed despite the lower limits");
    s.persist().await.expect("persist");
    drop(s);
    let s = Storage::open(config).await.expect("reopen again");
    assert_eq!(rows(&s, "logs"), 1, "persisted, not lost with its WAL");
}

/// A write of 100,000 tags is refused by the column limit before any
/// per-name work, with the table named; duplicates in wide blocks are
/// still found.
#[tokio::test]
async fn wide_blocks_are_refused_by_the_column_limit_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
    let wide = |tags: Vec<(String, String)>| TableWrite {
        table: "t".into(),
        blocks: vec![SeriesBlock {
            item: 0,
            tags,
            timestamps: vec![1],
            fields: vec![FieldColumn { name: "v".into(), values: FieldValues::F64(vec![1.0]), validity: None }],
        }],
    };
    let tags = (0..100_000).map(|i| (format!("t{i}"), "v".to_string())).collect();
    let out = s.write("public", vec![wide(tags)]).await.expect("write");
    assert_eq!(out.accepted_rows, 0);
    assert!(matches!(&out.rejected[0].error, WriteError::TooManyColumns { count: 100_002, .. }), "{:?}", out.rejected);
    let mut tags: Vec<(String, String)> = (0..500).map(|i| (format!("t{i}"), "v".to_string())).collect();
    tags.push(("t250".into(), "again".into()));
    let out = s.write("public", vec![wide(tags)]).await.expect("write");
    assert!(
        matches!(&out.rejected[0].error, WriteError::DuplicateColumn { name } if name == "t250"),
        "{:?}",
        out.rejected
    );
    assert!(!s.table_exists("public", "t"), "rejected writes leave no table behind");
}

#[tokio::test]
async fn new_series_past_the_limit_are_refused_and_replay_never_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::for_tests(dir.path());
    config.limits.max_series_per_table = 2;
    {
        let s = Storage::open(config.clone()).await.expect("open");
        let w = |hosts: &[&str], t: i64| TableWrite {
            table: "t".into(),
            blocks: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| block(i as u32, h, vec![t], FieldValues::I64(vec![t])))
                .collect(),
        };
        let out = s.write("public", vec![w(&["a", "b", "c"], 1)]).await.expect("write");
        assert_eq!(out.accepted_rows, 2);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].item, 2);
        let msg = out.rejected[0].error.to_string();
        assert!(msg.contains("already has 2 active series") && msg.contains("\"t\""), "{msg}");
        // Active series keep writing; another table has its own count.
        assert_eq!(s.write("public", vec![w(&["b", "a"], 2)]).await.expect("write").accepted_rows, 2);
        let other = TableWrite { table: "u".into(), blocks: vec![block(0, "c", vec![1], FieldValues::I64(vec![1]))] };
        assert_eq!(s.write("public", vec![other]).await.expect("write").accepted_rows, 1);
        assert_eq!(s.active_series(), 3);
        assert_eq!(s.prune_inactive_series(), 0, "all were written within the window");
    }
    // Replay re-applies what was acknowledged even under a lower limit.
    let mut lower = config.clone();
    lower.limits.max_series_per_table = 1;
    let s = Storage::open(lower.clone()).await.expect("reopen");
    assert_eq!(rows(&s, "t"), 4);
    // A window of zero forgets every series not written this second or
    // later; then a new one fits under the limit.
    drop(s);
    lower.limits.series_window = Duration::ZERO;
    let clock = Arc::new(ManualClock::at_now());
    let s = Storage::open_with_clock(lower, Arc::clone(&clock) as Arc<dyn Clock>).await.expect("reopen");
    assert_eq!(s.prune_inactive_series(), 0, "replayed this second");
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.prune_inactive_series(), 3);
    let w = TableWrite { table: "t".into(), blocks: vec![block(0, "z", vec![9], FieldValues::I64(vec![9]))] };
    assert_eq!(s.write("public", vec![w]).await.expect("write").accepted_rows, 1);
}

/// Any segment file of table `t` (to copy as a stray one).
fn any_segment_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("segments/public/t"))
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .expect("a segment")
}

#[tokio::test]
async fn many_small_writes_are_merged_in_the_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
    for i in 0..200 {
        let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![i], FieldValues::I64(vec![i]))] };
        s.write("public", vec![w]).await.expect("write");
    }
    let snap = s.snapshot("public", "t").expect("table");
    assert!(snap.chunks.len() < 64, "{} chunks", snap.chunks.len());
    assert_eq!(snap.chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>(), 200);
}

#[tokio::test]
async fn writes_are_refused_after_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
    s.shutdown().await.expect("shutdown");
    let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![1], FieldValues::I64(vec![1]))] };
    assert!(matches!(s.write("public", vec![w]).await, Err(StorageError::ShuttingDown)));
}

/// An observer that holds the first write it sees until released.
struct Holding {
    entered: std::sync::mpsc::SyncSender<()>,
    release: parking_lot::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    log: Arc<parking_lot::Mutex<Vec<&'static str>>>,
}

impl WriteObserver for Holding {
    fn written(&self, _db: &str, _writes: &[TableWrite]) {
        if let Some(release) = self.release.lock().take() {
            let _ = self.entered.send(());
            let _ = release.recv();
        }
        self.log.lock().push("observed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_between_writes_waits_for_a_write_still_being_observed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
    let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
    let (release, release_rx) = std::sync::mpsc::channel();
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    s.add_write_observer(Arc::new(Holding {
        entered: entered_tx,
        release: parking_lot::Mutex::new(Some(release_rx)),
        log: Arc::clone(&log),
    }));
    let writer = tokio::spawn({
        let s = Arc::clone(&s);
        async move {
            let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![1], FieldValues::I64(vec![1]))] };
            s.write("public", vec![w]).await.expect("write")
        }
    });
    // The write is applied (visible) but its observers have not finished.
    tokio::task::spawn_blocking(move || entered.recv()).await.expect("join").expect("entered");
    assert_eq!(rows(&s, "t"), 1);
    let seam = tokio::spawn({
        let (s, log) = (Arc::clone(&s), Arc::clone(&log));
        async move { s.snapshot_between_writes("public", "t", move || log.lock().push("between")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(log.lock().is_empty(), "ran while a write was still being observed: {:?}", log.lock());
    release.send(()).expect("release");
    writer.await.expect("writer");
    let ((), snap) = seam.await.expect("seam");
    // The write is in the snapshot, and was fully observed before the
    // seam: a subscriber registered in `between` cannot also get it.
    assert_eq!(*log.lock(), ["observed", "between"]);
    assert_eq!(snap.expect("table").chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>(), 1);
}

/// Every waiting period is measured on the injected clock: the buffer's
/// age, the grace of retired files (and the readers that outlive it), the
/// series window. Nothing here sleeps.
#[tokio::test]
async fn waiting_periods_follow_the_injected_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::for_tests(dir.path());
    config.persist_max_age = Duration::from_secs(60);
    config.persist_max_bytes = usize::MAX;
    config.compaction = crate::config::CompactionConfig {
        fan_in: 2,
        cold_after: Duration::from_secs(u64::MAX / 4),
        grace: Duration::from_secs(600),
        ..Default::default()
    };
    let clock = Arc::new(ManualClock::at_now());
    let s = Storage::open_with_clock(config, Arc::clone(&clock) as Arc<dyn Clock>).await.expect("open");
    let write =
        |ts: i64| TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![ts], FieldValues::I64(vec![ts]))] };

    // Buffer age: due 60 s after the oldest buffered write, not before.
    s.write("public", vec![write(1)]).await.expect("write");
    clock.advance(Duration::from_secs(59));
    assert!(!s.persist_due(), "59 s old");
    clock.advance(Duration::from_secs(1));
    assert!(s.persist_due(), "60 s old");
    s.persist().await.expect("persist");
    assert!(!s.persist_due(), "nothing buffered");
    s.write("public", vec![write(2)]).await.expect("write");
    s.persist().await.expect("persist");

    // Grace: the two inputs of a merge stay 600 s; a reader that started
    // before the merge keeps them past that, until it ends.
    let reader = s.reader();
    assert_eq!(s.compact().await.expect("compact").inputs, 2);
    clock.advance(Duration::from_secs(599));
    assert_eq!(s.purge_retired(), 0, "within the grace period");
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.purge_retired(), 0, "an older reader is still running");
    drop(reader);
    assert_eq!(s.purge_retired(), 2);
}

/// Every row of `table`'s segments as (host, ts, v as f64), sorted.
fn table_values(s: &Storage, table: &str) -> Vec<(String, i64, f64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Float64Type, Int32Type, TimestampNanosecondType};
    let snap = s.snapshot("public", table).expect("table");
    let mut out = Vec::new();
    for seg in &snap.segments {
        for b in compact::read_segment(&snap.segment_path(seg), seg.row_range(), &snap.schema).expect("read") {
            let col = |n: &str| b.column(b.schema().index_of(n).expect("column")).clone();
            let host = col("host");
            let host = host.as_dictionary::<Int32Type>();
            let names = host.values().as_string::<i32>();
            let ts = col("ts");
            let v = arrow::compute::cast(&col("v"), &DataType::Float64).expect("cast");
            let (ts, v) = (ts.as_primitive::<TimestampNanosecondType>(), v.as_primitive::<Float64Type>());
            for i in 0..b.num_rows() {
                out.push((names.value(host.keys().value(i) as usize).to_string(), ts.value(i), v.value(i)));
            }
        }
    }
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

/// The `.parquet` files directly under `dir` (none if it does not exist).
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Small tables share pack files: a persist of three small tables writes
/// packs (two here: the two tables whose `v` is an integer share one, the
/// one whose `v` is stored as a decimal gets another), not a file per
/// table; each table reads back exactly its own rows after a restart, a
/// compaction that merges slices into new packs, and a repair that
/// rebuilds the manifest from the packs' own metadata. A damaged pack is
/// quarantined once and every table that had a slice in it loses just
/// that slice.
#[tokio::test]
async fn small_tables_share_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut config = StorageConfig::for_tests(d);
    config.compaction.grace = Duration::ZERO;
    let s = Storage::open(config.clone()).await.expect("open");
    let mut expected: BTreeMap<&str, Vec<(String, i64, f64)>> = Default::default();
    for round in 0..2i64 {
        let ts: Vec<i64> = (round * 1000..round * 1000 + 10).collect();
        for (table, host) in [("a", "x"), ("b", "y"), ("c", "z")] {
            let values: Vec<f64> = ts.iter().map(|&t| if table == "c" { t as f64 + 0.25 } else { t as f64 }).collect();
            let v = if table == "c" { FieldValues::F64(values.clone()) } else { FieldValues::I64(ts.clone()) };
            let w = TableWrite { table: table.into(), blocks: vec![block(0, host, ts.clone(), v)] };
            s.write("public", vec![w]).await.expect("write");
            expected.entry(table).or_default().extend(ts.iter().zip(&values).map(|(&t, &v)| (host.to_string(), t, v)));
        }
        let stats = s.persist().await.expect("persist");
        assert_eq!((stats.tables, stats.segments, stats.rows), (3, 3, 30));
    }
    let check = |s: &Storage, when: &str| {
        for (table, rows) in &expected {
            assert_eq!(&table_values(s, table), rows, "table {table} {when}");
        }
    };
    check(&s, "after two persists");
    assert!(!d.join("segments/public/a").exists(), "no file of a table's own");
    let first = parquet_files(&d.join("packs/public"));
    assert_eq!(first.len(), 4, "two packs per persist: {first:?}");
    let snap = s.snapshot("public", "a").expect("a");
    assert!(snap.segments.iter().all(|x| x.pack.is_some()));
    assert_eq!(snap.segments.iter().map(|x| x.rows).sum::<u64>(), 10 * 2);
    s.shutdown().await.expect("shutdown");
    drop(s);

    let s = Storage::open(config.clone()).await.expect("reopen");
    check(&s, "after a restart");
    let stats = s.compact_full().await.expect("compact");
    assert_eq!((stats.merges, stats.inputs, stats.outputs), (3, 6, 3));
    check(&s, "after a compaction");
    assert_eq!(s.snapshot("public", "b").expect("b").segments.iter().map(|x| x.level).collect::<Vec<_>>(), vec![1]);
    assert_eq!(s.purge_retired(), 4, "the four packs of the persists are retired together");
    let merged = parquet_files(&d.join("packs/public"));
    assert_eq!(merged.len(), 2, "{merged:?}");
    assert!(merged.iter().all(|p| !first.contains(p)));
    // Each merge's output takes its newest input's place in write order,
    // which is not its own id: the repair below must restore it.
    let order = |s: &Storage| -> Vec<(u64, u64)> {
        let mut o: Vec<(u64, u64)> = ["a", "b", "c"]
            .iter()
            .flat_map(|t| s.snapshot("public", t).expect("table").segments)
            .map(|x| (x.id, x.order()))
            .collect();
        o.sort_unstable();
        o
    };
    let compacted = order(&s);
    assert!(compacted.iter().all(|(id, order)| order < id), "{compacted:?}");
    s.shutdown().await.expect("shutdown");
    drop(s);

    // The manifest lost: the packs list their slices.
    std::fs::remove_file(d.join(crate::manifest::MANIFEST_FILE)).expect("lose the manifest");
    let report = crate::repair::repair(d, 86_400_000_000_000).expect("repair");
    assert_eq!((report.tables, report.segments, report.rows), (3, 3, 60), "{report:?}");
    let s = Storage::open(config.clone()).await.expect("reopen after repair");
    check(&s, "after a repair");
    assert_eq!(order(&s), compacted, "the write order of the compacted slices, from the packs' own metadata");
    let pack_of_a = d.join(&s.snapshot("public", "a").expect("a").segments[0].path);
    s.shutdown().await.expect("shutdown");
    drop(s);

    // A damaged pack: both tables that share it lose that slice, c keeps
    // its rows, and the file is moved to quarantine/ once.
    let len = std::fs::metadata(&pack_of_a).expect("pack").len();
    std::fs::OpenOptions::new().write(true).open(&pack_of_a).expect("open").set_len(len / 2).expect("truncate");
    let s = Storage::open(config).await.expect("a damaged pack does not stop the start");
    assert_eq!((rows(&s, "a"), rows(&s, "b"), rows(&s, "c")), (0, 0, 20));
    assert_eq!(s.metrics.quarantined_files.load(Ordering::Relaxed), 1);
    assert_eq!(std::fs::read_dir(d.join("quarantine")).expect("quarantine").count(), 1);
}

/// A table's compaction replaces its slices; a pack that also holds
/// another table's slice used to stay on disk with the replaced rows (an
/// outside reader of packs/ counted them twice). The same round moves the
/// other table's slice into a new pack: only listed rows stay on disk,
/// through a restart and a repair from the files' own metadata.
#[tokio::test]
async fn a_pack_left_with_dead_rows_is_rewritten_by_the_next_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut config = StorageConfig::for_tests(d);
    config.compaction.grace = Duration::ZERO;
    config.compaction.cold_after = Duration::from_secs(u64::MAX / 4);
    let s = Storage::open(config.clone()).await.expect("open");
    let mut expected: BTreeMap<&str, Vec<(String, i64, f64)>> = Default::default();
    for round in 0..4i64 {
        let ts: Vec<i64> = (round * 10..round * 10 + 5).collect();
        // b is written once: below fan-in, it is not merged.
        for table in if round == 0 { vec!["a", "b"] } else { vec!["a"] } {
            let w = TableWrite {
                table: table.into(),
                blocks: vec![block(0, "x", ts.clone(), FieldValues::I64(ts.clone()))],
            };
            s.write("public", vec![w]).await.expect("write");
            expected.entry(table).or_default().extend(ts.iter().map(|&t| ("x".to_string(), t, t as f64)));
        }
        s.persist().await.expect("persist");
    }
    let first_pack = d.join(&s.snapshot("public", "b").expect("b").segments[0].path);
    assert_eq!(rows_on_disk(d), 25);
    let stats = s.compact().await.expect("compact");
    assert_eq!((stats.merges, stats.inputs, stats.repacked), (1, 4, 1), "{stats:?}");
    assert_eq!(s.purge_retired(), 4, "the four packs of the persists");
    assert!(!first_pack.exists());
    assert_eq!(rows_on_disk(d), 25, "each row once");
    let b = s.snapshot("public", "b").expect("b").segments.clone();
    assert_eq!(b.iter().map(|x| x.level).collect::<Vec<_>>(), vec![0], "a moved slice keeps its level");
    let check = |s: &Storage, when: &str| {
        for (table, rows) in &expected {
            assert_eq!(&table_values(s, table), rows, "table {table} {when}");
        }
    };
    check(&s, "after the round");
    assert_eq!(s.compact().await.expect("compact"), Default::default(), "nothing is due or dead");
    s.shutdown().await.expect("shutdown");
    drop(s);
    let s = Storage::open(config.clone()).await.expect("reopen");
    check(&s, "after a restart");
    s.shutdown().await.expect("shutdown");
    drop(s);
    std::fs::remove_file(d.join(crate::manifest::MANIFEST_FILE)).expect("lose the manifest");
    let report = crate::repair::repair(d, 86_400_000_000_000).expect("repair");
    assert_eq!((report.tables, report.rows), (2, 25), "{report:?}");
    let s = Storage::open(config).await.expect("reopen after repair");
    check(&s, "after a repair");
}

/// Thousands of metrics do not mean thousands of files per persist: 600
/// small tables (each a metric of a few series, as remote_write makes
/// them) persist into one pack when their columns agree, and into one
/// more per stored type of `v` that differs.
#[tokio::test]
async fn a_persist_of_many_small_tables_writes_a_few_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::for_tests(dir.path());
    // Packs of 18,000 rows against row groups of 1,000: a pack is still
    // one row group (each would repeat every column's metadata).
    config.segments.row_group_rows = 1_000;
    let s = Storage::open(config).await.expect("open");
    for i in 0..600i64 {
        let ts: Vec<i64> = (0..30).map(|k| 1_000 + k).collect();
        // Two kinds of values: integers (stored as Int64) and short
        // decimals (DECIMAL(18, 1)).
        let v: Vec<f64> = ts.iter().map(|&t| if i % 2 == 0 { t as f64 } else { t as f64 + 0.5 }).collect();
        let w = TableWrite {
            table: format!("metric_{i}"),
            blocks: vec![
                block(0, "a", ts.clone(), FieldValues::F64(v.clone())),
                block(1, "b", ts, FieldValues::F64(v)),
            ],
        };
        s.write("public", vec![w]).await.expect("write");
    }
    let stats = s.persist().await.expect("persist");
    assert_eq!((stats.tables, stats.segments, stats.rows), (600, 600, 600 * 60));
    let files = parquet_files(&dir.path().join("packs/public"));
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let reader =
            parquet::file::reader::SerializedFileReader::new(File::open(f).expect("open pack")).expect("parquet");
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        assert_eq!((meta.num_row_groups(), meta.file_metadata().num_rows()), (1, 300 * 60), "{f:?}");
    }
    assert!(!dir.path().join("segments").exists() || parquet_files(&dir.path().join("segments/public")).is_empty());
    assert_eq!(table_values(&s, "metric_7").len(), 60);
    assert_eq!(table_values(&s, "metric_7")[0], ("a".to_string(), 1_000, 1_000.5));
}

/// Rewrites the pack at `path` with its origin record changed by `edit`
/// (what a crafted or damaged file would say of itself).
fn rewrite_pack_origin(data_dir: &Path, path: &Path, edit: impl FnOnce(&mut crate::segment::SegmentOrigin)) {
    let meta = crate::segment::read_footer(path).expect("footer");
    let kv = meta.file_metadata().key_value_metadata().expect("key-value metadata");
    let text = kv.iter().find(|k| k.key == crate::segment::ORIGIN_KEY).and_then(|k| k.value.clone()).expect("origin");
    let mut origin: crate::segment::SegmentOrigin = serde_json::from_str(&text).expect("origin parses");
    edit(&mut origin);
    let schema =
        parquet::arrow::parquet_to_arrow_schema(meta.file_metadata().schema_descr(), Some(kv)).expect("schema");
    let schema = Arc::new(arrow::datatypes::Schema::new(schema.fields().clone()));
    let batches = compact::read_segment(path, None, &schema).expect("read pack");
    let all = concat_batches(&schema, &batches).expect("concat");
    let options = crate::segment::SegmentOptions { row_group_rows: all.num_rows().max(1), ..Default::default() };
    std::fs::remove_file(path).expect("remove the pack");
    crate::segment::write_parquet(data_dir, path, &all, &options, &origin).expect("rewrite pack");
}

/// Writes two rows to each of the small tables `a` and `b` and persists
/// them (into one pack, by default).
async fn persist_two_small_tables(s: &Storage) {
    for table in ["a", "b"] {
        let w =
            TableWrite { table: table.into(), blocks: vec![block(0, "x", vec![1, 2], FieldValues::I64(vec![1, 2]))] };
        s.write("public", vec![w]).await.expect("write");
    }
    s.persist().await.expect("persist");
}

/// A pack names its tables in its own metadata, and `tocsin repair` makes
/// them tables again: a slice named `../../escape` once became a table
/// whose compaction wrote outside the data directory. Such a pack is now
/// quarantined by the repair, and nothing is written outside.
#[tokio::test]
async fn repair_quarantines_a_pack_whose_slices_name_a_path() {
    let outer = tempfile::tempdir().expect("tempdir");
    let d = outer.path().join("data");
    let mut config = StorageConfig::for_tests(&d);
    config.compaction.grace = Duration::ZERO;
    let s = Storage::open(config.clone()).await.expect("open");
    persist_two_small_tables(&s).await;
    let pack = d.join(&s.snapshot("public", "a").expect("a").segments[0].path);
    s.shutdown().await.expect("shutdown");
    drop(s);

    type Craft = fn(&mut crate::segment::SegmentOrigin);
    let crafted: [(&str, Craft, &str); 4] = [
        ("../../escape", |o| o.slices[0].table = "../../escape".into(), "start with '.'"),
        ("x/../../escape", |o| o.slices[0].table = "x/../../escape".into(), "'/'"),
        ("one id twice", |o| o.slices[0].id = o.slices[1].id, "two slices with id"),
        ("a huge id", |o| o.slices[0].id = u64::MAX - 1, "past the ids"),
    ];
    for (bad, craft, why) in crafted {
        let copy = outer.path().join("pack.copy");
        std::fs::copy(&pack, &copy).expect("keep the pack");
        rewrite_pack_origin(&d, &pack, craft);
        std::fs::remove_file(d.join(crate::manifest::MANIFEST_FILE)).expect("lose the manifest");
        let report = crate::repair::repair(&d, 86_400_000_000_000).expect("repair");
        assert_eq!(report.quarantined.len(), 1, "{bad}: {report:?}");
        assert!(report.quarantined[0].2.contains(why), "{bad}: {:?}", report.quarantined);
        assert_eq!(report.tables, 0, "{bad}: {report:?}");
        let s = Storage::open(config.clone()).await.expect("open after repair");
        s.compact_full().await.expect("compact");
        assert!(s.snapshot("public", "a").is_none() && s.snapshot("public", "b").is_none());
        s.shutdown().await.expect("shutdown");
        drop(s);
        let outside: Vec<_> =
            std::fs::read_dir(outer.path()).expect("outer").flatten().map(|e| e.file_name()).collect();
        assert_eq!(outside.len(), 2, "only data/ and the copy: {outside:?}");
        // Back to the good pack, listed again by a repair.
        let q = &report.quarantined[0].1;
        std::fs::remove_file(q).expect("drop the quarantined copy");
        std::fs::rename(&copy, &pack).expect("restore the pack");
        std::fs::remove_file(d.join(crate::manifest::MANIFEST_FILE)).expect("manifest");
        let report = crate::repair::repair(&d, 86_400_000_000_000).expect("repair");
        assert_eq!((report.tables, report.rows), (2, 4), "{report:?}");
    }
    // Two slices of one table are what a compaction round can write (a
    // merge's output and a slice moved out of another pack): repair keeps
    // them, where it once quarantined the whole pack.
    let copy = outer.path().join("pack.copy");
    std::fs::copy(&pack, &copy).expect("keep the pack");
    rewrite_pack_origin(&d, &pack, |o| o.slices[0].table = o.slices[1].table.clone());
    std::fs::remove_file(d.join(crate::manifest::MANIFEST_FILE)).expect("lose the manifest");
    let report = crate::repair::repair(&d, 86_400_000_000_000).expect("repair");
    assert_eq!((report.quarantined.len(), report.tables, report.segments, report.rows), (0, 1, 2, 4), "{report:?}");
    // The pack's own id comes after its slices' ids: the repaired manifest
    // must hand out ids after it, or the next persist writes over it.
    let pack_id: u64 = pack.file_stem().and_then(|n| n.to_str()?.parse().ok()).expect("pack id");
    let repaired = Manifest::load(&d).expect("manifest");
    assert!(repaired.next_segment_id > pack_id, "{} <= {pack_id}", repaired.next_segment_id);
    let s = Storage::open(config.clone()).await.expect("open after repair");
    assert_eq!(rows(&s, "b"), 4);
}

/// The manifest's names and paths become file operations at start (read,
/// quarantine, delete when retired): a manifest whose table is `..`, whose
/// segment lies outside the data directory, or whose slice lists rows the
/// file does not hold is refused with what is wrong and how to repair it,
/// and no file outside is touched.
#[tokio::test]
async fn a_manifest_that_points_outside_or_past_its_files_is_refused() {
    let outer = tempfile::tempdir().expect("tempdir");
    let d = outer.path().join("data");
    let config = StorageConfig::for_tests(&d);
    let s = Storage::open(config.clone()).await.expect("open");
    persist_two_small_tables(&s).await;
    s.shutdown().await.expect("shutdown");
    drop(s);
    let victim = outer.path().join("victim.parquet");
    std::fs::write(&victim, b"not a segment").expect("victim");
    let manifest_path = d.join(crate::manifest::MANIFEST_FILE);
    let good = std::fs::read_to_string(&manifest_path).expect("manifest");
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &str); 7] = [
        (
            "table ..",
            |m| {
                let t = m["databases"]["public"].as_object_mut().expect("public");
                let a = t.remove("a").expect("a");
                t.insert("..".into(), a);
            },
            "starts with '.'",
        ),
        (
            "outside",
            |m| m["databases"]["public"]["a"]["segments"][0]["path"] = "packs/public/../../victim.parquet".into(),
            "is not packs/public",
        ),
        ("retired outside", |m| m["retired"] = serde_json::json!(["/tmp/victim.parquet"]), "retired file"),
        (
            "rows past the file",
            |m| m["databases"]["public"]["b"]["segments"][0]["pack"]["first_row"] = 3.into(),
            "the file holds 4",
        ),
        (
            "rows of another table",
            |m| m["databases"]["public"]["b"]["segments"][0]["pack"]["first_row"] = 1.into(),
            "the file has it at rows 2..4",
        ),
        (
            "another table's slice",
            |m| {
                let b = m["databases"]["public"]["b"]["segments"][0].clone();
                m["databases"]["public"]["a"]["segments"][0] = b;
            },
            "of table b",
        ),
        (
            "a segment listed twice",
            |m| {
                let a = m["databases"]["public"]["a"]["segments"][0].clone();
                m["databases"]["public"]["a"]["segments"].as_array_mut().expect("segments").push(a);
            },
            "twice",
        ),
    ];
    for (what, edit, expected) in edits {
        let mut m: serde_json::Value = serde_json::from_str(&good).expect("json");
        edit(&mut m);
        std::fs::write(&manifest_path, serde_json::to_vec(&m).expect("json")).expect("write manifest");
        let err = Storage::open(config.clone()).await.err().unwrap_or_else(|| panic!("{what}: started"));
        let text = err.to_string();
        assert!(text.contains(expected) && text.contains("tocsin repair"), "{what}: {text}");
        assert!(victim.exists(), "{what}: the file outside is untouched");
        // The repair the refusal names rebuilds the manifest from the
        // files (it once found every id present and changed nothing).
        let report = crate::repair::repair(&d, 86_400_000_000_000).expect("repair");
        assert!(!report.already_consistent, "{what}: {report:?}");
        let s = Storage::open(config.clone()).await.unwrap_or_else(|e| panic!("{what}: after repair: {e}"));
        assert_eq!((rows(&s, "a"), rows(&s, "b")), (2, 2), "{what}");
        s.shutdown().await.expect("shutdown");
        drop(s);
        assert!(victim.exists(), "{what}: the file outside is untouched");
    }
    std::fs::write(&manifest_path, &good).expect("manifest");
    let s = Storage::open(config.clone()).await.expect("the good manifest opens");
    assert_eq!((rows(&s, "a"), rows(&s, "b")), (2, 2));
    s.shutdown().await.expect("shutdown");
    drop(s);

    // A next id that is taken (a hand-edited manifest, or a repair that
    // counted slice ids only): the next persist once wrote over the pack.
    let mut m: serde_json::Value = serde_json::from_str(&good).expect("json");
    m["next_segment_id"] = 1.into();
    std::fs::write(&manifest_path, serde_json::to_vec(&m).expect("json")).expect("write manifest");
    let s = Storage::open(config.clone()).await.expect("open");
    let w = TableWrite { table: "c".into(), blocks: vec![block(0, "x", vec![1], FieldValues::I64(vec![1]))] };
    s.write("public", vec![w]).await.expect("write");
    s.persist().await.expect("persist");
    s.shutdown().await.expect("shutdown");
    drop(s);
    let s = Storage::open(config).await.expect("reopen");
    assert_eq!((rows(&s, "a"), rows(&s, "b"), rows(&s, "c")), (2, 2, 1));
}

/// A compaction checks that it read as many rows as the manifest lists for
/// each input: a file changed under the server (here: another segment's
/// file copied over it) fails the merge, and the inputs stay as they are.
#[tokio::test]
async fn a_merge_that_reads_other_rows_than_listed_keeps_its_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StorageConfig::for_tests(dir.path());
    config.segments.pack_max_rows = 0;
    let s = Storage::open(config).await.expect("open");
    for n in [3i64, 5] {
        let ts: Vec<i64> = (0..n).map(|i| n * 100 + i).collect();
        let w = TableWrite { table: "t".into(), blocks: vec![block(0, "x", ts.clone(), FieldValues::I64(ts))] };
        s.write("public", vec![w]).await.expect("write");
        s.persist().await.expect("persist");
    }
    let segs = s.snapshot("public", "t").expect("t").segments.clone();
    assert_eq!(segs.iter().map(|x| x.rows).collect::<Vec<_>>(), vec![3, 5]);
    std::fs::copy(dir.path().join(&segs[1].path), dir.path().join(&segs[0].path)).expect("copy over");
    let stats = s.compact_full().await.expect("a failed merge is not the round's error");
    assert_eq!(stats.merges, 0, "{stats:?}");
    let after = s.snapshot("public", "t").expect("t").segments.clone();
    assert_eq!(after.iter().map(|x| x.id).collect::<Vec<_>>(), segs.iter().map(|x| x.id).collect::<Vec<_>>());
}

/// A folder of segments that links out of the data directory: the start
/// once moved an outside file found through it to quarantine/, and a
/// retired entry through it deleted one. Such folders are not walked, a
/// segment listed through one refuses the start, and nothing outside is
/// moved or deleted.
#[tokio::test]
async fn folders_that_link_outside_are_not_followed() {
    let outer = tempfile::tempdir().expect("tempdir");
    let d = outer.path().join("data");
    let mut config = StorageConfig::for_tests(&d);
    config.segments.pack_max_rows = 0;
    let s = Storage::open(config.clone()).await.expect("open");
    let w = TableWrite { table: "t".into(), blocks: vec![block(0, "x", vec![1, 2], FieldValues::I64(vec![1, 2]))] };
    s.write("public", vec![w]).await.expect("write");
    s.persist().await.expect("persist");
    let seg = s.snapshot("public", "t").expect("t").segments[0].clone();
    s.shutdown().await.expect("shutdown");
    drop(s);
    let out = outer.path().join("out");
    std::fs::create_dir(&out).expect("out");
    let victim = out.join("00000000000000000099.parquet");
    std::fs::copy(d.join(&seg.path), &victim).expect("victim");
    std::os::unix::fs::symlink(&out, d.join("segments/public/evil")).expect("symlink");

    let s = Storage::open(config.clone()).await.expect("an unlisted link is ignored");
    assert_eq!(rows(&s, "t"), 2);
    s.shutdown().await.expect("shutdown");
    drop(s);
    assert!(victim.exists(), "not moved to quarantine");

    let manifest_path = d.join(crate::manifest::MANIFEST_FILE);
    let good = std::fs::read_to_string(&manifest_path).expect("manifest");
    let mut m: serde_json::Value = serde_json::from_str(&good).expect("json");
    let mut entry = m["databases"]["public"]["t"].clone();
    entry["segments"][0]["id"] = 99.into();
    entry["segments"][0]["path"] = "segments/public/evil/00000000000000000099.parquet".into();
    m["databases"]["public"]["evil"] = entry;
    std::fs::write(&manifest_path, serde_json::to_vec(&m).expect("json")).expect("manifest");
    let err = Storage::open(config.clone()).await.expect_err("refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(victim.exists());

    let mut m: serde_json::Value = serde_json::from_str(&good).expect("json");
    m["retired"] = serde_json::json!(["segments/public/evil/00000000000000000099.parquet"]);
    std::fs::write(&manifest_path, serde_json::to_vec(&m).expect("json")).expect("manifest");
    let s = Storage::open(config).await.expect("open");
    assert_eq!(rows(&s, "t"), 2);
    assert!(victim.exists(), "a retired entry through the link deletes nothing");
}

/// Rows of table `t` that a reader sees: buffered ones, and those of the
/// segments without the rows their tombstones delete, as (host, ts).
fn visible(s: &Storage) -> Vec<(String, i64)> {
    let snap = s.snapshot("public", "t").expect("table");
    let mut out = Vec::new();
    for c in &snap.chunks {
        host_ts(&adapt_batch(&c.batch, &snap.schema).expect("adapt"), &mut out);
    }
    for seg in &snap.segments {
        let deleted = crate::tombstone::covering(&snap.tombstones, seg);
        for b in compact::read_segment(&snap.segment_path(seg), seg.row_range(), &snap.schema).expect("read") {
            host_ts(&crate::tombstone::remove_deleted(&b, &deleted).expect("filter"), &mut out);
        }
    }
    out.sort();
    out
}

/// Every (host, ts) of table `t`'s segment files, sorted, whatever their
/// tombstones say.
fn segment_rows_of(s: &Storage) -> Vec<(String, i64)> {
    let snap = s.snapshot("public", "t").expect("table");
    let mut out = Vec::new();
    for seg in &snap.segments {
        for b in compact::read_segment(&snap.segment_path(seg), seg.row_range(), &snap.schema).expect("read") {
            host_ts(&b, &mut out);
        }
    }
    out.sort();
    out
}

fn host_ts(b: &RecordBatch, out: &mut Vec<(String, i64)>) {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, TimestampNanosecondType};
    let host = b.column_by_name("host").expect("host").as_dictionary::<Int32Type>().clone();
    let names = host.values().as_string::<i32>();
    let ts = b.column_by_name("ts").expect("ts").as_primitive::<TimestampNanosecondType>().clone();
    for i in 0..b.num_rows() {
        out.push((names.value(host.keys().value(i) as usize).to_string(), ts.value(i)));
    }
}

#[tokio::test]
async fn a_deletion_hides_rows_at_once_and_compaction_removes_them_for_good() {
    use crate::tombstone::{Deletion, TagIn};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || StorageConfig {
        compaction: crate::config::CompactionConfig { grace: Duration::ZERO, ..Default::default() },
        ..StorageConfig::for_tests(dir.path())
    };
    let s = Storage::open(config()).await.expect("open");
    let w = |host: &str, ts: Vec<i64>| TableWrite {
        table: "t".into(),
        blocks: vec![block(0, host, ts.clone(), FieldValues::I64(ts))],
    };
    s.write("public", vec![w("a", vec![1, 2, 3]), w("b", vec![1, 2, 3])]).await.expect("write");
    s.persist().await.expect("persist");
    // Still in the write buffer when the deletion is made.
    s.write("public", vec![w("a", vec![4]), w("b", vec![4])]).await.expect("write");

    let a_from_2 =
        Deletion { min_ts: 2, max_ts: 10, tags: vec![TagIn { tag: "host".into(), values: vec!["a".into()] }] };
    let done = s.delete("public", "t", a_from_2.clone()).await.expect("delete");
    assert_eq!(done.rows, 3, "a at 2, 3 and the buffered 4");
    let after = vec![("a".to_string(), 1), ("b".into(), 1), ("b".into(), 2), ("b".into(), 3), ("b".into(), 4)];
    assert_eq!(visible(&s), after);
    // Made again, it deletes nothing more and records nothing.
    assert_eq!(s.delete("public", "t", a_from_2).await.expect("again").rows, 0);
    assert_eq!(s.snapshot("public", "t").expect("t").tombstones.len(), 1);

    // A row written after the deletion, at a deleted time and series, stays.
    s.write("public", vec![w("a", vec![3])]).await.expect("write");
    s.persist().await.expect("persist");
    let mut with_new = after.clone();
    with_new.insert(1, ("a".into(), 3));
    assert_eq!(visible(&s), with_new);

    // Refusals name the problem.
    let on_field = Deletion { tags: vec![TagIn { tag: "v".into(), values: vec!["1".into()] }], ..Deletion::all() };
    let err = s.delete("public", "t", on_field).await.expect_err("a field").to_string();
    assert!(err.contains("\"v\" is a") && err.contains("tags only"), "{err}");
    let err = s.delete("public", "nope", Deletion::all()).await.expect_err("no table").to_string();
    assert!(err.contains("public.nope does not exist"), "{err}");

    // The tombstone survives a restart...
    s.shutdown().await.expect("shutdown");
    drop(s);
    let s = Storage::open(config()).await.expect("reopen");
    assert_eq!(visible(&s), with_new);
    assert_eq!(s.snapshot("public", "t").expect("t").tombstones.len(), 1);
    // ... and compaction rewrites the rows away and drops it.
    let stats = s.compact().await.expect("compact");
    assert!(stats.merges + stats.purged >= 1, "{stats:?}");
    let snap = s.snapshot("public", "t").expect("t");
    assert!(snap.tombstones.is_empty(), "nothing left to delete: {:?}", snap.tombstones);
    assert_eq!(visible(&s), with_new);
    let on_disk: Vec<(String, i64)> = segment_rows_of(&s);
    assert_eq!(on_disk, with_new, "the deleted rows are gone from the files");
    let text = std::fs::read_to_string(dir.path().join("manifest.json")).expect("manifest");
    assert!(!text.contains("tombstones"), "{text}");
}

/// A lastpoint scan that began before a deletion holds the deleted rows: it
/// must not complete the last-row cache (a hostile review had lastpoint
/// answer a deleted row until the next deletion).
#[tokio::test]
async fn a_scan_begun_before_a_deletion_does_not_complete_the_last_row_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
    let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![1, 2], FieldValues::I64(vec![1, 2]))] };
    s.write("public", vec![w]).await.expect("write");
    let scanned = s.snapshot("public", "t").expect("t").chunks[0].batch.slice(1, 1);
    s.persist().await.expect("persist");
    let epoch = s.last_rows_epoch();
    let newest = crate::tombstone::Deletion { min_ts: 2, max_ts: 2, tags: vec![] };
    assert_eq!(s.delete("public", "t", newest).await.expect("delete").rows, 1);
    s.complete_last_rows("public", "t", &scanned, epoch).expect("complete");
    assert!(s.last_rows("public", "t").expect("read").is_none(), "completed from a scan older than the deletion");
    s.complete_last_rows("public", "t", &scanned.slice(0, 0), s.last_rows_epoch()).expect("complete");
    assert!(s.last_rows("public", "t").expect("read").is_some(), "a scan begun after it completes the cache");
}

/// Every read of a covered segment applies each of its tombstones: their
/// number is bounded, and a compaction round (merges disabled or not)
/// rewrites the segments and makes room again.
#[tokio::test]
async fn tombstones_are_bounded_until_a_compaction_round_removes_their_rows() {
    use crate::tombstone::Deletion;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StorageConfig {
        compaction: crate::config::CompactionConfig { enabled: false, grace: Duration::ZERO, ..Default::default() },
        ..StorageConfig::for_tests(dir.path())
    };
    let s = Storage::open(config).await.expect("open");
    let ts: Vec<i64> = (1..=200).collect();
    let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", ts.clone(), FieldValues::I64(ts))] };
    s.write("public", vec![w]).await.expect("write");
    s.persist().await.expect("persist");
    let one = |t: i64| Deletion { min_ts: t, max_ts: t, tags: vec![] };
    for t in 1..=delete::MAX_TOMBSTONES as i64 {
        assert_eq!(s.delete("public", "t", one(t)).await.expect("delete").rows, 1);
    }
    let err = s.delete("public", "t", one(150)).await.expect_err("over the bound").to_string();
    assert!(err.contains("100 deletions") && err.contains("POST /api/v1/admin/compact"), "{err}");
    let stats = s.compact().await.expect("compact");
    assert_eq!(stats.purged, 1, "{stats:?}");
    assert!(s.snapshot("public", "t").expect("t").tombstones.is_empty());
    assert_eq!(s.delete("public", "t", one(150)).await.expect("room again").rows, 1);
    assert_eq!(visible(&s).len(), 200 - 101);
}

/// (ts, v) of every row in `public.t`'s segments, sorted.
fn ts_and_v(s: &Storage) -> Vec<(i64, Option<i64>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampNanosecondType};
    let snap = s.snapshot("public", "t").expect("table");
    let mut out = Vec::new();
    for seg in &snap.segments {
        for b in compact::read_segment(&snap.segment_path(seg), seg.row_range(), &snap.schema).expect("read") {
            let ts = b.column_by_name("ts").expect("ts").as_primitive::<TimestampNanosecondType>().clone();
            let v = b.column_by_name("v").expect("v").as_primitive::<Int64Type>().clone();
            out.extend((0..b.num_rows()).map(|i| (ts.value(i), v.is_valid(i).then(|| v.value(i)))));
        }
    }
    out.sort();
    out
}

/// The partitions a snapshot of `public.t` dedupes.
fn overlapping(s: &Storage, table: &str) -> Vec<i64> {
    s.snapshot("public", table).and_then(|t| t.overlaps).map(|o| o.partitions).unwrap_or_default()
}

fn write_a(ts: std::ops::Range<i64>, v: i64) -> TableWrite {
    let ts: Vec<i64> = ts.collect();
    let n = ts.len();
    TableWrite { table: "t".into(), blocks: vec![block(0, "a", ts, FieldValues::I64(vec![v; n]))] }
}

#[tokio::test]
async fn rows_of_a_series_and_time_written_again_keep_the_last_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = crate::config::CompactionConfig {
        cold_after: Duration::from_secs(u64::MAX / 4),
        grace: Duration::ZERO,
        ..Default::default()
    };
    let mut config = StorageConfig { compaction: live, ..StorageConfig::for_tests(dir.path()) };
    config.segments.pack_max_rows = 0;
    let day = 86_400_000_000_000i64;
    {
        let s = Storage::open(config.clone()).await.expect("open");
        s.write("public", vec![write_a(0..10, 1)]).await.expect("write");
        s.persist().await.expect("persist");
        // In order: nothing may repeat.
        s.write("public", vec![write_a(10..12, 1)]).await.expect("write");
        assert_eq!(overlapping(&s, "t"), Vec::<i64>::new());
        // 5..12 again, and on into the next partition: only the first
        // partition's rows can repeat.
        let mut again = write_a(5..15, 2);
        again.blocks[0].timestamps.push(day + 1);
        again.blocks[0].fields[0].values = FieldValues::I64(vec![2; 11]);
        s.write("public", vec![again]).await.expect("write");
        assert_eq!(overlapping(&s, "t"), vec![0]);
        s.persist().await.expect("persist");
        // The persist kept the last of the buffer's repeats (10 and 11
        // were written twice there); the partition's older segment still
        // holds 5..9 once more.
        assert_eq!(overlapping(&s, "t"), vec![0], "saved as overlapping");
        let snap = s.snapshot("public", "t").expect("table");
        let rows: Vec<u64> = snap.segments.iter().map(|x| x.rows).collect();
        assert_eq!(rows, vec![10, 10, 1], "1 + 2 persists: 0..9, then 5..14 once each, and the next day's row");
        // One block repeating a time: its last row wins. Left in the WAL.
        s.write(
            "public",
            vec![TableWrite {
                table: "t".into(),
                blocks: vec![block(0, "a", vec![20, 20], FieldValues::I64(vec![3, 4]))],
            }],
        )
        .await
        .expect("write");
    }
    // Reopened: the saved partitions, and the replayed block's.
    let s = Storage::open(config.clone()).await.expect("reopen");
    assert_eq!(overlapping(&s, "t"), vec![0]);
    s.persist().await.expect("persist");
    // Compaction merges the overlapping partition whole, below fan-in.
    let stats = s.compact().await.expect("compact");
    assert_eq!((stats.merges, stats.inputs), (1, 3));
    assert_eq!(overlapping(&s, "t"), Vec::<i64>::new(), "one segment: nothing repeats");
    let got = ts_and_v(&s);
    let mut want: Vec<(i64, Option<i64>)> = (0..5).map(|t| (t, Some(1))).collect();
    want.extend((5..15).map(|t| (t, Some(2))));
    want.push((20, Some(4)));
    want.push((day + 1, Some(2)));
    assert_eq!(got, want);
    let seg = &s.snapshot("public", "t").expect("table").segments;
    let merged = seg.iter().find(|x| x.partition_start == 0).expect("partition 0");
    assert!(merged.seq > 0 && merged.seq < merged.id, "the output takes its newest input's place: {merged:?}");

    // A series this process has not seen may have rows up to the table's
    // newest time: written again below it, it may repeat one.
    drop(s);
    let s = Storage::open(config.clone()).await.expect("reopen");
    s.write("public", vec![write_a(3..4, 9)]).await.expect("write");
    assert_eq!(overlapping(&s, "t"), vec![0]);

    // A log table keeps every row, as does a server with deduplicate off.
    let log = |ts: Vec<i64>| TableWrite {
        table: "logs".into(),
        blocks: vec![SeriesBlock {
            item: 0,
            tags: vec![("service".into(), "x".into())],
            fields: vec![FieldColumn {
                name: "message".into(),
                values: FieldValues::Str(vec!["m".into(); ts.len()]),
                validity: None,
            }],
            timestamps: ts,
        }],
    };
    s.write("public", vec![log(vec![5, 5])]).await.expect("write");
    assert_eq!(overlapping(&s, "logs"), Vec::<i64>::new());
    let mut span = log(vec![6, 6]);
    span.table = "spans".into();
    span.blocks[0].fields[0].name = "trace_id".into();
    s.write("public", vec![span]).await.expect("write");
    assert_eq!(overlapping(&s, "spans"), Vec::<i64>::new());
    s.persist().await.expect("persist");
    assert_eq!(rows(&s, "logs"), 2);
    assert_eq!(rows(&s, "spans"), 2);
    drop(s);
    let s = Storage::open(StorageConfig { deduplicate: false, ..config }).await.expect("reopen");
    s.write("public", vec![write_a(3..4, 9)]).await.expect("write");
    assert_eq!(overlapping(&s, "t"), Vec::<i64>::new());
}

/// What a table keeps is decided when it is created: a `message` field
/// that a metrics table gets later does not make it keep every row, and a
/// log table stays one across a restart.
#[tokio::test]
async fn a_table_keeps_the_kind_it_was_created_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StorageConfig::for_tests(dir.path());
    let with_message = |table: &str, ts: Vec<i64>| TableWrite {
        table: table.into(),
        blocks: vec![SeriesBlock {
            item: 0,
            tags: vec![("host".into(), "a".into())],
            fields: vec![FieldColumn {
                name: "message".into(),
                values: FieldValues::Str(vec!["m".into(); ts.len()]),
                validity: None,
            }],
            timestamps: ts,
        }],
    };
    {
        let s = Storage::open(config.clone()).await.expect("open");
        s.write("public", vec![write_a(0..3, 1)]).await.expect("write");
        s.write("public", vec![with_message("t", vec![1])]).await.expect("write");
        assert_eq!(overlapping(&s, "t"), vec![0], "still a metrics table");
        s.write("public", vec![with_message("ev", vec![5, 5])]).await.expect("write");
        assert_eq!(overlapping(&s, "ev"), Vec::<i64>::new());
        s.persist().await.expect("persist");
        assert_eq!(rows(&s, "t"), 3, "the repeated time counts once");
    }
    let s = Storage::open(config).await.expect("reopen");
    s.write("public", vec![with_message("ev", vec![5])]).await.expect("write");
    assert_eq!(overlapping(&s, "ev"), Vec::<i64>::new(), "a log table after a restart");
    let m = Manifest::load(dir.path()).expect("manifest");
    assert_eq!(m.databases["public"]["ev"].events, Some(true));
    assert_eq!(m.databases["public"]["t"].events, Some(false));
}

/// A bucket on disk for `segments = "object-store"`: files copied in by
/// the test, fetched back as the server's copy would give them.
struct DirBucket(PathBuf);

impl crate::cache::SegmentSource for DirBucket {
    fn fetch<'a>(
        &'a self,
        data_dir: &'a Path,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'a>> {
        Box::pin(async move {
            let to = data_dir.join(path);
            std::fs::create_dir_all(to.parent().expect("parent")).map_err(|e| e.to_string())?;
            std::fs::copy(self.0.join(path), &to).map_err(|e| format!("not in the bucket: {e}"))
        })
    }

    fn bytes(&self, path: &str) -> Option<u64> {
        std::fs::metadata(self.0.join(path)).ok().map(|m| m.len())
    }
}

/// A file on the writer's disk that is corrupt while the bucket's copy
/// holds it is quarantined and fetched again when read, not dropped from
/// the manifest (whose next push would prune the only good copy); one the
/// copy does not hold is dropped as before, and the start goes on.
#[tokio::test]
async fn a_corrupt_file_the_bucket_holds_is_fetched_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = tempfile::tempdir().expect("bucket");
    let open = || {
        Storage::open_fetching(
            StorageConfig::for_tests(dir.path()),
            Arc::new(DirBucket(bucket.path().to_path_buf())),
            u64::MAX,
        )
    };
    let s = open().await.expect("open");
    persist_three(&s).await;
    let files: Vec<String> = listed_files(&s).into_iter().collect();
    assert_eq!(files.len(), 3, "{files:?}");
    // The first two are in the copy; the third is not.
    to_bucket(dir.path(), bucket.path(), &files[..2]);
    s.in_copy(files[..2].iter().cloned().collect());
    drop(s);
    for f in [&files[0], &files[2]] {
        std::fs::write(dir.path().join(f), b"PAR1 bit rot PAR1").expect("damage");
    }

    let s = open().await.expect("starts");
    let listed: Vec<String> = listed_files(&s).into_iter().collect();
    assert_eq!(listed, files[..2], "the one the bucket holds stays listed; the other is dropped");
    assert_eq!(std::fs::read_dir(dir.path().join("quarantine")).expect("quarantine").count(), 2);
    let snap = s.snapshot("public", "t").expect("table");
    let segs: Vec<&SegmentMeta> = snap.segments.iter().map(|x| x.as_ref()).collect();
    s.ensure_local("public", "t", &segs).await.expect("fetched");
    let fetched = crate::segment::verify_segment(&dir.path().join(&files[0])).expect("a good copy again");
    assert_eq!(fetched, 100);
    assert_eq!(rows(&s, "t"), 200);
}

/// Three persists of 100 rows of table `t` each: three segment files.
async fn persist_three(s: &Storage) {
    for n in 0..3i64 {
        let ts: Vec<i64> = (n * 100..n * 100 + 100).collect();
        let w = TableWrite { table: "t".into(), blocks: vec![block(0, "a", ts.clone(), FieldValues::I64(ts))] };
        s.write("public", vec![w]).await.expect("write");
        s.persist().await.expect("persist");
    }
}

/// Copies `files` of data directory `dir` into the bucket folder, as a push would.
fn to_bucket(dir: &Path, bucket: &Path, files: &[String]) {
    for f in files {
        let to = bucket.join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(dir.join(f), to).expect("copy");
    }
}

fn listed_files(s: &Storage) -> BTreeSet<String> {
    s.snapshot("public", "t").map(|t| t.segments.iter().map(|x| x.path.clone()).collect()).unwrap_or_default()
}

/// A writer whose segments live in the bucket keeps every file its copy
/// does not hold, lets go of the others past its bound, and brings them
/// back for a merge, a checkpoint's list and a restart.
#[tokio::test]
async fn a_writer_lets_go_only_of_files_its_copy_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = tempfile::tempdir().expect("bucket");
    let open = || {
        Storage::open_fetching(
            StorageConfig::for_tests(dir.path()),
            Arc::new(DirBucket(bucket.path().to_path_buf())),
            1,
        )
    };
    let s = open().await.expect("open");
    persist_three(&s).await;
    let files = listed_files(&s);
    assert_eq!(files.len(), 3, "{files:?}");
    let on_disk = |f: &String| dir.path().join(f).exists();
    s.trim_cache(&[]);
    assert!(files.iter().all(on_disk), "nothing is in the copy yet: every file stays");

    // Two of three pushed: those two go, the third stays.
    let pushed: Vec<String> = files.iter().take(2).cloned().collect();
    to_bucket(dir.path(), bucket.path(), &pushed);
    s.in_copy(pushed.iter().cloned().collect());
    let left: Vec<&String> = files.iter().filter(|f| on_disk(f)).collect();
    assert_eq!(left, files.iter().filter(|f| !pushed.contains(f)).collect::<Vec<_>>());

    // A checkpoint lists the files let go of, with their lengths.
    let cp = s.checkpoint(&dir.path().join("image")).await.expect("checkpoint");
    let away: Vec<String> = cp.away.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(away, pushed);
    assert!(cp.away.iter().all(|(p, b)| std::fs::metadata(bucket.path().join(p)).expect("bucket").len() == *b));
    std::fs::remove_dir_all(dir.path().join("image")).expect("rm image");

    // Restarted, the files let go of are not looked for; one the bucket
    // lacks too refuses the start, named.
    drop(s);
    let s = open().await.expect("reopen");
    assert_eq!(rows(&s, "t"), 300);
    drop(s);
    let lost = bucket.path().join(&pushed[0]);
    std::fs::rename(&lost, bucket.path().join("aside")).expect("aside");
    let Err(err) = open().await else { panic!("a file nowhere refuses the start") };
    assert!(matches!(&err, StorageError::SegmentNotInCopy { path, .. } if path.ends_with(&pushed[0])), "{err}");
    std::fs::rename(bucket.path().join("aside"), &lost).expect("back");

    // A merge reads its inputs from the bucket; its output stays until
    // pushed, and the inputs leave the count.
    let s = open().await.expect("reopen");
    let stats = s.compact_full().await.expect("compact");
    assert_eq!((stats.inputs, stats.outputs, stats.rows), (3, 1, 300), "{stats:?}");
    let merged = listed_files(&s);
    assert!(merged.iter().all(on_disk));
    assert_eq!(rows(&s, "t"), 300);
    let c = s.cache_stats().expect("cache");
    assert_eq!(c.fetches, 2, "{c:?}");
    // The output is not in the copy yet, and the inputs are retired.
    assert_eq!((c.bytes, c.files), (0, 0), "retired inputs leave the count: {c:?}");
    s.in_copy(merged.iter().cloned().collect());
    let c = s.cache_stats().expect("cache");
    assert_eq!((c.files, c.evictions), (0, 1), "the pushed output goes past the bound: {c:?}");
    assert!(!merged.iter().any(on_disk));
}
