//! Online backups: `POST /api/v1/admin/backups` takes a consistent image of
//! the data directory (storage, alerting state, users and tokens, audit log,
//! rules) into `<data-dir>/.backup-images/<id>/`, mostly as hard links;
//! `GET .../files?path=` streams one file of it; `DELETE` drops it.
//! `tocsin backup` drives the three (docs/operations.md).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tocsin_alerting::AlertEngine;
use tocsin_auth::Principal;
use tocsin_storage::Storage;
use tokio::io::AsyncReadExt;

use crate::http::{ApiError, AppState};

/// Format of the answer to `POST /api/v1/admin/backups` and of the
/// `backup.json` index `tocsin backup` writes.
pub const BACKUP_FORMAT: u32 = 1;
/// A backup not touched (a file fetched) for this long is dropped, so that
/// a client that died does not keep old segments on disk for ever.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Backups in progress at once.
const MAX_ACTIVE: usize = 2;
/// The folder of backups in progress, under the data directory. Start-up
/// removes it: an image no client is reading is only hard links. (Not
/// `backups`: an operator may well keep backups under that name.)
const ROOT: &str = ".backup-images";
/// The file holding the data directory's identity, which a restore does not
/// copy: `tocsin backup` reuses files of an earlier backup only when that
/// backup came from the same data directory.
pub(crate) const INSTANCE_FILE: &str = "instance-id";
/// Files beside the storage's that a backup holds, if present. Not the
/// bootstrap `admin-token`: `tokens.json` holds its digest, so it still
/// works on a restored copy, and a backup kept off-site must not carry a
/// live admin secret in clear.
const LINKED: [&str; 4] = ["alerting/state.json", "alerting/link-key", "auth/tokens.json", "auth/users.json"];
const AUDIT: &str = "audit/audit.jsonl";
/// A rule file larger than this is refused (rule files are a few KiB).
const MAX_RULE_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct BackupFile {
    pub path: String,
    pub bytes: u64,
}

/// What a backup holds and up to when: the image's and the index's.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct BackupPoint {
    pub format: u32,
    /// The data directory's identity.
    pub instance: String,
    /// When the image was taken: every write acknowledged before it is in it.
    pub point_unix_ms: i64,
    pub point: String,
    pub server_version: String,
    pub wal_persisted_upto: u64,
    pub wal_closed: u64,
    pub segments: usize,
    /// Whether rule files were copied into `rules/`.
    pub rules: bool,
    /// Whether the server requires tokens (`--auth`): a restored copy
    /// should too.
    #[serde(default)]
    pub auth: bool,
    /// The last alerting state journal record the image's snapshot
    /// covers: the shipped records after it are replayed at restore.
    #[serde(default)]
    pub alerting_seq: u64,
}

/// The answer to `POST /api/v1/admin/backups`.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct BackupImage {
    #[serde(flatten)]
    pub at: BackupPoint,
    pub id: String,
    /// The server's data directory (a backup must not be written inside it).
    #[serde(default)]
    pub data_dir: String,
    pub files: Vec<BackupFile>,
}

struct Staged {
    dir: PathBuf,
    files: HashMap<String, u64>,
    touched: Instant,
}

pub(crate) struct Backups {
    data_dir: PathBuf,
    rules: Option<PathBuf>,
    auth: bool,
    instance: String,
    active: Mutex<HashMap<String, Staged>>,
    /// One image taken at a time.
    taking: tokio::sync::Mutex<()>,
    /// Images taken since start (their ids are unique).
    taken: std::sync::atomic::AtomicU64,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("backup: cannot {what} {}: {e}", path.display()))
}

