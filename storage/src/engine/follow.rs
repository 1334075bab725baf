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

use super::{Storage, StorageError};
use crate::clock::{Clock, SystemClock};
use crate::config::StorageConfig;
use crate::manifest::Manifest;
use crate::recovery::{self, Mode};

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
        tokio::task::spawn_blocking(move || recovery::open(config, clock, Mode::Reader))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
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
        let (state, manifest, replayed) = tokio::task::spawn_blocking(move || {
            let dir = &this.config.data_dir;
            let mut manifest = Manifest::load_existing(dir)?.unwrap_or_default();
            recovery::verify_segments(dir, &mut manifest, &this.metrics, Mode::Reader, &checked)?;
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
        let listed: HashSet<&str> = manifest
            .databases
            .values()
            .flat_map(|t| t.values())
            .flat_map(|e| e.segments.iter().map(|s| s.path.as_str()))
            .collect();
        let retired: Vec<String> = known.into_iter().filter(|p| !listed.contains(p.as_str())).collect();
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
        let now = self.clock.monotonic();
        self.retired.lock().extend(retired.into_iter().map(|p| (p, now, epoch)));
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
