//! The alerting engine: evaluates rule groups on their intervals, dispatches
//! notifications, persists its state and answers the API.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::Clock;
use crate::config::{Config, ConfigError};
use crate::dispatch::{Dispatcher, Job, Mute, TickInput};
use crate::matcher::Matchers;
use crate::notify::{Attempt, Notifier, RetryPolicy};
use crate::on_ingest::{IngestBatch, IngestObserver};
use crate::rule::{RuleGroup, evaluate, evaluate_with, samples_from_batches};
use crate::state::{Ack, AlertState, Instance, Silence, Transition};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write alerting state {path}: {source}")]
    StateIo { path: PathBuf, source: std::io::Error },
    #[error("no alert with id {0:?}")]
    NoSuchAlert(String),
    #[error("no silence with id {0:?}")]
    NoSuchSilence(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no rules file is configured (start with --rules PATH)")]
    NoRulesPath,
}

impl tocsin_storage::errors::Classify for EngineError {
    fn class(&self) -> tocsin_storage::errors::ErrorClass {
        use tocsin_storage::errors::ErrorClass;
        match self {
            EngineError::NoSuchAlert(_) | EngineError::NoSuchSilence(_) => ErrorClass::NotFound,
            EngineError::BadRequest(_) | EngineError::Config(_) | EngineError::NoRulesPath => ErrorClass::Invalid,
            EngineError::StateIo { .. } => ErrorClass::Internal,
        }
    }
}

/// Runs a rule's SQL.
#[async_trait]
pub trait RuleQuerier: Send + Sync {
    async fn query(&self, sql: &str, database: Option<&str>) -> Result<Vec<RecordBatch>, String>;
}

#[async_trait]
impl RuleQuerier for tocsin_query::QueryEngine {
    async fn query(&self, sql: &str, database: Option<&str>) -> Result<Vec<RecordBatch>, String> {
        self.execute(sql, database).await.map(|r| r.batches).map_err(|e| e.to_string())
    }
}

/// Where transitions and delivery attempts are recorded.
#[async_trait]
pub trait HistorySink: Send + Sync {
    async fn transitions(&self, t: &[Transition]);
    async fn attempts(&self, a: &[Attempt]);
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub rules_path: Option<PathBuf>,
    /// Directory of the persisted state (`state.json`).
    pub state_dir: PathBuf,
    /// Base URL put in payloads (`generatorURL`, `externalURL`).
    pub external_url: String,
    /// How often the engine looks for due groups and notifications.
    pub tick: Duration,
    pub retry: RetryPolicy,
    /// How long resolved alerts are kept (shown, and reported once).
    pub resolved_retention: Duration,
    /// How often rule files are checked for changes (zero: never).
    pub watch_interval: Duration,
    /// How long the ack and silence links of a notification work.
    pub link_ttl: Duration,
}

impl EngineOptions {
    pub fn new(state_dir: PathBuf) -> EngineOptions {
        EngineOptions {
            rules_path: None,
            state_dir,
            external_url: "http://127.0.0.1:4318".into(),
            tick: Duration::from_millis(100),
            retry: RetryPolicy::default(),
            resolved_retention: Duration::from_secs(3600),
            watch_interval: Duration::from_secs(2),
            link_ttl: crate::links::DEFAULT_LINK_TTL,
        }
    }
}

#[derive(Debug, Default)]
pub struct AlertMetrics {
    pub evaluations: AtomicU64,
    pub evaluation_failures: AtomicU64,
    pub evaluation_micros: AtomicU64,
    pub notifications_sent: AtomicU64,
    pub notifications_failed: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub ingest_evaluations: AtomicU64,
    /// Ingest-path batches dropped because the engine's queue was full.
    pub ingest_dropped: Arc<AtomicU64>,
    /// Dispatch rounds completed (grouping, silences, inhibition,
    /// escalation and repeat timers are all decided in a round).
    pub dispatch_rounds: AtomicU64,
    /// Notification jobs created (each then goes to the outbox).
    pub notifications_queued: AtomicU64,
    /// Jobs in the outbox as last saved: created, not yet known delivered
    /// (or finally failed) on disk. Zero means every notification decided
    /// so far is out and a restart would send none again.
    pub outbox_saved: AtomicU64,
    /// State saves (serialize, write, fsync, rename) and their time.
    pub state_saves: AtomicU64,
    pub state_save_micros: AtomicU64,
    /// The last save: its time and size.
    pub state_save_last_micros: AtomicU64,
    pub state_bytes: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleHealth {
    pub group: String,
    pub rule: String,
    pub last_evaluation: Option<i64>,
    pub duration_ms: f64,
    pub error: Option<String>,
}

const STATE_VERSION: u32 = 1;

/// Everything that must survive a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    instances: Vec<Instance>,
    dispatcher: Dispatcher,
    silences: Vec<Silence>,
    /// Notifications decided but not yet delivered (or given up).
    outbox: Vec<Job>,
    next_id: u64,
}

struct Inner {
    config: Arc<Config>,
    /// Per `group/rule`: instances by id.
    rules: BTreeMap<String, BTreeMap<String, Instance>>,
    health: BTreeMap<String, RuleHealth>,
    next_eval: HashMap<String, i64>,
    dispatcher: Dispatcher,
    /// With their matchers compiled once, when created or loaded.
    silences: Vec<(Silence, Matchers)>,
    muted: HashMap<String, Mute>,
    outbox: BTreeMap<String, Job>,
    next_id: u64,
    dirty: bool,
    mtimes: Vec<(PathBuf, Option<SystemTime>)>,
}

