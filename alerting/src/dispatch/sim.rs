//! A deterministic simulation of the dispatcher on a fake clock: seeded
//! scenarios of random threshold crossings, severity changes (which move
//! alerts between routes), acknowledgements, silences, maintenance windows
//! (host `h3` twice a day), inhibition,
//! dependencies (`Errors` depends on `HostDown`) and restarts from the
//! persisted state, each checked against the invariants an on-call team
//! relies on. A failing scenario names its seed; `TOCSIN_SIM_SEED=<seed>
//! cargo test --workspace --lib seeded_scenarios` replays it alone, and
//! `TOCSIN_SIM_SCENARIOS=<n>` runs more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use super::*;
use crate::config::{Config, parse_file};
use crate::matcher::fingerprint;
use crate::state::{Ack, MatcherSpec};

const S: i64 = 1000;
const M: i64 = 60 * S;

/// Scenarios per run unless `TOCSIN_SIM_SCENARIOS` says otherwise.
const SCENARIOS: u64 = 10_000;

const CONFIG: &str = r#"
groups:
  - name: g
    rules:
      - { alert: HostDown, sql: "SELECT 1 AS value", thresholds: { critical: "> 0" } }
      - { alert: Slow, sql: "SELECT 1 AS value", thresholds: { critical: "> 0" } }
      - alert: Errors
        sql: "SELECT host, 1 AS value"
        thresholds: { critical: "> 0" }
        depends_on: [{ alert: HostDown, equal: [host] }]
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 10s
  group_interval: 1m
  repeat_interval: 1h
  routes:
    - match: { team: db }
      receiver: dba
    - match: { team: esc }
      escalation: chain
    - match: { severity: critical }
      receiver: pager
time_intervals:
  - name: quarter
    time_intervals: [{ times: [{ start_time: "00:20", end_time: "00:35" }, { start_time: "02:00", end_time: "02:40" }] }]
maintenance_windows:
  - { name: h3-patching, match: { host: h3 }, time_intervals: [quarter] }
inhibit_rules:
  - source_match: { alertname: HostDown }
    target_match: { alertname: Slow }
    equal: [host]
escalations:
  - name: chain
    steps:
      - { after: 0s, notify: [oncall] }
      - { after: 5m, notify: [backup] }
      - { after: 10m, notify: [leader] }
    repeat: 1
    repeat_interval: 20m
receivers:
  - { name: oncall, webhook: { url: "http://127.0.0.1:1/a" } }
  - { name: dba, webhook: { url: "http://127.0.0.1:1/b" } }
  - { name: backup, webhook: { url: "http://127.0.0.1:1/c" } }
  - { name: leader, webhook: { url: "http://127.0.0.1:1/d" } }
  - { name: pager, webhook: { url: "http://127.0.0.1:1/e" } }
"#;

/// SplitMix64: small, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `per_mille` times in a thousand.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

struct World {
    config: Config,
    dispatcher: Dispatcher,
    insts: Vec<Instance>,
    silences: Vec<(Silence, Matchers)>,
    now: i64,
    /// Per (receiver, alert): the statuses it was told, in order.
    told: HashMap<(String, String), Vec<String>>,
    /// Escalation steps sent: (group, chain start, cycle, step, receiver).
    steps: HashSet<(String, i64, u32, usize, String)>,
}

