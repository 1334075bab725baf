//! The web console (docs/console.md): static pages embedded in the binary,
//! served at `/` and the views' paths, and the few endpoints only it
//! needs. The pages hold no data: everything they show comes from the
//! public HTTP API, with the credentials of the person using them, so the
//! pages themselves are public and every view obeys its caller's role.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tocsin_auth::{Permission, Principal};

use crate::alerts_api::{alert_scope, count_param, visible_to};
use crate::guard::Routes;
use crate::http::{ApiError, AppState};

pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::{Authenticated, Public, Requires};
    use tocsin_auth::Permission::{ReadAlerts, Rules};
    let mut r = r;
    for path in VIEWS {
        r = r.get(path, Public, page);
    }
    r.get("/console/{file}", Public, asset)
        .get("/api/v1/console", Authenticated, session)
        .get("/api/v1/alerts/groups", Requires(ReadAlerts), groups)
        .get("/api/v1/alerts/summary", Requires(ReadAlerts), summary)
        .post("/api/v1/rules/check", Requires(Rules), check_rules)
}

/// The views' paths: each answers the same page, which shows the view its
/// address names (so every view can be bookmarked and shared).
const VIEWS: [&str; 8] = ["/", "/alerts", "/rules", "/explore", "/logs", "/trace", "/trace/{id}", "/audit"];

/// The address of the console page `uri` means when it is not one itself:
/// a view's path with a trailing slash, or `/index.html`; its query kept.
pub(crate) fn page_address(uri: &axum::http::Uri) -> Option<String> {
    let path = uri.path();
    let page = if path == "/index.html" { "/" } else { path.strip_suffix('/')? };
    let trace = page.strip_prefix("/trace/").is_some_and(|id| !id.is_empty() && !id.contains('/'));
    if !(trace || VIEWS.contains(&page)) {
        return None;
    }
    Some(match uri.query() {
        Some(q) => format!("{page}?{q}"),
        None => page.to_string(),
    })
}

/// The embedded files: name, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 12] = [
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../console/app.js")),
    ("overview.js", "text/javascript; charset=utf-8", include_bytes!("../console/overview.js")),
    ("alerts.js", "text/javascript; charset=utf-8", include_bytes!("../console/alerts.js")),
    ("rules.js", "text/javascript; charset=utf-8", include_bytes!("../console/rules.js")),
    ("explore.js", "text/javascript; charset=utf-8", include_bytes!("../console/explore.js")),
    ("logs.js", "text/javascript; charset=utf-8", include_bytes!("../console/logs.js")),
    ("trace.js", "text/javascript; charset=utf-8", include_bytes!("../console/trace.js")),
    ("audit.js", "text/javascript; charset=utf-8", include_bytes!("../console/audit.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../console/style.css")),
    ("uPlot.iife.min.js", "text/javascript; charset=utf-8", include_bytes!("../console/vendor/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../console/vendor/uPlot.min.css")),
    ("uPlot.LICENSE", "text/plain; charset=utf-8", include_bytes!("../console/vendor/uPlot.LICENSE")),
];

const INDEX: &[u8] = include_bytes!("../console/index.html");

/// Scripts and styles from this server only, no inline script or style,
/// no framing (clickjacking), no other origin to talk to.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn disabled() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "the console is off ([console] enabled = false)".into())
}

/// A weak validator of an embedded file: the same binary serves the same
/// bytes, so the version and the length tell them apart across upgrades.
fn etag(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("\"{}-{:x}\"", env!("CARGO_PKG_VERSION"), h.finish())
}

fn serve(headers: &HeaderMap, content_type: &'static str, bytes: &'static [u8]) -> Response {
    let tag = etag(bytes);
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    // Files are checked at each load (a 304 when unchanged), so an upgrade
    // is seen; the page is not kept at all, so that Back after logging
    // out does not show what the page showed.
    let cache = if content_type.starts_with("text/html") { "no-store" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

async fn page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if !app.console.enabled {
        return disabled().into_response();
    }
    serve(&headers, "text/html; charset=utf-8", INDEX)
}

async fn asset(State(app): State<AppState>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    if !app.console.enabled {
        return disabled().into_response();
    }
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => serve(&headers, content_type, bytes),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no console file {:?}", tocsin_auth::clip(&file)))
            .into_response(),
    }
}

