//! `tocsin backup DEST`: an online backup of a running server into a
//! directory or an S3-compatible bucket (`s3://BUCKET/PREFIX`), copying only
//! what the last backup there does not hold; and `tocsin restore SRC
//! --data-dir DIR`: a data directory rebuilt from one (docs/operations.md).
//!
//! A backup holds the files of the image and `backup.json`, the index that
//! lists each with its size and SHA-256. The index is written last,
//! atomically, and no file the previous index lists is ever written over (a
//! file that changed is stored under `versions/<backup id>/` instead): a
//! backup that did not finish leaves the previous one whole.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tocsin_server::backup::{BACKUP_FORMAT, BackupImage};
use tocsin_storage::durable::{sync_dir, write_atomic};
use tocsin_storage::objects::{self, ObjectLocation};

use super::client::{ServerArgs, url_component};

/// The index of a backup directory.
const INDEX: &str = "backup.json";
/// Held (flock) while a backup writes into the directory.
const LOCK: &str = ".lock";
/// Written first into a data directory being restored, removed last; the
/// server refuses to start while it is there.
use tocsin_storage::RESTORE_MARKER;

/// An online backup of the server at --http-addr (it needs an admin token
/// without database, table or alert limits): rows, alerting state, users
/// and tokens (not the bootstrap admin-token file), the audit log and the
/// rule files; not the TOML configuration or TLS files. Every write the
/// server acknowledged before the backup started is in it. A later backup
/// into the same place copies only the segments that are new, and then
/// removes every file there that its index does not list. See
/// docs/operations.md.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupConfig {
    /// Directory or `s3://BUCKET/PREFIX` to back up into: new, empty, or
    /// holding an earlier backup of this server. S3 credentials, region and
    /// endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true for an endpoint
    /// without TLS).
    dest: String,
    /// Replace a backup of another data directory that DEST holds (by
    /// default refused: a wrong --http-addr would destroy it).
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Rebuild a data directory from a backup, checking every file's SHA-256.
/// The server need not run; start it on the new directory afterwards (the
/// command prints how, with --auth and --rules when the backup had them).
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreConfig {
    /// A directory or `s3://BUCKET/PREFIX` written by `tocsin backup` (S3
    /// settings from the AWS_* environment, as for `tocsin backup`).
    src: String,
    /// The data directory to create: it must not exist, or be empty, and
    /// not be inside SRC.
    #[arg(long, env = "TOCSIN_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
struct IndexFile {
    /// Where it goes in the data directory.
    path: String,
    bytes: u64,
    sha256: String,
    /// Where it is in the backup, when not at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored: Option<String>,
}

impl IndexFile {
    fn stored(&self) -> &str {
        self.stored.as_deref().unwrap_or(&self.path)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: u32,
    instance: String,
    point_unix_ms: i64,
    point: String,
    server_version: String,
    wal_persisted_upto: u64,
    wal_closed: u64,
    segments: usize,
    rules: bool,
    /// The server required tokens.
    #[serde(default)]
    auth: bool,
    /// Seconds the backup took, and what it copied and reused.
    seconds: f64,
    copied_files: usize,
    copied_bytes: u64,
    reused_files: usize,
    files: Vec<IndexFile>,
}

impl Index {
    async fn read(place: &Place) -> anyhow::Result<Option<Index>> {
        let Some(text) = place.read(INDEX).await? else { return Ok(None) };
        let shown = place.shown(INDEX);
        let index: Index =
            serde_json::from_slice(&text).with_context(|| format!("{shown} is not a Tocsin backup index"))?;
        ensure!(
            index.format == BACKUP_FORMAT,
            "{shown} has format {}; this build reads format {BACKUP_FORMAT}",
            index.format
        );
        for f in &index.files {
            for p in [&f.path, f.stored()] {
                ensure!(plain(p), "{shown} lists {p:?}, which is not a path inside the backup");
                ensure!(p != INDEX && p != LOCK, "{shown} lists {p:?}, which a backup keeps for itself");
            }
        }
        Ok(Some(index))
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
enum Place {
    Dir(PathBuf),
    Bucket(ObjectLocation),
}

impl Place {
    fn parse(s: &str) -> anyhow::Result<Place> {
        if objects::is_object_url(s) { Ok(Place::Bucket(objects::open(s)?)) } else { Ok(Place::Dir(PathBuf::from(s))) }
    }

    /// `rel` inside it, for messages.
    fn shown(&self, rel: &str) -> String {
        match self {
            Place::Dir(d) => d.join(rel).display().to_string(),
            Place::Bucket(b) => format!("{}/{rel}", b.url.trim_end_matches('/')),
        }
    }

    fn name(&self) -> String {
        match self {
            Place::Dir(d) => d.display().to_string(),
            Place::Bucket(b) => b.url.clone(),
        }
    }

    /// The whole of a small file (the index), if present.
    async fn read(&self, rel: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Place::Dir(d) => match fs::read(d.join(rel)) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", self.shown(rel))),
            },
            Place::Bucket(b) => match b.store.get(&b.object(rel)).await {
                Ok(got) => {
                    Ok(Some(got.bytes().await.with_context(|| format!("reading {}", self.shown(rel)))?.to_vec()))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", self.shown(rel))),
            },
        }
    }

    /// The size of `rel`, if it is there.
    async fn size(&self, rel: &str) -> anyhow::Result<Option<u64>> {
        match self {
            Place::Dir(d) => Ok(fs::metadata(d.join(rel)).ok().filter(|m| m.is_file()).map(|m| m.len())),
            Place::Bucket(b) => match b.store.head(&b.object(rel)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e).with_context(|| format!("looking up {}", self.shown(rel))),
            },
        }
    }

    /// Whether anything but the lock is there.
    async fn is_empty(&self) -> anyhow::Result<bool> {
        match self {
            Place::Dir(d) => Ok(fs::read_dir(d)?.filter_map(Result::ok).all(|e| e.file_name() == LOCK)),
            Place::Bucket(b) => match b.store.list(Some(&b.prefix)).next().await {
                None => Ok(true),
                Some(Ok(_)) => Ok(false),
                Some(Err(e)) => Err(e).with_context(|| format!("listing {}", b.url)),
            },
        }
    }

    /// Replaces `rel` atomically with `bytes`.
    async fn replace(&self, rel: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Place::Dir(d) => {
                let path = d.join(rel);
                write_atomic(&path, |e| e, |f| f.write_all(&bytes))
                    .with_context(|| format!("writing {}", path.display()))
            }
            Place::Bucket(b) => {
                b.store
                    .put(&b.object(rel), PutPayload::from(bytes))
                    .await
                    .with_context(|| format!("writing {}", self.shown(rel)))?;
                Ok(())
            }
        }
    }

    /// Starts writing `rel` (replacing it once finished).
    async fn sink(&self, rel: &str) -> anyhow::Result<Sink> {
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
                    Err(e) => return Err(e).with_context(|| format!("removing {}", part.display())),
                }
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&part)
                    .with_context(|| format!("creating {}", part.display()))?;
                Ok(Sink::File { file, part, target })
            }
            Place::Bucket(b) => Ok(Sink::Object {
                store: std::sync::Arc::clone(&b.store),
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
    async fn prune(&self, index: &Index) -> anyhow::Result<usize> {
        match self {
            Place::Dir(d) => prune_dir(d, index),
            Place::Bucket(b) => {
                let keep: HashSet<object_store::path::Path> =
                    index.files.iter().map(|f| b.object(f.stored())).chain([b.object(INDEX)]).collect();
                let mut listed = b.store.list(Some(&b.prefix));
                let mut gone = Vec::new();
                while let Some(meta) = listed.next().await {
                    let meta = meta.with_context(|| format!("listing {}", b.url))?;
                    if !keep.contains(&meta.location) {
                        gone.push(meta.location);
                    }
                }
                for path in &gone {
                    b.store.delete(path).await.with_context(|| format!("removing {path} from {}", b.url))?;
                }
                Ok(gone.len())
            }
        }
    }

    /// Copies `rel` into `out`, returning its bytes and SHA-256.
    async fn copy_into(&self, rel: &str, out: &mut fs::File) -> anyhow::Result<(u64, String)> {
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        match self {
            Place::Dir(d) => {
                use std::io::Read;
                let path = d.join(rel);
                let mut src = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    let n = src.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                    bytes += n as u64;
                }
            }
            Place::Bucket(b) => {
                let got = b.store.get(&b.object(rel)).await.with_context(|| format!("reading {}", self.shown(rel)))?;
                let mut stream = got.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.with_context(|| format!("reading {}", self.shown(rel)))?;
                    hash.update(&chunk);
                    out.write_all(&chunk)?;
                    bytes += chunk.len() as u64;
                }
            }
        }
        Ok((bytes, hex(&hash.finalize())))
    }
}

