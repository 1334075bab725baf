//! Rule unit tests (`tocsin rules test FILE`), in the spirit of
//! `promtool test rules`: input series, then the alerts expected at given
//! times. Each test runs the real engine over a private, temporary storage
//! with a simulated clock (`now()` in the rules' SQL follows it).
//!
//! ```yaml
//! rule_files: [host.yml]          # relative to this file
//! evaluation_interval: 10s
//! tests:
//!   - name: cpu goes critical, then recovers
//!     interval: 10s               # spacing of the input values
//!     input:
//!       - table: cpu
//!         tags: { host: web-1 }
//!         fields: { usage: "50 85 96 96 96 60x3" }   # `_` = no sample, `VxN` = V N times
//!     alerts:
//!       - at: 40s
//!         firing: [{ alertname: HighCpu, host: web-1, severity: critical }]
//!       - at: 70s
//!         firing: []
//! ```
//!
//! An expected alert matches an actual one when every label it lists has
//! that value; the lists must match one to one. `pending` is checked only
//! when given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, Storage, StorageConfig, TableWrite};

use crate::config::{Config, ConfigError, parse_file};
use crate::duration::Dur;
use crate::engine::{AlertEngine, EngineOptions, HistorySink, RuleQuerier};
use crate::notify::Attempt;
use crate::state::Transition;
use crate::{Clock, ManualClock};

#[derive(Debug, thiserror::Error)]
pub enum RuleTestError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("storage for the test: {0}")]
    Storage(#[from] tocsin_storage::StorageError),
    #[error("engine: {0}")]
    Engine(#[from] crate::EngineError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestFile {
    rule_files: Vec<PathBuf>,
    evaluation_interval: Option<Dur>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    interval: Option<Dur>,
    #[serde(default)]
    input: Vec<InputSeries>,
    #[serde(default)]
    alerts: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    table: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    fields: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    at: Dur,
    #[serde(default)]
    firing: Vec<BTreeMap<String, String>>,
    pending: Option<Vec<BTreeMap<String, String>>>,
}

/// One test's outcome: the failures, each saying what was expected and
/// what fired instead.
#[derive(Debug)]
pub struct TestOutcome {
    pub name: String,
    pub failures: Vec<String>,
}

/// Simulated start of every test: 2030-01-01T00:00:00Z.
const T0: i64 = 1_893_456_000_000;

/// Parses `"1 2 _ 3x4"`: numbers, `_` for no sample, `VxN` for N copies.
fn parse_values(s: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (v, n) = match tok.split_once('x') {
            Some((v, n)) => (v, n.parse::<usize>().map_err(|_| format!("{tok:?}: repeat count is not a number"))?),
            None => (tok, 1),
        };
        let value = if v == "_" {
            None
        } else {
            Some(v.parse::<f64>().map_err(|_| format!("{tok:?} is not a number, `_` or VxN"))?)
        };
        out.extend(std::iter::repeat_n(value, n));
    }
    Ok(out)
}

struct NoHistory;

#[async_trait]
impl HistorySink for NoHistory {
    async fn transitions(&self, _: &[Transition]) {}
    async fn attempts(&self, _: &[Attempt]) {}
}

