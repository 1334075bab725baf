//! PromQL over Tocsin's tables: a table with a `value` field is the metric
//! named after the table (what remote_write and OTLP create), its tags the
//! labels. Expressions are parsed by the `promql-parser` crate and
//! evaluated here, step by step, over the samples each selector needs,
//! fetched once per query through each table's own scan as the caller
//! (`QueryEngine::scan_as`: its permissions and row filters apply, as they
//! do to SQL, without planning a statement). docs/promql.md lists what is
//! supported; the rest is refused naming it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampNanosecondType};
use promql_parser::label::{MatchOp, Matchers};
use promql_parser::parser::{
    self, AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

pub use promql_parser::parser::value::ValueType;

use crate::{Principal, QueryEngine, TIME_COLUMN, tag_names};

/// How far back an instant selector looks for a sample (Prometheus' default).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Most steps of a range query (Prometheus refuses more than 11,000).
pub const MAX_STEPS: i64 = 11_000;
/// Most samples one query may read.
pub const MAX_SAMPLES: usize = 50_000_000;
/// Most points a query may answer with (each series at each step): the
/// answer is built in memory, about 150 bytes a point as JSON.
pub const MAX_POINTS: usize = 2_000_000;
/// A subquery's step when it names none (`x[5m:]`): Prometheus' default
/// evaluation interval.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;
/// Most evaluations of subqueries' inner expressions in one query (each
/// outer step evaluates the inner expression at each of its own steps).
pub const MAX_SUBQUERY_STEPS: u64 = 1_000_000;
/// Most metrics a selector without a metric name (`{job="x"}`) may read.
pub const MAX_METRICS: usize = 2_000;
/// Times (milliseconds) a query may name: about ±292,000 years, so that
/// arithmetic on them cannot overflow.
pub const MAX_TIME_MS: i64 = 1 << 53;

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("query timed out in query execution")]
    Timeout,
    #[error("query canceled")]
    Canceled,
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Execution(String),
    #[error(transparent)]
    Query(#[from] crate::QueryError),
}

impl PromError {
    /// Prometheus' `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            PromError::Parse(_) | PromError::Unsupported(_) => "bad_data",
            PromError::Execution(_) => "execution",
            PromError::Timeout => "timeout",
            PromError::Canceled => "canceled",
            PromError::Query(e) if e.is_user_error() => "bad_data",
            PromError::Query(_) => "internal",
        }
    }
}

/// Labels, sorted by name (`__name__` included where kept).
pub type Labels = Vec<(String, String)>;

/// One series' samples: (milliseconds, value), in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// What an expression evaluates to at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<(Labels, f64)>),
    Matrix(Vec<Series>),
}

/// The result of a query: at one instant (`vector`, `scalar`, `string`)
/// or over a range (`matrix`).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Scalar(i64, f64),
    String(i64, String),
    Vector(i64, Vec<(Labels, f64)>),
    Matrix(Vec<Series>),
}

/// Longest expression text accepted.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Deepest expression tree evaluated: evaluation recurses once per level.
pub const MAX_DEPTH: usize = 200;

/// Parses `q`, saying where it is wrong; refuses texts and trees that
/// would take the evaluator's stack (it recurses once per level).
pub fn parse(q: &str) -> Result<Expr, PromError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(PromError::Parse(format!(
            "the query is {} bytes; at most {MAX_QUERY_BYTES} are accepted",
            q.len()
        )));
    }
    let expr = parser::parse(&renamed(q)).map_err(PromError::Parse)?;
    let d = depth(&expr);
    if d > MAX_DEPTH {
        return Err(PromError::Parse(format!(
            "the expression nests {d} levels deep; at most {MAX_DEPTH} are accepted"
        )));
    }
    Ok(expr)
}

/// `q` with Prometheus 2's `holt_winters(` called by the name the parser
/// knows (Prometheus 3 renamed it `double_exponential_smoothing`); quoted
/// strings are left as they are.
fn renamed(q: &str) -> std::borrow::Cow<'_, str> {
    const OLD: &str = "holt_winters";
    if !q.contains(OLD) {
        return q.into();
    }
    let mut out = String::with_capacity(q.len() + 32);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut i = 0;
    while let Some(c) = q[i..].chars().next() {
        match quote {
            Some(open) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && open != '`' {
                    escaped = true;
                } else if c == open {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if q[i..].starts_with(OLD)
                && !q[..i].ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_' || p == ':')
                && q[i + OLD.len()..].trim_start().starts_with('(') =>
            {
                out.push_str("double_exponential_smoothing");
                i += OLD.len();
                continue;
            }
            None => {}
        }
        out.push(c);
        i += c.len_utf8();
    }
    out.into()
}

/// The depth of `expr`'s tree, walked without recursion.
fn depth(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1usize)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        match e {
            Expr::Aggregate(a) => {
                stack.push((&a.expr, d + 1));
                if let Some(p) = &a.param {
                    stack.push((p, d + 1));
                }
            }
            Expr::Unary(u) => stack.push((&u.expr, d + 1)),
            Expr::Binary(b) => {
                stack.push((&b.lhs, d + 1));
                stack.push((&b.rhs, d + 1));
            }
            Expr::Paren(p) => stack.push((&p.expr, d + 1)),
            Expr::Subquery(sq) => stack.push((&sq.expr, d + 1)),
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Where a query reads: the engine, the caller and the database.
pub struct Reader<'a> {
    pub engine: &'a QueryEngine,
    pub who: Option<&'a Principal>,
    pub database: &'a str,
}

/// Evaluates `q` at `t` (milliseconds).
pub async fn instant(r: &Reader<'_>, q: &str, t: i64) -> Result<Answer, PromError> {
    check_time(t)?;
    let expr = parse(q)?;
    let data = fetch(r, &expr, t, t).await?;
    evaluate(r, expr, data, t, t, 1).await.map(|(value, _)| match value {
        Value::Scalar(v) => Answer::Scalar(t, v),
        Value::String(s) => Answer::String(t, s),
        Value::Vector(v) => Answer::Vector(t, v),
        Value::Matrix(m) => Answer::Matrix(m),
    })
}

fn check_time(t: i64) -> Result<(), PromError> {
    if t.abs() > MAX_TIME_MS {
        return Err(PromError::Parse(format!("time {t} ms is out of range")));
    }
    Ok(())
}

/// Runs the evaluation off the async workers (it is CPU work), within the
/// query timeout, and stops when the caller goes away.
async fn evaluate(
    r: &Reader<'_>,
    expr: Expr,
    data: Fetched,
    start: i64,
    end: i64,
    step: i64,
) -> Result<(Value, Vec<Series>), PromError> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Dropped when this future is (the client went away): the evaluation
    // sees the flag at its next step.
    struct OnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _guard = OnDrop(std::sync::Arc::clone(&cancel));
    let deadline = std::time::Instant::now() + r.engine.query_timeout();
    let task = tokio::task::spawn_blocking(move || {
        let ev = Evaluator::new(&data, start, end, deadline, cancel);
        if start == end && step == 1 {
            return match ev.eval(&expr, start)? {
                // As Prometheus: two elements with one label set (names
                // dropped from two metrics) are an error, not one answer.
                Value::Vector(v) => Ok((Value::Vector(unique(v)?), Vec::new())),
                other => Ok((other, Vec::new())),
            };
        }
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut t = start;
        let mut points = 0usize;
        while t <= end {
            ev.check()?;
            match ev.eval(&expr, t)? {
                Value::Scalar(v) => {
                    points += 1;
                    out.entry(Vec::new()).or_default().push((t, v));
                }
                Value::Vector(v) => {
                    points += v.len();
                    if points > MAX_POINTS {
                        return Err(PromError::Execution(format!(
                            "the answer would hold more than {MAX_POINTS} points; narrow the range, widen the step \
                             or select fewer series"
                        )));
                    }
                    for (labels, x) in v {
                        let points = out.entry(labels).or_default();
                        if points.last().is_some_and(|p| p.0 == t) {
                            return Err(PromError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        points.push((t, x));
                    }
                }
                _ => return Err(PromError::Execution("a range query must give a vector or a scalar".into())),
            }
            let Some(next) = t.checked_add(step) else { break };
            t = next;
        }
        Ok((Value::Scalar(0.0), out.into_iter().map(|(labels, samples)| Series { labels, samples }).collect()))
    });
    task.await.map_err(|e| PromError::Execution(format!("evaluation failed: {e}")))?
}

/// Evaluates `q` at every `step` from `start` to `end` (milliseconds).
pub async fn range(r: &Reader<'_>, q: &str, start: i64, end: i64, step: i64) -> Result<Vec<Series>, PromError> {
    check_time(start)?;
    check_time(end)?;
    if step <= 0 {
        return Err(PromError::Parse("zero or negative query resolution step widths are not accepted".into()));
    }
    if end < start {
        return Err(PromError::Parse("end timestamp must not be before start time".into()));
    }
    if (end - start) / step + 1 > MAX_STEPS {
        return Err(PromError::Parse(format!(
            "exceeded maximum resolution of {MAX_STEPS} points per timeseries. Try decreasing the query resolution (?step=XX)"
        )));
    }
    let expr = parse(q)?;
    match expr.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        t => {
            return Err(PromError::Parse(format!(
                "invalid expression type \"{t}\" for range query, must be Scalar or instant Vector"
            )));
        }
    }
    let data = fetch(r, &expr, start, end).await?;
    evaluate(r, expr, data, start, end, step).await.map(|(_, m)| m)
}

