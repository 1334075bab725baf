//! Deletions: `DELETE FROM t WHERE ...` recorded as a tombstone (see
//! [`crate::tombstone`] for what one is and who applies it).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::datatypes::{Schema, SchemaRef};

use super::{Storage, StorageError};
use crate::manifest::SegmentMeta;
use crate::schema::{ColumnKind, TIME_COLUMN};
use crate::tombstone::{Deletion, Tombstone, covering, remove_deleted};

/// Deletions a table may hold before compaction has removed their rows.
pub(crate) const MAX_TOMBSTONES: usize = 100;

/// What a deletion did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    /// Rows deleted (not counting rows an earlier deletion removed).
    pub rows: u64,
    /// Segments holding them, rewritten by the next compaction round.
    pub segments: usize,
}

impl Storage {
    /// Deletes the rows of `db.table` that `deletion` matches, written
    /// before this call: persists the write buffer, counts the matching
    /// rows in the segments, and records a tombstone in the manifest if
    /// there are any. Rows written while it runs may or may not be deleted.
    pub async fn delete(&self, db: &str, table: &str, deletion: Deletion) -> Result<Deleted, StorageError> {
        self.writable("DELETE")?;
        let pending = self.check_deletion(db, table, &deletion)?;
        if deletion.is_empty() {
            return Ok(Deleted::default());
        }
        // Every read of a covered segment applies every tombstone over it:
        // their number is bounded until compaction rewrites the segments.
        if pending >= MAX_TOMBSTONES {
            return Err(StorageError::Delete(format!(
                "{db}.{table} has {pending} deletions whose rows are still in its segments (at most \
                 {MAX_TOMBSTONES}); the next compaction round rewrites them (POST /api/v1/admin/compact runs \
                 one now), then delete again"
            )));
        }
        // No merge or expiry may replace segments while the tombstone is
        // made: their outputs would get ids past it and keep the rows.
        let _no_merges = self.compact_lock.lock().await;
        // Every row written before now goes into a segment.
        self.persist().await?;
        let probe = |upto_segment| Tombstone { upto_segment, at: self.clock.now_ns(), deletion: deletion.clone() };
        let (upto, covered, earlier, schema) = {
            // With the persist lock held no persist is writing: every id
            // below the next one is listed (or was abandoned).
            let _no_persist = self.persist_lock.lock().await;
            let upto = self.next_segment_id.load(Ordering::Acquire).saturating_sub(1);
            let st = self.state.read();
            let t = st.dbs.get(db).and_then(|d| d.get(table)).ok_or_else(|| no_table(db, table))?;
            let probe = probe(upto);
            let covered: Vec<Arc<SegmentMeta>> = t.segments.iter().filter(|s| probe.covers(s)).cloned().collect();
            // The time and the tags are all a tombstone reads.
            let full = t.current_arrow_schema();
            let keep: Vec<usize> = full
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    f.name() == TIME_COLUMN
                        || t.schema.columns.iter().any(|c| &c.name == f.name() && c.kind == ColumnKind::Tag)
                })
                .map(|(i, _)| i)
                .collect();
            let schema: SchemaRef = Arc::new(Schema::clone(&full.project(&keep)?));
            (upto, covered, t.tombstones.clone(), schema)
        };
        if covered.is_empty() {
            return Ok(Deleted::default());
        }
        let data_dir = self.config.data_dir.clone();
        let _reading = self.reader();
        self.ensure_local(db, table, &covered.iter().map(|s| &**s).collect::<Vec<_>>()).await?;
        let counted = {
            let (covered, deletion) = (covered.clone(), deletion.clone());
            tokio::task::spawn_blocking(move || -> Result<(u64, usize), StorageError> {
                let (mut rows, mut segments) = (0u64, 0usize);
                for s in &covered {
                    let before = rows;
                    let path = data_dir.join(&s.path);
                    for batch in crate::compact::read_segment(&path, s.row_range(), &schema)? {
                        // Rows an earlier deletion removed are not counted again.
                        let batch = remove_deleted(&batch, &covering(&earlier, s))?;
                        rows += deletion.matches(&batch)?.true_count() as u64;
                    }
                    segments += usize::from(rows > before);
                }
                Ok((rows, segments))
            })
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??
        };
        let (rows, segments) = counted;
        if rows == 0 {
            return Ok(Deleted::default());
        }
        let tombstone = probe(upto);
        {
            let _no_persist = self.persist_lock.lock().await;
            if let Some(why) = self.fenced() {
                return Err(StorageError::Fenced(why));
            }
            let manifest = {
                let st = self.state.read();
                let mut m = self.manifest_of(&st, self.wal_persisted_upto.load(Ordering::Acquire));
                let entry =
                    m.databases.get_mut(db).and_then(|d| d.get_mut(table)).ok_or_else(|| no_table(db, table))?;
                entry.tombstones.push(tombstone.clone());
                m
            };
            let dir = self.config.data_dir.clone();
            tokio::task::spawn_blocking(move || manifest.save(&dir))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))??;
            let mut st = self.state.write();
            if let Some(t) = st.dbs.get_mut(db).and_then(|d| d.get_mut(table)) {
                t.tombstones.push(Arc::new(tombstone.clone()));
            }
        }
        // The newest row of a series may be one of those deleted.
        self.last.invalidate(db, table);
        self.metrics.deleted_rows.fetch_add(rows, Ordering::Relaxed);
        tracing::info!(
            table = %format!("{db}.{table}"),
            rows,
            segments,
            upto_segment = upto,
            deletion = %serde_json::to_string(&tombstone.deletion).unwrap_or_default(),
            "rows deleted (tombstone recorded)"
        );
        Ok(Deleted { rows, segments })
    }

    /// Refuses a deletion of a table that does not exist or that names a
    /// column that is not one of its tags; the table's tombstones.
    fn check_deletion(&self, db: &str, table: &str, deletion: &Deletion) -> Result<usize, StorageError> {
        let st = self.state.read();
        let t = st.dbs.get(db).and_then(|d| d.get(table)).ok_or_else(|| no_table(db, table))?;
        for tag in &deletion.tags {
            match t.schema.columns.iter().find(|c| c.name == tag.tag) {
                Some(c) if c.kind == ColumnKind::Tag => {}
                Some(c) => {
                    return Err(StorageError::Delete(format!(
                        "{:?} is a {} of {db}.{table}; a deletion can match the time ({TIME_COLUMN}) and tags only",
                        tag.tag, c.kind
                    )));
                }
                None => return Err(StorageError::Delete(format!("{db}.{table} has no tag {:?}", tag.tag))),
            }
        }
        Ok(t.tombstones.len())
    }
}

fn no_table(db: &str, table: &str) -> StorageError {
    StorageError::Delete(format!("table {db}.{table} does not exist"))
}
