//! Online checkpoints: a consistent image of the storage, hard-linked into a
//! directory beside the live files, for `tocsin backup` to copy at leisure.
//!
//! Segments, packs and closed WAL files are never modified once written, so
//! a hard link is a frozen copy that costs nothing and that no compaction,
//! retention or persist can take away (they only unlink their own names).
//! The image is taken with `persist_lock` held, so no manifest is written
//! meanwhile, and the WAL is rotated under `gate`, so that every write
//! acknowledged before the checkpoint is in a closed WAL file of the image
//! or in a segment its manifest lists.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{Storage, StorageError};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::wal;

/// What [`Storage::checkpoint`] put in its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Files of the image, relative to its directory, in order.
    pub files: Vec<PathBuf>,
    /// The manifest's WAL mark: the WAL files after it hold the rows not yet
    /// in segments, up to [`Checkpoint::wal_closed`].
    pub wal_persisted_upto: u64,
    /// The WAL file closed by the checkpoint (or the last one closed before,
    /// when the current one held nothing): every write acknowledged before
    /// the checkpoint started is in it, an earlier one, or a segment.
    pub wal_closed: u64,
    pub segments: usize,
    /// Segment files of the image a writer of `segments = "object-store"`
    /// let go of (its copy in the bucket holds them), with their lengths:
    /// not linked into the directory.
    pub away: Vec<(PathBuf, u64)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

impl Storage {
    /// Hard-links a consistent image of the storage (manifest, segments,
    /// packs and the WAL files not yet persisted) into `dest`, which must be
    /// a new directory on the data directory's file system. Writes pause
    /// only for the WAL rotation; persists and compactions wait for the
    /// links to be made.
    pub async fn checkpoint(&self, dest: &Path) -> Result<Checkpoint, StorageError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        let _no_manifest_change = self.persist_lock.lock().await;
        let wal_closed = {
            let _no_writes = self.gate.write().await;
            // An idle server's backups leave no empty WAL files behind.
            self.writable("backups")?.rotate_if_written()?
        };
        let wal_persisted_upto = self.wal_persisted_upto.load(Ordering::Acquire);
        let data_dir = self.config.data_dir.clone();
        let dest = dest.to_path_buf();
        // A file let go of is in the copy: the image lists it with the
        // copy's length.
        let away = self.cache.get().map(|c| std::sync::Arc::clone(&c.source));
        tokio::task::spawn_blocking(move || link_image(&data_dir, &dest, wal_persisted_upto, wal_closed, away))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }
}

