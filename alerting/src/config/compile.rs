//! From the file types to the validated model: each rule, route,
//! escalation, receiver and maintenance window checked and compiled, with
//! errors that name what is wrong (see [`super::Config::from_files`] for
//! the checks across files).

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::duration::Dur;
use crate::matcher::Matchers;
use crate::rule::{Rule, RuleGroup, Threshold};

pub(crate) fn compile_group(g: GroupFile, templates: &crate::templates::Templates) -> Result<RuleGroup, String> {
    if g.name.trim().is_empty() {
        return Err("a group needs a name".into());
    }
    let interval = g.interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL);
    if interval < Duration::from_millis(100) {
        return Err(format!("group {:?}: interval {} is below the 100ms minimum", g.name, Dur(interval)));
    }
    let mut rules = Vec::new();
    let mut records = Vec::new();
    let mut seen = HashSet::new();
    for r in g.rules {
        if let Some(record) = &r.record {
            let ctx = |e: String| format!("group {:?}, recording rule {record:?}: {e}", g.name);
            records.push(compile_recording(r.clone()).map_err(ctx)?);
            continue;
        }
        let name = r.alert.clone();
        if !seen.insert(name.clone()) {
            return Err(format!("group {:?}: rule {name:?} is defined twice", g.name));
        }
        let ctx = |e: String| format!("group {:?}, rule {name:?}: {e}", g.name);
        let r = crate::templates::instantiate(&r, templates).map_err(ctx)?;
        rules.push(compile_rule(r).map_err(ctx)?);
    }
    Ok(RuleGroup { name: g.name, interval, database: g.database, limit: g.limit, rules, records })
}

