//! A reader's storage (`tocsin serve --role reader`): a copy of a writer's
//! data directory, fetched from the bucket by the server, that is opened
//! without a WAL of its own and refreshed whole when a newer copy has been
//! fetched ([`Storage::reload`]). Writes, persists, compactions, retention
//! and backups are refused ([`StorageError::ReadOnly`]).
//!
//! A reload reads the new manifest, checks the segments it has not seen
//! before, replays the copied WAL files (the writer's rows not yet in
//! segments) into new buffers, and swaps the tables in one step: a query
//! sees the old copy or the new one, never a mix. Segment files the new
//! manifest no longer lists are retired like a compaction's inputs, and
//! deleted once the queries that started before the swap are done.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};

use super::{Storage, StorageError};
use crate::cache::{SegmentCache, SegmentSource};
use crate::clock::{Clock, SystemClock};
use crate::config::StorageConfig;
use crate::manifest::Manifest;
use crate::manifest::SegmentMeta;
use crate::recovery::{self, Mode};
use crate::segment::footer_facts;

/// Files a fetching reader brings from the bucket at once.
const FETCHES_AT_ONCE: usize = 4;

/// What a reload found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reloaded {
    /// Segments listed by the new manifest.
    pub segments: usize,
    /// Rows replayed from the copied WAL files.
    pub buffered_rows: u64,
    /// Segment files no longer listed (deleted once unread).
    pub retired: usize,
}

impl Storage {
    /// A reader applies WAL records its writer shipped after the copy it
    /// loaded last (in their order; see `wal = "object-store"`): their rows
    /// join the buffers as on the writer, until the next
    /// [`Storage::reload`] replaces them with a newer copy. Returns the
    /// rows applied.
    pub async fn apply_shipped(&self, entries: Vec<crate::wal::WalEntry>, source: &str) -> Result<u64, StorageError> {
        if !self.is_reader() {
            return Err(StorageError::Task("applying shipped WAL records is for a reader's storage".into()));
        }
        // Not while a reload swaps the tables.
        let _one_at_a_time = self.persist_lock.lock().await;
        let limits = self.config.limits.for_replay();
        let mut rows = 0;
        for entry in entries {
            let mut st = self.state.write();
            rows += recovery::replay_entry(&mut st, entry, &self.config, self.clock.as_ref(), &limits, source)?;
        }
        self.metrics.wal_replayed_rows.fetch_add(rows, Ordering::Relaxed);
        Ok(rows)
    }

