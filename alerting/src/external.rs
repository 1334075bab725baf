//! Alerts posted by other rule engines (Prometheus, vmalert) through
//! Alertmanager's API (`POST /api/v2/alerts`): they become instances of
//! their own group and go through the same routing, grouping, inhibition,
//! silences, escalation, acknowledgement and history as Tocsin's rules.
//!
//! As in Alertmanager, an alert fires from `startsAt` until `endsAt`;
//! senders repeat firing alerts (Prometheus every minute, with `endsAt` a
//! few evaluation intervals ahead) and post `endsAt` in the past when one
//! resolves. An alert whose `endsAt` passes without a repeat resolves.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::matcher::{Labels, fingerprint};
use crate::state::{AlertState, Instance, Transition};

/// The group that posted alerts belong to (their rule is their `alertname`).
pub const GROUP: &str = "alertmanager-api";

/// How long a posted alert without `endsAt` fires (Alertmanager's default
/// `resolve_timeout`).
pub const RESOLVE_TIMEOUT_MS: i64 = 5 * 60 * 1000;

/// Most alerts in one post.
pub const MAX_POSTED: usize = 10_000;

/// Most bytes of label and annotation text in one posted alert.
pub const MAX_ALERT_TEXT: usize = 16 * 1024;

/// Most posted alerts kept at once (firing, or resolved within the
/// retention): each is state saved and shown; senders must not grow it
/// without bound.
pub const MAX_POSTED_INSTANCES: usize = 100_000;

/// Alertmanager's `PostableAlert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
}

/// A posted alert, checked: its identity and times.
pub struct Checked {
    pub alertname: String,
    pub identity: Labels,
    pub severity: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub generator_url: Option<String>,
}

/// Prometheus' label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn label_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn time(field: &str, s: &str) -> Result<Option<i64>, String> {
    // Go's zero time, which senders use for "not set".
    if s.is_empty() || s.starts_with("0001-01-01") {
        return Ok(None);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|e| format!("{field} {s:?} is not an RFC 3339 time: {e}"))
}

/// Checks one alert (index `i` of the post) at `now`.
pub fn check(i: usize, a: PostableAlert, now: i64) -> Result<Checked, String> {
    let ctx = |e: String| format!("alert {i}: {e}");
    let alertname = a
        .labels
        .get("alertname")
        .cloned()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ctx("needs an alertname label (routing and grouping go by it)".into()))?;
    if let Some(k) = a.labels.keys().find(|k| !label_name(k)) {
        return Err(ctx(format!("{:?} is not a label name", tocsin_auth::clip(k))));
    }
    let generator_url = a.generator_url.filter(|u| !u.is_empty());
    if let Some(u) = &generator_url {
        // Receivers show it as a link: a `javascript:` or `data:` one would
        // run in whoever clicks it.
        let scheme = u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) || u.chars().any(char::is_control) {
            return Err(ctx(format!("generatorURL {:?} is not an http or https URL", tocsin_auth::clip(u))));
        }
    }
    let text: usize = a.labels.iter().chain(a.annotations.iter()).map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + generator_url.as_ref().map_or(0, String::len);
    if text > MAX_ALERT_TEXT {
        return Err(ctx(format!("labels, annotations and generatorURL are {text} bytes; at most {MAX_ALERT_TEXT}")));
    }
    let starts_at = time("startsAt", a.starts_at.as_deref().unwrap_or("")).map_err(ctx)?.unwrap_or(now);
    let ends_at = time("endsAt", a.ends_at.as_deref().unwrap_or("")).map_err(ctx)?.unwrap_or(now + RESOLVE_TIMEOUT_MS);
    let mut identity: Labels = a.labels;
    let severity = identity.remove("severity");
    Ok(Checked { alertname, identity, severity, annotations: a.annotations, starts_at, ends_at, generator_url })
}

/// The id of a posted alert: the fingerprint of its labels and of where
/// it came from, so that a posted alert with the same labels as a rule's
/// alert is another alert (review of issue 13: it took the rule's id, and
/// its ack and resolve went to the posted copy while the rule's alert went
/// on escalating).
pub fn posted_id(identity: &Labels) -> String {
    let mut labels = identity.clone();
    labels.insert(String::new(), GROUP.to_string());
    fingerprint(&labels)
}

