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

impl Source {
    /// The columns of the timeline, of those the table has.
    fn columns(self) -> &'static [&'static str] {
        match self {
            Source::Logs => &["ts", "service", "host", "level", "message", "span_id"],
            Source::Spans => &[
                "ts",
                "service",
                "host",
                "name",
                "kind",
                "status",
                "status_message",
                "span_id",
                "parent_span_id",
                "duration_ns",
            ],
        }
    }
}

/// A table a trace is read from.
pub(crate) struct Table<'a> {
    name: &'a str,
    source: Source,
    /// The columns to read (those of [`Source::columns`] it has).
    columns: Vec<&'static str>,
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
    if logs == spans {
        return Err(ApiError::bad_request(format!(
            "table={logs:?} and spans={spans:?} name the same table; the log table and the span table must differ"
        )));
    }
    let db = p.database.as_deref().filter(|d| !d.is_empty()).unwrap_or("public");
    if tocsin_storage::write::check_database_name(db).is_err() {
        return Err(ApiError::bad_request(format!("{db:?} is not a database name")));
    }
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
                // Only the columns the timeline shows: a span's attributes,
                // events and links can be large.
                if let Some(schema) = app.storage.table_schema(db, table).filter(|s| s.index_of("trace_id").is_ok()) {
                    let columns = source.columns().iter().filter(|c| schema.index_of(c).is_ok()).copied().collect();
                    tables.push(Table { name: table, source, columns });
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
    tables: &[Table<'_>],
    database: Option<&str>,
    who: Option<&tocsin_auth::Principal>,
) -> Result<Value, ApiError> {
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut refused = None;
    let mut read_any = false;
    // OTLP ids are stored in lower-case hex; ids an application logged are
    // matched as given too.
    let lower = id.to_ascii_lowercase();
    let keys = if lower == id { format!("'{id}'") } else { format!("'{id}', '{lower}'") };
    for t in tables {
        let columns: Vec<String> = t.columns.iter().map(|c| format!("\"{c}\"")).collect();
        let sql = format!(
            "SELECT {} FROM \"{}\" WHERE trace_id IN ({keys}) ORDER BY ts LIMIT {}",
            columns.join(", "),
            t.name,
            MAX_ENTRIES + 1
        );
        let batches = match query.execute_as(&sql, database, who).await {
            Ok(r) => r.batches,
            // A table the caller's row filters cannot apply to is left out
            // of the timeline; the others are still shown.
            Err(tocsin_query::QueryError::Auth(e)) => {
                refused.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        read_any = true;
        let source = t.source;
        let mut read = tokio::task::spawn_blocking(move || read_entries(&batches, source))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if read.len() > MAX_ENTRIES {
            read.truncate(MAX_ENTRIES);
            truncated = true;
        }
        entries.extend(read);
    }
    if let (false, Some(e)) = (read_any, refused) {
        return Err(e.into());
    }
    // An exporter that retried sends the same span again.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| e.span.is_none() || seen.insert((e.span_id.clone(), e.ts)));
    if entries.is_empty() {
        let names: Vec<&str> = tables.iter().map(|t| t.name).collect();
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
/// one more than the span it names (0 without one). Linear in the entries;
/// a cycle of parents (a malformed trace) is cut where it closes.
fn depths(entries: &[Entry]) -> Vec<usize> {
    let parents: HashMap<&str, Option<&str>> =
        entries.iter().filter_map(|e| Some((e.span_id.as_deref()?, e.span.as_ref()?.parent.as_deref()))).collect();
    let mut known: HashMap<&str, usize> = HashMap::with_capacity(parents.len());
    let mut path: Vec<&str> = Vec::new();
    let mut on_path = std::collections::HashSet::new();
    for &start in parents.keys() {
        // Walk up to a span of known depth, a root, or a span already on
        // this walk (a cycle: it becomes the root).
        let mut at = start;
        let base = loop {
            if let Some(&d) = known.get(at) {
                break d + 1;
            }
            if !on_path.insert(at) {
                break 0;
            }
            path.push(at);
            match parents.get(at) {
                Some(Some(parent)) if parents.contains_key(parent) => at = parent,
                _ => break 0,
            }
        };
        // `path` runs from `start` up; the top gets `base`.
        for (i, id) in path.iter().rev().enumerate() {
            known.entry(id).or_insert(base + i);
        }
        path.clear();
        on_path.clear();
    }
    entries
        .iter()
        .map(|e| match (&e.span, e.span_id.as_deref()) {
            (Some(_), Some(id)) => known.get(id).copied().unwrap_or(0),
            (None, Some(id)) => known.get(id).map_or(0, |d| d + 1),
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
        let mut cycle = [d[7], d[8]];
        cycle.sort();
        assert_eq!(cycle, [0, 1], "a cycle is cut where it closes: {d:?}");
    }

    /// A chain of 20,000 spans: each depth once (the walk used to restart
    /// from every span, 10 s for 10,000).
    #[test]
    fn depth_of_a_long_chain_is_its_position() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("s{i}")).collect();
        let entries: Vec<Entry> =
            (0..ids.len()).map(|i| span(&ids[i], i.checked_sub(1).map(|p| ids[p].as_str()))).collect();
        let d = depths(&entries);
        assert!(d.iter().enumerate().all(|(i, &x)| x == i), "{:?}", &d[..10]);
    }
}