/// The label sets of the series `selector` (a vector selector) matches
/// with samples in `[start, end]` (milliseconds).
pub async fn series(r: &Reader<'_>, selector: &str, start: i64, end: i64) -> Result<Vec<Labels>, PromError> {
    let Expr::VectorSelector(vs) = parse(selector)? else {
        return Err(PromError::Parse(format!("{selector}: a match[] must be a series selector")));
    };
    let mut out = Vec::new();
    for source in metrics_of(r, &vs)? {
        out.extend(read_metric(r, &source, &vs, start, end).await?.into_iter().map(|s| s.labels));
    }
    Ok(out)
}

/// A selector's identity (its text) and the samples it may need.
type Fetched = HashMap<String, Vec<Series>>;

fn selector_key(vs: &VectorSelector) -> String {
    format!("{}{:?}", vs.name.as_deref().unwrap_or(""), vs.matchers)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d),
        Some(Offset::Neg(d)) => -duration_ms(*d),
    }
}

fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The instant a selector is evaluated at: `t`, or its `@`.
fn at(at: &Option<AtModifier>, t: i64, start: i64, end: i64) -> i64 {
    match at {
        None => t,
        Some(AtModifier::Start) => start,
        Some(AtModifier::End) => end,
        Some(AtModifier::At(s)) => millis(*s),
    }
}

/// Every selector of `expr` with the window `[from, to]` it reads when
/// `expr` is evaluated from `start` to `end`; `query` is the query's own
/// start and end (what `@ start()` and `@ end()` name, in subqueries too).
fn selectors<'a>(
    expr: &'a Expr,
    start: i64,
    end: i64,
    query: (i64, i64),
    out: &mut Vec<(&'a VectorSelector, i64, i64)>,
) -> Result<(), PromError> {
    // The window `[start, end]` moved by a node's `offset` and `@`.
    let shifted = |o: &Option<Offset>, a: &Option<AtModifier>| -> (i64, i64) {
        let off = offset_ms(o);
        let (from, to) = match a {
            None => (start, end),
            some => {
                let t = at(some, start, query.0, query.1);
                (t, t)
            }
        };
        (from.saturating_sub(off), to.saturating_sub(off))
    };
    match expr {
        Expr::VectorSelector(vs) => {
            let (a, b) = shifted(&vs.offset, &vs.at);
            out.push((vs, a.saturating_sub(LOOKBACK_MS), b));
        }
        Expr::MatrixSelector(MatrixSelector { vs, range }) => {
            let (a, b) = shifted(&vs.offset, &vs.at);
            out.push((vs, a.saturating_sub(duration_ms(*range)), b));
        }
        Expr::Subquery(sq) => {
            let (a, b) = shifted(&sq.offset, &sq.at);
            selectors(&sq.expr, a.saturating_sub(duration_ms(sq.range)), b, query, out)?;
        }
        Expr::Aggregate(a) => {
            selectors(&a.expr, start, end, query, out)?;
            if let Some(p) = &a.param {
                selectors(p, start, end, query, out)?;
            }
        }
        Expr::Unary(u) => selectors(&u.expr, start, end, query, out)?,
        Expr::Binary(b) => {
            selectors(&b.lhs, start, end, query, out)?;
            selectors(&b.rhs, start, end, query, out)?;
        }
        Expr::Paren(p) => selectors(&p.expr, start, end, query, out)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                selectors(a, start, end, query, out)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Extension(_) => return Err(PromError::Unsupported("extension expressions are not supported".into())),
    }
    Ok(())
}

/// The metric a selector names (`name{...}` or `{__name__="name"}`).
fn metric_name(vs: &VectorSelector) -> Option<String> {
    if let Some(n) = &vs.name {
        return Some(n.clone());
    }
    vs.matchers
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
        .map(|m| m.value.clone())
}

/// Where a metric's samples are: a table and one of its numeric fields.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub metric: String,
    pub table: String,
    pub field: String,
}

/// The metrics a table holds: its own name for a numeric field `value`
/// (what remote_write and OTLP write), `table_field` for every other
/// numeric or boolean field (what line protocol writes: `cpu usage_user=..`
/// is `cpu_usage_user`, a boolean 1 or 0, as VictoriaMetrics has them).
pub fn table_metrics(table: &str, schema: &arrow::datatypes::Schema) -> Vec<Source> {
    schema
        .fields()
        .iter()
        .filter(|f| f.name() != "ts" && (f.data_type().is_numeric() || *f.data_type() == DataType::Boolean))
        .map(|f| Source {
            metric: if f.name() == "value" { table.to_string() } else { format!("{table}_{}", f.name()) },
            table: table.to_string(),
            field: f.name().clone(),
        })
        .collect()
}

/// Every metric of `db` the caller may read, by name.
pub fn metric_sources(engine: &QueryEngine, who: Option<&Principal>, db: &str) -> Vec<Source> {
    let storage = engine.storage();
    let mut out: Vec<Source> = storage
        .tables(db)
        .into_iter()
        .filter(|t| who.is_none_or(|w| w.check_table(tocsin_auth::Permission::Query, db, t).is_ok()))
        .filter_map(|t| storage.table_schema(db, &t).map(|s| table_metrics(&t, &s)))
        .flatten()
        .collect();
    out.sort();
    out
}

/// The table and field behind `metric`, among the tables the caller may
/// read: the table `metric` with a field `value`, else a table `t` with a
/// numeric field `f` where `metric` is `t_f` (the longest such `t`).
fn resolve(r: &Reader<'_>, metric: &str) -> Option<Source> {
    let storage = r.engine.storage();
    let readable = |t: &str| r.who.is_none_or(|w| w.check_table(tocsin_auth::Permission::Query, r.database, t).is_ok());
    let mut candidates = vec![(metric, "value")];
    candidates
        .extend(metric.char_indices().rev().filter(|(_, c)| *c == '_').map(|(i, _)| (&metric[..i], &metric[i + 1..])));
    candidates.into_iter().filter(|(t, f)| !t.is_empty() && !f.is_empty() && readable(t)).find_map(|(t, f)| {
        let schema = storage.table_schema(r.database, t)?;
        let numeric =
            schema.field_with_name(f).is_ok_and(|x| x.data_type().is_numeric() || *x.data_type() == DataType::Boolean);
        // `value` is the table's own name, not `t_value`.
        (numeric && (f != "value" || t == metric)).then(|| Source {
            metric: metric.to_string(),
            table: t.to_string(),
            field: f.to_string(),
        })
    })
}

/// The metrics a selector reads: the one it names, or for a selector
/// without a name (`{job="node"}`, `{__name__=~"node_.*"}`) every metric
/// of the database its `__name__` matchers accept and the caller may read.
fn metrics_of(r: &Reader<'_>, vs: &VectorSelector) -> Result<Vec<Source>, PromError> {
    if let Some(name) = metric_name(vs) {
        return match resolve(r, &name) {
            Some(source) => Ok(vec![source]),
            None => {
                // Whether it exists is not the caller's to learn where it
                // may not read.
                if let Some(who) = r.who {
                    who.check_table(tocsin_auth::Permission::Query, r.database, &name)
                        .map_err(|e| PromError::Query(crate::QueryError::Auth(e)))?;
                }
                Ok(Vec::new())
            }
        };
    }
    let name_matchers: Vec<&promql_parser::label::Matcher> =
        vs.matchers.matchers.iter().filter(|m| m.name == "__name__").collect();
    let out: Vec<Source> = metric_sources(r.engine, r.who, r.database)
        .into_iter()
        .filter(|s| name_matchers.iter().all(|m| m.is_match(&s.metric)))
        .collect();
    if out.len() > MAX_METRICS {
        return Err(PromError::Execution(format!(
            "selector {vs} matches {} metrics, more than {MAX_METRICS}: name the metric or narrow `__name__`",
            out.len()
        )));
    }
    Ok(out)
}

fn matches(m: &Matchers, labels: &Labels) -> bool {
    let get = |name: &str| labels.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    let all = |ms: &[promql_parser::label::Matcher]| ms.iter().all(|m| m.is_match(get(&m.name)));
    all(&m.matchers) && (m.or_matchers.is_empty() || m.or_matchers.iter().any(|ms| all(ms)))
}

