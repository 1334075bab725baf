//! Shipping the state journal to a bucket, next to the shipped WAL
//! (`[storage] wal = "object-store"` or `"object-store-sync"`).
//!
//! A server's copy in a bucket holds the alerting state as of its last push
//! (one snapshot). Without more, a successor that takes the copy over would
//! not know of an escalation step sent, or an acknowledgement given, after
//! that push: it would send the step again, or page someone who already
//! answered. So once [`AlertEngine::ship_journal`] is called, every journal
//! record written is also queued; the server's shipper takes the queue
//! ([`AlertEngine::journal_to_ship`]), puts it in the bucket as one object
//! and calls [`AlertEngine::journal_shipped`]. With `sync`, a round's
//! notifications go to the senders only once the record that puts them in
//! the outbox is shipped, and an acknowledgement is answered only once its
//! record is: the successor restores the copy, replays the shipped records
//! after its snapshot ([`assemble`]) and sends the next step, not the last
//! one again.
//!
//! Paging comes before that guarantee: a round waits at most
//! [`SHIP_WAIT`] for its record, and not at all while the shipper is
//! failing (the bucket is down) or not yet running (before this run's
//! first push); its notifications then go out, and are counted in
//! `tocsin_alert_journal_unshipped_total`. A queue grown past
//! [`SHIP_BACKLOG`] is dropped; records are queued again after the next
//! snapshot, and waiters count as unshipped until a push of that snapshot
//! lands ([`AlertEngine::journal_covered`]). [`assemble`] stops at the
//! first missing record, so a successor never replays records over a hole.
//!
//! Deliveries are shipped without waiting (the notification is out
//! already): a server that dies between a delivery and the shipment of its
//! record leaves the job in the copy's outbox, and its successor sends it
//! again, as a local restart would (at-least-once).

use std::collections::VecDeque;

use super::persist::{JournalRecord, next_record};
use super::*;

/// How long a round's notifications wait for their record to be shipped.
pub const SHIP_WAIT: Duration = Duration::from_secs(5);
/// Most bytes of journal records waiting to be shipped.
pub const SHIP_BACKLOG: usize = 64 << 20;

/// Journal records to put in the bucket: records `first..=last`, framed as
/// in the local journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalPiece {
    pub first: u64,
    pub last: u64,
    pub bytes: Vec<u8>,
}

/// The records waiting to be shipped (kept with the journal, under its
/// lock: a record is queued as it is written).
#[derive(Debug, Default)]
pub(super) struct ShipQueue {
    pub(super) on: bool,
    sync: bool,
    records: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    /// Most bytes queued ([`SHIP_BACKLOG`]).
    pub(super) limit: usize,
    /// The queue outgrew [`SHIP_BACKLOG`] and was dropped: the bucket
    /// misses records until a push lands whose snapshot covers them.
    overflowed: bool,
    /// While overflowed: the last snapshot written, after which records
    /// are queued again. A push whose snapshot is this one ends the
    /// overflow (the records after it are all queued); a push of an
    /// earlier snapshot does not.
    resume_after: Option<u64>,
}

/// What waiters watch.
#[derive(Debug, Clone, Default)]
pub(super) struct ShipState {
    /// The last record queued, and the last one shipped.
    appended: u64,
    shipped: u64,
    /// The last attempt failed: why.
    failing: Option<String>,
    /// Shipping stopped for good (the server stood down or stops).
    stopped: bool,
    /// The shipper runs (this run's first push landed).
    ready: bool,
    /// Records were dropped (see [`ShipQueue::overflowed`]).
    overflowed: bool,
}

/// What became of a record given to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    Yes,
    /// Shipping is off, or waits for a snapshot after an overflow.
    No,
    /// The queue outgrew [`SHIP_BACKLOG`] with it and was dropped.
    Overflowed,
}

