//! Prometheus' HTTP query API over Tocsin's tables: `/api/v1/query`,
//! `/api/v1/query_range`, `/api/v1/series`, `/api/v1/labels`,
//! `/api/v1/label/{name}/values`, `/api/v1/metadata`,
//! `/api/v1/status/buildinfo`, as Grafana's Prometheus data source and
//! promtool call them (GET with parameters, or POST with a form body).
//! PromQL is evaluated by `tocsin_query::promql`; docs/promql.md.

use std::collections::{BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tocsin_auth::Principal;
use tocsin_query::promql::{self, Answer, Labels, PromError, Reader, format_value};

use crate::http::AppState;

fn success(data: Value) -> Response {
    axum::Json(json!({ "status": "success", "data": data })).into_response()
}

fn failure(status: StatusCode, kind: &str, message: String) -> Response {
    (status, axum::Json(json!({ "status": "error", "errorType": kind, "error": message }))).into_response()
}

/// An error answer: status, Prometheus' `errorType`, message.
struct Fail(StatusCode, &'static str, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        failure(self.0, self.1, self.2)
    }
}

fn bad_data(message: String) -> Fail {
    Fail(StatusCode::BAD_REQUEST, "bad_data", message)
}

fn prom_error(e: PromError) -> Fail {
    let status = match (&e, e.kind()) {
        (PromError::Query(tocsin_query::QueryError::Auth(_)), _) => StatusCode::FORBIDDEN,
        (_, "bad_data") => StatusCode::BAD_REQUEST,
        (_, "execution") => StatusCode::UNPROCESSABLE_ENTITY,
        (_, "timeout" | "canceled") => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Fail(status, e.kind(), e.to_string())
}

/// The request's parameters: the URL's, then a form body's (POST);
/// repeated names (`match[]`) keep every value.
fn params(query: &HashMap<String, String>, uri_query: Option<&str>, headers: &HeaderMap, body: &Bytes) -> Params {
    let mut all: Vec<(String, String)> = uri_query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_else(|| query.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let form = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    if form && let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        all.extend(pairs);
    }
    Params(all)
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    fn database(&self) -> &str {
        self.get("db").filter(|d| !d.is_empty()).unwrap_or("public")
    }
}

/// A time parameter: RFC 3339 or Unix seconds (fractions allowed), in
/// milliseconds.
fn time_param(s: &str, name: &str) -> Result<i64, Fail> {
    if let Ok(f) = s.parse::<f64>() {
        // Within what i64 milliseconds hold with room for arithmetic.
        if f.is_finite() && (f * 1000.0).abs() <= promql::MAX_TIME_MS as f64 {
            return Ok((f * 1000.0).round() as i64);
        }
        return Err(bad_data(format!("invalid parameter \"{name}\": {s} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad_data(format!("invalid parameter \"{name}\": cannot parse \"{s}\" to a valid timestamp")))
}

/// A duration parameter: `15s`, `1m30s`, or seconds, in milliseconds.
fn duration_param(s: &str, name: &str) -> Result<i64, Fail> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Ok((f * 1000.0).round() as i64);
    }
    parse_duration(s)
        .ok_or_else(|| bad_data(format!("invalid parameter \"{name}\": cannot parse \"{s}\" to a valid duration")))
}

fn parse_duration(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let per = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(per)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn now_ms() -> i64 {
    tocsin_storage::now_ns() / 1_000_000
}

fn metric(labels: &Labels) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// `[seconds, "value"]`; whole seconds as an integer, as Prometheus writes them.
fn point(t: i64, v: f64) -> Value {
    let secs = if t % 1000 == 0 { json!(t / 1000) } else { json!(t as f64 / 1000.0) };
    json!([secs, format_value(v)])
}

pub(crate) async fn query(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&q, uri.query(), &headers, &body);
    let Some(expr) = p.get("query") else {
        return bad_data("invalid parameter \"query\": query is required".into()).into_response();
    };
    let t = match p.get("time").filter(|t| !t.is_empty()) {
        Some(t) => match time_param(t, "time") {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        },
        None => now_ms(),
    };
    let reader = Reader { engine: &app.query, who: Some(&who), database: p.database() };
    match promql::instant(&reader, expr, t).await {
        Ok(Answer::Scalar(t, v)) => success(json!({ "resultType": "scalar", "result": point(t, v) })),
        Ok(Answer::String(t, s)) => success(json!({ "resultType": "string", "result": [point(t, 0.0)[0], s] })),
        Ok(Answer::Vector(t, v)) => success(json!({
            "resultType": "vector",
            "result": v.iter().map(|(l, x)| json!({ "metric": metric(l), "value": point(t, *x) })).collect::<Vec<_>>(),
        })),
        Ok(Answer::Matrix(m)) => success(json!({ "resultType": "matrix", "result": matrix(&m) })),
        Err(e) => prom_error(e).into_response(),
    }
}

