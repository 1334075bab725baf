//! Arrow Flight SQL on the gRPC port: the protocol of Grafana's Flight SQL
//! data source, Grafana's InfluxDB data source in SQL mode, and the ADBC and
//! JDBC Flight SQL drivers.
//!
//! - Statements: `GetFlightInfo(CommandStatementQuery)` plans the SQL (its
//!   schema, no execution) and answers with a ticket that carries the SQL
//!   and the database; `DoGet` runs it and streams record batches as they
//!   are produced (a million-row result is never held whole).
//! - Prepared statements: created with their result and parameter schemas
//!   (`$1`, `$2`, ... placeholders), parameters bound with `DoPut` (one row),
//!   run with `DoGet`, closed by the client. At most [`MAX_PREPARED`] stay
//!   open; the oldest are dropped beyond that.
//! - Updates: `DoPut(CommandStatementUpdate)` runs `INSERT` and answers the
//!   row count.
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

struct Prepared {
    /// Who created it: only they may bind, run or close it.
    owner: String,
    sql: String,
    database: Option<String>,
    params: Option<Vec<ScalarValue>>,
    /// Rows written by an INSERT run at `GetFlightInfo`, for its `DoGet`.
    written: Option<u64>,
}

pub(crate) struct FlightSql {
    query: Arc<QueryEngine>,
    auth: Arc<Auth>,
    audit: Arc<AuditLog>,
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

/// Plans a statement for `GetFlightInfo`, and runs it there if it writes
/// (an INSERT sent as a query, statement or prepared): clients do not read
/// the result of an INSERT, so its `DoGet` may never come. In a task of its
/// own, so that it completes even if the client drops the call. Returns the
/// statement and, for an INSERT, the rows written.
async fn plan_running_writes(
    engine: &Arc<QueryEngine>,
    sql: &str,
    database: Option<String>,
    params: Option<Vec<ScalarValue>>,
    who: Principal,
) -> Result<(tocsin_query::Statement, Option<u64>), Status> {
    let (engine, sql) = (Arc::clone(engine), sql.to_string());
    tokio::spawn(async move {
        let stmt = engine.describe(&sql, database.as_deref(), Some(&who)).await.map_err(status)?;
        let written = if stmt.writes {
            Some(update(&engine, &sql, database.as_deref(), params, &who).await? as u64)
        } else {
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

/// The statement ticket: the SQL and its database, so that `DoGet` needs no
/// server-side state.
#[derive(serde::Serialize, serde::Deserialize)]
struct StatementHandle {
    sql: String,
    database: Option<String>,
    /// An `INSERT` that clients sent as a query runs when it is planned
    /// (they may never fetch its result); the ticket then carries its count.
    #[serde(default)]
    count: Option<u64>,
}

impl FlightSql {
    pub(crate) fn new(query: Arc<QueryEngine>, auth: Arc<Auth>, audit: Arc<AuditLog>) -> Self {
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
        Self {
            query,
            auth,
            audit,
            prepared: Mutex::new((HashMap::new(), VecDeque::new())),
            next_id: AtomicU64::new(1),
            info,
        }
    }

    pub(crate) fn into_server(self, max_message_bytes: usize) -> FlightServiceServer<FlightSql> {
        FlightServiceServer::new(self).max_decoding_message_size(max_message_bytes)
    }

    async fn run(
        &self,
        sql: &str,
        database: Option<&str>,
        params: Option<Vec<ScalarValue>>,
        who: &Principal,
    ) -> Result<Response<DoGetStream>, Status> {
        let (schema, stream) = self.query.stream_with_params(sql, database, params, Some(who)).await.map_err(status)?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            // Errors while running (memory limit, time-out, a bad cast) are
            // classed like planning errors, not as internal.
            .build(stream.map_err(|e| FlightError::Tonic(Box::new(status(QueryError::from(e))))))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// Audits one statement (or login) of `who`, with its outcome.
    fn audit(
        &self,
        who: Option<&Principal>,
        extensions: &tonic::Extensions,
        (action, sql): (&str, &str),
        started: std::time::Instant,
        result: Result<Option<u64>, &Status>,
    ) {
        let rows = *result.as_ref().unwrap_or(&None);
        let (outcome, status, detail) = match result {
            Ok(_) => ("ok", 200, String::new()),
            Err(s) if s.code() == tonic::Code::Unauthenticated => ("denied", 401, s.message().to_string()),
            Err(s) if s.code() == tonic::Code::PermissionDenied => ("denied", 403, s.message().to_string()),
            Err(s) if s.code() == tonic::Code::InvalidArgument => ("error", 400, s.message().to_string()),
            Err(s) => ("error", 500, s.message().to_string()),
        };
        self.audit.record(AuditEntry {
            actor: who.map_or_else(|| "unauthenticated".to_string(), |p| p.name.clone()),
            role: who.map(|p| p.role.name.clone()).unwrap_or_default(),
            source: crate::guard::grpc_source(extensions),
            interface: "flight".into(),
            action: action.into(),
            target: tocsin_auth::clip_to(sql, tocsin_auth::AUDIT_STATEMENT_BYTES).to_string(),
            outcome: outcome.into(),
            status,
            detail,
            duration_us: started.elapsed().as_micros() as u64,
            rows,
            ..AuditEntry::default()
        });
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
        let started = std::time::Instant::now();
        let target = match &credentials {
            Credentials::Basic { user, .. } if credentials.is_password() => format!("user {}", tocsin_auth::clip(user)),
            _ => String::new(),
        };
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
        let who = login.as_ref().ok().map(|(who, _)| who);
        self.audit(who, request.extensions(), ("login", &target), started, login.as_ref().map(|_| None));
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
        let started = std::time::Instant::now();
        let planned = plan_running_writes(&self.query, &query.query, database.clone(), None, who.clone()).await;
        let result = planned.as_ref().map(|(_, c)| *c);
        self.audit(Some(&who), request.extensions(), ("sql", &query.query), started, result);
        let (stmt, count) = planned?;
        let schema = stmt.schema;
        let handle = serde_json::to_vec(&StatementHandle { sql: query.query, database, count })
            .map_err(|e| Status::internal(e.to_string()))?;
        let ticket = TicketStatementQuery { statement_handle: handle.into() };
        flight_info(&hydrated(&schema), ticket.as_any(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let who = caller(&request)?;
        let h: StatementHandle = serde_json::from_slice(&ticket.statement_handle)
            .map_err(|_| Status::invalid_argument("not a statement ticket of this server"))?;
        if let Some(n) = h.count {
            return count_batch(n);
        }
        self.run(&h.sql, h.database.as_deref(), None, &who).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = caller(&request)?;
        let database = database(request.metadata());
        let stmt = self.query.describe(&query.query, database.as_deref(), Some(&who)).await.map_err(status)?;
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
            p.0.insert(id, Prepared { owner, sql: query.query, database, params: None, written: None });
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
        let batches: Vec<RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(request.into_inner().map_err(FlightError::from))
                .try_collect()
                .await
                .map_err(|e| Status::invalid_argument(format!("cannot read the parameters: {e}")))?;
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Err(Status::invalid_argument("no parameter values were sent"));
        };
        if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > 1 {
            return Err(Status::invalid_argument("bind one row of parameters to a query (several were sent)"));
        }
        let values = batch
            .columns()
            .iter()
            .map(|c: &ArrayRef| ScalarValue::try_from_array(c, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?;
        self.with_prepared(&query.prepared_statement_handle, &who, |p| p.params = Some(values))?;
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
        let started = std::time::Instant::now();
        let planned = plan_running_writes(&self.query, &sql, database, params, who.clone()).await;
        let result = planned.as_ref().map(|(_, c)| *c);
        self.audit(Some(&who), request.extensions(), ("sql (prepared)", &sql), started, result);
        let (stmt, written) = planned?;
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
        self.run(&sql, database.as_deref(), params, &who).await
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = caller(&request)?;
        let (sql, database, params) = self.with_prepared(&cmd.prepared_statement_handle, &who, |p| {
            (p.sql.clone(), p.database.clone(), p.params.clone())
        })?;
        update(&self.query, &sql, database.as_deref(), params, &who).await
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
        let started = std::time::Instant::now();
        let result = update(&self.query, &ticket.query, database.as_deref(), None, &who).await;
        let audited = result.as_ref().map(|n| u64::try_from(*n).ok());
        self.audit(Some(&who), request.extensions(), ("sql", &ticket.query), started, audited);
        result
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
