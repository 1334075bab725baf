//! SQL over Tocsin's storage, with Apache DataFusion.
//!
//! Queries enter through [`QueryEngine::execute`] (or [`QueryEngine::stream`])
//! as SQL text. The engine's catalog `tocsin` maps each storage database to a
//! SQL schema (`public` by default) and each table to a provider that merges
//! the write buffer and the Parquet segments of a storage snapshot, pruning
//! both by time range and letting DataFusion prune row groups and pages by
//! statistics. `INSERT INTO` writes back through [`tocsin_storage::Storage::write`],
//! creating tables and columns from the inserted values.
//!
//! ```no_run
//! # async fn f(storage: std::sync::Arc<tocsin_storage::Storage>) -> Result<(), tocsin_query::QueryError> {
//! let engine = tocsin_query::QueryEngine::new(storage);
//! engine.execute("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 0.5)", None).await?;
//! let result = engine.execute("SELECT host, max(usage) FROM cpu GROUP BY host", None).await?;
//! assert_eq!(result.num_rows(), 1);
//! # Ok(()) }
//! ```

mod allowed;
pub mod bounded;
pub(crate) mod catalog;
mod decode;
mod delete;
mod direct;
mod gate;
mod insert;
mod json;
mod keep_last;
mod lastpoint;
mod matches;
mod metrics;
mod prune;
pub mod rollup;
mod runs;
mod sink;
mod table;
mod token_prune;
mod udf;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SQLOptions, SessionContext, SessionState};
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionConfig;
use datafusion::scalar::ScalarValue;
use futures::{FutureExt, StreamExt};
use tocsin_storage::{Storage, StorageError, TIME_COLUMN, TableSnapshot, WriteError};

pub use catalog::LiveTable;
pub use metrics::{LATENCY_BUCKETS, PHASES, QueryMetrics};
pub use tocsin_auth::Principal;

/// `name` as an SQL identifier (double-quoted, quotes doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `s` as an SQL string literal (single-quoted, quotes doubled).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The tag (dictionary) columns of a table's schema, in schema order.
pub fn tag_names(schema: &arrow::datatypes::Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), DataType::Dictionary(..)))
        .map(|f| f.name().clone())
        .collect()
}

/// Where the hint of a missing table starts: "table 'tocsin.public.cpu' not
/// found; database telegraf has a table ...".
pub const TABLE_ELSEWHERE: &str = "; database ";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("Arrow error: {0}")]
    Arrow(#[from] ArrowError),
    #[error("INSERT needs a ts column with a non-NULL time for every row")]
    InsertWithoutTime,
    #[error(
        "INSERT into new table {table:?} needs a column list, e.g. INSERT INTO {table} (ts, host, value) VALUES (...)"
    )]
    InsertNeedsColumns { table: String },
    #[error(
        "cannot infer the type of new column {column:?} from {data_type} values; cast them, e.g. CAST(NULL AS DOUBLE)"
    )]
    CannotInferType { column: String, data_type: DataType },
    #[error("column {column:?} has type {data_type}, which Tocsin tables cannot store")]
    UnsupportedType { column: String, data_type: DataType },
    #[error(
        "INSERT rejected {rejected} row(s), the first being row {first_row}: {reason}; {accepted} row(s) were written"
    )]
    InsertRejected { accepted: u64, rejected: usize, first_row: u32, reason: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(
        "{statement} statements are not allowed: only SELECT, EXPLAIN, INSERT, DELETE, SHOW and DESCRIBE may run \
         (rows change by INSERT and DELETE only, and SQL may not touch the server's files or settings)"
    )]
    StatementNotAllowed { statement: String },
    #[error(
        "this request is read-only (read_only: true), and the statement writes (INSERT, or EXPLAIN ANALYZE of one); \
         send it without read_only to run it"
    )]
    ReadOnly,
    #[error("the SQL text is {bytes} bytes long; at most {limit} are allowed")]
    SqlTooLong { bytes: usize, limit: usize },
    #[error(
        "the statement nests about {depth} levels deep (operators, parentheses, joins, UNIONs); at most {limit} \
         are allowed: split it, or use IN (...) for long lists of alternatives"
    )]
    ExpressionTooComplex { depth: usize, limit: usize },
    #[error("the statement joins more than {limit} tables; at most {limit} joins are allowed")]
    TooManyJoins { limit: usize },
    #[error("the statement has more {what} than the {limit} allowed; split it")]
    TooComplex { what: &'static str, limit: usize, bound: &'static str },
    /// The caller may not read or write a table of the statement.
    #[error(transparent)]
    Auth(#[from] tocsin_auth::AuthError),
    /// The caller's writes are over `limits.ingest_rows_per_second`.
    #[error(transparent)]
    RateLimited(tocsin_storage::errors::OverRate),
    #[error("{limit} queries are running already (limits.max_concurrent_queries); try again shortly")]
    TooManyQueries { limit: usize },
    #[error("the query ran longer than limits.query_timeout ({after:?}) and was stopped")]
    Timeout { after: std::time::Duration },
    #[error(
        "the result is larger than limits.max_result_mb ({limit_mb} MiB); add a LIMIT or aggregate, or read it \
         through Arrow Flight SQL, which streams it"
    )]
    ResultTooLarge { limit_mb: usize },
    #[error(
        "the statement failed inside the query engine ({0}); the server goes on. A value past 2 GiB (Arrow's limit \
         for one string array) is the usual cause"
    )]
    Panicked(String),
}

impl QueryError {
    /// The bound that refused the statement, when a bound did (see
    /// [`tocsin_storage::refusals`]).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            QueryError::SqlTooLong { .. } => Some("max_sql_bytes"),
            QueryError::ExpressionTooComplex { .. } => Some("max_statement_depth"),
            QueryError::TooManyJoins { .. } => Some("max_joins"),
            QueryError::TooComplex { bound, .. } => Some(bound),
            QueryError::DataFusion(e) if resources_exhausted(e) => Some("max_query_memory_mb"),
            QueryError::Write(e) => e.limit(),
            QueryError::TooManyQueries { .. } => Some("max_concurrent_queries"),
            QueryError::RateLimited(_) => Some("ingest_rows_per_second"),
            QueryError::Timeout { .. } => Some("query_timeout"),
            QueryError::ResultTooLarge { .. } => Some("max_result_mb"),
            _ => None,
        }
    }

    /// The query error a DataFusion error carries, if it carries one (a
    /// statement's timeout ends its stream with one).
    pub fn unwrapped(self) -> QueryError {
        match self {
            QueryError::DataFusion(DataFusionError::External(inner)) => match inner.downcast::<QueryError>() {
                Ok(q) => *q,
                Err(other) => QueryError::DataFusion(DataFusionError::External(other)),
            },
            e => e,
        }
    }

    /// Whether the error is the client's (bad SQL, unknown table, bad value)
    /// rather than the server's.
    pub fn is_user_error(&self) -> bool {
        match self {
            QueryError::DataFusion(e) => datafusion_user_error(e),
            QueryError::Storage(StorageError::Database(_)) => true,
            QueryError::Storage(_) => false,
            QueryError::Arrow(e) => arrow_user_error(e),
            QueryError::TooManyQueries { .. } | QueryError::Timeout { .. } | QueryError::RateLimited(_) => false,
            _ => true,
        }
    }
}

impl tocsin_storage::errors::Classify for QueryError {
    fn class(&self) -> tocsin_storage::errors::ErrorClass {
        use tocsin_storage::errors::ErrorClass;
        match self {
            QueryError::Auth(a) => a.class(),
            QueryError::Storage(s) => s.class(),
            QueryError::TooManyQueries { .. } => ErrorClass::Overloaded,
            QueryError::RateLimited(_) => ErrorClass::RateLimited,
            QueryError::Timeout { .. } => ErrorClass::Timeout,
            QueryError::DataFusion(e) if resources_exhausted(e) => ErrorClass::Overloaded,
            QueryError::DataFusion(DataFusionError::External(inner)) => match inner.downcast_ref::<QueryError>() {
                Some(q) => q.class(),
                None if self.is_user_error() => ErrorClass::Invalid,
                None => ErrorClass::Internal,
            },
            e if e.is_user_error() => ErrorClass::Invalid,
            _ => ErrorClass::Internal,
        }
    }
}

/// Whether the memory pool refused the query, however DataFusion wrapped it.
fn resources_exhausted(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::ResourcesExhausted(_) => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => resources_exhausted(inner),
        DataFusionError::Shared(inner) => resources_exhausted(inner),
        DataFusionError::Collection(errors) => errors.iter().any(resources_exhausted),
        DataFusionError::External(inner) => inner.downcast_ref::<DataFusionError>().is_some_and(resources_exhausted),
        _ => false,
    }
}

fn arrow_user_error(e: &ArrowError) -> bool {
    !matches!(e, ArrowError::IoError(..) | ArrowError::MemoryError(_) | ArrowError::ExternalError(_))
}

fn datafusion_user_error(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::Configuration(_) => true,
        DataFusionError::ArrowError(a, _) => arrow_user_error(a),
        DataFusionError::External(inner) => inner.downcast_ref::<QueryError>().is_some_and(QueryError::is_user_error),
        // The optimizer compiles constant patterns early: `'a' ~ '('`.
        DataFusionError::Context(label, _) if label == "Invalid regex" => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => datafusion_user_error(inner),
        DataFusionError::Shared(inner) => datafusion_user_error(inner),
        // Several errors of one statement (an unknown column in two
        // aggregates): the client's when every one is.
        DataFusionError::Collection(errors) => !errors.is_empty() && errors.iter().all(datafusion_user_error),
        _ => false,
    }
}

/// A query's whole result.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What [`QueryEngine::describe`] tells of a statement.
#[derive(Debug, Clone)]
pub struct Statement {
    pub schema: SchemaRef,
    /// Types of `$1`, `$2`, ... (`Null` where unknown).
    pub params: Vec<DataType>,
    /// An `INSERT`: running it writes.
    pub writes: bool,
}

