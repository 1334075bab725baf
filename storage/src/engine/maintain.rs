//! Housekeeping of segments: compaction, retention, the swap of inputs for
//! outputs in the manifest, the purge of retired files, and the series
//! registry's window.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::datatypes::SchemaRef;

use super::{Storage, StorageError, TableState};
use crate::compact::{self, CompactionStats};
use crate::manifest::SegmentMeta;
use crate::pack::{PackItem, write_packs};
use crate::segment::{SegmentError, SegmentOrigin, SegmentTarget, prepare_slices, remove_written, write_slice};
use crate::tombstone::{Tombstone, covering, remove_deleted};

/// One table's segments replaced by others in a manifest swap.
struct Change {
    db: String,
    table: String,
    inputs: Vec<Arc<SegmentMeta>>,
    outputs: Vec<SegmentMeta>,
}

/// A merge read and sorted, whose small outputs wait to be packed.
struct Merge {
    db: String,
    table: String,
    inputs: Vec<Arc<SegmentMeta>>,
    slices: Vec<(i64, arrow::array::RecordBatch)>,
    level: u32,
    replaces: Vec<u64>,
    /// The outputs' place in write order ([`SegmentMeta::seq`]).
    seq: u64,
    started: Instant,
    kind: Kind,
}

/// Why a job rewrites its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Segments merged into one, by the policy (see [`crate::compact`]).
    Merge,
    /// A live slice moved out of a pack that holds dead rows.
    Repack,
    /// A segment rewritten without the rows a deletion removed.
    Purge,
}

/// One table's segments to rewrite into one.
struct Job {
    db: String,
    table: String,
    schema: SchemaRef,
    inputs: Vec<Arc<SegmentMeta>>,
    /// The table's deletions: rows they remove are not written again.
    tombstones: Vec<Arc<Tombstone>>,
    kind: Kind,
    /// The table holds events: every row is kept.
    events: bool,
}

impl Job {
    /// A job of `kind` on `inputs`, segments of `db.table` (state `t`,
    /// current schema `schema`).
    fn on(db: &str, table: &str, t: &TableState, schema: SchemaRef, inputs: Vec<Arc<SegmentMeta>>, kind: Kind) -> Job {
        Job {
            db: db.to_string(),
            table: table.to_string(),
            schema,
            inputs,
            tombstones: t.tombstones.clone(),
            kind,
            events: t.holds_events(),
        }
    }
}

impl Storage {
    /// Runs one compaction round: every merge due now (see
    /// [`crate::compact`]), one after another. Inputs that cannot be read
    /// are reported and left in place; the round goes on with the others.
    pub async fn compact(&self) -> Result<CompactionStats, StorageError> {
        self.compact_round(false).await
    }

    /// A compaction round that treats every partition as cold: each one's
    /// segments are merged into one (within the row budget), today's too.
    /// For an operator before a backup or a measurement; the background
    /// rounds keep to the policy.
    pub async fn compact_full(&self) -> Result<CompactionStats, StorageError> {
        self.compact_round(true).await
    }

