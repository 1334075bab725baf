//! From alert instances to notifications: routing, grouping, inhibition,
//! silences and maintenance windows, and escalation chains.
//!
//! [`Dispatcher::tick`] is a pure function of the instances, the
//! configuration, the silences and `now`: it decides which notifications are
//! due and records what it sent in its (persisted) group state, so that
//! tests drive it with a mock clock and a restart continues where it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::{Config, GroupBy, Route};
use crate::matcher::{Labels, Matchers};
use crate::state::{AlertState, Instance, Silence};

/// Why an alert is not notified.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "by")]
pub enum Mute {
    Silenced(Vec<String>),
    /// The window's name (shown as a list of one, like the others).
    #[serde(serialize_with = "one")]
    Maintenance(String),
    /// A rule's `depends_on`: the alerts it depends on that fire.
    Suppressed(Vec<String>),
    Inhibited(Vec<String>),
    /// Every route it goes to is in a mute time interval or outside its
    /// active ones (the reason of the first): held, and sent when that
    /// ends.
    #[serde(serialize_with = "one")]
    TimeInterval(String),
}

/// `by` is a list for every kind of mute, whatever its number.
fn one<S: serde::Serializer>(what: &str, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(1))?;
    seq.serialize_element(what)?;
    seq.end()
}

/// One alert as a notification lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlertView {
    pub status: String,
    pub severity: Option<String>,
    pub flapping: bool,
    pub acked: bool,
    /// Told firing, then suppressed by an alert it depends on or routed to
    /// another group while firing: kept as it
    /// was told (not "resolved"), and paging no one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EscalationState {
    pub policy: String,
    pub started_at: i64,
    /// The next step to send, in run `cycle` (0-based).
    pub next_step: usize,
    pub cycle: u32,
    /// Every firing alert of the group is acknowledged.
    pub acked: bool,
    /// Nothing in the group fires any more.
    pub idle: bool,
    /// Every step of every run has been sent.
    pub completed: bool,
    /// The step sent last (0-based) and when: a step with `repeat` is sent
    /// again every `repeat` until the next step is due or it is acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<(usize, i64)>,
}

/// A notification group's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupState {
    pub key: String,
    pub route: usize,
    pub receiver: String,
    pub group_labels: Labels,
    pub created_at: i64,
    pub next_flush: i64,
    pub last_sent_at: Option<i64>,
    /// What the group's receivers were last told, per alert id.
    pub sent: BTreeMap<String, AlertView>,
    /// Every receiver notified for this group (escalation steps included):
    /// all of them hear when it resolves.
    pub notified: BTreeSet<String>,
    pub escalation: Option<EscalationState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dispatcher {
    pub groups: BTreeMap<String, GroupState>,
    /// Where each alert was routed, kept between rounds (not persisted).
    #[serde(skip)]
    routing: RoutingCache,
}

/// One route an alert goes to, and the group it falls in there.
#[derive(Debug)]
struct Target {
    route: usize,
    group_labels: Labels,
    group_key: String,
}

/// The routes of each alert, so that a round matches an alert against the
/// route tree only when it is new, its labels changed (its severity) or
/// the routes changed, not in every round (matching 10,000 alerts against
/// 100 routes took most of a round's 35 ms).
#[derive(Debug, Clone, Default)]
struct RoutingCache {
    /// A fingerprint of the route tree the entries were computed for.
    routes: u64,
    /// By alert id, with the severity they were computed for: an alert's
    /// labels are its identity (which its id is the fingerprint of) and
    /// its severity.
    by_alert: HashMap<String, (Option<String>, std::sync::Arc<[Target]>)>,
}

impl RoutingCache {
    fn targets(&mut self, routes: &[Route], inst: &Instance) -> std::sync::Arc<[Target]> {
        if let Some((severity, targets)) = self.by_alert.get(&inst.id)
            && *severity == inst.severity
        {
            return std::sync::Arc::clone(targets);
        }
        let targets: std::sync::Arc<[Target]> = route_alert(routes, 0, &inst.labels)
            .into_iter()
            .map(|r| {
                let group_labels = group_labels(&routes[r].group_by, &inst.labels);
                let group_key = group_key(r, &group_labels);
                Target { route: r, group_labels, group_key }
            })
            .collect();
        self.by_alert.insert(inst.id.clone(), (inst.severity.clone(), std::sync::Arc::clone(&targets)));
        targets
    }

