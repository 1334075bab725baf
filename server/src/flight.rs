//! Arrow Flight SQL on the gRPC port: the protocol of Grafana's Flight SQL
//! data source, Grafana's InfluxDB data source in SQL mode, and the ADBC and
//! JDBC Flight SQL drivers.
//!
//! - Statements: `GetFlightInfo(CommandStatementQuery)` plans the SQL (its
//!   schema, no execution) and answers with a ticket that carries the SQL,
//!   the database, the caller and an expiry, sealed with a key of this
//!   process (a ticket cannot be forged, altered or used by another caller);
//!   `DoGet` runs it and streams record batches as they are produced (a
//!   million-row result is never held whole).
//! - Prepared statements: created with their result and parameter schemas
//!   (`$1`, `$2`, ... placeholders), parameters bound with `DoPut` (one row;
//!   values are cast to the placeholder's type), run with `DoGet`, closed by
//!   the client. A prepared update runs once per parameter row sent with it
//!   (ADBC's `executemany`). At most [`MAX_PREPARED`] stay open; the oldest
//!   are dropped beyond that.
//! - Updates: `DoPut(CommandStatementUpdate)` runs `INSERT` and answers the
//!   row count.
//! - Audit: every statement run is audited once, when it ends: a query when
//!   its stream ends (the rows sent, and the error if it failed while
//!   streaming, or `cancelled` when the client stopped reading), an update
//!   or an INSERT sent as a query when it ran. A statement refused at any
//!   step (`GetFlightInfo`, `Prepare`, `DoGet`, `DoPut`) is audited too.
//! - Metadata: catalogs (`tocsin`), schemas (the databases, `system`,
//!   `information_schema`), tables with their Arrow schemas, table types,
//!   SQL info.
//! - The database: the `database` gRPC header (as Grafana's InfluxDB SQL
//!   mode sends it; `bucket` and `bucket-name` are accepted too), else
//!   `public`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::scalar::ScalarValue;
use futures::{Stream, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tocsin_auth::{AuditEntry, AuditLog, Auth, Credentials, Permission, Principal};
use tocsin_ingest::caller;
use tocsin_query::{QueryEngine, QueryError};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Prepared statements kept open at most.
pub(crate) const MAX_PREPARED: usize = 10_000;
/// Most bytes of SQL text the open prepared statements may hold together
/// (each is at most `tocsin_query::MAX_SQL_BYTES`); the oldest are closed
/// first when a new one would go over.
pub(crate) const MAX_PREPARED_BYTES: usize = 64 << 20;
/// How long a statement ticket may be used after `GetFlightInfo`.
pub(crate) const TICKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Most parameter rows one prepared update takes (each runs the statement
/// once).
pub(crate) const MAX_PARAMETER_ROWS: usize = 10_000;

struct Prepared {
    /// Who created it: only they may bind, run or close it.
    owner: String,
    sql: String,
    database: Option<String>,
    /// The placeholders' types, as described at `Prepare` (`Null` where
    /// unknown): bound values are cast to them.
    types: Vec<arrow::datatypes::DataType>,
    /// Bound parameter rows (none bound: empty).
    params: Vec<Vec<ScalarValue>>,
    /// Rows written by an INSERT run at `GetFlightInfo`, for its `DoGet`.
    written: Option<u64>,
}

pub(crate) struct FlightSql {
    query: Arc<QueryEngine>,
    auth: Arc<Auth>,
    audit: Arc<AuditLog>,
    /// Seals statement tickets.
    tickets: tocsin_auth::Signer,
    prepared: Mutex<(HashMap<u64, Prepared>, VecDeque<u64>)>,
    next_id: AtomicU64,
    info: SqlInfoData,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

pub(crate) fn status(e: QueryError) -> Status {
    tocsin_ingest::errors::grpc_status(&e.unwrapped())
}

/// The database a request names in its headers.
fn database(md: &MetadataMap) -> Option<String> {
    ["database", "bucket", "bucket-name"]
        .iter()
        .find_map(|k| md.get(*k).and_then(|v| v.to_str().ok()).map(str::to_string))
        .filter(|d| !d.is_empty())
}

/// Results are sent with dictionaries expanded (the encoder's default; tag
/// columns are dictionary-encoded inside Tocsin), so the schemas announced
/// say so too.
fn hydrated(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            arrow::datatypes::DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("cannot encode schema: {e}")))?;
    Ok(bytes)
}

fn flight_info(schema: &Schema, ticket: Any, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket { ticket: ticket.encode_to_vec().into() });
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn one_batch<E: std::fmt::Display>(batch: Result<RecordBatch, E>) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::once(async { Ok(batch) }))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(stream)))
}

