//! OTLP traces, over gRPC on the ingest port and `POST /v1/traces`: each
//! span is a row of the `spans` table of the export's database.
//!
//! | column | kind | from |
//! |---|---|---|
//! | `ts` | time | the span's start |
//! | `service`, `host` | tags | resource `service.name`, `host.name` |
//! | `name` | tag | the span's name |
//! | `kind` | tag | `internal`, `server`, `client`, `producer`, `consumer` or `unspecified` |
//! | `status` | tag | `unset`, `ok` or `error` |
//! | `trace_id`, `span_id` | string fields | hex |
//! | `parent_span_id` | string field | hex; NULL for a root span |
//! | `duration_ns` | integer field | end − start |
//! | `status_message`, `scope` | string fields | NULL when empty |
//! | `attributes` | string field | JSON object: the other resource attributes, then the span's |
//! | `events`, `links` | string fields | JSON arrays; NULL when the span has none |
//!
//! Spans whose ids are not 16 and 8 non-zero bytes, that start at 0 or end
//! before they start are refused one by one (partial success names the
//! first reason); the others are written.

use std::collections::HashMap;

use serde_json::{Map, Value as Json};
use tocsin_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use tocsin_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tocsin_proto::opentelemetry::proto::common::v1::KeyValue;
use tocsin_proto::opentelemetry::proto::trace::v1::Span;
use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, TableWrite, WriteError, WriteLimits};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::convert::{BlockMembers, EarlyRejection};
use crate::otlp::{Expansion, Otlp, attrs, hex};
use crate::{IngestError, IngestService, Principal};

/// The table spans are written to.
pub const SPANS_TABLE: &str = "spans";

/// Name of an OTLP span kind.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// Name of an OTLP status code.
pub fn status_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// The columns of the spans of one series (service, host, name, kind,
/// status).
#[derive(Debug, Default)]
struct SpanGroup {
    items: Vec<u32>,
    timestamps: Vec<i64>,
    trace_id: Vec<String>,
    span_id: Vec<String>,
    parent_span_id: Vec<String>,
    duration_ns: Vec<i64>,
    status_message: Vec<String>,
    scope: Vec<String>,
    attributes: Vec<String>,
    events: Vec<String>,
    links: Vec<String>,
}

/// The spans of an export as one write of the spans table, the spans
/// refused before storage, and which spans share a block.
#[derive(Debug)]
pub struct SpanWrites {
    pub write: TableWrite,
    pub early: Vec<EarlyRejection>,
    pub members: BlockMembers,
    /// Spans in the export.
    pub spans: usize,
}

type GroupKey = (String, String, String, &'static str, &'static str);

