//! `GET /api/v1/trace/{id}`: one business flow (trace id) across all
//! services, as one timeline: the log events that carry the id and the
//! spans of the trace (OTLP traces), in time order, with the time between
//! entries, each span's duration and depth, and the first error marked.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampNanosecondType};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tocsin_query::QueryEngine;

use crate::http::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub(crate) struct TraceParams {
    database: Option<String>,
    /// The log table (default `logs`).
    table: Option<String>,
    /// The span table (default `spans`).
    spans: Option<String>,
}

/// Most entries read from each table for one trace; a longer trace is
/// answered with its first entries and `"truncated": true`.
const MAX_ENTRIES: usize = 10_000;

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Where a table's entries come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Source {
    Logs,
    Spans,
}

pub(crate) async fn trace(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<tocsin_auth::Principal>,
    Path(id): Path<String>,
    Query(p): Query<TraceParams>,
) -> Result<Response, ApiError> {
    if !valid_id(&id) {
        return Err(ApiError::bad_request(format!(
            "trace id {id:?} must be 1 to 128 characters of letters, digits, '-', '_', '.', ':'"
        )));
    }
    let logs = p.table.unwrap_or_else(|| "logs".to_string());
    let spans = p.spans.unwrap_or_else(|| tocsin_ingest::otlp_trace::SPANS_TABLE.to_string());
    for t in [&logs, &spans] {
        if tocsin_storage::write::check_table_name(t).is_err() {
            return Err(ApiError::bad_request(format!("{t:?} is not a table name")));
        }
    }
    let db = p.database.as_deref().filter(|d| !d.is_empty()).unwrap_or("public");
    // Each table the caller may trace and that has trace ids; a caller who
    // may trace neither is refused with the log table's reason.
    let mut tables = Vec::new();
    let mut refusal = None;
    for (table, source) in [(logs.as_str(), Source::Logs), (spans.as_str(), Source::Spans)] {
        match who.check_table(tocsin_auth::Permission::Trace, db, table) {
            Err(e) => {
                refusal.get_or_insert(e);
            }
            Ok(()) => {
                if app.storage.table_schema(db, table).is_some_and(|s| s.index_of("trace_id").is_ok()) {
                    tables.push((table, source));
                }
            }
        }
    }
    if tables.is_empty() {
        if let Some(e) = refusal {
            return Err(e.into());
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no events with trace id {id:?}: neither {db}.{logs} nor {db}.{spans} has a trace_id column"),
        ));
    }
    // The flow is read with SQL as the caller (its scope and row filters
    // apply), with the query permission on the tables it may trace.
    let reader = who.granted(tocsin_auth::Permission::Query);
    Ok(axum::Json(flow(&app.query, &id, &tables, Some(db), Some(&reader)).await?).into_response())
}

/// What a span adds to an entry.
#[derive(Debug, Default)]
struct SpanPart {
    name: String,
    kind: String,
    status: String,
    status_message: Option<String>,
    parent: Option<String>,
    duration_ns: i64,
}

/// One entry of the timeline: a log event or a span.
#[derive(Debug, Default)]
struct Entry {
    ts: i64,
    service: String,
    host: String,
    level: String,
    message: String,
    span_id: Option<String>,
    span: Option<SpanPart>,
}

impl Entry {
    fn end(&self) -> i64 {
        self.ts.saturating_add(self.span.as_ref().map_or(0, |s| s.duration_ns))
    }

    fn is_error(&self) -> bool {
        match &self.span {
            Some(s) => s.status == "error",
            None => matches!(self.level.as_str(), "error" | "fatal"),
        }
    }
}

