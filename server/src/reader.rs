//! `tocsin serve --role reader --object-store s3://BUCKET/PREFIX`: a server
//! that answers queries from the copy a writer keeps in the bucket
//! ([`crate::mirror`]), without a WAL of its own, and refuses writes.
//!
//! Its data directory is a cache of that copy: the manifest, segments,
//! packs and WAL files of the writer's latest push, and its users and
//! tokens (so that the same credentials work). Every `object_store_interval`
//! it reads the bucket's index; when the writer has pushed new data, it
//! fetches the files it lacks (each checked against the index's SHA-256),
//! and the storage reloads them in one swap ([`Storage::reload`]). A reader
//! is thus behind the writer by up to two intervals (the writer's push, then
//! its own fetch); `tocsin_reader_point_seconds` says which point it holds.
//!
//! When the writer ships its WAL to the bucket (`wal = "object-store"` or
//! `"object-store-sync"`), each refresh also lists the pieces shipped after
//! the loaded image, fetches the ones it has not read, and applies their
//! records to the storage ([`Storage::apply_shipped`]): only what is new,
//! in WAL order, stopping at a piece not there yet. The reader is then
//! behind by its own interval and the shipping, not by a push; the next
//! image it loads replaces what it applied.
//!
//! With a bounded cache (`cache_mb`, the default), segment and pack
//! files are not fetched with the copy but when a query reads them
//! ([`BucketSegments`], `tocsin_storage::cache`): the reader starts at
//! once however large the copy, and keeps on disk the files read lately.
//!
//! Alert rules are evaluated by the writer only: a reader neither evaluates
//! nor notifies, so that adding readers never pages twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tocsin_storage::Storage;
use tokio::sync::{Mutex, watch};

use crate::backup_store::{self, BackupError, Held, Index, Place, segment_file};

/// In a reader's data directory: which bucket it is a cache of.
pub(crate) const READER_FILE: &str = "reader-of";
/// Held (flock) by the reader using the directory.
const READER_LOCK: &str = "reader.lock";

