//! OTLP (OpenTelemetry) metrics and logs, over gRPC on the ingest port and
//! over HTTP/protobuf (`/v1/metrics`, `/v1/logs`). See docs/protocols.md for
//! the mapping; in short:
//!
//! - a gauge or sum is a table named after the metric, a row per data point,
//!   with a Float64 `value`; resource attributes and data point attributes
//!   are tags (the point's win on a clash);
//! - a histogram is three tables as Prometheus names them: `<name>_bucket`
//!   (tag `le`, cumulative counts, `+Inf` last), `<name>_count`, `<name>_sum`;
//!   a summary is `<name>` (tag `quantile`), `<name>_count`, `<name>_sum`;
//! - an exponential histogram is the same three tables, its buckets' upper
//!   bounds as `le` (see [`exponential_point`]);
//! - a log record is a row of `logs`: `service` and `host` from the resource
//!   (`service.name`, `host.name`), `level` from the severity, `message`
//!   from the body, `trace_id`/`span_id` in hex, and the record's and the
//!   remaining resource attributes in `attributes`.

use std::collections::HashMap;

use tocsin_proto::opentelemetry::proto::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use tocsin_proto::opentelemetry::proto::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tocsin_proto::opentelemetry::proto::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use tocsin_proto::opentelemetry::proto::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tocsin_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use tocsin_proto::opentelemetry::proto::metrics::v1::{metric, number_data_point};
use tocsin_proto::v1::{Label, LogEvent, WriteLogsRequest};

use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::convert::{EarlyRejection, TableWrites, value_block};
use crate::{IngestError, IngestService, Principal};

/// Text of an attribute value: strings as they are, numbers and booleans as
/// their text, bytes in hex, arrays and maps as JSON.
pub fn any_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => any_json(Some(other)).to_string(),
    }
}

pub(crate) fn any_json(v: Option<&any_value::Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        None => J::Null,
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|x| any_json(x.value.as_ref())).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|x| (x.key.clone(), any_json(x.value.as_ref().and_then(|v| v.value.as_ref()))))
                .collect(),
        ),
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Most attributes a resource, data point or log record may carry: the
/// OpenTelemetry SDKs' default attribute count limit.
pub const MAX_ATTRIBUTES: usize = 128;
/// Most bytes of attribute text one request may expand to. Resource
/// attributes are copied into every data point (and log record), so a small
/// request can ask for a great deal of memory: 56 KB once took 190 MB. A
/// collector's batch of 8,192 points with 30 labels of 50 bytes expands to
/// 12 MB.
pub const MAX_EXPANDED_BYTES: usize = 64 << 20;

/// Most log records, spans or data points one OTLP export may hold,
/// counted on the wire before decoding (each costs a struct of a few
/// hundred bytes however small it is on the wire).
pub const MAX_ITEMS: usize = tocsin_proto::wire::MAX_ITEMS;
/// Most JSON objects (`{`) one OTLP/HTTP JSON export may hold: a record is
/// a handful; each costs a few hundred bytes while read.
pub const MAX_JSON_OBJECTS: usize = 1 << 20;

/// Charges the expansion of one point or record against a request's budget.
#[derive(Debug)]
pub(crate) struct Expansion {
    left: usize,
}

impl Default for Expansion {
    fn default() -> Self {
        Self { left: MAX_EXPANDED_BYTES }
    }
}

impl Expansion {
    /// Charges `copies` copies of the resource's and the point's attributes,
    /// or says why the point is refused.
    pub(crate) fn charge(
        &mut self,
        resource: &[(String, String)],
        point: &[KeyValue],
        copies: usize,
    ) -> Result<(), String> {
        if resource.len() > MAX_ATTRIBUTES || point.len() > MAX_ATTRIBUTES {
            tocsin_storage::refusals::refused("max_otlp_attributes");
            return Err(format!(
                "{} resource attributes and {} of its own; at most {MAX_ATTRIBUTES} of each are accepted",
                resource.len(),
                point.len()
            ));
        }
        let resource_bytes: usize = resource.iter().map(|(k, v)| k.len() + v.len()).sum();
        let point_bytes: usize = point.iter().map(|a| a.key.len() + approx_len(a.value.as_ref())).sum();
        let bytes = (resource_bytes + point_bytes + 16).saturating_mul(copies.max(1));
        if bytes > self.left {
            tocsin_storage::refusals::refused("max_otlp_expanded_bytes");
            return Err(format!(
                "the request expands to more than {MAX_EXPANDED_BYTES} bytes of attributes (resource attributes \
                 are copied into every point); send fewer points per request or fewer resource attributes"
            ));
        }
        self.left -= bytes;
        Ok(())
    }
}

