//! The storage engine: write path, buffer, persistence and snapshots.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use parking_lot::RwLock;

use crate::batch::{adapt_batch, batch_bytes, blocks_to_batch, ts_range};
use crate::compact::{self, CompactionStats};
use crate::config::StorageConfig;
use crate::manifest::{Manifest, ManifestError, SegmentMeta, TableEntry};
use crate::metrics::StorageMetrics;
use crate::schema::{ColumnDef, ColumnKind, TableSchema};
use crate::segment::{SegmentError, SegmentOrigin, SegmentTarget, remove_written, write_segments};
use crate::wal::{self, Wal, WalError, codec};
use crate::write::{
    TableWrite, WriteError, block_columns, check_block_shape, check_database_name, check_table_name, series_hash,
};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("Arrow error: {0}")]
    Arrow(#[from] ArrowError),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "data directory {data_dir} has no manifest.json but segments/ holds {segments} segment file(s) \
         (e.g. {example}); starting would ignore them. Restore manifest.json from a backup, or run \
         `tocsin repair --data-dir {data_dir}` to rebuild it from the segments' own metadata"
    )]
    ManifestMissing { data_dir: PathBuf, segments: usize, example: PathBuf },
    #[error(
        "segment {path} of table {table} is listed in the manifest but cannot be read ({source}); the file \
         may be fine (permissions, a volume not mounted, an I/O error), so the server will not start \
         without it. Fix access to it, or if it is truly gone, run `tocsin repair --data-dir {data_dir}` \
         to rebuild the manifest from the segments present"
    )]
    SegmentUnreadable { path: PathBuf, table: String, data_dir: PathBuf, source: std::io::Error },
    #[error("data directory {path} is in use by another tocsin process (lock file {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("write buffer is full ({buffered} bytes buffered, limit {limit}): persistence is behind; retry later")]
    BufferFull { buffered: usize, limit: usize },
    #[error("server is shutting down; write refused")]
    ShuttingDown,
    #[error("invalid database: {0}")]
    Database(WriteError),
    #[error("background task failed: {0}")]
    Task(String),
}

/// One rejected item of a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The `item` of the rejected [`crate::SeriesBlock`].
    pub item: u32,
    pub error: WriteError,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriteOutcome {
    pub accepted_rows: u64,
    pub rejected: Vec<Rejection>,
}

/// Reader epochs: a counter bumped at every segment retirement, and the
/// epochs at which the running readers started (with their count).
#[derive(Debug, Default)]
struct Readers {
    epoch: u64,
    active: BTreeMap<u64, usize>,
}

/// A running reader (see [`Storage::reader`]); dropping it ends the read.
#[derive(Debug)]
pub struct ReaderGuard {
    readers: Arc<parking_lot::Mutex<Readers>>,
    epoch: u64,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut r = self.readers.lock();
        if let Some(n) = r.active.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                r.active.remove(&self.epoch);
            }
        }
    }
}

/// Buffered rows of one write, with their time range for pruning.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub batch: RecordBatch,
    pub min_ts: i64,
    pub max_ts: i64,
}

/// A consistent view of one table for a query.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's current schema; chunks and segments may have fewer
    /// columns (read them as NULL) but never conflicting types.
    pub schema: SchemaRef,
    pub chunks: Vec<Chunk>,
    pub segments: Vec<Arc<SegmentMeta>>,
    pub data_dir: PathBuf,
}

