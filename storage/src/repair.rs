//! `tocsin repair`: rebuilds a lost or damaged manifest from the segments'
//! own metadata. Each segment file records (Parquet key-value metadata
//! [`ORIGIN_KEY`]) its database and table, how far the WAL was covered by
//! segments when it was written, its compaction level and the segments it
//! replaces; its embedded Arrow schema gives its columns and their kinds.
//!
//! Nothing is deleted: the old manifest, corrupt segments and segments a
//! present compaction output replaces are moved to `quarantine/`. A segment
//! that cannot be read stops the repair (it may be fine).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, SchemaRef};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;

use crate::manifest::{MANIFEST_FILE, MAX_ID, Manifest, ManifestError, SegmentMeta, TableEntry};
use crate::schema::{COLUMN_KIND_KEY, ColumnDef, ColumnKind, FieldType, TIME_COLUMN, TableSchema};
use crate::segment::{ORIGIN_KEY, STORED_AS_KEY, SegmentCheckError, SegmentOrigin, read_footer};

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "data directory {path} keeps its segment files in the bucket (segments = \"object-store\") and {count} the \
         manifest lists are only there (e.g. {example}): a repair would drop them. Start the server with \
         segments = \"object-store\" and its --object-store instead, or make a whole copy with `tocsin backup` and \
         `tocsin restore` and repair that"
    )]
    SegmentsInBucket { path: PathBuf, count: usize, example: PathBuf },
    #[error("data directory {path} is in use by a running tocsin (lock file {lock} is held); stop it first")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "segment {path} cannot be read ({source}); it may be fine, so the repair stops rather than leave it \
         out: fix access to it and run the repair again"
    )]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("segment {path}: {reason}")]
    BadSegment { path: PathBuf, reason: String },
    #[error(
        "column {column:?} of table {table} is {first} in one segment and {second} in {path}; \
         the repair cannot choose: move one of them away"
    )]
    Conflict { table: String, column: String, first: ColumnKind, second: ColumnKind, path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What a repair did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// The manifest was consistent with the segments; nothing was changed.
    pub already_consistent: bool,
    /// Where the old manifest went, if there was one.
    pub old_manifest: Option<PathBuf>,
    pub tables: usize,
    pub segments: usize,
    pub rows: u64,
    /// Segments listed by the old manifest that are missing.
    pub missing: Vec<PathBuf>,
    /// (file, its new place, why) of each segment moved to quarantine.
    pub quarantined: Vec<(PathBuf, PathBuf, String)>,
    /// WAL files the next start will replay.
    pub wal_to_replay: Vec<PathBuf>,
    /// Segments written before they recorded their origin (no WAL mark, no
    /// list of replaced segments): rows may be replayed twice if their WAL
    /// files were never deleted.
    pub without_origin: usize,
}

struct Found {
    meta: SegmentMeta,
    origin: SegmentOrigin,
    schema: SchemaRef,
}

