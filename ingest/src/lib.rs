//! gRPC ingest (`tocsin.v1.Ingest`): decodes columnar write requests,
//! converts them to storage writes, and answers with how many rows were
//! accepted and why each rejected item was rejected.
//!
//! Data enters as protobuf ([`tocsin_proto::v1`]) and leaves as
//! [`tocsin_storage::TableWrite`]s handed to [`tocsin_storage::Storage::write`];
//! the response is sent only when the accepted rows are durable.
//!
//! ```no_run
//! # fn f(storage: std::sync::Arc<tocsin_storage::Storage>) {
//! use tocsin_ingest::IngestService;
//! let service = IngestService::new(storage, Default::default()).into_server();
//! // tonic::transport::Server::builder().add_service(service)...
//! # }
//! ```

pub mod convert;
pub mod elastic;
pub mod errors;
pub mod follow;
pub mod line;
pub mod loki;
pub mod otlp;
pub mod otlp_json;
pub mod otlp_trace;
pub mod prom;
pub mod rate;
pub mod syslog;
pub mod tail;
pub mod wire;

#[cfg(test)]
mod generated_tests;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tocsin_proto::v1::ingest_server::{Ingest, IngestServer};
use tocsin_proto::v1::{
    Rejection, TailMessage, TailRequest, WriteLogsRequest, WriteRequest, WriteResponse, WriteRowsRequest,
    WriteSeriesRequest, tail_message, write_request,
};
use tocsin_storage::{Storage, StorageError, TableWrite};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use convert::EarlyRejection;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest accepted gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Longest accepted log message, in bytes.
    pub max_log_message_bytes: usize,
    /// Rows a second each caller (token, user) may write; 0: no limit.
    pub rows_per_second_per_caller: u64,
    /// Rows a caller may write at once above the rate; 0: ten seconds' worth.
    pub burst_rows_per_caller: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            max_log_message_bytes: 64 * 1024,
            rows_per_second_per_caller: 0,
            burst_rows_per_caller: 0,
        }
    }
}

/// Request counters for the server's `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub series_requests: AtomicU64,
    pub rows_requests: AtomicU64,
    pub logs_requests: AtomicU64,
    pub remote_write_requests: AtomicU64,
    pub line_protocol_requests: AtomicU64,
    pub otlp_requests: AtomicU64,
    pub loki_requests: AtomicU64,
    pub elastic_requests: AtomicU64,
    /// Syslog messages written to storage (each is one event).
    pub syslog_messages: AtomicU64,
    /// Syslog messages refused before storage (unparseable, broken framing).
    pub syslog_invalid: AtomicU64,
    /// Syslog messages read but not written (storage failed, or the server
    /// stopped while storage asked to wait).
    pub syslog_dropped: AtomicU64,
    /// Syslog TCP connections closed when accepted (over the limits).
    pub syslog_refused_connections: AtomicU64,
    /// Syslog TCP connections open now.
    pub syslog_open_connections: AtomicU64,
    pub stream_messages: AtomicU64,
    pub rows_accepted: AtomicU64,
    pub items_rejected: AtomicU64,
    pub failed_requests: AtomicU64,
}

#[derive(Clone)]
pub struct IngestService {
    storage: Arc<Storage>,
    config: IngestConfig,
    pub metrics: Arc<IngestMetrics>,
    pub tail: Arc<tail::TailHub>,
    backfill: Option<Arc<dyn follow::TailBackfill>>,
    rates: Arc<rate::CallerRates>,
}

