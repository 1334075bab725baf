//! Where backups go and come from: a directory or an S3-compatible bucket
//! (`s3://BUCKET/PREFIX`), written by [`push`] (`tocsin backup`, and the
//! server's own copy to `[storage] object_store`) and read by [`restore`]
//! (`tocsin restore`, and a server starting on an empty data directory with
//! `[storage] object_store`). docs/operations.md.
//!
//! A backup holds the files of an image ([`crate::backup`]) and
//! `backup.json`, the index that lists each with its size and SHA-256. The
//! index is written last, atomically, and no file the previous index lists
//! is ever written over (a file that changed is stored under
//! `versions/<image id>/` instead): a backup that did not finish leaves the
//! previous one whole.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tocsin_storage::RESTORE_MARKER;
use tocsin_storage::durable::{sync_dir, write_atomic};
use tocsin_storage::objects::{self, ObjectLocation};

use crate::backup::{BACKUP_FORMAT, BackupFile, BackupImage, BackupPoint};

/// The index of a backup.
pub const INDEX: &str = "backup.json";
/// The largest index read (a million files take some 200 MB).
const MAX_INDEX_BYTES: u64 = 256 << 20;
/// Held (flock) while a backup writes into a directory.
const LOCK: &str = ".lock";
/// Where a server's push stores the files it sends, by run.
const RUNS: &str = "runs";
/// `runs/<run>/shipped/`: the WAL records a server shipped since its last
/// push (`wal = "object-store"` or `"object-store-sync"`), one object per
/// piece, named `<WAL file>-<offset>`. No index lists them: a restore reads
/// those of the run that pushed the index, after the WAL files the image
/// holds, and the run's next push removes those its image covers.
const SHIPPED: &str = "shipped";
/// `runs/<run>/alerting/`: the alerting state journal's records a server
/// shipped since its last push, one object per shipment, named
/// `<first record>-<last record>` (`tocsin_alerting::engine::ship`). A
/// restore replays those after the snapshot the image holds; the run's next
/// push removes those its snapshot covers.
const ALERTING: &str = "alerting";
/// A shipped piece larger than this is refused at restore (a piece is the
/// records of one round of writes: far smaller).
pub(crate) const MAX_PIECE_BYTES: u64 = 1 << 30;

/// Where run `run` ships the piece of WAL file `file_seq` from `offset`.
pub fn piece_name(run: &str, file_seq: u64, offset: u64) -> String {
    format!("{RUNS}/{run}/{SHIPPED}/{file_seq:020}-{offset:020}")
}

/// The folder of run `run`'s shipped pieces.
pub fn shipped_folder(run: &str) -> String {
    format!("{RUNS}/{run}/{SHIPPED}")
}

/// Where run `run` ships the alerting journal's records `first..=last`.
pub fn alerting_piece_name(run: &str, first: u64, last: u64) -> String {
    format!("{RUNS}/{run}/{ALERTING}/{first:020}-{last:020}")
}

fn alerting_folder(run: &str) -> String {
    format!("{RUNS}/{run}/{ALERTING}")
}

/// `(file_seq, offset)` of a piece's name (its last part).
fn parse_piece(name: &str) -> Option<(u64, u64)> {
    let (file, offset) = name.rsplit('/').next()?.split_once('-')?;
    Some((file.parse().ok()?, offset.parse().ok()?))
}

/// Whether `rel` is a shipped piece (`runs/<run>/shipped/...`): pruning
/// never removes one (the pieces after a push's image are not in its index).
fn is_shipped(rel: &str) -> bool {
    let mut parts = rel.split('/');
    parts.next() == Some(RUNS) && parts.next().is_some() && matches!(parts.next(), Some(SHIPPED | ALERTING))
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Object { what: String, source: object_store::Error },
    #[error(transparent)]
    Url(#[from] objects::ObjectUrlError),
    /// A rule of use, a damaged file, a server that answered wrong: the
    /// message says which.
    #[error("{0}")]
    Refused(String),
    /// Another server pushed into the copy since this one's last push: it
    /// has taken the copy over ([`WriterRun`]).
    #[error("{0}")]
    TakenOver(String),
    /// Another server pushed into the copy moments ago: this one waits.
    #[error("{0}")]
    Busy(String),
}

/// The server that keeps a copy in a bucket (`[storage] object_store`), as
/// its index records it: two servers pushing into one copy would mix it, so
/// a server pushes only where no other has pushed lately
/// ([`WriterRun::live`]), and stops for good once another has pushed since
/// its own last push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WriterRun {
    /// Random, per server start.
    pub run: String,
    pub host: String,
    pub interval_ms: u64,
    /// The server stopped cleanly after this push: another may take over
    /// at once.
    #[serde(default)]
    pub stopped: bool,
}

/// A server's claim on its copy, for one push ([`push`]).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub me: &'a WriterRun,
    /// No push of this run has succeeded yet.
    pub first: bool,
    /// When this run started (Unix ms): a server that starts pushing after
    /// it, before this one's first push, has taken the copy over.
    pub since_ms: i64,
    /// Which state of the copy the data directory matches: a copy in any
    /// other state was pushed by another server since, and pushing this
    /// directory over it would roll it back or mix two histories.
    pub synced: &'a Synced,
    /// The primary's lease in etcd this server holds: another server's
    /// recent push is from before its own lease expired, not a live rival;
    /// and the index is written only while the lease holds.
    pub lease: Option<&'a crate::lease::Leadership>,
}

/// `<data-dir>/object-store-synced.json`: the state of the copy in
/// `[storage] object_store` that the data directory matches, the index it
/// last pushed or was restored from (its writer's run and point). A server
/// pushes only over that state ([`check_synced`]).
pub const SYNCED: &str = "object-store-synced.json";
/// The largest record read (it holds two points).
const MAX_SYNCED_BYTES: u64 = 64 << 10;

/// One state of a copy: its index's writer run and point, where the copy
/// is, and whether this data directory pushed it (or was restored from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncedPoint {
    pub run: Option<String>,
    pub point_unix_ms: i64,
    #[serde(default)]
    pub place: String,
    #[serde(default)]
    pub pushed: bool,
}

impl SyncedPoint {
    pub fn of(index: &Index, place: &Place, pushed: bool) -> SyncedPoint {
        SyncedPoint {
            run: index.writer.as_ref().map(|w| w.run.clone()),
            point_unix_ms: index.at.point_unix_ms,
            place: place.name(),
            pushed,
        }
    }

    /// Whether `index` is this state.
    pub fn is(&self, index: &Index) -> bool {
        self.point_unix_ms == index.at.point_unix_ms
            && self.run.as_deref() == index.writer.as_ref().map(|w| w.run.as_str())
    }
}

/// A data directory's record of the copy it matches ([`SYNCED`]). While a
/// push writes the index, the record holds both the state it replaces and
/// the new one, so a crash between the two writes matches either.
#[derive(Debug, Clone)]
pub struct Synced(PathBuf);

impl Synced {
    pub fn in_dir(data_dir: &Path) -> Synced {
        Synced(data_dir.join(SYNCED))
    }

    /// The states recorded; none for a data directory that never pushed
    /// nor was restored from a copy.
    pub fn read(&self) -> Result<Vec<SyncedPoint>> {
        let path = &self.0;
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(|| format!("reading {}", path.display())),
        };
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_SYNCED_BYTES), &mut text)
            .at(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).at(|| {
            format!(
                "{} records which state of the copy in the bucket this data directory matches, and cannot be read \
                 (docs/operations.md, \"One writer per copy\": move the data directory aside and start on an empty \
                 one to continue from the copy)",
                path.display()
            )
        })
    }

    pub fn record(&self, points: &[SyncedPoint]) -> Result<()> {
        let json = serde_json::to_vec(points).at(|| "encoding the copy's state".into())?;
        write_atomic(&self.0, |e| e, |f| f.write_all(&json)).at(|| format!("writing {}", self.0.display()))
    }
}

/// Refuses (`TakenOver`) a copy whose state is not one `synced` records:
/// another server has pushed it since this data directory last did (or
/// started from it), and pushing this directory would replace that
/// server's writes with older data.
pub fn check_synced(copy: &Index, synced: &[SyncedPoint], dest: &Place) -> Result<()> {
    if synced.iter().any(|p| p.is(copy)) {
        return Ok(());
    }
    let by = match &copy.writer {
        Some(w) => format!("a server on {} (run {})", w.host, w.run),
        None => "`tocsin backup`".to_string(),
    };
    let when = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| ms.to_string())
    };
    let why = match synced.last() {
        Some(p) if !p.place.is_empty() && p.place != dest.name() => format!(
            "this data directory last {} the copy in {} (at {}), not this one: if that is its copy, give that \
             --object-store; pushing here would replace this copy with this directory's data",
            if p.pushed { "pushed" } else { "started from" },
            p.place,
            when(p.point_unix_ms)
        ),
        Some(p) => format!(
            "which is not the state this data directory last {} ({}): another server has taken the copy over since, \
             and pushing this data directory would roll the copy back",
            if p.pushed { "pushed" } else { "started from" },
            when(p.point_unix_ms)
        ),
        None => format!(
            "and this data directory has no record ({SYNCED}) of pushing this copy or starting from it (it was never \
             used with it, the record was removed, or it served with --object-store before Tocsin kept the record): \
             the copy may hold writes this directory lacks, and pushing would replace them"
        ),
    };
    Err(BackupError::TakenOver(format!("the copy in {} was pushed by {by} at {}, {why}", dest.name(), copy.at.point)))
}

impl WriterRun {
    /// How long after its last push a writer counts as alive: three of its
    /// intervals, at least 3 s.
    pub fn window_ms(&self) -> i64 {
        i64::try_from(self.interval_ms.saturating_mul(3).max(3_000)).unwrap_or(i64::MAX)
    }

    /// Whether the writer of `index` may still be pushing at `now_ms`.
    pub fn live(index: &Index, now_ms: i64) -> Option<&WriterRun> {
        index.writer.as_ref().filter(|w| !w.stopped && now_ms.saturating_sub(index.at.point_unix_ms) < w.window_ms())
    }
}