/// About how long an attribute value's text is, without building it.
fn approx_len(v: Option<&AnyValue>) -> usize {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.len(),
        Some(any_value::Value::BytesValue(b)) => 2 * b.len(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(|v| approx_len(Some(v)) + 1).sum::<usize>() + 2,
        Some(any_value::Value::KvlistValue(kv)) => {
            kv.values.iter().map(|a| a.key.len() + approx_len(a.value.as_ref()) + 4).sum::<usize>() + 2
        }
        _ => 24,
    }
}

pub(crate) fn attrs(kv: &[KeyValue]) -> impl Iterator<Item = (String, String)> + '_ {
    kv.iter().map(|a| (a.key.clone(), any_text(a.value.as_ref())))
}

/// Tags of a data point: the resource's attributes, then the point's (which
/// win on a clash), sorted by name.
fn tags(resource: &[(String, String)], point: &[KeyValue], extra: Option<(&str, String)>) -> Vec<(String, String)> {
    let mut map: HashMap<String, String> = resource.iter().cloned().collect();
    map.extend(attrs(point));
    if let Some((k, v)) = extra {
        map.insert(k.to_string(), v);
    }
    let mut v: Vec<(String, String)> = map.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    v.sort();
    v
}

fn time(ns: u64) -> Result<i64, String> {
    i64::try_from(ns).map_err(|_| format!("time_unix_nano {ns} is out of range"))
}

/// Metrics as storage writes; data points refused here (unsupported kinds,
/// bad times) are counted with the first reason.
#[derive(Debug, Default)]
pub struct MetricWrites {
    pub writes: TableWrites,
    pub rejected_points: i64,
    pub first_error: Option<String>,
    pub points: usize,
    expansion: Expansion,
}

impl MetricWrites {
    fn reject(&mut self, n: usize, reason: String) {
        self.rejected_points += n as i64;
        self.first_error.get_or_insert(reason);
    }

    fn push(&mut self, table: &str, tags: Vec<(String, String)>, ts: i64, v: f64) {
        let item = self.points as u32;
        self.points += 1;
        self.writes.push(table, value_block(item, tags, vec![ts], vec![v]));
    }
}