pub struct AlertEngine {
    opts: EngineOptions,
    clock: Arc<dyn Clock>,
    querier: Arc<dyn RuleQuerier>,
    history: Arc<dyn HistorySink>,
    notifier: Arc<Notifier>,
    inner: Mutex<Inner>,
    attempts: tokio::sync::Mutex<mpsc::UnboundedReceiver<Attempt>>,
    ingest_index: Arc<parking_lot::RwLock<Arc<crate::on_ingest::Index>>>,
    ingest_tx: mpsc::Sender<IngestBatch>,
    ingest_rx: tokio::sync::Mutex<mpsc::Receiver<IngestBatch>>,
    save_lock: Mutex<()>,
    pub metrics: AlertMetrics,
    /// Makes and checks the ack and silence links of notifications.
    links: crate::links::Links,
    /// When the engine started (Unix milliseconds).
    started_at: i64,
    /// Told of reloads the engine starts itself (a rule file changed), for
    /// the audit log; reloads asked for by callers are theirs to record.
    reload_hook: Mutex<Option<ReloadHook>>,
}

/// What hears of a reload: its cause and the rule count or the error.
pub type ReloadHook = Arc<dyn Fn(&str, Result<usize, String>) + Send + Sync>;

fn rule_key(group: &str, rule: &str) -> String {
    format!("{group}/{rule}")
}

impl AlertEngine {
    /// Loads the rules (a bad file is an error naming it) and the persisted
    /// state (a corrupt state file is moved aside and reported), and queues
    /// the notifications that were not delivered before the stop.
    pub fn start(
        opts: EngineOptions,
        clock: Arc<dyn Clock>,
        querier: Arc<dyn RuleQuerier>,
        history: Arc<dyn HistorySink>,
    ) -> Result<Arc<AlertEngine>, EngineError> {
        let config = match &opts.rules_path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        Self::start_with_config(opts, config, clock, querier, history)
    }