/// Creates the folders of `rel` under `root`, refusing any that is a
/// symbolic link: a backup writes only inside its own directory.
fn real_folders(root: &Path, rel: &str) -> anyhow::Result<()> {
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
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
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
        store: std::sync::Arc<dyn ObjectStore>,
        path: object_store::path::Path,
        shown: String,
        buffer: Vec<u8>,
        upload: Option<WriteMultipart>,
    },
}

impl Sink {
    async fn write(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::File { file, part, .. } => {
                file.write_all(chunk).with_context(|| format!("writing {}", part.display()))
            }
            Sink::Object { store, path, shown, buffer, upload } => {
                if let Some(up) = upload {
                    up.wait_for_capacity(4).await.with_context(|| format!("uploading {shown}"))?;
                    up.write(chunk);
                    return Ok(());
                }
                buffer.extend_from_slice(chunk);
                if buffer.len() > PART_BYTES {
                    let started = store.put_multipart(path).await.with_context(|| format!("uploading {shown}"))?;
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
    async fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::File { file, part, target } => {
                file.sync_all().with_context(|| format!("syncing {}", part.display()))?;
                drop(file);
                fs::rename(&part, &target)
                    .with_context(|| format!("renaming {} to {}", part.display(), target.display()))
            }
            Sink::Object { store, path, shown, buffer, upload } => match upload {
                Some(up) => up.finish().await.map(|_| ()),
                None => store.put(&path, PutPayload::from(buffer)).await.map(|_| ()),
            }
            .with_context(|| format!("uploading {shown}")),
        }
    }
}

pub(crate) fn backup(c: BackupConfig) -> anyhow::Result<()> {
    set_private_umask();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_backup(c))
}