pub fn metrics_to_writes(req: ExportMetricsServiceRequest) -> MetricWrites {
    let mut out = MetricWrites::default();
    for rm in req.resource_metrics {
        let resource: Vec<(String, String)> = rm.resource.map(|r| attrs(&r.attributes).collect()).unwrap_or_default();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let name = m.name;
                match m.data {
                    Some(metric::Data::Gauge(g)) => {
                        number_points(&mut out, &name, &resource, g.data_points);
                    }
                    Some(metric::Data::Sum(s)) => {
                        number_points(&mut out, &name, &resource, s.data_points);
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for p in h.data_points {
                            let ts = match time(p.time_unix_nano) {
                                Ok(t) => t,
                                Err(e) => {
                                    out.reject(1, e);
                                    continue;
                                }
                            };
                            if p.bucket_counts.len() > MAX_BUCKETS {
                                out.reject(
                                    1,
                                    format!(
                                        "metric {name:?}: a histogram point has {} buckets; at most {MAX_BUCKETS} are \
                                         accepted",
                                        p.bucket_counts.len()
                                    ),
                                );
                                continue;
                            }
                            if let Err(e) = out.expansion.charge(&resource, &p.attributes, p.bucket_counts.len() + 2) {
                                out.reject(1, format!("metric {name:?}: {e}"));
                                continue;
                            }
                            if !p.bucket_counts.is_empty() && p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
                                out.reject(
                                    1,
                                    format!(
                                        "metric {name:?}: a histogram point has {} bucket counts for {} bounds \
                                         (expected bounds + 1)",
                                        p.bucket_counts.len(),
                                        p.explicit_bounds.len()
                                    ),
                                );
                                continue;
                            }
                            let mut cumulative = 0u64;
                            for (i, c) in p.bucket_counts.iter().enumerate() {
                                cumulative = cumulative.saturating_add(*c);
                                let le = p.explicit_bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                                let t = tags(&resource, &p.attributes, Some(("le", le)));
                                out.push(&format!("{name}_bucket"), t, ts, cumulative as f64);
                            }
                            let t = tags(&resource, &p.attributes, None);
                            out.push(&format!("{name}_count"), t.clone(), ts, p.count as f64);
                            if let Some(sum) = p.sum {
                                out.push(&format!("{name}_sum"), t, ts, sum);
                            }
                        }
                    }
                    Some(metric::Data::Summary(s)) => {
                        for p in s.data_points {
                            let ts = match time(p.time_unix_nano) {
                                Ok(t) => t,
                                Err(e) => {
                                    out.reject(1, e);
                                    continue;
                                }
                            };
                            if let Err(e) = out.expansion.charge(&resource, &p.attributes, p.quantile_values.len() + 2)
                            {
                                out.reject(1, format!("metric {name:?}: {e}"));
                                continue;
                            }
                            for q in &p.quantile_values {
                                let t = tags(&resource, &p.attributes, Some(("quantile", q.quantile.to_string())));
                                out.push(&name, t, ts, q.value);
                            }
                            let t = tags(&resource, &p.attributes, None);
                            out.push(&format!("{name}_count"), t.clone(), ts, p.count as f64);
                            out.push(&format!("{name}_sum"), t, ts, p.sum);
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(e)) => {
                        for p in e.data_points {
                            exponential_point(&mut out, &name, &resource, p);
                        }
                    }
                    None => {}
                }
            }
        }
    }
    out
}

/// Most buckets one histogram point may have (each is a row of
/// `<name>_bucket`): Prometheus' classic histograms have tens, the
/// OpenTelemetry SDKs' exponential ones at most 160 on each side.
pub const MAX_BUCKETS: usize = 1024;

/// Scales an exponential histogram may have (OTLP allows -10 to 20).
const SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// An exponential histogram point as Prometheus-style classic buckets:
/// `<name>_bucket` with `le` at each bucket's upper bound (negative buckets
/// first, from the most negative; the zero bucket at `zero_threshold`; the
/// positive buckets; `+Inf`), cumulative, then `<name>_count` and
/// `<name>_sum`, so that the same SQL reads both kinds. Bucket `i` of
/// scale `s` holds (2^(i·2^-s), 2^((i+1)·2^-s)].
fn exponential_point(
    out: &mut MetricWrites,
    name: &str,
    resource: &[(String, String)],
    p: tocsin_proto::opentelemetry::proto::metrics::v1::ExponentialHistogramDataPoint,
) {
    let ts = match time(p.time_unix_nano) {
        Ok(t) => t,
        Err(e) => return out.reject(1, e),
    };
    if !SCALES.contains(&p.scale) {
        return out.reject(
            1,
            format!("metric {name:?}: an exponential histogram point has scale {}; OTLP allows -10 to 20", p.scale),
        );
    }
    let (positive, negative) = (p.positive.unwrap_or_default(), p.negative.unwrap_or_default());
    let buckets = positive.bucket_counts.len() + negative.bucket_counts.len();
    if buckets > MAX_BUCKETS {
        return out.reject(
            1,
            format!("metric {name:?}: an exponential histogram point has {buckets} buckets; at most {MAX_BUCKETS} are accepted"),
        );
    }
    if let Err(e) = out.expansion.charge(resource, &p.attributes, buckets + 3) {
        return out.reject(1, format!("metric {name:?}: {e}"));
    }
    let width = 2f64.powi(-p.scale);
    let bound = |index: i64| (index as f64 * width).exp2();
    let table = format!("{name}_bucket");
    let mut cumulative = 0u64;
    let emit = |out: &mut MetricWrites, le: f64, cumulative: u64| {
        // A bound past f64's range is folded into +Inf.
        if le.is_finite() {
            let t = tags(resource, &p.attributes, Some(("le", le.to_string())));
            out.push(&table, t, ts, cumulative as f64);
        }
    };
    for (k, c) in negative.bucket_counts.iter().enumerate().rev() {
        cumulative = cumulative.saturating_add(*c);
        // Negative bucket i holds [-2^((i+1)·w), -2^(i·w)).
        emit(out, -bound(i64::from(negative.offset) + k as i64), cumulative);
    }
    cumulative = cumulative.saturating_add(p.zero_count);
    emit(out, p.zero_threshold.abs(), cumulative);
    for (k, c) in positive.bucket_counts.iter().enumerate() {
        cumulative = cumulative.saturating_add(*c);
        emit(out, bound(i64::from(positive.offset) + k as i64 + 1), cumulative);
    }
    let t = tags(resource, &p.attributes, Some(("le", "+Inf".to_string())));
    out.push(&table, t, ts, p.count.max(cumulative) as f64);
    let t = tags(resource, &p.attributes, None);
    out.push(&format!("{name}_count"), t.clone(), ts, p.count as f64);
    if let Some(sum) = p.sum {
        out.push(&format!("{name}_sum"), t, ts, sum);
    }
}