/// Rebuilds `data_dir`'s manifest from its segment files. `partition_ns` is
/// the configured partition length (segments record their own times).
pub fn repair(data_dir: &Path, partition_ns: i64) -> Result<RepairReport, RepairError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RepairError::Io { path, source }
    };
    let lock_path = data_dir.join("LOCK");
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(RepairError::Locked { path: data_dir.to_path_buf(), lock: lock_path });
    }
    let mut report = RepairReport::default();
    let old = match Manifest::load_existing(data_dir) {
        Ok(m) => m,
        Err(ManifestError::Parse { .. } | ManifestError::Invalid { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(m) = &old {
        for e in m.databases.values().flat_map(|t| t.values()) {
            for s in &e.segments {
                let p = data_dir.join(&s.path);
                if !p.exists() {
                    report.missing.push(p);
                }
            }
        }
    }
    if data_dir.join(crate::SEGMENTS_IN_BUCKET_MARKER).exists()
        && let Some(example) = report.missing.first()
    {
        return Err(RepairError::SegmentsInBucket {
            path: data_dir.to_path_buf(),
            count: report.missing.len(),
            example: example.clone(),
        });
    }

    let mut found = Vec::new();
    let files = crate::recovery::data_files(data_dir);
    // New ids must come after every file's, listed or not: a persist
    // after the repair would otherwise write over a pack whose slices
    // all have lower ids.
    let highest_file_id = crate::recovery::highest_file_id(files.iter().map(PathBuf::as_path));
    for path in files {
        match read_segment(data_dir, &path) {
            Ok(f) => found.extend(f),
            Err(SegmentCheckError::Io(source)) => return Err(RepairError::Unreadable { path, source }),
            Err(SegmentCheckError::Corrupt(reason)) => {
                let target = crate::recovery::quarantine_path(data_dir, &path)
                    .map_err(|e| RepairError::BadSegment { path: path.clone(), reason: e.to_string() })?;
                fs::rename(&path, &target).map_err(io(&path))?;
                report.quarantined.push((path, target, reason));
            }
        }
    }

    // Segments that a present compaction output replaces hold the same rows.
    let replaced: HashSet<(String, String, u64)> = found
        .iter()
        .flat_map(|f| f.origin.replaces.iter().map(|id| (f.origin.database.clone(), f.origin.table.clone(), *id)))
        .collect();
    let (kept, dropped): (Vec<Found>, Vec<Found>) = found
        .into_iter()
        .partition(|f| !replaced.contains(&(f.origin.database.clone(), f.origin.table.clone(), f.meta.id)));
    // Files to move aside, once none of their slices is kept.
    let mut aside: Vec<(String, String)> = Vec::new();
    for f in dropped {
        aside.push((f.meta.path, "replaced by a compaction output that is present".into()));
    }

    // Segments the old manifest names as retired were replaced by a
    // compaction or dropped by retention: listing them would bring rows
    // back.
    let retired: HashSet<String> = old.iter().flat_map(|m| m.retired.iter().cloned()).collect();
    let (kept, dropped): (Vec<Found>, Vec<Found>) = kept.into_iter().partition(|f| !retired.contains(&f.meta.path));
    for f in dropped {
        aside.push((f.meta.path, "retired by a compaction or retention".into()));
    }

    // The same segment twice (a file copied under another name): the
    // first file's copy is kept.
    let mut ids_seen: HashSet<(String, String, u64)> = HashSet::new();
    let (kept, dropped): (Vec<Found>, Vec<Found>) =
        kept.into_iter().partition(|f| ids_seen.insert((f.origin.database.clone(), f.origin.table.clone(), f.meta.id)));
    for f in dropped {
        aside.push((
            f.meta.path,
            format!("its segment {} of {}.{} is also in another file", f.meta.id, f.origin.database, f.origin.table),
        ));
    }

    // The WAL mark. A persist stamps its segments with the WAL file it
    // closed *before* its manifest is saved, and deletes that file only
    // after: a level-0 segment whose file is still there may belong to a
    // persist that never committed, whose other tables' rows exist only in
    // the WAL. Such a segment does not raise the mark; it is set aside and
    // its rows come back from the WAL at start. Merge outputs carry the mark
    // of their time, which was committed.
    let wal_present: HashSet<u64> = crate::wal::list_files(&data_dir.join("wal"))
        .map(|files| files.into_iter().map(|(seq, _)| seq).collect())
        .unwrap_or_default();
    let committed = |f: &Found| f.origin.level > 0 || !wal_present.contains(&f.origin.wal_upto);
    let mut mark = old.as_ref().map_or(0, |m| m.wal_persisted_upto);
    for f in kept.iter().filter(|f| committed(f)) {
        mark = mark.max(f.origin.wal_upto);
    }
    let (kept, dropped): (Vec<Found>, Vec<Found>) =
        kept.into_iter().partition(|f| committed(f) || f.origin.wal_upto <= mark);
    for f in dropped {
        aside.push((
            f.meta.path,
            format!(
                "written by a persist that did not commit; its rows are replayed from WAL file {}",
                f.origin.wal_upto
            ),
        ));
    }
    let kept_files: HashSet<&str> = kept.iter().map(|f| f.meta.path.as_str()).collect();
    let mut moved = HashSet::new();
    for (rel, why) in aside {
        if !kept_files.contains(rel.as_str()) && moved.insert(rel.clone()) {
            move_aside(data_dir, &rel, &why, &mut report)?;
        }
    }

    let mut manifest = Manifest { wal_persisted_upto: mark, ..Manifest::default() };
    if let Some(m) = &old {
        manifest.next_segment_id = m.next_segment_id.min(MAX_ID);
    }
    manifest.next_segment_id = manifest.next_segment_id.max(highest_file_id + 1);
    for f in kept {
        let Found { mut meta, origin, schema } = f;
        meta.partition_start = meta.min_ts.div_euclid(partition_ns.max(1)) * partition_ns.max(1);
        if origin.wal_upto == 0 && origin.replaces.is_empty() && origin.level == 0 {
            report.without_origin += 1;
        }
        manifest.next_segment_id = manifest.next_segment_id.max(meta.id + 1);
        let table = manifest.databases.entry(origin.database.clone()).or_default();
        // Deletions are kept from a readable old manifest (they name
        // segment ids, which the files keep); without one, rows deleted but
        // not yet compacted away come back (docs/storage.md).
        let entry = table.entry(origin.table.clone()).or_insert_with(|| {
            let before = old.as_ref().and_then(|m| m.databases.get(&origin.database)?.get(&origin.table));
            TableEntry {
                schema: before.map(|e| e.schema.clone()).unwrap_or_default(),
                segments: Vec::new(),
                tombstones: before.map(|e| e.tombstones.clone()).unwrap_or_default(),
                overlapping: Vec::new(),
                events: before.and_then(|e| e.events),
            }
        });
        let path = data_dir.join(&meta.path);
        merge_schema(&mut entry.schema, &schema, &format!("{}.{}", origin.database, origin.table), &path)?;
        report.segments += 1;
        report.rows += meta.rows;
        entry.segments.push(meta);
    }
    for e in manifest.databases.values_mut().flat_map(|t| t.values_mut()) {
        e.segments.sort_by_key(|s| s.id);
        // Which partitions' segments may repeat a series and time is not
        // in the files: every partition of more than one segment is taken
        // to, until compaction merges it (see `TableEntry::overlapping`).
        let mut starts: Vec<i64> = e.segments.iter().map(|s| s.partition_start).collect();
        starts.sort_unstable();
        e.overlapping = starts.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        e.overlapping.dedup();
    }
    report.tables = manifest.databases.values().map(|t| t.len()).sum();

    // Segments as the files place them: a manifest that lists the same
    // ids at other rows or in other files is not consistent.
    type Listed = (String, String, u64, String, u64, Option<u64>);
    let ids = |m: &Manifest| -> HashSet<Listed> {
        m.databases
            .iter()
            .flat_map(|(db, t)| {
                t.iter().flat_map(move |(t, e)| {
                    e.segments.iter().map(move |s| {
                        (db.clone(), t.clone(), s.id, s.path.clone(), s.rows, s.pack.map(|p| p.first_row))
                    })
                })
            })
            .collect()
    };
    let consistent = old.as_ref().is_some_and(|m| {
        report.quarantined.is_empty()
            && report.missing.is_empty()
            && ids(m) == ids(&manifest)
            && m.next_segment_id >= manifest.next_segment_id
    });
    if consistent {
        report.already_consistent = true;
        return Ok(report);
    }
    // Tables of the old manifest without segments keep their schemas.
    if let Some(m) = &old {
        for (db, tables) in &m.databases {
            for (t, e) in tables {
                manifest
                    .databases
                    .entry(db.clone())
                    .or_default()
                    .entry(t.clone())
                    .or_insert_with(|| TableEntry { schema: e.schema.clone(), ..Default::default() });
            }
        }
    }
    let manifest_path = data_dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        let target = crate::recovery::quarantine_path(data_dir, &manifest_path)
            .map_err(|e| RepairError::BadSegment { path: manifest_path.clone(), reason: e.to_string() })?;
        fs::copy(&manifest_path, &target).map_err(io(&manifest_path))?;
        report.old_manifest = Some(target);
    }
    manifest.save(data_dir)?;
    if let Ok(files) = crate::wal::list_files(&data_dir.join("wal")) {
        report.wal_to_replay =
            files.into_iter().filter(|(seq, _)| *seq > manifest.wal_persisted_upto).map(|(_, p)| p).collect();
    }
    drop(lock);
    Ok(report)
}

/// Moves the segment at `rel` to `quarantine/`, recording why.
fn move_aside(data_dir: &Path, rel: &str, why: &str, report: &mut RepairReport) -> Result<(), RepairError> {
    let path = data_dir.join(rel);
    let target = crate::recovery::quarantine_path(data_dir, &path)
        .map_err(|e| RepairError::BadSegment { path: path.clone(), reason: e.to_string() })?;
    fs::rename(&path, &target).map_err(|source| RepairError::Io { path: path.clone(), source })?;
    report.quarantined.push((path, target, why.to_string()));
    Ok(())
}

/// The manifest entry, origin and Arrow schema of one segment file, or of
/// each slice of a pack.
fn read_segment(data_dir: &Path, path: &Path) -> Result<Vec<Found>, SegmentCheckError> {
    let corrupt = |r: String| SegmentCheckError::Corrupt(r);
    let meta: ParquetMetaData = read_footer(path)?;
    let bytes = fs::metadata(path).map_err(SegmentCheckError::Io)?.len();
    let rel = path.strip_prefix(data_dir).map_err(|_| corrupt("outside the data directory".into()))?;
    let rel_text = rel.to_str().ok_or_else(|| corrupt("path is not UTF-8".into()))?.to_string();
    // segments/<db>/<table>/<id>.parquet or packs/<db>/<id>.parquet
    let parts: Vec<&str> = rel_text.split('/').collect();
    let (db, table, file) = match parts.as_slice() {
        ["segments", db, table, file] => (*db, Some(*table), *file),
        ["packs", db, file] => (*db, None, *file),
        _ => {
            return Err(corrupt(format!(
                "{rel_text} is neither segments/<database>/<table>/<id>.parquet nor packs/<database>/<id>.parquet"
            )));
        }
    };
    // The folders name the database and table that the manifest, queries
    // and compaction turn back into paths.
    for name in [Some(db), table].into_iter().flatten() {
        crate::manifest::path_component(name)
            .map_err(|r| corrupt(format!("it lies in a folder named {name:?}, which {r}")))?;
    }
    let id: u64 = file
        .strip_suffix(".parquet")
        .and_then(|n| n.parse().ok())
        .filter(|&id| id < MAX_ID)
        .ok_or_else(|| corrupt(format!("file name {file} is not <id>.parquet")))?;
    let kv = meta.file_metadata().key_value_metadata();
    let origin = match kv.and_then(|kv| kv.iter().find(|k| k.key == ORIGIN_KEY)).and_then(|k| k.value.as_deref()) {
        Some(json) => serde_json::from_str::<SegmentOrigin>(json)
            .map_err(|e| corrupt(format!("its {ORIGIN_KEY} metadata does not parse: {e}")))?,
        None => {
            SegmentOrigin { database: db.to_string(), table: table.unwrap_or("").to_string(), ..Default::default() }
        }
    };
    if origin.database != db || table.is_some_and(|t| origin.table != t) {
        return Err(corrupt(format!(
            "it says it belongs to {}.{} but lies in the folder of {db}.{}",
            origin.database,
            origin.table,
            table.unwrap_or("(a pack)")
        )));
    }
    let schema = parquet::arrow::parquet_to_arrow_schema(meta.file_metadata().schema_descr(), kv)
        .map_err(|e| corrupt(format!("its schema does not convert to Arrow: {e}")))?;
    let total_rows = u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0);
    if table.is_none() {
        return pack_slices(path, &rel_text, &origin, &schema, total_rows, bytes);
    }
    let ts_idx = schema.index_of(TIME_COLUMN).map_err(|_| corrupt("it has no ts column".into()))?;
    let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
    for rg in meta.row_groups() {
        match rg.column(ts_idx).statistics() {
            Some(Statistics::Int64(s)) => {
                if let (Some(lo), Some(hi)) = (s.min_opt(), s.max_opt()) {
                    min_ts = min_ts.min(*lo);
                    max_ts = max_ts.max(*hi);
                }
            }
            _ => return Err(corrupt("its ts column has no min/max statistics".into())),
        }
    }
    if total_rows == 0 || min_ts > max_ts {
        return Err(corrupt("it holds no rows".into()));
    }
    Ok(vec![Found {
        meta: SegmentMeta {
            id,
            path: rel_text,
            partition_start: 0,
            min_ts,
            max_ts,
            rows: total_rows,
            bytes,
            level: origin.level,
            pack: None,
            seq: origin.seq,
        },
        origin,
        schema: std::sync::Arc::new(schema),
    }])
}