    async fn compact_round(&self, full: bool) -> Result<CompactionStats, StorageError> {
        self.writable("compaction")?;
        let _one_round = self.compact_lock.lock().await;
        let partition_ns = self.config.partition.as_nanos().min(i64::MAX as u128) as i64;
        let now_ns = self.clock.now_ns();
        let mut jobs: Vec<Job> = {
            let st = self.state.read();
            let mut jobs = Vec::new();
            for (db, tables) in &st.dbs {
                for (name, t) in tables {
                    let merges =
                        compact::plan(&t.segments, &t.overlapping, partition_ns, now_ns, &self.config.compaction, full);
                    // Segments holding deleted rows are rewritten without
                    // them in every round, merged or alone (also with
                    // merges disabled: a deletion asked for the rows to go).
                    let purges: Vec<Vec<Arc<SegmentMeta>>> = t
                        .segments
                        .iter()
                        .filter(|s| !covering(&t.tombstones, s).is_empty())
                        .filter(|s| !merges.iter().flatten().any(|m| m.id == s.id))
                        .map(|s| vec![Arc::clone(s)])
                        .collect();
                    let kinds = merges
                        .into_iter()
                        .map(|m| (m, Kind::Merge))
                        .chain(purges.into_iter().map(|p| (p, Kind::Purge)));
                    for (inputs, kind) in kinds {
                        jobs.push(Job::on(db, name, t, t.current_arrow_schema(), inputs, kind));
                    }
                }
            }
            jobs
        };
        let repacks = self.repack_jobs(&jobs);
        jobs.extend(repacks);
        let mut stats = CompactionStats::default();
        // Merges whose outputs are small wait here to be written into
        // packs together (see `crate::pack`).
        let mut small: Vec<Merge> = Vec::new();
        let mut small_rows = 0usize;
        for Job { db, table, schema, inputs, tombstones, kind, events } in jobs {
            let started = Instant::now();
            let data_dir = self.config.data_dir.clone();
            let options = self.config.segments.clone();
            let wal_upto = self.wal_persisted_upto.load(Ordering::Acquire);
            // The output's rows are no newer than its newest input's.
            let seq = inputs.iter().map(|s| s.order()).max().unwrap_or(0);
            let origin = SegmentOrigin {
                database: db.clone(),
                table: table.clone(),
                wal_upto,
                // A slice moved out of a pack, or rewritten without its
                // deleted rows, keeps its level: its rows went through no
                // more merges.
                level: inputs.iter().map(|s| s.level).max().unwrap_or(0).saturating_add(u32::from(kind == Kind::Merge)),
                replaces: inputs.iter().map(|s| s.id).collect(),
                seq,
                ..Default::default()
            };
            let dedupe = super::keeps_last_write(self.config.deduplicate, &db, events);
            // Inputs a writer of `segments = "object-store"` let go of come
            // back from the bucket first (kept while this job reads them).
            let _reading = self.reader();
            let refs: Vec<&SegmentMeta> = inputs.iter().map(|s| &**s).collect();
            if let Err(e) = self.ensure_local(&db, &table, &refs).await {
                tracing::error!("compacting {} segments of {db}.{table} waits: {e}", inputs.len());
                stats.failed += 1;
                continue;
            }
            let (inputs2, schema2, origin2) = (inputs.clone(), schema.clone(), origin.clone());
            let prepared = tokio::task::spawn_blocking(move || {
                let mut batches = Vec::new();
                for s in &inputs2 {
                    let path = data_dir.join(&s.path);
                    let read = compact::read_segment(&path, s.row_range(), &schema2)?;
                    // A merge that silently lost or gained rows would
                    // replace its inputs for good.
                    let n: usize = read.iter().map(|b| b.num_rows()).sum();
                    if n as u64 != s.rows {
                        return Err(SegmentError::RowCount { path, expected: s.rows, found: n as u64 });
                    }
                    let deleted = covering(&tombstones, s);
                    for b in read {
                        let b = remove_deleted(&b, &deleted).map_err(SegmentError::Arrow)?;
                        if b.num_rows() > 0 {
                            batches.push(b);
                        }
                    }
                }
                if batches.is_empty() {
                    // Every row was deleted: the inputs go, nothing replaces them.
                    return Ok(Vec::new());
                }
                let target = SegmentTarget {
                    data_dir: &data_dir,
                    schema: &schema2,
                    partition_ns,
                    options: &options,
                    origin: origin2,
                    dedupe,
                };
                prepare_slices(&target, &batches)
            })
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
            let slices = match prepared {
                Ok(slices) => slices,
                Err(e) => {
                    tracing::error!(
                        "compacting {} segments of {db}.{table} failed, they stay as they are: {e}",
                        inputs.len()
                    );
                    stats.failed += 1;
                    continue;
                }
            };
            if slices.is_empty() {
                let change = Change { db, table, inputs, outputs: Vec::new() };
                self.swap_segments(std::slice::from_ref(&change)).await?;
                self.count_merge(&change, started, kind, &mut stats);
                continue;
            }
            let pack_max = self.config.segments.pack_max_rows;
            if pack_max > 0 && crate::pack::packable(&schema) && slices.iter().all(|(_, b)| b.num_rows() < pack_max) {
                small_rows += slices.iter().map(|(_, b)| b.num_rows()).sum::<usize>();
                small.push(Merge {
                    db,
                    table,
                    inputs,
                    slices,
                    level: origin.level,
                    replaces: origin.replaces,
                    seq,
                    started,
                    kind,
                });
                if small_rows >= crate::pack::PACK_MAX_TOTAL_ROWS {
                    self.pack_merges(std::mem::take(&mut small), &mut stats).await?;
                    small_rows = 0;
                }
                continue;
            }
            let data_dir = self.config.data_dir.clone();
            let options = self.config.segments.clone();
            let ids = Arc::clone(&self.next_segment_id);
            let written = tokio::task::spawn_blocking(move || {
                let target = SegmentTarget {
                    data_dir: &data_dir,
                    schema: &schema,
                    partition_ns,
                    options: &options,
                    origin,
                    dedupe,
                };
                let mut out = Vec::new();
                for (partition_start, slice) in &slices {
                    match write_slice(&target, *partition_start, slice, ids.fetch_add(1, Ordering::AcqRel)) {
                        Ok(seg) => out.push(seg),
                        Err(e) => {
                            remove_written(&data_dir, &out);
                            return Err(e);
                        }
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
            let outputs = match written {
                Ok(outputs) => outputs,
                Err(e) => {
                    tracing::error!(
                        "compacting {} segments of {db}.{table} failed, they stay as they are: {e}",
                        inputs.len()
                    );
                    stats.failed += 1;
                    continue;
                }
            };
            let change = Change { db, table, inputs, outputs };
            self.swap_segments(std::slice::from_ref(&change))
                .await
                .inspect_err(|_| remove_written(&self.config.data_dir, &change.outputs))?;
            self.count_merge(&change, started, kind, &mut stats);
        }
        if !small.is_empty() {
            self.pack_merges(small, &mut stats).await?;
        }
        Ok(stats)
    }

    /// Writes the outputs of small merges into packs (per database) and
    /// swaps them all in with one manifest. A database whose packs cannot
    /// be written keeps its inputs; the others go on.
    async fn pack_merges(&self, merges: Vec<Merge>, stats: &mut CompactionStats) -> Result<(), StorageError> {
        let mut by_db: std::collections::BTreeMap<String, Vec<Merge>> = Default::default();
        for m in merges {
            by_db.entry(m.db.clone()).or_default().push(m);
        }
        for (db, merges) in by_db {
            let mut items = Vec::new();
            let mut owner = Vec::new();
            for (i, m) in merges.iter().enumerate() {
                for (partition_start, batch) in &m.slices {
                    items.push(PackItem {
                        table: m.table.clone(),
                        partition_start: *partition_start,
                        batch: batch.clone(),
                        level: m.level,
                        replaces: m.replaces.clone(),
                        seq: m.seq,
                    });
                    owner.push(i);
                }
            }
            let data_dir = self.config.data_dir.clone();
            let options = self.config.segments.clone();
            let ids = Arc::clone(&self.next_segment_id);
            let wal_upto = self.wal_persisted_upto.load(Ordering::Acquire);
            let db2 = db.clone();
            let written = tokio::task::spawn_blocking(move || {
                write_packs(&data_dir, &db2, &options, wal_upto, items, || ids.fetch_add(1, Ordering::AcqRel))
            })
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
            let written = match written {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(
                        "compacting {} small tables of database {db} into packs failed, they stay as they are: {e}",
                        merges.len()
                    );
                    stats.failed += merges.len();
                    continue;
                }
            };
            let mut changes: Vec<Change> = merges
                .iter()
                .map(|m| Change { db: m.db.clone(), table: m.table.clone(), inputs: m.inputs.clone(), outputs: vec![] })
                .collect();
            for (index, seg) in written {
                changes[owner[index]].outputs.push(seg);
            }
            let all: Vec<SegmentMeta> = changes.iter().flat_map(|c| c.outputs.iter().cloned()).collect();
            self.swap_segments(&changes).await.inspect_err(|_| remove_written(&self.config.data_dir, &all))?;
            for (change, m) in changes.iter().zip(&merges) {
                self.count_merge(change, m.started, m.kind, stats);
            }
        }
        Ok(())
    }

    fn count_merge(&self, change: &Change, started: Instant, kind: Kind, stats: &mut CompactionStats) {
        let Change { db, table, inputs, outputs } = change;
        let rows: u64 = inputs.iter().map(|s| s.rows).sum();
        if kind == Kind::Purge {
            let kept: u64 = outputs.iter().map(|s| s.rows).sum();
            stats.purged += 1;
            self.metrics.purged_segments.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                table = %format!("{db}.{table}"),
                rows_before = rows,
                rows_after = kept,
                from = %inputs.first().map(|s| s.path.as_str()).unwrap_or(""),
                "rewrote a segment without its deleted rows"
            );
            return;
        }
        if kind == Kind::Repack {
            stats.repacked += 1;
            tracing::debug!(
                table = %format!("{db}.{table}"),
                rows,
                from = %inputs.first().map(|s| s.path.as_str()).unwrap_or(""),
                "moved a slice out of a pack with dead rows"
            );
            return;
        }
        let before: u64 = inputs.iter().map(|s| s.bytes).sum();
        let after: u64 = outputs.iter().map(|s| s.bytes).sum();
        stats.merges += 1;
        stats.inputs += inputs.len();
        stats.outputs += outputs.len();
        stats.rows += rows;
        stats.bytes_before += before;
        stats.bytes_after += after;
        self.metrics.compactions.fetch_add(1, Ordering::Relaxed);
        self.metrics.compacted_segments.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        self.metrics.compaction_bytes_written.fetch_add(after, Ordering::Relaxed);
        tracing::info!(
            table = %format!("{db}.{table}"),
            inputs = inputs.len(),
            level = outputs.first().map(|s| s.level).unwrap_or(0),
            packed = outputs.iter().any(|s| s.pack.is_some()),
            rows,
            bytes_before = before,
            bytes_after = after,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted segments"
        );
    }

    /// Jobs that move every live slice of a pack holding dead rows (rows
    /// that retention dropped, or that a compaction replaced, this round's
    /// `merging` included) into a new pack, except the slices `merging`
    /// reads: once none is left, the old pack is retired and deleted like
    /// any input. Rows dropped or replaced are so gone from disk after the
    /// round (and the grace period), and a pack's bytes are live rows.
    /// Each pack's `file_rows` is its file's, set at start (see
    /// `recovery::verify_segments`) and when written.
    fn repack_jobs(&self, merging: &[Job]) -> Vec<Job> {
        let taken: HashSet<(&str, &str, u64)> = merging
            .iter()
            .flat_map(|j| j.inputs.iter().map(move |s| (j.db.as_str(), j.table.as_str(), s.id)))
            .collect();
        // Each pack's rows in all, and those listed that this round's
        // merges do not replace.
        let st = self.state.read();
        let mut packs: HashMap<String, (u64, u64)> = HashMap::new();
        for (db, tables) in &st.dbs {
            for (name, t) in tables {
                for s in &t.segments {
                    if let Some(p) = s.pack {
                        let e = packs.entry(s.path.clone()).or_default();
                        e.0 = e.0.max(p.file_rows);
                        if !taken.contains(&(db.as_str(), name.as_str(), s.id)) {
                            e.1 += s.rows;
                        }
                    }
                }
            }
        }
        let dead: HashSet<&str> =
            packs.iter().filter(|(_, (total, live))| live < total).map(|(p, _)| p.as_str()).collect();
        if dead.is_empty() {
            return Vec::new();
        }
        let mut jobs = Vec::new();
        for (db, tables) in &st.dbs {
            for (name, t) in tables {
                let mut schema = None;
                for s in &t.segments {
                    if dead.contains(s.path.as_str()) && !taken.contains(&(db.as_str(), name.as_str(), s.id)) {
                        let schema = schema.get_or_insert_with(|| t.current_arrow_schema()).clone();
                        jobs.push(Job::on(db, name, t, schema, vec![Arc::clone(s)], Kind::Repack));
                    }
                }
            }
        }
        jobs
    }

    /// Drops the segments whose rows are all older than their table's
    /// retention (`StorageConfig::retention`), through the same manifest
    /// swap and grace period as compaction. Buffered rows are not touched:
    /// they are dropped once persisted. Returns (segments, rows) dropped.
    pub async fn expire(&self) -> Result<(usize, u64), StorageError> {
        self.writable("retention")?;
        let _one_round = self.compact_lock.lock().await;
        let now_ns = self.clock.now_ns();
        let due: Vec<(String, String, Vec<Arc<SegmentMeta>>)> = {
            let st = self.state.read();
            let mut due = Vec::new();
            for (db, tables) in &st.dbs {
                for (name, t) in tables {
                    let Some(keep) = self.config.retention.of(db, name) else { continue };
                    let cutoff = now_ns.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
                    let gone = compact::expired(&t.segments, cutoff);
                    if !gone.is_empty() {
                        due.push((db.clone(), name.clone(), gone));
                    }
                }
            }
            due
        };
        let (mut segments, mut rows) = (0, 0);
        for (db, table, gone) in due {
            let change = Change { db: db.clone(), table: table.clone(), inputs: gone.clone(), outputs: Vec::new() };
            self.swap_segments(&[change]).await?;
            // The newest row of a series may have gone with the segment: the
            // cache is rebuilt from a scan of what is left when next used (a
            // scan begun before this line does not complete it).
            self.last.invalidate(&db, &table);
            let n: u64 = gone.iter().map(|s| s.rows).sum();
            tracing::info!(
                table = %format!("{db}.{table}"),
                segments = gone.len(),
                rows = n,
                newest = gone.iter().map(|s| s.max_ts).max().unwrap_or(0),
                "dropped segments past retention"
            );
            segments += gone.len();
            rows += n;
        }
        self.metrics.expired_segments.fetch_add(segments as u64, Ordering::Relaxed);
        self.metrics.expired_rows.fetch_add(rows, Ordering::Relaxed);
        Ok((segments, rows))
    }

    /// Replaces each change's inputs by its outputs (none when expiring) in
    /// one new manifest, then in the query state, and retires the inputs'
    /// files that no segment lists any more (a pack stays while another
    /// table holds a slice of it).
    async fn swap_segments(&self, changes: &[Change]) -> Result<(), StorageError> {
        let _no_persist = self.persist_lock.lock().await;
        let partition_ns = self.partition_ns();
        let several = |segments: &mut dyn Iterator<Item = &SegmentMeta>, p: i64| {
            segments.filter(|s| super::in_partition(s, p, partition_ns)).nth(1).is_some()
        };
        let gone = |c: &Change, s: &SegmentMeta| c.inputs.iter().any(|i| i.id == s.id);
        let (manifest, retired) = {
            let st = self.state.read();
            let mut m = self.manifest_of(&st, self.wal_persisted_upto.load(Ordering::Acquire));
            for c in changes {
                if let Some(entry) = m.databases.get_mut(&c.db).and_then(|d| d.get_mut(&c.table)) {
                    entry.segments.retain(|s| !gone(c, s));
                    entry.segments.extend(c.outputs.iter().cloned());
                    // A deletion whose rows no segment holds any more is done.
                    let segments = &entry.segments;
                    entry.tombstones.retain(|d| segments.iter().any(|s| d.covers(s)));
                    // A partition left with one segment holds each series
                    // and time once (a merge kept the last written).
                    entry.overlapping.retain(|&p| several(&mut segments.iter(), p));
                }
            }
            let listed: HashSet<&str> = m
                .databases
                .values()
                .flat_map(|t| t.values())
                .flat_map(|e| e.segments.iter().map(|s| s.path.as_str()))
                .collect();
            let mut retired: Vec<String> = changes
                .iter()
                .flat_map(|c| c.inputs.iter().map(|s| s.path.clone()))
                .filter(|p| !listed.contains(p.as_str()))
                .collect();
            retired.sort();
            retired.dedup();
            // Listed as retired, their files are deleted at start if the
            // grace period never ends here; anything else unlisted is
            // quarantined, not deleted.
            m.retired.extend(retired.iter().cloned());
            (m, retired)
        };
        let dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || manifest.save(&dir))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        {
            let mut st = self.state.write();
            for c in changes {
                if let Some(t) = st.dbs.get_mut(&c.db).and_then(|d| d.get_mut(&c.table)) {
                    t.segments.retain(|s| !gone(c, s));
                    t.segments.extend(c.outputs.iter().cloned().map(Arc::new));
                    let segments = &t.segments;
                    t.tombstones.retain(|d| segments.iter().any(|s| d.covers(s)));
                    t.overlapping.retain(|&p| several(&mut segments.iter().map(|s| &**s), p));
                }
            }
        }
        let now = self.clock.monotonic();
        // Readers that started before this point may still read the inputs;
        // those that start after cannot see them.
        let epoch = {
            let mut r = self.readers.lock();
            r.epoch += 1;
            r.epoch - 1
        };
        if let Some(cache) = self.cache.get() {
            cache.release(&retired, epoch);
        }
        self.retired.lock().extend(retired.into_iter().map(|p| (p, now, epoch)));
        Ok(())
    }

    /// Forgets series not written within `series_window`, so that they stop
    /// counting against `max_series_per_table`. Returns how many were
    /// forgotten.
    pub fn prune_inactive_series(&self) -> usize {
        let window = self.config.limits.series_window.as_secs();
        let cutoff = self.clock.unix_secs().saturating_sub(window);
        let mut st = self.state.write();
        let mut pruned = 0;
        for t in st.dbs.values_mut().flat_map(|d| d.values_mut()) {
            let before = t.active.len();
            t.active.retain(|_, seen| seen.at >= cutoff);
            pruned += before - t.active.len();
        }
        pruned
    }

    /// Deletes the files of segments replaced by compaction or retention
    /// once the grace period has passed *and* no reader that started before
    /// their retirement is still running (a query streaming for longer than
    /// the grace period keeps its files). Returns how many were deleted.
    pub fn purge_retired(&self) -> usize {
        self.trim_cache(&[]);
        let grace = self.config.compaction.grace;
        let now = self.clock.monotonic();
        let oldest_reader = self.readers.lock().active.keys().next().copied();
        let due: Vec<String> = self
            .retired
            .lock()
            .iter()
            .filter(|(_, at, epoch)| {
                now.saturating_sub(*at) >= grace && oldest_reader.is_none_or(|oldest| oldest > *epoch)
            })
            .map(|(p, _, _)| p.clone())
            .collect();
        // Files first, then the list: an entry leaves the list (and so the
        // next manifest's `retired`) only once its file is gone, so that a
        // crash in between cannot leave a file nothing accounts for.
        let mut gone = Vec::with_capacity(due.len());
        for rel in due {
            let p = self.config.data_dir.join(&rel);
            if p.exists() && !crate::recovery::owned(&self.config.data_dir, &p) {
                tracing::error!(
                    "not deleting retired segment {}: its folder links out of the data directory",
                    p.display()
                );
                continue;
            }
            match std::fs::remove_file(&p) {
                Ok(()) => gone.push(rel),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(rel),
                Err(e) => tracing::warn!("cannot delete compacted segment {}: {e}", p.display()),
            }
        }
        self.retired.lock().retain(|(p, _, _)| !gone.contains(p));
        gone.len()
    }
}
