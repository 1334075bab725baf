//! Persistence: the write buffer becomes segments listed in a new manifest,
//! and the WAL files they cover are deleted; shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::array::RecordBatch;

use super::{PersistStats, State, Storage, StorageError};
use crate::batch::batch_bytes;
use crate::manifest::{Manifest, SegmentMeta, TableEntry};
use crate::pack::{PackItem, write_packs};
use crate::segment::{SegmentError, SegmentOrigin, SegmentTarget, prepare_slices, remove_written, write_slice};
use crate::wal;

impl Storage {
    /// Whether the buffer is due for persistence (size or age).
    pub fn persist_due(&self) -> bool {
        let st = self.state.read();
        st.buffer_bytes >= self.config.persist_max_bytes
            || st.oldest_write.is_some_and(|t| self.clock.monotonic().saturating_sub(t) >= self.config.persist_max_age)
    }

    /// Persists everything buffered into segments, records them in the
    /// manifest, and deletes the WAL files they cover.
    pub async fn persist(&self) -> Result<PersistStats, StorageError> {
        let wal = self.writable("persists")?;
        let _one_at_a_time = self.persist_lock.lock().await;
        let started = Instant::now();
        // 1. Close the current WAL file and move the buffers aside, atomically
        //    with respect to writers.
        let (closed_wal, work) = {
            let _gate = self.gate.write().await;
            let mut st = self.state.write();
            if st.buffer_bytes == 0 && st.dbs.values().flat_map(|d| d.values()).all(|t| t.buffer.is_empty()) {
                return Ok(PersistStats::default());
            }
            let closed = wal.rotate()?;
            let mut work = Vec::new();
            for (db, tables) in st.dbs.iter_mut() {
                for (name, t) in tables.iter_mut() {
                    if t.buffer.is_empty() {
                        continue;
                    }
                    t.persisting = std::mem::take(&mut t.buffer);
                    t.dirty_persisting = std::mem::take(&mut t.dirty_buffer);
                    t.small_tail = 0;
                    let batches: Vec<RecordBatch> = t.persisting.iter().map(|c| c.batch.clone()).collect();
                    let schema = t.arrow_schema();
                    let dedupe = super::keeps_last_write(self.config.deduplicate, db, t.holds_events());
                    work.push(Work { db: db.clone(), table: name.clone(), schema, batches, dedupe });
                }
            }
            st.persisting_bytes = st.buffer_bytes;
            st.buffer_bytes = 0;
            st.oldest_write = None;
            (closed, work)
        };
        // 2. Write segments, off the async runtime.
        let data_dir = self.config.data_dir.clone();
        let partition_ns = self.config.partition.as_nanos().min(i64::MAX as u128) as i64;
        let options = self.config.segments.clone();
        let ids = Arc::clone(&self.next_segment_id);
        let written = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let next_id = || ids.fetch_add(1, Ordering::AcqRel);
            match write_buffers(&data_dir, partition_ns, &options, closed_wal, work, next_id, &mut out) {
                Ok(()) => Ok(out),
                Err(e) => {
                    // Nothing lists the segments of the other tables
                    // either: remove them too.
                    let segs: Vec<SegmentMeta> = out.into_iter().map(|(_, _, s)| s).collect();
                    remove_written(&data_dir, &segs);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()));
        let written = match written.and_then(|r| r.map_err(StorageError::from)) {
            Ok(w) => w,
            Err(e) => {
                // The closed WAL file stays, so nothing is lost: put the
                // batches back and try again next time.
                self.restore_persisting();
                self.metrics.persist_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        // 3. Record the segments in a new manifest, then make them visible.
        let mut stats = PersistStats::default();
        let (manifest, overlapping) = {
            let st = self.state.read();
            let mut m = self.manifest_of(&st, closed_wal);
            // A partition where buffered rows may have repeated a series
            // and time: the persist kept the last of those in the buffer,
            // but if the partition holds other segments, they may hold
            // earlier ones.
            let mut overlapping: Vec<(String, String, i64)> = Vec::new();
            for (db, tables) in &st.dbs {
                for (name, t) in tables {
                    for &p in &t.dirty_persisting {
                        if !t.overlapping.contains(&p)
                            && t.segments.iter().any(|s| super::in_partition(s, p, partition_ns))
                        {
                            overlapping.push((db.clone(), name.clone(), p));
                        }
                    }
                }
            }
            for (db, table, p) in &overlapping {
                if let Some(entry) = m.databases.get_mut(db).and_then(|d| d.get_mut(table)) {
                    entry.overlapping.push(*p);
                    entry.overlapping.sort_unstable();
                }
            }
            let mut tables = std::collections::HashSet::new();
            for (db, table, seg) in &written {
                let entry = m.databases.entry(db.clone()).or_default().entry(table.clone()).or_default();
                entry.segments.push(seg.clone());
                tables.insert((db, table));
                stats.segments += 1;
                stats.rows += seg.rows;
                stats.bytes += seg.bytes;
            }
            stats.tables = tables.len();
            (m, overlapping)
        };
        let dir = self.config.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || manifest.save(&dir))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))
            .and_then(|r| r.map_err(StorageError::from));
        if let Err(e) = saved {
            let segs: Vec<SegmentMeta> = written.iter().map(|(_, _, s)| s.clone()).collect();
            remove_written(&self.config.data_dir, &segs);
            self.restore_persisting();
            self.metrics.persist_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.wal_persisted_upto.store(closed_wal, Ordering::Release);
        {
            let mut st = self.state.write();
            for (db, table, seg) in written {
                if let Some(t) = st.dbs.get_mut(&db).and_then(|d| d.get_mut(&table)) {
                    t.segments.push(Arc::new(seg));
                }
            }
            for (db, table, p) in overlapping {
                if let Some(t) = st.dbs.get_mut(&db).and_then(|d| d.get_mut(&table)) {
                    t.overlapping.insert(p);
                }
            }
            for t in st.dbs.values_mut().flat_map(|d| d.values_mut()) {
                t.persisting.clear();
                t.dirty_persisting.clear();
            }
            st.persisting_bytes = 0;
        }
        // 4. The WAL files up to the closed one are now redundant.
        self.delete_wal_upto(closed_wal);
        self.metrics.persists.fetch_add(1, Ordering::Relaxed);
        self.metrics.segments_written.fetch_add(stats.segments as u64, Ordering::Relaxed);
        self.metrics.segment_bytes_written.fetch_add(stats.bytes, Ordering::Relaxed);
        tracing::info!(
            rows = stats.rows,
            segments = stats.segments,
            bytes = stats.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "persisted write buffer"
        );
        // The cache must not keep the persisted buffers alive.
        self.last.compact_all(|db, table| self.table_schema(db, table));
        Ok(stats)
    }

