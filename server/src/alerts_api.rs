//! HTTP API of the alerting engine: alerts (list, ack, unack, resolve),
//! silences (CRUD), rules (health, reload).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tocsin_alerting::state::{MatcherSpec, Silence, SilenceScope};
use tocsin_alerting::{AlertEngine, EngineError};
use tocsin_auth::{AlertScope, Principal};

use crate::guard::Routes;
use crate::http::{ApiError, AppState};

/// The alerting routes: reading needs `read_alerts`; acknowledging `ack`;
/// silencing `silence`; reloading rules `rules`. A role with an alert scope
/// (`[auth.roles.R.alerts]`) sees and acts on the alerts in it only: lists
/// are filtered, an alert or silence outside it is refused (403), and its
/// silences mute only alerts in its scope.
pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::Requires;
    use tocsin_auth::Permission::{Ack, ReadAlerts, Rules, Silence};
    r.get("/api/v1/alerts", Requires(ReadAlerts), list_alerts)
        .get("/api/v1/alerts/{id}", Requires(ReadAlerts), get_alert)
        .get("/api/v1/alerts/{id}/history", Requires(ReadAlerts), alert_history)
        .post("/api/v1/alerts/{id}/ack", Requires(Ack), ack)
        .post("/api/v1/alerts/{id}/unack", Requires(Ack), unack)
        .post("/api/v1/alerts/{id}/resolve", Requires(Ack), resolve)
        .get("/api/v1/silences", Requires(ReadAlerts), list_silences)
        .post("/api/v1/silences", Requires(Silence), add_silence)
        .get("/api/v1/silences/{id}", Requires(ReadAlerts), get_silence)
        .delete("/api/v1/silences/{id}", Requires(Silence), expire_silence)
        .get("/api/v1/rules", Requires(ReadAlerts), rules)
        .get("/api/v1/oncall", Requires(ReadAlerts), oncall)
        .get("/api/v1/oncall/overrides", Requires(ReadAlerts), list_overrides)
        .post("/api/v1/oncall/overrides", Requires(Rules), add_override)
        .delete("/api/v1/oncall/overrides/{id}", Requires(Rules), remove_override)
        .post("/api/v1/rules/reload", Requires(Rules), reload)
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::classified(&e)
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    // An empty body is `{}`: routes whose fields all have defaults take it.
    let (text, empty): (&[u8], bool) = if body.is_empty() { (b"{}", true) } else { (body, false) };
    serde_json::from_slice(text).map_err(|e| {
        ApiError::bad_request(if empty {
            format!("the request body is empty; send JSON like {example}")
        } else {
            format!("request body must be JSON like {example}: {e}")
        })
    })
}

pub(crate) fn alert_scope(who: &Principal) -> Option<&AlertScope> {
    who.role.alerts.as_ref()
}

/// Whether `who` may see an alert of rule group `group` with `labels`, as
/// [`tocsin_alerting::AlertFilter::visible`] asks.
pub(crate) fn visible_to(who: &Principal) -> impl Fn(&str, &tocsin_alerting::matcher::Labels) -> bool + '_ {
    let scope = alert_scope(who);
    move |group, labels| scope.is_none_or(|s| s.covers(group, |name| labels.get(name).map(String::as_str)))
}

/// A query parameter that must be a non-negative integer, if given.
pub(crate) fn count_param(name: &str, value: Option<&str>) -> Result<Option<usize>, ApiError> {
    value
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("{name} {:?} is not a non-negative integer", tocsin_auth::clip(v)))
            })
        })
        .transpose()
}

/// Whether an alert (as the engine shows it) is in `scope`.
pub(crate) fn covers(scope: &AlertScope, alert: &serde_json::Value) -> bool {
    scope.covers(alert["group"].as_str().unwrap_or_default(), |name| alert["labels"][name].as_str())
}

/// The alert `id`, if `who` may see and act on it.
fn scoped_alert(engine: &AlertEngine, who: &Principal, id: &str) -> Result<serde_json::Value, ApiError> {
    let a = engine.alert(id).ok_or_else(|| EngineError::NoSuchAlert(id.to_string()))?;
    match alert_scope(who) {
        // As if it did not exist: an id is a hash of the alert's labels,
        // so a refusal would tell a role that guessed the labels whether
        // an alert outside its scope is active.
        Some(scope) if !covers(scope, &a) => Err(EngineError::NoSuchAlert(id.to_string()).into()),
        _ => Ok(a),
    }
}

