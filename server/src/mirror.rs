//! `[storage] object_store` (`tocsin serve --object-store s3://BUCKET/PREFIX`):
//! the server keeps a copy of its data directory in an S3-compatible bucket,
//! and a server started on an empty data directory with the same setting
//! starts from that copy.
//!
//! The copy is a backup ([`crate::backup_store`]) pushed every
//! `object_store_interval` and once more at shutdown: an image of the data
//! directory (manifest, segments, packs, the WAL files not yet persisted,
//! alerting state, users and tokens, audit log, rules) of which only what the
//! bucket lacks is sent. Writes are acknowledged once in the local WAL, as
//! without a bucket; losing the machine loses at most the writes of the last
//! interval (docs/operations.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tocsin_storage::Storage;
use tokio::sync::watch;

use crate::backup::{BackupFile, Backups};
use crate::backup_store::{self, BackupError, ImageFiles, Index, Place};

/// Counters of `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct MirrorMetrics {
    pub(crate) pushes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) copied_bytes: AtomicU64,
    pub(crate) copied_files: AtomicU64,
    /// Unix milliseconds of the image of the last push that succeeded: every
    /// write acknowledged before it is in the bucket.
    pub(crate) last_point_ms: AtomicI64,
}

pub(crate) struct Mirror {
    pub(crate) url: String,
    dest: Place,
    interval: Duration,
    pub(crate) metrics: MirrorMetrics,
}

impl Mirror {
    /// Opens the bucket; before the storage opens, fills an empty data
    /// directory from the copy the bucket holds, if any.
    pub(crate) async fn open(url: &str, interval: Duration, data_dir: &Path) -> Result<Mirror, BackupError> {
        let dest = Place::parse(url)?;
        let mirror = Mirror { url: url.to_string(), dest, interval, metrics: MirrorMetrics::default() };
        let empty = match std::fs::read_dir(data_dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(BackupError::Io { what: format!("reading {}", data_dir.display()), source: e }),
        };
        // Reached even when the data directory is not empty: a bucket that
        // cannot be read is said at start, not at the first push.
        let index = Index::read(&mirror.dest).await?;
        if empty && let Some(index) = index {
            tracing::info!(
                url,
                point = index.at.point,
                files = index.files.len(),
                "the data directory is empty: starting from the copy in the bucket"
            );
            let report = backup_store::restore(&mirror.dest, data_dir, false).await?;
            // The same server, continued: its copies go on into this prefix.
            crate::backup::set_instance(data_dir, &report.index.at.instance).map_err(|e| BackupError::Io {
                what: format!("writing the identity of {}", data_dir.display()),
                source: e,
            })?;
            tracing::info!(
                bytes = report.bytes,
                point = report.index.at.point,
                "data directory restored from the bucket: it holds every write acknowledged before its point"
            );
        }
        Ok(mirror)
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Pushes one image to the bucket.
    pub(crate) async fn push(&self, storage: &Storage, alerts: &tocsin_alerting::AlertEngine, backups: &Backups) {
        let result = async {
            let image = backups
                .take_image(storage, alerts, "mirror")
                .await
                .map_err(|e| BackupError::Refused(e.message().to_string()))?;
            let files = LocalImage { dir: backups.image_dir(&image.id) };
            let pushed = backup_store::push(&image, &files, &self.dest, false, false).await;
            backups.drop_image(&image.id);
            pushed.map(|r| (r, image.at.point_unix_ms))
        }
        .await;
        match result {
            Ok((report, point)) => {
                let m = &self.metrics;
                m.pushes.fetch_add(1, Ordering::Relaxed);
                m.copied_bytes.fetch_add(report.copied_bytes, Ordering::Relaxed);
                m.copied_files.fetch_add(report.copied_files as u64, Ordering::Relaxed);
                m.last_point_ms.store(point, Ordering::Relaxed);
                tracing::debug!(
                    url = self.url,
                    copied_files = report.copied_files,
                    copied_bytes = report.copied_bytes,
                    reused = report.reused_files,
                    removed = report.pruned,
                    "copy pushed to the bucket"
                );
            }
            Err(e) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = self.url, "cannot push the copy to the bucket: {e}");
            }
        }
    }

    /// Pushes every interval until stopped (the last push is the caller's,
    /// at shutdown).
    pub(crate) async fn run(
        self: Arc<Self>,
        storage: Arc<Storage>,
        alerts: Arc<tocsin_alerting::AlertEngine>,
        backups: Arc<Backups>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.push(&storage, &alerts, &backups).await;
        }
    }
}

/// An image in the data directory, read from disk.
struct LocalImage {
    dir: PathBuf,
}

impl ImageFiles for LocalImage {
    async fn open(
        &self,
        file: &BackupFile,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, BackupError>>, BackupError> {
        use tokio::io::AsyncSeekExt;
        let path = self.dir.join(&file.path);
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| BackupError::Io { what: format!("opening {}", path.display()), source: e })?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| BackupError::Io { what: format!("reading {}", path.display()), source: e })?;
        let bytes = file.bytes.saturating_sub(offset);
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::io::AsyncReadExt::take(f, bytes), 256 << 10)
            .map(move |chunk| {
                chunk.map_err(|e| BackupError::Io { what: format!("reading {}", path.display()), source: e })
            });
        Ok(stream.boxed())
    }

    fn local(&self, file: &BackupFile) -> Option<PathBuf> {
        Some(self.dir.join(&file.path))
    }
}