/// The flow as JSON: entries in time order (spans before log events of
/// the same instant), each with the milliseconds since the previous entry
/// and since the first, its depth in the span tree; the index of the first
/// error; the services in the order the flow crossed them.
pub(crate) async fn flow(
    query: &Arc<QueryEngine>,
    id: &str,
    tables: &[(&str, Source)],
    database: Option<&str>,
    who: Option<&tocsin_auth::Principal>,
) -> Result<Value, ApiError> {
    let mut entries = Vec::new();
    let mut truncated = false;
    for &(table, source) in tables {
        // Span ids are lowercase hex; log trace ids are whatever the
        // application logged.
        let key = if source == Source::Spans { id.to_ascii_lowercase() } else { id.to_string() };
        // `*`: optional columns are absent until some row carries them.
        let sql = format!(
            "SELECT * FROM \"{table}\" WHERE trace_id = '{key}' ORDER BY ts, service LIMIT {}",
            MAX_ENTRIES + 1
        );
        let batches = query.execute_as(&sql, database, who).await?.batches;
        let mut read = read_entries(&batches, source).map_err(|e| ApiError::internal(e.to_string()))?;
        if read.len() > MAX_ENTRIES {
            read.truncate(MAX_ENTRIES);
            truncated = true;
        }
        entries.extend(read);
    }
    if entries.is_empty() {
        let names: Vec<&str> = tables.iter().map(|t| t.0).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no events with trace id {id:?} in {}", names.join(" or ")),
        ));
    }
    entries.sort_by(|a, b| (a.ts, a.span.is_none(), &a.service).cmp(&(b.ts, b.span.is_none(), &b.service)));
    let depths = depths(&entries);
    let first_ts = entries[0].ts;
    let end = entries.iter().map(Entry::end).max().unwrap_or(first_ts);
    let mut out = Vec::with_capacity(entries.len());
    let mut first_error = None;
    let mut hops: Vec<&str> = Vec::new();
    let mut prev = first_ts;
    let ms = |ns: i64| ns as f64 / 1e6;
    for (i, e) in entries.iter().enumerate() {
        if first_error.is_none() && e.is_error() {
            first_error = Some(i);
        }
        if hops.last() != Some(&e.service.as_str()) {
            hops.push(&e.service);
        }
        let mut v = json!({
            "type": if e.span.is_some() { "span" } else { "log" },
            "ts": rfc3339(e.ts),
            "service": e.service,
            "host": e.host,
            "level": e.level,
            "message": e.message,
            "span_id": e.span_id,
            "depth": depths[i],
            "since_previous_ms": ms(e.ts - prev),
            "since_start_ms": ms(e.ts - first_ts),
        });
        if let (Some(s), Some(o)) = (&e.span, v.as_object_mut()) {
            o.insert("name".into(), json!(s.name));
            o.insert("kind".into(), json!(s.kind));
            o.insert("status".into(), json!(s.status));
            o.insert("status_message".into(), json!(s.status_message));
            o.insert("parent_span_id".into(), json!(s.parent));
            o.insert("duration_ms".into(), json!(ms(s.duration_ns)));
            o.insert("end".into(), json!(rfc3339(e.end())));
        }
        out.push(v);
        prev = e.ts;
    }
    let spans = entries.iter().filter(|e| e.span.is_some()).count();
    Ok(json!({
        "trace_id": id,
        "events": out,
        "first_error": first_error,
        "hops": hops,
        "spans": spans,
        "logs": entries.len() - spans,
        "duration_ms": ms(end - first_ts),
        "truncated": truncated,
    }))
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Depth of each entry in the span tree: a span whose parent is not in
/// the trace is a root (0), a child one more than its parent, a log event
/// one more than the span it names (0 without one).
fn depths(entries: &[Entry]) -> Vec<usize> {
    let parents: HashMap<&str, Option<&str>> =
        entries.iter().filter_map(|e| Some((e.span_id.as_deref()?, e.span.as_ref()?.parent.as_deref()))).collect();
    let spans: HashMap<&str, ()> =
        entries.iter().filter(|e| e.span.is_some()).filter_map(|e| Some((e.span_id.as_deref()?, ()))).collect();
    let depth_of_span = |id: &str| -> usize {
        // Bounded: a cycle of parents (a malformed trace) stops here.
        let mut depth = 0;
        let mut at = id;
        while let Some(Some(parent)) = parents.get(at) {
            if !parents.contains_key(parent) || depth >= parents.len() {
                break;
            }
            depth += 1;
            at = parent;
        }
        depth
    };
    entries
        .iter()
        .map(|e| match (&e.span, e.span_id.as_deref()) {
            (Some(_), Some(id)) => depth_of_span(id),
            (None, Some(id)) if spans.contains_key(id) => depth_of_span(id) + 1,
            _ => 0,
        })
        .collect()
}

