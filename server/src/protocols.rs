//! The write endpoints of other systems' protocols, so that collectors send
//! to Tocsin unchanged:
//!
//! - `POST /api/v1/write`: Prometheus remote_write v1 (snappy protobuf);
//!   `?db=` picks the database (default `public`).
//! - `POST /api/v2/write?bucket=DB&precision=ns|us|ms|s`: InfluxDB 2 line
//!   protocol (the bucket is the database; a `db/rp` bucket uses `db`).
//! - `POST /write?db=DB&precision=n|u|ms|s|m|h`: InfluxDB 1 line protocol.
//!
//! - `POST /v1/metrics`, `POST /v1/logs`, `POST /v1/traces`: OTLP over HTTP with protobuf
//!   (`application/x-protobuf`) or JSON (`application/json`) bodies. The
//!   answer is the export response in the request's encoding, with partial
//!   success when some data points or records were refused.
//!
//! - `POST /loki/api/v1/push`: Loki's push API, snappy protobuf (Promtail,
//!   Alloy, Fluent Bit, Vector) or JSON, into `logs`; the database is the
//!   `X-Scope-OrgID` tenant, else `?db=`, else `public`.
//!
//! - `POST /_bulk`, `POST /{index}/_bulk`: Elasticsearch's bulk API
//!   (Logstash, Filebeat, Fluent Bit, Vector, the Elasticsearch clients):
//!   each document a log event of the table named after its index; `?db=`
//!   picks the database.
//!
//! Line protocol and OTLP bodies may be compressed (`Content-Encoding:
//! gzip` or `zstd`); the decompressed size is bounded by
//! `limits.max_request_bytes` too. Other encodings are `415`. Remote_write
//! bodies are snappy, as its specification says; another declared encoding is `415`.
//! Success is `204 No Content`. A line that cannot be parsed refuses the
//! whole request with `400` naming the line and column; points refused by
//! storage (a field type that conflicts with the table, a bad name) are a
//! partial write: the others are stored and the answer is `400` with
//! `partial write: ... dropped=N`, as InfluxDB answers. A full write buffer
//! is `503` (clients retry); bodies over `limits.max_request_bytes`
//! (compressed or not) are `413`.

use std::collections::HashMap;
use std::io::Read;

use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tocsin_auth::Principal;
use tocsin_ingest::line::{self, Precision};
use tocsin_ingest::{IngestError, prom};
use tocsin_proto::v1::WriteResponse;
use tocsin_proto::wire::WireBound;

use crate::http::AppState;

/// Which dialect answers: the error body shapes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Prometheus,
    InfluxV1,
    InfluxV2,
}

#[cfg(test)]
pub(crate) const DIALECTS: [Dialect; 3] = [Dialect::Prometheus, Dialect::InfluxV1, Dialect::InfluxV2];