/// Runs a writing statement (with its parameters); its row count.
async fn update(
    query: &QueryEngine,
    sql: &str,
    database: Option<&str>,
    params: Option<Vec<ScalarValue>>,
    who: &Principal,
) -> Result<i64, Status> {
    let (_, stream) = query.stream_with_params(sql, database, params, Some(who)).await.map_err(status)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| status(e.into()))?;
    // INSERT answers one row with the count.
    let count = batches
        .first()
        .filter(|b| b.num_columns() == 1 && b.num_rows() == 1)
        .and_then(|b| ScalarValue::try_from_array(b.column(0), 0).ok())
        .and_then(|v| match v {
            ScalarValue::UInt64(Some(n)) => i64::try_from(n).ok(),
            ScalarValue::Int64(Some(n)) => Some(n),
            _ => None,
        })
        .unwrap_or(batches.iter().map(RecordBatch::num_rows).sum::<usize>() as i64);
    Ok(count)
}

/// Runs a writing statement once per parameter row (once without
/// parameters when there are none); the rows written.
async fn update_rows(
    query: &QueryEngine,
    sql: &str,
    database: Option<&str>,
    rows: Vec<Vec<ScalarValue>>,
    who: &Principal,
) -> Result<i64, Status> {
    if rows.is_empty() {
        return update(query, sql, database, None, who).await;
    }
    let (total, mut written) = (rows.len(), 0i64);
    for (i, row) in rows.into_iter().enumerate() {
        match update(query, sql, database, Some(row), who).await {
            Ok(n) => written = written.saturating_add(n),
            // The rows before stay written, as with a sequence of
            // statements; the message says how far it got.
            Err(e) => {
                return Err(Status::new(
                    e.code(),
                    format!(
                        "parameter row {} of {total} ({written} rows were written by the rows before it): {}",
                        i + 1,
                        e.message()
                    ),
                ));
            }
        }
    }
    Ok(written)
}

/// The one parameter row of a query (none: no parameters).
fn query_params(mut rows: Vec<Vec<ScalarValue>>) -> Result<Option<Vec<ScalarValue>>, Status> {
    match rows.len() {
        0 | 1 => Ok(rows.pop()),
        n => Err(Status::invalid_argument(format!(
            "a query takes one row of parameters, and {n} were bound (several rows run an INSERT once each)"
        ))),
    }
}

/// The values of `row` of `batch`, cast to the placeholders' `types`.
fn bound_row(
    batch: &RecordBatch,
    row: usize,
    types: &[arrow::datatypes::DataType],
) -> Result<Vec<ScalarValue>, Status> {
    use arrow::datatypes::DataType;
    batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c): (usize, &ArrayRef)| {
            let v = ScalarValue::try_from_array(c, row)
                .map_err(|e| Status::invalid_argument(format!("bad value for ${}: {e}", i + 1)))?;
            match types.get(i) {
                Some(t) if *t != DataType::Null && v.data_type() != *t => v
                    .cast_to(t)
                    .map_err(|e| Status::invalid_argument(format!("${} wants {t}, and {v} is not one: {e}", i + 1))),
                _ => Ok(v),
            }
        })
        .collect()
}

