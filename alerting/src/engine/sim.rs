//! A seeded simulation of the whole engine (rule evaluation, dispatch,
//! acknowledgements, silences, resolves by hand, reloads) on a fake clock, crashed
//! and restarted from its persisted state (snapshot and journal) at random
//! points. After every restart the state must be what it was before the
//! crash: every change an evaluation, a dispatch round or an API call made
//! was durable when it returned. A failing scenario names its seed;
//! `TOCSIN_ENGINE_SIM_SEED=<seed> cargo test --workspace --lib
//! engine::sim` replays it alone, `TOCSIN_ENGINE_SIM_SCENARIOS=<n>` runs
//! more.

use super::tests::{Setup, capture, rules_yaml, setup};
use super::*;

/// Scenarios per run (each starts an engine and restarts it several
/// times, with real files and a real webhook receiver): about 40 s in a
/// debug build with the files in memory.
const SCENARIOS: u64 = 10_000;
const STEPS: usize = 40;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What must survive a crash exactly: each alert but the fields the next
/// evaluation sets again, each group but its next flush, the silences, the
/// outbox and the id counter.
fn durable(engine: &AlertEngine) -> serde_json::Value {
    let inner = engine.inner.lock();
    let alerts: Vec<serde_json::Value> = inner
        .rules
        .values()
        .flat_map(|m| m.values())
        .map(|i| {
            serde_json::json!([
                i.id,
                i.state,
                i.severity,
                i.pending_since,
                i.active_since,
                i.resolved_at,
                i.no_data,
                i.changes,
                i.flapping,
                i.ack,
                i.ack_lifted,
                i.resolved_by,
                i.hold_until_clear
            ])
        })
        .collect();
    let groups: Vec<serde_json::Value> = inner
        .dispatcher
        .groups
        .values()
        .map(|g| serde_json::json!([g.key, g.route, g.receiver, g.last_sent_at, g.sent, g.notified, g.escalation]))
        .collect();
    let silences: Vec<&Silence> = inner.silences.iter().map(|(s, _)| s).collect();
    let outbox: Vec<&String> = inner.outbox.keys().collect();
    serde_json::json!({
        "alerts": alerts, "groups": groups, "silences": silences, "outbox": outbox, "next_id": inner.next_id,
    })
}

async fn scenario(seed: u64, yaml: &str) -> Result<usize, String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut s = setup(yaml);
    let mut restarts = 0;
    for step in 0..STEPS {
        let firing: Vec<String> = s
            .engine
            .alerts(Some("firing"), &BTreeMap::new())
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        let pick =
            |rng: &mut Rng| (!firing.is_empty()).then(|| firing[rng.below(firing.len() as u64) as usize].clone());
        match rng.below(13) {
            0..=2 => {
                let levels = [10.0, 75.0, 85.0, 99.0];
                let mut rows: Vec<(&str, f64)> = Vec::new();
                for h in ["a", "b", "c"] {
                    if rng.below(4) != 0 {
                        rows.push((h, levels[rng.below(4) as usize]));
                    }
                }
                s.set(&rows);
            }
            3..=6 => {
                s.clock.advance_ms(1000 * (1 + rng.below(90) as i64));
                s.engine.tick().await;
            }
            7 => {
                if let Some(id) = pick(&mut rng) {
                    s.engine.ack(&id, "sim", "").await.map_err(|e| format!("step {step}: ack: {e}"))?;
                }
            }
            8 => {
                if let Some(id) = pick(&mut rng) {
                    // Unacknowledging one that is not acknowledged is refused; fine.
                    let _ = s.engine.unack(&id, "sim").await;
                }
            }
            9 => {
                if let Some(id) = pick(&mut rng) {
                    let minutes = 1 + rng.below(30);
                    s.engine
                        .silence_alert(&id, "sim", "", Duration::from_secs(60 * minutes))
                        .map_err(|e| format!("step {step}: silence: {e}"))?;
                }
            }
            10 => {
                if let Some(id) = pick(&mut rng) {
                    s.engine.resolve(&id, "sim", "").await.map_err(|e| format!("step {step}: resolve: {e}"))?;
                }
            }
            11 => {
                // A reload that moves the warning threshold.
                let warning = if rng.below(2) == 0 { "> 80" } else { "> 90" };
                std::fs::write(s.dir.path().join("rules.yml"), yaml.replace("> 80", warning))
                    .map_err(|e| format!("step {step}: {e}"))?;
                s.engine.reload().map_err(|e| format!("step {step}: reload: {e}"))?;
            }
            _ => {
                let before = durable(&s.engine);
                s = s.crash_and_restart();
                restarts += 1;
                let after = durable(&s.engine);
                if before != after {
                    return Err(format!(
                        "step {step}: the state after a crash differs:\nbefore {before}\nafter  {after}"
                    ));
                }
            }
        }
    }
    let _: Setup = s;
    Ok(restarts)
}

#[tokio::test]
async fn seeded_scenarios_survive_crashes_exactly() {
    let cap = capture(0).await;
    let yaml = rules_yaml(cap.0.addr);
    let seeds: Vec<u64> = match std::env::var("TOCSIN_ENGINE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("TOCSIN_ENGINE_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TOCSIN_ENGINE_SIM_SCENARIOS").ok().and_then(|n| n.parse().ok()).unwrap_or(SCENARIOS);
            (1..=n).collect()
        }
    };
    let mut restarts = 0;
    for seed in &seeds {
        match scenario(*seed, &yaml).await {
            Ok(n) => restarts += n,
            Err(e) => panic!("seed {seed} failed (replay: TOCSIN_ENGINE_SIM_SEED={seed}): {e}"),
        }
    }
    assert!(restarts > seeds.len(), "the scenarios restarted the engine ({restarts} times)");
}
