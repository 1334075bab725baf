//! Persisting buffered batches into Parquet segments.
//!
//! One file per table per time partition, rows sorted by partition, then
//! every tag, then `ts`, so that a series' rows are contiguous (runs of equal
//! tag values collapse under RLE, and timestamps become tiny deltas) and
//! row-group and page statistics on tags and `ts` prune well.
//!
//! Encodings per column, chosen by measurement on the TSBS `cpu-only` data
//! (see docs/storage.md): tags RLE_DICTIONARY; `ts` DELTA_BINARY_PACKED;
//! integer fields DELTA_BINARY_PACKED; float fields BYTE_STREAM_SPLIT, or,
//! when all of a segment's values of a float column are integers, stored as
//! Int64, and when they are all short decimals, as DECIMAL(18, s), both
//! with DELTA_BINARY_PACKED (read back as the same Float64, bit for bit);
//! everything then compressed with the configured codec (ZSTD by default).
//! String fields named in [`BLOOM_COLUMNS`] (`trace_id`) get a Parquet bloom
//! filter per row group, so that looking up one trace reads only the row
//! groups that may hold it; text columns named in
//! [`crate::tokens::TOKEN_COLUMNS`] (`message`) get token filters per block
//! of rows in the footer, for `matches()` (see [`crate::tokens`]).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimestampNanosecondType};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::batch::adapt_batch;
use crate::delta;
use crate::durable::{create_dir_durable, write_atomic};
use crate::manifest::SegmentMeta;
use crate::schema::TIME_COLUMN;

/// String fields that get a per-row-group bloom filter: point lookups of
/// ids that are unique to a handful of rows.
pub const BLOOM_COLUMNS: [&str; 1] = ["trace_id"];

/// Page size of text columns with token filters: a search that reads a
/// few blocks of 8,192 rows decompresses the pages that hold them, and
/// Parquet's 1 MiB pages hold some 20,000 log lines each. These columns
/// have no dictionary either: log lines are mostly distinct, so the
/// dictionary only filled up (1 MiB of the first lines of each row group,
/// decompressed by any read of the row group) before falling back to plain
/// pages. Both measured on 10 M generated log lines: a rare token 19 -> 11
/// ms, segments 2.9 % smaller (docs/benchmarks.md).
const TEXT_PAGE_BYTES: usize = 128 * 1024;

/// Compression codec of segment pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCompression {
    Zstd(i32),
    Lz4,
    None,
}

