//! Alert instances, their transitions, acknowledgements and silences: the
//! state that is persisted and shown through the APIs and `system.*` tables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::matcher::{LabelMatcher, Labels, Matchers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, AlertState::Pending | AlertState::Firing)
    }
}

/// Who acknowledged (or resolved by hand), when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ack {
    pub by: String,
    pub comment: String,
    pub at: i64,
    /// The severity the alert had when acknowledged: the acknowledgement
    /// holds for it and lower ones, not for a rise (`None`: any severity,
    /// as state saved before this was kept has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// One alert instance: a rule and one row's labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Fingerprint of `identity`.
    pub id: String,
    pub group: String,
    pub rule: String,
    /// The row's labels, the rule's labels and `alertname`.
    pub identity: Labels,
    /// `identity` plus `severity`: what routing, inhibition and silences see.
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    pub severity: Option<String>,
    /// NaN while there is no data; stored as JSON null.
    #[serde(with = "nan_as_null")]
    pub value: f64,
    pub created_at: i64,
    pub updated_at: i64,
    pub pending_since: Option<i64>,
    /// When it started firing.
    pub active_since: Option<i64>,
    pub resolved_at: Option<i64>,
    /// The last evaluation whose result had this series.
    pub last_seen: Option<i64>,
    pub cleared_since: Option<i64>,
    /// Firing because the series stopped reporting (or no rows at all).
    pub no_data: bool,
    /// Recent state changes, for flap detection.
    pub changes: Vec<i64>,
    pub flapping: bool,
    pub ack: Option<Ack>,
    /// The acknowledgement a rise in severity ended (the alert pages again),
    /// until it is acknowledged again or the episode ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_lifted: Option<Ack>,
    pub resolved_by: Option<Ack>,
    /// After a resolve by hand: do not fire again until the condition has
    /// cleared once.
    pub hold_until_clear: bool,
    /// A posted alert's `endsAt` (see [`crate::external`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<i64>,
    /// A posted alert's own `generatorURL` (the rule or graph that made
    /// it), passed on in notifications and the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator_url: Option<String>,
}

impl Instance {
    pub fn new(id: String, group: &str, rule: &str, identity: Labels, now: i64) -> Instance {
        let mut i = Instance {
            id,
            group: group.to_string(),
            rule: rule.to_string(),
            labels: identity.clone(),
            identity,
            annotations: BTreeMap::new(),
            state: AlertState::Inactive,
            severity: None,
            value: f64::NAN,
            created_at: now,
            updated_at: now,
            pending_since: None,
            active_since: None,
            resolved_at: None,
            last_seen: None,
            cleared_since: None,
            no_data: false,
            changes: Vec::new(),
            flapping: false,
            ack: None,
            ack_lifted: None,
            resolved_by: None,
            hold_until_clear: false,
            ends_at: None,
            generator_url: None,
        };
        i.update_labels();
        i
    }

    pub fn update_labels(&mut self) {
        let mut l = self.identity.clone();
        if let Some(s) = &self.severity {
            l.insert("severity".into(), s.clone());
        }
        self.labels = l;
    }

    pub(crate) fn note_change(&mut self, now: i64, max_changes: u32, window: Duration) {
        let from = now - window.as_millis() as i64;
        self.changes.retain(|t| *t > from);
        self.changes.push(now);
        if max_changes > 0 && self.changes.len() > max_changes as usize {
            self.flapping = true;
        }
    }

    pub(crate) fn settle_flapping(&mut self, now: i64, window: Duration) {
        let from = now - window.as_millis() as i64;
        self.changes.retain(|t| *t > from);
        if self.flapping && self.changes.is_empty() {
            self.flapping = false;
        }
    }
}

/// A state change, recorded in `system.alert_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: i64,
    pub id: String,
    pub alertname: String,
    pub labels: Labels,
    pub from: AlertState,
    pub to: AlertState,
    pub old_severity: Option<String>,
    pub severity: Option<String>,
    #[serde(with = "nan_as_null")]
    pub value: f64,
    pub note: String,
}

impl Transition {
    pub fn new(inst: &Instance, from: AlertState, old_severity: Option<String>, at: i64) -> Transition {
        Transition {
            at,
            id: inst.id.clone(),
            alertname: inst.rule.clone(),
            labels: inst.labels.clone(),
            from,
            to: inst.state,
            old_severity,
            severity: inst.severity.clone(),
            value: inst.value,
            note: if inst.no_data { "no data".into() } else { String::new() },
        }
    }
}

/// A silence: alerts matching all matchers between `starts_at` and
/// `ends_at` are recorded but not notified. Alertmanager's API shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Silence {
    #[serde(default)]
    pub id: String,
    pub matchers: Vec<MatcherSpec>,
    /// Unix milliseconds.
    pub starts_at: i64,
    pub ends_at: i64,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_at: i64,
    /// Set when a role limited to some alerts made it: it mutes only those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<SilenceScope>,
}

/// The alerts a scoped role's silence may mute, and the role: only that
/// role (or one that sees every alert) may expire it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceScope {
    pub role: String,
    pub alerts: tocsin_auth::AlertScope,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatcherSpec {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub is_regex: bool,
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

impl Silence {
    pub fn compile(&self) -> Result<Matchers, String> {
        if self.matchers.is_empty() {
            return Err("a silence needs at least one matcher".into());
        }
        self.matchers
            .iter()
            .map(|m| LabelMatcher::new(&m.name, &m.value, m.is_regex, m.is_equal))
            .collect::<Result<Vec<_>, _>>()
            .map(Matchers)
    }

    pub fn active_at(&self, now: i64) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// Whether the silence may mute an alert of `group` with `labels`
    /// (its scope's, when a scoped role made it).
    pub fn may_mute(&self, group: &str, labels: &Labels) -> bool {
        self.scope.as_ref().is_none_or(|s| s.alerts.covers(group, |n| labels.get(n).map(String::as_str)))
    }

    pub fn status(&self, now: i64) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }
}

/// JSON has no NaN: store it as null.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}
