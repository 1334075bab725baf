//! HTTP API of the alerting engine: alerts (list, ack, unack, resolve),
//! silences (CRUD), rules (health, reload).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tocsin_alerting::state::{MatcherSpec, Silence};
use tocsin_alerting::{AlertEngine, EngineError};

use crate::guard::Routes;
use crate::http::{ApiError, AppState};

/// The alerting routes: reading needs `read_alerts`; acknowledging `ack`;
/// silencing `silence`; reloading rules `rules`.
pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::Requires;
    use tocsin_auth::Permission::{Ack, ReadAlerts, Rules, Silence};
    r.get("/api/v1/alerts", Requires(ReadAlerts), list_alerts)
        .get("/api/v1/alerts/{id}", Requires(ReadAlerts), get_alert)
        .post("/api/v1/alerts/{id}/ack", Requires(Ack), ack)
        .post("/api/v1/alerts/{id}/unack", Requires(Ack), unack)
        .post("/api/v1/alerts/{id}/resolve", Requires(Ack), resolve)
        .get("/api/v1/silences", Requires(ReadAlerts), list_silences)
        .post("/api/v1/silences", Requires(Silence), add_silence)
        .get("/api/v1/silences/{id}", Requires(ReadAlerts), get_silence)
        .delete("/api/v1/silences/{id}", Requires(Silence), expire_silence)
        .get("/api/v1/rules", Requires(ReadAlerts), rules)
        .post("/api/v1/rules/reload", Requires(Rules), reload)
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NoSuchAlert(_) | EngineError::NoSuchSilence(_) => StatusCode::NOT_FOUND,
            EngineError::BadRequest(_) | EngineError::Config(_) | EngineError::NoRulesPath => StatusCode::BAD_REQUEST,
            EngineError::StateIo { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body must be JSON like {example}: {e}")))
}

/// `?state=firing&host=web-1`: `state` filters by state (`active` means
/// pending or firing), every other parameter is an exact label match.
async fn list_alerts(
    State(engine): State<Arc<AlertEngine>>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let mut labels = params;
    let state = labels.remove("state");
    axum::Json(json!({ "alerts": engine.alerts(state.as_deref(), &labels) })).into_response()
}

async fn get_alert(State(engine): State<Arc<AlertEngine>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let a = engine.alert(&id).ok_or(EngineError::NoSuchAlert(id))?;
    Ok(axum::Json(a).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhoRequest {
    by: String,
    #[serde(default)]
    comment: String,
}

fn who(body: &Bytes) -> Result<WhoRequest, ApiError> {
    let w: WhoRequest = parse_json(body, r#"{"by": "ann", "comment": "looking"}"#)?;
    if w.by.trim().is_empty() {
        return Err(ApiError::bad_request("`by` (who acts) is required"));
    }
    Ok(w)
}

async fn ack(
    State(engine): State<Arc<AlertEngine>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = who(&body)?;
    Ok(axum::Json(engine.ack(&id, &w.by, &w.comment).await?).into_response())
}

async fn unack(
    State(engine): State<Arc<AlertEngine>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = who(&body)?;
    Ok(axum::Json(engine.unack(&id, &w.by).await?).into_response())
}

async fn resolve(
    State(engine): State<Arc<AlertEngine>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = who(&body)?;
    Ok(axum::Json(engine.resolve(&id, &w.by, &w.comment).await?).into_response())
}

/// Alertmanager's silence shape; times as RFC 3339, or a `duration` from
/// now instead of `endsAt`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SilenceRequest {
    matchers: Vec<MatcherSpec>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    duration: Option<String>,
    created_by: String,
    #[serde(default)]
    comment: String,
}

fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| ApiError::bad_request(format!("{field}: {s:?} is not an RFC 3339 time: {e}")))
}

async fn add_silence(State(engine): State<Arc<AlertEngine>>, body: Bytes) -> Result<Response, ApiError> {
    let r: SilenceRequest = parse_json(
        &body,
        r#"{"matchers": [{"name": "host", "value": "web-1"}], "duration": "2h", "createdBy": "ann", "comment": "reboot"}"#,
    )?;
    let now = engine.clock().now_ms();
    let starts_at = r.starts_at.as_deref().map(|s| parse_time("startsAt", s)).transpose()?.unwrap_or(now);
    let ends_at = match (&r.ends_at, &r.duration) {
        (Some(e), None) => parse_time("endsAt", e)?,
        (None, Some(d)) => {
            let d = tocsin_alerting::duration::parse(d).map_err(|e| ApiError::bad_request(format!("duration: {e}")))?;
            starts_at + d.as_millis() as i64
        }
        _ => return Err(ApiError::bad_request("give exactly one of endsAt and duration")),
    };
    let s = engine.add_silence(Silence {
        id: String::new(),
        matchers: r.matchers,
        starts_at,
        ends_at,
        created_by: r.created_by,
        comment: r.comment,
        created_at: 0,
    })?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "silenceID": s.id }))).into_response())
}

async fn list_silences(State(engine): State<Arc<AlertEngine>>) -> Response {
    axum::Json(json!({ "silences": engine.silences() })).into_response()
}

async fn get_silence(State(engine): State<Arc<AlertEngine>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(engine.silence(&id).ok_or(EngineError::NoSuchSilence(id))?).into_response())
}

async fn expire_silence(State(engine): State<Arc<AlertEngine>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    engine.expire_silence(&id)?;
    Ok(axum::Json(json!({ "expired": id })).into_response())
}

async fn rules(State(engine): State<Arc<AlertEngine>>) -> Response {
    axum::Json(json!({ "rules": engine.rules_health() })).into_response()
}

async fn reload(State(engine): State<Arc<AlertEngine>>) -> Result<Response, ApiError> {
    let n = engine.reload()?;
    Ok(axum::Json(json!({ "rules": n })).into_response())
}