/// The longest SQL text a statement may have. Generated dashboards' queries
/// run to a few KiB; 1 MiB leaves room for an INSERT of a few thousand rows
/// while bounding what the parser and planner are handed.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Memory the running queries' operators may hold together unless
/// configured: 4 GiB.
pub const DEFAULT_QUERY_MEMORY: usize = 4 << 30;

/// Where `now()` comes from, in Unix milliseconds.
pub type NowSource = Arc<dyn Fn() -> i64 + Send + Sync>;

pub struct QueryEngine {
    storage: Arc<Storage>,
    ctx: SessionContext,
    live: catalog::LiveTables,
    declared: catalog::DeclaredTables,
    now: Option<NowSource>,
    callers: CallerLimits,
    write_rates: std::sync::OnceLock<Arc<dyn WriteRates>>,
    pub metrics: QueryMetrics,
}

/// The per-caller ingest rate (`limits.ingest_rows_per_second`) as SQL
/// `INSERT` meets it: a statement starts only while the caller's bucket
/// is not empty, and the rows it wrote are then taken from it (into debt
/// if need be), so that SQL is no way around the limit of the ingest
/// protocols.
pub trait WriteRates: Send + Sync {
    /// `Err((rate, retry_after))` when `caller` may not write now.
    fn admit(&self, caller: &str) -> Result<(), (u64, std::time::Duration)>;
    fn charge(&self, caller: &str, rows: u64);
}

/// Bounds on the statements clients run (not on rules and roll-ups, which
/// the server runs itself): how many at once, and for how long.
struct CallerLimits {
    timeout: std::time::Duration,
    max: usize,
    slots: Arc<tokio::sync::Semaphore>,
    /// The most a whole result may hold (the HTTP API collects results
    /// before it answers; Flight SQL streams them).
    max_result_bytes: usize,
}

impl CallerLimits {
    fn new(timeout: std::time::Duration, max: usize) -> Self {
        CallerLimits {
            timeout,
            max,
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Default `limits.max_result_mb`.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1 << 30;

/// Default `limits.query_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Default `limits.max_concurrent_queries`.
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 64;

impl QueryEngine {
    /// An engine whose running queries may hold [`DEFAULT_QUERY_MEMORY`]
    /// together.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self::with_memory_limit(storage, DEFAULT_QUERY_MEMORY)
    }

    /// An engine whose running queries' operators (sorts, aggregates, joins)
    /// may hold `bytes` together (DataFusion's fair spill pool); over it a
    /// query fails with "resources exhausted" instead of taking the server's
    /// memory. Memory that DataFusion does not account, such as one huge
    /// string built by a function, is not bounded by it.
    pub fn with_memory_limit(storage: Arc<Storage>, bytes: usize) -> Self {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(catalog::CATALOG, catalog::DEFAULT_DATABASE);
        // When a scan's filters are evaluated while decoding (see
        // `table::TocsinTable::scan`), the cheapest first.
        config.options_mut().execution.parquet.reorder_filters = true;
        // Segment scans are spread over partitions by row group (see
        // `table::spread`), not cut into byte ranges by DataFusion.
        config.options_mut().optimizer.repartition_file_min_size = usize::MAX;
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(datafusion::execution::memory_pool::FairSpillPool::new(bytes)))
            .build_arc()
            .expect("a runtime with a memory pool and no other settings builds");
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_optimizer_rule(Arc::new(lastpoint::LastRowRule))
            .with_physical_optimizer_rule(Arc::new(table::DedupScanPredicate))
            .with_analyzer_rule(Arc::new(bounded::BoundConcat::default()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let live = catalog::LiveTables::default();
        let declared = catalog::DeclaredTables::default();
        ctx.register_catalog(
            catalog::CATALOG,
            Arc::new(catalog::TocsinCatalog::new(Arc::clone(&storage), Arc::clone(&live), Arc::clone(&declared))),
        );
        // `time_bucket(interval, ts [, origin])`: the name TimescaleDB and
        // GreptimeDB users know for `date_bin`.
        let date_bin: ScalarUDF = (*datafusion::functions::datetime::date_bin()).clone();
        ctx.register_udf(date_bin.with_aliases(["time_bucket"]));
        ctx.register_udf(ScalarUDF::from(matches::Matches::new()));
        ctx.register_udf(ScalarUDF::from(json::JsonGetStr::new()));
        // `repeat`, `range` and the others that can make a value far larger
        // than their arguments, with a bound (see `bounded`).
        let builtin = ctx.state();
        for f in bounded::bounded(|name| builtin.scalar_functions().get(name).map(|f| f.as_ref().clone())) {
            ctx.register_udf(f);
        }
        // `avg`, `sum`, `min`, `max` and `count` that fold runs of one group
        // (rows sorted by series come in runs) before updating the group.
        for f in runs::folding(|name| builtin.aggregate_functions().get(name).map(|f| f.as_ref().clone())) {
            ctx.register_udaf(f);
        }
        let callers = CallerLimits::new(DEFAULT_QUERY_TIMEOUT, DEFAULT_MAX_CONCURRENT_QUERIES);
        Self {
            storage,
            ctx,
            live,
            declared,
            now: None,
            callers,
            write_rates: std::sync::OnceLock::new(),
            metrics: QueryMetrics::default(),
        }
    }

    /// At most `max` client statements run at once (one more is refused,
    /// not queued), each for at most `timeout` from its start to its last
    /// row.
    pub fn with_caller_limits(mut self, timeout: std::time::Duration, max: usize) -> Self {
        let result = self.callers.max_result_bytes;
        self.callers = CallerLimits::new(timeout, max.max(1));
        self.callers.max_result_bytes = result;
        self
    }

    /// The most a client's whole result may hold (see `execute_as`).
    pub fn with_max_result_bytes(mut self, bytes: usize) -> Self {
        self.callers.max_result_bytes = bytes.max(1);
        self
    }

    /// Counts the rows clients write with `INSERT` against `rates` (set
    /// once, when the ingest service that owns them exists).
    pub fn set_write_rates(&self, rates: Arc<dyn WriteRates>) {
        let _ = self.write_rates.set(rates);
    }

    /// Makes `now()` (and everything relative to it) read `now` instead of
    /// the wall clock: rule unit tests run on simulated time.
    pub fn with_now(mut self, now: NowSource) -> Self {
        self.now = Some(now);
        self
    }

    /// Makes `table` queryable as `system.<name>`.
    pub fn register_system_table(&self, name: &str, table: Arc<dyn LiveTable>) {
        self.live.write().insert(name.to_string(), table);
    }

    /// Makes `system.<name>`, a table a component writes to storage,
    /// readable as an empty table of `schema` until its first write.
    pub fn declare_system_table(&self, name: &str, schema: SchemaRef) {
        self.declared.write().insert(name.to_string(), schema);
    }

    fn state(&self, database: Option<&str>) -> SessionState {
        let mut state = self.ctx.state();
        if let Some(now) = &self.now
            && let Some(t) = chrono::DateTime::from_timestamp_millis(now())
        {
            state.execution_props_mut().query_execution_start_time = Some(t);
        }
        if let Some(db) = database.filter(|d| !d.is_empty()) {
            state.config_mut().options_mut().catalog.default_schema = db.to_string();
        }
        state
    }

    /// Runs one SQL statement in `database` (default `public`) and returns
    /// its whole result.
    /// The storage this engine reads.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// How long a client's statement may run (`limits.query_timeout`).
    pub fn query_timeout(&self) -> std::time::Duration {
        self.callers.timeout
    }

    pub async fn execute(&self, sql: &str, database: Option<&str>) -> Result<QueryResult, QueryError> {
        self.execute_as(sql, database, None).await
    }

    /// [`Self::execute`] on behalf of `who`: every table the statement
    /// reads (subqueries and joins included) and the one it writes must be
    /// in the caller's scope, or it is refused naming the first one that is
    /// not. `None` is the server itself (rules, roll-ups).
    pub async fn execute_as(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
    ) -> Result<QueryResult, QueryError> {
        self.run_collected(sql, database, who, false).await
    }

    /// [`Self::execute_as`] for a statement that must not write: one that
    /// does (an `INSERT`, or `EXPLAIN ANALYZE` of one) is refused before it
    /// runs. For statements a client did not write itself (a link's).
    pub async fn execute_read_only_as(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
    ) -> Result<QueryResult, QueryError> {
        self.run_collected(sql, database, who, true).await
    }

    async fn run_collected(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
        read_only: bool,
    ) -> Result<QueryResult, QueryError> {
        let run = async {
            let (schema, stream) = self.plan_and_start(sql, database, None, who, read_only).await?;
            self.collect(schema, stream, who).await
        };
        self.bounded_run(run, who).await
    }

    /// The whole of a started statement's result, bounded for a client
    /// by `limits.max_result_mb`.
    async fn collect(
        &self,
        schema: SchemaRef,
        mut stream: SendableRecordBatchStream,
        who: Option<&Principal>,
    ) -> Result<QueryResult, QueryError> {
        let limit = who.map(|_| self.callers.max_result_bytes);
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| QueryError::from(e).unwrapped())?;
            if let Some(limit) = limit {
                bytes += batch_bytes(&batch);
                if bytes > limit {
                    tocsin_storage::refusals::refused("max_result_mb");
                    return Err(QueryError::ResultTooLarge { limit_mb: limit >> 20 });
                }
            }
            batches.push(batch);
        }
        Ok(QueryResult { schema, batches })
    }

    /// Runs `run`, bounded for a client by `limits.query_timeout`, and
    /// counts it in the query metrics.
    async fn bounded_run(
        &self,
        run: impl Future<Output = Result<QueryResult, QueryError>>,
        who: Option<&Principal>,
    ) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let result = match who {
            None => run.await,
            Some(_) => {
                let after = self.callers.timeout;
                tokio::time::timeout(after, run).await.unwrap_or_else(|_| {
                    tocsin_storage::refusals::refused("query_timeout");
                    Err(QueryError::Timeout { after })
                })
            }
        };
        self.metrics.observe(started.elapsed(), result.is_ok());
        result
    }