/// `GET /api/v1/console`: who the caller is and what they may do (the
/// console shows only the actions the role allows; the server checks each
/// one anyway), and the console's settings.
async fn session(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    let permissions: Vec<String> =
        Permission::ALL.iter().filter(|p| who.role.has(**p)).map(|p| p.to_string()).collect();
    // The panels' statements name tables: only for roles that run SQL.
    let mut config = json!(*app.console);
    if !who.role.has(Permission::Query) {
        config["devicesSql"] = json!("");
        config["panels"] = json!([]);
    }
    axum::Json(json!({
        "auth": app.auth.enabled(),
        "user": {
            "alertScope": alert_scope(&who).is_some(),
            "name": who.name,
            "role": who.role.name,
            "database": who.database,
            "permissions": permissions,
        },
        "version": env!("CARGO_PKG_VERSION"),
        "config": config,
    }))
    .into_response()
}

/// `GET /api/v1/alerts/groups[?limit=N]`: the notification groups open
/// now and the progress of their escalation chains. A role limited to some
/// alerts sees only the groups all of whose alerts it may see: a group's
/// escalation (whom it paged, and why it goes on) speaks for every alert in
/// it. With `limit`, the escalating groups whose next step is due soonest
/// come first, and `total` says how many there are.
async fn groups(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Query(params): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(k) = params.keys().find(|k| *k != "limit") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {:?}; the only one is limit",
            tocsin_auth::clip(k)
        )));
    }
    let limit = count_param("limit", params.get("limit").map(String::as_str))?;
    let mut groups = app.alerts.notification_groups();
    if alert_scope(&who).is_some() {
        // The ids of the alerts the role may see, from the engine's records.
        let visible_to = visible_to(&who);
        let no_labels = std::collections::BTreeMap::new();
        let filter = tocsin_alerting::AlertFilter {
            state: None,
            labels: &no_labels,
            text: None,
            visible: &visible_to,
            rank: &severity_rank,
        };
        let mut visible: HashSet<String> = HashSet::new();
        app.alerts.visit_alerts(&filter, |a| {
            visible.insert(a.id.clone());
        });
        groups.retain(|g| {
            g["alerts"].as_array().is_some_and(|alerts| {
                !alerts.is_empty() && alerts.iter().all(|a| a["id"].as_str().is_some_and(|id| visible.contains(id)))
            })
        });
    }
    let total = groups.len();
    if let Some(limit) = limit {
        // Waiting for a step first, soonest due first; then the rest.
        groups.sort_by_cached_key(|g| {
            let due = g["escalation"]["next"]["dueAt"].as_str().map(str::to_string);
            (due.is_none(), due, g["key"].as_str().unwrap_or_default().to_string())
        });
        groups.truncate(limit);
    }
    Ok(axum::Json(json!({ "groups": groups, "total": total })).into_response())
}

/// Why a rule's statement does not plan, as the caller may learn it: the
/// server's message names tables and columns, so a caller who may not
/// read every table the statement reads hears only that it does not plan;
/// and only an admin learns where else a missing table exists.
async fn planning_error(
    app: &AppState,
    who: &Principal,
    sql: &str,
    db: Option<&str>,
    e: tocsin_query::QueryError,
) -> String {
    if who.require(Permission::Admin).is_ok() {
        return e.unwrapped().to_string();
    }
    if let Err(mine) = app.query.execute_as(&format!("EXPLAIN {sql}"), db, Some(who)).await
        && matches!(mine.unwrapped(), tocsin_query::QueryError::Auth(_))
    {
        return "does not plan; it reads tables outside your role, so the reason is not shown".into();
    }
    let e = e.unwrapped().to_string();
    match e.find(tocsin_query::TABLE_ELSEWHERE) {
        Some(i) => e[..i].to_string(),
        None => e,
    }
}

/// Severities from worst to least, as the console ranks them; any other
/// name ranks after these.
const SEVERITIES: [&str; 7] = ["critical", "error", "major", "warning", "minor", "info", "none"];

pub(crate) fn severity_rank(severity: &str) -> usize {
    SEVERITIES.iter().position(|s| *s == severity).unwrap_or(SEVERITIES.len())
}

/// A device's worst firing alert, in the summary.
#[derive(serde::Serialize)]
struct DeviceBrief {
    device: String,
    severity: String,
    alertname: String,
    labels: std::collections::BTreeMap<String, String>,
}

