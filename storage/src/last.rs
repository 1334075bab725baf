//! The newest row of every series, kept as writes arrive, so that "the
//! latest row of each host" (TSBS `lastpoint`) reads a few hundred cached
//! rows instead of the whole table.
//!
//! Rows are not copied on the write path: an entry points at a row of the
//! write's Arrow batch (kept in a small per-table arena). Reading, or an
//! arena that grew past [`ARENA_LIMIT`] batches, compacts the arena into one
//! batch with the `interleave` kernel. A table is *complete* once its
//! history (segments and buffer from before this process) has been folded
//! in by [`crate::Storage::complete_last_rows`]; until then readers must
//! not use it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, interleave, interleave_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use parking_lot::Mutex;

use crate::batch::adapt_batch;
use crate::schema::TIME_COLUMN;
use crate::write::{SeriesBlock, series_hash};

/// Batches an arena may hold before a write compacts it.
const ARENA_LIMIT: usize = 1024;
/// Rows beyond twice the number of series the arena may hold before a
/// write compacts it. Compaction copies one row per series, so with this
/// bound its cost is spread over at least as many written rows: constant
/// per row at any number of series.
const ARENA_SLACK_ROWS: usize = 65_536;

/// Which arena batch and row hold an entry's newest row.
#[derive(Debug, Clone, Copy)]
struct Loc {
    batch: u32,
    row: u32,
}

/// A series' newest row. The series' tags are not kept here: they are
/// the tag columns of that row, compared when two series share a hash (a
/// copy of the tags took about 130 bytes per series at a million series).
#[derive(Debug, Clone, Copy)]
struct Entry {
    ts: i64,
    loc: Loc,
}

#[derive(Debug, Default)]
struct TableLast {
    complete: bool,
    /// Entries by an order-independent hash of the tags: the first series
    /// of each hash.
    series: HashMap<u64, Entry>,
    /// The other series of a hash (nearly always none): collisions are
    /// resolved by comparing the tags with the entries' rows.
    more: HashMap<u64, Vec<Entry>>,
    /// Number of entries (series).
    entries: usize,
    arena: Vec<RecordBatch>,
    /// Rows in the arena's batches.
    arena_rows: usize,
}

/// Arena batches from which [`interleave_plain`] is used: `interleave`
/// merges dictionaries by walking every index once per input batch, which
/// at a million series and a thousand batches was most of the write path.
const PLAIN_INTERLEAVE_BATCHES: usize = 16;

/// `interleave_record_batch` with the dictionary (tag) columns interleaved
/// as plain strings and encoded again: time linear in the rows, whatever
/// the number of batches, and each dictionary holds its distinct values.
fn interleave_plain(
    batches: &[&RecordBatch],
    indices: &[(usize, usize)],
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let arrays: Vec<ArrayRef> = match field.data_type() {
            DataType::Dictionary(_, value) => {
                batches.iter().map(|b| cast(b.column(i), value)).collect::<Result<_, _>>()?
            }
            _ => batches.iter().map(|b| Arc::clone(b.column(i))).collect(),
        };
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        let column = interleave(&refs, indices)?;
        columns.push(if column.data_type() == field.data_type() { column } else { cast(&column, field.data_type())? });
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// `batch` with each tag dictionary holding only the distinct values its
/// rows use. `interleave` concatenates its inputs' dictionaries without
/// removing duplicates or unused values until they outgrow the output, so
/// each compaction would carry the previous dictionary forward; readers
/// (a sort, a grouping) then pay for a dictionary as long as the table
/// instead of its distinct values.
fn shrink_dictionaries(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut columns = batch.columns().to_vec();
    let mut changed = false;
    for c in &mut columns {
        let DataType::Dictionary(_, value) = c.data_type() else { continue };
        let Some(values) = c.as_any_dictionary_opt().map(|d| d.values().len()) else { continue };
        // Small dictionaries cost nothing to carry.
        if values <= 1024 {
            continue;
        }
        let plain = cast(c, value)?;
        *c = cast(&plain, c.data_type())?;
        changed = true;
    }
    if !changed {
        return Ok(batch);
    }
    RecordBatch::try_new(batch.schema(), columns)
}

#[derive(Debug, Default)]
pub(crate) struct LastRows {
    /// Database → table → cache.
    tables: Mutex<HashMap<String, HashMap<String, TableLast>>>,
    /// Tables forgotten so far (changed with `tables` held): a scan that
    /// began before one was forgotten may hold rows gone since (deleted,
    /// expired), and must not complete a table.
    forgotten: std::sync::atomic::AtomicU64,
}

/// The value of tag column `column` at `row` (`None` for NULL, or a
/// column that is not a tag).
fn tag_value(column: &ArrayRef, row: usize) -> Option<&str> {
    let dict = column.as_dictionary_opt::<arrow::datatypes::Int32Type>()?;
    let keys = dict.keys();
    if keys.is_null(row) {
        return None;
    }
    let key = usize::try_from(keys.value(row)).ok()?;
    let values = dict.values().as_string_opt::<i32>()?;
    (key < values.len() && values.is_valid(key)).then(|| values.value(key))
}

/// Whether row `loc` of the arena is a row of the series `tags`: each
/// pair's column holds its value, and no other tag column holds one.
fn row_has_tags<'a>(arena: &[RecordBatch], loc: Loc, tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> bool {
    let Some(batch) = arena.get(loc.batch as usize) else { return false };
    let row = loc.row as usize;
    if row >= batch.num_rows() {
        return false;
    }
    let expected = tags.len();
    let schema = batch.schema();
    for (k, v) in tags {
        let Ok(i) = schema.index_of(k) else { return false };
        if tag_value(batch.column(i), row) != Some(v) {
            return false;
        }
    }
    let set = batch.columns().iter().filter(|c| tag_value(c, row).is_some()).count();
    set == expected
}

