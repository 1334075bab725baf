//! Alertmanager's v2 API, so that `amtool`, Grafana's Alertmanager data
//! source, Prometheus and vmalert work against Tocsin unchanged:
//!
//! - `GET /api/v2/alerts` (with `filter`, `active`, `silenced`,
//!   `inhibited`, `receiver`), `POST /api/v2/alerts` (posted alerts enter
//!   the engine: see `tocsin_alerting::external`);
//! - `GET`/`POST /api/v2/silences`, `GET`/`DELETE /api/v2/silence/{id}`;
//! - `GET /api/v2/status`, `GET /api/v2/receivers`.
//!
//! Reading needs `read_alerts`, posting alerts `post_alerts` (role
//! `alerter`; not `write`: a collector's token must not page people),
//! silences `silence`; a role limited to some alerts sees, posts and
//! silences those only, as on `/api/v1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tocsin_alerting::AlertEngine;
use tocsin_alerting::matcher::LabelMatcher;
use tocsin_alerting::state::{MatcherSpec, Silence, SilenceScope};
use tocsin_auth::Principal;

use crate::alerts_api::{alert_scope, covers, own_silence, parse_json, parse_time, scoped_silence};
use crate::guard::Routes;
use crate::http::{ApiError, AppState};

/// An error as Alertmanager's v2 API answers it: a bare JSON string
/// (amtool printed `json: cannot unmarshal object` for `{"error": ...}`).
pub(crate) struct AmError(ApiError);

impl<E: Into<ApiError>> From<E> for AmError {
    fn from(e: E) -> Self {
        AmError(e.into())
    }
}

impl IntoResponse for AmError {
    fn into_response(self) -> Response {
        self.0.into_bare_response()
    }
}

pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::Requires;
    use tocsin_auth::Permission::{PostAlerts, ReadAlerts, Silence as SilencePerm};
    r.get("/api/v2/alerts", Requires(ReadAlerts), list_alerts)
        .post("/api/v2/alerts", Requires(PostAlerts), post_alerts)
        .get("/api/v2/silences", Requires(ReadAlerts), list_silences)
        .post("/api/v2/silences", Requires(SilencePerm), add_silence)
        .get("/api/v2/silence/{id}", Requires(ReadAlerts), get_silence)
        .delete("/api/v2/silence/{id}", Requires(SilencePerm), expire_silence)
        .get("/api/v2/status", Requires(ReadAlerts), status)
        .get("/api/v2/receivers", Requires(ReadAlerts), receivers)
}

/// One `filter` value: a matcher (`name="value"`, `name=~"re"`,
/// `name!="v"`, `name!~"re"`, quotes optional) or, as Alertmanager reads
/// it, a list of them in braces or separated by commas
/// (`{alertname="Hot",host="a"}`).
fn parse_matchers(s: &str) -> Result<Vec<LabelMatcher>, ApiError> {
    let inner = s.trim();
    let inner = inner.strip_prefix('{').and_then(|i| i.strip_suffix('}')).unwrap_or(inner);
    // Commas inside quoted values do not split.
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).map(parse_matcher).collect()
}

fn parse_matcher(s: &str) -> Result<LabelMatcher, ApiError> {
    let bad = || {
        ApiError::bad_request(format!("filter {:?} is not a matcher like alertname=\"HighCpu\"", tocsin_auth::clip(s)))
    };
    let at = s.find(['=', '!']).ok_or_else(bad)?;
    let (name, rest) = s.split_at(at);
    let (op, value) =
        ["=~", "!~", "!=", "="].iter().find_map(|op| rest.strip_prefix(op).map(|v| (*op, v))).ok_or_else(bad)?;
    let value = value.trim();
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    LabelMatcher::new(name.trim(), value, op.ends_with('~'), !op.starts_with('!')).map_err(ApiError::bad_request)
}

/// A boolean query parameter (`active=false`); another value is an error,
/// not ignored.
fn flag(pairs: &[(String, String)], name: &str, default: bool) -> Result<bool, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!("{name}={:?}: use true or false", tocsin_auth::clip(v)))),
    }
}

/// The `filter` parameters of a request, each a matcher or a list of them.
fn filters(pairs: &[(String, String)]) -> Result<Vec<LabelMatcher>, ApiError> {
    let mut out = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "filter") {
        out.extend(parse_matchers(v)?);
    }
    Ok(out)
}