    /// [`AlertEngine::start`] with an already validated configuration.
    pub fn start_with_config(
        opts: EngineOptions,
        config: Config,
        clock: Arc<dyn Clock>,
        querier: Arc<dyn RuleQuerier>,
        history: Arc<dyn HistorySink>,
    ) -> Result<Arc<AlertEngine>, EngineError> {
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|source| EngineError::StateIo { path: opts.state_dir.clone(), source })?;
        let state = load_state(&opts.state_dir)?;
        let links = crate::links::Links::open(&opts.state_dir, &opts.external_url, opts.link_ttl)
            .map_err(|source| EngineError::StateIo { path: opts.state_dir.join("link-key"), source })?;
        let started_at = clock.now_ms();
        let (tx, rx) = mpsc::unbounded_channel();
        let notifier = Notifier::new(config.receivers.clone(), tx, opts.retry.clone(), Arc::clone(&clock));
        let mut rules: BTreeMap<String, BTreeMap<String, Instance>> = BTreeMap::new();
        for i in state.instances {
            rules.entry(rule_key(&i.group, &i.rule)).or_default().insert(i.id.clone(), i);
        }
        let outbox: BTreeMap<String, Job> = state.outbox.into_iter().map(|j| (j.id.clone(), j)).collect();
        let pending: Vec<Job> = outbox.values().cloned().collect();
        let mtimes = mtimes(&config.sources);
        let ingest_index = Arc::new(parking_lot::RwLock::new(Arc::new(crate::on_ingest::index(&config))));
        let (ingest_tx, ingest_rx) = mpsc::channel(crate::on_ingest::QUEUE);
        let engine = Arc::new(AlertEngine {
            ingest_index,
            ingest_tx,
            ingest_rx: tokio::sync::Mutex::new(ingest_rx),
            inner: Mutex::new(Inner {
                config: Arc::new(config),
                rules,
                health: BTreeMap::new(),
                next_eval: HashMap::new(),
                dispatcher: state.dispatcher,
                silences: state
                    .silences
                    .into_iter()
                    .filter_map(|s| match s.compile() {
                        Ok(m) => Some((s, m)),
                        Err(e) => {
                            tracing::error!(id = %s.id, "persisted silence dropped, its matchers do not compile: {e}");
                            None
                        }
                    })
                    .collect(),
                muted: HashMap::new(),
                outbox,
                next_id: state.next_id,
                dirty: false,
                mtimes,
            }),
            opts,
            clock,
            querier,
            history,
            notifier,
            attempts: tokio::sync::Mutex::new(rx),
            save_lock: Mutex::new(()),
            reload_hook: Mutex::new(None),
            metrics: AlertMetrics::default(),
            links,
            started_at,
        });
        engine.metrics.outbox_saved.store(pending.len() as u64, Ordering::Relaxed);
        if !pending.is_empty() {
            tracing::info!(count = pending.len(), "re-sending notifications not delivered before the last stop");
        }
        for job in pending {
            engine.notifier.enqueue(job);
        }
        Ok(engine)
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.lock().config)
    }

    /// Ticks until `stop`; then saves the state.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let attempts = tokio::spawn(Arc::clone(&self).attempt_loop(stop.clone()));
        let ingest = tokio::spawn(Arc::clone(&self).ingest_loop(stop.clone()));
        let mut last_watch = Instant::now();
        loop {
            // Wake for the next due group, or after one tick (notifications,
            // escalation steps), whichever comes first.
            let wait = self.until_next_due().min(self.opts.tick);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if !self.opts.watch_interval.is_zero() && last_watch.elapsed() >= self.opts.watch_interval {
                last_watch = Instant::now();
                self.reload_if_changed();
            }
            self.tick().await;
        }
        let _ = attempts.await;
        let _ = ingest.await;
        if let Err(e) = self.save() {
            tracing::error!("saving alerting state at shutdown failed: {e}");
        }
    }

    fn until_next_due(&self) -> Duration {
        let now = self.clock.now_ms();
        let inner = self.inner.lock();
        let next = inner
            .config
            .groups
            .iter()
            .filter(|g| g.rules.iter().any(|r| r.on_ingest.is_none()))
            .map(|g| inner.next_eval.get(&g.name).copied().unwrap_or(now))
            .min();
        match next {
            Some(t) => Duration::from_millis((t - now).max(1) as u64),
            None => self.opts.tick,
        }
    }

    /// One round: evaluate due groups, dispatch, persist, hand jobs to the
    /// notifier, record history.
    pub async fn tick(&self) {
        let now = self.clock.now_ms();
        let due: Vec<RuleGroup> = {
            let mut inner = self.inner.lock();
            let config = Arc::clone(&inner.config);
            let mut due = Vec::new();
            for g in &config.groups {
                let interval = g.interval.as_millis() as i64;
                match inner.next_eval.get(&g.name).copied() {
                    Some(next) if next > now => {}
                    // On time: keep the cadence (no drift); behind by more
                    // than an interval: start again from now.
                    Some(next) if now - next < interval => {
                        inner.next_eval.insert(g.name.clone(), next + interval);
                        due.push(g.clone());
                    }
                    _ => {
                        inner.next_eval.insert(g.name.clone(), now + interval);
                        due.push(g.clone());
                    }
                }
            }
            due
        };
        let mut transitions = Vec::new();
        for g in &due {
            for rule in g.rules.iter().filter(|r| r.on_ingest.is_none()) {
                // Outside its time intervals a rule is not evaluated, and
                // what it had firing resolves (nobody is paged overnight
                // about the session that ended).
                {
                    let mut inner = self.inner.lock();
                    if !inner.config.rule_active(rule, now) {
                        let note = format!("outside its active time intervals ({})", rule.active_during.join(", "));
                        let instances = inner.rules.entry(rule_key(&g.name, &rule.name)).or_default();
                        transitions.extend(crate::rule::quiet(instances, now, &note));
                        continue;
                    }
                }
                let started = Instant::now();
                let result = self.querier.query(&rule.sql, g.database.as_deref()).await;
                let samples = result.and_then(|b| samples_from_batches(&b));
                let elapsed = started.elapsed();
                self.metrics.evaluations.fetch_add(1, Ordering::Relaxed);
                self.metrics.evaluation_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                let at = self.clock.now_ms();
                let key = rule_key(&g.name, &rule.name);
                let mut inner = self.inner.lock();
                let health = inner.health.entry(key.clone()).or_insert_with(|| RuleHealth {
                    group: g.name.clone(),
                    rule: rule.name.clone(),
                    ..Default::default()
                });
                health.last_evaluation = Some(at);
                health.duration_ms = elapsed.as_secs_f64() * 1000.0;
                match samples {
                    Ok(samples) => {
                        health.error = None;
                        let instances = inner.rules.entry(key).or_default();
                        transitions.extend(evaluate(rule, &g.name, &samples, instances, at));
                    }
                    Err(e) => {
                        // State is kept as it was: a failing query is not a
                        // resolution.
                        self.metrics.evaluation_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(group = %g.name, rule = %rule.name, "rule evaluation failed: {e}");
                        health.error = Some(e);
                    }
                }
            }
        }
        {
            // Posted alerts whose endsAt passed resolve.
            let mut inner = self.inner.lock();
            let posted = format!("{}/", crate::external::GROUP);
            for (_, instances) in inner.rules.iter_mut().filter(|(k, _)| k.starts_with(&posted)) {
                transitions.extend(crate::external::expire(instances, now));
            }
        }
        self.finish_round(transitions).await;
        self.drain_attempts().await;
    }

    /// Alerts posted through Alertmanager's API (`POST /api/v2/alerts`):
    /// checked as a whole (one bad alert refuses the post, naming it), then
    /// routed like the engine's own. The number taken.
    pub async fn post_alerts(&self, alerts: Vec<crate::external::PostableAlert>) -> Result<usize, EngineError> {
        if alerts.len() > crate::external::MAX_POSTED {
            return Err(EngineError::BadRequest(format!(
                "{} alerts in one post; at most {}",
                alerts.len(),
                crate::external::MAX_POSTED
            )));
        }
        let now = self.clock.now_ms();
        let checked = alerts
            .into_iter()
            .enumerate()
            .map(|(i, a)| crate::external::check(i, a, now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EngineError::BadRequest)?;
        let n = checked.len();
        let mut transitions = Vec::new();
        {
            let mut inner = self.inner.lock();
            let posted = format!("{}/", crate::external::GROUP);
            let held: usize = inner.rules.iter().filter(|(k, _)| k.starts_with(&posted)).map(|(_, m)| m.len()).sum();
            let new = checked
                .iter()
                .filter(|c| {
                    let id = crate::matcher::fingerprint(&c.identity);
                    !inner
                        .rules
                        .get(&rule_key(crate::external::GROUP, &c.alertname))
                        .is_some_and(|m| m.contains_key(&id))
                })
                .count();
            if held + new > crate::external::MAX_POSTED_INSTANCES {
                tocsin_storage::refusals::refused("max_posted_alerts");
                return Err(EngineError::BadRequest(format!(
                    "{held} posted alerts are kept already; at most {} (resolved ones are forgotten after an hour)",
                    crate::external::MAX_POSTED_INSTANCES
                )));
            }
            for c in checked {
                let key = rule_key(crate::external::GROUP, &c.alertname);
                let instances = inner.rules.entry(key).or_default();
                transitions.extend(crate::external::apply(c, instances, now));
            }
            inner.dirty = true;
        }
        self.finish_round(transitions).await;
        Ok(n)
    }

    /// The receivers an alert with `labels` is routed to (escalation
    /// chains: every receiver of their steps).
    pub fn receivers_of(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let inner = self.inner.lock();
        let config = &inner.config;
        if config.routes.is_empty() {
            return Vec::new();
        }
        let mut out = std::collections::BTreeSet::new();
        for r in crate::dispatch::route_alert(&config.routes, 0, labels) {
            let route = &config.routes[r];
            match route.escalation.as_ref().and_then(|e| config.escalations.get(e)) {
                Some(e) => out.extend(e.steps.iter().flat_map(|s| s.notify.iter().cloned())),
                None => {
                    out.insert(route.receiver.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Each schedule's shift at `at_ms` and the next one (looking up to 60
    /// days ahead).
    pub fn oncall(&self, at_ms: i64) -> Vec<serde_json::Value> {
        let inner = self.inner.lock();
        let config = &inner.config;
        let mut names: Vec<&String> = config.schedules.keys().collect();
        names.sort();
        let shift = |s: Option<crate::oncall::Shift>| {
            s.map(|s| {
                let person = config.people.get(&s.member);
                serde_json::json!({
                    "member": s.member,
                    "from": crate::dispatch::rfc3339(s.from),
                    "until": crate::dispatch::rfc3339(s.until),
                    "email": person.and_then(|p| p.email.clone()),
                    "mobile": person.and_then(|p| p.mobile.clone()),
                    "userId": person.and_then(|p| p.user_id.clone()),
                })
            })
        };
        names
            .into_iter()
            .map(|n| {
                let (now, next) =
                    config.schedules[n].now_and_next(at_ms, &config.time_intervals, Duration::from_secs(60 * 86_400));
                serde_json::json!({ "schedule": n, "now": shift(now), "next": shift(next) })
            })
            .collect()
    }

    /// The configured receivers' names.
    pub fn receiver_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().config.receivers.keys().cloned().collect();
        v.sort();
        v
    }

    /// After evaluations: dispatch, persist, hand the jobs to the notifier
    /// (only once they are in the persisted outbox), record history.
    async fn finish_round(&self, transitions: Vec<Transition>) {
        let jobs = self.dispatch(!transitions.is_empty());
        if let Err(e) = self.save_if_dirty() {
            tracing::error!("{e}");
        }
        for job in jobs {
            self.notifier.enqueue(job);
        }
        if !transitions.is_empty() {
            self.history.transitions(&transitions).await;
        }
    }

    /// The observer to give storage, so that `on_ingest` rules see writes.
    pub fn ingest_observer(&self) -> Arc<dyn tocsin_storage::WriteObserver> {
        Arc::new(IngestObserver {
            index: Arc::clone(&self.ingest_index),
            tx: self.ingest_tx.clone(),
            dropped: Arc::clone(&self.metrics.ingest_dropped),
        })
    }

    /// Evaluates `on_ingest` rules as writes arrive.
    async fn ingest_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut rx = self.ingest_rx.lock().await;
        loop {
            let first = tokio::select! {
                b = rx.recv() => b,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(first) = first else { return };
            let mut batches = vec![first];
            while let Ok(b) = rx.try_recv() {
                batches.push(b);
            }
            self.evaluate_ingest(batches).await;
        }
    }

    /// Applies ingest-path samples (only the written series change state).
    pub(crate) async fn evaluate_ingest(&self, batches: Vec<IngestBatch>) {
        let now = self.clock.now_ms();
        let mut transitions = Vec::new();
        {
            let mut inner = self.inner.lock();
            for b in &batches {
                if !inner.config.rule_active(&b.rule, now) {
                    continue; // outside its time intervals: samples are not evaluated
                }
                let instances = inner.rules.entry(rule_key(&b.group, &b.rule.name)).or_default();
                transitions.extend(evaluate_with(&b.rule, &b.group, &b.samples, instances, now, false));
            }
        }
        self.metrics.ingest_evaluations.fetch_add(batches.len() as u64, Ordering::Relaxed);
        self.finish_round(transitions).await;
    }

    fn dispatch(&self, changed: bool) -> Vec<Job> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.dirty |= changed;
        let instances: Vec<&Instance> = inner.rules.values().flat_map(|m| m.values()).collect();
        let out = inner.dispatcher.tick(TickInput {
            config: &inner.config,
            instances: &instances,
            silences: &inner.silences,
            now,
            external_url: &self.opts.external_url,
            links: Some(&self.links),
        });
        inner.muted = out.muted;
        let out_changed = out.changed;
        let mut jobs = out.jobs;
        self.metrics.dispatch_rounds.fetch_add(1, Ordering::Relaxed);
        self.metrics.notifications_queued.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for job in &mut jobs {
            inner.next_id += 1;
            job.id = format!("n{:x}-{}", now, inner.next_id);
            inner.outbox.insert(job.id.clone(), job.clone());
        }
        inner.dirty |= out_changed;
        // Forget resolved alerts after the retention, and inactive ones of
        // rules that were removed.
        let keep_from = now - self.opts.resolved_retention.as_millis() as i64;
        let config = Arc::clone(&inner.config);
        let mut removed = false;
        let posted = format!("{}/", crate::external::GROUP);
        inner.rules.retain(|key, instances| {
            let exists = key.starts_with(&posted)
                || config.groups.iter().any(|g| g.rules.iter().any(|r| rule_key(&g.name, &r.name) == *key));
            if !exists {
                removed = true;
                return false;
            }
            let n = instances.len();
            instances.retain(|_, i| {
                let resolved = i.state == AlertState::Resolved;
                let expired = resolved && i.resolved_at.unwrap_or(now) < keep_from;
                // A no-data alert resolved by hand: its series is forgotten.
                let forgotten = resolved && i.no_data && i.hold_until_clear && i.last_seen.is_none();
                !expired && !forgotten
            });
            removed |= instances.len() != n;
            !instances.is_empty()
        });
        inner.dirty |= removed;
        inner.silences.retain(|(s, _)| s.ends_at > keep_from);
        jobs
    }

    /// Records the delivery attempts reported so far (when no
    /// [`AlertEngine::run`] loop is consuming them already).
    async fn drain_attempts(&self) {
        let mut got = Vec::new();
        {
            let Ok(mut rx) = self.attempts.try_lock() else { return };
            while let Ok(a) = rx.try_recv() {
                got.push(a);
            }
        }
        if !got.is_empty() {
            self.record_attempts(got).await;
        }
    }

    /// Records attempts as they arrive, so that a delivered job leaves the
    /// persisted outbox within milliseconds.
    async fn attempt_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut rx = self.attempts.lock().await;
        loop {
            let first = tokio::select! {
                a = rx.recv() => a,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(first) = first else { return };
            let mut got = vec![first];
            while let Ok(a) = rx.try_recv() {
                got.push(a);
            }
            self.record_attempts(got).await;
        }
    }

    async fn record_attempts(&self, got: Vec<Attempt>) {
        let mut delivered = false;
        {
            let mut inner = self.inner.lock();
            for a in &got {
                if a.ok {
                    self.metrics.notifications_sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.metrics.notifications_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(receiver = %a.receiver, integration = a.integration, attempt = a.attempt,
                        "notification failed: {}", a.error.as_deref().unwrap_or(""));
                }
                if a.finished && inner.outbox.remove(&a.job_id).is_some() {
                    inner.dirty = true;
                    delivered = true;
                }
            }
        }
        // Saved at once: the shorter the window between a delivery and its
        // removal from the persisted outbox, the fewer repeats after a crash.
        if delivered && let Err(e) = self.save() {
            tracing::error!("{e}");
        }
        self.history.attempts(&got).await;
    }

    // -- persistence -------------------------------------------------------

    fn state_path(&self) -> PathBuf {
        self.opts.state_dir.join("state.json")
    }

    fn save_if_dirty(&self) -> Result<(), EngineError> {
        if !self.inner.lock().dirty {
            return Ok(());
        }
        self.save()
    }

    /// Writes the state atomically (temporary file, fsync, rename, fsync of
    /// the directory).
    pub fn save(&self) -> Result<(), EngineError> {
        let _one_writer = self.save_lock.lock();
        let started = Instant::now();
        let bytes = {
            let mut inner = self.inner.lock();
            inner.dirty = false;
            let state = PersistedState {
                version: STATE_VERSION,
                instances: inner.rules.values().flat_map(|m| m.values().cloned()).collect(),
                dispatcher: inner.dispatcher.clone(),
                silences: inner.silences.iter().map(|(s, _)| s.clone()).collect(),
                outbox: inner.outbox.values().cloned().collect(),
                next_id: inner.next_id,
            };
            (serde_json::to_vec(&state).map_err(|e| EngineError::BadRequest(e.to_string()))?, state.outbox.len())
        };
        let (bytes, outbox) = bytes;
        let path = self.state_path();
        // The fsyncs block: on a multi-threaded runtime, tell it so that the
        // worker's other tasks move elsewhere meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let written = if multi_thread {
            tokio::task::block_in_place(|| write_atomic(&path, &bytes))
        } else {
            write_atomic(&path, &bytes)
        };
        if written.is_ok() {
            self.metrics.outbox_saved.store(outbox as u64, Ordering::Relaxed);
            let micros = started.elapsed().as_micros() as u64;
            self.metrics.state_saves.fetch_add(1, Ordering::Relaxed);
            self.metrics.state_save_micros.fetch_add(micros, Ordering::Relaxed);
            self.metrics.state_save_last_micros.store(micros, Ordering::Relaxed);
            self.metrics.state_bytes.store(bytes.len() as u64, Ordering::Relaxed);
        } else {
            // Not saved: the next round must try again (clearing the flag
            // before writing and not setting it back lost a failed save's
            // changes until something else changed).
            self.inner.lock().dirty = true;
        }
        written.map_err(|source| EngineError::StateIo { path, source })
    }

    // -- API ---------------------------------------------------------------

    fn with_instance<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Instance, i64) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let inst = inner
            .rules
            .values_mut()
            .find_map(|m| m.get_mut(id))
            .ok_or_else(|| EngineError::NoSuchAlert(id.to_string()))?;
        let out = f(inst, now)?;
        inner.dirty = true;
        Ok(out)
    }

    async fn record_manual(&self, t: Transition) -> Result<serde_json::Value, EngineError> {
        self.save()?;
        self.history.transitions(std::slice::from_ref(&t)).await;
        self.alert(&t.id).ok_or_else(|| EngineError::NoSuchAlert(t.id.clone()))
    }

    /// Acknowledges a pending or firing alert: its escalation stops.
    pub async fn ack(&self, id: &str, by: &str, comment: &str) -> Result<serde_json::Value, EngineError> {
        let t = self.with_instance(id, |inst, now| {
            if !inst.state.is_active() {
                return Err(EngineError::BadRequest(format!(
                    "alert {id} is {}; only pending or firing alerts can be acknowledged",
                    inst.state.as_str()
                )));
            }
            inst.ack = Some(Ack {
                by: by.to_string(),
                comment: comment.to_string(),
                at: now,
                severity: inst.severity.clone(),
            });
            inst.ack_lifted = None;
            let mut t = Transition::new(inst, inst.state, inst.severity.clone(), now);
            t.note = format!("acknowledged by {by}: {comment}");
            Ok(t)
        })?;
        self.record_manual(t).await
    }

    /// The link `sig` made for `alert`, `action` and `receiver`, if it is
    /// this server's and has not expired (see [`crate::links`]).
    pub fn check_link(
        &self,
        alert: &str,
        action: &str,
        receiver: &str,
        expires: i64,
        sig: &str,
    ) -> Result<crate::links::Link, crate::links::LinkError> {
        self.links.check(alert, action, receiver, expires, sig, self.clock.now_ms())
    }

    /// Silences alert `id` (its identity: rule and labels, any severity) for
    /// `duration`.
    pub fn silence_alert(&self, id: &str, by: &str, comment: &str, duration: Duration) -> Result<Silence, EngineError> {
        let identity = {
            let inner = self.inner.lock();
            let inst =
                inner.rules.values().find_map(|m| m.get(id)).ok_or_else(|| EngineError::NoSuchAlert(id.into()))?;
            inst.identity.clone()
        };
        let now = self.clock.now_ms();
        let matchers = identity
            .into_iter()
            .map(|(name, value)| crate::state::MatcherSpec { name, value, is_regex: false, is_equal: true })
            .collect();
        self.add_silence(Silence {
            id: String::new(),
            matchers,
            starts_at: now,
            ends_at: now + duration.as_millis() as i64,
            created_by: by.to_string(),
            comment: comment.to_string(),
            created_at: now,
            scope: None,
        })
    }

    pub async fn unack(&self, id: &str, by: &str) -> Result<serde_json::Value, EngineError> {
        let t = self.with_instance(id, |inst, now| {
            if inst.ack.take().is_none() {
                return Err(EngineError::BadRequest(format!("alert {id} is not acknowledged")));
            }
            let mut t = Transition::new(inst, inst.state, inst.severity.clone(), now);
            t.note = format!("acknowledgement withdrawn by {by}");
            Ok(t)
        })?;
        self.record_manual(t).await
    }

    /// Resolves an alert by hand; it fires again only after its condition
    /// has cleared once. A no-data alert's series is forgotten.
    pub async fn resolve(&self, id: &str, by: &str, comment: &str) -> Result<serde_json::Value, EngineError> {
        let t = self.with_instance(id, |inst, now| {
            if !inst.state.is_active() {
                return Err(EngineError::BadRequest(format!(
                    "alert {id} is {}, not pending or firing",
                    inst.state.as_str()
                )));
            }
            let from = inst.state;
            inst.state = AlertState::Resolved;
            inst.resolved_at = Some(now);
            inst.resolved_by = Some(Ack { by: by.to_string(), comment: comment.to_string(), at: now, severity: None });
            inst.hold_until_clear = true;
            if inst.no_data {
                inst.last_seen = None;
            }
            let mut t = Transition::new(inst, from, inst.severity.clone(), now);
            t.note = format!("resolved by hand by {by}: {comment}");
            Ok(t)
        })?;
        self.record_manual(t).await
    }

    /// One alert as the API shows it.
    pub fn alert(&self, id: &str) -> Option<serde_json::Value> {
        let inner = self.inner.lock();
        inner.rules.values().find_map(|m| m.get(id)).map(|i| alert_json(i, inner.muted.get(id)))
    }

    /// Alerts (not inactive ones), filtered by state and by exact labels.
    pub fn alerts(&self, state: Option<&str>, labels: &BTreeMap<String, String>) -> Vec<serde_json::Value> {
        let inner = self.inner.lock();
        inner
            .rules
            .values()
            .flat_map(|m| m.values())
            .filter(|i| i.state != AlertState::Inactive)
            .filter(|i| state.is_none_or(|s| s == i.state.as_str() || (s == "active" && i.state.is_active())))
            .filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            .map(|i| alert_json(i, inner.muted.get(&i.id)))
            .collect()
    }

    /// For the `system.alerts` table.
    pub(crate) fn snapshot(&self) -> (Vec<Instance>, HashMap<String, Mute>) {
        let inner = self.inner.lock();
        let v = inner
            .rules
            .values()
            .flat_map(|m| m.values())
            .filter(|i| i.state != AlertState::Inactive)
            .cloned()
            .collect();
        (v, inner.muted.clone())
    }

    pub fn rules_health(&self) -> Vec<RuleHealth> {
        let inner = self.inner.lock();
        let mut out = Vec::new();
        for g in &inner.config.groups {
            for r in &g.rules {
                let key = rule_key(&g.name, &r.name);
                out.push(inner.health.get(&key).cloned().unwrap_or(RuleHealth {
                    group: g.name.clone(),
                    rule: r.name.clone(),
                    ..Default::default()
                }));
            }
        }
        out
    }

    pub fn add_silence(&self, mut s: Silence) -> Result<Silence, EngineError> {
        // Every silence is kept in state.json (rewritten on each change) and
        // listed whole: a client must not grow them without bound.
        const MAX_TEXT: usize = 4096;
        const MAX_MATCHERS: usize = 64;
        const MAX_SILENCES: usize = 10_000;
        if s.comment.len() > MAX_TEXT || s.created_by.len() > MAX_TEXT {
            return Err(EngineError::BadRequest(format!("comment and createdBy may be at most {MAX_TEXT} bytes")));
        }
        let text: usize = s.matchers.iter().map(|m| m.name.len() + m.value.len()).sum();
        if s.matchers.len() > MAX_MATCHERS || text > MAX_TEXT {
            tocsin_storage::refusals::refused("max_silence_matchers");
            return Err(EngineError::BadRequest(format!(
                "a silence may have at most {MAX_MATCHERS} matchers of {MAX_TEXT} bytes in all"
            )));
        }
        if self.inner.lock().silences.len() >= MAX_SILENCES {
            tocsin_storage::refusals::refused("max_silences");
            return Err(EngineError::BadRequest(format!("{MAX_SILENCES} silences exist already; expire some first")));
        }
        let matchers = s.compile().map_err(EngineError::BadRequest)?;
        let now = self.clock.now_ms();
        if s.starts_at == 0 {
            s.starts_at = now;
        }
        if s.ends_at <= s.starts_at {
            return Err(EngineError::BadRequest("endsAt must be after startsAt".into()));
        }
        if s.ends_at <= now {
            return Err(EngineError::BadRequest("endsAt is in the past".into()));
        }
        if s.created_by.trim().is_empty() {
            return Err(EngineError::BadRequest("createdBy is required".into()));
        }
        s.created_at = now;
        {
            let mut inner = self.inner.lock();
            inner.next_id += 1;
            s.id = format!("s{:x}-{}", now, inner.next_id);
            inner.silences.push((s.clone(), matchers));
            inner.dirty = true;
        }
        self.save()?;
        Ok(s)
    }

    pub fn silences(&self) -> Vec<serde_json::Value> {
        let now = self.clock.now_ms();
        self.inner.lock().silences.iter().map(|(s, _)| silence_json(s, now)).collect()
    }

    pub fn silence(&self, id: &str) -> Option<serde_json::Value> {
        let now = self.clock.now_ms();
        self.inner.lock().silences.iter().find(|(s, _)| s.id == id).map(|(s, _)| silence_json(s, now))
    }

    /// Expires a silence now (it stays listed as expired).
    pub fn expire_silence(&self, id: &str) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        {
            let mut inner = self.inner.lock();
            let (s, _) = inner
                .silences
                .iter_mut()
                .find(|(s, _)| s.id == id)
                .ok_or_else(|| EngineError::NoSuchSilence(id.to_string()))?;
            s.ends_at = s.ends_at.min(now);
            s.starts_at = s.starts_at.min(now);
            inner.dirty = true;
        }
        self.save()
    }

    /// Reloads the rule files. A bad configuration is rejected as a whole
    /// and the running one stays.
    pub fn reload(&self) -> Result<usize, EngineError> {
        let path = self.opts.rules_path.as_ref().ok_or(EngineError::NoRulesPath)?;
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("rules reload rejected, previous rules keep running: {e}");
                // Remember what was seen, so the watcher does not retry the
                // same bad file every few seconds.
                if let Some(p) = &self.opts.rules_path {
                    self.inner.lock().mtimes = mtimes(&files_of(p));
                }
                return Err(e.into());
            }
        };
        let count = config.rule_count();
        self.notifier.set_receivers(config.receivers.clone());
        *self.ingest_index.write() = Arc::new(crate::on_ingest::index(&config));
        let mut inner = self.inner.lock();
        inner.dispatcher.retain_routes(config.routes.len());
        inner.mtimes = mtimes(&config.sources);
        let names: Vec<String> = config.groups.iter().map(|g| g.name.clone()).collect();
        inner.next_eval.retain(|g, _| names.contains(g));
        inner.config = Arc::new(config);
        inner.dirty = true;
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(rules = count, "rules reloaded");
        Ok(count)
    }

    fn reload_if_changed(&self) {
        let Some(path) = &self.opts.rules_path else { return };
        let now = mtimes(&files_of(path));
        if now != self.inner.lock().mtimes {
            let result = self.reload().map_err(|e| e.to_string());
            let hook = self.reload_hook.lock().clone();
            if let Some(hook) = hook {
                hook("rule files changed", result);
            }
        }
    }

    /// Sets what hears of the reloads the engine starts itself.
    pub fn on_reload(&self, hook: ReloadHook) {
        *self.reload_hook.lock() = Some(hook);
    }

    /// The engine's own metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let m = &self.metrics;
        let (firing, pending, rules) = {
            let inner = self.inner.lock();
            let all = || inner.rules.values().flat_map(|m| m.values());
            (
                all().filter(|i| i.state == AlertState::Firing).count(),
                all().filter(|i| i.state == AlertState::Pending).count(),
                inner.config.rule_count(),
            )
        };
        let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        metric("tocsin_alert_rules", "gauge", "Loaded alert rules.", rules as f64);
        metric("tocsin_alerts_firing", "gauge", "Alert instances firing.", firing as f64);
        metric("tocsin_alerts_pending", "gauge", "Alert instances pending.", pending as f64);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        metric("tocsin_rule_evaluations_total", "counter", "Rule evaluations.", c(&m.evaluations));
        metric(
            "tocsin_rule_evaluation_failures_total",
            "counter",
            "Rule evaluations that failed.",
            c(&m.evaluation_failures),
        );
        metric(
            "tocsin_rule_evaluation_seconds_total",
            "counter",
            "Time spent evaluating rules.",
            c(&m.evaluation_micros) / 1e6,
        );
        metric(
            "tocsin_notifications_sent_total",
            "counter",
            "Notification attempts that succeeded.",
            c(&m.notifications_sent),
        );
        metric(
            "tocsin_notifications_failed_total",
            "counter",
            "Notification attempts that failed.",
            c(&m.notifications_failed),
        );
        metric("tocsin_alert_dispatch_rounds_total", "counter", "Dispatch rounds completed.", c(&m.dispatch_rounds));
        metric(
            "tocsin_notifications_queued_total",
            "counter",
            "Notification jobs created (each escalation step, repeat and resolve is one).",
            c(&m.notifications_queued),
        );
        metric(
            "tocsin_notification_outbox",
            "gauge",
            "Notification jobs in the outbox as last saved: not yet known delivered.",
            c(&m.outbox_saved),
        );
        let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let limits = self.notifier.rate_limits();
        if !limits.is_empty() {
            let _ = writeln!(
                out,
                "# HELP tocsin_receiver_rate_limit Notifications a receiver takes per `per` seconds; more are folded into digests.\n# TYPE tocsin_receiver_rate_limit gauge"
            );
            for (r, l) in &limits {
                let _ = writeln!(
                    out,
                    "tocsin_receiver_rate_limit{{receiver=\"{}\",per=\"{}\"}} {}",
                    label(r),
                    l.per.as_secs(),
                    l.messages
                );
            }
        }
        let folded = self.notifier.folded();
        let _ = writeln!(
            out,
            "# HELP tocsin_notifications_folded_total Notifications folded into digests by a receiver's rate limit.\n# TYPE tocsin_notifications_folded_total counter"
        );
        for (r, n, _) in &folded {
            let _ = writeln!(out, "tocsin_notifications_folded_total{{receiver=\"{}\"}} {n}", label(r));
        }
        let _ = writeln!(
            out,
            "# HELP tocsin_notification_digests_total Digests sent in place of notifications held back by a rate limit.\n# TYPE tocsin_notification_digests_total counter"
        );
        for (r, _, d) in &folded {
            let _ = writeln!(out, "tocsin_notification_digests_total{{receiver=\"{}\"}} {d}", label(r));
        }
        let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        metric("tocsin_rule_reloads_total", "counter", "Successful rule reloads.", c(&m.reloads));
        metric("tocsin_alert_state_saves_total", "counter", "Alerting state saves.", c(&m.state_saves));
        metric(
            "tocsin_alert_state_save_seconds_total",
            "counter",
            "Time spent saving the alerting state (serialize, write, fsync, rename).",
            c(&m.state_save_micros) / 1e6,
        );
        metric(
            "tocsin_alert_state_save_last_seconds",
            "gauge",
            "How long the last alerting state save took.",
            c(&m.state_save_last_micros) / 1e6,
        );
        metric("tocsin_alert_state_bytes", "gauge", "Size of the alerting state as last saved.", c(&m.state_bytes));
        metric("tocsin_rule_reload_failures_total", "counter", "Rejected rule reloads.", c(&m.reload_failures));
        metric(
            "tocsin_ingest_rule_batches_total",
            "counter",
            "Write batches evaluated by on_ingest rules.",
            c(&m.ingest_evaluations),
        );
        metric(
            "tocsin_ingest_rule_batches_dropped_total",
            "counter",
            "Write batches on_ingest rules missed because the engine's queue was full.",
            c(&m.ingest_dropped),
        );
    }

    /// When the engine started (Unix milliseconds).
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

