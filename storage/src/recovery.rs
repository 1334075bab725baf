//! Startup: lock the data directory, load the manifest, verify segments
//! (quarantining unreadable ones), replay the WAL (cutting a torn tail), and
//! start a fresh WAL file.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::batch::{blocks_to_batch, ts_range};
use crate::clock::Clock;
use crate::config::StorageConfig;
use crate::engine::{Chunk, State, Storage, StorageError, TableState, apply, check_shapes, validate};
use crate::manifest::{Manifest, SegmentMeta};
use crate::metrics::StorageMetrics;
use crate::segment::{SegmentCheckError, SegmentOrigin, footer_facts};
use crate::wal::{self, ReadEnd, Wal};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

/// Who opens a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The server that writes it: repairs what a crash left (a torn WAL
    /// tail, unlisted segments, a stale segment id), quarantines corrupt
    /// files, and starts a WAL.
    Writer,
    /// A reader of a copy (`tocsin serve --role reader`): the files are the
    /// writer's, fetched from the bucket; they are read, never repaired. A
    /// file that cannot be used is an error (the copy is fetched again), and
    /// there is no WAL of its own.
    Reader,
}

/// `fetching`: segment files come from the bucket as scans read them
/// (`crate::cache`). A reader's are checked then, not here; a writer's
/// present files are checked here, and those it let go of are not looked
/// for (the caller makes sure its copy holds them). `held`: for such a
/// writer, whether its copy in the bucket holds a file (see
/// [`verify_segments`]).
pub(crate) fn open(
    mut config: StorageConfig,
    clock: Arc<dyn Clock>,
    mode: Mode,
    fetching: bool,
    held: Held<'_>,
) -> Result<Arc<Storage>, StorageError> {
    fs::create_dir_all(&config.data_dir).map_err(io(&config.data_dir))?;
    // Every path handed on (to the query layer's object store above all,
    // which resolves relative paths from `/`) must not depend on the working
    // directory: the default `./tocsin-data` is relative.
    config.data_dir = fs::canonicalize(&config.data_dir).map_err(io(&config.data_dir))?;
    if config.data_dir.to_str().is_none() {
        // Segment paths reach the query layer's object store as text.
        return Err(StorageError::Io {
            path: config.data_dir.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the data directory's path is not valid UTF-8; choose another --data-dir",
            ),
        });
    }
    let dir = config.data_dir.clone();
    let marker = dir.join(crate::RESTORE_MARKER);
    if marker.exists() {
        return Err(StorageError::RestoreIncomplete { path: dir, marker });
    }
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(StorageError::Locked { path: dir, lock: lock_path });
    }
    let wal_dir = dir.join("wal");
    fs::create_dir_all(&wal_dir).map_err(io(&wal_dir))?;
    let metrics = StorageMetrics::default();

    let mut manifest = match Manifest::load_existing(&dir)? {
        Some(m) => m,
        None => {
            // Without a manifest, segments would be unlisted and ignored
            // (their WAL is long gone): refuse rather than guess.
            let found = data_files(&dir);
            if let Some(example) = found.first() {
                return Err(StorageError::ManifestMissing {
                    data_dir: dir.clone(),
                    segments: found.len(),
                    example: example.clone(),
                });
            }
            // A new data directory gets its (empty) manifest before any
            // segment can exist: a crash in the middle of the first persist
            // must find a manifest next to that persist's files, or the
            // rule above would refuse to start on a crash that lost nothing.
            let m = Manifest::default();
            if mode == Mode::Writer {
                m.save(&dir)?;
            }
            m
        }
    };
    let marker = dir.join(crate::SEGMENTS_IN_BUCKET_MARKER);
    if !fetching && mode == Mode::Writer && marker.exists() {
        let absent = absent_paths(&dir, &manifest);
        if let Some(example) = absent.iter().min() {
            return Err(StorageError::SegmentsInBucket {
                data_dir: dir.clone(),
                marker: crate::SEGMENTS_IN_BUCKET_MARKER.into(),
                count: absent.len(),
                example: example.clone(),
            });
        }
        // Every file is here again: an ordinary data directory.
        fs::remove_file(&marker).map_err(io(&marker))?;
    }
    let checked = match (fetching, mode) {
        (false, _) => Default::default(),
        (true, Mode::Reader) => listed_paths(&manifest),
        (true, Mode::Writer) => absent_paths(&dir, &manifest),
    };
    let mut changed = verify_segments(&dir, &mut manifest, &metrics, mode, &checked, held)?;
    // New ids come after every id listed or in a file name: a segment
    // written under a taken id would replace that file.
    let files = data_files(&dir);
    let listed = manifest.databases.values().flat_map(|t| t.values()).flat_map(|e| e.segments.iter());
    let highest = listed
        .map(|s| s.id)
        .chain([
            highest_file_id(files.iter().map(PathBuf::as_path)),
            highest_file_id(manifest.retired.iter().map(Path::new)),
        ])
        .max()
        .unwrap_or(0);
    if manifest.next_segment_id <= highest {
        tracing::warn!(
            next_segment_id = manifest.next_segment_id,
            highest,
            "the manifest's next segment id is taken; new segments start after the highest id present"
        );
        manifest.next_segment_id = highest + 1;
        changed = true;
    }
    if changed && mode == Mode::Writer {
        manifest.save(&dir)?;
    }
    remove_temp_files(&dir.join("segments"));
    remove_temp_files(&dir.join("packs"));
    sweep_unlisted_segments(&dir, files, &manifest, &metrics, mode)?;

    let mut state = state_of(&manifest);
    let last_seq = replay_wal(&dir, &wal_dir, &manifest, &mut state, &config, &metrics, clock.as_ref(), mode)?;
    let wal = match mode {
        Mode::Writer => Some(Wal::create(&wal_dir, last_seq.max(manifest.wal_persisted_upto) + 1, config.fsync)?),
        Mode::Reader => None,
    };
    let storage = Storage::from_parts(config, state, wal, &manifest, lock, metrics, clock);
    tracing::info!(
        data_dir = %dir.display(),
        tables = storage.state.read().dbs.values().map(|d| d.len()).sum::<usize>(),
        replayed_rows = storage.metrics.wal_replayed_rows.load(Ordering::Relaxed),
        "storage opened"
    );
    Ok(Arc::new(storage))
}

