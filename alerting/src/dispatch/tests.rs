use std::path::PathBuf;

use super::*;
use crate::config::{Config, parse_file};
use crate::matcher::fingerprint;
use crate::state::{Ack, MatcherSpec};

const S: i64 = 1000;
const M: i64 = 60 * S;

fn config(yaml: &str) -> Config {
    let p = PathBuf::from("t.yml");
    Config::from_files(vec![(p.clone(), parse_file(&p, yaml).expect("yaml"))]).expect("config")
}

const BASE: &str = r#"
route:
  receiver: oncall
  group_by: [alertname]
  group_wait: 10s
  group_interval: 1m
  repeat_interval: 1h
  routes:
    - match: { team: db }
      receiver: dba
    - match: { team: esc }
      escalation: chain
inhibit_rules:
  - source_match: { severity: critical }
    target_match: { severity: warning }
    equal: [host]
escalations:
  - name: chain
    steps:
      - { after: 0s, notify: [oncall] }
      - { after: 15m, notify: [backup] }
      - { after: 30m, notify: [leader] }
receivers:
  - { name: oncall, webhook: { url: "http://127.0.0.1:1/a" } }
  - { name: dba, webhook: { url: "http://127.0.0.1:1/b" } }
  - { name: backup, webhook: { url: "http://127.0.0.1:1/c" } }
  - { name: leader, webhook: { url: "http://127.0.0.1:1/d" } }
"#;

fn firing(alertname: &str, pairs: &[(&str, &str)], severity: &str) -> Instance {
    let mut identity: Labels = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    identity.insert("alertname".into(), alertname.into());
    let mut i = Instance::new(fingerprint(&identity), "g", alertname, identity, 0);
    i.state = AlertState::Firing;
    i.severity = Some(severity.into());
    i.active_since = Some(0);
    i.value = 1.0;
    i.update_labels();
    i
}

struct Harness {
    config: Config,
    d: Dispatcher,
    silences: Vec<(Silence, Matchers)>,
}

impl Harness {
    fn new(yaml: &str) -> Harness {
        Harness { config: config(yaml), d: Dispatcher::default(), silences: Vec::new() }
    }

    fn tick(&mut self, now: i64, insts: &[Instance]) -> TickOutcome {
        let refs: Vec<&Instance> = insts.iter().collect();
        self.d.tick(TickInput {
            config: &self.config,
            instances: &refs,
            silences: &self.silences,
            now,
            external_url: "http://tocsin",
            links: None,
        })
    }
}

fn receivers(jobs: &[Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.receiver.as_str()).collect()
}

#[test]
fn a_storm_of_a_thousand_alerts_is_one_notification_then_updates_only_on_change() {
    let mut h = Harness::new(BASE);
    let mut insts: Vec<Instance> =
        (0..1000).map(|i| firing("HostDown", &[("host", &format!("h{i}"))], "critical")).collect();
    assert!(h.tick(0, &insts).jobs.is_empty(), "group_wait holds the first notification");
    assert!(h.tick(9 * S, &insts).jobs.is_empty());
    let out = h.tick(10 * S, &insts);
    assert_eq!(receivers(&out.jobs), ["oncall"]);
    assert_eq!(out.jobs[0].payload.alerts.len(), 1000);
    assert_eq!(out.jobs[0].payload.status, "firing");
    assert_eq!(out.jobs[0].payload.group_labels.get("alertname").map(String::as_str), Some("HostDown"));
    // Nothing changes: nothing is sent at the next group_interval.
    assert!(h.tick(70 * S, &insts).jobs.is_empty());
    // One resolves: one update listing it as resolved.
    insts[7].state = AlertState::Resolved;
    insts[7].resolved_at = Some(100 * S);
    assert!(h.tick(100 * S, &insts).jobs.is_empty(), "changes wait for group_interval");
    let out = h.tick(130 * S, &insts);
    assert_eq!(out.jobs.len(), 1);
    let resolved: Vec<_> = out.jobs[0].payload.alerts.iter().filter(|a| a.status == "resolved").collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].labels.get("host").map(String::as_str), Some("h7"));
    // The resolved one is not reported again.
    assert!(h.tick(190 * S, &insts).jobs.is_empty());
}

