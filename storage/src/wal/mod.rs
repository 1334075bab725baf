//! Write-ahead log with group commit.
//!
//! Every accepted write is appended to the current WAL file as one record
//! before it is acknowledged. A record is framed as
//!
//! ```text
//! u32 length of body (LE) | u32 CRC32 of body (LE) | body = LZ4 block (uncompressed size prepended)
//! ```
//!
//! after a 16-byte file header (`TOCSNWAL`, format version, reserved).
//!
//! Group commit: appends only `write(2)` into the page cache; one flusher
//! thread runs `fdatasync` for everything appended so far and then wakes every
//! writer whose record it covered. While it syncs, new writers pile up and
//! share the next sync, so N concurrent writers cost about one fsync per
//! round, not N.
//!
//! Files are numbered; [`Wal::rotate`] starts a new file so that older ones
//! can be deleted once their contents are persisted in segments.

pub mod codec;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

pub use codec::{DecodeError, WalEntry};

const MAGIC: &[u8; 8] = b"TOCSNWAL";
/// Version 1: framing above, body = LZ4 block of a [`codec`] entry.
pub const WAL_FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
/// A record longer than this is treated as corruption of the length field.
const MAX_RECORD_BYTES: u32 = 1 << 30;

/// When the WAL is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every acknowledgement (concurrent writers share one fsync).
    Always,
    /// Every interval; writes are acknowledged before they are fsynced and a
    /// machine crash (not a process crash) can lose up to one interval.
    Interval(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("I/O error on WAL file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the WAL failed earlier ({0}); writes are refused until restart")]
    Failed(String),
    #[error("WAL is closed")]
    Closed,
    #[error("a write of {bytes} bytes (compressed) is over the WAL record limit of {limit}; write fewer rows at once")]
    TooLarge { bytes: usize, limit: u32 },
}

/// Counters the WAL keeps for the server's own metrics.
#[derive(Debug, Default)]
pub struct WalMetrics {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub fsyncs: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct SyncState {
    synced: u64,
    failed: bool,
}

struct Inner {
    dir: PathBuf,
    file: Arc<File>,
    file_seq: u64,
    file_path: PathBuf,
    /// Number of records appended since open (a global sequence).
    written: u64,
    /// `written` when the current file was started: it holds records if
    /// `written` has grown since.
    file_first: u64,
    failed: Option<String>,
    closed: bool,
}

struct FlushSignal {
    pending: bool,
    stop: bool,
}

pub struct Wal {
    inner: Mutex<Inner>,
    policy: FsyncPolicy,
    sync_tx: watch::Sender<SyncState>,
    signal: Mutex<FlushSignal>,
    wake: Condvar,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub metrics: WalMetrics,
}

pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The WAL files in `dir` with their sequence numbers, oldest first.
pub fn list_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse::<u64>().ok()) {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

fn create_file(dir: &Path, seq: u64) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(file_name(seq));
    let mut f = OpenOptions::new().create_new(true).write(true).open(&path).map_err(io_err(&path))?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    let written = f.write_all(&header).and_then(|()| f.sync_all()).and_then(|()| crate::durable::sync_dir(dir));
    if let Err(e) = written {
        // Left behind, the half-made file would make every later attempt
        // fail with "already exists".
        drop(f);
        let _ = fs::remove_file(&path);
        return Err(io_err(&path)(e));
    }
    Ok((f, path))
}

