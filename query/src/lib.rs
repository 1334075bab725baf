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

pub(crate) mod catalog;
mod insert;
mod json;
mod lastpoint;
mod matches;
mod metrics;
mod prune;
mod sink;
mod table;
mod udf;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SQLOptions, SessionContext, SessionState};
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionConfig;
use futures::TryStreamExt;
use tocsin_storage::{Storage, StorageError, TIME_COLUMN, TableSnapshot, WriteError};

pub use catalog::LiveTable;
pub use metrics::{LATENCY_BUCKETS, QueryMetrics};

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
}

impl QueryError {
    /// Whether the error is the client's (bad SQL, unknown table, bad value)
    /// rather than the server's.
    pub fn is_user_error(&self) -> bool {
        match self {
            QueryError::DataFusion(e) => datafusion_user_error(e),
            QueryError::Storage(StorageError::Database(_)) => true,
            QueryError::Storage(_) => false,
            QueryError::Arrow(e) => arrow_user_error(e),
            _ => true,
        }
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
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => datafusion_user_error(inner),
        DataFusionError::Shared(inner) => datafusion_user_error(inner),
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

/// Where `now()` comes from, in Unix milliseconds.
pub type NowSource = Arc<dyn Fn() -> i64 + Send + Sync>;

pub struct QueryEngine {
    storage: Arc<Storage>,
    ctx: SessionContext,
    live: catalog::LiveTables,
    now: Option<NowSource>,
    pub metrics: QueryMetrics,
}

impl QueryEngine {
    pub fn new(storage: Arc<Storage>) -> Self {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(catalog::CATALOG, catalog::DEFAULT_DATABASE);
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rule(Arc::new(lastpoint::LastRowRule))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let live = catalog::LiveTables::default();
        ctx.register_catalog(
            catalog::CATALOG,
            Arc::new(catalog::TocsinCatalog::new(Arc::clone(&storage), Arc::clone(&live))),
        );
        // `time_bucket(interval, ts [, origin])`: the name TimescaleDB and
        // GreptimeDB users know for `date_bin`.
        let date_bin: ScalarUDF = (*datafusion::functions::datetime::date_bin()).clone();
        ctx.register_udf(date_bin.with_aliases(["time_bucket"]));
        ctx.register_udf(ScalarUDF::from(matches::Matches::new()));
        ctx.register_udf(ScalarUDF::from(json::JsonGetStr::new()));
        Self { storage, ctx, live, now: None, metrics: QueryMetrics::default() }
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
    pub async fn execute(&self, sql: &str, database: Option<&str>) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let result = async {
            let (schema, stream) = self.plan_and_start(sql, database).await?;
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            Ok(QueryResult { schema, batches })
        }
        .await;
        self.metrics.observe(started.elapsed(), result.is_ok());
        result
    }

    /// Runs one SQL statement and streams its result.
    pub async fn stream(
        &self,
        sql: &str,
        database: Option<&str>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        let started = Instant::now();
        let result = self.plan_and_start(sql, database).await;
        self.metrics.observe(started.elapsed(), result.is_ok());
        result
    }

    async fn plan_and_start(
        &self,
        sql: &str,
        database: Option<&str>,
    ) -> Result<(SchemaRef, SendableRecordBatchStream), QueryError> {
        let state = self.state(database);
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        insert::prepare(&state, &self.storage, &statement).await?;
        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new().with_allow_ddl(false).with_allow_statements(false).verify_plan(&plan)?;
        // DDL is refused above, so the plan needs none of
        // `SessionContext::execute_logical_plan`'s special cases; building the
        // DataFrame on `state` keeps its start time (what `now()` returns).
        let df = datafusion::dataframe::DataFrame::new(state, plan);
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        Ok((schema, stream))
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
        let ts = datafusion::scalar::ScalarValue::TimestampNanosecond(Some(from_ns), Some("UTC".into()));
        let mut df = self.ctx.read_table(Arc::new(provider))?.filter(col(TIME_COLUMN).gt_eq(lit(ts)))?;
        if !services.is_empty() && schema.column_with_name("service").is_some() {
            df = df.filter(col("service").in_list(services.iter().map(|s| lit(s.as_str())).collect(), false))?;
        }
        Ok(df.sort(vec![col(TIME_COLUMN).sort(true, false)])?.execute_stream().await?)
    }
}

pub mod names {
    //! Names the query layer exposes.
    pub use crate::catalog::{CATALOG, DEFAULT_DATABASE};
}