fn link_image(
    data_dir: &Path,
    dest: &Path,
    wal_persisted_upto: u64,
    wal_closed: u64,
    away: Option<std::sync::Arc<dyn crate::cache::SegmentSource>>,
) -> Result<Checkpoint, StorageError> {
    fs::create_dir(dest).map_err(io(dest))?;
    // The manifest on disk is the last one saved, and none is being written.
    let mut manifest = Manifest::load(data_dir)?;
    // Retired files are not part of the image.
    manifest.retired.clear();
    let mut files = Vec::new();
    let paths: BTreeSet<&str> = manifest
        .databases
        .values()
        .flat_map(|t| t.values())
        .flat_map(|e| e.segments.iter())
        .map(|s| s.path.as_str())
        .collect();
    let segments = manifest.databases.values().flat_map(|t| t.values()).map(|e| e.segments.len()).sum();
    let mut gone = Vec::new();
    for rel in paths {
        match link(data_dir, dest, Path::new(rel)) {
            Ok(()) => files.push(PathBuf::from(rel)),
            Err(e) => {
                let missing =
                    matches!(&e, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                match away.as_ref().and_then(|a| a.bytes(rel)).filter(|_| missing) {
                    Some(bytes) => gone.push((PathBuf::from(rel), bytes)),
                    None => return Err(e),
                }
            }
        }
    }
    let wal_dir = data_dir.join("wal");
    let wal_files = wal::list_files(&wal_dir).map_err(io(&wal_dir))?;
    for (seq, path) in wal_files {
        if seq > wal_persisted_upto && seq <= wal_closed {
            let rel = Path::new("wal").join(path.file_name().unwrap_or_default());
            link(data_dir, dest, &rel)?;
            files.push(rel);
        }
    }
    manifest.save(dest)?;
    files.push(PathBuf::from(MANIFEST_FILE));
    Ok(Checkpoint { files, wal_persisted_upto, wal_closed, segments, away: gone })
}

/// Hard-links `data_dir/rel` to `dest/rel`, creating `dest`'s folders.
fn link(data_dir: &Path, dest: &Path, rel: &Path) -> Result<(), StorageError> {
    let from = data_dir.join(rel);
    let to = dest.join(rel);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    fs::hard_link(&from, &to).map_err(|source| StorageError::Io {
        path: from.clone(),
        source: std::io::Error::new(
            source.kind(),
            format!("cannot hard-link it into the checkpoint {} ({source}); a checkpoint needs a file system with hard links", to.display()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;
    use crate::write::{FieldColumn, FieldValues, SeriesBlock, TableWrite};

    async fn open(dir: &Path) -> std::sync::Arc<Storage> {
        Storage::open(StorageConfig::for_tests(dir)).await.expect("open")
    }

    /// Writes `n` rows of host "a" from timestamp `from`.
    async fn write(s: &Storage, from: i64, n: i64) {
        let ts: Vec<i64> = (from..from + n).collect();
        let block = SeriesBlock {
            item: 0,
            tags: vec![("host".into(), "a".into())],
            fields: vec![FieldColumn { name: "v".into(), values: FieldValues::I64(ts.clone()), validity: None }],
            timestamps: ts,
        };
        let out =
            s.write("public", vec![TableWrite { table: "cpu".into(), blocks: vec![block] }]).await.expect("write");
        assert_eq!(out.accepted_rows, n as u64);
    }

    fn rows(s: &Storage) -> u64 {
        s.snapshot("public", "cpu").map_or(0, |t| {
            t.chunks.iter().map(|c| c.batch.num_rows() as u64).sum::<u64>()
                + t.segments.iter().map(|g| g.rows).sum::<u64>()
        })
    }

    /// The image holds every row written before it, as segments or WAL, and
    /// storage opened on it sees them all; rows written after are not in it.
    #[tokio::test]
    async fn an_image_opens_with_every_row_written_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let storage = open(&data).await;
        write(&storage, 0, 100).await;
        storage.persist().await.expect("persist");
        write(&storage, 100, 50).await;
        let image = dir.path().join("image");
        let cp = storage.checkpoint(&image).await.expect("checkpoint");
        write(&storage, 150, 25).await;
        assert_eq!(rows(&storage), 175);
        assert!(cp.files.iter().any(|f| f.starts_with("wal")), "{:?}", cp.files);
        assert!(cp.files.iter().any(|f| f.starts_with("segments") || f.starts_with("packs")), "{:?}", cp.files);
        assert_eq!(cp.segments, 1);
        // A persist after the checkpoint deletes the WAL files it covers; the
        // image's links keep them.
        storage.persist().await.expect("persist");
        for f in &cp.files {
            assert!(image.join(f).is_file(), "{} missing", f.display());
        }
        let restored = open(&image).await;
        assert_eq!(rows(&restored), 150, "the image holds the rows written before it, no more");
    }

    /// A checkpoint of an idle server starts no new WAL file.
    #[tokio::test]
    async fn checkpoints_of_an_idle_server_leave_no_empty_wal_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let storage = open(&data).await;
        write(&storage, 0, 10).await;
        let first = storage.checkpoint(&dir.path().join("a")).await.expect("checkpoint");
        let second = storage.checkpoint(&dir.path().join("b")).await.expect("checkpoint");
        assert_eq!(first.wal_closed, second.wal_closed, "nothing was written in between");
        assert_eq!(first.files, second.files);
        let wal_files = wal::list_files(&data.join("wal")).expect("list");
        assert_eq!(wal_files.len(), 2, "the written file and the current one: {wal_files:?}");
        write(&storage, 10, 5).await;
        let third = storage.checkpoint(&dir.path().join("c")).await.expect("checkpoint");
        assert_eq!(third.wal_closed, second.wal_closed + 1);
        drop(storage);
        let image = open(&dir.path().join("c")).await;
        assert_eq!(rows(&image), 15);
    }

    #[tokio::test]
    async fn a_checkpoint_into_an_existing_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir.path().join("data")).await;
        let image = dir.path().join("image");
        fs::create_dir(&image).expect("mkdir");
        let err = storage.checkpoint(&image).await.expect_err("exists");
        assert!(err.to_string().contains("image"), "{err}");
    }
}