/// A recording rule: a metric name, `expr` and `labels`, nothing else.
fn compile_recording(r: RuleFile) -> Result<crate::rule::Recording, String> {
    let name = r.record.unwrap_or_default();
    let metric_name = |n: &str| {
        n.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    if name.is_empty() || !metric_name(&name) {
        return Err("`record` must be a metric name (letters, digits, '_' and ':', not starting with a digit)".into());
    }
    if !r.alert.is_empty() {
        return Err("give `alert` or `record`, not both".into());
    }
    let Some(expr) = r.expr else { return Err("a recording rule needs `expr` (PromQL)".into()) };
    let others = [
        ("sql", r.sql.is_some()),
        ("on_ingest", r.on_ingest.is_some()),
        ("template", r.template.is_some()),
        ("params", !r.params.is_empty()),
        ("thresholds", !r.thresholds.is_empty()),
        ("for", r.for_.is_some()),
        ("keep_firing_for", r.keep_firing_for.is_some()),
        ("annotations", !r.annotations.is_empty()),
        ("no_data", r.no_data.is_some()),
        ("absent", r.absent.is_some()),
        ("recover", r.recover.is_some()),
        ("flapping", r.flapping.is_some()),
        ("depends_on", !r.depends_on.is_empty()),
        ("active_during", !r.active_during.is_empty()),
    ];
    if let Some((key, _)) = others.iter().find(|(_, given)| *given) {
        return Err(format!("a recording rule takes `expr` and `labels` only, not `{key}`"));
    }
    check_promql(&expr)?;
    if let Some(k) = r.labels.keys().find(|k| !crate::external::label_name(k) || *k == "__name__") {
        return Err(format!("label {k:?} is not a label name (letters, digits and _, not starting with a digit)"));
    }
    if let Some(k) = r.labels.keys().find(|k| matches!(k.as_str(), "value" | "ts")) {
        return Err(format!("label {k:?} names a column every metric has (`ts`, `value`); choose another name"));
    }
    check_untemplated(&r.labels)?;
    Ok(crate::rule::Recording { name, expr, labels: r.labels })
}

pub(crate) fn compile_rule(r: RuleFile) -> Result<Rule, String> {
    if !r.params.is_empty() && r.template.is_none() {
        return Err("`params` go with `template`".into());
    }
    if r.alert.is_empty() || !r.alert.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        return Err("`alert` must be a non-empty name of letters, digits, '_', '-' or '.'".into());
    }
    let (sql, expr, on_ingest) = match (r.sql, r.expr, r.on_ingest) {
        (Some(sql), None, None) => {
            check_sql(&sql)?;
            (sql, None, None)
        }
        (None, Some(expr), None) => {
            check_promql(&expr)?;
            (String::new(), Some(expr), None)
        }
        (None, None, Some(o)) => {
            if r.no_data.is_some() || r.absent.is_some() {
                return Err("`on_ingest` rules see samples as they arrive; `no_data` and `absent` need `sql`".into());
            }
            if o.table.is_empty() || o.field.is_empty() {
                return Err("`on_ingest` needs `table` and `field`".into());
            }
            (String::new(), None, Some(crate::rule::IngestSource { table: o.table, field: o.field }))
        }
        (None, None, None) => return Err("needs `sql`, `expr` (PromQL) or `on_ingest: { table, field }`".into()),
        _ => return Err("give one of `sql`, `expr` and `on_ingest`".into()),
    };
    // The labels a SQL rule's alerts have are its columns; a PromQL
    // expression's are known only when it runs.
    let columns = if on_ingest.is_none() && expr.is_none() { output_names(&sql) } else { None };
    check_annotations(&r.labels, &r.annotations, columns.as_deref())?;
    if let Some(columns) = &columns {
        check_depends_on(&r.labels, &r.depends_on, columns)?;
    }
    let mut labels = r.labels;
    let mut thresholds = Vec::new();
    for (severity, expr) in &r.thresholds {
        let t = Threshold::parse(expr).map_err(|e| format!("threshold {severity:?}: {e}"))?;
        thresholds.push((severity.clone(), t));
    }
    check_threshold_order(&thresholds)?;
    if expr.is_some() && thresholds.is_empty() {
        // As in Prometheus: every element of the result fires, at the
        // severity its `severity` label names.
        let severity = labels.remove("severity").unwrap_or_else(|| "critical".to_string());
        if severity.is_empty() || severity.contains("{{") {
            return Err(format!("labels.severity {severity:?} must be a plain name"));
        }
        thresholds.push((severity, Threshold { op: crate::rule::Op::Present, value: 0.0 }));
    } else if expr.is_some() && labels.contains_key("severity") {
        return Err("with `thresholds` the severity is the threshold crossed; leave out labels.severity".into());
    }
    let recover = r.recover.as_deref().map(Threshold::parse).transpose().map_err(|e| format!("recover: {e}"))?;
    let highest = thresholds.last().map(|(s, _)| s.clone()).unwrap_or_else(|| "critical".to_string());
    let cond = |c: Option<Condition>| -> Option<crate::rule::ConditionSpec> {
        match c {
            None | Some(Condition::On(false)) => None,
            Some(Condition::On(true)) => {
                Some(crate::rule::ConditionSpec { severity: highest.clone(), for_: Duration::ZERO })
            }
            Some(Condition::Detailed(d)) => Some(crate::rule::ConditionSpec {
                severity: d.severity.unwrap_or_else(|| highest.clone()),
                for_: d.for_.map(|d| d.0).unwrap_or_default(),
            }),
        }
    };
    let no_data = cond(r.no_data);
    let absent = cond(r.absent);
    if thresholds.is_empty() && absent.is_none() && no_data.is_none() {
        return Err("needs `thresholds` (e.g. { critical: \"> 95\" }), `absent` or `no_data`".into());
    }
    for (k, _) in labels.iter().chain(r.annotations.iter()) {
        if k.is_empty() {
            return Err("label and annotation names must not be empty".into());
        }
    }
    check_untemplated(&labels)?;
    // As for alerts posted through the Alertmanager API (and Prometheus).
    if let Some(k) = labels.keys().find(|k| !crate::external::label_name(k)) {
        return Err(format!("label {k:?} is not a label name (letters, digits and _, not starting with a digit)"));
    }
    if let Some(d) = r.depends_on.iter().find(|d| d.alert == r.alert) {
        return Err(format!("depends_on names the rule itself ({:?})", d.alert));
    }
    let flap = r
        .flapping
        .map(|f| (f.changes, f.window.0))
        .unwrap_or((crate::rule::DEFAULT_FLAP_CHANGES, crate::rule::DEFAULT_FLAP_WINDOW));
    Ok(Rule {
        name: r.alert,
        sql,
        expr,
        on_ingest,
        thresholds,
        recover,
        for_: r.for_.map(|d| d.0).unwrap_or_default(),
        keep_firing_for: r.keep_firing_for.map(|d| d.0).unwrap_or_default(),
        labels,
        annotations: r.annotations,
        no_data,
        absent,
        flap_changes: flap.0,
        flap_window: flap.1,
        depends_on: r
            .depends_on
            .into_iter()
            .map(|d| crate::rule::Dependency { alert: d.alert, equal: d.equal })
            .collect(),
        active_during: r.active_during,
    })
}

