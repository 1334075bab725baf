//! Tocsin's storage engine: where a write becomes durable and where queries
//! find data.
//!
//! Data enters through [`Storage::write`] as [`TableWrite`]s (columnar blocks
//! of rows, one block per series). Each call is validated per block against
//! the table's schema (extending it with new tags and fields), appended to the
//! write-ahead log ([`wal`]), fsynced with group commit, and then added to the
//! in-memory write buffer as an Arrow record batch, where queries see it at
//! once. A background task persists the buffer into sorted, compressed Parquet
//! segments ([`segment`]), one per table per time partition (small tables
//! share files: [`pack`]), records them in
//! the [`manifest`] and only then deletes the WAL files they cover.
//!
//! Data leaves through [`Storage::snapshot`]: a consistent view of one table
//! (its schema, buffered batches and segment files) that stays valid while a
//! persist swaps buffers for segments.
//!
//! ```no_run
//! # async fn f() -> Result<(), tocsin_storage::StorageError> {
//! use tocsin_storage::*;
//! let storage = Storage::open(StorageConfig::for_tests("/tmp/tocsin-example")).await?;
//! let outcome = storage
//!     .write("public", vec![TableWrite {
//!         table: "cpu".into(),
//!         blocks: vec![SeriesBlock {
//!             item: 0,
//!             tags: vec![("host".into(), "web-1".into())],
//!             timestamps: vec![1_700_000_000_000_000_000],
//!             fields: vec![FieldColumn { name: "usage".into(), values: FieldValues::F64(vec![0.5]), validity: None }],
//!         }],
//!     }])
//!     .await?;
//! assert_eq!(outcome.accepted_rows, 1);
//! let snap = storage.snapshot("public", "cpu").expect("table exists");
//! assert_eq!(snap.chunks.len(), 1);
//! # Ok(()) }
//! ```

pub mod batch;
pub mod cache;
pub mod clock;
mod compact;
pub mod config;
pub mod decimal;
mod delta;
pub mod durable;
mod engine;
pub mod errors;
pub mod generated;
mod last;
pub mod manifest;
mod metrics;
pub mod objects;
pub mod pack;
mod recovery;
pub mod refusals;
pub mod repair;
pub mod schema;
pub mod segment;
pub mod tokens;
pub mod tombstone;
pub mod wal;
pub mod write;

pub use cache::{CacheStats, SegmentSource};
pub use clock::{Clock, ManualClock, SystemClock};
pub use compact::CompactionStats;
pub use config::{CompactionConfig, RetentionConfig, StorageConfig};
pub use engine::{
    Checkpoint, Chunk, Deleted, Lease, Overlaps, PersistStats, ReaderGuard, Rejection, Reloaded, SYSTEM_DATABASE,
    Storage, StorageError, TableSnapshot, WriteObserver, WriteOutcome,
};
pub use manifest::SegmentMeta;

/// Written first into a data directory that `tocsin restore` fills and
/// removed last: the server will not start on a restore that did not finish.
pub const RESTORE_MARKER: &str = "RESTORE-INCOMPLETE";
/// Written into the data directory of a writer of `segments =
/// "object-store"`: segment files the manifest lists may be only in the
/// bucket, so a start without that setting, and `tocsin repair`, refuse
/// while any is missing (they would drop them).
pub const SEGMENTS_IN_BUCKET_MARKER: &str = "segments-in-bucket";
pub use metrics::StorageMetrics;
pub use schema::{ColumnKind, FieldType, TIME_COLUMN, TableSchema};
pub use wal::FsyncPolicy;
pub use write::{FieldColumn, FieldValues, SeriesBlock, TableWrite, WriteError, WriteLimits};

/// Now, in nanoseconds since the Unix epoch (0 before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