impl TableSnapshot {
    pub fn segment_path(&self, seg: &SegmentMeta) -> PathBuf {
        self.data_dir.join(&seg.path)
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PersistStats {
    pub tables: usize,
    pub rows: u64,
    pub segments: usize,
    pub bytes: u64,
}

#[derive(Default)]
pub(crate) struct TableState {
    pub(crate) schema: TableSchema,
    pub(crate) arrow: Option<SchemaRef>,
    pub(crate) buffer: Vec<Chunk>,
    pub(crate) persisting: Vec<Chunk>,
    pub(crate) segments: Vec<Arc<SegmentMeta>>,
    /// Chunks at the end of `buffer` smaller than [`SMALL_CHUNK_ROWS`].
    pub(crate) small_tail: usize,
    /// Series hash → when it was last written (Unix seconds): the active
    /// series that `WriteLimits::max_series_per_table` bounds.
    pub(crate) active: HashMap<u64, u64>,
    /// Columns that [`Storage::ensure_table`] added for an INSERT being
    /// planned and that no accepted write has used yet. They are not saved
    /// in the manifest, a write may give them another kind, and
    /// [`Storage::discard_provisional`] removes them when the INSERT fails:
    /// tables and columns come into existence only with an accepted write.
    pub(crate) provisional: Vec<String>,
}

impl TableState {
    pub(crate) fn arrow_schema(&mut self) -> SchemaRef {
        Arc::clone(self.arrow.get_or_insert_with(|| self.schema.arrow_schema()))
    }

    /// The Arrow schema without caching it (for readers holding `&self`).
    fn current_arrow_schema(&self) -> SchemaRef {
        self.arrow.clone().unwrap_or_else(|| self.schema.arrow_schema())
    }

    fn add_column(&mut self, name: &str, kind: ColumnKind) {
        self.schema.columns.push(ColumnDef { name: name.to_string(), kind });
        self.arrow = None;
    }

    /// Gives a provisional column another kind (no row has a value in it).
    fn retype_provisional(&mut self, name: &str, kind: ColumnKind) {
        if let Some(c) = self.schema.columns.iter_mut().find(|c| c.name == name) {
            c.kind = kind;
            self.arrow = None;
        }
    }

    /// The schema without provisional columns: what the manifest records.
    fn durable_schema(&self) -> TableSchema {
        if self.provisional.is_empty() {
            return self.schema.clone();
        }
        TableSchema {
            columns: self.schema.columns.iter().filter(|c| !self.provisional.contains(&c.name)).cloned().collect(),
        }
    }

    /// Many tiny writes (single-row INSERTs, small Prometheus batches) would
    /// leave thousands of tiny batches for every query to walk: merge them.
    fn push(&mut self, chunk: Chunk) -> Result<(), ArrowError> {
        let small = chunk.batch.num_rows() < SMALL_CHUNK_ROWS;
        self.buffer.push(chunk);
        self.small_tail = if small { self.small_tail + 1 } else { 0 };
        if self.small_tail >= MERGE_SMALL_CHUNKS {
            let schema = self.arrow_schema();
            // Merged from a view of the tail; the chunks leave the buffer
            // only once the merge succeeded (a failed concat used to drop
            // acknowledged rows from the buffer).
            let start = self.buffer.len() - self.small_tail;
            let tail = &self.buffer[start..];
            let adapted = tail.iter().map(|c| adapt_batch(&c.batch, &schema)).collect::<Result<Vec<_>, _>>()?;
            let merged = Chunk {
                batch: concat_batches(&schema, &adapted)?,
                min_ts: tail.iter().map(|c| c.min_ts).min().unwrap_or(i64::MAX),
                max_ts: tail.iter().map(|c| c.max_ts).max().unwrap_or(i64::MIN),
            };
            let still_small = merged.batch.num_rows() < SMALL_CHUNK_ROWS;
            self.buffer.truncate(start);
            self.buffer.push(merged);
            self.small_tail = usize::from(still_small);
        }
        Ok(())
    }
}

const SMALL_CHUNK_ROWS: usize = 4096;
const MERGE_SMALL_CHUNKS: usize = 64;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) dbs: BTreeMap<String, BTreeMap<String, TableState>>,
    pub(crate) buffer_bytes: usize,
    pub(crate) persisting_bytes: usize,
    pub(crate) oldest_write: Option<Instant>,
}

/// The database of the server's own tables (`system.alert_history`, ...).
pub const SYSTEM_DATABASE: &str = "system";

pub struct Storage {
    pub(crate) config: StorageConfig,
    pub(crate) state: RwLock<State>,
    pub(crate) wal: Arc<Wal>,
    /// Writers hold it shared from WAL append to buffer apply; a persist takes
    /// it exclusively to rotate the WAL and swap buffers, so that every record
    /// in a closed WAL file is in the buffer being persisted.
    gate: tokio::sync::RwLock<()>,
    persist_lock: tokio::sync::Mutex<()>,
    /// One compaction or retention round at a time (they are the only
    /// removers of segments, so a round's inputs stay in place until it
    /// swaps them).
    compact_lock: tokio::sync::Mutex<()>,
    /// Shared by persists and compactions, which may run at the same time.
    pub(crate) next_segment_id: Arc<AtomicU64>,
    /// The manifest's `wal_persisted_upto`, for manifests written by
    /// compactions.
    wal_persisted_upto: AtomicU64,
    /// Segment files replaced by compaction, deleted after the grace period.
    /// Segment files replaced by compaction or retention, waiting to be
    /// deleted: (path, when, reader epoch at retirement).
    retired: parking_lot::Mutex<Vec<(String, Instant, u64)>>,
    readers: Arc<parking_lot::Mutex<Readers>>,
    shutting_down: AtomicBool,
    pub metrics: StorageMetrics,
    /// Replaced whole when one is added (at start-up), so that a write
    /// takes the list with one reference count, not a copy.
    observers: RwLock<Arc<Vec<Arc<dyn WriteObserver>>>>,
    last: crate::last::LastRows,
    _lock_file: File,
}

/// Sees each write once it is durable and visible to queries, before the
/// writer is answered (and before [`Storage::snapshot_between_writes`] can
/// run).
pub trait WriteObserver: Send + Sync {
    fn written(&self, db: &str, writes: &[TableWrite]);
}

