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
//!
//! One copy has one writer. The index names the server pushing it
//! ([`WriterRun`]); a server pushes only where no other has pushed within
//! three of its intervals, and one that finds another's push after its own
//! (it was paused or cut off, and a new server took the copy over) stops for
//! good: it pushes nothing more, refuses writes and stops alerting. This is
//! a time-based claim through the bucket, not a lease: two servers deciding
//! within the same moment can both push once (docs/operations.md).
//!
//! With `wal = "object-store"` or `"object-store-sync"` the WAL's records
//! also go to the bucket as they are written ([`Mirror::ship_wal`]), under
//! `runs/<run>/shipped/`; a server starting from the copy replays those of
//! the run that pushed it after the image ([`backup_store::restore_shipped`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tocsin_storage::Storage;
use tokio::sync::watch;

use crate::backup::{BackupFile, Backups};
use crate::backup_store::{self, BackupError, Claim, ImageFiles, Index, Place, Synced, WriterRun, segment_file};

/// Counters of `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct MirrorMetrics {
    pub(crate) pushes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) copied_bytes: AtomicU64,
    pub(crate) copied_files: AtomicU64,
    /// At the last push: segment files let go of that the bucket lost.
    pub(crate) lost_files: AtomicU64,
    /// Unix milliseconds of the image of the last push that succeeded: every
    /// write acknowledged before it is in the bucket.
    pub(crate) last_point_ms: AtomicI64,
    /// WAL shipping: pieces and bytes sent, attempts that failed.
    pub(crate) shipped_pieces: AtomicU64,
    pub(crate) shipped_bytes: AtomicU64,
    pub(crate) ship_failures: AtomicU64,
    /// Alerting journal shipping: pieces and bytes sent.
    pub(crate) shipped_alerting_pieces: AtomicU64,
    pub(crate) shipped_alerting_bytes: AtomicU64,
}

pub(crate) struct Mirror {
    pub(crate) url: String,
    dest: Place,
    interval: Duration,
    pub(crate) metrics: MirrorMetrics,
    me: WriterRun,
    /// Whether a push of this run has succeeded.
    pushed: AtomicBool,
    /// When this run took the copy on (Unix ms).
    since_ms: AtomicI64,
    /// Set once another server has taken the copy over.
    fenced: watch::Sender<bool>,
    /// Which state of the copy the data directory matches.
    synced: Synced,
    /// The primary's lease in etcd (`[ha]`), when this server has one: it
    /// pushes only while it holds it, and need not wait for another
    /// server's recent push (that server's lease has expired).
    lease: Option<Arc<crate::lease::Leadership>>,
    /// The run that pushed the copy found at start: its shipped WAL is
    /// removed once this run's first push covers it.
    previous_run: Option<String>,
    /// Wakes the WAL shipper after the first push.
    first_push: watch::Sender<bool>,
    /// The WAL, when it is shipped: writes waiting for their records to be
    /// shipped learn of a failed first push, or of this server standing down.
    shipped_wal: std::sync::OnceLock<Arc<tocsin_storage::wal::Wal>>,
    /// The alerting engine, when its journal is shipped with the WAL.
    shipped_alerts: std::sync::OnceLock<Arc<tocsin_alerting::AlertEngine>>,
    /// `segments = "object-store"`: where the storage fetches the segment
    /// files it let go of (the files of this server's last pushes).
    pub(crate) segments: Option<Arc<crate::reader::BucketSegments>>,
}