/// Reads every selector's samples once, as the caller.
async fn fetch(r: &Reader<'_>, expr: &Expr, start: i64, end: i64) -> Result<Fetched, PromError> {
    let mut wanted = Vec::new();
    selectors(expr, start, end, (start, end), &mut wanted)?;
    // One read per selector, over the widest window it needs.
    let mut windows: HashMap<String, (&VectorSelector, i64, i64)> = HashMap::new();
    for (vs, a, b) in wanted {
        let e = windows.entry(selector_key(vs)).or_insert((vs, a, b));
        e.1 = e.1.min(a);
        e.2 = e.2.max(b);
    }
    // Selectors are read at once (`a / b` reads both metrics together);
    // the metrics of one nameless selector one after the other, each
    // counted against the bound before the next is read.
    let total = std::sync::atomic::AtomicUsize::new(0);
    let reads = windows.into_iter().map(|(key, (vs, a, b))| {
        let total = &total;
        async move {
            let mut series = Vec::new();
            for source in metrics_of(r, vs)? {
                let read = read_metric(r, &source, vs, a, b).await?;
                let n = read.iter().map(|s| s.samples.len()).sum::<usize>();
                series.extend(read);
                if total.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n > MAX_SAMPLES {
                    return Err(PromError::Execution(format!(
                        "query processing would load too many samples into memory (more than {MAX_SAMPLES})"
                    )));
                }
            }
            Ok::<_, PromError>((key, series))
        }
    });
    Ok(futures::future::try_join_all(reads).await?.into_iter().collect())
}

/// The samples of `source` in `[a, b]` (milliseconds) whose labels `vs`
/// matches, by series, read as the caller through the table's own scan
/// (no SQL: see [`QueryEngine::scan_as`]).
async fn read_metric(
    r: &Reader<'_>,
    source: &Source,
    vs: &VectorSelector,
    a: i64,
    b: i64,
) -> Result<Vec<Series>, PromError> {
    use datafusion::logical_expr::{col, lit};
    use datafusion::scalar::ScalarValue;
    let metric = source.metric.as_str();
    let Some(schema) = r.engine.storage().table_schema(r.database, &source.table) else { return Ok(Vec::new()) };
    let tags = tag_names(&schema);
    let exec = |e: datafusion::error::DataFusionError| PromError::Execution(e.to_string());
    // Literals of the columns' own types: the scan's pruning compares
    // them without coercion.
    let typed = |column: &str, v: ScalarValue| -> Result<ScalarValue, PromError> {
        let field = schema.field_with_name(column).map_err(|e| PromError::Execution(e.to_string()))?;
        v.cast_to(field.data_type()).map_err(exec)
    };
    let ns = |ms: i64| ScalarValue::TimestampNanosecond(Some(ms.saturating_mul(1_000_000)), None);
    // They prune (segments and buffered writes by time, pages by tags);
    // every row is checked again below, and every matcher on the labels.
    // `value IS NOT NULL` is checked only below: as a filter it would be
    // evaluated while decoding, which reads each column chunk twice.
    let mut filters = vec![
        col(TIME_COLUMN).gt_eq(lit(typed(TIME_COLUMN, ns(a))?)),
        col(TIME_COLUMN).lt_eq(lit(typed(TIME_COLUMN, ns(b))?)),
    ];
    for m in &vs.matchers.matchers {
        if matches!(m.op, MatchOp::Equal) && !m.value.is_empty() && tags.contains(&m.name) {
            filters.push(col(m.name.as_str()).eq(lit(typed(&m.name, ScalarValue::Utf8(Some(m.value.clone())))?)));
        }
    }
    let mut columns = vec![TIME_COLUMN, source.field.as_str()];
    columns.extend(tags.iter().map(String::as_str));
    let batches = r.engine.scan_as(r.database, &source.table, &columns, filters, r.who).await?.batches;
    let (lo, hi) = (a.saturating_mul(1_000_000), b.saturating_mul(1_000_000));
    let mut out: Vec<Series> = Vec::new();
    // Series by their tag values ("" for NULL, joined by NUL): labels are
    // built once per series, not per row.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut key = String::new();
    for batch in &batches {
        let ts = cast(batch.column(0), &DataType::Timestamp(TimeUnit::Nanosecond, None))
            .map_err(|e| PromError::Execution(e.to_string()))?;
        let ts = ts.as_primitive::<TimestampNanosecondType>();
        let values = cast(batch.column(1), &DataType::Float64).map_err(|e| PromError::Execution(e.to_string()))?;
        let values = values.as_primitive::<Float64Type>();
        let tag_cols = (0..tags.len()).map(|i| TagColumn::new(batch.column(2 + i))).collect::<Result<Vec<_>, _>>()?;
        let mut series = SeriesOf { tags: &tags, cols: &tag_cols, metric, key: &mut key, index: &mut index };
        // Where every tag is dictionary encoded (the usual case), rows are
        // told apart by a number made of their dictionary keys, and the
        // text of a series' tags is looked at once per number and batch.
        let codes = series_codes(&tag_cols);
        let mut by_code: HashMap<u64, usize> = HashMap::new();
        let mut last: Option<(u64, usize)> = None;
        for row in 0..batch.num_rows() {
            let t = ts.value(row);
            if t < lo || t > hi || values.is_null(row) {
                continue;
            }
            // Rows of one series mostly come together.
            let code = codes.as_ref().map_or(row as u64, |c| c.of(&tag_cols, row));
            let at = match last {
                Some((c, i)) if c == code && codes.is_some() => i,
                _ => {
                    let i = match codes {
                        Some(_) => *by_code.entry(code).or_insert_with(|| series.at(row, &mut out)),
                        None => series.at(row, &mut out),
                    };
                    last = Some((code, i));
                    i
                }
            };
            out[at].samples.push((t.div_euclid(1_000_000), values.value(row)));
        }
    }
    for s in &mut out {
        // Buffered writes and segments come in no particular order; a
        // stable sort keeps the later of two samples at one time (a
        // retried write), which is the one kept.
        s.samples.sort_by_key(|&(t, _)| t);
        s.samples.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                *earlier = *later;
                true
            } else {
                false
            }
        });
    }
    // A tag column that is NULL and one that is '' make the same labels.
    out.retain(|s| matches(&vs.matchers, &s.labels));
    out.sort_by(|x, y| x.labels.cmp(&y.labels));
    Ok(out)
}

/// Finds (or adds to `out`) the series of a row by its tags' text.
struct SeriesOf<'a> {
    tags: &'a [String],
    cols: &'a [TagColumn],
    metric: &'a str,
    key: &'a mut String,
    index: &'a mut HashMap<String, usize>,
}

impl SeriesOf<'_> {
    fn at(&mut self, row: usize, out: &mut Vec<Series>) -> usize {
        self.key.clear();
        for c in self.cols {
            self.key.push_str(c.value(row));
            self.key.push('\0');
        }
        if let Some(&i) = self.index.get(self.key.as_str()) {
            return i;
        }
        let mut labels: Labels = vec![("__name__".to_string(), self.metric.to_string())];
        labels.extend(
            self.tags
                .iter()
                .zip(self.cols)
                .map(|(k, c)| (k, c.value(row)))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.to_string())),
        );
        labels.sort();
        out.push(Series { labels, samples: Vec::new() });
        self.index.insert(self.key.clone(), out.len() - 1);
        out.len() - 1
    }
}

/// A number per row of a batch that only rows of the same tag values
/// share: their dictionary keys in mixed radix (NULL a key of its own),
/// computed as the rows are read (an array of them per batch cost a
/// fresh allocation and its page faults on every read: 9 % of the
/// server's time on `rate(node_cpu_seconds_total[1m])`).
struct SeriesCodes {
    strides: Vec<u64>,
}

/// `None` when a tag column is not dictionary encoded or the numbers
/// would not fit.
fn series_codes(cols: &[TagColumn]) -> Option<SeriesCodes> {
    let mut strides = Vec::with_capacity(cols.len());
    let mut stride: u64 = 1;
    for c in cols {
        let TagColumn::Dictionary(_, values) = c else { return None };
        strides.push(stride);
        stride = stride.checked_mul(values.len() as u64 + 1)?;
    }
    Some(SeriesCodes { strides })
}

impl SeriesCodes {
    fn of(&self, cols: &[TagColumn], row: usize) -> u64 {
        cols.iter()
            .zip(&self.strides)
            .map(|(c, stride)| match c {
                TagColumn::Dictionary(keys, _) if keys.is_valid(row) => stride * (keys.value(row) as u64 + 1),
                _ => 0,
            })
            .sum()
    }
}

/// A tag column's values as text, read in place (tags are dictionary
/// encoded with `Int32` keys; anything else is cast once).
enum TagColumn {
    Dictionary(arrow::array::Int32Array, arrow::array::ArrayRef),
    Plain(arrow::array::ArrayRef),
}

impl TagColumn {
    fn new(col: &arrow::array::ArrayRef) -> Result<TagColumn, PromError> {
        let err = |e: arrow::error::ArrowError| PromError::Execution(e.to_string());
        if let Some(d) = col.as_any_dictionary_opt()
            && let Some(keys) = d.keys().as_primitive_opt::<arrow::datatypes::Int32Type>()
        {
            return Ok(TagColumn::Dictionary(keys.clone(), cast(d.values(), &DataType::Utf8).map_err(err)?));
        }
        Ok(TagColumn::Plain(cast(col, &DataType::Utf8).map_err(err)?))
    }

    /// Row `row`'s value; "" for NULL.
    fn value(&self, row: usize) -> &str {
        match self {
            TagColumn::Dictionary(keys, values) => match keys.is_valid(row).then(|| keys.value(row) as usize) {
                Some(k) if values.is_valid(k) => values.as_string::<i32>().value(k),
                _ => "",
            },
            TagColumn::Plain(values) if values.is_valid(row) => values.as_string::<i32>().value(row),
            TagColumn::Plain(_) => "",
        }
    }
}

