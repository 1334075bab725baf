//! The engine with a mock clock, a fake query source and a real HTTP
//! receiver on loopback.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, StringArray};

use super::*;
use crate::ManualClock;

pub(super) const T0: i64 = 1_800_000_000_000;

/// Rows the fake rule query returns: (host, value).
#[derive(Default)]
pub(super) struct FakeData(Mutex<Vec<(String, f64)>>);

#[async_trait]
impl RuleQuerier for FakeData {
    async fn query(&self, sql: &str, _db: Option<&str>) -> Result<Vec<RecordBatch>, String> {
        if sql.contains("broken") {
            return Err("table \"broken\" not found".into());
        }
        let rows = self.0.lock().clone();
        let batch = RecordBatch::try_from_iter([
            ("host", Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())) as _),
            ("value", Arc::new(Float64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())) as _),
        ])
        .map_err(|e| e.to_string())?;
        Ok(vec![batch])
    }
    async fn record(&self, _db: Option<&str>, _metric: &str, _s: &[Sample], _at: i64) -> Result<(), String> {
        Err("this fake stores nothing".into())
    }
    /// The same rows, as a PromQL expression's elements; `broken` fails.
    async fn promql(&self, expr: &str, _db: Option<&str>, _at: i64) -> Result<Vec<Sample>, String> {
        if expr.contains("broken") {
            return Err("parse error".into());
        }
        if expr.contains("slow") {
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        let rows = self.0.lock().clone();
        Ok(rows
            .into_iter()
            .map(|(host, value)| Sample { labels: [("host".to_string(), host)].into(), value, thresholds: Vec::new() })
            .collect())
    }
}

#[derive(Default)]
pub(super) struct MemHistory {
    transitions: Mutex<Vec<Transition>>,
    attempts: Mutex<Vec<Attempt>>,
}

#[async_trait]
impl HistorySink for MemHistory {
    async fn transitions(&self, t: &[Transition]) {
        self.transitions.lock().extend_from_slice(t);
    }
    async fn attempts(&self, a: &[Attempt]) {
        self.attempts.lock().extend_from_slice(a);
    }
}

/// The loopback receiver, with bodies as (path, JSON) pairs.
pub(super) struct Capture(pub(super) crate::testkit::WebhookSink);

pub(super) async fn capture(fail_first: usize) -> Capture {
    Capture(crate::testkit::WebhookSink::start(fail_first).await.expect("bind"))
}

impl Capture {
    /// Waits (bounded) until `n` bodies arrived; returns them.
    async fn wait_for(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        self.0.wait_for_count(n, Duration::from_secs(5)).await.into_iter().map(|r| (r.path, r.body)).collect()
    }

    fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        self.0.received().into_iter().map(|r| (r.path, r.body)).collect()
    }
}

pub(super) fn rules_yaml(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
groups:
  - name: hosts
    interval: 1s
    rules:
      - alert: HighCpu
        sql: SELECT host, v AS value FROM cpu
        thresholds: {{ warning: "> 80", critical: "> 95" }}
        recover: "< 70"
        for: 2s
        annotations: {{ summary: "CPU {{{{ value }}}} on {{{{ host }}}}" }}
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - match: {{ severity: critical }}
      escalation: chain
escalations:
  - name: chain
    steps:
      - {{ after: 0s, notify: [oncall] }}
      - {{ after: 15m, notify: [backup] }}
receivers:
  - name: oncall
    webhook: {{ url: "http://{addr}/oncall" }}
  - name: backup
    webhook: {{ url: "http://{addr}/backup" }}
"#
    )
}

pub(super) struct Setup {
    pub(super) dir: tempfile::TempDir,
    pub(super) clock: Arc<ManualClock>,
    pub(super) data: Arc<FakeData>,
    pub(super) history: Arc<MemHistory>,
    pub(super) engine: Arc<AlertEngine>,
}

/// A scratch directory in memory where there is one (`/dev/shm`): the
/// simulation restarts engines from their files tens of thousands of times,
/// and fsyncs on a disk made that ten times slower. (A restart here is a
/// process crash, not a power loss: what was written is there.)
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

pub(super) fn setup(yaml: &str) -> Setup {
    let dir = scratch();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, yaml).expect("write rules");
    let clock = Arc::new(ManualClock::new(T0));
    let data = Arc::new(FakeData::default());
    let history = Arc::new(MemHistory::default());
    let engine = start(dir.path(), &clock, &data, &history).expect("start");
    Setup { dir, clock, data, history, engine }
}

pub(super) fn start(
    dir: &Path,
    clock: &Arc<ManualClock>,
    data: &Arc<FakeData>,
    history: &Arc<MemHistory>,
) -> Result<Arc<AlertEngine>, EngineError> {
    let mut opts = EngineOptions::new(dir.join("alerting"));
    opts.rules_path = Some(dir.join("rules.yml"));
    opts.max_silences = 100;
    opts.retry = RetryPolicy {
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_attempts: 5,
    };
    AlertEngine::start(
        opts,
        Arc::clone(clock) as Arc<dyn Clock>,
        Arc::clone(data) as Arc<dyn RuleQuerier>,
        Arc::clone(history) as Arc<dyn HistorySink>,
    )
}

impl Setup {
    pub(super) fn set(&self, rows: &[(&str, f64)]) {
        *self.data.0.lock() = rows.iter().map(|(h, v)| (h.to_string(), *v)).collect();
    }

    /// Advances the clock by `secs` one second at a time, ticking each time.
    async fn run_for(&self, secs: i64) {
        for _ in 0..secs {
            self.clock.advance_ms(1000);
            self.engine.tick().await;
        }
    }

