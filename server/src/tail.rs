//! `GET /api/v1/tail`: live tail over Server-Sent Events. Parameters
//! (repeat `service`, `host` and `attr` for several): `service`, `host`,
//! `level` (minimum), `trace_id`, `match` (case-insensitive substring),
//! `attr=k=v`, `table` (default `logs`), `database`, `buffer` (queue size),
//! `since` (a duration such as `5m`: backfill the stored events of that span
//! first, then go live, with no gap or duplicate at the seam).
//! Each event is `data: {json}`; a gap is `event: dropped` with
//! `data: {"dropped": N}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::json;
use tocsin_ingest::follow::{BatchStream, TailBackfill, follow};
use tocsin_ingest::tail::{TailFilter, TailItem};
use tocsin_proto::v1::LogEvent;
use tocsin_query::QueryEngine;
use tocsin_storage::TableSnapshot;

use crate::http::{ApiError, AppState};

pub(crate) async fn tail(
    State(app): State<AppState>,
    axum::Extension(who): axum::Extension<tocsin_auth::Principal>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut f = TailFilter { database: "public".into(), table: "logs".into(), ..Default::default() };
    let mut buffer = tocsin_ingest::TAIL_BUFFER;
    let mut since = None;
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
            "since" => {
                since = Some(
                    crate::config::parse_duration(&v)
                        .map_err(|e| ApiError::bad_request(format!("since {v:?}: {e}")))?,
                )
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; use service, host, level, trace_id, match, attr, table, database, \
                     buffer, since"
                )));
            }
        }
    }
    who.check_table(tocsin_auth::Permission::Tail, &f.database, &f.table)?;
    f.restrict_to(&who);
    let items = follow(&app.tail, &app.storage, Some(&app.backfill), f, buffer, since).await?;
    let stream = tocsin_ingest::follow::while_current(items, who).map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(TailItem::Event(e)) => Event::default().data(event_json(&e).to_string()),
            Ok(TailItem::Dropped(n)) => Event::default().event("dropped").data(json!({ "dropped": n }).to_string()),
            Err(e) => Event::default().event("error").data(json!({ "error": e }).to_string()),
        })
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

/// Backfills a tail through the query engine (time and service pruning of
/// segments and pages, as for SQL).
pub(crate) struct QueryBackfill {
    pub(crate) query: Arc<QueryEngine>,
}

impl TailBackfill for QueryBackfill {
    fn scan(
        &self,
        db: String,
        table: String,
        snapshot: TableSnapshot,
        from_ns: i64,
        services: Vec<String>,
    ) -> BoxFuture<'static, Result<BatchStream, String>> {
        let query = Arc::clone(&self.query);
        Box::pin(async move {
            let stream = query
                .scan_snapshot_since(&db, &table, snapshot, from_ns, &services)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::pin(stream.map(|b| b.map_err(|e| e.to_string()))) as BatchStream)
        })
    }
}