    /// Opens a reader's copy of a data directory (see the module).
    pub async fn open_reader(config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        Storage::open_reader_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Storage::open_reader`] with the given clock.
    pub async fn open_reader_with_clock(
        config: StorageConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Storage>, StorageError> {
        tokio::task::spawn_blocking(move || recovery::open(config, clock, Mode::Reader, false, None))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Opens a reader's copy whose manifest and WAL files are in the data
    /// directory and whose segment files come from `source` as scans read
    /// them, at most `limit` bytes of them kept (see [`crate::cache`]).
    /// Files already there (an earlier run's) are checked by `source` when
    /// first read.
    pub async fn open_reader_fetching(
        config: StorageConfig,
        source: Arc<dyn SegmentSource>,
        limit: u64,
    ) -> Result<Arc<Storage>, StorageError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let storage = tokio::task::spawn_blocking(move || recovery::open(config, clock, Mode::Reader, true, None))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))??;
        // What an earlier run left (the files no longer listed are gone),
        // the oldest first to go.
        let mut present: Vec<(std::time::SystemTime, String, u64)> = recovery::data_files(&storage.config.data_dir)
            .into_iter()
            .filter_map(|p| {
                let meta = std::fs::metadata(&p).ok()?;
                let rel = p.strip_prefix(&storage.config.data_dir).ok()?.to_str()?.to_string();
                Some((meta.modified().unwrap_or(std::time::UNIX_EPOCH), rel, meta.len()))
            })
            .collect();
        present.sort();
        let cache = SegmentCache::new(source, limit, present.into_iter().map(|(_, p, b)| (p, b)).collect(), false);
        if storage.cache.set(cache).is_err() {
            return Err(StorageError::Task("the segment cache was set twice".into()));
        }
        storage.trim_cache(&[]);
        Ok(storage)
    }

    /// Brings the files of `segments` (of `db.table`, from one snapshot)
    /// onto the disk of a fetching reader or writer before a scan opens them (see
    /// [`crate::cache`]); does nothing on other storages. Hold a
    /// [`Storage::reader`] guard from before the snapshot until the files
    /// are read: files evicted meanwhile stay until it is dropped.
    pub async fn ensure_local(&self, db: &str, table: &str, segments: &[&SegmentMeta]) -> Result<(), StorageError> {
        let Some(cache) = self.cache.get() else { return Ok(()) };
        let mut paths: Vec<&str> = segments.iter().map(|s| s.path.as_str()).collect();
        paths.sort_unstable();
        paths.dedup();
        let missing = cache.touch(&paths);
        let dir = &self.config.data_dir;
        let fetch = |path: String| async move {
            let lock = cache.fetch_lock(&path);
            let _one_fetch = lock.lock().await;
            if cache.is_checked(&path) {
                return Ok(());
            }
            // A writer's own file, written since the cache was made (counted
            // unless retired: the writer's purge deletes those).
            if cache.is_writer()
                && let Ok(m) = std::fs::metadata(dir.join(&path))
            {
                if !self.retired.lock().iter().any(|(p, _, _)| *p == path) {
                    cache.own(&path, m.len());
                }
                return Ok(());
            }
            let fetch_error = |reason: String| StorageError::SegmentFetch {
                path: path.clone(),
                of: format!("of table {db}.{table}"),
                reason,
            };
            let fetched = cache.source.fetch(dir, &path).await.map_err(fetch_error)?;
            let full = dir.join(&path);
            let mismatch = |reason: String| {
                // The bucket's file and its manifest disagree: not kept.
                let _ = std::fs::remove_file(&full);
                fetch_error(format!("the copy's file is not what the manifest lists: {reason}"))
            };
            let (rows, origin) = footer_facts(&full).map_err(|e| mismatch(e.to_string()))?;
            for seg in segments.iter().filter(|s| s.path == path) {
                recovery::matches_file(db, table, seg, rows, origin.as_ref()).map_err(mismatch)?;
            }
            let bytes = std::fs::metadata(&full).map_err(|e| fetch_error(e.to_string()))?.len();
            cache.checked(&path, bytes, fetched);
            Ok::<_, StorageError>(())
        };
        futures::stream::iter(missing.into_iter().map(fetch))
            .buffer_unordered(FETCHES_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        self.trim_cache(&paths);
        Ok(())
    }

    /// Evicts what a fetching reader's cache holds past its bound (but
    /// `keep`), and deletes the evicted files no query may still read.
    pub(crate) fn trim_cache(&self, keep: &[&str]) {
        let Some(cache) = self.cache.get() else { return };
        let epoch = self.readers.lock().epoch;
        if cache.evict(&keep.iter().copied().collect(), epoch) > 0 {
            // Queries registered from now on may not count on them.
            let mut r = self.readers.lock();
            r.epoch = r.epoch.max(epoch + 1);
        }
        let oldest = self.readers.lock().active.keys().next().copied();
        cache.purge(&self.config.data_dir, oldest);
    }

    /// A writer of `segments = "object-store"`: fetches `path`, a segment
    /// file its copy holds, into `dir` (a backup image), checked against
    /// the copy; returns the bytes fetched.
    pub async fn fetch_copy(&self, dir: &std::path::Path, path: &str) -> Result<u64, StorageError> {
        let Some(cache) = self.cache.get() else {
            return Err(StorageError::Task(format!("{path} is not on disk, and this storage fetches nothing")));
        };
        cache.source.fetch(dir, path).await.map_err(|reason| StorageError::SegmentFetch {
            path: path.to_string(),
            of: "for a backup".into(),
            reason,
        })
    }

    /// The segment and pack files the manifest lists that are not on disk
    /// (a writer of `segments = "object-store"` let go of them).
    pub fn absent_segment_files(&self) -> Vec<String> {
        let st = self.state.read();
        let mut paths: Vec<String> =
            st.dbs.values().flat_map(|d| d.values()).flat_map(|t| t.segments.iter().map(|s| s.path.clone())).collect();
        drop(st);
        paths.sort_unstable();
        paths.dedup();
        let dir = &self.config.data_dir;
        paths.retain(
            |p| matches!(std::fs::symlink_metadata(dir.join(p)), Err(e) if e.kind() == std::io::ErrorKind::NotFound),
        );
        paths
    }

    /// A fetching reader's or writer's cache, as `/metrics` shows it.
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache.get().map(|c| c.stats())
    }

    /// Reads the data directory again (its manifest, segments and WAL files
    /// having been replaced by a newer copy) and swaps the tables. On error
    /// the tables stay as they were.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, StorageError> {
        if !self.is_reader() {
            return Err(StorageError::Task("reload is for a reader's storage".into()));
        }
        let _one_at_a_time = self.persist_lock.lock().await;
        let known: HashSet<String> = {
            let st = self.state.read();
            st.dbs.values().flat_map(|d| d.values()).flat_map(|t| t.segments.iter().map(|s| s.path.clone())).collect()
        };
        let this = Arc::clone(self);
        let checked = known.clone();
        let fetching = self.cache.get().is_some();
        let (state, manifest, replayed) = tokio::task::spawn_blocking(move || {
            let dir = &this.config.data_dir;
            let mut manifest = Manifest::load_existing(dir)?.unwrap_or_default();
            // A fetching reader checks each file as it fetches it.
            let checked = if fetching { recovery::listed_paths(&manifest) } else { checked };
            recovery::verify_segments(dir, &mut manifest, &this.metrics, Mode::Reader, &checked, None)?;
            let mut state = recovery::state_of(&manifest);
            let before = this.metrics.wal_replayed_rows.load(Ordering::Relaxed);
            recovery::replay_wal(
                dir,
                &dir.join("wal"),
                &manifest,
                &mut state,
                &this.config,
                &this.metrics,
                this.clock.as_ref(),
                Mode::Reader,
            )?;
            let replayed = this.metrics.wal_replayed_rows.load(Ordering::Relaxed) - before;
            Ok::<_, StorageError>((state, manifest, replayed))
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))??;
        let listed = recovery::listed_paths(&manifest);
        let retired: Vec<String> = known.into_iter().filter(|p| !listed.contains(p)).collect();
        let reloaded = Reloaded { segments: listed.len(), buffered_rows: replayed, retired: retired.len() };
        *self.state.write() = state;
        self.wal_persisted_upto.store(manifest.wal_persisted_upto, Ordering::Release);
        self.next_segment_id.store(manifest.next_segment_id, Ordering::Release);
        // Queries that started before the swap may still read the files
        // no longer listed; those that start after cannot see them.
        let epoch = {
            let mut r = self.readers.lock();
            r.epoch += 1;
            r.epoch - 1
        };
        match self.cache.get() {
            Some(cache) => cache.forget(&retired, epoch),
            None => {
                let now = self.clock.monotonic();
                self.retired.lock().extend(retired.into_iter().map(|p| (p, now, epoch)));
            }
        }
        Ok(reloaded)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::write::{FieldColumn, FieldValues, SeriesBlock, TableWrite};

    fn write(host: &str, ts: Vec<i64>) -> Vec<TableWrite> {
        let n = ts.len();
        vec![TableWrite {
            table: "t".into(),
            blocks: vec![SeriesBlock {
                item: 0,
                tags: vec![("host".into(), host.into())],
                timestamps: ts,
                fields: vec![FieldColumn { name: "v".into(), values: FieldValues::I64(vec![1; n]), validity: None }],
            }],
        }]
    }

    fn rows(s: &Storage) -> u64 {
        s.snapshot("public", "t").map_or(0, |t| {
            t.chunks.iter().map(|c| c.batch.num_rows() as u64).sum::<u64>()
                + t.segments.iter().map(|x| x.rows).sum::<u64>()
        })
    }

    /// What the server's fetch does: the writer's manifest, segments, packs
    /// and WAL files copied over the reader's (stale WAL files removed).
    fn copy(from: &Path, to: &Path) {
        fn tree(from: &Path, to: &Path) {
            let Ok(entries) = std::fs::read_dir(from) else { return };
            std::fs::create_dir_all(to).expect("mkdir");
            for e in entries.flatten() {
                if e.path().is_dir() {
                    tree(&e.path(), &to.join(e.file_name()));
                } else {
                    std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
                }
            }
        }
        let _ = std::fs::remove_dir_all(to.join("wal"));
        for sub in ["segments", "packs", "wal"] {
            tree(&from.join(sub), &to.join(sub));
        }
        std::fs::copy(from.join("manifest.json"), to.join("manifest.json")).expect("manifest");
    }

    #[tokio::test]
    async fn a_reader_reloads_persists_wal_and_merges_and_refuses_changes() {
        let (w, r) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let writer = Storage::open(StorageConfig::for_tests(w.path())).await.expect("open");
        writer.write("public", write("a", vec![1, 2, 3])).await.expect("write");
        writer.persist().await.expect("persist");
        writer.write("public", write("b", vec![4, 5])).await.expect("write");
        copy(w.path(), r.path());
        let reader = Storage::open_reader(StorageConfig::for_tests(r.path())).await.expect("open reader");
        assert!(reader.is_reader() && !writer.is_reader());
        assert_eq!(rows(&reader), 5, "segments and the WAL's rows");

        for _ in 0..3 {
            writer.write("public", write("c", vec![6, 7])).await.expect("write");
            writer.persist().await.expect("persist");
        }
        writer.compact_full().await.expect("compact");
        writer.write("public", write("d", vec![8])).await.expect("write");
        let before: HashSet<_> =
            reader.snapshot("public", "t").expect("t").segments.iter().map(|s| s.path.clone()).collect();
        copy(w.path(), r.path());
        let reloaded = reader.reload().await.expect("reload");
        assert_eq!(rows(&reader), rows(&writer));
        assert_eq!(reloaded.buffered_rows, 1, "only the unpersisted write is replayed");
        let after: HashSet<_> =
            reader.snapshot("public", "t").expect("t").segments.iter().map(|s| s.path.clone()).collect();
        assert_eq!(reloaded.retired, before.difference(&after).count());
        assert!(reloaded.retired > 0, "the merge replaced the first segment: {before:?} {after:?}");

        // A reload whose manifest lists a segment not fetched fails, and
        // the reader keeps what it had.
        writer.write("public", write("f", vec![10])).await.expect("write");
        writer.persist().await.expect("persist");
        std::fs::copy(w.path().join("manifest.json"), r.path().join("manifest.json")).expect("manifest");
        let seen = rows(&reader);
        let failed = reader.reload().await.expect_err("a listed segment is missing");
        assert!(matches!(failed, StorageError::SegmentUnreadable { .. }), "{failed}");
        assert_eq!(rows(&reader), seen);

        // A damaged WAL copy is not loaded either.
        copy(w.path(), r.path());
        writer.write("public", write("g", vec![11])).await.expect("write");
        copy(w.path(), r.path());
        let wal = std::fs::read_dir(r.path().join("wal")).expect("wal").flatten().next().expect("a WAL file").path();
        let mut bytes = std::fs::read(&wal).expect("read");
        let at = bytes.len() - 3;
        bytes[at] ^= 0xff;
        std::fs::write(&wal, bytes).expect("damage");
        let failed = reader.reload().await.expect_err("a damaged WAL copy");
        assert!(failed.to_string().contains("damaged"), "{failed}");
        assert_eq!(rows(&reader), seen);

        for refused in [
            reader.write("public", write("e", vec![9])).await.err(),
            reader.persist().await.err(),
            reader.compact().await.err(),
            reader.expire().await.err(),
        ] {
            assert!(matches!(refused, Some(StorageError::ReadOnly(_))), "{refused:?}");
        }
        assert!(reader.checkpoint(&r.path().join("img")).await.is_err());
        assert_eq!(reader.shutdown().await.expect("shutdown"), crate::PersistStats::default());
        assert!(writer.reload().await.is_err(), "a writer does not reload");
    }
}
