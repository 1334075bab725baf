//! The audit log: who did what, from where, with what outcome, one JSON
//! line per action in `<data-dir>/audit/audit.jsonl`, each entry chained to
//! the one before by a SHA-256 hash, so that an entry edited, removed or
//! inserted behind the server's back breaks the chain at that point
//! ([`verify`], `tocsin audit verify`).
//!
//! Append-only: nothing in the server rewrites or deletes entries, and no
//! API can (SQL sees them as the read-only `system.audit`). Each entry is
//! written with one `write` (it survives a process crash); the file is
//! fsynced at most once a second, so a power loss may lose the last second.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tocsin_storage::Clock;

use crate::AuthError;
use crate::token::hex;

/// The hash the first entry chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// `token:<id>`, a user, `anonymous` (auth off) or `unauthenticated`.
    pub actor: String,
    pub role: String,
    /// The client's address, when known.
    pub source: String,
    /// `http`, `grpc`, `flight`, `cli`.
    pub interface: String,
    /// What was done: `POST /api/v1/alerts/{id}/ack`, `sql`, `login`, ...
    pub action: String,
    /// What it was done to: the request path, the SQL text, a token id.
    pub target: String,
    /// `ok`, `denied` (authentication or permission) or `error`.
    pub outcome: String,
    /// The answer's HTTP status (gRPC codes are mapped to their HTTP ones).
    pub status: u16,
    /// The error, when there was one.
    pub detail: String,
    pub duration_us: u64,
    /// Rows returned or written, when known.
    pub rows: Option<u64>,
    /// The hash of the previous entry ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 of `prev` and this entry (with `hash` empty).
    pub hash: String,
}