/// Spans as a write of `spans`, grouped into one block per series.
pub fn spans_to_write(req: ExportTraceServiceRequest, limits: &WriteLimits) -> SpanWrites {
    let mut groups: HashMap<GroupKey, SpanGroup> = HashMap::new();
    let mut early = Vec::new();
    let mut expansion = Expansion::default();
    let mut item = 0u32;
    for rs in req.resource_spans {
        let mut resource: Vec<(String, String)> =
            rs.resource.map(|r| attrs(&r.attributes).collect()).unwrap_or_default();
        let mut take = |key: &str| resource.iter().position(|(k, _)| k == key).map(|i| resource.remove(i).1);
        let service = take("service.name").unwrap_or_default();
        let host = take("host.name").unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for span in ss.spans {
                let i = item;
                item = item.saturating_add(1);
                let reject = |early: &mut Vec<EarlyRejection>, reason: String| {
                    early.push(EarlyRejection { item: i, reason: format!("span {:?}: {reason}", span.name) });
                };
                if let Err(reason) = check(&span) {
                    reject(&mut early, reason);
                    continue;
                }
                let charged = expansion.charge(&resource, &span.attributes, 1).and_then(|()| {
                    for (i, e) in span.events.iter().enumerate() {
                        expansion.charge(&[], &e.attributes, 1).map_err(|r| format!("event {i}: {r}"))?;
                    }
                    for (i, l) in span.links.iter().enumerate() {
                        expansion.charge(&[], &l.attributes, 1).map_err(|r| format!("link {i}: {r}"))?;
                    }
                    Ok(())
                });
                if let Err(reason) = charged {
                    reject(&mut early, reason);
                    continue;
                }
                let columns = SpanColumns::of(&span, &resource);
                let status_message = span.status.as_ref().map(|s| s.message.as_str()).unwrap_or_default();
                let oversized = columns.oversized(limits.max_string_bytes).or_else(|| {
                    [("status_message", status_message), ("scope", scope.as_str())]
                        .into_iter()
                        .find(|(_, v)| v.len() > limits.max_string_bytes)
                        .map(|(c, v)| (c, v.len()))
                });
                if let Some((column, len)) = oversized {
                    tocsin_storage::refusals::refused("max_string_bytes");
                    let e = WriteError::ValueTooLarge { column: column.into(), len, limit: limits.max_string_bytes };
                    reject(&mut early, e.to_string());
                    continue;
                }
                let key = (
                    service.clone(),
                    host.clone(),
                    span.name.clone(),
                    kind_name(span.kind),
                    status_name(span.status.as_ref().map_or(0, |s| s.code)),
                );
                let g = groups.entry(key).or_default();
                g.items.push(i);
                g.timestamps.push(span.start_time_unix_nano as i64);
                g.trace_id.push(hex(&span.trace_id));
                g.span_id.push(hex(&span.span_id));
                g.parent_span_id.push(columns.parent);
                g.duration_ns.push((span.end_time_unix_nano - span.start_time_unix_nano) as i64);
                g.status_message.push(span.status.map(|s| s.message).unwrap_or_default());
                g.scope.push(scope.clone());
                g.attributes.push(columns.attributes);
                g.events.push(columns.events);
                g.links.push(columns.links);
            }
        }
    }
    let mut blocks = Vec::with_capacity(groups.len());
    let mut members = BlockMembers::new();
    for ((service, host, name, kind, status), g) in groups {
        if g.items.len() > 1 {
            members.insert(g.items[0], g.items[1..].to_vec());
        }
        let mut tags = Vec::with_capacity(5);
        for (k, v) in [("service", service), ("host", host), ("name", name)] {
            if !v.is_empty() {
                tags.push((k.to_string(), v));
            }
        }
        tags.push(("kind".to_string(), kind.to_string()));
        tags.push(("status".to_string(), status.to_string()));
        let text =
            |name: &str, v: Vec<String>| FieldColumn { name: name.into(), values: FieldValues::Str(v), validity: None };
        let optional = crate::convert::optional_text;
        let mut fields = vec![
            text("trace_id", g.trace_id),
            text("span_id", g.span_id),
            FieldColumn { name: "duration_ns".into(), values: FieldValues::I64(g.duration_ns), validity: None },
        ];
        fields.extend(optional("parent_span_id", g.parent_span_id));
        fields.extend(optional("status_message", g.status_message));
        fields.extend(optional("scope", g.scope));
        fields.extend(optional("attributes", g.attributes));
        fields.extend(optional("events", g.events));
        fields.extend(optional("links", g.links));
        blocks.push(SeriesBlock { item: g.items[0], tags, timestamps: g.timestamps, fields });
    }
    early.sort_by_key(|r| r.item);
    SpanWrites { write: TableWrite { table: SPANS_TABLE.into(), blocks }, early, members, spans: item as usize }
}

/// Most events, and most links, one span may carry (the OpenTelemetry
/// SDKs keep 128 of each by default).
pub const MAX_EVENTS: usize = 1024;

/// Why a span cannot be stored, if it cannot.
fn check(span: &Span) -> Result<(), String> {
    let id = |what: &str, v: &[u8], len: usize| -> Result<(), String> {
        if v.len() != len {
            return Err(format!("{what} is {} bytes; it must be {len}", v.len()));
        }
        if v.iter().all(|b| *b == 0) {
            return Err(format!("{what} is all zero, which OTLP defines as no id"));
        }
        Ok(())
    };
    id("trace_id", &span.trace_id, 16)?;
    id("span_id", &span.span_id, 8)?;
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!("parent_span_id is {} bytes; it must be empty or 8", span.parent_span_id.len()));
    }
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    if start == 0 || i64::try_from(start).is_err() {
        return Err(format!("start_time_unix_nano {start} is not a time"));
    }
    if i64::try_from(end).is_err() {
        return Err(format!("end_time_unix_nano {end} is not a time"));
    }
    if end < start {
        return Err(format!("end_time_unix_nano {end} is before start_time_unix_nano {start}"));
    }
    for (what, n) in [("events", span.events.len()), ("links", span.links.len())] {
        if n > MAX_EVENTS {
            return Err(format!("{n} {what}; at most {MAX_EVENTS} per span are accepted"));
        }
    }
    Ok(())
}

/// The text columns of one span.
struct SpanColumns {
    parent: String,
    attributes: String,
    events: String,
    links: String,
}

