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
use crate::rule::{RuleGroup, Sample, evaluate, evaluate_with, samples_from_batches};
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
    #[error("no on-call override with id {0:?}")]
    NoSuchOverride(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no rules file is configured (start with --rules PATH)")]
    NoRulesPath,
}

impl tocsin_storage::errors::Classify for EngineError {
    fn class(&self) -> tocsin_storage::errors::ErrorClass {
        use tocsin_storage::errors::ErrorClass;
        match self {
            EngineError::NoSuchAlert(_) | EngineError::NoSuchSilence(_) | EngineError::NoSuchOverride(_) => {
                ErrorClass::NotFound
            }
            EngineError::BadRequest(_) | EngineError::Config(_) | EngineError::NoRulesPath => ErrorClass::Invalid,
            EngineError::StateIo { .. } => ErrorClass::Internal,
        }
    }
}

/// Runs a rule's SQL: the server's query engine (its implementation is in
/// the server), or a fake in tests.
#[async_trait]
pub trait RuleQuerier: Send + Sync {
    async fn query(&self, sql: &str, database: Option<&str>) -> Result<Vec<RecordBatch>, String>;
    /// Evaluates a rule's PromQL expression (`expr:`) at `at_ms`: one
    /// sample per element of the result.
    async fn promql(&self, expr: &str, database: Option<&str>, at_ms: i64) -> Result<Vec<Sample>, String>;
    /// Writes a recording rule's result: one sample per series of the
    /// metric `metric`, at `at_ms`.
    async fn record(&self, database: Option<&str>, metric: &str, samples: &[Sample], at_ms: i64) -> Result<(), String>;
}

/// [`RuleQuerier::record`] into a storage: each sample a row of table
/// `metric` (its labels the tags, its value the field `value`).
pub async fn record_samples(
    storage: &tocsin_storage::Storage,
    database: Option<&str>,
    metric: &str,
    samples: &[Sample],
    at_ms: i64,
) -> Result<(), String> {
    use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, TableWrite};
    if samples.is_empty() {
        return Ok(());
    }
    let blocks = samples
        .iter()
        .enumerate()
        .map(|(i, s)| SeriesBlock {
            item: i as u32,
            tags: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            timestamps: vec![at_ms.saturating_mul(1_000_000)],
            fields: vec![FieldColumn { name: "value".into(), values: FieldValues::F64(vec![s.value]), validity: None }],
        })
        .collect();
    let db = database.unwrap_or(tocsin_query::names::DEFAULT_DATABASE);
    if let Some(schema) = storage.table_schema(db, metric) {
        let metric_table = schema.field_with_name("value").is_ok_and(|f| f.data_type().is_numeric());
        if !metric_table {
            return Err(format!(
                "table {metric} of database {db} exists and holds no metric (no numeric `value` field); a recording \
                 rule writes metrics: give it another name"
            ));
        }
    }
    let out = storage
        .write(db, vec![TableWrite { table: metric.to_string(), blocks }])
        .await
        .map_err(|e| format!("writing {metric}: {e}"))?;
    match out.rejected.first() {
        Some(r) => {
            Err(format!("writing {metric}: {} of {} series refused: {}", out.rejected.len(), samples.len(), r.error))
        }
        None => Ok(()),
    }
}

/// Rules over a query engine (the server's, or a rule test's own).
#[async_trait]
impl RuleQuerier for tocsin_query::QueryEngine {
    async fn query(&self, sql: &str, database: Option<&str>) -> Result<Vec<RecordBatch>, String> {
        self.execute(sql, database).await.map(|r| r.batches).map_err(|e| e.to_string())
    }
    async fn promql(&self, expr: &str, database: Option<&str>, at_ms: i64) -> Result<Vec<Sample>, String> {
        promql_samples(self, expr, database, at_ms).await
    }
    async fn record(&self, database: Option<&str>, metric: &str, samples: &[Sample], at_ms: i64) -> Result<(), String> {
        record_samples(self.storage(), database, metric, samples, at_ms).await
    }
}