    /// Ticks (without moving the clock) until the delivered jobs have left
    /// the outbox.
    async fn settle(&self) {
        for _ in 0..200 {
            self.engine.tick().await;
            if self.engine.inner.lock().outbox.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("outbox never emptied");
    }

    fn state_of(&self, host: &str) -> Option<String> {
        self.engine
            .alerts(None, &BTreeMap::from([("host".to_string(), host.to_string())]))
            .first()
            .and_then(|a| a["state"].as_str().map(str::to_string))
    }
}

#[tokio::test]
async fn threshold_pending_firing_resolved_reach_the_webhook() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 85.0), ("b", 10.0)]);
    s.engine.tick().await;
    assert_eq!(s.state_of("a").as_deref(), Some("pending"));
    assert_eq!(s.state_of("b"), None);
    s.run_for(2).await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"));
    let got = cap.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let (path, body) = &got[0];
    assert_eq!(path, "/oncall");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["version"], "4");
    assert_eq!(body["alerts"][0]["labels"]["host"], "a");
    assert_eq!(body["alerts"][0]["labels"]["severity"], "warning");
    assert_eq!(body["alerts"][0]["annotations"]["summary"], "CPU 85 on a");
    assert_eq!(body["groupLabels"]["alertname"], "HighCpu");

    // 75 is above recover (70): still firing, nothing new sent.
    s.set(&[("a", 75.0)]);
    s.run_for(3).await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"));
    s.set(&[("a", 60.0)]);
    s.run_for(2).await;
    assert_eq!(s.state_of("a").as_deref(), Some("resolved"));
    let got = cap.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].1["status"], "resolved");
    assert_eq!(got[1].1["alerts"][0]["status"], "resolved");
    assert_eq!(
        got[1].1["alerts"][0]["annotations"]["summary"], "CPU 60 on a",
        "the resolved notice shows the value that resolved it"
    );

    let states: Vec<(AlertState, AlertState)> = s.history.transitions.lock().iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        states,
        [
            (AlertState::Inactive, AlertState::Pending),
            (AlertState::Pending, AlertState::Firing),
            (AlertState::Firing, AlertState::Resolved)
        ]
    );
}

#[tokio::test]
async fn escalation_continues_across_a_restart_without_repeating_a_step() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    let got = cap.wait_for(1).await;
    assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["/oncall"]);
    assert_eq!(got[0].1["tocsin"]["step"], 1);
    // The console's view of the chain: step 1 sent, step 2 (backup) next.
    let groups = s.engine.notification_groups();
    let esc = groups.iter().find_map(|g| g["escalation"].as_object()).expect("an escalating group");
    assert_eq!(
        (esc["policy"].as_str(), esc["lastStep"].as_u64(), esc["steps"].as_u64()),
        (Some("chain"), Some(1), Some(2))
    );
    assert_eq!(esc["next"]["step"], 2, "{esc:?}");
    assert_eq!(esc["next"]["notify"], serde_json::json!(["backup"]), "{esc:?}");
    s.settle().await;
    // "Crash": a new engine over the same state directory (the old one is
    // dropped without a clean shutdown; state was saved by its ticks).
    let Setup { dir, clock, data, history, engine } = s;
    drop(engine);
    let engine = start(dir.path(), &clock, &data, &history).expect("restart");
    let s = Setup { dir, clock, data, history, engine };
    assert_eq!(s.state_of("a").as_deref(), Some("firing"), "state survived");
    s.clock.advance_ms(14 * 60 * 1000);
    s.engine.tick().await;
    s.run_for(61).await;
    let got = cap.wait_for(2).await;
    let paths: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(paths, ["/oncall", "/backup"], "step 2 once, step 1 not again");
    assert_eq!(got[1].1["tocsin"]["step"], 2);
}

#[tokio::test]
async fn acknowledged_alert_does_not_escalate() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    assert_eq!(cap.wait_for(1).await.len(), 1);
    let id = s.engine.alerts(Some("firing"), &BTreeMap::new())[0]["id"].as_str().map(str::to_string).expect("id");
    let acked = s.engine.ack(&id, "ann", "looking").await.expect("ack");
    assert_eq!(acked["ack"]["by"], "ann");
    s.clock.advance_ms(20 * 60 * 1000);
    s.run_for(5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cap.bodies().len(), 1, "no step 2 after the ack");
    let groups = s.engine.notification_groups();
    let esc = groups.iter().find_map(|g| g["escalation"].as_object()).expect("an escalating group");
    assert_eq!((esc["acked"].as_bool(), esc["next"].is_null()), (Some(true), true), "{esc:?}");
    assert!(s.engine.ack("nope", "ann", "").await.is_err());
    let notes: Vec<String> = s.history.transitions.lock().iter().map(|t| t.note.clone()).collect();
    assert!(notes.iter().any(|n| n == "acknowledged by ann: looking"), "{notes:?}");
}

/// Issue 13, defect 3: an alert acknowledged at warning that turned
/// critical kept its ack, so the critical escalation paged nobody, and the
/// warning group told its receiver the alert had resolved.
#[tokio::test]
async fn a_rise_in_severity_after_an_ack_pages_again_and_says_why() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 85.0)]);
    s.run_for(3).await;
    let got = cap.wait_for(1).await;
    assert_eq!((got[0].0.as_str(), got[0].1["alerts"][0]["labels"]["severity"].as_str()), ("/oncall", Some("warning")));
    let id = s.engine.alerts(Some("firing"), &BTreeMap::new())[0]["id"].as_str().map(str::to_string).expect("id");
    let acked = s.engine.ack(&id, "ann", "looking").await.expect("ack");
    assert_eq!(acked["ack"]["severity"], "warning");

    // Critical: the ack given at warning no longer holds; the chain pages.
    s.set(&[("a", 99.0)]);
    s.run_for(2).await;
    let got = cap.wait_for(2).await;
    s.settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bodies = cap.bodies();
    assert_eq!(bodies.len(), 2, "one page, no 'resolved' from the warning group: {bodies:?}");
    let (path, page) = &got[1];
    assert_eq!(path, "/oncall");
    assert_eq!(page["tocsin"]["step"], 1, "{page}");
    assert_eq!(page["status"], "firing");
    let alert = &page["alerts"][0];
    assert_eq!(alert["labels"]["severity"], "critical");
    assert!(alert["ackedBy"].is_null(), "{alert}");
    assert_eq!(alert["ackLifted"]["by"], "ann", "{alert}");
    assert_eq!(alert["ackLifted"]["severity"], "warning", "{alert}");
    let view = &s.engine.alerts(None, &BTreeMap::new())[0];
    assert!(view["ack"].is_null() && view["ackLifted"]["by"] == "ann", "{view}");
    let notes: Vec<String> = s.history.transitions.lock().iter().map(|t| t.note.clone()).collect();
    assert!(
        notes.iter().any(|n| n == "severity rose to critical: the acknowledgement by ann at warning no longer holds"),
        "{notes:?}"
    );
    // Unacknowledged, it escalates: step 2 after 15 minutes.
    s.clock.advance_ms(15 * 60 * 1000);
    s.run_for(2).await;
    let got = cap.wait_for(3).await;
    assert_eq!(got[2].0, "/backup");

    // Acknowledged at critical, the ack holds when it falls to warning.
    s.engine.ack(&id, "bob", "on it").await.expect("ack");
    s.set(&[("a", 85.0)]);
    s.run_for(3).await;
    let view = &s.engine.alerts(None, &BTreeMap::new())[0];
    assert_eq!(view["severity"], "warning");
    assert_eq!(view["ack"]["by"], "bob", "{view}");
    assert!(view["ackLifted"].is_null(), "{view}");
}