type Result<T, E = BackupError> = std::result::Result<T, E>;

/// `.at(|| "doing what")` on the errors of files and buckets.
trait At<T> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> At<T> for std::result::Result<T, std::io::Error> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BackupError::Io { what: what(), source })
    }
}

impl<T> At<T> for std::result::Result<T, object_store::Error> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BackupError::Object { what: what(), source })
    }
}

impl<T> At<T> for std::result::Result<T, serde_json::Error> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| BackupError::Refused(format!("{}: {e}", what())))
    }
}

/// What a server that finds its copy taken over does.
const STOPPED: &str = "This server stopped pushing and accepts no more writes; send them to the other server";

macro_rules! bail {
    ($($arg:tt)*) => { return Err(BackupError::Refused(format!($($arg)*))) };
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { bail!($($arg)*); } };
}

/// The files of an image, as the one pushing it reaches them.
pub trait ImageFiles {
    /// The bytes of `file` from `offset` to its listed length.
    fn open(
        &self,
        file: &BackupFile,
        offset: u64,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<Bytes>>>> + Send;

    /// Its path on this machine, when it is a local file: a file that
    /// changes in place (the manifest, the alerting state, the audit log) is
    /// then compared with the previous backup's by content and not sent
    /// again when unchanged.
    fn local(&self, _file: &BackupFile) -> Option<PathBuf> {
        None
    }
}

/// What [`push`] did.
#[derive(Debug)]
pub struct PushReport {
    pub index: Index,
    pub copied_files: usize,
    pub copied_bytes: u64,
    pub reused_files: usize,
    pub pruned: usize,
    /// Segment files the image does not hold (the server let go of them,
    /// `segments = "object-store"`) and the copy lost (as named in it):
    /// the index lists them as before, and they cannot be read.
    pub lost: Vec<String>,
}

/// Copies `image` into `dest` (only what the backup there lacks), writes the
/// index, removes what it no longer lists. `replace`: a backup of another
/// data directory may be replaced.
/// `writer`: the server's own copy (not `tocsin backup`), see [`Claim`].
pub async fn push(
    image: &BackupImage,
    files: &impl ImageFiles,
    dest: &Place,
    replace: bool,
    progress: bool,
    writer: Option<Claim<'_>>,
) -> Result<PushReport> {
    let started = Instant::now();
    let now = image.at.point_unix_ms;
    let _lock = match dest {
        Place::Dir(d) => {
            fs::create_dir_all(d).at(|| format!("creating {}", d.display()))?;
            let holder = match &writer {
                Some(c) => format!("server {} {now}", c.me.run),
                None => format!("backup - {now}"),
            };
            match lock(d, &holder)? {
                Ok(file) => Some(file),
                // A server whose push was paused half-way (its process
                // stopped, its machine frozen) holds the lock: a server
                // taking its copy over passes it once it has been quiet.
                Err(held) => {
                    let mut words = held.split_whitespace();
                    let (kind, run, at) =
                        (words.next(), words.next(), words.next().and_then(|t| t.parse::<i64>().ok()));
                    let server = kind == Some("server") && run.is_some();
                    let quiet = writer
                        .as_ref()
                        .is_some_and(|c| server && at.is_some_and(|at| now.saturating_sub(at) > c.me.window_ms()));
                    // Another server started pushing after this one started,
                    // before its first push: it is taking the copy over (two
                    // servers on an empty data directory at the same moment).
                    if let Some(c) = &writer
                        && c.first
                        && server
                        && !quiet
                        && run != Some(c.me.run.as_str())
                        && at.is_some_and(|at| at > c.since_ms)
                    {
                        return Err(BackupError::TakenOver(format!(
                            "another server (run {}) started pushing into {} after this server started, before its \
                             first push: it is taking the copy over. {STOPPED}",
                            run.unwrap_or("?"),
                            d.display()
                        )));
                    }
                    ensure!(
                        quiet,
                        "another `tocsin backup` or server is writing into {} (its {LOCK} is locked: {})",
                        d.display(),
                        held.trim()
                    );
                    None
                }
            }
        }
        Place::Bucket(_) => None,
    };
    let (previous, previous_tag) = match Index::read_tagged(dest).await? {
        Some((index, tag)) => (Some(index), tag),
        None => (None, None),
    };
    if previous.is_none() && !dest.is_empty().await? {
        bail!(
            "{} is not empty and holds no {INDEX}: not a Tocsin backup (a backup removes the files its index does \
             not list, so it will not write among others)",
            dest.name()
        );
    }
    check_target(image, dest, previous.as_ref(), replace)?;
    let synced = match &writer {
        Some(c) => c.synced.read()?,
        None => Vec::new(),
    };
    if let (Some(_), Some(p)) = (&writer, previous.as_ref()) {
        check_synced(p, &synced, dest).map_err(|e| match e {
            BackupError::TakenOver(why) => BackupError::TakenOver(format!("{why}. {STOPPED}")),
            e => e,
        })?;
    }
    if writer.is_none() {
        if let Some(w) = previous.as_ref().and_then(|p| p.writer.as_ref()) {
            bail!(
                "{} is the copy a server keeps (`--object-store`, last pushed by the server on {}); a backup there \
                 would mix the two. Back up to another prefix or directory",
                dest.name(),
                w.host
            );
        }
        // A folder inside a server's copy: the server's next push would
        // remove it (a copy holds only what its index lists).
        for above in dest.ancestors() {
            if let Ok(Some(index)) = Index::read(&above).await
                && let Some(w) = &index.writer
            {
                bail!(
                    "{} is inside {}, the copy a server keeps (`--object-store`, last pushed by the server on {}): \
                     its next push would remove this backup. Back up to another prefix or directory",
                    dest.name(),
                    above.name(),
                    w.host
                );
            }
        }
    }
    if let (Some(Claim { me, lease: None, .. }), Some(p)) = (&writer, previous.as_ref())
        && let Some(other) = p.writer.as_ref().filter(|w| w.run != me.run)
        && WriterRun::live(p, now).is_some()
        // This directory's own last push (the server restarted): the data
        // directory's lock says no other process serves it.
        && !synced.iter().any(|s| s.pushed && s.is(p))
    {
        return Err(BackupError::Busy(format!(
            "another server (on {}) pushed into {} {:.1} s ago; two servers pushing one copy would mix it, so this \
             one pushes only once that copy is {:.0} s old with no newer push (a stopped or lost server)",
            other.host,
            dest.name(),
            (now - p.at.point_unix_ms) as f64 / 1000.0,
            other.window_ms() as f64 / 1000.0
        )));
    }
    // A server's push stores what it sends under a folder of its own run:
    // two servers of one identity (both restored from one copy) pushing at
    // the same moment name their new segments, WAL files and audit pieces
    // alike, and the loser's bytes would land under names the winner's
    // index lists.
    let scope = writer.as_ref().map(|c| format!("{RUNS}/{}", c.me.run));
    ensure!(scope.as_deref().is_none_or(plain), "this server's run id is not a plain name");
    let Copied { files: list, copied_files, copied_bytes, lost } =
        copy_image(image, files, dest, previous.as_ref(), progress, scope.as_deref()).await?;
    let reused_files = list.len() - copied_files;
    if let Some(Claim { me, .. }) = &writer
        && let Some(now) = Index::read(dest).await?
        && let Some(other) = now.writer.as_ref().filter(|w| w.run != me.run)
        && previous.as_ref().is_none_or(|p| p.at.point_unix_ms != now.at.point_unix_ms)
    {
        // Another server pushed while this push was copying.
        return Err(BackupError::TakenOver(format!(
            "another server (on {}) pushed into {} at {}, during this server's push: it has taken the copy over. \
             {STOPPED}",
            other.host,
            dest.name(),
            now.at.point
        )));
    }
    let index = Index {
        at: image.at.clone(),
        // `tocsin backup` into a server's copy keeps its writer.
        writer: writer.map(|c| c.me.clone()).or_else(|| previous.as_ref().and_then(|p| p.writer.clone())),
        seconds: started.elapsed().as_secs_f64(),
        copied_files,
        copied_bytes,
        reused_files,
        lingering: match (&writer, &previous) {
            (Some(_), Some(p)) => lingering(p, &list, now),
            _ => Vec::new(),
        },
        files: list,
    };
    let json = serde_json::to_vec_pretty(&index).at(|| "encoding the index".into())?;
    let state = SyncedPoint::of(&index, dest, true);
    // A push that took longer than the lease (paused, or held up on the
    // way) does not write its index after a standby may have taken over.
    if let Some(Claim { lease: Some(lease), .. }) = &writer
        && let Err(why) = lease.check()
    {
        return Err(BackupError::TakenOver(format!("{why}: the push stops before writing its index")));
    }
    if let Some(c) = &writer {
        // Both states while the index is written: a crash in between matches
        // either on the next start.
        let replaced = previous.as_ref().and_then(|p| synced.iter().find(|s| s.is(p)).cloned());
        c.synced.record(&replaced.into_iter().chain([state.clone()]).collect::<Vec<_>>())?;
    }
    match (&writer, dest) {
        // On a bucket, a server's index replaces only the index it read
        // (S3 If-Match, or If-None-Match where there was none): of two
        // servers pushing at once, one writes it; the other stands down
        // without removing anything.
        (Some(_), Place::Bucket(b)) => {
            let mode = match (&previous, previous_tag) {
                (None, _) => object_store::PutMode::Create,
                (Some(_), e_tag) => object_store::PutMode::Update(object_store::UpdateVersion { e_tag, version: None }),
            };
            match b.store.put_opts(&b.object(INDEX), PutPayload::from(json), mode.into()).await {
                Ok(_) => {}
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    return Err(BackupError::TakenOver(format!(
                        "another server wrote its index into {} while this server pushed: it has taken the copy over. \
                         {STOPPED}",
                        dest.name()
                    )));
                }
                Err(e) => return Err(e).at(|| format!("writing {}", dest.shown(INDEX))),
            }
        }
        _ => dest.replace(INDEX, json).await?,
    }
    if let Some(c) = &writer {
        c.synced.record(std::slice::from_ref(&state))?;
        // A bucket has no lock: another server may have written its index
        // over this one meanwhile. Its files are not this index's, so they
        // are not pruned, and this server stands down.
        if let Place::Bucket(_) = dest
            && let Some(now) = Index::read(dest).await?
            && !state.is(&now)
        {
            return Err(BackupError::TakenOver(format!(
                "another server ({}) wrote its index into {} right after this server's push: it has taken the copy \
                 over. {STOPPED}",
                now.writer.as_ref().map_or_else(|| "`tocsin backup`".to_string(), |w| format!("on {}", w.host)),
                dest.name()
            )));
        }
    }
    // A server's push removes only what it is sure no newer copy needs:
    // the files the index it replaced listed, and its own run's. A push
    // that stalled after writing its index, long enough for another server
    // to take the copy over, must not remove that server's files.
    let own = scope.as_deref().map(|s| (previous.as_ref(), s));
    let pruned = dest.prune(&index, own).await?;
    Ok(PushReport { index, copied_files, copied_bytes, reused_files, pruned, lost })
}

