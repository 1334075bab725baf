//! InfluxDB 1.x's query API, `GET|POST /query?q=...&db=...&epoch=...`, and
//! `GET /ping`: what Telegraf (`CREATE DATABASE` at start), the `influx`
//! CLI, the InfluxDB client libraries and Grafana's InfluxQL mode send.
//! `SHOW` statements are answered from the catalog, `SELECT` is translated
//! to SQL and run as the caller (its permissions and row filters apply),
//! and the answer has InfluxDB's shape. docs/protocols.md lists what is
//! supported.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, TimeUnit, TimestampNanosecondType, UInt64Type};
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tocsin_auth::{Permission, Principal};

use crate::http::AppState;
use crate::influxql::{CmpOp, Cond, Expr, Fill, GroupTags, Literal, Measurement, Select, Statement, parse, time_range};

/// What `X-Influxdb-Version` says: the 1.x API this serves.
const VERSION: &str = "1.8.10-tocsin";
/// Most `GROUP BY time()` buckets per series.
const MAX_BUCKETS: i64 = 100_000;
/// Most statements in one request.
const MAX_STATEMENTS: usize = 100;
/// Most points (rows of series, filled buckets included) one request may
/// answer with: empty buckets are made here, after the SQL bounds on
/// result size, and 20 statements of `GROUP BY time(1ns) fill(0)` took
/// 1.1 GB.
const MAX_POINTS: usize = 1_000_000;

fn with_version(mut r: Response) -> Response {
    r.headers_mut().insert("X-Influxdb-Version", HeaderValue::from_static(VERSION));
    r
}

/// `GET /ping`: `204` with the version header, as InfluxDB answers.
pub(crate) async fn ping() -> Response {
    with_version(StatusCode::NO_CONTENT.into_response())
}

fn error(status: StatusCode, message: String) -> Response {
    with_version((status, axum::Json(json!({ "error": message }))).into_response())
}

pub(crate) async fn query(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // `q` (and the others) in the URL, or in a form body (POST).
    let mut params = params;
    let form = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    if form || (!body.is_empty() && !params.contains_key("q")) {
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            Ok(pairs) => params.extend(pairs),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a URL-encoded form: {e}")),
        }
    }
    let Some(q) = params.get("q").filter(|q| !q.trim().is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing required parameter \"q\"".into());
    };
    let epoch = match params.get("epoch").map(String::as_str) {
        None | Some("") => None,
        Some(e) => match epoch_unit(e) {
            Some(u) => Some(u),
            None => return error(StatusCode::BAD_REQUEST, format!("epoch {e:?} is not one of ns, u, µ, ms, s, m, h")),
        },
    };
    // A caller who may neither read nor write is refused before parsing.
    if who.require(Permission::Query).is_err()
        && let Err(e) = who.require(Permission::Write)
    {
        return error(StatusCode::FORBIDDEN, format!("error authorizing query: {e}"));
    }
    let now = tocsin_storage::now_ns();
    let statements = match parse(q, now) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if statements.len() > MAX_STATEMENTS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the request holds {} statements; at most {MAX_STATEMENTS} are accepted", statements.len()),
        );
    }
    // As InfluxDB: a statement the caller may not run refuses the request
    // (403) before any runs; tables are checked as each statement runs.
    for st in &statements {
        let allowed = match st {
            Statement::CreateDatabase(name) => who.check_database(Permission::Write, name),
            _ => who.require(Permission::Query),
        };
        if let Err(e) = allowed {
            return error(StatusCode::FORBIDDEN, format!("error authorizing query: {e}"));
        }
    }
    let db = params.get("db").filter(|d| !d.is_empty()).cloned();
    let mut results = Vec::with_capacity(statements.len());
    let mut budget = MAX_POINTS;
    for (i, st) in statements.into_iter().enumerate() {
        let mut r = Map::new();
        r.insert("statement_id".into(), json!(i));
        match run(&app, &who, st, db.as_deref(), epoch, now, &mut budget).await {
            Ok(series) if series.is_empty() => {}
            Ok(series) => {
                r.insert("series".into(), Value::Array(series));
            }
            Err(e) => {
                r.insert("error".into(), json!(e));
            }
        }
        results.push(Value::Object(r));
    }
    let mut response = with_version(axum::Json(json!({ "results": results })).into_response());
    response
        .extensions_mut()
        .insert(crate::guard::AuditNote { target: Some(tocsin_auth::audit_statement(q)), ..Default::default() });
    response
}