impl Storage {
    /// Opens (or creates) the data directory, verifies segments, replays the
    /// WAL and starts a new WAL file. Fails with a precise error if the
    /// directory cannot be used.
    pub async fn open(config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        let c = config.clone();
        tokio::task::spawn_blocking(move || crate::recovery::open(c))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    pub(crate) fn from_parts(
        config: StorageConfig,
        state: State,
        wal: Arc<Wal>,
        next_segment_id: u64,
        wal_persisted_upto: u64,
        lock_file: File,
        metrics: StorageMetrics,
    ) -> Storage {
        Storage {
            config,
            state: RwLock::new(state),
            wal,
            gate: tokio::sync::RwLock::new(()),
            persist_lock: tokio::sync::Mutex::new(()),
            compact_lock: tokio::sync::Mutex::new(()),
            next_segment_id: Arc::new(AtomicU64::new(next_segment_id)),
            wal_persisted_upto: AtomicU64::new(wal_persisted_upto),
            retired: parking_lot::Mutex::new(Vec::new()),
            readers: Arc::new(parking_lot::Mutex::new(Readers::default())),
            shutting_down: AtomicBool::new(false),
            metrics,
            observers: RwLock::new(Arc::new(Vec::new())),
            last: crate::last::LastRows::default(),
            _lock_file: lock_file,
        }
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn wal_metrics(&self) -> &wal::WalMetrics {
        &self.wal.metrics
    }

    /// Validates, logs durably and buffers `writes` into database `db`.
    ///
    /// Items (series blocks) are accepted or rejected one by one; the
    /// accepted ones are committed in one WAL record and are durable and
    /// visible to queries when this returns.
    pub async fn write(&self, db: &str, writes: Vec<TableWrite>) -> Result<WriteOutcome, StorageError> {
        check_database_name(db).map_err(StorageError::Database)?;
        self.write_to(db, writes).await
    }

    /// Writes into the reserved database [`SYSTEM_DATABASE`] (alert history,
    /// notification log), which clients cannot write to; same durability as
    /// [`Storage::write`].
    pub async fn write_system(&self, writes: Vec<TableWrite>) -> Result<WriteOutcome, StorageError> {
        self.write_to(SYSTEM_DATABASE, writes).await
    }

    async fn write_to(&self, db: &str, writes: Vec<TableWrite>) -> Result<WriteOutcome, StorageError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        {
            let st = self.state.read();
            let buffered = st.buffer_bytes + st.persisting_bytes;
            if buffered > self.config.max_buffer_bytes {
                return Err(StorageError::BufferFull { buffered, limit: self.config.max_buffer_bytes });
            }
        }
        let (writes, mut rejected) = check_shapes(writes, &self.config.limits);
        let _gate = self.gate.read().await;
        let (accepted, rejected) = {
            let mut st = self.state.write();
            let (accepted, more) = validate(&mut st, db, writes, &self.config.limits, unix_secs());
            rejected.extend(more);
            (accepted, rejected)
        };
        let mut outcome = WriteOutcome { accepted_rows: 0, rejected };
        self.metrics.rejected_items.fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
        if accepted.is_empty() {
            return Ok(outcome);
        }
        let mut chunks = Vec::with_capacity(accepted.len());
        for (w, schema) in &accepted {
            let batch = blocks_to_batch(schema, &w.blocks)?;
            let (min_ts, max_ts) = ts_range(&w.blocks);
            outcome.accepted_rows += batch.num_rows() as u64;
            chunks.push(Chunk { batch, min_ts, max_ts });
        }
        let newest: Vec<(RecordBatch, SchemaRef)> =
            chunks.iter().zip(&accepted).map(|(c, (_, schema))| (c.batch.clone(), Arc::clone(schema))).collect();
        let writes: Vec<TableWrite> = accepted.into_iter().map(|(w, _)| w).collect();
        let mut payload = Vec::new();
        codec::encode(db, &writes, &mut payload);
        let seq = self.wal.append(&payload)?;
        self.wal.wait_durable(seq).await?;
        {
            let mut st = self.state.write();
            apply(&mut st, db, writes.iter().map(|w| w.table.as_str()).zip(chunks))?;
        }
        for (w, (batch, schema)) in writes.iter().zip(&newest) {
            if let Err(e) = self.last.observe(db, &w.table, &w.blocks, batch, schema) {
                tracing::warn!(db, table = %w.table, "last-row cache dropped: {e}");
                self.last.invalidate(db, &w.table);
            }
        }
        self.metrics.writes.fetch_add(1, Ordering::Relaxed);
        self.metrics.rows_written.fetch_add(outcome.accepted_rows, Ordering::Relaxed);
        let observers = Arc::clone(&self.observers.read());
        for o in observers.iter() {
            o.written(db, &writes);
        }
        Ok(outcome)
    }

    /// The newest row of every series of `db.table`, in the table's current
    /// schema; `None` until [`Storage::complete_last_rows`] has folded in
    /// the table's history.
    pub fn last_rows(&self, db: &str, table: &str) -> Result<Option<RecordBatch>, StorageError> {
        let Some(schema) = self.table_schema(db, table) else { return Ok(None) };
        Ok(self.last.rows(db, table, &schema)?)
    }

    /// Folds the newest row per series of the whole table (`rows`, from a
    /// scan) into the last-row cache and marks it complete. Writes that
    /// happen meanwhile are kept if newer.
    pub fn complete_last_rows(&self, db: &str, table: &str, rows: &RecordBatch) -> Result<(), StorageError> {
        let schema = self.table_schema(db, table).unwrap_or_else(|| rows.schema());
        Ok(self.last.complete(db, table, rows, &schema)?)
    }

    /// Tells `observer` about every acknowledged write (alerting rules that
    /// evaluate on the ingest path, live tail). It runs on the writer's
    /// task: it must return quickly.
    pub fn add_write_observer(&self, observer: Arc<dyn WriteObserver>) {
        let mut list = self.observers.write();
        let mut next = Vec::clone(&list);
        next.push(observer);
        *list = Arc::new(next);
    }

    /// Runs `between` while no write is in flight, then takes a snapshot of
    /// `db.table`: every write is either in the snapshot or seen by the
    /// observers after `between` returned, never both and never neither.
    /// Live tail uses it to backfill from storage without a gap or a
    /// duplicate at the seam. Writes wait while it runs: `between` must be
    /// quick.
    pub async fn snapshot_between_writes<T>(
        &self,
        db: &str,
        table: &str,
        between: impl FnOnce() -> T,
    ) -> (T, Option<TableSnapshot>) {
        let _gate = self.gate.write().await;
        let out = between();
        (out, self.snapshot(db, table))
    }

    /// Makes sure `db.table` exists with at least `columns` (creating or
    /// extending it), without writing rows; used by SQL `INSERT` to plan
    /// against a table it is about to create.
    pub fn ensure_table(
        &self,
        db: &str,
        table: &str,
        columns: &[(String, ColumnKind)],
    ) -> Result<SchemaRef, WriteError> {
        check_database_name(db)?;
        check_table_name(table)?;
        let mut st = self.state.write();
        check_new_table(&st, db, table, &self.config.limits)?;
        let t = st.dbs.entry(db.to_string()).or_default().entry(table.to_string()).or_default();
        let mut new = Vec::new();
        for (name, kind) in columns {
            crate::write::check_column_name(name)?;
            match t.schema.get(name) {
                Some(existing) if existing != *kind => {
                    return Err(WriteError::KindConflict {
                        table: table.into(),
                        column: name.clone(),
                        existing,
                        new: *kind,
                    });
                }
                Some(_) => {}
                None => new.push((name, *kind)),
            }
        }
        for (name, kind) in new {
            t.add_column(name, kind);
            t.provisional.push(name.clone());
        }
        Ok(t.arrow_schema())
    }

    /// Removes the columns [`Storage::ensure_table`] added to `db.table` that
    /// no accepted write has used since, and the table itself if nothing is
    /// left of it (an INSERT that created it failed).
    pub fn discard_provisional(&self, db: &str, table: &str) {
        let mut st = self.state.write();
        let Some(tables) = st.dbs.get_mut(db) else { return };
        let Some(t) = tables.get_mut(table) else { return };
        if t.provisional.is_empty() {
            return;
        }
        let gone = std::mem::take(&mut t.provisional);
        t.schema.columns.retain(|c| !gone.contains(&c.name));
        t.arrow = None;
        if t.schema.columns.is_empty() && t.buffer.is_empty() && t.persisting.is_empty() && t.segments.is_empty() {
            tables.remove(table);
            if tables.is_empty() {
                st.dbs.remove(db);
            }
        }
    }

    pub fn databases(&self) -> Vec<String> {
        self.state.read().dbs.keys().cloned().collect()
    }

    pub fn tables(&self, db: &str) -> Vec<String> {
        self.state.read().dbs.get(db).map(|t| t.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn table_schema(&self, db: &str, table: &str) -> Option<SchemaRef> {
        let st = self.state.read();
        let t = st.dbs.get(db)?.get(table)?;
        Some(t.current_arrow_schema())
    }

    pub fn table_exists(&self, db: &str, table: &str) -> bool {
        self.state.read().dbs.get(db).is_some_and(|t| t.contains_key(table))
    }

    /// A consistent view of `db.table`: schema, buffered chunks (including
    /// those being persisted) and segments.
    pub fn snapshot(&self, db: &str, table: &str) -> Option<TableSnapshot> {
        let st = self.state.read();
        let t = st.dbs.get(db)?.get(table)?;
        let mut chunks = Vec::with_capacity(t.buffer.len() + t.persisting.len());
        chunks.extend(t.persisting.iter().cloned());
        chunks.extend(t.buffer.iter().cloned());
        Some(TableSnapshot {
            schema: t.current_arrow_schema(),
            chunks,
            segments: t.segments.clone(),
            data_dir: self.config.data_dir.clone(),
        })
    }

    /// Bytes held by the write buffer (including data being persisted).
    pub fn buffered_bytes(&self) -> usize {
        let st = self.state.read();
        st.buffer_bytes + st.persisting_bytes
    }

    /// Number of segments and their total size on disk.
    pub fn segment_totals(&self) -> (usize, u64) {
        let st = self.state.read();
        let mut n = 0;
        let mut bytes = 0;
        for t in st.dbs.values().flat_map(|d| d.values()) {
            n += t.segments.len();
            bytes += t.segments.iter().map(|s| s.bytes).sum::<u64>();
        }
        (n, bytes)
    }

    /// Whether the buffer is due for persistence (size or age).
    pub fn persist_due(&self) -> bool {
        let st = self.state.read();
        st.buffer_bytes >= self.config.persist_max_bytes
            || st.oldest_write.is_some_and(|t| t.elapsed() >= self.config.persist_max_age)
    }

    /// Persists everything buffered into segments, records them in the
    /// manifest, and deletes the WAL files they cover.
    pub async fn persist(&self) -> Result<PersistStats, StorageError> {
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
            let closed = self.wal.rotate()?;
            let mut work = Vec::new();
            for (db, tables) in st.dbs.iter_mut() {
                for (name, t) in tables.iter_mut() {
                    if t.buffer.is_empty() {
                        continue;
                    }
                    t.persisting = std::mem::take(&mut t.buffer);
                    t.small_tail = 0;
                    let batches: Vec<RecordBatch> = t.persisting.iter().map(|c| c.batch.clone()).collect();
                    work.push((db.clone(), name.clone(), t.arrow_schema(), batches));
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
            let mut out: Vec<(String, String, Vec<SegmentMeta>)> = Vec::new();
            for (db, table, schema, batches) in work {
                let target = SegmentTarget {
                    data_dir: &data_dir,
                    schema: &schema,
                    partition_ns,
                    options: &options,
                    origin: SegmentOrigin { database: db, table, wal_upto: closed_wal, ..Default::default() },
                };
                match write_segments(&target, &batches, || ids.fetch_add(1, Ordering::AcqRel)) {
                    Ok(segs) => out.push((target.origin.database, target.origin.table, segs)),
                    Err(e) => {
                        // Nothing lists the segments of the other tables
                        // either: remove them too.
                        for (_, _, segs) in &out {
                            remove_written(&data_dir, segs);
                        }
                        return Err(e);
                    }
                }
            }
            Ok::<_, SegmentError>(out)
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
        let manifest = {
            let st = self.state.read();
            let mut m = self.manifest_of(&st, closed_wal);
            for (db, table, segs) in &written {
                let entry = m.databases.entry(db.clone()).or_default().entry(table.clone()).or_default();
                entry.segments.extend(segs.iter().cloned());
                stats.tables += 1;
                stats.segments += segs.len();
                stats.rows += segs.iter().map(|s| s.rows).sum::<u64>();
                stats.bytes += segs.iter().map(|s| s.bytes).sum::<u64>();
            }
            m
        };
        let dir = self.config.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || manifest.save(&dir))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))
            .and_then(|r| r.map_err(StorageError::from));
        if let Err(e) = saved {
            for (_, _, segs) in &written {
                remove_written(&self.config.data_dir, segs);
            }
            self.restore_persisting();
            self.metrics.persist_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.wal_persisted_upto.store(closed_wal, Ordering::Release);
        {
            let mut st = self.state.write();
            for (db, table, segs) in written {
                if let Some(t) = st.dbs.get_mut(&db).and_then(|d| d.get_mut(&table)) {
                    t.segments.extend(segs.into_iter().map(Arc::new));
                }
            }
            for t in st.dbs.values_mut().flat_map(|d| d.values_mut()) {
                t.persisting.clear();
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

    /// Runs one compaction round: every merge due now (see
    /// [`crate::compact`]), one after another. Inputs that cannot be read
    /// are reported and left in place; the round goes on with the others.
    pub async fn compact(&self) -> Result<CompactionStats, StorageError> {
        let _one_round = self.compact_lock.lock().await;
        let partition_ns = self.config.partition.as_nanos().min(i64::MAX as u128) as i64;
        let now_ns = crate::now_ns();
        let jobs: Vec<(String, String, SchemaRef, Vec<Arc<SegmentMeta>>)> = {
            let st = self.state.read();
            let mut jobs = Vec::new();
            for (db, tables) in &st.dbs {
                for (name, t) in tables {
                    for inputs in compact::plan(&t.segments, partition_ns, now_ns, &self.config.compaction) {
                        jobs.push((db.clone(), name.clone(), t.current_arrow_schema(), inputs));
                    }
                }
            }
            jobs
        };
        let mut stats = CompactionStats::default();
        for (db, table, schema, inputs) in jobs {
            let started = Instant::now();
            let data_dir = self.config.data_dir.clone();
            let options = self.config.segments.clone();
            let ids = Arc::clone(&self.next_segment_id);
            let (db2, table2, inputs2) = (db.clone(), table.clone(), inputs.clone());
            let wal_upto = self.wal_persisted_upto.load(Ordering::Acquire);
            let merged = tokio::task::spawn_blocking(move || {
                let mut batches = Vec::new();
                for s in &inputs2 {
                    batches.extend(compact::read_segment(&data_dir.join(&s.path), &schema)?);
                }
                let target = SegmentTarget {
                    data_dir: &data_dir,
                    schema: &schema,
                    partition_ns,
                    options: &options,
                    origin: SegmentOrigin {
                        database: db2,
                        table: table2,
                        wal_upto,
                        level: inputs2.iter().map(|s| s.level).max().unwrap_or(0).saturating_add(1),
                        replaces: inputs2.iter().map(|s| s.id).collect(),
                        ..Default::default()
                    },
                };
                write_segments(&target, &batches, || ids.fetch_add(1, Ordering::AcqRel))
            })
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
            let outputs = match merged {
                Ok(outputs) => outputs,
                Err(e) => {
                    tracing::error!(
                        "compacting {} segments of {db}.{table} failed, they stay as they are: {e}",
                        inputs.len()
                    );
                    continue;
                }
            };
            self.swap_segments(&db, &table, &inputs, outputs.clone())
                .await
                .inspect_err(|_| remove_written(&self.config.data_dir, &outputs))?;
            let rows: u64 = inputs.iter().map(|s| s.rows).sum();
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
                rows,
                bytes_before = before,
                bytes_after = after,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted segments"
            );
        }
        Ok(stats)
    }

    /// Drops the segments whose rows are all older than their table's
    /// retention (`StorageConfig::retention`), through the same manifest
    /// swap and grace period as compaction. Buffered rows are not touched:
    /// they are dropped once persisted. Returns (segments, rows) dropped.
    pub async fn expire(&self) -> Result<(usize, u64), StorageError> {
        let _one_round = self.compact_lock.lock().await;
        let now_ns = crate::now_ns();
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
            self.swap_segments(&db, &table, &gone, Vec::new()).await?;
            // The newest row of a series may have gone with the segment: the
            // cache is rebuilt from a scan of what is left when next used. (A
            // lastpoint scan planned before the swap and completing after
            // this line could put expired rows back until the next expiry.)
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

    /// Replaces `inputs` by `outputs` (none when expiring) in a new
    /// manifest, then in the query state, and retires the inputs' files.
    async fn swap_segments(
        &self,
        db: &str,
        table: &str,
        inputs: &[Arc<SegmentMeta>],
        outputs: Vec<SegmentMeta>,
    ) -> Result<(), StorageError> {
        let _no_persist = self.persist_lock.lock().await;
        let gone = |s: &SegmentMeta| inputs.iter().any(|i| i.id == s.id);
        let manifest = {
            let st = self.state.read();
            let mut m = self.manifest_of(&st, self.wal_persisted_upto.load(Ordering::Acquire));
            if let Some(entry) = m.databases.get_mut(db).and_then(|d| d.get_mut(table)) {
                entry.segments.retain(|s| !gone(s));
                entry.segments.extend(outputs.iter().cloned());
            }
            // Listed as retired, their files are deleted at start if the
            // grace period never ends here; anything else unlisted is
            // quarantined, not deleted.
            m.retired.extend(inputs.iter().map(|s| s.path.clone()));
            m
        };
        let dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || manifest.save(&dir))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        {
            let mut st = self.state.write();
            if let Some(t) = st.dbs.get_mut(db).and_then(|d| d.get_mut(table)) {
                t.segments.retain(|s| !gone(s));
                t.segments.extend(outputs.into_iter().map(Arc::new));
            }
        }
        let now = Instant::now();
        // Readers that started before this point may still read the inputs;
        // those that start after cannot see them.
        let epoch = {
            let mut r = self.readers.lock();
            r.epoch += 1;
            r.epoch - 1
        };
        self.retired.lock().extend(inputs.iter().map(|s| (s.path.clone(), now, epoch)));
        Ok(())
    }

    /// Forgets series not written within `series_window`, so that they stop
    /// counting against `max_series_per_table`. Returns how many were
    /// forgotten.
    pub fn prune_inactive_series(&self) -> usize {
        let window = self.config.limits.series_window.as_secs();
        let cutoff = unix_secs().saturating_sub(window);
        let mut st = self.state.write();
        let mut pruned = 0;
        for t in st.dbs.values_mut().flat_map(|d| d.values_mut()) {
            let before = t.active.len();
            t.active.retain(|_, seen| *seen >= cutoff);
            pruned += before - t.active.len();
        }
        pruned
    }

    /// Active series over all tables (see `WriteLimits::max_series_per_table`).
    pub fn active_series(&self) -> usize {
        self.state.read().dbs.values().flat_map(|d| d.values()).map(|t| t.active.len()).sum()
    }

    /// Deletes the files of segments replaced by compaction or retention
    /// once the grace period has passed *and* no reader that started before
    /// their retirement is still running (a query streaming for longer than
    /// the grace period keeps its files). Returns how many were deleted.
    pub fn purge_retired(&self) -> usize {
        let grace = self.config.compaction.grace;
        let oldest_reader = self.readers.lock().active.keys().next().copied();
        let due: Vec<String> = self
            .retired
            .lock()
            .iter()
            .filter(|(_, at, epoch)| at.elapsed() >= grace && oldest_reader.is_none_or(|oldest| oldest > *epoch))
            .map(|(p, _, _)| p.clone())
            .collect();
        // Files first, then the list: an entry leaves the list (and so the
        // next manifest's `retired`) only once its file is gone, so that a
        // crash in between cannot leave a file nothing accounts for.
        let mut gone = Vec::with_capacity(due.len());
        for rel in due {
            let p = self.config.data_dir.join(&rel);
            match std::fs::remove_file(&p) {
                Ok(()) => gone.push(rel),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(rel),
                Err(e) => tracing::warn!("cannot delete compacted segment {}: {e}", p.display()),
            }
        }
        self.retired.lock().retain(|(p, _, _)| !gone.contains(p));
        gone.len()
    }

    /// Registers a reader (a query, a tail backfill) until the guard is
    /// dropped: segment files retired after this call are not deleted while
    /// it lives. Take it before taking the snapshot the reader reads.
    pub fn reader(&self) -> ReaderGuard {
        let mut r = self.readers.lock();
        let epoch = r.epoch;
        *r.active.entry(epoch).or_default() += 1;
        ReaderGuard { readers: Arc::clone(&self.readers), epoch }
    }

    fn restore_persisting(&self) {
        let mut st = self.state.write();
        let mut restored = 0;
        for t in st.dbs.values_mut().flat_map(|d| d.values_mut()) {
            let mut back = std::mem::take(&mut t.persisting);
            restored += back.iter().map(|c| batch_bytes(&c.batch)).sum::<usize>();
            back.append(&mut t.buffer);
            t.buffer = back;
        }
        st.persisting_bytes = 0;
        st.buffer_bytes += restored;
        st.oldest_write.get_or_insert_with(Instant::now);
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
                    TableEntry { schema, segments: t.segments.iter().map(|s| (**s).clone()).collect() },
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
        let stats = self.persist().await;
        self.wal.close()?;
        stats
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// Now, in whole seconds since the Unix epoch (the series registry's clock).
pub(crate) fn unix_secs() -> u64 {
    u64::try_from(crate::now_ns() / 1_000_000_000).unwrap_or(0)
}

/// Refuses a table or database that does not exist yet when there are as
/// many as the limits allow.
fn check_new_table(st: &State, db: &str, table: &str, limits: &crate::write::WriteLimits) -> Result<(), WriteError> {
    match st.dbs.get(db) {
        Some(tables) if tables.contains_key(table) => return Ok(()),
        Some(_) => {}
        None if st.dbs.len() >= limits.max_databases => {
            return Err(WriteError::TooManyDatabases {
                database: db.to_string(),
                count: st.dbs.len() + 1,
                limit: limits.max_databases,
            });
        }
        None => {}
    }
    let tables: usize = st.dbs.values().map(|t| t.len()).sum();
    if tables >= limits.max_tables {
        return Err(WriteError::TooManyTables {
            table: table.to_string(),
            count: tables + 1,
            limit: limits.max_tables,
        });
    }
    Ok(())
}

/// Checks each block on its own (table and column names, lengths, value
/// sizes, column count): nothing here needs the state, so writers run it
/// before taking the lock, in time linear in the request.
pub(crate) fn check_shapes(
    writes: Vec<TableWrite>,
    limits: &crate::write::WriteLimits,
) -> (Vec<TableWrite>, Vec<Rejection>) {
    let mut ok = Vec::with_capacity(writes.len());
    let mut rejected = Vec::new();
    for mut w in writes {
        if let Err(error) = check_table_name(&w.table) {
            rejected.extend(w.blocks.iter().map(|b| Rejection { item: b.item, error: error.clone() }));
            continue;
        }
        let table = w.table.as_str();
        w.blocks.retain(|b| match check_block_shape(table, b, limits) {
            Ok(()) => true,
            Err(error) => {
                rejected.push(Rejection { item: b.item, error });
                false
            }
        });
        if !w.blocks.is_empty() {
            ok.push(w);
        }
    }
    (ok, rejected)
}

/// Checks each block against its table's schema, extending the schema with
/// the new columns of accepted blocks. Returns the accepted writes with the
/// Arrow schema to build their batch with, and the rejections.
pub(crate) fn validate(
    st: &mut State,
    db: &str,
    writes: Vec<TableWrite>,
    limits: &crate::write::WriteLimits,
    now_s: u64,
) -> (Vec<(TableWrite, SchemaRef)>, Vec<Rejection>) {
    let mut accepted = Vec::with_capacity(writes.len());
    let mut rejected = Vec::new();
    for w in writes {
        if let Err(error) = check_new_table(st, db, &w.table, limits) {
            rejected.extend(w.blocks.iter().map(|b| Rejection { item: b.item, error: error.clone() }));
            continue;
        }
        let mut ok_blocks = Vec::with_capacity(w.blocks.len());
        let tables = st.dbs.entry(db.to_string()).or_default();
        let existed = tables.contains_key(&w.table);
        let t = tables.entry(w.table.clone()).or_default();
        for block in w.blocks {
            let result = (|| {
                let mut new_cols = Vec::new();
                let mut retyped = Vec::new();
                for (name, kind) in block_columns(&block) {
                    match (t.schema.get(name), kind) {
                        (Some(existing), kind) if existing == kind => {}
                        (Some(_), kind) if t.provisional.iter().any(|p| p == name) => retyped.push((name, kind)),
                        (Some(ColumnKind::Field(existing)), ColumnKind::Field(new)) => {
                            return Err(WriteError::TypeConflict {
                                table: w.table.clone(),
                                column: name.into(),
                                existing,
                                new,
                            });
                        }
                        (Some(existing), new) => {
                            return Err(WriteError::KindConflict {
                                table: w.table.clone(),
                                column: name.into(),
                                existing,
                                new,
                            });
                        }
                        (None, kind) => new_cols.push((name, kind)),
                    }
                }
                let count = t.schema.columns.len() + new_cols.len() + 1;
                if count > limits.max_columns {
                    return Err(WriteError::TooManyColumns {
                        table: w.table.clone(),
                        count,
                        limit: limits.max_columns,
                    });
                }
                let series = series_hash(block.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                if !t.active.contains_key(&series) && t.active.len() >= limits.max_series_per_table {
                    return Err(WriteError::TooManySeries {
                        table: w.table.clone(),
                        limit: limits.max_series_per_table,
                        window_secs: limits.series_window.as_secs(),
                    });
                }
                t.active.insert(series, now_s);
                for (name, kind) in new_cols {
                    t.add_column(name, kind);
                }
                for (name, kind) in retyped {
                    t.retype_provisional(name, kind);
                }
                if !t.provisional.is_empty() {
                    t.provisional.retain(|p| block_columns(&block).all(|(name, _)| name != p));
                }
                Ok(())
            })();
            match result {
                Ok(()) => ok_blocks.push(block),
                Err(error) => rejected.push(Rejection { item: block.item, error }),
            }
        }
        if ok_blocks.is_empty() {
            if !existed && t.schema.columns.is_empty() {
                tables.remove(&w.table);
                if tables.is_empty() {
                    st.dbs.remove(db);
                }
            }
            continue;
        }
        let schema = t.arrow_schema();
        accepted.push((TableWrite { table: w.table, blocks: ok_blocks }, schema));
    }
    (accepted, rejected)
}

/// Adds durable chunks to their tables' buffers.
pub(crate) fn apply<'a>(
    st: &mut State,
    db: &str,
    chunks: impl Iterator<Item = (&'a str, Chunk)>,
) -> Result<(), ArrowError> {
    let mut added = 0;
    for (table, chunk) in chunks {
        added += batch_bytes(&chunk.batch);
        let t = st.dbs.entry(db.to_string()).or_default().entry(table.to_string()).or_default();
        t.push(chunk)?;
    }
    st.buffer_bytes += added;
    st.oldest_write.get_or_insert_with(Instant::now);
    Ok(())
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("data_dir", &self.config.data_dir).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let w =
                TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![1, 2], FieldValues::I64(vec![1, 2]))] };
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
            for b in compact::read_segment(&snap.segment_path(seg), &snap.schema).expect("read") {
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
            cold_after: std::time::Duration::from_secs(u64::MAX / 4),
            grace: std::time::Duration::ZERO,
            ..Default::default()
        };
        let config = StorageConfig { compaction: live, ..StorageConfig::for_tests(dir.path()) };
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
        let s = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("reopen");
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
        config.retention.default = Some(std::time::Duration::from_secs(86_400));
        config.retention.tables.insert("public.keep".into(), None);
        config.compaction.grace = std::time::Duration::ZERO;
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
        assert_eq!(s.purge_retired(), 1);
        assert!(!old_file.exists());
        s.shutdown().await.expect("shutdown");
        drop(s);
        let s = Storage::open(config).await.expect("reopen");
        assert_eq!(rows(&s, "t"), 1, "the drop is in the manifest");
        assert_eq!(rows(&s, "keep"), 3);
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
        assert!(
            matches!(&out.rejected[0].error, WriteError::TooManyColumns { count: 100_002, .. }),
            "{:?}",
            out.rejected
        );
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
            let other =
                TableWrite { table: "u".into(), blocks: vec![block(0, "c", vec![1], FieldValues::I64(vec![1]))] };
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
        lower.limits.series_window = std::time::Duration::ZERO;
        let s = Storage::open(lower).await.expect("reopen");
        std::thread::sleep(std::time::Duration::from_millis(1100));
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
                let w =
                    TableWrite { table: "t".into(), blocks: vec![block(0, "a", vec![1], FieldValues::I64(vec![1]))] };
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
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(log.lock().is_empty(), "ran while a write was still being observed: {:?}", log.lock());
        release.send(()).expect("release");
        writer.await.expect("writer");
        let ((), snap) = seam.await.expect("seam");
        // The write is in the snapshot, and was fully observed before the
        // seam: a subscriber registered in `between` cannot also get it.
        assert_eq!(*log.lock(), ["observed", "between"]);
        assert_eq!(snap.expect("table").chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>(), 1);
    }
}
