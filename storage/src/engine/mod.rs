//! The storage engine: one [`Storage`] value, its state and locks. Each job
//! is an `impl Storage` block of its own module: [`write_path`] (validate,
//! log, buffer), [`read`] (snapshots, readers), [`persist`] (buffer to
//! segments, shutdown) and [`maintain`] (compaction, retention, purge).
//!
//! # Lock protocol
//!
//! | lock | kind | held by | protects |
//! |---|---|---|---|
//! | `compact_lock` | async mutex | a compaction or retention round, a deletion | one remover of segments at a time, so a round's inputs stay listed until it swaps them |
//! | `persist_lock` | async mutex | a persist; the manifest swap of a compaction or expiry | one manifest writer at a time: each new manifest is derived from the one before |
//! | `gate` | async rwlock | writers shared, from validation to the observers; persist, [`Storage::snapshot_between_writes`] and shutdown exclusive | every record of a closed WAL file is in the buffer being persisted; a tail seam sees each write once |
//! | `state` | sync rwlock | anyone, briefly | tables, schemas, buffers, segment lists |
//! | `readers`, `retired`, `observers` | sync | anyone, briefly | reader epochs, files waiting for deletion, write observers |
//!
//! Locks are taken in the order of the table (a holder of `state` never
//! waits for `gate`, a holder of `gate` never for `persist_lock`), and the
//! synchronous ones are never held across an `.await` or a file write:
//! segments and manifests are written with only the async locks held
//! (persist rotates the WAL under `gate` and `state`, which is the one
//! fsync made under `state`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use parking_lot::RwLock;

use crate::batch::adapt_batch;
use crate::clock::{Clock, SystemClock};
use crate::config::StorageConfig;
use crate::manifest::{Manifest, ManifestError, SegmentMeta};
use crate::metrics::StorageMetrics;
use crate::schema::{ColumnDef, ColumnKind, TableSchema};
use crate::segment::SegmentError;
use crate::tombstone::Tombstone;
use crate::wal::{self, Wal, WalError};
use crate::write::{TableWrite, WriteError};

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
    #[error(
        "the manifest's segment of table {table} in {path} is not what the file holds: {reason}. The file \
         and the manifest do not belong together (a file restored or copied over another?), so the server \
         will not start on them. Put back the matching file or manifest, or run \
         `tocsin repair --data-dir {data_dir}` to rebuild the manifest from the files' own metadata"
    )]
    SegmentMismatch { path: PathBuf, table: String, data_dir: PathBuf, reason: String },
    #[error("segment file {path} {of} could not be fetched from the copy in the bucket: {reason}")]
    SegmentFetch { path: String, of: String, reason: String },
    #[error(
        "segment {path} of table {table} is listed in the manifest of {data_dir} but neither on disk nor in the \
         copy in the bucket (segments = \"object-store\" lets go of a file only once the copy holds it). Check \
         --object-store (a wrong bucket or prefix?); if the copy lost it, put it back from a backup, or start from \
         a data directory `tocsin restore` made from one"
    )]
    SegmentNotInCopy { path: PathBuf, table: String, data_dir: PathBuf },
    #[error(
        "data directory {data_dir} keeps its segment files in the bucket (segments = \"object-store\", see its file \
         {marker}) and {count} of them are only there (e.g. {example}): start it with segments = \"object-store\" \
         and its --object-store again. To keep every segment on local disk again, make a whole copy with `tocsin \
         backup DEST` and `tocsin restore DEST --data-dir NEW`, and start NEW with segments = \"local\""
    )]
    SegmentsInBucket { data_dir: PathBuf, marker: String, count: usize, example: String },
    #[error(
        "data directory {path} is a restore that did not finish ({marker} is there): some files may be missing \
         or partly written. Remove the directory and run `tocsin restore` again"
    )]
    RestoreIncomplete { path: PathBuf, marker: PathBuf },
    #[error("data directory {path} is in use by another tocsin process (lock file {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("write buffer is full ({buffered} bytes buffered, limit {limit}): persistence is behind; retry later")]
    BufferFull { buffered: usize, limit: usize },
    #[error("server is shutting down; write refused")]
    ShuttingDown,
    #[error(
        "this server is a reader (--role reader): it answers queries from the bucket's copy and refuses {0}; \
         send it to the writer"
    )]
    ReadOnly(&'static str),
    #[error("{0}")]
    Fenced(String),
    #[error("DELETE refused: {0}")]
    Delete(String),
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
    /// Deletions of rows of `segments`: a reader drops the rows each
    /// tombstone matches from the segments it covers.
    pub tombstones: Vec<Arc<Tombstone>>,
    pub data_dir: PathBuf,
    /// Where rows of the same series and time may be more than one and
    /// only the last written counts; `None` when nowhere.
    pub overlaps: Option<Overlaps>,
}