struct Evaluator<'a> {
    data: &'a Fetched,
    start: i64,
    end: i64,
    /// label_replace's regexes, compiled once per query.
    regexes: std::cell::RefCell<HashMap<String, regex::Regex>>,
    deadline: std::time::Instant,
    /// Set when the caller went away.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Inner evaluations of subqueries so far.
    subquery_steps: std::cell::Cell<u64>,
    /// Points subqueries produced so far.
    subquery_points: std::cell::Cell<usize>,
    /// Each selector node's series, found once (by the node's address)
    /// rather than by its text at every step.
    selected: std::cell::RefCell<HashMap<usize, &'a [Series]>>,
}

fn without_name(labels: &Labels) -> Labels {
    labels.iter().filter(|(k, _)| k != "__name__").cloned().collect()
}

/// Prometheus prints values with Go's `FormatFloat(v, 'f', -1, 64)`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v != 0.0 && (v.abs() < 1e-6 || v.abs() >= 1e21) {
        // Go's JSON form: an exponent of at least two digits, signed.
        let e = format!("{v:e}");
        match e.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => e,
        }
    } else {
        format!("{v}")
    }
}

/// A value as a label (`count_values`): Go's `FormatFloat(v, 'f', -1, 64)`.
fn label_value(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { format_value(v) }
}

/// Population variance as Prometheus computes it (Welford's running mean).
fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut n, mut mean, mut sum) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        let delta = v - mean;
        mean += delta / n;
        sum += delta * (v - mean);
    }
    sum / n
}

impl<'a> Evaluator<'a> {
    fn new(
        data: &'a Fetched,
        start: i64,
        end: i64,
        deadline: std::time::Instant,
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Evaluator {
            data,
            start,
            end,
            regexes: Default::default(),
            deadline,
            cancel,
            subquery_steps: Default::default(),
            subquery_points: Default::default(),
            selected: Default::default(),
        }
    }

