//! The engine's persisted state: a snapshot (`state.json`) and a journal of
//! what changed since (`state.journal-<seq>` files).
//!
//! A round that changed something appends one record to the journal: the
//! instances, groups, silences and outbox jobs that differ from what is on
//! disk, found by comparing a digest of each with the digest last written
//! (so no mutation site has to remember to mark what it touched). The
//! record is fsynced before the round's notifications go to the senders.
//! When the journal outgrows the snapshot (or on a timer, for the fields
//! that change without a transition) a new snapshot is written atomically
//! and the journal files it covers are removed.
//!
//! Records are framed as `length (u32 LE) | CRC-32 (u32 LE) | JSON` and
//! numbered; the snapshot records the last number it covers, so that a
//! crash between writing a snapshot and removing the journal replays
//! nothing twice. A torn last record (a crash mid-append) is cut off; a
//! damaged record before the end is reported with its file and offset, and
//! that file and any later ones are moved aside.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, Hash, Hasher};

use super::*;
use crate::dispatch::GroupState;

const SNAPSHOT: &str = "state.json";
const JOURNAL_PREFIX: &str = "state.journal-";
/// The journal is compacted into a snapshot when it is larger than this
/// and than twice the last snapshot.
const COMPACT_MIN_BYTES: u64 = 8 << 20;
/// Fields that change without a transition (values, last seen, next
/// flush) are saved by a snapshot at least this often while rules run.
pub(super) const SNAPSHOT_EVERY: Duration = Duration::from_secs(600);

/// One change in a journal record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Op {
    Instance { value: Box<Instance> },
    InstanceGone { rule: String, id: String },
    Group { value: Box<GroupState> },
    GroupGone { key: String },
    Silence { value: Box<Silence> },
    SilenceGone { id: String },
    Job { value: Box<Job> },
    JobGone { id: String },
    NextId { value: u64 },
    Override { value: Box<crate::oncall::OverrideEntry> },
    OverrideGone { id: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) seq: u64,
    ops: Vec<Op>,
}

pub(super) use Record as JournalRecord;

/// Digests of what is on disk (snapshot plus journal), to find what a round
/// changed.
#[derive(Debug, Default)]
pub(super) struct Image {
    /// By rule key, then instance id.
    instances: HashMap<String, HashMap<String, u64>>,
    groups: HashMap<String, u64>,
    silences: HashMap<String, u64>,
    jobs: HashSet<String>,
    next_id: u64,
    overrides: HashMap<String, u64>,
}

impl Image {
    fn of(inner: &Inner) -> Image {
        let mut image = Image::default();
        let _ = image.diff(inner, false);
        image
    }