fn number_points(
    out: &mut MetricWrites,
    name: &str,
    resource: &[(String, String)],
    points: Vec<tocsin_proto::opentelemetry::proto::metrics::v1::NumberDataPoint>,
) {
    for p in points {
        let ts = match time(p.time_unix_nano) {
            Ok(t) => t,
            Err(e) => {
                out.reject(1, e);
                continue;
            }
        };
        let v = match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => {
                out.reject(1, format!("metric {name:?}: a data point has no value"));
                continue;
            }
        };
        if let Err(e) = out.expansion.charge(resource, &p.attributes, 1) {
            out.reject(1, format!("metric {name:?}: {e}"));
            continue;
        }
        out.push(name, tags(resource, &p.attributes, None), ts, v);
    }
}

/// Level names of OTLP severity numbers (1-24).
fn severity_level(n: i32) -> &'static str {
    match n {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => "",
    }
}

/// Log records as events, and the records refused (too many attributes, or
/// over the request's expansion budget) with the first reason.
#[derive(Debug, Default)]
pub struct LogEvents {
    pub events: Vec<LogEvent>,
    pub rejected: i64,
    pub first_error: Option<String>,
}

pub fn logs_to_events(req: ExportLogsServiceRequest, now_ns: i64) -> LogEvents {
    let mut out = LogEvents::default();
    let mut expansion = Expansion::default();
    for rl in req.resource_logs {
        let mut resource: Vec<(String, String)> =
            rl.resource.map(|r| attrs(&r.attributes).collect()).unwrap_or_default();
        let take = |res: &mut Vec<(String, String)>, key: &str| {
            res.iter().position(|(k, _)| k == key).map(|i| res.remove(i).1).unwrap_or_default()
        };
        let service = take(&mut resource, "service.name");
        let host = take(&mut resource, "host.name");
        for sl in rl.scope_logs {
            for r in sl.log_records {
                if let Err(e) = expansion.charge(&resource, &r.attributes, 1) {
                    out.rejected += 1;
                    out.first_error.get_or_insert(format!("log record: {e}"));
                    continue;
                }
                let ts = if r.time_unix_nano != 0 { r.time_unix_nano } else { r.observed_time_unix_nano };
                let ts = i64::try_from(ts).ok().filter(|t| *t > 0).unwrap_or(now_ns);
                let level = if r.severity_text.is_empty() {
                    severity_level(r.severity_number).to_string()
                } else {
                    r.severity_text.clone()
                };
                let mut attributes: Vec<Label> =
                    resource.iter().map(|(k, v)| Label { name: k.clone(), value: v.clone() }).collect();
                for (k, v) in attrs(&r.attributes) {
                    match attributes.iter_mut().find(|l| l.name == k) {
                        Some(l) => l.value = v,
                        None => attributes.push(Label { name: k, value: v }),
                    }
                }
                if !r.event_name.is_empty() {
                    attributes.push(Label { name: "event.name".into(), value: r.event_name.clone() });
                }
                out.events.push(LogEvent {
                    timestamp: ts,
                    service: service.clone(),
                    host: host.clone(),
                    level,
                    message: any_text(r.body.as_ref()),
                    trace_id: if r.trace_id.iter().all(|b| *b == 0) { String::new() } else { hex(&r.trace_id) },
                    span_id: if r.span_id.iter().all(|b| *b == 0) { String::new() } else { hex(&r.span_id) },
                    attributes,
                });
            }
        }
    }
    out
}

