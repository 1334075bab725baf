//! Live tail: log events fanned out to subscribers as they are written.
//!
//! Each event is matched once against an index of the active filters: the
//! subscribers of its (database, table, service), plus those that do not
//! filter on service; only those candidates check their remaining fields.
//! Every subscriber has a bounded queue: when it is full, events for it are
//! counted as dropped (ingest and other subscribers never wait), and the
//! subscriber receives a `dropped N` marker before its next event.
//!
//! The hub is a storage [`WriteObserver`]: it sees every acknowledged write
//! to any table (gRPC, SQL `INSERT`, every protocol) while the write still
//! holds the storage's write gate, which is what lets `--since` backfill
//! join the live stream exactly (see [`crate::follow`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use tocsin_proto::v1::{Label, LogEvent};
use tocsin_storage::{FieldValues, SeriesBlock, TableWrite, WriteObserver};
use tokio::sync::Notify;

use crate::convert::normalize_level;

/// What a subscriber wants to see.
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub database: String,
    pub table: String,
    /// Any of these services (empty: all).
    pub services: Vec<String>,
    pub hosts: Vec<String>,
    /// Minimum level (`info` lets info, warn, error, fatal through).
    pub min_level: Option<String>,
    pub trace_id: Option<String>,
    /// Case-insensitive substring of the message.
    pub text: Option<String>,
    /// Attribute equalities, all required.
    pub attributes: Vec<(String, String)>,
    /// The subscriber's role's row filters: the event's column (a field
    /// such as `service`, or an attribute) must hold one of the values.
    pub rows: Vec<(String, Vec<String>)>,
}

fn level_rank(level: &str) -> u8 {
    match level {
        "trace" => 0,
        "debug" => 1,
        "info" => 2,
        "warn" => 3,
        "error" => 4,
        "fatal" => 5,
        _ => 2,
    }
}

impl TailFilter {
    pub(crate) fn matches(&self, e: &LogEvent) -> bool {
        (self.services.is_empty() || self.services.contains(&e.service))
            && (self.hosts.is_empty() || self.hosts.contains(&e.host))
            && self.min_level.as_deref().is_none_or(|m| level_rank(&normalize_level(&e.level)) >= level_rank(m))
            && self.trace_id.as_deref().is_none_or(|t| t == e.trace_id)
            && self.text.as_deref().is_none_or(|t| {
                // Subscriptions store the text in lower case already.
                if t.bytes().any(|b| b.is_ascii_uppercase()) {
                    contains_ignore_case(&e.message, &t.to_ascii_lowercase())
                } else {
                    contains_ignore_case(&e.message, t)
                }
            })
            && self.attributes.iter().all(|(k, v)| e.attributes.iter().any(|l| l.name == *k && l.value == *v))
            && self
                .rows
                .iter()
                .all(|(column, values)| column_value(e, column).is_some_and(|v| values.iter().any(|x| x == v)))
    }

    /// Adds the row filters `who` has on this filter's table.
    pub fn restrict_to(&mut self, who: &tocsin_auth::Principal) {
        self.rows = who.row_filters(&self.database, &self.table).into_iter().map(|f| (f.column, f.values)).collect();
    }
}

/// The value an event has in `column`, as its table stores it: the event's
/// own fields by name, else an attribute.
fn column_value<'a>(e: &'a LogEvent, column: &str) -> Option<&'a str> {
    match column {
        "service" => Some(&e.service),
        "host" => Some(&e.host),
        "level" => Some(&e.level),
        "trace_id" => Some(&e.trace_id),
        "span_id" => Some(&e.span_id),
        "message" => Some(&e.message),
        _ => e.attributes.iter().find(|l| l.name == column).map(|l| l.value.as_str()),
    }
}

/// Whether `hay` contains `lower` (already ASCII lower case), ignoring ASCII
/// case, in linear time: this runs on the write path, for every event and
/// subscriber, and the pairwise comparison it replaces was quadratic.
fn contains_ignore_case(hay: &str, lower: &str) -> bool {
    thread_local! {
        static FOLDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if lower.is_empty() {
        return true;
    }
    FOLDED.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend(hay.bytes().map(|b| b.to_ascii_lowercase()));
        memchr::memmem::find(buf, lower.as_bytes()).is_some()
    })
}

/// Most events a subscriber's queue holds (`buffer` of a tail request is
/// clamped to it).
pub const MAX_TAIL_BUFFER: usize = 65_536;
/// Most bytes of events a subscriber's queue holds, whatever the count.
pub const MAX_TAIL_QUEUE_BYTES: usize = 16 << 20;
/// Longest text filter and most values in a list filter of one tail.
pub const MAX_FILTER_TEXT: usize = 1024;
pub const MAX_FILTER_VALUES: usize = 256;