    /// The changes from this image to `inner`, which becomes the image.
    /// With `ops` false, only the image is updated.
    fn diff(&mut self, inner: &Inner, ops: bool) -> Vec<Op> {
        let mut out = Vec::new();
        for (key, instances) in &inner.rules {
            let known = self.instances.entry(key.clone()).or_default();
            for (id, inst) in instances {
                let d = instance_digest(inst);
                if known.get(id.as_str()) != Some(&d) {
                    known.insert(id.clone(), d);
                    if ops {
                        out.push(Op::Instance { value: Box::new(inst.clone()) });
                    }
                }
            }
            if known.len() > instances.len() {
                known.retain(|id, _| {
                    let keep = instances.contains_key(id);
                    if !keep && ops {
                        out.push(Op::InstanceGone { rule: key.clone(), id: id.clone() });
                    }
                    keep
                });
            }
        }
        self.instances.retain(|key, known| {
            let keep = inner.rules.contains_key(key);
            if !keep && ops {
                out.extend(known.keys().map(|id| Op::InstanceGone { rule: key.clone(), id: id.clone() }));
            }
            keep
        });
        for (key, g) in &inner.dispatcher.groups {
            let d = group_digest(g);
            if self.groups.get(key.as_str()) != Some(&d) {
                self.groups.insert(key.clone(), d);
                if ops {
                    out.push(Op::Group { value: Box::new(g.clone()) });
                }
            }
        }
        if self.groups.len() > inner.dispatcher.groups.len() {
            self.groups.retain(|key, _| {
                let keep = inner.dispatcher.groups.contains_key(key);
                if !keep && ops {
                    out.push(Op::GroupGone { key: key.clone() });
                }
                keep
            });
        }
        let mut live = HashSet::new();
        for (s, _) in &inner.silences {
            live.insert(s.id.as_str());
            let d = silence_digest(s);
            if self.silences.get(s.id.as_str()) != Some(&d) {
                self.silences.insert(s.id.clone(), d);
                if ops {
                    out.push(Op::Silence { value: Box::new(s.clone()) });
                }
            }
        }
        self.silences.retain(|id, _| {
            let keep = live.contains(id.as_str());
            if !keep && ops {
                out.push(Op::SilenceGone { id: id.clone() });
            }
            keep
        });
        for (id, job) in &inner.outbox {
            if !self.jobs.contains(id) {
                self.jobs.insert(id.clone());
                if ops {
                    out.push(Op::Job { value: Box::new(job.clone()) });
                }
            }
        }
        if self.jobs.len() > inner.outbox.len() {
            self.jobs.retain(|id| {
                let keep = inner.outbox.contains_key(id);
                if !keep && ops {
                    out.push(Op::JobGone { id: id.clone() });
                }
                keep
            });
        }
        let mut live = HashSet::new();
        for o in &inner.overrides {
            live.insert(o.id.as_str());
            let mut h = hasher();
            o.hash(&mut h);
            let d = h.finish();
            if self.overrides.get(o.id.as_str()) != Some(&d) {
                self.overrides.insert(o.id.clone(), d);
                if ops {
                    out.push(Op::Override { value: Box::new(o.clone()) });
                }
            }
        }
        self.overrides.retain(|id, _| {
            let keep = live.contains(id.as_str());
            if !keep && ops {
                out.push(Op::OverrideGone { id: id.clone() });
            }
            keep
        });
        if self.next_id != inner.next_id {
            self.next_id = inner.next_id;
            if ops {
                out.push(Op::NextId { value: inner.next_id });
            }
        }
        out
    }
}

/// The hasher of the digests: fast, and the same for the life of the
/// process (digests are never written).
fn hasher() -> impl Hasher {
    ahash::RandomState::with_seeds(0x7463_6f73, 0x696e_0a1e, 0x6a6f_7572, 0x6e61_6c21).build_hasher()
}

/// What of an instance must survive a restart exactly. Left out, and saved
/// by the periodic snapshot instead: the value, its annotations (rendered
/// from it), `updated_at`, `last_seen` and `cleared_since`, which the next
/// evaluation sets again. Also left out, as they never change for a given
/// id: `id`, `group`, `rule` and `identity`; `labels` follow from
/// `identity` and `severity`.
fn instance_digest(i: &Instance) -> u64 {
    let mut h = hasher();
    (i.state, &i.severity, i.created_at, i.pending_since, i.active_since, i.resolved_at).hash(&mut h);
    (i.no_data, &i.changes, i.flapping, &i.ack, &i.ack_lifted, &i.resolved_by, i.hold_until_clear, i.ends_at)
        .hash(&mut h);
    h.finish()
}

/// What of a group must survive a restart exactly: what it sent, to whom,
/// and its escalation. Not `next_flush` (after a restart a group whose
/// flush passed flushes at once, and sends only what changed or is due to
/// repeat), nor what never changes for a given key (route, receiver, group
/// labels, creation).
fn group_digest(g: &GroupState) -> u64 {
    let mut h = hasher();
    (g.last_sent_at, &g.sent, &g.notified, &g.escalation).hash(&mut h);
    h.finish()
}

