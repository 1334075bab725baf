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
//!
//! Shipping (`[storage] wal = "object-store"` or `"object-store-sync"`): once
//! [`Wal::ship`] is called, every record appended is also queued as bytes of
//! its file ([`WalPiece`]: whole frames from an offset). A shipper (the
//! server's, to a bucket) takes the queue with [`Wal::pieces_to_ship`], sends
//! it and calls [`Wal::shipped`]; under [`ShipMode::Sync`] a writer waits
//! for its record to be shipped ([`Wal::wait_shipped`]) as it waits for the
//! fsync, and writers that arrive while a piece is on its way share the
//! next one (group commit again). A piece that fails stays queued and goes
//! with the next attempt, so the shipped bytes of a file have no holes.

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
/// Bytes of a WAL file's header: its first record starts here.
pub const HEADER_LEN: u64 = 16;
/// How long a writer under [`ShipMode::Sync`] waits for its record to be
/// shipped before it is answered with an error (the record stays queued).
const SHIP_WAIT: Duration = Duration::from_secs(30);
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
    /// `object-store-sync`: the record is in the local WAL, but the bucket
    /// has not taken it; the write is not acknowledged.
    #[error("the write is in the local WAL but was not shipped to the object store ({0}); it is not acknowledged")]
    NotShipped(String),
    #[error(
        "{bytes} bytes of WAL are waiting to be shipped to the object store, over the limit of {limit}: writes are \
         refused until the object store takes them ({why})"
    )]
    ShipBacklog { bytes: usize, limit: usize, why: String },
}

/// Whether a writer waits for its record to be shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipMode {
    /// A write is acknowledged once its record is shipped as well
    /// (`object-store-sync`).
    Sync,
    /// Records are shipped in the background (`object-store`).
    Background,
}