/// The parameter rows sent in a `DoPut` body, cast to the placeholders'
/// `types`; at most [`MAX_PARAMETER_ROWS`].
async fn parameter_rows(
    body: PeekableFlightDataStream,
    types: &[arrow::datatypes::DataType],
) -> Result<Vec<Vec<ScalarValue>>, Status> {
    // A message with only the descriptor (arrow-flight's client sends one
    // with nothing else for an update without parameters) carries no data.
    let body = body.try_filter(|m| futures::future::ready(!m.data_header.is_empty()));
    let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(body.map_err(FlightError::from))
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot read the parameters: {e}")))?;
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if total > MAX_PARAMETER_ROWS {
        tocsin_storage::refusals::refused("max_parameter_rows");
        return Err(Status::invalid_argument(format!(
            "{total} parameter rows sent at once; at most {MAX_PARAMETER_ROWS} (send more rows as one multi-row \
             INSERT, or over line protocol)"
        )));
    }
    let mut rows = Vec::with_capacity(total);
    for batch in &batches {
        for row in 0..batch.num_rows() {
            rows.push(bound_row(batch, row, types)?);
        }
    }
    Ok(rows)
}

/// Plans a statement for `GetFlightInfo`, and runs it there if it writes
/// (an INSERT sent as a query, statement or prepared): clients do not read
/// the result of an INSERT, so its `DoGet` may never come. In a task of its
/// own, so that it completes even if the client drops the call. Returns the
/// statement and, for an INSERT, the rows written.
async fn plan_running_writes(
    engine: &Arc<QueryEngine>,
    sql: &str,
    database: Option<String>,
    params: Vec<Vec<ScalarValue>>,
    who: Principal,
) -> Result<(tocsin_query::Statement, Option<u64>), Status> {
    let (engine, sql) = (Arc::clone(engine), sql.to_string());
    tokio::spawn(async move {
        // With its parameters: the schema announced is the one `DoGet`
        // sends (`SELECT $1` has the bound value's type).
        let stmt = engine
            .describe_with_params(&sql, database.as_deref(), params.first().map(Vec::as_slice), Some(&who))
            .await
            .map_err(status)?;
        let written = if stmt.writes {
            Some(update_rows(&engine, &sql, database.as_deref(), params, &who).await? as u64)
        } else {
            query_params(params)?;
            None
        };
        Ok((stmt, written))
    })
    .await
    .map_err(|e| Status::internal(format!("planning task failed: {e}")))?
}

/// The answer of an INSERT that already ran: its row count.
fn count_batch(n: u64) -> Result<Response<DoGetStream>, Status> {
    let schema = Arc::new(Schema::new(vec![Field::new("count", arrow::datatypes::DataType::UInt64, false)]));
    one_batch(RecordBatch::try_new(schema, vec![Arc::new(arrow::array::UInt64Array::from(vec![n]))]))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An audit entry waiting for its outcome.
struct Pending {
    audit: Arc<AuditLog>,
    entry: AuditEntry,
    started: std::time::Instant,
}

impl Pending {
    /// Records the outcome: `rows` returned or written, or the error.
    fn finish(mut self, rows: Option<u64>, result: Result<(), &Status>) {
        let (outcome, status, detail) = match result {
            Ok(()) => ("ok", 200, String::new()),
            Err(s) => (
                match s.code() {
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "denied",
                    _ => "error",
                },
                http_status(s.code()),
                s.message().to_string(),
            ),
        };
        self.entry.outcome = outcome.into();
        self.entry.status = status;
        self.entry.detail = detail;
        self.entry.rows = rows;
        self.entry.duration_us = self.started.elapsed().as_micros() as u64;
        self.audit.record(self.entry);
    }

    /// Records the error and hands it back.
    fn failed(self, e: Status) -> Status {
        self.finish(None, Err(&e));
        e
    }
}

/// The HTTP status a gRPC code stands for in audit entries.
fn http_status(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::Ok => 200,
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::NotFound => 404,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => 400,
        tonic::Code::AlreadyExists | tonic::Code::Aborted => 409,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::Cancelled => 499,
        tonic::Code::Unimplemented => 501,
        tonic::Code::Unavailable => 503,
        tonic::Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// A query's result stream that completes its audit entry when it ends:
/// with the rows sent, the error that ended it, or `cancelled` when the
/// client stopped reading (the stream is dropped unfinished).
struct Audited {
    inner: datafusion::execution::SendableRecordBatchStream,
    pending: Option<Pending>,
    rows: u64,
}

impl Stream for Audited {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use futures::StreamExt as _;
        use std::task::Poll;
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                this.rows += batch.num_rows() as u64;
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Errors while running (memory limit, time-out, a bad cast)
                // are classed like planning errors, not as internal.
                let s = status(QueryError::from(e));
                if let Some(p) = this.pending.take() {
                    p.finish(Some(this.rows), Err(&s));
                }
                Poll::Ready(Some(Err(FlightError::Tonic(Box::new(s)))))
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.finish(Some(this.rows), Ok(()));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.entry.outcome = "cancelled".into();
            p.entry.status = 499;
            p.entry.detail = format!("the client stopped reading after {} rows", self.rows);
            p.entry.rows = Some(self.rows);
            p.entry.duration_us = p.started.elapsed().as_micros() as u64;
            p.audit.record(p.entry);
        }
    }
}