/// The tables of `manifest`, with their segments and empty buffers.
pub(crate) fn state_of(manifest: &Manifest) -> State {
    let mut state = State::default();
    for (db, tables) in &manifest.databases {
        for (name, entry) in tables {
            let t = TableState {
                schema: entry.schema.clone(),
                segments: entry.segments.iter().cloned().map(Arc::new).collect(),
                tombstones: entry.tombstones.iter().cloned().map(Arc::new).collect(),
                newest_ts: entry.segments.iter().map(|s| s.max_ts).max().unwrap_or(i64::MIN),
                overlapping: entry.overlapping.iter().copied().collect(),
                events: entry.events.or_else(|| {
                    (!entry.schema.columns.is_empty())
                        .then(|| crate::engine::has_event_columns(entry.schema.columns.iter().map(|c| c.name.as_str())))
                }),
                ..Default::default()
            };
            state.dbs.entry(db.clone()).or_default().insert(name.clone(), t);
        }
    }
    state
}

/// For a writer whose segment files live in the bucket: whether its copy
/// there holds a file (by its path in the data directory).
pub(crate) type Held<'a> = Option<&'a (dyn Fn(&str) -> bool + Send + Sync)>;

/// Checks every segment in the manifest but those in `known` (checked
/// before); a writer moves corrupt ones to `quarantine/` and drops them from
/// the manifest, a reader refuses them. A segment that cannot be read at
/// all (missing, permission denied, an I/O error) may be fine, and dropping
/// it would lose it for good: that refuses to start instead. A writer
/// whose files live in the bucket keeps a corrupt file's segment when the
/// bucket's copy holds the file (`held`): the file is fetched again when
/// read, and dropping the segment would have the next push prune the only
/// good copy.
/// Returns whether the manifest changed.
pub(crate) fn verify_segments(
    dir: &Path,
    manifest: &mut Manifest,
    metrics: &StorageMetrics,
    mode: Mode,
    known: &std::collections::HashSet<String>,
    held: Held<'_>,
) -> Result<bool, StorageError> {
    let mut changed = false;
    // Corrupt here, good in the bucket.
    let mut fetch_again: std::collections::HashSet<String> = Default::default();
    // A pack is checked (and quarantined) once for all the tables that
    // hold a slice of it.
    // Per file: its rows and origin record, or why it is unusable.
    type Facts = Result<Arc<(u64, Option<SegmentOrigin>)>, String>;
    let mut checked: std::collections::HashMap<String, Facts> = Default::default();
    for (db, tables) in manifest.databases.iter_mut() {
        for (table, entry) in tables.iter_mut() {
            let mut keep = Vec::with_capacity(entry.segments.len());
            for mut seg in entry.segments.drain(..) {
                if known.contains(&seg.path) {
                    keep.push(seg);
                    continue;
                }
                let path = dir.join(&seg.path);
                if path.parent().is_some_and(Path::exists) && !owned(dir, &path) {
                    return Err(StorageError::SegmentMismatch {
                        path,
                        table: format!("{db}.{table}"),
                        data_dir: dir.to_path_buf(),
                        reason: "its folder is a symbolic link out of the data directory's segments/ and packs/".into(),
                    });
                }
                let verdict = match checked.get(&seg.path) {
                    Some(v) => v.clone(),
                    None => {
                        let v = match footer_facts(&path) {
                            Ok(facts) => Ok(Arc::new(facts)),
                            Err(SegmentCheckError::Io(source)) => {
                                return Err(StorageError::SegmentUnreadable {
                                    path,
                                    table: format!("{db}.{table}"),
                                    data_dir: dir.to_path_buf(),
                                    source,
                                });
                            }
                            Err(SegmentCheckError::Corrupt(reason)) if mode == Mode::Reader => {
                                return Err(StorageError::SegmentMismatch {
                                    path,
                                    table: format!("{db}.{table}"),
                                    data_dir: dir.to_path_buf(),
                                    reason: format!("the copy is corrupt: {reason}"),
                                });
                            }
                            Err(reason @ SegmentCheckError::Corrupt(_)) => {
                                let moved = quarantine(dir, &path)?;
                                metrics.quarantined_files.fetch_add(1, Ordering::Relaxed);
                                if held.is_some_and(|held| held(&seg.path)) {
                                    fetch_again.insert(seg.path.clone());
                                }
                                let moved = moved
                                    .as_deref()
                                    .map(|p| p.display().to_string())
                                    .unwrap_or_else(|| "nowhere (file missing)".into());
                                Err(format!("{reason}; moved to {moved}"))
                            }
                        };
                        checked.insert(seg.path.clone(), v.clone());
                        v
                    }
                };
                match verdict {
                    Ok(facts) => {
                        let (file_rows, origin) = facts.as_ref();
                        // The rows the manifest places in the file must be
                        // there, and be the table's by the file's own
                        // record: a scan or a merge would otherwise read
                        // past the file, or another table's rows. (Slices
                        // that match the pack's own list cannot overlap:
                        // its slices follow one another.)
                        if let Err(reason) = matches_file(db, table, &seg, *file_rows, origin.as_ref()) {
                            return Err(StorageError::SegmentMismatch {
                                path,
                                table: format!("{db}.{table}"),
                                data_dir: dir.to_path_buf(),
                                reason,
                            });
                        }
                        if let Some(p) = seg.pack.as_mut()
                            && p.file_rows != *file_rows
                        {
                            // A count to find dead rows by: the file's.
                            p.file_rows = *file_rows;
                            changed = true;
                        }
                        keep.push(seg)
                    }
                    Err(reason) if fetch_again.contains(&seg.path) => {
                        tracing::warn!(
                            "segment {} of table {db}.{table} is unusable on this disk: {reason}; the bucket's copy \
                             holds it, and it is fetched from there when read",
                            path.display(),
                        );
                        keep.push(seg);
                    }
                    Err(reason) => {
                        tracing::error!(
                            "segment {} of table {db}.{table} ({} rows, {} to {} ns) is unusable: {reason}; \
                             removed from the manifest",
                            path.display(),
                            seg.rows,
                            seg.min_ts,
                            seg.max_ts,
                        );
                        changed = true;
                    }
                }
            }
            entry.segments = keep;
        }
    }
    Ok(changed)
}