    /// Drops every entry when the route tree changed, and the entries of
    /// alerts that are gone.
    fn refresh(&mut self, routes: &[Route], instances: &ahash::AHashMap<&str, &Instance>) {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let fingerprint = BuildHasherDefault::<DefaultHasher>::default().hash_one(format!("{routes:?}"));
        if fingerprint != self.routes {
            self.by_alert.clear();
            self.routes = fingerprint;
        }
        if self.by_alert.len() > instances.len() {
            self.by_alert.retain(|id, _| instances.contains_key(id.as_str()));
        }
    }
}

/// Why a notification was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The group's alerts changed.
    Update,
    /// Unchanged and still firing after `repeat_interval`.
    Repeat,
    /// An escalation step became due.
    Escalation,
    /// Notifications held back by the receiver's rate limit, folded into one.
    Digest,
}

/// A notification to deliver: one group's alerts to one receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub receiver: String,
    pub group_key: String,
    pub reason: Reason,
    pub payload: Payload,
    pub created_at: i64,
}

/// Alertmanager's webhook payload (version 4), plus `tocsin` fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: String,
    pub receiver: String,
    pub group_labels: Labels,
    pub common_labels: Labels,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<PayloadAlert>,
    pub tocsin: TocsinFields,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PayloadAlert {
    pub status: String,
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
    pub value: Option<f64>,
    pub acked_by: Option<String>,
    /// An acknowledgement that a rise in severity ended: this alert pages
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_lifted: Option<AckLifted>,
    pub flapping: bool,
    /// A firing alert's link that acknowledges it (see [`crate::links`]).
    #[serde(rename = "ackURL", default, skip_serializing_if = "Option::is_none")]
    pub ack_url: Option<String>,
    /// A firing alert's link that silences it for an hour.
    #[serde(rename = "silenceURL", default, skip_serializing_if = "Option::is_none")]
    pub silence_url: Option<String>,
}

/// Who had acknowledged an alert, and at which severity, before it rose.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AckLifted {
    pub by: String,
    pub severity: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TocsinFields {
    pub reason: Reason,
    pub escalation: Option<String>,
    /// 1-based step of the escalation chain, when sent by one.
    pub step: Option<usize>,
    /// 0-based run of the chain.
    pub cycle: Option<u32>,
    pub acked: bool,
    /// A digest: how many notifications it folds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<u32>,
    /// A step that reaches whoever is on call: the schedule and the person
    /// (none when nobody is on call then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oncall: Option<OnCallField>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OnCallField {
    pub schedule: String,
    pub person: Option<crate::oncall::Person>,
}

/// Queues the notifications of escalation step `n` (1-based) of `esc`:
/// its fixed receivers, and the person on call through its `via`.
#[allow(clippy::too_many_arguments)]
fn push_step(
    jobs: &mut Vec<Job>,
    told: (&mut BTreeSet<String>, &mut BTreeSet<String>),
    ctx: &SendCtx<'_>,
    config: &Config,
    step: &crate::config::Step,
    esc: &EscalationState,
    n: usize,
    now: i64,
) {
    let (notified, sent_now) = told;
    for r in &step.notify {
        jobs.push(ctx.job(r, Reason::Escalation, Some((esc, n))));
        notified.insert(r.clone());
        sent_now.insert(r.clone());
    }
    if let Some((schedule, via)) = &step.oncall {
        let person = config
            .schedules
            .get(schedule)
            .and_then(|s| s.on_call(now, &config.time_intervals))
            .and_then(|m| config.people.get(&m).cloned());
        for r in via {
            let mut job = ctx.job(r, Reason::Escalation, Some((esc, n)));
            job.payload.tocsin.oncall = Some(OnCallField { schedule: schedule.clone(), person: person.clone() });
            jobs.push(job);
            notified.insert(r.clone());
            sent_now.insert(r.clone());
        }
    }
}

/// What [`Dispatcher::tick`] decided.
#[derive(Debug, Default)]
pub struct TickOutcome {
    pub jobs: Vec<Job>,
    /// Whether the persisted part of the state changed (groups opened or
    /// closed, something sent, an escalation moved).
    pub changed: bool,
    /// Alerts that are muted, and why.
    pub muted: HashMap<String, Mute>,
}