fn error(dialect: Dialect, status: StatusCode, message: String) -> Response {
    let body = match dialect {
        Dialect::Prometheus => return (status, message).into_response(),
        Dialect::InfluxV1 => json!({ "error": message }),
        Dialect::InfluxV2 => {
            let code = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "request too large",
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                StatusCode::TOO_MANY_REQUESTS => "too many requests",
                s if s.is_server_error() => "internal error",
                _ => "invalid",
            };
            json!({ "code": code, "message": message })
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A refused write: its class's status (`tocsin_storage::errors`), and
/// `Retry-After` when the client may retry (the wait a rate limit needs).
pub(crate) fn ingest_error(dialect: Dialect, e: IngestError) -> Response {
    use tocsin_storage::errors::Classify as _;
    let class = e.class();
    let status = StatusCode::from_u16(class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = match &e {
        IngestError::RateLimited(r) => Some(r.retry_after_secs()),
        _ => class.retry_after().then_some(1),
    };
    let mut r = error(dialect, status, e.to_string());
    if let Some(secs) = retry_after
        && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// 204, or 400 with the first refusal and how many points were dropped.
fn written(dialect: Dialect, resp: WriteResponse, what: &str) -> Response {
    match resp.rejected.first() {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(first) => error(
            dialect,
            StatusCode::BAD_REQUEST,
            format!(
                "partial write: {} ({what} {}) dropped={}",
                first.reason,
                first.index + u32::from(dialect != Dialect::Prometheus),
                resp.rejected.len()
            ),
        ),
    }
}

pub(crate) async fn remote_write(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let d = Dialect::Prometheus;
    app.ingest.metrics.remote_write_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"snappy")) {
        let enc = tocsin_auth::clip(enc.to_str().unwrap_or("?"));
        return error(
            d,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("remote_write bodies are snappy-compressed; Content-Encoding {enc:?} is not supported"),
        );
    }
    let decoded = match prom::decode(&body, app.max_request_bytes) {
        Ok(x) => x,
        Err(e @ prom::RemoteWriteError::TooLarge { .. }) => {
            return error(d, StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        Err(e) => return error(d, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let db = params.get("db").map_or("public", String::as_str);
    match app.ingest.write_tables(&who, db, decoded.writes, decoded.rejected).await {
        Ok(resp) => written(d, resp, "series"),
        Err(e) => ingest_error(d, e),
    }
}

pub(crate) async fn influx_v1_write(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let db = params.get("db").cloned().unwrap_or_default();
    line_protocol(app, &who, Dialect::InfluxV1, db, params.get("precision").map(String::as_str), &headers, body).await
}

pub(crate) async fn influx_v2_write(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(bucket) = params.get("bucket").filter(|b| !b.is_empty()) else {
        return error(Dialect::InfluxV2, StatusCode::BAD_REQUEST, "bucket is required (?bucket=DATABASE)".into());
    };
    let db = bucket.split('/').next().unwrap_or_default().to_string();
    line_protocol(app, &who, Dialect::InfluxV2, db, params.get("precision").map(String::as_str), &headers, body).await
}

async fn line_protocol(
    app: AppState,
    who: &Principal,
    d: Dialect,
    db: String,
    precision: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    app.ingest.metrics.line_protocol_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(precision) = Precision::parse(precision.unwrap_or("")) else {
        return error(
            d,
            StatusCode::BAD_REQUEST,
            format!("unknown precision {:?}; use ns, us, ms, s (or n, u, m, h)", precision.unwrap_or("")),
        );
    };
    let raw = match decoded_body(app.max_request_bytes, headers, body) {
        Ok(raw) => raw,
        Err((status, message)) => return error(d, status, message),
    };
    let text = match std::str::from_utf8(&raw) {
        Ok(t) => t,
        Err(e) => return error(d, StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}")),
    };
    let parsed = match line::parse(text, precision, tocsin_ingest::now_ns(), &app.storage.config().limits) {
        Ok(p) => p,
        Err(e) => return error(d, StatusCode::BAD_REQUEST, format!("unable to parse points: {e}")),
    };
    if parsed.points == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    let db = if db.is_empty() { "public".to_string() } else { db };
    match app.ingest.write_grouped(who, &db, parsed.writes, parsed.rejected, &parsed.members).await {
        Ok(resp) => written(d, resp, "line"),
        Err(e) => ingest_error(d, e),
    }
}

/// The body, decompressed as `Content-Encoding` says (`gzip` or `zstd`),
/// within the request size limit. Any other encoding is `415`, naming it.
fn decoded_body(limit: usize, headers: &HeaderMap, body: Bytes) -> Result<Bytes, (StatusCode, String)> {
    let limit = limit as u64;
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let (name, reader): (&str, Box<dyn Read + '_>) = match encoding.as_deref() {
        None | Some("" | "identity") => return Ok(body),
        // Every member: a body of concatenated gzip members is one body.
        Some("gzip" | "x-gzip") => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(&body[..]))),
        Some("zstd") => match zstd::stream::read::Decoder::new(&body[..]) {
            Ok(d) => ("zstd", Box::new(d)),
            Err(e) => return Err((StatusCode::BAD_REQUEST, format!("body is not valid zstd: {e}"))),
        },
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding {:?} is not supported; send gzip, zstd or an uncompressed body",
                    tocsin_auth::clip(other)
                ),
            ));
        }
    };
    let mut out = Vec::new();
    match reader.take(limit + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > limit => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, format!("decompressed body is over the limit of {limit} bytes")))
        }
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("body is not valid {name}: {e}"))),
    }
}

/// Whether the body is JSON (`Content-Type: application/json...`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// How an OTLP/HTTP body is encoded; the answer uses the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtlpEncoding {
    Protobuf,
    Json,
}

/// Runs the CPU work of a request body (decompressing, decoding) on a
/// blocking thread: a few large bodies on the async workers stalled every
/// other request, `/health` included, for seconds on 2 cores.
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, (StatusCode, String)> + Send + 'static,
) -> Result<T, (StatusCode, String)> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, format!("decoding the body failed: {e}"))))
}

/// The body of an OTLP/HTTP export, decompressed, and its encoding.
fn otlp_body(limit: usize, headers: &HeaderMap, body: Bytes) -> Result<(Bytes, OtlpEncoding), (StatusCode, String)> {
    let encoding = if is_json(headers) { OtlpEncoding::Json } else { OtlpEncoding::Protobuf };
    Ok((decoded_body(limit, headers, body)?, encoding))
}