impl Backups {
    /// Removes images left by an earlier run and reads (or creates) the
    /// data directory's identity.
    pub(crate) fn open(data_dir: &Path, rules: Option<PathBuf>, auth: bool) -> std::io::Result<Backups> {
        let root = data_dir.join(ROOT);
        if root.exists() {
            tracing::info!(dir = %root.display(), "removing backup images left by an earlier run");
            fs::remove_dir_all(&root)?;
        }
        let id_path = data_dir.join(INSTANCE_FILE);
        let instance = match fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            Ok(_) => new_instance(&id_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_instance(&id_path)?,
            Err(e) => return Err(e),
        };
        Ok(Backups {
            data_dir: data_dir.to_path_buf(),
            rules,
            auth,
            instance,
            active: Mutex::new(HashMap::new()),
            taking: tokio::sync::Mutex::new(()),
            taken: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Drops images idle for longer than [`IDLE`].
    pub(crate) fn sweep(&self) {
        let idle: Vec<(String, PathBuf)> =
            self.active.lock().extract_if(|_, s| s.touched.elapsed() >= IDLE).map(|(id, s)| (id, s.dir)).collect();
        for (id, dir) in idle {
            tracing::warn!(
                backup = id,
                "dropping a backup image no client has read for {} minutes",
                IDLE.as_secs() / 60
            );
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!("cannot remove backup image {}: {e}", dir.display());
            }
        }
    }
}

fn new_instance(path: &Path) -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    tocsin_storage::durable::write_atomic(path, |e| e, |f| std::io::Write::write_all(f, id.as_bytes()))?;
    Ok(id)
}

/// A backup holds every database, the users and the tokens: only an admin
/// limited to nothing may take or read one.
fn unrestricted(who: &Principal) -> Result<(), ApiError> {
    let role = &who.role;
    let limited = who.database.is_some()
        || !role.databases.is_empty()
        || !role.tables.is_empty()
        || !role.rows.is_empty()
        || role.alerts.is_some();
    if limited {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is limited to some databases, tables, rows or alerts; a backup holds all of them and the users' \
                 credentials, so it needs an admin without limits",
                who.name
            ),
        ));
    }
    Ok(())
}

/// `POST /api/v1/admin/backups`: takes an image.
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    unrestricted(&who)?;
    let backups = &app.backups;
    backups.sweep();
    let busy = backups.active.lock().len();
    if busy >= MAX_ACTIVE {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{busy} backups are in progress (at most {MAX_ACTIVE}); wait for one to finish. GET \
                 /api/v1/admin/backups lists them; an image whose client died is dropped after {} idle minutes, \
                 or at once by DELETE /api/v1/admin/backups/{{id}}",
                IDLE.as_secs() / 60
            ),
        ));
    }
    let image = backups.take_image(&app.storage, &app.alerts, "api").await?;
    Ok(axum::Json(image).into_response())
}

impl Backups {
    /// Takes an image (`label` goes into its id) and keeps it until
    /// [`Backups::drop_image`] or [`IDLE`].
    pub(crate) async fn take_image(
        &self,
        storage: &Storage,
        alerts: &AlertEngine,
        label: &str,
    ) -> Result<BackupImage, ApiError> {
        let _one = self.taking.lock().await;
        let now = chrono::Utc::now();
        let n = self.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{label}-{n}", now.format("%Y%m%dT%H%M%S%.3fZ"));
        let root = self.data_dir.join(ROOT);
        fs::create_dir_all(&root).map_err(|e| io_error("create", &root, e))?;
        let dir = root.join(&id);
        let image = match take(storage, alerts, self, &dir, &id, now).await {
            Ok(image) => image,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let files = image.files.iter().map(|f| (f.path.clone(), f.bytes)).collect();
        self.active.lock().insert(id.clone(), Staged { dir, files, touched: Instant::now() });
        let bytes: u64 = image.files.iter().map(|f| f.bytes).sum();
        tracing::debug!(backup = id, files = image.files.len(), bytes, "backup image taken");
        Ok(image)
    }

    /// Where the files of image `id` are.
    pub(crate) fn image_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join(ROOT).join(id)
    }

    /// Forgets image `id` and removes its files.
    pub(crate) fn drop_image(&self, id: &str) {
        if let Some(staged) = self.active.lock().remove(id)
            && let Err(e) = fs::remove_dir_all(&staged.dir)
        {
            tracing::warn!("cannot remove backup image {}: {e}", staged.dir.display());
        }
    }
}

/// Makes `id` the identity of the data directory `data_dir` (a server
/// started from its bucket's copy continues the copied one).
pub(crate) fn set_instance(data_dir: &Path, id: &str) -> std::io::Result<()> {
    tocsin_storage::durable::write_atomic(
        &data_dir.join(INSTANCE_FILE),
        |e| e,
        |f| std::io::Write::write_all(f, id.as_bytes()),
    )
}