/// Nanoseconds per unit of `?epoch=`.
fn epoch_unit(e: &str) -> Option<i64> {
    Some(match e {
        "ns" | "n" => 1,
        "u" | "µ" | "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

fn series(name: &str, columns: &[&str], values: Vec<Value>) -> Value {
    json!({ "name": name, "columns": columns, "values": values })
}

fn need_db<'a>(on: Option<&'a str>, db: Option<&'a str>) -> Result<&'a str, String> {
    on.or(db).ok_or_else(|| "database name required".to_string())
}

async fn run(
    app: &AppState,
    who: &Principal,
    st: Statement,
    db: Option<&str>,
    epoch: Option<i64>,
    now: i64,
    budget: &mut usize,
) -> Result<Vec<Value>, String> {
    let storage = &app.storage;
    match st {
        Statement::CreateDatabase(name) => {
            tocsin_storage::write::check_database_name(&name).map_err(|e| e.to_string())?;
            who.check_database(Permission::Write, &name).map_err(|e| e.to_string())?;
            // Tocsin makes a database when its first table is written; the
            // name is listed from now on, so clients that check find it.
            let max = storage.config().limits.max_databases;
            let mut created = app.influx_databases.lock();
            let existing: BTreeSet<String> = storage.databases().into_iter().collect();
            if !existing.contains(&name) && !created.contains(&name) {
                if existing.len() + created.len() >= max {
                    return Err(format!("at most {max} databases (limits.max_databases)"));
                }
                created.insert(name);
            }
            Ok(Vec::new())
        }
        Statement::DropDatabase(name) => Err(format!(
            "DROP DATABASE {name} is not supported: Tocsin tables are append-only, and data leaves by retention"
        )),
        Statement::ShowDatabases => {
            let mut names: BTreeSet<String> = storage.databases().into_iter().collect();
            names.extend(app.influx_databases.lock().iter().cloned());
            let values: Vec<Value> = names
                .into_iter()
                .filter(|d| d != "system" && who.check_database(Permission::Query, d).is_ok())
                .map(|d| json!([d]))
                .collect();
            Ok(vec![series("databases", &["name"], values)])
        }
        Statement::ShowRetentionPolicies { db: on } => {
            let db = need_db(on.as_deref(), db)?;
            let known = storage.databases().iter().any(|d| d == db) || app.influx_databases.lock().contains(db);
            if !known || who.check_database(Permission::Query, db).is_err() {
                return Err(format!("database not found: {db}"));
            }
            Ok(vec![json!({
                "columns": ["name", "duration", "shardGroupDuration", "replicaN", "default"],
                "values": [["autogen", "0s", "168h0m0s", 1, true]],
            })])
        }
        Statement::ShowMeasurements { db: on, filter, limit, offset } => {
            let db = need_db(on.as_deref(), db)?;
            let matcher = filter.as_ref().map(|f| f.matcher()).transpose()?;
            let values: Vec<Value> = measurements(app, who, db)
                .into_iter()
                .filter(|m| matcher.as_ref().is_none_or(|f| f(m)))
                .skip(offset)
                .take(limit.unwrap_or(usize::MAX))
                .map(|m| json!([m]))
                .collect();
            Ok(if values.is_empty() { Vec::new() } else { vec![series("measurements", &["name"], values)] })
        }
        Statement::ShowTagKeys { db: on, from, limit, offset } => {
            let db = need_db(on.as_deref(), from.as_ref().and_then(|m| m.db.as_deref()).or(db))?;
            let mut out = Vec::new();
            for m in chosen(app, who, db, from.as_ref()) {
                let Some(schema) = storage.table_schema(db, &m) else { continue };
                let keys: Vec<Value> = tags(&schema)
                    .into_iter()
                    .skip(offset)
                    .take(limit.unwrap_or(usize::MAX))
                    .map(|k| json!([k]))
                    .collect();
                if !keys.is_empty() {
                    out.push(series(&m, &["tagKey"], keys));
                }
            }
            Ok(out)
        }
        Statement::ShowFieldKeys { db: on, from, limit, offset } => {
            let db = need_db(on.as_deref(), from.as_ref().and_then(|m| m.db.as_deref()).or(db))?;
            let mut out = Vec::new();
            for m in chosen(app, who, db, from.as_ref()) {
                let Some(schema) = storage.table_schema(db, &m) else { continue };
                let mut fields: Vec<(String, &str)> = schema
                    .fields()
                    .iter()
                    .filter(|f| f.name() != "ts" && !is_tag(f.data_type()))
                    .map(|f| (f.name().clone(), field_type(f.data_type())))
                    .collect();
                fields.sort();
                let fields: Vec<(String, &str)> =
                    fields.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
                if !fields.is_empty() {
                    out.push(series(
                        &m,
                        &["fieldKey", "fieldType"],
                        fields.into_iter().map(|(k, t)| json!([k, t])).collect(),
                    ));
                }
            }
            Ok(out)
        }
        Statement::ShowTagValues { db: on, from, keys, condition, limit, offset } => {
            let db = need_db(on.as_deref(), from.as_ref().and_then(|m| m.db.as_deref()).or(db))?;
            let matcher = keys.matcher()?;
            let mut out = Vec::new();
            for m in chosen(app, who, db, from.as_ref()) {
                let Some(schema) = storage.table_schema(db, &m) else { continue };
                let mut values = Vec::new();
                for k in tags(&schema).into_iter().filter(|k| matcher(k)) {
                    let mut sql = format!(
                        "SELECT DISTINCT {c} AS v FROM {t} WHERE {c} IS NOT NULL",
                        c = ident(&k),
                        t = ident(&m)
                    );
                    if let Some(c) = &condition {
                        sql.push_str(&format!(" AND {}", where_sql(c, &schema)));
                    }
                    sql.push_str(" ORDER BY 1");
                    let batches =
                        app.query.execute_as(&sql, Some(db), Some(who)).await.map_err(|e| e.to_string())?.batches;
                    for b in &batches {
                        let col = cast(b.column(0), &DataType::Utf8).map_err(|e| e.to_string())?;
                        let col = col.as_string::<i32>();
                        for i in 0..col.len() {
                            values.push(json!([k, col.value(i)]));
                        }
                    }
                }
                let values: Vec<Value> = values.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
                if values.len() > *budget {
                    return Err(format!("the answer holds more than {MAX_POINTS} points"));
                }
                *budget -= values.len();
                if !values.is_empty() {
                    out.push(series(&m, &["key", "value"], values));
                }
            }
            Ok(out)
        }
        Statement::Select(s) => select(app, who, &s, db, epoch, now, budget).await,
    }
}

/// The measurements of `db` the caller may read, sorted.
fn measurements(app: &AppState, who: &Principal, db: &str) -> Vec<String> {
    let mut v: Vec<String> =
        app.storage.tables(db).into_iter().filter(|t| who.check_table(Permission::Query, db, t).is_ok()).collect();
    v.sort();
    v
}

/// `FROM m`, or every measurement.
fn chosen(app: &AppState, who: &Principal, db: &str, from: Option<&Measurement>) -> Vec<String> {
    match from {
        Some(m) => {
            vec![m.name.clone()].into_iter().filter(|t| who.check_table(Permission::Query, db, t).is_ok()).collect()
        }
        None => measurements(app, who, db),
    }
}

fn is_tag(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(_, _))
}

fn tags(schema: &Schema) -> Vec<String> {
    let mut v: Vec<String> =
        schema.fields().iter().filter(|f| is_tag(f.data_type())).map(|f| f.name().clone()).collect();
    v.sort();
    v
}

fn field_type(t: &DataType) -> &'static str {
    match t {
        DataType::Float64 | DataType::Float32 => "float",
        DataType::Int64 | DataType::Int32 => "integer",
        DataType::UInt64 => "unsigned",
        DataType::Boolean => "boolean",
        _ => "string",
    }
}

use tocsin_query::{quote_ident as ident, quote_literal as string};

fn number(v: f64) -> String {
    if v.is_finite() { format!("{v:?}") } else { "NULL".into() }
}

enum Column {
    Tag,
    Field,
    Missing,
}

fn column(schema: &Schema, name: &str) -> Column {
    match schema.field_with_name(name) {
        Ok(f) if is_tag(f.data_type()) => Column::Tag,
        Ok(_) if name != "ts" => Column::Field,
        _ => Column::Missing,
    }
}

/// A WHERE condition as SQL over `schema`. A tag a row lacks is the empty
/// string, as in InfluxDB; a field it lacks matches nothing.
fn where_sql(c: &Cond, schema: &Schema) -> String {
    match c {
        Cond::And(a, b) => format!("({} AND {})", where_sql(a, schema), where_sql(b, schema)),
        Cond::Or(a, b) => format!("({} OR {})", where_sql(a, schema), where_sql(b, schema)),
        Cond::Time(op, t) => format!("ts {} to_timestamp_nanos({t})", op.sql()),
        Cond::Regex(name, negate, re) => {
            let not = if *negate { "NOT " } else { "" };
            match column(schema, name) {
                Column::Tag => format!("{not}regexp_like(coalesce({}, ''), {})", ident(name), string(re)),
                Column::Field => format!("{not}regexp_like({}, {})", ident(name), string(re)),
                Column::Missing => {
                    let m = regex::Regex::new(re).is_ok_and(|r| r.is_match(""));
                    if m != *negate { "TRUE".into() } else { "FALSE".into() }
                }
            }
        }
        Cond::Compare(name, op, lit) => {
            let lit_sql = match lit {
                Literal::Str(s) => string(s),
                Literal::Number(v) => number(*v),
                Literal::Bool(b) => b.to_string().to_uppercase(),
            };
            match (column(schema, name), lit) {
                (Column::Tag, Literal::Str(s)) => match (op, s.is_empty()) {
                    (CmpOp::Eq, false) => format!("{} = {lit_sql}", ident(name)),
                    (CmpOp::Ne, false) => format!("({c} IS NULL OR {c} <> {lit_sql})", c = ident(name)),
                    _ => format!("coalesce({}, '') {} {lit_sql}", ident(name), op.sql()),
                },
                (Column::Tag, _) => "FALSE".into(),
                (Column::Field, _) => format!("{} {} {lit_sql}", ident(name), op.sql()),
                (Column::Missing, Literal::Str(s)) => {
                    let holds = match op {
                        CmpOp::Eq => s.is_empty(),
                        CmpOp::Ne => !s.is_empty(),
                        CmpOp::Lt => !s.is_empty(),
                        CmpOp::Le => true,
                        CmpOp::Gt => false,
                        CmpOp::Ge => s.is_empty(),
                    };
                    holds.to_string().to_uppercase()
                }
                (Column::Missing, _) => "FALSE".into(),
            }
        }
    }
}

/// InfluxQL aggregates and selectors as SQL of `arg`.
fn aggregate(f: &str, arg: &str) -> Result<String, String> {
    Ok(match f {
        "mean" => format!("avg({arg})"),
        "median" => format!("median({arg})"),
        "count" => format!("count({arg})"),
        "sum" => format!("sum({arg})"),
        "min" => format!("min({arg})"),
        "max" => format!("max({arg})"),
        "first" => format!("first_value({arg} ORDER BY ts) FILTER (WHERE {arg} IS NOT NULL)"),
        "last" => format!("last_value({arg} ORDER BY ts) FILTER (WHERE {arg} IS NOT NULL)"),
        "spread" => format!("(max({arg}) - min({arg}))"),
        "stddev" => format!("stddev_samp({arg})"),
        other => {
            return Err(format!(
                "function {other}() is not supported (mean, median, count, sum, min, max, first, last, spread, stddev are)"
            ));
        }
    })
}

/// The time of the point a selector picked (InfluxDB shows it when a lone
/// selector runs without `GROUP BY time()`).
fn selector_time(f: &str, arg: &str) -> Option<String> {
    Some(match f {
        "first" => format!("first_value(ts ORDER BY ts) FILTER (WHERE {arg} IS NOT NULL)"),
        "last" => format!("last_value(ts ORDER BY ts) FILTER (WHERE {arg} IS NOT NULL)"),
        "min" => format!("first_value(ts ORDER BY {arg} ASC, ts ASC) FILTER (WHERE {arg} IS NOT NULL)"),
        "max" => format!("first_value(ts ORDER BY {arg} DESC, ts ASC) FILTER (WHERE {arg} IS NOT NULL)"),
        _ => return None,
    })
}

/// Output column names: aliases, else the field's or function's name;
/// repeats get `_1`, `_2`.
fn names(expanded: &[(String, String)]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    expanded
        .iter()
        .map(|(name, _)| {
            let n = seen.entry(name.clone()).or_insert(0);
            let out = if *n == 0 { name.clone() } else { format!("{name}_{n}") };
            *n += 1;
            out
        })
        .collect()
}

async fn select(
    app: &AppState,
    who: &Principal,
    s: &Select,
    db: Option<&str>,
    epoch: Option<i64>,
    now: i64,
    budget: &mut usize,
) -> Result<Vec<Value>, String> {
    let db = need_db(s.from.db.as_deref(), db)?;
    let table = &s.from.name;
    // Before looking the table up: whether it exists is not the caller's
    // to learn where it may not read.
    who.check_table(Permission::Query, db, table).map_err(|e| e.to_string())?;
    let Some(schema) = app.storage.table_schema(db, table) else { return Ok(Vec::new()) };
    let aggregated = s.fields.iter().any(|f| matches!(f.expr, Expr::Call(..)));
    if aggregated && s.fields.iter().any(|f| !matches!(f.expr, Expr::Call(..))) {
        return Err("mixing aggregate and non-aggregate queries is not supported".into());
    }
    if !aggregated && s.group_time.is_some() {
        return Err("GROUP BY requires at least one aggregate function".into());
    }
    let group: Vec<String> = match &s.group_tags {
        GroupTags::None => Vec::new(),
        GroupTags::All => tags(&schema),
        GroupTags::List(v) => v.clone(),
    };
    // (output name, SQL) of each value column.
    let mut values: Vec<(String, String)> = Vec::new();
    // Which of them are tags (a raw point is shown for its fields only).
    let mut tag_columns: Vec<usize> = Vec::new();
    let mut counts: Vec<bool> = Vec::new();
    let mut lone_selector = None;
    for f in &s.fields {
        match &f.expr {
            Expr::Wildcard => {
                let mut cols: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|c| c.name().clone())
                    .filter(|c| c != "ts" && !group.contains(c))
                    .collect();
                cols.sort();
                for c in cols {
                    if matches!(column(&schema, &c), Column::Tag) {
                        tag_columns.push(values.len());
                    }
                    values.push((c.clone(), ident(&c)));
                }
            }
            Expr::Ref(r) if r.eq_ignore_ascii_case("time") => {}
            Expr::Ref(r) => {
                let sql = match column(&schema, r) {
                    Column::Missing => "NULL".into(),
                    Column::Tag => {
                        tag_columns.push(values.len());
                        ident(r)
                    }
                    Column::Field => ident(r),
                };
                values.push((f.alias.clone().unwrap_or_else(|| r.clone()), sql));
            }
            Expr::Number(_) => return Err("a number as a field is not supported".into()),
            Expr::Call(func, args) => {
                let arg = match args.as_slice() {
                    // Functions read fields; of a tag or nothing, they see no values.
                    [Expr::Ref(r)] if matches!(column(&schema, r), Column::Field) => ident(r),
                    [Expr::Ref(_)] => "CAST(NULL AS DOUBLE)".into(),
                    [Expr::Wildcard] => return Err(format!("{func}(*) is not supported; name the field")),
                    _ => return Err(format!("{func}() takes one field")),
                };
                if s.fields.len() == 1 && s.group_time.is_none() {
                    lone_selector = selector_time(func, &arg);
                }
                counts.resize(values.len(), false);
                counts.push(func == "count");
                values.push((f.alias.clone().unwrap_or_else(|| func.clone()), aggregate(func, &arg)?));
            }
        }
    }
    if values.is_empty() {
        return Err("at least 1 non-time field must be queried".into());
    }
    let names = names(&values);
    let (lo, hi) = time_range(s.condition.as_ref());
    if let (Some((every, offset)), Some(lo)) = (s.group_time, lo) {
        // Refused before reading anything, as InfluxDB does.
        buckets(every, offset, lo, hi.unwrap_or(now))?;
    }
    let mut select_list = Vec::new();
    let time_sql = match (aggregated, s.group_time) {
        (false, _) => "ts".to_string(),
        (true, Some((every, offset))) => {
            format!("date_bin(INTERVAL '{every} nanoseconds', ts, to_timestamp_nanos({offset}))")
        }
        (true, None) => match &lone_selector {
            Some(t) => t.clone(),
            None => format!("to_timestamp_nanos({})", lo.unwrap_or(0)),
        },
    };
    select_list.push(format!("{time_sql} AS \"__time\""));
    let present: Vec<&String> = group.iter().filter(|g| matches!(column(&schema, g), Column::Tag)).collect();
    for (i, g) in present.iter().enumerate() {
        select_list.push(format!("{} AS \"__tag{i}\"", ident(g)));
    }
    for (i, (_, sql)) in values.iter().enumerate() {
        select_list.push(format!("{sql} AS \"__v{i}\""));
    }
    let mut sql = format!("SELECT {} FROM {}", select_list.join(", "), ident(table));
    let mut filters = Vec::new();
    if let Some(c) = &s.condition {
        filters.push(where_sql(c, &schema));
    }
    if !aggregated {
        // A raw query shows the points that have a value in one of the
        // fields (tags alone show nothing, as in InfluxDB).
        let fields: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| !tag_columns.contains(i))
            .map(|(_, (_, v))| format!("{v} IS NOT NULL"))
            .collect();
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        filters.push(format!("({})", fields.join(" OR ")));
    }
    if !filters.is_empty() {
        sql.push_str(&format!(" WHERE {}", filters.join(" AND ")));
    }
    let tag_refs: Vec<String> = (0..present.len()).map(|i| format!("\"__tag{i}\"")).collect();
    // A series without the tag sorts first (its value is the empty string).
    let tag_order: Vec<String> = tag_refs.iter().map(|t| format!("{t} NULLS FIRST")).collect();
    if aggregated {
        let mut by = Vec::new();
        if s.group_time.is_some() {
            by.push("1".to_string());
        }
        by.extend(tag_refs.iter().cloned());
        if !by.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", by.join(", ")));
        }
    }
    let mut order = tag_order;
    order.push(format!("\"__time\"{}", if s.descending { " DESC" } else { "" }));
    if !aggregated {
        // Points of one instant in the order of their series (tags by name).
        order.extend(tags(&schema).iter().filter(|t| !group.contains(t)).map(|t| ident(t)));
    }
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    let batches = app.query.execute_as(&sql, Some(db), Some(who)).await.map_err(|e| e.to_string())?.batches;

    // Rows, grouped into series by their tags (in order).
    let mut out: Vec<(Vec<String>, Vec<Row>)> = Vec::new();
    for b in &batches {
        let time = cast(b.column(0), &DataType::Timestamp(TimeUnit::Nanosecond, None)).map_err(|e| e.to_string())?;
        let time = time.as_primitive::<TimestampNanosecondType>();
        let tag_cols: Vec<ArrayRef> = (0..present.len())
            .map(|i| cast(b.column(1 + i), &DataType::Utf8))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let value_cols: Vec<&ArrayRef> = (0..values.len()).map(|i| b.column(1 + present.len() + i)).collect();
        for r in 0..b.num_rows() {
            if !time.is_valid(r) {
                continue;
            }
            let key: Vec<String> = tag_cols
                .iter()
                .map(|c| if c.is_valid(r) { c.as_string::<i32>().value(r).to_string() } else { String::new() })
                .collect();
            let row: Vec<Value> = value_cols.iter().map(|c| cell(c, r)).collect();
            if out.last().is_none_or(|(k, _)| *k != key) {
                out.push((key, Vec::new()));
            }
            if let Some((_, rows)) = out.last_mut() {
                rows.push((time.value(r), row));
            }
        }
    }
    let mut result = Vec::with_capacity(out.len());
    for (key, mut rows) in out {
        if aggregated && rows.iter().all(|(_, v)| v.iter().all(Value::is_null)) && s.group_time.is_none() {
            continue;
        }
        if let (Some((every, offset)), false) = (s.group_time, matches!(s.fill, Fill::None)) {
            counts.resize(values.len(), false);
            rows = filled(rows, every, offset, lo, hi.unwrap_or(now), s.fill, s.descending, &counts, *budget)?;
        } else if matches!(s.fill, Fill::None) && s.group_time.is_some() {
            rows.retain(|(_, v)| !v.iter().all(Value::is_null));
        }
        let rows: Vec<Value> = rows
            .into_iter()
            .skip(s.offset)
            .take(s.limit.unwrap_or(usize::MAX))
            .map(|(t, v)| {
                let mut row = vec![time_value(t, epoch)];
                row.extend(v);
                Value::Array(row)
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        if rows.len() > *budget {
            return Err(format!(
                "the answer holds more than {MAX_POINTS} points; narrow the time range, widen GROUP BY time() or add \
                 LIMIT"
            ));
        }
        *budget -= rows.len();
        let mut columns = vec!["time".to_string()];
        columns.extend(names.iter().cloned());
        let mut series = Map::new();
        series.insert("name".into(), json!(table));
        if !group.is_empty() {
            let mut tags = Map::new();
            for g in &group {
                let v = present.iter().position(|p| *p == g).map(|i| key[i].clone()).unwrap_or_default();
                tags.insert(g.clone(), json!(v));
            }
            series.insert("tags".into(), Value::Object(tags));
        }
        series.insert("columns".into(), json!(columns));
        series.insert("values".into(), Value::Array(rows));
        result.push(Value::Object(series));
    }
    Ok(result)
}

/// A point or bucket: its time and values.
type Row = (i64, Vec<Value>);

/// Every bucket of `[lo, hi]` (or from the first bucket with data), the
/// empty ones filled as asked.
#[allow(clippy::too_many_arguments)]
fn filled(
    rows: Vec<Row>,
    every: i64,
    offset: i64,
    lo: Option<i64>,
    hi: i64,
    fill: Fill,
    descending: bool,
    counts: &[bool],
    budget: usize,
) -> Result<Vec<Row>, String> {
    let Some(lo) = lo.or_else(|| rows.iter().map(|(t, _)| *t).min()) else { return Ok(rows) };
    let (first, n) = buckets(every, offset, lo, hi)?;
    if n as usize > budget {
        return Err(format!(
            "the answer holds more than {MAX_POINTS} points; narrow the time range, widen GROUP BY time() or add LIMIT"
        ));
    }
    let width = counts.len();
    // An empty bucket's count is 0, not null, as in InfluxDB.
    let empty: Vec<Value> = counts.iter().map(|c| if *c { json!(0) } else { Value::Null }).collect();
    let mut by_time: HashMap<i64, Vec<Value>> = rows.into_iter().collect();
    let mut out = Vec::with_capacity(n as usize);
    let mut previous: Option<Vec<Value>> = None;
    for i in 0..n {
        let t = first + i * every;
        let row = match by_time.remove(&t) {
            Some(v) => v,
            None => match fill {
                Fill::Value(x) => vec![json!(x); width],
                Fill::Previous => previous.clone().unwrap_or_else(|| empty.clone()),
                Fill::Null | Fill::None => empty.clone(),
            },
        };
        previous = Some(row.clone());
        out.push((t, row));
    }
    if descending {
        out.reverse();
    }
    Ok(out)
}

/// The first bucket of `[lo, hi]` and how many there are, or why there
/// are too many.
fn buckets(every: i64, offset: i64, lo: i64, hi: i64) -> Result<(i64, i64), String> {
    let bucket = |t: i64| t.saturating_sub(t.saturating_sub(offset).rem_euclid(every));
    let first = bucket(lo);
    let last = bucket(hi).max(first);
    let n = last.checked_sub(first).map_or(i64::MAX, |d| d / every + 1);
    if n > MAX_BUCKETS {
        return Err(format!(
            "GROUP BY time() gives {n} buckets per series over this time range; at most {MAX_BUCKETS} (narrow the \
             range or widen the interval)"
        ));
    }
    Ok((first, n))
}

/// `time` as RFC 3339 (Go's RFC3339Nano: trailing zeros dropped) or an
/// integer in the `?epoch=` unit.
fn time_value(t: i64, epoch: Option<i64>) -> Value {
    match epoch {
        Some(unit) => json!(t.div_euclid(unit)),
        None => {
            let s = chrono::DateTime::from_timestamp_nanos(t).format("%Y-%m-%dT%H:%M:%S%.9f").to_string();
            let s = s.trim_end_matches('0').trim_end_matches('.');
            json!(format!("{s}Z"))
        }
    }
}

fn cell(c: &ArrayRef, r: usize) -> Value {
    if !c.is_valid(r) {
        return Value::Null;
    }
    match c.data_type() {
        DataType::Float64 => {
            let v = c.as_primitive::<Float64Type>().value(r);
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        DataType::Int64 => json!(c.as_primitive::<Int64Type>().value(r)),
        DataType::UInt64 => json!(c.as_primitive::<UInt64Type>().value(r)),
        DataType::Boolean => json!(c.as_boolean().value(r)),
        DataType::Utf8 => json!(c.as_string::<i32>().value(r)),
        _ => match cast(c, &DataType::Utf8) {
            Ok(s) if s.is_valid(r) => json!(s.as_string::<i32>().value(r)),
            _ => Value::Null,
        },
    }
}