/// The files `manifest` lists that are not in `dir` (a writer whose
/// segments live in the bucket let go of them).
pub(crate) fn absent_paths(dir: &Path, manifest: &Manifest) -> std::collections::HashSet<String> {
    let mut absent = listed_paths(manifest);
    absent.retain(|p| matches!(fs::symlink_metadata(dir.join(p)), Err(e) if e.kind() == std::io::ErrorKind::NotFound));
    absent
}

/// The files `manifest` lists, as it names them.
pub(crate) fn listed_paths(manifest: &Manifest) -> std::collections::HashSet<String> {
    manifest
        .databases
        .values()
        .flat_map(|t| t.values())
        .flat_map(|e| e.segments.iter().map(|s| s.path.clone()))
        .collect()
}

/// Whether segment `seg` of `db.table`, as the manifest lists it, is what
/// its file holds: its rows within the file's `file_rows` (all of them for
/// a table's own file), and by the file's own record (`origin`) the same
/// database and table, and for a slice of a pack the same id at the same
/// rows. The reason if not.
pub(crate) fn matches_file(
    db: &str,
    table: &str,
    seg: &SegmentMeta,
    file_rows: u64,
    origin: Option<&SegmentOrigin>,
) -> Result<(), String> {
    let Some(pack) = seg.pack else {
        if seg.rows != file_rows {
            return Err(format!("it lists {} rows, the file holds {file_rows}", seg.rows));
        }
        return match origin {
            Some(o) if o.database != db || o.table != table => {
                Err(format!("the file says it belongs to table {}.{}", o.database, o.table))
            }
            _ => Ok(()),
        };
    };
    let end = pack.first_row.saturating_add(seg.rows);
    if end > file_rows {
        return Err(format!("it lists rows {}..{end}, the file holds {file_rows}", pack.first_row));
    }
    let Some(origin) = origin.filter(|o| !o.slices.is_empty()) else {
        return Err("it lists a slice of a pack, and the file lists no slices".into());
    };
    if origin.database != db {
        return Err(format!("the file is a pack of database {}", origin.database));
    }
    let mut first_row = 0u64;
    for s in &origin.slices {
        if s.id == seg.id {
            if s.table != table || first_row != pack.first_row || s.rows != seg.rows {
                return Err(format!(
                    "it lists slice {} at rows {}..{end}, the file has it at rows {first_row}..{} of table {}",
                    seg.id,
                    pack.first_row,
                    first_row.saturating_add(s.rows),
                    s.table
                ));
            }
            return Ok(());
        }
        first_row = first_row.saturating_add(s.rows);
    }
    Err(format!("it lists slice {}, which the file does not hold", seg.id))
}