pub struct TickInput<'a> {
    pub config: &'a Config,
    /// Every known instance (any state).
    pub instances: &'a [&'a Instance],
    pub silences: &'a [(Silence, Matchers)],
    pub now: i64,
    pub external_url: &'a str,
    /// Makes the ack and silence links of firing alerts.
    pub links: Option<&'a crate::links::Links>,
}

impl Dispatcher {
    pub fn tick(&mut self, input: TickInput<'_>) -> TickOutcome {
        let TickInput { config, instances, silences, now, external_url, links } = input;
        let mut out = TickOutcome::default();
        let by_id: ahash::AHashMap<&str, &Instance> = instances.iter().map(|i| (i.id.as_str(), *i)).collect();

        // 1. Mute: silences, maintenance windows, dependencies, inhibition.
        let firing: Vec<&Instance> = instances.iter().copied().filter(|i| i.state == AlertState::Firing).collect();
        let deps = Dependencies::new(config, &firing);
        for inst in instances.iter().filter(|i| matches!(i.state, AlertState::Firing | AlertState::Resolved)) {
            if let Some(m) = mute_of(config, inst, &firing, &deps, silences, now) {
                out.muted.insert(inst.id.clone(), m);
            }
        }

        // 2. Route and group the notifiable alerts.
        self.routing.refresh(&config.routes, &by_id);
        let mut routed = Vec::new();
        // Each route's time intervals, worked out once a round (here and
        // when groups flush).
        let mut quiet: Vec<Option<Option<String>>> = vec![None; config.routes.len()];
        if !config.routes.is_empty() {
            for inst in instances.iter().filter(|i| matches!(i.state, AlertState::Firing | AlertState::Resolved)) {
                if out.muted.contains_key(&inst.id) {
                    continue;
                }
                let targets = self.routing.targets(&config.routes, inst);
                if inst.state == AlertState::Firing {
                    let mut reason = None;
                    for t in targets.iter() {
                        let q = quiet[t.route]
                            .get_or_insert_with(|| config.routes.get(t.route).and_then(|r| config.route_quiet(r, now)));
                        match q {
                            Some(q) => reason = reason.or_else(|| Some(q.clone())),
                            None => {
                                reason = None;
                                break;
                            }
                        }
                    }
                    if let Some(r) = reason {
                        out.muted.insert(inst.id.clone(), Mute::TimeInterval(r));
                    }
                }
                routed.push((*inst, targets));
            }
        }
        let mut members: ahash::AHashMap<&str, (&Target, Vec<&Instance>)> = ahash::AHashMap::new();
        for (inst, targets) in &routed {
            for t in targets.iter() {
                members.entry(t.group_key.as_str()).or_insert_with(|| (t, Vec::new())).1.push(*inst);
            }
        }
        for (key, (target, alerts)) in &members {
            let Some(r) = config.routes.get(target.route) else { continue };
            if self.groups.contains_key(*key) {
                continue;
            }
            if !alerts.iter().any(|i| i.state == AlertState::Firing) {
                continue; // only resolved alerts: nothing to open a group for
            }
            out.changed = true;
            self.groups.insert(
                key.to_string(),
                GroupState {
                    key: key.to_string(),
                    route: target.route,
                    receiver: r.receiver.clone(),
                    group_labels: target.group_labels.clone(),
                    created_at: now,
                    next_flush: now + r.group_wait.as_millis() as i64,
                    last_sent_at: None,
                    sent: BTreeMap::new(),
                    notified: BTreeSet::new(),
                    escalation: None,
                },
            );
        }

        // 3. Flush due groups and advance escalations.
        let mut finished = Vec::new();
        for (key, g) in self.groups.iter_mut() {
            let Some(route) = config.routes.get(g.route) else {
                finished.push(key.clone());
                continue;
            };
            // In a mute time interval (or outside its active ones) a route
            // sends nothing and forgets nothing: what is due goes out when
            // it ends.
            if quiet.get_mut(g.route).is_some_and(|q| q.get_or_insert_with(|| config.route_quiet(route, now)).is_some())
            {
                continue;
            }
            // Neither due nor escalating: nothing this round can send or
            // change (most groups, most rounds).
            if now < g.next_flush && route.escalation.is_none() {
                continue;
            }
            let alerts: &[&Instance] = members.get(key.as_str()).map_or(&[], |m| m.1.as_slice());
            // An alert this group told firing that is no longer one of its
            // members but still fires (silenced, in maintenance, inhibited,
            // suppressed by an alert it depends on, or routed to another
            // group because its severity changed) did not resolve: it is
            // held as told, paging no one, and its end is told here too
            // when it comes. Alertmanager, too, says nothing when a firing
            // alert is silenced.
            let held = |id: &str| by_id.get(id).is_some_and(|i| i.state == AlertState::Firing);
            let content = group_content(g, alerts, &held);
            let firing_any = content.values().any(|v| v.status == "firing");
            let unacked_any = content.values().any(|v| v.status == "firing" && !v.acked && !v.held);
            let ctx = SendCtx { g_key: key, route, by_id: &by_id, content: &content, external_url, now, links };

            let mut sent_now = BTreeSet::new();
            let esc_before = g.escalation.clone();
            // Escalation runs on its own clock, from the group's first flush.
            if let Some(policy) = route.escalation.as_ref().and_then(|n| config.escalations.get(n))
                && (g.escalation.is_some() || (now >= g.next_flush && firing_any))
            {
                let esc = g.escalation.get_or_insert_with(|| EscalationState {
                    policy: policy.name.clone(),
                    started_at: now,
                    ..Default::default()
                });
                if !firing_any {
                    esc.idle = true;
                } else if !unacked_any {
                    esc.acked = true;
                } else if esc.acked || esc.idle {
                    // A new unacknowledged problem: the chain starts over.
                    *esc = EscalationState { policy: policy.name.clone(), started_at: now, ..Default::default() };
                }
                while !esc.acked && !esc.idle && !esc.completed {
                    let Some(step) = policy.steps.get(esc.next_step) else { break };
                    let due = esc.started_at
                        + (esc.cycle as i64) * policy.repeat_interval.as_millis() as i64
                        + step.after.as_millis() as i64;
                    if due > now {
                        break;
                    }
                    let n = esc.next_step + 1;
                    push_step(&mut out.jobs, (&mut g.notified, &mut sent_now), &ctx, config, step, esc, n, now);
                    esc.last_step = Some((esc.next_step, now));
                    esc.next_step += 1;
                    if esc.next_step == policy.steps.len() {
                        if esc.cycle < policy.repeat {
                            esc.cycle += 1;
                            esc.next_step = 0;
                        } else {
                            esc.completed = true;
                        }
                    }
                }
                // The step sent last repeats, if it says so, while the next
                // one is not yet due (once, after a gap: not every missed time).
                if !esc.acked
                    && !esc.idle
                    && let Some((i, at)) = esc.last_step
                    && let Some(every) = policy.steps.get(i).and_then(|s| s.repeat)
                    && now >= at + every.as_millis() as i64
                {
                    let step = &policy.steps[i];
                    push_step(&mut out.jobs, (&mut g.notified, &mut sent_now), &ctx, config, step, esc, i + 1, now);
                    esc.last_step = Some((i, now));
                }
                if !sent_now.is_empty() {
                    g.sent = content.clone();
                    g.last_sent_at = Some(now);
                }
            }

            if g.escalation != esc_before {
                out.changed = true;
            }
            if now >= g.next_flush {
                let changed = content_key(&g.sent) != content_key(&content);
                let repeat = firing_any
                    && unacked_any
                    && g.last_sent_at.is_some_and(|t| now - t >= route.repeat_interval.as_millis() as i64);
                let reason = if changed {
                    Some(Reason::Update)
                } else if repeat {
                    Some(Reason::Repeat)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    let targets: Vec<String> = if route.escalation.is_some() {
                        g.notified.iter().filter(|r| !sent_now.contains(*r)).cloned().collect()
                    } else {
                        vec![route.receiver.clone()]
                    };
                    for r in &targets {
                        out.jobs.push(ctx.job(r, reason, g.escalation.as_ref().map(|e| (e, e.next_step))));
                        g.notified.insert(r.clone());
                    }
                    if !targets.is_empty() || !sent_now.is_empty() {
                        g.sent = content.clone();
                        g.last_sent_at = Some(now);
                    }
                }
                g.next_flush = now + route.group_interval.as_millis() as i64;
                g.sent.retain(|_, v| v.status == "firing");
                if !firing_any && content.values().all(|v| v.status != "firing") && g.sent.is_empty() {
                    finished.push(key.clone());
                }
            }
        }
        out.changed |= !finished.is_empty() || !out.jobs.is_empty();
        for k in finished {
            self.groups.remove(&k);
        }
        out
    }

