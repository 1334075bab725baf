//! Compaction: merging the segments of one table and time partition.
//!
//! Every persist writes one segment per table per partition it holds data
//! for, so a day partition fed by 10-minute persists collects 144 files.
//! Small files compress worse (each column chunk restarts its encodings) and
//! every query opens them all. Compaction merges them, size-tiered like an
//! LSM tree so that each row is rewritten O(log n) times:
//!
//! - a persist's segment has level 0; when a partition holds `fan_in`
//!   segments of one level, they are merged into one segment of the next
//!   level;
//! - once a partition is `cold_after` past its end (no more live data is
//!   expected), all its segments are merged into one;
//! - a merge never takes inputs holding more than `max_rows` rows (they are
//!   decoded in memory); the oldest inputs within that budget are taken.
//!
//! A merge reads the inputs, sorts and writes them like a persist (same
//! encodings, same order), records the output in a new manifest in place of
//! the inputs (atomically, under the persist lock), swaps them in the query
//! state, and retires the inputs: their files are deleted after `grace`, so
//! that queries planned before the swap can finish reading them. A crash at
//! any point leaves either the inputs or the output in the manifest; files
//! the manifest does not list are removed at the next start.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};

use crate::batch::adapt_batch;
use crate::config::CompactionConfig;
use crate::manifest::SegmentMeta;
use crate::segment::SegmentError;

/// What one compaction round did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompactionStats {
    /// Merges done.
    pub merges: usize,
    /// Segments replaced.
    pub inputs: usize,
    /// Segments written.
    pub outputs: usize,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Slices moved out of packs that held dead rows (rows another table's
    /// compaction replaced or retention dropped), so that the old pack
    /// can be deleted; not counted as merges.
    pub repacked: usize,
    /// Segments rewritten without the rows a deletion removed.
    pub purged: usize,
    /// Merges (or rewrites) left as they were because they failed: their
    /// inputs could not be read or fetched, or the output not written (the
    /// log says why); a later round tries again.
    pub failed: usize,
}

/// The merges due now among one table's `segments`: each a list of inputs
/// from one partition (at most one merge per partition per round). `full`
/// treats every partition as cold (an operator's full compaction, which
/// runs even when background compaction is disabled).
pub(crate) fn plan(
    segments: &[Arc<SegmentMeta>],
    overlapping: &std::collections::BTreeSet<i64>,
    partition_ns: i64,
    now_ns: i64,
    config: &CompactionConfig,
    full: bool,
) -> Vec<Vec<Arc<SegmentMeta>>> {
    if !config.enabled && !full {
        return Vec::new();
    }
    let cold_ns = i64::try_from(config.cold_after.as_nanos()).unwrap_or(i64::MAX);
    let mut partitions: BTreeMap<i64, Vec<&Arc<SegmentMeta>>> = BTreeMap::new();
    for s in segments {
        partitions.entry(s.partition_start).or_default().push(s);
    }
    let mut merges = Vec::new();
    for (start, mut segs) in partitions {
        if segs.len() < 2 {
            continue;
        }
        // In write order: a merge reads its inputs in this order, and keeps
        // the last written of rows of the same series and time.
        segs.sort_by_key(|s| (s.order(), s.id));
        let cold = full || start.saturating_add(partition_ns).saturating_add(cold_ns) <= now_ns;
        // A partition whose segments may repeat a series and time is
        // merged whole, or from its oldest segment on, at once: its
        // queries keep the last written row of each at a cost until then.
        // (An output takes the write order of its newest input, so its
        // inputs must be a run in write order where rows repeat.)
        let candidates: Vec<&Arc<SegmentMeta>> = if cold || overlapping.contains(&start) {
            segs
        } else {
            let mut levels: BTreeMap<u32, Vec<&Arc<SegmentMeta>>> = BTreeMap::new();
            for s in segs {
                levels.entry(s.level).or_default().push(s);
            }
            match levels.into_values().find(|l| l.len() >= config.fan_in.max(2)) {
                Some(level) => level,
                None => continue,
            }
        };
        let mut rows = 0u64;
        let inputs: Vec<Arc<SegmentMeta>> = candidates
            .into_iter()
            .take_while(|s| {
                rows = rows.saturating_add(s.rows);
                rows <= config.max_rows
            })
            .map(Arc::clone)
            .collect();
        if inputs.len() >= 2 {
            merges.push(inputs);
        }
    }
    merges
}