/// Shortest time a rule's query may take before it is stopped (a group's
/// interval when that is longer).
const MIN_RULE_TIMEOUT: Duration = Duration::from_secs(5);

/// A rule's query, stopped once it takes longer than its group's interval
/// (at least [`MIN_RULE_TIMEOUT`]): groups are evaluated one after the
/// other, and one slow rule must not hold back every other group for long.
async fn bounded<T>(g: &RuleGroup, query: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    let after = g.interval.max(MIN_RULE_TIMEOUT);
    tokio::time::timeout(after, query).await.unwrap_or_else(|_| {
        Err(format!(
            "the query took longer than {} and was stopped (a rule's query may take its group's interval, at least {})",
            crate::duration::Dur(after),
            crate::duration::Dur(MIN_RULE_TIMEOUT)
        ))
    })
}

/// Refuses a result larger than the group's `limit` (as Prometheus: the
/// rule fails, what it had stays as it was).
fn within_limit(g: &RuleGroup, samples: Vec<Sample>, what: &str) -> Result<Vec<Sample>, String> {
    if g.limit > 0 && samples.len() > g.limit {
        return Err(format!("{} {what}, more than the group's limit of {}", samples.len(), g.limit));
    }
    Ok(samples)
}

/// [`RuleQuerier::promql`] over a query engine: an instant query at
/// `at_ms`, each element's labels without `__name__` (as Prometheus gives
/// its alerts), a scalar result as one sample without labels.
pub async fn promql_samples(
    engine: &tocsin_query::QueryEngine,
    expr: &str,
    database: Option<&str>,
    at_ms: i64,
) -> Result<Vec<Sample>, String> {
    use tocsin_query::promql::{self, Answer, Reader};
    let reader = Reader { engine, who: None, database: database.unwrap_or(tocsin_query::names::DEFAULT_DATABASE) };
    let sample = |labels: &[(String, String)], value: f64| Sample {
        labels: labels.iter().filter(|(k, _)| k != "__name__").cloned().collect(),
        value,
        thresholds: Vec::new(),
    };
    match promql::instant(&reader, expr, at_ms).await.map_err(|e| e.to_string())? {
        Answer::Vector(_, v) => Ok(v.iter().map(|(labels, value)| sample(labels, *value)).collect()),
        Answer::Scalar(_, value) => Ok(vec![sample(&[], value)]),
        Answer::String(..) | Answer::Matrix(_) => Err("the expression must give an instant vector or a scalar".into()),
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
    /// Most silences active or pending at once.
    pub max_silences: usize,
    /// The database of groups that name none (`[alerting] database`;
    /// unset: `public`).
    pub default_database: Option<String>,
}

/// Default [`EngineOptions::max_silences`].
pub const DEFAULT_MAX_SILENCES: usize = 10_000;

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
            max_silences: DEFAULT_MAX_SILENCES,
            default_database: None,
        }
    }

    /// `config` with [`Self::default_database`] given to the groups that
    /// name no database.
    fn defaults(&self, mut config: Config) -> Config {
        if let Some(db) = &self.default_database {
            for g in config.groups.iter_mut().filter(|g| g.database.is_none()) {
                g.database = Some(db.clone());
            }
        }
        config
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
    /// Time spent in dispatch rounds.
    pub dispatch_micros: AtomicU64,
    /// Notification jobs created (each then goes to the outbox).
    pub notifications_queued: AtomicU64,
    /// Jobs in the outbox as last saved: created, not yet known delivered
    /// (or finally failed) on disk. Zero means every notification decided
    /// so far is out and a restart would send none again.
    pub outbox_saved: AtomicU64,
    /// Journal queues dropped for outgrowing their limit (`ship.rs`).
    pub journal_ship_dropped: AtomicU64,
    /// Rounds and acknowledgements that went on before their journal
    /// record was in the bucket (`ship.rs`).
    pub unshipped_waits: AtomicU64,
    /// Journal records written (one per round that changed something),
    /// the changes in them, their time (diff, write, fsync) and the
    /// journal's size since the last snapshot.
    pub journal_records: AtomicU64,
    pub journal_changes: AtomicU64,
    pub journal_micros: AtomicU64,
    pub journal_bytes: AtomicU64,
    /// Snapshots of the whole state (serialize, write, fsync, rename) and
    /// their time.
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
    /// `alert` or `record` (filled in from the rule files when listed).
    pub kind: String,
    /// `sql`, `promql` or `on_ingest`.
    pub language: String,
    /// The rule's statement, PromQL expression, or `table.field` it
    /// watches on ingest.
    pub query: String,
    /// The group's evaluation interval.
    pub interval_ms: u64,
    /// The group's database (`None`: `public`).
    pub database: Option<String>,
}