/// The slices of a pack, from the list its origin metadata keeps; each
/// one's time range is read from its rows.
fn pack_slices(
    path: &Path,
    rel: &str,
    origin: &SegmentOrigin,
    schema: &arrow::datatypes::Schema,
    total_rows: u64,
    bytes: u64,
) -> Result<Vec<Found>, SegmentCheckError> {
    let corrupt = |r: String| SegmentCheckError::Corrupt(r);
    if origin.slices.is_empty() {
        return Err(corrupt("it lies in packs/ but does not list its tables' slices".into()));
    }
    let ts_field = schema.field_with_name(TIME_COLUMN).map_err(|_| corrupt("it has no ts column".into()))?;
    let ts_only = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![ts_field.clone()]));
    let mut out = Vec::with_capacity(origin.slices.len());
    let mut first_row = 0u64;
    let mut seen = HashSet::new();
    for s in &origin.slices {
        // A slice's table becomes a folder of compaction's outputs and a
        // name in the manifest: the write path's rules apply.
        crate::write::check_object_name(&s.table)
            .map_err(|r| corrupt(format!("it lists a slice of table {:?}, a name that {r}", s.table)))?;
        // Two slices of one table are normal (a round's merge output and a
        // slice it moved out of another pack); two of one id are not.
        if !seen.insert(s.id) {
            return Err(corrupt(format!("it lists two slices with id {}", s.id)));
        }
        if s.id >= MAX_ID {
            return Err(corrupt(format!("it lists slice id {}, past the ids this build hands out", s.id)));
        }
        if s.rows == 0 || first_row.checked_add(s.rows).is_none_or(|end| end > total_rows) {
            return Err(corrupt(format!(
                "it lists {} rows for table {} from row {first_row}, past its {total_rows} rows",
                s.rows, s.table
            )));
        }
        let fields: Vec<arrow::datatypes::FieldRef> = s
            .columns
            .iter()
            .map(|&c| {
                schema.fields().get(c as usize).cloned().ok_or_else(|| {
                    corrupt(format!(
                        "it lists column {c} for table {} but has {} columns",
                        s.table,
                        schema.fields().len()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let batches = crate::compact::read_segment(path, Some((first_row, s.rows)), &ts_only)
            .map_err(|e| corrupt(format!("the rows of table {} do not read: {e}", s.table)))?;
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        for b in &batches {
            if let Some((lo, hi)) =
                crate::segment::ts_bounds(b).map_err(|e| corrupt(format!("table {}: {e}", s.table)))?
            {
                min_ts = min_ts.min(lo);
                max_ts = max_ts.max(hi);
            }
        }
        if min_ts > max_ts {
            return Err(corrupt(format!("the rows of table {} have no time", s.table)));
        }
        out.push(Found {
            meta: SegmentMeta {
                id: s.id,
                path: rel.to_string(),
                partition_start: 0,
                min_ts,
                max_ts,
                rows: s.rows,
                bytes: crate::pack::share(bytes, s.rows, total_rows),
                level: s.level,
                pack: Some(crate::manifest::PackSlice { first_row, file_bytes: bytes, file_rows: total_rows }),
                seq: s.seq,
            },
            origin: SegmentOrigin {
                database: origin.database.clone(),
                table: s.table.clone(),
                wal_upto: origin.wal_upto,
                level: s.level,
                replaces: s.replaces.clone(),
                seq: s.seq,
                ..Default::default()
            },
            schema: std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        });
        first_row += s.rows;
    }
    Ok(out)
}

/// Adds the columns of a segment's Arrow schema to `schema`.
fn merge_schema(schema: &mut TableSchema, seg: &SchemaRef, table: &str, path: &Path) -> Result<(), RepairError> {
    for f in seg.fields().iter().filter(|f| f.name() != TIME_COLUMN) {
        let kind = match (f.metadata().get(COLUMN_KIND_KEY).map(String::as_str), f.data_type()) {
            (Some("tag"), _) | (None, DataType::Dictionary(..)) => ColumnKind::Tag,
            _ if f.metadata().contains_key(STORED_AS_KEY) => ColumnKind::Field(FieldType::Float),
            (_, dt) => ColumnKind::Field(FieldType::from_arrow(dt).ok_or_else(|| RepairError::BadSegment {
                path: path.to_path_buf(),
                reason: format!("column {:?} has type {dt}, which Tocsin tables do not store", f.name()),
            })?),
        };
        match schema.get(f.name()) {
            None => schema.columns.push(ColumnDef { name: f.name().clone(), kind }),
            Some(k) if k == kind => {}
            Some(first) => {
                return Err(RepairError::Conflict {
                    table: table.to_string(),
                    column: f.name().clone(),
                    first,
                    second: kind,
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{FieldColumn, FieldValues, SeriesBlock, TableWrite};
    use crate::{Storage, StorageConfig};

    fn write(table: &str, ts: i64) -> Vec<TableWrite> {
        vec![TableWrite {
            table: table.into(),
            blocks: vec![SeriesBlock {
                item: 0,
                tags: vec![("host".into(), "a".into())],
                timestamps: vec![ts],
                fields: vec![FieldColumn { name: "v".into(), values: FieldValues::I64(vec![ts]), validity: None }],
            }],
        }]
    }

    fn rows(s: &Storage, table: &str) -> usize {
        let snap = s.snapshot("public", table).expect("table");
        snap.chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>()
            + snap.segments.iter().map(|m| m.rows as usize).sum::<usize>()
    }

    /// A crash in the middle of a persist leaves some of its segments
    /// written, stamped with the WAL file it closed, and that file still on
    /// disk. The repair used to take their stamp as the WAL mark, and the
    /// next start deleted the WAL file holding the other tables' rows.
    #[tokio::test]
    async fn segments_of_a_persist_that_never_committed_do_not_move_the_wal_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // Each table in files of its own (a pack would hold both).
        let mut config = StorageConfig::for_tests(d);
        config.segments.pack_max_rows = 0;
        let s = Storage::open(config.clone()).await.expect("open");
        for t in ["a", "b"] {
            s.write("public", write(t, 1)).await.expect("write");
        }
        s.persist().await.expect("first persist");
        let committed = fs::read(d.join(MANIFEST_FILE)).expect("manifest");
        for t in ["a", "b"] {
            s.write("public", write(t, 2)).await.expect("write");
        }
        let wal_files = crate::wal::list_files(&d.join("wal")).expect("wal");
        let saved: Vec<(PathBuf, Vec<u8>)> =
            wal_files.iter().map(|(_, p)| (p.clone(), fs::read(p).expect("wal file"))).collect();
        s.persist().await.expect("second persist");
        drop(s);
        // Back to the crash: the first manifest, the WAL as it was, and of
        // the second persist's segments only table a's.
        fs::write(d.join(MANIFEST_FILE), &committed).expect("manifest");
        for (p, bytes) in &saved {
            fs::write(p, bytes).expect("wal file");
        }
        let listed: Manifest = serde_json::from_slice(&committed).expect("json");
        let first: HashSet<String> = listed
            .databases
            .values()
            .flat_map(|t| t.values())
            .flat_map(|e| e.segments.iter().map(|m| m.path.clone()))
            .collect();
        for p in crate::recovery::segment_files(&d.join("segments")) {
            let rel = p.strip_prefix(d).expect("rel").to_string_lossy().into_owned();
            if !first.contains(&rel) && rel.contains("/b/") {
                fs::remove_file(&p).expect("remove b's second segment");
            }
        }
        fs::remove_file(d.join(MANIFEST_FILE)).expect("lose the manifest");

        let report = repair(d, 86_400_000_000_000).expect("repair");
        assert_eq!(report.quarantined.len(), 1, "{:?}", report.quarantined);
        assert!(report.quarantined[0].2.contains("did not commit"), "{:?}", report.quarantined);
        let s = Storage::open(config).await.expect("reopen");
        assert_eq!((rows(&s, "a"), rows(&s, "b")), (2, 2), "every row exactly once");
    }
}