/// The statement ticket: the SQL and its database, so that `DoGet` needs no
/// server-side state; sealed (see [`tocsin_auth::Signer`]) with whom it was
/// issued to and until when.
#[derive(serde::Serialize, serde::Deserialize)]
struct StatementHandle {
    sql: String,
    database: Option<String>,
    owner: String,
    /// Unix milliseconds.
    expires_ms: i64,
    /// An `INSERT` that clients sent as a query runs when it is planned
    /// (they may never fetch its result); the ticket then carries its count.
    #[serde(default)]
    count: Option<u64>,
}

impl FlightSql {
    pub(crate) fn new(
        query: Arc<QueryEngine>,
        auth: Arc<Auth>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, tocsin_auth::AuthError> {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "Tocsin");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, false);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        // A builder of fixed values does not fail.
        let info = b.build().unwrap_or_else(|_| SqlInfoDataBuilder::new().build().expect("empty sql info"));
        Ok(Self {
            query,
            auth,
            audit,
            tickets: tocsin_auth::Signer::random()?,
            prepared: Mutex::new((HashMap::new(), VecDeque::new())),
            next_id: AtomicU64::new(1),
            info,
        })
    }

    pub(crate) fn into_server(self, max_message_bytes: usize) -> FlightServiceServer<FlightSql> {
        use tonic::codec::CompressionEncoding;
        // Results are compressed when the client asks for it.
        FlightServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
    }

    /// Runs a query and streams its result; `pending` is completed when
    /// the stream ends.
    async fn run(
        &self,
        sql: &str,
        database: Option<&str>,
        params: Option<Vec<ScalarValue>>,
        who: &Principal,
        pending: Pending,
    ) -> Result<Response<DoGetStream>, Status> {
        let (schema, stream) = match self.query.stream_with_params(sql, database, params, Some(who)).await {
            Ok(started) => started,
            Err(e) => return Err(pending.failed(status(e))),
        };
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(Audited { inner: stream, pending: Some(pending), rows: 0 })
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// An audit entry of `who` doing `action` to `target`, to be completed
    /// with its outcome.
    fn pending(&self, who: Option<&Principal>, source: String, action: &str, target: &str) -> Pending {
        Pending {
            audit: Arc::clone(&self.audit),
            started: std::time::Instant::now(),
            entry: AuditEntry {
                actor: who.map_or_else(|| "unauthenticated".to_string(), |p| p.name.clone()),
                role: who.map(|p| p.role.name.clone()).unwrap_or_default(),
                source,
                interface: "flight".into(),
                action: action.into(),
                target: tocsin_auth::audit_statement(target),
                ..AuditEntry::default()
            },
        }
    }

    /// Opens a statement ticket of `who`.
    fn open_ticket(&self, ticket: &[u8], who: &Principal) -> Result<StatementHandle, Status> {
        let forged =
            || Status::invalid_argument("not a statement ticket of this server (altered, or issued before a restart)");
        let body = self.tickets.open(ticket).ok_or_else(forged)?;
        let h: StatementHandle = serde_json::from_slice(body).map_err(|_| forged())?;
        if h.owner != who.name {
            return Err(Status::permission_denied("this statement ticket was issued to another caller"));
        }
        if h.expires_ms < now_ms() {
            return Err(Status::invalid_argument(format!(
                "the statement ticket has expired (tickets are good for {} minutes): run the statement again",
                TICKET_LIFETIME.as_secs() / 60
            )));
        }
        Ok(h)
    }

    fn prepared_handle(handle: &[u8]) -> Result<u64, Status> {
        <[u8; 8]>::try_from(handle)
            .map(u64::from_be_bytes)
            .map_err(|_| Status::invalid_argument("not a prepared statement handle of this server"))
    }

    /// The prepared statement `handle` of `who`; another caller's is as
    /// unknown to them as a closed one.
    fn with_prepared<T>(
        &self,
        handle: &[u8],
        who: &Principal,
        f: impl FnOnce(&mut Prepared) -> T,
    ) -> Result<T, Status> {
        let id = Self::prepared_handle(handle)?;
        let mut p = self.prepared.lock();
        let stmt = p.0.get_mut(&id).filter(|s| s.owner == who.name).ok_or_else(|| {
            Status::not_found("prepared statement is closed or unknown (the server keeps at most 10000 open)")
        })?;
        Ok(f(stmt))
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        // The login of Flight SQL clients (ADBC's username and password):
        // `authorization: Basic` with a user's password yields a session
        // token; with a token as the password (or `Bearer`), the token
        // itself. Either comes back as the bearer the client sends on every
        // later call.
        let header = request.metadata().get("authorization").map(|v| {
            v.to_str()
                .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))
                .map(str::to_string)
        });
        let credentials = match header.transpose()? {
            Some(h) => Credentials::from_authorization(&h).map_err(crate::guard::grpc_status)?,
            None => Credentials::None,
        };
        let target = match &credentials {
            Credentials::Basic { user, .. } if credentials.is_password() => {
                format!("user {}", tocsin_auth::shown_user(user))
            }
            _ => String::new(),
        };
        let pending = self.pending(None, crate::guard::grpc_source(request.extensions()), "login", &target);
        let login = match &credentials {
            Credentials::Basic { user, password } if credentials.is_password() && self.auth.enabled() => {
                let (auth, user, password) = (Arc::clone(&self.auth), user.clone(), password.clone());
                tokio::task::spawn_blocking(move || auth.login(&user, &password))
                    .await
                    .map_err(|e| Status::internal(format!("login failed: {e}")))?
                    .map(|(who, session, _)| (who, Some(session)))
            }
            _ => self.auth.authenticate(&credentials).map(|who| {
                let bearer = match &credentials {
                    Credentials::Token(t) => Some(t.clone()),
                    Credentials::Basic { user, password } => {
                        Some(if password.is_empty() { user.clone() } else { password.clone() })
                    }
                    Credentials::None => None,
                };
                (who, bearer)
            }),
        }
        .map_err(crate::guard::grpc_status);
        let mut pending = pending;
        if let Ok((who, _)) = &login {
            pending.entry.actor.clone_from(&who.name);
            pending.entry.role.clone_from(&who.role.name);
        }
        pending.finish(None, login.as_ref().map(|_| ()));
        let (_, bearer) = login?;
        let out =
            futures::stream::once(async { Ok(HandshakeResponse { protocol_version: 0, payload: Vec::new().into() }) });
        let mut response = Response::new(Box::pin(out) as Pin<Box<dyn Stream<Item = _> + Send>>);
        if let Some(t) = bearer.filter(|_| self.auth.enabled())
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = caller(&request)?;
        let database = database(request.metadata());
        let pending = self.pending(Some(&who), crate::guard::grpc_source(request.extensions()), "sql", &query.query);
        // A query is audited when it runs (`DoGet`); an INSERT runs here.
        let (stmt, count) =
            match plan_running_writes(&self.query, &query.query, database.clone(), Vec::new(), who.clone()).await {
                Ok((stmt, Some(n))) => {
                    pending.finish(Some(n), Ok(()));
                    (stmt, Some(n))
                }
                Ok(planned) => planned,
                Err(e) => return Err(pending.failed(e)),
            };
        let schema = stmt.schema;
        let expires_ms = now_ms().saturating_add(TICKET_LIFETIME.as_millis() as i64);
        let handle = StatementHandle { sql: query.query, database, owner: who.name.clone(), expires_ms, count };
        let body = serde_json::to_vec(&handle).map_err(|e| Status::internal(e.to_string()))?;
        let ticket = TicketStatementQuery { statement_handle: self.tickets.seal(&body).into() };
        flight_info(&hydrated(&schema), ticket.as_any(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = caller(&request)?;
        let source = crate::guard::grpc_source(request.extensions());
        let h = match self.open_ticket(&ticket.statement_handle, &who) {
            Ok(h) => h,
            // The target is what the ticket would run if it were genuine.
            Err(e) => {
                let h = &ticket.statement_handle;
                let sql = [h.get(32..).unwrap_or_default(), h]
                    .iter()
                    .find_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("sql").and_then(|s| s.as_str()).map(str::to_string))
                    .unwrap_or_default();
                return Err(self.pending(Some(&who), source, "sql (ticket)", &sql).failed(e));
            }
        };
        if let Some(n) = h.count {
            return count_batch(n);
        }
        let pending = self.pending(Some(&who), source, "sql", &h.sql);
        self.run(&h.sql, h.database.as_deref(), None, &who, pending).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = caller(&request)?;
        let database = database(request.metadata());
        let stmt = match self.query.describe(&query.query, database.as_deref(), Some(&who)).await {
            Ok(stmt) => stmt,
            // A statement that cannot be prepared is audited (it never runs).
            Err(e) => {
                let pending = self.pending(
                    Some(&who),
                    crate::guard::grpc_source(request.extensions()),
                    "sql (prepare)",
                    &query.query,
                );
                return Err(pending.failed(status(e)));
            }
        };
        let (schema, params) = (stmt.schema, stmt.params);
        let param_schema = Schema::new(
            params
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("${}", i + 1), t.clone(), true))
                .collect::<Vec<_>>(),
        );
        // Random, so that handles are not guessed (they are also bound to
        // their owner).
        let id = tocsin_auth::random_u64().map_err(crate::guard::grpc_status)?
            ^ self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = self.prepared.lock();
            let owner = who.name.clone();
            let types = params.clone();
            p.0.insert(id, Prepared { owner, sql: query.query, database, types, params: Vec::new(), written: None });
            p.1.push_back(id);
            let mut bytes: usize = p.0.values().map(|s| s.sql.len()).sum();
            while p.1.len() > MAX_PREPARED || (bytes > MAX_PREPARED_BYTES && p.1.len() > 1) {
                if let Some(old) = p.1.pop_front()
                    && let Some(gone) = p.0.remove(&old)
                {
                    bytes -= gone.sql.len();
                    tocsin_storage::refusals::refused("max_prepared_statements");
                }
            }
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: id.to_be_bytes().to_vec().into(),
            dataset_schema: ipc_schema(&hydrated(&schema))?,
            parameter_schema: ipc_schema(&param_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let who = caller(&request)?;
        let types = self.with_prepared(&query.prepared_statement_handle, &who, |p| p.types.clone())?;
        // Several rows are kept for an INSERT (run once per row); a query
        // refuses them when it runs.
        let rows = parameter_rows(request.into_inner(), &types).await?;
        if rows.is_empty() {
            return Err(Status::invalid_argument("no parameter values were sent"));
        }
        self.with_prepared(&query.prepared_statement_handle, &who, |p| p.params = rows)?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(query.prepared_statement_handle) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, database, params) = self.with_prepared(&cmd.prepared_statement_handle, &caller(&request)?, |p| {
            (p.sql.clone(), p.database.clone(), p.params.clone())
        })?;
        let who = caller(&request)?;
        let pending = self.pending(Some(&who), crate::guard::grpc_source(request.extensions()), "sql (prepared)", &sql);
        // A query is audited when it runs (`DoGet`); an INSERT runs here.
        let (stmt, written) = match plan_running_writes(&self.query, &sql, database, params, who.clone()).await {
            Ok((stmt, Some(n))) => {
                pending.finish(Some(n), Ok(()));
                (stmt, Some(n))
            }
            Ok(planned) => planned,
            Err(e) => return Err(pending.failed(e)),
        };
        if written.is_some() {
            self.with_prepared(&cmd.prepared_statement_handle, &who, |p| p.written = written)?;
        }
        flight_info(&hydrated(&stmt.schema), cmd.as_any(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = caller(&request)?;
        let (sql, database, params, written) = self.with_prepared(&cmd.prepared_statement_handle, &who, |p| {
            (p.sql.clone(), p.database.clone(), p.params.clone(), p.written.take())
        })?;
        if let Some(n) = written {
            return count_batch(n);
        }
        let pending = self.pending(Some(&who), crate::guard::grpc_source(request.extensions()), "sql (prepared)", &sql);
        let params = match query_params(params) {
            Ok(p) => p,
            Err(e) => return Err(pending.failed(e)),
        };
        self.run(&sql, database.as_deref(), params, &who, pending).await
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = caller(&request)?;
        let (sql, database, types, params) = self.with_prepared(&cmd.prepared_statement_handle, &who, |p| {
            (p.sql.clone(), p.database.clone(), p.types.clone(), p.params.clone())
        })?;
        let pending = self.pending(Some(&who), crate::guard::grpc_source(request.extensions()), "sql (prepared)", &sql);
        // Parameter rows sent with the update (ADBC's `executemany`, or
        // `bind` then `execute_update`) run it once each; without any, the
        // rows bound before.
        let rows = match parameter_rows(request.into_inner(), &types).await {
            Ok(rows) if rows.is_empty() => params,
            Ok(rows) => rows,
            Err(e) => return Err(pending.failed(e)),
        };
        let ran = update_rows(&self.query, &sql, database.as_deref(), rows, &who).await;
        match ran {
            Ok(n) => {
                pending.finish(u64::try_from(n).ok(), Ok(()));
                Ok(n)
            }
            Err(e) => Err(pending.failed(e)),
        }
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let who = caller(&request)?;
        let id = Self::prepared_handle(&query.prepared_statement_handle)?;
        let mut p = self.prepared.lock();
        if p.0.get(&id).is_some_and(|s| s.owner == who.name) {
            p.0.remove(&id);
            p.1.retain(|x| *x != id);
        }
        Ok(())
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = caller(&request)?;
        let database = database(request.metadata());
        let pending = self.pending(Some(&who), crate::guard::grpc_source(request.extensions()), "sql", &ticket.query);
        match update(&self.query, &ticket.query, database.as_deref(), None, &who).await {
            Ok(n) => {
                pending.finish(u64::try_from(n).ok(), Ok(()));
                Ok(n)
            }
            Err(e) => Err(pending.failed(e)),
        }
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.into_builder().schema(), query.as_any(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(tocsin_query::names::CATALOG);
        one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.clone().into_builder().schema(), query.as_any(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = caller(&request)?;
        let mut b = query.into_builder();
        let mut names: Vec<String> = self
            .query
            .catalog_tables()
            .await
            .into_iter()
            .filter(|(s, t, ..)| who.check_table(Permission::Query, s, t).is_ok())
            .map(|(s, ..)| s)
            .collect();
        names.extend([tocsin_query::names::DEFAULT_DATABASE.to_string()]);
        names.sort();
        names.dedup();
        for s in names {
            b.append(tocsin_query::names::CATALOG, s);
        }
        one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.clone().into_builder().schema(), query.as_any(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = caller(&request)?;
        let mut b = query.into_builder();
        for (schema_name, table, schema, kind) in self.query.catalog_tables().await {
            // Only the tables the caller may read are listed.
            if who.check_table(Permission::Query, &schema_name, &table).is_err() {
                continue;
            }
            b.append(tocsin_query::names::CATALOG, schema_name, table, kind, &hydrated(&schema))
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.into_builder().schema(), query.as_any(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append("SYSTEM TABLE");
        b.append("TABLE");
        one_batch(b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(query.clone().into_builder(&self.info).schema().as_ref(), query.as_any(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        one_batch(query.into_builder(&self.info).build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