/// Issue 13, `active_during`: outside its time intervals a rule is not
/// evaluated and what it had firing resolves, with the reason noted.
#[tokio::test]
async fn a_rule_outside_its_session_is_quiet_and_resolves() {
    let cap = capture(0).await;
    // T0 is 08:00:00 UTC; the session ends at 08:01.
    let yaml = rules_yaml(cap.0.addr)
        .replace("        for: 2s\n", "        for: 0s\n        active_during: [session]\n")
        + "time_intervals:\n  - name: session\n    time_intervals: [{ times: [{ start_time: \"08:00\", end_time: \"08:01\" }] }]\n";
    let s = setup(&yaml);
    s.set(&[("a", 99.0)]);
    s.run_for(3).await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"));
    s.run_for(60).await;
    assert_eq!(s.state_of("a").as_deref(), Some("resolved"), "the session ended");
    let evaluations = s.engine.metrics.evaluations.load(Ordering::Relaxed);
    s.run_for(10).await;
    assert_eq!(s.engine.metrics.evaluations.load(Ordering::Relaxed), evaluations, "not evaluated outside it");
    assert_eq!(s.state_of("a").as_deref(), Some("resolved"), "still high, but quiet");
    let notes: Vec<String> = s.history.transitions.lock().iter().map(|t| t.note.clone()).collect();
    assert!(notes.iter().any(|n| n == "outside its active time intervals (session)"), "{notes:?}");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_notification_once_when_it_recovers() {
    let cap = capture(2).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 85.0)]);
    s.run_for(3).await;
    let got = cap.wait_for(1).await;
    for _ in 0..50 {
        s.engine.tick().await; // collects the attempt records
        if s.history.attempts.lock().iter().any(|a| a.ok) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got.len(), 1);
    let attempts: Vec<(u32, bool)> = s.history.attempts.lock().iter().map(|a| (a.attempt, a.ok)).collect();
    assert_eq!(attempts, [(1, false), (2, false), (3, true)]);
    assert!(s.engine.inner.lock().outbox.is_empty(), "delivered jobs leave the outbox");
}

#[tokio::test]
async fn a_bad_rules_file_is_rejected_and_the_old_rules_keep_running() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    std::fs::write(s.dir.path().join("rules.yml"), "groups:\n  - name: x\n    rules:\n      - alert: [\n")
        .expect("write");
    let err = s.engine.reload().expect_err("bad file");
    let text = err.to_string();
    assert!(text.contains("rules.yml:"), "{text}");
    assert_eq!(s.engine.config().rule_count(), 1);
    s.set(&[("a", 99.0)]);
    s.run_for(3).await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"));
}

#[tokio::test]
async fn silences_mute_and_persist() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    let silence: Silence = serde_json::from_value(serde_json::json!({
        "matchers": [{"name": "host", "value": "a"}],
        "startsAt": 0, "endsAt": T0 + 3_600_000, "createdBy": "ann", "comment": "reboot"
    }))
    .expect("silence");
    let created = s.engine.add_silence(silence).expect("add");
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"), "silenced alerts are still recorded");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(cap.bodies().is_empty(), "silenced alerts are not notified");
    let a = &s.engine.alerts(None, &BTreeMap::new())[0];
    assert_eq!(a["muted"]["kind"], "silenced");
    // The silence survives a restart.
    let again = start(s.dir.path(), &s.clock, &s.data, &s.history).expect("restart");
    assert_eq!(again.silences()[0]["id"], created.id.as_str());
    assert!(
        s.engine
            .add_silence(
                serde_json::from_value(serde_json::json!({
                    "matchers": [], "startsAt": 0, "endsAt": T0 + 1, "createdBy": "x"
                }))
                .expect("parse")
            )
            .is_err()
    );
}

#[tokio::test]
async fn a_failing_query_keeps_the_state_and_is_reported() {
    let cap = capture(0).await;
    let yaml = rules_yaml(cap.0.addr).replace("FROM cpu", "FROM broken");
    let s = setup(&yaml);
    s.run_for(2).await;
    let h = s.engine.rules_health();
    assert!(h[0].error.as_deref().is_some_and(|e| e.contains("broken")), "{h:?}");
    // Listed with its definition, for the console's rules view.
    assert_eq!((h[0].kind.as_str(), h[0].language.as_str()), ("alert", "sql"), "{h:?}");
    assert!(h[0].query.contains("FROM broken"), "{h:?}");
    assert_eq!(s.engine.metrics.evaluation_failures.load(Ordering::Relaxed), 2);
}

/// Review: a PromQL rule that ran for a minute held back every other
/// group; a rule's query is stopped after its group's interval (at least
/// 5 s) and reported.
#[tokio::test]
async fn a_slow_rule_is_stopped_and_reported() {
    let s =
        setup("groups:\n  - name: g\n    interval: 1s\n    rules:\n      - { alert: Slow, expr: slow_metric > 0 }\n");
    let started = Instant::now();
    s.run_for(1).await;
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    let h = s.engine.rules_health();
    assert!(h[0].error.as_deref().is_some_and(|e| e.contains("took longer than 5s")), "{h:?}");
}

#[test]
fn a_corrupt_state_file_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("alerting");
    std::fs::create_dir_all(&state_dir).expect("mkdir");
    std::fs::write(state_dir.join("state.json"), b"{not json").expect("write");
    let s = load_state(&state_dir).expect("starts empty");
    assert!(s.state.instances.is_empty());
    let names: Vec<String> = std::fs::read_dir(&state_dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("state.json.corrupt-")), "{names:?}");
}

