//! The YAML contract: rule groups, the route tree, inhibition rules,
//! escalation policies, receivers and maintenance windows; loading from a
//! file or a directory of files, and validation into a [`Config`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use regex::Regex;
use serde::Deserialize;

use crate::duration::Dur;
use crate::matcher::{LabelMatcher, Matchers};
use crate::rule::{Rule, RuleGroup, Threshold};

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

/// One YAML file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub groups: Vec<GroupFile>,
    pub route: Option<RouteFile>,
    #[serde(default)]
    pub inhibit_rules: Vec<InhibitFile>,
    #[serde(default)]
    pub escalations: Vec<EscalationFile>,
    #[serde(default)]
    pub receivers: Vec<ReceiverFile>,
    #[serde(default)]
    pub maintenance_windows: Vec<MaintenanceFile>,
    /// Alertmanager's `time_intervals` (plus dates), named for routes
    /// and rules.
    #[serde(default)]
    pub time_intervals: Vec<crate::calendar::TimeIntervalFile>,
    /// People who can be on call, and how to reach them.
    #[serde(default)]
    pub people: Vec<crate::oncall::Person>,
    /// On-call schedules (see [`crate::oncall`]).
    #[serde(default)]
    pub schedules: Vec<crate::oncall::ScheduleFile>,
    /// Rule templates (see [`crate::templates`]).
    #[serde(default)]
    pub templates: Vec<crate::templates::TemplateFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub name: String,
    pub interval: Option<Dur>,
    /// The database the group's SQL runs in (default `public`).
    pub database: Option<String>,
    pub rules: Vec<RuleFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub alert: String,
    /// Made from this template (see [`crate::templates`]) with `params`.
    pub template: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub sql: Option<String>,
    /// Evaluate each ingested sample of `table.field` (per series) instead
    /// of running SQL on an interval.
    pub on_ingest: Option<OnIngestFile>,
    #[serde(default)]
    pub thresholds: IndexMap<String, String>,
    pub recover: Option<String>,
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
    pub keep_firing_for: Option<Dur>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub no_data: Option<Condition>,
    pub absent: Option<Condition>,
    pub flapping: Option<FlapFile>,
    /// Alerts whose firing suppresses this one (with equal labels).
    #[serde(default)]
    pub depends_on: Vec<DependsOnFile>,
    /// Time intervals the rule runs in; outside them it is not evaluated
    /// and what it had firing resolves.
    #[serde(default)]
    pub active_during: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOnFile {
    pub alert: String,
    /// Labels that must be equal in both (e.g. `[host]`); none: any firing
    /// instance of `alert` suppresses every instance of this rule.
    #[serde(default)]
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnIngestFile {
    pub table: String,
    pub field: String,
}

/// `no_data: true`, or `no_data: { severity: critical, for: 2m }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Condition {
    On(bool),
    Detailed(ConditionFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionFile {
    pub severity: Option<String>,
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapFile {
    pub changes: u32,
    pub window: Dur,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub receiver: Option<String>,
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<Dur>,
    pub group_interval: Option<Dur>,
    pub repeat_interval: Option<Dur>,
    pub escalation: Option<String>,
    #[serde(default, rename = "match")]
    pub match_: BTreeMap<String, String>,
    #[serde(default)]
    pub match_re: BTreeMap<String, String>,
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// While any of these time intervals holds, the route sends nothing.
    #[serde(default)]
    pub mute_time_intervals: Vec<String>,
    /// If given, the route sends only while one of them holds.
    #[serde(default)]
    pub active_time_intervals: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitFile {
    #[serde(default)]
    pub source_match: BTreeMap<String, String>,
    #[serde(default)]
    pub source_match_re: BTreeMap<String, String>,
    #[serde(default)]
    pub target_match: BTreeMap<String, String>,
    #[serde(default)]
    pub target_match_re: BTreeMap<String, String>,
    #[serde(default)]
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationFile {
    pub name: String,
    pub steps: Vec<StepFile>,
    #[serde(default)]
    pub repeat: u32,
    /// Time from the start of one run of the chain to the next (default: the
    /// last step's `after` plus the gap before it, at least one minute).
    pub repeat_interval: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub after: Dur,
    #[serde(default)]
    pub notify: Vec<String>,
    /// Whoever is on call in this schedule, reached through `via`.
    pub oncall: Option<String>,
    /// The receivers that reach the person on call (a robot @-mentions
    /// them, email goes to their address).
    #[serde(default)]
    pub via: Vec<String>,
    /// Send this step again every `repeat` until the next step is due or
    /// the alerts are acknowledged.
    pub repeat: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverFile {
    pub name: String,
    /// At most `messages` notifications per `per`; beyond, they are folded
    /// into one digest sent when the window allows.
    pub rate_limit: Option<RateLimitFile>,
    pub webhook: Option<WebhookFile>,
    pub email: Option<EmailFile>,
    pub wecom: Option<RobotFile>,
    pub dingtalk: Option<RobotFile>,
    pub feishu: Option<RobotFile>,
    pub slack: Option<RobotFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub messages: u32,
    pub per: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotFile {
    pub url: String,
    /// Message text template; default lists the group's alerts.
    pub template: Option<String>,
    pub timeout: Option<Dur>,
    /// DingTalk's signing secret (`SEC...`) of a robot with "sign" security.
    pub secret: Option<String>,
    /// People to @-mention (DingTalk, WeCom), by mobile number...
    #[serde(default)]
    pub at_mobiles: Vec<String>,
    /// ...or by user id.
    #[serde(default)]
    pub at_user_ids: Vec<String>,
    /// @everyone in the group.
    #[serde(default)]
    pub at_all: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailFile {
    pub to: Vec<String>,
    pub from: String,
    pub smarthost: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    /// `auto` (STARTTLS when offered; default), `starttls` (required),
    /// `implicit` (TLS from the start, port 465) or `none`.
    pub tls: Option<String>,
    /// Extra trusted root certificates (PEM), for a private relay.
    pub ca_file: Option<PathBuf>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceFile {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: BTreeMap<String, String>,
    #[serde(default)]
    pub match_re: BTreeMap<String, String>,
    /// `mon`..`sun`; empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, in `utc_offset` local time (a daily window).
    pub start: Option<String>,
    pub end: Option<String>,
    #[serde(default)]
    pub utc_offset: Option<String>,
    /// Named `time_intervals` the window is open in (instead of a daily
    /// `start`/`end`).
    #[serde(default)]
    pub time_intervals: Vec<String>,
    /// A one-off window (RFC 3339), alone or bounding the others.
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
}

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

impl Config {
    /// Reads a file, or every `*.yml`/`*.yaml` file of a directory (in name
    /// order), and validates the whole as one configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut files = Vec::new();
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
            for entry in entries {
                let entry = entry.map_err(|source| ConfigError::Io { path: path.into(), source })?;
                let p = entry.path();
                if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
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
            }
            for p in file.people {
                if config.people.insert(p.name.clone(), p.clone()).is_some() {
                    return Err(invalid(format!("person {:?} is defined twice", p.name)));
                }
            }
            schedule_files.extend(file.schedules);
            for t in file.time_intervals {
                let t = crate::calendar::compile(t).map_err(&invalid)?;
                if config.time_intervals.contains_key(&t.name) {
                    return Err(invalid(format!("time interval {:?} is defined twice", t.name)));
                }
                config.time_intervals.insert(t.name.clone(), t);
            }
        }
        check_dependencies(&config.groups, &rule_names)?;
        for f in schedule_files {
            let s = crate::oncall::compile(f, &config.people)
                .map_err(|message| ConfigError::Invalid { path: "schedules".into(), message })?;
            if let Some(n) = s.interval_names().find(|n| !config.time_intervals.contains_key(*n)) {
                return Err(ConfigError::Invalid {
                    path: "schedules".into(),
                    message: format!("schedule {:?} refers to unknown time interval {n:?}", s.name),
                });
            }
            if config.schedules.contains_key(&s.name) {
                return Err(ConfigError::Invalid {
                    path: "schedules".into(),
                    message: format!("schedule {:?} is defined twice", s.name),
                });
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
        for m in &config.maintenance {
            if let Some(n) = unknown_interval(&m.time_intervals) {
                return Err(invalid(format!("maintenance window {:?} refers to unknown time interval {n:?}", m.name)));
            }
        }
        for g in &config.groups {
            for r in &g.rules {
                if let Some(n) = unknown_interval(&r.active_during) {
                    return Err(ConfigError::Invalid {
                        path: format!("group {:?}", g.name),
                        message: format!("rule {:?} is active_during unknown time interval {n:?}", r.name),
                    });
                }
            }
        }
        for e in config.escalations.values() {
            for s in &e.steps {
                if let Some((schedule, _)) = &s.oncall
                    && !config.schedules.contains_key(schedule)
                {
                    return Err(ConfigError::Invalid {
                        path: route_path.clone(),
                        message: format!("escalation {:?} refers to unknown schedule {schedule:?}", e.name),
                    });
                }
                for n in s.notify.iter().chain(s.oncall.iter().flat_map(|(_, via)| via)) {
                    if !config.receivers.contains_key(n) {
                        return Err(ConfigError::Invalid {
                            path: route_path.clone(),
                            message: format!("escalation {:?} notifies unknown receiver {n:?}", e.name),
                        });
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
        self.groups.iter().map(|g| g.rules.len()).sum()
    }
}

/// Every `depends_on` names a rule that exists, and no chain of them comes
/// back to where it started (alerts that suppress each other would page
/// nobody).
fn check_dependencies(groups: &[RuleGroup], names: &HashSet<String>) -> Result<(), ConfigError> {
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for g in groups {
        for r in &g.rules {
            for d in &r.depends_on {
                if !names.contains(&d.alert) {
                    return Err(ConfigError::Invalid {
                        path: format!("group {:?}", g.name),
                        message: format!("rule {:?} depends_on unknown alert {:?}", r.name, d.alert),
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
            path: "depends_on".into(),
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

fn compile_group(g: GroupFile, templates: &crate::templates::Templates) -> Result<RuleGroup, String> {
    if g.name.trim().is_empty() {
        return Err("a group needs a name".into());
    }
    let interval = g.interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL);
    if interval < Duration::from_millis(100) {
        return Err(format!("group {:?}: interval {} is below the 100ms minimum", g.name, Dur(interval)));
    }
    let mut rules = Vec::new();
    let mut seen = HashSet::new();
    for r in g.rules {
        let name = r.alert.clone();
        if !seen.insert(name.clone()) {
            return Err(format!("group {:?}: rule {name:?} is defined twice", g.name));
        }
        let ctx = |e: String| format!("group {:?}, rule {name:?}: {e}", g.name);
        let r = crate::templates::instantiate(&r, templates).map_err(ctx)?;
        rules.push(compile_rule(r).map_err(ctx)?);
    }
    Ok(RuleGroup { name: g.name, interval, database: g.database, rules })
}

fn compile_rule(r: RuleFile) -> Result<Rule, String> {
    if !r.params.is_empty() && r.template.is_none() {
        return Err("`params` go with `template`".into());
    }
    if r.alert.is_empty() || !r.alert.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        return Err("`alert` must be a non-empty name of letters, digits, '_', '-' or '.'".into());
    }
    let (sql, on_ingest) = match (r.sql, r.on_ingest) {
        (Some(sql), None) => {
            check_sql(&sql)?;
            (sql, None)
        }
        (None, Some(o)) => {
            if r.no_data.is_some() || r.absent.is_some() {
                return Err("`on_ingest` rules see samples as they arrive; `no_data` and `absent` need `sql`".into());
            }
            if o.table.is_empty() || o.field.is_empty() {
                return Err("`on_ingest` needs `table` and `field`".into());
            }
            (String::new(), Some(crate::rule::IngestSource { table: o.table, field: o.field }))
        }
        (Some(_), Some(_)) => return Err("give either `sql` or `on_ingest`, not both".into()),
        (None, None) => return Err("needs `sql` (or `on_ingest: { table, field }`)".into()),
    };
    let mut thresholds = Vec::new();
    for (severity, expr) in &r.thresholds {
        let t = Threshold::parse(expr).map_err(|e| format!("threshold {severity:?}: {e}"))?;
        thresholds.push((severity.clone(), t));
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
    for (k, _) in r.labels.iter().chain(r.annotations.iter()) {
        if k.is_empty() {
            return Err("label and annotation names must not be empty".into());
        }
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
        on_ingest,
        thresholds,
        recover,
        for_: r.for_.map(|d| d.0).unwrap_or_default(),
        keep_firing_for: r.keep_firing_for.map(|d| d.0).unwrap_or_default(),
        labels: r.labels,
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

/// Parses a rule's SQL offline (one statement, a query). Planning against
/// the catalog happens in the server.
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
const NO_ESCALATION: &str = "none";

fn flatten_route(r: &RouteFile, parent: Option<&Route>, out: &mut Vec<Route>) -> Result<usize, String> {
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

fn compile_escalation(e: EscalationFile) -> Result<Escalation, String> {
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
            return Err(format!("escalation {:?}: step {} notifies nobody", e.name, i + 1));
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

fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http:// or https:// URL"))
    }
}

fn compile_receiver(r: ReceiverFile) -> Result<Receiver, String> {
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

fn compile_maintenance(m: MaintenanceFile) -> Result<Maintenance, String> {
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
    if matchers.is_empty() {
        return Err(ctx("needs `match` or `match_re`: a window that silences everything is a mistake".into()));
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
    Ok(Maintenance { name: m.name, matchers, days, daily, utc_offset_min, time_intervals: m.time_intervals, between })
}

impl Maintenance {
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
                "groups:\n  - name: g\n    rules:\n      - {{ alert: A, sql: \"SELECT 1 AS value\", thresholds: {{ critical: \"> 0\" }}, depends_on: [{deps_a}] }}\n      - {{ alert: B, sql: \"SELECT 1 AS value\", thresholds: {{ critical: \"> 0\" }}, depends_on: [{deps_b}] }}\n"
            )
        };
        assert!(load(&rules("{ alert: B, equal: [host] }", "")).is_ok());
        let err = load(&rules("{ alert: Nope }", "")).unwrap_err().to_string();
        assert!(err.contains("depends_on unknown alert \"Nope\""), "{err}");
        let err = load(&rules("{ alert: B }", "{ alert: A }")).unwrap_err().to_string();
        assert!(err.contains("cycle (A -> B -> A)"), "{err}");
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

    #[test]
    fn maintenance_windows_cover_their_days_and_hours() {
        let m = compile_maintenance(MaintenanceFile {
            name: "weekend".into(),
            match_: [("env".to_string(), "prod".to_string())].into(),
            match_re: BTreeMap::new(),
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