/// Maps storage failures to gRPC status codes, in one place.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("request has no {0}")]
    Empty(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The caller may not write a table of the request (nothing was written).
    #[error(transparent)]
    Auth(#[from] tocsin_auth::AuthError),
    /// The caller wrote more rows a second than `limits.ingest_rows_per_second`.
    #[error(transparent)]
    RateLimited(#[from] tocsin_storage::errors::OverRate),
}

impl tocsin_storage::errors::Classify for IngestError {
    fn class(&self) -> tocsin_storage::errors::ErrorClass {
        use tocsin_storage::errors::ErrorClass;
        match self {
            IngestError::Empty(_) => ErrorClass::Invalid,
            IngestError::Storage(e) => e.class(),
            IngestError::Auth(e) => e.class(),
            IngestError::RateLimited(_) => ErrorClass::RateLimited,
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Status {
        errors::grpc_status(&e)
    }
}

/// Now, in nanoseconds since the Unix epoch: the time of points that carry
/// none, and the start of a tail's backfill window.
pub use tocsin_storage::now_ns;

pub use tocsin_auth::Principal;

fn database(db: &str) -> &str {
    if db.is_empty() { "public" } else { db }
}

impl IngestService {
    pub fn new(storage: Arc<Storage>, config: IngestConfig) -> Self {
        let tail: Arc<tail::TailHub> = Arc::default();
        storage.add_write_observer(Arc::clone(&tail) as Arc<dyn tocsin_storage::WriteObserver>);
        let rates = Arc::new(rate::CallerRates::new(config.rows_per_second_per_caller, config.burst_rows_per_caller));
        Self { storage, config, metrics: Arc::new(IngestMetrics::default()), tail, backfill: None, rates }
    }

    /// The per-caller row buckets, to share with other write paths (SQL
    /// `INSERT`).
    pub fn rates(&self) -> Arc<rate::CallerRates> {
        Arc::clone(&self.rates)
    }

    /// Lets `Tail` requests with `since_ms` backfill from storage.
    pub fn with_backfill(mut self, backfill: Arc<dyn follow::TailBackfill>) -> Self {
        self.backfill = Some(backfill);
        self
    }

    pub fn into_server(self) -> IngestServer<Self> {
        let limit = self.config.max_message_bytes;
        // Compressed messages (gzip, zstd) are bounded by what they
        // decompress to; answers (a tail's events) are compressed when the
        // client asks for it.
        IngestServer::new(self)
            .max_decoding_message_size(limit)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
    }

    /// Writes converted tables, counting and answering as every write of
    /// every protocol does (the HTTP protocols call it directly).
    pub async fn write_tables(
        &self,
        who: &Principal,
        db: &str,
        writes: Vec<TableWrite>,
        early: Vec<EarlyRejection>,
    ) -> Result<WriteResponse, IngestError> {
        self.write_grouped(who, db, writes, early, &convert::BlockMembers::new()).await
    }

    /// [`Self::write_tables`] for decoders that group several items into a
    /// block: a refused block reports every item in it (`members`).
    /// Every table is checked against `who` first: a request that writes
    /// one table the caller may not write is refused whole, naming it.
    pub async fn write_grouped(
        &self,
        who: &Principal,
        db: &str,
        writes: Vec<TableWrite>,
        early: Vec<EarlyRejection>,
        members: &convert::BlockMembers,
    ) -> Result<WriteResponse, IngestError> {
        who.check_database(tocsin_auth::Permission::Write, db)?;
        for w in &writes {
            who.check_table(tocsin_auth::Permission::Write, db, &w.table)?;
        }
        if self.rates.enabled() {
            let rows: usize = writes.iter().flat_map(|w| &w.blocks).map(|b| b.timestamps.len()).sum();
            if let Err(retry_after) = self.rates.take(&who.name, rows as u64, std::time::Instant::now()) {
                tocsin_storage::refusals::refused("ingest_rows_per_second");
                return Err(IngestError::RateLimited(tocsin_storage::errors::OverRate {
                    caller: who.name.clone(),
                    rate: self.rates.rate(),
                    retry_after,
                }));
            }
        }
        let mut resp = WriteResponse::default();
        resp.rejected.extend(early.into_iter().map(|r| Rejection { index: r.item, message: 0, reason: r.reason }));
        if writes.iter().any(|w| !w.blocks.is_empty()) {
            let outcome = self.storage.write(db, writes).await?;
            resp.accepted_rows = outcome.accepted_rows;
            for r in outcome.rejected {
                let reason = r.error.to_string();
                for &index in members.get(&r.item).map(Vec::as_slice).unwrap_or_default() {
                    resp.rejected.push(Rejection { index, message: 0, reason: reason.clone() });
                }
                resp.rejected.push(Rejection { index: r.item, message: 0, reason });
            }
        }
        resp.rejected.sort_by_key(|r| r.index);
        self.metrics.rows_accepted.fetch_add(resp.accepted_rows, Ordering::Relaxed);
        self.metrics.items_rejected.fetch_add(resp.rejected.len() as u64, Ordering::Relaxed);
        Ok(resp)
    }

    async fn write_one(&self, who: &Principal, req: write_request::Payload) -> Result<WriteResponse, IngestError> {
        match req {
            write_request::Payload::Series(r) => self.series(who, r).await,
            write_request::Payload::Rows(r) => self.rows(who, r).await,
            write_request::Payload::Logs(r) => self.logs(who, r).await,
        }
    }

    async fn series(&self, who: &Principal, req: WriteSeriesRequest) -> Result<WriteResponse, IngestError> {
        self.metrics.series_requests.fetch_add(1, Ordering::Relaxed);
        if req.series.is_empty() {
            return Err(IngestError::Empty("series"));
        }
        let db = database(&req.database).to_string();
        let (writes, early) = convert::series_to_writes(req);
        self.write_tables(who, &db, writes, early).await
    }

    async fn rows(&self, who: &Principal, req: WriteRowsRequest) -> Result<WriteResponse, IngestError> {
        self.metrics.rows_requests.fetch_add(1, Ordering::Relaxed);
        if req.series.is_empty() {
            return Err(IngestError::Empty("series"));
        }
        let db = database(&req.database).to_string();
        let (write, early) = convert::rows_to_write(req);
        self.write_tables(who, &db, vec![write], early).await
    }

    pub(crate) async fn logs(&self, who: &Principal, req: WriteLogsRequest) -> Result<WriteResponse, IngestError> {
        self.metrics.logs_requests.fetch_add(1, Ordering::Relaxed);
        if req.events.is_empty() {
            return Err(IngestError::Empty("events"));
        }
        let db = database(&req.database).to_string();
        // Live tail sees the accepted events through the storage observer.
        let limits = &self.storage.config().limits;
        let (write, early, members) = convert::logs_to_write(req, self.config.max_log_message_bytes, limits);
        let resp = self.write_grouped(who, &db, vec![write], early, &members).await?;
        Ok(resp)
    }

    fn counted(&self, r: Result<WriteResponse, IngestError>) -> Result<Response<WriteResponse>, Status> {
        if r.is_err() {
            self.metrics.failed_requests.fetch_add(1, Ordering::Relaxed);
        }
        r.map(Response::new).map_err(Status::from)
    }
}

/// The caller the server's guard put on the request; a request that did
/// not pass the guard is refused, not trusted.
pub fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the request passed no authentication guard"))
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = T> + Send>>;

/// The filter of a gRPC tail request.
pub fn tail_filter(req: TailRequest) -> tail::TailFilter {
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    tail::TailFilter {
        database: database(&req.database).to_string(),
        table: convert::log_table(&req.stream),
        services: req.services,
        hosts: req.hosts,
        min_level: nonempty(req.min_level).map(|l| convert::normalize_level(&l)),
        trace_id: nonempty(req.trace_id),
        text: nonempty(req.text),
        attributes: req.attributes.into_iter().map(|l| (l.name, l.value)).collect(),
        rows: Vec::new(),
    }
}

/// Default queue size of a tail subscriber.
pub const TAIL_BUFFER: usize = 4096;

#[tonic::async_trait]
impl Ingest for IngestService {
    type TailStream = BoxStream<Result<TailMessage, Status>>;

    async fn tail(&self, request: Request<TailRequest>) -> Result<Response<Self::TailStream>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let mut filter = tail_filter(req.clone());
        who.check_table(tocsin_auth::Permission::Tail, &filter.database, &filter.table).map_err(IngestError::from)?;
        filter.restrict_to(&who);
        // Clamped: the request must not choose how much memory a
        // subscriber may hold (the queue is also bounded in bytes).
        let buffer = if req.buffer == 0 { TAIL_BUFFER } else { (req.buffer as usize).min(tail::MAX_TAIL_BUFFER) };
        let since = (req.since_ms > 0).then(|| std::time::Duration::from_millis(req.since_ms));
        let items = follow::follow(&self.tail, &self.storage, self.backfill.as_ref(), filter, buffer, since)
            .await
            .map_err(|e| errors::grpc_status(&e))?;
        let stream = follow::while_current(items, who).map(|item| match item {
            Ok(tail::TailItem::Event(e)) => Ok(TailMessage { kind: Some(tail_message::Kind::Event(e)) }),
            Ok(tail::TailItem::Dropped(n)) => Ok(TailMessage { kind: Some(tail_message::Kind::Dropped(n)) }),
            Err(e) => Err(Status::internal(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write_series(&self, request: Request<WriteSeriesRequest>) -> Result<Response<WriteResponse>, Status> {
        let who = caller(&request)?;
        let r = self.series(&who, request.into_inner()).await;
        self.counted(r)
    }

    async fn write_rows(&self, request: Request<WriteRowsRequest>) -> Result<Response<WriteResponse>, Status> {
        let who = caller(&request)?;
        let r = self.rows(&who, request.into_inner()).await;
        self.counted(r)
    }

    async fn write_logs(&self, request: Request<WriteLogsRequest>) -> Result<Response<WriteResponse>, Status> {
        let who = caller(&request)?;
        let r = self.logs(&who, request.into_inner()).await;
        self.counted(r)
    }

    async fn write_stream(&self, request: Request<Streaming<WriteRequest>>) -> Result<Response<WriteResponse>, Status> {
        let who = caller(&request)?;
        let mut stream: BoxStream<Result<WriteRequest, Status>> = Box::pin(request.into_inner());
        let mut total = WriteResponse::default();
        let mut index: u32 = 0;
        while let Some(msg) = stream.next().await {
            // A broken stream ends the call; messages before it are durable
            // and counted in the error's message.
            let msg = msg.map_err(|s| {
                Status::new(
                    s.code(),
                    format!("{} (after {index} messages, {} rows accepted)", s.message(), total.accepted_rows),
                )
            })?;
            self.metrics.stream_messages.fetch_add(1, Ordering::Relaxed);
            let Some(payload) = msg.payload else {
                total.rejected.push(Rejection { index: 0, message: index, reason: "message has no payload".into() });
                index += 1;
                continue;
            };
            match self.write_one(&who, payload).await {
                Ok(resp) => {
                    total.accepted_rows += resp.accepted_rows;
                    total.rejected.extend(resp.rejected.into_iter().map(|r| Rejection { message: index, ..r }));
                }
                Err(e @ IngestError::Empty(_)) => {
                    total.rejected.push(Rejection { index: 0, message: index, reason: e.to_string() });
                }
                Err(e) => {
                    self.metrics.failed_requests.fetch_add(1, Ordering::Relaxed);
                    let s = Status::from(e);
                    return Err(Status::new(
                        s.code(),
                        format!(
                            "{} (at message {index}; {} rows accepted before it)",
                            s.message(),
                            total.accepted_rows
                        ),
                    ));
                }
            }
            index += 1;
        }
        Ok(Response::new(total))
    }
}
