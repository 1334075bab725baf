//! Packs: one Parquet file holding the rows of several small tables.
//!
//! A Prometheus server brings hundreds to thousands of metric names, each
//! a table with a few series. Written one file per table, every persist
//! made as many files as there were metrics, each carrying a footer and a
//! page index of about 2 KB (half of the bytes on disk for node_exporter
//! data, docs/benchmarks.md). A table's rows of one partition that are
//! fewer than `pack_max_rows` are therefore written into a pack instead:
//!
//! - `packs/<db>/<id>.parquet`, holding the slices of several tables of one
//!   database and one time partition, one after the other (each sorted as
//!   its own segment would be), with a `__table` column naming the table
//!   of each row so that outside Parquet readers can tell them apart;
//! - the pack's columns are the union of its tables' columns by name; a
//!   table's rows hold NULL in the others. Tables whose columns of the same
//!   name have different types (a DOUBLE `value` and a DECIMAL one) go to
//!   different packs;
//! - each slice is a segment of its table in the manifest, with its own id,
//!   level and time range, and the row range it occupies
//!   ([`crate::manifest::PackSlice`]); readers read those rows only (the
//!   page index skips the pages of other tables);
//! - the file records its slices in its origin metadata, so that `tocsin
//!   repair` can list them again;
//! - compaction merges a table's slices like its files and writes small
//!   outputs into new packs; a pack file is retired once no table lists a
//!   slice of it any more.
//!
//! Tables with token filters or bloom filters (log tables) and tables with
//! a column named `__table` always get their own files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, RecordBatch, StringArray, new_null_array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};

use crate::manifest::{PackSlice, SegmentMeta};
use crate::segment::{
    BLOOM_COLUMNS, SegmentError, SegmentOptions, SegmentOrigin, remove_written, ts_bounds, write_parquet,
};

/// The column of a pack naming each row's table.
pub const TABLE_COLUMN: &str = "__table";

/// Rows of one pack at most: a pack is written from memory in one go.
pub(crate) const PACK_MAX_TOTAL_ROWS: usize = 1 << 20;

/// Columns of one pack at most (unless one table has more). Each table's
/// rows hold NULL in the other tables' columns, so a pack costs its rows
/// times its columns to build and to write: 3,000 one-row tables with 3
/// columns of their own each made one pack of 9,000 columns, and a persist
/// took 53 s where files of their own took 2.6 s. node_exporter's widest
/// pack has 38 columns.
pub(crate) const PACK_MAX_COLUMNS: usize = 256;

/// A slice as a pack's origin metadata records it. Slices lie in the file
/// in the order listed, so that each one's first row is the sum of the
/// rows before it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceOrigin {
    pub table: String,
    /// The slice's segment id.
    pub id: u64,
    pub rows: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub level: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<u64>,
    /// The table's columns in the pack, as indices into the pack's
    /// columns (the others are other tables').
    pub columns: Vec<u32>,
    /// The slice's place in write order ([`crate::manifest::SegmentMeta::seq`]).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub seq: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// How a pack's list of slices is kept in its origin metadata: JSON,
/// compressed with ZSTD and encoded in base64 (Parquet key-value metadata
/// is text). Hundreds of slices take about 50 KB as plain JSON, more than
/// the values of the small tables they describe; compressed, about 4 KB.
pub(crate) mod slices_text {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SliceOrigin;

    /// Refuses lists that decompress to more than this (a damaged or
    /// hostile file must not take the memory of a repair).
    const MAX_BYTES: usize = 64 << 20;

