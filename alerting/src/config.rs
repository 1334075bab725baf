//! The YAML contract: rule groups, the route tree, inhibition rules,
//! escalation policies, receivers and maintenance windows; loading from a
//! file or a directory of files, and validation into a [`Config`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

use crate::matcher::{LabelMatcher, Matchers};
use crate::rule::{Rule, RuleGroup};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Yaml { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Yaml0 { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

mod compile;
mod file;
#[cfg(test)]
mod reference;
use compile::*;
pub use compile::{check_promql, check_sql};
pub use file::*;

// ---------------------------------------------------------------------------
// The validated configuration.

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub groups: Vec<RuleGroup>,
    /// The route tree, flattened depth-first; `routes[0]` is the root.
    pub routes: Vec<Route>,
    pub inhibit_rules: Vec<InhibitRule>,
    pub escalations: HashMap<String, Escalation>,
    pub receivers: HashMap<String, Receiver>,
    pub maintenance: Vec<Maintenance>,
    pub time_intervals: HashMap<String, crate::calendar::TimeInterval>,
    pub people: HashMap<String, crate::oncall::Person>,
    pub schedules: HashMap<String, crate::oncall::Schedule>,
    /// Files the configuration was read from, for change detection.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub receiver: String,
    pub group_by: GroupBy,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub escalation: Option<String>,
    pub matchers: Matchers,
    pub continue_: bool,
    pub children: Vec<usize>,
    /// The route's own (not inherited, as in Alertmanager).
    pub mute_time_intervals: Vec<String>,
    pub active_time_intervals: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    Labels(Vec<String>),
    /// `group_by: ['...']`: every label, so each alert is its own group.
    All,
}

#[derive(Debug, Clone)]
pub struct InhibitRule {
    pub source: Matchers,
    pub target: Matchers,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Escalation {
    pub name: String,
    pub steps: Vec<Step>,
    pub repeat: u32,
    pub repeat_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub after: Duration,
    pub notify: Vec<String>,
    /// (schedule, via receivers).
    pub oncall: Option<(String, Vec<String>)>,
    pub repeat: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub integrations: Vec<Integration>,
    pub rate_limit: Option<RateLimit>,
}

/// At most `messages` notifications to a receiver per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub messages: u32,
    pub per: Duration,
}

#[derive(Debug, Clone)]
pub enum Integration {
    Webhook {
        url: String,
        headers: BTreeMap<String, String>,
        timeout: Duration,
    },
    Robot {
        kind: RobotKind,
        url: String,
        template: Option<String>,
        timeout: Duration,
        secret: Option<String>,
        at: Mentions,
    },
    Email(EmailFile),
}

/// Whom a robot message @-mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mentions {
    pub mobiles: Vec<String>,
    pub user_ids: Vec<String>,
    pub all: bool,
}

