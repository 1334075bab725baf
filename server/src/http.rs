//! The HTTP API: `POST /api/v1/sql`, `GET /health`, `GET /metrics`,
//! `POST /api/v1/admin/persist`, `POST /api/v1/admin/compact`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tocsin_auth::Principal;
use tocsin_query::{QueryEngine, QueryError};
use tocsin_storage::Storage;

use crate::format::{OutputFormat, encode};
use tocsin_storage::errors::Classify;

use crate::guard::{AuditNote, ErrorNote, Routes};
use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) storage: Arc<Storage>,
    pub(crate) query: Arc<QueryEngine>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) alerts: Arc<tocsin_alerting::AlertEngine>,
    pub(crate) tail: Arc<tocsin_ingest::tail::TailHub>,
    pub(crate) rollups: Arc<tocsin_query::rollup::Rollups>,
    pub(crate) backfill: Arc<dyn tocsin_ingest::follow::TailBackfill>,
    pub(crate) ingest: tocsin_ingest::IngestService,
    pub(crate) max_request_bytes: usize,
    pub(crate) auth: Arc<tocsin_auth::Auth>,
    pub(crate) audit: Arc<tocsin_auth::AuditLog>,
    /// Which `Host` and `Origin` headers browsers' requests may carry.
    pub(crate) browsers: crate::guard::BrowserPolicy,
    /// Databases InfluxQL's `CREATE DATABASE` named (listed by `SHOW
    /// DATABASES` before their first write; not kept across restarts).
    pub(crate) influx_databases: Arc<parking_lot::Mutex<std::collections::BTreeSet<String>>>,
    /// `[console]`.
    pub(crate) console: Arc<crate::config::ConsoleConfig>,
    /// Online backups in progress.
    pub(crate) backups: Arc<crate::backup::Backups>,
    /// The copy in `[storage] object_store`, when configured.
    pub(crate) mirror: Option<Arc<crate::mirror::Mirror>>,
    /// `--role reader`: the copy this server answers from.
    pub(crate) reader: Option<Arc<crate::reader::Reader>>,
}

impl axum::extract::FromRef<AppState> for Arc<tocsin_alerting::AlertEngine> {
    fn from_ref(app: &AppState) -> Self {
        Arc::clone(&app.alerts)
    }
}

/// Every route, with the access it needs (docs/security.md lists them; so
/// does `GET /api/v1/auth/routes`).
pub(crate) fn router(state: AppState, max_body: usize) -> Router {
    use tocsin_auth::Access::{Public, Requires, Statements};
    use tocsin_auth::Permission::*;
    let routes = Routes::new()
        .post("/api/v1/sql", Statements, sql)
        .post("/api/v1/admin/persist", Requires(Admin), persist)
        .post("/api/v1/admin/compact", Requires(Admin), compact)
        .post("/api/v1/admin/backups", Requires(Admin), crate::backup::create)
        .get("/api/v1/admin/backups", Requires(Admin), crate::backup::list)
        .get("/api/v1/admin/backups/{id}/files", Requires(Admin), crate::backup::file)
        .delete("/api/v1/admin/backups/{id}", Requires(Admin), crate::backup::finish)
        .get("/health", Public, health)
        .get("/metrics", Requires(Metrics), metrics)
        .get("/api/v1/trace/{id}", Requires(Trace), crate::trace::trace)
        .get("/api/v1/tail", Requires(Tail), crate::tail::tail)
        .post("/api/v1/write", Requires(Write), crate::protocols::remote_write)
        .post("/api/v2/write", Requires(Write), crate::protocols::influx_v2_write)
        .post("/write", Requires(Write), crate::protocols::influx_v1_write)
        .get("/query", Statements, crate::influx_query::query)
        .post("/query", Statements, crate::influx_query::query)
        .get("/ping", Public, crate::influx_query::ping)
        .get("/api/v1/query", Requires(Query), crate::prom_api::query)
        .post("/api/v1/query", Requires(Query), crate::prom_api::query)
        .get("/api/v1/query_range", Requires(Query), crate::prom_api::query_range)
        .post("/api/v1/query_range", Requires(Query), crate::prom_api::query_range)
        .get("/api/v1/series", Requires(Query), crate::prom_api::series)
        .post("/api/v1/series", Requires(Query), crate::prom_api::series)
        .get("/api/v1/labels", Requires(Query), crate::prom_api::labels)
        .post("/api/v1/labels", Requires(Query), crate::prom_api::labels)
        .get("/api/v1/label/{name}/values", Requires(Query), crate::prom_api::label_values)
        .get("/api/v1/metadata", Requires(Query), crate::prom_api::metadata)
        .get("/api/v1/status/buildinfo", Requires(Query), crate::prom_api::buildinfo)
        .post("/v1/metrics", Requires(Write), crate::protocols::otlp_metrics)
        .post("/v1/logs", Requires(Write), crate::protocols::otlp_logs)
        .post("/v1/traces", Requires(Write), crate::protocols::otlp_traces)
        .post("/loki/api/v1/push", Requires(Write), crate::protocols::loki_push)
        .post("/_bulk", Requires(Write), crate::protocols::elastic_bulk)
        .put("/_bulk", Requires(Write), crate::protocols::elastic_bulk)
        .post("/{index}/_bulk", Requires(Write), crate::protocols::elastic_bulk_index)
        .put("/{index}/_bulk", Requires(Write), crate::protocols::elastic_bulk_index);
    let routes = crate::auth_api::routes(crate::alertmanager_api::routes(crate::alert_links::routes(
        crate::alerts_api::routes(crate::console::routes(routes)),
    )));
    routes
        .build(Arc::clone(&state.auth), Arc::clone(&state.audit), state.browsers.clone(), state.reader.is_some())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(count_too_large))
        .with_state(state)
}