    /// Drops groups whose route no longer exists (after a reload).
    /// The groups alert `id` was routed to when last seen by a round (its
    /// present groups, where the console shows who is in a group now).
    pub fn routed_groups<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.routing.by_alert.get(id).into_iter().flat_map(|(_, targets)| targets.iter().map(|t| t.group_key.as_str()))
    }

    pub fn retain_routes(&mut self, routes: usize) {
        self.groups.retain(|_, g| g.route < routes);
    }
}

struct SendCtx<'a> {
    g_key: &'a str,
    route: &'a Route,
    by_id: &'a ahash::AHashMap<&'a str, &'a Instance>,
    content: &'a BTreeMap<String, AlertView>,
    external_url: &'a str,
    now: i64,
    links: Option<&'a crate::links::Links>,
}

impl SendCtx<'_> {
    fn job(&self, receiver: &str, reason: Reason, esc: Option<(&EscalationState, usize)>) -> Job {
        let mut alerts = Vec::new();
        // A held alert (suppressed, or moved to another group) is not
        // mentioned until it ends.
        for (id, view) in self.content.iter().filter(|(_, v)| !v.held) {
            let Some(inst) = self.by_id.get(id.as_str()) else { continue };
            let incident = inst.active_since.unwrap_or(inst.created_at);
            let target = crate::links::LinkTarget {
                alert: &inst.id,
                incident,
                severity: inst.severity.as_deref().unwrap_or(""),
            };
            alerts.push(PayloadAlert {
                status: view.status.clone(),
                labels: inst.labels.clone(),
                annotations: inst.annotations.clone(),
                starts_at: rfc3339(incident),
                ends_at: match (view.status.as_str(), inst.resolved_at) {
                    ("resolved", Some(t)) => rfc3339(t),
                    _ => "0001-01-01T00:00:00Z".into(),
                },
                generator_url: inst
                    .generator_url
                    .clone()
                    .unwrap_or_else(|| format!("{}/api/v1/alerts/{}", self.external_url, inst.id)),
                fingerprint: inst.id.clone(),
                value: inst.value.is_finite().then_some(inst.value),
                acked_by: inst.ack.as_ref().map(|a| a.by.clone()),
                ack_lifted: inst.ack_lifted.as_ref().filter(|_| view.status == "firing").map(|a| AckLifted {
                    by: a.by.clone(),
                    severity: a.severity.clone(),
                    at: rfc3339(a.at),
                }),
                flapping: view.flapping,
                ack_url: self
                    .links
                    .filter(|_| view.status == "firing" && inst.ack.is_none())
                    .map(|l| l.url(&target, crate::links::LinkAction::Ack, receiver, self.now)),
                silence_url: self
                    .links
                    .filter(|_| view.status == "firing")
                    .map(|l| l.url(&target, crate::links::LinkAction::Silence, receiver, self.now)),
            });
        }
        let common_labels = common(alerts.iter().map(|a| &a.labels));
        let common_annotations = common(alerts.iter().map(|a| &a.annotations));
        let status = if alerts.iter().any(|a| a.status == "firing") { "firing" } else { "resolved" };
        let group_labels = self
            .by_id
            .get(self.content.keys().next().map(String::as_str).unwrap_or(""))
            .map_or_else(Labels::new, |i| group_labels(&self.route.group_by, &i.labels));
        let acked = alerts.iter().filter(|a| a.status == "firing").all(|a| a.acked_by.is_some());
        Job {
            id: String::new(),
            receiver: receiver.to_string(),
            group_key: self.g_key.to_string(),
            reason,
            created_at: self.now,
            payload: Payload {
                version: "4".into(),
                group_key: self.g_key.to_string(),
                truncated_alerts: 0,
                status: status.into(),
                receiver: receiver.to_string(),
                group_labels,
                common_labels,
                common_annotations,
                external_url: self.external_url.to_string(),
                alerts,
                tocsin: TocsinFields {
                    reason,
                    escalation: esc.map(|(e, _)| e.policy.clone()),
                    step: esc.map(|(_, s)| s).filter(|s| *s > 0),
                    cycle: esc.map(|(e, _)| e.cycle),
                    acked,
                    digest: None,
                    oncall: None,
                },
            },
        }
    }
}