#[test]
fn unchanged_firing_groups_repeat_after_repeat_interval_unless_acked() {
    let mut h = Harness::new(BASE);
    let mut insts = vec![firing("A", &[("host", "a")], "warning")];
    assert_eq!(h.tick(10 * S, &insts).jobs.len(), 0);
    assert_eq!(h.tick(20 * S, &insts).jobs.len(), 1);
    assert_eq!(h.tick(20 * S + 59 * M, &insts).jobs.len(), 0);
    let out = h.tick(20 * S + 61 * M, &insts);
    assert_eq!(out.jobs.len(), 1);
    assert_eq!(out.jobs[0].reason, Reason::Repeat);
    insts[0].ack = Some(Ack { by: "ann".into(), comment: String::new(), at: 0, severity: None });
    assert_eq!(h.tick(20 * S + 200 * M, &insts).jobs.len(), 0, "acknowledged: no repeats");
}

#[test]
fn routes_match_children_first() {
    let mut h = Harness::new(BASE);
    let insts = vec![firing("Slow", &[("team", "db")], "warning"), firing("Other", &[("team", "web")], "warning")];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    let mut r = receivers(&out.jobs);
    r.sort();
    assert_eq!(r, ["dba", "oncall"]);
}

#[test]
fn critical_inhibits_warning_on_the_same_host_only() {
    let mut h = Harness::new(BASE);
    let insts = vec![
        firing("Cpu", &[("host", "a"), ("check", "1")], "critical"),
        firing("Cpu", &[("host", "a"), ("check", "2")], "warning"),
        firing("Cpu", &[("host", "b"), ("check", "3")], "warning"),
    ];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    assert_eq!(out.jobs.len(), 1);
    let mut hosts: Vec<(&str, &str)> =
        out.jobs[0].payload.alerts.iter().map(|a| (a.labels["host"].as_str(), a.labels["severity"].as_str())).collect();
    hosts.sort();
    assert_eq!(hosts, [("a", "critical"), ("b", "warning")]);
    assert!(matches!(out.muted.get(&insts[1].id), Some(Mute::Inhibited(by)) if by == &vec![insts[0].id.clone()]));
}

#[test]
fn silenced_alerts_are_recorded_but_not_notified() {
    let mut h = Harness::new(BASE);
    let s = Silence {
        id: "s1".into(),
        matchers: vec![MatcherSpec { name: "host".into(), value: "a".into(), is_regex: false, is_equal: true }],
        starts_at: 0,
        ends_at: 30 * M,
        created_by: "ann".into(),
        comment: "maintenance".into(),
        created_at: 0,
        scope: None,
    };
    let m = s.compile().expect("matchers");
    h.silences.push((s, m));
    let insts = vec![firing("A", &[("host", "a")], "warning")];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    assert!(out.jobs.is_empty());
    assert_eq!(out.muted.get(&insts[0].id), Some(&Mute::Silenced(vec!["s1".into()])));
    // After the silence ends it is notified (after group_wait: the group
    // only now forms).
    assert!(h.tick(31 * M, &insts).jobs.is_empty());
    let out = h.tick(31 * M + 10 * S, &insts);
    assert_eq!(out.jobs.len(), 1);
}

fn silence(id: &str, host: &str, from: i64, to: i64) -> (Silence, Matchers) {
    let s = Silence {
        id: id.into(),
        matchers: vec![MatcherSpec { name: "host".into(), value: host.into(), is_regex: false, is_equal: true }],
        starts_at: from,
        ends_at: to,
        created_by: "ann".into(),
        comment: String::new(),
        created_at: from,
        scope: None,
    };
    let m = s.compile().expect("matchers");
    (s, m)
}

