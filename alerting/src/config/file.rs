//! The YAML files as written: what serde reads, before validation (see
//! [`super::Config::from_files`]). Every type refuses unknown fields, so a
//! typo is an error with its line and column, and docs/alerting.md's YAML
//! blocks are checked against these types by a test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::duration::Dur;

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
    /// Most alerts an alerting rule, and series a recording rule, of the
    /// group may produce in one evaluation (0: no limit), as Prometheus'.
    #[serde(default)]
    pub limit: usize,
    pub rules: Vec<RuleFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// The alert's name; empty for a recording rule.
    #[serde(default)]
    pub alert: String,
    /// A recording rule (Prometheus' `record:`): `expr` is evaluated at
    /// each evaluation and written back as this metric.
    pub record: Option<String>,
    /// Made from this template (see [`crate::templates`]) with `params`.
    pub template: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub sql: Option<String>,
    /// A PromQL expression instead of `sql` (a Prometheus alerting rule).
    #[serde(default)]
    pub expr: Option<String>,
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
    /// Rule groups whose alerts it mutes (with matchers too: both must
    /// hold).
    #[serde(default)]
    pub rule_groups: Vec<String>,
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