impl Wal {
    /// Starts a new WAL file numbered `seq` in `dir` and the flusher thread.
    pub fn create(dir: &Path, seq: u64, policy: FsyncPolicy) -> Result<Arc<Wal>, WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (file, file_path) = create_file(dir, seq)?;
        let (sync_tx, _) = watch::channel(SyncState { synced: 0, failed: false });
        let wal = Arc::new(Wal {
            inner: Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file: Arc::new(file),
                file_seq: seq,
                file_path,
                written: 0,
                file_first: 0,
                failed: None,
                closed: false,
            }),
            policy,
            sync_tx,
            signal: Mutex::new(FlushSignal { pending: false, stop: false }),
            wake: Condvar::new(),
            flusher: Mutex::new(None),
            metrics: WalMetrics::default(),
        });
        let w = Arc::clone(&wal);
        let handle = std::thread::Builder::new()
            .name("tocsin-wal-flush".into())
            .spawn(move || w.flush_loop())
            .map_err(io_err(dir))?;
        *wal.flusher.lock() = Some(handle);
        Ok(wal)
    }

    pub fn current_file_seq(&self) -> u64 {
        self.inner.lock().file_seq
    }

    /// Appends one record and returns its sequence number. The record is in
    /// the page cache, not yet durable: await [`Wal::wait_durable`].
    pub fn append(&self, payload: &[u8]) -> Result<u64, WalError> {
        let body = lz4_flex::compress_prepend_size(payload);
        // Replay treats a longer record as a damaged length field: refuse
        // it here rather than acknowledge what replay would then drop.
        if body.len() > MAX_RECORD_BYTES as usize {
            crate::refusals::refused("max_wal_record_bytes");
            return Err(WalError::TooLarge { bytes: body.len(), limit: MAX_RECORD_BYTES });
        }
        let mut frame = Vec::with_capacity(body.len() + 8);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let seq = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(WalError::Closed);
            }
            if let Some(msg) = &inner.failed {
                return Err(WalError::Failed(msg.clone()));
            }
            if let Err(source) = (&*inner.file).write_all(&frame) {
                // A partial frame may be on disk: nothing more may follow it.
                let msg = format!("write to {} failed: {source}", inner.file_path.display());
                inner.failed = Some(msg);
                return Err(WalError::Io { path: inner.file_path.clone(), source });
            }
            inner.written += 1;
            inner.written
        };
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        self.metrics.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if self.policy == FsyncPolicy::Always {
            self.request_flush();
        }
        Ok(seq)
    }

    fn request_flush(&self) {
        let mut s = self.signal.lock();
        s.pending = true;
        self.wake.notify_one();
    }

    /// Latches `msg`: from now on appends and rotations fail with it, and
    /// every writer waiting for durability is woken with it.
    fn fail(&self, msg: String) {
        tracing::error!("{msg}; writes are refused until restart");
        self.inner.lock().failed.get_or_insert(msg);
        self.sync_tx.send_modify(|s| s.failed = true);
    }

    /// Waits until record `seq` is durable (policy `always`); returns at once
    /// under the interval policy.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        if let FsyncPolicy::Interval(_) = self.policy {
            return Ok(());
        }
        let mut rx = self.sync_tx.subscribe();
        let state = *rx.wait_for(|s| s.synced >= seq || s.failed).await.map_err(|_| WalError::Closed)?;
        if state.synced >= seq {
            Ok(())
        } else {
            Err(WalError::Failed(self.inner.lock().failed.clone().unwrap_or_default()))
        }
    }

    fn flush_loop(&self) {
        loop {
            {
                let mut s = self.signal.lock();
                match self.policy {
                    FsyncPolicy::Always => {
                        while !s.pending && !s.stop {
                            self.wake.wait(&mut s);
                        }
                    }
                    FsyncPolicy::Interval(d) => {
                        if !s.stop {
                            self.wake.wait_for(&mut s, d);
                        }
                    }
                }
                if s.stop {
                    return;
                }
                s.pending = false;
            }
            self.sync_now();
        }
    }

    /// Fsyncs everything appended so far.
    fn sync_now(&self) {
        let (file, target, path, failed) = {
            let inner = self.inner.lock();
            (Arc::clone(&inner.file), inner.written, inner.file_path.clone(), inner.failed.is_some())
        };
        if failed && self.sync_tx.borrow().failed {
            return;
        }
        if target > self.sync_tx.borrow().synced {
            match file.sync_data() {
                Ok(()) => {
                    self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.sync_tx.send_modify(|s| s.synced = s.synced.max(target));
                }
                Err(e) => {
                    self.fail(format!("fsync of {} failed: {e}", path.display()));
                    return;
                }
            }
        }
        if failed {
            // An append failed after the records synced above: wake the
            // writers of anything later with the error.
            self.sync_tx.send_modify(|s| s.failed = true);
        }
    }

    pub fn rotate(&self) -> Result<u64, WalError> {
        let mut inner = self.inner.lock();
        if let Some(msg) = &inner.failed {
            return Err(WalError::Failed(msg.clone()));
        }
        let old_path = inner.file_path.clone();
        if let Err(source) = inner.file.sync_data() {
            // Like the flusher's: after a failed fsync the kernel may have
            // dropped the dirty pages, so nothing in this file can be
            // trusted to be durable by a later fsync.
            drop(inner);
            self.fail(format!("fsync of {} failed: {source}", old_path.display()));
            return Err(WalError::Io { path: old_path, source });
        }
        self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
        let written = inner.written;
        self.sync_tx.send_modify(|s| s.synced = s.synced.max(written));
        let old = inner.file_seq;
        let (file, path) = create_file(&inner.dir, old + 1)?;
        inner.file = Arc::new(file);
        inner.file_path = path;
        inner.file_seq = old + 1;
        inner.file_first = written;
        Ok(old)
    }

    /// [`Wal::rotate`] if the current file holds a record; returns the
    /// number of the last file that may hold records (the current one's
    /// predecessor when it holds none). The caller keeps appends out.
    pub fn rotate_if_written(&self) -> Result<u64, WalError> {
        {
            let inner = self.inner.lock();
            if inner.written == inner.file_first && inner.failed.is_none() {
                return Ok(inner.file_seq.saturating_sub(1));
            }
        }
        self.rotate()
    }

    /// Fsyncs what was written, stops the flusher and refuses further appends.
    /// Swaps the file appends go to (fault injection: `/dev/full`).
    #[cfg(test)]
    pub(crate) fn replace_file_for_tests(&self, file: File) {
        self.inner.lock().file = Arc::new(file);
    }

    pub fn close(&self) -> Result<(), WalError> {
        let result = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            let written = inner.written;
            let r = inner.file.sync_data().map_err(io_err(&inner.file_path));
            if r.is_ok() {
                self.sync_tx.send_modify(|s| s.synced = s.synced.max(written));
            }
            r
        };
        {
            let mut s = self.signal.lock();
            s.stop = true;
            self.wake.notify_all();
        }
        if let Some(h) = self.flusher.lock().take() {
            let _ = h.join();
        }
        result
    }
}