async fn run_backup(c: BackupConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let dest = Place::parse(&c.dest)?;
    let _lock = match &dest {
        Place::Dir(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Some(lock(d)?)
        }
        Place::Bucket(_) => None,
    };
    let previous = Index::read(&dest).await?;
    if previous.is_none() && !dest.is_empty().await? {
        bail!(
            "{} is not empty and holds no {INDEX}: not a Tocsin backup (a backup removes the files its index does \
             not list, so it will not write among others)",
            dest.name()
        );
    }
    let client = c.server.client()?;
    let image: BackupImage = serde_json::from_value(client.call(Method::POST, "/api/v1/admin/backups", None).await?)
        .context("the server's answer is not a backup image (a server older than this client?)")?;
    let copied = match check_target(&image, &dest, previous.as_ref(), c.replace) {
        Ok(()) => copy_image(&client, &image, &dest, previous.as_ref()).await,
        Err(e) => Err(e),
    };
    // The image is dropped on the server whatever happened.
    let finished =
        client.call(Method::DELETE, &format!("/api/v1/admin/backups/{}", url_component(&image.id)), None).await;
    let (files, copied_files, copied_bytes) = copied?;
    if let Err(e) = finished {
        eprintln!("warning: the server did not drop backup image {}: {e:#}", image.id);
    }
    let reused_files = files.len() - copied_files;
    let index = Index {
        format: BACKUP_FORMAT,
        instance: image.instance.clone(),
        point_unix_ms: image.point_unix_ms,
        point: image.point.clone(),
        server_version: image.server_version.clone(),
        wal_persisted_upto: image.wal_persisted_upto,
        wal_closed: image.wal_closed,
        segments: image.segments,
        rules: image.rules,
        auth: image.auth,
        seconds: started.elapsed().as_secs_f64(),
        copied_files,
        copied_bytes,
        reused_files,
        files,
    };
    dest.replace(INDEX, serde_json::to_vec_pretty(&index)?).await?;
    let pruned = dest.prune(&index).await?;
    let total: u64 = index.files.iter().map(|f| f.bytes).sum();
    println!(
        "backup of {} into {}: {} files, {} bytes; copied {} ({} bytes), reused {}, removed {} no longer needed; \
         {:.1} s. It holds every write acknowledged before {}.",
        c.server.http_addr,
        dest.name(),
        index.files.len(),
        total,
        copied_files,
        copied_bytes,
        reused_files,
        pruned,
        index.seconds,
        index.point
    );
    Ok(())
}