/// The names of the columns a rule's query returns, when the query says
/// them (`SELECT host, max(v) AS value ...`); `None` when it cannot be told
/// without the catalog (`SELECT *`, `t.*`). Unquoted names are lower-cased,
/// as DataFusion does; an unnamed expression (`max(v)`) has no usable name
/// and is left out.
pub(crate) fn output_names(sql: &str) -> Option<Vec<String>> {
    use datafusion::sql::sqlparser::ast::{Expr, Ident, SelectItem, SetExpr, Statement};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    fn ident(i: &Ident) -> String {
        if i.quote_style.is_some() { i.value.clone() } else { i.value.to_lowercase() }
    }
    fn body(b: &SetExpr) -> Option<Vec<String>> {
        match b {
            SetExpr::Select(select) => {
                let mut names = Vec::new();
                for item in &select.projection {
                    match item {
                        SelectItem::ExprWithAlias { alias, .. } => names.push(ident(alias)),
                        SelectItem::UnnamedExpr(Expr::Identifier(i)) => names.push(ident(i)),
                        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                            names.extend(parts.last().map(ident))
                        }
                        SelectItem::UnnamedExpr(_) => {}
                        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => return None,
                        // Several names for one expression (some dialects):
                        // not told apart here.
                        SelectItem::ExprWithAliases { .. } => return None,
                    }
                }
                Some(names)
            }
            // A union's columns are named by its first part.
            SetExpr::SetOperation { left, .. } => body(left),
            SetExpr::Query(q) => body(&q.body),
            _ => None,
        }
    }
    let statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    match statements.as_slice() {
        [Statement::Query(q)] => body(&q.body),
        _ => None,
    }
}

/// Refuses an annotation that names something the rule's instances do not
/// have (a typo renders as nothing in the page that needed it): their
/// labels are the query's columns, the rule's `labels`, `alertname` and
/// `severity`, and `value` is the value.
fn check_annotations(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    columns: Option<&[String]>,
) -> Result<(), String> {
    for (key, template) in annotations {
        let used = crate::template::labels_used(template).map_err(|e| format!("annotation {key:?}: {e}"))?;
        let Some(columns) = columns else { continue };
        if let Some(bad) = used.into_iter().find(|n| !has_label(labels, columns, n)) {
            return Err(format!(
                "annotation {key:?} uses {{{{ {bad} }}}}, which this rule's alerts do not have; they have {{{{ value }}}} \
                 and the labels {} (a template names a label, `value`, `$value` or `$labels.NAME`)",
                label_list(labels, columns)
            ));
        }
    }
    Ok(())
}