impl World {
    fn new(rng: &mut Rng) -> World {
        let p = PathBuf::from("sim.yml");
        let config = Config::from_files(vec![(p.clone(), parse_file(&p, CONFIG).expect("yaml"))]).expect("config");
        let n = 1 + rng.below(6);
        let mut insts = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..n {
            let alertname = *rng.pick(&["HostDown", "Slow", "Errors"]);
            let host = *rng.pick(&["h1", "h2", "h3"]);
            let team = *rng.pick(&["db", "esc", "web"]);
            let identity: Labels = [("alertname", alertname), ("host", host), ("team", team)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let id = fingerprint(&identity);
            if seen.insert(id.clone()) {
                insts.push(Instance::new(id, "g", alertname, identity, 0));
            }
        }
        World {
            config,
            dispatcher: Dispatcher::default(),
            insts,
            silences: Vec::new(),
            now: 0,
            told: HashMap::new(),
            steps: HashSet::new(),
        }
    }

    /// One random change to the world.
    fn perturb(&mut self, rng: &mut Rng) {
        let now = self.now;
        if rng.chance(350) {
            let i = rng.below(self.insts.len() as u64) as usize;
            let inst = &mut self.insts[i];
            if inst.state != AlertState::Firing {
                inst.state = AlertState::Firing;
                inst.ack = None;
                inst.ack_lifted = None;
                inst.severity = Some(rng.pick(&["warning", "critical"]).to_string());
                inst.active_since = Some(now);
                inst.resolved_at = None;
            } else if rng.chance(300) {
                let other = if inst.severity.as_deref() == Some("warning") { "critical" } else { "warning" };
                inst.severity = Some(other.into());
            } else {
                inst.state = AlertState::Resolved;
                inst.resolved_at = Some(now);
            }
            inst.update_labels();
        }
        if rng.chance(120) {
            let i = rng.below(self.insts.len() as u64) as usize;
            if self.insts[i].state == AlertState::Firing {
                self.insts[i].ack = Some(Ack { by: "sim".into(), comment: String::new(), at: now, severity: None });
            }
        }
        if rng.chance(40) {
            let i = rng.below(self.insts.len() as u64) as usize;
            self.insts[i].ack = None;
        }
        if rng.chance(60) {
            let host = rng.pick(&["h1", "h2", "h3"]).to_string();
            let s = Silence {
                id: format!("s{now}"),
                matchers: vec![MatcherSpec { name: "host".into(), value: host, is_regex: false, is_equal: true }],
                starts_at: now,
                ends_at: now + (1 + rng.below(30) as i64) * M,
                created_by: "sim".into(),
                comment: String::new(),
                created_at: now,
                scope: None,
            };
            let m = s.compile().expect("matchers");
            self.silences.push((s, m));
        }
        if rng.chance(30) && !self.silences.is_empty() {
            let i = rng.below(self.silences.len() as u64) as usize;
            self.silences[i].0.ends_at = now;
        }
        if rng.chance(30) {
            // A restart: the dispatcher comes back from its persisted form.
            let saved = serde_json::to_string(&self.dispatcher).expect("save");
            self.dispatcher = serde_json::from_str(&saved).expect("load");
        }
    }

    /// Ticks once and checks what was sent against the invariants.
    fn tick(&mut self) -> Result<(), String> {
        let refs: Vec<&Instance> = self.insts.iter().collect();
        let out = self.dispatcher.tick(TickInput {
            config: &self.config,
            instances: &refs,
            silences: &self.silences,
            now: self.now,
            external_url: "http://sim",
            links: None,
        });
        let by_id: HashMap<&str, &Instance> = self.insts.iter().map(|i| (i.id.as_str(), i)).collect();
        for job in &out.jobs {
            let mut unacked_firing = false;
            for a in &job.payload.alerts {
                let inst = by_id.get(a.fingerprint.as_str()).ok_or("a job lists an unknown alert")?;
                if a.status == "firing" {
                    if inst.state != AlertState::Firing {
                        return Err(format!(
                            "{} told firing to {} while {:?}",
                            a.fingerprint, job.receiver, inst.state
                        ));
                    }
                    if let Some(m) = out.muted.get(&a.fingerprint) {
                        return Err(format!("{} told firing to {} while muted ({m:?})", a.fingerprint, job.receiver));
                    }
                    // Worked out here, not taken from the dispatcher: host h3
                    // is in maintenance 00:20-00:35 and 02:00-02:40 (UTC).
                    let minute = (self.now / M).rem_euclid(24 * 60);
                    let h3_window = (20..35).contains(&minute) || (120..160).contains(&minute);
                    if h3_window && a.labels.get("host").is_some_and(|h| h == "h3") {
                        return Err(format!(
                            "{} told firing to {} in h3's maintenance window",
                            a.fingerprint, job.receiver
                        ));
                    }
                    unacked_firing |= inst.ack.is_none();
                } else if inst.state == AlertState::Firing {
                    // Muted or moved is not over: telling it resolved would
                    // leave the receiver thinking nothing fires.
                    return Err(format!("{} told resolved to {} while it fires", a.fingerprint, job.receiver));
                }
                self.told.entry((job.receiver.clone(), a.fingerprint.clone())).or_default().push(a.status.clone());
            }
            if job.reason == Reason::Escalation {
                if !unacked_firing {
                    return Err(format!(
                        "escalation step sent to {} with every firing alert acknowledged",
                        job.receiver
                    ));
                }
                let esc = self
                    .dispatcher
                    .groups
                    .get(&job.group_key)
                    .and_then(|g| g.escalation.as_ref())
                    .ok_or("an escalation job of a group without a chain")?;
                let step = job.payload.tocsin.step.ok_or("an escalation job without a step")?;
                let cycle = job.payload.tocsin.cycle.ok_or("an escalation job without a cycle")?;
                let key = (job.group_key.clone(), esc.started_at, cycle, step, job.receiver.clone());
                if !self.steps.insert(key) {
                    return Err(format!(
                        "step {step} of cycle {cycle} sent twice to {} in group {}",
                        job.receiver, job.group_key
                    ));
                }
            }
        }
        Ok(())
    }

    /// Everyone told an alert fired was told it resolved.
    fn check_the_end(&self) -> Result<(), String> {
        for ((receiver, id), statuses) in &self.told {
            if statuses.iter().any(|s| s == "firing") && statuses.last().map(String::as_str) != Some("resolved") {
                return Err(format!("{receiver} was told {id} fired and never that it resolved: {statuses:?}"));
            }
        }
        if !self.dispatcher.groups.is_empty() {
            let open: Vec<&String> = self.dispatcher.groups.keys().collect();
            return Err(format!("groups still open with nothing firing: {open:?}"));
        }
        Ok(())
    }
}

fn scenario(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut w = World::new(&mut rng);
    for _ in 0..60 {
        w.now += (5 + rng.below(240) as i64) * S;
        w.perturb(&mut rng);
        w.tick()?;
    }
    // The end: everything resolves, silences end; then time passes.
    for inst in &mut w.insts {
        if inst.state == AlertState::Firing {
            inst.state = AlertState::Resolved;
            inst.resolved_at = Some(w.now);
        }
    }
    w.silences.clear();
    for _ in 0..40 {
        w.now += 5 * M;
        w.tick()?;
    }
    w.check_the_end()
}

#[test]
fn seeded_scenarios_keep_the_invariants() {
    let only: Option<u64> = std::env::var("TOCSIN_SIM_SEED").ok().and_then(|s| s.parse().ok());
    let count: u64 = std::env::var("TOCSIN_SIM_SCENARIOS").ok().and_then(|s| s.parse().ok()).unwrap_or(SCENARIOS);
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => (0..count).collect(),
    };
    let mut failures = BTreeMap::new();
    for &seed in &seeds {
        if let Err(e) = scenario(seed) {
            failures.insert(seed, e);
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios broke an invariant; replay one with TOCSIN_SIM_SEED=<seed>:\n{}",
        failures.len(),
        seeds.len(),
        failures.iter().map(|(s, e)| format!("  seed {s}: {e}")).collect::<Vec<_>>().join("\n")
    );
}