#[tokio::test]
async fn on_ingest_rules_change_only_the_written_series() {
    let cap = capture(0).await;
    let yaml = rules_yaml(cap.0.addr).replace(
        "        sql: SELECT host, v AS value FROM cpu\n",
        "        on_ingest: { table: cpu, field: usage }\n",
    );
    let s = setup(&yaml);
    let observer = s.engine.ingest_observer();
    let write = |host: &str, values: &[f64]| tocsin_storage::TableWrite {
        table: "cpu".into(),
        blocks: vec![tocsin_storage::SeriesBlock {
            item: 0,
            tags: vec![("host".into(), host.into())],
            timestamps: (0..values.len() as i64).collect(),
            fields: vec![tocsin_storage::FieldColumn {
                name: "usage".into(),
                values: tocsin_storage::FieldValues::F64(values.to_vec()),
                validity: None,
            }],
        }],
    };
    let pump = async || {
        let mut batches = Vec::new();
        while let Ok(b) = s.engine.ingest_rx.lock().await.try_recv() {
            batches.push(b);
        }
        s.engine.evaluate_ingest(batches).await;
    };
    // The newest row of the write counts: 99 for a, 10 for b.
    observer.written("public", &[write("a", &[10.0, 99.0]), write("b", &[99.0, 10.0])]);
    observer.written("other_db", &[write("c", &[99.0])]);
    pump().await;
    assert_eq!(s.state_of("a").as_deref(), Some("pending"));
    assert_eq!(s.state_of("b"), None);
    assert_eq!(s.state_of("c"), None, "another database's table is not watched");
    // b is written again; a is not: a stays pending (no "missing" on ingest).
    s.clock.advance_ms(3000);
    observer.written("public", &[write("b", &[12.0])]);
    pump().await;
    assert_eq!(s.state_of("a").as_deref(), Some("pending"));
    // a's next sample after `for` (2s) fires it.
    observer.written("public", &[write("a", &[98.0])]);
    pump().await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"));
    let got = cap.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1["alerts"][0]["labels"]["host"], "a");
}

#[tokio::test]
async fn chat_robots_get_their_own_message_shapes() {
    let cap = capture(0).await;
    let addr = cap.0.addr;
    let yaml = format!(
        r#"
groups:
  - name: hosts
    interval: 1s
    rules:
      - alert: HighCpu
        sql: SELECT host, v AS value FROM cpu
        thresholds: {{ critical: "> 90" }}
        annotations: {{ summary: "CPU {{{{ value }}}} on {{{{ host }}}}" }}
route:
  receiver: robots
  group_wait: 0s
receivers:
  - name: robots
    wecom: {{ url: "http://{addr}/wecom" }}
    dingtalk: {{ url: "http://{addr}/dingtalk" }}
    feishu: {{ url: "http://{addr}/feishu", template: "{{{{ title }}}} for {{{{ alertname }}}}" }}
    slack: {{ url: "http://{addr}/slack" }}
"#
    );
    let s = setup(&yaml);
    s.set(&[("a", 99.0)]);
    s.run_for(2).await;
    let got: BTreeMap<String, serde_json::Value> = cap.wait_for(4).await.into_iter().collect();
    assert_eq!(got["/wecom"]["msgtype"], "markdown");
    let text = got["/wecom"]["markdown"]["content"].as_str().unwrap_or("");
    assert!(text.starts_with("[FIRING:1] HighCpu") && text.contains("CPU 99 on a"), "{text}");
    assert_eq!(got["/dingtalk"]["markdown"]["title"], "[FIRING:1] HighCpu");
    assert_eq!(got["/feishu"]["msg_type"], "text");
    assert_eq!(got["/feishu"]["content"]["text"], "[FIRING:1] HighCpu for HighCpu");
    assert!(got["/slack"]["text"].as_str().is_some_and(|t| t.contains("host=a")), "{}", got["/slack"]);
}

/// Issue 13's invariant "ack holds across restarts", through the engine's
/// persisted state: acknowledged, then the engine is dropped without a
/// clean stop and started again on the same directory; the ack is still
/// there and step 2 never goes out.
#[tokio::test]
async fn an_ack_holds_across_a_restart() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    assert_eq!(cap.wait_for(1).await.len(), 1, "step 1");
    let id = s.engine.alerts(Some("firing"), &BTreeMap::new())[0]["id"].as_str().map(str::to_string).expect("id");
    s.engine.ack(&id, "ann", "mine").await.expect("ack");
    s.settle().await;
    let Setup { dir, clock, data, history, engine } = s;
    drop(engine);
    let engine = start(dir.path(), &clock, &data, &history).expect("restart");
    let s = Setup { dir, clock, data, history, engine };
    let a = &s.engine.alerts(Some("firing"), &BTreeMap::new())[0];
    assert_eq!(a["ack"]["by"], "ann", "the ack was persisted: {a}");
    s.clock.advance_ms(20 * 60 * 1000);
    s.run_for(5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paths: Vec<String> = cap.bodies().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, ["/oncall"], "no step 2 after the restart");
}

// -- the journal --------------------------------------------------------------

/// The journal files of a state directory, oldest first.
fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("alerting"))
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("state.journal-")))
        .filter(|p| !p.to_string_lossy().contains(".corrupt-"))
        .collect();
    v.sort();
    v
}

/// The engine's alerts as the API shows them, but for `muted`, which the
/// first dispatch round after a start works out again.
fn shown(engine: &AlertEngine) -> Vec<serde_json::Value> {
    let mut alerts = engine.alerts(None, &BTreeMap::new());
    for a in &mut alerts {
        a.as_object_mut().map(|o| o.remove("muted"));
    }
    alerts
}

impl Setup {
    /// Drops the engine without a clean stop and starts a new one on the
    /// same directory.
    pub(super) fn crash_and_restart(self) -> Setup {
        let Setup { dir, clock, data, history, engine } = self;
        drop(engine);
        let engine = start(dir.path(), &clock, &data, &history).expect("restart");
        Setup { dir, clock, data, history, engine }
    }
}