    /// Runs one SQL statement and streams its result.
    pub async fn stream(
        &self,
        sql: &str,
        database: Option<&str>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        self.stream_with_params(sql, database, None, None).await
    }

    /// Runs one SQL statement with values for its `$1`, `$2`, ...
    /// placeholders (prepared statements) and streams its result, on behalf
    /// of `who` (see [`Self::execute_as`]).
    pub async fn stream_with_params(
        &self,
        sql: &str,
        database: Option<&str>,
        params: Option<Vec<ScalarValue>>,
        who: Option<&Principal>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        let started = Instant::now();
        let result = self.plan_and_start(sql, database, params, who, false).await;
        self.metrics.observe(started.elapsed(), result.is_ok());
        result
    }

    /// The result schema of a statement and the types of its placeholders
    /// (`$1`, ... in order; `Null` where they cannot be inferred), without
    /// running it. `who` as in [`Self::execute_as`].
    pub async fn describe(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
    ) -> Result<Statement, QueryError> {
        self.describe_with_params(sql, database, None, who).await
    }

    /// [`Self::describe`] with values bound to the placeholders: the result
    /// schema then has their types (`SELECT $1` is `Null` unbound, the
    /// value's type bound), as running it would give.
    pub async fn describe_with_params(
        &self,
        sql: &str,
        database: Option<&str>,
        params: Option<&[ScalarValue]>,
        who: Option<&Principal>,
    ) -> Result<Statement, QueryError> {
        let (df, provisional) = self.plan(sql, database, who).await?;
        // Describing writes nothing: columns an INSERT would create are
        // created again when it runs.
        self.discard(provisional);
        let writes = allowed::writes(df.logical_plan());
        let mut types: Vec<(usize, DataType)> = df
            .logical_plan()
            .get_parameter_types()?
            .into_iter()
            .filter_map(|(name, t)| {
                let n = name.strip_prefix('$')?.parse::<usize>().ok()?;
                // Tags are dictionary-encoded inside; clients bind plain values.
                let t = match t.unwrap_or(DataType::Null) {
                    DataType::Dictionary(_, v) => *v,
                    t => t,
                };
                Some((n, t))
            })
            .collect();
        types.sort_by_key(|(n, _)| *n);
        let df = match params {
            Some(values) => {
                df.with_param_values(ParamValues::List(values.iter().cloned().map(Into::into).collect()))?
            }
            None => df,
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        Ok(Statement { schema, params: types.into_iter().map(|(_, t)| t).collect(), writes })
    }

    async fn plan_and_start(
        &self,
        sql: &str,
        database: Option<&str>,
        params: Option<Vec<ScalarValue>>,
        who: Option<&Principal>,
        read_only: bool,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        let slot = self.slot(who)?;
        // Registered before planning takes its snapshots: the segment files
        // the query reads are kept until its stream is dropped.
        let reader = self.storage.reader();
        // A query (not a write) is planned and started in one hand-off to
        // the blocking pool: each hand-off is a wake-up and a context
        // switch, a good part of a small statement's fixed cost.
        let planned = self.plan_and_maybe_start(sql, database, who, params.clone()).await;
        let (mut df, provisional) = match planned.map_err(|e| self.where_the_table_is(e, who))? {
            Planned::Started(schema, stream, _) => return Ok(self.finish_stream(schema, stream, None, slot, reader)),
            Planned::Write(_, provisional) if read_only => {
                self.discard(provisional);
                return Err(QueryError::ReadOnly);
            }
            Planned::Write(df, provisional) => (*df, provisional),
        };
        if let Some(params) = params {
            df = match df.with_param_values(ParamValues::List(params.into_iter().map(Into::into).collect())) {
                Ok(df) => df,
                Err(e) => {
                    self.discard(provisional);
                    return Err(e.into());
                }
            };
        }
        // A client's INSERT: admitted by its ingest rate, charged its rows.
        let charge = match (who, self.write_rates.get()) {
            (Some(who), Some(rates)) if allowed::inserts(df.logical_plan()) => {
                if let Err((rate, retry_after)) = rates.admit(&who.name) {
                    self.discard(provisional);
                    tocsin_storage::refusals::refused("ingest_rows_per_second");
                    return Err(QueryError::RateLimited(tocsin_storage::errors::OverRate {
                        caller: who.name.clone(),
                        rate,
                        retry_after,
                    }));
                }
                Some((Arc::clone(rates), who.name.clone()))
            }
            _ => None,
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        // Optimizing and physical planning are CPU work too: off the async
        // workers, like parsing (see `plan`).
        let handle = tokio::runtime::Handle::current();
        let started = tokio::task::spawn_blocking(move || handle.block_on(df.execute_stream()))
            .await
            .map_err(|e| QueryError::DataFusion(DataFusionError::Execution(format!("planning failed: {e}"))))?;
        let stream = match started {
            Ok(stream) => stream,
            Err(e) => {
                self.discard(provisional);
                return Err(e.into());
            }
        };
        Ok(self.finish_stream(schema, stream, charge, slot, reader))
    }

    /// A client's statement takes a slot (`limits.max_concurrent_queries`)
    /// for as long as its stream lives, and has until the deadline.
    fn slot(
        &self,
        who: Option<&Principal>,
    ) -> Result<Option<(tokio::sync::OwnedSemaphorePermit, tokio::time::Instant)>, QueryError> {
        if who.is_none() {
            return Ok(None);
        }
        match Arc::clone(&self.callers.slots).try_acquire_owned() {
            Ok(permit) => Ok(Some((permit, tokio::time::Instant::now() + self.callers.timeout))),
            Err(_) => {
                tocsin_storage::refusals::refused("max_concurrent_queries");
                Err(QueryError::TooManyQueries { limit: self.callers.max })
            }
        }
    }

    /// Reads `columns` of the rows of `database.table` as `who`, through
    /// the table's own scan, without SQL: no parsing, no optimizer, no
    /// physical planning (about 1.4 ms of a small statement), for readers
    /// that know which table and columns they want (PromQL selectors).
    ///
    /// `filters` only prune (segments and buffered writes by time, row
    /// groups and pages by statistics, rows while decoding where the
    /// table's scan evaluates them): rows they would drop may still be
    /// returned, and the caller checks each row. `who`'s access is what a
    /// statement would have: the table must be in its scope, and its
    /// role's row filters are applied exactly, below everything else (the
    /// same gate as SQL's). Slots, deadline and result bound are a
    /// statement's.
    pub async fn scan_as(
        &self,
        database: &str,
        table: &str,
        columns: &[&str],
        filters: Vec<datafusion::logical_expr::Expr>,
        who: Option<&Principal>,
    ) -> Result<QueryResult, QueryError> {
        if let Some(who) = who {
            who.check_table(tocsin_auth::Permission::Query, database, table)?;
        }
        let run = async {
            let slot = self.slot(who)?;
            let reader = self.storage.reader();
            let schema_provider = self
                .ctx
                .catalog(catalog::CATALOG)
                .and_then(|c| c.schema(database))
                .ok_or_else(|| DataFusionError::Plan(format!("database '{database}' not found")))?;
            let Some(mut provider) = schema_provider.table(table).await? else {
                return Err(DataFusionError::Plan(format!(
                    "table '{}.{database}.{table}' not found",
                    catalog::CATALOG
                ))
                .into());
            };
            // A row gate has its table's schema.
            let full = provider.schema();
            if let Some(who) = who
                && let Some(predicate) = allowed::row_predicate(who, database, table, |c| full.index_of(c).is_ok())?
            {
                provider = Arc::new(gate::RowGate { inner: provider, predicate });
            }
            let projection = columns.iter().map(|c| full.index_of(c)).collect::<Result<Vec<_>, _>>()?;
            let schema: SchemaRef = Arc::new(full.project(&projection)?);
            // A plain read of a table goes around DataFusion's scan (see
            // `crate::direct`); a row gate's filter needs DataFusion.
            let direct = (provider.as_ref() as &dyn std::any::Any).downcast_ref::<table::TocsinTable>();
            if let Some(table) = direct
                && let Some(batches) = table.read_direct(&self.ctx.runtime_env(), &projection, &filters).await?
            {
                let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
                    Arc::clone(&schema),
                    futures::stream::iter(batches.into_iter().map(Ok)),
                ));
                let (schema, stream) = self.finish_stream(schema, stream, None, slot, reader);
                return self.collect(schema, stream, who).await;
            }
            let state = self.state(Some(database));
            let plan = provider.scan(&state, Some(&projection), &filters, None).await?;
            let stream = datafusion::physical_plan::execute_stream(
                plan,
                Arc::new(datafusion::execution::TaskContext::from(&state)),
            )?;
            let (schema, stream) = self.finish_stream(schema, stream, None, slot, reader);
            self.collect(schema, stream, who).await
        };
        // Scanning runs here, not on the blocking pool as a statement's
        // planning does: a panic in it is this read's error.
        let run = std::panic::AssertUnwindSafe(run)
            .catch_unwind()
            .map(|r| r.unwrap_or_else(|panic| Err(QueryError::Panicked(panic_text(&panic)))));
        self.bounded_run(run, who).await
    }

