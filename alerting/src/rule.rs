//! Rules and their evaluation: each row of a rule's SQL result is one alert
//! instance; its value is checked against the rule's thresholds and the
//! instance moves through inactive → pending → firing → resolved.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::matcher::{Labels, fingerprint};
use crate::state::{AlertState, Instance, Transition};
use crate::template;

pub const DEFAULT_FLAP_CHANGES: u32 = 6;
pub const DEFAULT_FLAP_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
    /// Every value, NaN included: a PromQL rule without thresholds fires
    /// for each element its expression returns, as in Prometheus.
    Present,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Present => "present",
        }
    }
}

/// `> 80`, `<= 0.5`, `== 1`, `!= 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub op: Op,
    pub value: f64,
}

impl Threshold {
    pub fn parse(s: &str) -> Result<Threshold, String> {
        let s = s.trim();
        let (op, rest) = [(">=", Op::Ge), ("<=", Op::Le), ("==", Op::Eq), ("!=", Op::Ne), (">", Op::Gt), ("<", Op::Lt)]
            .into_iter()
            .find_map(|(text, op)| s.strip_prefix(text).map(|r| (op, r)))
            .ok_or_else(|| format!("{s:?} must start with one of > >= < <= == !="))?;
        let value: f64 = rest.trim().parse().map_err(|_| format!("{s:?}: {:?} is not a number", rest.trim()))?;
        if value.is_nan() {
            return Err(format!("{s:?}: NaN cannot be compared"));
        }
        Ok(Threshold { op, value })
    }

    /// NaN never crosses a threshold.
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Eq => v == self.value,
            Op::Ne => !v.is_nan() && v != self.value,
            Op::Present => true,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Op::Present => f.write_str(self.op.as_str()),
            op => write!(f, "{} {}", op.as_str(), self.value),
        }
    }
}

/// `no_data` and `absent`: fire with `severity` once the condition has
/// lasted `for_`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionSpec {
    pub severity: String,
    pub for_: Duration,
}

/// A rule evaluated on the ingest path: the newest value of `field` in
/// each series written to `table`.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSource {
    pub table: String,
    pub field: String,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Empty for `on_ingest` and PromQL rules.
    pub sql: String,
    /// A PromQL expression (`expr:`), evaluated as an instant query: each
    /// element of its result is one row.
    pub expr: Option<String>,
    pub on_ingest: Option<IngestSource>,
    /// From least to most severe, as written; the last one crossed names
    /// the instance's severity.
    pub thresholds: Vec<(String, Threshold)>,
    pub recover: Option<Threshold>,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub no_data: Option<ConditionSpec>,
    pub absent: Option<ConditionSpec>,
    pub flap_changes: u32,
    pub flap_window: Duration,
    /// Alerts this one depends on: while one of them fires with the same
    /// values of `equal`, this one is suppressed (see [`crate::dispatch`]).
    pub depends_on: Vec<Dependency>,
    /// Time intervals the rule runs in (empty: always).
    pub active_during: Vec<String>,
}

/// `depends_on: [{ alert: HostDown, equal: [host] }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub alert: String,
    pub equal: Vec<String>,
}

/// A recording rule: `expr` (PromQL) evaluated with the group and its
/// result written as the metric `name` (labels: the result's, then the
/// rule's), as Prometheus' `record:` rules are.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub name: String,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct RuleGroup {
    pub name: String,
    pub interval: Duration,
    pub database: Option<String>,
    /// Most alerts a rule (series a recording rule) may produce in one
    /// evaluation; 0: no limit.
    pub limit: usize,
    pub rules: Vec<Rule>,
    /// Evaluated before `rules` at each evaluation.
    pub records: Vec<Recording>,
}

/// One row of a rule's result: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
    /// This row's own threshold values, by severity (`threshold_critical`
    /// columns): they replace the rule's number, keeping its operator.
    pub thresholds: Vec<(String, f64)>,
}

/// Result columns named `threshold_<severity>` give a row its own
/// threshold for that severity (a per-device override read from a table).
pub const THRESHOLD_PREFIX: &str = "threshold_";

