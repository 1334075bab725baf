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
        let (scheme, host) = u
            .split_once("://")
            .map(|(s, rest)| (s.to_ascii_lowercase(), rest.split(['/', '?', '#']).next().unwrap_or("")))
            .unwrap_or_default();
        if !matches!(scheme.as_str(), "http" | "https") || host.is_empty() || u.chars().any(char::is_control) {
            return Err(ctx(format!("generatorURL {:?} is not an http or https URL", tocsin_auth::clip(u))));
        }
    }
    let text: usize = a.labels.iter().chain(a.annotations.iter()).map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + generator_url.as_ref().map_or(0, String::len);
    if text > MAX_ALERT_TEXT {
        return Err(ctx(format!("labels, annotations and generatorURL are {text} bytes; at most {MAX_ALERT_TEXT}")));
    }
    let given_start = time("startsAt", a.starts_at.as_deref().unwrap_or("")).map_err(ctx)?;
    let starts_at = given_start.unwrap_or(now);
    let given_end = time("endsAt", a.ends_at.as_deref().unwrap_or("")).map_err(ctx)?;
    // Without an end, it fires for resolve_timeout from now (a start in
    // the future counts from now, as in Alertmanager).
    let ends_at = given_end.unwrap_or(now + RESOLVE_TIMEOUT_MS);
    // As Alertmanager: an end before the start is refused. And times
    // clients can read back (four-digit years, from 1970).
    if let (Some(s), Some(e)) = (given_start, given_end)
        && e < s
    {
        return Err(ctx("startsAt must be before endsAt".into()));
    }
    const LATEST: i64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z
    if !(0..=LATEST).contains(&starts_at) || !(0..=LATEST).contains(&ends_at) {
        return Err(ctx("startsAt and endsAt must fall between 1970 and 9999".into()));
    }
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
    if !firing {
        // Its sender says it ended: a resolve by hand has had its effect.
        inst.hold_until_clear = false;
    }
    if firing && from != AlertState::Firing && inst.hold_until_clear {
        // Resolved by hand: it fires again only once its sender has said
        // it ended (Prometheus repeats a firing alert every minute).
    } else if firing && from != AlertState::Firing {
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
    // A rise above the severity it was acknowledged at pages again, as for
    // a rule's alert (posted severities are ranked by `severity_rank`).
    let lifted = inst.state == AlertState::Firing
        && inst.ack.as_ref().is_some_and(|a| !ack_holds(a.severity.as_deref(), inst.severity.as_deref()));
    if lifted {
        inst.ack_lifted = inst.ack.take();
    }
    inst.update_labels();
    let changed = from != inst.state || (inst.state == AlertState::Firing && old_severity != inst.severity);
    if changed {
        inst.updated_at = now;
        let mut t = Transition::new(inst, from, old_severity, now);
        t.note = match inst.ack_lifted.as_ref().filter(|_| lifted) {
            Some(a) => format!(
                "posted through the Alertmanager API; severity rose to {}: the acknowledgement by {} at {} no longer holds",
                inst.severity.as_deref().unwrap_or("none"),
                a.by,
                a.severity.as_deref().unwrap_or("none")
            ),
            None => "posted through the Alertmanager API".into(),
        };
        Some(t)
    } else {
        None
    }
}

/// The rank of a posted alert's severity, higher is more severe; `None`
/// for a name not on the usual scales (Prometheus rule packs use
/// info/warning/critical; others error, major, page).
pub fn severity_rank(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "debug" | "info" | "informational" | "notice" | "low" | "minor" => Some(0),
        "warning" | "warn" | "medium" => Some(1),
        "error" | "major" | "high" => Some(2),
        "critical" | "page" | "fatal" | "emergency" | "disaster" => Some(3),
        _ => None,
    }
}

/// Whether an acknowledgement given at `acked` holds at `now`: the same or
/// a lower severity. One not on the scale counts as a rise.
fn ack_holds(acked: Option<&str>, now: Option<&str>) -> bool {
    match (acked, now) {
        (None, _) | (Some(_), None) => true,
        (Some(a), Some(n)) if a == n => true,
        (Some(a), Some(n)) => matches!((severity_rank(a), severity_rank(n)), (Some(a), Some(n)) if n < a),
    }
}