fn read_entries(batches: &[RecordBatch], source: Source) -> Result<Vec<Entry>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        let col = |name: &str| -> Result<Option<ArrayRef>, arrow::error::ArrowError> {
            schema.index_of(name).ok().map(|i| cast(b.column(i), &DataType::Utf8)).transpose()
        };
        let ts = cast(b.column(schema.index_of("ts")?), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let ts = ts.as_primitive::<TimestampNanosecondType>();
        let s = |a: &Option<ArrayRef>, r: usize| -> Option<String> {
            a.as_ref().filter(|a| a.is_valid(r)).map(|a| a.as_string::<i32>().value(r).to_string())
        };
        let (service, host, span_id) = (col("service")?, col("host")?, col("span_id")?);
        match source {
            Source::Logs => {
                let (level, message) = (col("level")?, col("message")?);
                for r in 0..b.num_rows() {
                    out.push(Entry {
                        ts: ts.value(r),
                        service: s(&service, r).unwrap_or_default(),
                        host: s(&host, r).unwrap_or_default(),
                        level: s(&level, r).unwrap_or_default(),
                        message: s(&message, r).unwrap_or_default(),
                        span_id: s(&span_id, r).filter(|x| !x.is_empty()),
                        span: None,
                    });
                }
            }
            Source::Spans => {
                let (name, kind, status, message, parent) =
                    (col("name")?, col("kind")?, col("status")?, col("status_message")?, col("parent_span_id")?);
                let duration =
                    schema.index_of("duration_ns").ok().map(|i| cast(b.column(i), &DataType::Int64)).transpose()?;
                for r in 0..b.num_rows() {
                    let status = s(&status, r).unwrap_or_default();
                    let span = SpanPart {
                        name: s(&name, r).unwrap_or_default(),
                        kind: s(&kind, r).unwrap_or_default(),
                        status_message: s(&message, r).filter(|m| !m.is_empty()),
                        parent: s(&parent, r).filter(|p| !p.is_empty()),
                        duration_ns: duration
                            .as_ref()
                            .filter(|d| d.is_valid(r))
                            .map_or(0, |d| d.as_primitive::<Int64Type>().value(r).max(0)),
                        status,
                    };
                    out.push(Entry {
                        ts: ts.value(r),
                        service: s(&service, r).unwrap_or_default(),
                        host: s(&host, r).unwrap_or_default(),
                        level: if span.status == "error" { "error".into() } else { String::new() },
                        message: span.name.clone(),
                        span_id: s(&span_id, r).filter(|x| !x.is_empty()),
                        span: Some(span),
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_checked_before_they_reach_sql() {
        assert!(valid_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(valid_id("order-17:leg.2"));
        assert!(!valid_id("x' OR '1'='1"));
        assert!(!valid_id(""));
    }

    fn span(id: &str, parent: Option<&str>) -> Entry {
        Entry {
            span_id: Some(id.into()),
            span: Some(SpanPart { parent: parent.map(str::to_string), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn depth_follows_parents_within_the_trace_and_survives_cycles() {
        let log = |span: Option<&str>| Entry { span_id: span.map(str::to_string), ..Default::default() };
        let entries = vec![
            span("a", None),
            span("b", Some("a")),
            span("c", Some("b")),
            span("d", Some("not-in-trace")),
            log(Some("c")),
            log(Some("unknown")),
            log(None),
            span("x", Some("y")),
            span("y", Some("x")),
        ];
        let d = depths(&entries);
        assert_eq!(&d[..7], &[0, 1, 2, 0, 3, 0, 0]);
        assert!(d[7] <= entries.len() && d[8] <= entries.len(), "a cycle ends: {d:?}");
    }
}