/// Whether the rule's alerts have label `n`.
fn has_label(labels: &BTreeMap<String, String>, columns: &[String], n: &str) -> bool {
    matches!(n, "alertname" | "severity") || labels.contains_key(n) || columns.iter().any(|c| c == n && c != "value")
}

/// The labels the rule's alerts have, for an error message.
fn label_list(labels: &BTreeMap<String, String>, columns: &[String]) -> String {
    let mut have: Vec<&str> = vec!["alertname", "severity"];
    have.extend(columns.iter().map(String::as_str).filter(|c| *c != "value"));
    have.extend(labels.keys().map(String::as_str));
    have.join(", ")
}

/// Refuses label values written as templates: Prometheus expands them
/// per alert, Tocsin does not, and taking them literally would merge every
/// alert of the rule into one.
fn check_untemplated(labels: &BTreeMap<String, String>) -> Result<(), String> {
    match labels.iter().find(|(_, v)| v.contains("{{")) {
        Some((k, v)) => Err(format!(
            "label {k:?} is a template ({v:?}); label values are not templated in Tocsin: the labels of the \
             expression's result are the alert's labels already"
        )),
        None => Ok(()),
    }
}

/// Refuses thresholds a more severe one would always shadow: they are
/// listed from least to most severe and the most severe one crossed wins,
/// so with `warning: "> 80", critical: "> 50"` warning could never fire.
/// (Thresholds of different directions, `>` and `<`, are not compared.)
fn check_threshold_order(thresholds: &[(String, Threshold)]) -> Result<(), String> {
    use crate::rule::Op;
    for pair in thresholds.windows(2) {
        let ((lower, a), (higher, b)) = (&pair[0], &pair[1]);
        let shadowed = match (a.op, b.op) {
            (Op::Gt | Op::Ge, Op::Gt | Op::Ge) => b.value < a.value,
            (Op::Lt | Op::Le, Op::Lt | Op::Le) => b.value > a.value,
            _ => false,
        };
        if shadowed {
            return Err(format!(
                "threshold {higher:?} ({} {}) is crossed before {lower:?} ({} {}), so {lower:?} could never fire: \
                 list thresholds from least to most severe, each harder to reach",
                b.op.as_str(),
                b.value,
                a.op.as_str(),
                a.value
            ));
        }
    }
    Ok(())
}

/// Refuses a `depends_on` whose `equal` names a label the rule's alerts do
/// not have: with a typo (`equal: [hots]`) both sides lack it, compare
/// equal, and a host that is down suppressed every other host's alerts.
fn check_depends_on(
    labels: &BTreeMap<String, String>,
    depends_on: &[DependsOnFile],
    columns: &[String],
) -> Result<(), String> {
    for d in depends_on {
        if let Some(bad) = d.equal.iter().find(|n| !has_label(labels, columns, n)) {
            return Err(format!(
                "depends_on {:?}: equal names {bad:?}, which this rule's alerts do not have; they have the labels {}",
                d.alert,
                label_list(labels, columns)
            ));
        }
    }
    Ok(())
}

/// Parses a rule's SQL offline (one statement, a query). Planning against
/// the catalog happens in the server.
/// A PromQL rule expression: it parses and gives an instant vector or a
/// scalar.
pub fn check_promql(expr: &str) -> Result<(), String> {
    let parsed = tocsin_query::promql::parse(expr).map_err(|e| format!("expr: {e}"))?;
    match parsed.value_type() {
        tocsin_query::promql::ValueType::Vector | tocsin_query::promql::ValueType::Scalar => Ok(()),
        t => Err(format!("expr: a rule's expression must give an instant vector or a scalar, not a {t}")),
    }
}

pub fn check_sql(sql: &str) -> Result<(), String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("sql: {e}"))?;
    match statements.as_slice() {
        [datafusion::sql::sqlparser::ast::Statement::Query(_)] => Ok(()),
        [] => Err("sql is empty".into()),
        [_] => Err("sql must be a query (SELECT ...)".into()),
        _ => Err("sql must be a single statement".into()),
    }
}