#[test]
fn silencing_a_notified_alert_tells_nobody_it_resolved() {
    let mut h = Harness::new(BASE);
    let mut insts =
        vec![firing("A", &[("host", "a")], "warning"), firing("B", &[("host", "a"), ("team", "esc")], "warning")];
    h.tick(0, &insts);
    let mut r = receivers(&h.tick(10 * S, &insts).jobs).into_iter().map(String::from).collect::<Vec<_>>();
    r.sort();
    assert_eq!(r, ["oncall", "oncall"], "A on the plain route, B at step 1 of the chain");
    // Silenced while firing: nothing is sent, not even "resolved", and the
    // chain does not move on to its next steps.
    h.silences.push(silence("s1", "a", 5 * M, 45 * M));
    for t in 6..45 {
        let out = h.tick(t * M, &insts);
        assert!(
            out.jobs.is_empty(),
            "at minute {t}: {:?}",
            out.jobs.iter().map(|j| (&j.receiver, &j.payload.status)).collect::<Vec<_>>()
        );
        assert!(matches!(out.muted.get(&insts[0].id), Some(Mute::Silenced(_))));
    }
    // The silence ends with both still firing: the plain route's receiver
    // already knows (nothing new to say); the unacknowledged chain starts
    // over and pages step 1 again.
    let out = h.tick(46 * M, &insts);
    assert_eq!(receivers(&out.jobs), ["oncall"]);
    assert_eq!(out.jobs[0].payload.tocsin.reason, Reason::Escalation);
    assert_eq!(out.jobs[0].payload.tocsin.step, Some(1));
    assert_eq!(out.jobs[0].payload.alerts[0].labels.get("alertname").map(String::as_str), Some("B"));
    // Silenced again, and A resolves during the silence: its end is told
    // (a resolved notice follows every firing one), B's silence is not.
    h.silences.push(silence("s2", "a", 47 * M, 200 * M));
    assert!(h.tick(48 * M, &insts).jobs.is_empty());
    insts[0].state = AlertState::Resolved;
    insts[0].resolved_at = Some(49 * M);
    let out = h.tick(50 * M, &insts);
    assert_eq!(receivers(&out.jobs), ["oncall"]);
    assert_eq!(out.jobs[0].payload.status, "resolved");
    assert_eq!(out.jobs[0].payload.alerts[0].labels.get("alertname").map(String::as_str), Some("A"));
    assert!(h.tick(58 * M, &insts).jobs.is_empty());
}

#[test]
fn escalation_reaches_step_two_when_not_acked() {
    let mut h = Harness::new(BASE);
    let insts = vec![firing("Disk", &[("team", "esc")], "critical")];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    assert_eq!(receivers(&out.jobs), ["oncall"]);
    assert_eq!(out.jobs[0].payload.tocsin.step, Some(1));
    assert!(h.tick(10 * S + 14 * M, &insts).jobs.is_empty());
    let out = h.tick(10 * S + 15 * M, &insts);
    assert_eq!(receivers(&out.jobs), ["backup"]);
    assert_eq!(out.jobs[0].payload.tocsin.reason, Reason::Escalation);
    assert_eq!(out.jobs[0].payload.tocsin.step, Some(2));
    let out = h.tick(10 * S + 30 * M, &insts);
    assert_eq!(receivers(&out.jobs), ["leader"]);
    // The chain is done (repeat 0): nothing more.
    assert!(h.tick(10 * S + 90 * M, &insts).jobs.iter().all(|j| j.reason != Reason::Escalation));
}

#[test]
fn acknowledged_alerts_stop_escalation_and_resolve_to_everyone_notified() {
    let mut h = Harness::new(BASE);
    let mut insts = vec![firing("Disk", &[("team", "esc")], "critical")];
    h.tick(0, &insts);
    assert_eq!(receivers(&h.tick(10 * S, &insts).jobs), ["oncall"]);
    let out = h.tick(10 * S + 15 * M, &insts);
    assert_eq!(receivers(&out.jobs), ["backup"]);
    insts[0].ack = Some(Ack { by: "bob".into(), comment: "on it".into(), at: 16 * M, severity: None });
    assert!(h.tick(10 * S + 31 * M, &insts).jobs.is_empty(), "acked: no step 3");
    insts[0].state = AlertState::Resolved;
    insts[0].resolved_at = Some(40 * M);
    let out = h.tick(40 * M, &insts);
    let mut r = receivers(&out.jobs);
    r.sort();
    assert_eq!(r, ["backup", "oncall"], "resolved notice to everybody notified");
    assert!(out.jobs.iter().all(|j| j.payload.status == "resolved"));
    assert!(h.d.groups.is_empty(), "a resolved group is closed");
}

#[test]
fn acked_before_step_two_means_no_step_two() {
    let mut h = Harness::new(BASE);
    let mut insts = vec![firing("Disk", &[("team", "esc")], "critical")];
    h.tick(0, &insts);
    assert_eq!(h.tick(10 * S, &insts).jobs.len(), 1);
    insts[0].ack = Some(Ack { by: "bob".into(), comment: String::new(), at: 60 * S, severity: None });
    for minute in 1..60 {
        assert!(h.tick(10 * S + minute * M, &insts).jobs.is_empty(), "minute {minute}");
    }
}