/// Whether the segment file at `path` lies in the data directory `dir`'s
/// own folders: its folder, links resolved, is under `segments/` or
/// `packs/` (themselves resolved: they may be links to another volume).
/// Files are moved to quarantine or deleted only when it does: a folder
/// below them that links elsewhere would let a manifest or a crafted tree
/// move or delete files the server does not own.
pub(crate) fn owned(dir: &Path, path: &Path) -> bool {
    let Some(folder) = path.parent().and_then(|p| fs::canonicalize(p).ok()) else { return false };
    ["segments", "packs"].iter().any(|top| fs::canonicalize(dir.join(top)).is_ok_and(|root| folder.starts_with(root)))
}

/// The highest id in the file names of `files` (`<id>.parquet`), 0 if none.
pub(crate) fn highest_file_id<'a>(files: impl IntoIterator<Item = &'a Path>) -> u64 {
    files
        .into_iter()
        .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .filter(|&id| id < crate::manifest::MAX_ID)
        .max()
        .unwrap_or(0)
}

/// Moves `path` into `<data_dir>/quarantine/`, keeping its name. Returns the
/// new path, or `None` if the file does not exist.
fn quarantine(dir: &Path, path: &Path) -> Result<Option<PathBuf>, StorageError> {
    if !path.exists() {
        return Ok(None);
    }
    let target = quarantine_path(dir, path)?;
    fs::rename(path, &target).map_err(io(path))?;
    Ok(Some(target))
}