#[tokio::test]
async fn a_crash_loses_nothing_the_journal_recorded_and_a_restart_compacts_it() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0), ("b", 85.0), ("c", 10.0)]);
    s.run_for(4).await;
    let a = s.engine.alerts(None, &BTreeMap::from([("host".into(), "a".into())]))[0]["id"]
        .as_str()
        .map(str::to_string)
        .expect("id");
    s.engine.ack(&a, "ann", "mine").await.expect("ack");
    s.engine.silence_alert(&a, "ann", "quiet", Duration::from_secs(3600)).expect("silence");
    s.settle().await;
    // Rounds wrote journal records, no snapshot yet.
    assert!(!journal_files(s.dir.path()).is_empty());
    assert!(!s.dir.path().join("alerting/state.json").exists(), "no snapshot before the first compaction");
    assert!(s.engine.metrics.journal_records.load(Ordering::Relaxed) > 0);
    let before = shown(&s.engine);
    let silences = s.engine.silences();
    let groups = s.engine.inner.lock().dispatcher.groups.keys().cloned().collect::<Vec<_>>();
    assert!(!groups.is_empty());

    let s = s.crash_and_restart();
    assert_eq!(shown(&s.engine), before, "every alert as it was");
    assert_eq!(s.engine.silences(), silences);
    assert_eq!(s.engine.inner.lock().dispatcher.groups.keys().cloned().collect::<Vec<_>>(), groups);
    // The replayed journal was folded into a snapshot.
    assert!(journal_files(s.dir.path()).is_empty());
    assert!(s.dir.path().join("alerting/state.json").exists());
    // And it goes on: another change, another crash.
    s.engine.unack(&a, "ann").await.expect("unack");
    let before = shown(&s.engine);
    let s = s.crash_and_restart();
    assert_eq!(shown(&s.engine), before);
    assert!(s.engine.alerts(None, &BTreeMap::new()).iter().all(|a| a["ack"].is_null()));
}

#[tokio::test]
async fn a_torn_last_journal_record_is_cut_off() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    s.settle().await;
    let before = shown(&s.engine);
    let files = journal_files(s.dir.path());
    let last = files.last().expect("a journal");
    // A crash in the middle of an append: a header promising 500 bytes,
    // and 10 of them.
    let mut torn = 500u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0; 4]);
    torn.extend_from_slice(b"{\"seq\":99,");
    std::fs::OpenOptions::new().append(true).open(last).expect("open").write_all(&torn).expect("append");
    let s = s.crash_and_restart();
    assert_eq!(shown(&s.engine), before);
    let names: Vec<String> = std::fs::read_dir(s.dir.path().join("alerting"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    assert!(!names.iter().any(|n| n.contains("corrupt")), "a torn tail is not damage: {names:?}");
}

#[tokio::test]
async fn a_damaged_journal_record_is_reported_and_moved_aside() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    s.settle().await;
    let files = journal_files(s.dir.path());
    let first = files.first().expect("a journal").clone();
    let mut data = std::fs::read(&first).expect("read");
    assert!(data.len() > 40);
    data[20] ^= 0x55; // inside the first record's JSON
    std::fs::write(&first, &data).expect("write");
    let s = s.crash_and_restart();
    // Loaded up to the damage (here: nothing), and the file kept aside.
    assert!(shown(&s.engine).is_empty());
    let names: Vec<String> = std::fs::read_dir(s.dir.path().join("alerting"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    let name = first.file_name().expect("name").to_string_lossy().to_string();
    assert!(names.iter().any(|n| n.starts_with(&format!("{name}.corrupt-"))), "{names:?}");
}

/// A crash after a snapshot was written but before the journal it covers
/// was removed: those records are older than the snapshot and must not
/// be applied over it.
#[tokio::test]
async fn records_a_snapshot_covers_are_not_replayed() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    s.settle().await;
    let id = shown(&s.engine)[0]["id"].as_str().map(str::to_string).expect("id");
    s.engine.ack(&id, "ann", "mine").await.expect("ack");
    let files = journal_files(s.dir.path());
    let kept: Vec<(PathBuf, Vec<u8>)> = files.iter().map(|f| (f.clone(), std::fs::read(f).expect("read"))).collect();
    s.engine.unack(&id, "ann").await.expect("unack");
    s.engine.write_snapshot().expect("snapshot");
    assert!(journal_files(s.dir.path()).is_empty());
    for (f, bytes) in &kept {
        std::fs::write(f, bytes).expect("put back");
    }
    let s = s.crash_and_restart();
    assert!(shown(&s.engine)[0]["ack"].is_null(), "the old ack record was not applied: {}", shown(&s.engine)[0]);
}

/// Every field of an instance is either in its digest (journaled when it
/// changes) or named here as left to the periodic snapshot: a new field
/// fails this test until it is placed.
#[test]
fn every_instance_field_is_placed_in_the_journal_or_the_snapshot() {
    let mut i = Instance::new("id".into(), "g", "r", crate::matcher::Labels::new(), 1);
    i.ends_at = Some(2);
    i.ack_lifted = Some(Ack { by: "x".into(), comment: String::new(), at: 1, severity: None });
    let json = serde_json::to_value(&i).expect("json");
    let mut fields: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
    fields.sort_unstable();
    let mut placed = [
        // In the digest.
        "id",
        "group",
        "rule",
        "identity",
        "state",
        "severity",
        "created_at",
        "pending_since",
        "active_since",
        "resolved_at",
        "no_data",
        "changes",
        "flapping",
        "ack",
        "ack_lifted",
        "resolved_by",
        "hold_until_clear",
        "ends_at", // Left to the snapshot (set again by the next evaluation).
        "value",
        "annotations",
        "updated_at",
        "last_seen",
        "cleared_since",
        "labels",
    ];
    placed.sort_unstable();
    assert_eq!(fields, placed);
}

/// Review 4 (hostile client): a silence ending in year 13434 broke amtool
/// for everyone, and a silence matching the empty value silenced every
/// alert; both are refused, naming why.
#[tokio::test]
async fn silences_that_break_clients_or_silence_everything_are_refused() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    let silence = |matchers: Vec<crate::state::MatcherSpec>, ends_at: i64| Silence {
        id: String::new(),
        matchers,
        starts_at: 0,
        ends_at,
        created_by: "mallory".into(),
        comment: String::new(),
        created_at: 0,
        scope: None,
    };
    let m = |name: &str, value: &str, is_regex: bool| crate::state::MatcherSpec {
        name: name.into(),
        value: value.into(),
        is_regex,
        is_equal: true,
    };
    let far = 400_000_000_000_000; // year 14645
    let e = s.engine.add_silence(silence(vec![m("host", "a", false)], far)).unwrap_err().to_string();
    assert!(e.contains("between 1970 and 9999"), "{e}");
    let hour = T0 + 3_600_000;
    for everything in [vec![m("host", ".*", true)], vec![m("host", "", false)]] {
        let e = s.engine.add_silence(silence(everything, hour)).unwrap_err().to_string();
        assert!(e.contains("would silence every alert"), "{e}");
    }
    // A regex that needs a value, beside one that does not, is fine.
    s.engine.add_silence(silence(vec![m("host", ".*", true), m("job", "api-.+", true)], hour)).expect("valid");
    // Text with control characters: a line break made a fake row in
    // `amtool silence query`, an escape reached the terminal.
    let mut fake = silence(vec![m("host", "a", false)], hour);
    fake.created_by = "me\nFAKE".into();
    let e = s.engine.add_silence(fake).unwrap_err().to_string();
    assert!(e.contains("createdBy must not contain control characters"), "{e}");
    let mut fake = silence(vec![m("host", "a", false)], hour);
    fake.comment = "c\u{1b}[31m".into();
    let e = s.engine.add_silence(fake).unwrap_err().to_string();
    assert!(e.contains("comment must not contain control characters"), "{e}");
    // At most 10,000 (100 here) active or pending; expired ones do not count (review
    // of issue 13: expiring did not make room, so anyone who may silence
    // could lock everyone out, the on-call person's link included).
    let mut ids = Vec::new();
    for i in 1..100 {
        ids.push(s.engine.add_silence(silence(vec![m("host", &format!("h{i}"), false)], hour)).expect("room").id);
    }
    let e = s.engine.add_silence(silence(vec![m("host", "one-more", false)], hour)).unwrap_err().to_string();
    assert!(e.contains("100 silences are active or pending"), "{e}");
    s.engine.expire_silence(&ids[0]).expect("expire");
    let last =
        s.engine.add_silence(silence(vec![m("host", "one-more", false)], hour)).expect("an expired one made room");
    // At the cap, a silence is still replaced (extended), as Alertmanager
    // updates one.
    s.engine.replace_silence(&last.id, silence(vec![m("host", "one-more", false)], hour + 60_000)).expect("replaced");
    assert!(s.engine.add_silence(silence(vec![m("host", "two-more", false)], hour)).is_err(), "still at the cap");
}