async fn take(
    storage: &Storage,
    alerts: &AlertEngine,
    backups: &Backups,
    dir: &Path,
    id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<BackupImage, ApiError> {
    let cp = storage.checkpoint(dir).await.map_err(|e| ApiError::classified(&e))?;
    // The alerting state as one snapshot (the journal is folded into it).
    let alerting_seq =
        alerts.write_snapshot().map_err(|e| ApiError::internal(format!("backup: alerting state: {e}")))?;
    let data_dir = backups.data_dir.clone();
    let rules = backups.rules.clone();
    let dir_owned = dir.to_path_buf();
    let (extra, has_rules) = tokio::task::spawn_blocking(move || copy_extras(&data_dir, &dir_owned, rules.as_deref()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut files = Vec::new();
    for (rel, listed) in cp.files.iter().map(|p| (p.to_string_lossy().into_owned(), None)).chain(extra) {
        let path = dir.join(&rel);
        let bytes = match listed {
            Some(n) => n,
            None => fs::metadata(&path).map_err(|e| io_error("read", &path, e))?.len(),
        };
        files.push(BackupFile { path: rel, bytes });
    }
    // Segment files the storage let go of (`segments = "object-store"`):
    // fetched from the copy when the client asks for them.
    for (rel, bytes) in &cp.away {
        files.push(BackupFile { path: rel.to_string_lossy().into_owned(), bytes: *bytes });
    }
    Ok(BackupImage {
        at: BackupPoint {
            format: BACKUP_FORMAT,
            instance: backups.instance.clone(),
            point_unix_ms: now.timestamp_millis(),
            point: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            wal_persisted_upto: cp.wal_persisted_upto,
            wal_closed: cp.wal_closed,
            segments: cp.segments,
            rules: has_rules,
            auth: backups.auth,
            alerting_seq,
        },
        id: id.to_string(),
        data_dir: backups.data_dir.display().to_string(),
        files,
    })
}

/// Links the alerting state, users and tokens and the audit log; copies the
/// rule files. Returns their paths in the image, with the length to list
/// when it is not the file's.
type Extras = Vec<(String, Option<u64>)>;

fn copy_extras(data_dir: &Path, dir: &Path, rules: Option<&Path>) -> Result<(Extras, bool), ApiError> {
    let mut out = Vec::new();
    for rel in LINKED {
        let from = data_dir.join(rel);
        if !from.is_file() {
            continue;
        }
        let to = dir.join(rel);
        make_parent(&to)?;
        // Each of these is replaced by rename when it changes: the link
        // is the version of now.
        fs::hard_link(&from, &to).map_err(|e| io_error("link", &from, e))?;
        out.push((rel.to_string(), None));
    }
    let audit = data_dir.join(AUDIT);
    if audit.is_file() {
        // Appended to line by line: linked, and listed up to its last whole
        // line (a line being written is not yet an entry).
        let to = dir.join(AUDIT);
        make_parent(&to)?;
        fs::hard_link(&audit, &to).map_err(|e| io_error("link", &audit, e))?;
        let len = whole_lines(&to).map_err(|e| io_error("read", &audit, e))?;
        out.push((AUDIT.to_string(), Some(len)));
    }
    let mut has_rules = false;
    if let Some(rules) = rules {
        // Exactly the files the rules loader reads (the file itself, or a
        // directory's *.yml and *.yaml), and only if they are regular files
        // of a sane size: nothing else of the rules folder leaves the host.
        let files = tocsin_alerting::config::rule_files(rules).map_err(|e| io_error("read rules", rules, e))?;
        for from in files {
            let meta = fs::metadata(&from).map_err(|e| io_error("read", &from, e))?;
            if !meta.is_file() || meta.len() > MAX_RULE_FILE_BYTES {
                return Err(ApiError::bad_request(format!(
                    "rule file {} is not a regular file of at most {} MiB; the backup leaves it out only if you \
                     remove it",
                    from.display(),
                    MAX_RULE_FILE_BYTES >> 20
                )));
            }
            let Some(name) = from.file_name() else { continue };
            let rel = Path::new("rules").join(name);
            let to = dir.join(&rel);
            make_parent(&to)?;
            fs::copy(&from, &to).map_err(|e| io_error("copy", &from, e))?;
            out.push((rel.to_string_lossy().into_owned(), None));
        }
        has_rules = true;
    }
    Ok((out, has_rules))
}

fn make_parent(path: &Path) -> Result<(), ApiError> {
    match path.parent() {
        Some(p) => fs::create_dir_all(p).map_err(|e| io_error("create", p, e)),
        None => Ok(()),
    }
}

/// The length of `path` up to its last newline.
fn whole_lines(path: &Path) -> std::io::Result<u64> {
    let mut src = fs::File::open(path)?;
    let mut end = src.metadata()?.len();
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        src.seek(SeekFrom::Start(start))?;
        src.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileParams {
    path: String,
    /// Send from this byte on (what was appended to a file since).
    #[serde(default)]
    offset: u64,
}

/// `GET /api/v1/admin/backups/{id}/files?path=`: one file of an image.
pub(crate) async fn file(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
    params: Result<Query<FileParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    unrestricted(&who)?;
    let Query(params) =
        params.map_err(|e| ApiError::bad_request(format!("{}: ?path=FILE of the image", e.body_text())))?;
    let (dir, bytes) = {
        let mut active = app.backups.active.lock();
        let staged = active.get_mut(&id).ok_or_else(|| not_found(&id))?;
        let bytes = *staged.files.get(&params.path).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("backup {id} has no file {:?}", params.path))
        })?;
        staged.touched = Instant::now();
        (staged.dir.clone(), bytes)
    };
    // Listed paths are relative and plain; checked again all the same.
    if Path::new(&params.path).components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ApiError::bad_request(format!("{:?} is not a path inside the image", params.path)));
    }
    if params.offset > bytes {
        return Err(ApiError::bad_request(format!(
            "offset {} is past the {bytes} bytes of {}",
            params.offset, params.path
        )));
    }
    let mut path = dir.join(&params.path);
    // A segment file the storage let go of (its copy in the bucket holds
    // it) comes from there, checked, into a folder of this answer's own,
    // for as long as it is sent.
    let mut fetched = None;
    if app.storage.cache_stats().is_some()
        && matches!(tokio::fs::symlink_metadata(&path).await, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    {
        static ANSWERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ANSWERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let own = dir.join(format!(".fetched-{n}"));
        fetched = Some(RemovedAfter(own.clone()));
        tokio::fs::create_dir(&own).await.map_err(|e| io_error("create", &own, e))?;
        app.storage.fetch_copy(&own, &params.path).await.map_err(|e| ApiError::classified(&e))?;
        path = own.join(&params.path);
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| io_error("open", &path, e))?;
    tokio::io::AsyncSeekExt::seek(&mut file, SeekFrom::Start(params.offset))
        .await
        .map_err(|e| io_error("read", &path, e))?;
    // Up to the listed length: a file appended to since is sent as it was.
    let len = bytes - params.offset;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10);
    let body = Body::from_stream(futures::StreamExt::map(stream, move |chunk| {
        let _until_sent = &fetched;
        chunk
    }));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream"), (header::CONTENT_LENGTH, &len.to_string())], body)
        .into_response())
}