/// Silences are few: their JSON is their digest.
fn silence_digest(s: &Silence) -> u64 {
    let mut h = hasher();
    serde_json::to_vec(s).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The journal being written, and what is on disk.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    /// The file appended to, created at the first record after a snapshot.
    file: Option<(PathBuf, File)>,
    /// Journal files since the snapshot, oldest first.
    files: Vec<PathBuf>,
    /// Bytes in those files.
    bytes: u64,
    /// The last record number written (or covered by the snapshot).
    pub(super) seq: u64,
    snapshot_bytes: u64,
    pub(super) last_snapshot: Instant,
    image: Image,
    /// Records waiting to be shipped to a bucket (`ship.rs`).
    pub(super) ship: ship::ShipQueue,
}

impl Journal {
    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let path = self.dir.join(journal_file_name(self.seq + 1));
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            tocsin_storage::durable::sync_dir(&self.dir)?;
            self.files.push(path.clone());
            self.file = Some((path, f));
        }
        let Some((_, f)) = self.file.as_mut() else { unreachable!("opened above") };
        let before = f.metadata()?.len();
        let written = f.write_all(record).and_then(|_| f.sync_data());
        if let Err(e) = written {
            // Cut a partial record off, so that what follows is readable.
            let _ = f.set_len(before);
            return Err(e);
        }
        self.bytes += record.len() as u64;
        Ok(())
    }

    fn wants_compaction(&self) -> bool {
        self.bytes > COMPACT_MIN_BYTES.max(2 * self.snapshot_bytes)
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Runs blocking file work, telling a multi-threaded runtime so that the
/// worker's other tasks move elsewhere meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread { tokio::task::block_in_place(f) } else { f() }
}

impl AlertEngine {
    // -- persistence -------------------------------------------------------

    pub(super) fn save_if_dirty(&self) -> Result<(), EngineError> {
        if !self.inner.lock().dirty {
            return Ok(());
        }
        self.save()
    }

    /// Writes what changed since the last save as one journal record
    /// (fsynced), and compacts the journal into a snapshot when it has
    /// grown larger than the snapshot.
    pub fn save(&self) -> Result<(), EngineError> {
        let mut journal = self.journal.lock();
        let started = Instant::now();
        let ops = {
            let mut inner = self.inner.lock();
            inner.dirty = false;
            journal.image.diff(&inner, true)
        };
        self.append(&mut journal, ops, started)
    }

    /// Journals that these outbox jobs were delivered (or given up): all a
    /// delivery changes, so no comparison of the rest of the state (which
    /// the next round's save does) is needed.
    pub(super) fn save_delivered(&self, jobs: &[String]) -> Result<(), EngineError> {
        let mut journal = self.journal.lock();
        let started = Instant::now();
        let ops: Vec<Op> =
            jobs.iter().filter(|id| journal.image.jobs.remove(*id)).map(|id| Op::JobGone { id: id.clone() }).collect();
        self.append(&mut journal, ops, started)
    }

    /// Appends one record of `ops` (fsynced), then compacts the journal
    /// if it has grown too large; on failure the next save writes
    /// everything again.
    fn append(&self, journal: &mut Journal, ops: Vec<Op>, started: Instant) -> Result<(), EngineError> {
        self.append_record(journal, ops, started)?;
        if journal.wants_compaction() {
            self.snapshot_locked(journal)?;
        }
        Ok(())
    }