/// The query string of a notification link, as (name, value) pairs.
fn link_fields(url: &str) -> BTreeMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn presented<'a>(alert: &'a str, f: &'a BTreeMap<String, String>) -> crate::links::Presented<'a> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    crate::links::Presented {
        alert,
        severity: f.get("severity").map_or("", String::as_str),
        action: f.get("action").map_or("", String::as_str),
        receiver: f.get("receiver").map_or("", String::as_str),
        incident: num("incident"),
        expires: num("expires"),
        sig: f.get("sig").map_or("", String::as_str),
    }
}

/// Review of issue 13: an ack link kept working for the alert's next
/// firing (a link from yesterday's page acknowledged today's incident).
/// A link is for the firing it was sent for.
#[tokio::test]
async fn a_link_does_nothing_to_a_later_firing_of_its_alert() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 85.0)]);
    s.run_for(3).await;
    let first = cap.wait_for(1).await;
    let alert = &first[0].1["alerts"][0];
    let id = alert["fingerprint"].as_str().expect("id").to_string();
    let old = link_fields(alert["ackURL"].as_str().expect("ackURL"));
    assert!(s.engine.check_link(&presented(&id, &old)).is_ok(), "the link works during its firing");

    s.set(&[("a", 60.0)]);
    s.run_for(2).await;
    assert_eq!(s.state_of("a").as_deref(), Some("resolved"));
    let err = s.engine.check_link(&presented(&id, &old)).expect_err("the firing is over");
    assert!(matches!(err, crate::links::LinkError::Stale { .. }), "{err}");

    s.set(&[("a", 85.0)]);
    s.run_for(4).await;
    assert_eq!(s.state_of("a").as_deref(), Some("firing"));
    let err = s.engine.check_link(&presented(&id, &old)).expect_err("a later firing");
    assert!(err.to_string().contains("that firing is over"), "{err}");
    let bodies = cap.wait_for(3).await;
    let newest = bodies.iter().rev().find(|(_, b)| b["status"] == "firing").expect("second page");
    let new = link_fields(newest.1["alerts"][0]["ackURL"].as_str().expect("ackURL"));
    assert_ne!(new["incident"], old["incident"]);
    let link = s.engine.check_link(&presented(&id, &new)).expect("the new link works");
    let acked = s.engine.ack_from_link(&link, "oncall (link)", "").await.expect("ack");
    assert_eq!(acked["ack"]["by"], "oncall (link)");
    // Once: a second use does not act again (nor replace a person's ack).
    let again = s.engine.ack_from_link(&link, "oncall (link)", "").await.expect_err("used");
    assert!(again.to_string().contains("acknowledged already, by oncall (link)"), "{again}");
    // A rise to critical lifts the ack: the warning page's link does not
    // acknowledge the critical alert.
    s.set(&[("a", 99.0)]);
    s.run_for(2).await;
    let err = s.engine.check_link(&presented(&id, &new)).expect_err("warning link, critical alert");
    assert!(err.to_string().contains("it is critical now"), "{err}");
}