impl Mentions {
    pub fn is_empty(&self) -> bool {
        self.mobiles.is_empty() && self.user_ids.is_empty() && !self.all
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobotKind {
    WeCom,
    DingTalk,
    Feishu,
    Slack,
}

impl RobotKind {
    pub fn name(self) -> &'static str {
        match self {
            RobotKind::WeCom => "wecom",
            RobotKind::DingTalk => "dingtalk",
            RobotKind::Feishu => "feishu",
            RobotKind::Slack => "slack",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Maintenance {
    pub name: String,
    pub matchers: Matchers,
    /// Rule groups it applies to (empty: any).
    pub rule_groups: Vec<String>,
    /// Days of the week (0 = Monday) it applies on; empty = every day.
    pub days: Vec<u32>,
    /// Minutes since local midnight, when the window is daily.
    pub daily: Option<(u32, u32)>,
    pub utc_offset_min: i32,
    /// Named time intervals it is open in.
    pub time_intervals: Vec<String>,
    /// One-off bounds (Unix milliseconds, end exclusive).
    pub between: Option<(i64, i64)>,
}

const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The rule files of a rules path: the file itself, or a directory's
/// `*.yml` and `*.yaml` files in name order. One definition for loading
/// and for watching for changes.
pub fn rule_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl Config {
    /// Reads a file, or every `*.yml`/`*.yaml` file of a directory (in name
    /// order), and validates the whole as one configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let files = rule_files(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        let mut parsed = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|source| ConfigError::Io { path: f.clone(), source })?;
            parsed.push((f.clone(), parse_file(f, &text)?));
        }
        let mut config = Config::from_files(parsed)?;
        config.sources = files;
        Ok(config)
    }

    /// Validates parsed files as one configuration.
    pub fn from_files(files: Vec<(PathBuf, RulesFile)>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut route_file: Option<(String, RouteFile)> = None;
        let mut schedule_files = Vec::new();
        // Templates first: a rule may use one defined in another file.
        let mut templates = crate::templates::Templates::new();
        for (path, file) in &files {
            for t in &file.templates {
                if templates.insert(t.name.clone(), t.clone()).is_some() {
                    return Err(ConfigError::Invalid {
                        path: path.display().to_string(),
                        message: format!("template {:?} is defined twice", t.name),
                    });
                }
            }
        }
        let mut rule_names = HashSet::new();
        let mut group_names = HashSet::new();
        // Where each thing was defined, so that an error found once every
        // file is read still names the file to fix.
        let mut file_of_rule: HashMap<String, String> = HashMap::new();
        let mut file_of_escalation: HashMap<String, String> = HashMap::new();
        let mut file_of_window: Vec<String> = Vec::new();
        for (path, file) in files {
            let p = path.display().to_string();
            let invalid = |message: String| ConfigError::Invalid { path: p.clone(), message };
            for g in file.groups {
                if !group_names.insert(g.name.clone()) {
                    return Err(invalid(format!("group {:?} is defined twice", g.name)));
                }
                let group = compile_group(g, &templates).map_err(&invalid)?;
                for r in &group.rules {
                    rule_names.insert(r.name.clone());
                    file_of_rule.insert(format!("{}/{}", group.name, r.name), p.clone());
                }
                config.groups.push(group);
            }
            if let Some(r) = file.route {
                if let Some((other, _)) = &route_file {
                    return Err(invalid(format!(
                        "a route tree is already defined in {other}; only one file may have one"
                    )));
                }
                route_file = Some((p.clone(), r));
            }
            for i in file.inhibit_rules {
                config.inhibit_rules.push(InhibitRule {
                    source: Matchers::from_maps(&i.source_match, &i.source_match_re).map_err(&invalid)?,
                    target: Matchers::from_maps(&i.target_match, &i.target_match_re).map_err(&invalid)?,
                    equal: i.equal,
                });
            }
            for e in file.escalations {
                let esc = compile_escalation(e).map_err(&invalid)?;
                if config.escalations.contains_key(&esc.name) {
                    return Err(invalid(format!("escalation {:?} is defined twice", esc.name)));
                }
                file_of_escalation.insert(esc.name.clone(), p.clone());
                config.escalations.insert(esc.name.clone(), esc);
            }
            for r in file.receivers {
                let rec = compile_receiver(r).map_err(&invalid)?;
                if config.receivers.contains_key(&rec.name) {
                    return Err(invalid(format!("receiver {:?} is defined twice", rec.name)));
                }
                config.receivers.insert(rec.name.clone(), rec);
            }
            for m in file.maintenance_windows {
                config.maintenance.push(compile_maintenance(m).map_err(&invalid)?);
                file_of_window.push(p.clone());
            }
            for p in file.people {
                if config.people.insert(p.name.clone(), p.clone()).is_some() {
                    return Err(invalid(format!("person {:?} is defined twice", p.name)));
                }
            }
            schedule_files.extend(file.schedules.into_iter().map(|s| (p.clone(), s)));
            for t in file.time_intervals {
                let t = crate::calendar::compile(t).map_err(&invalid)?;
                if config.time_intervals.contains_key(&t.name) {
                    return Err(invalid(format!("time interval {:?} is defined twice", t.name)));
                }
                config.time_intervals.insert(t.name.clone(), t);
            }
        }
        let rule_file =
            |group: &str, rule: &str| file_of_rule.get(&format!("{group}/{rule}")).cloned().unwrap_or_default();
        check_dependencies(&config.groups, &rule_names, &rule_file)?;
        for (path, f) in schedule_files {
            let s = crate::oncall::compile(f, &config.people)
                .map_err(|message| ConfigError::Invalid { path: path.clone(), message })?;
            if let Some(n) = s.interval_names().find(|n| !config.time_intervals.contains_key(*n)) {
                return Err(ConfigError::Invalid {
                    path,
                    message: format!("schedule {:?} refers to unknown time interval {n:?}", s.name),
                });
            }
            if config.schedules.contains_key(&s.name) {
                return Err(ConfigError::Invalid { path, message: format!("schedule {:?} is defined twice", s.name) });
            }
            config.schedules.insert(s.name.clone(), s);
        }
        let (route_path, root) = route_file.unwrap_or_else(|| ("(default)".to_string(), RouteFile::default()));
        let invalid = |message: String| ConfigError::Invalid { path: route_path.clone(), message };
        let delivers = !config.groups.is_empty() && !config.receivers.is_empty();
        if delivers && root.receiver.is_none() && root.escalation.as_deref().is_none_or(|e| e == NO_ESCALATION) {
            return Err(invalid("the root route needs a receiver or an escalation".into()));
        }
        flatten_route(&root, None, &mut config.routes).map_err(&invalid)?;
        // Cross references.
        for r in &config.routes {
            if delivers && r.receiver.is_empty() && r.escalation.is_none() {
                return Err(invalid(
                    "a route clears its escalation (`escalation: none`) and names no receiver, nor does a \
                     parent: set `receiver:`"
                        .into(),
                ));
            }
            if !r.receiver.is_empty() && !config.receivers.contains_key(&r.receiver) {
                return Err(invalid(format!("route refers to unknown receiver {:?}", r.receiver)));
            }
            if let Some(e) = &r.escalation
                && !config.escalations.contains_key(e)
            {
                return Err(invalid(format!("route refers to unknown escalation {e:?}")));
            }
        }
        let unknown_interval =
            |names: &[String]| names.iter().find(|n| !config.time_intervals.contains_key(*n)).cloned();
        for r in &config.routes {
            if let Some(n) =
                unknown_interval(&r.mute_time_intervals).or_else(|| unknown_interval(&r.active_time_intervals))
            {
                return Err(invalid(format!("route refers to unknown time interval {n:?}")));
            }
        }
        for (m, path) in config.maintenance.iter().zip(&file_of_window) {
            let invalid = |message: String| ConfigError::Invalid { path: path.clone(), message };
            if let Some(n) = unknown_interval(&m.time_intervals) {
                return Err(invalid(format!("maintenance window {:?} refers to unknown time interval {n:?}", m.name)));
            }
            let known = |g: &String| g == crate::external::GROUP || config.groups.iter().any(|cg| &cg.name == g);
            if let Some(g) = m.rule_groups.iter().find(|g| !known(g)) {
                return Err(invalid(format!("maintenance window {:?} refers to unknown rule group {g:?}", m.name)));
            }
        }
        for g in &config.groups {
            for r in &g.rules {
                if let Some(n) = unknown_interval(&r.active_during) {
                    return Err(ConfigError::Invalid {
                        path: rule_file(&g.name, &r.name),
                        message: format!(
                            "group {:?}: rule {:?} is active_during unknown time interval {n:?}",
                            g.name, r.name
                        ),
                    });
                }
            }
        }
        for e in config.escalations.values() {
            let invalid = |message: String| ConfigError::Invalid {
                path: file_of_escalation.get(&e.name).cloned().unwrap_or_default(),
                message,
            };
            for s in &e.steps {
                if let Some((schedule, _)) = &s.oncall
                    && !config.schedules.contains_key(schedule)
                {
                    return Err(invalid(format!("escalation {:?} refers to unknown schedule {schedule:?}", e.name)));
                }
                for n in s.notify.iter().chain(s.oncall.iter().flat_map(|(_, via)| via)) {
                    if !config.receivers.contains_key(n) {
                        return Err(invalid(format!("escalation {:?} notifies unknown receiver {n:?}", e.name)));
                    }
                }
            }
        }
        Ok(config)
    }

    /// Why `route` sends nothing at `now`, if it does not: a mute time
    /// interval that holds, or active intervals none of which holds.
    pub fn route_quiet(&self, route: &Route, now: i64) -> Option<String> {
        let holds = |n: &String| self.time_intervals.get(n).is_some_and(|t| t.contains(now));
        if let Some(n) = route.mute_time_intervals.iter().find(|n| holds(n)) {
            return Some(format!("mute time interval {n}"));
        }
        if !route.active_time_intervals.is_empty() && !route.active_time_intervals.iter().any(holds) {
            return Some(format!("outside active time intervals {}", route.active_time_intervals.join(", ")));
        }
        None
    }

    /// Whether `rule` runs at `now` (its `active_during`, if any, holds).
    pub fn rule_active(&self, rule: &Rule, now: i64) -> bool {
        rule.active_during.is_empty()
            || rule.active_during.iter().any(|n| self.time_intervals.get(n).is_some_and(|t| t.contains(now)))
    }

    /// The number of rules in all groups.
    pub fn rule_count(&self) -> usize {
        self.groups.iter().map(|g| g.rules.len() + g.records.len()).sum()
    }
}

/// Every `depends_on` names a rule that exists, and no chain of them comes
/// back to where it started (alerts that suppress each other would page
/// nobody).
fn check_dependencies(
    groups: &[RuleGroup],
    names: &HashSet<String>,
    file_of: &dyn Fn(&str, &str) -> String,
) -> Result<(), ConfigError> {
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut file_of_name: HashMap<&str, String> = HashMap::new();
    for g in groups {
        for r in &g.rules {
            file_of_name.entry(r.name.as_str()).or_insert_with(|| file_of(&g.name, &r.name));
            for d in &r.depends_on {
                if !names.contains(&d.alert) {
                    return Err(ConfigError::Invalid {
                        path: file_of(&g.name, &r.name),
                        message: format!(
                            "group {:?}: rule {:?} depends_on unknown alert {:?}",
                            g.name, r.name, d.alert
                        ),
                    });
                }
                edges.entry(r.name.as_str()).or_default().push(d.alert.as_str());
            }
        }
    }
    // Depth-first, three colours: a node met again while on the path closes
    // a cycle.
    fn visit<'a>(
        n: &'a str,
        edges: &HashMap<&'a str, Vec<&'a str>>,
        done: &mut HashSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        if done.contains(n) {
            return Ok(());
        }
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n);
            return Err(cycle.join(" -> "));
        }
        path.push(n);
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, done, path)?;
        }
        path.pop();
        done.insert(n);
        Ok(())
    }
    let mut done = HashSet::new();
    let mut starts: Vec<&str> = edges.keys().copied().collect();
    starts.sort_unstable();
    for n in starts {
        visit(n, &edges, &mut done, &mut Vec::new()).map_err(|cycle| ConfigError::Invalid {
            path: file_of_name.get(n).cloned().unwrap_or_default(),
            message: format!("alerts depend on each other in a cycle ({cycle}): they would suppress each other"),
        })?;
    }
    Ok(())
}