    /// A planning error for a table that is not in the statement's
    /// database, with the databases (that `who` may read) where a table of
    /// that name is: data sent by Telegraf lands in `telegraf`, and a rule or
    /// a statement that looks in `public` otherwise only hears "not found".
    fn where_the_table_is(&self, e: QueryError, who: Option<&Principal>) -> QueryError {
        // DataFusion wraps it with a diagnostic (where in the SQL text).
        let inner = match &e {
            QueryError::DataFusion(DataFusionError::Diagnostic(_, inner)) => inner.as_ref(),
            QueryError::DataFusion(other) => other,
            _ => return e,
        };
        let DataFusionError::Plan(msg) = inner else { return e };
        let Some(name) = msg.strip_prefix("table '").and_then(|m| m.strip_suffix("' not found")) else { return e };
        // `tocsin.db.table` (the table name may itself hold dots).
        let Some((db, table)) = name.strip_prefix("tocsin.").and_then(|n| n.split_once('.')) else { return e };
        let elsewhere: Vec<String> = self
            .storage
            .databases()
            .into_iter()
            .filter(|d| d != db && self.storage.table_exists(d, table))
            .filter(|d| who.is_none_or(|w| w.check_table(tocsin_auth::Permission::Query, d, table).is_ok()))
            .take(5)
            .collect();
        let Some(first) = elsewhere.first() else { return e };
        QueryError::DataFusion(DataFusionError::Plan(format!(
            "{msg}{TABLE_ELSEWHERE}{} {} a table {table:?}: name it {first}.\"{table}\" or run the statement in that \
             database (\"database\" of the HTTP request, `database:` of a rule group, [alerting] database)",
            elsewhere.join(", "),
            if elsewhere.len() == 1 { "has" } else { "have" },
        )))
    }

    /// The started statement's stream as clients get it: panics turned
    /// into errors, memory refusals counted, an INSERT's rows charged, the
    /// caller's slot and deadline held, and the segments it reads kept.
    fn finish_stream(
        &self,
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        charge: Option<(Arc<dyn WriteRates>, String)>,
        slot: Option<(tokio::sync::OwnedSemaphorePermit, tokio::time::Instant)>,
        reader: tocsin_storage::ReaderGuard,
    ) -> (SchemaRef, SendableRecordBatchStream) {
        // A panic inside DataFusion or Arrow while the statement runs (Arrow
        // unwraps an offset overflow when a string array passes 2 GiB)
        // ends this statement with an error, not the connection without a
        // word.
        let stream = std::panic::AssertUnwindSafe(stream).catch_unwind().map(|item| match item {
            Ok(item) => item,
            Err(panic) => Err(DataFusionError::External(Box::new(QueryError::Panicked(panic_text(&panic))))),
        });
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&schema),
            stream.map(move |batch| {
                let _reading = &reader;
                // A bound hit while running (the memory pool) is counted
                // like one hit while planning.
                if let Err(e) = &batch
                    && resources_exhausted(e)
                {
                    tocsin_storage::refusals::refused("max_query_memory_mb");
                }
                // An INSERT's result is its row count.
                if let (Some((rates, caller)), Ok(b)) = (&charge, &batch)
                    && let Some(counts) = b.columns().first().and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                {
                    rates.charge(caller, counts.iter().flatten().sum());
                }
                batch
            }),
        ));
        let stream = match slot {
            None => stream,
            Some((permit, deadline)) => with_deadline(stream, deadline, self.callers.timeout, permit),
        };
        (schema, stream)
    }

    /// Plans one statement on the blocking pool and, unless it writes,
    /// starts it there too (with `params` bound).
    async fn plan_and_maybe_start(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Planned, QueryError> {
        let count = |e: QueryError| {
            if let Some(limit) = e.limit() {
                tocsin_storage::refusals::refused(limit);
            }
            e
        };
        let (state, storage, sql, who) = self.planning_inputs(sql, database, who).map_err(count)?;
        let handle = tokio::runtime::Handle::current();
        let planned = tokio::task::spawn_blocking(move || {
            handle.block_on(async move {
                let started = Instant::now();
                let (mut df, provisional) = plan_statement(state, storage, sql, who).await?;
                if allowed::writes(df.logical_plan()) {
                    return Ok(Planned::Write(Box::new(df), provisional));
                }
                if let Some(params) = params {
                    df = df.with_param_values(ParamValues::List(params.into_iter().map(Into::into).collect()))?;
                }
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                // `DataFrame::execute_stream`, one phase at a time.
                let planned = started.elapsed();
                let (mut state, plan) = df.into_parts();
                let optimized = state.optimize(&plan)?;
                // A statement that reads few rows runs on one partition:
                // no exchange between threads, no two-phase aggregation,
                // a smaller plan to build (docs/architecture.md).
                if reads_few_rows(&optimized, &state)? {
                    state.config_mut().options_mut().execution.target_partitions = 1;
                }
                let optimized_at = started.elapsed();
                let physical = state.query_planner().create_physical_plan(&optimized, &state).await?;
                let physical_at = started.elapsed();
                let stream = datafusion::physical_plan::execute_stream(
                    physical,
                    Arc::new(datafusion::execution::TaskContext::from(&state)),
                )?;
                let phases = [planned, optimized_at - planned, physical_at - optimized_at];
                Ok(Planned::Started(schema, stream, phases))
            })
        })
        .await
        .map_err(|e| QueryError::DataFusion(DataFusionError::Execution(format!("planning failed: {e}"))))?;
        if let Ok(Planned::Started(_, _, phases)) = &planned {
            self.metrics.observe_phases(*phases);
        }
        planned.map_err(count)
    }

    /// Plans one statement. An INSERT that creates columns makes them
    /// provisional; the second value names their table, for the caller to
    /// discard them if the statement goes no further.
    async fn plan(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
    ) -> Result<(datafusion::dataframe::DataFrame, insert::Provisional), QueryError> {
        let count = |e: QueryError| {
            if let Some(limit) = e.limit() {
                tocsin_storage::refusals::refused(limit);
            }
            e
        };
        let (state, storage, sql, who) = self.planning_inputs(sql, database, who).map_err(count)?;
        // Parsing and planning are CPU work that recurses over the statement
        // (seconds for the largest statements allowed): they run on a
        // blocking thread, so that one request does not hold an async worker
        // (and /health, and every other request on it) meanwhile.
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(plan_statement(state, storage, sql, who)))
            .await
            .map_err(|e| QueryError::DataFusion(DataFusionError::Execution(format!("planning failed: {e}"))))?
    }

    /// What planning a statement needs, once its size is checked.
    #[allow(clippy::type_complexity)]
    fn planning_inputs(
        &self,
        sql: &str,
        database: Option<&str>,
        who: Option<&Principal>,
    ) -> Result<(SessionState, Arc<Storage>, String, Option<Principal>), QueryError> {
        if sql.len() > MAX_SQL_BYTES {
            return Err(QueryError::SqlTooLong { bytes: sql.len(), limit: MAX_SQL_BYTES });
        }
        let state = self.state(database);
        let dialect = state.config().options().sql_parser.dialect;
        if let Some(d) = datafusion::sql::sqlparser::dialect::dialect_from_str(dialect) {
            allowed::check_expression_size(sql, d.as_ref())?;
        }
        Ok((state, Arc::clone(&self.storage), sql.to_string(), who.cloned()))
    }

    fn discard(&self, provisional: insert::Provisional) {
        if let Some((db, table)) = provisional {
            self.storage.discard_provisional(&db, &table);
        }
    }

    /// The databases (SQL schemas of the `tocsin` catalog), `system` and
    /// `information_schema` included, and their tables with schemas.
    pub async fn catalog_tables(&self) -> Vec<(String, String, SchemaRef, &'static str)> {
        let mut out = Vec::new();
        let Some(catalog) = self.ctx.catalog(catalog::CATALOG) else { return out };
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else { continue };
            for table in schema.table_names() {
                let Ok(Some(provider)) = schema.table(&table).await else { continue };
                let kind = if schema_name == "information_schema" || schema_name == "system" {
                    "SYSTEM TABLE"
                } else {
                    "TABLE"
                };
                out.push((schema_name.clone(), table, provider.schema(), kind));
            }
        }
        out
    }

    /// Streams the rows of `snapshot` (of `db.table`) with `ts >= from_ns`
    /// and, when `services` is not empty, `service` among them, in time
    /// order. Live tail's backfill reads a snapshot taken at the seam with
    /// the live stream, through the same pruning as SQL.
    pub async fn scan_snapshot_since(
        &self,
        db: &str,
        table: &str,
        snapshot: TableSnapshot,
        from_ns: i64,
        services: &[String],
    ) -> Result<SendableRecordBatchStream, QueryError> {
        use datafusion::prelude::{col, lit};
        let schema = Arc::clone(&snapshot.schema);
        let provider = table::TocsinTable {
            storage: Arc::clone(&self.storage),
            db: db.to_string(),
            table: table.to_string(),
            schema: Arc::clone(&schema),
            pinned: Some(snapshot),
        };
        let ts = ScalarValue::TimestampNanosecond(Some(from_ns), Some("UTC".into()));
        let mut df = self.ctx.read_table(Arc::new(provider))?.filter(col(TIME_COLUMN).gt_eq(lit(ts)))?;
        if !services.is_empty() && schema.column_with_name("service").is_some() {
            df = df.filter(col("service").in_list(services.iter().map(|s| lit(s.as_str())).collect(), false))?;
        }
        Ok(df.sort(vec![col(TIME_COLUMN).sort(true, false)])?.execute_stream().await?)
    }
}

/// The memory a batch's values take (of a slice, only the slice).
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