/// `?state=firing&host=web-1`: `state` filters by state (`active` means
/// pending or firing), `q` by text (a part of the name, a label or an
/// annotation, any case), every other parameter is an exact label match.
/// With `limit` (at most 10,000) or `offset`, one page of the alerts in
/// the console's order (most severe first, then the most recent), and
/// `total` says how many there are.
async fn list_alerts(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut labels = params;
    let state = labels.remove("state");
    let text = labels.remove("q").map(|q| q.to_lowercase()).filter(|q| !q.is_empty());
    let limit = count_param("limit", labels.remove("limit").as_deref())?;
    let offset = count_param("offset", labels.remove("offset").as_deref())?;
    if limit.is_some_and(|l| l > MAX_PAGE) {
        return Err(ApiError::bad_request(format!("limit is at most {MAX_PAGE}")));
    }
    const STATES: [&str; 5] = ["active", "pending", "firing", "resolved", "inactive"];
    if let Some(s) = state.as_deref().filter(|s| !STATES.contains(s)) {
        return Err(ApiError::bad_request(format!(
            "state {:?} is none of {}",
            tocsin_auth::clip(s),
            STATES.join(", ")
        )));
    }
    if limit.is_some() || offset.is_some() {
        let visible = visible_to(&who);
        let filter = tocsin_alerting::AlertFilter {
            state: state.as_deref(),
            labels: &labels,
            text: text.as_deref(),
            visible: &visible,
            rank: &crate::console::severity_rank,
        };
        let offset = offset.unwrap_or(0);
        let (page, total) = engine.alerts_page(&filter, offset, limit.unwrap_or(MAX_PAGE));
        return Ok(axum::Json(json!({ "alerts": page, "total": total, "offset": offset })).into_response());
    }
    let mut alerts = engine.alerts(state.as_deref(), &labels);
    if let Some(scope) = alert_scope(&who) {
        alerts.retain(|a| covers(scope, a));
    }
    if let Some(q) = &text {
        alerts.retain(|a| {
            let hit = |v: &serde_json::Value| v.as_str().is_some_and(|s| s.to_lowercase().contains(q.as_str()));
            let values = |m: &serde_json::Value| m.as_object().is_some_and(|o| o.values().any(hit));
            hit(&a["alertname"]) || values(&a["labels"]) || values(&a["annotations"])
        });
    }
    let total = alerts.len();
    Ok(axum::Json(json!({ "alerts": alerts, "total": total })).into_response())
}

/// The most alerts one page holds.
const MAX_PAGE: usize = 10_000;

/// `GET /api/v1/alerts/{id}/history`: the alert's transitions, newest
/// first (at most 500), for whoever may see the alert: `system.alert_history`
/// itself holds every alert, so a role limited to some alerts cannot read
/// it, but may read the history of its own.
async fn alert_history(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no alert {:?}", tocsin_auth::clip(&id))));
    }
    scoped_alert(&app.alerts, &who, &id)?;
    // An id the engine knows is a hex fingerprint; checked anyway, as it
    // goes into the statement's text.
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request(format!("alert id {:?} is not an alert id", tocsin_auth::clip(&id))));
    }
    let statement = format!(
        "SELECT ts, from_state, to_state, severity, value, note FROM system.alert_history WHERE id = '{id}' \
         ORDER BY ts DESC LIMIT 500"
    );
    let r = app.query.execute_as(&statement, None, None).await?;
    let history = crate::format::encode(crate::format::OutputFormat::Json, &r.schema, &r.batches)
        .map_err(|e| ApiError::internal(format!("encoding the history: {e}")))?;
    let body = format!("{{\"id\":{},\"history\":{}}}", json!(id), String::from_utf8_lossy(&history));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_alert(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(scoped_alert(&engine, &who, &id)?).into_response())
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
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = who(&body)?;
    scoped_alert(&engine, &caller, &id)?;
    Ok(axum::Json(engine.ack(&id, &w.by, &w.comment).await?).into_response())
}