impl Mirror {
    /// Opens the bucket; before the storage opens, fills an empty data
    /// directory from the copy the bucket holds, if any.
    /// `segments_in_bucket` (`segments = "object-store"`): the segment
    /// files stay in the bucket until read, a start from the copy fetches
    /// none of them.
    pub(crate) async fn open(
        url: &str,
        interval: Duration,
        data_dir: &Path,
        lease: Option<Arc<crate::lease::Leadership>>,
        segments_in_bucket: bool,
    ) -> Result<Mirror, BackupError> {
        let dest = Place::parse(url)?;
        let me = WriterRun {
            run: format!("{:016x}", tocsin_auth::random_u64().map_err(|e| BackupError::Refused(e.to_string()))?),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "an unnamed host".into()),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            stopped: false,
        };
        let mirror = Mirror {
            url: url.to_string(),
            dest,
            interval,
            metrics: MirrorMetrics::default(),
            me,
            pushed: AtomicBool::new(false),
            since_ms: AtomicI64::new(0),
            fenced: watch::Sender::new(false),
            synced: Synced::in_dir(data_dir),
            lease,
            previous_run: None,
            first_push: watch::Sender::new(false),
            shipped_wal: std::sync::OnceLock::new(),
            shipped_alerts: std::sync::OnceLock::new(),
            segments: match segments_in_bucket {
                true => Some(Arc::new(crate::reader::BucketSegments::new(Place::parse(url)?))),
                false => None,
            },
        };
        let mut mirror = mirror;
        let empty = match std::fs::read_dir(data_dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(BackupError::Io { what: format!("reading {}", data_dir.display()), source: e }),
        };
        // Reached even when the data directory is not empty: a bucket that
        // cannot be read is said at start, not at the first push.
        let mut index = Index::read(&mirror.dest).await?;
        // Taking over a copy whose server may still be pushing: wait until
        // it has been quiet for its window, or refuse. (Not with the lease:
        // that server's has expired, and it pushes no more.)
        if empty
            && mirror.lease.is_none()
            && let Some(seen) = &index
            && let Some(other) = WriterRun::live(seen, now_ms())
        {
            let wait = other.window_ms() - (now_ms() - seen.at.point_unix_ms);
            tracing::warn!(
                url,
                host = other.host,
                "another server pushed into this copy {:.1} s ago: waiting {:.1} s for it to be quiet before starting \
                 from the copy",
                (now_ms() - seen.at.point_unix_ms) as f64 / 1000.0,
                wait as f64 / 1000.0
            );
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait.max(0)).unwrap_or(0))).await;
            let again = Index::read(&mirror.dest).await?;
            if let Some(now) = &again
                && now.at.point_unix_ms != seen.at.point_unix_ms
                && let Some(other) = WriterRun::live(now, now_ms())
            {
                return Err(BackupError::Refused(format!(
                    "another server (on {}) is pushing into {url} (last push {:.1} s ago); two servers on one copy \
                     would mix it. Stop that server first: a server started on an empty data directory takes the \
                     copy over once its server has stopped",
                    other.host,
                    (now_ms() - now.at.point_unix_ms) as f64 / 1000.0
                )));
            }
            index = again;
        }
        // A data directory of its own pushes only over the state of the copy
        // it last pushed (or started from): past it, another server took the
        // copy over, and this directory is behind it.
        // (A directory a restore did not finish is the storage's to refuse,
        // with its own message.)
        let restoring = data_dir.join(tocsin_storage::RESTORE_MARKER).exists();
        if !empty && !restoring {
            mirror.check_own_copy(index.as_ref(), data_dir).await?;
        } else if index.is_none() {
            mirror.check_place_is_free().await?;
        }
        mirror.previous_run = index.as_ref().and_then(|i| i.writer.as_ref()).map(|w| w.run.clone());
        if let (Some(s), Some(i)) = (&mirror.segments, &index) {
            s.listed(i);
        }
        if empty && let Some(index) = index {
            tracing::info!(
                url,
                point = index.at.point,
                files = index.files.len(),
                "the data directory is empty: starting from the copy in the bucket"
            );
            let report = backup_store::restore(&mirror.dest, data_dir, false, mirror.segments.is_none()).await?;
            // The same server, continued: its copies go on into this prefix.
            crate::backup::set_instance(data_dir, &report.index.at.instance).map_err(|e| BackupError::Io {
                what: format!("writing the identity of {}", data_dir.display()),
                source: e,
            })?;
            tracing::info!(
                bytes = report.bytes,
                point = report.index.at.point,
                shipped_wal_files = report.shipped.files,
                shipped_wal_bytes = report.shipped.bytes,
                shipped_alerting_records = report.shipped.alerting_records,
                segment_files_left_in_the_bucket = report.left,
                "data directory restored from the bucket: it holds every write acknowledged before its point, and \
                 the WAL and alerting journal its server shipped after it"
            );
        }
        mirror.since_ms.store(now_ms(), Ordering::Relaxed);
        Ok(mirror)
    }

    /// For a data directory of its own: refuses a copy this directory
    /// cannot push into (another server's, one that moved on since this
    /// directory's last push, or a folder that holds other files).
    async fn check_own_copy(&self, index: Option<&Index>, data_dir: &Path) -> Result<(), BackupError> {
        let Some(index) = index else { return self.check_place_is_free().await };
        // A directory restored by `tocsin restore` has no identity yet: it
        // becomes a new server, not the copy's.
        let ours = std::fs::read_to_string(data_dir.join(crate::backup::INSTANCE_FILE)).unwrap_or_default();
        if ours.trim() != index.at.instance {
            let ours = if ours.trim().is_empty() { "none yet" } else { ours.trim() };
            return Err(BackupError::Refused(format!(
                "{} holds the copy of another data directory (identity {}; this one's is {ours}): a server pushes \
                 only its own copy. To continue that copy, start on an empty data directory (a server on an empty \
                 directory starts from the copy; `tocsin restore` makes a new, independent server), or give another \
                 prefix",
                self.url, index.at.instance,
            )));
        }
        backup_store::check_synced(index, &self.synced.read()?, &self.dest).map_err(|e| match e {
            BackupError::TakenOver(why) => BackupError::Refused(format!(
                "{why}. To continue from the copy, start on an empty data directory (move {} aside first: it may hold \
                 writes this server acknowledged after its last push, to be recovered by hand), or give another \
                 --object-store prefix",
                data_dir.display()
            )),
            e => e,
        })
    }

    /// Refuses a prefix (or directory) that holds other files and no copy.
    async fn check_place_is_free(&self) -> Result<(), BackupError> {
        if self.dest.is_empty().await? {
            return Ok(());
        }
        Err(BackupError::Refused(format!(
            "{} is not empty and holds no Tocsin copy (no {}); a copy removes the files its index does not list, so \
             it will not be kept among others. Give an empty prefix or directory",
            self.url,
            backup_store::INDEX
        )))
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// A receiver that turns true once another server has taken the copy over.
    pub(crate) fn fenced(&self) -> watch::Receiver<bool> {
        self.fenced.subscribe()
    }

    /// Pushes one image to the bucket; `last` at shutdown.
    pub(crate) async fn push(
        &self,
        storage: &Storage,
        alerts: &tocsin_alerting::AlertEngine,
        backups: &Backups,
        last: bool,
    ) {
        if *self.fenced.borrow() {
            return;
        }
        if let Some(Err(why)) = self.lease.as_ref().map(|l| l.check()) {
            tracing::error!(url = self.url, "not pushing: {why}");
            storage.fence(why);
            return;
        }
        let me = WriterRun { stopped: last, ..self.me.clone() };
        let first = !self.pushed.load(Ordering::Relaxed);
        let result = async {
            let image = backups
                .take_image(storage, alerts, "mirror")
                .await
                .map_err(|e| BackupError::Refused(e.message().to_string()))?;
            let files = LocalImage { dir: backups.image_dir(&image.id) };
            let claim = Claim {
                me: &me,
                first,
                since_ms: self.since_ms.load(Ordering::Relaxed),
                synced: &self.synced,
                lease: self.lease.as_deref(),
            };
            let pushed = backup_store::push(&image, &files, &self.dest, false, false, Some(claim)).await;
            backups.drop_image(&image.id);
            pushed.map(|r| (r, image.at.point_unix_ms, image.at.wal_closed, image.at.alerting_seq))
        }
        .await;
        match result {
            Ok((report, point, wal_closed, alerting_seq)) => {
                self.pushed.store(true, Ordering::Relaxed);
                // The files the copy now holds may leave the disk.
                if let Some(s) = &self.segments {
                    s.listed(&report.index);
                    storage.in_copy(
                        report.index.files.iter().filter(|f| segment_file(&f.path)).map(|f| f.path.clone()).collect(),
                    );
                }
                self.first_push.send_replace(true);
                // The image holds the WAL up to `wal_closed`: the pieces
                // shipped of it, and all of the previous run's, are done with.
                // Likewise the alerting journal records its snapshot covers.
                let mut gone = backup_store::remove_shipped(&self.dest, &self.me.run, Some(wal_closed)).await;
                gone =
                    gone.and(backup_store::remove_shipped_alerting(&self.dest, &self.me.run, Some(alerting_seq)).await);
                if first && let Some(previous) = self.previous_run.as_deref().filter(|p| *p != self.me.run) {
                    gone = gone.and(backup_store::remove_shipped(&self.dest, previous, None).await);
                    gone = gone.and(backup_store::remove_shipped_alerting(&self.dest, previous, None).await);
                }
                if let Err(e) = gone {
                    tracing::warn!(url = self.url, "cannot remove shipped WAL the copy now holds: {e}");
                }
                if let Some(alerts) = self.shipped_alerts.get() {
                    alerts.journal_covered(alerting_seq);
                }
                let m = &self.metrics;
                m.pushes.fetch_add(1, Ordering::Relaxed);
                m.copied_bytes.fetch_add(report.copied_bytes, Ordering::Relaxed);
                m.copied_files.fetch_add(report.copied_files as u64, Ordering::Relaxed);
                m.last_point_ms.store(point, Ordering::Relaxed);
                m.lost_files.store(report.lost.len() as u64, Ordering::Relaxed);
                if let Some(first) = report.lost.first() {
                    tracing::error!(
                        url = self.url,
                        lost = report.lost.len(),
                        example = first,
                        "segment files this server let go of (segments = \"object-store\") are gone from the bucket \
                         (deleted or changed there): queries over them fail until they are put back from a backup; the \
                         copy goes on with the rest"
                    );
                }
                tracing::debug!(
                    url = self.url,
                    copied_files = report.copied_files,
                    copied_bytes = report.copied_bytes,
                    reused = report.reused_files,
                    removed = report.pruned,
                    "copy pushed to the bucket"
                );
            }
            Err(BackupError::TakenOver(why)) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = self.url, "{why}");
                storage.fence(why.clone());
                self.fenced.send_replace(true);
                if let Some(wal) = self.shipped_wal.get() {
                    wal.stop_shipping(why.clone());
                }
                if let Some(alerts) = self.shipped_alerts.get() {
                    alerts.stop_journal_shipping();
                }
                // Whatever the lease says, the copy has moved on: this
                // server lets the key go for a standby to start from it.
                if let Some(l) = &self.lease {
                    l.give_up(&why).await;
                }
            }
            Err(e) => {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = self.url, "cannot push the copy to the bucket: {e}");
                // Nothing is shipped before this run's first push: writes
                // waiting for it are answered rather than held.
                if first && let Some(wal) = self.shipped_wal.get() {
                    wal.ship_failed(format!("this server's first copy is not in the bucket yet ({e})"));
                }
                if first && let Some(alerts) = self.shipped_alerts.get() {
                    alerts.journal_ship_failed(format!("this server's first copy is not in the bucket yet ({e})"));
                }
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
            self.push(&storage, &alerts, &backups, false).await;
        }
    }
}