/// Ends `stream` with an error once `deadline` passes (a client statement
/// over `limits.query_timeout`), and holds its concurrency slot until it
/// ends or is dropped.
fn with_deadline(
    stream: SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    after: std::time::Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    let items = futures::stream::unfold(Some((stream, sleep, permit)), move |state| async move {
        let (mut stream, mut sleep, permit) = state?;
        tokio::select! {
            item = stream.next() => item.map(|i| (i, Some((stream, sleep, permit)))),
            _ = &mut sleep => {
                tocsin_storage::refusals::refused("query_timeout");
                Some((Err(DataFusionError::External(Box::new(QueryError::Timeout { after }))), None))
            }
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, items))
}

/// Parses and plans one statement (see [`QueryEngine::plan`]).
/// A planned statement: a query already started, or a write for the
/// caller to admit and start.
enum Planned {
    /// With the time spent in each of [`metrics::PHASES`].
    Started(SchemaRef, SendableRecordBatchStream, [std::time::Duration; 3]),
    Write(Box<datafusion::dataframe::DataFrame>, insert::Provisional),
}

/// What a caught panic said.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Below this many rows read (by [`table::TocsinTable::estimated_rows`]),
/// a statement is planned on one partition. On the TSBS day, one host's
/// rows (one row group of 262,144 rows left by the statistics) are below
/// it; a scan of the whole day's 864,000 rows, which takes 30 to 50 %
/// longer on one partition, is above it (docs/benchmarks.md).
pub const FEW_ROWS: u64 = 300_000;

/// Whether every table `plan` scans is a Tocsin table and together they
/// read fewer than [`FEW_ROWS`] rows.
fn reads_few_rows(plan: &datafusion::logical_expr::LogicalPlan, state: &SessionState) -> Result<bool, DataFusionError> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::datasource::DefaultTableSource;
    use datafusion::logical_expr::LogicalPlan;
    let mut rows = 0u64;
    let mut known = true;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let table = (scan.source.as_ref() as &dyn std::any::Any)
                .downcast_ref::<DefaultTableSource>()
                .and_then(|s| (s.table_provider.as_ref() as &dyn std::any::Any).downcast_ref::<table::TocsinTable>());
            match table {
                Some(t) => rows = rows.saturating_add(t.estimated_rows(state, &scan.filters, FEW_ROWS)?),
                None => known = false,
            }
            if !known || rows >= FEW_ROWS {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(known && rows < FEW_ROWS)
}

async fn plan_statement(
    mut state: SessionState,
    storage: Arc<Storage>,
    sql: String,
    who: Option<Principal>,
) -> Result<(datafusion::dataframe::DataFrame, insert::Provisional), QueryError> {
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(&sql, &dialect)?;
    allowed::check_statement(&statement)?;
    if let Some(who) = &who {
        // Before `insert::prepare`, which may add columns to the target.
        allowed::check_references(&statement, &state, who)?;
    }
    let provisional = insert::prepare(&state, &storage, &statement).await?;
    let planned = async {
        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new().with_allow_ddl(false).with_allow_statements(false).verify_plan(&plan)?;
        allowed::check_plan(&plan)?;
        let plan = match &who {
            Some(who) => {
                let default_db = &state.config().options().catalog.default_schema;
                allowed::check_access(&plan, default_db, who)?;
                allowed::restrict_rows(plan, default_db, who, || allowed::visible_tables(&state, who))?
            }
            None => plan,
        };
        delete::prepare(&mut state, &plan).map_err(|e| QueryError::DataFusion(DataFusionError::Plan(e)))?;
        Ok::<_, QueryError>(plan)
    }
    .await;
    match planned {
        // DDL is refused above, so the plan needs none of
        // `SessionContext::execute_logical_plan`'s special cases; building
        // the DataFrame on `state` keeps its start time (what `now()`
        // returns).
        Ok(plan) => Ok((datafusion::dataframe::DataFrame::new(state, plan), provisional)),
        Err(e) => {
            if let Some((db, table)) = provisional {
                storage.discard_provisional(&db, &table);
            }
            Err(e)
        }
    }
}

pub mod promql;

pub mod names {
    //! Names the query layer exposes.
    pub use crate::catalog::{CATALOG, DEFAULT_DATABASE};
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn an_unknown_column_in_several_aggregates_is_the_clients_error() {
        let (_dir, engine) = engine().await;
        engine.execute("INSERT INTO af (ts, h, w) VALUES (to_timestamp(1), 'a', 1)", None).await.expect("insert");
        for sql in ["SELECT min(v) FROM af", "SELECT min(v), count(DISTINCT v) FROM af"] {
            let err = engine.execute(sql, None).await.expect_err("no column v");
            assert!(err.to_string().contains("No field named v"), "{sql}: {err}");
            // HTTP 400, not a 500 (found by a hostile review).
            let class = tocsin_storage::errors::Classify::class(&err);
            assert_eq!(class, tocsin_storage::errors::ErrorClass::Invalid, "{sql}: {err:?}");
        }
    }

    /// A panic inside a running statement ends the statement with an
    /// error (the HTTP connection used to close without an answer).
    #[tokio::test]
    async fn a_panic_while_a_statement_runs_is_its_error() {
        use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
        let (_dir, engine) = engine().await;
        let boom = create_udf(
            "boom",
            vec![],
            DataType::Int64,
            Volatility::Volatile,
            Arc::new(|_: &[ColumnarValue]| -> datafusion::common::Result<ColumnarValue> { panic!("boom went off") }),
        );
        engine.ctx.register_udf(boom);
        let err = engine.execute("SELECT boom() AS b", None).await.expect_err("it panicked");
        assert!(matches!(&err, QueryError::Panicked(m) if m.contains("boom went off")), "{err:?}");
        // The statement's failure (HTTP 400, as over the wire), not the server's.
        assert_eq!(tocsin_storage::errors::Classify::class(&err), tocsin_storage::errors::ErrorClass::Invalid);
        // The engine goes on.
        let ok = engine.execute("SELECT 1 AS one", None).await.expect("runs");
        assert_eq!(ok.batches[0].num_rows(), 1);
    }

    /// Telegraf writes into `telegraf`; a statement (or rule) that looks in
    /// `public` is told where the table is, unless the caller may not read it.
    #[tokio::test]
    async fn a_missing_table_names_the_databases_that_have_it() {
        let (_dir, engine) = engine().await;
        engine
            .execute("INSERT INTO cpu (ts, host, usage_idle) VALUES (to_timestamp(1), 'a', 3.0)", Some("telegraf"))
            .await
            .expect("insert");
        let err = engine.execute("SELECT host FROM cpu", None).await.expect_err("not in public");
        let text = err.to_string();
        assert!(
            text.contains(
                "table 'tocsin.public.cpu' not found; database telegraf has a table \"cpu\": name it telegraf.\"cpu\""
            ),
            "{text}"
        );
        assert_eq!(tocsin_storage::errors::Classify::class(&err), tocsin_storage::errors::ErrorClass::Invalid);
        let err = engine.execute("SELECT host FROM nothing_anywhere", None).await.expect_err("nowhere");
        assert!(err.to_string().ends_with("table 'tocsin.public.nothing_anywhere' not found"), "{err}");
        // A caller confined to `public` learns nothing about `telegraf`.
        let scoped = Principal::listener("p", "public", "cpu").granted(tocsin_auth::Permission::Query);
        let err = engine.execute_as("SELECT host FROM cpu", None, Some(&scoped)).await.expect_err("not in public");
        assert!(err.to_string().ends_with("table 'tocsin.public.cpu' not found"), "{err}");
    }

    async fn engine() -> (tempfile::TempDir, QueryEngine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open storage");
        (dir, QueryEngine::new(storage))
    }

    #[tokio::test]
    async fn describe_tells_schema_placeholders_and_writes() {
        let (_dir, q) = engine().await;
        let ins = q.describe("INSERT INTO t (ts, host, v) VALUES (now(), 'a', 1.5)", None, None).await.expect("insert");
        assert!(ins.writes);
        q.execute("INSERT INTO t (ts, host, v) VALUES (now(), 'a', 1.5)", None).await.expect("write");
        let sel = q.describe("SELECT host, v FROM t WHERE v > $1 AND host = $2", None, None).await.expect("select");
        assert!(!sel.writes);
        assert_eq!(sel.params, vec![DataType::Float64, DataType::Utf8]);
        assert_eq!(sel.schema.field(1).name(), "v");
        let (_, stream) = q
            .stream_with_params(
                "SELECT v FROM t WHERE v > $1 AND host = $2",
                None,
                Some(vec![ScalarValue::Float64(Some(1.0)), ScalarValue::Utf8(Some("a".into()))]),
                None,
            )
            .await
            .expect("run");
        let batches: Vec<RecordBatch> = stream.try_collect().await.expect("collect");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    }
}

#[cfg(test)]
mod generated_sql {
    use super::*;
    use tocsin_storage::generated::{Inputs, cases};

    /// SQL text through the whole front end (length and expression bounds,
    /// parser, statement check, INSERT preparation, planner, optimizer):
    /// token soups and mutations of valid statements are planned or refused,
    /// never a panic.
    #[test]
    fn generated_sql_never_panics() {
        const VOCABULARY: &[&str] = &[
            "SELECT",
            "FROM",
            "WHERE",
            "GROUP BY",
            "ORDER BY",
            "LIMIT",
            "INSERT INTO",
            "VALUES",
            "COPY",
            "TO",
            "EXPLAIN",
            "ANALYZE",
            "WITH",
            "AS",
            "UNION",
            "JOIN",
            "ON",
            "(",
            ")",
            ",",
            "*",
            "+",
            "-",
            "/",
            "=",
            "<",
            "AND",
            "OR",
            "NOT",
            "NULL",
            "CASE",
            "WHEN",
            "THEN",
            "END",
            "cpu",
            "logs",
            "ts",
            "host",
            "v",
            "message",
            "count(*)",
            "max(v)",
            "now()",
            "INTERVAL '1 minute'",
            "matches(message, 'a OR (b')",
            "json_get_str(message, 'k')",
            "time_bucket(INTERVAL '1 minute', ts)",
            "'x'",
            "1",
            "1.5",
            "$1",
            "generate_series(1, 3)",
            "information_schema.tables",
            "system.alerts",
            "SHOW TABLES",
            "DESCRIBE",
            "CAST(",
            "AS DOUBLE)",
            "[1, 2]",
            "'🦀'",
            "\"quoted id\"",
            ";",
        ];
        let seeds: &[&[u8]] = &[
            b"SELECT host, max(v) FROM cpu WHERE ts > now() - INTERVAL '1 hour' GROUP BY host ORDER BY 2 DESC LIMIT 5",
            b"INSERT INTO cpu (ts, host, v) VALUES (now(), 'a', 1.5), (now(), 'b', 2)",
            b"SELECT ts, message FROM logs WHERE matches(message, 'timeout AND node-7') AND level = 'error'",
            b"EXPLAIN SELECT count(*) FROM cpu",
        ];
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let storage =
                Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open storage");
            let q = QueryEngine::new(storage);
            q.execute("INSERT INTO cpu (ts, host, v) VALUES (now(), 'a', 1.5)", None).await.expect("cpu");
            q.execute("INSERT INTO logs (ts, service, level, message) VALUES (now(), 's', 'info', 'm')", None)
                .await
                .expect("logs");
            let mut g = Inputs::new(12);
            let mut buf = Vec::new();
            for i in 0..cases(3_000) {
                let sql = if i % 2 == 0 {
                    g.soup(VOCABULARY, 30)
                } else {
                    let seed = seeds[g.below(seeds.len())];
                    g.mutate(seed, &mut buf);
                    String::from_utf8_lossy(&buf).into_owned()
                };
                // Planned only: running generated SQL could write rows or
                // ask for a huge `generate_series`; planning is what parses.
                let _ = q.describe(&sql, None, None).await;
            }
        });
    }
}

