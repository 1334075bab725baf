//! `tocsin backup DEST`: an online backup of a running server into a
//! directory or an S3-compatible bucket (`s3://BUCKET/PREFIX`), copying only
//! what the last backup there does not hold; and `tocsin restore SRC
//! --data-dir DIR`: a data directory rebuilt from one (docs/operations.md).
//! The work is `tocsin_server::backup_store`'s; this is the HTTP side.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::Method;
use tocsin_server::backup::{BackupFile, BackupImage};
use tocsin_server::backup_store::{self, BackupError, ImageFiles, Place};

use super::client::{Client, ServerArgs, url_component};

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

/// The files of an image on the server, fetched over HTTP.
struct HttpImage<'a> {
    client: &'a Client,
    id: String,
}

impl ImageFiles for HttpImage<'_> {
    async fn open(
        &self,
        f: &BackupFile,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, BackupError>>, BackupError> {
        let path = format!(
            "/api/v1/admin/backups/{}/files?path={}&offset={offset}",
            url_component(&self.id),
            url_component(&f.path)
        );
        let (url, req) = self.client.request(Method::GET, &path);
        let resp = req.send().await.map_err(|e| BackupError::Refused(format!("fetching {url}: {e}")))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(BackupError::Refused(format!("fetching {} of the backup: HTTP {status}: {body}", f.path)));
        }
        let name = f.path.clone();
        Ok(resp
            .bytes_stream()
            .map(move |c| c.map_err(|e| BackupError::Refused(format!("receiving {name}: {e}"))))
            .boxed())
    }
}

pub(crate) fn backup(c: BackupConfig) -> anyhow::Result<()> {
    set_private_umask();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_backup(c))
}

async fn run_backup(c: BackupConfig) -> anyhow::Result<()> {
    let dest = Place::parse(&c.dest)?;
    let client = c.server.client()?;
    let image: BackupImage = serde_json::from_value(client.call(Method::POST, "/api/v1/admin/backups", None).await?)
        .context("the server's answer is not a backup image (a server older than this client?)")?;
    let pushed =
        backup_store::push(&image, &HttpImage { client: &client, id: image.id.clone() }, &dest, c.replace, true, None)
            .await;
    // The image is dropped on the server whatever happened.
    let finished =
        client.call(Method::DELETE, &format!("/api/v1/admin/backups/{}", url_component(&image.id)), None).await;
    let report = pushed?;
    if let Err(e) = finished {
        eprintln!("warning: the server did not drop backup image {}: {e:#}", image.id);
    }
    let total: u64 = report.index.files.iter().map(|f| f.bytes).sum();
    println!(
        "backup of {} into {}: {} files, {} bytes; copied {} ({} bytes), reused {}, removed {} no longer needed; \
         {:.1} s. It holds every write acknowledged before {}.",
        c.server.http_addr,
        dest.name(),
        report.index.files.len(),
        total,
        report.copied_files,
        report.copied_bytes,
        report.reused_files,
        report.pruned,
        report.index.seconds,
        report.index.at.point
    );
    Ok(())
}

fn set_private_umask() {
    // Backups hold every row, the users' password hashes and the tokens'
    // digests: for their owner only, as the data directory is.
    // SAFETY: umask only sets the process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

pub(crate) fn restore(c: RestoreConfig) -> anyhow::Result<()> {
    set_private_umask();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_restore(c))
}

async fn run_restore(c: RestoreConfig) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let src = Place::parse(&c.src)?;
    let dir = &c.data_dir;
    let report = backup_store::restore(&src, dir, true, true).await?;
    let index = &report.index;
    println!(
        "restored {} files ({} bytes) into {} in {:.1} s: it holds every write the server acknowledged before \
         {} (backup of Tocsin {}).",
        index.files.len(),
        report.bytes,
        dir.display(),
        started.elapsed().as_secs_f64(),
        index.at.point,
        index.at.server_version
    );
    if report.shipped.files > 0 {
        println!(
            "It also holds the WAL its server shipped after that point ({} WAL file{}, {} bytes): the writes \
             acknowledged since, replayed when it starts.",
            report.shipped.files,
            if report.shipped.files == 1 { "" } else { "s" },
            report.shipped.bytes
        );
    }
    if report.shipped.alerting_records > 0 {
        println!(
            "Its alerting state includes the {} journal record{} its server shipped after that point \
             (notifications sent, acknowledgements, silences).",
            report.shipped.alerting_records,
            if report.shipped.alerting_records == 1 { "" } else { "s" }
        );
    }
    if let Some(why) = &report.shipped.left_out {
        println!(
            "The WAL its server shipped after that point is left out ({why}): run the restore again to include \
             it."
        );
    }
    for (file, end, next) in &report.shipped.holes {
        println!(
            "warning: a piece of shipped WAL file {file} is missing from the copy (bytes {end} to {next}): the \
             writes of that file from there on are not in the restored directory."
        );
    }
    let mut start = format!("tocsin serve --data-dir {}", dir.display());
    if index.at.auth {
        start.push_str(" --auth");
    }
    if index.at.rules {
        println!("The server's rule files are in {}.", dir.join("rules").display());
        start.push_str(&format!(" --rules {}", dir.join("rules").display()));
    }
    println!("Start it with: {start}");
    if index.at.auth {
        println!("The users and tokens of the backup log in (the bootstrap admin-token file is not in backups).");
    }
    Ok(())
}