/// `GET /api/v1/alerts/summary[?device_label=host]`: the firing alerts the
/// caller may see, counted by severity and by rule group, and the worst
/// alert of each device (the value of `device_label`, default the
/// console's), for the overview: a few hundred bytes per device instead
/// of every alert's full record.
async fn summary(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::Query(params): axum::extract::Query<std::collections::BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(k) = params.keys().find(|k| *k != "device_label") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {:?}; the only one is device_label",
            tocsin_auth::clip(k)
        )));
    }
    let label = params.get("device_label").map_or(app.console.device_label.as_str(), String::as_str);
    let visible = visible_to(&who);
    let no_labels = std::collections::BTreeMap::new();
    let filter = tocsin_alerting::AlertFilter {
        state: Some("firing"),
        labels: &no_labels,
        text: None,
        visible: &visible,
        rank: &severity_rank,
    };
    // Counted from the engine's records, without rendering each alert.
    let mut firing = 0u64;
    let mut by_severity: std::collections::BTreeMap<String, u64> = Default::default();
    let mut by_group: std::collections::BTreeMap<String, (u64, String)> = Default::default();
    let mut devices: std::collections::BTreeMap<String, (usize, DeviceBrief)> = Default::default();
    app.alerts.visit_alerts(&filter, |a| {
        firing += 1;
        let sev = a.severity.as_deref().unwrap_or("none");
        let rank = severity_rank(sev);
        *by_severity.entry(sev.to_string()).or_default() += 1;
        let g = by_group.entry(a.group.clone()).or_insert((0, sev.to_string()));
        g.0 += 1;
        if rank < severity_rank(&g.1) {
            g.1 = sev.to_string();
        }
        if let Some(d) = a.labels.get(label)
            && devices.get(d).is_none_or(|(worst, _)| rank < *worst)
        {
            let brief = DeviceBrief {
                device: d.clone(),
                severity: sev.to_string(),
                alertname: a.rule.clone(),
                labels: a.labels.clone(),
            };
            devices.insert(d.clone(), (rank, brief));
        }
    });
    let groups: Vec<serde_json::Value> = by_group
        .into_iter()
        .map(|(group, (firing, worst))| json!({ "group": group, "firing": firing, "worst": worst }))
        .collect();
    let devices: Vec<DeviceBrief> = devices.into_values().map(|(_, brief)| brief).collect();
    Ok(axum::Json(json!({
        "firing": firing,
        "deviceLabel": label,
        "bySeverity": by_severity,
        "byGroup": groups,
        "devices": devices,
    }))
    .into_response())
}

/// What a role limited to some alerts hears of rule files that do not
/// load (the reason may quote any group's rules).
pub(crate) const RULES_DO_NOT_LOAD: &str =
    "the rule files do not load; an administrator can see why (POST /api/v1/rules/check)";

/// `POST /api/v1/rules/check`: the rule files as they are on disk now,
/// loaded and each statement planned (PromQL parsed and evaluated once),
/// without replacing the running rules; what `POST /api/v1/rules/reload`
/// would say, before it is done.
async fn check_rules(State(app): State<AppState>, Extension(who): Extension<Principal>, body: Bytes) -> Response {
    if !body.is_empty() {
        return ApiError::bad_request(
            "this checks the server's own rule files; send no body (edit the files, then check and reload)",
        )
        .into_response();
    }
    let engine = Arc::clone(&app.alerts);
    let loaded = tokio::task::spawn_blocking(move || engine.check_files()).await;
    let config = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // The message may quote any group's rules: a role limited to
            // some alerts hears only that the files do not load.
            let error = match alert_scope(&who) {
                Some(_) => RULES_DO_NOT_LOAD.into(),
                None => e.to_string(),
            };
            return axum::Json(json!({ "ok": false, "error": error, "problems": [] })).into_response();
        }
        Err(e) => return ApiError::internal(format!("the check stopped: {e}")).into_response(),
    };
    // Rules run as the server, so they are planned as the server; a role
    // limited to some alerts hears only of its own rule groups.
    let mine = |group: &str| {
        alert_scope(&who)
            .is_none_or(|scope| scope.groups.is_empty() || scope.groups.iter().any(|p| tocsin_auth::glob(p, group)))
    };
    let mut problems = Vec::new();
    for g in config.groups.iter().filter(|g| mine(&g.name)) {
        let db = g.database.as_deref();
        for r in g.rules.iter().filter(|r| r.on_ingest.is_none()) {
            let checked = match &r.expr {
                Some(expr) => tocsin_query::promql::parse(expr).map(|_| ()).map_err(|e| e.to_string()),
                None => match app.query.execute_as(&format!("EXPLAIN {}", r.sql), db, None).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(planning_error(&app, &who, &r.sql, db, e).await),
                },
            };
            if let Err(error) = checked {
                problems.push(json!({ "group": g.name, "rule": r.name, "error": error }));
            }
        }
    }
    let groups: Vec<_> = config.groups.iter().filter(|g| mine(&g.name)).collect();
    let rules: usize = groups.iter().map(|g| g.rules.len() + g.records.len()).sum();
    axum::Json(json!({
        "ok": problems.is_empty(),
        "groups": groups.len(),
        "rules": rules,
        "receivers": config.receivers.len(),
        "routes": config.routes.len(),
        "problems": problems,
    }))
    .into_response()
}