/// Turns a rule's result into samples: the column named `value` (or the
/// only numeric column) is the value; every other column is a label. Rows
/// with a NULL value are skipped; NULL labels are left out.
pub fn samples_from_batches(batches: &[RecordBatch]) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    let opts = FormatOptions::default();
    for batch in batches {
        let schema = batch.schema();
        let value_idx = match schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case("value")) {
            Some(i) => i,
            None => {
                let numeric: Vec<usize> = schema
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.data_type().is_numeric())
                    .map(|(i, _)| i)
                    .collect();
                match numeric.as_slice() {
                    [i] => *i,
                    [] => return Err("the result has no numeric column; name the checked one `value`".into()),
                    _ => return Err("the result has several numeric columns; name the checked one `value`".into()),
                }
            }
        };
        let value_col = batch.column(value_idx);
        let values = match value_col.data_type() {
            DataType::Boolean => arrow::compute::cast(value_col, &DataType::Float64),
            t if t.is_numeric() => arrow::compute::cast(value_col, &DataType::Float64),
            t => return Err(format!("the value column has type {t}, which is not numeric")),
        }
        .map_err(|e| format!("cannot read the value column: {e}"))?;
        let values = values.as_primitive::<Float64Type>();
        let mut overrides = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if let Some(sev) = f.name().strip_prefix(THRESHOLD_PREFIX).filter(|_| i != value_idx) {
                if !f.data_type().is_numeric() {
                    return Err(format!("{} has type {}; a threshold column must be numeric", f.name(), f.data_type()));
                }
                let col = arrow::compute::cast(batch.column(i), &DataType::Float64)
                    .map_err(|e| format!("cannot read {}: {e}", f.name()))?;
                overrides.push((sev.to_string(), col));
            }
        }
        let formatters = batch
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != value_idx && !schema.field(*i).name().starts_with(THRESHOLD_PREFIX))
            .map(|(i, c)| ArrayFormatter::try_new(c.as_ref(), &opts).map(|f| (schema.field(i).name().clone(), c, f)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot format a label column: {e}"))?;
        for row in 0..batch.num_rows() {
            if values.is_null(row) {
                continue;
            }
            let mut labels = Labels::new();
            for (name, col, f) in &formatters {
                if col.is_valid(row) {
                    labels.insert(name.clone(), f.value(row).to_string());
                }
            }
            let thresholds = overrides
                .iter()
                .filter(|(_, c)| c.is_valid(row))
                .map(|(sev, c)| (sev.clone(), c.as_primitive::<Float64Type>().value(row)))
                .collect();
            out.push(Sample { labels, value: values.value(row), thresholds });
        }
    }
    Ok(out)
}

impl Rule {
    /// The most severe threshold `v` crosses.
    pub fn crossed(&self, v: f64) -> Option<&str> {
        self.crossed_with(v, &[])
    }

    /// [`Self::crossed`] with a row's own threshold values.
    pub fn crossed_with(&self, v: f64, own: &[(String, f64)]) -> Option<&str> {
        self.thresholds
            .iter()
            .rev()
            .find(|(sev, t)| match own.iter().find(|(s, _)| s == sev) {
                Some((_, n)) => Threshold { op: t.op, value: *n }.holds(v),
                None => t.holds(v),
            })
            .map(|(s, _)| s.as_str())
    }

    /// Whether an acknowledgement given at severity `acked` still holds at
    /// `now`: the same severity, or one the rule's thresholds rank lower. A
    /// severity the thresholds do not rank (no data, absent) is not known
    /// to be lower, so it pages again.
    pub fn ack_holds(&self, acked: Option<&str>, now: Option<&str>) -> bool {
        let rank = |s: &str| self.thresholds.iter().position(|(name, _)| name == s);
        match (acked, now) {
            (None, _) => true,
            (Some(a), Some(n)) if a == n => true,
            (Some(a), Some(n)) => matches!((rank(a), rank(n)), (Some(a), Some(n)) if n < a),
            (Some(_), None) => true,
        }
    }

    /// The labels that identify an instance: the row's, the rule's, and
    /// `alertname` (not `severity`, which may change while it fires).
    pub fn identity(&self, row: &Labels) -> Labels {
        let mut l = row.clone();
        for (k, v) in &self.labels {
            l.insert(k.clone(), v.clone());
        }
        l.insert("alertname".into(), self.name.clone());
        l
    }
}