/// The time partitions of a snapshot in which rows of the same series and
/// time may be found more than once (in two segments, two buffered chunks,
/// or one of each). A reader keeps the last written of them: it reads the
/// segments of those partitions (in [`SegmentMeta::order`]) and the
/// chunks (in write order, after every segment) that reach into them
/// together, and applies [`crate::segment::keep_last_written`]. Elsewhere
/// no two rows share a series and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlaps {
    /// Partition starts (ns), ascending.
    pub partitions: Vec<i64>,
    pub partition_ns: i64,
}

/// Whether segment `seg` holds rows in the partition `[start, start +
/// partition_ns)`.
pub(crate) fn in_partition(seg: &SegmentMeta, start: i64, partition_ns: i64) -> bool {
    seg.min_ts < start.saturating_add(partition_ns) && seg.max_ts >= start
}

impl Overlaps {
    /// Whether `[min_ts, max_ts]` reaches into one of the partitions.
    pub fn touch(&self, min_ts: i64, max_ts: i64) -> bool {
        let from = min_ts.div_euclid(self.partition_ns).saturating_mul(self.partition_ns);
        let i = self.partitions.partition_point(|&p| p < from);
        self.partitions.get(i).is_some_and(|&p| p <= max_ts)
    }

    /// Whether segment `seg` holds rows in one of the partitions (by its
    /// time range: a segment written at another partition width may span
    /// several).
    pub fn holds(&self, seg: &SegmentMeta) -> bool {
        self.touch(seg.min_ts, seg.max_ts)
    }
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

/// What the write path remembers of an active series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// When it was last written (Unix seconds).
    pub(crate) at: u64,
    /// Its newest `ts` written since it became active (or the table's
    /// newest then, whichever is newer: its older rows may reach that far).
    pub(crate) newest: i64,
}

pub(crate) struct TableState {
    pub(crate) schema: TableSchema,
    pub(crate) arrow: Option<SchemaRef>,
    pub(crate) buffer: Vec<Chunk>,
    pub(crate) persisting: Vec<Chunk>,
    pub(crate) segments: Vec<Arc<SegmentMeta>>,
    /// Deletions some segment still holds rows of (see
    /// [`crate::tombstone`]).
    pub(crate) tombstones: Vec<Arc<Tombstone>>,
    /// Chunks at the end of `buffer` smaller than [`SMALL_CHUNK_ROWS`].
    pub(crate) small_tail: usize,
    /// Series hash → when it was last written and its newest time: the
    /// active series that `WriteLimits::max_series_per_table` bounds.
    pub(crate) active: HashMap<u64, Seen>,
    /// The newest `ts` the table holds or held (segments and buffer): a
    /// series not in `active` may have rows up to it.
    pub(crate) newest_ts: i64,
    /// Partitions whose segments may share a series and time (saved in
    /// the manifest, see `TableEntry::overlapping`).
    pub(crate) overlapping: BTreeSet<i64>,
    /// Partitions where a buffered row may repeat a series and time of
    /// another buffered row or of a segment; taken by a persist
    /// (`dirty_persisting`) and folded into `overlapping` if the partition
    /// holds other segments by then.
    pub(crate) dirty_buffer: BTreeSet<i64>,
    pub(crate) dirty_persisting: BTreeSet<i64>,
    /// Whether the table holds events (logs, spans), whose rows are all
    /// kept, rather than samples: decided by the columns it was created
    /// with (one in [`EVENT_COLUMNS`]) and kept, so that a later write
    /// with a `message` field does not change what the table keeps.
    /// `None` while the table has no columns.
    pub(crate) events: Option<bool>,
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