    /// Whether to go on: the caller is there and the timeout not reached.
    fn check(&self) -> Result<(), PromError> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PromError::Canceled);
        }
        if std::time::Instant::now() > self.deadline {
            return Err(PromError::Timeout);
        }
        Ok(())
    }

    /// A subquery at `t`: its expression evaluated at each multiple of its
    /// step in `[t - range, t]` (offset and `@` applied), as a range vector.
    fn subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<Vec<Series>, PromError> {
        let end = at(&sq.at, t, self.start, self.end).saturating_sub(offset_ms(&sq.offset));
        let from = end.saturating_sub(duration_ms(sq.range));
        let step = sq.step.map(duration_ms).unwrap_or(DEFAULT_SUBQUERY_STEP_MS).max(1);
        let mut ti = from.div_euclid(step).saturating_mul(step);
        if ti < from {
            ti = ti.saturating_add(step);
        }
        let steps = if end >= ti { ((end - ti) / step + 1) as u64 } else { 0 };
        let total = self.subquery_steps.get().saturating_add(steps);
        if total > MAX_SUBQUERY_STEPS {
            return Err(PromError::Execution(format!(
                "subqueries would be evaluated at more than {MAX_SUBQUERY_STEPS} steps; widen their step or \
                 shorten their range"
            )));
        }
        self.subquery_steps.set(total);
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        while ti <= end {
            self.check()?;
            match self.eval(&sq.expr, ti)? {
                Value::Vector(v) => {
                    // Points a subquery holds count as samples read (as in
                    // Prometheus' max_samples).
                    let held = self.subquery_points.get().saturating_add(v.len());
                    if held > MAX_SAMPLES {
                        return Err(PromError::Execution(format!(
                            "query processing would load too many samples into memory (more than {MAX_SAMPLES}): \
                             subqueries hold too many points"
                        )));
                    }
                    self.subquery_points.set(held);
                    for (labels, x) in v {
                        out.entry(labels).or_default().push((ti, x));
                    }
                }
                Value::Scalar(x) => out.entry(Vec::new()).or_default().push((ti, x)),
                _ => return Err(PromError::Execution("a subquery needs an instant vector or a scalar".into())),
            }
            let Some(next) = ti.checked_add(step) else { break };
            ti = next;
        }
        Ok(out.into_iter().map(|(labels, samples)| Series { labels, samples }).collect())
    }

    /// A function's range-vector argument (a range selector or a
    /// subquery): its series, and the window `(from, to)` they were read in.
    fn range_arg(&self, e: &Expr, t: i64, name: &str) -> Result<(Vec<Series>, i64, i64), PromError> {
        match e {
            Expr::MatrixSelector(ms) => {
                let to = at(&ms.vs.at, t, self.start, self.end).saturating_sub(offset_ms(&ms.vs.offset));
                Ok((self.range_selector(ms, t), to.saturating_sub(duration_ms(ms.range)), to))
            }
            Expr::Subquery(sq) => {
                let to = at(&sq.at, t, self.start, self.end).saturating_sub(offset_ms(&sq.offset));
                Ok((self.subquery(sq, t)?, to.saturating_sub(duration_ms(sq.range)), to))
            }
            Expr::Paren(p) => self.range_arg(&p.expr, t, name),
            _ => Err(PromError::Execution(format!("{name}() needs a range vector"))),
        }
    }

    fn eval(&self, expr: &Expr, t: i64) -> Result<Value, PromError> {
        Ok(match expr {
            Expr::NumberLiteral(n) => Value::Scalar(n.val),
            Expr::StringLiteral(s) => Value::String(s.val.clone()),
            Expr::Paren(p) => self.eval(&p.expr, t)?,
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Value::Scalar(-v),
                Value::Vector(v) => Value::Vector(v.into_iter().map(|(l, x)| (without_name(&l), -x)).collect()),
                _ => return Err(PromError::Execution("unary minus needs a scalar or a vector".into())),
            },
            Expr::VectorSelector(vs) => Value::Vector(self.instant_selector(vs, t)),
            Expr::MatrixSelector(ms) => Value::Matrix(self.range_selector(ms, t)),
            Expr::Aggregate(a) => self.aggregate(a, t)?,
            Expr::Binary(b) => self.binary(b, t)?,
            Expr::Call(c) => self.call(c, t)?,
            Expr::Subquery(sq) => Value::Matrix(self.subquery(sq, t)?),
            Expr::Extension(_) => return Err(PromError::Unsupported("extension expressions are not supported".into())),
        })
    }

    fn series(&self, vs: &VectorSelector) -> &'a [Series] {
        let node = vs as *const VectorSelector as usize;
        if let Some(found) = self.selected.borrow().get(&node) {
            return found;
        }
        let data: &'a Fetched = self.data;
        let found = data.get(&selector_key(vs)).map_or(&[][..], Vec::as_slice);
        self.selected.borrow_mut().insert(node, found);
        found
    }

    /// The latest sample of each series in `[t - 5m, t]` (offset and `@`
    /// applied).
    fn instant_selector(&self, vs: &VectorSelector, t: i64) -> Vec<(Labels, f64)> {
        let t = at(&vs.at, t, self.start, self.end).saturating_sub(offset_ms(&vs.offset));
        let mut out = Vec::new();
        for s in self.series(vs) {
            let i = s.samples.partition_point(|(ts, _)| *ts <= t);
            if i > 0 {
                let (ts, v) = s.samples[i - 1];
                if ts >= t.saturating_sub(LOOKBACK_MS) {
                    out.push((s.labels.clone(), v));
                }
            }
        }
        out
    }

    /// The samples of each series in `[t - range, t]`.
    fn range_selector(&self, ms: &MatrixSelector, t: i64) -> Vec<Series> {
        let vs = &ms.vs;
        let t = at(&vs.at, t, self.start, self.end).saturating_sub(offset_ms(&vs.offset));
        let from = t.saturating_sub(duration_ms(ms.range));
        let mut out = Vec::new();
        for s in self.series(vs) {
            let a = s.samples.partition_point(|(ts, _)| *ts < from);
            let b = s.samples.partition_point(|(ts, _)| *ts <= t);
            if a < b {
                out.push(Series { labels: s.labels.clone(), samples: s.samples[a..b].to_vec() });
            }
        }
        out
    }

    fn vector(&self, expr: &Expr, t: i64, what: &str) -> Result<Vec<(Labels, f64)>, PromError> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            _ => Err(PromError::Execution(format!("{what} needs an instant vector"))),
        }
    }

    fn scalar(&self, expr: &Expr, t: i64, what: &str) -> Result<f64, PromError> {
        match self.eval(expr, t)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(PromError::Execution(format!("{what} needs a scalar"))),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value, PromError> {
        let op = a.op.to_string().to_ascii_lowercase();
        let input = self.vector(&a.expr, t, &op)?;
        let param = match &a.param {
            Some(p) if op == "count_values" => match self.eval(p, t)? {
                Value::String(s) => Some(Param::Label(s)),
                _ => return Err(PromError::Execution("count_values needs a label name".into())),
            },
            Some(p) => Some(Param::Number(self.scalar(p, t, &op)?)),
            None => None,
        };
        let key = |labels: &Labels| -> Labels {
            match &a.modifier {
                None => Vec::new(),
                Some(LabelModifier::Include(ls)) => {
                    labels.iter().filter(|(k, _)| ls.labels.iter().any(|l| l == k)).cloned().collect()
                }
                Some(LabelModifier::Exclude(ls)) => labels
                    .iter()
                    .filter(|(k, _)| k != "__name__" && !ls.labels.iter().any(|l| l == k))
                    .cloned()
                    .collect(),
            }
        };
        let mut groups: BTreeMap<Labels, Vec<(Labels, f64)>> = BTreeMap::new();
        for (labels, v) in input {
            groups.entry(key(&labels)).or_default().push((labels, v));
        }
        let mut out = Vec::new();
        for (group, members) in groups {
            let values: Vec<f64> = members.iter().map(|(_, v)| *v).collect();
            let n = values.len() as f64;
            let one = |v: f64| vec![(group.clone(), v)];
            let rows = match op.as_str() {
                "sum" => one(values.iter().sum()),
                "avg" => one(values.iter().sum::<f64>() / n),
                "count" => one(n),
                "min" => one(values.iter().copied().fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m })),
                "max" => one(values.iter().copied().fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m })),
                "group" => one(1.0),
                "stddev" | "stdvar" => {
                    let var = variance(values.iter().copied());
                    one(if op == "stddev" { var.sqrt() } else { var })
                }
                "quantile" => {
                    let Some(Param::Number(q)) = param else {
                        return Err(PromError::Execution("quantile needs a number".into()));
                    };
                    one(quantile(q, values))
                }
                "topk" | "bottomk" => {
                    let Some(Param::Number(k)) = param else {
                        return Err(PromError::Execution(format!("{op} needs a number")));
                    };
                    if !(k.is_finite() && k.abs() < 9.2e18) {
                        return Err(PromError::Execution(format!("Scalar value {k} overflows int64")));
                    }
                    let mut m = members;
                    // NaN is picked last by both, as in Prometheus.
                    let key = |v: f64| {
                        if v.is_nan() { if op == "topk" { f64::NEG_INFINITY } else { f64::INFINITY } } else { v }
                    };
                    m.sort_by(|a, b| {
                        let ord = key(a.1).partial_cmp(&key(b.1)).unwrap_or(std::cmp::Ordering::Equal);
                        if op == "topk" { ord.reverse() } else { ord }
                    });
                    m.truncate(k.max(0.0) as usize);
                    m
                }
                "count_values" => {
                    let Some(Param::Label(label)) = &param else {
                        return Err(PromError::Execution("count_values needs a label name".into()));
                    };
                    label_name(label, "count_values")?;
                    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
                    for v in &values {
                        *counts.entry(label_value(*v)).or_default() += 1.0;
                    }
                    counts
                        .into_iter()
                        .map(|(v, c)| {
                            let mut l: Labels = group.iter().filter(|(k, _)| k != label).cloned().collect();
                            l.push((label.clone(), v));
                            l.sort();
                            (l, c)
                        })
                        .collect()
                }
                other => return Err(PromError::Unsupported(format!("aggregation {other} is not supported"))),
            };
            out.extend(rows);
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value, PromError> {
        let op = b.op.to_string().to_ascii_lowercase();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let comparison = matches!(op.as_str(), "==" | "!=" | "<" | "<=" | ">" | ">=");
        Ok(match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let r = apply(&op, x, y)?;
                Value::Scalar(if comparison { if r.is_some() { 1.0 } else { 0.0 } } else { r.unwrap_or(f64::NAN) })
            }
            (Value::Vector(v), Value::Scalar(y)) => Value::Vector(
                v.into_iter().filter_map(|(l, x)| self.elementwise(&op, comparison, return_bool, l, x, x, y)).collect(),
            ),
            (Value::Scalar(x), Value::Vector(v)) => Value::Vector(
                v.into_iter().filter_map(|(l, y)| self.elementwise(&op, comparison, return_bool, l, y, x, y)).collect(),
            ),
            (Value::Vector(l), Value::Vector(r)) => {
                Value::Vector(self.vector_vector(b, &op, comparison, return_bool, l, r)?)
            }
            _ => return Err(PromError::Execution(format!("operator {op} needs scalars or instant vectors"))),
        })
    }

    /// One element of a vector-scalar operation: `keep` is the vector's
    /// value (what a comparison filter keeps).
    #[allow(clippy::too_many_arguments)]
    fn elementwise(
        &self,
        op: &str,
        comparison: bool,
        return_bool: bool,
        labels: Labels,
        keep: f64,
        x: f64,
        y: f64,
    ) -> Option<(Labels, f64)> {
        let r = apply(op, x, y).ok()?;
        if comparison {
            if return_bool {
                Some((without_name(&labels), if r.is_some() { 1.0 } else { 0.0 }))
            } else {
                r.map(|_| (labels, keep))
            }
        } else if op == "atan2" {
            r.map(|v| (labels, v))
        } else {
            r.map(|v| (without_name(&labels), v))
        }
    }

    fn vector_vector(
        &self,
        b: &BinaryExpr,
        op: &str,
        comparison: bool,
        return_bool: bool,
        lhs: Vec<(Labels, f64)>,
        rhs: Vec<(Labels, f64)>,
    ) -> Result<Vec<(Labels, f64)>, PromError> {
        let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
        let sig = |labels: &Labels| -> Labels {
            match &matching {
                Some(LabelModifier::Include(ls)) => {
                    labels.iter().filter(|(k, _)| ls.labels.iter().any(|l| l == k)).cloned().collect()
                }
                Some(LabelModifier::Exclude(ls)) => labels
                    .iter()
                    .filter(|(k, _)| k != "__name__" && !ls.labels.iter().any(|l| l == k))
                    .cloned()
                    .collect(),
                None => without_name(labels),
            }
        };
        match op {
            "and" | "or" | "unless" => {
                let right: std::collections::HashSet<Labels> = rhs.iter().map(|(l, _)| sig(l)).collect();
                return Ok(match op {
                    "and" => lhs.into_iter().filter(|(l, _)| right.contains(&sig(l))).collect(),
                    "unless" => lhs.into_iter().filter(|(l, _)| !right.contains(&sig(l))).collect(),
                    _ => {
                        let left: std::collections::HashSet<Labels> = lhs.iter().map(|(l, _)| sig(l)).collect();
                        let mut out = lhs;
                        out.extend(rhs.into_iter().filter(|(l, _)| !left.contains(&sig(l))));
                        out
                    }
                });
            }
            _ => {}
        }
        let card = b.modifier.as_ref().map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
        let (one_side, many_left) = match &card {
            VectorMatchCardinality::OneToOne => (None, true),
            VectorMatchCardinality::ManyToOne(extra) => (Some(extra.labels.clone()), true),
            VectorMatchCardinality::OneToMany(extra) => (Some(extra.labels.clone()), false),
            VectorMatchCardinality::ManyToMany => (None, true),
        };
        // The "one" side, by signature.
        let (many, one) = if many_left { (lhs, rhs) } else { (rhs, lhs) };
        let mut ones: HashMap<Labels, (Labels, f64)> = HashMap::new();
        for (l, v) in one {
            let s = sig(&l);
            if ones.insert(s.clone(), (l, v)).is_some() {
                return Err(PromError::Execution(format!(
                    "found duplicate series for the match group {s:?} on the {} hand-side of the operation: \
                     many-to-many matching not allowed: matching labels must be unique on one side",
                    if many_left { "right" } else { "left" }
                )));
            }
        }
        let mut out = Vec::new();
        let mut seen: std::collections::HashSet<Labels> = std::collections::HashSet::new();
        let drop_name = (!comparison || return_bool) && op != "atan2";
        for (l, v) in many {
            let s = sig(&l);
            let Some((ol, ov)) = ones.get(&s) else { continue };
            // Operands in the expression's order; a filter keeps the left value.
            let (x, y) = if many_left { (v, *ov) } else { (*ov, v) };
            let Ok(r) = apply(op, x, y) else { continue };
            if comparison && !return_bool && r.is_none() {
                continue;
            }
            // Prometheus' resultMetric: the "many" side's labels.
            let mut labels = l.clone();
            if drop_name {
                labels.retain(|(k, _)| k != "__name__");
            }
            match &one_side {
                None => {
                    match &matching {
                        Some(LabelModifier::Include(ls)) => labels.retain(|(k, _)| ls.labels.iter().any(|x| x == k)),
                        Some(LabelModifier::Exclude(ls)) => labels.retain(|(k, _)| !ls.labels.iter().any(|x| x == k)),
                        None => {}
                    }
                    if !seen.insert(s.clone()) {
                        return Err(PromError::Execution(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                                .into(),
                        ));
                    }
                }
                Some(extra) => {
                    for name in extra {
                        labels.retain(|(k, _)| k != name);
                        if let Some((_, val)) = ol.iter().find(|(k, _)| k == name) {
                            labels.push((name.clone(), val.clone()));
                        }
                    }
                    labels.sort();
                }
            }
            match (comparison, return_bool, r) {
                (true, true, r) => out.push((labels, if r.is_some() { 1.0 } else { 0.0 })),
                (true, false, Some(_)) => out.push((labels, x)),
                (false, _, Some(value)) => out.push((labels, value)),
                (_, _, None) => {}
            }
        }
        let out = unique(out)?;
        Ok(out)
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value, PromError> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr, PromError> {
            args.get(i).map(|b| b.as_ref()).ok_or_else(|| PromError::Parse(format!("{name}() misses an argument")))
        };
        let over_range = |f: &dyn Fn(&Series, i64, i64) -> Option<f64>| -> Result<Value, PromError> {
            let (series, from, to) = self.range_arg(arg(0)?, t, name)?;
            let mut out = Vec::new();
            for s in series {
                if let Some(v) = f(&s, from, to) {
                    let labels = if name == "last_over_time" { s.labels.clone() } else { without_name(&s.labels) };
                    out.push((labels, v));
                }
            }
            Ok(Value::Vector(out))
        };
        let math = |f: fn(f64) -> f64| -> Result<Value, PromError> {
            Ok(Value::Vector(
                self.vector(arg(0)?, t, name)?.into_iter().map(|(l, v)| (without_name(&l), f(v))).collect(),
            ))
        };
        Ok(match name {
            "rate" => over_range(&|s, a, b| extrapolated(s, a, b, true, true))?,
            "increase" => over_range(&|s, a, b| extrapolated(s, a, b, true, false))?,
            "delta" => over_range(&|s, a, b| extrapolated(s, a, b, false, false))?,
            "irate" => over_range(&|s, _, _| instant_rate(s, true))?,
            "idelta" => over_range(&|s, _, _| instant_rate(s, false))?,
            "avg_over_time" => {
                over_range(&|s, _, _| Some(s.samples.iter().map(|x| x.1).sum::<f64>() / s.samples.len() as f64))?
            }
            "sum_over_time" => over_range(&|s, _, _| Some(s.samples.iter().map(|x| x.1).sum()))?,
            "count_over_time" => over_range(&|s, _, _| Some(s.samples.len() as f64))?,
            "min_over_time" => over_range(&|s, _, _| {
                s.samples.iter().map(|x| x.1).reduce(|m, v| if v < m || m.is_nan() { v } else { m })
            })?,
            "max_over_time" => over_range(&|s, _, _| {
                s.samples.iter().map(|x| x.1).reduce(|m, v| if v > m || m.is_nan() { v } else { m })
            })?,
            "last_over_time" => over_range(&|s, _, _| s.samples.last().map(|x| x.1))?,
            "present_over_time" => over_range(&|_, _, _| Some(1.0))?,
            "changes" => over_range(&|s, _, _| {
                Some(s.samples.windows(2).filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan())).count()
                    as f64)
            })?,
            "resets" => over_range(&|s, _, _| Some(s.samples.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64))?,
            "stddev_over_time" | "stdvar_over_time" => over_range(&|s, _, _| {
                let var = variance(s.samples.iter().map(|x| x.1));
                Some(if name == "stddev_over_time" { var.sqrt() } else { var })
            })?,
            "deriv" => {
                over_range(&|s, _, _| regression(s, s.samples.first().map_or(0, |x| x.0)).map(|(slope, _)| slope))?
            }
            "predict_linear" => {
                let secs = self.scalar(arg(1)?, t, name)?;
                let mut out = Vec::new();
                for s in self.range_arg(arg(0)?, t, name)?.0 {
                    // As Prometheus: the intercept at the step's time.
                    if let Some((slope, intercept)) = regression(&s, t) {
                        out.push((without_name(&s.labels), slope * secs + intercept));
                    }
                }
                Value::Vector(out)
            }
            "quantile_over_time" => {
                let q = self.scalar(arg(0)?, t, name)?;
                Value::Vector(
                    self.range_arg(arg(1)?, t, name)?
                        .0
                        .into_iter()
                        .map(|s| (without_name(&s.labels), quantile(q, s.samples.iter().map(|x| x.1).collect())))
                        .collect(),
                )
            }
            "abs" => math(f64::abs)?,
            "sin" => math(f64::sin)?,
            "cos" => math(f64::cos)?,
            "tan" => math(f64::tan)?,
            "asin" => math(f64::asin)?,
            "acos" => math(f64::acos)?,
            "atan" => math(f64::atan)?,
            "sinh" => math(f64::sinh)?,
            "cosh" => math(f64::cosh)?,
            "tanh" => math(f64::tanh)?,
            "asinh" => math(f64::asinh)?,
            "acosh" => math(f64::acosh)?,
            "atanh" => math(f64::atanh)?,
            "deg" => math(f64::to_degrees)?,
            "rad" => math(f64::to_radians)?,
            "pi" => Value::Scalar(std::f64::consts::PI),
            "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month" | "month" | "year" => {
                // Of each value as Unix seconds (UTC); without an argument,
                // of the evaluation time.
                let input = match args.first() {
                    Some(a) => self.vector(a, t, name)?,
                    None => vec![(Vec::new(), t as f64 / 1000.0)],
                };
                let mut out = Vec::new();
                for (l, v) in input {
                    let Some(d) = (v.is_finite() && v.abs() < MAX_TIME_MS as f64)
                        .then(|| chrono::DateTime::from_timestamp(v as i64, 0))
                        .flatten()
                    else {
                        continue;
                    };
                    out.push((without_name(&l), date_part(name, d)));
                }
                Value::Vector(out)
            }
            "double_exponential_smoothing" => {
                let sf = self.scalar(arg(1)?, t, name)?;
                let tf = self.scalar(arg(2)?, t, name)?;
                if !(sf > 0.0 && sf < 1.0) {
                    return Err(PromError::Execution(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}"
                    )));
                }
                if !(tf > 0.0 && tf < 1.0) {
                    return Err(PromError::Execution(format!("invalid trend factor. Expected: 0 < tf < 1, got: {tf}")));
                }
                let mut out = Vec::new();
                for s in self.range_arg(arg(0)?, t, name)?.0 {
                    if let Some(v) = holt_winters(&s.samples, sf, tf) {
                        out.push((without_name(&s.labels), v));
                    }
                }
                Value::Vector(out)
            }
            "ceil" => math(f64::ceil)?,
            "floor" => math(f64::floor)?,
            "sqrt" => math(f64::sqrt)?,
            "exp" => math(f64::exp)?,
            "ln" => math(f64::ln)?,
            "log2" => math(f64::log2)?,
            "log10" => math(f64::log10)?,
            "sgn" => math(|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    v
                }
            })?,
            "round" => {
                let to = match args.get(1) {
                    Some(a) => self.scalar(a, t, name)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                Value::Vector(
                    self.vector(arg(0)?, t, name)?
                        .into_iter()
                        .map(|(l, v)| (without_name(&l), (v * inv + 0.5).floor() / inv))
                        .collect(),
                )
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let (lo, hi) = match name {
                    "clamp" => (self.scalar(arg(1)?, t, name)?, self.scalar(arg(2)?, t, name)?),
                    "clamp_min" => (self.scalar(arg(1)?, t, name)?, f64::INFINITY),
                    _ => (f64::NEG_INFINITY, self.scalar(arg(1)?, t, name)?),
                };
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                Value::Vector(
                    self.vector(arg(0)?, t, name)?
                        .into_iter()
                        .map(|(l, v)| (without_name(&l), if v.is_nan() { v } else { v.max(lo).min(hi) }))
                        .collect(),
                )
            }
            "time" => Value::Scalar(t as f64 / 1000.0),
            "vector" => Value::Vector(vec![(Vec::new(), self.scalar(arg(0)?, t, name)?)]),
            "scalar" => {
                let v = self.vector(arg(0)?, t, name)?;
                Value::Scalar(if v.len() == 1 { v[0].1 } else { f64::NAN })
            }
            "timestamp" => {
                let Expr::VectorSelector(vs) = arg(0)? else {
                    return Err(PromError::Unsupported("timestamp() of an expression is not supported yet".into()));
                };
                let tt = at(&vs.at, t, self.start, self.end).saturating_sub(offset_ms(&vs.offset));
                let mut out = Vec::new();
                for s in self.series(vs) {
                    let i = s.samples.partition_point(|(ts, _)| *ts <= tt);
                    if i > 0 && s.samples[i - 1].0 >= tt.saturating_sub(LOOKBACK_MS) {
                        out.push((without_name(&s.labels), s.samples[i - 1].0 as f64 / 1000.0));
                    }
                }
                Value::Vector(out)
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector(arg(0)?, t, name)?;
                v.sort_by(|a, b| {
                    let o = a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal);
                    if name == "sort" { o } else { o.reverse() }
                });
                Value::Vector(v)
            }
            "absent" => {
                let v = self.vector(arg(0)?, t, name)?;
                if !v.is_empty() {
                    Value::Vector(Vec::new())
                } else {
                    // The labels of the selector's equality matchers.
                    let labels = match arg(0)? {
                        Expr::VectorSelector(vs) => absent_labels(&vs.matchers),
                        _ => Labels::new(),
                    };
                    Value::Vector(vec![(labels, 1.0)])
                }
            }
            "label_replace" => {
                let strings = |i: usize| -> Result<String, PromError> {
                    match self.eval(arg(i)?, t)? {
                        Value::String(s) => Ok(s),
                        _ => Err(PromError::Execution(format!("label_replace() argument {i} must be a string"))),
                    }
                };
                let (dst, repl, src, re) = (strings(1)?, strings(2)?, strings(3)?, strings(4)?);
                label_name(&dst, "label_replace")?;
                let re = {
                    let mut cache = self.regexes.borrow_mut();
                    match cache.get(&re) {
                        Some(r) => r.clone(),
                        None => {
                            let compiled = regex::RegexBuilder::new(&format!("^(?s:{re})$"))
                                .size_limit(1 << 20)
                                .build()
                                .map_err(|e| {
                                    PromError::Execution(format!("invalid regular expression in label_replace(): {e}"))
                                })?;
                            cache.insert(re.clone(), compiled.clone());
                            compiled
                        }
                    }
                };
                let mut out = Vec::new();
                for (mut l, v) in self.vector(arg(0)?, t, name)? {
                    let value = l.iter().find(|(k, _)| *k == src).map_or("", |(_, v)| v.as_str()).to_string();
                    if let Some(caps) = re.captures(&value) {
                        let mut new = String::new();
                        caps.expand(&repl, &mut new);
                        l.retain(|(k, _)| *k != dst);
                        if !new.is_empty() {
                            l.push((dst.clone(), new));
                        }
                        l.sort();
                    }
                    out.push((l, v));
                }
                Value::Vector(unique(out)?)
            }
            "label_join" => {
                let string = |i: usize| -> Result<String, PromError> {
                    match self.eval(arg(i)?, t)? {
                        Value::String(s) => Ok(s),
                        _ => Err(PromError::Execution(format!("label_join() argument {i} must be a string"))),
                    }
                };
                let (dst, sep) = (string(1)?, string(2)?);
                label_name(&dst, "label_join")?;
                let sources = (3..args.len()).map(string).collect::<Result<Vec<_>, _>>()?;
                let mut out = Vec::new();
                for (mut l, v) in self.vector(arg(0)?, t, name)? {
                    let joined = sources
                        .iter()
                        .map(|src| l.iter().find(|(k, _)| k == src).map_or("", |(_, v)| v.as_str()))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    l.retain(|(k, _)| *k != dst);
                    if !joined.is_empty() {
                        l.push((dst.clone(), joined));
                    }
                    l.sort();
                    out.push((l, v));
                }
                Value::Vector(unique(out)?)
            }
            "absent_over_time" => {
                if !self.range_arg(arg(0)?, t, name)?.0.is_empty() {
                    Value::Vector(Vec::new())
                } else if let Expr::MatrixSelector(ms) = arg(0)? {
                    Value::Vector(vec![(absent_labels(&ms.vs.matchers), 1.0)])
                } else {
                    // As Prometheus: a subquery gives no labels to copy.
                    Value::Vector(vec![(Vec::new(), 1.0)])
                }
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t, name)?;
                let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                for (l, v) in self.vector(arg(1)?, t, name)? {
                    let Some(le) = l.iter().find(|(k, _)| k == "le").and_then(|(_, v)| parse_le(v)) else { continue };
                    let key: Labels = l.iter().filter(|(k, _)| k != "le" && k != "__name__").cloned().collect();
                    buckets.entry(key).or_default().push((le, v));
                }
                Value::Vector(buckets.into_iter().map(|(l, b)| (l, bucket_quantile(q, b))).collect())
            }
            other => return Err(PromError::Unsupported(format!("function {other}() is not supported yet"))),
        })
    }
}

