//! What readers see: table lists and schemas, snapshots, the last-row
//! cache, and the reader epochs that keep retired files alive.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::{Overlaps, ReaderGuard, Storage, StorageError, TableSnapshot, TableState};

impl Storage {
    /// The newest row of every series of `db.table`, in the table's current
    /// schema; `None` until [`Storage::complete_last_rows`] has folded in
    /// the table's history. Always `None` on a reader: its tables are
    /// replaced whole at each reload, not written, so every query scans.
    pub fn last_rows(&self, db: &str, table: &str) -> Result<Option<RecordBatch>, StorageError> {
        if self.is_reader() {
            return Ok(None);
        }
        let Some(schema) = self.table_schema(db, table) else { return Ok(None) };
        Ok(self.last.rows(db, table, &schema)?)
    }

    /// To read before the scan whose rows [`Storage::complete_last_rows`]
    /// folds in.
    pub fn last_rows_epoch(&self) -> u64 {
        self.last.epoch()
    }

    /// Folds the newest row per series of the whole table (`rows`, from a
    /// scan begun at `epoch`, [`Storage::last_rows_epoch`]) into the
    /// last-row cache and marks it complete. Writes that happen meanwhile
    /// are kept if newer; if a deletion or an expiry made the cache forget
    /// a table since `epoch`, nothing is folded in (the scan may hold rows
    /// gone since).
    pub fn complete_last_rows(
        &self,
        db: &str,
        table: &str,
        rows: &RecordBatch,
        epoch: u64,
    ) -> Result<(), StorageError> {
        if self.is_reader() {
            return Ok(());
        }
        let schema = self.table_schema(db, table).unwrap_or_else(|| rows.schema());
        let last_wins = self.keeps_last_write(db, table);
        Ok(self.last.complete(db, table, rows, &schema, epoch, last_wins)?)
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

    /// The token filter of `column` in a segment (see [`crate::tokens`]);
    /// `None` when it has none or it cannot be read.
    pub fn token_filter(
        &self,
        snap: &TableSnapshot,
        seg: &crate::manifest::SegmentMeta,
        column: &str,
    ) -> Option<Arc<crate::tokens::TokenFilter>> {
        let filter = self.token_filters.get(&snap.segment_path(seg), column)?;
        (filter.rows() == seg.rows).then_some(filter)
    }

    /// A segment's Parquet footer, with its page index and without its
    /// token filters, which are kept for [`Storage::token_filter`] on the
    /// way (one read of the footer serves both). The page index comes with
    /// it so that a reader that keeps the footer does not read and parse
    /// the page index again for every scan.
    pub fn segment_footer(
        &self,
        snap: &TableSnapshot,
        seg: &crate::manifest::SegmentMeta,
    ) -> Result<parquet::file::metadata::ParquetMetaData, crate::segment::SegmentCheckError> {
        use crate::segment::SegmentCheckError::{Corrupt, Io};
        use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
        let path = snap.segment_path(seg);
        let (meta, filters) = crate::tokens::read_footer(&path)?;
        self.token_filters.put(&path, filters);
        let file = std::fs::File::open(&path).map_err(Io)?;
        let mut reader =
            ParquetMetaDataReader::new_with_metadata(meta).with_page_index_policy(PageIndexPolicy::Optional);
        reader.read_page_indexes(&file).map_err(|e| Corrupt(format!("the page index does not decode: {e}")))?;
        reader.finish().map_err(|e| Corrupt(format!("the page index does not decode: {e}")))
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
            tombstones: t.tombstones.clone(),
            data_dir: self.config.data_dir.clone(),
            overlaps: self.overlaps_of(db, t),
        })
    }

    /// Where `t`'s rows may repeat a series and time (see [`Overlaps`]).
    pub(crate) fn overlaps_of(&self, db: &str, t: &TableState) -> Option<Overlaps> {
        if !super::keeps_last_write(self.config.deduplicate, db, t.holds_events()) {
            return None;
        }
        let mut partitions: Vec<i64> =
            t.overlapping.iter().chain(&t.dirty_buffer).chain(&t.dirty_persisting).copied().collect();
        if partitions.is_empty() {
            return None;
        }
        partitions.sort_unstable();
        partitions.dedup();
        Some(Overlaps { partitions, partition_ns: self.partition_ns() })
    }

    /// Whether `db.table` keeps the last write of a series and time (see
    /// [`super::keeps_last_write`]).
    pub fn keeps_last_write(&self, db: &str, table: &str) -> bool {
        let events = self.state.read().dbs.get(db).and_then(|d| d.get(table)).is_some_and(|t| t.holds_events());
        super::keeps_last_write(self.config.deduplicate, db, events)
    }

    /// The partition width when tables keep the last write (see
    /// [`super::validate`]).
    pub(crate) fn last_write(&self) -> Option<i64> {
        self.config.deduplicate.then(|| self.partition_ns())
    }

    /// The width of a time partition in nanoseconds.
    pub(crate) fn partition_ns(&self) -> i64 {
        self.config.partition.as_nanos().min(i64::MAX as u128) as i64
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

    /// Registers a reader (a query, a tail backfill) until the guard is
    /// dropped: segment files retired after this call are not deleted while
    /// it lives. Take it before taking the snapshot the reader reads.
    pub fn reader(&self) -> ReaderGuard {
        let mut r = self.readers.lock();
        let epoch = r.epoch;
        *r.active.entry(epoch).or_default() += 1;
        ReaderGuard { readers: Arc::clone(&self.readers), epoch }
    }

    /// Time partitions, over all tables, whose queries keep the last write
    /// of repeated rows (see [`Overlaps`]) until compaction merges them.
    pub fn overlapping_partitions(&self) -> usize {
        let st = self.state.read();
        st.dbs
            .iter()
            .flat_map(|(db, tables)| tables.values().map(move |t| (db, t)))
            .filter_map(|(db, t)| self.overlaps_of(db, t))
            .map(|o| o.partitions.len())
            .sum()
    }

    /// Active series over all tables (see `WriteLimits::max_series_per_table`).
    pub fn active_series(&self) -> usize {
        self.state.read().dbs.values().flat_map(|d| d.values()).map(|t| t.active.len()).sum()
    }
}