#[cfg(test)]
mod long_reads {
    use super::*;
    use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, TableWrite};

    /// A query still streaming when compaction replaces its segments and
    /// the grace period is over keeps its files: they are deleted once it
    /// ends (a fixed grace period broke longer streams).
    #[tokio::test]
    async fn a_stream_keeps_the_segments_it_reads_until_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = tocsin_storage::StorageConfig::for_tests(dir.path());
        config.compaction.grace = std::time::Duration::ZERO;
        let storage = Storage::open(config).await.expect("open");
        for part in 0..2i64 {
            let ts: Vec<i64> = (0..20_000).map(|i| part * 20_000 + i).collect();
            let block = SeriesBlock {
                item: 0,
                tags: vec![("host".into(), "a".into())],
                fields: vec![FieldColumn { name: "v".into(), values: FieldValues::I64(ts.clone()), validity: None }],
                timestamps: ts,
            };
            storage.write("public", vec![TableWrite { table: "t".into(), blocks: vec![block] }]).await.expect("write");
            storage.persist().await.expect("persist");
        }
        let q = QueryEngine::new(Arc::clone(&storage));
        let (_, mut stream) = q.stream("SELECT v FROM t", None).await.expect("stream");
        let mut rows = stream.next().await.expect("a batch").expect("read").num_rows();
        let stats = storage.compact().await.expect("compact");
        assert_eq!(stats.inputs, 2, "{stats:?}");
        assert_eq!(storage.purge_retired(), 0, "inputs deleted under a running query");
        while let Some(batch) = stream.next().await {
            rows += batch.expect("the rest reads after compaction").num_rows();
        }
        assert_eq!(rows, 40_000);
        drop(stream);
        assert_eq!(storage.purge_retired(), 2, "deleted once the query ended");
    }

    /// A statement that reads few rows is planned on one partition (no
    /// exchange, no two-phase aggregation); one that reads many keeps the
    /// session's partitions. The answers are the same.
    #[tokio::test]
    async fn statements_over_few_rows_run_on_one_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(storage);
        q.ctx.state_ref().write().config_mut().options_mut().execution.target_partitions = 4;
        for (table, rows) in [("small", 1_000i64), ("big", FEW_ROWS as i64 + 1_000)] {
            let ts: Vec<i64> = (0..rows).collect();
            let block = SeriesBlock {
                item: 0,
                tags: vec![("host".into(), "a".into())],
                fields: vec![FieldColumn { name: "v".into(), values: FieldValues::I64(ts.clone()), validity: None }],
                timestamps: ts,
            };
            q.storage
                .write("public", vec![TableWrite { table: table.into(), blocks: vec![block] }])
                .await
                .expect("write");
        }
        let plan = |table: &str| {
            let q = &q;
            let sql = format!("EXPLAIN SELECT host, max(v) AS m FROM {table} GROUP BY host");
            async move {
                let r = q.execute(&sql, None).await.expect("explain");
                arrow::util::pretty::pretty_format_batches(&r.batches).expect("print").to_string()
            }
        };
        let small = plan("small").await;
        assert!(!small.contains("RepartitionExec") && !small.contains("Partial"), "{small}");
        let big = plan("big").await;
        assert!(big.contains("RepartitionExec") && big.contains("Partial"), "{big}");
        // Few rows of the big table by time: one partition too.
        let r = q.execute("EXPLAIN SELECT max(v) FROM big WHERE ts > 10000000", None).await.expect("explain");
        let pruned = arrow::util::pretty::pretty_format_batches(&r.batches).expect("print").to_string();
        assert!(!pruned.contains("RepartitionExec"), "{pruned}");
        for table in ["small", "big"] {
            let r = q.execute(&format!("SELECT max(v) AS m, count(*) AS n FROM {table}"), None).await.expect("run");
            let n = r.batches[0].column(1).as_any().downcast_ref::<arrow::array::Int64Array>().expect("count").value(0);
            assert_eq!(n, if table == "small" { 1_000 } else { FEW_ROWS as i64 + 1_000 });
        }
    }

    /// The running queries' operators share a memory pool: a query whose
    /// aggregate outgrows it fails with a clear error instead of taking the
    /// server's memory.
    #[tokio::test]
    async fn a_query_over_the_memory_limit_fails_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::with_memory_limit(Arc::clone(&storage), 1 << 20);
        let big = QueryEngine::new(Arc::clone(&storage));
        big.execute("INSERT INTO t (ts, v) SELECT to_timestamp(value), value FROM generate_series(1, 200000)", None)
            .await
            .expect("insert");
        // A hash join's build side cannot spill (an aggregate may, and did
        // now and then finish within the pool by spilling, under load).
        let sql = "SELECT count(*) AS n FROM t a JOIN t b ON a.v = b.v";
        let err = q.execute(sql, None).await.expect_err("over 1 MiB");
        assert!(err.to_string().contains("Resources exhausted"), "{err}");
        assert_eq!(big.execute(sql, None).await.expect("within 4 GiB").num_rows(), 1);
    }

    /// A time range that prunes every segment of a table with nothing
    /// buffered planned an empty union, an error (the roll-up loop hit it).
    #[tokio::test]
    async fn a_range_that_prunes_every_segment_is_empty_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute("INSERT INTO t (ts, host, v) VALUES (to_timestamp(1), 'a', 1.0)", None).await.expect("insert");
        storage.persist().await.expect("persist");
        let r = q.execute("SELECT v FROM t WHERE ts > now()", None).await.expect("pruned query");
        assert_eq!(r.num_rows(), 0);
    }
}

#[cfg(test)]
mod provisional {
    use super::*;

    /// A rejected INSERT used to leave its table behind with the columns it
    /// guessed (`message` as a tag), after which every WriteLogs was
    /// refused: tables and columns now exist only with an accepted write,
    /// and the text columns of a log event are string fields on every path.
    #[tokio::test]
    async fn a_rejected_insert_leaves_no_table_or_column_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        let err = q.execute("INSERT INTO fresh (ts, host) VALUES (now(), 'a')", None).await.expect_err("no fields");
        assert!(err.to_string().contains("no fields"), "{err}");
        assert!(!storage.table_exists("public", "fresh"), "the rejected INSERT created its table");

        q.execute("INSERT INTO t (ts, host, v) VALUES (now(), 'a', 1.0)", None).await.expect("insert");
        let err = q
            .execute("INSERT INTO t (ts, host, v, extra) VALUES (now(), 'a', 'not a number', 'x')", None)
            .await
            .expect_err("type conflict");
        assert!(err.to_string().contains("not a number"), "{err}");
        let schema = storage.table_schema("public", "t").expect("t");
        assert!(schema.field_with_name("extra").is_err(), "extra stayed: {schema:?}");
        // Refused by storage when written (a tag value over 4 KiB): the
        // column it would have created goes too.
        let long = "x".repeat(5000);
        let err = q
            .execute(&format!("INSERT INTO t (ts, host, v, newtag) VALUES (now(), '{long}', 2.0, 'y')"), None)
            .await
            .expect_err("tag too long");
        assert!(err.to_string().contains("host"), "{err}");
        let schema = storage.table_schema("public", "t").expect("t");
        assert!(schema.field_with_name("newtag").is_err(), "newtag stayed: {schema:?}");

        // Describing an INSERT (Flight SQL prepare) creates nothing either.
        q.describe("INSERT INTO never (ts, host, v) VALUES (now(), 'a', 1.0)", None, None).await.expect("describe");
        assert!(!storage.table_exists("public", "never"));
    }

    #[tokio::test]
    async fn sql_creates_logs_as_writelogs_does_and_normalises_the_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute(
            "INSERT INTO logs (ts, service, host, level, message, trace_id) \
             VALUES (now(), 'api', 'h1', 'WARNING', 'disk full', 't-1')",
            None,
        )
        .await
        .expect("insert into logs");
        let schema = storage.snapshot("public", "logs").expect("logs").schema;
        let kind = |c: &str| schema.field_with_name(c).map(|f| f.data_type().clone()).expect(c);
        assert_eq!(kind("message"), DataType::Utf8);
        assert_eq!(kind("trace_id"), DataType::Utf8);
        assert!(matches!(kind("service"), DataType::Dictionary(..)));
        let r = q.execute("SELECT level FROM logs", None).await.expect("select");
        let b = arrow::compute::concat_batches(&r.schema, &r.batches).expect("concat");
        let level = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("cast");
        assert_eq!(arrow::array::AsArray::as_string::<i32>(&level).value(0), "warn");
    }
}

#[cfg(test)]
mod stored_types {
    use super::*;