#[test]
fn escalation_repeats_the_chain() {
    let yaml = BASE.replace(
        "      - { after: 30m, notify: [leader] }\n",
        "      - { after: 30m, notify: [leader] }\n    repeat: 1\n    repeat_interval: 1h\n",
    );
    let mut h = Harness::new(&yaml);
    let insts = vec![firing("Disk", &[("team", "esc")], "critical")];
    let mut sent = Vec::new();
    h.tick(0, &insts);
    for minute in 0..=130 {
        for j in h.tick(10 * S + minute * M, &insts).jobs {
            if j.reason == Reason::Escalation {
                sent.push((minute, j.receiver));
            }
        }
    }
    let expect: Vec<(i64, String)> =
        [(0, "oncall"), (15, "backup"), (30, "leader"), (60, "oncall"), (75, "backup"), (90, "leader")]
            .iter()
            .map(|(m, r)| (*m, r.to_string()))
            .collect();
    assert_eq!(sent, expect);
}

#[test]
fn dispatcher_state_round_trips_through_json() {
    let mut h = Harness::new(BASE);
    let insts = vec![firing("Disk", &[("team", "esc")], "critical")];
    h.tick(0, &insts);
    h.tick(10 * S, &insts);
    let text = serde_json::to_string(&h.d).expect("json");
    h.d = serde_json::from_str(&text).expect("parse");
    // After the "restart" the chain continues: step 2 once, step 1 not again.
    let out = h.tick(10 * S + 15 * M, &insts);
    assert_eq!(receivers(&out.jobs), ["backup"]);
}

#[test]
fn continue_sends_to_later_matching_siblings_too() {
    let yaml = r#"
route:
  receiver: default
  group_wait: 0s
  routes:
    - match: { team: db }
      receiver: dba
      continue: true
    - match_re: { host: "db-.*" }
      receiver: storage
    - match: { team: db }
      receiver: never
receivers:
  - { name: default, webhook: { url: "http://127.0.0.1:1/a" } }
  - { name: dba, webhook: { url: "http://127.0.0.1:1/b" } }
  - { name: storage, webhook: { url: "http://127.0.0.1:1/c" } }
  - { name: never, webhook: { url: "http://127.0.0.1:1/d" } }
"#;
    let mut h = Harness::new(yaml);
    let insts = vec![firing("Slow", &[("team", "db"), ("host", "db-1")], "warning")];
    let out = h.tick(0, &insts);
    let mut r = receivers(&out.jobs);
    r.sort();
    assert_eq!(r, ["dba", "storage"], "continue goes on to the next match, which stops");
}

/// docs/alerting.md's complete example, as written there: the root pages
/// through its chain, `team: db` goes to the DBAs only, edge hosts to
/// their channel only (a matching child takes the alert from its parent;
/// `continue` only lets later siblings match too).
#[test]
fn the_docs_example_routes_as_the_guide_says() {
    let guide = include_str!("../../../docs/alerting.md");
    let example = guide
        .split("## A complete example")
        .nth(1)
        .and_then(|rest| rest.split("```yaml\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the complete example's yaml block");
    let mut h = Harness::new(example);
    let insts = vec![
        firing("DiskFull", &[("team", "db"), ("host", "db-1")], "critical"),
        firing("LinkDown", &[("host", "edge-1")], "critical"),
        firing("HighCpu", &[("host", "web-1")], "critical"),
    ];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    let mut sent: Vec<(String, String, bool)> = out
        .jobs
        .iter()
        .map(|j| (j.payload.common_labels["host"].clone(), j.receiver.clone(), j.reason == Reason::Escalation))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            ("db-1".to_string(), "dba".to_string(), false),
            ("edge-1".to_string(), "edge".to_string(), false),
            ("web-1".to_string(), "oncall".to_string(), true),
        ]
    );
}

const DEPENDS: &str = r#"
groups:
  - name: g
    rules:
      - { alert: HostDown, sql: "SELECT 1 AS value", thresholds: { critical: "> 0" } }
      - alert: ServiceDown
        sql: "SELECT host, 1 AS value"
        thresholds: { critical: "> 0" }
        depends_on: [{ alert: HostDown, equal: [host] }]
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 10s
  group_interval: 1m
  repeat_interval: 1h