impl TableLast {
    /// Records `loc` as the series' newest row if it is newer. Of rows
    /// with the same time, the first written wins, as in a scan: a write
    /// does not replace an equal time (`ties` false), and history folded in
    /// from a scan, written before any write this process saw, does
    /// (`ties` true).
    fn upsert<'a>(
        &mut self,
        tags: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
        ts: i64,
        loc: Loc,
        ties: bool,
    ) {
        let update = |e: &mut Entry| {
            if e.ts < ts || (e.ts == ts && ties) {
                *e = Entry { ts, loc };
            }
        };
        let hash = series_hash(tags.clone());
        let arena = &self.arena;
        match self.series.entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Entry { ts, loc });
                self.entries += 1;
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if row_has_tags(arena, o.get().loc, tags.clone()) {
                    update(o.get_mut());
                    return;
                }
                let more = self.more.entry(hash).or_default();
                match more.iter_mut().find(|e| row_has_tags(arena, e.loc, tags.clone())) {
                    Some(e) => update(e),
                    None => {
                        more.push(Entry { ts, loc });
                        self.entries += 1;
                    }
                }
            }
        }
    }

    fn push_batch(&mut self, batch: &RecordBatch) -> u32 {
        self.arena.push(batch.clone());
        self.arena_rows += batch.num_rows();
        (self.arena.len() - 1) as u32
    }

    /// Whether the arena holds enough rows no entry points at to be worth
    /// compacting.
    fn wants_compaction(&self) -> bool {
        self.arena.len() > ARENA_LIMIT || self.arena_rows > 2 * self.entries + ARENA_SLACK_ROWS
    }

    /// Rewrites the arena as one batch holding exactly the entries' rows.
    fn compact(&mut self, schema: &SchemaRef) -> Result<(), ArrowError> {
        if self.arena.len() == 1 && self.entries == self.arena_rows {
            return Ok(());
        }
        let adapted = self.arena.iter().map(|b| adapt_batch(b, schema)).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&RecordBatch> = adapted.iter().collect();
        let mut indices = Vec::with_capacity(self.entries);
        for e in self.series.values_mut().chain(self.more.values_mut().flatten()) {
            indices.push((e.loc.batch as usize, e.loc.row as usize));
            e.loc = Loc { batch: 0, row: (indices.len() - 1) as u32 };
        }
        let compact = if indices.is_empty() {
            RecordBatch::new_empty(schema.clone())
        } else if refs.len() > PLAIN_INTERLEAVE_BATCHES {
            interleave_plain(&refs, &indices, schema)?
        } else {
            shrink_dictionaries(interleave_record_batch(&refs, &indices)?)?
        };
        self.arena_rows = compact.num_rows();
        self.arena = vec![compact];
        Ok(())
    }
}