/// `<data_dir>/quarantine/<unix millis>-<file name>`, creating the folder.
pub(crate) fn quarantine_path(dir: &Path, path: &Path) -> Result<PathBuf, StorageError> {
    let qdir = dir.join("quarantine");
    fs::create_dir_all(&qdir).map_err(io(&qdir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Ok(qdir.join(format!("{stamp}-{name}")))
}

/// Segment files still named `*.tmp` were never recorded in a manifest.
fn remove_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_temp_files(&p);
        } else if p.extension().is_some_and(|x| x == "tmp") {
            tracing::info!("removing unfinished segment {}", p.display());
            let _ = fs::remove_file(&p);
        }
    }
}

/// Every segment and pack file of the data directory `dir`.
pub(crate) fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = segment_files(&dir.join("segments"));
    files.extend(segment_files(&dir.join("packs")));
    files
}

/// Every `*.parquet` file under `dir`, in path order. A folder below `dir`
/// that is a symbolic link is not entered (see [`owned`]).
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(p) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_symlink()) && p.is_dir() {
                tracing::warn!("ignoring {}: a folder of segments that is a symbolic link", p.display());
            } else if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Segment files the manifest does not list. Those it names as retired
/// (replaced by a compaction or dropped by retention) are deleted. Any other
/// is most likely the output of a persist or compaction interrupted before
/// its manifest swap, whose rows are still in the WAL or in the inputs; but
/// that is a guess (a manifest restored from an older backup leaves the
/// newer segments unlisted too), so the file is moved to `quarantine/` and
/// reported, never deleted.
/// `files` are the data directory's segment and pack files ([`data_files`]).
fn sweep_unlisted_segments(
    dir: &Path,
    files: Vec<PathBuf>,
    manifest: &Manifest,
    metrics: &StorageMetrics,
    mode: Mode,
) -> Result<(), StorageError> {
    let listed: std::collections::HashSet<PathBuf> = manifest
        .databases
        .values()
        .flat_map(|t| t.values())
        .flat_map(|e| e.segments.iter().map(|s| dir.join(&s.path)))
        .collect();
    let retired: std::collections::HashSet<PathBuf> = manifest.retired.iter().map(|p| dir.join(p)).collect();
    for path in files {
        if listed.contains(&path) {
            continue;
        }
        // A reader's files are copies: the bucket has the writer's.
        if retired.contains(&path) || mode == Mode::Reader {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("deleted segment {} that a compaction or retention retired", path.display()),
                Err(e) => tracing::warn!("cannot delete retired segment {}: {e}", path.display()),
            }
            continue;
        }
        let target = quarantine_path(dir, &path)?;
        fs::rename(&path, &target).map_err(io(&path))?;
        metrics.quarantined_files.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "segment {} is not listed in the manifest; moved to {}. It is most likely the output of a persist \
             or compaction interrupted by a crash (its rows are then still in the WAL or in the segments it was \
             merging, and it can be deleted), but if manifest.json was restored from an older backup it may \
             hold rows found nowhere else: see docs/storage.md, \"Quarantine\"",
            path.display(),
            target.display()
        );
    }
    Ok(())
}

/// Applies one WAL record to `state` as the write path did: its rows that
/// are still valid (limits, types) become buffered chunks; the others are
/// logged as from `source`. Returns the rows applied.
pub(crate) fn replay_entry(
    state: &mut State,
    entry: wal::WalEntry,
    config: &StorageConfig,
    clock: &dyn Clock,
    limits: &crate::write::WriteLimits,
    source: &str,
) -> Result<u64, StorageError> {
    let (writes, mut rejected) = check_shapes(entry.writes, limits);
    let last_write = config.deduplicate.then(|| config.partition.as_nanos().min(i64::MAX as u128) as i64);
    let (accepted, more) = validate(state, &entry.database, writes, limits, clock.unix_secs(), last_write);
    rejected.extend(more);
    for r in rejected {
        tracing::warn!("WAL {source}: item {} no longer valid on replay: {}", r.item, r.error);
    }
    let mut rows = 0u64;
    let mut chunks = Vec::with_capacity(accepted.len());
    for (w, schema) in &accepted {
        let batch = blocks_to_batch(schema, &w.blocks)?;
        let (min_ts, max_ts) = ts_range(&w.blocks);
        rows += batch.num_rows() as u64;
        chunks.push(Chunk { batch, min_ts, max_ts });
    }
    apply(state, &entry.database, clock.monotonic(), accepted.iter().map(|(w, _)| w.table.as_str()).zip(chunks))?;
    Ok(rows)
}