receivers:
  - { name: oncall, webhook: { url: "http://127.0.0.1:1/a" } }
"#;

/// What a tick sent: (alertname, status) of every alert of every job.
fn told(out: &TickOutcome) -> Vec<(String, String)> {
    out.jobs
        .iter()
        .flat_map(|j| j.payload.alerts.iter().map(|a| (a.labels["alertname"].clone(), a.status.clone())))
        .collect()
}

fn pair(name: &str, status: &str) -> (String, String) {
    (name.to_string(), status.to_string())
}

/// Issue 13, "dependencies that never swallow a recovery": a service alert
/// behind a host that is down is suppressed (recorded, visible, not
/// paged); if it resolves while suppressed nobody hears of it; if the host
/// comes back and the service is still down, the service is notified.
/// Review of issue 13: an alert posted through the Alertmanager API with
/// a rule's name suppressed that rule's dependents (an `alerter` token
/// could mute Tocsin's own rules). A dependency names a rule.
#[test]
fn a_posted_alert_is_no_rules_parent() {
    let mut h = Harness::new(DEPENDS);
    let mut posted = firing("HostDown", &[("host", "a")], "critical");
    posted.group = crate::external::GROUP.to_string();
    posted.id = crate::external::posted_id(&posted.identity);
    let insts = vec![posted, firing("ServiceDown", &[("host", "a"), ("svc", "web")], "critical")];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    assert_eq!(out.muted.get(&insts[1].id), None, "not suppressed by a posted HostDown");
    assert!(told(&out).contains(&pair("ServiceDown", "firing")));
}

#[test]
fn a_dependency_suppresses_and_never_swallows_a_recovery() {
    let mut h = Harness::new(DEPENDS);
    let mut insts = vec![
        firing("HostDown", &[("host", "a")], "critical"),
        firing("ServiceDown", &[("host", "a"), ("svc", "web")], "critical"),
        firing("ServiceDown", &[("host", "b"), ("svc", "web")], "critical"),
    ];
    assert!(h.tick(0, &insts).jobs.is_empty(), "group_wait");
    let out = h.tick(10 * S, &insts);
    let mut sent = told(&out);
    sent.sort();
    assert_eq!(
        sent,
        [pair("HostDown", "firing"), pair("ServiceDown", "firing")],
        "host b's service is not behind host a"
    );
    assert_eq!(out.muted.get(&insts[1].id), Some(&Mute::Suppressed(vec![insts[0].id.clone()])));
    assert!(
        out.jobs.iter().all(|j| j
            .payload
            .alerts
            .iter()
            .all(|a| a.labels["host"] != "a" || a.labels["alertname"] == "HostDown"))
    );

    // The host comes back while its service is still down: the service is
    // notified now.
    insts[0].state = AlertState::Resolved;
    insts[0].resolved_at = Some(60 * S);
    let mut sent = Vec::new();
    for t in [60, 70, 130] {
        sent.extend(told(&h.tick(t * S, &insts)));
    }
    sent.sort();
    assert_eq!(sent, [pair("HostDown", "resolved"), pair("ServiceDown", "firing")]);

    // Down again; the service resolves while suppressed: nobody is paged
    // for it, and its group stays quiet.
    let mut h = Harness::new(DEPENDS);
    let mut insts = vec![
        firing("HostDown", &[("host", "a")], "critical"),
        firing("ServiceDown", &[("host", "a"), ("svc", "web")], "critical"),
    ];
    h.tick(0, &insts);
    assert_eq!(told(&h.tick(10 * S, &insts)), [pair("HostDown", "firing")]);
    insts[1].state = AlertState::Resolved;
    insts[1].resolved_at = Some(30 * S);
    let mut later = Vec::new();
    for t in [30, 70, 130, 200] {
        later.extend(told(&h.tick(t * S, &insts)));
    }
    assert!(later.is_empty(), "nothing about a service that was never told: {later:?}");
}