/// Notifications to one receiver folded into one (its rate limit held them
/// back): every alert they list, each as the latest of them told it, in
/// the order first told.
pub fn digest(receiver: &str, payloads: &[&Payload], now: i64) -> Payload {
    let mut order: Vec<String> = Vec::new();
    let mut latest: HashMap<String, PayloadAlert> = HashMap::new();
    for p in payloads {
        for a in &p.alerts {
            if latest.insert(a.fingerprint.clone(), a.clone()).is_none() {
                order.push(a.fingerprint.clone());
            }
        }
    }
    let alerts: Vec<PayloadAlert> = order.iter().filter_map(|f| latest.remove(f)).collect();
    let firing: Vec<&PayloadAlert> = alerts.iter().filter(|a| a.status == "firing").collect();
    let acked = firing.iter().all(|a| a.acked_by.is_some());
    let status = if firing.is_empty() { "resolved" } else { "firing" };
    Payload {
        version: "4".into(),
        group_key: format!("digest:{receiver}:{now}"),
        truncated_alerts: 0,
        status: status.into(),
        receiver: receiver.to_string(),
        group_labels: Labels::new(),
        common_labels: common(alerts.iter().map(|a| &a.labels)),
        common_annotations: common(alerts.iter().map(|a| &a.annotations)),
        external_url: payloads.first().map(|p| p.external_url.clone()).unwrap_or_default(),
        alerts,
        tocsin: TocsinFields {
            reason: Reason::Digest,
            escalation: None,
            step: None,
            cycle: None,
            acked,
            digest: Some(payloads.len() as u32),
            oncall: None,
        },
    }
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn common<'a>(mut sets: impl Iterator<Item = &'a BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let Some(first) = sets.next() else { return BTreeMap::new() };
    let mut c = first.clone();
    for s in sets {
        c.retain(|k, v| s.get(k) == Some(v));
    }
    c
}