fn matrix(m: &[promql::Series]) -> Vec<Value> {
    m.iter()
        .map(|s| {
            json!({
                "metric": metric(&s.labels),
                "values": s.samples.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub(crate) async fn query_range(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&q, uri.query(), &headers, &body);
    let Some(expr) = p.get("query") else {
        return bad_data("invalid parameter \"query\": query is required".into()).into_response();
    };
    let mut bounds = Vec::new();
    for name in ["start", "end"] {
        match p.get(name).map(|v| time_param(v, name)) {
            Some(Ok(t)) => bounds.push(t),
            Some(Err(r)) => return r.into_response(),
            None => return bad_data(format!("invalid parameter \"{name}\": {name} is required")).into_response(),
        }
    }
    let step = match p.get("step").map(|s| duration_param(s, "step")) {
        Some(Ok(s)) => s,
        Some(Err(r)) => return r.into_response(),
        None => return bad_data("invalid parameter \"step\": step is required".into()).into_response(),
    };
    let reader = Reader { engine: &app.query, who: Some(&who), database: p.database() };
    match promql::range(&reader, expr, bounds[0], bounds[1], step).await {
        Ok(m) => success(json!({ "resultType": "matrix", "result": matrix(&m) })),
        Err(e) => prom_error(e).into_response(),
    }
}

/// `start`/`end` of the metadata endpoints (default: the last 6 hours,
/// where Prometheus reads everything it has).
fn window(p: &Params) -> Result<(i64, i64), Fail> {
    let end = match p.get("end") {
        Some(e) => time_param(e, "end")?,
        None => now_ms(),
    };
    let start = match p.get("start") {
        Some(s) => time_param(s, "start")?,
        None => end - 6 * 3_600_000,
    };
    Ok((start, end))
}

/// The series `match[]` selects in the window.
async fn matched(
    app: &AppState,
    who: &Principal,
    p: &Params,
    required: bool,
) -> Result<Option<BTreeSet<Labels>>, Fail> {
    let selectors = p.all("match[]");
    if selectors.is_empty() {
        return if required { Err(bad_data("no match[] parameter provided".into())) } else { Ok(None) };
    }
    let (start, end) = window(p)?;
    let reader = Reader { engine: &app.query, who: Some(who), database: p.database() };
    let mut out = BTreeSet::new();
    for s in selectors {
        let series = promql::series(&reader, s, start, end).await.map_err(prom_error)?;
        out.extend(series);
    }
    Ok(Some(out))
}

pub(crate) async fn series(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&q, uri.query(), &headers, &body);
    match matched(&app, &who, &p, true).await {
        Ok(set) => success(Value::Array(set.unwrap_or_default().iter().map(metric).collect())),
        Err(r) => r.into_response(),
    }
}

/// The metrics of `db` the caller may read (see [`promql::table_metrics`]).
fn metrics(app: &AppState, who: &Principal, db: &str) -> Vec<promql::Source> {
    promql::metric_sources(&app.query, Some(who), db)
}

/// The tables that hold the metrics of `db` the caller may read.
fn metric_tables(app: &AppState, who: &Principal, db: &str) -> BTreeSet<String> {
    metrics(app, who, db).into_iter().map(|m| m.table).collect()
}

fn tags_of(app: &AppState, db: &str, table: &str) -> Vec<String> {
    app.storage.table_schema(db, table).map(|s| tocsin_query::tag_names(&s)).unwrap_or_default()
}

pub(crate) async fn labels(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&q, uri.query(), &headers, &body);
    let names: BTreeSet<String> = match matched(&app, &who, &p, false).await {
        Err(r) => return r.into_response(),
        Ok(Some(set)) => set.iter().flat_map(|l| l.iter().map(|(k, _)| k.clone())).collect(),
        Ok(None) => {
            let db = p.database();
            let mut names: BTreeSet<String> = BTreeSet::from(["__name__".to_string()]);
            for t in metric_tables(&app, &who, db) {
                names.extend(tags_of(&app, db, &t));
            }
            names
        }
    };
    success(json!(names))
}

pub(crate) async fn label_values(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&q, uri.query(), &headers, &body);
    if name != "__name__" && !promql::valid_label_name(&name) {
        return bad_data(format!("invalid label name: {name:?}")).into_response();
    }
    let db = p.database().to_string();
    let values: BTreeSet<String> = match matched(&app, &who, &p, false).await {
        Err(r) => return r.into_response(),
        Ok(Some(set)) => {
            set.iter().filter_map(|l| l.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).collect()
        }
        Ok(None) if name == "__name__" => metrics(&app, &who, &db).into_iter().map(|m| m.metric).collect(),
        Ok(None) => {
            let mut values = BTreeSet::new();
            for m in metric_tables(&app, &who, &db) {
                if !tags_of(&app, &db, &m).contains(&name) {
                    continue;
                }
                let col = tocsin_query::quote_ident(&name);
                let sql = format!(
                    "SELECT DISTINCT {col} AS v FROM {} WHERE {col} IS NOT NULL AND {col} <> ''",
                    tocsin_query::quote_ident(&m)
                );
                match app.query.execute_as(&sql, Some(&db), Some(&who)).await {
                    Ok(r) => {
                        for b in &r.batches {
                            if let Ok(c) = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8) {
                                use arrow::array::{Array, AsArray};
                                let c = c.as_string::<i32>();
                                values.extend((0..c.len()).map(|i| c.value(i).to_string()));
                            }
                        }
                    }
                    Err(e) => return prom_error(PromError::Query(e)).into_response(),
                }
            }
            values
        }
    };
    success(json!(values))
}

pub(crate) async fn metadata() -> Response {
    success(json!({}))
}

/// What Grafana reads to tell which Prometheus it talks to.
pub(crate) async fn buildinfo() -> Response {
    success(json!({
        "version": "2.42.0",
        "revision": concat!("tocsin-", env!("CARGO_PKG_VERSION")),
        "branch": "tocsin",
        "buildUser": "tocsin",
        "buildDate": "",
        "goVersion": "",
    }))
}