impl SpanColumns {
    fn of(span: &Span, resource: &[(String, String)]) -> Self {
        let parent =
            if span.parent_span_id.iter().all(|b| *b == 0) { String::new() } else { hex(&span.parent_span_id) };
        let mut map: Map<String, Json> = resource.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect();
        map.extend(object(&span.attributes));
        let attributes = if map.is_empty() { String::new() } else { Json::Object(map).to_string() };
        let events = if span.events.is_empty() {
            String::new()
        } else {
            let list = span.events.iter().map(|e| {
                let mut m = Map::new();
                m.insert("ts".into(), Json::from(e.time_unix_nano));
                m.insert("name".into(), Json::String(e.name.clone()));
                if !e.attributes.is_empty() {
                    m.insert("attributes".into(), Json::Object(object(&e.attributes).collect()));
                }
                Json::Object(m)
            });
            Json::Array(list.collect()).to_string()
        };
        let links = if span.links.is_empty() {
            String::new()
        } else {
            let list = span.links.iter().map(|l| {
                let mut m = Map::new();
                m.insert("trace_id".into(), Json::String(hex(&l.trace_id)));
                m.insert("span_id".into(), Json::String(hex(&l.span_id)));
                if !l.attributes.is_empty() {
                    m.insert("attributes".into(), Json::Object(object(&l.attributes).collect()));
                }
                Json::Object(m)
            });
            Json::Array(list.collect()).to_string()
        };
        Self { parent, attributes, events, links }
    }

    /// The first column longer than `limit` bytes, and its length.
    fn oversized(&self, limit: usize) -> Option<(&'static str, usize)> {
        [("attributes", &self.attributes), ("events", &self.events), ("links", &self.links)]
            .into_iter()
            .find(|(_, v)| v.len() > limit)
            .map(|(c, v)| (c, v.len()))
    }
}

/// Attributes as JSON object members with text values (as log attributes
/// are, so that `json_get_str` reads both).
fn object(kv: &[KeyValue]) -> impl Iterator<Item = (String, Json)> + '_ {
    attrs(kv).map(|(k, v)| (k, Json::String(v)))
}

impl IngestService {
    /// Writes an OTLP traces export into `spans` of `database` (empty:
    /// `public`); the answer carries partial success.
    pub async fn otlp_traces(
        &self,
        who: &Principal,
        database: &str,
        req: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        self.metrics.otlp_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let SpanWrites { write, early, members, spans } = spans_to_write(req, &self.storage.config().limits);
        let mut rejected = early.len() as i64;
        let mut error = early.first().map(|r| r.reason.clone());
        if !write.blocks.is_empty() {
            let resp = self.write_grouped(who, crate::database(database), vec![write], Vec::new(), &members).await?;
            rejected += resp.rejected.len() as i64;
            if let Some(r) = resp.rejected.first() {
                error.get_or_insert_with(|| r.reason.clone());
            }
        } else if spans > 0 {
            // Nothing to write, but the caller must still be allowed to.
            who.check_table(tocsin_auth::Permission::Write, crate::database(database), SPANS_TABLE)?;
        }
        Ok(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: error.unwrap_or_default(),
            }),
        })
    }
}

