//! The manifest: the catalog of databases, tables, schemas and segments, and
//! how far the WAL is covered by segments. It is the single source of truth
//! for what is on disk; it is replaced atomically (write to a temporary file,
//! fsync, rename, fsync the directory), so a crash leaves either the old or
//! the new manifest, never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schema::TableSchema;
use crate::tombstone::Tombstone;

/// Version 3: the JSON shape below. A manifest is written as version 1
/// (the shape before packs) unless a segment is a slice of a pack (2) or a
/// table holds tombstones (3), so that a build that does not know packs
/// refuses it rather than read a pack as one table's file, and one that
/// does not know deletions refuses it rather than show deleted rows.
pub const MANIFEST_FORMAT_VERSION: u32 = 3;
pub const MANIFEST_FILE: &str = "manifest.json";

/// Segment ids are handed out from 1 up; one from this up is crafted or
/// damaged, and counting on from it would wrap.
pub(crate) const MAX_ID: u64 = 1 << 62;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    /// Path relative to the data directory.
    pub path: String,
    /// Start of the time partition the segment belongs to (ns).
    pub partition_start: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub bytes: u64,
    /// How many compactions the rows went through: 0 for a segment written
    /// by a persist, one more than its inputs' for a compaction's output
    /// (absent in manifests written before compaction existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub level: u32,
    /// Set when the segment is a slice of a pack: a file under `packs/`
    /// shared by several small tables of one database (see
    /// [`crate::pack`]). `bytes` is then the slice's share of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackSlice>,
    /// Where the segment's rows stand in write order among the table's
    /// segments (see [`SegmentMeta::order`]): 0 for a persist's segment,
    /// whose id is its place; a compaction's output takes the latest of
    /// its inputs', as its rows are no newer than theirs.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub seq: u64,
}

/// Where a segment's rows lie in the pack that holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSlice {
    /// Index of the slice's first row in the file.
    pub first_row: u64,
    /// Size of the whole file.
    pub file_bytes: u64,
    /// Rows of the whole file, all tables' (absent in manifests written
    /// before it was recorded; the start sets it from the file's footer).
    /// Compaction compares it with the rows still listed to find packs
    /// holding dead rows.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub file_rows: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl SegmentMeta {
    /// Size of the file that holds the segment (a pack's whole size).
    pub fn file_bytes(&self) -> u64 {
        self.pack.map_or(self.bytes, |p| p.file_bytes)
    }

    /// The rows of the file that are this segment's, `[first, first +
    /// rows)`, when it is a slice of a pack.
    pub fn row_range(&self) -> Option<(u64, u64)> {
        self.pack.map(|p| (p.first_row, self.rows))
    }

    /// The segment's place in write order: of two segments that hold a row
    /// of the same series and time, the one with the larger order holds
    /// the later write (last-write-wins, see [`TableEntry::overlapping`]).
    pub fn order(&self) -> u64 {
        if self.seq == 0 { self.id } else { self.seq }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    pub schema: TableSchema,
    pub segments: Vec<SegmentMeta>,
    /// Deletions whose rows some listed segment still holds (see
    /// [`crate::tombstone`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombstones: Vec<Tombstone>,
    /// Starts of the time partitions whose segments may hold rows of the
    /// same series and time (a write repeated, or an older point written
    /// again): queries keep the last written of them, and compaction
    /// merges the partition into one segment that holds only that one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlapping: Vec<i64>,
    /// Whether the table holds events (logs, spans), whose rows are all
    /// kept, rather than samples (last write wins); decided when the table
    /// was created. Absent in manifests written before it was recorded: the
    /// table's columns decide then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// Every WAL file with a number <= this is fully contained in segments.
    pub wal_persisted_upto: u64,
    pub next_segment_id: u64,
    pub databases: BTreeMap<String, BTreeMap<String, TableEntry>>,
    /// Segment files (paths relative to the data directory) that a
    /// compaction or retention replaced and that are deleted once no query
    /// may still read them. At start, these are deleted; any other segment
    /// file that the manifest does not list is quarantined, never deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: MANIFEST_FORMAT_VERSION,
            wal_persisted_upto: 0,
            next_segment_id: 1,
            databases: BTreeMap::new(),
            retired: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "manifest {path} is not valid ({source}); it lists the segments that hold persisted data, \
         so the server will not start without it: restore it from a backup, or stop the server and run \
         `tocsin repair --data-dir {data_dir}`, which moves it to quarantine/ and rebuilds it from the \
         segments' own metadata"
    )]
    Parse { path: PathBuf, data_dir: PathBuf, source: serde_json::Error },
    #[error("manifest {path} has format version {found}; this build reads versions 1 to {MANIFEST_FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write manifest {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "manifest {path} is not valid: {reason}; the server will not start on it (it could read, move or \
         delete files it does not own, or read rows twice): restore it from a backup, or stop the server and run \
         `tocsin repair --data-dir {data_dir}`, which moves it to quarantine/ and rebuilds it from the \
         segments' own metadata"
    )]
    Invalid { path: PathBuf, data_dir: PathBuf, reason: String },
}

