//! Counters of the storage engine, read by the server's `/metrics`.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct StorageMetrics {
    /// Rows accepted by writes.
    pub rows_written: AtomicU64,
    /// Write calls that committed at least one row.
    pub writes: AtomicU64,
    /// Items (series blocks) rejected by validation.
    pub rejected_items: AtomicU64,
    /// Persist operations completed.
    pub persists: AtomicU64,
    /// Persist operations that failed (their rows stay buffered and in the
    /// WAL; the next attempt backs off).
    pub persist_failures: AtomicU64,
    /// Segment files written.
    pub segments_written: AtomicU64,
    /// Bytes of segment files written.
    pub segment_bytes_written: AtomicU64,
    /// Rows replayed from the WAL at startup.
    pub wal_replayed_rows: AtomicU64,
    /// Bytes cut off torn or corrupt WAL tails at startup.
    pub wal_truncated_bytes: AtomicU64,
    /// Compaction merges done.
    pub compactions: AtomicU64,
    /// Segments replaced by compaction.
    pub compacted_segments: AtomicU64,
    /// Bytes of segment files written by compaction.
    pub compaction_bytes_written: AtomicU64,
    /// Segments dropped by retention.
    pub expired_segments: AtomicU64,
    /// Rows in segments dropped by retention.
    pub expired_rows: AtomicU64,
    /// Rows deleted by `DELETE` (tombstones recorded).
    pub deleted_rows: AtomicU64,
    /// Segments compaction rewrote only to drop deleted rows.
    pub purged_segments: AtomicU64,
    /// Files moved to quarantine at startup.
    pub quarantined_files: AtomicU64,
    /// Blocks of segments that `matches()` searches read, and skipped, by
    /// their token filters.
    pub token_blocks_read: AtomicU64,
    pub token_blocks_skipped: AtomicU64,
}