    /// Integral float columns are stored as Int64 inside segments; SQL sees
    /// the table's Float64 with the exact values, filters and aggregates.
    #[tokio::test]
    async fn integral_floats_stored_as_ints_read_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute(
            "INSERT INTO m (ts, host, v, w) VALUES (to_timestamp(1), 'a', 1.0, 1), \
             (to_timestamp(2), 'a', 9007199254740992.0, 1), (to_timestamp(3), 'a', -7.0, 1), \
             (to_timestamp(4), 'a', CAST(NULL AS DOUBLE), 1)",
            None,
        )
        .await
        .expect("insert integral");
        storage.persist().await.expect("persist");
        // A second segment whose values are not all integral stays Float64.
        q.execute(
            "INSERT INTO m (ts, host, v, w) VALUES (to_timestamp(5), 'b', 2.5, 1), (to_timestamp(6), 'b', -0.0, 1)",
            None,
        )
        .await
        .expect("insert fractional");
        storage.persist().await.expect("persist");
        let r = q
            .execute("SELECT arrow_typeof(v) AS t, v FROM m WHERE v IS NOT NULL ORDER BY ts", None)
            .await
            .expect("select");
        let batch = arrow::compute::concat_batches(&r.schema, &r.batches).expect("concat");
        let v = batch.column(1).as_any().downcast_ref::<arrow::array::Float64Array>().expect("f64");
        let got: Vec<u64> = v.values().iter().map(|x| x.to_bits()).collect();
        let want: Vec<u64> = [1.0, 9007199254740992.0, -7.0, 2.5, -0.0].iter().map(|x: &f64| x.to_bits()).collect();
        assert_eq!(got, want);
        let t = arrow::array::AsArray::as_string::<i32>(batch.column(0));
        assert!(t.iter().all(|x| x == Some("Float64")));
        let r = q.execute("SELECT count(*) AS n, sum(v) AS s FROM m WHERE v > 0", None).await.expect("filter");
        let b = &r.batches[0];
        assert_eq!(b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("n").value(0), 3);
        // The segment of integral values holds Int64 (DELTA encoded).
        let seg = storage.snapshot("public", "m").expect("table").segments[0].clone();
        let file = std::fs::File::open(dir.path().join(&seg.path)).expect("segment");
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet");
        assert_eq!(reader.schema().field_with_name("v").expect("v").data_type(), &DataType::Int64);
    }
}

#[cfg(test)]
mod stored_decimals {
    use super::*;

    /// Float columns of short decimals are stored as DECIMAL(18, s) inside
    /// segments; SQL sees Float64 with the same bits, and filters (pushed
    /// into the Parquet reader), aggregates and ordering agree with the
    /// write buffer's answers before the persist.
    #[tokio::test]
    async fn decimal_floats_read_back_bit_for_bit_through_sql() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute(
            "INSERT INTO m (ts, host, v, w) VALUES (to_timestamp(1), 'a', 12345.67, 1), (to_timestamp(2), 'a', 0.1, 1), \
             (to_timestamp(3), 'a', -3.25, 1), (to_timestamp(4), 'a', CAST(NULL AS DOUBLE), 1), \
             (to_timestamp(5), 'b', 0.003456789, 1), (to_timestamp(6), 'b', 99999.99, 1)",
            None,
        )
        .await
        .expect("insert");
        let queries = [
            "SELECT arrow_typeof(v) AS t, v FROM m ORDER BY ts",
            "SELECT count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM m WHERE v > 0.1",
            "SELECT CAST(host AS VARCHAR) AS host, v FROM m WHERE v = 12345.67 OR v = 0.003456789 ORDER BY host",
            "SELECT CAST(host AS VARCHAR) AS host, avg(v) AS a FROM m GROUP BY host ORDER BY host",
        ];
        let buffered = answers(&q, &queries).await;
        storage.persist().await.expect("persist");
        assert_eq!(answers(&q, &queries).await, buffered, "answers changed when the rows went into a segment");
        assert!(buffered[0].contains("12345.67") && buffered[0].contains("0.003456789"), "{}", buffered[0]);
        assert_eq!(stored(dir.path(), &storage, "m", "v").0, DataType::Decimal64(18, 9));
    }

    /// Floats an exporter computed from integers (`ticks * 0.001`,
    /// `µs / 1000 / 1000`) are mostly not the nearest decimals; they are
    /// stored as those integers under the rule (`tocsin.stored_as`), and
    /// SQL reads the same bits back from the segment, through a filter
    /// pushed into the reader, and after compaction rewrote the segment.
    #[tokio::test]
    async fn floats_under_a_producer_rule_read_back_bit_for_bit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        let insert = |t: u32| {
            format!(
                "INSERT INTO disk (ts, dev, busy, psi) VALUES \
                 (to_timestamp({t}), 'sda', CAST({a} AS DOUBLE) * 0.001, CAST({c} AS DOUBLE) / 1000.0 / 1000.0), \
                 (to_timestamp({t2}), 'sda', CAST({b} AS DOUBLE) * 0.001, CAST({d} AS DOUBLE) / 1000.0 / 1000.0)",
                t2 = t + 1,
                a = 28431 + t,
                b = 28433 + t * 3,
                c = 45701450 + t * 17,
                d = 5924253 + t * 31,
            )
        };
        q.execute(&insert(1), None).await.expect("insert");
        let queries = [
            "SELECT arrow_typeof(busy) AS t, busy, psi FROM disk ORDER BY ts",
            "SELECT busy, psi FROM disk WHERE busy > 28.433 ORDER BY ts",
            "SELECT count(*) AS n FROM disk WHERE psi = CAST(45701467 AS DOUBLE) / 1000.0 / 1000.0",
            "SELECT min(busy) AS lo, max(psi) AS m FROM disk",
        ];
        let buffered = answers(&q, &queries).await;
        assert!(buffered[0].contains("28.432000000000002"), "the product, not the decimal: {}", buffered[0]);
        assert!(buffered[2].contains("[\n  1,\n]"), "{}", buffered[2]);
        storage.persist().await.expect("persist");
        assert_eq!(answers(&q, &queries).await, buffered, "answers changed when the rows went into a segment");
        let mark = |name: &str| stored(dir.path(), &storage, "disk", name);
        assert_eq!(mark("busy"), (DataType::Decimal64(18, 3), Some("decimal-mul".to_string())));
        assert_eq!(mark("psi"), (DataType::Decimal64(18, 6), Some("decimal-div1000".to_string())));
        // A second segment, then compaction reads both back and writes one.
        q.execute(&insert(10), None).await.expect("insert");
        let buffered = answers(&q, &queries).await;
        storage.persist().await.expect("persist");
        storage.compact_full().await.expect("compact");
        assert_eq!(storage.snapshot("public", "disk").expect("table").segments.len(), 1, "compacted");
        assert_eq!(answers(&q, &queries).await, buffered, "answers changed through compaction");
    }

    /// Two small tables of one partition, one with a column under the
    /// `decimal-mul` rule and one with true decimals of the same name and
    /// scale: the marks differ, so they do not share a pack column, and
    /// each reads back its own values.
    #[tokio::test]
    async fn a_rule_column_and_a_decimal_column_of_one_name_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute(
            "INSERT INTO a (ts, h, v) VALUES (to_timestamp(1), 'x', CAST(28432 AS DOUBLE) * 0.001), \
             (to_timestamp(2), 'x', CAST(28440 AS DOUBLE) * 0.001)",
            None,
        )
        .await
        .expect("insert a");
        q.execute("INSERT INTO b (ts, h, v) VALUES (to_timestamp(1), 'x', 28.432), (to_timestamp(2), 'x', 1.5)", None)
            .await
            .expect("insert b");
        let queries = ["SELECT v FROM a ORDER BY ts", "SELECT v FROM b ORDER BY ts"];
        let buffered = answers(&q, &queries).await;
        assert!(buffered[0].contains("28.432000000000002") && buffered[1].contains("28.432,"), "{buffered:?}");
        storage.persist().await.expect("persist");
        assert_eq!(answers(&q, &queries).await, buffered);
        let a = storage.snapshot("public", "a").expect("a").segments[0].path.clone();
        let b = storage.snapshot("public", "b").expect("b").segments[0].path.clone();
        assert!(a.starts_with("packs/") && b.starts_with("packs/"), "{a} {b}");
        assert_ne!(a, b, "one pack column cannot carry both marks");
    }

    /// A NaN satisfies `v > 1.5` (DataFusion orders NaN above every
    /// number) and Parquet statistics leave NaN out: a segment's max of 1.5
    /// pruned the NaN row once persisted (found by a hostile review).
    #[tokio::test]
    async fn nan_rows_are_not_pruned_away_once_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute(
            "INSERT INTO f (ts, h, v) VALUES (to_timestamp(1), 'x', 1.5), (to_timestamp(2), 'x', CAST('NaN' AS DOUBLE))",
            None,
        )
        .await
        .expect("insert");
        let queries = ["SELECT count(*) AS n FROM f WHERE v > 1.5", "SELECT count(*) AS n FROM f WHERE v <> 1.5"];
        let buffered = answers(&q, &queries).await;
        assert!(buffered.iter().all(|a| a.contains("[\n  1,\n]")), "{buffered:?}");
        storage.persist().await.expect("persist");
        assert_eq!(answers(&q, &queries).await, buffered, "the NaN row went missing from the segment's answers");
    }

    /// The stored type and `tocsin.stored_as` mark of `column` in the
    /// first segment of `table`.
    fn stored(dir: &std::path::Path, storage: &Storage, table: &str, column: &str) -> (DataType, Option<String>) {
        let seg = storage.snapshot("public", table).expect("table").segments[0].clone();
        let file = std::fs::File::open(dir.join(&seg.path)).expect("segment");
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet");
        let f = reader.schema().field_with_name(column).expect("field").clone();
        (f.data_type().clone(), f.metadata().get(tocsin_storage::segment::STORED_AS_KEY).cloned())
    }

    async fn answers(q: &QueryEngine, queries: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for sql in queries {
            let r = q.execute(sql, None).await.expect(sql);
            let b = arrow::compute::concat_batches(&r.schema, &r.batches).expect("concat");
            out.push(format!("{:?}", b.columns()));
        }
        out
    }
}

#[cfg(test)]
mod token_footers {
    use super::*;
    // The type DataFusion caches footers as (`reader` has another of the same name).
    use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;