impl Manifest {
    /// Loads the manifest of `data_dir`, or an empty one if there is none yet.
    pub fn load(data_dir: &Path) -> Result<Manifest, ManifestError> {
        Ok(Self::load_existing(data_dir)?.unwrap_or_default())
    }

    /// Loads the manifest of `data_dir`; `None` if there is none.
    pub fn load_existing(data_dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = data_dir.join(MANIFEST_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|source| ManifestError::Parse {
            path: path.clone(),
            data_dir: data_dir.to_path_buf(),
            source,
        })?;
        if m.version == 0 || m.version > MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::Version { path, found: m.version });
        }
        if let Err(reason) = m.check_paths() {
            return Err(ManifestError::Invalid { path, data_dir: data_dir.to_path_buf(), reason });
        }
        // Version 1 is version 2 without packs, version 2 is 3 without
        // tombstones.
        Ok(Some(Manifest { version: MANIFEST_FORMAT_VERSION, ..m }))
    }

    /// Every name and path the server turns into a file operation: names
    /// are single path components, segment paths lie under `segments/` or
    /// `packs/` of their own database, and slice ranges do not overflow.
    /// Checked at load: the manifest's paths are joined to the data
    /// directory, read, renamed to quarantine/ and deleted when retired.
    fn check_paths(&self) -> Result<(), String> {
        // A file of a table's own listed twice, or one id twice in a table,
        // would read (and merge) the same rows twice.
        let mut own_files = std::collections::HashSet::new();
        for (db, tables) in &self.databases {
            path_component(db).map_err(|r| format!("database name {db:?} {r}"))?;
            for (table, entry) in tables {
                path_component(table).map_err(|r| format!("table name {db}.{table:?} {r}"))?;
                let mut ids = std::collections::HashSet::new();
                for s in &entry.segments {
                    if !ids.insert(s.id) {
                        return Err(format!("table {db}.{table} lists segment {} twice", s.id));
                    }
                    if s.pack.is_none() && !own_files.insert(s.path.as_str()) {
                        return Err(format!("segment {:?} is listed twice", s.path));
                    }
                    let expected = if s.pack.is_some() {
                        relative_under(&s.path, &["packs", db.as_str()], 3)
                    } else {
                        relative_under(&s.path, &["segments", db.as_str(), table.as_str()], 4)
                    };
                    expected.map_err(|r| format!("segment {:?} of table {db}.{table} {r}", s.path))?;
                    if let Some(p) = s.pack
                        && p.first_row.checked_add(s.rows).is_none()
                    {
                        return Err(format!("segment {:?} of table {db}.{table} has an impossible row range", s.path));
                    }
                }
            }
        }
        for r in &self.retired {
            if relative_under(r, &["segments"], 4).is_err() && relative_under(r, &["packs"], 3).is_err() {
                return Err(format!(
                    "retired file {r:?} is neither segments/<database>/<table>/<id>.parquet nor \
                     packs/<database>/<id>.parquet"
                ));
            }
        }
        Ok(())
    }

    /// Atomically replaces the manifest of `data_dir` with `self`.
    pub fn save(&self, data_dir: &Path) -> Result<(), ManifestError> {
        let path = data_dir.join(MANIFEST_FILE);
        let werr = |source| ManifestError::Write { path: path.clone(), source };
        let packed =
            self.databases.values().flat_map(|t| t.values()).any(|e| e.segments.iter().any(|s| s.pack.is_some()));
        let deleted = self.databases.values().flat_map(|t| t.values()).any(|e| !e.tombstones.is_empty());
        let version = if deleted {
            MANIFEST_FORMAT_VERSION
        } else if packed {
            2
        } else {
            1
        };
        let json =
            serde_json::to_vec_pretty(&Manifest { version, ..self.clone() }).map_err(|e| werr(io::Error::other(e)))?;
        crate::durable::write_atomic(&path, werr, |f| f.write_all(&json).map_err(werr))
    }
}

/// Whether `name` can be one component of a path under the data
/// directory: not empty, no `/` or control character, not starting with
/// `.` (which also rules out `.` and `..`). Database and table names are
/// folders; the write path's rules (see [`crate::write`]) are stricter.
pub(crate) fn path_component(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.starts_with('.') {
        return Err("starts with '.'");
    }
    if name.chars().any(|c| c == '/' || c.is_control()) {
        return Err("contains '/' or a control character");
    }
    Ok(())
}