async fn unack(
    State(engine): State<Arc<AlertEngine>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = who(&body)?;
    scoped_alert(&engine, &caller, &id)?;
    Ok(axum::Json(engine.unack(&id, &w.by).await?).into_response())
}

async fn resolve(
    State(engine): State<Arc<AlertEngine>>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let w = who(&body)?;
    scoped_alert(&engine, &caller, &id)?;
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

pub(crate) fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| ApiError::bad_request(format!("{field}: {s:?} is not an RFC 3339 time: {e}")))
}

/// A period given as `startsAt` (default `now`) and either `endsAt` or a
/// `duration`, in Unix milliseconds.
fn period(
    now: i64,
    starts_at: &Option<String>,
    ends_at: &Option<String>,
    duration: &Option<String>,
) -> Result<(i64, i64), ApiError> {
    let starts_at = starts_at.as_deref().map(|s| parse_time("startsAt", s)).transpose()?.unwrap_or(now);
    let ends_at = match (ends_at, duration) {
        (Some(e), None) => parse_time("endsAt", e)?,
        (None, Some(d)) => {
            let d = tocsin_alerting::duration::parse(d).map_err(|e| ApiError::bad_request(format!("duration: {e}")))?;
            starts_at.saturating_add(d.as_millis() as i64)
        }
        _ => return Err(ApiError::bad_request("give exactly one of endsAt and duration")),
    };
    Ok((starts_at, ends_at))
}

async fn add_silence(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: SilenceRequest = parse_json(
        &body,
        r#"{"matchers": [{"name": "host", "value": "web-1"}], "duration": "2h", "createdBy": "ann", "comment": "reboot"}"#,
    )?;
    let (starts_at, ends_at) = period(engine.clock().now_ms(), &r.starts_at, &r.ends_at, &r.duration)?;
    let s = engine.add_silence(Silence {
        id: String::new(),
        matchers: r.matchers,
        starts_at,
        ends_at,
        created_by: r.created_by,
        comment: r.comment,
        created_at: 0,
        scope: alert_scope(&who).map(|a| SilenceScope { role: who.role.name.clone(), alerts: a.clone() }),
    })?;
    engine.journal_synced().await;
    Ok((StatusCode::CREATED, axum::Json(json!({ "silenceID": s.id }))).into_response())
}

/// A scoped role sees the silences made in its scope only.
pub(crate) fn own_silence(who: &Principal, silence: &serde_json::Value) -> bool {
    alert_scope(who).is_none() || silence["scope"].as_str() == Some(who.role.name.as_str())
}

async fn list_silences(State(engine): State<Arc<AlertEngine>>, Extension(who): Extension<Principal>) -> Response {
    let mut silences = engine.silences();
    silences.retain(|s| own_silence(&who, s));
    axum::Json(json!({ "silences": silences })).into_response()
}

pub(crate) fn scoped_silence(engine: &AlertEngine, who: &Principal, id: &str) -> Result<serde_json::Value, ApiError> {
    let s = engine.silence(id).ok_or_else(|| EngineError::NoSuchSilence(id.to_string()))?;
    if own_silence(who, &s) {
        Ok(s)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} (role {}) may not see or expire silence {id}: another role made it", who.name, who.role.name),
        ))
    }
}

async fn get_silence(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(scoped_silence(&engine, &who, &id)?).into_response())
}

async fn expire_silence(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    scoped_silence(&engine, &who, &id)?;
    engine.expire_silence(&id)?;
    engine.journal_synced().await;
    Ok(axum::Json(json!({ "expired": id })).into_response())
}