/// An alert as the engine shows it, in Alertmanager's `GettableAlert` form.
fn gettable(engine: &AlertEngine, a: &Value) -> Value {
    let labels: BTreeMap<String, String> = serde_json::from_value(a["labels"].clone()).unwrap_or_default();
    let muted = &a["muted"];
    let ids = |kind: &str| -> Vec<Value> {
        if muted["kind"] == kind { muted["by"].as_array().cloned().unwrap_or_default() } else { Vec::new() }
    };
    let silenced = ids("silenced");
    let mut inhibited = ids("inhibited");
    inhibited.extend(ids("suppressed"));
    // Alertmanager 0.27's `mutedBy`: the time interval that holds it.
    let muted_by = ids("time_interval");
    let state = if muted.is_null() { "active" } else { "suppressed" };
    let receivers: Vec<Value> = engine.receivers_of(&labels).into_iter().map(|n| json!({ "name": n })).collect();
    // A posted alert keeps the endsAt its sender gave; a rule's firing
    // alert has none (it fires until a round finds it clear), so it is
    // shown ending in Alertmanager's resolve_timeout, as Alertmanager
    // shows an alert posted without one (tools read 0001-01-01 as unset).
    let ends_at = match a["endsAt"].as_str() {
        Some(t) => t.to_string(),
        None => {
            tocsin_alerting::dispatch::rfc3339(engine.clock().now_ms() + tocsin_alerting::external::RESOLVE_TIMEOUT_MS)
        }
    };
    let generator_url = match a["generatorURL"].as_str() {
        Some(u) => u.to_string(),
        None => format!("{}/api/v1/alerts/{}", engine.external_url(), a["id"].as_str().unwrap_or("")),
    };
    json!({
        "fingerprint": a["id"],
        "labels": labels,
        "annotations": a["annotations"],
        "startsAt": a["activeSince"].as_str().unwrap_or("0001-01-01T00:00:00Z"),
        "endsAt": ends_at,
        "updatedAt": a["updatedAt"],
        "generatorURL": generator_url,
        "receivers": receivers,
        "status": { "state": state, "silencedBy": silenced, "inhibitedBy": inhibited, "mutedBy": muted_by },
    })
}

async fn list_alerts(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AmError> {
    let filters = filters(&pairs)?;
    let receiver = match pairs.iter().find(|(k, _)| k == "receiver") {
        Some((_, re)) => Some(
            regex::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| ApiError::bad_request(format!("receiver {re:?} is not a regex: {e}")))?,
        ),
        None => None,
    };
    let (active, silenced, inhibited) =
        (flag(&pairs, "active", true)?, flag(&pairs, "silenced", true)?, flag(&pairs, "inhibited", true)?);
    let scope = alert_scope(&who);
    let mut out = Vec::new();
    for a in engine.alerts(Some("firing"), &BTreeMap::new()) {
        if scope.is_some_and(|s| !covers(s, &a)) {
            continue;
        }
        let labels: BTreeMap<String, String> = serde_json::from_value(a["labels"].clone()).unwrap_or_default();
        if !filters.iter().all(|m| m.matches(&labels)) {
            continue;
        }
        let g = gettable(&engine, &a);
        let is_silenced = !g["status"]["silencedBy"].as_array().is_none_or(Vec::is_empty);
        let is_inhibited = !g["status"]["inhibitedBy"].as_array().is_none_or(Vec::is_empty);
        let is_active = g["status"]["state"] == "active";
        if (is_active && !active) || (is_silenced && !silenced) || (is_inhibited && !inhibited) {
            continue;
        }
        if let Some(re) = &receiver
            && !g["receivers"].as_array().into_iter().flatten().any(|r| re.is_match(r["name"].as_str().unwrap_or("")))
        {
            continue;
        }
        out.push(g);
    }
    Ok(axum::Json(out).into_response())
}

async fn post_alerts(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, AmError> {
    let alerts: Vec<tocsin_alerting::external::PostableAlert> =
        parse_json(&body, r#"[{"labels": {"alertname": "HighCpu", "host": "web-1"}, "annotations": {}}]"#)?;
    if let Some(scope) = alert_scope(&who)
        && let Some((i, _)) = alerts
            .iter()
            .enumerate()
            .find(|(_, a)| !scope.covers(tocsin_alerting::external::GROUP, |n| a.labels.get(n).map(String::as_str)))
    {
        return Err(AmError(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} (role {}) may not post alert {i}: it is outside the role's alerts", who.name, who.role.name),
        )));
    }
    engine.post_alerts(alerts).await?;
    Ok(StatusCode::OK.into_response())
}

/// A silence as the engine shows it, in Alertmanager's `GettableSilence`.
fn gettable_silence(s: &Value) -> Value {
    json!({
        "id": s["id"],
        "status": s["status"],
        "updatedAt": s["startsAt"],
        "matchers": s["matchers"],
        "startsAt": s["startsAt"],
        "endsAt": s["endsAt"],
        "createdBy": s["createdBy"],
        "comment": s["comment"],
    })
}