/// `escalation: none`: the route notifies its receiver, not its parent's chain.
pub(crate) const NO_ESCALATION: &str = "none";

pub(crate) fn flatten_route(r: &RouteFile, parent: Option<&Route>, out: &mut Vec<Route>) -> Result<usize, String> {
    let group_by = match &r.group_by {
        Some(g) if g.iter().any(|l| l == "...") => GroupBy::All,
        Some(g) => GroupBy::Labels(g.clone()),
        None => parent.map(|p| p.group_by.clone()).unwrap_or(GroupBy::Labels(vec!["alertname".into()])),
    };
    let pick = |own: Option<Dur>, inherited: Option<Duration>, default: Duration| {
        own.map(|d| d.0).or(inherited).unwrap_or(default)
    };
    // A route notifies a receiver or runs an escalation chain. What it sets
    // itself decides which; only what it leaves unset is inherited, and
    // `escalation: none` clears an inherited chain.
    let inherited_receiver = || parent.map(|p| p.receiver.clone()).unwrap_or_default();
    let (receiver, escalation) = match (&r.receiver, r.escalation.as_deref()) {
        (Some(rc), Some(e)) if e != NO_ESCALATION => {
            return Err(format!(
                "a route notifies either a receiver or an escalation chain, not both: this one names receiver \
                 {rc:?} and escalation {e:?} (the chain's steps say whom it notifies); keep one"
            ));
        }
        (Some(rc), _) => (rc.clone(), None),
        (None, Some(NO_ESCALATION)) => (inherited_receiver(), None),
        (None, Some(e)) => (inherited_receiver(), Some(e.to_string())),
        (None, None) => (inherited_receiver(), parent.and_then(|p| p.escalation.clone())),
    };
    let route = Route {
        receiver,
        group_by,
        group_wait: pick(r.group_wait, parent.map(|p| p.group_wait), DEFAULT_GROUP_WAIT),
        group_interval: pick(r.group_interval, parent.map(|p| p.group_interval), DEFAULT_GROUP_INTERVAL),
        repeat_interval: pick(r.repeat_interval, parent.map(|p| p.repeat_interval), DEFAULT_REPEAT_INTERVAL),
        escalation,
        matchers: Matchers::from_maps(&r.match_, &r.match_re)?,
        continue_: r.continue_,
        children: Vec::new(),
        mute_time_intervals: r.mute_time_intervals.clone(),
        active_time_intervals: r.active_time_intervals.clone(),
    };
    if route.group_interval.is_zero() || route.repeat_interval.is_zero() {
        return Err("group_interval and repeat_interval must be above zero".into());
    }
    let idx = out.len();
    out.push(route);
    for child in &r.routes {
        let parent_copy = out[idx].clone();
        let c = flatten_route(child, Some(&parent_copy), out)?;
        out[idx].children.push(c);
    }
    Ok(idx)
}