/// A child told firing before its parent fired is not reported resolved
/// when the parent suppresses it (it did not resolve); when it then
/// resolves, that is told, and it pages no one meanwhile.
#[test]
fn a_child_told_before_its_parent_fired_keeps_its_story() {
    let mut h = Harness::new(DEPENDS);
    let mut insts = vec![firing("ServiceDown", &[("host", "a"), ("svc", "web")], "critical")];
    h.tick(0, &insts);
    assert_eq!(told(&h.tick(10 * S, &insts)), [pair("ServiceDown", "firing")]);
    insts.push(firing("HostDown", &[("host", "a")], "critical"));
    let mut sent = Vec::new();
    for t in [20, 70, 130] {
        sent.extend(told(&h.tick(t * S, &insts)));
    }
    assert_eq!(sent, [pair("HostDown", "firing")], "no false 'resolved' for the suppressed service");
    // No repeat for the suppressed child after repeat_interval either.
    let repeats = told(&h.tick(2 * 3600 * S, &insts));
    assert!(repeats.iter().all(|(n, _)| n == "HostDown"), "{repeats:?}");
    insts[0].state = AlertState::Resolved;
    insts[0].resolved_at = Some(3 * 3600 * S);
    let mut sent = Vec::new();
    for t in [3 * 3600, 3 * 3600 + 60] {
        sent.extend(told(&h.tick(t * S, &insts)).into_iter().filter(|(n, _)| n == "ServiceDown"));
    }
    assert_eq!(sent, [pair("ServiceDown", "resolved")], "its end is told to those told it fired");
}

/// Issue 13: a step with `repeat` is sent again every `repeat` until the
/// next step is due, and not once it is acknowledged.
#[test]
fn a_step_repeats_until_the_next_step_is_due_or_an_ack() {
    let yaml = BASE
        .replace("      - { after: 15m, notify: [backup] }", "      - { after: 15m, notify: [backup], repeat: 5m }");
    let mut h = Harness::new(&yaml);
    let mut insts = vec![firing("DiskFull", &[("team", "esc")], "critical")];
    let mut sent = Vec::new();
    for minute in 0..=40 {
        for r in receivers(&h.tick(minute * M, &insts).jobs) {
            sent.push((minute, r.to_string()));
        }
    }
    let got: Vec<(i64, &str)> = sent.iter().map(|(m, r)| (*m, r.as_str())).collect();
    assert_eq!(got, [(1, "oncall"), (16, "backup"), (21, "backup"), (26, "backup"), (31, "leader")]);
    // Acknowledged while a repeating step is the last sent: no more repeats.
    let mut h = Harness::new(&yaml);
    let mut sent = Vec::new();
    for minute in 0..=40 {
        if minute == 18 {
            insts[0].ack = Some(Ack { by: "bob".into(), comment: String::new(), at: 18 * M, severity: None });
        }
        sent.extend(receivers(&h.tick(minute * M, &insts).jobs).into_iter().map(str::to_string));
    }
    assert_eq!(sent, ["oncall", "backup"]);
}

/// Issue 13, time intervals: a route sends nothing in its mute interval
/// (nor outside its active ones); what came due is sent when it ends.
#[test]
fn a_muted_route_holds_its_notifications_until_the_interval_ends() {
    let yaml = BASE.replace(
        "    - match: { team: db }\n      receiver: dba\n",
        "    - match: { team: db }\n      receiver: dba\n      mute_time_intervals: [night]\n    - match: { team: trading }\n      receiver: dba\n      active_time_intervals: [session]\n",
    ) + r#"
time_intervals:
  - name: night
    time_intervals: [{ times: [{ start_time: "00:00", end_time: "00:30" }] }]
  - name: session
    time_intervals: [{ times: [{ start_time: "01:00", end_time: "02:00" }] }]
"#;
    let mut h = Harness::new(&yaml);
    // The epoch is 00:00 UTC: the db route is muted until 00:30.
    let insts = vec![firing("Slow", &[("team", "db")], "warning"), firing("Lag", &[("team", "trading")], "warning")];
    let mut sent = Vec::new();
    for minute in 0..=70 {
        let out = h.tick(minute * M, &insts);
        for j in out.jobs {
            sent.push((minute, j.payload.alerts[0].labels["alertname"].clone()));
        }
        // The API shows why each is held.
        let slow = out.muted.get(&insts[0].id);
        if minute < 30 {
            assert_eq!(slow, Some(&Mute::TimeInterval("mute time interval night".into())), "minute {minute}");
        } else {
            assert_eq!(slow, None, "minute {minute}");
        }
        let lag = out.muted.get(&insts[1].id);
        if minute < 60 {
            assert_eq!(
                lag,
                Some(&Mute::TimeInterval("outside active time intervals session".into())),
                "minute {minute}"
            );
        } else {
            assert_eq!(lag, None, "minute {minute}");
        }
    }
    assert_eq!(sent, [(30, "Slow".to_string()), (60, "Lag".to_string())]);
    let unknown = BASE.replace("      receiver: dba\n", "      receiver: dba\n      mute_time_intervals: [nope]\n");
    let p = PathBuf::from("t.yml");
    let err = Config::from_files(vec![(p.clone(), parse_file(&p, &unknown).expect("yaml"))]).unwrap_err().to_string();
    assert!(err.contains("unknown time interval \"nope\""), "{err}");
}

