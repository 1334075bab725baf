//! Deletions (`DELETE FROM t WHERE ...`) as tombstones.
//!
//! A deletion does not rewrite files when it is made. It persists the write
//! buffer, so that every row written before it lies in a segment, and
//! records in the manifest a [`Tombstone`]: a time range and tag values,
//! and the highest segment id at that moment. Rows of segments up to that id
//! that match are deleted; segments written later (rows written after the
//! deletion) are not touched, so a row may be written again at a deleted
//! time and series.
//!
//! - Queries read the covered segments through a filter that drops the
//!   matching rows (`query/src/table.rs`).
//! - Compaction drops them from every segment it rewrites, and rewrites the
//!   covered segments in its next round even when its policy would leave
//!   them, so that the rows leave the disk too. Its outputs get new ids, past
//!   the tombstone's.
//! - A tombstone that covers no segment any more (all rewritten or expired)
//!   is dropped from the manifest.
//!
//! Only the time column and tags can be matched: they are what every
//! segment's statistics and the write path know, which is what InfluxDB's
//! and Prometheus' delete APIs allow too.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

use crate::manifest::SegmentMeta;
use crate::schema::TIME_COLUMN;

/// What a deletion removes: rows with `min_ts <= ts <= max_ts` whose tags
/// each hold one of the listed values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub min_ts: i64,
    pub max_ts: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagIn>,
}

/// A tag and the values that match it (a row whose tag is NULL matches
/// none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagIn {
    pub tag: String,
    pub values: Vec<String>,
}

impl Deletion {
    /// Every row of the table.
    pub fn all() -> Self {
        Self { min_ts: i64::MIN, max_ts: i64::MAX, tags: Vec::new() }
    }

    /// Whether no row can match (an empty range or an empty value list).
    pub fn is_empty(&self) -> bool {
        self.min_ts > self.max_ts || self.tags.iter().any(|t| t.values.is_empty())
    }

    /// Which rows of `batch` match. A tag column the batch does not have is
    /// NULL in every row: none matches.
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let n = batch.num_rows();
        let mut hit = vec![true; n];
        let ts = batch.column_by_name(TIME_COLUMN).ok_or_else(|| {
            ArrowError::SchemaError(format!("a batch without the {TIME_COLUMN} column cannot be matched"))
        })?;
        let ts = cast(ts, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let ts = ts.as_primitive::<TimestampNanosecondType>();
        for (row, h) in hit.iter_mut().enumerate() {
            *h = ts.is_valid(row) && (self.min_ts..=self.max_ts).contains(&ts.value(row));
        }
        for t in &self.tags {
            let Some(col) = batch.column_by_name(&t.tag) else {
                return Ok(BooleanArray::from(vec![false; n]));
            };
            let col = cast(col, &DataType::Utf8)?;
            let col = col.as_string::<i32>();
            for (row, h) in hit.iter_mut().enumerate() {
                *h = *h && col.is_valid(row) && t.values.iter().any(|v| v == col.value(row));
            }
        }
        let mut b = BooleanBufferBuilder::new(n);
        b.append_slice(&hit);
        Ok(BooleanArray::new(b.finish(), None))
    }
}

/// A recorded deletion: what it removes, from which segments, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The highest segment id when the deletion was made: segments up to
    /// it hold the rows it removes, later ones were written after it.
    pub upto_segment: u64,
    /// When it was made (Unix ns).
    pub at: i64,
    #[serde(flatten)]
    pub deletion: Deletion,
}

impl Tombstone {
    /// Whether `seg` may hold rows this tombstone removes.
    pub fn covers(&self, seg: &SegmentMeta) -> bool {
        seg.id <= self.upto_segment && seg.min_ts <= self.deletion.max_ts && seg.max_ts >= self.deletion.min_ts
    }
}

/// The tombstones of `all` that cover `seg`.
pub fn covering<'a>(all: &'a [Arc<Tombstone>], seg: &SegmentMeta) -> Vec<&'a Arc<Tombstone>> {
    all.iter().filter(|t| t.covers(seg)).collect()
}