/// Refuses a backup of another data directory over an existing one (unless
/// `replace`), and a directory inside the server's data directory.
fn check_target(image: &BackupImage, dest: &Place, previous: Option<&Index>, replace: bool) -> Result<()> {
    ensure!(
        image.at.format == BACKUP_FORMAT,
        "the server sent backup format {}; this build reads {BACKUP_FORMAT}",
        image.at.format
    );
    if let Some(p) = previous
        && p.at.instance != image.at.instance
        && !replace
    {
        bail!(
            "{} holds a backup of another data directory (taken {}); backing this server up there would replace it. \
             Check --http-addr, or give --replace if that is what you want",
            dest.name(),
            p.at.point
        );
    }
    if let Place::Dir(d) = dest
        && !image.data_dir.is_empty()
        && let (Ok(d), Ok(data)) = (fs::canonicalize(d), fs::canonicalize(&image.data_dir))
    {
        ensure!(
            !d.starts_with(&data),
            "{} is inside the server's data directory {}; back up to another disk",
            d.display(),
            data.display()
        );
    }
    Ok(())
}

/// Copies the image's files into `dest`, except those an earlier backup of
/// the same data directory left there unchanged.
async fn copy_image(
    image: &BackupImage,
    source: &impl ImageFiles,
    dest: &Place,
    previous: Option<&Index>,
    progress: bool,
    scope: Option<&str>,
) -> Result<Copied> {
    let reusable: HashMap<&str, &IndexFile> = previous
        .filter(|p| p.at.instance == image.at.instance)
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    // What the previous backup needs stays as it is until the new index
    // replaces it.
    let taken: HashSet<String> = previous
        .map(|p| p.files.iter().flat_map(|f| f.pieces().into_iter().map(|x| x.stored)).collect())
        .unwrap_or_default();
    let total: u64 = image.files.iter().map(|f| f.bytes).sum();
    let mut files = Vec::with_capacity(image.files.len());
    let mut lost = Vec::new();
    let (mut copied_files, mut copied_bytes, mut done_bytes) = (0, 0, 0u64);
    let mut last_report = Instant::now();
    for (n, f) in image.files.iter().enumerate() {
        ensure!(plain(&f.path), "the server named {:?}, which is not a path inside the backup", f.path);
        ensure!(f.path != INDEX && f.path != LOCK, "the server named {:?}, which a backup keeps for itself", f.path);
        done_bytes += f.bytes;
        if APPEND_ONLY.contains(&f.path.as_str())
            && let Some(p) = reusable.get(f.path.as_str())
            && let Some(entry) = append(image, source, dest, f, p, &taken, scope).await?
        {
            copied_bytes += f.bytes - p.bytes;
            copied_files += usize::from(f.bytes > p.bytes);
            files.push(entry);
            continue;
        }
        if let Some(p) = reusable.get(f.path.as_str()).filter(|p| p.bytes == f.bytes)
            && unchanged(source, f, p)?
        {
            if dest.size(p.stored()).await? == Some(f.bytes) {
                files.push((*p).clone());
                continue;
            }
            // A segment file a writer of `segments = "object-store"` let go
            // of, and the bucket lost: nothing can send it again. The copy
            // goes on with the rest (listing it as it was) rather than
            // stall every later push; the server says so at every push.
            if source
                .local(f)
                .is_some_and(|l| matches!(fs::symlink_metadata(&l), Err(e) if e.kind() == std::io::ErrorKind::NotFound))
            {
                lost.push(dest.shown(p.stored()));
                files.push((*p).clone());
                continue;
            }
        }
        let base = scope.map_or_else(|| f.path.clone(), |s| format!("{s}/{}", f.path));
        let stored = if taken.contains(&base) { format!("versions/{}/{base}", image.id) } else { base };
        let stored = (stored != f.path).then_some(stored);
        ensure!(
            stored.as_deref().is_none_or(plain),
            "the server sent backup id {:?}, which is not a plain name",
            image.id
        );
        let sha256 = send(source, f, 0, dest, stored.as_deref().unwrap_or(&f.path)).await?;
        files.push(IndexFile { path: f.path.clone(), bytes: f.bytes, sha256, stored, parts: Vec::new() });
        copied_files += 1;
        copied_bytes += f.bytes;
        if progress && last_report.elapsed().as_secs() >= 2 {
            eprintln!("  {}/{} files, {done_bytes}/{total} bytes", n + 1, image.files.len());
            last_report = Instant::now();
        }
    }
    if let Place::Dir(d) = dest {
        // The new files' folder entries, before the index names them.
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for piece in files.iter().flat_map(IndexFile::pieces) {
            let mut p = d.join(&piece.stored);
            while p.pop() && p.starts_with(d) && dirs.insert(p.clone()) {}
        }
        for dir in dirs {
            sync_dir(&dir).at(|| format!("syncing {}", dir.display()))?;
        }
    }
    Ok(Copied { files, copied_files, copied_bytes, lost })
}

/// What [`copy_image`] did.
struct Copied {
    files: Vec<IndexFile>,
    copied_files: usize,
    copied_bytes: u64,
    /// Files neither the image nor the backup holds any more (see
    /// [`PushReport::lost`]).
    lost: Vec<String>,
}

/// Whether `f` is the file `previous` holds. Segments, packs and closed WAL
/// files never change once written, and their names are not reused within
/// one data directory; the others (manifest, alerting state, users, audit
/// log, rules) change in place: the same only if their content is, which
/// can be told only of a local file.
fn unchanged(source: &impl ImageFiles, f: &BackupFile, previous: &IndexFile) -> Result<bool> {
    if ["segments/", "packs/", "wal/"].iter().any(|p| f.path.starts_with(p)) {
        return Ok(true);
    }
    let Some(path) = source.local(f) else { return Ok(false) };
    let mut file = fs::File::open(&path).at(|| format!("opening {}", path.display()))?;
    let mut hash = Sha256::new();
    let copied = std::io::copy(&mut std::io::Read::take(&mut file, f.bytes), &mut HashWriter(&mut hash))
        .at(|| format!("reading {}", path.display()))?;
    Ok(copied == f.bytes && hex(&hash.finalize()) == previous.sha256)
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends one file from `offset` into `dest` at `stored`; returns the
/// SHA-256 of what it sent.
async fn send(source: &impl ImageFiles, f: &BackupFile, offset: u64, dest: &Place, stored: &str) -> Result<String> {
    let mut stream = source.open(f, offset).await?;
    let mut sink = dest.sink(stored).await?;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        let want = f.bytes - offset;
        ensure!(got <= want, "{}: the server sent more than the {want} bytes asked", f.path);
        hash.update(&chunk);
        sink.write(&chunk).await?;
    }
    ensure!(
        got == f.bytes - offset,
        "{}: received {got} bytes of {}; the connection was cut?",
        f.path,
        f.bytes - offset
    );
    sink.finish().await?;
    Ok(hex(&hash.finalize()))
}