impl Otlp {
    pub fn traces_server(&self) -> TraceServiceServer<Otlp> {
        TraceServiceServer::new(self.clone())
            .max_decoding_message_size(self.0.config.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
    }
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let who = crate::caller(&request)?;
        let db = crate::otlp::grpc_database(&request);
        self.0.otlp_traces(&who, &db, request.into_inner()).await.map(Response::new).map_err(Status::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_proto::opentelemetry::proto::common::v1::{AnyValue, InstrumentationScope, any_value};
    use tocsin_proto::opentelemetry::proto::resource::v1::Resource;
    use tocsin_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Status as SpanStatus, span};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }) }
    }

    fn span(name: &str, id: u8, parent: u8, start: u64, end: u64) -> Span {
        Span {
            trace_id: vec![0xab; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: name.into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "voicemail"), kv("host.name", "vm1"), kv("region", "eu")],
                    dropped_attributes_count: 0,
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "probe".into(), ..Default::default() }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn strings(b: &SeriesBlock, name: &str) -> Vec<Option<String>> {
        let f = b.fields.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no column {name}"));
        let FieldValues::Str(v) = &f.values else { panic!("{name} is not text") };
        v.iter().enumerate().map(|(i, s)| f.validity.as_ref().is_none_or(|m| m[i]).then(|| s.clone())).collect()
    }

    #[test]
    fn spans_are_rows_with_ids_in_hex_duration_and_json_attributes() {
        let mut root = span("answer call", 1, 0, 1_000, 9_000);
        root.attributes = vec![kv("caller", "+33 1"), kv("region", "us")];
        root.status = Some(SpanStatus { message: "mailbox full".into(), code: 2 });
        root.events = vec![span::Event {
            time_unix_nano: 5_000,
            name: "exception".into(),
            attributes: vec![kv("exception.type", "Full")],
            dropped_attributes_count: 0,
        }];
        let child = span("answer call", 2, 1, 2_000, 3_000);
        let w = spans_to_write(request(vec![root, child]), &WriteLimits::default());
        assert_eq!((w.spans, w.early.len(), w.write.table.as_str()), (2, 0, "spans"));
        let mut blocks = w.write.blocks;
        blocks.sort_by_key(|b| b.tags.iter().find(|(k, _)| k == "status").map(|t| t.1.clone()));
        assert_eq!(blocks.len(), 2, "error and unset are two series");
        let (err, unset) = (&blocks[0], &blocks[1]);
        let tags = |b: &SeriesBlock| b.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        assert_eq!(tags(err), "service=voicemail,host=vm1,name=answer call,kind=server,status=error");
        assert_eq!(tags(unset), "service=voicemail,host=vm1,name=answer call,kind=server,status=unset");
        assert_eq!(err.timestamps, vec![1_000]);
        assert_eq!(strings(err, "trace_id"), vec![Some("ab".repeat(16))]);
        assert_eq!(strings(err, "span_id"), vec![Some("01".repeat(8))]);
        assert!(err.fields.iter().all(|f| f.name != "parent_span_id"), "a root has no parent column");
        assert_eq!(strings(unset, "parent_span_id"), vec![Some("01".repeat(8))]);
        let duration = err.fields.iter().find(|f| f.name == "duration_ns").expect("duration");
        assert_eq!(duration.values, FieldValues::I64(vec![8_000]));
        assert_eq!(strings(err, "status_message"), vec![Some("mailbox full".into())]);
        assert_eq!(strings(err, "scope"), vec![Some("probe".into())]);
        // The span's attributes win over the resource's.
        assert_eq!(strings(err, "attributes"), vec![Some(r#"{"caller":"+33 1","region":"us"}"#.into())]);
        assert_eq!(
            strings(err, "events"),
            vec![Some(r#"[{"attributes":{"exception.type":"Full"},"name":"exception","ts":5000}]"#.into())]
        );
        assert!(unset.fields.iter().all(|f| f.name != "events"), "no events, no column");
    }

    #[test]
    fn malformed_spans_are_refused_one_by_one() {
        let mut no_trace = span("a", 1, 0, 1, 2);
        no_trace.trace_id = vec![0; 16];
        let mut short_span = span("b", 1, 0, 1, 2);
        short_span.span_id = vec![1; 4];
        let backwards = span("c", 3, 0, 10, 5);
        let unstarted = span("d", 4, 0, 0, 5);
        let far = span("e", 5, 0, u64::MAX - 1, u64::MAX);
        let endless = span("g", 7, 0, 1, u64::MAX);
        let mut chatty = span("h", 8, 0, 1, 2);
        chatty.events = vec![span::Event::default(); MAX_EVENTS + 1];
        let good = span("f", 6, 0, 1, 2);
        let w = spans_to_write(
            request(vec![no_trace, short_span, backwards, unstarted, far, endless, chatty, good]),
            &WriteLimits::default(),
        );
        let reasons: Vec<(u32, &str)> = w.early.iter().map(|r| (r.item, r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 7, "{reasons:?}");
        assert!(reasons[0].1.contains("span \"a\": trace_id is all zero"), "{reasons:?}");
        assert!(reasons[1].1.contains("span_id is 4 bytes; it must be 8"), "{reasons:?}");
        assert!(reasons[2].1.contains("end_time_unix_nano 5 is before start_time_unix_nano 10"), "{reasons:?}");
        assert!(reasons[3].1.contains("start_time_unix_nano 0 is not a time"), "{reasons:?}");
        assert!(reasons[4].1.contains("start_time_unix_nano 18446744073709551614 is not a time"), "{reasons:?}");
        assert!(reasons[5].1.contains("end_time_unix_nano 18446744073709551615 is not a time"), "{reasons:?}");
        assert!(reasons[6].1.contains("1025 events; at most 1024 per span"), "{reasons:?}");
        assert_eq!(w.write.blocks.len(), 1);
        assert_eq!(w.write.blocks[0].item, 7, "the good span keeps its place in the export");
    }

    #[test]
    fn oversized_attributes_refuse_only_their_span() {
        let mut big = span("big", 1, 0, 1, 2);
        big.attributes = vec![kv("payload", &"x".repeat(2_000))];
        // A long status message (an exception's) refuses its span, not the
        // spans of the same series (storage refuses whole blocks).
        let mut failed = span("small", 3, 0, 1, 2);
        failed.status = Some(SpanStatus { message: "y".repeat(2_000), code: 0 });
        let limits = WriteLimits { max_string_bytes: 1_000, ..WriteLimits::default() };
        let w = spans_to_write(request(vec![big, span("small", 2, 0, 1, 2), failed]), &limits);
        assert_eq!(w.early.len(), 2);
        assert!(w.early[0].reason.contains("\"attributes\""), "{}", w.early[0].reason);
        assert!(w.early[1].reason.contains("\"status_message\""), "{}", w.early[1].reason);
        assert_eq!(w.write.blocks.len(), 1);
        assert_eq!(w.write.blocks[0].timestamps.len(), 1);
    }
}
