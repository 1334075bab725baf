//! Storage configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::segment::SegmentOptions;
use crate::wal::FsyncPolicy;
use crate::write::WriteLimits;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Width of a time partition: one segment file per table per partition.
    pub partition: Duration,
    /// Persist the write buffer when it holds this many bytes...
    pub persist_max_bytes: usize,
    /// ...or when its oldest write is this old.
    pub persist_max_age: Duration,
    /// Refuse writes while buffered (and persisting) data exceeds this.
    pub max_buffer_bytes: usize,
    pub segments: SegmentOptions,
    pub limits: WriteLimits,
    pub compaction: CompactionConfig,
    pub retention: RetentionConfig,
    /// Last write wins: of rows of the same series and time in a metrics
    /// table, queries and compaction keep the last written (see
    /// `Storage::keeps_last_write`). Off, every row written is kept.
    pub deduplicate: bool,
}

/// How long rows are kept (see `crate::retention`). `None` keeps forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    /// For tables with no more specific setting.
    pub default: Option<Duration>,
    /// Per database; wins over `default`.
    pub databases: std::collections::BTreeMap<String, Option<Duration>>,
    /// Per `database.table`; wins over the database's.
    pub tables: std::collections::BTreeMap<String, Option<Duration>>,
}

impl RetentionConfig {
    /// The retention of `db.table`: `None` keeps its rows forever.
    pub fn of(&self, db: &str, table: &str) -> Option<Duration> {
        if let Some(r) = self.tables.get(&format!("{db}.{table}")) {
            return *r;
        }
        if let Some(r) = self.databases.get(db) {
            return *r;
        }
        self.default
    }
}

/// When segments of one table and partition are merged (see
/// `crate::compact`).
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    pub enabled: bool,
    /// Merge when a partition holds this many segments of one level.
    pub fan_in: usize,
    /// A partition whose end is this far in the past gets all its segments
    /// merged into one.
    pub cold_after: Duration,
    /// Never merge inputs holding more rows than this in one go (they are
    /// decoded in memory).
    pub max_rows: u64,
    /// Replaced segment files are deleted this long after the swap, so that
    /// queries planned before it can finish reading them.
    pub grace: Duration,
    /// How often the server looks for merges that are due.
    pub interval: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fan_in: 4,
            cold_after: Duration::from_secs(3600),
            max_rows: 10_000_000,
            grace: Duration::from_secs(600),
            interval: Duration::from_secs(10),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tocsin-data"),
            fsync: FsyncPolicy::Always,
            partition: Duration::from_secs(86_400),
            persist_max_bytes: 512 * 1024 * 1024,
            persist_max_age: Duration::from_secs(600),
            max_buffer_bytes: 2 * 1024 * 1024 * 1024,
            segments: SegmentOptions::default(),
            limits: WriteLimits::default(),
            compaction: CompactionConfig::default(),
            retention: RetentionConfig::default(),
            deduplicate: true,
        }
    }
}

impl StorageConfig {
    /// Defaults for tests: the given directory, everything else default.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into(), ..Default::default() }
    }
}