/// `batch` without the rows that any of `tombstones` removes.
pub fn remove_deleted(batch: &RecordBatch, tombstones: &[&Arc<Tombstone>]) -> Result<RecordBatch, ArrowError> {
    if tombstones.is_empty() || batch.num_rows() == 0 {
        return Ok(batch.clone());
    }
    let mut keep = vec![true; batch.num_rows()];
    for t in tombstones {
        let hit = t.deletion.matches(batch)?;
        for (k, h) in keep.iter_mut().zip(hit.values().iter()) {
            *k = *k && !h;
        }
    }
    if keep.iter().all(|k| *k) {
        return Ok(batch.clone());
    }
    filter_record_batch(batch, &BooleanArray::from(keep))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, DictionaryArray, Float64Array, Int32Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Int32Type, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let ts: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![10, 20, 30, 40]).with_timezone("UTC"));
        let host: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::new(
            Int32Array::from(vec![Some(0), Some(1), None, Some(0)]),
            Arc::new(StringArray::from(vec!["a", "b"])),
        ));
        let v: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0]));
        let schema = Schema::new(vec![
            Field::new("ts", ts.data_type().clone(), false),
            Field::new("host", host.data_type().clone(), true),
            Field::new("value", DataType::Float64, true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![ts, host, v]).expect("batch")
    }

    fn tomb(min_ts: i64, max_ts: i64, tags: Vec<TagIn>) -> Arc<Tombstone> {
        Arc::new(Tombstone { upto_segment: 5, at: 0, deletion: Deletion { min_ts, max_ts, tags } })
    }

    fn values(b: &RecordBatch) -> Vec<f64> {
        b.column_by_name("value").expect("value").as_primitive::<arrow::datatypes::Float64Type>().values().to_vec()
    }

    #[test]
    fn a_range_and_tags_remove_only_rows_matching_all() {
        let b = batch();
        let t = tomb(15, 40, vec![TagIn { tag: "host".into(), values: vec!["a".into()] }]);
        assert_eq!(values(&remove_deleted(&b, &[&t]).expect("filter")), vec![1.0, 2.0, 3.0]);
        // A NULL tag matches no value.
        let t = tomb(i64::MIN, i64::MAX, vec![TagIn { tag: "host".into(), values: vec!["a".into(), "b".into()] }]);
        assert_eq!(values(&remove_deleted(&b, &[&t]).expect("filter")), vec![3.0]);
        // A tag the batch does not have: nothing matches.
        let t = tomb(i64::MIN, i64::MAX, vec![TagIn { tag: "region".into(), values: vec!["x".into()] }]);
        assert_eq!(values(&remove_deleted(&b, &[&t]).expect("filter")), vec![1.0, 2.0, 3.0, 4.0]);
        // Two tombstones: the union of what each removes.
        let (t1, t2) = (tomb(10, 10, vec![]), tomb(40, 50, vec![]));
        assert_eq!(values(&remove_deleted(&b, &[&t1, &t2]).expect("filter")), vec![2.0, 3.0]);
    }

    #[test]
    fn covers_segments_up_to_its_id_that_overlap_its_range() {
        let t = tomb(100, 200, vec![]);
        let seg = |id, min_ts, max_ts| SegmentMeta {
            id,
            path: String::new(),
            partition_start: 0,
            min_ts,
            max_ts,
            rows: 1,
            bytes: 1,
            level: 0,
            pack: None,
            seq: 0,
        };
        assert!(t.covers(&seg(5, 150, 300)));
        assert!(t.covers(&seg(1, 200, 200)));
        assert!(!t.covers(&seg(6, 150, 160)), "written after the deletion");
        assert!(!t.covers(&seg(3, 201, 300)), "after the range");
        assert!(!t.covers(&seg(3, 0, 99)), "before the range");
    }

    #[test]
    fn empty_deletions_are_recognised() {
        assert!(Deletion { min_ts: 5, max_ts: 4, tags: vec![] }.is_empty());
        assert!(Deletion { min_ts: 0, max_ts: 4, tags: vec![TagIn { tag: "h".into(), values: vec![] }] }.is_empty());
        assert!(!Deletion::all().is_empty());
    }
}