/// The entry of an append-only file that grew since `previous`: the
/// previous pieces and one more holding what was appended. `None` when it
/// must be sent whole (it shrank, or has too many pieces).
async fn append(
    image: &BackupImage,
    source: &impl ImageFiles,
    dest: &Place,
    f: &BackupFile,
    previous: &IndexFile,
    taken: &HashSet<String>,
    scope: Option<&str>,
) -> Result<Option<IndexFile>> {
    let mut pieces = previous.pieces();
    if f.bytes < previous.bytes || pieces.len() >= MAX_PARTS {
        return Ok(None);
    }
    for p in &pieces {
        if dest.size(&p.stored).await? != Some(p.bytes) {
            return Ok(None);
        }
    }
    if f.bytes > previous.bytes {
        let mut stored = format!("{}.from-{}", f.path, previous.bytes);
        if let Some(scope) = scope {
            stored = format!("{scope}/{stored}");
        }
        if taken.contains(&stored) {
            stored = format!("versions/{}/{stored}", image.id);
        }
        let sha256 = send(source, f, previous.bytes, dest, &stored).await?;
        pieces.push(Part { stored, bytes: f.bytes - previous.bytes, sha256 });
    }
    let last = pieces.last().map(|p| p.sha256.clone()).unwrap_or_default();
    Ok(Some(IndexFile { path: f.path.clone(), bytes: f.bytes, sha256: last, stored: None, parts: pieces }))
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct RestoreReport {
    pub index: Index,
    pub bytes: u64,
    /// Segment and pack files left in the bucket (see [`restore`]).
    pub left: usize,
    /// The WAL the copy's server shipped after its last push.
    pub shipped: ShippedReport,
}

/// Rebuilds the data directory `dir` (new or empty, not inside `src`) from
/// the backup in `src`, checking every file. Without `segments`, segment
/// and pack files stay in `src` (a server of `segments = "object-store"`
/// fetches them when read).
pub async fn restore(src: &Place, dir: &Path, progress: bool, segments: bool) -> Result<RestoreReport> {
    let index = Index::read(src).await?.ok_or_else(|| {
        BackupError::Refused(format!(
            "{} holds no {INDEX}: not a Tocsin backup, or its first backup never finished",
            src.name()
        ))
    })?;
    if dir.exists() {
        ensure!(dir.is_dir(), "{} is a file; give the path of a new directory", dir.display());
        ensure!(
            !dir.join(RESTORE_MARKER).exists(),
            "{} holds a restore that did not finish ({RESTORE_MARKER}); remove the directory and run the restore again",
            dir.display()
        );
        let mut entries = fs::read_dir(dir).at(|| format!("reading {}", dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty; restore into a new directory (a restore never writes over a data directory)",
            dir.display()
        );
    }
    if let Place::Dir(s) = src
        && let Ok(s) = fs::canonicalize(s)
    {
        // The target resolved as far as it exists (it may not yet).
        let target = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut base = target.clone();
        while !base.exists() && base.pop() {}
        let rest = target.strip_prefix(&base).map(Path::to_path_buf).unwrap_or_default();
        let resolved = fs::canonicalize(&base).unwrap_or(base).join(rest);
        ensure!(
            !resolved.starts_with(&s),
            "{} is inside the backup {}; the next backup there would remove it. Restore elsewhere",
            dir.display(),
            s.display()
        );
    }
    fs::create_dir_all(dir).at(|| format!("creating {}", dir.display()))?;
    let marker = dir.join(RESTORE_MARKER);
    fs::write(&marker, format!("restore from {} in progress\n", src.name()))
        .at(|| format!("writing {}", marker.display()))?;
    sync_dir(dir).at(|| format!("syncing {}", dir.display()))?;
    let mut bytes = 0u64;
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut last_report = Instant::now();
    let mut left = 0;
    for (n, f) in index.files.iter().enumerate() {
        if !segments && segment_file(&f.path) {
            left += 1;
            continue;
        }
        let to = dir.join(&f.path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).at(|| format!("creating {}", parent.display()))?;
            let mut p = to.clone();
            while p.pop() && p.starts_with(dir) && dirs.insert(p.clone()) {}
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&to)
            .at(|| format!("creating {}", to.display()))?;
        for piece in f.pieces() {
            let (got, sha256) = src.copy_into(&piece.stored, &mut out, piece.bytes).await?;
            ensure!(
                got == piece.bytes && sha256 == piece.sha256,
                "{} is damaged: {got} bytes with SHA-256 {sha256}, the index says {} bytes with {}; the restore \
                 stopped and {} is incomplete (the server will not start on it)",
                src.shown(&piece.stored),
                piece.bytes,
                piece.sha256,
                dir.display()
            );
            bytes += got;
        }
        out.sync_all().at(|| format!("syncing {}", to.display()))?;
        if progress && last_report.elapsed().as_secs() >= 2 {
            eprintln!("  {}/{} files, {bytes} bytes", n + 1, index.files.len());
            last_report = Instant::now();
        }
    }
    for d in &dirs {
        sync_dir(d).at(|| format!("syncing {}", d.display()))?;
    }
    let shipped = match &index.writer {
        Some(w) => restore_shipped(src, &index, &w.run, dir).await?,
        None => ShippedReport::default(),
    };
    // The directory matches this state of the copy: a server on it with the
    // copy's `--object-store` continues it.
    Synced::in_dir(dir).record(&[SyncedPoint::of(&index, src, false)])?;
    fs::remove_file(&marker).at(|| format!("removing {}", marker.display()))?;
    sync_dir(dir).at(|| format!("syncing {}", dir.display()))?;
    Ok(RestoreReport { index, bytes, left, shipped })
}

/// What [`restore_shipped`] rebuilt.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShippedReport {
    /// WAL files rebuilt, and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// Holes found: `(WAL file, end, next offset)`.
    pub holes: Vec<(u64, u64, u64)>,
    /// Why the shipped WAL was left out, if it was.
    pub left_out: Option<String>,
    /// Alerting state journal records replayed after the image's snapshot.
    pub alerting_records: usize,
}

/// Rebuilds in `dir/wal/` the WAL files that run `run` shipped after the
/// last WAL file the image of `index` holds: the writes it acknowledged
/// after that push. Storage opened on `dir` replays them. If the copy's
/// server pushed meanwhile (a restore of a live copy), that push may have
/// removed pieces read here: they are all left out, and the directory
/// holds the image's point.
pub async fn restore_shipped(src: &Place, index: &Index, run: &str, dir: &Path) -> Result<ShippedReport> {
    let mut by_file: std::collections::BTreeMap<u64, Vec<(u64, String)>> = Default::default();
    for p in shipped_after(src, index, run).await? {
        by_file.entry(p.file).or_default().push((p.offset, p.name));
    }
    let mut report = ShippedReport::default();
    let mut written = Vec::new();
    let (records, journal) = restore_shipped_alerting(src, run, dir).await?;
    report.alerting_records = records;
    written.extend(journal);
    if by_file.is_empty() && written.is_empty() {
        return Ok(report);
    }
    let wal_dir = dir.join("wal");
    fs::create_dir_all(&wal_dir).at(|| format!("creating {}", wal_dir.display()))?;
    for (file, pieces) in by_file {
        let mut read = Vec::with_capacity(pieces.len());
        for (offset, rel) in pieces {
            read.push((offset, src.read_whole(&rel, MAX_PIECE_BYTES).await?));
        }
        let rebuilt = tocsin_storage::wal::assemble(read);
        if let Some((end, next)) = rebuilt.hole {
            tracing::error!(
                copy = src.name(),
                run,
                wal_file = file,
                "the shipped WAL of file {file} has a hole from byte {end} to {next} (a piece is missing from the \
                 bucket): its records from byte {end} on are not replayed"
            );
            report.holes.push((file, end, next));
        }
        let path = wal_dir.join(tocsin_storage::wal::file_name(file));
        let bytes = rebuilt.bytes;
        write_atomic(&path, |e| e, |f| f.write_all(&bytes)).at(|| format!("writing {}", path.display()))?;
        written.push(path);
        report.files += 1;
        report.bytes += bytes.len() as u64;
    }
    let now = Index::read(src).await?;
    let moved = now.is_none_or(|now| {
        now.at.point_unix_ms != index.at.point_unix_ms
            || now.writer.as_ref().map(|w| &w.run) != index.writer.as_ref().map(|w| &w.run)
    });
    if moved {
        for path in &written {
            fs::remove_file(path).at(|| format!("removing {}", path.display()))?;
        }
        let why = "the copy's server pushed a newer copy during the restore, which may have removed pieces of it";
        tracing::warn!(copy = src.name(), "the shipped WAL and alerting journal are left out: {why}");
        report = ShippedReport { left_out: Some(why.into()), ..ShippedReport::default() };
    }
    sync_dir(&wal_dir).at(|| format!("syncing {}", wal_dir.display()))?;
    if report.alerting_records > 0 {
        let state_dir = dir.join("alerting");
        sync_dir(&state_dir).at(|| format!("syncing {}", state_dir.display()))?;
    }
    Ok(report)
}

/// A shipped piece of WAL in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShippedPiece {
    pub file: u64,
    pub offset: u64,
    pub name: String,
    /// Its size when listed: a piece whose upload timed out after it landed
    /// is sent again under its name, longer.
    pub size: u64,
}

/// Run `run`'s shipped pieces of WAL files after the last one the image of
/// `index` holds, sorted by file and offset.
pub async fn shipped_after(src: &Place, index: &Index, run: &str) -> Result<Vec<ShippedPiece>> {
    let mut pieces = Vec::new();
    for (rel, size) in src.list_sized(&shipped_folder(run)).await? {
        match parse_piece(&rel) {
            Some((file, offset)) if file > index.at.wal_closed => {
                pieces.push(ShippedPiece { file, offset, name: rel, size })
            }
            Some(_) => {}
            None => tracing::warn!(object = src.shown(&rel), "not a shipped WAL piece: left alone"),
        }
    }
    pieces.sort();
    Ok(pieces)
}