/// Applies a checked alert to its instances; the transition, if its state
/// changed.
pub fn apply(c: Checked, instances: &mut BTreeMap<String, Instance>, now: i64) -> Option<Transition> {
    let id = posted_id(&c.identity);
    let inst =
        instances.entry(id.clone()).or_insert_with(|| Instance::new(id, GROUP, &c.alertname, c.identity.clone(), now));
    let from = inst.state;
    let old_severity = inst.severity.clone();
    let firing = c.ends_at > now;
    inst.annotations = c.annotations;
    inst.ends_at = Some(c.ends_at);
    inst.generator_url = c.generator_url;
    inst.severity = c.severity;
    if firing && from != AlertState::Firing {
        // A new episode starts unacknowledged.
        inst.ack = None;
        inst.ack_lifted = None;
        inst.resolved_by = None;
        inst.state = AlertState::Firing;
        inst.active_since = Some(c.starts_at.min(now));
        inst.pending_since = inst.active_since;
        inst.resolved_at = None;
    } else if !firing && from == AlertState::Firing {
        inst.state = AlertState::Resolved;
        inst.resolved_at = Some(c.ends_at.min(now));
    }
    inst.update_labels();
    let changed = from != inst.state || (inst.state == AlertState::Firing && old_severity != inst.severity);
    if changed {
        inst.updated_at = now;
        let mut t = Transition::new(inst, from, old_severity, now);
        t.note = "posted through the Alertmanager API".into();
        Some(t)
    } else {
        None
    }
}

/// Posted alerts whose `endsAt` has passed resolve.
pub fn expire(instances: &mut BTreeMap<String, Instance>, now: i64) -> Vec<Transition> {
    let mut out = Vec::new();
    for inst in instances.values_mut() {
        if inst.state == AlertState::Firing && inst.ends_at.is_some_and(|e| e <= now) {
            inst.state = AlertState::Resolved;
            inst.resolved_at = inst.ends_at;
            inst.updated_at = now;
            let mut t = Transition::new(inst, AlertState::Firing, inst.severity.clone(), now);
            t.note = "endsAt passed without a repeat from its sender".into();
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(labels: &[(&str, &str)]) -> PostableAlert {
        PostableAlert {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: BTreeMap::new(),
            starts_at: None,
            ends_at: None,
            generator_url: None,
        }
    }

    #[test]
    fn posted_alerts_are_checked_and_bounded() {
        let ok = check(0, alert(&[("alertname", "A"), ("severity", "critical")]), 1000).expect("valid");
        assert_eq!((ok.severity.as_deref(), ok.ends_at), (Some("critical"), 1000 + RESOLVE_TIMEOUT_MS));
        assert!(!ok.identity.contains_key("severity"), "severity is not part of the identity");
        let e = check(3, alert(&[("host", "x")]), 0).err().expect("no alertname");
        assert!(e.starts_with("alert 3: needs an alertname"), "{e}");
        let e = check(0, alert(&[("alertname", "A"), ("bad-name", "x")]), 0).err().expect("bad label");
        assert!(e.contains("\"bad-name\" is not a label name"), "{e}");
        let mut big = alert(&[("alertname", "A")]);
        big.annotations.insert("summary".into(), "x".repeat(MAX_ALERT_TEXT));
        let e = check(0, big, 0).err().expect("too big");
        assert!(e.contains("at most 16384"), "{e}");
        let mut late = alert(&[("alertname", "A")]);
        late.ends_at = Some("yesterday".into());
        assert!(check(0, late, 0).err().expect("bad time").contains("not an RFC 3339 time"));
    }

    #[test]
    fn a_posted_generator_url_is_kept_if_it_is_http() {
        let mut a = alert(&[("alertname", "A")]);
        a.generator_url = Some("http://prom:9090/graph?g0.expr=up".into());
        let c = check(0, a, 0).expect("valid");
        assert_eq!(c.generator_url.as_deref(), Some("http://prom:9090/graph?g0.expr=up"));
        let mut insts = BTreeMap::new();
        apply(c, &mut insts, 0);
        let inst = insts.values().next().expect("applied");
        assert_eq!(inst.generator_url.as_deref(), Some("http://prom:9090/graph?g0.expr=up"));
        let mut empty = alert(&[("alertname", "A")]);
        empty.generator_url = Some(String::new());
        assert_eq!(check(0, empty, 0).expect("empty is unset").generator_url, None);
        for bad in ["javascript:alert(1)", "JAVASCRIPT://x%0aalert(1)", "data:text/html,x", "http://a\nb\n"] {
            let mut a = alert(&[("alertname", "A")]);
            a.generator_url = Some(bad.to_string());
            let e = check(1, a, 0).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.starts_with("alert 1: generatorURL") && e.contains("not an http or https URL"), "{e}");
        }
    }
}