/// Maintenance windows as time intervals, and one-off windows: the alerts
/// they match are muted while they are open.
#[test]
fn maintenance_windows_by_time_interval_and_one_off() {
    let yaml = BASE.to_string()
        + r#"
time_intervals:
  - name: first-quarter-hour
    time_intervals: [{ times: [{ start_time: "00:00", end_time: "00:15" }] }]
maintenance_windows:
  - { name: patching, match: { host: a }, time_intervals: [first-quarter-hour] }
  - { name: migration, match: { host: b }, starts_at: "1970-01-01T00:00:00Z", ends_at: "1970-01-01T00:20:00Z" }
"#;
    let mut h = Harness::new(&yaml);
    let insts = vec![firing("Slow", &[("host", "a")], "warning"), firing("Lag", &[("host", "b")], "warning")];
    let out = h.tick(0, &insts);
    assert_eq!(out.muted.get(&insts[0].id), Some(&Mute::Maintenance("patching".into())));
    assert_eq!(out.muted.get(&insts[1].id), Some(&Mute::Maintenance("migration".into())));
    let out = h.tick(16 * M, &insts);
    assert!(!out.muted.contains_key(&insts[0].id), "the interval ended");
    assert!(out.muted.contains_key(&insts[1].id), "the one-off window runs to 00:20");
    let out = h.tick(20 * M, &insts);
    assert!(out.muted.is_empty(), "{:?}", out.muted);
    let p = PathBuf::from("t.yml");
    let bad = BASE.to_string() + "maintenance_windows:\n  - { name: x, match: { host: a } }\n";
    let err = Config::from_files(vec![(p.clone(), parse_file(&p, &bad).expect("yaml"))]).unwrap_err().to_string();
    assert!(err.contains("needs a daily `start`/`end`, `time_intervals`, or `starts_at`/`ends_at`"), "{err}");
}

/// A window for one rule group mutes that group's alerts only; a window
/// naming a rule group that does not exist is refused.
#[test]
fn a_maintenance_window_for_one_rule_group() {
    let yaml = BASE.to_string()
        + r#"
groups:
  - name: g
    rules: [{ alert: Slow, sql: "SELECT 1 AS value", thresholds: { warning: "> 0" } }]
  - name: h
    rules: [{ alert: Lag, sql: "SELECT 1 AS value", thresholds: { warning: "> 0" } }]
maintenance_windows:
  - { name: g-upgrade, rule_groups: [g], starts_at: "1970-01-01T00:00:00Z", ends_at: "1970-01-01T00:20:00Z" }
"#;
    let mut h = Harness::new(&yaml);
    let mut other = firing("Lag", &[("host", "b")], "warning");
    other.group = "h".into();
    let insts = vec![firing("Slow", &[("host", "a")], "warning"), other];
    let out = h.tick(0, &insts);
    assert_eq!(out.muted.get(&insts[0].id), Some(&Mute::Maintenance("g-upgrade".into())));
    assert!(!out.muted.contains_key(&insts[1].id), "group h is not in the window");
    assert!(h.tick(20 * M, &insts).muted.is_empty(), "the window ended");
    let p = PathBuf::from("t.yml");
    let bad = yaml.replace("rule_groups: [g]", "rule_groups: [nope]");
    let err = Config::from_files(vec![(p.clone(), parse_file(&p, &bad).expect("yaml"))]).unwrap_err().to_string();
    assert!(err.contains("unknown rule group \"nope\""), "{err}");
}