/// A calendar part of a UTC time, as Prometheus' date functions give it.
fn date_part(function: &str, d: chrono::DateTime<chrono::Utc>) -> f64 {
    use chrono::{Datelike, Timelike};
    match function {
        "minute" => d.minute() as f64,
        "hour" => d.hour() as f64,
        "day_of_week" => d.weekday().num_days_from_sunday() as f64,
        "day_of_month" => d.day() as f64,
        "day_of_year" => d.ordinal() as f64,
        "month" => d.month() as f64,
        "year" => d.year() as f64,
        // days_in_month
        _ => {
            let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
            chrono::NaiveDate::from_ymd_opt(y, m, 1)
                .and_then(|next| next.pred_opt())
                .map_or(f64::NAN, |last| last.day() as f64)
        }
    }
}

/// Double exponential smoothing, as Prometheus' `holt_winters`: the
/// smoothed value at the last sample; none with fewer than two samples.
fn holt_winters(samples: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, samples[0].1);
    let mut b = samples[1].1 - samples[0].1;
    for (i, &(_, x)) in samples.iter().enumerate().skip(1) {
        // The trend, from the previous smoothed values (from the first
        // difference at the first step).
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        s0 = s1;
        s1 = sf * x + (1.0 - sf) * (s0 + b);
    }
    Some(s1)
}