/// Review of issue 13: an alert posted with the labels of a rule's alert
/// took its id; acks went to the posted copy and the rule's alert went on
/// escalating with nothing able to reach it.
#[tokio::test]
async fn a_posted_alert_never_takes_a_rules_alert_id() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(3).await;
    let rule_alert = s.engine.alerts(None, &BTreeMap::new());
    let rule_id = rule_alert[0]["id"].as_str().expect("id").to_string();
    let posted: crate::external::PostableAlert =
        serde_json::from_value(serde_json::json!({"labels": {"alertname": "HighCpu", "host": "a"}})).expect("alert");
    s.engine.post_alerts(vec![posted]).await.expect("post");
    let all = s.engine.alerts(None, &BTreeMap::new());
    let ids: std::collections::BTreeSet<&str> = all.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!((all.len(), ids.len()), (2, 2), "two alerts, two ids: {all:?}");
    let fake_row = s.engine.ack(&rule_id, "x\n208b9a684d5d95f2  SvcDown   firing", "").await;
    assert!(fake_row.is_err(), "a line break in `by`");
    assert!(s.engine.ack(&rule_id, &"x".repeat(5000), "").await.is_err(), "a `by` of 5000 bytes");
    let acked = s.engine.ack(&rule_id, "ann", "on it").await.expect("ack");
    assert_eq!(acked["group"], "hosts", "the ack reached the rule's alert: {acked}");
}