    /// DataFusion caches segment footers without their token filters: a
    /// footer's key-value metadata becomes the Arrow schema's metadata,
    /// which is cloned several times per file a scan opens.
    #[tokio::test]
    async fn cached_footers_leave_token_filters_out_and_searches_use_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute(
            "INSERT INTO logs (ts, service, message) VALUES (to_timestamp(1), 'a', 'disk full'), \
             (to_timestamp(2), 'a', 'all good')",
            None,
        )
        .await
        .expect("insert");
        storage.persist().await.expect("persist");
        let r = q
            .execute("SELECT count(*) AS n FROM logs WHERE matches(message, 'full') AND service = 'a'", None)
            .await
            .expect("select");
        let n = r.batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().expect("n").value(0);
        assert_eq!(n, 1);
        let snap = storage.snapshot("public", "logs").expect("table");
        let path = snap.segment_path(&snap.segments[0]);
        let location = datafusion::object_store::path::Path::parse(path.to_str().expect("utf-8")).expect("path");
        let cached = q.ctx.runtime_env().cache_manager.get_file_metadata_cache().get(&location).expect("cached footer");
        let meta =
            cached.file_metadata.as_ref().as_any().downcast_ref::<CachedParquetMetaData>().expect("parquet footer");
        let keys: Vec<&str> = meta
            .parquet_metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .map(|kv| kv.key.as_str())
            .collect();
        assert!(keys.contains(&tocsin_storage::segment::ORIGIN_KEY), "{keys:?}");
        assert!(!keys.iter().any(|k| k.starts_with(tocsin_storage::tokens::KEY_PREFIX)), "{keys:?}");
        assert!(storage.metrics.token_blocks_read.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}

#[cfg(test)]
mod folded_aggregates {
    use super::*;

    /// Grouped `avg`, `sum`, `min`, `max` and `count` over a segment's runs
    /// of one series (folded, see `runs`) answer what the rows hold, with
    /// NULLs and a FILTER clause, before and after a persist.
    #[tokio::test]
    async fn grouped_aggregates_over_runs_of_a_series_answer_the_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        let avg = q.ctx.state().aggregate_functions().get("avg").cloned().expect("avg");
        assert!((avg.inner().as_ref() as &dyn std::any::Any).is::<runs::RunFolding>(), "avg folds runs");
        // 3 hosts × 600 rows at 1 s: v is an integer-valued float (sums are
        // exact in any order), NULL every 7th row; i an integer, never NULL.
        let mut rows = Vec::new();
        let mut expected = Vec::new();
        for (h, host) in ["a", "b", "c"].iter().enumerate() {
            for minute in 0..10i64 {
                let (mut sum, mut n, mut lo, mut hi, mut odd, mut isum) = (0i64, 0i64, i64::MAX, i64::MIN, 0i64, 0i64);
                for s in 0..60i64 {
                    let t = minute * 60 + s;
                    let v = (t * 37 + h as i64 * 11) % 101 - 50;
                    let null = t % 7 == 0;
                    rows.push(format!(
                        "(to_timestamp({t}), '{host}', {}, {})",
                        if null { "CAST(NULL AS DOUBLE)".to_string() } else { format!("{v}.0") },
                        v * 1000
                    ));
                    isum += v * 1000;
                    if !null {
                        (sum, n, lo, hi) = (sum + v, n + 1, lo.min(v), hi.max(v));
                        odd += i64::from(v % 2 != 0);
                    }
                }
                expected.push(format!(
                    "{host} {minute} avg={:?} sum={:?} min={:?} max={:?} n=60 nv={n} odd={odd} isum={}",
                    sum as f64 / n as f64,
                    sum as f64,
                    lo as f64,
                    hi as f64,
                    isum
                ));
            }
        }
        q.execute(&format!("INSERT INTO f (ts, host, v, i) VALUES {}", rows.join(", ")), None).await.expect("insert");
        let sql = "SELECT CAST(host AS VARCHAR) AS host, CAST(date_bin(INTERVAL '1 minute', ts) AS BIGINT) / 60000000000 AS m, \
                   avg(v) AS a, sum(v) AS s, min(v) AS lo, max(v) AS hi, count(*) AS n, count(v) AS nv, \
                   count(v) FILTER (WHERE CAST(v AS BIGINT) % 2 <> 0) AS odd, sum(i) AS isum \
                   FROM f GROUP BY host, m ORDER BY host, m";
        let answer = |batches: Vec<RecordBatch>| -> Vec<String> {
            let mut out = Vec::new();
            for b in &batches {
                let s =
                    |c: usize, r: usize| arrow::util::display::array_value_to_string(b.column(c), r).expect("shown");
                for r in 0..b.num_rows() {
                    out.push(format!(
                        "{} {} avg={} sum={} min={} max={} n={} nv={} odd={} isum={}",
                        s(0, r),
                        s(1, r),
                        s(2, r),
                        s(3, r),
                        s(4, r),
                        s(5, r),
                        s(6, r),
                        s(7, r),
                        s(8, r),
                        s(9, r)
                    ));
                }
            }
            out
        };
        assert_eq!(answer(q.execute(sql, None).await.expect("buffered").batches), expected);
        storage.persist().await.expect("persist");
        assert_eq!(answer(q.execute(sql, None).await.expect("persisted").batches), expected);
    }
}

#[cfg(test)]
mod deletes {
    use super::*;

    async fn text(q: &QueryEngine, sql: &str) -> String {
        let r = q.execute(sql, None).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        arrow::util::pretty::pretty_format_batches(&r.batches).expect("format").to_string()
    }

    async fn count(q: &QueryEngine, sql: &str) -> u64 {
        let r = q.execute(sql, None).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        r.batches[0].column(0).as_any().downcast_ref::<UInt64Array>().expect("count").value(0)
    }

    /// `DELETE` through SQL: buffered and persisted rows matching go, at
    /// once and after compaction alike; rows written after it stay; the
    /// lastpoint rewrite (the last-row cache) forgets deleted rows.
    #[tokio::test]
    async fn delete_removes_matching_rows_from_every_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = tocsin_storage::StorageConfig::for_tests(dir.path());
        config.compaction.grace = std::time::Duration::ZERO;
        let storage = Storage::open(config).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        let insert = |rows: &str| format!("INSERT INTO m (ts, host, v) VALUES {rows}");
        q.execute(
            &insert("(to_timestamp(1), 'a', 1.0), (to_timestamp(2), 'a', 2.0), (to_timestamp(1), 'b', 10.0)"),
            None,
        )
        .await
        .expect("insert");
        storage.persist().await.expect("persist");
        q.execute(&insert("(to_timestamp(3), 'a', 3.0), (to_timestamp(2), 'b', 20.0)"), None).await.expect("buffered");

        let n = count(&q, "DELETE FROM m WHERE host = 'a' AND ts >= '1970-01-01T00:00:02Z'").await;
        assert_eq!(n, 2, "a at 2 (in a segment) and 3 (buffered when deleted)");
        let all = "SELECT CAST(host AS VARCHAR) AS host, ts, v FROM m ORDER BY host, ts";
        let after = text(&q, all).await;
        assert!(!after.contains("| 2.0 ") && !after.contains("| 3.0 "), "{after}");
        assert!(after.contains("| 1.0 ") && after.contains("| 20.0 "), "{after}");
        let last = "SELECT DISTINCT ON (host) CAST(host AS VARCHAR) AS host, ts, v FROM m ORDER BY host, ts DESC";
        let newest = text(&q, last).await;
        assert!(newest.contains("| a    | 1970-01-01T00:00:01Z | 1.0  |"), "{newest}");

        // Nothing matches: no rows, nothing recorded.
        assert_eq!(count(&q, "DELETE FROM m WHERE 1 = 0").await, 0);
        assert_eq!(count(&q, "DELETE FROM m WHERE host = 'zz'").await, 0);
        assert_eq!(count(&q, "DELETE FROM m WHERE ts < to_timestamp(1)").await, 0);
        assert_eq!(storage.snapshot("public", "m").expect("m").tombstones.len(), 1);

        // A row written again at a deleted time stays.
        q.execute(&insert("(to_timestamp(2), 'a', 200.0)"), None).await.expect("again");
        let again = text(&q, all).await;
        assert!(again.contains("| 200.0 "), "{again}");
        // Counts are not taken from the files' statistics, which still
        // count the deleted rows.
        storage.persist().await.expect("persist");
        let n = "SELECT count(*) AS n FROM m";
        assert!(text(&q, n).await.contains("| 4 |"), "{}", text(&q, n).await);
        let stats = storage.compact_full().await.expect("compact");
        assert!(stats.merges + stats.purged > 0, "{stats:?}");
        assert!(storage.snapshot("public", "m").expect("m").tombstones.is_empty());
        assert_eq!(text(&q, all).await, again, "compaction changed the answer");
        assert!(text(&q, n).await.contains("| 4 |"), "{}", text(&q, n).await);

        // Without WHERE: every row.
        assert_eq!(count(&q, "DELETE FROM m").await, 4);
        assert!(text(&q, "SELECT count(*) AS n FROM m").await.contains("| 0 |"));
    }

    #[tokio::test]
    async fn deletes_that_cannot_be_made_exactly_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path())).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        q.execute("INSERT INTO m (ts, host, v) VALUES (to_timestamp(1), 'a', 1.0)", None).await.expect("insert");
        for (sql, says) in [
            ("DELETE FROM m WHERE v > 0", "none of these"),
            ("DELETE FROM m WHERE random() < 0.5", "random(), which is volatile"),
            ("DELETE FROM m WHERE host IN (SELECT host FROM m)", "subquery"),
            ("DELETE FROM m WHERE host = 'a' OR v = 1", "none of these"),
            ("EXPLAIN ANALYZE DELETE FROM m", "EXPLAIN DELETE"),
            ("DELETE FROM nope", "nope"),
        ] {
            let err = q.execute(sql, None).await.expect_err(sql).to_string();
            assert!(err.contains(says), "{sql}: {err}");
        }
        assert!(text(&q, "SELECT v FROM m").await.contains("1.0"), "nothing was deleted");
    }
}