/// The labels `absent()` answers with: those of the selector's equality
/// matchers, except a label matched more than once.
fn absent_labels(m: &Matchers) -> Labels {
    let equal: Vec<&promql_parser::label::Matcher> =
        m.matchers.iter().filter(|m| matches!(m.op, MatchOp::Equal) && m.name != "__name__").collect();
    let mut labels: Labels = equal
        .iter()
        .filter(|x| m.matchers.iter().filter(|y| y.name == x.name).count() == 1)
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect();
    labels.sort();
    labels
}

/// Whether `name` is a valid Prometheus label name.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn label_name(name: &str, function: &str) -> Result<(), PromError> {
    if valid_label_name(name) {
        Ok(())
    } else {
        Err(PromError::Execution(format!("invalid label name {name:?} in {function}()")))
    }
}

/// `v` if its label sets are distinct; Prometheus refuses a vector that
/// holds one twice.
fn unique(v: Vec<(Labels, f64)>) -> Result<Vec<(Labels, f64)>, PromError> {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for (l, _) in &v {
        if !seen.insert(l) {
            return Err(PromError::Execution("vector cannot contain metrics with the same labelset".into()));
        }
    }
    Ok(v)
}

enum Param {
    Number(f64),
    Label(String),
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        _ => s.parse().ok(),
    }
}

/// `x op y`: `Ok(None)` when a comparison is false.
fn apply(op: &str, x: f64, y: f64) -> Result<Option<f64>, PromError> {
    Ok(match op {
        "+" => Some(x + y),
        "-" => Some(x - y),
        "*" => Some(x * y),
        "/" => Some(x / y),
        "%" => Some(x % y),
        "^" => Some(x.powf(y)),
        "atan2" => Some(x.atan2(y)),
        "==" => (x == y).then_some(x),
        "!=" => (x != y).then_some(x),
        "<" => (x < y).then_some(x),
        "<=" => (x <= y).then_some(x),
        ">" => (x > y).then_some(x),
        ">=" => (x >= y).then_some(x),
        other => return Err(PromError::Unsupported(format!("operator {other} is not supported"))),
    })
}