impl TailFilter {
    /// Checks the filter's sizes; the error names what is too large.
    pub fn check(&self) -> Result<(), String> {
        self.check_sizes().inspect_err(|_| tocsin_storage::refusals::refused("max_tail_filter"))
    }

    fn check_sizes(&self) -> Result<(), String> {
        if let Some(t) = &self.text
            && t.len() > MAX_FILTER_TEXT
        {
            return Err(format!("text filter is {} bytes; at most {MAX_FILTER_TEXT} are allowed", t.len()));
        }
        for (what, n) in
            [("services", self.services.len()), ("hosts", self.hosts.len()), ("attributes", self.attributes.len())]
        {
            if n > MAX_FILTER_VALUES {
                return Err(format!("{n} {what} in the filter; at most {MAX_FILTER_VALUES} are allowed"));
            }
        }
        Ok(())
    }
}

fn event_bytes(e: &LogEvent) -> usize {
    64 + e.message.len()
        + e.service.len()
        + e.host.len()
        + e.level.len()
        + e.trace_id.len()
        + e.span_id.len()
        + e.attributes.iter().map(|l| l.name.len() + l.value.len() + 16).sum::<usize>()
}

/// One item of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum TailItem {
    Event(LogEvent),
    /// This many events matched but did not fit in the subscriber's queue.
    Dropped(u64),
}

struct Queue {
    /// Events and drop markers, in order.
    items: VecDeque<TailItem>,
    /// Events in `items`.
    events: usize,
    /// About how many bytes the events in `items` hold.
    bytes: usize,
    /// Dropped since the last marker was queued.
    dropped: u64,
}

struct Sub {
    id: u64,
    filter: TailFilter,
    capacity: usize,
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Sub {
    fn push(&self, e: &LogEvent, metrics: &TailMetrics) {
        let mut q = self.queue.lock();
        let size = event_bytes(e);
        if q.events >= self.capacity || q.bytes + size > MAX_TAIL_QUEUE_BYTES {
            q.dropped += 1;
            metrics.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            // The marker goes where the gap is: after what was queued
            // before the drops, before this event.
            if q.dropped > 0 {
                let n = std::mem::take(&mut q.dropped);
                q.items.push_back(TailItem::Dropped(n));
            }
            q.items.push_back(TailItem::Event(e.clone()));
            q.events += 1;
            q.bytes += size;
        }
        drop(q);
        self.ready.notify_one();
    }
}

type Key = (String, String);

#[derive(Default)]
struct Index {
    next_id: u64,
    by_service: HashMap<(Key, String), Vec<Arc<Sub>>>,
    any_service: HashMap<Key, Vec<Arc<Sub>>>,
    count: usize,
}

#[derive(Debug, Default)]
pub struct TailMetrics {
    pub subscribers: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Default)]
pub struct TailHub {
    index: RwLock<Index>,
    pub metrics: TailMetrics,
    /// `limits.max_tail_subscribers`; 0 until set: the default.
    max_subscribers: std::sync::atomic::AtomicUsize,
}

/// Default `limits.max_tail_subscribers`.
pub const DEFAULT_MAX_TAIL_SUBSCRIBERS: usize = 1024;

impl TailHub {
    pub fn has_subscribers(&self) -> bool {
        self.index.read().count > 0
    }

    /// Open subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.index.read().count
    }

    /// At most this many tails at once (each holds a queue of up to 16 MiB).
    pub fn set_max_subscribers(&self, n: usize) {
        self.max_subscribers.store(n.max(1), Ordering::Relaxed);
    }

    pub fn max_subscribers(&self) -> usize {
        match self.max_subscribers.load(Ordering::Relaxed) {
            0 => DEFAULT_MAX_TAIL_SUBSCRIBERS,
            n => n,
        }
    }

    /// Registers a subscriber with a queue of `capacity` events.
    pub fn subscribe(self: &Arc<Self>, mut filter: TailFilter, capacity: usize) -> Subscription {
        filter.text = filter.text.map(|t| t.to_ascii_lowercase());
        let mut idx = self.index.write();
        idx.next_id += 1;
        let sub = Arc::new(Sub {
            id: idx.next_id,
            filter,
            capacity: capacity.clamp(1, MAX_TAIL_BUFFER),
            queue: Mutex::new(Queue { items: VecDeque::new(), events: 0, bytes: 0, dropped: 0 }),
            ready: Notify::new(),
        });
        let key = (sub.filter.database.clone(), sub.filter.table.clone());
        if sub.filter.services.is_empty() {
            idx.any_service.entry(key).or_default().push(Arc::clone(&sub));
        } else {
            for s in &sub.filter.services {
                idx.by_service.entry((key.clone(), s.clone())).or_default().push(Arc::clone(&sub));
            }
        }
        idx.count += 1;
        self.metrics.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription { hub: Arc::clone(self), sub }
    }

    fn unsubscribe(&self, id: u64) {
        let mut idx = self.index.write();
        idx.by_service.values_mut().for_each(|v| v.retain(|s| s.id != id));
        idx.by_service.retain(|_, v| !v.is_empty());
        idx.any_service.values_mut().for_each(|v| v.retain(|s| s.id != id));
        idx.any_service.retain(|_, v| !v.is_empty());
        idx.count = idx.count.saturating_sub(1);
        self.metrics.subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Hands acknowledged events of `database.table` to the subscribers
    /// whose filter they match.
    pub fn publish(&self, database: &str, table: &str, events: &[LogEvent]) {
        let idx = self.index.read();
        let key = (database.to_string(), table.to_string());
        let any = idx.any_service.get(&key);
        for e in events {
            let by = idx.by_service.get(&(key.clone(), e.service.clone()));
            for sub in by.into_iter().flatten().chain(any.into_iter().flatten()) {
                if sub.filter.matches(e) {
                    sub.push(e, &self.metrics);
                }
            }
        }
    }
}