/// Whether `dir` is missing, empty, or a reader's cache of `url`: what a
/// standby may serve from as a reader before it takes the primary's lease.
pub(crate) fn is_cache_or_empty(dir: &Path, url: &str) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            entries.next().is_none()
                || std::fs::read_to_string(dir.join(READER_FILE)).is_ok_and(|of| same_url(of.trim(), url))
        }
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Removes what a reader's cache of `url` holds (a standby taking over
/// starts from the copy in an empty directory); refuses a directory that
/// is not one, or that a reader still uses (its lock held).
pub(crate) async fn empty_cache(dir: &Path, url: &str) -> Result<(), BackupError> {
    let io = |what: String| move |source| BackupError::Io { what, source };
    if !is_cache_or_empty(dir, url) {
        return Err(BackupError::Refused(format!(
            "{} is not a reader's cache of {url}: not emptying it",
            dir.display()
        )));
    }
    // The standby's own reader lets its lock go as it stops; another
    // process's reader does not.
    let lock_path = dir.join(READER_LOCK);
    let _lock = match std::fs::OpenOptions::new().write(true).open(&lock_path) {
        Ok(file) => {
            let mut tries = 0;
            while file.try_lock().is_err() {
                tries += 1;
                if tries > 50 {
                    return Err(BackupError::Refused(format!(
                        "{} is in use by another tocsin process (lock file {} is held): not emptying it",
                        dir.display(),
                        lock_path.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(format!("opening {}", lock_path.display()))(e)),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    let entries: Vec<_> = entries.collect::<Result<_, _>>().map_err(io(format!("reading {}", dir.display())))?;
    // The marker last: a stop half-way leaves a cache, not a directory of
    // unknown files.
    let mut entries: Vec<PathBuf> = entries.into_iter().map(|e| e.path()).collect();
    entries.sort_by_key(|p| p.file_name().is_some_and(|n| n == READER_FILE));
    for path in entries {
        let dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
        let removed = if dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(io(format!("removing {}", path.display())))?;
    }
    Ok(())
}

/// Whether two spellings name the same copy (`file:///x/` is `file:///x`).
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Counters of `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ReaderMetrics {
    pub(crate) refreshes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) fetched_files: AtomicU64,
    pub(crate) fetched_bytes: AtomicU64,
    /// Rows of the writer's shipped WAL applied on top of the copy.
    pub(crate) shipped_rows: AtomicU64,
    /// Unix milliseconds of the writer's image this reader answers from:
    /// every write the writer acknowledged before it is visible here.
    pub(crate) point_ms: AtomicI64,
}

/// What a reader takes of an image, apart from when it was taken: the
/// storage's files (two pushes with the same hold the same rows) and the
/// credentials, each as (path, SHA-256) in the index's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Version {
    storage: Vec<(String, String)>,
    auth: Vec<(String, String)>,
}

impl Version {
    fn of(index: &Index) -> Version {
        let mut v = Version::default();
        for f in index.files.iter().filter(|f| wanted(&f.path)) {
            let entry = (f.path.clone(), f.sha256.clone());
            if f.path.starts_with("auth/") { v.auth.push(entry) } else { v.storage.push(entry) }
        }
        v
    }
}

const MANIFEST: &str = "manifest.json";

/// What a reader takes from the copy: the storage's files and the
/// credentials (not the writer's alerting state, audit log or rules).
fn wanted(path: &str) -> bool {
    path == MANIFEST
        || path == "auth/tokens.json"
        || path == "auth/users.json"
        || path.starts_with("wal/")
        || segment_file(path)
}

/// Where a reader with a bounded cache (or a writer of `segments =
/// "object-store"`) fetches segment and pack files from when a scan reads
/// them: the files of the copies it loaded or pushed (the last two, and
/// those the writer keeps lingering: a query planned on an earlier copy may
/// still read its files).
pub(crate) struct BucketSegments {
    src: Place,
    listed: parking_lot::Mutex<[HashMap<String, backup_store::IndexFile>; 2]>,
    /// The files fetched, or found and checked, by this process.
    held: parking_lot::Mutex<Held>,
}

impl BucketSegments {
    pub(crate) fn new(src: Place) -> BucketSegments {
        BucketSegments { src, listed: Default::default(), held: Default::default() }
    }

    /// Of `paths` (files a writer let go of), those the bucket does not
    /// hold as its copy lists them (named as in the bucket): one listing
    /// per folder, a few at once, not a request per file.
    pub(crate) async fn not_held(&self, paths: &[String]) -> Result<Vec<String>, BackupError> {
        use futures::{StreamExt, TryStreamExt};
        let mut missing = Vec::new();
        let mut wanted: Vec<(String, u64)> = Vec::new();
        {
            let listed = self.listed.lock();
            for path in paths {
                match listed[0].get(path).or_else(|| listed[1].get(path)) {
                    Some(f) => wanted.push((f.stored().to_string(), f.bytes)),
                    None => missing.push(format!("{path} (not listed by the copy)")),
                }
            }
        }
        let mut folders: Vec<&str> = wanted.iter().map(|(s, _)| s.rsplit_once('/').map_or("", |(d, _)| d)).collect();
        folders.sort_unstable();
        folders.dedup();
        let held: HashMap<String, u64> = futures::stream::iter(folders)
            .map(|folder| self.src.list_sized(folder))
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        missing.extend(
            wanted
                .iter()
                .filter(|(stored, bytes)| held.get(stored) != Some(bytes))
                .map(|(stored, _)| self.src.shown(stored)),
        );
        Ok(missing)
    }

    /// `index` is loaded (or pushed): its files may be read from now on.
    pub(crate) fn listed(&self, index: &Index) {
        let files: HashMap<String, backup_store::IndexFile> =
            index.all_files().filter(|f| segment_file(&f.path)).map(|f| (f.path.clone(), f.clone())).collect();
        let mut listed = self.listed.lock();
        // A writer that took the copy over stores the same files under
        // other names: the names count too.
        let same = |a: &backup_store::IndexFile, b: &backup_store::IndexFile| a.pieces() == b.pieces();
        if listed[0].len() == files.len() && listed[0].iter().all(|(p, f)| files.get(p).is_some_and(|g| same(f, g))) {
            return;
        }
        listed[1] = std::mem::replace(&mut listed[0], files);
        let known = |p: &String| listed[0].contains_key(p) || listed[1].contains_key(p);
        self.held.lock().retain(|p, _| known(p));
    }
}

impl tocsin_storage::SegmentSource for BucketSegments {
    fn fetch<'a>(
        &'a self,
        data_dir: &'a Path,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'a>> {
        Box::pin(async move {
            let file = {
                let listed = self.listed.lock();
                listed[0].get(path).or_else(|| listed[1].get(path)).cloned()
            };
            let Some(file) = file else {
                return Err("the writer's copy no longer lists it (a newer copy replaced it)".into());
            };
            let held = self.held.lock().get(path).cloned();
            let fetched = backup_store::fetch_file(&self.src, data_dir, &file, held.as_ref())
                .await
                .map_err(|e| format!("{e:#}"))?;
            self.held.lock().insert(path.to_string(), (file.bytes, file.sha256.clone()));
            Ok(fetched.unwrap_or(0))
        })
    }

    fn bytes(&self, path: &str) -> Option<u64> {
        let listed = self.listed.lock();
        listed[0].get(path).or_else(|| listed[1].get(path)).map(|f| f.bytes)
    }
}

/// The writer's WAL shipped after the image loaded, as far as applied.
#[derive(Debug, Default)]
struct Shipped {
    /// The image the storage holds: the writer's run and the last WAL file
    /// in it. Pieces are applied only on top of it.
    image: Option<(String, u64)>,
    /// Per WAL file after the image, in order.
    files: BTreeMap<u64, Following>,
    /// A damaged record, or one that does not apply, stopped following
    /// until the next image (the log says where).
    stopped: bool,
}

/// How far one shipped WAL file has been read and applied.
#[derive(Debug)]
struct Following {
    /// Pieces read, with the size read: one listed larger is read again (an
    /// upload that timed out after it landed is sent again, longer).
    seen: HashMap<String, u64>,
    /// The file's bytes are read up to here, and applied up to `applied`;
    /// `pending` holds those between (a record not yet whole).
    read: u64,
    applied: u64,
    pending: Vec<u8>,
}

impl Default for Following {
    fn default() -> Self {
        let start = tocsin_storage::wal::HEADER_LEN;
        Following { seen: HashMap::new(), read: start, applied: start, pending: Vec::new() }
    }
}

pub(crate) struct Reader {
    pub(crate) url: String,
    src: Place,
    interval: Duration,
    dir: PathBuf,
    /// The files held and the version loaded; one refresh at a time.
    held: Mutex<(Held, Option<Version>)>,
    /// What the storage holds of the WAL shipped after its image.
    shipped: Mutex<Shipped>,
    pub(crate) metrics: ReaderMetrics,
    /// Whether the writer requires tokens (its copy says so).
    pub(crate) writer_auth: AtomicBool,
    /// With a bounded cache: where scans fetch segment files from.
    pub(crate) segments: Option<Arc<BucketSegments>>,
    _lock: std::fs::File,
}

impl Reader {
    /// Before the storage opens: checks that the data directory is new or
    /// this reader's cache, and fetches the copy the bucket holds (if the
    /// writer has pushed one yet).
    /// `cache`: segment files are fetched when read (see the module).
    pub(crate) async fn open(
        url: &str,
        interval: Duration,
        data_dir: &Path,
        cache: bool,
    ) -> Result<Reader, BackupError> {
        let io = |what: String| move |source| BackupError::Io { what, source };
        let src = Place::parse(url)?;
        std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
        let mark = data_dir.join(READER_FILE);
        let empty =
            std::fs::read_dir(data_dir).map_err(io(format!("reading {}", data_dir.display())))?.next().is_none();
        let new = match std::fs::read_to_string(&mark) {
            Ok(of) if same_url(of.trim(), url) => false,
            Ok(of) => {
                return Err(BackupError::Refused(format!(
                    "{} is the cache of a reader of {}, not of {url}; give this reader a data directory of its own",
                    data_dir.display(),
                    of.trim()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && empty => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::Refused(format!(
                    "{} is not empty and not a reader's cache (it has no {READER_FILE}): a reader keeps its own \
                     copy of the bucket and would replace the files there. Give it an empty --data-dir",
                    data_dir.display()
                )));
            }
            Err(e) => return Err(io(format!("reading {}", mark.display()))(e)),
        };
        // Nothing is written before this reader holds its directory: a second
        // one started on it stops here.
        let lock_path = data_dir.join(READER_LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(BackupError::Refused(format!(
                "data directory {} is in use by another tocsin process (lock file {} is held)",
                data_dir.display(),
                lock_path.display()
            )));
        }
        if new {
            std::fs::write(&mark, format!("{url}\n")).map_err(io(format!("writing {}", mark.display())))?;
        }
        // Parts of fetches a stop interrupted.
        let _ = std::fs::remove_dir_all(data_dir.join(".incoming"));
        let segments = match cache {
            true => Some(Arc::new(BucketSegments::new(Place::parse(url)?))),
            false => None,
        };
        let reader = Reader {
            url: url.to_string(),
            src,
            interval,
            dir: data_dir.to_path_buf(),
            held: Mutex::new((Held::new(), None)),
            shipped: Mutex::new(Shipped::default()),
            metrics: ReaderMetrics::default(),
            writer_auth: AtomicBool::new(false),
            segments,
            _lock: lock,
        };
        let mut attempt = 0;
        loop {
            let Some(index) = Index::read(&reader.src).await? else {
                tracing::warn!(
                    url,
                    "reader: the bucket holds no copy yet (has the writer started with this --object-store?); \
                     answering from nothing until it does"
                );
                break;
            };
            let mut held = reader.held.lock().await;
            match backup_store::fetch_into(&reader.src, data_dir, &index, |p| reader.wants(p), &mut held.0).await {
                Ok(fetched) => {
                    if let Some(s) = &reader.segments {
                        s.listed(&index);
                    }
                    reader.writer_auth.store(index.at.auth, Ordering::Relaxed);
                    remove_unlisted_wal(data_dir, &index);
                    held.1 = Some(Version::of(&index));
                    reader.shipped.lock().await.image = image_of(&index);
                    reader.metrics.point_ms.store(index.at.point_unix_ms, Ordering::Relaxed);
                    tracing::info!(
                        url,
                        point = index.at.point,
                        files = fetched.files,
                        bytes = fetched.bytes,
                        "reader: fetched the writer's copy"
                    );
                    break;
                }
                // A push replaced the copy meanwhile: read the new index.
                Err(_) if attempt < 2 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(reader)
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// What a refresh fetches: with a cache, not the segment files.
    fn wants(&self, path: &str) -> bool {
        wanted(path) && !(self.segments.is_some() && segment_file(path))
    }

    /// Fetches and loads the writer's latest copy, if it holds new data.
    /// Returns whether the storage was reloaded. A push that replaced the
    /// copy while it was being fetched (and removed a file it listed) is
    /// met by reading the new index, twice at most.
    pub(crate) async fn refresh(&self, storage: &Arc<Storage>, auth: &tocsin_auth::Auth) -> Result<bool, BackupError> {
        let mut held = self.held.lock().await;
        let mut attempt = 0;
        loop {
            let Some(index) = Index::read(&self.src).await? else {
                return Err(BackupError::Refused(format!(
                    "{} holds no copy (no {}): has the writer started with this --object-store? The reader \
                     answers from the copy it has{}",
                    self.src.name(),
                    backup_store::INDEX,
                    if held.1.is_some() { "" } else { " (none)" }
                )));
            };
            match self.load(&mut held, &index, storage, auth).await {
                Err(e) if attempt < 2 => {
                    attempt += 1;
                    tracing::debug!(
                        "reader: fetching the copy of {} failed ({e}); reading the index again",
                        index.at.point
                    );
                }
                Ok(reloaded) => {
                    self.follow(&index, storage).await?;
                    return Ok(reloaded);
                }
                done => return done,
            }
        }
    }

    async fn load(
        &self,
        held: &mut (Held, Option<Version>),
        index: &Index,
        storage: &Arc<Storage>,
        auth: &tocsin_auth::Auth,
    ) -> Result<bool, BackupError> {
        let version = Version::of(index);
        let loaded = held.1.clone().unwrap_or_default();
        // Where the files are may change without what they are (a writer
        // that took the copy over stores them anew).
        if let Some(s) = &self.segments {
            s.listed(index);
        }
        let mut shipped = self.shipped.lock().await;
        // Another image (another run of the writer, a later WAL file) is
        // loaded whole, also when its files are the same: what was applied
        // of the shipped WAL belongs to the one before.
        let new_image = shipped.image != image_of(index);
        if held.1.is_some() && loaded == version && !new_image {
            // Nothing new was written: the copy is as recent as this point.
            self.metrics.point_ms.store(index.at.point_unix_ms, Ordering::Relaxed);
            return Ok(false);
        }
        let fetched = backup_store::fetch_into(&self.src, &self.dir, index, |p| self.wants(p), &mut held.0).await?;
        self.metrics.fetched_files.fetch_add(fetched.files as u64, Ordering::Relaxed);
        self.metrics.fetched_bytes.fetch_add(fetched.bytes, Ordering::Relaxed);
        // WAL files are read whole at each reload: one the index no longer
        // lists (persisted since) must not be read again.
        remove_unlisted_wal(&self.dir, index);
        let reloaded = if held.1.is_none() || loaded.storage != version.storage || new_image {
            // Until the reload succeeds the storage holds neither image
            // cleanly: nothing is applied on top of it meanwhile.
            *shipped = Shipped::default();
            let reloaded = storage
                .reload()
                .await
                .map_err(|e| BackupError::Refused(format!("loading the copy of {}: {e}", index.at.point)))?;
            shipped.image = image_of(index);
            reloaded
        } else {
            tocsin_storage::Reloaded::default()
        };
        if (held.1.is_none() || loaded.auth != version.auth)
            && let Err(e) = auth.reload_stores()
        {
            tracing::error!("reader: the writer's users and tokens could not be loaded: {e}");
        }
        self.writer_auth.store(index.at.auth, Ordering::Relaxed);
        held.1 = Some(version);
        held.0.retain(|path, _| index.files.iter().any(|f| &f.path == path));
        self.metrics.point_ms.store(index.at.point_unix_ms, Ordering::Relaxed);
        tracing::debug!(
            point = index.at.point,
            files = fetched.files,
            bytes = fetched.bytes,
            segments = reloaded.segments,
            buffered_rows = reloaded.buffered_rows,
            retired = reloaded.retired,
            "reader: loaded a newer copy"
        );
        Ok(true)
    }

    /// Applies what the writer shipped of its WAL after the image the
    /// storage holds, and this reader has not applied yet (see the module).
    async fn follow(&self, index: &Index, storage: &Arc<Storage>) -> Result<(), BackupError> {
        let mut shipped = self.shipped.lock().await;
        let Some(image) = shipped.image.clone() else { return Ok(()) };
        // The storage holds another image than this index's (its reload
        // failed), or following met a damaged record: nothing goes on top.
        if image_of(index).as_ref() != Some(&image) || shipped.stopped {
            return Ok(());
        }
        let mut by_file: BTreeMap<u64, Vec<backup_store::ShippedPiece>> = BTreeMap::new();
        for p in backup_store::shipped_after(&self.src, index, &image.0).await? {
            by_file.entry(p.file).or_default().push(p);
        }
        for (file, pieces) in by_file {
            let f = shipped.files.entry(file).or_default();
            // Whether every byte of the file listed so far was read.
            let mut whole = true;
            for backup_store::ShippedPiece { offset, name, size, .. } in pieces {
                if f.seen.get(&name) == Some(&size) {
                    continue;
                }
                if offset > f.read {
                    whole = false; // the piece before it is not there yet
                    break;
                }
                let bytes = match self.src.read_whole(&name, backup_store::MAX_PIECE_BYTES).await {
                    Ok(bytes) => bytes,
                    // A push removes the pieces its image holds: the next
                    // refresh loads that image.
                    Err(_)
                        if Index::read(&self.src)
                            .await
                            .ok()
                            .flatten()
                            .is_none_or(|now| now.at.point != index.at.point) =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                f.seen.insert(name, bytes.len() as u64);
                let end = offset + bytes.len() as u64;
                if end > f.read {
                    let skip = usize::try_from(f.read - offset).unwrap_or(usize::MAX);
                    f.pending.extend_from_slice(&bytes[skip..]);
                    f.read = end;
                }
            }
            let records = tocsin_storage::wal::read_records(&f.pending, f.applied);
            let from = f.applied;
            // One record at a time, so that one that cannot be applied
            // stops following at its start and none is applied twice.
            let mut failed = None;
            for (entry, end) in records.entries.into_iter().zip(records.ends) {
                match storage.apply_shipped(vec![entry], &format!("file {file} shipped by the writer")).await {
                    Ok(rows) => {
                        self.metrics.shipped_rows.fetch_add(rows, Ordering::Relaxed);
                        f.applied = end;
                    }
                    Err(e) => {
                        failed = Some(format!("a record does not apply: {e}"));
                        break;
                    }
                }
            }
            let used = usize::try_from(f.applied - from).unwrap_or(usize::MAX).min(f.pending.len());
            f.pending.drain(..used);
            let damage = match (failed, records.stop) {
                (Some(why), _) => Some(why),
                (None, Some(stop)) if !stop.incomplete => Some(stop.reason),
                (None, Some(_)) => {
                    whole = false; // a record not yet whole
                    None
                }
                (None, None) => None,
            };
            if let Some(why) = damage {
                tracing::error!(
                    url = self.url,
                    wal_file = file,
                    offset = f.applied,
                    "reader: the writer's shipped WAL cannot be followed past here ({why}); this reader answers \
                     without the writes after it until the writer's next copy"
                );
                shipped.stopped = true;
                return Ok(());
            }
            // Later files hold later records.
            if !whole {
                break;
            }
        }
        Ok(())
    }

    /// Refreshes every interval until stopped.
    pub(crate) async fn run(
        self: Arc<Self>,
        storage: Arc<Storage>,
        auth: Arc<tocsin_auth::Auth>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match self.refresh(&storage, &auth).await {
                Ok(_) => {
                    self.metrics.refreshes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(url = self.url, "reader: cannot refresh from the bucket: {e}");
                }
            }
            storage.purge_retired();
        }
    }
}

/// The image of `index` that shipped pieces follow: the writer's run and
/// the last WAL file in the image.
fn image_of(index: &Index) -> Option<(String, u64)> {
    index.writer.as_ref().map(|w| (w.run.clone(), index.at.wal_closed))
}

/// Removes the WAL files of `dir` that `index` does not list.
fn remove_unlisted_wal(dir: &Path, index: &Index) {
    let listed: HashSet<&str> = index.files.iter().map(|f| f.path.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(dir.join("wal")) else { return };
    for e in entries.flatten() {
        let rel = format!("wal/{}", e.file_name().to_string_lossy());
        if !listed.contains(rel.as_str())
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!("reader: cannot remove {}: {err}", e.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standby taking over empties its own reader's cache of its copy,
    /// never a directory another reader holds or a cache of another copy.
    #[tokio::test]
    async fn only_a_free_cache_of_this_copy_is_emptied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("segments")).expect("mkdir");
        std::fs::write(cache.join(READER_FILE), "s3://b/copy\n").expect("marker");
        std::fs::write(cache.join("segments/1.parquet"), "x").expect("file");
        let held = std::fs::File::create(cache.join(READER_LOCK)).expect("lock file");
        held.lock().expect("lock");

        let other = empty_cache(&cache, "s3://b/other").await.expect_err("another copy's cache");
        assert!(other.to_string().contains("not a reader's cache of s3://b/other"), "{other}");
        let busy = empty_cache(&cache, "s3://b/copy/").await.expect_err("a reader holds it");
        assert!(busy.to_string().contains("in use by another tocsin process"), "{busy}");
        assert!(cache.join("segments/1.parquet").exists());

        drop(held);
        empty_cache(&cache, "s3://b/copy/").await.expect("free");
        assert_eq!(std::fs::read_dir(&cache).expect("read").count(), 0);
        // A directory of data (no marker) is never emptied.
        std::fs::write(cache.join("manifest.json"), "{}").expect("file");
        empty_cache(&cache, "s3://b/copy").await.expect_err("not a cache");
        assert!(cache.join("manifest.json").exists());
    }
}