    pub(crate) fn serialize<S: Serializer>(slices: &[SliceOrigin], s: S) -> Result<S::Ok, S::Error> {
        let json = serde_json::to_vec(slices).map_err(S::Error::custom)?;
        let packed = zstd::bulk::compress(&json, 9).map_err(S::Error::custom)?;
        s.serialize_str(&STANDARD.encode(packed))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SliceOrigin>, D::Error> {
        let text = String::deserialize(d)?;
        let packed = STANDARD.decode(text.as_bytes()).map_err(|e| D::Error::custom(format!("slices: {e}")))?;
        let json = zstd::bulk::Decompressor::new()
            .and_then(|mut z| z.decompress(&packed, MAX_BYTES))
            .map_err(|e| D::Error::custom(format!("slices do not decompress: {e}")))?;
        serde_json::from_slice(&json).map_err(|e| D::Error::custom(format!("slices: {e}")))
    }
}

/// One table's prepared rows of one partition (see
/// [`crate::segment::prepare_slices`]) waiting for a pack.
#[derive(Debug, Clone)]
pub(crate) struct PackItem {
    pub(crate) table: String,
    pub(crate) partition_start: i64,
    pub(crate) batch: RecordBatch,
    pub(crate) level: u32,
    pub(crate) replaces: Vec<u64>,
    /// The slice's place in write order ([`SegmentMeta::seq`]).
    pub(crate) seq: u64,
}

/// Whether a table of `schema` may share packs: not log tables (token and
/// bloom filters are per file) nor a table with a column of the pack's
/// own column's name.
pub(crate) fn packable(schema: &Schema) -> bool {
    schema.fields().iter().all(|f| {
        let name = f.name().as_str();
        name != TABLE_COLUMN && !BLOOM_COLUMNS.contains(&name) && !crate::tokens::TOKEN_COLUMNS.contains(&name)
    })
}

/// Where pack `id` of database `db` lives, relative to the data directory.
pub fn pack_rel_path(db: &str, id: u64) -> String {
    format!("packs/{db}/{id:020}.parquet")
}

/// Writes `items` (tables of database `db`) into as few packs as their
/// partitions and column types allow. Returns each item's segment with the
/// item's index in `items`. A failure removes the packs this call wrote.
pub(crate) fn write_packs(
    data_dir: &Path,
    db: &str,
    options: &SegmentOptions,
    wal_upto: u64,
    items: Vec<PackItem>,
    mut next_id: impl FnMut() -> u64,
) -> Result<Vec<(usize, SegmentMeta)>, SegmentError> {
    let mut out: Vec<(usize, SegmentMeta)> = Vec::new();
    for group in group(items.into_iter().enumerate().collect()) {
        match write_pack(data_dir, db, options, wal_upto, group, &mut next_id) {
            Ok(slices) => out.extend(slices),
            Err(e) => {
                let written: Vec<SegmentMeta> = out.into_iter().map(|(_, s)| s).collect();
                remove_written(data_dir, &written);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// The packs to write: items of one partition whose columns of the same
/// name have the same type and metadata, up to [`PACK_MAX_TOTAL_ROWS`]
/// rows and [`PACK_MAX_COLUMNS`] columns.
fn group(mut items: Vec<(usize, PackItem)>) -> Vec<Vec<(usize, PackItem)>> {
    items.sort_by(|(_, a), (_, b)| (a.partition_start, &a.table).cmp(&(b.partition_start, &b.table)));
    struct Open {
        partition_start: i64,
        columns: BTreeMap<String, Field>,
        rows: usize,
        items: Vec<(usize, PackItem)>,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut done = Vec::new();
    for (index, item) in items {
        if open.first().is_some_and(|o| o.partition_start != item.partition_start) {
            // Items come by partition: the open packs are complete.
            done.extend(open.drain(..).map(|o| o.items));
        }
        let schema = item.batch.schema();
        let fits = |o: &Open| {
            let mut new_columns = 0;
            o.rows + item.batch.num_rows() <= PACK_MAX_TOTAL_ROWS
                && schema.fields().iter().all(|f| match o.columns.get(f.name()) {
                    Some(g) => g.data_type() == f.data_type() && g.metadata() == f.metadata(),
                    None => {
                        new_columns += 1;
                        true
                    }
                })
                && o.columns.len() + new_columns <= PACK_MAX_COLUMNS
        };
        let at = match open.iter().position(fits) {
            Some(at) => at,
            None => {
                open.push(Open {
                    partition_start: item.partition_start,
                    columns: BTreeMap::new(),
                    rows: 0,
                    items: Vec::new(),
                });
                open.len() - 1
            }
        };
        let o = &mut open[at];
        for f in schema.fields() {
            o.columns.entry(f.name().clone()).or_insert_with(|| f.as_ref().clone());
        }
        o.rows += item.batch.num_rows();
        o.items.push((index, item));
        if o.rows >= PACK_MAX_TOTAL_ROWS {
            done.push(open.remove(at).items);
        }
    }
    done.extend(open.into_iter().map(|o| o.items));
    done.retain(|g| !g.is_empty());
    done
}

/// Writes one pack of `items` (one partition, compatible columns).
fn write_pack(
    data_dir: &Path,
    db: &str,
    options: &SegmentOptions,
    wal_upto: u64,
    items: Vec<(usize, PackItem)>,
    next_id: &mut impl FnMut() -> u64,
) -> Result<Vec<(usize, SegmentMeta)>, SegmentError> {
    let mut fields: Vec<Field> = vec![Field::new(
        TABLE_COLUMN,
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )];
    for (_, item) in &items {
        for f in item.batch.schema().fields() {
            if !fields.iter().any(|g| g.name() == f.name()) {
                fields.push(f.as_ref().clone().with_nullable(true));
            }
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut batches = Vec::with_capacity(items.len());
    let mut slices = Vec::with_capacity(items.len());
    for (_, item) in &items {
        let rows = item.batch.num_rows();
        let names = DictionaryArray::<Int32Type>::new(
            vec![0i32; rows].into(),
            Arc::new(StringArray::from(vec![item.table.as_str()])),
        );
        let mut columns: Vec<ArrayRef> = vec![Arc::new(names)];
        for f in schema.fields().iter().skip(1) {
            columns.push(match item.batch.column_by_name(f.name()) {
                Some(c) => Arc::clone(c),
                None => new_null_array(f.data_type(), rows),
            });
        }
        batches.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
        let names = item.batch.schema();
        slices.push(SliceOrigin {
            table: item.table.clone(),
            id: next_id(),
            rows: rows as u64,
            level: item.level,
            replaces: item.replaces.clone(),
            columns: names.fields().iter().filter_map(|f| schema.index_of(f.name()).ok()).map(|i| i as u32).collect(),
            seq: item.seq,
        });
    }
    let all = concat_batches(&schema, &batches)?;
    let id = next_id();
    let rel = pack_rel_path(db, id);
    let origin = SegmentOrigin { database: db.to_string(), wal_upto, slices: slices.clone(), ..Default::default() };
    // One row group per pack: each row group repeats the metadata, the
    // statistics and a dictionary of every column, and most of a pack's
    // columns belong to a few of its tables (a pack of 290 node_exporter
    // metrics has 38 columns). A scan reads a slice by its rows anyway.
    let options = SegmentOptions { row_group_rows: options.row_group_rows.max(all.num_rows()), ..options.clone() };
    let file_bytes = write_parquet(data_dir, &data_dir.join(&rel), &all, &options, &origin)?;
    let total = all.num_rows() as u64;
    let mut out = Vec::with_capacity(items.len());
    let mut first_row = 0u64;
    for ((index, item), slice) in items.iter().zip(slices) {
        let (min_ts, max_ts) = ts_bounds(&item.batch)?.unwrap_or((item.partition_start, item.partition_start));
        out.push((
            *index,
            SegmentMeta {
                id: slice.id,
                path: rel.clone(),
                partition_start: item.partition_start,
                min_ts,
                max_ts,
                rows: slice.rows,
                bytes: share(file_bytes, slice.rows, total),
                level: slice.level,
                pack: Some(PackSlice { first_row, file_bytes, file_rows: total }),
                seq: slice.seq,
            },
        ));
        first_row += slice.rows;
    }
    Ok(out)
}

/// A slice's share of its pack's bytes, so that sizes add up.
pub(crate) fn share(file_bytes: u64, rows: u64, total_rows: u64) -> u64 {
    (u128::from(file_bytes) * u128::from(rows) / u128::from(total_rows.max(1))).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_with(slices: Vec<SliceOrigin>) -> SegmentOrigin {
        SegmentOrigin { database: "public".into(), wal_upto: 3, slices, ..Default::default() }
    }

    fn item(table: &str, columns: &[String]) -> PackItem {
        use arrow::array::Int64Array;
        let fields: Vec<Field> = columns.iter().map(|c| Field::new(c, DataType::Int64, true)).collect();
        let arrays: Vec<ArrayRef> = columns.iter().map(|_| Arc::new(Int64Array::from(vec![1])) as ArrayRef).collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch");
        PackItem { table: table.into(), partition_start: 0, batch, level: 0, replaces: vec![], seq: 0 }
    }

    /// Many small tables with columns of their own fill packs of at most
    /// `PACK_MAX_COLUMNS` columns (one pack of 900 columns before); a table
    /// wider than that alone gets a pack of its own; every table is in
    /// exactly one pack.
    #[test]
    fn packs_are_capped_in_columns() {
        let mut items: Vec<(usize, PackItem)> = (0..300)
            .map(|t| {
                let columns: Vec<String> =
                    ["ts".to_string()].into_iter().chain((0..3).map(|j| format!("f{t}_{j}"))).collect();
                (t, item(&format!("m{t:03}"), &columns))
            })
            .collect();
        let wide: Vec<String> = (0..400).map(|j| format!("w{j}")).collect();
        items.push((300, item("wide", &wide)));
        let groups = group(items);
        let mut seen: Vec<usize> = groups.iter().flatten().map(|(i, _)| *i).collect();
        seen.sort();
        assert_eq!(seen, (0..=300).collect::<Vec<_>>());
        for g in &groups {
            let columns: std::collections::BTreeSet<&String> =
                g.iter().flat_map(|(_, it)| it.batch.schema_ref().fields().iter().map(|f| f.name())).collect();
            if g.iter().any(|(_, it)| it.table == "wide") {
                assert_eq!(g.len(), 1, "the wide table shares no pack");
            } else {
                assert!(columns.len() <= PACK_MAX_COLUMNS, "{} columns", columns.len());
            }
        }
        // 1 + 3 * 300 columns in packs of at most 256: 4 packs, plus the wide one.
        assert_eq!(groups.len(), 5);
    }

    #[test]
    fn slices_are_kept_compressed_and_read_back() {
        let slices: Vec<SliceOrigin> = (0..300)
            .map(|i| SliceOrigin {
                table: format!("node_network_receive_bytes_total_{i}"),
                id: 1000 + i,
                rows: 1800,
                level: (i % 3) as u32,
                replaces: if i % 2 == 0 { vec![i, i + 1] } else { vec![] },
                columns: vec![1, 2, 3, 4],
                seq: if i % 5 == 0 { 900 + i } else { 0 },
            })
            .collect();
        let text = serde_json::to_string(&origin_with(slices.clone())).expect("serialize");
        assert!(text.len() < 8_000, "{} bytes", text.len());
        let back: SegmentOrigin = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.slices, slices);
        // A file without slices keeps the plain shape.
        let plain = serde_json::to_string(&origin_with(vec![])).expect("serialize");
        assert!(!plain.contains("slices"), "{plain}");
    }

    #[test]
    fn damaged_or_oversized_slices_are_errors() {
        for bad in ["\"not base64!\"", "\"aGVsbG8=\"", "17"] {
            let text = format!(r#"{{"database":"public","table":"","wal_upto":1,"level":0,"slices":{bad}}}"#);
            let err = serde_json::from_str::<SegmentOrigin>(&text).expect_err(bad).to_string();
            assert!(err.contains("slices") || err.contains("invalid type"), "{bad}: {err}");
        }
        // 65 MiB of zeros compress to a few KB and must not be inflated.
        use base64::Engine;
        let bomb = zstd::bulk::compress(&vec![0u8; 65 << 20], 19).expect("compress");
        let text = format!(
            r#"{{"database":"public","table":"","wal_upto":1,"level":0,"slices":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(bomb)
        );
        let err = serde_json::from_str::<SegmentOrigin>(&text).expect_err("bomb").to_string();
        assert!(err.contains("do not decompress"), "{err}");
    }
}