    fn append_record(&self, journal: &mut Journal, ops: Vec<Op>, started: Instant) -> Result<(), EngineError> {
        if ops.is_empty() {
            return Ok(());
        }
        let count = ops.len();
        let seq = journal.seq + 1;
        let payload = serde_json::to_vec(&Record { seq, ops }).map_err(|e| EngineError::BadRequest(e.to_string()))?;
        let record = frame(&payload);
        if let Err(source) = blocking(|| journal.append(&record)) {
            journal.image = Image::default();
            self.inner.lock().dirty = true;
            let path = journal.file.as_ref().map_or_else(|| journal.dir.clone(), |(p, _)| p.clone());
            return Err(EngineError::StateIo { path, source });
        }
        journal.seq = seq;
        let queued = journal.ship.push(seq, &record);
        self.note_appended(seq, queued);
        let micros = started.elapsed().as_micros() as u64;
        let m = &self.metrics;
        m.journal_records.fetch_add(1, Ordering::Relaxed);
        m.journal_changes.fetch_add(count as u64, Ordering::Relaxed);
        m.journal_micros.fetch_add(micros, Ordering::Relaxed);
        m.journal_bytes.store(journal.bytes, Ordering::Relaxed);
        m.outbox_saved.store(journal.image.jobs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a snapshot of the whole state and removes the journal;
    /// returns the last record number it covers.
    pub fn write_snapshot(&self) -> Result<u64, EngineError> {
        let mut journal = self.journal.lock();
        self.snapshot_locked(&mut journal)
    }

    fn snapshot_locked(&self, journal: &mut Journal) -> Result<u64, EngineError> {
        let started = Instant::now();
        let (bytes, image, outbox, ops) = {
            let mut inner = self.inner.lock();
            inner.dirty = false;
            // While the journal is shipped, what changed since the last
            // record goes in one more record, taken at the same instant as
            // the snapshot: the bucket holds the last push's snapshot, not
            // this one, so a change must not reach the snapshot alone.
            let ops = if journal.ship.on { journal.image.diff(&inner, true) } else { Vec::new() };
            let state = PersistedState {
                version: STATE_VERSION,
                seq: journal.seq + u64::from(!ops.is_empty()),
                instances: inner.rules.values().flat_map(|m| m.values().cloned()).collect(),
                dispatcher: inner.dispatcher.clone(),
                silences: inner.silences.iter().map(|(s, _)| s.clone()).collect(),
                outbox: inner.outbox.values().cloned().collect(),
                next_id: inner.next_id,
                overrides: inner.overrides.clone(),
            };
            let image = Image::of(&inner);
            drop(inner);
            let bytes = match serde_json::to_vec(&state) {
                Ok(b) => b,
                Err(e) => {
                    // The digests may have moved past what is on disk.
                    journal.image = Image::default();
                    self.inner.lock().dirty = true;
                    return Err(EngineError::BadRequest(e.to_string()));
                }
            };
            (bytes, image, state.outbox.len(), ops)
        };
        self.append_record(journal, ops, started)?;
        let path = journal.dir.join(SNAPSHOT);
        let written = blocking(|| write_atomic(&path, &bytes));
        if let Err(source) = written {
            self.inner.lock().dirty = true;
            journal.image = Image::default();
            return Err(EngineError::StateIo { path, source });
        }
        // The snapshot covers every journal record: they go.
        journal.file = None;
        for f in journal.files.drain(..) {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!("cannot remove {} (the snapshot covers it): {e}", f.display());
            }
        }
        journal.bytes = 0;
        journal.snapshot_bytes = bytes.len() as u64;
        journal.last_snapshot = Instant::now();
        journal.image = image;
        journal.ship.snapshot_written(journal.seq);
        let micros = started.elapsed().as_micros() as u64;
        let m = &self.metrics;
        m.outbox_saved.store(outbox as u64, Ordering::Relaxed);
        m.state_saves.fetch_add(1, Ordering::Relaxed);
        m.state_save_micros.fetch_add(micros, Ordering::Relaxed);
        m.state_save_last_micros.store(micros, Ordering::Relaxed);
        m.state_bytes.store(bytes.len() as u64, Ordering::Relaxed);
        m.journal_bytes.store(0, Ordering::Relaxed);
        Ok(journal.seq)
    }
}

/// The state on disk, and the journal to go on with.
pub(super) struct Loaded {
    pub(super) state: PersistedState,
    /// Journal records were applied (or damaged ones found): a snapshot
    /// should be written once the engine runs.
    pub(super) replayed: bool,
    journal_files: Vec<PathBuf>,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

impl Loaded {
    /// The journal of a loaded state (numbered up to `seq`), with the
    /// digests of `inner`.
    pub(super) fn journal(&self, dir: &Path, seq: u64, inner: &Inner) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            file: None,
            files: self.journal_files.clone(),
            bytes: self.journal_bytes,
            seq,
            snapshot_bytes: self.snapshot_bytes,
            last_snapshot: Instant::now(),
            image: Image::of(inner),
            ship: Default::default(),
        }
    }
}