/// What one evaluation saw for an instance.
enum Seen<'a> {
    /// The value, and the row's own thresholds.
    Value(f64, &'a [(String, f64)]),
    /// Not in the result; `Some` when a no-data/absent condition applies.
    Missing(Option<&'a ConditionSpec>),
}

/// Applies one evaluation's samples to the rule's instances (keyed by id)
/// and returns the transitions it caused. Instances that end inactive and
/// need not be remembered are removed.
pub fn evaluate(
    rule: &Rule,
    group: &str,
    samples: &[Sample],
    instances: &mut BTreeMap<String, Instance>,
    now: i64,
) -> Vec<Transition> {
    evaluate_with(rule, group, samples, instances, now, true)
}

/// [`evaluate`], where `complete` says whether `samples` is the rule's whole
/// result (an interval evaluation: series not in it are missing) or just
/// the series that were written (ingest path: the others are unchanged).
pub fn evaluate_with(
    rule: &Rule,
    group: &str,
    samples: &[Sample],
    instances: &mut BTreeMap<String, Instance>,
    now: i64,
    complete: bool,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for s in samples {
        let identity = rule.identity(&s.labels);
        let id = fingerprint(&identity);
        if !seen.insert(id.clone()) {
            continue; // duplicate row for the same labels: the first wins
        }
        let inst = instances.entry(id.clone()).or_insert_with(|| Instance::new(id, group, &rule.name, identity, now));
        inst.last_seen = Some(now);
        inst.no_data = false;
        step(rule, inst, Seen::Value(s.value, &s.thresholds), now, &mut out);
    }
    if !complete {
        instances.retain(|_, i| i.state != AlertState::Inactive);
        for id in &seen {
            if let Some(inst) = instances.get_mut(id)
                && shows_value(inst, now)
            {
                render_annotations(rule, inst);
            }
        }
        return out;
    }
    // Absent: one instance for "no rows at all".
    if let Some(spec) = &rule.absent {
        let identity = rule.identity(&Labels::new());
        let id = fingerprint(&identity);
        if samples.is_empty() {
            seen.insert(id.clone());
            let inst =
                instances.entry(id.clone()).or_insert_with(|| Instance::new(id, group, &rule.name, identity, now));
            inst.no_data = true;
            step(rule, inst, Seen::Missing(Some(spec)), now, &mut out);
        }
    }
    for inst in instances.values_mut() {
        if seen.contains(&inst.id) {
            continue;
        }
        let spec = rule.no_data.as_ref().filter(|_| inst.last_seen.is_some());
        step(rule, inst, Seen::Missing(spec), now, &mut out);
    }
    instances.retain(|_, i| i.state != AlertState::Inactive || (rule.no_data.is_some() && i.last_seen.is_some()));
    for inst in instances.values_mut() {
        if shows_value(inst, now) {
            render_annotations(rule, inst);
        }
    }
    out
}

/// Whether an instance's annotations are rendered with this evaluation's
/// value: while it is active, and in the evaluation that resolved it (its
/// resolved notice said "CPU 45" when the value that resolved it was 30).
fn shows_value(inst: &Instance, now: i64) -> bool {
    inst.state.is_active() || (inst.state == AlertState::Resolved && inst.resolved_at == Some(now))
}

/// A rule outside its `active_during` intervals: what it has pending
/// stops, what it has firing resolves, each with `note` in its transition.
pub fn quiet(instances: &mut BTreeMap<String, Instance>, now: i64, note: &str) -> Vec<Transition> {
    let mut out = Vec::new();
    for inst in instances.values_mut() {
        let from = inst.state;
        match from {
            AlertState::Firing => {
                inst.state = AlertState::Resolved;
                inst.resolved_at = Some(now);
                inst.cleared_since = None;
            }
            AlertState::Pending => {
                inst.state = AlertState::Inactive;
                inst.pending_since = None;
            }
            AlertState::Inactive | AlertState::Resolved => continue,
        }
        inst.updated_at = now;
        let mut t = Transition::new(inst, from, inst.severity.clone(), now);
        t.note = note.to_string();
        out.push(t);
    }
    out
}

fn render_annotations(rule: &Rule, inst: &mut Instance) {
    inst.annotations =
        rule.annotations.iter().map(|(k, t)| (k.clone(), template::render(t, &inst.labels, inst.value))).collect();
}

fn step(rule: &Rule, inst: &mut Instance, seen: Seen<'_>, now: i64, out: &mut Vec<Transition>) {
    // What this evaluation says: the severity crossed (if any), whether the
    // recover condition holds, and how long the condition must last.
    let (crossed, recovered, for_) = match seen {
        Seen::Value(v, own) => {
            inst.value = v;
            let crossed = rule.crossed_with(v, own);
            let recovered = match &rule.recover {
                Some(r) => r.holds(v),
                None => crossed.is_none(),
            };
            (crossed.map(str::to_string), recovered, rule.for_)
        }
        Seen::Missing(Some(spec)) => {
            inst.value = f64::NAN;
            inst.no_data = true;
            let since = inst.last_seen.unwrap_or(inst.created_at);
            if now - since < spec.for_.as_millis() as i64 && !inst.state.is_active() {
                return; // not missing long enough yet
            }
            (Some(spec.severity.clone()), false, Duration::ZERO)
        }
        Seen::Missing(None) => (None, true, rule.for_),
    };
    let from = inst.state;
    let old_severity = inst.severity.clone();
    match inst.state {
        AlertState::Inactive | AlertState::Resolved => {
            match crossed {
                Some(_) if inst.hold_until_clear => {}
                Some(sev) => {
                    // A new episode starts unacknowledged.
                    inst.ack = None;
                    inst.ack_lifted = None;
                    inst.resolved_by = None;
                    inst.severity = Some(sev);
                    inst.resolved_at = None;
                    inst.cleared_since = None;
                    if for_.is_zero() {
                        inst.state = AlertState::Firing;
                        inst.pending_since = Some(now);
                        inst.active_since = Some(now);
                    } else {
                        inst.state = AlertState::Pending;
                        inst.pending_since = Some(now);
                    }
                }
                None => inst.hold_until_clear = false,
            }
        }
        AlertState::Pending => match crossed {
            Some(sev) => {
                inst.severity = Some(sev);
                let since = inst.pending_since.unwrap_or(now);
                if now - since >= for_.as_millis() as i64 {
                    inst.state = AlertState::Firing;
                    inst.active_since = Some(now);
                }
            }
            None => {
                inst.state = AlertState::Inactive;
                inst.pending_since = None;
            }
        },
        AlertState::Firing => {
            let still = crossed.is_some() || !recovered;
            if still {
                inst.cleared_since = None;
                if let Some(sev) = crossed {
                    inst.severity = Some(sev);
                }
            } else {
                let cleared = *inst.cleared_since.get_or_insert(now);
                if now - cleared >= rule.keep_firing_for.as_millis() as i64 {
                    inst.state = AlertState::Resolved;
                    inst.resolved_at = Some(now);
                    inst.cleared_since = None;
                }
            }
        }
    }
    // A rise above the severity it was acknowledged at pages again.
    let lifted = inst.state.is_active()
        && inst.ack.as_ref().is_some_and(|a| !rule.ack_holds(a.severity.as_deref(), inst.severity.as_deref()));
    if lifted {
        inst.ack_lifted = inst.ack.take();
    }
    let changed = from != inst.state || (inst.state == AlertState::Firing && old_severity != inst.severity);
    inst.update_labels();
    if changed {
        inst.updated_at = now;
        inst.note_change(now, rule.flap_changes, rule.flap_window);
        let mut t = Transition::new(inst, from, old_severity, now);
        if let Some(a) = inst.ack_lifted.as_ref().filter(|_| lifted) {
            t.note = format!(
                "severity rose to {}: the acknowledgement by {} at {} no longer holds",
                inst.severity.as_deref().unwrap_or("none"),
                a.by,
                a.severity.as_deref().unwrap_or("none")
            );
        }
        out.push(t);
    } else {
        inst.settle_flapping(now, rule.flap_window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_sql;

    fn rule() -> Rule {
        check_sql("SELECT host, v AS value FROM t").expect("sql");
        Rule {
            name: "HighCpu".into(),
            sql: "SELECT host, v AS value FROM t".into(),
            expr: None,
            on_ingest: None,
            thresholds: vec![
                ("warning".into(), Threshold::parse("> 80").expect("t")),
                ("critical".into(), Threshold::parse("> 95").expect("t")),
            ],
            recover: Some(Threshold::parse("< 70").expect("t")),
            for_: Duration::from_secs(30),
            keep_firing_for: Duration::ZERO,
            labels: [("team".to_string(), "infra".to_string())].into(),
            annotations: [("summary".to_string(), "CPU {{ value }} on {{ host }}".to_string())].into(),
            no_data: None,
            absent: None,
            flap_changes: DEFAULT_FLAP_CHANGES,
            flap_window: DEFAULT_FLAP_WINDOW,
            depends_on: Vec::new(),
            active_during: Vec::new(),
        }
    }

    fn sample(host: &str, v: f64) -> Sample {
        Sample { labels: [("host".to_string(), host.to_string())].into(), value: v, thresholds: Vec::new() }
    }

    struct Run {
        rule: Rule,
        inst: BTreeMap<String, Instance>,
        log: Vec<(i64, AlertState, Option<String>)>,
    }

    impl Run {
        fn new(rule: Rule) -> Run {
            Run { rule, inst: BTreeMap::new(), log: Vec::new() }
        }
        fn eval(&mut self, t_secs: i64, samples: &[Sample]) -> Option<AlertState> {
            let ts = evaluate(&self.rule, "g", samples, &mut self.inst, t_secs * 1000);
            for t in ts {
                self.log.push((t_secs, t.to, t.severity));
            }
            self.inst.values().next().map(|i| i.state)
        }
    }

    #[test]
    fn threshold_parsing() {
        assert_eq!(Threshold::parse(">= 1.5"), Ok(Threshold { op: Op::Ge, value: 1.5 }));
        assert_eq!(Threshold::parse("!=0").map(|t| t.op), Ok(Op::Ne));
        assert!(Threshold::parse("= 3").is_err());
        assert!(Threshold::parse("> x").unwrap_err().contains("not a number"));
        assert!(!Threshold::parse("> 1").expect("t").holds(f64::NAN));
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_below_recover() {
        let mut r = Run::new(rule());
        assert_eq!(r.eval(0, &[sample("a", 85.0)]), Some(AlertState::Pending));
        assert_eq!(r.eval(10, &[sample("a", 85.0)]), Some(AlertState::Pending));
        assert_eq!(r.eval(30, &[sample("a", 85.0)]), Some(AlertState::Firing));
        // Between recover (70) and threshold (80): hysteresis keeps it firing.
        assert_eq!(r.eval(40, &[sample("a", 75.0)]), Some(AlertState::Firing));
        assert_eq!(r.eval(50, &[sample("a", 65.0)]), Some(AlertState::Resolved));
        assert_eq!(
            r.log,
            vec![
                (0, AlertState::Pending, Some("warning".into())),
                (30, AlertState::Firing, Some("warning".into())),
                (50, AlertState::Resolved, Some("warning".into())),
            ]
        );
        let i = r.inst.values().next().expect("instance");
        assert_eq!(i.labels.get("alertname").map(String::as_str), Some("HighCpu"));
        assert_eq!(i.labels.get("team").map(String::as_str), Some("infra"));
    }

    #[test]
    fn pending_that_clears_goes_inactive_and_is_forgotten() {
        let mut r = Run::new(rule());
        r.eval(0, &[sample("a", 85.0)]);
        assert_eq!(r.eval(10, &[sample("a", 50.0)]), None);
        assert!(r.inst.is_empty());
        assert_eq!(r.log.last().map(|l| l.1), Some(AlertState::Inactive));
    }

    #[test]
    fn severity_changes_while_firing_are_transitions() {
        let mut r = Run::new(Rule { for_: Duration::ZERO, ..rule() });
        r.eval(0, &[sample("a", 85.0)]);
        r.eval(1, &[sample("a", 97.0)]);
        r.eval(2, &[sample("a", 90.0)]);
        let sev: Vec<_> = r.log.iter().map(|l| l.2.clone().unwrap_or_default()).collect();
        assert_eq!(sev, ["warning", "critical", "warning"]);
        let i = r.inst.values().next().expect("instance");
        assert_eq!(i.labels.get("severity").map(String::as_str), Some("warning"));
        assert_eq!(i.annotations.get("summary").map(String::as_str), Some("CPU 90 on a"));
    }

    #[test]
    fn a_value_hovering_at_the_line_does_not_flap_with_recover() {
        let mut r = Run::new(Rule { for_: Duration::ZERO, ..rule() });
        for t in 0..20 {
            r.eval(t, &[sample("a", if t % 2 == 0 { 81.0 } else { 79.0 })]);
        }
        assert_eq!(r.log.len(), 1, "{:?}", r.log);
    }

    #[test]
    fn keep_firing_for_delays_resolution() {
        let mut r = Run::new(Rule { for_: Duration::ZERO, keep_firing_for: Duration::from_secs(20), ..rule() });
        r.eval(0, &[sample("a", 99.0)]);
        assert_eq!(r.eval(10, &[sample("a", 10.0)]), Some(AlertState::Firing));
        assert_eq!(r.eval(20, &[sample("a", 10.0)]), Some(AlertState::Firing));
        assert_eq!(r.eval(30, &[sample("a", 10.0)]), Some(AlertState::Resolved));
    }

    #[test]
    fn missing_series_resolves_unless_no_data_is_set() {
        let mut r = Run::new(Rule { for_: Duration::ZERO, ..rule() });
        r.eval(0, &[sample("a", 99.0)]);
        assert_eq!(r.eval(1, &[]), Some(AlertState::Resolved));

        let spec = ConditionSpec { severity: "critical".into(), for_: Duration::from_secs(60) };
        let mut r = Run::new(Rule { for_: Duration::ZERO, no_data: Some(spec), ..rule() });
        r.eval(0, &[sample("a", 10.0)]);
        assert_eq!(r.inst.len(), 1, "a reporting series is remembered");
        assert_eq!(r.eval(30, &[]), Some(AlertState::Inactive));
        assert_eq!(r.eval(61, &[]), Some(AlertState::Firing));
        let i = r.inst.values().next().expect("instance");
        assert!(i.no_data && i.value.is_nan());
        assert_eq!(i.severity.as_deref(), Some("critical"));
        assert_eq!(r.eval(70, &[sample("a", 10.0)]), Some(AlertState::Resolved));
    }

    #[test]
    fn absent_fires_when_there_are_no_rows_at_all() {
        let spec = ConditionSpec { severity: "critical".into(), for_: Duration::ZERO };
        let mut r = Run::new(Rule { absent: Some(spec), thresholds: vec![], ..rule() });
        assert_eq!(r.eval(0, &[]), Some(AlertState::Firing));
        assert_eq!(r.eval(1, &[sample("a", 1.0)]).map(|_| r.inst.len()), Some(1));
        assert_eq!(r.inst.values().next().map(|i| i.state), Some(AlertState::Resolved));
    }

    #[test]
    fn flapping_is_detected_and_clears_when_stable() {
        let mut r = Run::new(Rule {
            for_: Duration::ZERO,
            recover: None,
            flap_changes: 3,
            flap_window: Duration::from_secs(100),
            ..rule()
        });
        for t in 0..6 {
            r.eval(t, &[sample("a", if t % 2 == 0 { 99.0 } else { 10.0 })]);
        }
        assert!(r.inst.values().next().is_some_and(|i| i.flapping));
        r.eval(50, &[sample("a", 99.0)]);
        for t in 200..203 {
            r.eval(t, &[sample("a", 99.0)]);
        }
        assert!(r.inst.values().next().is_some_and(|i| !i.flapping));
    }

    #[test]
    fn samples_take_labels_from_other_columns() {
        use arrow::array::{Float64Array, Int64Array, StringArray};
        use std::sync::Arc;
        let b = RecordBatch::try_from_iter([
            ("host", Arc::new(StringArray::from(vec![Some("a"), None])) as _),
            ("n", Arc::new(Int64Array::from(vec![1, 2])) as _),
            ("value", Arc::new(Float64Array::from(vec![Some(1.5), Some(2.0)])) as _),
        ])
        .expect("batch");
        let s = samples_from_batches(&[b]).expect("samples");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels.get("host").map(String::as_str), Some("a"));
        assert_eq!(s[0].labels.get("n").map(String::as_str), Some("1"));
        assert!(!s[1].labels.contains_key("host"));
        let b = RecordBatch::try_from_iter([
            ("a", Arc::new(Int64Array::from(vec![1])) as _),
            ("b", Arc::new(Int64Array::from(vec![2])) as _),
        ])
        .expect("batch");
        assert!(samples_from_batches(&[b]).unwrap_err().contains("several numeric"));
    }
}
