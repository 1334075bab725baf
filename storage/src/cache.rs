//! A bounded cache of segment files whose home is the bucket: a reader's
//! (`tocsin serve --role reader`, `cache_mb`) holds the writer's files a
//! query read lately; a writer's (`segments = "object-store"`) holds its
//! own files, and lets go of those its copy in the bucket holds once they
//! are past the bound. The manifest lists every segment and pack either
//! way; only some are on disk.
//!
//! - A scan asks for the files of the segments it reads
//!   ([`crate::Storage::ensure_local`]) before it opens them; those not on
//!   disk are fetched from the bucket by the server's [`SegmentSource`]
//!   (checked there against the index's SHA-256), a few at once, one fetch
//!   per file however many queries want it.
//! - A fetched file is then checked as the writer checks its own at start:
//!   its footer decodes and holds the rows the manifest places there.
//! - Past the bound, the least recently read files are evicted. An evicted
//!   file is deleted once the queries that started before its eviction
//!   are done (the reader epochs that keep a compaction's inputs), so a
//!   running query never loses a file it planned to read. A query that
//!   reads more than the bound holds keeps its files until it ends; the
//!   next scan or refresh brings the cache back under its bound.
//! - A writer's files are evicted only once its copy holds them
//!   ([`SegmentCache::in_copy`], after each push): a file not yet pushed
//!   stays, bound or not. Its retired files (compaction, retention) leave
//!   the cache's count and are deleted by the writer's own purge.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a reader's segment files come from (the server's copy in a
/// bucket). Paths are relative to the data directory, as the manifest
/// lists them.
pub trait SegmentSource: Send + Sync {
    /// Makes `path` in `data_dir` a checked copy of the writer's file;
    /// returns the bytes fetched (0 when the file there was already it).
    /// The error says why not, for the query that needed the file.
    fn fetch<'a>(
        &'a self,
        data_dir: &'a Path,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'a>>;

    /// The length of `path` in the bucket's copy, if the copy holds it.
    fn bytes(&self, path: &str) -> Option<u64>;
}

/// What `/metrics` shows of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub limit_bytes: u64,
    /// On disk and counted: read lately, or evicted and still read by a
    /// query that started before.
    pub bytes: u64,
    pub files: u64,
    /// Files a scan found on disk.
    pub hits: u64,
    /// Files fetched from the bucket, and their bytes.
    pub fetches: u64,
    pub fetched_bytes: u64,
    pub evictions: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    /// When last read, in calls to [`SegmentCache::touch`].
    used: u64,
    /// Fetched (or found and checked by the source) by this process.
    checked: bool,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, Entry>,
    /// Evicted, and deleted once no reader of an epoch up to the one noted
    /// is left; their bytes still count.
    evicted: Vec<(String, Entry, u64)>,
    /// Files the copy stopped listing lately ([`SegmentCache::forget`]),
    /// oldest first: one a query fetches after that goes straight out.
    forgotten: std::collections::VecDeque<(String, u64)>,
    /// A writer's: the files its copy in the bucket holds, the only ones it
    /// may evict. `None` on a reader, whose every file is the copy's.
    copy: Option<HashSet<String>>,
    /// Files this cache deleted (and not fetched since): not on disk.
    away: HashSet<String>,
    bytes: u64,
    tick: u64,
}

/// How many forgotten paths the cache remembers.
const FORGOTTEN: usize = 4096;

pub(crate) struct SegmentCache {
    pub(crate) source: Arc<dyn SegmentSource>,
    limit: u64,
    state: parking_lot::Mutex<State>,
    /// One fetch per file at a time.
    fetching: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    hits: AtomicU64,
    fetches: AtomicU64,
    fetched_bytes: AtomicU64,
    evictions: AtomicU64,
}