    /// Whether the table holds events (see [`TableState::events`]); a
    /// table without columns yet is not a table of events.
    pub(crate) fn holds_events(&self) -> bool {
        self.events.unwrap_or(false)
    }

    /// Decides [`TableState::events`] if the table has just got its
    /// first columns.
    fn decide_kind(&mut self) {
        if self.events.is_none() && !self.schema.columns.is_empty() {
            self.events = Some(has_event_columns(self.schema.columns.iter().map(|c| c.name.as_str())));
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

impl Default for TableState {
    fn default() -> Self {
        Self {
            schema: TableSchema::default(),
            arrow: None,
            buffer: Vec::new(),
            persisting: Vec::new(),
            segments: Vec::new(),
            tombstones: Vec::new(),
            small_tail: 0,
            active: HashMap::new(),
            newest_ts: i64::MIN,
            overlapping: BTreeSet::new(),
            dirty_buffer: BTreeSet::new(),
            dirty_persisting: BTreeSet::new(),
            events: None,
            provisional: Vec::new(),
        }
    }
}

const SMALL_CHUNK_ROWS: usize = 4096;
/// Memory for token filters read from segment footers: 0.27 bytes per log
/// line on generated logs, so 64 MiB holds the filters of some 250 million
/// such lines (fewer where lines carry more distinct words).
const TOKEN_FILTER_CACHE_BYTES: usize = 64 << 20;
const MERGE_SMALL_CHUNKS: usize = 64;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) dbs: BTreeMap<String, BTreeMap<String, TableState>>,
    pub(crate) buffer_bytes: usize,
    pub(crate) persisting_bytes: usize,
    /// When the oldest buffered write was applied ([`Clock::monotonic`]).
    pub(crate) oldest_write: Option<Duration>,
}

/// The database of the server's own tables (`system.alert_history`, ...).
pub const SYSTEM_DATABASE: &str = "system";

/// Columns that make a table a table of events (logs, spans), whose rows
/// are all kept.
const EVENT_COLUMNS: [&str; 3] = ["message", "trace_id", "span_id"];

/// Whether a table created with columns `names` is a table of events (see
/// [`EVENT_COLUMNS`]).
pub(crate) fn has_event_columns<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| EVENT_COLUMNS.contains(&n))
}

/// Whether a table of database `db` keeps only the last written of rows of
/// the same series and time (last write wins, as in VictoriaMetrics and
/// InfluxDB): metrics tables do. Tables of `events` (logs, spans: see
/// [`TableState::events`]) and the server's own tables keep every row: two
/// events of one service in the same nanosecond are two events.
pub(crate) fn keeps_last_write(dedupe: bool, db: &str, events: bool) -> bool {
    dedupe && db != SYSTEM_DATABASE && !events
}

pub struct Storage {
    pub(crate) config: StorageConfig,
    pub(crate) state: RwLock<State>,
    /// `None` on a reader ([`Storage::open_reader`]), which never writes.
    pub(crate) wal: Option<Arc<Wal>>,
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
    retired: parking_lot::Mutex<Vec<(String, Duration, u64)>>,
    readers: Arc<parking_lot::Mutex<Readers>>,
    shutting_down: AtomicBool,
    /// Why writes are refused for good ([`Storage::fence`]).
    fenced: RwLock<Option<String>>,
    /// What this server's right to acknowledge writes hangs on
    /// ([`Storage::hold_by`]).
    lease: RwLock<Option<Arc<dyn Lease>>>,
    pub metrics: StorageMetrics,
    /// Replaced whole when one is added (at start-up), so that a write
    /// takes the list with one reference count, not a copy.
    observers: RwLock<Arc<Vec<Arc<dyn WriteObserver>>>>,
    last: crate::last::LastRows,
    /// Token filters of segments' text columns, read from their footers.
    token_filters: crate::tokens::FilterCache,
    /// A reader's segment files fetched as scans read them
    /// ([`Storage::open_reader_fetching`]); unset, every file listed is on
    /// disk.
    pub(crate) cache: std::sync::OnceLock<crate::cache::SegmentCache>,
    pub(crate) clock: Arc<dyn Clock>,
    _lock_file: File,
}