/// How reading a WAL file ended.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    /// Every byte belonged to a good record.
    Clean,
    /// From `offset` on, the file does not hold a good record.
    Corrupt { offset: u64, file_len: u64, reason: String },
}

/// Reads every good record of one WAL file, stopping at the first bad one.
pub fn read_file(path: &Path) -> io::Result<(Vec<WalEntry>, ReadEnd)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let file_len = data.len() as u64;
    let mut entries = Vec::new();
    if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
        let reason = if data.len() < HEADER_LEN as usize {
            "file header is incomplete".to_string()
        } else {
            "not a Tocsin WAL file (bad magic)".to_string()
        };
        return Ok((entries, ReadEnd::Corrupt { offset: 0, file_len, reason }));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != WAL_FORMAT_VERSION {
        let reason = format!("unsupported WAL format version {version} (this build reads {WAL_FORMAT_VERSION})");
        return Ok((entries, ReadEnd::Corrupt { offset: 0, file_len, reason }));
    }
    let mut pos = HEADER_LEN as usize;
    while pos < data.len() {
        let corrupt = |reason: String| ReadEnd::Corrupt { offset: pos as u64, file_len, reason };
        if data.len() - pos < 8 {
            return Ok((entries, corrupt("record header is incomplete".into())));
        }
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > MAX_RECORD_BYTES || (len as usize) > data.len() - pos - 8 {
            return Ok((entries, corrupt(format!("record length {len} runs past the end of the file"))));
        }
        let body = &data[pos + 8..pos + 8 + len as usize];
        let actual = crc32fast::hash(body);
        if actual != crc {
            return Ok((entries, corrupt(format!("CRC mismatch (stored {crc:08x}, computed {actual:08x})"))));
        }
        let payload = match lz4_flex::decompress_size_prepended(body) {
            Ok(p) => p,
            Err(e) => return Ok((entries, corrupt(format!("LZ4 body does not decompress: {e}")))),
        };
        match codec::decode(&payload) {
            Ok(e) => entries.push(e),
            Err(e) => return Ok((entries, corrupt(format!("record does not decode: {e}")))),
        }
        pos += 8 + len as usize;
    }
    Ok((entries, ReadEnd::Clean))
}

/// Cuts a WAL file to `len` bytes and fsyncs it.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

#[cfg(test)]
mod tests;