impl SegmentCompression {
    /// The Parquet codec of the pages.
    pub(crate) fn parquet(self) -> Compression {
        match self {
            SegmentCompression::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default()),
            SegmentCompression::Lz4 => Compression::LZ4_RAW,
            SegmentCompression::None => Compression::UNCOMPRESSED,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub compression: SegmentCompression,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Rows per data page: small enough for page statistics to prune a
    /// single series out of a partition.
    pub page_rows: usize,
    /// Store float columns of short decimals as DECIMAL(18, s) (see
    /// [`narrow_floats`]); `false` keeps them DOUBLE for outside readers.
    pub decimal_floats: bool,
    /// A table's rows of one partition are written into a pack shared with
    /// other small tables (see [`crate::pack`]) when they are fewer than
    /// this; 0 gives every table its own files.
    pub pack_max_rows: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            compression: SegmentCompression::Zstd(3),
            row_group_rows: 256 * 1024,
            page_rows: 64 * 1024,
            decimal_floats: true,
            pack_max_rows: 65_536,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("I/O error on segment {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("Arrow error while preparing segment data: {0}")]
    Arrow(#[from] ArrowError),
    #[error("Parquet error on segment {path}: {source}")]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("segment {path} gave {found} rows where the manifest lists {expected}")]
    RowCount { path: PathBuf, expected: u64, found: u64 },
}

/// Where segment `id` of `db.table` lives, relative to the data directory.
pub fn segment_rel_path(db: &str, table: &str, id: u64) -> String {
    format!("segments/{db}/{table}/{id:020}.parquet")
}

/// What a segment file says of itself, in its Parquet key-value metadata
/// under [`ORIGIN_KEY`] (JSON). `tocsin repair` rebuilds a lost manifest from
/// it: which table the file belongs to (also in its path), how far the WAL
/// was covered by segments when it was written, and which segments a
/// compaction output replaces (so that inputs not yet deleted are not listed
/// twice).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentOrigin {
    /// Format of this record; 1 is the shape below.
    #[serde(default = "origin_version")]
    pub version: u32,
    pub database: String,
    pub table: String,
    /// Every WAL file numbered up to this was contained in segments when
    /// this one was written.
    pub wal_upto: u64,
    pub level: u32,
    /// Ids of the segments this one replaces (a compaction's inputs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<u64>,
    /// The tables' slices when the file is a pack (see [`crate::pack`]);
    /// `table`, `level` and `replaces` above are then empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "crate::pack::slices_text")]
    pub slices: Vec<crate::pack::SliceOrigin>,
    /// The segment's place in write order ([`SegmentMeta::seq`]; 0: its
    /// id), kept in the file so that `tocsin repair` restores it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn origin_version() -> u32 {
    1
}

impl Default for SegmentOrigin {
    fn default() -> Self {
        Self {
            version: origin_version(),
            database: String::new(),
            table: String::new(),
            wal_upto: 0,
            level: 0,
            replaces: Vec::new(),
            slices: Vec::new(),
            seq: 0,
        }
    }
}

/// Parquet key-value metadata key holding a [`SegmentOrigin`].
pub const ORIGIN_KEY: &str = "tocsin.segment";

/// Where and how a batch of segments is written.
#[derive(Debug, Clone)]
pub(crate) struct SegmentTarget<'a> {
    pub(crate) data_dir: &'a Path,
    pub(crate) schema: &'a SchemaRef,
    pub(crate) partition_ns: i64,
    pub(crate) options: &'a SegmentOptions,
    pub(crate) origin: SegmentOrigin,
    /// Keep only the last written of rows of the same series and time
    /// (`batches` come in write order); see [`keep_last_written`].
    pub(crate) dedupe: bool,
}

/// Sorts `batches` (all adapted to the target's schema) and writes one
/// Parquet file per time partition. `next_id` hands out segment ids.
#[cfg(test)]
pub(crate) fn write_segments(
    target: &SegmentTarget<'_>,
    batches: &[RecordBatch],
    mut next_id: impl FnMut() -> u64,
) -> Result<Vec<SegmentMeta>, SegmentError> {
    let mut out = Vec::new();
    for (partition_start, slice) in prepare_slices(target, batches)? {
        match write_slice(target, partition_start, &slice, next_id()) {
            Ok(meta) => out.push(meta),
            Err(e) => {
                // The files of this call are not listed anywhere: remove
                // them, or every failed attempt would leave its files behind
                // (a full disk would only get fuller).
                remove_written(target.data_dir, &out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// `batches` (adapted to the target's schema) as they are written: one
/// batch per time partition (with the partition's start), sorted, float
/// columns narrowed (see [`narrow_floats`]).
pub(crate) fn prepare_slices(
    target: &SegmentTarget<'_>,
    batches: &[RecordBatch],
) -> Result<Vec<(i64, RecordBatch)>, SegmentError> {
    let SegmentTarget { schema, partition_ns, options, dedupe, .. } = *target;
    let adapted = batches.iter().map(|b| adapt_batch(b, schema)).collect::<Result<Vec<_>, _>>()?;
    let all = concat_batches(schema, &adapted)?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let (sorted, partitions) = sort_for_segment(&all, partition_ns, dedupe)?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < sorted.num_rows() {
        let p = partitions.value(start);
        let mut end = start + 1;
        while end < sorted.num_rows() && partitions.value(end) == p {
            end += 1;
        }
        let slice = narrow_floats(&sorted.slice(start, end - start), options.decimal_floats)?;
        out.push((p.saturating_mul(partition_ns), slice));
        start = end;
    }
    Ok(out)
}

/// Writes one prepared slice (see [`prepare_slices`]) as segment `id`.
pub(crate) fn write_slice(
    target: &SegmentTarget<'_>,
    partition_start: i64,
    slice: &RecordBatch,
    id: u64,
) -> Result<SegmentMeta, SegmentError> {
    let SegmentTarget { data_dir, options, ref origin, .. } = *target;
    let rel = segment_rel_path(&origin.database, &origin.table, id);
    let bytes = write_parquet(data_dir, &data_dir.join(&rel), slice, options, origin)?;
    let (min_ts, max_ts) = ts_bounds(slice)?.unwrap_or((partition_start, partition_start));
    Ok(SegmentMeta {
        id,
        path: rel,
        partition_start,
        min_ts,
        max_ts,
        rows: slice.num_rows() as u64,
        bytes,
        level: origin.level,
        pack: None,
        seq: origin.seq,
    })
}

/// The smallest and largest `ts` of a batch (`None` when it has no rows).
pub(crate) fn ts_bounds(batch: &RecordBatch) -> Result<Option<(i64, i64)>, ArrowError> {
    let ts = batch
        .column_by_name(TIME_COLUMN)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| ArrowError::SchemaError("batch has no ts column".into()))?;
    Ok(arrow::compute::min(ts).zip(arrow::compute::max(ts)))
}

/// Deletes the files of segments that were written but will not be listed.
pub(crate) fn remove_written(data_dir: &Path, segments: &[SegmentMeta]) {
    for s in segments {
        let path = data_dir.join(&s.path);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove unlisted segment {} of a failed write: {e}", path.display());
        }
    }
}

/// Metadata key marking a column stored with another Arrow type than the
/// table's; reads cast it back (the Parquet reader of DataFusion does).
pub const STORED_AS_KEY: &str = "tocsin.stored_as";

/// Float64 columns whose values in this segment are all integers of at most
/// 2^53 in magnitude (no -0.0, NaN or infinity) are stored as Int64:
/// DELTA_BINARY_PACKED instead of BYTE_STREAM_SPLIT, about half the size
/// for integral samples (Prometheus counters and most gauges). Every such
/// value converts back to the same f64 exactly.
///
/// Columns whose values are all short decimals (each the f64 nearest to
/// `m / 10^s` for one scale `s` of at most [`MAX_DECIMAL_SCALE`], with
/// `|m| < 10^18`) are stored as Parquet DECIMAL(18, s) on INT64, also
/// DELTA_BINARY_PACKED: real counters and gauges (CPU seconds, load
/// averages, ratios) carry two to nine decimals, and their scaled deltas
/// take a byte or two where the float's bytes take four or more. Standard
/// Parquet readers see exact decimals; Tocsin reads them back as the same
/// f64, bit for bit, through Arrow's own cast, which is checked here for
/// every value before the column is converted.
///
/// Columns whose values are not the nearest decimals but an exporter's
/// arithmetic on integers (`ticks * 0.001`, `µs / 1000 / 1000`) are stored
/// as those integers too, with the rule in the mark (see [`crate::decimal`]).
fn narrow_floats(batch: &RecordBatch, decimals: bool) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let narrowed: Vec<Option<Narrowed>> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| match c.as_primitive_opt::<arrow::datatypes::Float64Type>() {
            Some(a) if f.name() != TIME_COLUMN && a.null_count() < a.len() => {
                match narrow_float(a).filter(|(t, _)| decimals || t == &DataType::Int64) {
                    Some((t, mark)) => Some(Ok(Narrowed::Cast(t, mark))),
                    None if decimals => crate::decimal::store(a)
                        .transpose()
                        .map(|r| r.map(|(rule, _, stored)| Narrowed::Rule(rule, stored))),
                    None => None,
                }
            }
            _ => None,
        })
        .map(Option::transpose)
        .collect::<Result<Vec<_>, ArrowError>>()?;
    if narrowed.iter().all(Option::is_none) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(narrowed.len());
    let mut columns = Vec::with_capacity(narrowed.len());
    for ((f, c), to) in schema.fields().iter().zip(batch.columns()).zip(narrowed) {
        let converted = match to {
            Some(Narrowed::Cast(data_type, stored_as)) => exact_cast(c, &data_type)?.map(|a| (a, stored_as)),
            Some(Narrowed::Rule(rule, stored)) => Some((stored, rule.mark())),
            None => None,
        };
        match converted {
            Some((converted, stored_as)) => {
                let mut meta = f.metadata().clone();
                meta.insert(STORED_AS_KEY.to_string(), stored_as.to_string());
                fields.push(f.as_ref().clone().with_data_type(converted.data_type().clone()).with_metadata(meta));
                columns.push(converted);
            }
            None => {
                fields.push(f.as_ref().clone());
                columns.push(Arc::clone(c));
            }
        }
    }
    let schema = arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone());
    RecordBatch::try_new(Arc::new(schema), columns)
}

/// How [`narrow_floats`] stores a Float64 column.
enum Narrowed {
    /// As `DataType` through Arrow's cast, with this `tocsin.stored_as` mark.
    Cast(DataType, &'static str),
    /// As these DECIMAL(18, s) integers under a producer's rule (see
    /// [`crate::decimal`]), already converted and checked.
    Rule(crate::decimal::DecimalRule, ArrayRef),
}

/// `column` cast to `data_type`, if the cast back that readers do gives
/// every value's bits (the promise made above, kept by construction);
/// integers below 2^53 always do.
fn exact_cast(column: &ArrayRef, data_type: &DataType) -> Result<Option<ArrayRef>, ArrowError> {
    let converted = arrow::compute::cast(column, data_type)?;
    if data_type == &DataType::Int64 {
        return Ok(Some(converted));
    }
    let back = arrow::compute::cast(&converted, &DataType::Float64)?;
    let a = column.as_primitive::<arrow::datatypes::Float64Type>();
    let b = back.as_primitive::<arrow::datatypes::Float64Type>();
    let exact = a.iter().zip(b.iter()).all(|(x, y)| x.map(f64::to_bits) == y.map(f64::to_bits));
    Ok(exact.then_some(converted))
}

/// The largest decimal scale [`narrow_floats`] tries: nanosecond durations
/// in seconds (`scrape_duration_seconds`) have nine.
const MAX_DECIMAL_SCALE: i8 = 9;

/// How a Float64 column of a segment is stored, if not as itself (see
/// [`narrow_floats`]): the Arrow type and the `tocsin.stored_as` mark.
fn narrow_float(a: &arrow::array::Float64Array) -> Option<(DataType, &'static str)> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    const DIGITS: f64 = 1e18; // |m| below this fits DECIMAL(18, s)
    // The smallest scale at which `v` is a decimal, searched from `from`:
    // a value that is one at scale s is one at every larger scale too (both
    // quotients are correctly rounded from the same rational).
    let scale_of = |v: f64, from: i8| -> Option<i8> {
        if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
            return None;
        }
        (from..=MAX_DECIMAL_SCALE).find(|&s| {
            let p = 10f64.powi(i32::from(s));
            let m = (v * p).round();
            m.abs() < DIGITS && m.abs() <= EXACT && m / p == v
        })
    };
    let mut scale = 0i8;
    let mut largest = 0f64;
    for v in a.iter().flatten() {
        scale = scale_of(v, scale)?;
        largest = largest.max(v.abs());
    }
    // Values scanned before the scale last rose were checked at a smaller
    // one: the largest must still scale to an exact integer at the final
    // scale (90071992547409.9 then 0.001 would otherwise be stored at scale
    // 3 as a 9e16 that outside readers see as ...409.904).
    let m = (largest * 10f64.powi(i32::from(scale))).round();
    if m >= DIGITS || m > EXACT {
        return None;
    }
    if scale == 0 { Some((DataType::Int64, "int64")) } else { Some((DataType::Decimal64(18, scale), "decimal")) }
}

/// `batch` (rows in write order) with only the last written row of each
/// series and time: the rows of a table that keeps the last write
/// (see `TableEntry::overlapping`) as queries and compaction see them.
/// A series is the values of every tag (dictionary) column, NULL included.
/// The rows come sorted by tags, then time.
pub fn keep_last_written(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    Ok(sort_for_segment(batch, i64::MAX, true)?.0)
}

/// Returns the batch sorted by (partition, tags..., ts) and the partition
/// number of each sorted row. Rows of the same key keep their order (the
/// sort is stable); with `dedupe`, only the last of them is kept.
fn sort_for_segment(
    batch: &RecordBatch,
    partition_ns: i64,
    dedupe: bool,
) -> Result<(RecordBatch, Int64Array), ArrowError> {
    let schema = batch.schema();
    let ts_idx = schema.index_of(TIME_COLUMN)?;
    let ts = batch.column(ts_idx).as_primitive::<TimestampNanosecondType>();
    let partitions: Int64Array = ts.unary(|t| t.div_euclid(partition_ns));
    let mut keys: Vec<ArrayRef> = vec![Arc::new(partitions.clone())];
    let mut fields = vec![SortField::new(DataType::Int64)];
    for (i, f) in schema.fields().iter().enumerate() {
        if matches!(f.data_type(), DataType::Dictionary(_, _)) {
            keys.push(Arc::clone(batch.column(i)));
            fields.push(SortField::new(f.data_type().clone()));
        }
    }
    keys.push(Arc::clone(batch.column(ts_idx)));
    fields.push(SortField::new(schema.field(ts_idx).data_type().clone()));
    let converter = RowConverter::new(fields)?;
    let rows = converter.convert_columns(&keys)?;
    let mut idx: Vec<u32> = (0..batch.num_rows() as u32).collect();
    // The index breaks ties: faster than a stable sort, and as stable.
    idx.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)).then(a.cmp(&b)));
    if dedupe {
        // Of a run of equal keys, the last (latest written) stays.
        let mut kept = Vec::with_capacity(idx.len());
        for (i, &r) in idx.iter().enumerate() {
            match idx.get(i + 1) {
                Some(&next) if rows.row(next as usize) == rows.row(r as usize) => {}
                _ => kept.push(r),
            }
        }
        idx = kept;
    }
    let indices = UInt32Array::from(idx);
    let sorted = take_record_batch(batch, &indices)?;
    let parts = arrow::compute::take(&partitions, &indices, None)?;
    Ok((sorted, parts.as_primitive().clone()))
}