/// Parses one file's text, reporting YAML and shape errors with line and
/// column.
pub fn parse_file(path: &Path, text: &str) -> Result<RulesFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RulesFile::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
        Some(loc) => ConfigError::Yaml {
            path: path.into(),
            line: loc.line(),
            column: loc.column(),
            message: strip_location(&e.to_string()),
        },
        None => ConfigError::Yaml0 { path: path.into(), message: e.to_string() },
    })
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl Maintenance {
    /// Whether the window covers this alert (its rule group and labels),
    /// open or not.
    pub fn applies_to(&self, inst: &crate::state::Instance) -> bool {
        (self.rule_groups.is_empty() || self.rule_groups.contains(&inst.group)) && self.matchers.matches(&inst.labels)
    }

    /// Whether `at_ms` (Unix milliseconds) falls in the window (`intervals`:
    /// the configuration's named time intervals).
    pub fn active_at(&self, at_ms: i64, intervals: &HashMap<String, crate::calendar::TimeInterval>) -> bool {
        if self.between.is_some_and(|(a, b)| at_ms < a || at_ms >= b) {
            return false;
        }
        if !self.time_intervals.is_empty() {
            return self.time_intervals.iter().any(|n| intervals.get(n).is_some_and(|t| t.contains(at_ms)));
        }
        let Some((start, end)) = self.daily else { return true }; // one-off only
        let local = at_ms / 60_000 + self.utc_offset_min as i64;
        let minute_of_day = local.rem_euclid(1440) as u32;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let day = ((local.div_euclid(1440) + 3).rem_euclid(7)) as u32;
        if start <= end {
            (self.days.is_empty() || self.days.contains(&day)) && minute_of_day >= start && minute_of_day < end
        } else {
            // Over midnight: the part after midnight belongs to the day before.
            let (d, in_window) =
                if minute_of_day >= start { (day, true) } else { ((day + 6) % 7, minute_of_day < end) };
            in_window && (self.days.is_empty() || self.days.contains(&d))
        }
    }
}