pub(super) fn load_state(dir: &Path) -> Result<Loaded, EngineError> {
    let path = dir.join(SNAPSHOT);
    let (mut state, snapshot_bytes) = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
            Ok(s) if s.version == STATE_VERSION => (s, bytes.len() as u64),
            Ok(s) => {
                return Err(EngineError::BadRequest(format!(
                    "{} has version {}, this build reads version {STATE_VERSION}",
                    path.display(),
                    s.version
                )));
            }
            Err(e) => {
                let aside = quarantine(&path).map_err(|source| EngineError::StateIo { path: path.clone(), source })?;
                tracing::error!(
                    "alerting state {} is corrupt ({e}); moved to {} and starting from the journal alone",
                    path.display(),
                    aside.display()
                );
                (PersistedState::default(), 0)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (PersistedState::default(), 0),
        Err(source) => return Err(EngineError::StateIo { path, source }),
    };
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|source| EngineError::StateIo { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let seq = u64::from_str_radix(name.strip_prefix(JOURNAL_PREFIX)?, 16).ok()?;
            Some((seq, p))
        })
        .collect();
    files.sort();
    let mut replay = Replay::new(&mut state);
    let mut replayed = false;
    let mut kept = Vec::new();
    let mut bytes_kept = 0;
    let mut damaged: Option<usize> = None;
    let count = files.len();
    for (n, (_, file)) in files.iter().enumerate() {
        if damaged.is_some() {
            break;
        }
        let data = std::fs::read(file).map_err(|source| EngineError::StateIo { path: file.clone(), source })?;
        let mut at = 0usize;
        while at < data.len() {
            match next_record(&data[at..]) {
                Ok((record, len)) => {
                    if record.seq > state.seq {
                        state.seq = record.seq;
                        replay.apply(&mut state, record.ops);
                        replayed = true;
                    }
                    at += len;
                }
                Err(why) => {
                    if n + 1 == count && is_torn_tail(&data[at..]) {
                        tracing::warn!(
                            "alerting journal {}: the last record is incomplete ({why}; a crash while it was \
                             written, before it was acknowledged); cut off at byte {at}",
                            file.display()
                        );
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(file)
                            .and_then(|f| f.set_len(at as u64).and_then(|_| f.sync_all()));
                        f.map_err(|source| EngineError::StateIo { path: file.clone(), source })?;
                    } else {
                        tracing::error!(
                            "alerting journal {} is damaged at byte {at} ({why}); the state is loaded up to there, \
                             and this file and any later journal files are moved aside",
                            file.display()
                        );
                        damaged = Some(n);
                    }
                    replayed = true;
                    break;
                }
            }
        }
        if damaged.is_none() {
            bytes_kept += at as u64;
            kept.push(file.clone());
        }
    }
    replay.finish(&mut state);
    if let Some(n) = damaged {
        for (_, file) in &files[n..] {
            let aside = quarantine(file).map_err(|source| EngineError::StateIo { path: file.clone(), source })?;
            tracing::error!("moved {} to {}", file.display(), aside.display());
        }
    }
    Ok(Loaded { state, replayed, journal_files: kept, journal_bytes: bytes_kept, snapshot_bytes })
}