    fn restore_persisting(&self) {
        let mut st = self.state.write();
        let mut restored = 0;
        for t in st.dbs.values_mut().flat_map(|d| d.values_mut()) {
            let mut back = std::mem::take(&mut t.persisting);
            let dirty = std::mem::take(&mut t.dirty_persisting);
            t.dirty_buffer.extend(dirty);
            restored += back.iter().map(|c| batch_bytes(&c.batch)).sum::<usize>();
            back.append(&mut t.buffer);
            t.buffer = back;
        }
        st.persisting_bytes = 0;
        st.buffer_bytes += restored;
        st.oldest_write.get_or_insert(self.clock.monotonic());
    }

    pub(crate) fn manifest_of(&self, st: &State, wal_persisted_upto: u64) -> Manifest {
        let mut m = Manifest {
            wal_persisted_upto,
            next_segment_id: self.next_segment_id.load(Ordering::Acquire),
            retired: self.retired.lock().iter().map(|(p, _, _)| p.clone()).collect(),
            ..Manifest::default()
        };
        for (db, tables) in &st.dbs {
            for (name, t) in tables {
                let schema = t.durable_schema();
                if schema.columns.is_empty() && t.segments.is_empty() {
                    continue; // created for an INSERT that has not written
                }
                m.databases.entry(db.clone()).or_default().insert(
                    name.clone(),
                    TableEntry {
                        schema,
                        segments: t.segments.iter().map(|s| (**s).clone()).collect(),
                        tombstones: t.tombstones.iter().map(|d| (**d).clone()).collect(),
                        overlapping: t.overlapping.iter().copied().collect(),
                        events: t.events,
                    },
                );
            }
        }
        m
    }