impl Mirror {
    /// Tells the mirror the WAL is shipped (before its first push).
    pub(crate) fn ships(&self, wal: Arc<tocsin_storage::wal::Wal>) {
        let _ = self.shipped_wal.set(wal);
    }

    /// `wal = "object-store"` / `"object-store-sync"`: sends the WAL's
    /// records to the bucket as they are written, until the WAL closes (the
    /// writes of a stopping server are still answered; its last push
    /// follows). Nothing goes before this run's first push (a restore reads
    /// the pieces of the run that pushed the index it restores): under
    /// `Sync`, writes wait for it.
    pub(crate) async fn ship_wal(self: Arc<Self>, wal: Arc<tocsin_storage::wal::Wal>, every: Option<Duration>) {
        let mut pushed = self.first_push.subscribe();
        tokio::select! {
            _ = pushed.wait_for(|p| *p) => {}
            () = wal.closed() => return,
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match every {
                Some(d) => tokio::time::sleep(d).await,
                None => wal.wait_for_pieces().await,
            }
            if wal.is_closed() {
                return;
            }
            let pieces = wal.pieces_to_ship();
            if pieces.is_empty() {
                continue;
            }
            if *self.fenced.borrow() {
                wal.stop_shipping("another server took the copy over".into());
                return;
            }
            if let Some(Err(why)) = self.lease.as_ref().map(|l| l.check()) {
                wal.stop_shipping(why);
                return;
            }
            match self.send_pieces(&pieces).await {
                Ok(()) => {
                    wal.shipped(&pieces);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    self.metrics.ship_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(url = self.url, "cannot ship the WAL to the bucket (retrying): {e}");
                    wal.ship_failed(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Ships the alerting engine's state journal with the WAL (same mode,
    /// same interval): see `tocsin_alerting::engine::ship`. Like the WAL,
    /// nothing goes before this run's first push.
    pub(crate) async fn ship_alerts(
        self: Arc<Self>,
        alerts: Arc<tocsin_alerting::AlertEngine>,
        every: Option<Duration>,
        mut stop: watch::Receiver<bool>,
    ) {
        let _ = self.shipped_alerts.set(Arc::clone(&alerts));
        let mut pushed = self.first_push.subscribe();
        tokio::select! {
            _ = pushed.wait_for(|p| *p) => {}
            _ = stop.wait_for(|s| *s) => {
                // The last push covers what is left; nobody waits for it.
                alerts.stop_journal_shipping();
                return;
            }
        }
        alerts.journal_ship_ready();
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                () = async {
                    match every {
                        Some(d) => tokio::time::sleep(d).await,
                        None => alerts.journal_waiting().await,
                    }
                } => {}
                _ = stop.wait_for(|s| *s) => {
                    alerts.stop_journal_shipping();
                    return;
                }
            }
            if alerts.journal_shipping_stopped() {
                return;
            }
            if *self.fenced.borrow() || self.lease.as_ref().is_some_and(|l| l.check().is_err()) {
                alerts.stop_journal_shipping();
                return;
            }
            let Some(piece) = alerts.journal_to_ship() else { continue };
            let name = backup_store::alerting_piece_name(&self.me.run, piece.first, piece.last);
            let bytes = piece.bytes.len() as u64;
            let put = tokio::time::timeout(PIECE_TIMEOUT, self.dest.put_piece(&name, piece.bytes)).await;
            match put {
                Ok(Ok(())) => {
                    alerts.journal_shipped(piece.last);
                    self.metrics.shipped_alerting_pieces.fetch_add(1, Ordering::Relaxed);
                    self.metrics.shipped_alerting_bytes.fetch_add(bytes, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("{} was not written within {} s", self.dest.shown(&name), PIECE_TIMEOUT.as_secs()),
                    };
                    self.metrics.ship_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(url = self.url, "cannot ship the alerting journal to the bucket (retrying): {why}");
                    alerts.journal_ship_failed(why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Sends `pieces` in order, stopping at the first that fails.
    async fn send_pieces(&self, pieces: &[tocsin_storage::wal::WalPiece]) -> Result<(), BackupError> {
        for p in pieces {
            let name = backup_store::piece_name(&self.me.run, p.file_seq, p.offset);
            // One attempt is bounded (the client's own retries take minutes):
            // the piece goes again, with the next ones.
            tokio::time::timeout(PIECE_TIMEOUT, self.dest.put_piece(&name, p.bytes.clone())).await.map_err(
                |_| {
                    BackupError::Refused(format!(
                        "{} was not written within {} s",
                        self.dest.shown(&name),
                        PIECE_TIMEOUT.as_secs()
                    ))
                },
            )??;
            self.metrics.shipped_pieces.fetch_add(1, Ordering::Relaxed);
            self.metrics.shipped_bytes.fetch_add(p.bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How long one upload of shipped WAL may take before it is tried again.
const PIECE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Wall time in Unix milliseconds (the storage's clock).
fn now_ms() -> i64 {
    tocsin_storage::now_ns() / 1_000_000
}
