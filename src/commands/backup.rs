//! `tocsin backup DEST`: an online backup of a running server into a
//! directory, copying only what the last backup there does not hold; and
//! `tocsin restore SRC --data-dir DIR`: a data directory rebuilt from one
//! (docs/operations.md).
//!
//! A backup directory holds the files of the image and `backup.json`, the
//! index that lists each with its size and SHA-256. The index is written
//! last, atomically: a backup that did not finish leaves the previous index
//! (and so the previous backup) in force.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tocsin_server::backup::{BACKUP_FORMAT, BackupImage};
use tocsin_storage::durable::{sync_dir, write_atomic};

use super::client::{ServerArgs, url_component};

/// The index of a backup directory.
const INDEX: &str = "backup.json";
/// Held (flock) while a backup writes into the directory.
const LOCK: &str = ".lock";
/// Written first into a data directory being restored, removed last; the
/// server refuses to start while it is there.
use tocsin_storage::RESTORE_MARKER;

#[derive(Debug, clap::Args)]
pub(crate) struct BackupConfig {
    /// Directory to back up into: new, empty, or holding an earlier backup
    /// of this server (then only new files are copied).
    dest: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreConfig {
    /// A directory written by `tocsin backup`.
    src: PathBuf,
    /// The data directory to create (must not exist, or be empty).
    #[arg(long, env = "TOCSIN_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
struct IndexFile {
    path: String,
    bytes: u64,
    sha256: String,
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
    /// Seconds the backup took, and what it copied and reused.
    seconds: f64,
    copied_files: usize,
    copied_bytes: u64,
    reused_files: usize,
    files: Vec<IndexFile>,
}

impl Index {
    fn read(dir: &Path) -> anyhow::Result<Option<Index>> {
        let path = dir.join(INDEX);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let index: Index = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a Tocsin backup index", path.display()))?;
        ensure!(
            index.format == BACKUP_FORMAT,
            "{} has format {}; this build reads format {BACKUP_FORMAT}",
            path.display(),
            index.format
        );
        for f in &index.files {
            ensure!(plain(&f.path), "{} lists {:?}, which is not a path inside the backup", path.display(), f.path);
        }
        Ok(Some(index))
    }
}

/// A relative path of plain names (no `..`, no root): one the index may
/// name and the server may send.
fn plain(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

pub(crate) fn backup(c: BackupConfig) -> anyhow::Result<()> {
    set_private_umask();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_backup(c))
}

async fn run_backup(c: BackupConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let dest = c.dest;
    fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let _lock = lock(&dest)?;
    let previous = Index::read(&dest)?;
    if previous.is_none() && fs::read_dir(&dest)?.filter_map(Result::ok).any(|e| e.file_name() != LOCK) {
        bail!(
            "{} is not empty and holds no {INDEX}: not a Tocsin backup directory (a backup prunes the files its \
             index does not list, so it will not write among others)",
            dest.display()
        );
    }
    let client = c.server.client()?;
    let image: BackupImage = serde_json::from_value(client.call(Method::POST, "/api/v1/admin/backups", None).await?)
        .context("the server's answer is not a backup image (a server older than this client?)")?;
    ensure!(
        image.format == BACKUP_FORMAT,
        "the server sent backup format {}; this client reads {BACKUP_FORMAT}",
        image.format
    );
    let copied = copy_image(&client, &image, &dest, previous.as_ref()).await;
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
        seconds: started.elapsed().as_secs_f64(),
        copied_files,
        copied_bytes,
        reused_files,
        files,
    };
    let json = serde_json::to_vec_pretty(&index)?;
    let index_path = dest.join(INDEX);
    write_atomic(&index_path, |e| e, |f| f.write_all(&json))
        .with_context(|| format!("writing {}", index_path.display()))?;
    let pruned = prune(&dest, &index)?;
    let total: u64 = index.files.iter().map(|f| f.bytes).sum();
    println!(
        "backup of {} into {}: {} files, {} bytes; copied {} ({} bytes), reused {}, removed {} no longer needed; \
         {:.1} s. It holds every write acknowledged before {}.",
        c.server.http_addr,
        dest.display(),
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

/// Copies the image's files into `dest`, except those an earlier backup of
/// the same data directory left there unchanged. Returns the index entries,
/// how many files were copied and their bytes.
async fn copy_image(
    client: &super::client::Client,
    image: &BackupImage,
    dest: &Path,
    previous: Option<&Index>,
) -> anyhow::Result<(Vec<IndexFile>, usize, u64)> {
    let reusable: HashMap<&str, &IndexFile> = previous
        .filter(|p| p.instance == image.instance)
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    let total: u64 = image.files.iter().map(|f| f.bytes).sum();
    let mut files = Vec::with_capacity(image.files.len());
    let (mut copied_files, mut copied_bytes, mut done_bytes) = (0, 0, 0u64);
    let mut last_report = Instant::now();
    for (n, f) in image.files.iter().enumerate() {
        ensure!(plain(&f.path), "the server named {:?}, which is not a path inside the backup", f.path);
        let target = dest.join(&f.path);
        // Segments, packs and closed WAL files never change once written,
        // and their names are not reused within one data directory. The
        // files outside them (manifest, alerting state, users, audit log,
        // rules) change in place: always copied.
        let immutable = ["segments/", "packs/", "wal/"].iter().any(|p| f.path.starts_with(p));
        let kept = reusable
            .get(f.path.as_str())
            .filter(|p| immutable && p.bytes == f.bytes && fs::metadata(&target).is_ok_and(|m| m.len() == f.bytes));
        done_bytes += f.bytes;
        if let Some(p) = kept {
            files.push((*p).clone());
            continue;
        }
        let sha256 = download(client, image, f, &target).await?;
        files.push(IndexFile { path: f.path.clone(), bytes: f.bytes, sha256 });
        copied_files += 1;
        copied_bytes += f.bytes;
        if last_report.elapsed().as_secs() >= 2 {
            eprintln!("  {}/{} files, {done_bytes}/{total} bytes", n + 1, image.files.len());
            last_report = Instant::now();
        }
    }
    // The new files' folder entries, before the index names them.
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for f in &files {
        let mut p = dest.join(&f.path);
        while p.pop() && p.starts_with(dest) && dirs.insert(p.clone()) {}
    }
    for d in dirs {
        sync_dir(&d).with_context(|| format!("syncing {}", d.display()))?;
    }
    Ok((files, copied_files, copied_bytes))
}

/// Fetches one file into `target` (through a temporary name, fsynced) and
/// returns its SHA-256.
async fn download(
    client: &super::client::Client,
    image: &BackupImage,
    f: &tocsin_server::backup::BackupFile,
    target: &Path,
) -> anyhow::Result<String> {
    let path = format!("/api/v1/admin/backups/{}/files?path={}", url_component(&image.id), url_component(&f.path));
    let (url, req) = client.request(Method::GET, &path);
    let mut resp = req.send().await.with_context(|| format!("fetching {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("fetching {} of the backup: HTTP {status}: {body}", f.path);
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let part = target.with_file_name(format!("{}.part", target.file_name().unwrap_or_default().to_string_lossy()));
    let mut out = fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("receiving {}", f.path))? {
        hash.update(&chunk);
        out.write_all(&chunk).with_context(|| format!("writing {}", part.display()))?;
        got += chunk.len() as u64;
    }
    ensure!(got == f.bytes, "{}: received {got} bytes of {}; the connection was cut?", f.path, f.bytes);
    out.sync_all().with_context(|| format!("syncing {}", part.display()))?;
    drop(out);
    fs::rename(&part, target).with_context(|| format!("renaming {} to {}", part.display(), target.display()))?;
    Ok(hex(&hash.finalize()))
}

/// Removes the files of `dest` that the index does not list (segments a
/// compaction replaced, WAL files persisted since, leftovers of a backup
/// that failed). Returns how many.
fn prune(dest: &Path, index: &Index) -> anyhow::Result<usize> {
    let keep: HashSet<PathBuf> = index.files.iter().map(|f| dest.join(&f.path)).collect();
    let mut removed = 0;
    let mut stack = vec![dest.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let kind = e.file_type()?;
            if dir == dest && (e.file_name() == INDEX || e.file_name() == LOCK) {
                continue;
            }
            if kind.is_dir() {
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
    let started = Instant::now();
    let index = Index::read(&c.src)?.with_context(|| {
        format!("{} holds no {INDEX}: not a Tocsin backup, or its first backup never finished", c.src.display())
    })?;
    let dir = &c.data_dir;
    if dir.exists() {
        let mut entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty; restore into a new directory (a restore never writes over a data directory)",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let marker = dir.join(RESTORE_MARKER);
    fs::write(&marker, format!("restore from {} in progress\n", c.src.display()))
        .with_context(|| format!("writing {}", marker.display()))?;
    sync_dir(dir)?;
    let mut bytes = 0u64;
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for f in &index.files {
        let from = c.src.join(&f.path);
        let to = dir.join(&f.path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            let mut p = to.clone();
            while p.pop() && p.starts_with(dir) && dirs.insert(p.clone()) {}
        }
        let sha256 =
            copy_verified(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        let got = fs::metadata(&to)?.len();
        ensure!(
            got == f.bytes && sha256 == f.sha256,
            "{} is damaged: {got} bytes with SHA-256 {sha256}, the index says {} bytes with {}; the restore \
             stopped and {} is incomplete (the server will not start on it)",
            from.display(),
            f.bytes,
            f.sha256,
            dir.display()
        );
        bytes += got;
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
    if index.rules {
        println!(
            "The server's rule files are in {}; start it with: tocsin serve --data-dir {} --rules {}",
            dir.join("rules").display(),
            dir.display(),
            dir.join("rules").display()
        );
    } else {
        println!("Start it with: tocsin serve --data-dir {}", dir.display());
    }
    Ok(())
}

/// Copies `from` to `to` (fsynced), returning the SHA-256 of what was read.
fn copy_verified(from: &Path, to: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut src = fs::File::open(from)?;
    let mut out = fs::File::create(to)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok(hex(&hash.finalize()))
}