async fn rules(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    let mut rules = app.alerts.rules_health();
    if let Some(scope) = alert_scope(&who) {
        rules.retain(|r| scope.groups.is_empty() || scope.groups.iter().any(|g| tocsin_auth::glob(g, &r.group)));
    }
    // Rules run as the server: the hint of a missing table names every
    // database that has one, which only an admin may learn.
    if who.require(tocsin_auth::Permission::Admin).is_err() {
        for e in rules.iter_mut().filter_map(|r| r.error.as_mut()) {
            if let Some(i) = e.find(tocsin_query::TABLE_ELSEWHERE) {
                e.truncate(i);
            }
        }
    }
    // A role limited to some databases or tables is not shown the
    // statement, nor the error (which may list a table's columns), of a
    // rule that reads tables outside them; a PromQL rule's metrics are
    // tables too, and are not checked one by one: hidden likewise.
    let limited = !who.role.databases.is_empty() || !who.role.tables.is_empty();
    if limited && who.require(tocsin_auth::Permission::Admin).is_err() {
        for r in rules.iter_mut() {
            let outside = match r.language.as_str() {
                "sql" => match app.query.describe(&r.query, r.database.as_deref(), Some(&who)).await {
                    Err(e) => matches!(e.unwrapped(), tocsin_query::QueryError::Auth(_)),
                    Ok(_) => false,
                },
                _ => true,
            };
            if outside {
                r.query = String::new();
                if r.error.is_some() {
                    r.error = Some("failed; it reads tables outside your role, so the reason is not shown".into());
                }
            }
        }
    }
    axum::Json(json!({ "rules": rules })).into_response()
}

async fn reload(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let n = engine.reload().map_err(|e| {
        // The message may quote any group's rules: a role limited to some
        // alerts hears only that the files do not load, as from the check.
        match alert_scope(&who) {
            Some(_) => ApiError::classified(&e).with_message(crate::console::RULES_DO_NOT_LOAD),
            None => e.into(),
        }
    })?;
    Ok(axum::Json(json!({ "rules": n })).into_response())
}

#[derive(Deserialize)]
struct OnCallQuery {
    at: Option<String>,
}

/// Who is on call in each schedule now (or `?at=` an RFC 3339 time), and
/// who is next.
/// `POST /api/v1/oncall/overrides`: `endsAt`, or `duration` from
/// `startsAt` (default now).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OverrideRequest {
    schedule: String,
    member: String,
    starts_at: Option<String>,
    ends_at: Option<String>,
    duration: Option<String>,
    created_by: String,
    #[serde(default)]
    comment: String,
}

async fn add_override(State(engine): State<Arc<AlertEngine>>, body: Bytes) -> Result<Response, ApiError> {
    let r: OverrideRequest = parse_json(
        &body,
        r#"{"schedule": "primary", "member": "bob", "duration": "8h", "createdBy": "ann", "comment": "swap with Alice"}"#,
    )?;
    let (starts_at, ends_at) = period(engine.clock().now_ms(), &r.starts_at, &r.ends_at, &r.duration)?;
    let o = engine.add_override(tocsin_alerting::oncall::OverrideEntry {
        id: String::new(),
        schedule: r.schedule,
        member: r.member,
        starts_at,
        ends_at,
        created_by: r.created_by,
        comment: r.comment,
        created_at: 0,
    })?;
    engine.journal_synced().await;
    Ok((StatusCode::CREATED, axum::Json(override_json(&o))).into_response())
}

fn override_json(o: &tocsin_alerting::oncall::OverrideEntry) -> serde_json::Value {
    let t = tocsin_alerting::dispatch::rfc3339;
    json!({
        "id": o.id, "schedule": o.schedule, "member": o.member, "startsAt": t(o.starts_at), "endsAt": t(o.ends_at),
        "createdBy": o.created_by, "comment": o.comment, "createdAt": t(o.created_at),
    })
}

async fn list_overrides(State(engine): State<Arc<AlertEngine>>) -> Result<Response, ApiError> {
    let list: Vec<serde_json::Value> = engine.overrides().iter().map(override_json).collect();
    Ok(axum::Json(json!({ "overrides": list })).into_response())
}

async fn remove_override(State(engine): State<Arc<AlertEngine>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    engine.remove_override(&id)?;
    engine.journal_synced().await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn oncall(State(engine): State<Arc<AlertEngine>>, Query(q): Query<OnCallQuery>) -> Result<Response, ApiError> {
    let at = match q.at.as_deref() {
        Some(t) => parse_time("at", t)?,
        None => engine.clock().now_ms(),
    };
    Ok(axum::Json(json!({ "at": tocsin_alerting::dispatch::rfc3339(at), "schedules": engine.oncall(at) }))
        .into_response())
}