/// Removes run `run`'s shipped alerting journal records up to `upto` (all
/// of them with `None`); returns how many objects.
pub async fn remove_shipped_alerting(place: &Place, run: &str, upto: Option<u64>) -> Result<usize> {
    let mut removed = 0;
    for rel in place.list(&alerting_folder(run)).await? {
        // Named `<first>-<last>`, like WAL pieces `<file>-<offset>`.
        if parse_piece(&rel).is_some_and(|(_, last)| upto.is_none_or(|u| last <= u)) {
            place.remove(&rel).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes in `dir/alerting/` the journal records run `run` shipped after
/// the snapshot the restored image holds, as one journal file the alerting
/// engine replays when it opens; returns how many records.
async fn restore_shipped_alerting(src: &Place, run: &str, dir: &Path) -> Result<(usize, Option<PathBuf>)> {
    use tocsin_alerting::engine::ship;
    let state_dir = dir.join("alerting");
    let after = ship::snapshot_seq(&state_dir).map_err(|e| BackupError::Refused(e.to_string()))?;
    let mut pieces = Vec::new();
    for rel in src.list(&alerting_folder(run)).await? {
        match parse_piece(&rel) {
            Some((first, last)) if last > after => match src.read_whole(&rel, MAX_PIECE_BYTES).await {
                Ok(bytes) => pieces.push(ship::JournalPiece { first, last, bytes }),
                // Removed by a push of the live copy since the listing (the
                // check after the restore leaves the journal out then), or
                // unreadable: the records stop before it.
                Err(e) => tracing::warn!(object = src.shown(&rel), "a shipped alerting journal piece is not read: {e}"),
            },
            Some(_) => {}
            None => tracing::warn!(object = src.shown(&rel), "not a shipped alerting journal piece: left alone"),
        }
    }
    let assembled = ship::assemble(after, pieces);
    if let Some(why) = &assembled.stopped {
        tracing::error!(
            copy = src.name(),
            run,
            "the shipped alerting journal stops at record {}: {why}; the alerting state is restored up to there",
            assembled.last
        );
    }
    if assembled.records == 0 {
        return Ok((0, None));
    }
    fs::create_dir_all(&state_dir).at(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join(ship::journal_file_name(after + 1));
    write_atomic(&path, |e| e, |f| f.write_all(&assembled.bytes)).at(|| format!("writing {}", path.display()))?;
    Ok((assembled.records, Some(path)))
}

/// Removes run `run`'s shipped pieces of WAL files up to `upto` (all of
/// them with `None`); returns how many.
pub async fn remove_shipped(place: &Place, run: &str, upto: Option<u64>) -> Result<usize> {
    let mut removed = 0;
    for rel in place.list(&shipped_folder(run)).await? {
        if parse_piece(&rel).is_some_and(|(file, _)| upto.is_none_or(|u| file <= u)) {
            place.remove(&rel).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What [`fetch_into`] copied.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct FetchReport {
    pub files: usize,
    pub bytes: u64,
}

/// The files of a copy a reader holds, as last fetched or checked: path →
/// (bytes, SHA-256).
pub type Held = HashMap<String, (u64, String)>;

/// Brings the files of `dir` that `wanted` selects up to `index` (a
/// reader's copy of the writer's data directory, `--role reader`): each
/// listed file that `held` does not know to be the listed one, and that is
/// not already there with the listed SHA-256, is fetched into
/// `<dir>/.incoming/`, checked against the index and renamed into place.
/// Nothing is removed: the caller knows which old files may still be read.
pub async fn fetch_into(
    src: &Place,
    dir: &Path,
    index: &Index,
    wanted: impl Fn(&str) -> bool,
    held: &mut Held,
) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    for f in index.files.iter().filter(|f| wanted(&f.path)) {
        let fetched = fetch_file(src, dir, f, held.get(&f.path)).await?;
        held.insert(f.path.clone(), (f.bytes, f.sha256.clone()));
        if let Some(bytes) = fetched {
            report.bytes += bytes;
            report.files += 1;
        }
    }
    Ok(report)
}

/// Brings file `f` of a copy into `dir` (see [`fetch_into`]), unless it is
/// there: as `held` says it was fetched or checked, or found with the
/// listed SHA-256. Returns the bytes fetched, `None` when it was there.
pub async fn fetch_file(src: &Place, dir: &Path, f: &IndexFile, held: Option<&(u64, String)>) -> Result<Option<u64>> {
    let incoming = dir.join(".incoming");
    real_folders(dir, ".incoming/x")?;
    let to = dir.join(&f.path);
    let listed = (f.bytes, f.sha256.clone());
    let present = fs::symlink_metadata(&to).ok().filter(|m| m.is_file() && m.len() == f.bytes);
    if present.is_some() && held == Some(&listed) {
        return Ok(None);
    }
    if present.is_some() && f.parts.is_empty() && held.is_none() {
        // Left by an earlier run of this reader: checked once.
        let mut file = fs::File::open(&to).at(|| format!("opening {}", to.display()))?;
        let mut hash = Sha256::new();
        std::io::copy(&mut file, &mut HashWriter(&mut hash)).at(|| format!("reading {}", to.display()))?;
        if hex(&hash.finalize()) == f.sha256 {
            return Ok(None);
        }
    }
    real_folders(dir, &f.path)?;
    let part = incoming.join(format!("{}.part", f.path.replace('/', "%")));
    match fs::remove_file(&part) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(|| format!("removing {}", part.display())),
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .at(|| format!("creating {}", part.display()))?;
    let mut bytes = 0;
    let copied = async {
        for piece in f.pieces() {
            let (got, sha256) = src.copy_into(&piece.stored, &mut out, piece.bytes).await?;
            ensure!(
                got == piece.bytes && sha256 == piece.sha256,
                "{} is damaged or was replaced while being read: {got} bytes with SHA-256 {sha256}, the index \
                 says {} bytes with {}",
                src.shown(&piece.stored),
                piece.bytes,
                piece.sha256
            );
            bytes += got;
        }
        Ok(())
    }
    .await;
    drop(out);
    if let Err(e) = copied {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    fs::rename(&part, &to).at(|| format!("moving {} to {}", part.display(), to.display()))?;
    Ok(Some(bytes))
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct IndexFile {
    /// Where it goes in the data directory.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// Where it is in the backup, when not at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    /// An append-only file ([`APPEND_ONLY`]) kept as pieces, each holding
    /// what was appended between two backups; their concatenation is the
    /// file (`sha256` is then the last piece's, `stored` unused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// A piece of an append-only file.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Part {
    pub stored: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Files that only grow (the audit log): a backup sends what was appended
/// since the last one as a new piece instead of the whole file again.
const APPEND_ONLY: &[&str] = &["audit/audit.jsonl"];
/// Past this many pieces, the whole file is sent again as one.
const MAX_PARTS: usize = 64;

impl IndexFile {
    pub fn stored(&self) -> &str {
        self.stored.as_deref().unwrap_or(&self.path)
    }

    /// Where its bytes are, in order.
    pub fn pieces(&self) -> Vec<Part> {
        if self.parts.is_empty() {
            vec![Part { stored: self.stored().to_string(), bytes: self.bytes, sha256: self.sha256.clone() }]
        } else {
            self.parts.clone()
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Index {
    #[serde(flatten)]
    pub at: BackupPoint,
    /// The server keeping this copy, for a copy in `[storage] object_store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterRun>,
    /// Seconds the backup took, and what it copied and reused.
    pub seconds: f64,
    pub copied_files: usize,
    pub copied_bytes: u64,
    pub reused_files: usize,
    pub files: Vec<IndexFile>,
    /// In a server's copy: segment and pack files that earlier copies
    /// listed and this one does not (a compaction replaced them), kept in
    /// the bucket for [`LINGER_MS`] after they left, for the readers that
    /// fetch files as queries read them and may still plan on an earlier
    /// copy. Not part of the copy: a restore does not take them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lingering: Vec<Lingering>,
}

/// A file a server's copy no longer lists, still in the bucket.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Lingering {
    #[serde(flatten)]
    pub file: IndexFile,
    /// Since when no copy lists it (Unix milliseconds of the copy's point).
    pub since_unix_ms: i64,
}

/// How long a server's copy keeps segment and pack files it no longer lists
/// (see [`Index::lingering`]).
pub const LINGER_MS: i64 = 5 * 60 * 1000;

/// Whether `path` is a segment or pack file of a data directory.
pub(crate) fn segment_file(path: &str) -> bool {
    path.starts_with("segments/") || path.starts_with("packs/")
}

/// The files `previous` (the copy a server's push replaces) and the ones
/// it kept listed as lingering that the copy listing `files` at `now`
/// still keeps in the bucket.
fn lingering(previous: &Index, files: &[IndexFile], now: i64) -> Vec<Lingering> {
    let listed: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut kept: Vec<Lingering> = previous
        .lingering
        .iter()
        .filter(|l| !listed.contains(l.file.path.as_str()) && now.saturating_sub(l.since_unix_ms) < LINGER_MS)
        .cloned()
        .collect();
    kept.extend(
        previous
            .files
            .iter()
            .filter(|f| segment_file(&f.path) && !listed.contains(f.path.as_str()))
            .map(|f| Lingering { file: f.clone(), since_unix_ms: now }),
    );
    kept
}

impl Index {
    /// The files listed and those lingering: what the bucket keeps.
    pub fn all_files(&self) -> impl Iterator<Item = &IndexFile> {
        self.files.iter().chain(self.lingering.iter().map(|l| &l.file))
    }

    pub async fn read(place: &Place) -> Result<Option<Index>> {
        Ok(Self::read_tagged(place).await?.map(|(index, _)| index))
    }

    /// The index and, in a bucket, its ETag.
    pub async fn read_tagged(place: &Place) -> Result<Option<(Index, Option<String>)>> {
        let Some((text, tag)) = place.read_tagged(INDEX).await? else { return Ok(None) };
        let shown = place.shown(INDEX);
        let index: Index = serde_json::from_slice(&text).at(|| format!("{shown} is not a Tocsin backup index"))?;
        ensure!(
            index.at.format == BACKUP_FORMAT,
            "{shown} has format {}; this build reads format {BACKUP_FORMAT}",
            index.at.format
        );
        for f in &index.files {
            let pieces = f.pieces();
            ensure!(
                pieces.iter().map(|p| p.bytes).sum::<u64>() == f.bytes,
                "{shown}: the pieces of {:?} do not add up to its {} bytes",
                f.path,
                f.bytes
            );
            for p in std::iter::once(&f.path).chain(pieces.iter().map(|p| &p.stored)) {
                ensure!(plain(p), "{shown} lists {p:?}, which is not a path inside the backup");
                ensure!(p != INDEX && p != LOCK, "{shown} lists {p:?}, which a backup keeps for itself");
            }
        }
        Ok(Some((index, tag)))
    }
}

/// A relative path of plain names (no `..`, no root, no empty part): one the
/// index may name and the server may send.
fn plain(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && path.split('/').all(|p| !p.is_empty())
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Where a backup is: a local directory or a bucket.
pub enum Place {
    Dir(PathBuf),
    Bucket(ObjectLocation),
}

impl Place {
    /// `s3://BUCKET/PREFIX`, `file:///PATH` or a path.
    pub fn parse(s: &str) -> Result<Place> {
        if objects::is_object_url(s) {
            Ok(Place::Bucket(objects::open(s)?))
        } else {
            Ok(Place::Dir(PathBuf::from(s.strip_prefix("file://").unwrap_or(s))))
        }
    }

    /// The directories or prefixes that hold it, nearest first.
    fn ancestors(&self) -> Vec<Place> {
        match self {
            Place::Dir(d) => {
                let d = std::path::absolute(d).unwrap_or_else(|_| d.clone());
                d.ancestors().skip(1).map(|a| Place::Dir(a.to_path_buf())).collect()
            }
            Place::Bucket(b) => {
                let parts: Vec<_> = b.prefix.parts().collect();
                (0..parts.len())
                    .rev()
                    .map(|n| {
                        let prefix: object_store::path::Path = parts[..n].iter().cloned().collect();
                        let url = b.url.trim_end_matches('/');
                        let url = url.rsplitn(parts.len() - n + 1, '/').last().unwrap_or(url).to_string();
                        Place::Bucket(ObjectLocation { store: Arc::clone(&b.store), prefix, url })
                    })
                    .collect()
            }
        }
    }

    /// `rel` inside it, for messages.
    pub fn shown(&self, rel: &str) -> String {
        match self {
            Place::Dir(d) => d.join(rel).display().to_string(),
            Place::Bucket(b) => format!("{}/{rel}", b.url.trim_end_matches('/')),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Place::Dir(d) => d.display().to_string(),
            Place::Bucket(b) => b.url.clone(),
        }
    }

    /// The whole of a small file (the index), if present.
    /// (In a bucket, with the object's ETag.)
    async fn read_tagged(&self, rel: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let too_large = |size: u64| {
            BackupError::Refused(format!(
                "{} holds {size} bytes, more than an index of a backup can ({MAX_INDEX_BYTES})",
                self.shown(rel)
            ))
        };
        match self {
            Place::Dir(d) => {
                use std::io::Read;
                let path = d.join(rel);
                let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(no_links(e)).at(|| format!("reading {}", path.display())),
                };
                let mut text = Vec::new();
                file.take(MAX_INDEX_BYTES + 1).read_to_end(&mut text).at(|| format!("reading {}", path.display()))?;
                if text.len() as u64 > MAX_INDEX_BYTES {
                    return Err(too_large(text.len() as u64));
                }
                Ok(Some((text, None)))
            }
            Place::Bucket(b) => match b.store.get(&b.object(rel)).await {
                Ok(got) if got.meta.size > MAX_INDEX_BYTES => Err(too_large(got.meta.size)),
                Ok(got) => {
                    let tag = got.meta.e_tag.clone();
                    Ok(Some((got.bytes().await.at(|| format!("reading {}", self.shown(rel)))?.to_vec(), tag)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e).at(|| format!("reading {}", self.shown(rel))),
            },
        }
    }

    /// The size of `rel`, if it is there.
    pub(crate) async fn size(&self, rel: &str) -> Result<Option<u64>> {
        match self {
            Place::Dir(d) => Ok(fs::metadata(d.join(rel)).ok().filter(|m| m.is_file()).map(|m| m.len())),
            Place::Bucket(b) => match b.store.head(&b.object(rel)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e).at(|| format!("looking up {}", self.shown(rel))),
            },
        }
    }

    /// Whether anything but the lock is there.
    /// Whether it holds nothing but its lock and what servers' first pushes
    /// that did not finish left under `runs/` (or does not exist yet).
    pub async fn is_empty(&self) -> Result<bool> {
        match self {
            Place::Dir(d) => match fs::read_dir(d) {
                Ok(entries) => Ok(entries
                    .filter_map(std::result::Result::ok)
                    .all(|e| e.file_name() == LOCK || e.file_name() == RUNS)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                Err(e) => Err(e).at(|| format!("reading {}", d.display())),
            },
            Place::Bucket(b) => {
                let runs = b.object(RUNS);
                let mut listed = b.store.list(Some(&b.prefix));
                while let Some(meta) = listed.next().await {
                    let meta = meta.at(|| format!("listing {}", b.url))?;
                    if !meta.location.prefix_matches(&runs) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Writes a shipped piece: durable once this returns.
    pub async fn put_piece(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        if let Place::Dir(d) = self {
            real_folders(d, rel)?;
        }
        self.replace(rel, bytes).await
    }

    /// The files under folder `rel` (relative paths, sorted).
    async fn list(&self, rel: &str) -> Result<Vec<String>> {
        Ok(self.list_sized(rel).await?.into_iter().map(|(name, _)| name).collect())
    }

    /// [`Place::list`], with each object's size.
    pub(crate) async fn list_sized(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        match self {
            Place::Dir(d) => {
                let dir = d.join(rel);
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e).at(|| format!("reading {}", dir.display())),
                };
                for e in entries {
                    let e = e.at(|| format!("reading {}", dir.display()))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    // A write that did not finish leaves its temporary file.
                    if e.file_type().is_ok_and(|t| t.is_file()) && !name.starts_with('.') && !name.ends_with(".tmp") {
                        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                        out.push((format!("{rel}/{name}"), size));
                    }
                }
            }
            Place::Bucket(b) => {
                let mut listed = b.store.list(Some(&b.object(rel)));
                while let Some(meta) = listed.next().await {
                    let meta = meta.at(|| format!("listing {}", self.shown(rel)))?;
                    out.extend(b.relative(&meta.location).map(|name| (name, meta.size)));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The whole of `rel`, refused over `limit` bytes.
    pub(crate) async fn read_whole(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let too_large =
            |size: u64| BackupError::Refused(format!("{} holds {size} bytes, more than {limit}", self.shown(rel)));
        match self {
            Place::Dir(d) => {
                use std::io::Read;
                let path = d.join(rel);
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(no_links)
                    .at(|| format!("reading {}", path.display()))?;
                let mut bytes = Vec::new();
                file.take(limit + 1).read_to_end(&mut bytes).at(|| format!("reading {}", path.display()))?;
                if bytes.len() as u64 > limit {
                    return Err(too_large(bytes.len() as u64));
                }
                Ok(bytes)
            }
            Place::Bucket(b) => {
                let got = b.store.get(&b.object(rel)).await.at(|| format!("reading {}", self.shown(rel)))?;
                if got.meta.size > limit {
                    return Err(too_large(got.meta.size));
                }
                Ok(got.bytes().await.at(|| format!("reading {}", self.shown(rel)))?.to_vec())
            }
        }
    }

    /// Removes `rel` (gone already is fine).
    async fn remove(&self, rel: &str) -> Result<()> {
        match self {
            Place::Dir(d) => match fs::remove_file(d.join(rel)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).at(|| format!("removing {}", d.join(rel).display())),
            },
            Place::Bucket(b) => match b.store.delete(&b.object(rel)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e).at(|| format!("removing {}", self.shown(rel))),
            },
        }
    }

    /// Replaces `rel` atomically with `bytes`.
    async fn replace(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Place::Dir(d) => {
                let path = d.join(rel);
                write_atomic(&path, |e| e, |f| f.write_all(&bytes)).at(|| format!("writing {}", path.display()))
            }
            Place::Bucket(b) => {
                b.store
                    .put(&b.object(rel), PutPayload::from(bytes))
                    .await
                    .at(|| format!("writing {}", self.shown(rel)))?;
                Ok(())
            }
        }
    }

    /// Starts writing `rel` (replacing it once finished).
    async fn sink(&self, rel: &str) -> Result<Sink> {
        match self {
            Place::Dir(d) => {
                let target = d.join(rel);
                real_folders(d, rel)?;
                let part =
                    target.with_file_name(format!("{}.part", target.file_name().unwrap_or_default().to_string_lossy()));
                // A leftover (or a planted link) is removed, not written through.
                match fs::remove_file(&part) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at(|| format!("removing {}", part.display())),
                }
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&part)
                    .at(|| format!("creating {}", part.display()))?;
                Ok(Sink::File { file, part, target })
            }
            Place::Bucket(b) => Ok(Sink::Object {
                store: Arc::clone(&b.store),
                path: b.object(rel),
                shown: self.shown(rel),
                buffer: Vec::new(),
                upload: None,
            }),
        }
    }

    /// Removes what the index does not list (segments a compaction replaced,
    /// WAL files persisted since, leftovers of a backup that failed).
    /// Returns how many.
    async fn prune(&self, index: &Index, own: Option<(Option<&Index>, &str)>) -> Result<usize> {
        match self {
            Place::Dir(d) => prune_dir(d, index),
            Place::Bucket(b) => {
                // For a server: what the replaced index listed, and what lies
                // under its own run's folder (or a version of it).
                let removable: Option<(HashSet<object_store::path::Path>, String)> = own.map(|(replaced, scope)| {
                    let listed = replaced
                        .map(|p| p.all_files().flat_map(IndexFile::pieces).map(|x| b.object(&x.stored)).collect())
                        .unwrap_or_default();
                    (listed, format!("{scope}/"))
                });
                let may_remove = |location: &object_store::path::Path| match &removable {
                    None => true,
                    Some((listed, scope)) => {
                        listed.contains(location)
                            || b.relative(location).is_some_and(|rel| {
                                rel.starts_with(scope.as_str())
                                    || rel
                                        .strip_prefix("versions/")
                                        .and_then(|r| r.split_once('/'))
                                        .is_some_and(|(_, r)| r.starts_with(scope.as_str()))
                            })
                    }
                };
                let keep: HashSet<object_store::path::Path> = index
                    .all_files()
                    .flat_map(IndexFile::pieces)
                    .map(|p| b.object(&p.stored))
                    .chain([b.object(INDEX)])
                    .collect();
                let mut listed = b.store.list(Some(&b.prefix));
                let mut gone = Vec::new();
                while let Some(meta) = listed.next().await {
                    let meta = meta.at(|| format!("listing {}", b.url))?;
                    if b.relative(&meta.location).is_some_and(|rel| is_shipped(&rel)) {
                        continue;
                    }
                    if !keep.contains(&meta.location) && may_remove(&meta.location) {
                        gone.push(meta.location);
                    }
                }
                for path in &gone {
                    b.store.delete(path).await.at(|| format!("removing {path} from {}", b.url))?;
                }
                Ok(gone.len())
            }
        }
    }

    /// Copies `rel` into `out`, returning its bytes and SHA-256. The index
    /// says it holds `expected` bytes: one more is not copied (the sizes
    /// then differ, which the caller reports), and neither is a symbolic
    /// link (a backup never holds one).
    async fn copy_into(&self, rel: &str, out: &mut fs::File, expected: u64) -> Result<(u64, String)> {
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let limit = expected.saturating_add(1);
        match self {
            Place::Dir(d) => {
                use std::io::Read;
                let path = d.join(rel);
                let src = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(no_links)
                    .at(|| format!("opening {}", path.display()))?;
                let mut src = src.take(limit);
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    let n = src.read(&mut buf).at(|| format!("reading {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    out.write_all(&buf[..n]).at(|| "writing the restored file".into())?;
                    bytes += n as u64;
                }
            }
            Place::Bucket(b) => {
                let got = b.store.get(&b.object(rel)).await.at(|| format!("reading {}", self.shown(rel)))?;
                let mut stream = got.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.at(|| format!("reading {}", self.shown(rel)))?;
                    let chunk = &chunk[..chunk.len().min(usize::try_from(limit - bytes).unwrap_or(usize::MAX))];
                    hash.update(chunk);
                    out.write_all(chunk).at(|| "writing the restored file".into())?;
                    bytes += chunk.len() as u64;
                    if bytes >= limit {
                        break;
                    }
                }
            }
        }
        Ok((bytes, hex(&hash.finalize())))
    }
}

/// Creates the folders of `rel` under `root`, refusing any that is a
/// symbolic link: a backup writes only inside its own directory.
fn real_folders(root: &Path, rel: &str) -> Result<()> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                bail!("{} is a symbolic link; a backup writes only into real folders of its directory", dir.display())
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} is in the way: it should be a folder of the backup", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&dir).at(|| format!("creating {}", dir.display()))?;
            }
            Err(e) => return Err(e).at(|| format!("reading {}", dir.display())),
        }
    }
    Ok(())
}

/// Objects up to this size are sent with one request; larger ones in
/// parts of this size.
const PART_BYTES: usize = 8 << 20;

/// A file being written into a [`Place`].
enum Sink {
    File {
        file: fs::File,
        part: PathBuf,
        target: PathBuf,
    },
    Object {
        store: Arc<dyn ObjectStore>,
        path: object_store::path::Path,
        shown: String,
        buffer: Vec<u8>,
        upload: Option<WriteMultipart>,
    },
}

impl Sink {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        match self {
            Sink::File { file, part, .. } => file.write_all(chunk).at(|| format!("writing {}", part.display())),
            Sink::Object { store, path, shown, buffer, upload } => {
                if let Some(up) = upload {
                    up.wait_for_capacity(4).await.at(|| format!("uploading {shown}"))?;
                    up.write(chunk);
                    return Ok(());
                }
                buffer.extend_from_slice(chunk);
                if buffer.len() > PART_BYTES {
                    let started = store.put_multipart(path).await.at(|| format!("uploading {shown}"))?;
                    let mut up = WriteMultipart::new_with_chunk_size(started, PART_BYTES);
                    up.write(buffer);
                    buffer.clear();
                    *upload = Some(up);
                }
                Ok(())
            }
        }
    }

    /// Makes the file durable under its name.
    async fn finish(self) -> Result<()> {
        match self {
            Sink::File { file, part, target } => {
                file.sync_all().at(|| format!("syncing {}", part.display()))?;
                drop(file);
                fs::rename(&part, &target).at(|| format!("renaming {} to {}", part.display(), target.display()))
            }
            Sink::Object { store, path, shown, buffer, upload } => match upload {
                Some(up) => up.finish().await.map(|_| ()),
                None => store.put(&path, PutPayload::from(buffer)).await.map(|_| ()),
            }
            .at(|| format!("uploading {shown}")),
        }
    }
}

/// An open with `O_NOFOLLOW` that met a symbolic link says so.
fn no_links(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        std::io::Error::new(e.kind(), "it is a symbolic link, which a copy never holds: refused")
    } else {
        e
    }
}

/// [`Place::prune`] of a directory.
fn prune_dir(dest: &Path, index: &Index) -> Result<usize> {
    let keep: HashSet<PathBuf> = index.all_files().flat_map(IndexFile::pieces).map(|p| dest.join(p.stored)).collect();
    let mut removed = 0;
    let mut stack = vec![dest.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).at(|| format!("reading {}", dir.display()))? {
            let e = e.at(|| format!("reading {}", dir.display()))?;
            let path = e.path();
            // Not followed: a link is removed as a link.
            let kind = e.file_type().at(|| format!("reading {}", e.path().display()))?;
            if dir == dest && (e.file_name() == INDEX || e.file_name() == LOCK) {
                continue;
            }
            if path.strip_prefix(dest).ok().and_then(Path::to_str).is_some_and(is_shipped) {
                continue;
            }
            if kind.is_dir() {
                // A data directory someone put here (a server's `LOCK`, a
                // restore's marker) is not the backup's to remove.
                if path.join("LOCK").exists() || path.join(RESTORE_MARKER).exists() {
                    eprintln!("warning: {} looks like a data directory; left alone", path.display());
                    continue;
                }
                stack.push(path.clone());
                dirs.push(path);
            } else if !keep.contains(&path) {
                fs::remove_file(&path).at(|| format!("removing {}", path.display()))?;
                removed += 1;
            }
        }
    }
    // Empty folders go too, deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
    Ok(removed)
}

/// Locks `dest` for a backup and writes `holder` into the lock file; or,
/// if another holds it, returns what that one wrote.
fn lock(dest: &Path, holder: &str) -> Result<std::result::Result<fs::File, String>> {
    let path = dest.join(LOCK);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .at(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut held = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, 256), &mut held);
        return Ok(Err(held));
    }
    file.set_len(0).at(|| format!("writing {}", path.display()))?;
    file.write_all(format!("{holder}\n").as_bytes()).at(|| format!("writing {}", path.display()))?;
    Ok(Ok(file))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image: the files of a folder, listed with the lengths given.
    struct Folder(PathBuf);

    impl ImageFiles for Folder {
        async fn open(&self, f: &BackupFile, offset: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
            let all = fs::read(self.0.join(&f.path)).at(|| f.path.clone())?;
            let end = usize::try_from(f.bytes).unwrap_or(usize::MAX).min(all.len());
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(end);
            Ok(futures::stream::iter([Ok(Bytes::copy_from_slice(&all[start..end]))]).boxed())
        }

        fn local(&self, f: &BackupFile) -> Option<PathBuf> {
            Some(self.0.join(&f.path))
        }
    }

    fn image(id: &str, dir: &Path, paths: &[&str]) -> BackupImage {
        let files = paths
            .iter()
            .map(|p| BackupFile { path: p.to_string(), bytes: fs::metadata(dir.join(p)).expect("file").len() })
            .collect();
        BackupImage {
            at: BackupPoint {
                format: BACKUP_FORMAT,
                instance: "i1".into(),
                point_unix_ms: 0,
                point: "then".into(),
                server_version: "test".into(),
                wal_persisted_upto: 0,
                wal_closed: 0,
                segments: 0,
                rules: false,
                auth: false,
                alerting_seq: 0,
            },
            id: id.into(),
            data_dir: String::new(),
            files,
        }
    }

    /// The audit log grows between backups: each sends only what was
    /// appended, as a piece; the restore joins the pieces; a changed
    /// manifest goes under versions/ while the old one is still listed.
    #[tokio::test]
    async fn appended_files_travel_as_pieces_and_come_back_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("audit")).expect("mkdir");
        fs::write(src.join("manifest.json"), "m1").expect("write");
        let mut audit = String::new();
        let dest = Place::Dir(tmp.path().join("dest"));
        let mut sent = Vec::new();
        for round in 0..5 {
            audit.push_str(&format!("{{\"entry\":{round}}}\n"));
            fs::write(src.join("audit/audit.jsonl"), &audit).expect("write");
            fs::write(src.join("manifest.json"), format!("m{round}")).expect("write");
            let img = image(&format!("b{round}"), &src, &["manifest.json", "audit/audit.jsonl"]);
            let report = push(&img, &Folder(src.clone()), &dest, false, false, None).await.expect("push");
            sent.push(report.copied_bytes);
            let entry = report.index.files.iter().find(|f| f.path == "audit/audit.jsonl").expect("audit");
            assert_eq!(entry.pieces().len(), round + 1, "one piece per backup: {entry:?}");
        }
        // Each backup after the first sends the manifest and one new line.
        assert!(sent[1..].iter().all(|&b| b == 2 + 12), "{sent:?}");
        let restored = tmp.path().join("restored");
        let report = restore(&dest, &restored, false, true).await.expect("restore");
        assert_eq!(fs::read_to_string(restored.join("audit/audit.jsonl")).expect("read"), audit);
        assert_eq!(fs::read_to_string(restored.join("manifest.json")).expect("read"), "m4");
        assert_eq!(report.index.files.len(), 2);

        // A damaged piece is named.
        let piece = report.index.files[1].pieces()[2].stored.clone();
        fs::write(tmp.path().join("dest").join(&piece), "{\"entry\":X}\n").expect("write");
        let err = restore(&dest, &tmp.path().join("again"), false, true).await.expect_err("damaged");
        assert!(err.to_string().contains(&piece) && err.to_string().contains("damaged"), "{err}");
    }

    /// A file that shrank, or has too many pieces, is sent whole again.
    #[tokio::test]
    async fn a_rewritten_or_fragmented_log_is_sent_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("audit")).expect("mkdir");
        let dest = Place::Dir(tmp.path().join("dest"));
        let mut audit = String::new();
        let mut pieces = Vec::new();
        for round in 0..MAX_PARTS + 2 {
            audit.push_str("x\n");
            fs::write(src.join("audit/audit.jsonl"), &audit).expect("write");
            let img = image(&format!("b{round}"), &src, &["audit/audit.jsonl"]);
            let report = push(&img, &Folder(src.clone()), &dest, false, false, None).await.expect("push");
            pieces.push(report.index.files[0].pieces().len());
        }
        assert_eq!(pieces.iter().max(), Some(&MAX_PARTS));
        assert!(pieces.ends_with(&[MAX_PARTS, 1, 2]), "{pieces:?}");
        fs::write(src.join("audit/audit.jsonl"), "y\n").expect("write");
        let img = image("shrunk", &src, &["audit/audit.jsonl"]);
        let report = push(&img, &Folder(src.clone()), &dest, false, false, None).await.expect("push");
        assert_eq!(report.index.files[0].pieces().len(), 1);
        let restored = tmp.path().join("restored");
        restore(&dest, &restored, false, true).await.expect("restore");
        assert_eq!(fs::read_to_string(restored.join("audit/audit.jsonl")).expect("read"), "y\n");
    }

    #[tokio::test]
    async fn a_copy_is_read_no_further_than_listed_and_never_through_a_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("copy");
        fs::create_dir_all(src.join("segments")).expect("mkdir");
        fs::write(src.join("segments/1.parquet"), vec![7u8; 100_000]).expect("write");
        std::os::unix::fs::symlink("/dev/zero", src.join("segments/2.parquet")).expect("link");
        let place = Place::Dir(src.clone());
        let mut out = fs::File::create(tmp.path().join("out")).expect("out");
        let (got, _) = place.copy_into("segments/1.parquet", &mut out, 10).await.expect("copy");
        assert_eq!(got, 11, "one byte past the listed size tells the sizes differ");
        let err = place.copy_into("segments/2.parquet", &mut out, 10).await.expect_err("a link");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        // The index: a link, or one too large, is refused.
        std::os::unix::fs::symlink("/dev/zero", src.join(INDEX)).expect("link");
        assert!(Index::read(&place).await.is_err());

        // fetch_into: a file the index lists shorter than it is fails, and
        // leaves no part behind.
        fs::remove_file(src.join(INDEX)).expect("rm");
        let index = Index {
            at: image("i", &src, &["segments/1.parquet"]).at,
            writer: None,
            seconds: 0.0,
            copied_files: 0,
            copied_bytes: 0,
            reused_files: 0,
            lingering: Vec::new(),
            files: vec![IndexFile {
                path: "segments/1.parquet".into(),
                bytes: 50,
                sha256: "0".repeat(64),
                stored: None,
                parts: vec![],
            }],
        };
        let dir = tmp.path().join("reader");
        fs::create_dir_all(&dir).expect("mkdir");
        let err = fetch_into(&place, &dir, &index, |_| true, &mut Held::new()).await.expect_err("too long");
        assert!(err.to_string().contains("51 bytes"), "{err}");
        assert_eq!(fs::read_dir(dir.join(".incoming")).expect("incoming").count(), 0, "no part left");
        assert!(!dir.join("segments/1.parquet").exists());
    }

    /// A server pushes only over the state of the copy its data directory
    /// last pushed or started from: a former writer whose copy another
    /// server took over is refused instead of rolling the copy back.
    #[tokio::test]
    async fn a_server_pushes_only_over_the_state_of_the_copy_it_matches() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("manifest.json"), "m").expect("write");
        let dest = Place::Dir(tmp.path().join("dest"));
        let run = |r: &str| WriterRun { run: r.into(), host: format!("host-{r}"), interval_ms: 1000, stopped: false };
        let (a, b) = (run("a"), run("b"));
        let a_dir = tmp.path().join("a");
        fs::create_dir_all(&a_dir).expect("mkdir");
        let (a_synced, b_synced) = (Synced::in_dir(&a_dir), Synced::in_dir(&tmp.path().join("b")));
        let at = |ms: i64| {
            let mut img = image("x", &src, &["manifest.json"]);
            img.at.point_unix_ms = ms;
            img
        };
        let state = |r: &str, ms: i64, pushed: bool| SyncedPoint {
            run: Some(r.into()),
            point_unix_ms: ms,
            place: dest.name(),
            pushed,
        };
        let claim = |me, synced| Claim { me, first: true, since_ms: 0, synced, lease: None };

        push(&at(100_000), &Folder(src.clone()), &dest, false, false, Some(claim(&a, &a_synced))).await.expect("a");
        assert_eq!(a_synced.read().expect("record"), vec![state("a", 100_000, true)]);
        // What a server sends goes under its run's folder.
        let index = Index::read(&dest).await.expect("index").expect("some");
        assert_eq!(index.files[0].stored(), "runs/a/manifest.json");
        // B starts from A's copy (a restore records its state) and pushes.
        restore(&dest, &tmp.path().join("b"), false, true).await.expect("restore");
        assert_eq!(b_synced.read().expect("record"), vec![state("a", 100_000, false)]);
        push(&at(200_000), &Folder(src.clone()), &dest, false, false, Some(claim(&b, &b_synced))).await.expect("b");

        // A, resumed or restarted on its own directory, is behind the copy.
        let a_again = run("a2");
        let refused =
            push(&at(300_000), &Folder(src.clone()), &dest, false, false, Some(claim(&a_again, &a_synced))).await;
        match refused {
            Err(BackupError::TakenOver(why)) => {
                assert!(why.contains("host-b") && why.contains("roll the copy back"), "{why}")
            }
            other => panic!("A pushed over B's copy: {other:?}"),
        }
        assert_eq!(Index::read(&dest).await.expect("index").expect("some").at.point_unix_ms, 200_000);

        // B crashed between the two writes of a push's record: it holds the
        // state the push replaced and the one it would have written.
        b_synced.record(&[state("b", 200_000, true), state("b", 250_000, true)]).expect("record");
        let b_again = run("b2");
        push(&at(400_000), &Folder(src.clone()), &dest, false, false, Some(claim(&b_again, &b_synced)))
            .await
            .expect("b2");
        assert_eq!(b_synced.read().expect("record"), vec![state("b2", 400_000, true)]);
        // Restarted at once on its own directory, it does not wait for its
        // own last push to age.
        let b_third = run("b3");
        push(&at(401_000), &Folder(src.clone()), &dest, false, false, Some(claim(&b_third, &b_synced)))
            .await
            .expect("b3 pushes over its own directory's push");

        // `tocsin backup` into a server's copy would mix the two.
        let backup = push(&at(500_000), &Folder(src.clone()), &dest, false, false, None).await;
        assert!(backup.expect_err("refused").to_string().contains("the copy a server keeps"));
        // So would a backup into a folder of it (the next push removes it).
        let inside = Place::Dir(tmp.path().join("dest/sub"));
        let backup = push(&at(500_000), &Folder(src.clone()), &inside, false, false, None).await;
        assert!(backup.expect_err("refused").to_string().contains("is inside"));
    }

    /// On a bucket, a server's push removes only what the index it replaced
    /// listed and its own run's leftovers: another server's files (one that
    /// took the copy over while this push stalled) stay.
    #[tokio::test]
    async fn a_servers_push_removes_only_its_own_and_the_replaced_indexs_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("manifest.json"), "m").expect("write");
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let dest = Place::Bucket(ObjectLocation {
            store: Arc::clone(&store),
            prefix: object_store::path::Path::from("copy"),
            url: "s3://test/copy".into(),
        });
        let a = WriterRun { run: "a".into(), host: "h".into(), interval_ms: 1000, stopped: false };
        fs::create_dir_all(tmp.path().join("a")).expect("mkdir");
        let synced = Synced::in_dir(&tmp.path().join("a"));
        let claim = Claim { me: &a, first: true, since_ms: 0, synced: &synced, lease: None };
        let mut img = image("x", &src, &["manifest.json"]);
        img.at.point_unix_ms = 100_000;
        push(&img, &Folder(src.clone()), &dest, false, false, Some(claim)).await.expect("first push");
        let put = |rel: &str| {
            let (store, path) = (Arc::clone(&store), object_store::path::Path::from(format!("copy/{rel}")));
            async move { store.put(&path, PutPayload::from_static(b"x")).await.expect("put") }
        };
        put("runs/b/wal/1.wal").await;
        put("runs/a/left-over").await;
        fs::write(src.join("manifest.json"), "m2").expect("write");
        let mut img = image("x", &src, &["manifest.json"]);
        img.at.point_unix_ms = 200_000;
        let claim = Claim { me: &a, first: false, since_ms: 0, synced: &synced, lease: None };
        push(&img, &Folder(src.clone()), &dest, false, false, Some(claim)).await.expect("second push");
        let exists = |rel: &str| {
            let (store, path) = (Arc::clone(&store), object_store::path::Path::from(format!("copy/{rel}")));
            async move { store.head(&path).await.is_ok() }
        };
        assert!(exists("runs/b/wal/1.wal").await, "another server's file stays");
        assert!(!exists("runs/a/left-over").await, "this run's leftover goes");
        assert!(!exists("runs/a/manifest.json").await, "the replaced index's file no longer listed goes");
    }

    /// A push paused half-way holds the directory's lock: a server taking
    /// the copy over passes it once the holder has been quiet for its
    /// window; a fresh holder, or a `tocsin backup`, keeps it.
    #[tokio::test]
    async fn a_lock_left_by_a_quiet_server_is_passed_only_by_a_server() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("manifest.json"), "m").expect("write");
        let dest_dir = tmp.path().join("dest");
        fs::create_dir_all(&dest_dir).expect("mkdir");
        let dest = Place::Dir(dest_dir.clone());
        let me = WriterRun { run: "b".into(), host: "h".into(), interval_ms: 1000, stopped: false };
        let synced = Synced::in_dir(&tmp.path().join("data"));
        fs::create_dir_all(tmp.path().join("data")).expect("mkdir");
        let mut img = image("x", &src, &["manifest.json"]);
        img.at.point_unix_ms = 100_000;
        // (holder, this server's start, whether it passes, what it says)
        let cases = [
            ("server a 99000", 99_500, false, "server a 99000"),
            // A lock taken after this server started, before its first push:
            // that server is taking the copy over.
            ("server a 99000", 0, false, "taking the copy over"),
            ("server a 90000", 0, true, ""),
            ("backup - 90000", 0, false, "backup - 90000"),
        ];
        for (holder, since_ms, server_passes, says) in cases {
            let held = fs::OpenOptions::new().create(true).truncate(true).write(true).open(dest_dir.join(LOCK));
            let mut held = held.expect("lock file");
            held.write_all(format!("{holder}\n").as_bytes()).expect("write");
            // SAFETY: flock on a file descriptor this test owns.
            assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) }, 0);
            let claim = Claim { me: &me, first: true, since_ms, synced: &synced, lease: None };
            let pushed = push(&img, &Folder(src.clone()), &dest, false, false, Some(claim)).await;
            assert_eq!(pushed.is_ok(), server_passes, "{holder}: {pushed:?}");
            match pushed {
                Err(BackupError::TakenOver(e)) => assert!(says.contains("taking") && e.contains(says), "{e}"),
                Err(e) => assert!(e.to_string().contains(says), "{e}"),
                Ok(_) => {}
            }
            let backup = push(&img, &Folder(src.clone()), &dest, false, false, None).await;
            assert!(backup.expect_err("a backup never passes a lock").to_string().contains("locked"));
            drop(held);
        }
    }
}