impl ShipQueue {
    pub(super) fn push(&mut self, seq: u64, framed: &[u8]) -> Queued {
        if !self.on || (self.overflowed && self.resume_after.is_none()) {
            return Queued::No;
        }
        self.bytes += framed.len();
        self.records.push_back((seq, framed.to_vec()));
        if self.bytes > self.limit {
            self.clear();
            self.overflowed = true;
            self.resume_after = None;
            return Queued::Overflowed;
        }
        Queued::Yes
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Snapshot `seq` was written: after an overflow, records are queued
    /// again from the next one (those queued so far are in the snapshot).
    pub(super) fn snapshot_written(&mut self, seq: u64) {
        if self.overflowed {
            self.clear();
            self.resume_after = Some(seq);
        }
    }
}

impl AlertEngine {
    /// Queues every journal record written from now on for a shipper;
    /// with `sync`, notifications and acknowledgements wait for theirs.
    pub fn ship_journal(&self, sync: bool) {
        let mut journal = self.journal.lock();
        journal.ship.on = true;
        journal.ship.sync = sync;
        journal.ship.limit = SHIP_BACKLOG;
        let seq = journal.seq;
        self.ship_tx.send_modify(|s| {
            s.appended = seq;
            s.shipped = seq;
        });
    }

    /// The shipper runs: rounds may wait for it from now on. (Before this
    /// run's first push nothing can be shipped, and paging does not wait.)
    pub fn journal_ship_ready(&self) {
        self.ship_tx.send_modify(|s| s.ready = true);
    }

    /// A push of snapshot `seq` landed in the bucket: it ends an overflow
    /// if records have been queued since that snapshot.
    pub fn journal_covered(&self, seq: u64) {
        let mut journal = self.journal.lock();
        let q = &mut journal.ship;
        if q.overflowed && q.resume_after == Some(seq) {
            q.overflowed = false;
            q.resume_after = None;
            tracing::info!(record = seq, "the alerting journal is shipped again: the copy's snapshot covers the gap");
            self.ship_tx.send_modify(|s| s.overflowed = false);
        }
    }

    /// Whether shipping stopped for good.
    pub fn journal_shipping_stopped(&self) -> bool {
        self.ship_tx.borrow().stopped
    }

    /// The records waiting to be shipped, as one piece (a copy: they stay
    /// queued until [`Self::journal_shipped`]).
    pub fn journal_to_ship(&self) -> Option<JournalPiece> {
        let journal = self.journal.lock();
        let q = &journal.ship;
        let (first, last) = (q.records.front()?.0, q.records.back()?.0);
        let mut bytes = Vec::with_capacity(q.bytes);
        for (_, r) in &q.records {
            bytes.extend_from_slice(r);
        }
        Some(JournalPiece { first, last, bytes })
    }

    /// Records up to `last` are in the bucket.
    pub fn journal_shipped(&self, last: u64) {
        let mut journal = self.journal.lock();
        let q = &mut journal.ship;
        while q.records.front().is_some_and(|(seq, _)| *seq <= last) {
            if let Some((_, r)) = q.records.pop_front() {
                q.bytes -= r.len();
            }
        }
        self.ship_tx.send_modify(|s| {
            s.shipped = s.shipped.max(last);
            s.failing = None;
        });
    }

    /// The last attempt to ship failed: waiting rounds stop waiting.
    pub fn journal_ship_failed(&self, why: String) {
        self.ship_tx.send_modify(|s| s.failing = Some(why));
    }

    /// Shipping stops for good (this server stood down).
    pub fn stop_journal_shipping(&self) {
        let mut journal = self.journal.lock();
        journal.ship = ShipQueue::default();
        self.ship_tx.send_modify(|s| s.stopped = true);
    }

    /// Waits until a record waits to be shipped, or shipping stopped.
    pub async fn journal_waiting(&self) {
        let mut rx = self.ship_tx.subscribe();
        let _ = rx.wait_for(|s| s.appended > s.shipped || s.stopped).await;
    }