fn alert_json(i: &Instance, muted: Option<&Mute>) -> serde_json::Value {
    let ts = |t: Option<i64>| t.map(crate::dispatch::rfc3339);
    serde_json::json!({
        "id": i.id,
        "alertname": i.rule,
        "group": i.group,
        "state": i.state.as_str(),
        "severity": i.severity,
        "value": i.value.is_finite().then_some(i.value),
        "labels": i.labels,
        "annotations": i.annotations,
        "activeSince": ts(i.active_since),
        "pendingSince": ts(i.pending_since),
        "resolvedAt": ts(i.resolved_at),
        "updatedAt": crate::dispatch::rfc3339(i.updated_at),
        "endsAt": ts(i.ends_at),
        "noData": i.no_data,
        "flapping": i.flapping,
        "ack": i.ack.as_ref().map(|a| serde_json::json!({"by": a.by, "comment": a.comment, "at": crate::dispatch::rfc3339(a.at), "severity": a.severity})),
        "ackLifted": i.ack_lifted.as_ref().map(|a| serde_json::json!({"by": a.by, "comment": a.comment, "at": crate::dispatch::rfc3339(a.at), "severity": a.severity})),
        "resolvedBy": i.resolved_by.as_ref().map(|a| serde_json::json!({"by": a.by, "comment": a.comment, "at": crate::dispatch::rfc3339(a.at)})),
        "muted": muted,
    })
}