/// The group's alerts as they are now: its current members, plus the
/// alerts it last reported firing that are gone (resolved or silenced),
/// which are reported resolved once. One that is `held` (suppressed by an
/// alert it depends on, or routed to another group while firing) did not
/// resolve: it stays as it was told, paging no one, until it resolves (then
/// that is told here too) or comes back.
fn group_content(g: &GroupState, alerts: &[&Instance], held: &dyn Fn(&str) -> bool) -> BTreeMap<String, AlertView> {
    let mut content = BTreeMap::new();
    for inst in alerts {
        let status = if inst.state == AlertState::Firing { "firing" } else { "resolved" };
        if status == "resolved" && !g.sent.contains_key(&inst.id) {
            continue; // never reported firing here: nothing to resolve
        }
        if inst.flapping
            && let Some(prev) = g.sent.get(&inst.id)
        {
            // Flapping: frozen at what was last sent, flagged once.
            content.insert(inst.id.clone(), AlertView { flapping: true, ..prev.clone() });
            continue;
        }
        content.insert(
            inst.id.clone(),
            AlertView {
                status: status.into(),
                severity: inst.severity.clone(),
                flapping: inst.flapping,
                acked: inst.ack.is_some(),
                held: false,
            },
        );
    }
    for (id, prev) in &g.sent {
        if !content.contains_key(id) && prev.status == "firing" {
            let view = if held(id) {
                AlertView { held: true, ..prev.clone() }
            } else {
                AlertView { status: "resolved".into(), held: false, ..prev.clone() }
            };
            content.insert(id.clone(), view);
        }
    }
    content
}