/// Counts every `413` (a body over `limits.max_request_bytes`, before or
/// after decompression) as a refusal by that bound.
async fn count_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        tocsin_storage::refusals::refused("max_request_bytes");
    }
    response
}

/// An HTTP error: status and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` (503 and 429 only; 1 unless known).
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: String) -> Self {
        Self { status, message, retry_after: None }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), retry_after: None }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), retry_after: None }
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl ApiError {
    /// The answer to an error of any crate: its class's status (see
    /// `tocsin_storage::errors`) and its message.
    pub(crate) fn classified(e: &impl Classify) -> Self {
        let status = StatusCode::from_u16(e.class().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, message: e.to_string(), retry_after: None }
    }

    /// The same status with another message (one that says less).
    pub(crate) fn with_message(self, message: &str) -> Self {
        Self { message: message.to_string(), ..self }
    }
}

impl From<tocsin_storage::StorageError> for ApiError {
    fn from(e: tocsin_storage::StorageError) -> Self {
        Self::classified(&e)
    }
}

impl ApiError {
    /// The answer with the message as a bare JSON string, as Alertmanager's
    /// v2 API answers errors (amtool cannot read `{"error": ...}`).
    pub(crate) fn into_bare_response(self) -> Response {
        let body = serde_json::Value::String(self.message.clone()).to_string();
        self.respond(body)
    }

    fn respond(self, body: String) -> Response {
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS)
            && let Ok(v) = header::HeaderValue::from_str(&self.retry_after.unwrap_or(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        // For the audit entry of the request.
        r.extensions_mut().insert(ErrorNote(self.message));
        r
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": &self.message }).to_string();
        self.respond(body)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let e = e.unwrapped();
        let mut api = Self::classified(&e);
        // The wait the caller's ingest rate needs, as the write protocols say.
        if let QueryError::RateLimited(r) = &e {
            api.retry_after = Some(r.retry_after_secs());
        }
        api
    }
}

impl From<tocsin_auth::AuthError> for ApiError {
    fn from(e: tocsin_auth::AuthError) -> Self {
        Self::classified(&e)
    }
}

impl From<tocsin_ingest::follow::FollowError> for ApiError {
    fn from(e: tocsin_ingest::follow::FollowError) -> Self {
        Self::classified(&e)
    }
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    // A console page typed with a trailing slash (`/alerts/`), or as
    // `/index.html`: the page's own address.
    if method == axum::http::Method::GET
        && let Some(to) = crate::console::page_address(&uri)
    {
        return axum::response::Redirect::permanent(&to).into_response();
    }
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint".into()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    database: Option<String>,
    /// Refuse the statement if it writes (the console sets it for every
    /// statement it did not see typed and run by its user).
    #[serde(default)]
    read_only: bool,
}

/// Runs one statement for the caller; the audit entry carries its text
/// and row count.
async fn sql(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        let enc = tocsin_auth::clip(enc.to_str().unwrap_or("?")).to_string();
        let message = format!("Content-Encoding {enc:?} is not supported here; send the statement uncompressed");
        return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response();
    }
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(format!("request body must be JSON like {{\"sql\": \"SELECT 1\"}}: {e}"))
                .into_response();
        }
    };
    let (result, rows) = run_sql(&app, &who, &headers, &req).await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(AuditNote { target: Some(clip_sql(&req.sql)), rows, ..AuditNote::default() });
    response
}

/// The SQL text as audited (see `tocsin_auth::audit_statement`).
fn clip_sql(sql: &str) -> String {
    tocsin_auth::audit_statement(sql)
}