/// Whether `rel` is `prefix/.../<file>.parquet` with `depth` components in
/// all, each a plain path component.
fn relative_under(rel: &str, prefix: &[&str], depth: usize) -> Result<(), String> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.len() != depth || !parts.starts_with(prefix) || !rel.ends_with(".parquet") {
        return Err(format!("is not {}/<file>.parquet", prefix.join("/")));
    }
    for p in &parts {
        path_component(p).map_err(|r| format!("has a component that {r}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnDef, ColumnKind};

    #[test]
    fn manifest_saves_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Manifest::load(dir.path()).expect("empty"), Manifest::default());
        let mut m = Manifest { wal_persisted_upto: 4, next_segment_id: 9, ..Default::default() };
        m.databases.entry("public".into()).or_default().insert(
            "cpu".into(),
            TableEntry {
                schema: TableSchema { columns: vec![ColumnDef { name: "host".into(), kind: ColumnKind::Tag }] },
                segments: vec![SegmentMeta {
                    id: 8,
                    path: "segments/public/cpu/00000000000000000008.parquet".into(),
                    partition_start: 0,
                    min_ts: 1,
                    max_ts: 2,
                    rows: 2,
                    bytes: 100,
                    level: 3,
                    pack: None,
                    seq: 5,
                }],
                tombstones: vec![],
                overlapping: vec![0],
                events: Some(false),
            },
        );
        m.save(dir.path()).expect("save");
        assert_eq!(Manifest::load(dir.path()).expect("load"), m);
        let text = fs::read_to_string(dir.path().join(MANIFEST_FILE)).expect("read");
        assert!(text.contains("\"version\": 1"), "without packs the manifest keeps version 1: {text}");

        let entry = m.databases.get_mut("public").and_then(|d| d.get_mut("cpu")).expect("cpu");
        entry.segments.push(SegmentMeta {
            id: 10,
            path: "packs/public/00000000000000000011.parquet".into(),
            partition_start: 0,
            min_ts: 3,
            max_ts: 4,
            rows: 2,
            bytes: 40,
            level: 0,
            pack: Some(PackSlice { first_row: 7, file_bytes: 400, file_rows: 20 }),
            seq: 0,
        });
        m.save(dir.path()).expect("save");
        assert_eq!(Manifest::load(dir.path()).expect("load"), m);
        let text = fs::read_to_string(dir.path().join(MANIFEST_FILE)).expect("read");
        assert!(
            text.contains("\"version\": 2"),
            "a slice of a pack makes version 2, which builds without packs refuse: {text}"
        );

        let entry = m.databases.get_mut("public").and_then(|d| d.get_mut("cpu")).expect("cpu");
        entry.tombstones.push(Tombstone {
            upto_segment: 10,
            at: 77,
            deletion: crate::tombstone::Deletion {
                min_ts: 3,
                max_ts: 3,
                tags: vec![crate::tombstone::TagIn { tag: "host".into(), values: vec!["a".into()] }],
            },
        });
        m.save(dir.path()).expect("save");
        assert_eq!(Manifest::load(dir.path()).expect("load"), m);
        let text = fs::read_to_string(dir.path().join(MANIFEST_FILE)).expect("read");
        assert!(
            text.contains("\"version\": 3") && text.contains("\"upto_segment\": 10"),
            "a tombstone makes version 3, which builds without deletions refuse: {text}"
        );
    }

    /// The manifest written by format version 1; later versions must keep
    /// reading it.
    #[test]
    fn reads_version_1_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(MANIFEST_FILE),
            r#"{"version":1,"wal_persisted_upto":3,"next_segment_id":2,"databases":{"public":{"cpu":{
                "schema":{"columns":[{"name":"host","kind":"tag"},{"name":"v","kind":"field","type":"float"}]},
                "segments":[{"id":1,"path":"segments/public/cpu/1.parquet","partition_start":0,
                "min_ts":5,"max_ts":6,"rows":2,"bytes":10}]}}}}"#,
        )
        .expect("write");
        let m = Manifest::load(dir.path()).expect("load");
        assert_eq!(m.wal_persisted_upto, 3);
        assert_eq!(m.databases["public"]["cpu"].schema.columns.len(), 2);
    }

    #[test]
    fn garbage_manifest_is_a_precise_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(MANIFEST_FILE), "{not json").expect("write");
        let err = Manifest::load(dir.path()).expect_err("must fail").to_string();
        assert!(err.contains("manifest.json") && err.contains("is not valid"), "{err}");
    }
}
