//! `GET /api/v1/tail`: live tail over Server-Sent Events. Parameters
//! (repeat `service`, `host` and `attr` for several): `service`, `host`,
//! `level` (minimum), `trace_id`, `match` (case-insensitive substring),
//! `attr=k=v`, `table` (default `logs`), `database`, `buffer` (queue size).
//! Each event is `data: {json}`; a gap is `event: dropped` with
//! `data: {"dropped": N}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tocsin_ingest::tail::{TailFilter, TailItem};
use tocsin_proto::v1::LogEvent;

use crate::http::{ApiError, AppState};

pub(crate) async fn tail(
    State(app): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut f = TailFilter { database: "public".into(), table: "logs".into(), ..Default::default() };
    let mut buffer = tocsin_ingest::TAIL_BUFFER;
    for (k, v) in params {
        match k.as_str() {
            "service" => f.services.push(v),
            "host" => f.hosts.push(v),
            "level" => f.min_level = Some(tocsin_ingest::convert::normalize_level(&v)),
            "trace_id" => f.trace_id = Some(v),
            "match" => f.text = Some(v),
            "attr" => {
                let (name, value) =
                    v.split_once('=').ok_or_else(|| ApiError::bad_request(format!("attr {v:?} must be name=value")))?;
                f.attributes.push((name.to_string(), value.to_string()));
            }
            "table" => f.table = v,
            "database" => f.database = v,
            "buffer" => {
                buffer = v
                    .parse()
                    .ok()
                    .filter(|b| (1..=1_000_000).contains(b))
                    .ok_or_else(|| ApiError::bad_request(format!("buffer {v:?} must be 1 to 1000000")))?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; use service, host, level, trace_id, match, attr, table, database, buffer"
                )));
            }
        }
    }
    let sub = app.tail.subscribe(f, buffer);
    let stream = futures::stream::unfold(sub, |sub| async move {
        let event = match sub.next().await {
            TailItem::Event(e) => Event::default().data(event_json(&e).to_string()),
            TailItem::Dropped(n) => Event::default().event("dropped").data(json!({ "dropped": n }).to_string()),
        };
        Some((Ok::<_, Infallible>(event), sub))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

fn event_json(e: &LogEvent) -> serde_json::Value {
    let attrs: serde_json::Map<String, serde_json::Value> =
        e.attributes.iter().map(|l| (l.name.clone(), serde_json::Value::String(l.value.clone()))).collect();
    json!({
        "ts": chrono::DateTime::from_timestamp_nanos(e.timestamp).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "service": e.service,
        "host": e.host,
        "level": tocsin_ingest::convert::normalize_level(&e.level),
        "message": e.message,
        "trace_id": e.trace_id,
        "span_id": e.span_id,
        "attributes": attrs,
    })
}