impl AuditEntry {
    fn digest(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        // Serializing a struct of plain fields cannot fail.
        let body = serde_json::to_vec(&unhashed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(b"\n");
        h.update(&body);
        hex(&h.finalize())
    }
}

/// The log of one server.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    state: Mutex<Tail>,
    /// Entries that could not be written, since start.
    lost_total: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Tail {
    file: File,
    seq: u64,
    hash: String,
    last_sync: Duration,
    dirty: bool,
    /// Where the last whole entry ends: a failed append is cut back to it.
    len: u64,
    /// Entries lost since the last successful append, and the first
    /// failure: the next append writes a gap entry saying so.
    lost: u64,
    first_error: String,
}

/// How long an entry may wait in the page cache before an fsync.
const SYNC_EVERY: Duration = Duration::from_secs(1);

impl AuditLog {
    /// Opens (or creates) `<data_dir>/audit/audit.jsonl` and finds the end
    /// of its chain. A torn last line (a crash in the middle of a write) is
    /// cut off; a broken chain is reported, not repaired: new entries chain
    /// to the last one.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<AuditLog, AuthError> {
        let path = audit_path(data_dir);
        let io = |source| AuthError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let report = scan(&mut file).map_err(io)?;
        if report.torn_bytes > 0 {
            tracing::warn!(path = %path.display(), bytes = report.torn_bytes, "audit log: cut a torn last line");
            file.set_len(report.valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        if let Some(broken) = &report.broken {
            tracing::error!(path = %path.display(), "audit log chain is broken ({broken}); run `tocsin audit verify`");
        }
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        let last_sync = clock.monotonic();
        let tail = Tail {
            file,
            seq: report.last_seq,
            hash: report.last_hash,
            last_sync,
            dirty: false,
            len,
            lost: 0,
            first_error: String::new(),
        };
        Ok(AuditLog { path, clock, state: Mutex::new(tail), lost_total: std::sync::atomic::AtomicU64::new(0) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` (its `seq`, `ts_ms`, `prev` and `hash` are set here).
    ///
    /// The action it records has already happened, so a failure (a full
    /// disk) does not undo it: the part written is cut off (the chain stays
    /// whole), the first failure of a run is logged, each lost entry is
    /// counted ([`Self::lost_total`]), and the next entry that can be
    /// written is preceded by an `audit gap` entry that says how many were
    /// lost, so the gap is in the chain itself.
    pub fn record(&self, entry: AuditEntry) {
        let mut tail = self.state.lock();
        let ts_ms = self.clock.now_ns() / 1_000_000;
        let mut entries = Vec::with_capacity(2);
        if tail.lost > 0 {
            entries.push(AuditEntry {
                actor: "tocsin".into(),
                interface: "audit".into(),
                action: "audit gap".into(),
                target: self.path.display().to_string(),
                outcome: "error".into(),
                status: 507,
                detail: format!(
                    "{} entries before this one could not be written ({}); the actions they record happened",
                    tail.lost, tail.first_error
                ),
                ..AuditEntry::default()
            });
        }
        entries.push(entry);
        let (mut seq, mut hash) = (tail.seq, tail.hash.clone());
        let mut lines = Vec::new();
        for e in &mut entries {
            seq += 1;
            e.seq = seq;
            e.ts_ms = ts_ms;
            e.prev = std::mem::take(&mut hash);
            e.hash = e.digest();
            hash = e.hash.clone();
            // Serializing a struct of plain fields cannot fail.
            lines.extend(serde_json::to_vec(&*e).unwrap_or_default());
            lines.push(b'\n');
        }
        if let Err(e) = tail.file.write_all(&lines) {
            // A short write leaves part of a line: cut back to the last
            // whole entry (the file is in append mode).
            let len = tail.len;
            if let Err(cut) = tail.file.set_len(len) {
                tracing::error!(path = %self.path.display(), "cannot cut a failed append off the audit log: {cut}");
            }
            if tail.lost == 0 {
                tracing::error!(
                    path = %self.path.display(),
                    "cannot append to the audit log: {e}; entries are lost (tocsin_audit_lost_entries_total) until it \
                     can, then an `audit gap` entry records how many"
                );
                tail.first_error = e.to_string();
            }
            tail.lost += 1;
            self.lost_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if tail.lost > 0 {
            tracing::warn!(path = %self.path.display(), lost = tail.lost, "the audit log can be appended again");
            tail.lost = 0;
        }
        tail.len += lines.len() as u64;
        tail.seq = seq;
        tail.hash = hash;
        tail.dirty = true;
        let now = self.clock.monotonic();
        if now.saturating_sub(tail.last_sync) >= SYNC_EVERY {
            if let Err(e) = tail.file.sync_data() {
                tracing::error!(path = %self.path.display(), "cannot fsync the audit log: {e}");
            }
            tail.last_sync = now;
            tail.dirty = false;
        }
    }

    /// Entries that could not be written since start (see [`Self::record`]).
    pub fn lost_total(&self) -> u64 {
        self.lost_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fsyncs what was appended since the last fsync (at shutdown).
    pub fn sync(&self) {
        let mut tail = self.state.lock();
        if tail.dirty {
            let _ = tail.file.sync_data();
            tail.dirty = false;
        }
    }

    /// The hash of the last entry: record it elsewhere to detect a log cut
    /// short later (the chain alone cannot).
    pub fn head(&self) -> (u64, String) {
        let tail = self.state.lock();
        (tail.seq, tail.hash.clone())
    }

    /// Every entry, oldest first (lines that do not parse are skipped; see
    /// [`verify`] for the chain).
    pub fn entries(&self) -> Result<Vec<AuditEntry>, AuthError> {
        let file = File::open(&self.path).map_err(|source| AuthError::Io { path: self.path.clone(), source })?;
        let mut out = Vec::new();
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|source| AuthError::Io { path: self.path.clone(), source })?;
            if let Ok(e) = serde_json::from_slice::<AuditEntry>(&line) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

pub fn audit_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.jsonl")
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries whose hash and link checked out, from the start.
    pub good: u64,
    /// The first broken link, if any: line number and why.
    pub broken: Option<String>,
    pub last_seq: u64,
    pub last_hash: String,
}

struct Scan {
    valid_len: u64,
    torn_bytes: u64,
    last_seq: u64,
    last_hash: String,
    good: u64,
    broken: Option<String>,
}

fn scan(file: &mut File) -> std::io::Result<Scan> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(&*file);
    let mut s = Scan { valid_len: 0, torn_bytes: 0, last_seq: 0, last_hash: GENESIS.into(), good: 0, broken: None };
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            s.torn_bytes = n as u64;
            break;
        }
        number += 1;
        s.valid_len += n as u64;
        let entry = match serde_json::from_slice::<AuditEntry>(&line[..n - 1]) {
            Ok(e) => e,
            Err(e) => {
                s.broken.get_or_insert_with(|| format!("line {number} is not an audit entry: {e}"));
                continue;
            }
        };
        if s.broken.is_none() {
            if entry.prev != s.last_hash {
                s.broken = Some(format!(
                    "line {number} (seq {}) does not link to the entry before it: an entry was removed, \
                     inserted or edited there",
                    entry.seq
                ));
            } else if entry.digest() != entry.hash {
                s.broken = Some(format!("line {number} (seq {}) was edited: its hash does not match", entry.seq));
            } else {
                s.good += 1;
            }
        }
        s.last_seq = entry.seq;
        s.last_hash = entry.hash;
    }
    Ok(s)
}

/// Checks the whole chain of the log at `path` (`tocsin audit verify`).
pub fn verify(path: &Path) -> Result<Verification, AuthError> {
    let mut file = File::open(path).map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    let s = scan(&mut file).map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    let mut broken = s.broken;
    if s.torn_bytes > 0 && broken.is_none() {
        broken = Some(format!("the last {} bytes are a torn line (a crash while writing)", s.torn_bytes));
    }
    Ok(Verification { good: s.good, broken, last_seq: s.last_seq, last_hash: s.last_hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_storage::ManualClock;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry { actor: "token:ab".into(), action: action.into(), outcome: "ok".into(), ..Default::default() }
    }

    #[test]
    fn the_chain_verifies_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let log = AuditLog::open(dir.path(), clock.clone()).expect("open");
        log.record(entry("a"));
        log.record(entry("b"));
        let (seq, head) = log.head();
        drop(log);
        let log = AuditLog::open(dir.path(), clock).expect("reopen");
        assert_eq!(log.head(), (seq, head));
        log.record(entry("c"));
        let v = verify(&audit_path(dir.path())).expect("verify");
        assert_eq!((v.good, v.broken, v.last_seq), (3, None, 3));
        let all = log.entries().expect("entries");
        assert_eq!(all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(all[0].prev, GENESIS);
        assert_eq!(all[1].prev, all[0].hash);
    }

    #[test]
    fn an_edited_removed_or_torn_entry_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path(), Arc::new(ManualClock::new(0))).expect("open");
        for a in ["a", "b", "c", "d"] {
            log.record(entry(a));
        }
        let path = audit_path(dir.path());
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replacen("\"action\":\"b\"", "\"action\":\"x\"", 1);
        std::fs::write(&path, &edited).expect("write");
        let v = verify(&path).expect("verify");
        assert_eq!(v.good, 1);
        assert!(v.broken.as_deref().is_some_and(|b| b.contains("line 2") && b.contains("edited")), "{v:?}");

        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        std::fs::write(&path, removed).expect("write");
        let v = verify(&path).expect("verify");
        assert!(v.broken.as_deref().is_some_and(|b| b.contains("line 2") && b.contains("link")), "{v:?}");

        std::fs::write(&path, format!("{text}{{\"seq\":5,")).expect("write");
        let v = verify(&path).expect("verify");
        assert_eq!(v.good, 4);
        assert!(v.broken.as_deref().is_some_and(|b| b.contains("torn")), "{v:?}");
        // Opening cuts the torn line and chains on.
        let log = AuditLog::open(dir.path(), Arc::new(ManualClock::new(0))).expect("reopen");
        log.record(entry("e"));
        let v = verify(&path).expect("verify");
        assert_eq!((v.good, v.broken), (5, None));
    }

    /// A full disk: the entries that cannot be written are counted, the
    /// chain stays whole, and the next entry written is preceded by one
    /// that records the gap.
    #[test]
    fn entries_lost_to_a_failing_disk_leave_a_gap_entry_in_a_whole_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path(), Arc::new(ManualClock::new(0))).expect("open");
        log.record(entry("before"));
        let path = audit_path(dir.path());
        // Writes through a read-only handle fail, as on a full disk.
        let read_only = File::open(&path).expect("open read-only");
        let writable = std::mem::replace(&mut log.state.lock().file, read_only);
        log.record(entry("lost-1"));
        log.record(entry("lost-2"));
        assert_eq!(log.lost_total(), 2);
        log.state.lock().file = writable;
        log.record(entry("after"));
        let v = verify(&path).expect("verify");
        assert_eq!((v.good, v.broken), (3, None));
        let all = log.entries().expect("entries");
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["before", "audit gap", "after"]);
        assert!(all[1].detail.starts_with("2 entries before this one could not be written"), "{}", all[1].detail);
        assert_eq!(all[1].prev, all[0].hash);
        log.record(entry("then"));
        assert_eq!(log.entries().expect("entries").len(), 4, "one gap entry per run of failures");
    }
}