/// One framed record at the start of `data`, and its framed length.
pub(super) fn next_record(data: &[u8]) -> Result<(Record, usize), String> {
    if data.len() < 8 {
        return Err(format!("{} bytes where a record header takes 8", data.len()));
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let Some(payload) = data.get(8..8 + len) else {
        return Err(format!("a record of {len} bytes with {} left", data.len() - 8));
    };
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let record = serde_json::from_slice::<Record>(payload).map_err(|e| format!("unreadable record: {e}"))?;
    Ok((record, 8 + len))
}

/// Whether bad bytes at the end of the last journal file are a torn
/// append: a record whose declared length runs past the end (or a header
/// cut short). A record that fits but fails its checksum is damage.
fn is_torn_tail(data: &[u8]) -> bool {
    if data.len() < 8 {
        return true;
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    8 + len > data.len()
}

/// A loaded state being brought up to date by journal records.
struct Replay {
    instances: BTreeMap<(String, String), Instance>,
    /// In the order they were made, as the engine keeps them.
    silences: indexmap::IndexMap<String, Silence>,
    outbox: BTreeMap<String, Job>,
    overrides: indexmap::IndexMap<String, crate::oncall::OverrideEntry>,
}

impl Replay {
    fn new(state: &mut PersistedState) -> Replay {
        Replay {
            instances: std::mem::take(&mut state.instances)
                .into_iter()
                .map(|i| ((rule_key(&i.group, &i.rule), i.id.clone()), i))
                .collect(),
            silences: std::mem::take(&mut state.silences).into_iter().map(|s| (s.id.clone(), s)).collect(),
            outbox: std::mem::take(&mut state.outbox).into_iter().map(|j| (j.id.clone(), j)).collect(),
            overrides: std::mem::take(&mut state.overrides).into_iter().map(|o| (o.id.clone(), o)).collect(),
        }
    }

    fn apply(&mut self, state: &mut PersistedState, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::Instance { value } => {
                    self.instances.insert((rule_key(&value.group, &value.rule), value.id.clone()), *value);
                }
                Op::InstanceGone { rule, id } => {
                    self.instances.remove(&(rule, id));
                }
                Op::Group { value } => {
                    state.dispatcher.groups.insert(value.key.clone(), *value);
                }
                Op::GroupGone { key } => {
                    state.dispatcher.groups.remove(&key);
                }
                Op::Silence { value } => {
                    self.silences.insert(value.id.clone(), *value);
                }
                Op::SilenceGone { id } => {
                    self.silences.shift_remove(&id);
                }
                Op::Job { value } => {
                    self.outbox.insert(value.id.clone(), *value);
                }
                Op::JobGone { id } => {
                    self.outbox.remove(&id);
                }
                Op::NextId { value } => state.next_id = value,
                Op::Override { value } => {
                    self.overrides.insert(value.id.clone(), *value);
                }
                Op::OverrideGone { id } => {
                    self.overrides.shift_remove(&id);
                }
            }
        }
    }

    fn finish(self, state: &mut PersistedState) {
        state.instances = self.instances.into_values().collect();
        state.silences = self.silences.into_values().collect();
        state.outbox = self.outbox.into_values().collect();
        state.overrides = self.overrides.into_values().collect();
    }
}

/// The name of the journal file whose first record is `first`.
pub(super) fn journal_file_name(first: u64) -> String {
    format!("{JOURNAL_PREFIX}{first:016x}")
}

/// The last record number the snapshot in `dir` covers (zero without one).
pub(super) fn snapshot_seq(dir: &Path) -> Result<u64, EngineError> {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(default)]
        seq: u64,
    }
    let path = dir.join(SNAPSHOT);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Seq>(&bytes)
            .map(|s| s.seq)
            .map_err(|e| EngineError::BadRequest(format!("{} is not an alerting state: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(EngineError::StateIo { path, source }),
    }
}

/// Moves a damaged file aside, next to it, with the time in its name.
fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let aside = path.with_file_name(format!("{name}.corrupt-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")));
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tocsin_storage::durable::write_atomic(path, |e| e, |f| f.write_all(bytes))
}