pub(crate) fn compile_escalation(e: EscalationFile) -> Result<Escalation, String> {
    if e.steps.is_empty() {
        return Err(format!("escalation {:?} has no steps", e.name));
    }
    let mut prev = Duration::ZERO;
    for (i, s) in e.steps.iter().enumerate() {
        if s.after.0 < prev {
            return Err(format!(
                "escalation {:?}: step {} comes before step {i} (`after` must not decrease)",
                e.name,
                i + 1
            ));
        }
        if s.notify.is_empty() && s.oncall.is_none() {
            let hint = if s.via.is_empty() {
                "give `notify: [receivers]`, or `oncall: SCHEDULE` with `via: [receivers]`"
            } else {
                "`via:` needs `oncall: SCHEDULE` (whose person to reach through those receivers)"
            };
            return Err(format!("escalation {:?}: step {} notifies nobody: {hint}", e.name, i + 1));
        }
        if s.oncall.is_some() == s.via.is_empty() {
            return Err(format!(
                "escalation {:?}: step {}: `oncall: SCHEDULE` and `via: [receivers]` go together",
                e.name,
                i + 1
            ));
        }
        if s.repeat.is_some_and(|r| r.0 < Duration::from_secs(1)) {
            return Err(format!("escalation {:?}: step {} repeats more often than once a second", e.name, i + 1));
        }
        prev = s.after.0;
    }
    let last = e.steps.last().map(|s| s.after.0).unwrap_or_default();
    let gap = if e.steps.len() >= 2 { last - e.steps[e.steps.len() - 2].after.0 } else { last };
    let repeat_interval = e.repeat_interval.map(|d| d.0).unwrap_or_else(|| (last + gap).max(Duration::from_secs(60)));
    if repeat_interval <= last && e.repeat > 0 {
        return Err(format!("escalation {:?}: repeat_interval must be longer than the last step's `after`", e.name));
    }
    Ok(Escalation {
        name: e.name,
        steps: e
            .steps
            .into_iter()
            .map(|s| Step {
                after: s.after.0,
                notify: s.notify,
                oncall: s.oncall.map(|o| (o, s.via)),
                repeat: s.repeat.map(|d| d.0),
            })
            .collect(),
        repeat: e.repeat,
        repeat_interval,
    })
}

pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http:// or https:// URL"))
    }
}

pub(crate) fn compile_receiver(r: ReceiverFile) -> Result<Receiver, String> {
    let mut integrations = Vec::new();
    let name = r.name.clone();
    let ctx = |e: String| format!("receiver {name:?}: {e}");
    if let Some(w) = r.webhook {
        check_url(&w.url).map_err(ctx)?;
        integrations.push(Integration::Webhook {
            url: w.url,
            headers: w.headers,
            timeout: w.timeout.map(|d| d.0).unwrap_or(DEFAULT_SEND_TIMEOUT),
        });
    }
    for (kind, robot) in [
        (RobotKind::WeCom, r.wecom),
        (RobotKind::DingTalk, r.dingtalk),
        (RobotKind::Feishu, r.feishu),
        (RobotKind::Slack, r.slack),
    ] {
        if let Some(b) = robot {
            check_url(&b.url).map_err(ctx)?;
            let at = Mentions { mobiles: b.at_mobiles, user_ids: b.at_user_ids, all: b.at_all };
            if b.secret.is_some() && kind != RobotKind::DingTalk {
                return Err(ctx(format!("{}: `secret` signs DingTalk robots only", kind.name())));
            }
            if !at.is_empty() && !matches!(kind, RobotKind::DingTalk | RobotKind::WeCom) {
                return Err(ctx(format!(
                    "{}: at_mobiles, at_user_ids and at_all mention people in DingTalk and WeCom robots only",
                    kind.name()
                )));
            }
            integrations.push(Integration::Robot {
                kind,
                url: b.url,
                template: b.template,
                timeout: b.timeout.map(|d| d.0).unwrap_or(DEFAULT_SEND_TIMEOUT),
                secret: b.secret,
                at,
            });
        }
    }
    if let Some(e) = r.email {
        if e.to.is_empty() {
            return Err(ctx("email needs at least one address in `to`".into()));
        }
        crate::notify::SmtpTls::parse(e.tls.as_deref()).map_err(ctx)?;
        if let Some(ca) = &e.ca_file
            && !ca.is_file()
        {
            return Err(ctx(format!("email ca_file {} is not a readable file", ca.display())));
        }
        if !e.smarthost.contains(':') {
            return Err(ctx(format!("email smarthost {:?} needs a port, e.g. smtp.example.com:587", e.smarthost)));
        }
        integrations.push(Integration::Email(e));
    }
    if integrations.is_empty() {
        return Err(ctx("needs at least one of webhook, email, wecom, dingtalk, feishu, slack".into()));
    }
    let rate_limit = match r.rate_limit {
        None => None,
        Some(l) if l.messages == 0 || l.per.0 < Duration::from_secs(1) => {
            return Err(ctx(format!(
                "rate_limit needs at least 1 message per at least 1s (got {} per {})",
                l.messages, l.per
            )));
        }
        Some(l) => Some(RateLimit { messages: l.messages, per: l.per.0 }),
    };
    Ok(Receiver { name: r.name, integrations, rate_limit })
}