/// Names of the float columns of `batch` that hold a NaN. Parquet leaves NaN
/// out of min/max statistics, and DataFusion's pruning then skips the row
/// group or page for a filter the NaN satisfies (`v > 1.5` is true for NaN
/// in DataFusion's total order): such a column is written without
/// statistics in this segment, so that nothing prunes it.
fn nan_columns(batch: &RecordBatch) -> Vec<String> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(_, c)| {
            c.as_primitive_opt::<arrow::datatypes::Float64Type>().is_some_and(|a| a.iter().flatten().any(f64::is_nan))
        })
        .map(|(f, _)| f.name().clone())
        .collect()
}

fn writer_properties(
    schema: &SchemaRef,
    options: &SegmentOptions,
    origin: &SegmentOrigin,
    no_statistics: &[String],
) -> WriterProperties {
    let origin_slices = !origin.slices.is_empty();
    let origin = serde_json::to_string(origin).expect("a struct of strings and integers serializes");
    let mut b = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(ORIGIN_KEY.to_string(), origin)]))
        .set_compression(options.compression.parquet())
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(options.row_group_rows))
        .set_data_page_row_count_limit(options.page_rows)
        .set_write_batch_size(options.page_rows.min(1024));
    let mut sorting = Vec::new();
    for name in no_statistics {
        b = b.set_column_statistics_enabled(ColumnPath::from(name.as_str()), EnabledStatistics::None);
    }
    for (i, f) in schema.fields().iter().enumerate() {
        let col = ColumnPath::from(f.name().as_str());
        match f.data_type() {
            DataType::Dictionary(_, _) => {
                sorting.push(SortingColumn { column_idx: i as i32, descending: false, nulls_first: true });
            }
            DataType::Timestamp(_, _) | DataType::Int64 | DataType::UInt64 | DataType::Decimal64(_, _) => {
                b = b
                    .set_column_dictionary_enabled(col.clone(), false)
                    .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
            }
            DataType::Float64 => {
                b = b
                    .set_column_dictionary_enabled(col.clone(), false)
                    .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT);
            }
            DataType::Utf8 if crate::tokens::TOKEN_COLUMNS.contains(&f.name().as_str()) => {
                b = b
                    .set_column_dictionary_enabled(col.clone(), false)
                    .set_column_data_page_size_limit(col, TEXT_PAGE_BYTES);
            }
            DataType::Utf8 if BLOOM_COLUMNS.contains(&f.name().as_str()) => {
                // A trace has a few events: about one distinct id per two
                // rows, at 1% false positives (~1.2 bytes per row).
                b = b
                    .set_column_bloom_filter_enabled(col.clone(), true)
                    .set_column_bloom_filter_fpp(col.clone(), 0.01)
                    .set_column_bloom_filter_max_ndv(col, (options.row_group_rows as u64 / 2).max(1024));
            }
            _ => {}
        }
    }
    if let Ok(ts) = schema.index_of(TIME_COLUMN) {
        sorting.push(SortingColumn { column_idx: ts as i32, descending: false, nulls_first: true });
    }
    if !origin_slices {
        // A pack is sorted table by table, each by its own tags.
        b = b.set_sorting_columns(Some(sorting));
    }
    b.build()
}