/// The folder of a file fetched into an image for one answer: removed
/// once sent (or the client gone), so that a backup holds no more than it
/// sends at once.
struct RemovedAfter(PathBuf);

impl Drop for RemovedAfter {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `DELETE /api/v1/admin/backups/{id}`: the client has copied what it needs.
pub(crate) async fn finish(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    unrestricted(&who)?;
    let staged = app.backups.active.lock().remove(&id).ok_or_else(|| not_found(&id))?;
    tokio::task::spawn_blocking(move || {
        fs::remove_dir_all(&staged.dir).map_err(|e| io_error("remove", &staged.dir, e))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/admin/backups`: the images in progress.
pub(crate) async fn list(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    if let Err(e) = unrestricted(&who) {
        return e.into_response();
    }
    let active = app.backups.active.lock();
    let mut list: Vec<serde_json::Value> = active
        .iter()
        .map(|(id, s)| {
            serde_json::json!({
                "id": id,
                "files": s.files.len(),
                "bytes": s.files.values().sum::<u64>(),
                "idle_seconds": s.touched.elapsed().as_secs(),
            })
        })
        .collect();
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    axum::Json(serde_json::json!({ "instance": app.backups.instance, "active": list })).into_response()
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no backup {id:?} in progress (finished, dropped after {} idle minutes, or the server restarted)",
            IDLE.as_secs() / 60
        ),
    )
}