/// Refuses a backup of another data directory over an existing one (unless
/// `replace`), and a directory inside the server's data directory.
fn check_target(image: &BackupImage, dest: &Place, previous: Option<&Index>, replace: bool) -> anyhow::Result<()> {
    ensure!(
        image.format == BACKUP_FORMAT,
        "the server sent backup format {}; this client reads {BACKUP_FORMAT}",
        image.format
    );
    if let Some(p) = previous
        && p.instance != image.instance
        && !replace
    {
        bail!(
            "{} holds a backup of another data directory (taken {}); backing this server up there would replace it. \
             Check --http-addr, or give --replace if that is what you want",
            dest.name(),
            p.point
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
/// the same data directory left there unchanged. Returns the index entries,
/// how many files were copied and their bytes.
async fn copy_image(
    client: &super::client::Client,
    image: &BackupImage,
    dest: &Place,
    previous: Option<&Index>,
) -> anyhow::Result<(Vec<IndexFile>, usize, u64)> {
    let reusable: HashMap<&str, &IndexFile> = previous
        .filter(|p| p.instance == image.instance)
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    // What the previous backup needs stays as it is until the new index
    // replaces it.
    let taken: HashSet<&str> = previous.map(|p| p.files.iter().map(IndexFile::stored).collect()).unwrap_or_default();
    let total: u64 = image.files.iter().map(|f| f.bytes).sum();
    let mut files = Vec::with_capacity(image.files.len());
    let (mut copied_files, mut copied_bytes, mut done_bytes) = (0, 0, 0u64);
    let mut last_report = Instant::now();
    for (n, f) in image.files.iter().enumerate() {
        ensure!(plain(&f.path), "the server named {:?}, which is not a path inside the backup", f.path);
        ensure!(f.path != INDEX && f.path != LOCK, "the server named {:?}, which a backup keeps for itself", f.path);
        // Segments, packs and closed WAL files never change once written,
        // and their names are not reused within one data directory. The
        // files outside them (manifest, alerting state, users, audit log,
        // rules) change in place: always copied.
        let immutable = ["segments/", "packs/", "wal/"].iter().any(|p| f.path.starts_with(p));
        done_bytes += f.bytes;
        if let Some(p) = reusable.get(f.path.as_str()).filter(|p| immutable && p.bytes == f.bytes)
            && dest.size(p.stored()).await? == Some(f.bytes)
        {
            files.push((*p).clone());
            continue;
        }
        let stored = taken.contains(f.path.as_str()).then(|| format!("versions/{}/{}", image.id, f.path));
        ensure!(
            stored.as_deref().is_none_or(plain),
            "the server sent backup id {:?}, which is not a plain name",
            image.id
        );
        let sha256 = download(client, image, f, dest, stored.as_deref().unwrap_or(&f.path)).await?;
        files.push(IndexFile { path: f.path.clone(), bytes: f.bytes, sha256, stored });
        copied_files += 1;
        copied_bytes += f.bytes;
        if last_report.elapsed().as_secs() >= 2 {
            eprintln!("  {}/{} files, {done_bytes}/{total} bytes", n + 1, image.files.len());
            last_report = Instant::now();
        }
    }
    if let Place::Dir(d) = dest {
        // The new files' folder entries, before the index names them.
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for f in &files {
            let mut p = d.join(f.stored());
            while p.pop() && p.starts_with(d) && dirs.insert(p.clone()) {}
        }
        for dir in dirs {
            sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
        }
    }
    Ok((files, copied_files, copied_bytes))
}

/// Fetches one file into `dest` at `stored` and returns its SHA-256.
async fn download(
    client: &super::client::Client,
    image: &BackupImage,
    f: &tocsin_server::backup::BackupFile,
    dest: &Place,
    stored: &str,
) -> anyhow::Result<String> {
    let path = format!("/api/v1/admin/backups/{}/files?path={}", url_component(&image.id), url_component(&f.path));
    let (url, req) = client.request(Method::GET, &path);
    let mut resp = req.send().await.with_context(|| format!("fetching {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("fetching {} of the backup: HTTP {status}: {body}", f.path);
    }
    let mut sink = dest.sink(stored).await?;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("receiving {}", f.path))? {
        got += chunk.len() as u64;
        ensure!(got <= f.bytes, "{}: the server sent more than the {} bytes it listed", f.path, f.bytes);
        hash.update(&chunk);
        sink.write(&chunk).await?;
    }
    ensure!(got == f.bytes, "{}: received {got} bytes of {}; the connection was cut?", f.path, f.bytes);
    sink.finish().await?;
    Ok(hex(&hash.finalize()))
}

/// [`Place::prune`] of a directory.
fn prune_dir(dest: &Path, index: &Index) -> anyhow::Result<usize> {
    let keep: HashSet<PathBuf> = index.files.iter().map(|f| dest.join(f.stored())).collect();
    let mut removed = 0;
    let mut stack = vec![dest.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            // Not followed: a link is removed as a link.
            let kind = e.file_type()?;
            if dir == dest && (e.file_name() == INDEX || e.file_name() == LOCK) {
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
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
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

fn lock(dest: &Path) -> anyhow::Result<fs::File> {
    let path = dest.join(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) };
    ensure!(rc == 0, "another `tocsin backup` is writing into {} (its {LOCK} is locked)", dest.display());
    Ok(file)
}

fn set_private_umask() {
    // Backups hold every row, the users' password hashes and the tokens'
    // digests: for their owner only, as the data directory is.
    // SAFETY: umask only sets the process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn restore(c: RestoreConfig) -> anyhow::Result<()> {
    set_private_umask();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_restore(c))
}

async fn run_restore(c: RestoreConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let src = Place::parse(&c.src)?;
    let index = Index::read(&src).await?.with_context(|| {
        format!("{} holds no {INDEX}: not a Tocsin backup, or its first backup never finished", src.name())
    })?;
    let dir = &c.data_dir;
    if dir.exists() {
        ensure!(dir.is_dir(), "{} is a file; give the path of a new directory", dir.display());
        ensure!(
            !dir.join(RESTORE_MARKER).exists(),
            "{} holds a restore that did not finish ({RESTORE_MARKER}); remove the directory and run the restore again",
            dir.display()
        );
        let mut entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty; restore into a new directory (a restore never writes over a data directory)",
            dir.display()
        );
    }
    if let Place::Dir(s) = &src
        && let Ok(s) = fs::canonicalize(s)
    {
        // The target resolved as far as it exists (it may not yet).
        let target = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
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
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let marker = dir.join(RESTORE_MARKER);
    fs::write(&marker, format!("restore from {} in progress\n", src.name()))
        .with_context(|| format!("writing {}", marker.display()))?;
    sync_dir(dir)?;
    let mut bytes = 0u64;
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut last_report = Instant::now();
    for (n, f) in index.files.iter().enumerate() {
        let to = dir.join(&f.path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            let mut p = to.clone();
            while p.pop() && p.starts_with(dir) && dirs.insert(p.clone()) {}
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&to)
            .with_context(|| format!("creating {}", to.display()))?;
        let (got, sha256) = src.copy_into(f.stored(), &mut out).await?;
        out.sync_all().with_context(|| format!("syncing {}", to.display()))?;
        ensure!(
            got == f.bytes && sha256 == f.sha256,
            "{} is damaged: {got} bytes with SHA-256 {sha256}, the index says {} bytes with {}; the restore \
             stopped and {} is incomplete (the server will not start on it)",
            src.shown(f.stored()),
            f.bytes,
            f.sha256,
            dir.display()
        );
        bytes += got;
        if last_report.elapsed().as_secs() >= 2 {
            eprintln!("  {}/{} files, {bytes} bytes", n + 1, index.files.len());
            last_report = Instant::now();
        }
    }
    for d in &dirs {
        sync_dir(d).with_context(|| format!("syncing {}", d.display()))?;
    }
    fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    sync_dir(dir)?;
    println!(
        "restored {} files ({bytes} bytes) into {} in {:.1} s: it holds every write the server acknowledged before \
         {} (backup of Tocsin {}).",
        index.files.len(),
        dir.display(),
        started.elapsed().as_secs_f64(),
        index.point,
        index.server_version
    );
    let mut start = format!("tocsin serve --data-dir {}", dir.display());
    if index.auth {
        start.push_str(" --auth");
    }
    if index.rules {
        println!("The server's rule files are in {}.", dir.join("rules").display());
        start.push_str(&format!(" --rules {}", dir.join("rules").display()));
    }
    println!("Start it with: {start}");
    if index.auth {
        println!("The users and tokens of the backup log in (the bootstrap admin-token file is not in backups).");
    }
    Ok(())
}