/// Decodes an export request (`message` is its protobuf name, for JSON;
/// `items` where its records or points are, to count them first).
fn otlp_request<M: prost::Message + Default + WireBound>(
    raw: &[u8],
    encoding: OtlpEncoding,
    message: &'static str,
) -> Result<M, (StatusCode, String)> {
    use tocsin_ingest::otlp::MAX_JSON_OBJECTS;
    let short = message.rsplit('.').next().unwrap_or(message);
    // Counted before decoding: decoding makes each record or point a
    // struct of hundreds of bytes, however few it takes on the wire.
    let too_many = match encoding {
        OtlpEncoding::Protobuf => M::BOUND.and_then(|b| b.check(raw)),
        OtlpEncoding::Json => Some(raw.iter().filter(|b| **b == b'{').count())
            .filter(|n| *n > MAX_JSON_OBJECTS)
            .map(|n| format!("the export holds {n} JSON objects; at most {MAX_JSON_OBJECTS} per request")),
    };
    if let Some(reason) = too_many {
        tocsin_storage::refusals::refused("max_otlp_items");
        return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("{reason}: send smaller batches")));
    }
    match encoding {
        OtlpEncoding::Protobuf => {
            M::decode(raw).map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not an OTLP {short}: {e}")))
        }
        OtlpEncoding::Json => {
            tocsin_ingest::otlp_json::decode(message, raw).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
        }
    }
}

/// The export response in the request's encoding.
fn otlp_response<M: prost::Message>(msg: &M, encoding: OtlpEncoding, message: &'static str) -> Response {
    match encoding {
        OtlpEncoding::Protobuf => protobuf(msg),
        OtlpEncoding::Json => match tocsin_ingest::otlp_json::encode(message, msg) {
            Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
    }
}

fn protobuf(msg: &impl prost::Message) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], msg.encode_to_vec()).into_response()
}

/// The database of an OTLP/HTTP export: the `x-tocsin-database` header,
/// else `?db=`, else `public`.
fn otlp_database(headers: &HeaderMap, params: &HashMap<String, String>) -> String {
    headers
        .get(tocsin_ingest::otlp::DATABASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("db").cloned())
        .unwrap_or_default()
}

/// Errors as plain text (OTLP/HTTP clients log the body); 503 is retried.
fn otlp_error(e: IngestError) -> Response {
    ingest_error(Dialect::Prometheus, e)
}

/// An export's body decompressed and decoded off the async workers, and
/// its encoding (the answer's).
async fn otlp_decode<M: prost::Message + Default + WireBound + 'static>(
    app: &AppState,
    headers: &HeaderMap,
    body: Bytes,
    message: &'static str,
) -> Result<(M, OtlpEncoding), (StatusCode, String)> {
    let (limit, h) = (app.max_request_bytes, headers.clone());
    off_workers(move || {
        let (raw, encoding) = otlp_body(limit, &h, body)?;
        Ok((otlp_request(&raw, encoding, message)?, encoding))
    })
    .await
}

const OTLP_METRICS_REQUEST: &str = "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest";
const OTLP_METRICS_RESPONSE: &str = "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse";
const OTLP_LOGS_REQUEST: &str = "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest";
const OTLP_LOGS_RESPONSE: &str = "opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse";
const OTLP_TRACES_REQUEST: &str = "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest";
const OTLP_TRACES_RESPONSE: &str = "opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse";

pub(crate) async fn otlp_metrics(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    let decoded = otlp_decode::<ExportMetricsServiceRequest>(&app, &headers, body, OTLP_METRICS_REQUEST);
    let (req, encoding) = match decoded.await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match app.ingest.otlp_metrics(&who, &otlp_database(&headers, &params), req).await {
        Ok(resp) => otlp_response(&resp, encoding, OTLP_METRICS_RESPONSE),
        Err(e) => otlp_error(e),
    }
}

pub(crate) async fn otlp_logs(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use tocsin_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
    let decoded = otlp_decode::<ExportLogsServiceRequest>(&app, &headers, body, OTLP_LOGS_REQUEST);
    let (req, encoding) = match decoded.await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match app.ingest.otlp_logs(&who, &otlp_database(&headers, &params), req).await {
        Ok(resp) => otlp_response(&resp, encoding, OTLP_LOGS_RESPONSE),
        Err(e) => otlp_error(e),
    }
}