/// Issue 13, on-call schedules: an escalation step reaches whoever is on
/// call in a schedule, through its `via` receivers.
#[test]
fn an_escalation_step_reaches_whoever_is_on_call() {
    let yaml = BASE.replace(
        "      - { after: 0s, notify: [oncall] }\n",
        "      - { after: 0s, oncall: primary, via: [oncall] }\n",
    ) + r#"
people:
  - { name: alice, email: alice@example.com, mobile: "13800000001" }
  - { name: bob, email: bob@example.com, user_id: bob.li }
schedules:
  - name: primary
    layers: [{ start: "1970-01-01T00:00", every: 1d, members: [alice, bob] }]
"#;
    let mut h = Harness::new(&yaml);
    let mut insts = vec![firing("DiskFull", &[("team", "esc")], "critical")];
    h.tick(0, &insts);
    let out = h.tick(10 * S, &insts);
    assert_eq!(receivers(&out.jobs), ["oncall"]);
    let oncall = out.jobs[0].payload.tocsin.oncall.clone().expect("the person on call");
    assert_eq!(oncall.schedule, "primary");
    let alice = oncall.person.expect("alice");
    assert_eq!((alice.name.as_str(), alice.mobile.as_deref()), ("alice", Some("13800000001")));
    // The next day, a new problem: bob is on call.
    insts[0].state = AlertState::Resolved;
    for t in [60, 120, 180] {
        h.tick(t * S, &insts);
    }
    insts[0].state = AlertState::Firing;
    let day = 24 * 60 * M;
    h.tick(day, &insts);
    let out = h.tick(day + 10 * S, &insts);
    let bob = out.jobs.iter().find_map(|j| j.payload.tocsin.oncall.clone()).and_then(|o| o.person).expect("bob");
    assert_eq!(bob.name, "bob");
    let bad = yaml.replace("oncall: primary", "oncall: secondary");
    let p = PathBuf::from("t.yml");
    let err = Config::from_files(vec![(p.clone(), parse_file(&p, &bad).expect("yaml"))]).unwrap_err().to_string();
    assert!(err.contains("unknown schedule \"secondary\""), "{err}");
    assert!(err.starts_with("t.yml: "), "names the file: {err}");
}

/// Review of issue 13: a notification listing an acknowledged alert still
/// carried its ack link (the docs say it is shown until the alert is
/// acknowledged); the silence link stays.
#[test]
fn an_acknowledged_alert_has_no_ack_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let links = crate::links::Links::open(dir.path(), "http://tocsin", crate::links::DEFAULT_LINK_TTL).expect("links");
    let config = config(BASE);
    let mut d = Dispatcher::default();
    let mut insts = vec![firing("A", &[("host", "a")], "warning"), firing("A", &[("host", "b")], "warning")];
    insts[1].ack = Some(Ack { by: "ann".into(), comment: String::new(), at: 0, severity: None });
    let mut tick = |now: i64, insts: &[Instance]| {
        let refs: Vec<&Instance> = insts.iter().collect();
        d.tick(TickInput {
            config: &config,
            instances: &refs,
            silences: &[],
            now,
            external_url: "http://tocsin",
            links: Some(&links),
        })
    };
    tick(0, &insts);
    let out = tick(10 * S, &insts);
    let alerts = &out.jobs[0].payload.alerts;
    let of = |host: &str| alerts.iter().find(|a| a.labels["host"] == host).expect("listed");
    assert!(of("a").ack_url.is_some() && of("a").silence_url.is_some());
    assert!(of("b").ack_url.is_none(), "acknowledged: no ack link");
    assert!(of("b").silence_url.is_some(), "it may still be silenced");
}

/// Review of issue 13: `muted.by` was a list for silences, inhibition and
/// dependencies but a string for maintenance windows and time intervals.
#[test]
fn every_mute_names_its_causes_as_a_list() {
    let shown = |m: Mute| serde_json::to_value(m).expect("json");
    assert_eq!(shown(Mute::Maintenance("mw".into())), serde_json::json!({"kind": "maintenance", "by": ["mw"]}));
    assert_eq!(
        shown(Mute::TimeInterval("mute time interval night".into())),
        serde_json::json!({"kind": "time_interval", "by": ["mute time interval night"]})
    );
    assert_eq!(shown(Mute::Silenced(vec!["s1".into()])), serde_json::json!({"kind": "silenced", "by": ["s1"]}));
}