/// Whole records of WAL file `file_seq`, as they lie in it from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPiece {
    pub file_seq: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The sequence number of its last record ([`Wal::append`]'s).
    pub last: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct ShipState {
    /// Records up to this one are shipped.
    shipped: u64,
    /// Records up to this one are appended (and queued).
    appended: u64,
    /// Failed attempts so far, and the last one's reason.
    failures: u64,
    error: Option<String>,
    closed: bool,
    /// The shipper stopped for good (the server stood down): why.
    stopped: Option<String>,
}

struct ShipQueue {
    mode: ShipMode,
    pieces: std::collections::VecDeque<WalPiece>,
    bytes: usize,
    limit: usize,
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
    /// Bytes in the current file (where the next frame goes).
    file_len: u64,
    failed: Option<String>,
    closed: bool,
    /// Records waiting to be shipped, once shipping is on.
    shipping: Option<ShipQueue>,
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
    ship_tx: watch::Sender<ShipState>,
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

fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    header
}

/// A WAL file rebuilt from shipped pieces ([`assemble`]).
#[derive(Debug)]
pub struct Assembled {
    pub bytes: Vec<u8>,
    /// The pieces stop at this offset and the next one starts later:
    /// `(end, next)`. What follows the hole is left out.
    pub hole: Option<(u64, u64)>,
}

/// Rebuilds a WAL file from pieces of it (`(offset, bytes)`, in any order,
/// overlapping where an attempt that failed was sent again): its header,
/// then the bytes from offset 16 on, as far as they run without a hole.
pub fn assemble(mut pieces: Vec<(u64, Vec<u8>)>) -> Assembled {
    pieces.sort_by_key(|(offset, bytes)| (*offset, std::cmp::Reverse(bytes.len())));
    let mut bytes = header().to_vec();
    for (offset, piece) in pieces {
        let end = bytes.len() as u64;
        if offset > end {
            return Assembled { bytes, hole: Some((end, offset)) };
        }
        // Overlapping bytes are the same record's, sent twice.
        let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
        if skip < piece.len() {
            bytes.extend_from_slice(&piece[skip..]);
        }
    }
    Assembled { bytes, hole: None }
}

fn create_file(dir: &Path, seq: u64) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(file_name(seq));
    let mut f = OpenOptions::new().create_new(true).write(true).open(&path).map_err(io_err(&path))?;
    let header = header();
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
                file_len: HEADER_LEN,
                failed: None,
                closed: false,
                shipping: None,
            }),
            policy,
            sync_tx,
            signal: Mutex::new(FlushSignal { pending: false, stop: false }),
            wake: Condvar::new(),
            flusher: Mutex::new(None),
            ship_tx: watch::Sender::new(ShipState::default()),
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
        let frame_len = frame.len();
        let seq = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(WalError::Closed);
            }
            if let Some(msg) = &inner.failed {
                return Err(WalError::Failed(msg.clone()));
            }
            if let Some(q) = &inner.shipping
                && q.bytes + frame.len() > q.limit
            {
                crate::refusals::refused("wal_ship_backlog");
                let why = self.ship_tx.borrow().error.clone().unwrap_or_else(|| "it is slow".into());
                return Err(WalError::ShipBacklog { bytes: q.bytes, limit: q.limit, why });
            }
            if let Err(source) = (&*inner.file).write_all(&frame) {
                // A partial frame may be on disk: nothing more may follow it.
                let msg = format!("write to {} failed: {source}", inner.file_path.display());
                inner.failed = Some(msg);
                return Err(WalError::Io { path: inner.file_path.clone(), source });
            }
            inner.written += 1;
            let (seq, file_seq, offset) = (inner.written, inner.file_seq, inner.file_len);
            inner.file_len += frame_len as u64;
            if let Some(q) = &mut inner.shipping {
                q.bytes += frame_len;
                match q.pieces.back_mut() {
                    Some(p) if p.file_seq == file_seq && p.offset + p.bytes.len() as u64 == offset => {
                        p.bytes.extend_from_slice(&frame);
                        p.last = seq;
                    }
                    _ => q.pieces.push_back(WalPiece { file_seq, offset, bytes: frame, last: seq }),
                }
                self.ship_tx.send_modify(|s| s.appended = seq);
            }
            seq
        };
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        self.metrics.bytes.fetch_add(frame_len as u64, Ordering::Relaxed);
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
        inner.file_len = HEADER_LEN;
        Ok(old)
    }

    /// Starts shipping: every record appended from now on is queued for
    /// [`Wal::pieces_to_ship`], up to `limit` bytes waiting (appends beyond
    /// are refused). A current file that already holds records is closed
    /// first, so that the shipped bytes of every file start at its header.
    pub fn ship(&self, mode: ShipMode, limit: usize) -> Result<(), WalError> {
        let mut inner = loop {
            let inner = self.inner.lock();
            if inner.written == inner.file_first {
                break inner;
            }
            // An append may come between the rotation and the lock again.
            drop(inner);
            self.rotate()?;
        };
        let seq = inner.written;
        inner.shipping = Some(ShipQueue { mode, pieces: Default::default(), bytes: 0, limit });
        self.ship_tx.send_modify(|s| {
            s.shipped = seq;
            s.appended = seq;
        });
        Ok(())
    }

    /// The shipping mode, if shipping is on.
    pub fn ship_mode(&self) -> Option<ShipMode> {
        self.inner.lock().shipping.as_ref().map(|q| q.mode)
    }

    /// What waits to be shipped, oldest first (a copy: the queue keeps it
    /// until [`Wal::shipped`]).
    pub fn pieces_to_ship(&self) -> Vec<WalPiece> {
        self.inner.lock().shipping.as_ref().map(|q| q.pieces.iter().cloned().collect()).unwrap_or_default()
    }

    /// Bytes waiting to be shipped.
    pub fn ship_backlog(&self) -> usize {
        self.inner.lock().shipping.as_ref().map_or(0, |q| q.bytes)
    }

    /// Whether [`Wal::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.ship_tx.borrow().closed
    }

    /// Waits until the WAL closes.
    pub async fn closed(&self) {
        let mut rx = self.ship_tx.subscribe();
        let _ = rx.wait_for(|s| s.closed).await;
    }

    /// Waits until a record is waiting to be shipped (or the WAL closes).
    pub async fn wait_for_pieces(&self) {
        let mut rx = self.ship_tx.subscribe();
        let _ = rx.wait_for(|s| s.appended > s.shipped || s.closed).await;
    }

    /// Drops from the queue `sent`, a prefix of what [`Wal::pieces_to_ship`]
    /// returned (records appended since to the last piece stay queued), and
    /// wakes the writers of its records.
    pub fn shipped(&self, sent: &[WalPiece]) {
        let mut inner = self.inner.lock();
        let Some(q) = &mut inner.shipping else { return };
        let mut upto = None;
        for piece in sent {
            let Some(front) = q.pieces.front_mut() else { break };
            if front.file_seq != piece.file_seq || front.offset != piece.offset || front.bytes.len() < piece.bytes.len()
            {
                // Not what was taken: keep the queue as it is (it is sent
                // again; the restore reads overlapping pieces).
                tracing::error!(file = piece.file_seq, offset = piece.offset, "shipped WAL piece is not the queue's");
                break;
            }
            let n = piece.bytes.len();
            q.bytes -= n;
            if front.bytes.len() == n {
                q.pieces.pop_front();
            } else {
                front.bytes.drain(..n);
                front.offset += n as u64;
            }
            upto = Some(piece.last);
        }
        drop(inner);
        if let Some(upto) = upto {
            self.ship_tx.send_modify(|s| {
                s.shipped = s.shipped.max(upto);
                s.error = None;
            });
        }
    }

    /// An attempt to ship failed: writers waiting for a record still queued
    /// are answered with `why` (the records stay queued and go with the
    /// next attempt).
    pub fn ship_failed(&self, why: String) {
        self.ship_tx.send_modify(|s| {
            s.failures += 1;
            s.error = Some(why);
        });
    }

    /// Nothing will be shipped any more (the server stood down): writers
    /// waiting, and any later, are answered with `why`.
    pub fn stop_shipping(&self, why: String) {
        self.ship_tx.send_modify(|s| {
            s.stopped.get_or_insert(why);
        });
    }

    /// Under [`ShipMode::Sync`], waits until record `seq` is shipped, an
    /// attempt to ship it fails, shipping stops, or `SHIP_WAIT` passes;
    /// returns at once otherwise.
    pub async fn wait_shipped(&self, seq: u64) -> Result<(), WalError> {
        if self.ship_mode() != Some(ShipMode::Sync) {
            return Ok(());
        }
        let mut rx = self.ship_tx.subscribe();
        let failures = rx.borrow().failures;
        let waited = tokio::time::timeout(
            SHIP_WAIT,
            rx.wait_for(|s| s.shipped >= seq || s.failures != failures || s.closed || s.stopped.is_some()),
        )
        .await;
        let state = match waited {
            Ok(state) => state.map_err(|_| WalError::Closed)?.clone(),
            Err(_) => {
                return Err(WalError::NotShipped(format!(
                    "the object store did not take it within {} s",
                    SHIP_WAIT.as_secs()
                )));
            }
        };
        if state.shipped >= seq {
            Ok(())
        } else if let Some(why) = state.stopped {
            Err(WalError::NotShipped(why))
        } else if state.closed {
            Err(WalError::NotShipped("the server is stopping".into()))
        } else {
            Err(WalError::NotShipped(state.error.unwrap_or_default()))
        }
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
        self.ship_tx.send_modify(|s| s.closed = true);
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
    if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
        let reason = if data.len() < HEADER_LEN as usize {
            "file header is incomplete".to_string()
        } else {
            "not a Tocsin WAL file (bad magic)".to_string()
        };
        return Ok((Vec::new(), ReadEnd::Corrupt { offset: 0, file_len, reason }));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != WAL_FORMAT_VERSION {
        let reason = format!("unsupported WAL format version {version} (this build reads {WAL_FORMAT_VERSION})");
        return Ok((Vec::new(), ReadEnd::Corrupt { offset: 0, file_len, reason }));
    }
    let records = read_records(&data[HEADER_LEN as usize..], HEADER_LEN);
    let end = match records.stop {
        None => ReadEnd::Clean,
        Some(stop) => ReadEnd::Corrupt { offset: records.end, file_len, reason: stop.reason },
    };
    Ok((records.entries, end))
}