pub(crate) async fn otlp_traces(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use tocsin_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
    let decoded = otlp_decode::<ExportTraceServiceRequest>(&app, &headers, body, OTLP_TRACES_REQUEST);
    let (req, encoding) = match decoded.await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match app.ingest.otlp_traces(&who, &otlp_database(&headers, &params), req).await {
        Ok(resp) => otlp_response(&resp, encoding, OTLP_TRACES_RESPONSE),
        Err(e) => otlp_error(e),
    }
}

/// Loki's push API. Success is `204`; entries refused (while decoding or by
/// storage) are a partial write: the others are stored and the answer is
/// `400` naming the first reason and the count, which Loki's clients log
/// and do not retry.
pub(crate) async fn loki_push(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use tocsin_ingest::loki::{self, LokiError};
    app.ingest.metrics.loki_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let is_json = is_json(&headers);
    if !is_json
        && let Some(enc) =
            headers.get(header::CONTENT_ENCODING).filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"snappy"))
    {
        let enc = tocsin_auth::clip(enc.to_str().unwrap_or("?"));
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Loki protobuf pushes are snappy-compressed; Content-Encoding {enc:?} is not supported (JSON pushes \
                 may be gzip or zstd)"
            ),
        )
            .into_response();
    }
    let (limit, h) = (app.max_request_bytes, headers.clone());
    let decoded = off_workers(move || {
        let now = tocsin_ingest::now_ns();
        Ok(if is_json {
            match decoded_body(limit, &h, body) {
                Ok(raw) => loki::from_json(&raw, now),
                Err(e) => return Err(e),
            }
        } else {
            loki::from_protobuf(&body, limit, now)
        })
    })
    .await;
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let decoded = match decoded {
        Ok(d) => d,
        Err(e @ (LokiError::TooLarge { .. } | LokiError::TooManyEntries { .. })) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let database = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("db").cloned())
        .unwrap_or_default();
    match app.ingest.loki(&who, &database, decoded).await {
        Ok((0, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((n, first)) => {
            (StatusCode::BAD_REQUEST, format!("partial write: {} dropped={n}", first.unwrap_or_default()))
                .into_response()
        }
        Err(e) => ingest_error(Dialect::Prometheus, e),
    }
}

pub(crate) async fn elastic_bulk(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(app, who, params, headers, body, None).await
}

pub(crate) async fn elastic_bulk_index(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Path(index): axum::extract::Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(app, who, params, headers, body, Some(index)).await
}

/// Elasticsearch's `_bulk`: `200` with one item per action (`201`, or the
/// item's error: `400`, `429` to retry), as Elasticsearch answers, so that
/// clients retry only what asks for it. A body that cannot be read as
/// action and document lines is `400` naming the line. Answers carry
/// `X-Elastic-Product: Elasticsearch`: the Elasticsearch clients (and
/// Beats) refuse a server without it.
async fn bulk(
    app: AppState,
    who: Principal,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    index: Option<String>,
) -> Response {
    use tocsin_ingest::elastic;
    app.ingest.metrics.elastic_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    let product = [(header::HeaderName::from_static("x-elastic-product"), "Elasticsearch")];
    let fail = |status: StatusCode, kind: &str, reason: String| {
        let body = json!({"error": {"type": kind, "reason": reason}, "status": status.as_u16()});
        (status, product.clone(), axum::Json(body)).into_response()
    };
    let (limit, h) = (app.max_request_bytes, headers.clone());
    let parsed = off_workers(move || {
        let raw = decoded_body(limit, &h, body)?;
        let lines = raw.iter().filter(|b| **b == b'\n').count() + 1;
        if lines > 2 * elastic::MAX_ACTIONS + 1 {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("at most {} actions per _bulk request; send smaller batches", elastic::MAX_ACTIONS),
            ));
        }
        elastic::parse(&raw, index.as_deref(), tocsin_ingest::now_ns())
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
    })
    .await;
    let parsed = match parsed {
        Ok(b) => b,
        Err((status, reason)) => {
            let kind =
                if status == StatusCode::PAYLOAD_TOO_LARGE { "request_entity_too_large" } else { "parse_exception" };
            return fail(status, kind, reason);
        }
    };
    let db = params.get("db").map_or("public", String::as_str);
    let items = app.ingest.elastic_bulk(&who, db, parsed).await;
    let errors = items.iter().any(|i| i.error.is_some());
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .map(|i| {
            let mut v = json!({"_index": i.index, "_id": i.id, "status": i.status});
            match i.error {
                None => {
                    v["result"] = json!("created");
                    v["_version"] = json!(1);
                }
                Some((kind, reason)) => v["error"] = json!({"type": kind, "reason": reason}),
            }
            json!({ i.action: v })
        })
        .collect();
    let body = json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items});
    (StatusCode::OK, product, axum::Json(body)).into_response()
}