/// Sees each write once it is durable and visible to queries, before the
/// writer is answered (and before [`Storage::snapshot_between_writes`] can
/// run).
pub trait WriteObserver: Send + Sync {
    fn written(&self, db: &str, writes: &[TableWrite]);
}

/// A primary's lease (in etcd): while `check` says why not, writes are
/// refused, also one already in the WAL and not yet acknowledged.
pub trait Lease: Send + Sync {
    fn check(&self) -> Result<(), String>;
}

impl Storage {
    /// Opens (or creates) the data directory, verifies segments, replays the
    /// WAL and starts a new WAL file. Fails with a precise error if the
    /// directory cannot be used.
    pub async fn open(config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        Storage::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Storage::open`] with the clock every waiting period and age is
    /// measured with (tests move a [`crate::clock::ManualClock`]).
    pub async fn open_with_clock(config: StorageConfig, clock: Arc<dyn Clock>) -> Result<Arc<Storage>, StorageError> {
        tokio::task::spawn_blocking(move || {
            crate::recovery::open(config, clock, crate::recovery::Mode::Writer, false, None)
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Opens a writer whose segment files live in the bucket once its copy
    /// holds them (`segments = "object-store"`): at most `limit` bytes of
    /// those are kept on disk, the others come from `source` when read
    /// (see [`crate::cache`]). A file the manifest lists that is neither on
    /// disk nor in `source`'s copy refuses the start, naming it.
    pub async fn open_fetching(
        config: StorageConfig,
        source: Arc<dyn crate::cache::SegmentSource>,
        limit: u64,
    ) -> Result<Arc<Storage>, StorageError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let bucket = Arc::clone(&source);
        let storage = tokio::task::spawn_blocking(move || {
            let held = move |path: &str| bucket.bytes(path).is_some();
            crate::recovery::open(config, clock, crate::recovery::Mode::Writer, true, Some(&held))
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))??;
        let dir = storage.config.data_dir.clone();
        let listed: Vec<(String, String)> = {
            let st = storage.state.read();
            let mut v: Vec<(String, String)> = st
                .dbs
                .iter()
                .flat_map(|(db, t)| t.iter().map(move |(name, t)| (db, name, t)))
                .flat_map(|(db, name, t)| t.segments.iter().map(move |s| (s.path.clone(), format!("{db}.{name}"))))
                .collect();
            v.sort();
            v.dedup_by(|a, b| a.0 == b.0);
            v
        };
        // Parts of fetches a crash interrupted.
        let _ = std::fs::remove_dir_all(dir.join(".incoming"));
        let marker = dir.join(crate::SEGMENTS_IN_BUCKET_MARKER);
        if !marker.exists() {
            crate::durable::write_atomic(
                &marker,
                |source| StorageError::Io { path: marker.clone(), source },
                |f| {
                    std::io::Write::write_all(
                        f,
                        b"This data directory's segment files live in the bucket (segments = \"object-store\"): \
                          some are only there. Start it with that setting, or make a whole copy with `tocsin backup` \
                          and `tocsin restore`.\n",
                    )
                    .map_err(|source| StorageError::Io { path: marker.clone(), source })
                },
            )?;
        }
        let mut present = Vec::new();
        for (path, table) in listed {
            match std::fs::metadata(dir.join(&path)) {
                Ok(m) => present.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), path, m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && source.bytes(&path).is_some() => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::SegmentNotInCopy { path: dir.join(&path), table, data_dir: dir.clone() });
                }
                Err(source) => {
                    return Err(StorageError::SegmentUnreadable {
                        path: dir.join(&path),
                        table,
                        data_dir: dir.clone(),
                        source,
                    });
                }
            }
        }
        present.sort();
        let cache =
            crate::cache::SegmentCache::new(source, limit, present.into_iter().map(|(_, p, b)| (p, b)).collect(), true);
        if storage.cache.set(cache).is_err() {
            return Err(StorageError::Task("the segment cache was set twice".into()));
        }
        Ok(storage)
    }

    /// A writer of `segments = "object-store"`: its copy in the bucket now
    /// holds `paths` (those of its files it may let go of), and the cache is
    /// brought within its bound.
    pub fn in_copy(&self, paths: std::collections::HashSet<String>) {
        if let Some(cache) = self.cache.get() {
            // Written since the cache was made: counted from now on (not
            // those retired, which the writer's purge deletes).
            let retired: std::collections::HashSet<String> =
                self.retired.lock().iter().map(|(p, _, _)| p.clone()).collect();
            for path in cache.untracked(paths.iter().filter(|p| !retired.contains(*p))) {
                if let Ok(m) = std::fs::metadata(self.config.data_dir.join(&path)) {
                    cache.own(&path, m.len());
                }
            }
            cache.in_copy(paths);
            self.trim_cache(&[]);
        }
    }

    pub(crate) fn from_parts(
        config: StorageConfig,
        state: State,
        wal: Option<Arc<Wal>>,
        manifest: &Manifest,
        lock_file: File,
        metrics: StorageMetrics,
        clock: Arc<dyn Clock>,
    ) -> Storage {
        Storage {
            config,
            clock,
            state: RwLock::new(state),
            wal,
            gate: tokio::sync::RwLock::new(()),
            persist_lock: tokio::sync::Mutex::new(()),
            compact_lock: tokio::sync::Mutex::new(()),
            next_segment_id: Arc::new(AtomicU64::new(manifest.next_segment_id)),
            wal_persisted_upto: AtomicU64::new(manifest.wal_persisted_upto),
            retired: parking_lot::Mutex::new(Vec::new()),
            readers: Arc::new(parking_lot::Mutex::new(Readers::default())),
            shutting_down: AtomicBool::new(false),
            fenced: RwLock::new(None),
            lease: RwLock::new(None),
            metrics,
            observers: RwLock::new(Arc::new(Vec::new())),
            last: crate::last::LastRows::default(),
            token_filters: crate::tokens::FilterCache::new(TOKEN_FILTER_CACHE_BYTES),
            cache: std::sync::OnceLock::new(),
            _lock_file: lock_file,
        }
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The WAL's counters; `None` on a reader.
    pub fn wal_metrics(&self) -> Option<&wal::WalMetrics> {
        self.wal.as_deref().map(|w| &w.metrics)
    }

    /// The WAL, for a shipper to send its records to a bucket
    /// ([`Wal::ship`]); `None` on a reader.
    pub fn wal(&self) -> Option<Arc<Wal>> {
        self.wal.clone()
    }

    /// Refuses every write from now on, saying `why` (another server took
    /// over this server's copy in the bucket: writes accepted here would be
    /// lost to it).
    pub fn fence(&self, why: String) {
        self.fenced.write().get_or_insert(why);
    }

    /// Acknowledges writes only while `lease` holds.
    pub fn hold_by(&self, lease: Arc<dyn Lease>) {
        *self.lease.write() = Some(lease);
    }

    /// Why writes are refused for good, if they are.
    pub fn fenced(&self) -> Option<String> {
        if let Some(why) = self.fenced.read().clone() {
            return Some(why);
        }
        let lease = self.lease.read().clone();
        lease.and_then(|l| l.check().err())
    }

    /// Whether this is a reader's storage ([`Storage::open_reader`]).
    pub fn is_reader(&self) -> bool {
        self.wal.is_none()
    }

    /// The WAL, or why there is none: `what` names the refused action.
    pub(crate) fn writable(&self, what: &'static str) -> Result<&Wal, StorageError> {
        self.wal.as_deref().ok_or(StorageError::ReadOnly(what))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

mod checkpoint;
mod delete;
mod follow;
mod maintain;
mod persist;
mod read;
#[cfg(test)]
mod tests;
mod write_path;

pub use checkpoint::Checkpoint;
pub use delete::Deleted;
pub use follow::Reloaded;
pub(crate) use write_path::{apply, check_shapes, validate};

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("data_dir", &self.config.data_dir).finish_non_exhaustive()
    }
}