/// What [`read_records`] read.
#[derive(Debug)]
pub struct Records {
    pub entries: Vec<WalEntry>,
    /// The file offset after each entry's record.
    pub ends: Vec<u64>,
    /// The file offset after the last good record.
    pub end: u64,
    /// Why reading stopped before the end of the bytes, if it did.
    pub stop: Option<Stop>,
}

/// Why [`read_records`] stopped early.
#[derive(Debug, PartialEq)]
pub struct Stop {
    pub reason: String,
    /// The bytes end inside a record: more of the file may complete it
    /// (as opposed to a record that is there whole and damaged).
    pub incomplete: bool,
}

/// Reads the good records of `data`, the bytes of a WAL file from offset
/// `start` (the end of its header or of a record), stopping at the first
/// record that is incomplete or damaged.
pub fn read_records(data: &[u8], start: u64) -> Records {
    let mut entries = Vec::new();
    let mut ends = Vec::new();
    let mut pos = 0usize;
    let stop = loop {
        if pos >= data.len() {
            break None;
        }
        let cut = |reason: String| Some(Stop { reason, incomplete: true });
        let damaged = |reason: String| Some(Stop { reason, incomplete: false });
        if data.len() - pos < 8 {
            break cut("record header is incomplete".into());
        }
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > MAX_RECORD_BYTES {
            break damaged(format!("record length {len} runs past the end of the file"));
        }
        if (len as usize) > data.len() - pos - 8 {
            break cut(format!("record length {len} runs past the end of the file"));
        }
        let body = &data[pos + 8..pos + 8 + len as usize];
        let actual = crc32fast::hash(body);
        if actual != crc {
            break damaged(format!("CRC mismatch (stored {crc:08x}, computed {actual:08x})"));
        }
        let payload = match lz4_flex::decompress_size_prepended(body) {
            Ok(p) => p,
            Err(e) => break damaged(format!("LZ4 body does not decompress: {e}")),
        };
        match codec::decode(&payload) {
            Ok(e) => entries.push(e),
            Err(e) => break damaged(format!("record does not decode: {e}")),
        }
        pos += 8 + len as usize;
        ends.push(start + pos as u64);
    };
    Records { entries, ends, end: start + pos as u64, stop }
}

/// Cuts a WAL file to `len` bytes and fsyncs it.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

#[cfg(test)]
mod tests;