/// Posted alerts whose `endsAt` has passed resolve.
pub fn expire(instances: &mut BTreeMap<String, Instance>, now: i64) -> Vec<Transition> {
    let mut out = Vec::new();
    for inst in instances.values_mut() {
        if inst.hold_until_clear && inst.ends_at.is_some_and(|e| e <= now) {
            inst.hold_until_clear = false; // its sender stopped: it ended
        }
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
        let mut backwards = alert(&[("alertname", "A")]);
        backwards.starts_at = Some("2026-01-01T10:00:00Z".into());
        backwards.ends_at = Some("2026-01-01T09:00:00Z".into());
        assert!(check(0, backwards, 0).err().expect("backwards").contains("startsAt must be before endsAt"));
        // A start in the future without an end: accepted, fires from now
        // (review: refused against the implied 5-minute end).
        let mut future = alert(&[("alertname", "A")]);
        future.starts_at = Some(crate::dispatch::rfc3339(1_800_000_000_000 + 600_000));
        let c = check(0, future, 1_800_000_000_000).expect("a future start");
        assert_eq!(c.ends_at, 1_800_000_000_000 + RESOLVE_TIMEOUT_MS);
        let mut old = alert(&[("alertname", "A")]);
        old.starts_at = Some("1900-01-01T00:00:00Z".into());
        assert!(check(0, old, 0).err().expect("1900").contains("between 1970 and 9999"));
    }

    #[test]
    fn a_rise_in_posted_severity_lifts_the_ack_and_a_hand_resolve_holds() {
        let post = |severity: &str, ends: i64, now: i64, insts: &mut BTreeMap<String, Instance>| {
            let mut a = alert(&[("alertname", "A"), ("severity", severity)]);
            a.ends_at = Some(crate::dispatch::rfc3339(ends));
            apply(check(0, a, now).expect("valid"), insts, now)
        };
        let mut insts = BTreeMap::new();
        post("warning", 300_000, 0, &mut insts);
        let id = insts.keys().next().expect("one").clone();
        let ack = |insts: &mut BTreeMap<String, Instance>, at: &str| {
            let i = insts.get_mut(&id).expect("there");
            i.ack =
                Some(crate::state::Ack { by: "ann".into(), comment: String::new(), at: 0, severity: Some(at.into()) });
        };
        ack(&mut insts, "warning");
        post("warning", 300_000, 1000, &mut insts);
        assert!(insts[&id].ack.is_some(), "the same severity keeps it");
        let t = post("critical", 300_000, 2000, &mut insts).expect("a change");
        assert!(insts[&id].ack.is_none() && insts[&id].ack_lifted.is_some(), "a rise lifts it");
        assert!(t.note.contains("severity rose to critical: the acknowledgement by ann at warning"), "{}", t.note);
        ack(&mut insts, "critical");
        post("warning", 300_000, 3000, &mut insts);
        assert!(insts[&id].ack.is_some(), "a fall keeps it");
        // Resolved by hand: the sender's next repeat does not fire it again;
        // once the sender says it ended, the next firing does.
        let i = insts.get_mut(&id).expect("there");
        i.state = AlertState::Resolved;
        i.hold_until_clear = true;
        assert!(post("warning", 400_000, 60_000, &mut insts).is_none());
        assert_eq!(insts[&id].state, AlertState::Resolved, "held after a resolve by hand");
        post("warning", 100_000, 120_000, &mut insts);
        assert!(!insts[&id].hold_until_clear, "its sender said it ended");
        post("warning", 500_000, 180_000, &mut insts).expect("fires again");
        assert_eq!(insts[&id].state, AlertState::Firing);
        assert_eq!(severity_rank("Critical"), Some(3));
        assert!(!ack_holds(Some("warning"), Some("sev-x")), "off the scale counts as a rise");
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
        for bad in [
            "javascript:alert(1)",
            "JAVASCRIPT://x%0aalert(1)",
            "data:text/html,x",
            "http://a\nb\n",
            "http://",
            "https:///x",
        ] {
            let mut a = alert(&[("alertname", "A")]);
            a.generator_url = Some(bad.to_string());
            let e = check(1, a, 0).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.starts_with("alert 1: generatorURL") && e.contains("not an http or https URL"), "{e}");
        }
    }
}