/// What counts as a change: status, severity and the flapping flag of each
/// alert (an acknowledgement alone is not news for the group).
fn content_key(c: &BTreeMap<String, AlertView>) -> Vec<(String, String, Option<String>, bool)> {
    c.iter().map(|(id, v)| (id.clone(), v.status.clone(), v.severity.clone(), v.flapping)).collect()
}

/// The `depends_on` of each rule, and the firing alerts by rule name.
struct Dependencies<'a> {
    of: HashMap<(&'a str, &'a str), &'a [crate::rule::Dependency]>,
    firing: HashMap<&'a str, Vec<&'a Instance>>,
}

impl<'a> Dependencies<'a> {
    fn new(config: &'a Config, firing: &[&'a Instance]) -> Self {
        let of: HashMap<(&str, &str), &[crate::rule::Dependency]> = config
            .groups
            .iter()
            .flat_map(|g| g.rules.iter().map(move |r| ((g.name.as_str(), r.name.as_str()), r.depends_on.as_slice())))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        let mut by_rule: HashMap<&str, Vec<&Instance>> = HashMap::new();
        if !of.is_empty() {
            // A dependency names a rule: alerts posted through the
            // Alertmanager API with the same name are not its parents (an
            // `alerter` token could otherwise silence a rule's alerts).
            for i in firing.iter().filter(|i| i.group != crate::external::GROUP) {
                by_rule.entry(i.rule.as_str()).or_default().push(i);
            }
        }
        Dependencies { of, firing: by_rule }
    }

    /// The firing alerts `inst` depends on.
    fn parents(&self, inst: &Instance) -> Vec<String> {
        let Some(deps) = self.of.get(&(inst.group.as_str(), inst.rule.as_str())) else { return Vec::new() };
        let mut by = Vec::new();
        for d in deps.iter() {
            for p in self.firing.get(d.alert.as_str()).into_iter().flatten() {
                if p.id != inst.id && d.equal.iter().all(|l| p.labels.get(l) == inst.labels.get(l)) {
                    by.push(p.id.clone());
                }
            }
        }
        by
    }
}

fn mute_of(
    config: &Config,
    inst: &Instance,
    firing: &[&Instance],
    deps: &Dependencies<'_>,
    silences: &[(Silence, Matchers)],
    now: i64,
) -> Option<Mute> {
    let silenced: Vec<String> = silences
        .iter()
        .filter(|(s, m)| s.active_at(now) && m.matches(&inst.labels) && s.may_mute(&inst.group, &inst.labels))
        .map(|(s, _)| s.id.clone())
        .collect();
    if !silenced.is_empty() {
        return Some(Mute::Silenced(silenced));
    }
    if let Some(w) = config.maintenance.iter().find(|w| w.applies_to(inst) && w.active_at(now, &config.time_intervals))
    {
        return Some(Mute::Maintenance(w.name.clone()));
    }
    if inst.state != AlertState::Firing {
        return None;
    }
    let parents = deps.parents(inst);
    if !parents.is_empty() {
        return Some(Mute::Suppressed(parents));
    }
    let mut by = Vec::new();
    for rule in &config.inhibit_rules {
        if !rule.target.matches(&inst.labels) {
            continue;
        }
        for src in firing {
            if src.id != inst.id
                && rule.source.matches(&src.labels)
                && rule.equal.iter().all(|l| src.labels.get(l) == inst.labels.get(l))
            {
                by.push(src.id.clone());
            }
        }
    }
    (!by.is_empty()).then_some(Mute::Inhibited(by))
}

/// The routes an alert goes to: the deepest matching ones, depth first,
/// children in order, stopping at the first match unless it says
/// `continue`.
pub fn route_alert(routes: &[Route], idx: usize, labels: &Labels) -> Vec<usize> {
    let mut out = Vec::new();
    for &c in &routes[idx].children {
        if routes[c].matchers.matches(labels) {
            out.extend(route_alert(routes, c, labels));
            if !routes[c].continue_ {
                break;
            }
        }
    }
    if out.is_empty() {
        out.push(idx);
    }
    out
}

fn group_labels(by: &GroupBy, labels: &Labels) -> Labels {
    match by {
        GroupBy::All => labels.clone(),
        GroupBy::Labels(names) => names.iter().filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone()))).collect(),
    }
}

fn group_key(route: usize, labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{route}:{{{}}}", inner.join(","))
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
