//! `GET /api/v1/trace/{id}`: every log event of one business flow (trace
//! id) across all services, in time order, with the time between hops and
//! the first error marked.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tocsin_query::QueryEngine;

use crate::http::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub(crate) struct TraceParams {
    database: Option<String>,
    /// The log table (default `logs`).
    table: Option<String>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
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
    let table = p.table.unwrap_or_else(|| "logs".to_string());
    if tocsin_storage::write::check_table_name(&table).is_err() {
        return Err(ApiError::bad_request(format!("{table:?} is not a table name")));
    }
    let db = p.database.as_deref().filter(|d| !d.is_empty()).unwrap_or("public");
    who.check_table(tocsin_auth::Permission::Trace, db, &table)?;
    let has_trace_ids = app.storage.table_schema(db, &table).is_some_and(|s| s.index_of("trace_id").is_ok());
    if !has_trace_ids {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no events with trace id {id:?}: {db}.{table} has no trace_id column"),
        ));
    }
    // The flow is read with SQL as the caller (its scope and row filters
    // apply), with the query permission on the table it may trace.
    let reader = who.granted(tocsin_auth::Permission::Query);
    Ok(axum::Json(flow(&app.query, &id, &table, Some(db), Some(&reader)).await?).into_response())
}

/// The flow as JSON: events in time order, each with the milliseconds since
/// the previous event and since the first; the index of the first error.
pub(crate) async fn flow(
    query: &Arc<QueryEngine>,
    id: &str,
    table: &str,
    database: Option<&str>,
    who: Option<&tocsin_auth::Principal>,
) -> Result<serde_json::Value, ApiError> {
    // `*`: span_id is optional (absent until some event carries one).
    let sql = format!("SELECT * FROM \"{table}\" WHERE trace_id = '{id}' ORDER BY ts, service");
    let batches = query.execute_as(&sql, database, who).await?.batches;
    let events = events(&batches).map_err(|e| ApiError::internal(e.to_string()))?;
    if events.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no events with trace id {id:?} in {table}")));
    }
    let first_ts = events[0].0;
    let mut out = Vec::with_capacity(events.len());
    let mut first_error = None;
    let mut services: Vec<String> = Vec::new();
    let mut prev = first_ts;
    for (i, (ts, service, host, level, message, span)) in events.iter().enumerate() {
        if first_error.is_none() && matches!(level.as_str(), "error" | "fatal") {
            first_error = Some(i);
        }
        if services.last() != Some(service) {
            services.push(service.clone());
        }
        out.push(json!({
            "ts": chrono::DateTime::from_timestamp_nanos(*ts).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "service": service,
            "host": host,
            "level": level,
            "message": message,
            "span_id": span,
            "since_previous_ms": (*ts - prev) as f64 / 1e6,
            "since_start_ms": (*ts - first_ts) as f64 / 1e6,
        }));
        prev = *ts;
    }
    Ok(json!({
        "trace_id": id,
        "events": out,
        "first_error": first_error,
        "hops": services,
        "duration_ms": (prev - first_ts) as f64 / 1e6,
    }))
}

type Event = (i64, String, String, String, String, Option<String>);

fn events(batches: &[RecordBatch]) -> Result<Vec<Event>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        let col = |name: &str| -> Result<Option<arrow::array::ArrayRef>, arrow::error::ArrowError> {
            schema.index_of(name).ok().map(|i| cast(b.column(i), &DataType::Utf8)).transpose()
        };
        let ts = cast(b.column(schema.index_of("ts")?), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let ts = ts.as_primitive::<TimestampNanosecondType>();
        let (service, host, level, message, span) =
            (col("service")?, col("host")?, col("level")?, col("message")?, col("span_id")?);
        let s = |a: &Option<arrow::array::ArrayRef>, r: usize| -> Option<String> {
            a.as_ref().filter(|a| a.is_valid(r)).map(|a| a.as_string::<i32>().value(r).to_string())
        };
        for r in 0..b.num_rows() {
            out.push((
                ts.value(r),
                s(&service, r).unwrap_or_default(),
                s(&host, r).unwrap_or_default(),
                s(&level, r).unwrap_or_default(),
                s(&message, r).unwrap_or_default(),
                s(&span, r).filter(|x| !x.is_empty()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn trace_ids_are_checked_before_they_reach_sql() {
        assert!(valid_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(valid_id("order-17:leg.2"));
        assert!(!valid_id("x' OR '1'='1"));
        assert!(!valid_id(""));
    }
}