impl LastRows {
    /// Records the newest row of each block of a write. `batch` holds the
    /// blocks' rows in order; `schema` is the table's schema. With
    /// `last_wins` (a table that keeps the last write of a series and
    /// time) the last written of rows of one time wins, otherwise the first.
    pub(crate) fn observe(
        &self,
        db: &str,
        table: &str,
        blocks: &[SeriesBlock],
        batch: &RecordBatch,
        schema: &SchemaRef,
        last_wins: bool,
    ) -> Result<(), ArrowError> {
        let order = |i: usize| if last_wins { i } else { usize::MAX - i };
        let mut tables = self.tables.lock();
        let t = table_mut(&mut tables, db, table);
        let arena_idx = t.push_batch(batch);
        let mut offset = 0;
        for b in blocks {
            let newest =
                b.timestamps.iter().enumerate().max_by_key(|(i, ts)| (**ts, order(*i))).map(|(i, ts)| (i, *ts));
            if let Some((i, ts)) = newest {
                let tags = b.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                t.upsert(tags, ts, Loc { batch: arena_idx, row: (offset + i) as u32 }, last_wins);
            }
            offset += b.rows();
        }
        if t.wants_compaction() {
            t.compact(schema)?;
        }
        Ok(())
    }

    /// The newest row of every series, if the table is complete.
    pub(crate) fn rows(&self, db: &str, table: &str, schema: &SchemaRef) -> Result<Option<RecordBatch>, ArrowError> {
        let mut tables = self.tables.lock();
        let Some(t) = tables.get_mut(db).and_then(|d| d.get_mut(table)).filter(|t| t.complete) else {
            return Ok(None);
        };
        t.compact(schema)?;
        Ok(Some(
            t.arena
                .first()
                .map(|b| adapt_batch(b, schema))
                .transpose()?
                .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())),
        ))
    }

    /// What [`LastRows::complete`] is given: read before the scan whose
    /// rows it folds in.
    pub(crate) fn epoch(&self) -> u64 {
        let _tables = self.tables.lock();
        self.forgotten.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Folds in `rows` (the newest row per series of the table's history,
    /// from a scan that began at `epoch`) and marks the table complete.
    /// Rows already newer in the cache win, and with `last_wins` those of
    /// the same time too (a write seen here is no older than the row the
    /// scan kept for that time). Nothing is folded in if a
    /// table was forgotten since `epoch` (the scan may hold rows deleted
    /// or expired meanwhile); the next read scans again.
    pub(crate) fn complete(
        &self,
        db: &str,
        table: &str,
        rows: &RecordBatch,
        schema: &SchemaRef,
        epoch: u64,
        last_wins: bool,
    ) -> Result<(), ArrowError> {
        let ts_idx = rows.schema().index_of(TIME_COLUMN)?;
        let ts = cast(rows.column(ts_idx), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let ts = ts.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let mut tag_cols = Vec::new();
        for (i, f) in rows.schema().fields().iter().enumerate() {
            if matches!(f.data_type(), DataType::Dictionary(..)) {
                tag_cols.push((f.name().clone(), cast(rows.column(i), &DataType::Utf8)?));
            }
        }
        let mut tables = self.tables.lock();
        if self.forgotten.load(std::sync::atomic::Ordering::Acquire) != epoch {
            return Ok(());
        }
        let t = table_mut(&mut tables, db, table);
        let arena_idx = t.push_batch(rows);
        for row in 0..rows.num_rows() {
            if ts.is_null(row) {
                continue;
            }
            let tags: Vec<(&str, &str)> = tag_cols
                .iter()
                .filter(|(_, c)| c.is_valid(row))
                .map(|(n, c)| (n.as_str(), c.as_string::<i32>().value(row)))
                .collect();
            t.upsert(tags.iter().copied(), ts.value(row), Loc { batch: arena_idx, row: row as u32 }, !last_wins);
        }
        t.complete = true;
        t.compact(schema)
    }

    /// Compacts every table (after a persist, so that the arena stops
    /// holding buffers the persist released).
    pub(crate) fn compact_all(&self, schema_of: impl Fn(&str, &str) -> Option<SchemaRef>) {
        let mut tables = self.tables.lock();
        for (db, d) in tables.iter_mut() {
            for (table, t) in d.iter_mut() {
                let result = match schema_of(db, table) {
                    Some(schema) => t.compact(&schema),
                    None => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(%db, %table, "last-row cache dropped, compaction failed: {e}");
                    *t = TableLast::default();
                }
            }
        }
    }

    /// Forgets a table's cache (it is rebuilt from a scan when next used).
    pub(crate) fn invalidate(&self, db: &str, table: &str) {
        let mut tables = self.tables.lock();
        if let Some(d) = tables.get_mut(db) {
            d.remove(table);
        }
        self.forgotten.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn table_mut<'a>(
    tables: &'a mut HashMap<String, HashMap<String, TableLast>>,
    db: &str,
    table: &str,
) -> &'a mut TableLast {
    if !tables.contains_key(db) {
        tables.insert(db.to_string(), HashMap::new());
    }
    let d = tables.get_mut(db).expect("inserted above");
    if !d.contains_key(table) {
        d.insert(table.to_string(), TableLast::default());
    }
    d.get_mut(table).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{DictionaryArray, Float64Array, Int32Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Int32Type, Schema};

    use super::*;
    use crate::write::{FieldColumn, FieldValues};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(TIME_COLUMN, DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
            Field::new("host", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
            Field::new("v", DataType::Float64, true),
        ]))
    }

    fn write(hosts: &[(&str, &[i64])]) -> (Vec<SeriesBlock>, RecordBatch) {
        let mut blocks = Vec::new();
        let (mut ts, mut host, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (h, times) in hosts {
            blocks.push(SeriesBlock {
                item: 0,
                tags: vec![("host".into(), h.to_string())],
                timestamps: times.to_vec(),
                fields: vec![FieldColumn {
                    name: "v".into(),
                    values: FieldValues::F64(times.iter().map(|t| *t as f64).collect()),
                    validity: None,
                }],
            });
            for t in *times {
                ts.push(*t);
                host.push(*h);
                v.push(*t as f64);
            }
        }
        let keys = Int32Array::from((0..host.len() as i32).collect::<Vec<_>>());
        let dict = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(StringArray::from(host))).expect("dict");
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from(ts).with_timezone("UTC")),
                Arc::new(dict),
                Arc::new(Float64Array::from(v)),
            ],
        )
        .expect("batch");
        (blocks, batch)
    }

    fn newest(rows: &RecordBatch) -> Vec<(String, f64)> {
        let host = cast(rows.column(1), &DataType::Utf8).expect("cast");
        let v = rows.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        let mut out: Vec<(String, f64)> =
            (0..rows.num_rows()).map(|i| (host.as_string::<i32>().value(i).to_string(), v.value(i))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn keeps_the_newest_row_per_series_and_is_unusable_until_complete() {
        let c = LastRows::default();
        let s = schema();
        let (b, batch) = write(&[("a", &[1, 5, 3]), ("b", &[2])]);
        c.observe("db", "t", &b, &batch, &s, false).expect("observe");
        assert!(c.rows("db", "t", &s).expect("rows").is_none(), "not complete yet");
        // History from before: a@4 (older than the cached 5), c@9.
        let (_, hist) = write(&[("a", &[4]), ("c", &[9])]);
        c.complete("db", "t", &hist, &s, c.epoch(), false).expect("complete");
        let (b, batch) = write(&[("b", &[1]), ("b", &[7])]);
        c.observe("db", "t", &b, &batch, &s, false).expect("observe");
        let rows = c.rows("db", "t", &s).expect("rows").expect("complete");
        assert_eq!(newest(&rows), [("a".into(), 5.0), ("b".into(), 7.0), ("c".into(), 9.0)]);
    }

    /// Of rows of one series with the same time, the first written is the
    /// newest, as a scan of the table reads them.
    #[test]
    fn of_equal_times_the_first_written_row_wins() {
        let c = LastRows::default();
        let s = schema();
        let (b, batch) = write(&[("a", &[5]), ("a", &[5])]);
        c.observe("db", "t", &b, &batch, &s, false).expect("observe");
        // History (written before this process) at the same time wins.
        let (_, mut other) = write(&[("a", &[5])]);
        other = RecordBatch::try_new(
            s.clone(),
            vec![other.column(0).clone(), other.column(1).clone(), Arc::new(Float64Array::from(vec![-1.0]))],
        )
        .expect("batch");
        c.complete("db", "t", &other, &s, c.epoch(), false).expect("complete");
        let rows = c.rows("db", "t", &s).expect("rows").expect("complete");
        assert_eq!(newest(&rows), [("a".into(), -1.0)]);
        // A later write at the same time does not replace it.
        let (b, batch) = write(&[("a", &[5])]);
        c.observe("db", "t", &b, &batch, &s, false).expect("observe");
        assert_eq!(newest(&c.rows("db", "t", &s).expect("rows").expect("complete")), [("a".into(), -1.0)]);
        // Within one write, the first of two equal times.
        let (b, batch) = write(&[("b", &[7, 7])]);
        let batch = RecordBatch::try_new(
            s.clone(),
            vec![batch.column(0).clone(), batch.column(1).clone(), Arc::new(Float64Array::from(vec![1.0, 2.0]))],
        )
        .expect("batch");
        c.observe("db", "t", &b, &batch, &s, false).expect("observe");
        assert_eq!(newest(&c.rows("db", "t", &s).expect("rows").expect("complete"))[1], ("b".into(), 1.0));
    }

    /// A table that keeps the last write: of rows of one series with the
    /// same time, the last written is the newest, as a scan keeps it.
    #[test]
    fn with_last_write_wins_the_last_written_row_of_a_time_wins() {
        let c = LastRows::default();
        let s = schema();
        let with_values = |batch: RecordBatch, v: Vec<f64>| {
            RecordBatch::try_new(
                s.clone(),
                vec![batch.column(0).clone(), batch.column(1).clone(), Arc::new(Float64Array::from(v))],
            )
            .expect("batch")
        };
        // Within one write, the second of two equal times.
        let (b, batch) = write(&[("a", &[5, 5])]);
        c.observe("db", "t", &b, &with_values(batch, vec![1.0, 2.0]), &s, true).expect("observe");
        // History at the same time is older than what this process saw.
        let (_, hist) = write(&[("a", &[5])]);
        c.complete("db", "t", &with_values(hist, vec![-1.0]), &s, c.epoch(), true).expect("complete");
        assert_eq!(newest(&c.rows("db", "t", &s).expect("rows").expect("complete")), [("a".into(), 2.0)]);
        // A later write at the same time replaces it.
        let (b, batch) = write(&[("a", &[5])]);
        c.observe("db", "t", &b, &with_values(batch, vec![3.0]), &s, true).expect("observe");
        assert_eq!(newest(&c.rows("db", "t", &s).expect("rows").expect("complete")), [("a".into(), 3.0)]);
    }

    #[test]
    fn many_writes_compact_the_arena() {
        let c = LastRows::default();
        let s = schema();
        c.complete("db", "t", &RecordBatch::new_empty(s.clone()), &s, c.epoch(), false).expect("complete");
        // Many small writes: the batch count bounds the arena.
        for i in 0..1100 {
            let (b, batch) = write(&[("a", &[i]), ("b", &[1000 - i])]);
            c.observe("db", "t", &b, &batch, &s, false).expect("observe");
        }
        assert!(c.tables.lock().values().flat_map(|d| d.values()).all(|t| t.arena.len() <= ARENA_LIMIT + 1));
        assert!(
            c.tables.lock().values().flat_map(|d| d.values()).all(|t| t.arena_rows <= 2 * 2 + ARENA_SLACK_ROWS + 2)
        );
        let rows = c.rows("db", "t", &s).expect("rows").expect("complete");
        assert_eq!(newest(&rows), [("a".into(), 1099.0), ("b".into(), 1000.0)]);
        // Large writes of few series: the rows no entry points at bound it.
        let times: Vec<i64> = (0..10_000).collect();
        for round in 0..20 {
            let shifted: Vec<i64> = times.iter().map(|t| t + round * 10_000).collect();
            let (b, batch) = write(&[("a", &shifted)]);
            c.observe("db", "t", &b, &batch, &s, false).expect("observe");
            let rows = c.tables.lock()["db"]["t"].arena_rows;
            assert!(rows <= 2 * 2 + ARENA_SLACK_ROWS + 10_000, "{rows} rows kept for 2 series");
        }
        let rows = c.rows("db", "t", &s).expect("rows").expect("complete");
        assert_eq!(newest(&rows), [("a".into(), 199_999.0), ("b".into(), 1000.0)]);
    }

    #[test]
    fn compaction_leaves_each_dictionary_its_distinct_values() {
        // 4,000 rows over 2 hosts, their dictionary 2,000 values long (as
        // interleave leaves concatenated write dictionaries).
        let values = StringArray::from((0..2000).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect::<Vec<_>>());
        let keys = Int32Array::from((0..4000).map(|i| i % 2000).collect::<Vec<_>>());
        let dict = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).expect("dict");
        let n = 4000;
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from((0..n).collect::<Vec<i64>>()).with_timezone("UTC")),
                Arc::new(dict),
                Arc::new(Float64Array::from((0..n).map(|i| i as f64).collect::<Vec<_>>())),
            ],
        )
        .expect("batch");
        let before = cast(batch.column(1), &DataType::Utf8).expect("cast");
        let shrunk = shrink_dictionaries(batch).expect("shrink");
        let dict = shrunk.column(1).as_any_dictionary();
        assert_eq!(dict.values().len(), 2, "one entry per distinct host");
        assert_eq!(cast(shrunk.column(1), &DataType::Utf8).expect("cast").as_ref(), before.as_ref(), "same rows");
    }

    #[test]
    fn tag_order_does_not_make_a_new_series() {
        let a = series_hash([("x", "1"), ("y", "2")].into_iter());
        let b = series_hash([("y", "2"), ("x", "1")].into_iter());
        assert_eq!(a, b);
        // Rows 0..3: (x=1, y=2), (x=1), (x=1, y="").
        let tag =
            |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>()) };
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("x", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
                Field::new("y", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
                Field::new("v", DataType::Float64, true),
            ])),
            vec![
                tag(vec![Some("1"), Some("1"), Some("1")]),
                tag(vec![Some("2"), None, Some("")]),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])),
            ],
        )
        .expect("batch");
        let arena = [batch];
        let at = |row| Loc { batch: 0, row };
        assert!(row_has_tags(&arena, at(0), [("y", "2"), ("x", "1")].into_iter()));
        assert!(!row_has_tags(&arena, at(0), [("x", "1")].into_iter()), "y is set in row 0");
        assert!(!row_has_tags(&arena, at(0), [("y", "2"), ("x", "2")].into_iter()));
        assert!(!row_has_tags(&arena, at(0), [("y", "2"), ("x", "1"), ("z", "")].into_iter()), "no column z");
        assert!(row_has_tags(&arena, at(1), [("x", "1")].into_iter()));
        assert!(!row_has_tags(&arena, at(1), [("x", "1"), ("y", "")].into_iter()), "NULL is not the empty string");
        assert!(row_has_tags(&arena, at(2), [("x", "1"), ("y", "")].into_iter()));
        assert!(!row_has_tags(&arena, at(3), [("x", "1")].into_iter()), "past the last row");
        assert!(!row_has_tags(&arena, Loc { batch: 1, row: 0 }, [("x", "1")].into_iter()), "no such batch");
    }

    /// Two series under one hash: the second is told apart by its row's
    /// tags and kept next to the first.
    #[test]
    fn series_that_share_a_hash_are_kept_apart() {
        let (blocks, batch) = write(&[("a", &[1]), ("b", &[2])]);
        let mut t = TableLast::default();
        let arena = t.push_batch(&batch);
        let b_tags = || blocks[1].tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        // Series a sits where series b's hash leads.
        t.series.insert(series_hash(b_tags()), Entry { ts: 1, loc: Loc { batch: arena, row: 0 } });
        t.entries = 1;
        t.upsert(b_tags(), 2, Loc { batch: arena, row: 1 }, false);
        assert_eq!((t.entries, t.more.values().map(Vec::len).sum::<usize>()), (2, 1));
        // b again, newer: its entry moves, a's stays.
        let (blocks2, batch2) = write(&[("b", &[5])]);
        let second = t.push_batch(&batch2);
        let tags = blocks2[0].tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        t.upsert(tags, 5, Loc { batch: second, row: 0 }, false);
        assert_eq!(t.entries, 2);
        let b = t.more.values().flatten().next().expect("b");
        assert_eq!((b.ts, b.loc.batch), (5, second));
        let a = t.series.values().next().expect("a");
        assert_eq!((a.ts, a.loc.row), (1, 0));
        t.compact(&schema()).expect("compact");
        assert_eq!(t.arena[0].num_rows(), 2);
    }
}