impl SegmentCache {
    /// A cache of at most `limit` bytes that holds `present` (files found
    /// in the data directory at start, oldest first): a reader's are
    /// unchecked until read; a writer's (`writer`) were checked at start,
    /// and none is in its copy until [`SegmentCache::in_copy`] says so.
    pub(crate) fn new(
        source: Arc<dyn SegmentSource>,
        limit: u64,
        present: Vec<(String, u64)>,
        writer: bool,
    ) -> SegmentCache {
        let mut state = State { copy: writer.then(HashSet::new), ..State::default() };
        for (path, bytes) in present {
            state.tick += 1;
            state.bytes += bytes;
            state.files.insert(path, Entry { bytes, used: state.tick, checked: writer });
        }
        SegmentCache {
            source,
            limit,
            state: parking_lot::Mutex::new(state),
            fetching: Default::default(),
            hits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Marks `paths` read now; returns those not checked on disk (to fetch).
    /// One evicted but not yet deleted is taken back as it is.
    pub(crate) fn touch(&self, paths: &[&str]) -> Vec<String> {
        let mut st = self.state.lock();
        st.tick += 1;
        let now = st.tick;
        let mut missing = Vec::new();
        for &path in paths {
            // Not one the copy stopped listing: that one goes once its
            // readers are done.
            if let Some(at) = st.evicted.iter().position(|(p, _, _)| p == path)
                && !st.forgotten.iter().any(|(p, _)| p == path)
            {
                let (p, e, _) = st.evicted.swap_remove(at);
                st.files.insert(p, Entry { used: now, ..e });
            }
            match st.files.get_mut(path) {
                Some(e) if e.checked => {
                    e.used = now;
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                _ => missing.push(path.to_string()),
            }
        }
        missing
    }

    /// The lock one fetch of `path` holds.
    pub(crate) fn fetch_lock(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut f = self.fetching.lock();
        // Locks nobody waits on are dropped as the map grows.
        if f.len() > 1024 {
            f.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(f.entry(path.to_string()).or_default())
    }

    pub(crate) fn is_checked(&self, path: &str) -> bool {
        self.state.lock().files.get(path).is_some_and(|e| e.checked)
    }

    /// Whether a fetch (or check) of `path` is under way: its file is not
    /// evicted or deleted meanwhile.
    fn busy(&self, path: &str) -> bool {
        self.fetching.lock().get(path).is_some_and(|l| l.try_lock().is_err())
    }

    /// `path` is on disk, checked, `bytes` long (`fetched` of them brought
    /// from the bucket now).
    pub(crate) fn checked(&self, path: &str, bytes: u64, fetched: u64) {
        let mut st = self.state.lock();
        st.tick += 1;
        let used = st.tick;
        if let Some(old) = st.files.insert(path.to_string(), Entry { bytes, used, checked: true }) {
            st.bytes = st.bytes.saturating_sub(old.bytes);
        }
        st.away.remove(path);
        // Forgotten by a reload while it was fetched: it is here again.
        while let Some(at) = st.evicted.iter().position(|(p, _, _)| p == path) {
            let (_, old, _) = st.evicted.swap_remove(at);
            st.bytes = st.bytes.saturating_sub(old.bytes);
        }
        st.bytes += bytes;
        // No longer listed: the query that fetched it reads it, then it goes.
        if let Some(&(_, epoch)) = st.forgotten.iter().find(|(p, _)| p == path)
            && let Some(e) = st.files.remove(path)
        {
            st.evicted.push((path.to_string(), e, epoch));
        }
        if fetched > 0 {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            self.fetched_bytes.fetch_add(fetched, Ordering::Relaxed);
        }
    }

    /// Evicts the least recently read files but `keep` until the cache is
    /// within its bound, noting `epoch`: they are deleted once no reader of
    /// that epoch or before is left. Returns how many.
    pub(crate) fn evict(&self, keep: &HashSet<&str>, epoch: u64) -> usize {
        let mut st = self.state.lock();
        // Files evicted already are on their way out.
        let kept: u64 = st.bytes.saturating_sub(st.evicted.iter().map(|(_, e, _)| e.bytes).sum::<u64>());
        if kept <= self.limit {
            return 0;
        }
        let copy = &st.copy;
        let mut by_age: Vec<(u64, String)> = st
            .files
            .iter()
            .filter(|(p, _)| copy.as_ref().is_none_or(|c| c.contains(p.as_str())))
            .filter(|(p, _)| !keep.contains(p.as_str()) && !self.busy(p))
            .map(|(p, e)| (e.used, p.clone()))
            .collect();
        by_age.sort_unstable();
        let mut n = 0;
        let mut over = kept - self.limit;
        for (_, path) in by_age {
            if over == 0 {
                break;
            }
            let Some(e) = st.files.remove(&path) else { continue };
            over = over.saturating_sub(e.bytes);
            st.evicted.push((path, e, epoch));
            n += 1;
        }
        self.evictions.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Forgets `paths` (no longer listed by the copy): they go as evicted
    /// ones do.
    pub(crate) fn forget(&self, paths: &[String], epoch: u64) {
        let mut st = self.state.lock();
        for path in paths {
            if let Some(e) = st.files.remove(path) {
                st.evicted.push((path.clone(), e, epoch));
            }
            st.forgotten.push_back((path.clone(), epoch));
        }
        while st.forgotten.len() > FORGOTTEN {
            st.forgotten.pop_front();
        }
    }

    /// A writer's: its copy in the bucket now holds `paths` (and no other
    /// file of its): those may be evicted.
    pub(crate) fn in_copy(&self, paths: HashSet<String>) {
        let mut st = self.state.lock();
        if st.copy.is_some() {
            st.copy = Some(paths);
        }
    }

    /// A writer's own file, found on disk by a scan (written since the
    /// cache was made): counted from now on, unless the writer retired it.
    pub(crate) fn own(&self, path: &str, bytes: u64) {
        let mut st = self.state.lock();
        if st.files.contains_key(path) || st.forgotten.iter().any(|(p, _)| p == path) {
            return;
        }
        st.tick += 1;
        let used = st.tick;
        // Evicted meanwhile (and still counted): taken back as it is.
        if let Some(at) = st.evicted.iter().position(|(p, _, _)| p == path) {
            let (p, e, _) = st.evicted.swap_remove(at);
            st.files.insert(p, Entry { used, ..e });
            return;
        }
        st.away.remove(path);
        st.files.insert(path.to_string(), Entry { bytes, used, checked: true });
        st.bytes += bytes;
    }

    /// Of `paths`, those the cache does not count (a writer's files
    /// written since it was made, and never read since).
    /// Not those it deleted itself.
    pub(crate) fn untracked<'a>(&self, paths: impl Iterator<Item = &'a String>) -> Vec<String> {
        let st = self.state.lock();
        let evicted: HashSet<&str> = st.evicted.iter().map(|(p, _, _)| p.as_str()).collect();
        paths
            .filter(|p| !st.files.contains_key(p.as_str()) && !evicted.contains(p.as_str()) && !st.away.contains(*p))
            .cloned()
            .collect()
    }

    pub(crate) fn is_writer(&self) -> bool {
        self.state.lock().copy.is_some()
    }

    /// A writer's: `paths` were retired (a compaction or retention replaced
    /// them); they leave the count, and the writer's purge deletes them.
    /// One a query fetches after this goes once its readers are done.
    pub(crate) fn release(&self, paths: &[String], epoch: u64) {
        let mut st = self.state.lock();
        for path in paths {
            if let Some(e) = st.files.remove(path) {
                st.bytes = st.bytes.saturating_sub(e.bytes);
            }
            while let Some(at) = st.evicted.iter().position(|(p, _, _)| p == path) {
                let (_, e, _) = st.evicted.swap_remove(at);
                st.bytes = st.bytes.saturating_sub(e.bytes);
            }
            st.away.remove(path);
            st.forgotten.push_back((path.clone(), epoch));
        }
        while st.forgotten.len() > FORGOTTEN {
            st.forgotten.pop_front();
        }
    }

    /// Deletes the evicted files no reader may still read (`oldest`: the
    /// epoch of the oldest running reader). Returns how many.
    pub(crate) fn purge(&self, data_dir: &Path, oldest: Option<u64>) -> usize {
        // Under the lock: a scan taking a file back cannot meet it half gone.
        let mut st = self.state.lock();
        let mut n = 0;
        let mut i = 0;
        while i < st.evicted.len() {
            let (path, e, epoch) = &st.evicted[i];
            let bytes = e.bytes;
            if oldest.is_some_and(|o| o <= *epoch) || self.busy(path) {
                i += 1;
                continue;
            }
            let full = data_dir.join(path);
            let gone = path.clone();
            match std::fs::remove_file(&full) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("reader cache: cannot delete {}: {e}", full.display());
                    i += 1;
                    continue;
                }
            }
            st.bytes = st.bytes.saturating_sub(bytes);
            st.evicted.swap_remove(i);
            if st.copy.is_some() {
                st.away.insert(gone);
            }
        }
        n
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let st = self.state.lock();
        CacheStats {
            limit_bytes: self.limit,
            bytes: st.bytes,
            files: (st.files.len() + st.evicted.len()) as u64,
            hits: self.hits.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;
    impl SegmentSource for Nowhere {
        fn fetch<'a>(
            &'a self,
            _: &'a Path,
            _: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'a>> {
            Box::pin(async { Err("no bucket".to_string()) })
        }

        fn bytes(&self, _: &str) -> Option<u64> {
            None
        }
    }

    /// The least recently read go first, never those a scan holds, and an
    /// evicted file is deleted only after the readers of its epoch.
    #[test]
    fn the_least_recently_read_are_evicted_and_deleted_after_their_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in ["a", "b", "c"] {
            std::fs::write(dir.path().join(p), vec![0u8; 100]).expect("file");
        }
        let cache = SegmentCache::new(Arc::new(Nowhere), 250, vec![("a".into(), 100)], false);
        assert_eq!(cache.touch(&["a"]), vec!["a"], "found at start: checked before use");
        cache.checked("a", 100, 0);
        cache.checked("b", 100, 100);
        assert!(cache.touch(&["a"]).is_empty());
        cache.checked("c", 100, 100);
        assert_eq!(cache.stats().bytes, 300);
        let keep: HashSet<&str> = ["c"].into();
        assert_eq!(cache.evict(&keep, 7), 1);
        // b was read before a was read again.
        assert!(cache.is_checked("a") && !cache.is_checked("b") && cache.is_checked("c"));
        assert_eq!(cache.purge(dir.path(), Some(7)), 0, "a reader of epoch 7 may read b");
        assert!(dir.path().join("b").exists());
        assert_eq!(cache.stats().bytes, 300, "b counts until deleted");
        assert_eq!(cache.purge(dir.path(), Some(8)), 1);
        assert!(!dir.path().join("b").exists());
        let s = cache.stats();
        assert_eq!((s.bytes, s.files, s.fetches, s.fetched_bytes, s.evictions, s.hits), (200, 2, 2, 200, 1, 1));

        // Evicted but not deleted: taken back without a fetch.
        cache.checked("b", 100, 100);
        let keep: HashSet<&str> = ["b"].into();
        assert_eq!(cache.evict(&keep, 9), 1, "a goes");
        assert!(cache.touch(&["a"]).is_empty(), "a is still on disk");
        assert_eq!(cache.purge(dir.path(), None), 0);
        assert!(dir.path().join("a").exists());
        // Within the bound, nothing goes.
        assert_eq!(cache.evict(&HashSet::new(), 10), 1);
        assert_eq!(cache.evict(&HashSet::new(), 10), 0, "c is on its way out");
    }

    /// A file being fetched or checked is neither evicted nor deleted, and
    /// one found at start and evicted unchecked comes back unchecked; a
    /// file the copy stopped listing while it was fetched counts once and
    /// is deleted after the queries that read it.
    #[tokio::test]
    async fn files_under_a_fetch_stay_and_count_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in ["old", "new"] {
            std::fs::write(dir.path().join(p), vec![0u8; 100]).expect("file");
        }
        let cache = SegmentCache::new(Arc::new(Nowhere), 50, vec![("old".into(), 100)], false);
        assert_eq!(cache.touch(&["old"]), vec!["old"]);
        let lock = cache.fetch_lock("old");
        let held = lock.lock().await;
        assert_eq!(cache.evict(&HashSet::new(), 1), 0, "old is being checked");
        assert!(dir.path().join("old").exists());
        drop(held);
        assert_eq!(cache.evict(&HashSet::new(), 1), 1);
        assert_eq!(cache.touch(&["old"]), vec!["old"], "taken back, still to check");
        assert_eq!(cache.stats().bytes, 100);

        // A reload forgets "new" while a query fetches it: it counts once,
        // and goes once the queries of its epoch are done.
        cache.checked("new", 100, 100);
        cache.forget(&["new".to_string()], 2);
        cache.checked("new", 100, 100);
        let s = cache.stats();
        assert_eq!((s.bytes, s.files), (200, 2), "{s:?}");
        assert!(!cache.is_checked("new"), "no longer listed");
        assert_eq!(cache.purge(dir.path(), Some(2)), 0, "a query of epoch 2 reads it");
        assert!(dir.path().join("new").exists());
        assert_eq!(cache.purge(dir.path(), None), 1);
        assert!(!dir.path().join("new").exists());
        assert_eq!(cache.stats().bytes, 100);

        // Fetched first after the reload forgot it (the query planned on
        // the copy before): the same.
        std::fs::write(dir.path().join("late"), vec![0u8; 10]).expect("file");
        cache.forget(&["late".to_string()], 3);
        cache.checked("late", 10, 10);
        assert!(!cache.is_checked("late"));
        assert_eq!(cache.purge(dir.path(), None), 1);
        assert!(!dir.path().join("late").exists());
    }

    /// A writer's file evicted while a scan was about to count it is taken
    /// back once, not counted twice; one it retired and a query fetched
    /// again is not taken back by the next query, and goes with its readers.
    #[test]
    fn a_writers_files_count_once_through_eviction_and_retirement() {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in ["x", "y"] {
            std::fs::write(dir.path().join(p), vec![0u8; 100]).expect("file");
        }
        let cache = SegmentCache::new(Arc::new(Nowhere), 50, Vec::new(), true);
        cache.own("x", 100);
        assert_eq!(cache.evict(&HashSet::new(), 1), 0, "not in the copy yet");
        cache.in_copy(["x".to_string()].into());
        assert_eq!(cache.evict(&HashSet::new(), 1), 1);
        cache.own("x", 100);
        let s = cache.stats();
        assert_eq!((s.bytes, s.files), (100, 1), "{s:?}");
        assert!(cache.is_checked("x"));
        assert_eq!(cache.purge(dir.path(), None), 0, "taken back: not deleted");
        assert!(dir.path().join("x").exists());

        // Retired, then fetched again by a query planned before.
        cache.own("y", 100);
        cache.release(&["y".to_string()], 5);
        assert_eq!(cache.stats().bytes, 100, "y left the count");
        cache.checked("y", 100, 100);
        assert_eq!(cache.touch(&["y"]), vec!["y"], "not taken back");
        assert_eq!(cache.stats().bytes, 200, "counted once until deleted");
        assert_eq!(cache.purge(dir.path(), None), 1);
        assert!(!dir.path().join("y").exists());
        assert_eq!(cache.stats().bytes, 100);
        assert!(cache.untracked(["y".to_string()].iter()).is_empty(), "deleted by the cache: known to be away");
    }
}