impl LabelMatcher {
    pub(crate) fn regex(name: &str, pattern: &str) -> Result<LabelMatcher, String> {
        let re = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("match_re {name:?}: {pattern:?} is not a valid regex: {e}"))?;
        Ok(LabelMatcher::Re { name: name.to_string(), re })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
groups:
  - name: host-health
    interval: 1s
    rules:
      - alert: HighCpu
        sql: SELECT host, avg(usage_user) AS value FROM cpu WHERE ts > now() - INTERVAL '1 minute' GROUP BY host
        thresholds: { warning: "> 80", critical: "> 95" }
        recover: "< 70"
        for: 30s
        labels: { team: infra }
        annotations: { summary: "CPU {{ value }} on {{ host }}" }
route:
  group_by: [alertname, host]
  group_wait: 10s
  group_interval: 1m
  repeat_interval: 4h
  escalation: default
  routes:
    - match: { team: db }
      receiver: dba
    - match: { team: web }
      escalation: none
      receiver: web
    - match: { team: batch }
inhibit_rules:
  - source_match: { severity: critical }
    target_match: { severity: warning }
    equal: [alertname, host]
escalations:
  - name: default
    steps:
      - { after: 0s, notify: [oncall] }
      - { after: 15m, notify: [backup] }
      - { after: 30m, notify: [leader] }
    repeat: 2
receivers:
  - name: oncall
    webhook: { url: "http://127.0.0.1:9000/hook" }
  - name: dba
    webhook: { url: "http://127.0.0.1:9000/dba" }
  - name: web
    webhook: { url: "http://127.0.0.1:9000/web" }
  - name: backup
    email: { to: [backup@example.com], from: tocsin@example.com, smarthost: "127.0.0.1:2525" }
  - name: leader
    wecom: { url: "https://wecom.example/robot/send?key=..." }
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let p = PathBuf::from("rules.yml");
        let f = parse_file(&p, text)?;
        Config::from_files(vec![(p, f)])
    }

    #[test]
    fn the_issue_example_loads() {
        let c = load(EXAMPLE).expect("valid");
        assert_eq!(c.groups.len(), 1);
        let r = &c.groups[0].rules[0];
        assert_eq!(r.thresholds.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["warning", "critical"]);
        assert_eq!(r.for_, Duration::from_secs(30));
        assert_eq!(c.routes.len(), 4);
        assert_eq!(c.routes[1].receiver, "dba");
        assert_eq!(c.routes[1].group_wait, Duration::from_secs(10), "children inherit timings");
        assert_eq!(c.routes[1].escalation, None, "a child naming a receiver notifies it, not the parent's chain");
        assert_eq!((c.routes[2].receiver.as_str(), c.routes[2].escalation.as_deref()), ("web", None));
        assert_eq!(c.routes[3].escalation.as_deref(), Some("default"), "a child that sets neither inherits");
        let e = &c.escalations["default"];
        assert_eq!(e.steps.len(), 3);
        assert_eq!(e.repeat_interval, Duration::from_secs(45 * 60));
    }

    #[test]
    fn a_route_names_a_receiver_or_an_escalation() {
        let both = EXAMPLE.replace("      receiver: dba\n", "      receiver: dba\n      escalation: default\n");
        let err = load(&both).unwrap_err().to_string();
        assert!(err.contains("not both") && err.contains("\"dba\"") && err.contains("\"default\""), "{err}");
        // `none` clears the chain; with no receiver anywhere above, nobody would hear.
        let err = load(&EXAMPLE.replace("      receiver: web\n", "")).unwrap_err().to_string();
        assert!(err.contains("names no receiver"), "{err}");
        let root = EXAMPLE.replace("  escalation: default\n  routes:", "  routes:");
        assert!(load(&root).unwrap_err().to_string().contains("root route needs a receiver or an escalation"));
    }

    #[test]
    fn dependencies_name_existing_alerts_and_form_no_cycle() {
        let rules = |deps_a: &str, deps_b: &str| {
            format!(
                "groups:\n  - name: g\n    rules:\n      - {{ alert: A, sql: \"SELECT host, 1 AS value\", thresholds: {{ critical: \"> 0\" }}, depends_on: [{deps_a}] }}\n      - {{ alert: B, sql: \"SELECT 1 AS value\", thresholds: {{ critical: \"> 0\" }}, depends_on: [{deps_b}] }}\n"
            )
        };
        assert!(load(&rules("{ alert: B, equal: [host] }", "")).is_ok());
        let err = load(&rules("{ alert: Nope }", "")).unwrap_err().to_string();
        assert!(err.contains("depends_on unknown alert \"Nope\""), "{err}");
        // Found once every file is read, and still naming the file to fix.
        assert!(err.starts_with("rules.yml: group \"g\": rule \"A\""), "{err}");
        let err = load(&rules("{ alert: B }", "{ alert: A }")).unwrap_err().to_string();
        assert!(err.contains("cycle (A -> B -> A)"), "{err}");
        assert!(err.starts_with("rules.yml: "), "{err}");
        let err = load(&rules("{ alert: A }", "")).unwrap_err().to_string();
        assert!(err.contains("depends_on names the rule itself"), "{err}");
    }

    #[test]
    fn templates_make_one_rule_per_use_with_its_params() {
        let yaml = r#"
templates:
  - name: disk_usage
    params: [device_type, warning, critical]
    rule:
      sql: SELECT host, used AS value FROM disk WHERE type = '${device_type}'
      thresholds: { warning: "> ${warning}", critical: "> ${critical}" }
      annotations: { summary: "disk {{ value }}% on {{ host }} (${device_type})" }
groups:
  - name: storage
    rules:
      - { alert: DiskUsageSsd, template: disk_usage, params: { device_type: ssd, warning: 80, critical: 90 } }
      - alert: DiskUsageHdd
        template: disk_usage
        params: { device_type: hdd, warning: 85, critical: 95 }
        labels: { team: storage }
"#;
        let c = load(yaml).expect("valid");
        let rules = &c.groups[0].rules;
        assert_eq!(rules[0].sql, "SELECT host, used AS value FROM disk WHERE type = 'ssd'");
        assert_eq!(rules[0].thresholds[1].1.value, 90.0);
        assert_eq!(rules[1].thresholds[0].1.value, 85.0);
        assert_eq!(rules[1].labels["team"], "storage");
        assert_eq!(
            rules[1].annotations["summary"], "disk {{ value }}% on {{ host }} (hdd)",
            "labels stay for firing time"
        );
        let err = |y: String| load(&y).unwrap_err().to_string();
        let e = err(yaml.replace(", critical: 90 }", " }"));
        assert!(e.contains("template \"disk_usage\" needs param \"critical\""), "{e}");
        let e = err(yaml.replace("template: disk_usage, params", "template: nope, params"));
        assert!(e.contains("unknown template \"nope\""), "{e}");
        let e = err(yaml.replace("critical: 90 }", "critical: 90, colour: red }"));
        assert!(e.contains("has no param \"colour\""), "{e}");
        let e = err(yaml.replace("critical: 90 }", "critical: lots }"));
        assert!(e.contains("\"> lots\""), "a bad value is named where it lands: {e}");
    }

    #[test]
    fn robot_signing_and_mentions_are_checked() {
        let robot = |r: &str| EXAMPLE.replace("    wecom: { url: \"https://wecom.example/robot/send?key=...\" }", r);
        let ding = robot(
            "    dingtalk: { url: \"https://oapi.dingtalk.com/robot/send?access_token=t\", secret: SECx, at_mobiles: [\"13800000000\"] }",
        );
        let c = load(&ding).expect("valid");
        let leader = c.receivers.values().find(|r| r.name == "leader").expect("leader");
        match &leader.integrations[0] {
            Integration::Robot { kind, secret, at, .. } => {
                assert_eq!(
                    (*kind, secret.as_deref(), at.mobiles.as_slice()),
                    (RobotKind::DingTalk, Some("SECx"), &["13800000000".to_string()][..])
                );
            }
            other => panic!("{other:?}"),
        }
        let limited =
            robot("    wecom: { url: \"https://wecom.example/x\" }\n    rate_limit: { messages: 20, per: 1m }");
        let c = load(&limited).expect("valid");
        let l = c.receivers["leader"].rate_limit.expect("limit");
        assert_eq!((l.messages, l.per), (20, Duration::from_secs(60)));
        let err =
            load(&robot("    wecom: { url: \"https://wecom.example/x\" }\n    rate_limit: { messages: 0, per: 1m }"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("rate_limit needs at least 1 message"), "{err}");
        let err = load(&robot("    slack: { url: \"https://hooks.slack.com/x\", secret: s }")).unwrap_err().to_string();
        assert!(err.contains("`secret` signs DingTalk robots only"), "{err}");
        let err =
            load(&robot("    feishu: { url: \"https://open.feishu.cn/x\", at_all: true }")).unwrap_err().to_string();
        assert!(err.contains("DingTalk and WeCom robots only"), "{err}");
    }

    #[test]
    fn yaml_errors_carry_line_and_column() {
        let err = load("groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: [oops\n").unwrap_err();
        match err {
            ConfigError::Yaml { line, .. } => assert!(line >= 5, "line {line}"),
            other => panic!("expected a located YAML error, got {other}"),
        }
        let err = load("groups:\n  - name: g\n    rulez: []\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("rules.yml:3:") && text.contains("rulez"), "{text}");
    }

    #[test]
    fn unknown_references_are_named() {
        let bad = EXAMPLE.replace("receiver: dba", "receiver: nobody");
        assert!(load(&bad).unwrap_err().to_string().contains("unknown receiver \"nobody\""));
        let bad = EXAMPLE.replace("escalation: default", "escalation: other");
        assert!(load(&bad).unwrap_err().to_string().contains("unknown escalation \"other\""));
        let bad = EXAMPLE.replace("notify: [backup]", "notify: [ghost]");
        assert!(load(&bad).unwrap_err().to_string().contains("\"ghost\""));
    }

    #[test]
    fn bad_rules_are_rejected_with_the_reason() {
        let bad = EXAMPLE.replace("\"> 95\"", "\"about 95\"");
        assert!(load(&bad).unwrap_err().to_string().contains("threshold \"critical\""));
        let bad = EXAMPLE.replace("SELECT host,", "SELEC host,");
        assert!(load(&bad).unwrap_err().to_string().contains("sql:"));
        let bad = EXAMPLE.replace("interval: 1s", "interval: 1x");
        assert!(load(&bad).unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn the_shipped_rule_pack_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rules");
        let c = Config::load(&dir).expect("docs/rules/ validates");
        assert!(c.rule_count() >= 10, "{} rules", c.rule_count());
        assert!(c.routes.iter().any(|r| r.escalation.as_deref() == Some("page")));
    }

    /// Review 4: `rules check` accepted a rule label `bad-label` that the
    /// Alertmanager API refuses.
    #[test]
    fn a_rule_label_must_be_a_label_name() {
        let yaml = "groups:\n  - name: g\n    rules:\n      - { alert: A, sql: \"SELECT 1 AS value\", thresholds: { critical: \"> 0\" }, labels: { bad-label: x } }\n";
        let p = PathBuf::from("t.yml");
        let err = Config::from_files(vec![(p.clone(), parse_file(&p, yaml).expect("yaml"))]).unwrap_err().to_string();
        assert!(err.contains("\"bad-label\" is not a label name"), "{err}");
    }

    /// Whether `yaml` loads as a configuration, or why not.
    fn validate(yaml: &str) -> Result<(), String> {
        let p = PathBuf::from("t.yml");
        Config::from_files(vec![(p.clone(), parse_file(&p, yaml).expect("yaml"))])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Review 4: an annotation naming a label the alerts do not have (a
    /// typo, or Prometheus' `humanize`) rendered as nothing, and `rules
    /// check` said ok.
    #[test]
    fn an_annotation_may_only_name_what_the_alerts_have() {
        let check = |sql: &str, annotation: &str| {
            let yaml = format!(
                "groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: {sql:?}\n        thresholds: {{ critical: \"> 0\" }}\n        labels: {{ team: db }}\n        annotations: {{ summary: {annotation:?} }}\n"
            );
            validate(&yaml)
        };
        let sql = "SELECT Host, \"Room\", d.dc, max(v) AS value FROM t d GROUP BY 1, 2, 3";
        for ok in [
            "{{ value }} on {{ host }} in {{ Room }}/{{ dc }}",
            "{{ $labels.team }} {{ alertname }} {{ severity }} {{$value}}",
        ] {
            assert_eq!(check(sql, ok), Ok(()), "{ok}");
        }
        let err = check(sql, "CPU on {{ hots }}").expect_err("a typo");
        assert!(err.contains("uses {{ hots }}, which this rule's alerts do not have"), "{err}");
        assert!(err.contains("alertname, severity, host, Room, dc, team"), "{err}");
        assert_eq!(check(sql, "{{ humanize $value }} on {{ $labels.host | toUpper }}"), Ok(()));
        let err = check(sql, "{{ humanise $value }}").expect_err("not a function");
        assert!(err.contains("unknown function \"humanise\""), "{err}");
        // The same for depends_on's `equal` (review: `equal: [hots]` let one
        // host that was down suppress every other host's alerts).
        let dep = |equal: &str| {
            let yaml = format!(
                "groups:\n  - name: g\n    rules:\n      - {{ alert: Up, sql: \"SELECT host, v AS value FROM t\", thresholds: {{ critical: \"< 1\" }} }}\n      - {{ alert: Svc, sql: \"SELECT host, svc, v AS value FROM s\", thresholds: {{ critical: \"< 1\" }}, depends_on: [{{ alert: Up, equal: [{equal}] }}] }}\n"
            );
            validate(&yaml)
        };
        assert_eq!(dep("host"), Ok(()));
        let err = dep("hots").expect_err("a typo");
        assert!(err.contains("equal names \"hots\", which this rule's alerts do not have"), "{err}");
        // Columns that cannot be told without the catalog: not checked.
        assert_eq!(check("SELECT * FROM t", "{{ anything }}"), Ok(()));
        assert_eq!(check("SELECT host, v AS value FROM a UNION ALL SELECT host, v FROM b", "{{ host }}"), Ok(()));
    }

    /// Review of issue 13: `{ warning: "> 80", critical: "> 50" }` was
    /// accepted, and 60 fired critical: warning could never fire.
    #[test]
    fn thresholds_go_from_least_to_most_severe() {
        let load = |t: &str| {
            let yaml = format!(
                "groups:\n  - name: g\n    rules:\n      - {{ alert: A, sql: \"SELECT 1 AS value\", thresholds: {t} }}\n"
            );
            validate(&yaml)
        };
        assert_eq!(load("{ warning: \"> 80\", critical: \"> 90\" }"), Ok(()));
        assert_eq!(load("{ warning: \"< 20\", critical: \"<= 10\" }"), Ok(()));
        let err = load("{ warning: \"> 80\", critical: \"> 50\" }").expect_err("shadowed");
        assert!(err.contains("threshold \"critical\" (> 50) is crossed before \"warning\" (> 80)"), "{err}");
        assert!(load("{ warning: \"< 10\", critical: \"< 20\" }").is_err());
    }

    #[test]
    fn maintenance_windows_cover_their_days_and_hours() {
        let m = compile_maintenance(MaintenanceFile {
            name: "weekend".into(),
            match_: [("env".to_string(), "prod".to_string())].into(),
            match_re: BTreeMap::new(),
            rule_groups: Vec::new(),
            days: vec!["sat".into()],
            start: Some("23:00".into()),
            end: Some("02:00".into()),
            utc_offset: Some("+01:00".into()),
            time_intervals: Vec::new(),
            starts_at: None,
            ends_at: None,
        })
        .expect("valid");
        let none = HashMap::new();
        // 2026-11-21 is a Saturday. 22:30 UTC = 23:30 local: inside.
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-21T22:30:00Z").expect("date").timestamp_millis();
        assert!(m.active_at(t, &none));
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-22T00:30:00Z").expect("date").timestamp_millis();
        assert!(m.active_at(t, &none), "01:30 Sunday local belongs to Saturday's window");
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-22T22:30:00Z").expect("date").timestamp_millis();
        assert!(!m.active_at(t, &none), "Sunday evening is not in the window");
    }

    /// Generated rule files (mutations of the shipped rule pack and of YAML
    /// nesting) are accepted or refused with an error, never a panic; deep
    /// nesting stops at the YAML parser's recursion limit.
    #[test]
    fn generated_rule_files_never_panic() {
        use tocsin_storage::generated::{Inputs, cases};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rules");
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&root)
            .expect("docs/rules")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yml"))
            .map(|p| std::fs::read(p).expect("rule file"))
            .collect();
        assert!(!seeds.is_empty());
        let path = Path::new("generated.yml");
        let deep = [
            format!("groups: {}1{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!("{}x: 1", "- ".repeat(5_000)),
            format!("groups:\n{}", (0..2_000).map(|i| format!("{}- a:\n", " ".repeat(i))).collect::<String>()),
        ];
        for text in &deep {
            assert!(parse_file(path, text).is_err(), "nested {} bytes deep accepted", text.len());
        }
        let mut g = Inputs::new(14);
        let mut buf = Vec::new();
        for _ in 0..cases(5_000) {
            let i = g.below(seeds.len());
            g.mutate(&seeds[i], &mut buf);
            if let Ok(f) = parse_file(path, &String::from_utf8_lossy(&buf)) {
                let _ = Config::from_files(vec![(path.to_path_buf(), f)]);
            }
        }
    }
}

/// Every YAML block of docs/alerting.md parses into the configuration's
/// file types (which refuse unknown fields), so the guide cannot drift from
/// what the server accepts; whole examples (with `route:` or `groups:` at
/// the top) must also validate as a configuration, once the receivers and
/// rules they name are filled in.
#[cfg(test)]
mod docs_tests {
    use super::*;

    /// The ```yaml blocks of a markdown text.
    fn yaml_blocks(md: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut lines = md.lines().enumerate();
        while let Some((i, l)) = lines.next() {
            if l.trim_start().starts_with("```yaml") {
                let block: Vec<&str> =
                    lines.by_ref().map(|(_, l)| l).take_while(|l| !l.trim_start().starts_with("```")).collect();
                out.push((i + 1, block.join("\n")));
            }
        }
        out
    }

    #[test]
    fn every_yaml_block_of_the_alerting_guide_is_accepted() {
        let guide = include_str!("../../docs/alerting.md");
        let blocks = yaml_blocks(guide);
        assert!(blocks.len() >= 10, "found only {} yaml blocks", blocks.len());
        for (line, block) in &blocks {
            let top_level = block.lines().next().is_some_and(|l| !l.starts_with(' ') && !l.starts_with('-'));
            if !top_level {
                // A fragment (a rule, a step): parse it where it belongs.
                let indented = block.lines().next().is_some_and(|l| l.trim_start().starts_with("- alert:"));
                if indented {
                    let rules: Vec<RuleFile> = serde_yaml_ng::from_str(&unindent(block))
                        .unwrap_or_else(|e| panic!("docs/alerting.md:{line}: a rule fragment does not parse: {e}"));
                    assert!(!rules.is_empty());
                }
                continue;
            }
            let first = block.lines().next().unwrap_or("");
            if first.starts_with("rule_files:") {
                let _: crate::ruletest::TestFile = serde_yaml_ng::from_str(block)
                    .unwrap_or_else(|e| panic!("docs/alerting.md:{line}: a rule test file does not parse: {e}"));
            } else if first.starts_with("alerting:") {
                // prometheus.yml, not Tocsin's.
            } else {
                let _: RulesFile = serde_yaml_ng::from_str(block)
                    .unwrap_or_else(|e| panic!("docs/alerting.md:{line}: the block does not parse: {e}\n{block}"));
            }
        }
    }

    fn unindent(block: &str) -> String {
        let n =
            block.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
        block.lines().map(|l| l.get(n..).unwrap_or("")).collect::<Vec<_>>().join("\n")
    }
}