/// Replays WAL files newer than the manifest's persisted mark into `state`.
/// Returns the highest WAL file number seen. A writer deletes the files
/// the manifest covers and cuts a torn tail; a reader only reads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replay_wal(
    dir: &Path,
    wal_dir: &Path,
    manifest: &Manifest,
    state: &mut State,
    config: &StorageConfig,
    metrics: &StorageMetrics,
    clock: &dyn Clock,
    mode: Mode,
) -> Result<u64, StorageError> {
    let files = wal::list_files(wal_dir).map_err(io(wal_dir))?;
    let last = files.last().map(|f| f.0).unwrap_or(0);
    let replay_limits = config.limits.for_replay();
    let pending: Vec<&PathBuf> =
        files.iter().filter(|(seq, _)| *seq > manifest.wal_persisted_upto).map(|(_, p)| p).collect();
    if !pending.is_empty() {
        let bytes: u64 = pending.iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
        tracing::info!(files = pending.len(), bytes, "replaying the WAL written since the last persist");
    }
    for (i, (seq, path)) in files.iter().enumerate() {
        if *seq <= manifest.wal_persisted_upto {
            if mode == Mode::Writer {
                let _ = fs::remove_file(path);
            }
            continue;
        }
        let is_last = i + 1 == files.len();
        let (entries, end) = wal::read_file(path).map_err(io(path))?;
        let mut rows = 0u64;
        for entry in entries {
            rows += replay_entry(state, entry, config, clock, &replay_limits, &path.display().to_string())?;
        }
        metrics.wal_replayed_rows.fetch_add(rows, Ordering::Relaxed);
        if let ReadEnd::Corrupt { offset, file_len, ref reason } = end
            && mode == Mode::Reader
        {
            // The writer closed this file before its copy was taken: damage
            // is the copy's or the writer's, not a crash's, and not ours to
            // cut. The copy is not loaded (a reader keeps the one it has).
            return Err(StorageError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "this copy of the writer's WAL file is damaged at offset {offset} of {file_len} ({reason}); \
                         its rows after that point would be missing"
                    ),
                ),
            });
        } else if let ReadEnd::Corrupt { offset, file_len, reason } = end {
            let dropped = file_len - offset;
            metrics.wal_truncated_bytes.fetch_add(dropped, Ordering::Relaxed);
            if is_last {
                // A torn tail: the crash interrupted the last append, which
                // was therefore never acknowledged.
                tracing::warn!(
                    "WAL {}: {reason} at offset {offset}; truncating the torn tail, {dropped} bytes dropped \
                     ({rows} rows replayed before it)",
                    path.display()
                );
                if offset < 16 {
                    fs::remove_file(path).map_err(io(path))?;
                } else {
                    wal::truncate(path, offset).map_err(io(path))?;
                }
            } else {
                // Damage in the middle of the log is not a torn write: keep a
                // copy of the whole file for inspection.
                let copy = quarantine_path(dir, path)?;
                fs::copy(path, &copy).map_err(io(path))?;
                metrics.quarantined_files.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "WAL {} is corrupt at offset {offset} ({reason}) and is not the last WAL file; \
                     {rows} rows before the damage were replayed, {dropped} bytes after it are lost; \
                     the file was copied to {}",
                    path.display(),
                    copy.display()
                );
            }
        } else if rows > 0 {
            tracing::info!("WAL {}: replayed {rows} rows", path.display());
        }
    }
    Ok(last)
}