/// The header (HTTP) or metadata (gRPC) that picks the database an OTLP
/// export goes to (default `public`), as collectors set headers:
/// `OTEL_EXPORTER_OTLP_HEADERS="x-tocsin-database=edge"`.
pub const DATABASE_HEADER: &str = "x-tocsin-database";

impl IngestService {
    /// Writes an OTLP metrics export into `database` (empty: `public`); the
    /// answer carries partial success.
    pub async fn otlp_metrics(
        &self,
        who: &Principal,
        database: &str,
        req: ExportMetricsServiceRequest,
    ) -> Result<ExportMetricsServiceResponse, IngestError> {
        self.metrics.otlp_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let m = metrics_to_writes(req);
        let mut rejected = m.rejected_points;
        let mut error = m.first_error;
        if m.points > 0 {
            let resp = self
                .write_tables(who, crate::database(database), m.writes.into_vec(), Vec::<EarlyRejection>::new())
                .await?;
            rejected += resp.rejected.len() as i64;
            if let Some(r) = resp.rejected.first() {
                error.get_or_insert_with(|| r.reason.clone());
            }
        }
        Ok(ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: error.unwrap_or_default(),
            }),
        })
    }

    /// Writes an OTLP logs export into `logs` of `database` (empty:
    /// `public`); the answer carries partial success.
    pub async fn otlp_logs(
        &self,
        who: &Principal,
        database: &str,
        req: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        self.metrics.otlp_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let LogEvents { events, mut rejected, first_error: mut error } = logs_to_events(req, crate::now_ns());
        if !events.is_empty() {
            let resp = self
                .logs(who, WriteLogsRequest { database: database.to_string(), stream: String::new(), events })
                .await?;
            rejected += resp.rejected.len() as i64;
            if let Some(r) = resp.rejected.first() {
                error.get_or_insert_with(|| r.reason.clone());
            }
        }
        Ok(ExportLogsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: error.unwrap_or_default(),
            }),
        })
    }
}

/// The OTLP gRPC services, served on the ingest port beside `tocsin.v1.Ingest`.
#[derive(Clone)]
pub struct Otlp(pub IngestService);