/// `/api/v2/alerts` lists an alert's receivers: those of an on-call step
/// (`oncall:` with `via:`) too (review of issue 13: they were left out, and
/// `?receiver=` missed the alert).
#[tokio::test]
async fn receivers_of_an_alert_include_on_call_steps() {
    let cap = capture(0).await;
    let yaml = rules_yaml(cap.0.addr).replace(
        "      - { after: 15m, notify: [backup] }\n",
        "      - { after: 15m, oncall: primary, via: [backup] }\n",
    ) + r#"
people:
  - { name: alice, email: alice@example.com }
schedules:
  - name: primary
    layers: [{ start: "1970-01-01T00:00", every: 1d, members: [alice] }]
"#;
    let s = setup(&yaml);
    let labels = |severity: &str| -> BTreeMap<String, String> {
        [("alertname", "HighCpu"), ("host", "a"), ("severity", severity)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(s.engine.receivers_of(&labels("critical")), ["backup", "oncall"]);
    assert_eq!(s.engine.receivers_of(&labels("warning")), ["oncall"]);
}

// -- the journal shipped to a bucket -------------------------------------------

/// What a server's shipper does: takes the queue, keeps the piece, says it
/// is shipped.
fn ship_all(engine: &AlertEngine, bucket: &mut Vec<ship::JournalPiece>) {
    if let Some(piece) = engine.journal_to_ship() {
        engine.journal_shipped(piece.last);
        bucket.push(piece);
    }
}

/// A successor that has the snapshot of the last push and the records
/// shipped since has the state the primary had: alerts, acknowledgements,
/// silences, escalation progress; it sends no step again.
#[tokio::test]
async fn the_shipped_journal_after_a_pushed_snapshot_rebuilds_the_state() {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.engine.ship_journal(false);
    s.engine.journal_ship_ready();
    s.set(&[("a", 99.0), ("b", 85.0)]);
    s.run_for(2).await;
    // The push: a snapshot, copied.
    let pushed_seq = s.engine.write_snapshot().expect("snapshot");
    let pushed = std::fs::read(s.dir.path().join("alerting/state.json")).expect("snapshot");
    let mut bucket = Vec::new();
    // Records before the push are shipped too; a restore skips them.
    ship_all(&s.engine, &mut bucket);
    s.run_for(3).await;
    ship_all(&s.engine, &mut bucket);
    let a = s.engine.alerts(Some("firing"), &BTreeMap::from([("host".into(), "a".into())]))[0]["id"]
        .as_str()
        .map(str::to_string)
        .expect("id");
    s.engine.ack(&a, "ann", "mine").await.expect("ack");
    s.engine.silence_alert(&a, "ann", "quiet", Duration::from_secs(3600)).expect("silence");
    s.settle().await;
    ship_all(&s.engine, &mut bucket);
    assert!(s.engine.journal_to_ship().is_none(), "everything shipped");
    assert_eq!(cap.bodies().len(), 2, "step 1 for each host");
    let want = shown(&s.engine);
    let want_silences = s.engine.silences();

    // The successor's directory: the pushed snapshot and the assembled
    // records after it, as `tocsin restore` writes them.
    let next = scratch();
    std::fs::create_dir_all(next.path().join("alerting")).expect("mkdir");
    std::fs::write(next.path().join("alerting/state.json"), &pushed).expect("snapshot");
    std::fs::copy(s.dir.path().join("rules.yml"), next.path().join("rules.yml")).expect("rules");
    assert_eq!(ship::snapshot_seq(&next.path().join("alerting")).expect("seq"), pushed_seq);
    let assembled = ship::assemble(pushed_seq, bucket);
    assert!(assembled.stopped.is_none(), "{:?}", assembled.stopped);
    assert!(assembled.records > 0);
    std::fs::write(next.path().join("alerting").join(ship::journal_file_name(pushed_seq + 1)), &assembled.bytes)
        .expect("journal");
    let engine = start(next.path(), &s.clock, &s.data, &s.history).expect("successor");
    assert_eq!(shown(&engine), want);
    assert_eq!(engine.silences(), want_silences);
    let successor = Setup {
        dir: next,
        clock: Arc::clone(&s.clock),
        data: Arc::clone(&s.data),
        history: Arc::clone(&s.history),
        engine,
    };
    successor.run_for(3).await;
    successor.settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cap.bodies().len(), 2, "no step sent again: {:?}", cap.bodies());
}

/// An engine whose alert on host `a` fires, its notification out: the
/// capture, the setup and the alert's id.
async fn one_firing() -> (Capture, Setup, String) {
    let cap = capture(0).await;
    let s = setup(&rules_yaml(cap.0.addr));
    s.set(&[("a", 99.0)]);
    s.run_for(4).await;
    s.settle().await;
    let id = s.engine.alerts(Some("firing"), &BTreeMap::new())[0]["id"].as_str().map(str::to_string).expect("id");
    (cap, s, id)
}

/// Under `sync`, an acknowledgement or silence waits for its record; not
/// while shipping fails.
#[tokio::test]
async fn a_synced_wait_ends_when_shipped_or_failing() {
    let (_cap, s, id) = one_firing().await;
    assert!(s.engine.journal_synced().await, "nothing to wait for without shipping");
    s.engine.ship_journal(true);
    // Before the shipper runs (this run's first push), no wait at all.
    s.engine.ack(&id, "ann", "mine").await.expect("ack");
    assert!(!s.engine.journal_synced().await, "not shipped: the shipper does not run yet");
    assert_eq!(s.engine.metrics.unshipped_waits.load(Ordering::Relaxed), 2, "the ack's wait and this one");
    s.engine.journal_ship_ready();
    let piece = s.engine.journal_to_ship().expect("the ack's record");
    s.engine.journal_shipped(piece.last);
    let silence = s.engine.silence_alert(&id, "ann", "quiet", Duration::from_secs(60)).expect("silence");
    let engine = Arc::clone(&s.engine);
    let waiting = tokio::spawn(async move { engine.journal_synced().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "waits for the silence's record");
    let piece = s.engine.journal_to_ship().expect("a record to ship");
    s.engine.journal_shipped(piece.last);
    assert!(waiting.await.expect("join"), "shipped");
    assert!(s.engine.journal_to_ship().is_none());
    // A failing shipper: no wait, and it is counted.
    s.engine.expire_silence(&silence.id).expect("expire");
    s.engine.journal_ship_failed("the bucket is down".into());
    let started = Instant::now();
    assert!(!s.engine.journal_synced().await);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(s.engine.metrics.unshipped_waits.load(Ordering::Relaxed), 3);
}

/// A snapshot taken between a change and its save (a push's, or the
/// periodic one) does not take the change alone: it goes in a record,
/// shipped, that the snapshot covers. Before, the save after it found
/// nothing to write and the bucket never had the change.
#[tokio::test]
async fn a_snapshot_ships_the_change_it_takes() {
    let (_cap, s, id) = one_firing().await;
    s.engine.ship_journal(false);
    s.engine.journal_ship_ready();
    s.engine
        .with_instance(&id, |inst, now| {
            inst.ack = Some(Ack { by: "ann".into(), comment: "x".into(), at: now, severity: None });
            Ok(())
        })
        .expect("changed");
    let seq = s.engine.write_snapshot().expect("snapshot");
    s.engine.save().expect("save finds nothing more");
    let piece = s.engine.journal_to_ship().expect("the change, shipped");
    assert_eq!(piece.last, seq, "the snapshot covers the record");
    let assembled = ship::assemble(seq - 1, vec![piece]);
    assert_eq!(assembled.records, 1);
    assert!(String::from_utf8_lossy(&assembled.bytes).contains("\"ann\""));
}

/// A queue over its limit is dropped; waiters count as unshipped until a
/// push of the next snapshot lands, and from then on the records after
/// that snapshot are all in the queue (no hole for a successor).
#[tokio::test]
async fn an_overflowed_queue_resumes_when_a_push_covers_the_gap() {
    let (_cap, s, id) = one_firing().await;
    s.engine.ship_journal(true);
    s.engine.journal_ship_ready();
    s.engine.journal.lock().ship.limit = 1;
    s.engine.ack(&id, "ann", "mine").await.expect("ack");
    assert_eq!(s.engine.metrics.journal_ship_dropped.load(Ordering::Relaxed), 1);
    assert!(s.engine.journal_to_ship().is_none(), "dropped");
    assert!(!s.engine.journal_synced().await, "overflowed: not shipped");
    s.engine.journal.lock().ship.limit = 1 << 20;
    s.engine.unack(&id, "ann").await.expect("unack");
    assert!(s.engine.journal_to_ship().is_none(), "nothing queued before a snapshot");
    // A local snapshot (periodic), then the push's: only the push's one
    // ends the overflow.
    let local = s.engine.write_snapshot().expect("snapshot");
    s.engine.ack(&id, "bob", "mine").await.expect("ack");
    let pushed = s.engine.write_snapshot().expect("the push's snapshot");
    s.engine.journal_covered(local);
    assert!(!s.engine.journal_synced().await, "a push of an older snapshot leaves the gap");
    s.engine.unack(&id, "bob").await.expect("unack");
    s.engine.journal_covered(pushed);
    let piece = s.engine.journal_to_ship().expect("queued since the push's snapshot");
    assert_eq!(piece.first, pushed + 1, "{piece:?}");
    s.engine.journal_shipped(piece.last);
    assert!(s.engine.journal_synced().await, "shipped again");
}

fn piece(records: &[u64]) -> ship::JournalPiece {
    let mut bytes = Vec::new();
    for &seq in records {
        let payload = serde_json::to_vec(&serde_json::json!({ "seq": seq, "ops": [] })).expect("json");
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
    }
    ship::JournalPiece { first: records[0], last: records[records.len() - 1], bytes }
}

fn seqs(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (r, len) = persist::next_record(&bytes[at..]).expect("record");
        out.push(r.seq);
        at += len;
    }
    out
}

#[test]
fn assembled_pieces_hold_each_record_once_and_stop_at_a_hole() {
    // Overlapping (a piece sent again, longer), out of order, some before
    // the snapshot.
    let a = ship::assemble(3, vec![piece(&[6, 7]), piece(&[2, 3, 4]), piece(&[2, 3, 4, 5, 6])]);
    assert_eq!((seqs(&a.bytes), a.records, a.last, a.stopped), (vec![4, 5, 6, 7], 4, 7, None));
    // A hole: nothing after it.
    let a = ship::assemble(3, vec![piece(&[4, 5]), piece(&[7, 8])]);
    assert_eq!((seqs(&a.bytes), a.last), (vec![4, 5], 5));
    assert!(a.stopped.as_deref().is_some_and(|w| w.contains("record 6 is missing") && w.contains("up to 8")), "{a:?}");
    // A damaged piece, filled by another that holds the same records.
    let mut bad = piece(&[4, 5, 6]);
    let n = bad.bytes.len();
    bad.bytes[n - 3] ^= 0xff;
    let a = ship::assemble(3, vec![bad.clone(), piece(&[6])]);
    assert_eq!((seqs(&a.bytes), a.stopped), (vec![4, 5, 6], None));
    let a = ship::assemble(3, vec![bad]);
    assert_eq!(seqs(&a.bytes), vec![4, 5]);
    assert!(a.stopped.as_deref().is_some_and(|w| w.contains("damaged")), "{a:?}");
    // Nothing after the snapshot.
    assert_eq!(ship::assemble(9, vec![piece(&[8, 9])]), ship::Assembled { last: 9, ..Default::default() });
}