async fn list_silences(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AmError> {
    let filters = filters(&pairs)?;
    let out: Vec<Value> = engine
        .silences()
        .iter()
        .filter(|s| own_silence(&who, s))
        .filter(|s| {
            // A silence matches a filter when one of its matchers is an
            // equality on that label that the filter accepts.
            let eq: BTreeMap<String, String> = s["matchers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["isEqual"] != false && m["isRegex"] != true)
                .filter_map(|m| Some((m["name"].as_str()?.to_string(), m["value"].as_str()?.to_string())))
                .collect();
            filters.iter().all(|f| f.matches(&eq))
        })
        .map(gettable_silence)
        .collect();
    Ok(axum::Json(out).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostableSilence {
    #[serde(default)]
    id: Option<String>,
    matchers: Vec<MatcherSpec>,
    starts_at: String,
    ends_at: String,
    created_by: String,
    #[serde(default)]
    comment: String,
}

async fn add_silence(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, AmError> {
    let r: PostableSilence = parse_json(
        &body,
        r#"{"matchers": [{"name": "host", "value": "web-1", "isRegex": false}], "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-01T02:00:00Z", "createdBy": "ann", "comment": "reboot"}"#,
    )?;
    // Alertmanager updates a silence by expiring it and making a new one.
    let replaces = r.id.clone().filter(|id| !id.is_empty());
    if let Some(id) = &replaces {
        scoped_silence(&engine, &who, id)?;
    }
    let now = engine.clock().now_ms();
    let silence = Silence {
        id: String::new(),
        matchers: r.matchers,
        starts_at: parse_time("startsAt", &r.starts_at)?.max(now),
        ends_at: parse_time("endsAt", &r.ends_at)?,
        created_by: r.created_by,
        comment: r.comment,
        created_at: 0,
        scope: alert_scope(&who).map(|a| SilenceScope { role: who.role.name.clone(), alerts: a.clone() }),
    };
    let s = match &replaces {
        Some(id) => engine.replace_silence(id, silence)?,
        None => engine.add_silence(silence)?,
    };
    engine.journal_synced().await;
    Ok(axum::Json(json!({ "silenceID": s.id })).into_response())
}

async fn get_silence(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, AmError> {
    Ok(axum::Json(gettable_silence(&scoped_silence(&engine, &who, &id)?)).into_response())
}

async fn expire_silence(
    State(engine): State<Arc<AlertEngine>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, AmError> {
    scoped_silence(&engine, &who, &id)?;
    engine.expire_silence(&id)?;
    engine.journal_synced().await;
    Ok(StatusCode::OK.into_response())
}

async fn status(State(app): State<AppState>) -> Response {
    axum::Json(json!({
        "cluster": { "name": "tocsin", "status": "disabled", "peers": [] },
        "versionInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "none (Tocsin)",
        },
        "config": { "original": "# Tocsin: routes, receivers and rules are in the rules files (docs/alerting.md)\n" },
        "uptime": tocsin_alerting::dispatch::rfc3339(app.alerts.started_at()),
    }))
    .into_response()
}

async fn receivers(State(engine): State<Arc<AlertEngine>>) -> Response {
    let names: Vec<Value> = engine.receiver_names().into_iter().map(|n| json!({ "name": n })).collect();
    axum::Json(names).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Review of issue 13: `{alertname="Hot"}` and comma lists matched
    /// nothing, silently; `active=maybe` was ignored.
    #[test]
    fn filters_are_read_as_alertmanager_reads_them() {
        let hot = labels(&[("alertname", "Hot"), ("host", "esc-2")]);
        for f in [
            r#"alertname="Hot""#,
            r#"{alertname="Hot"}"#,
            r#"alertname="Hot",host="esc-2""#,
            r#"{alertname=~"H.*", host!="x"}"#,
        ] {
            let ms = parse_matchers(f).expect(f);
            assert!(!ms.is_empty() && ms.iter().all(|m| m.matches(&hot)), "{f}");
        }
        let ms = parse_matchers(r#"{alertname="Hot",host="esc-3"}"#).expect("two");
        assert_eq!(ms.len(), 2);
        assert!(!ms.iter().all(|m| m.matches(&hot)));
        let comma = parse_matchers(r#"summary="a, b""#).expect("a comma in quotes");
        assert!(comma[0].matches(&labels(&[("summary", "a, b")])));
        assert!(parse_matchers("{nonsense}").is_err());
        let q = |v: &str| vec![("active".to_string(), v.to_string())];
        assert!(flag(&q("false"), "active", true).is_ok_and(|f| !f));
        assert!(flag(&q("maybe"), "active", true).is_err());
        assert!(flag(&[], "active", true).is_ok_and(|f| f));
    }
}