pub(crate) fn compile_maintenance(m: MaintenanceFile) -> Result<Maintenance, String> {
    let ctx = |e: String| format!("maintenance window {:?}: {e}", m.name);
    let hm = |s: &str| -> Result<u32, String> {
        let (h, mi) = s.split_once(':').ok_or_else(|| format!("{s:?} is not HH:MM"))?;
        let h: u32 = h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
        let mi: u32 = mi.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
        if h > 24 || mi > 59 || (h == 24 && mi > 0) {
            return Err(format!("{s:?} is not a time of day"));
        }
        Ok(h * 60 + mi)
    };
    let days = m
        .days
        .iter()
        .map(|d| match d.to_ascii_lowercase().get(..3) {
            Some("mon") => Ok(0),
            Some("tue") => Ok(1),
            Some("wed") => Ok(2),
            Some("thu") => Ok(3),
            Some("fri") => Ok(4),
            Some("sat") => Ok(5),
            Some("sun") => Ok(6),
            _ => Err(format!("{d:?} is not a day of the week")),
        })
        .collect::<Result<Vec<u32>, String>>()
        .map_err(ctx)?;
    let utc_offset_min = match m.utc_offset.as_deref() {
        None | Some("Z") | Some("UTC") => 0,
        Some(s) => {
            let (sign, rest) = match s.as_bytes().first() {
                Some(b'+') => (1, &s[1..]),
                Some(b'-') => (-1, &s[1..]),
                _ => return Err(ctx(format!("utc_offset {s:?} is not like +08:00"))),
            };
            sign * hm(rest).map_err(ctx)? as i32
        }
    };
    let matchers = Matchers::from_maps(&m.match_, &m.match_re).map_err(ctx)?;
    if matchers.is_empty() && m.rule_groups.is_empty() {
        return Err(ctx(
            "needs `match`, `match_re` or `rule_groups`: a window that silences everything is a mistake".into()
        ));
    }
    let daily = match (&m.start, &m.end) {
        (Some(s), Some(e)) => Some((hm(s).map_err(ctx)?, hm(e).map_err(ctx)?)),
        (None, None) => None,
        _ => return Err(ctx("give both `start` and `end` (HH:MM), or neither".into())),
    };
    let at = |field: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| ctx(format!("{field} {s:?} is not an RFC 3339 time: {e}")))
            })
            .transpose()
    };
    let between = match (at("starts_at", &m.starts_at)?, at("ends_at", &m.ends_at)?) {
        (Some(a), Some(b)) if a < b => Some((a, b)),
        (Some(_), Some(_)) => return Err(ctx("ends_at must be after starts_at".into())),
        (None, None) => None,
        _ => return Err(ctx("give both `starts_at` and `ends_at`, or neither".into())),
    };
    if daily.is_some() && !m.time_intervals.is_empty() {
        return Err(ctx("give a daily `start`/`end` or `time_intervals`, not both".into()));
    }
    if daily.is_none() && m.time_intervals.is_empty() && between.is_none() {
        return Err(ctx("needs a daily `start`/`end`, `time_intervals`, or `starts_at`/`ends_at`".into()));
    }
    Ok(Maintenance {
        name: m.name,
        matchers,
        rule_groups: m.rule_groups,
        days,
        daily,
        utc_offset_min,
        time_intervals: m.time_intervals,
        between,
    })
}