/// Writes `batch` to `path` through a temporary file: write, fsync, rename,
/// fsync the directory (and the parents of folders it had to create, up to
/// `data_dir`, so that a power loss cannot lose a folder the manifest then
/// lists). Returns the file size. A failure removes the temporary file.
pub(crate) fn write_parquet(
    data_dir: &Path,
    path: &Path,
    batch: &RecordBatch,
    options: &SegmentOptions,
    origin: &SegmentOrigin,
) -> Result<u64, SegmentError> {
    let ioe = |source| SegmentError::Io { path: path.to_path_buf(), source };
    // Segments are never rewritten in place: a file already there holds
    // rows the manifest may list (an id handed out twice).
    if path.symlink_metadata().is_ok() {
        return Err(ioe(io::Error::new(io::ErrorKind::AlreadyExists, "a segment file of this id already exists")));
    }
    let dir = path.parent().ok_or_else(|| ioe(io::Error::other("segment path has no parent")))?;
    create_dir_durable(data_dir, dir).map_err(ioe)?;
    let perr = |source| SegmentError::Parquet { path: path.to_path_buf(), source };
    let written = write_atomic(path, ioe, |file| {
        let (file, stats) = encode_parquet(file, batch, options, origin).map_err(perr)?;
        Ok((file.metadata().map_err(ioe)?.len(), stats))
    });
    let (bytes, stats) = match written {
        Ok(w) => w,
        Err(e) => {
            // Nothing lists it yet: a segment whose directory entry may not
            // survive a power loss is not written at all.
            if path.exists() {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
    };
    tracing::debug!(
        segment = %path.display(),
        bytes,
        delta_pages = stats.pages,
        nibble_pages = stats.nibble_pages,
        "segment written"
    );
    Ok(bytes)
}

/// Encodes `batch` as Parquet into `sink`, row group by row group. Int64
/// columns (integer fields, `ts`) are written by [`delta::write_chunk`];
/// every other column by the Arrow writer. The Arrow schema is embedded as
/// usual, so readers see the table's types.
fn encode_parquet<W: io::Write + Send>(
    sink: W,
    batch: &RecordBatch,
    options: &SegmentOptions,
    origin: &SegmentOrigin,
) -> Result<(W, delta::RepackStats), ParquetError> {
    let schema = batch.schema();
    let options = &page_rows_for(&schema, options);
    let writer = ArrowWriter::try_new(
        sink,
        Arc::clone(&schema),
        Some(writer_properties(&schema, options, origin, &nan_columns(batch))),
    )?;
    let (mut file, factory) = writer.into_serialized_writer()?;
    let delta_props = Arc::new(delta_properties(options));
    let leaves: Vec<_> = file.schema_descr().columns().to_vec();
    if leaves.len() != schema.fields().len() {
        return Err(ParquetError::General(format!(
            "segment schema has {} columns but {} Parquet leaves; nested columns are not supported",
            schema.fields().len(),
            leaves.len()
        )));
    }
    let mut stats = delta::RepackStats::default();
    let step = options.row_group_rows.max(1);
    for (index, start) in (0..batch.num_rows()).step_by(step).enumerate() {
        let rows = batch.slice(start, step.min(batch.num_rows() - start));
        let writers = factory.create_column_writers(index)?;
        let mut group = file.next_row_group()?;
        for (((field, array), mut writer), descr) in
            schema.fields().iter().zip(rows.columns()).zip(writers).zip(leaves.iter())
        {
            if delta::is_delta_packed(field.data_type()) {
                let (bytes, close) =
                    delta::write_chunk(Arc::clone(descr), array, &delta_props, options.compression, &mut stats)?;
                group.append_column(&bytes, close)?;
            } else {
                for leaf in compute_leaves(field, array)? {
                    writer.write(&leaf)?;
                }
                writer.close()?.append_to_row_group(&mut group)?;
            }
        }
        group.close()?;
    }
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if crate::tokens::TOKEN_COLUMNS.contains(&field.name().as_str())
            && let Some(filter) = crate::tokens::TokenFilter::build(column, crate::tokens::BLOCK_ROWS)
        {
            file.append_key_value_metadata(KeyValue::new(crate::tokens::metadata_key(field.name()), filter.encode()));
        }
    }
    Ok((file.into_inner()?, stats))
}

/// The options a segment of `schema` is written with: a table with token
/// filters (log lines) gets pages of at most [`crate::tokens::BLOCK_ROWS`]
/// rows, one filtered block each, so that the page index of its tags and
/// time narrows a search as finely as its filters do (10 M generated log
/// lines: a rare token 11.0 -> 7.8 ms, `level = 'error'` and two terms
/// 11.3 -> 10.1 ms, one trace 21.5 -> 19.1 ms; segments 0.2 % larger).
fn page_rows_for(schema: &SchemaRef, options: &SegmentOptions) -> SegmentOptions {
    let mut options = options.clone();
    if schema
        .fields()
        .iter()
        .any(|f| crate::tokens::TOKEN_COLUMNS.contains(&f.name().as_str()) && f.data_type() == &DataType::Utf8)
    {
        options.page_rows = options.page_rows.min(crate::tokens::BLOCK_ROWS);
    }
    options
}

/// Properties of the column writers behind [`delta::write_chunk`]:
/// uncompressed Parquet 1.0 DELTA_BINARY_PACKED pages (the re-packing page
/// writer compresses them), page statistics and the same page size.
fn delta_properties(options: &SegmentOptions) -> WriterProperties {
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_encoding(Encoding::DELTA_BINARY_PACKED)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(options.page_rows)
        .set_write_batch_size(options.page_rows.min(1024))
        .build()
}

/// What a segment file's footer says of it: its rows and its origin
/// record (`None` for files written before origins were recorded).
pub(crate) fn footer_facts(path: &Path) -> Result<(u64, Option<SegmentOrigin>), SegmentCheckError> {
    let meta = read_footer(path)?;
    let rows = u64::try_from(meta.file_metadata().num_rows()).map_err(|_| {
        SegmentCheckError::Corrupt(format!("its footer counts {} rows", meta.file_metadata().num_rows()))
    })?;
    let kv = meta.file_metadata().key_value_metadata();
    let origin = match kv.and_then(|kv| kv.iter().find(|k| k.key == ORIGIN_KEY)).and_then(|k| k.value.as_deref()) {
        Some(json) => Some(
            serde_json::from_str::<SegmentOrigin>(json)
                .map_err(|e| SegmentCheckError::Corrupt(format!("its {ORIGIN_KEY} metadata does not parse: {e}")))?,
        ),
        None => None,
    };
    Ok((rows, origin))
}

/// Checks that a segment file is a readable Parquet file (footer and
/// metadata), as done for every segment at startup.
pub fn verify_segment(path: &Path) -> Result<u64, SegmentCheckError> {
    let meta = read_footer(path)?;
    u64::try_from(meta.file_metadata().num_rows())
        .map_err(|_| SegmentCheckError::Corrupt(format!("its footer counts {} rows", meta.file_metadata().num_rows())))
}

/// Why a segment file cannot be used. The two cases call for opposite
/// actions: a corrupt file is quarantined and the server starts without it;
/// a file that cannot be read (permission denied, a volume not mounted, an
/// I/O error, a file missing) may be perfectly good, so the server refuses
/// to start rather than forget it.
#[derive(Debug, thiserror::Error)]
pub enum SegmentCheckError {
    #[error("cannot read it: {0}")]
    Io(#[source] io::Error),
    #[error("it is corrupt: {0}")]
    Corrupt(String),
}

/// Reads and decodes the Parquet footer of `path` with plain reads, so that
/// an I/O error is told apart from a footer that does not decode.
pub(crate) fn read_footer(path: &Path) -> Result<parquet::file::metadata::ParquetMetaData, SegmentCheckError> {
    use SegmentCheckError::{Corrupt, Io};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).map_err(Io)?;
    let len = file.metadata().map_err(Io)?.len();
    if len < 12 {
        return Err(Corrupt(format!("{len} bytes is too short for a Parquet file")));
    }
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::Start(len - 8)).map_err(Io)?;
    file.read_exact(&mut tail).map_err(Io)?;
    if &tail[4..] != b"PAR1" {
        return Err(Corrupt("no Parquet magic at the end (a torn or overwritten file)".into()));
    }
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer_len + 12 > len {
        return Err(Corrupt(format!("footer of {footer_len} bytes does not fit in a file of {len} bytes")));
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::Start(len - 8 - footer_len)).map_err(Io)?;
    file.read_exact(&mut footer).map_err(Io)?;
    parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| Corrupt(format!("the Parquet footer does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::blocks_to_batch;
    use crate::schema::{ColumnDef, ColumnKind, FieldType, TableSchema};
    use crate::write::{FieldColumn, FieldValues, SeriesBlock};
    use arrow::datatypes::Int32Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn test_target<'a>(
        data_dir: &'a Path,
        table: &str,
        schema: &'a SchemaRef,
        partition_ns: i64,
        options: &'a SegmentOptions,
    ) -> SegmentTarget<'a> {
        SegmentTarget {
            data_dir,
            schema,
            partition_ns,
            options,
            origin: SegmentOrigin { database: "public".into(), table: table.into(), ..Default::default() },
            dedupe: false,
        }
    }

    #[test]
    fn segments_are_split_by_partition_and_sorted_by_tags_then_time() {
        let schema = TableSchema {
            columns: vec![
                ColumnDef { name: "host".into(), kind: ColumnKind::Tag },
                ColumnDef { name: "v".into(), kind: ColumnKind::Field(FieldType::Integer) },
            ],
        }
        .arrow_schema();
        let block = |host: &str, ts: Vec<i64>| SeriesBlock {
            item: 0,
            tags: vec![("host".into(), host.into())],
            fields: vec![FieldColumn {
                name: "v".into(),
                values: FieldValues::I64(ts.iter().map(|t| t * 10).collect()),
                validity: None,
            }],
            timestamps: ts,
        };
        let b1 = blocks_to_batch(&schema, &[block("b", vec![5, 1, 105]), block("a", vec![3])]).expect("batch");
        let b2 = blocks_to_batch(&schema, &[block("a", vec![2, 101])]).expect("batch");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut id = 0;
        let options = SegmentOptions::default();
        let segs = write_segments(&test_target(dir.path(), "t", &schema, 100, &options), &[b1, b2], || {
            id += 1;
            id
        })
        .expect("write");
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].partition_start, segs[0].min_ts, segs[0].max_ts, segs[0].rows), (0, 1, 5, 4));
        assert_eq!((segs[1].partition_start, segs[1].min_ts, segs[1].max_ts, segs[1].rows), (100, 101, 105, 2));
        let file = File::open(dir.path().join(&segs[0].path)).expect("open");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader").build().expect("build");
        let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("read");
        let b = &batches[0];
        assert_eq!(b.schema().field(1).data_type(), &crate::schema::tag_type());
        let hosts = b.column(1).as_dictionary::<Int32Type>();
        let hv = hosts.values().as_string::<i32>();
        let got: Vec<(String, i64)> = (0..b.num_rows())
            .map(|i| {
                (
                    hv.value(hosts.keys().value(i) as usize).to_string(),
                    b.column(0).as_primitive::<TimestampNanosecondType>().value(i),
                )
            })
            .collect();
        assert_eq!(got, vec![("a".into(), 2), ("a".into(), 3), ("b".into(), 1), ("b".into(), 5)]);
        assert!(verify_segment(&dir.path().join(&segs[0].path)).is_ok());
        fs::write(dir.path().join("bad.parquet"), b"PAR1 not really").expect("write");
        assert!(verify_segment(&dir.path().join("bad.parquet")).is_err());
    }

    #[test]
    fn short_decimals_are_found_and_other_floats_are_not() {
        let of = |v: &[Option<f64>]| narrow_float(&arrow::array::Float64Array::from(v.to_vec()));
        let dec = |s| Some((DataType::Decimal64(18, s), "decimal"));
        assert_eq!(of(&[Some(1.0), None, Some(-7.0)]), Some((DataType::Int64, "int64")));
        assert_eq!(of(&[Some(0.5), Some(12345.67), Some(-3.25), Some(2.0)]), dec(2));
        assert_eq!(of(&[Some(0.003456789), Some(1.5)]), dec(9));
        assert_eq!(of(&[Some(0.1 + 0.2)]), None, "not the f64 nearest to a short decimal");
        assert_eq!(of(&[Some(1e-10)]), None, "ten decimals");
        assert_eq!(of(&[Some(1.5), Some(-0.0)]), None, "-0.0 would come back as 0.0");
        assert_eq!(of(&[Some(1.5), Some(f64::NAN)]), None);
        assert_eq!(of(&[Some(1.5), Some(f64::INFINITY)]), None);
        assert_eq!(of(&[Some(123_456_789.123_456_79)]), None, "more digits than a double holds exactly");
        assert_eq!(of(&[Some(1e17), Some(0.5)]), None, "10^18 at scale 1 exceeds DECIMAL(18)");
        // Whatever the order, a large value checked at a small scale is
        // checked again at the scale a later value needs.
        assert_eq!(of(&[Some(90_071_992_547_409.9), Some(0.001)]), None, "9e16 at scale 3 is above 2^53");
        assert_eq!(of(&[Some(0.001), Some(90_071_992_547_409.9)]), None);
    }

    #[test]
    fn decimal_floats_off_keeps_decimals_double_and_integers_int64() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("d", DataType::Float64, true),
            arrow::datatypes::Field::new("i", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(arrow::array::Float64Array::from(vec![0.25, 1.5])),
                Arc::new(arrow::array::Float64Array::from(vec![2.0, 3.0])),
            ],
        )
        .expect("batch");
        let types = |b: RecordBatch| b.schema().fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>();
        let on = narrow_floats(&batch, true).expect("narrow");
        assert_eq!(types(on), vec![DataType::Decimal64(18, 2), DataType::Int64]);
        let off = narrow_floats(&batch, false).expect("narrow");
        assert_eq!(types(off), vec![DataType::Float64, DataType::Int64]);
    }

    /// A float field of short decimals (a CPU-seconds counter) is stored as
    /// DECIMAL(18, 2) on INT64, smaller than as floats, and reads back as
    /// the same f64s bit for bit; one value that is not a short decimal
    /// keeps the whole column Float64.
    #[test]
    fn decimal_floats_are_stored_as_decimal64_and_read_back_bit_for_bit() {
        let schema = TableSchema {
            columns: vec![
                ColumnDef { name: "cpu".into(), kind: ColumnKind::Tag },
                ColumnDef { name: "value".into(), kind: ColumnKind::Field(FieldType::Float) },
            ],
        }
        .arrow_schema();
        let write = |last: f64| {
            let ts: Vec<i64> = (0..20_000).collect();
            let mut values: Vec<f64> = ts.iter().map(|i| (1_000_000 + i * 97 + (i * i) % 13) as f64 / 100.0).collect();
            values[19_999] = last;
            let validity = Some(ts.iter().map(|i| i % 101 != 7).collect());
            let block = SeriesBlock {
                item: 0,
                tags: vec![("cpu".into(), "0".into())],
                fields: vec![FieldColumn { name: "value".into(), values: FieldValues::F64(values), validity }],
                timestamps: ts,
            };
            let batch = blocks_to_batch(&schema, &[block]).expect("batch");
            let dir = tempfile::tempdir().expect("tempdir");
            let options = SegmentOptions::default();
            let segs = write_segments(
                &test_target(dir.path(), "t", &schema, i64::MAX, &options),
                std::slice::from_ref(&batch),
                || 1,
            )
            .expect("write");
            let path = dir.path().join(&segs[0].path);
            let file = File::open(&path).expect("open");
            let stored = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader").schema().clone();
            let read = crate::compact::read_segment(&path, None, &schema).expect("read back");
            let read = concat_batches(&schema, &read).expect("concat");
            let bits = |b: &RecordBatch| -> Vec<Option<u64>> {
                b.column(2)
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .iter()
                    .map(|v| v.map(f64::to_bits))
                    .collect()
            };
            assert_eq!(bits(&read), bits(&batch), "values read back differ");
            (stored.field_with_name("value").expect("value").data_type().clone(), segs[0].bytes)
        };
        let (decimal_type, decimal_bytes) = write(1234.5);
        assert_eq!(decimal_type, DataType::Decimal64(18, 2));
        let (float_type, float_bytes) = write(0.1 + 0.2);
        assert_eq!(float_type, DataType::Float64);
        assert!(decimal_bytes * 2 < float_bytes, "decimal {decimal_bytes} bytes, float {float_bytes}");
    }

    /// A table with token filters gets pages of one filtered block (8,192
    /// rows) in every column; other tables keep the configured page size.
    #[test]
    fn log_tables_get_pages_of_one_token_block() {
        let pages_of_ts = |with_message: bool| -> usize {
            let mut columns = vec![ColumnDef { name: "service".into(), kind: ColumnKind::Tag }];
            let mut fields = Vec::new();
            let ts: Vec<i64> = (0..20_000).collect();
            if with_message {
                columns.push(ColumnDef { name: "message".into(), kind: ColumnKind::Field(FieldType::String) });
                fields.push(FieldColumn {
                    name: "message".into(),
                    values: FieldValues::Str(ts.iter().map(|i| format!("m{i}")).collect()),
                    validity: None,
                });
            }
            let schema = TableSchema { columns }.arrow_schema();
            let block = SeriesBlock { item: 0, tags: vec![("service".into(), "api".into())], fields, timestamps: ts };
            let batch = blocks_to_batch(&schema, &[block]).expect("batch");
            let dir = tempfile::tempdir().expect("tempdir");
            let options = SegmentOptions::default();
            let segs = write_segments(&test_target(dir.path(), "t", &schema, i64::MAX, &options), &[batch], || 1)
                .expect("write");
            let file = File::open(dir.path().join(&segs[0].path)).expect("open");
            let meta = parquet::file::metadata::ParquetMetaDataReader::new()
                .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required)
                .parse_and_finish(&file)
                .expect("footer");
            let ts_col = meta.file_metadata().schema_descr().columns().iter().position(|c| c.name() == TIME_COLUMN);
            meta.offset_index().expect("offset index")[0][ts_col.expect("ts")].page_locations().len()
        };
        assert_eq!(pages_of_ts(true), 3, "20,000 rows in pages of 8,192");
        assert_eq!(pages_of_ts(false), 1, "20,000 rows in one page of up to 65,536");
    }

    #[test]
    fn trace_id_gets_a_bloom_filter_and_other_strings_do_not() {
        let schema = TableSchema {
            columns: vec![
                ColumnDef { name: "service".into(), kind: ColumnKind::Tag },
                ColumnDef { name: "message".into(), kind: ColumnKind::Field(FieldType::String) },
                ColumnDef { name: "trace_id".into(), kind: ColumnKind::Field(FieldType::String) },
            ],
        }
        .arrow_schema();
        let ts: Vec<i64> = (0..100).collect();
        let strings = |p: &str| FieldValues::Str(ts.iter().map(|i| format!("{p}{i}")).collect());
        let block = SeriesBlock {
            item: 0,
            tags: vec![("service".into(), "api".into())],
            fields: vec![
                FieldColumn { name: "message".into(), values: strings("m"), validity: None },
                FieldColumn { name: "trace_id".into(), values: strings("t"), validity: None },
            ],
            timestamps: ts.clone(),
        };
        let batch = blocks_to_batch(&schema, &[block]).expect("batch");
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SegmentOptions::default();
        let segs =
            write_segments(&test_target(dir.path(), "logs", &schema, 1000, &options), &[batch], || 1).expect("write");
        let file = File::open(dir.path().join(&segs[0].path)).expect("open");
        let reader = parquet::file::serialized_reader::SerializedFileReader::new_with_options(
            file,
            parquet::file::serialized_reader::ReadOptionsBuilder::new()
                .with_reader_properties(
                    parquet::file::properties::ReaderProperties::builder().set_read_bloom_filter(true).build(),
                )
                .build(),
        )
        .expect("reader");
        use parquet::file::reader::FileReader;
        let rg = reader.get_row_group(0).expect("row group");
        let cols = rg.metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect::<Vec<_>>();
        let trace = cols.iter().position(|c| c == "trace_id").expect("trace_id");
        let message = cols.iter().position(|c| c == "message").expect("message");
        let bloom = rg.get_column_bloom_filter(trace).expect("trace_id has a bloom filter");
        assert!(bloom.check(&"t42"));
        assert!(!bloom.check(&"t-not-there"));
        assert!(rg.get_column_bloom_filter(message).is_none());

        // `message` has token filters in the footer; reading them takes them
        // out of the footer and keeps the rest.
        let path = dir.path().join(&segs[0].path);
        let full = read_footer(&path).expect("footer");
        let keys = |m: &parquet::file::metadata::ParquetMetaData| -> Vec<String> {
            m.file_metadata().key_value_metadata().into_iter().flatten().map(|kv| kv.key.clone()).collect()
        };
        assert!(keys(&full).contains(&"tocsin.tokens:message".to_string()), "{:?}", keys(&full));
        let (stripped, filters) = crate::tokens::read_footer(&path).expect("footer");
        let mut others = keys(&full);
        others.retain(|k| k != "tocsin.tokens:message");
        assert_eq!(keys(&stripped), others);
        assert!(others.contains(&ORIGIN_KEY.to_string()));
        assert_eq!(stripped.num_row_groups(), full.num_row_groups());
        assert_eq!(stripped.file_metadata().num_rows(), 100);
        assert_eq!(filters.len(), 1);
        let (column, filter) = &filters[0];
        assert_eq!((column.as_str(), filter.rows(), filter.len()), ("message", 100, 1));
        assert!(filter.may_contain(0, b"m42") && !filter.may_contain(0, b"t42"));
    }

    /// A batch with every delta-packed type next to Arrow-written columns:
    /// a tag, a non-null `ts`, a random-walk Int64 field with nulls, UInt64
    /// extremes and a float.
    fn mixed_batch(rows: usize) -> RecordBatch {
        use arrow::array::{DictionaryArray, Float64Array, TimestampNanosecondArray, UInt64Array};
        use arrow::datatypes::{Field, Schema, TimeUnit};
        let walk = delta::tests::walk(rows, 11);
        let host: DictionaryArray<Int32Type> = (0..rows).map(|i| if i < rows / 2 { "a" } else { "b" }).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(host),
            Arc::new(
                TimestampNanosecondArray::from_iter_values((0..rows as i64).map(|i| i * 10_000_000_000))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter(walk.iter().enumerate().map(|(i, v)| (i % 97 != 5).then_some(*v)))),
            Arc::new(UInt64Array::from_iter_values(
                (0..rows as u64).map(|i| if i % 3 == 0 { u64::MAX - i } else { i }),
            )),
            Arc::new(Float64Array::from_iter_values(walk.iter().map(|v| *v as f64 / 3.0))),
        ];
        let schema = Schema::new(vec![
            Field::new("host", crate::schema::tag_type(), false),
            Field::new(TIME_COLUMN, DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
            Field::new("usage", DataType::Int64, true),
            Field::new("bytes", DataType::UInt64, true),
            Field::new("ratio", DataType::Float64, true),
        ]);
        RecordBatch::try_new(Arc::new(schema), columns).expect("batch")
    }

    #[test]
    fn delta_packed_columns_read_back_exactly_with_page_statistics() {
        let batch = mixed_batch(5000);
        let options = SegmentOptions { page_rows: 1024, row_group_rows: 2048, ..SegmentOptions::default() };
        for compression in [SegmentCompression::Zstd(3), SegmentCompression::Lz4, SegmentCompression::None] {
            let options = SegmentOptions { compression, ..options.clone() };
            let (bytes, stats) =
                encode_parquet(Vec::new(), &batch, &options, &SegmentOrigin::default()).expect("encode");
            assert_eq!(stats.pages, 3 * 5, "three delta columns, five pages each ({compression:?})");
            if compression == SegmentCompression::Zstd(3) {
                // The random walk's pages are written nibble-aligned, so this
                // test reads both forms back.
                assert!(stats.nibble_pages >= 5, "{stats:?}");
            }
            let bytes = bytes::Bytes::from(bytes);
            let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(
                bytes.clone(),
                parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                    .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
            )
            .expect("reader");
            let meta = reader.metadata().clone();
            assert_eq!(meta.num_row_groups(), 3);
            let usage = 2;
            let rg0 = meta.row_group(0).column(usage);
            assert!(rg0.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
            let chunk_stats = rg0.statistics().expect("chunk statistics");
            assert_eq!(chunk_stats.null_count_opt(), Some(batch.slice(0, 2048).column(usage).null_count() as u64));
            let offsets = meta.offset_index().expect("offset index");
            assert_eq!(offsets[0][usage].page_locations().len(), 2);
            let index = meta.column_index().expect("column index");
            let parquet::file::page_index::column_index::ColumnIndexMetaData::INT64(pages) = &index[0][usage] else {
                panic!("usage has no INT64 column index: {:?}", index[0][usage]);
            };
            let page0 = batch.slice(0, 1024);
            let page0 = page0.column(usage).as_primitive::<arrow::datatypes::Int64Type>();
            assert_eq!(pages.min_value(0), arrow::compute::min(page0).as_ref());
            assert_eq!(pages.max_value(0), arrow::compute::max(page0).as_ref());
            let read: Vec<RecordBatch> = reader.build().expect("build").collect::<Result<_, _>>().expect("read");
            let read = concat_batches(&read[0].schema(), &read).expect("concat");
            assert_eq!(read.schema().fields(), batch.schema().fields());
            for (i, (a, b)) in read.columns().iter().zip(batch.columns()).enumerate() {
                assert_eq!(a.as_ref(), b.as_ref(), "column {i} differs ({compression:?})");
            }
        }
    }

    #[test]
    fn nibble_packing_shrinks_random_walk_fields() {
        let batch = mixed_batch(64 * 1024);
        let batch = batch.project(&[0, 1, 2]).expect("project");
        let options = SegmentOptions::default();
        let (repacked, stats) =
            encode_parquet(Vec::new(), &batch, &options, &SegmentOrigin::default()).expect("encode");
        let mut plain = ArrowWriter::try_new(
            Vec::new(),
            batch.schema(),
            Some(writer_properties(&batch.schema(), &options, &SegmentOrigin::default(), &[])),
        )
        .expect("writer");
        plain.write(&batch).expect("write");
        let plain = plain.into_inner().expect("close");
        assert!(stats.nibble_pages >= 1, "{stats:?}");
        assert!(
            (repacked.len() as f64) < plain.len() as f64 * 0.92,
            "re-packed {} bytes vs arrow-rs {} bytes",
            repacked.len(),
            plain.len()
        );
    }
}