/// The segments of a table whose every row is older than `cutoff_ns`:
/// retention drops whole segments, so rows stay at least the retention
/// period and go at most one partition later.
pub(crate) fn expired(segments: &[Arc<SegmentMeta>], cutoff_ns: i64) -> Vec<Arc<SegmentMeta>> {
    segments.iter().filter(|s| s.max_ts < cutoff_ns).cloned().collect()
}

/// Reads a segment as batches of `schema`: columns the segment lacks are
/// NULL, columns stored with another type (integral floats stored as
/// Int64) are cast back to the table's type, exactly. `rows` is the
/// segment's row range when it is a slice of a pack (see
/// [`SegmentMeta::row_range`]): only those rows are read. Only the columns
/// of `schema` are decoded.
pub(crate) fn read_segment(
    path: &Path,
    rows: Option<(u64, u64)>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, SegmentError> {
    let perr = |source| SegmentError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|source| SegmentError::Io { path: path.to_path_buf(), source })?;
    let options = ArrowReaderOptions::new().with_page_index_policy(if rows.is_some() {
        parquet::file::metadata::PageIndexPolicy::Optional
    } else {
        parquet::file::metadata::PageIndexPolicy::Skip
    });
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).map_err(perr)?.with_batch_size(64 * 1024);
    if let Some((first, count)) = rows {
        let end = first.checked_add(count).ok_or_else(|| {
            perr(parquet::errors::ParquetError::General(format!("row range {first} + {count} overflows")))
        })?;
        let mut groups = Vec::new();
        let mut selectors = Vec::new();
        let mut start = 0u64;
        for (i, g) in builder.metadata().row_groups().iter().enumerate() {
            let n = u64::try_from(g.num_rows()).unwrap_or(0);
            let (lo, hi) = (first.max(start), end.min(start + n));
            if lo < hi {
                groups.push(i);
                selectors.extend([
                    RowSelector::skip((lo - start) as usize),
                    RowSelector::select((hi - lo) as usize),
                    RowSelector::skip((start + n - hi) as usize),
                ]);
            }
            start += n;
        }
        if end > start {
            return Err(perr(parquet::errors::ParquetError::General(format!(
                "the manifest places rows {first}..{end} in this file, which holds {start}"
            ))));
        }
        builder = builder.with_row_groups(groups).with_row_selection(RowSelection::from(selectors));
    }
    // Only the columns of `schema` are decoded (a deletion's count reads
    // the time and the tags of whole segments).
    let mask = ProjectionMask::columns(builder.parquet_schema(), schema.fields().iter().map(|f| f.name().as_str()));
    let reader = builder.with_projection(mask).build().map_err(perr)?;
    let mut out = Vec::new();
    for batch in reader {
        out.push(adapt_batch(&batch?, schema)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: i64 = 86_400 * 1_000_000_000;

    fn seg(id: u64, partition: i64, level: u32, rows: u64) -> Arc<SegmentMeta> {
        Arc::new(SegmentMeta {
            id,
            path: format!("segments/public/t/{id:020}.parquet"),
            partition_start: partition * DAY,
            min_ts: partition * DAY,
            max_ts: partition * DAY + 1,
            rows,
            bytes: rows * 4,
            level,
            pack: None,
            seq: 0,
        })
    }

    fn ids(merges: &[Vec<Arc<SegmentMeta>>]) -> Vec<Vec<u64>> {
        merges.iter().map(|m| m.iter().map(|s| s.id).collect()).collect()
    }

    #[test]
    fn a_live_partition_merges_one_level_at_fan_in() {
        let config = CompactionConfig::default();
        let now = 10 * DAY + 3600 * 1_000_000_000;
        let mut segs: Vec<_> = (1..=3).map(|i| seg(i, 10, 0, 100)).collect();
        assert!(
            plan(&segs, &Default::default(), DAY, now, &config, false).is_empty(),
            "three level-0 segments are below fan-in"
        );
        segs.push(seg(4, 10, 0, 100));
        segs.push(seg(9, 10, 1, 400));
        assert_eq!(ids(&plan(&segs, &Default::default(), DAY, now, &config, false)), vec![vec![1, 2, 3, 4]]);
        // Four level-1 segments merge into level 2 even with level-0 ones around.
        let segs: Vec<_> = (1..=4).map(|i| seg(i, 10, 1, 400)).chain([seg(5, 10, 0, 100)]).collect();
        assert_eq!(ids(&plan(&segs, &Default::default(), DAY, now, &config, false)), vec![vec![1, 2, 3, 4]]);
    }

    #[test]
    fn a_cold_partition_merges_everything_within_the_row_budget() {
        let config = CompactionConfig { max_rows: 1_000, ..CompactionConfig::default() };
        let segs = vec![seg(1, 3, 2, 600), seg(2, 3, 0, 100), seg(3, 3, 0, 100), seg(4, 5, 0, 10)];
        // Day 3 ended long ago; day 5 holds one segment: nothing to merge.
        let now = 20 * DAY;
        assert_eq!(ids(&plan(&segs, &Default::default(), DAY, now, &config, false)), vec![vec![1, 2, 3]]);
        // Inside the cold_after window the day is still live: below fan-in.
        let just_ended = 4 * DAY + 60 * 1_000_000_000;
        assert!(plan(&segs, &Default::default(), DAY, just_ended, &config, false).is_empty());
        // The budget stops at the oldest inputs that fit.
        let tight = CompactionConfig { max_rows: 700, ..config.clone() };
        assert_eq!(ids(&plan(&segs, &Default::default(), DAY, now, &tight, false)), vec![vec![1, 2]]);
        let tiny = CompactionConfig { max_rows: 500, ..config };
        assert!(plan(&segs, &Default::default(), DAY, now, &tiny, false).is_empty(), "no two inputs fit");
    }

    #[test]
    fn a_full_compaction_merges_live_partitions_too() {
        let config = CompactionConfig::default();
        // Today (day 10) holds three level-0 segments, below fan-in.
        let segs = vec![seg(1, 10, 0, 100), seg(2, 10, 0, 100), seg(3, 10, 1, 400), seg(4, 9, 0, 10)];
        let now = 10 * DAY + 3600 * 1_000_000_000;
        assert!(plan(&segs, &Default::default(), DAY, now, &config, false).is_empty());
        assert_eq!(ids(&plan(&segs, &Default::default(), DAY, now, &config, true)), vec![vec![1, 2, 3]]);
        // Disabled stops the background rounds, not an operator's request.
        let off = CompactionConfig { enabled: false, ..config };
        assert!(plan(&segs, &Default::default(), DAY, now, &off, false).is_empty());
        assert_eq!(ids(&plan(&segs, &Default::default(), DAY, now, &off, true)), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn only_segments_entirely_before_the_cutoff_expire() {
        let segs = vec![seg(1, 3, 0, 10), seg(2, 4, 0, 10), seg(3, 5, 0, 10)];
        // Day 4's newest row is at 4 * DAY + 1.
        assert_eq!(expired(&segs, 4 * DAY + 1).iter().map(|s| s.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(expired(&segs, 4 * DAY + 2).iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(expired(&segs, 0).is_empty());
    }

    #[test]
    fn nothing_is_planned_when_disabled_or_never_cold() {
        let segs: Vec<_> = (1..=50).map(|i| seg(i, 1, 0, 10)).collect();
        let off = CompactionConfig { enabled: false, ..Default::default() };
        assert!(plan(&segs, &Default::default(), DAY, 100 * DAY, &off, false).is_empty());
        let never = CompactionConfig { fan_in: 100, cold_after: Duration::from_secs(u64::MAX), ..Default::default() };
        assert!(plan(&segs, &Default::default(), DAY, 100 * DAY, &never, false).is_empty());
    }
}