impl Otlp {
    /// The OpenTelemetry Collector's `otlp` exporter compresses with gzip
    /// unless told otherwise (`compression: zstd` or `none`); a compressed
    /// message is bounded by what it decompresses to.
    pub fn metrics_server(&self) -> MetricsServiceServer<Otlp> {
        MetricsServiceServer::new(self.clone())
            .max_decoding_message_size(self.0.config.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
    }

    pub fn logs_server(&self) -> LogsServiceServer<Otlp> {
        LogsServiceServer::new(self.clone())
            .max_decoding_message_size(self.0.config.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let who = crate::caller(&request)?;
        let db = grpc_database(&request);
        self.0.otlp_metrics(&who, &db, request.into_inner()).await.map(Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let who = crate::caller(&request)?;
        let db = grpc_database(&request);
        self.0.otlp_logs(&who, &db, request.into_inner()).await.map(Response::new).map_err(Status::from)
    }
}

pub(crate) fn grpc_database<T>(request: &Request<T>) -> String {
    request.metadata().get(DATABASE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_proto::opentelemetry::proto::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use tocsin_proto::opentelemetry::proto::resource::v1::Resource;
    use tocsin_storage::FieldValues;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }) }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "shop"), kv("host", "r")],
                    dropped_attributes_count: 0,
                }),
                scope_metrics: vec![ScopeMetrics { scope: None, metrics, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn gauges_are_value_rows_with_resource_and_point_attributes_as_tags() {
        let g = Metric {
            name: "queue.depth".into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("queue", "q1"), kv("host", "point-wins")],
                    time_unix_nano: 5,
                    value: Some(number_data_point::Value::AsInt(7)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let m = metrics_to_writes(request(vec![g]));
        assert_eq!((m.points, m.rejected_points), (1, 0));
        let writes = m.writes.into_vec();
        let b = &writes[0].blocks[0];
        assert_eq!(writes[0].table, "queue.depth");
        assert_eq!(
            b.tags,
            vec![
                ("host".into(), "point-wins".into()),
                ("queue".into(), "q1".into()),
                ("service.name".into(), "shop".into())
            ]
        );
        assert_eq!((b.timestamps.clone(), &b.fields[0].values), (vec![5], &FieldValues::F64(vec![7.0])));
    }

    #[test]
    fn histograms_become_prometheus_style_bucket_count_and_sum_tables() {
        let h = Metric {
            name: "rpc.duration".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: 9,
                    count: 6,
                    sum: Some(2.5),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.1, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let writes = metrics_to_writes(request(vec![h])).writes.into_vec();
        let table = |n: &str| writes.iter().find(|w| w.table == n).expect(n);
        let buckets: Vec<(String, FieldValues)> = table("rpc.duration_bucket")
            .blocks
            .iter()
            .map(|b| (b.tags.iter().find(|(k, _)| k == "le").expect("le").1.clone(), b.fields[0].values.clone()))
            .collect();
        assert_eq!(
            buckets,
            vec![
                ("0.1".into(), FieldValues::F64(vec![1.0])),
                ("1".into(), FieldValues::F64(vec![3.0])),
                ("+Inf".into(), FieldValues::F64(vec![6.0])),
            ]
        );
        assert_eq!(table("rpc.duration_count").blocks[0].fields[0].values, FieldValues::F64(vec![6.0]));
        assert_eq!(table("rpc.duration_sum").blocks[0].fields[0].values, FieldValues::F64(vec![2.5]));

        // Bucket counts must be one more than the bounds.
        let bad = Metric {
            name: "bad".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: 9,
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![0.1, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let m = metrics_to_writes(request(vec![bad]));
        assert_eq!((m.points, m.rejected_points), (0, 1));
        assert!(m.first_error.is_some_and(|e| e.contains("2 bucket counts for 2 bounds")));
    }

    #[test]
    fn exponential_histograms_become_cumulative_buckets_at_their_upper_bounds() {
        use tocsin_proto::opentelemetry::proto::metrics::v1::{
            ExponentialHistogram, ExponentialHistogramDataPoint, exponential_histogram_data_point::Buckets,
        };
        let point = |scale: i32| ExponentialHistogramDataPoint {
            time_unix_nano: 9,
            count: 7,
            sum: Some(3.5),
            scale,
            zero_count: 1,
            positive: Some(Buckets { offset: 0, bucket_counts: vec![1, 2] }),
            negative: Some(Buckets { offset: 0, bucket_counts: vec![3] }),
            ..Default::default()
        };
        let metric = |points| Metric {
            name: "lat".into(),
            data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: points,
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let m = metrics_to_writes(request(vec![metric(vec![point(0)])]));
        assert_eq!(m.rejected_points, 0, "{:?}", m.first_error);
        let writes = m.writes.into_vec();
        let table = |n: &str| writes.iter().find(|w| w.table == n).expect(n);
        let buckets: Vec<(String, FieldValues)> = table("lat_bucket")
            .blocks
            .iter()
            .map(|b| (b.tags.iter().find(|(k, _)| k == "le").expect("le").1.clone(), b.fields[0].values.clone()))
            .collect();
        // Scale 0: bucket i holds (2^i, 2^(i+1)]; negative bucket 0 holds [-2, -1).
        let expected: Vec<(String, FieldValues)> = [("-1", 3.0), ("0", 4.0), ("2", 5.0), ("4", 7.0), ("+Inf", 7.0)]
            .iter()
            .map(|(le, v)| (le.to_string(), FieldValues::F64(vec![*v])))
            .collect();
        assert_eq!(buckets, expected);
        assert_eq!(table("lat_count").blocks[0].fields[0].values, FieldValues::F64(vec![7.0]));
        assert_eq!(table("lat_sum").blocks[0].fields[0].values, FieldValues::F64(vec![3.5]));

        // Scale 1: bounds are powers of sqrt(2).
        let writes = metrics_to_writes(request(vec![metric(vec![point(1)])])).writes.into_vec();
        let les: Vec<String> =
            writes[0].blocks.iter().map(|b| b.tags.iter().find(|(k, _)| k == "le").expect("le").1.clone()).collect();
        assert_eq!(les, ["-1", "0", &std::f64::consts::SQRT_2.to_string(), "2", "+Inf"]);

        // A scale OTLP does not allow, and too many buckets: refused alone.
        let mut wide = point(0);
        wide.positive = Some(Buckets { offset: 0, bucket_counts: vec![0; MAX_BUCKETS + 1] });
        let m = metrics_to_writes(request(vec![metric(vec![point(21), wide, point(0)])]));
        assert_eq!(m.rejected_points, 2);
        assert!(m.first_error.expect("reason").contains("scale 21; OTLP allows -10 to 20"));
        assert_eq!(m.writes.into_vec()[0].blocks.len(), 5, "the good point's buckets");
    }

    #[test]
    fn log_records_map_to_log_events() {
        use tocsin_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "billing"), kv("host.name", "n1"), kv("region", "eu")],
                    dropped_attributes_count: 0,
                }),
                scope_logs: vec![ScopeLogs {
                    scope: None,
                    log_records: vec![LogRecord {
                        time_unix_nano: 0,
                        observed_time_unix_nano: 42,
                        severity_number: 17,
                        body: Some(AnyValue { value: Some(any_value::Value::StringValue("card declined".into())) }),
                        attributes: vec![kv("order", "o-1"), kv("region", "us")],
                        trace_id: vec![0xab; 16],
                        span_id: vec![0; 8],
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let e = &logs_to_events(req, 1).events[0];
        assert_eq!(
            (e.timestamp, e.service.as_str(), e.host.as_str(), e.level.as_str()),
            (42, "billing", "n1", "error")
        );
        assert_eq!(e.message, "card declined");
        assert_eq!(e.trace_id, "ab".repeat(16));
        assert_eq!(e.span_id, "", "an all-zero span id is no span id");
        let attrs: Vec<(&str, &str)> = e.attributes.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(attrs, vec![("region", "us"), ("order", "o-1")]);
    }

    /// Resource attributes are copied into every point: a small request must
    /// not be able to ask for gigabytes.
    #[test]
    fn expansion_of_resource_attributes_is_bounded() {
        use tocsin_proto::opentelemetry::proto::metrics::v1::{Gauge, NumberDataPoint};
        let point = || NumberDataPoint {
            time_unix_nano: 1,
            value: Some(number_data_point::Value::AsDouble(1.0)),
            ..Default::default()
        };
        let gauge = |n: usize| Metric {
            name: "g".into(),
            data: Some(metric::Data::Gauge(Gauge { data_points: (0..n).map(|_| point()).collect() })),
            ..Default::default()
        };
        // Too many attributes: every point refused, none built.
        let mut req = request(vec![gauge(10)]);
        req.resource_metrics[0].resource.as_mut().expect("resource").attributes =
            (0..1000).map(|i| kv(&format!("k{i}"), "v")).collect();
        let m = metrics_to_writes(req);
        assert_eq!((m.points, m.rejected_points), (0, 10));
        assert!(m.first_error.expect("reason").contains("at most 128"));
        // 100 attributes of 10 KB on 100,000 points would expand to 100 GB.
        let mut req = request(vec![gauge(100_000)]);
        req.resource_metrics[0].resource.as_mut().expect("resource").attributes =
            (0..100).map(|i| kv(&format!("k{i}"), &"x".repeat(10_000))).collect();
        let m = metrics_to_writes(req);
        assert!(m.points <= MAX_EXPANDED_BYTES / 1_000_000 + 1, "{} points built", m.points);
        assert_eq!(m.points as i64 + m.rejected_points, 100_000);
        assert!(m.first_error.expect("reason").contains("expands to more than"));
    }
}