    fn delete_wal_upto(&self, seq: u64) {
        let dir = self.config.data_dir.join("wal");
        match wal::list_files(&dir) {
            Ok(files) => {
                for (s, path) in files {
                    if s <= seq
                        && let Err(e) = std::fs::remove_file(&path)
                    {
                        tracing::warn!("cannot delete persisted WAL file {}: {e}", path.display());
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list WAL directory {}: {e}", dir.display()),
        }
    }

    /// Refuses new writes, waits for writes in flight, persists the buffer
    /// and closes the WAL.
    pub async fn shutdown(&self) -> Result<PersistStats, StorageError> {
        self.shutting_down.store(true, Ordering::Release);
        drop(self.gate.write().await);
        let Some(wal) = &self.wal else {
            return Ok(PersistStats::default()); // a reader has nothing of its own
        };
        let stats = self.persist().await;
        wal.close()?;
        stats
    }
}

/// One table's buffer to persist.
struct Work {
    db: String,
    table: String,
    schema: arrow::datatypes::SchemaRef,
    /// In write order.
    batches: Vec<RecordBatch>,
    /// Keep the last written of rows of the same series and time.
    dedupe: bool,
}

/// Writes the buffers of a persist:
/// each table's rows of each partition into a segment of its own, or,
/// when they are few (`pack_max_rows`), into packs shared with other small
/// tables of the database (see [`crate::pack`]). Every segment written is
/// added to `out`, also when a later one fails.
fn write_buffers(
    data_dir: &std::path::Path,
    partition_ns: i64,
    options: &crate::segment::SegmentOptions,
    wal_upto: u64,
    work: Vec<Work>,
    mut next_id: impl FnMut() -> u64,
    out: &mut Vec<(String, String, SegmentMeta)>,
) -> Result<(), SegmentError> {
    let mut packs: std::collections::BTreeMap<String, Vec<PackItem>> = Default::default();
    for Work { db, table, schema, batches, dedupe } in work {
        let target = SegmentTarget {
            data_dir,
            schema: &schema,
            partition_ns,
            options,
            origin: SegmentOrigin { database: db.clone(), table: table.clone(), wal_upto, ..Default::default() },
            dedupe,
        };
        let packable = options.pack_max_rows > 0 && crate::pack::packable(&schema);
        for (partition_start, slice) in prepare_slices(&target, &batches)? {
            if packable && slice.num_rows() < options.pack_max_rows {
                let item = PackItem {
                    table: table.clone(),
                    partition_start,
                    batch: slice,
                    level: 0,
                    replaces: vec![],
                    seq: 0,
                };
                packs.entry(db.clone()).or_default().push(item);
            } else {
                let seg = write_slice(&target, partition_start, &slice, next_id())?;
                out.push((db.clone(), table.clone(), seg));
            }
        }
    }
    for (db, items) in packs {
        let tables: Vec<String> = items.iter().map(|i| i.table.clone()).collect();
        for (index, seg) in write_packs(data_dir, &db, options, wal_upto, items, &mut next_id)? {
            out.push((db.clone(), tables[index].clone(), seg));
        }
    }
    Ok(())
}