/// Prometheus' `extrapolatedRate` (rate, increase, delta), samples in
/// `[a, b]` milliseconds.
fn extrapolated(s: &Series, a: i64, b: i64, counter: bool, per_second: bool) -> Option<f64> {
    let samples = &s.samples;
    if samples.len() < 2 {
        return None;
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = first.1;
        for &(_, v) in &samples[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - a) as f64 / 1000.0;
    let to_end = (b - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (samples.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold { to_start } else { average / 2.0 };
    interval += if to_end < threshold { to_end } else { average / 2.0 };
    result *= interval / sampled;
    if per_second {
        result /= (b - a) as f64 / 1000.0;
    }
    Some(result)
}

/// irate and idelta: the last two samples.
fn instant_rate(s: &Series, rate: bool) -> Option<f64> {
    let n = s.samples.len();
    if n < 2 {
        return None;
    }
    let (prev, last) = (s.samples[n - 2], s.samples[n - 1]);
    let mut d = last.1 - prev.1;
    if rate && last.1 < prev.1 {
        d = last.1;
    }
    if !rate {
        return Some(d);
    }
    let secs = (last.0 - prev.0) as f64 / 1000.0;
    (secs > 0.0).then(|| d / secs)
}

/// Least-squares slope (per second) and the value at `at` (milliseconds),
/// as Prometheus' `linearRegression`.
fn regression(s: &Series, at: i64) -> Option<(f64, f64)> {
    if s.samples.len() < 2 {
        return None;
    }
    let n = s.samples.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sxx) = (0.0, 0.0, 0.0, 0.0);
    let constant = s.samples.windows(2).all(|w| w[0].1 == w[1].1);
    for &(ts, v) in &s.samples {
        let x = (ts - at) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sxx += x * x;
    }
    if constant {
        return Some((0.0, s.samples[0].1));
    }
    let cov = sxy - sx * sy / n;
    let var = sxx - sx * sx / n;
    let slope = cov / var;
    let intercept = sy / n - slope * sx / n;
    Some((slope, intercept))
}

/// Prometheus' `quantile` (linear interpolation between closest ranks).
fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let upper = (lower + 1).min(values.len() - 1);
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

/// Prometheus' `bucketQuantile` over (upper bound, cumulative count).
fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    // Buckets of the same bound (`le="1"` and `le="1.0"`) are one.
    buckets.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    if buckets.len() < 2 || buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Counts must not decrease (a scrape between buckets' updates).
    for i in 1..buckets.len() {
        if buckets[i].1 < buckets[i - 1].1 {
            buckets[i].1 = buckets[i - 1].1;
        }
    }
    let total = buckets[buckets.len() - 1].1;
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let b = buckets[..buckets.len() - 1].partition_point(|x| x.1 < rank);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    let mut rank = rank;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(samples: &[(i64, f64)]) -> Series {
        Series { labels: vec![], samples: samples.to_vec() }
    }

    /// Rows share a number exactly when their tags' dictionary keys do
    /// (NULL is a key of its own); no numbers where a tag is not
    /// dictionary encoded.
    #[test]
    fn series_codes_tell_rows_apart_by_their_dictionary_keys() {
        use arrow::array::{DictionaryArray, StringArray};
        use arrow::datatypes::Int32Type;
        use std::sync::Arc;
        let dict = |keys: Vec<Option<i32>>, values: Vec<&str>| -> arrow::array::ArrayRef {
            let keys = arrow::array::Int32Array::from(keys);
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(StringArray::from(values))).expect("dict"))
        };
        let host = TagColumn::new(&dict(vec![Some(0), Some(1), Some(0), None, Some(1)], vec!["a", "b"])).expect("tag");
        let job =
            TagColumn::new(&dict(vec![Some(0), Some(0), Some(1), Some(0), Some(0)], vec!["x", "y"])).expect("tag");
        let cols = [host, job];
        let codes: Vec<u64> =
            (0..5).map(|row| series_codes(&cols).expect("both dictionary encoded").of(&cols, row)).collect();
        assert_eq!(codes[1], codes[4], "b,x twice");
        let distinct: std::collections::HashSet<u64> = codes.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "a,x  b,x  a,y  NULL,x: {codes:?}");

        let plain =
            TagColumn::new(&(Arc::new(StringArray::from(vec!["a"; 5])) as arrow::array::ArrayRef)).expect("tag");
        assert!(series_codes(&[plain]).is_none());
        assert_eq!(series_codes(&[]).expect("no tags").of(&[], 2), 0, "no tags: one series");
    }

    #[test]
    fn rate_extrapolates_as_prometheus_does() {
        // A counter scraped every 15 s over a 60 s window, 10/s.
        let s = series(&[(15_000, 150.0), (30_000, 300.0), (45_000, 450.0), (60_000, 600.0)]);
        let r = extrapolated(&s, 0, 60_000, true, true).expect("rate");
        // Extrapolated to the window's start (15 s < 1.1 * 15 s) and end: 600/60.
        assert!((r - 10.0).abs() < 1e-9, "{r}");
        // A reset: 600 then 50 counts 650 in all.
        let s = series(&[(0, 500.0), (30_000, 600.0), (60_000, 50.0)]);
        let inc = extrapolated(&s, 0, 60_000, true, false).expect("increase");
        assert!((inc - 150.0).abs() < 1e-9, "{inc}");
    }

    #[test]
    fn quantiles_interpolate_between_ranks_and_buckets() {
        assert_eq!(quantile(0.5, vec![1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(0.9, vec![10.0]), 10.0);
        // 10 observations: 5 at or below 0.1, 9 at or below 1, all.
        let b = vec![(0.1, 5.0), (1.0, 9.0), (f64::INFINITY, 10.0)];
        assert!((bucket_quantile(0.5, b.clone()) - 0.1).abs() < 1e-9);
        assert!((bucket_quantile(0.7, b.clone()) - 0.55).abs() < 1e-9);
        assert_eq!(bucket_quantile(0.99, b), 1.0, "in +Inf: the highest finite bound");
    }

    /// Evaluates `q` at `t` over `data` (every selector sees the series its
    /// matchers and name select).
    fn eval_at(q: &str, data: &[Series], t: i64) -> Result<Value, PromError> {
        let expr = parse(q)?;
        let mut wanted = Vec::new();
        selectors(&expr, t, t, (t, t), &mut wanted)?;
        let mut fetched = Fetched::new();
        for (vs, _, _) in wanted {
            let name = metric_name(vs);
            let picked = data
                .iter()
                .filter(|s| {
                    name.as_ref().is_none_or(|n| s.labels.iter().any(|(k, v)| k == "__name__" && v == n))
                        && matches(&vs.matchers, &s.labels)
                })
                .cloned()
                .collect();
            fetched.insert(selector_key(vs), picked);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        Evaluator::new(&fetched, t, t, deadline, Default::default()).eval(&expr, t)
    }

    fn metric(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        let mut l: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.push(("__name__".into(), name.into()));
        l.sort();
        Series { labels: l, samples: samples.to_vec() }
    }

    /// Found by a hostile review, checked against Prometheus 2.42.
    #[test]
    fn nan_bounds_duplicates_and_merged_buckets_as_prometheus() {
        let data = vec![
            metric("m", &[("a", "1")], &[(1_000, f64::NAN)]),
            metric("m", &[("a", "2")], &[(1_000, 5.0)]),
            metric("m", &[("a", "3")], &[(1_000, 1.0)]),
            metric("h", &[("le", "1")], &[(1_000, 5.0)]),
            metric("h", &[("le", "1.0")], &[(1_000, 4.0)]),
            metric("h", &[("le", "+Inf")], &[(1_000, 10.0)]),
        ];
        let Ok(Value::Vector(v)) = eval_at("clamp(m, 0, 2)", &data, 1_000) else { panic!("clamp") };
        assert!(v.iter().any(|(_, x)| x.is_nan()), "NaN stays NaN: {v:?}");
        let Ok(Value::Vector(v)) = eval_at("topk(1, m)", &data, 1_000) else { panic!("topk") };
        assert_eq!(v.iter().map(|(_, x)| *x).collect::<Vec<_>>(), [5.0], "NaN is picked last");
        let Ok(Value::Vector(v)) = eval_at("bottomk(1, m)", &data, 1_000) else { panic!("bottomk") };
        assert_eq!(v.iter().map(|(_, x)| *x).collect::<Vec<_>>(), [1.0]);
        // le="1" and le="1.0" are one bucket of 9: the median is in it.
        let Ok(Value::Vector(v)) = eval_at("histogram_quantile(0.5, h)", &data, 1_000) else { panic!("hq") };
        assert!((v[0].1 - 0.5555555555555556).abs() < 1e-12, "{v:?}");
        let err = eval_at(r#"label_join(m, "a", "-", "nosuch")"#, &data, 1_000).expect_err("same labels twice");
        assert!(err.to_string().contains("same labelset"), "{err}");
        for q in [r#"count_values("a b", m)"#, r#"label_replace(m, "1bad", "x", "a", ".*")"#, "topk(1e30, m)"] {
            assert!(eval_at(q, &data, 1_000).is_err(), "{q} is refused");
        }
        let Ok(Value::Vector(v)) = eval_at(r#"absent(x{a="b", a="c", z="y"})"#, &data, 1_000) else { panic!("absent") };
        assert_eq!(v, vec![(vec![("z".to_string(), "y".to_string())], 1.0)], "a label matched twice is left out");
    }

    #[test]
    fn holt_winters_is_known_by_its_prometheus_2_name() {
        assert_eq!(renamed("holt_winters (x[5m], 0.5, 0.5)"), "double_exponential_smoothing (x[5m], 0.5, 0.5)");
        assert_eq!(
            renamed(r#"x{a="holt_winters(", b='\'holt_winters('} + my_holt_winters(1)"#),
            r#"x{a="holt_winters(", b='\'holt_winters('} + my_holt_winters(1)"#
        );
        let series = [metric("m", &[], &[(0, 1.0), (1000, 2.0), (2000, 4.0)])];
        let v = eval_at("holt_winters(m[5s], 0.5, 0.5)", &series, 2000).expect("evaluates");
        // s1 = 1, b = 1; at 2: 0.5*2 + 0.5*(1+1) = 2; at 4: b = 0.5*(2-1) + 0.5*1 = 1, 0.5*4 + 0.5*(2+1) = 3.5
        assert_eq!(v, Value::Vector(vec![(Vec::new(), 3.5)]));
    }

    #[test]
    fn deep_or_long_expressions_are_refused_before_evaluation() {
        let deep = format!("{}up{}", "(".repeat(300), ")".repeat(300));
        assert!(parse(&deep).expect_err("deep").to_string().contains("at most 200"));
        let long = vec!["up"; 500].join(" + ");
        assert!(parse(&long).expect_err("long chain").to_string().contains("levels deep"));
        assert!(parse(&"a".repeat(70_000)).expect_err("long").to_string().contains("bytes"));
        assert!(parse("sum(rate(up[5m]))").is_ok());
    }

    #[test]
    fn values_print_as_go_does() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e21), "1e+21");
        assert_eq!(format_value(3.0864197543434786e-7), "3.0864197543434786e-07");
        assert_eq!(format_value(0.000001), "0.000001");
    }
}