async fn run_sql(
    app: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    req: &SqlRequest,
) -> (Result<Response, ApiError>, Option<u64>) {
    let format = match &req.format {
        Some(f) => match OutputFormat::parse(f) {
            Some(f) => f,
            None => {
                return (
                    Err(ApiError::bad_request(format!("unknown format {f:?}; use json, jsonl, csv or arrow"))),
                    None,
                );
            }
        },
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(OutputFormat::from_accept)
            .unwrap_or(OutputFormat::Json),
    };
    if req.sql.trim().is_empty() {
        return (Err(ApiError::bad_request("sql is empty")), None);
    }
    let started = Instant::now();
    let run = if req.read_only {
        app.query.execute_read_only_as(&req.sql, req.database.as_deref(), Some(who)).await
    } else {
        app.query.execute_as(&req.sql, req.database.as_deref(), Some(who)).await
    };
    let result = match run {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(sql = %req.sql, error = %e, "query failed");
            return (Err(ApiError::from(e)), None);
        }
    };
    let rows = result.num_rows() as u64;
    if let Some(e) = unencodable(format, &result.schema) {
        return (Err(ApiError::bad_request(e)), Some(rows));
    }
    // JSON is written as it is sent, a batch at a time.
    let lines = format == OutputFormat::JsonLines;
    if matches!(format, OutputFormat::Json | OutputFormat::JsonLines)
        && let Some(chunks) = crate::format::json_stream(&result.schema, result.batches.clone(), lines)
    {
        tracing::debug!(rows, elapsed_us = started.elapsed().as_micros() as u64, "query");
        let body = axum::body::Body::from_stream(futures::stream::iter(
            chunks.map(|c| c.map(Bytes::from).map_err(std::io::Error::other)),
        ));
        return (Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response()), Some(rows));
    }
    let body = match encode(format, &result.schema, &result.batches) {
        Ok(b) => b,
        Err(e) => return (Err(ApiError::internal(format!("encoding result: {e}"))), Some(rows)),
    };
    tracing::debug!(rows, elapsed_us = started.elapsed().as_micros() as u64, "query");
    (Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response()), Some(rows))
}

/// Why `format` cannot hold a column of `schema`, if it cannot: CSV has no
/// lists, structs or maps.
fn unencodable(format: OutputFormat, schema: &arrow::datatypes::SchemaRef) -> Option<String> {
    if !matches!(format, OutputFormat::Csv) {
        return None;
    }
    let nested = schema.fields().iter().find(|f| f.data_type().is_nested())?;
    Some(format!(
        "CSV cannot hold column {:?} of type {}: ask for json, jsonl or arrow",
        nested.name(),
        nested.data_type()
    ))
}

async fn persist(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.storage.persist().await?;
    Ok(axum::Json(json!({
        "tables": stats.tables, "rows": stats.rows, "segments": stats.segments, "bytes": stats.bytes
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactParams {
    /// Merge every partition's segments into one, today's too.
    #[serde(default)]
    full: bool,
}

/// Runs a retention and a compaction round now (whatever is due by the
/// configured policies; with `?full=true`, every partition as if cold).
async fn compact(
    State(app): State<AppState>,
    params: Result<axum::extract::Query<CompactParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let params = params.map_err(|e| ApiError::bad_request(format!("{}: full=true or full=false", e.body_text())))?.0;
    let (expired_segments, expired_rows) = app.storage.expire().await?;
    let stats = if params.full { app.storage.compact_full().await? } else { app.storage.compact().await? };
    app.storage.purge_retired();
    let mut body = serde_json::to_value(stats).map_err(|e| ApiError::internal(e.to_string()))?;
    body["expired_segments"] = json!(expired_segments);
    body["expired_rows"] = json!(expired_rows);
    Ok(axum::Json(body).into_response())
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let mut text = app.metrics.render(&app.storage, &app.query);
    crate::metrics::render_alerting(&app.alerts, &mut text);
    crate::metrics::render_tail(&app.tail.metrics, &mut text);
    crate::metrics::render_rollups(&app.rollups.metrics, &mut text);
    crate::metrics::render_refusals(&mut text);
    crate::metrics::render_segment_cache(app.storage.cache_stats(), &mut text);
    if let Some(r) = &app.reader {
        crate::metrics::render_reader(&r.metrics, &mut text);
    }
    if let Some(m) = &app.mirror {
        crate::metrics::render_mirror(&m.metrics, *m.fenced().borrow(), &mut text);
    }
    crate::metrics::counter(
        &mut text,
        "tocsin_audit_lost_entries_total",
        "Audit entries that could not be written (a full disk); an `audit gap` entry records them once the log can \
         be appended again.",
        app.audit.lost_total(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