impl WriteObserver for TailHub {
    fn written(&self, db: &str, writes: &[TableWrite]) {
        if !self.has_subscribers() {
            return;
        }
        for w in writes {
            let mut events = Vec::new();
            {
                let idx = self.index.read();
                let key = (db.to_string(), w.table.clone());
                let any = idx.any_service.contains_key(&key);
                let mut blocks: Vec<&SeriesBlock> = w.blocks.iter().collect();
                blocks.sort_by_key(|b| b.item);
                for b in blocks {
                    let service = tag(b, "service");
                    if any || idx.by_service.contains_key(&(key.clone(), service.to_string())) {
                        block_events(b, &mut events);
                    }
                }
            }
            if !events.is_empty() {
                // Blocks group a write by series; subscribers see it in time
                // order (stable, so equal times keep the write's order).
                events.sort_by_key(|e| e.timestamp);
                self.publish(db, &w.table, &events);
            }
        }
    }
}

fn tag<'a>(b: &'a SeriesBlock, name: &str) -> &'a str {
    b.tags.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// The log events of one written series block (any table: columns that a
/// log event does not have are ignored, missing ones are empty).
fn block_events(b: &SeriesBlock, out: &mut Vec<LogEvent>) {
    let text = |name: &str, i: usize| -> String {
        let Some(f) = b.fields.iter().find(|f| f.name == name) else { return String::new() };
        if f.validity.as_ref().is_some_and(|v| !v.get(i).copied().unwrap_or(true)) {
            return String::new();
        }
        match &f.values {
            FieldValues::Str(v) => v.get(i).cloned().unwrap_or_default(),
            FieldValues::F64(v) => v.get(i).map(|x| x.to_string()).unwrap_or_default(),
            FieldValues::I64(v) => v.get(i).map(|x| x.to_string()).unwrap_or_default(),
            FieldValues::U64(v) => v.get(i).map(|x| x.to_string()).unwrap_or_default(),
            FieldValues::Bool(v) => v.get(i).map(|x| x.to_string()).unwrap_or_default(),
        }
    };
    for (i, &ts) in b.timestamps.iter().enumerate() {
        out.push(LogEvent {
            timestamp: ts,
            service: tag(b, "service").to_string(),
            host: tag(b, "host").to_string(),
            level: tag(b, "level").to_string(),
            message: text("message", i),
            trace_id: text("trace_id", i),
            span_id: text("span_id", i),
            attributes: attributes_from_json(&text("attributes", i)),
        });
    }
}

/// The attributes of a stored event: its JSON object back as labels
/// (non-string values as their JSON text).
pub(crate) fn attributes_from_json(json: &str) -> Vec<Label> {
    if json.is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(map) => map
            .into_iter()
            .map(|(name, v)| {
                let value = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                Label { name, value }
            })
            .collect(),
        Err(_) => vec![Label { name: "attributes".into(), value: json.to_string() }],
    }
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<TailHub>,
    sub: Arc<Sub>,
}