fn silence_json(s: &Silence, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "matchers": s.matchers,
        "startsAt": crate::dispatch::rfc3339(s.starts_at),
        "endsAt": crate::dispatch::rfc3339(s.ends_at),
        "createdBy": s.created_by,
        "comment": s.comment,
        "scope": s.scope.as_ref().map(|sc| &sc.role),
        "status": { "state": s.status(now) },
    })
}

fn files_of(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    }
}

fn mtimes(files: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    files.iter().map(|f| (f.clone(), std::fs::metadata(f).and_then(|m| m.modified()).ok())).collect()
}

fn load_state(dir: &Path) -> Result<PersistedState, EngineError> {
    let path = dir.join("state.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PersistedState::default()),
        Err(source) => return Err(EngineError::StateIo { path, source }),
    };
    match serde_json::from_slice::<PersistedState>(&bytes) {
        Ok(s) if s.version == STATE_VERSION => Ok(s),
        Ok(s) => Err(EngineError::BadRequest(format!(
            "{} has version {}, this build reads version {STATE_VERSION}",
            path.display(),
            s.version
        ))),
        Err(e) => {
            let aside = dir.join(format!("state.json.corrupt-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
            tracing::error!(
                "alerting state {} is corrupt ({e}); moved to {} and starting with no alert state",
                path.display(),
                aside.display()
            );
            std::fs::rename(&path, &aside).map_err(|source| EngineError::StateIo { path, source })?;
            Ok(PersistedState::default())
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tocsin_storage::durable::write_atomic(path, |e| e, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests;