/// Runs every test of a test file.
pub async fn run_file(path: &Path) -> Result<Vec<TestOutcome>, RuleTestError> {
    let text = std::fs::read_to_string(path).map_err(|source| RuleTestError::Io { path: path.into(), source })?;
    let file: TestFile = serde_yaml_ng::from_str(&text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        ConfigError::Yaml { path: path.into(), line, column, message: e.to_string() }
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut parsed = Vec::new();
    for f in &file.rule_files {
        let p = base.join(f);
        let t = std::fs::read_to_string(&p).map_err(|source| RuleTestError::Io { path: p.clone(), source })?;
        parsed.push((p.clone(), parse_file(&p, &t)?));
    }
    let mut config = Config::from_files(parsed)?;
    // Rule tests check alert states; nothing is delivered.
    config.routes.clear();
    config.receivers.clear();
    let step = file.evaluation_interval.map(|d| d.0).unwrap_or(Duration::from_secs(10));
    if step.is_zero() {
        return Err(RuleTestError::Invalid("evaluation_interval must be above zero".into()));
    }
    let mut outcomes = Vec::new();
    for case in &file.tests {
        outcomes.push(run_case(&config, case, step).await?);
    }
    Ok(outcomes)
}

async fn run_case(config: &Config, case: &TestCase, step: Duration) -> Result<TestOutcome, RuleTestError> {
    let dir = tempfile::tempdir().map_err(|source| RuleTestError::Io { path: std::env::temp_dir(), source })?;
    let storage = Storage::open(StorageConfig::for_tests(dir.path().join("data"))).await?;
    let interval = case.interval.map(|d| d.0).unwrap_or(Duration::from_secs(10)).as_millis() as i64;
    // Samples are written as the simulated clock reaches them, so that a
    // rule never sees "future" rows.
    let mut samples: Vec<(i64, TableWrite)> = Vec::new();
    for s in &case.input {
        let mut fields = Vec::new();
        let mut len = 0;
        for (name, values) in &s.fields {
            let v = parse_values(values).map_err(|e| RuleTestError::Invalid(format!("test {:?}: {e}", case.name)))?;
            len = len.max(v.len());
            fields.push((name.clone(), v));
        }
        for i in 0..len {
            let cols: Vec<FieldColumn> = fields
                .iter()
                .filter_map(|(name, v)| {
                    v.get(i).copied().flatten().map(|x| FieldColumn {
                        name: name.clone(),
                        values: FieldValues::F64(vec![x]),
                        validity: None,
                    })
                })
                .collect();
            if cols.is_empty() {
                continue;
            }
            let at = T0 + i as i64 * interval;
            let block = SeriesBlock {
                item: 0,
                tags: s.tags.clone().into_iter().collect(),
                timestamps: vec![at * 1_000_000],
                fields: cols,
            };
            samples.push((at, TableWrite { table: s.table.clone(), blocks: vec![block] }));
        }
    }
    samples.sort_by_key(|(at, _)| *at);
    let mut samples = samples.into_iter().peekable();
    let clock = Arc::new(ManualClock::new(T0));
    let c = Arc::clone(&clock);
    let query = tocsin_query::QueryEngine::new(Arc::clone(&storage)).with_now(Arc::new(move || c.now_ms()));
    let mut opts = EngineOptions::new(dir.path().join("alerting"));
    opts.watch_interval = Duration::ZERO;
    let engine = AlertEngine::start_with_config(
        opts,
        config.clone(),
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::new(query) as Arc<dyn RuleQuerier>,
        Arc::new(NoHistory),
    )?;
    let mut checks: Vec<&Expectation> = case.alerts.iter().collect();
    checks.sort_by_key(|e| e.at.0);
    let end = checks.last().map(|e| e.at.millis()).unwrap_or(0);
    let step_ms = step.as_millis() as i64;
    let mut failures = Vec::new();
    let mut next = checks.into_iter().peekable();
    let mut t = 0;
    while t <= end {
        clock.set_ms(T0 + t);
        while let Some((_, w)) = samples.next_if(|(at, _)| *at <= T0 + t) {
            let out = storage.write("public", vec![w]).await?;
            if let Some(r) = out.rejected.first() {
                return Err(RuleTestError::Invalid(format!("test {:?}: input rejected: {}", case.name, r.error)));
            }
        }
        engine.tick().await;
        while let Some(e) = next.next_if(|e| e.at.millis() < t + step_ms) {
            let alerts = engine.alerts(None, &BTreeMap::new());
            let with_state = |state: &str| -> Vec<BTreeMap<String, String>> {
                alerts
                    .iter()
                    .filter(|a| a["state"] == state)
                    .map(|a| serde_json::from_value(a["labels"].clone()).unwrap_or_default())
                    .collect()
            };
            compare(&mut failures, e.at, "firing", &e.firing, &with_state("firing"));
            if let Some(p) = &e.pending {
                compare(&mut failures, e.at, "pending", p, &with_state("pending"));
            }
        }
        t += step_ms;
    }
    drop(engine);
    storage.shutdown().await?;
    Ok(TestOutcome { name: case.name.clone(), failures })
}

fn compare(
    failures: &mut Vec<String>,
    at: Dur,
    state: &str,
    expected: &[BTreeMap<String, String>],
    actual: &[BTreeMap<String, String>],
) {
    let mut unmatched: Vec<&BTreeMap<String, String>> = actual.iter().collect();
    let mut missing = Vec::new();
    for e in expected {
        match unmatched.iter().position(|a| e.iter().all(|(k, v)| a.get(k) == Some(v))) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => missing.push(e),
        }
    }
    if !missing.is_empty() || !unmatched.is_empty() {
        let fmt = |l: &BTreeMap<String, String>| {
            format!("{{{}}}", l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))
        };
        failures.push(format!(
            "at {at}: {state}: expected but missing {:?}; {state} but not expected {:?}",
            missing.iter().map(|l| fmt(l)).collect::<Vec<_>>(),
            unmatched.iter().map(|l| fmt(l)).collect::<Vec<_>>(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expand() {
        assert_eq!(parse_values("1 _ 2x3"), Ok(vec![Some(1.0), None, Some(2.0), Some(2.0), Some(2.0)]));
        assert!(parse_values("1 a").is_err());
    }

    #[tokio::test]
    async fn a_rule_test_passes_and_a_wrong_expectation_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("rules.yml"),
            r#"
groups:
  - name: g
    interval: 10s
    rules:
      - alert: HighCpu
        sql: SELECT host, max(usage) AS value FROM cpu WHERE ts > now() - INTERVAL '15 seconds' GROUP BY host
        thresholds: { warning: "> 80", critical: "> 95" }
        for: 20s
"#,
        )
        .expect("write");
        let test = r#"
rule_files: [rules.yml]
evaluation_interval: 10s
tests:
  - name: fires after for, then resolves
    interval: 10s
    input:
      - table: cpu
        tags: { host: web-1 }
        fields: { usage: "50 85 97 97 97 60 60 60" }
      - table: cpu
        tags: { host: web-2 }
        fields: { usage: "10x8" }
    alerts:
      - at: 10s
        firing: []
        pending: [{ alertname: HighCpu, host: web-1, severity: warning }]
      - at: 30s
        firing: [{ alertname: HighCpu, host: web-1, severity: critical }]
      - at: 70s
        firing: []
  - name: wrong on purpose
    input:
      - table: cpu
        tags: { host: web-3 }
        fields: { usage: "99x5" }
    alerts:
      - at: 40s
        firing: [{ host: web-4 }]
"#;
        let tf = dir.path().join("test.yml");
        std::fs::write(&tf, test).expect("write");
        let out = run_file(&tf).await.expect("runs");
        assert_eq!(out.len(), 2);
        assert!(out[0].failures.is_empty(), "{:?}", out[0].failures);
        assert_eq!(out[1].failures.len(), 1, "{:?}", out[1].failures);
        assert!(out[1].failures[0].contains("host=web-4") && out[1].failures[0].contains("host=web-3"));
    }
}

#[cfg(test)]
mod promql_rules {
    use super::*;

    /// A Prometheus-style rule (`expr:`, no thresholds, `labels.severity`)
    /// and a PromQL rule with thresholds, over a real storage and query
    /// engine, on the simulated clock.
    #[tokio::test]
    async fn promql_rules_fire_as_prometheus_rules_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("rules.yml"),
            r#"
groups:
  - name: g
    interval: 10s
    rules:
      - alert: HotRoom
        expr: avg_over_time(temp[20s]) > 30
        for: 10s
        labels: { severity: warning }
        annotations: { summary: "{{ $labels.room }}: {{ $value | humanize }}" }
      - alert: TempLevel
        expr: max by (room) (temp)
        thresholds: { warning: "> 25", critical: "> 40" }
      - alert: RecordedHot
        expr: room:temp:max > 45
      - record: room:temp:max
        expr: max by (room) (temp)
        labels: { source: rule }
"#,
        )
        .expect("write");
        let test = r#"
rule_files: [rules.yml]
evaluation_interval: 10s
tests:
  - name: promql
    interval: 10s
    input:
      - table: temp
        tags: { room: a }
        fields: { value: "20 35 35 35 35 50 50 20 20 20" }
      - table: temp
        tags: { room: b }
        fields: { value: "10x10" }
    alerts:
      - at: 20s
        firing: [{ alertname: TempLevel, room: a, severity: warning }]
        pending: []
      - at: 30s
        firing: [{ alertname: TempLevel, room: a, severity: warning }]
        pending: [{ alertname: HotRoom, room: a, severity: warning }]
      - at: 40s
        firing: [{ alertname: HotRoom, room: a, severity: warning }, { alertname: TempLevel, room: a }]
      - at: 50s
        firing:
          - { alertname: HotRoom, room: a }
          - { alertname: TempLevel, room: a, severity: critical }
          - { alertname: RecordedHot, room: a, source: rule, severity: critical }
      - at: 90s
        firing: []
"#;
        let tf = dir.path().join("test.yml");
        std::fs::write(&tf, test).expect("write");
        let out = run_file(&tf).await.expect("runs");
        assert_eq!(out.len(), 1);
        assert!(out[0].failures.is_empty(), "{:?}", out[0].failures);
    }

    #[test]
    fn promql_rule_files_are_checked_when_loaded() {
        let load = |rule: &str| {
            let path = PathBuf::from("rules.yml");
            let text = format!("groups:\n  - name: g\n    rules:\n      - {rule}\n");
            parse_file(&path, &text)
                .and_then(|f| Config::from_files(vec![(path, f)]))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(load("{ alert: A, expr: 'up == 0', labels: { severity: page } }"), Ok(()));
        let err = load("{ alert: A, expr: 'rate(up[5m]' }").expect_err("a syntax error");
        assert!(err.contains("expr:"), "{err}");
        let err = load("{ alert: A, expr: 'up[5m]' }").expect_err("a range vector");
        assert!(err.contains("instant vector or a scalar"), "{err}");
        let err = load("{ alert: A, expr: up, sql: 'SELECT 1 AS value' }").expect_err("both");
        assert!(err.contains("one of `sql`, `expr`"), "{err}");
        let err = load("{ alert: A, expr: up, thresholds: { critical: '> 1' }, labels: { severity: x } }")
            .expect_err("severity twice");
        assert!(err.contains("labels.severity"), "{err}");
        let err = load("{ alert: A, expr: up, annotations: { s: '{{ $value | humanise }}' } }").expect_err("typo");
        assert!(err.contains("unknown function \"humanise\""), "{err}");
    }
}

#[cfg(test)]
mod shipped {
    #[tokio::test]
    async fn the_shipped_rule_pack_tests_pass() {
        let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rules/tests/host.test.yml");
        let out = super::run_file(&f).await.expect("runs");
        assert!(!out.is_empty());
        for o in out {
            assert!(o.failures.is_empty(), "{}: {:?}", o.name, o.failures);
        }
    }
}