impl Subscription {
    /// The next event, or a marker where events were dropped.
    pub async fn next(&self) -> TailItem {
        loop {
            let notified = self.sub.ready.notified();
            {
                let mut q = self.sub.queue.lock();
                if let Some(item) = q.items.pop_front() {
                    if let TailItem::Event(e) = &item {
                        q.events -= 1;
                        q.bytes = q.bytes.saturating_sub(event_bytes(e));
                        self.hub.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    return item;
                }
                if q.dropped > 0 {
                    return TailItem::Dropped(std::mem::take(&mut q.dropped));
                }
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.sub.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(service: &str, level: &str, msg: &str) -> LogEvent {
        LogEvent { service: service.into(), level: level.into(), message: msg.into(), ..Default::default() }
    }

    fn filter(services: &[&str], min_level: Option<&str>) -> TailFilter {
        TailFilter {
            database: "public".into(),
            table: "logs".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            min_level: min_level.map(str::to_string),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn each_subscriber_gets_its_events_in_order() {
        let hub = Arc::new(TailHub::default());
        let billing = hub.subscribe(filter(&["billing"], None), 10);
        let errors = hub.subscribe(filter(&[], Some("warn")), 10);
        hub.publish(
            "public",
            "logs",
            &[ev("billing", "info", "a"), ev("web", "ERROR", "b"), ev("billing", "warn", "c")],
        );
        hub.publish("other", "logs", &[ev("billing", "error", "x")]);
        assert_eq!(billing.next().await, TailItem::Event(ev("billing", "info", "a")));
        assert_eq!(billing.next().await, TailItem::Event(ev("billing", "warn", "c")));
        assert_eq!(errors.next().await, TailItem::Event(ev("web", "ERROR", "b")));
        assert_eq!(errors.next().await, TailItem::Event(ev("billing", "warn", "c")));
        assert!(billing.sub.queue.lock().items.is_empty() && errors.sub.queue.lock().items.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_says_so() {
        let hub = Arc::new(TailHub::default());
        let slow = hub.subscribe(filter(&[], None), 2);
        let events: Vec<LogEvent> = (0..5).map(|i| ev("s", "info", &i.to_string())).collect();
        hub.publish("public", "logs", &events);
        assert_eq!(slow.next().await, TailItem::Event(ev("s", "info", "0")));
        hub.publish("public", "logs", &[ev("s", "info", "5")]);
        assert_eq!(slow.next().await, TailItem::Event(ev("s", "info", "1")));
        assert_eq!(slow.next().await, TailItem::Dropped(3), "the marker sits where the gap is");
        assert_eq!(slow.next().await, TailItem::Event(ev("s", "info", "5")));
        assert_eq!(hub.metrics.dropped.load(Ordering::Relaxed), 3);
        drop(slow);
        assert!(!hub.has_subscribers());
    }

    #[tokio::test]
    async fn written_log_blocks_reach_subscribers_in_time_order_with_attributes() {
        use tocsin_proto::v1::WriteLogsRequest;
        let hub = Arc::new(TailHub::default());
        let all = hub.subscribe(filter(&[], None), 10);
        let mk = |ts: i64, service: &str, msg: &str| LogEvent {
            timestamp: ts,
            service: service.into(),
            host: "h".into(),
            level: "info".into(),
            message: msg.into(),
            attributes: vec![Label { name: "region".into(), value: "eu".into() }],
            ..Default::default()
        };
        let req = WriteLogsRequest {
            database: String::new(),
            stream: String::new(),
            events: vec![mk(3, "a", "third"), mk(1, "b", "first"), mk(2, "a", "second")],
        };
        let (write, _, _) = crate::convert::logs_to_write(req, 1 << 16, &tocsin_storage::WriteLimits::default());
        hub.written("public", &[write]);
        for (ts, service, msg) in [(1, "b", "first"), (2, "a", "second"), (3, "a", "third")] {
            assert_eq!(all.next().await, TailItem::Event(mk(ts, service, msg)));
        }
        // Another database's writes are not this subscriber's.
        let (write, _, _) = crate::convert::logs_to_write(
            WriteLogsRequest { database: String::new(), stream: String::new(), events: vec![mk(4, "a", "x")] },
            1 << 16,
            &tocsin_storage::WriteLimits::default(),
        );
        hub.written("other", &[write]);
        assert!(all.sub.queue.lock().items.is_empty());
    }

    /// The linear case-insensitive search agrees with the obvious pairwise
    /// one on generated texts and needles.
    #[test]
    fn text_filter_search_agrees_with_the_naive_one() {
        use tocsin_storage::generated::{Inputs, cases};
        const VOCABULARY: &[&str] = &["a", "A", "b", "é", "É", " ", "ab", "AB", "aab", "\u{0}", "ß"];
        let naive = |h: &str, n: &str| {
            let (h, n) = (h.as_bytes(), n.as_bytes());
            n.is_empty()
                || (n.len() <= h.len() && (0..=h.len() - n.len()).any(|i| h[i..i + n.len()].eq_ignore_ascii_case(n)))
        };
        let mut g = Inputs::new(13);
        for _ in 0..cases(50_000) {
            let hay = g.soup(VOCABULARY, 20);
            let needle = g.soup(VOCABULARY, 3).to_ascii_lowercase();
            assert_eq!(contains_ignore_case(&hay, &needle), naive(&hay, &needle), "{hay:?} / {needle:?}");
        }
    }
}