const STATE_VERSION: u32 = 1;

/// How long delivery reports are gathered before they are recorded.
const ATTEMPT_GATHER: Duration = Duration::from_millis(10);

/// Everything that must survive a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    /// The last journal record this snapshot covers.
    #[serde(default)]
    seq: u64,
    instances: Vec<Instance>,
    dispatcher: Dispatcher,
    silences: Vec<Silence>,
    /// Notifications decided but not yet delivered (or given up).
    outbox: Vec<Job>,
    next_id: u64,
    /// On-call overrides made through the API.
    #[serde(default)]
    overrides: Vec<crate::oncall::OverrideEntry>,
}

struct Inner {
    /// The configuration as loaded from the rules files.
    base_config: Arc<Config>,
    /// `base_config` with the API's on-call overrides: what runs.
    config: Arc<Config>,
    overrides: Vec<crate::oncall::OverrideEntry>,
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
    /// Serialises saves: one journal writer.
    journal: Mutex<persist::Journal>,
    /// Journal records shipped to a bucket, for waiters (`ship.rs`).
    ship_tx: watch::Sender<ship::ShipState>,
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
        mut opts: EngineOptions,
        config: Config,
        clock: Arc<dyn Clock>,
        querier: Arc<dyn RuleQuerier>,
        history: Arc<dyn HistorySink>,
    ) -> Result<Arc<AlertEngine>, EngineError> {
        let config = opts.defaults(config);
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|source| EngineError::StateIo { path: opts.state_dir.clone(), source })?;
        // Paths are appended to it: `https://host/` made `//api/...`.
        opts.external_url = opts.external_url.trim_end_matches('/').to_string();
        let mut loaded = load_state(&opts.state_dir)?;
        let state = std::mem::take(&mut loaded.state);
        let seq = state.seq;
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
        let base_config = Arc::new(config);
        let inner = Inner {
            config: effective(&base_config, &state.overrides),
            base_config,
            overrides: state.overrides,
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
        };
        let journal = loaded.journal(&opts.state_dir, seq, &inner);
        let engine = Arc::new(AlertEngine {
            ingest_index,
            ingest_tx,
            ingest_rx: tokio::sync::Mutex::new(ingest_rx),
            inner: Mutex::new(inner),
            opts,
            clock,
            querier,
            history,
            notifier,
            attempts: tokio::sync::Mutex::new(rx),
            journal: Mutex::new(journal),
            ship_tx: watch::Sender::new(Default::default()),
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
        if loaded.replayed {
            // The journal was replayed: fold it into a new snapshot.
            engine.write_snapshot()?;
        }
        Ok(engine)
    }

    /// Sends notifications only while `gate` says so (a primary's lease
    /// in etcd): see [`Notifier::hold_by`].
    pub fn hold_by(&self, gate: crate::notify::SendGate) {
        self.notifier.hold_by(gate);
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
            // A panic in one round (a bug) is reported, and the next round
            // runs: alerting must not stop for good while the server stays
            // up and says it is healthy.
            let round = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(self.tick())).await;
            if let Err(panic) = round {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.metrics.evaluation_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("an evaluation round panicked and was abandoned: {what}");
            }
            // What changes without a transition (values, last seen) is in
            // the snapshot, written this often.
            if self.journal.lock().last_snapshot.elapsed() >= persist::SNAPSHOT_EVERY
                && let Err(e) = self.write_snapshot()
            {
                tracing::error!("{e}");
            }
        }
        let _ = attempts.await;
        let _ = ingest.await;
        if let Err(e) = self.write_snapshot() {
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
        if !due.is_empty() {
            // An evaluation may change what is persisted without a
            // transition (a pending alert's severity, a hold ending): the
            // save compares.
            self.inner.lock().dirty = true;
        }
        let mut transitions = Vec::new();
        for g in &due {
            for rec in &g.records {
                self.evaluate_recording(g, rec).await;
            }
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
                let query = async {
                    match &rule.expr {
                        Some(expr) => self.querier.promql(expr, g.database.as_deref(), self.clock.now_ms()).await,
                        None => {
                            let result = self.querier.query(&rule.sql, g.database.as_deref()).await;
                            result.and_then(|b| samples_from_batches(&b))
                        }
                    }
                };
                let samples = bounded(g, query).await.and_then(|s| within_limit(g, s, "alerts"));
                let elapsed = started.elapsed();
                let at = self.clock.now_ms();
                let mut inner = self.inner.lock();
                self.note_evaluation(&mut inner, g, &rule.name, at, elapsed, samples.as_ref().err());
                // A failing query keeps the state as it was: it is not a
                // resolution.
                if let Ok(samples) = samples {
                    let instances = inner.rules.entry(rule_key(&g.name, &rule.name)).or_default();
                    transitions.extend(evaluate(rule, &g.name, &samples, instances, at));
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

    /// Evaluates a recording rule and writes its result; a failure is the
    /// rule's health, as for alerting rules.
    async fn evaluate_recording(&self, g: &RuleGroup, rec: &crate::rule::Recording) {
        let started = Instant::now();
        let at = self.clock.now_ms();
        let db = g.database.as_deref();
        let result = match bounded(g, self.querier.promql(&rec.expr, db, at)).await {
            Ok(samples) if g.limit > 0 && samples.len() > g.limit => within_limit(g, samples, "series").map(|_| ()),
            Ok(mut samples) => {
                let mut seen = std::collections::HashSet::new();
                let mut duplicate = false;
                for s in &mut samples {
                    s.labels.extend(rec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                    duplicate |= !seen.insert(s.labels.clone());
                }
                if duplicate {
                    Err("the result holds the same label set twice once the rule's labels are added".to_string())
                } else {
                    self.querier.record(db, &rec.name, &samples, at).await
                }
            }
            Err(e) => Err(e),
        };
        let mut inner = self.inner.lock();
        self.note_evaluation(&mut inner, g, &rec.name, at, started.elapsed(), result.as_ref().err());
    }

    /// Counts one evaluation of rule `name` and records it in its health:
    /// when, how long, and its error (none when it succeeded).
    fn note_evaluation(
        &self,
        inner: &mut Inner,
        g: &RuleGroup,
        name: &str,
        at: i64,
        elapsed: Duration,
        error: Option<&String>,
    ) {
        self.metrics.evaluations.fetch_add(1, Ordering::Relaxed);
        self.metrics.evaluation_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let health = inner.health.entry(rule_key(&g.name, name)).or_insert_with(|| RuleHealth {
            group: g.name.clone(),
            rule: name.to_string(),
            ..Default::default()
        });
        health.last_evaluation = Some(at);
        health.duration_ms = elapsed.as_secs_f64() * 1000.0;
        if let Some(e) = error {
            self.metrics.evaluation_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(group = %g.name, rule = %name, "rule evaluation failed: {e}");
        }
        health.error = error.cloned();
    }

    /// After evaluations: dispatch, persist, hand the jobs to the notifier
    /// (only once they are in the persisted outbox), record history.
    async fn finish_round(&self, transitions: Vec<Transition>) {
        let jobs = self.dispatch(!transitions.is_empty());
        if let Err(e) = self.save_if_dirty() {
            tracing::error!("{e}");
        }
        // Under `object-store-sync`, the outbox is in the bucket before
        // the notifications leave.
        if !jobs.is_empty() {
            self.journal_synced().await;
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
            inner.dirty = true;
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
        let started = Instant::now();
        let jobs = self.dispatch_round(changed);
        self.metrics.dispatch_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        jobs
    }

    fn dispatch_round(&self, changed: bool) -> Vec<Job> {
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
        let before = inner.overrides.len();
        inner.overrides.retain(|o| o.ends_at > now);
        if inner.overrides.len() != before {
            inner.config = effective(&inner.base_config, &inner.overrides);
            inner.dirty = true;
        }
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
            // Gather what arrives within a few milliseconds: one journal
            // record and one history write for a burst of deliveries, not
            // one each (each is an fsync).
            tokio::time::sleep(ATTEMPT_GATHER).await;
            let mut got = vec![first];
            while let Ok(a) = rx.try_recv() {
                got.push(a);
            }
            self.record_attempts(got).await;
        }
    }

    async fn record_attempts(&self, got: Vec<Attempt>) {
        let mut delivered = Vec::new();
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
                    delivered.push(a.job_id.clone());
                }
            }
        }
        // Saved at once: the shorter the window between a delivery and its
        // removal from the persisted outbox, the fewer repeats after a crash.
        if !delivered.is_empty()
            && let Err(e) = self.save_delivered(&delivered)
        {
            tracing::error!("{e}");
        }
        self.history.attempts(&got).await;
    }

    /// The rule files as they are on disk now, loaded as a reload would
    /// load them, without replacing the running rules.
    pub fn check_files(&self) -> Result<Config, EngineError> {
        let path = self.opts.rules_path.as_ref().ok_or(EngineError::NoRulesPath)?;
        Ok(self.opts.defaults(Config::load(path)?))
    }

    /// Reloads the rule files. A bad configuration is rejected as a whole
    /// and the running one stays.
    pub fn reload(&self) -> Result<usize, EngineError> {
        let path = self.opts.rules_path.as_ref().ok_or(EngineError::NoRulesPath)?;
        let config = match Config::load(path) {
            Ok(c) => self.opts.defaults(c),
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
        inner.base_config = Arc::new(config);
        inner.config = effective(&inner.base_config, &inner.overrides);
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

    /// When the engine started (Unix milliseconds).
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The address notifications link back to.
    pub fn external_url(&self) -> &str {
        &self.opts.external_url
    }
}

/// `base` with the API's on-call overrides added to their schedules (an
/// override of a schedule the files no longer have, or for a person they
/// no longer list, is kept and ignored: the layers decide, rather than a
/// page to someone with no contact going to nobody).
fn effective(base: &Arc<Config>, overrides: &[crate::oncall::OverrideEntry]) -> Arc<Config> {
    if overrides.is_empty() {
        return Arc::clone(base);
    }
    let mut config = (**base).clone();
    for o in overrides {
        if !config.people.contains_key(&o.member) {
            continue;
        }
        if let Some(s) = config.schedules.get_mut(&o.schedule) {
            s.add_override(o.starts_at, o.ends_at, &o.member);
        }
    }
    Arc::new(config)
}

/// The rule files to watch (see [`crate::config::rule_files`]); an
/// unreadable path watches itself, so that its return is noticed.
fn files_of(path: &Path) -> Vec<PathBuf> {
    crate::config::rule_files(path).unwrap_or_else(|_| vec![path.to_path_buf()])
}

fn mtimes(files: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    files.iter().map(|f| (f.clone(), std::fs::metadata(f).and_then(|m| m.modified()).ok())).collect()
}

mod api;
pub use api::AlertFilter;
mod metrics;
mod persist;
use persist::load_state;
pub mod ship;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