    /// Under `sync`: waits until every record written so far is shipped,
    /// at most [`SHIP_WAIT`], and not while shipping fails. False when it
    /// is not (the caller goes on: paging comes first).
    pub async fn journal_synced(&self) -> bool {
        if !self.journal.lock().ship.sync {
            return true;
        }
        let mut rx = self.ship_tx.subscribe();
        let target = rx.borrow().appended;
        let done = |s: &ShipState| s.shipped >= target || s.failing.is_some() || s.stopped || !s.ready || s.overflowed;
        let timed_out = tokio::time::timeout(SHIP_WAIT, rx.wait_for(done)).await.is_err();
        let state = rx.borrow().clone();
        let shipped = state.shipped >= target && !state.overflowed;
        if !shipped {
            self.metrics.unshipped_waits.fetch_add(1, Ordering::Relaxed);
            let why = if timed_out {
                format!("not shipped within {} s", SHIP_WAIT.as_secs())
            } else if state.stopped {
                "shipping stopped".into()
            } else if state.overflowed {
                "records were dropped over the limit; the next push covers them".into()
            } else if !state.ready {
                "this server's first copy is not in the bucket yet".into()
            } else {
                state.failing.unwrap_or_default()
            };
            tracing::warn!(
                record = target,
                "alerting state journal record is not in the bucket ({why}): going on; a server that takes the \
                 copy over may send these notifications again"
            );
        }
        shipped
    }

    /// Tells waiters of record `seq`, just written.
    pub(super) fn note_appended(&self, seq: u64, queued: Queued) {
        match queued {
            Queued::No => {}
            Queued::Yes => self.ship_tx.send_modify(|s| s.appended = seq),
            Queued::Overflowed => {
                tracing::error!(
                    limit = SHIP_BACKLOG,
                    "alerting state journal records waiting for the bucket passed the limit and were dropped; a \
                     server that takes the copy over starts from the last push until the next push lands"
                );
                self.metrics.journal_ship_dropped.fetch_add(1, Ordering::Relaxed);
                self.ship_tx.send_modify(|s| {
                    s.appended = seq;
                    s.overflowed = true;
                });
            }
        }
    }
}

/// The shipped pieces joined into one journal file to replay after a
/// snapshot that covers records up to `after`: the records from `after + 1`
/// on, each once, up to the first one missing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    /// Framed records, as in a local journal file.
    pub bytes: Vec<u8>,
    pub records: usize,
    /// The last record kept.
    pub last: u64,
    /// Why records after `last` were left out, if any were.
    pub stopped: Option<String>,
}

/// Joins shipped pieces (in any order; they may overlap: a piece whose
/// upload timed out is sent again with the records queued since).
pub fn assemble(after: u64, mut pieces: Vec<JournalPiece>) -> Assembled {
    // By first record, the longest first: a later piece can only fill a
    // gap if it starts at or before it.
    pieces.sort_by_key(|p| (p.first, std::cmp::Reverse(p.last)));
    let mut out = Assembled { last: after, ..Assembled::default() };
    let mut damage = None;
    for p in &pieces {
        let mut at = 0;
        while at < p.bytes.len() {
            let (seq, len) = match next_record(&p.bytes[at..]) {
                Ok((JournalRecord { seq, .. }, len)) => (seq, len),
                Err(why) => {
                    damage.get_or_insert(format!("piece {}-{} is damaged at byte {at}: {why}", p.first, p.last));
                    break;
                }
            };
            if seq > out.last + 1 {
                break;
            }
            if seq == out.last + 1 {
                out.bytes.extend_from_slice(&p.bytes[at..at + len]);
                out.records += 1;
                out.last = seq;
            }
            at += len;
        }
    }
    let shipped = pieces.iter().map(|p| p.last).max().unwrap_or(after);
    if shipped > out.last {
        let why = damage.unwrap_or_else(|| "no piece holds it".into());
        out.stopped = Some(format!("record {} is missing ({why}); records up to {shipped} were shipped", out.last + 1));
    }
    out
}

/// The record number a snapshot covers (`state.json` in `dir`), zero if
/// there is none.
pub fn snapshot_seq(dir: &Path) -> Result<u64, EngineError> {
    persist::snapshot_seq(dir)
}

/// The name of the journal file that holds records from `first` on.
pub fn journal_file_name(first: u64) -> String {
    persist::journal_file_name(first)
}
