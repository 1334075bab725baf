//! The alerting engine end to end: rules file → SQL over ingested data →
//! webhook, through the real binary; ack, silences and reload over HTTP and
//! the CLI; escalation across a kill -9.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{BIN, TestServer};
use crate::webhook::Webhook;

fn rules(hook: &Webhook, backup_after: &str) -> String {
    format!(
        r#"
groups:
  - name: hosts
    interval: 200ms
    rules:
      - alert: HighCpu
        sql: SELECT host, max(usage) AS value FROM cpu WHERE ts > now() - INTERVAL '10 minutes' GROUP BY host
        thresholds: {{ warning: "> 80", critical: "> 90" }}
        labels: {{ team: infra }}
        annotations: {{ summary: "CPU {{{{ value }}}} on {{{{ host }}}}" }}
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 500ms
  repeat_interval: 1h
  routes:
    - match: {{ host: esc-1 }}
      escalation: chain
escalations:
  - name: chain
    steps:
      - {{ after: 0s, notify: [oncall] }}
      - {{ after: {backup_after}, notify: [backup] }}
receivers:
  - name: oncall
    webhook: {{ url: "http://{addr}/oncall" }}
  - name: backup
    webhook: {{ url: "http://{addr}/backup" }}
"#,
        addr = hook.addr
    )
}

/// Waits until every notification decided so far is out: two dispatch
/// rounds complete after this call (whatever was due then has been
/// decided) and the saved outbox is empty (each job was delivered, or
/// failed for good). What a webhook has received by then is final until
/// the next change or timer; tests check it instead of sleeping.
async fn settled(server: &TestServer) {
    let rounds = server.metric("tocsin_alert_dispatch_rounds_total").await;
    server.metric_until("tocsin_alert_dispatch_rounds_total", rounds + 2.0).await;
    outbox_empty(server).await;
}

async fn outbox_empty(server: &TestServer) {
    for _ in 0..600 {
        if server.metric("tocsin_notification_outbox").await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox never emptied");
}

/// Lets `after` pass (a timer being due: an escalation step, a group
/// interval), then waits until the rounds that follow have run and
/// everything they decided is out.
async fn rounds_after(server: &TestServer, after: Duration) {
    tokio::time::sleep(after).await;
    settled(server).await;
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let resp =
        reqwest::Client::new().post(format!("http://{}{path}", server.http)).json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(server: &TestServer, path: &str) -> Value {
    reqwest::get(format!("http://{}{path}", server.http)).await.expect("request").json().await.expect("json")
}

fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).args(["--http-addr", &server.http.to_string()]).output().expect("run cli");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn host_of(v: &Value) -> &str {
    v["alerts"][0]["labels"]["host"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_threshold_crossing_reaches_the_webhook_and_the_system_tables() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_rules(tmp.path(), &rules(&hook, "1h"));
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 95.5), (now(), 'web-2', 12)").await;

    let body = hook.wait_for(20, |_, v| host_of(v) == "web-1").await.expect("webhook for web-1");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "oncall");
    assert_eq!(body["alerts"][0]["labels"]["severity"], "critical");
    assert_eq!(body["alerts"][0]["labels"]["team"], "infra");
    assert_eq!(body["alerts"][0]["annotations"]["summary"], "CPU 95.5 on web-1");
    assert_eq!(body["commonLabels"]["alertname"], "HighCpu");
    assert!(hook.received().iter().all(|(_, v)| host_of(v) != "web-2"), "web-2 is below every threshold");

    let rows = server.sql("SELECT id, state, severity, value FROM system.alerts").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "firing");
    assert_eq!(rows[0]["value"], 95.5);
    let id = rows[0]["id"].as_str().expect("id").to_string();

    // Acknowledge from the CLI; the API and system.alerts show it.
    let (ok, out, err) = cli(&server, &["alerts", "ack", &id, "--by", "ann", "--comment", "looking"]);
    assert!(ok, "ack failed: {err}");
    assert!(out.contains("HighCpu"), "{out}");
    let a = get(&server, &format!("/api/v1/alerts/{id}")).await;
    assert_eq!(a["ack"]["by"], "ann");
    let (ok, out, _) = cli(&server, &["alerts", "list"]);
    assert!(ok && out.contains(&id) && out.contains("ann"), "{out}");

    // The transition and the acknowledgement are in the history table.
    let history = server
        .sql_until("SELECT from_state, to_state, severity, note FROM system.alert_history ORDER BY ts", |r| {
            r.len() >= 2
        })
        .await;
    assert_eq!(
        history,
        [
            json!({"from_state": "inactive", "to_state": "firing", "severity": "critical", "note": ""}),
            json!({"from_state": "firing", "to_state": "firing", "severity": "critical", "note": "acknowledged by ann: looking"}),
        ]
    );

    // Every delivery attempt is recorded.
    let n = server.sql_until("SELECT receiver, ok FROM system.notifications WHERE ok", |r| !r.is_empty()).await;
    assert!(!n.is_empty(), "no successful attempt recorded");
    assert_eq!(n[0]["receiver"], "oncall");

    // Own metrics.
    let metrics =
        reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("tocsin_alerts_firing 1"), "{metrics}");
    assert!(metrics.contains("tocsin_rule_evaluations_total"));
}

#[tokio::test]
async fn silenced_alerts_are_recorded_but_not_notified() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_rules(tmp.path(), &rules(&hook, "1h"));
    let (ok, out, err) = cli(&server, &["silences", "add", "--match", "host=web-2", "--duration", "1h", "--by", "ann"]);
    assert!(ok, "{err}");
    let silence_id = out.trim().to_string();
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-2', 99), (now(), 'web-3', 99)").await;
    // web-3's notification is the barrier: by then web-2's would have gone too.
    hook.wait_for(20, |_, v| host_of(v) == "web-3").await.expect("web-3 notified");
    settled(&server).await;
    assert_eq!(server.metric("tocsin_notifications_queued_total").await, 1.0, "web-3 only");
    assert!(hook.received().iter().all(|(_, v)| host_of(v) != "web-2"), "silenced web-2 was notified");
    let alerts = get(&server, "/api/v1/alerts?host=web-2").await;
    assert_eq!(alerts["alerts"][0]["state"], "firing");
    assert_eq!(alerts["alerts"][0]["muted"]["kind"], "silenced");
    let (ok, out, _) = cli(&server, &["silences", "list"]);
    assert!(ok && out.contains(&silence_id) && out.contains("active"), "{out}");
    // Expired silences are listed with --all only.
    let (ok, _, err) = cli(&server, &["silences", "expire", &silence_id]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&server, &["silences", "list"]);
    assert!(ok && !out.contains(&silence_id), "{out}");
    let (ok, out, _) = cli(&server, &["silences", "list", "--all"]);
    assert!(ok && out.contains(&silence_id) && out.contains("expired"), "{out}");
}

#[tokio::test]
async fn a_bad_rules_file_is_rejected_with_line_and_column_and_old_rules_keep_running() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_rules(tmp.path(), &rules(&hook, "1h"));
    let rules_path = tmp.path().join("rules.yml");
    std::fs::write(&rules_path, "groups:\n  - name: g\n    rules:\n      - alert: X\n        sql: [unclosed\n")
        .expect("write");
    let (status, body) = post(&server, "/api/v1/rules/reload", json!({})).await;
    assert_eq!(status, 400, "{body}");
    let err = body["error"].as_str().unwrap_or("");
    assert!(names_line_and_column(err), "{err}");
    let health = get(&server, "/api/v1/rules").await;
    assert_eq!(health["rules"][0]["rule"], "HighCpu", "{health}");
    // The old rule still fires.
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-9', 99)").await;
    hook.wait_for(20, |_, v| host_of(v) == "web-9").await.expect("old rule still running");

    // The CLI checker names the place too, and exits non-zero.
    let out = Command::new(BIN).args(["rules", "check"]).arg(&rules_path).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(names_line_and_column(&stderr), "{stderr}");

    // With a server, each rule's SQL is planned against its catalog.
    let planned = tmp.path().join("planned.yml");
    std::fs::write(&planned, rules(&hook, "1h").replace("FROM cpu", "FROM no_such_table")).expect("write");
    let out = Command::new(BIN)
        .args(["rules", "check", "--server", &server.http.to_string()])
        .arg(&planned)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("HighCpu") && stderr.contains("no_such_table"), "{stderr}");
    assert!(stderr.contains("planned.yml: group \"hosts\""), "names the file: {stderr}");
    // A --server that is not there fails the check (a mistyped address in
    // CI passed it).
    let out =
        Command::new(BIN).args(["rules", "check", "--server", "127.0.0.1:1"]).arg(&planned).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no server at 127.0.0.1:1"), "{stderr}");
    std::fs::write(&planned, rules(&hook, "1h")).expect("write");
    let out = Command::new(BIN)
        .args(["rules", "check", "--server", &server.http.to_string()])
        .arg(&planned)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn escalation_continues_after_kill_9_without_repeating_a_step() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = rules(&hook, "4s");
    let mut server = TestServer::start_with_rules(tmp.path(), &yaml);
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'esc-1', 99)").await;
    hook.wait_for(20, |p, v| p == "/oncall" && host_of(v) == "esc-1").await.expect("step 1");
    // Delivery is at-least-once: a kill in the milliseconds between the
    // receiver's 200 and the outbox update would send step 1 again (see
    // docs/alerting.md). Kill once the saved outbox is empty, mid-chain.
    server.metric_until("tocsin_notifications_queued_total", 1.0).await;
    outbox_empty(&server).await;
    server.kill9();
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    let step2 = hook.wait_for(30, |p, _| p == "/backup").await.expect("step 2 after the restart");
    assert_eq!(step2["tocsin"]["step"], 2);
    settled(&server).await;
    assert_eq!(server.metric("tocsin_notifications_queued_total").await, 1.0, "only step 2 after the restart");
    let got = hook.received();
    let oncall_steps = got.iter().filter(|(p, v)| p == "/oncall" && v["tocsin"]["reason"] == "escalation").count();
    let backup = got.iter().filter(|(p, _)| p == "/backup").count();
    assert_eq!((oncall_steps, backup), (1, 1), "{got:?}");
    drop(server);
}

/// `wal = "object-store-sync"`: the alerting state journal goes to the
/// bucket with the WAL, and a round's notifications leave only once the
/// record that puts them in the outbox is there. The copy is pushed only at
/// start (the interval is an hour), before the alert; the primary is killed
/// (kill -9) between the two steps of its escalation. A successor restored
/// from the copy (as a standby does when it takes the lease) continues the
/// escalation: step 2 once, when due, and step 1 not again. Before, the
/// copy held the alerting state of its last push, and the successor paged
/// the on-call a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_continues_from_the_copy_in_a_bucket_without_repeating_a_step() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let rules_file = tmp.path().join("rules.yml");
    std::fs::write(&rules_file, rules(&hook, "4s")).expect("rules");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\nobject_store_interval = \"1h\"\nwal = \"object-store-sync\"\n").expect("config");
    let bucket_dir = tmp.path().join("bucket");
    let bucket = format!("file://{}", bucket_dir.display());
    let rules_arg = rules_file.to_str().expect("utf-8");
    let args = ["--config", cfg.to_str().expect("utf-8"), "--object-store", bucket.as_str(), "--rules", rules_arg];
    let mut a = TestServer::start_in(&tmp.path().join("a"), &args);
    a.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    a.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'esc-1', 99)").await;
    hook.wait_for(20, |p, v| p == "/oncall" && host_of(v) == "esc-1").await.expect("step 1");
    a.metric_until("tocsin_notifications_queued_total", 1.0).await;
    outbox_empty(&a).await;
    assert!(a.metric("tocsin_object_store_alerting_pieces_total").await >= 1.0, "{}", a.log_text());
    assert_eq!(a.metric("tocsin_alert_journal_unshipped_total").await, 0.0, "{}", a.log_text());
    assert_eq!(a.metric("tocsin_object_store_pushes_total").await, 1.0, "only the push at start");
    a.kill9();

    let restored = tmp.path().join("b");
    let out = Command::new(BIN)
        .args(["restore", bucket_dir.to_str().expect("utf-8"), "--data-dir"])
        .arg(&restored)
        .output()
        .expect("run tocsin restore");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("journal record"), "{said}");
    let b = TestServer::start_in(&restored, &["--rules", rules_arg]);
    let step2 = hook.wait_for(30, |p, _| p == "/backup").await.expect("step 2 on the successor");
    assert_eq!(step2["tocsin"]["step"], 2);
    settled(&b).await;
    assert_eq!(b.metric("tocsin_notifications_queued_total").await, 1.0, "only step 2 on the successor");
    let got = hook.received();
    let oncall_steps = got.iter().filter(|(p, v)| p == "/oncall" && v["tocsin"]["reason"] == "escalation").count();
    let backup = got.iter().filter(|(p, _)| p == "/backup").count();
    assert_eq!((oncall_steps, backup), (1, 1), "{got:?}");
}

/// `.../rules.yml:LINE:COLUMN: message`
fn names_line_and_column(text: &str) -> bool {
    text.split("rules.yml:").nth(1).is_some_and(|rest| {
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col = parts.next().unwrap_or("");
        line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok()
    })
}

#[tokio::test]
async fn on_ingest_rules_notify_without_waiting_for_an_interval() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"
groups:
  - name: fast
    interval: 1h
    rules:
      - alert: CpuSpike
        on_ingest: {{ table: cpu, field: usage }}
        thresholds: {{ critical: "> 90" }}
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 100ms
receivers:
  - name: oncall
    webhook: {{ url: "http://{}/oncall" }}
"#,
        hook.addr
    );
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 97)").await;
    let body = hook.wait_for(10, |_, v| v["status"] == "firing").await.expect("firing notification");
    assert_eq!(host_of(&body), "web-1");
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 15)").await;
    hook.wait_for(10, |_, v| v["status"] == "resolved").await.expect("resolved notification");
}

/// A rules file with one SQL rule over the newest value per host.
fn last_value_rules(hook: &Webhook, rule_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
groups:
  - name: hosts
    interval: 200ms
    rules:
      - alert: HighCpu
        sql: SELECT host, last_value(usage ORDER BY ts) AS value FROM cpu GROUP BY host
        thresholds: {{ warning: "> 80", critical: "> 90" }}
{rule_extra}
route:
  receiver: oncall
  group_wait: 0s
  group_interval: 300ms
  repeat_interval: 1h
{route_extra}
receivers:
  - name: oncall
    webhook: {{ url: "http://{addr}/oncall" }}
  - name: backup
    webhook: {{ url: "http://{addr}/backup" }}
"#,
        addr = hook.addr
    )
}

async fn insert(server: &TestServer, host: &str, usage: f64, offset_ms: i64) {
    server
        .sql(&format!(
            "INSERT INTO cpu (ts, host, usage) VALUES (now() + INTERVAL '{offset_ms} milliseconds', '{host}', {usage})"
        ))
        .await;
}

async fn state_of(server: &TestServer, host: &str) -> String {
    let v = get(server, &format!("/api/v1/alerts?host={host}")).await;
    v["alerts"][0]["state"].as_str().unwrap_or("none").to_string()
}

async fn wait_state(server: &TestServer, host: &str, want: &str) {
    for _ in 0..200 {
        if state_of(server, host).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{host} never became {want}; it is {}", state_of(server, host).await);
}

#[tokio::test]
async fn for_and_recover_hysteresis_through_the_binary() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = last_value_rules(&hook, "        for: 1s\n        recover: \"< 70\"", "  group_by: [alertname, host]");
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    insert(&server, "web-1", 85.0, 0).await;
    wait_state(&server, "web-1", "pending").await;
    wait_state(&server, "web-1", "firing").await;
    let firing = hook.wait_for(10, |_, v| v["status"] == "firing").await.expect("firing sent");
    assert_eq!(firing["alerts"][0]["labels"]["severity"], "warning");
    // 75: below the threshold but above recover: still firing.
    insert(&server, "web-1", 75.0, 1000).await;
    // Two evaluations that saw the 75 (it was written before they began).
    let seen = server.metric("tocsin_rule_evaluations_total").await;
    server.metric_until("tocsin_rule_evaluations_total", seen + 2.0).await;
    assert_eq!(state_of(&server, "web-1").await, "firing");
    insert(&server, "web-1", 60.0, 2000).await;
    wait_state(&server, "web-1", "resolved").await;
    hook.wait_for(10, |_, v| v["status"] == "resolved").await.expect("resolved sent");
    // The history is written beside the notification, not before it: wait
    // (up to 10 s) for the third transition before comparing.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for _ in 0..100 {
        let history = server.sql("SELECT from_state, to_state FROM system.alert_history ORDER BY ts").await;
        pairs = history
            .iter()
            .map(|r| (r["from_state"].as_str().unwrap_or("").into(), r["to_state"].as_str().unwrap_or("").into()))
            .collect();
        if pairs.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expect: Vec<(String, String)> = [("inactive", "pending"), ("pending", "firing"), ("firing", "resolved")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(pairs, expect);
}

#[tokio::test]
async fn a_storm_of_a_thousand_hosts_is_one_notification() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = last_value_rules(&hook, "", "  group_by: [alertname]").replace("group_wait: 0s", "group_wait: 1s");
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    let values: Vec<String> = (0..1000).map(|i| format!("(now(), 'h{i}', 99)")).collect();
    server.sql(&format!("INSERT INTO cpu (ts, host, usage) VALUES {}", values.join(", "))).await;
    let body = hook.wait_for(20, |_, v| v["status"] == "firing").await.expect("storm notification");
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1000));
    // Rounds past one group_interval (500 ms) after the notification: the
    // group was due again and, unchanged, sent nothing.
    rounds_after(&server, Duration::from_millis(600)).await;
    assert_eq!(server.metric("tocsin_notifications_queued_total").await, 1.0);
    assert_eq!(hook.received().len(), 1, "one notification for the storm, nothing while it is unchanged");
    let firing = server.sql("SELECT count(*) AS n FROM system.alerts WHERE state = 'firing'").await;
    assert_eq!(firing[0]["n"], 1000);
}

#[tokio::test]
async fn critical_inhibits_warning_for_the_same_host() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"
groups:
  - name: disk
    interval: 200ms
    rules:
      - alert: DiskFull
        sql: SELECT host, last_value(used ORDER BY ts) AS value FROM disk GROUP BY host
        thresholds: {{ critical: "> 95" }}
      - alert: DiskFilling
        sql: SELECT host, last_value(used ORDER BY ts) AS value FROM disk GROUP BY host
        thresholds: {{ warning: "> 80" }}
route:
  receiver: oncall
  group_by: [alertname, host]
  # Longer than the rule interval, as with Alertmanager: the two rules may
  # see the new rows in different evaluations; inhibition applies at flush.
  group_wait: 1s
  group_interval: 300ms
inhibit_rules:
  - source_match: {{ severity: critical }}
    target_match: {{ severity: warning }}
    equal: [host]
receivers:
  - name: oncall
    webhook: {{ url: "http://{}/oncall" }}
"#,
        hook.addr
    );
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    server.sql("INSERT INTO disk (ts, host, used) VALUES (now(), 'a', 97), (now(), 'b', 85)").await;
    // b only crosses the warning: notified. a crosses both: only the critical.
    hook.wait_for(20, |_, v| v["commonLabels"]["alertname"] == "DiskFilling" && host_of(v) == "b")
        .await
        .expect("b warned");
    hook.wait_for(20, |_, v| v["commonLabels"]["alertname"] == "DiskFull" && host_of(v) == "a").await.expect("a paged");
    settled(&server).await;
    assert_eq!(server.metric("tocsin_notifications_queued_total").await, 2.0, "b's warning and a's critical");
    let leaked =
        hook.received().into_iter().any(|(_, v)| v["commonLabels"]["alertname"] == "DiskFilling" && host_of(&v) == "a");
    assert!(!leaked, "a's warning should be inhibited by its critical");
    let alerts = get(&server, "/api/v1/alerts?host=a&alertname=DiskFilling").await;
    assert_eq!(alerts["alerts"][0]["muted"]["kind"], "inhibited");
}

#[tokio::test]
async fn acknowledged_alert_gets_no_step_two() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_rules(tmp.path(), &rules(&hook, "3s"));
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'esc-1', 99)").await;
    hook.wait_for(20, |p, v| p == "/oncall" && host_of(v) == "esc-1").await.expect("step 1");
    let id = get(&server, "/api/v1/alerts?host=esc-1").await["alerts"][0]["id"].as_str().expect("id").to_string();
    let (status, body) =
        post(&server, &format!("/api/v1/alerts/{id}/ack"), json!({"by": "ann", "comment": "mine"})).await;
    assert_eq!(status, 200, "{body}");
    // Rounds after step 2 would have been due (3 s after step 1).
    rounds_after(&server, Duration::from_secs(3)).await;
    assert_eq!(server.metric("tocsin_notifications_queued_total").await, 1.0, "step 1 only");
    assert!(hook.received().iter().all(|(p, _)| p != "/backup"), "step 2 sent despite the ack");
    let (status, body) = post(&server, "/api/v1/alerts/nope/ack", json!({"by": "ann"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(&server, &format!("/api/v1/alerts/{id}/ack"), json!({})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_the_notification_once() {
    let hook = Webhook::start_failing(2).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_rules(tmp.path(), &rules(&hook, "1h"));
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 99)").await;
    hook.wait_for(30, |_, v| host_of(v) == "web-1").await.expect("delivered after retries");
    settled(&server).await;
    assert_eq!(server.metric("tocsin_notifications_queued_total").await, 1.0);
    assert_eq!(hook.received().len(), 1, "{:?}", hook.received());
    let attempts =
        server.sql_until("SELECT attempt, ok, error FROM system.notifications ORDER BY ts", |r| r.len() >= 3).await;
    let oks: Vec<(i64, bool)> =
        attempts.iter().map(|a| (a["attempt"].as_i64().unwrap_or(0), a["ok"].as_bool().unwrap_or(false))).collect();
    assert_eq!(oks, [(1, false), (2, false), (3, true)], "{attempts:?}");
    assert!(attempts[0]["error"].as_str().unwrap_or("").contains("503"), "{attempts:?}");
}

#[tokio::test]
async fn rules_reload_on_sighup_and_when_the_file_changes() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = rules(&hook, "1h");
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    let reloads = async || -> f64 {
        let text =
            reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics").text().await.expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix("tocsin_rule_reloads_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(reloads().await, 0.0);
    server.signal(libc::SIGHUP);
    let mut n = 0.0;
    for _ in 0..100 {
        n = reloads().await;
        if n >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 1.0, "SIGHUP reloads the rules");
    // Editing the file is picked up without a signal.
    std::fs::write(tmp.path().join("rules.yml"), yaml.replace("alert: HighCpu", "alert: CpuHot")).expect("write");
    let mut names = Vec::new();
    for _ in 0..200 {
        let r = get(&server, "/api/v1/rules").await;
        names = r["rules"].as_array().map(|a| a.iter().map(|x| x["rule"].to_string()).collect()).unwrap_or_default();
        if names.iter().any(|n| n.contains("CpuHot")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names, ["\"CpuHot\""]);
    // Both reloads have an audit entry with their cause (no caller did them).
    let audited = server
        .sql_until(
            "SELECT actor, target, outcome, rows FROM system.audit WHERE action = 'reload rules' ORDER BY seq",
            |r| r.len() >= 2,
        )
        .await;
    assert_eq!(
        audited,
        [
            json!({"actor": "server", "target": "SIGHUP", "outcome": "ok", "rows": 1}),
            json!({"actor": "server", "target": "rule files changed", "outcome": "ok", "rows": 1}),
        ]
    );
}

/// Every rule shipped in docs/ runs: the rule pack is loaded by a server
/// holding a row of each table it reads, and each rule evaluates without
/// an error (an unknown function, a wrong column); the complete example of
/// docs/alerting.md is planned against the same catalog by `rules check`.
#[tokio::test]
async fn the_shipped_rules_evaluate_against_their_tables() {
    use tocsin_proto::v1::WriteLogsRequest;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut server = TestServer::start_in(&data, &[]);
    let now = chrono::Utc::now().timestamp_nanos_opt().expect("now");
    let lines = [
        format!("cpu,host=a usage_idle=50,usage_user=10 {now}"),
        format!("mem,host=a used_percent=40 {now}"),
        format!("disk,host=a,path=/ used_percent=50,total=1000i,used=500i {}", now - 60_000_000_000),
        format!("disk,host=a,path=/ used_percent=60,total=1000i,used=600i {now}"),
        format!("probe,target=x latency_ms=12,success=true {now}"),
        // What Prometheus' remote_write makes of node_exporter's load (the quick start).
        format!("node_load1,instance=127.0.0.1:9100,job=node value=0.2 {now}"),
    ];
    let (status, text) = crate::hardening::write_lines(&server, lines.join("\n")).await;
    assert_eq!(status, 204, "{text}");
    let events = vec![crate::util::log(now, "billing", "fatal", "down", "t-1")];
    let write = WriteLogsRequest { database: String::new(), stream: String::new(), events };
    server.client().await.write_logs(write).await.expect("write logs");

    // The docs' quick start and complete example, planned by the CLI
    // against this catalog.
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let guide = std::fs::read_to_string(docs.join("alerting.md")).expect("docs/alerting.md");
    let first_yaml =
        |text: &str| text.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).map(str::to_string);
    let quick_start = first_yaml(&guide).expect("the quick start's rules");
    let complete = guide.split("## A complete example").nth(1).and_then(first_yaml).expect("the complete example");
    for (name, example) in [("quick start", quick_start), ("complete example", complete)] {
        let example_file = tmp.path().join("example.yml");
        std::fs::write(&example_file, example).expect("write example");
        let out = Command::new(BIN)
            .args(["rules", "check"])
            .arg(&example_file)
            .args(["--server", &server.http.to_string()])
            .output()
            .expect("run rules check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "docs/alerting.md's {name}: {stderr}");
        assert!(!stderr.contains("no server"), "planned, not only parsed: {stderr}");
    }
    server.terminate();

    // The rule pack, evaluated on the same data.
    let pack = docs.join("rules");
    let config = tocsin_alerting::config::Config::load(&pack).expect("docs/rules/ loads");
    let expected: Vec<String> = config
        .groups
        .iter()
        .flat_map(|g| g.rules.iter().filter(|r| r.on_ingest.is_none()).map(|r| r.name.clone()))
        .collect();
    assert!(expected.len() >= 8, "{expected:?}");
    let server = TestServer::start_in(&data, &["--rules", pack.to_str().expect("utf-8")]);
    let mut health = Value::Null;
    for _ in 0..300 {
        health = get(&server, "/api/v1/rules").await;
        let evaluated =
            health["rules"].as_array().map_or(0, |r| r.iter().filter(|x| x["last_evaluation"].is_i64()).count());
        if evaluated >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rules = health["rules"].as_array().expect("rules");
    for name in &expected {
        let rule = rules.iter().find(|r| r["rule"] == name.as_str()).unwrap_or_else(|| panic!("{name} ran: {health}"));
        assert!(rule["last_evaluation"].is_i64(), "{name} evaluated: {rule}");
        assert!(rule["error"].is_null(), "{name} evaluates without an error: {rule}");
    }
}

/// Issue 13, "acknowledge from the message": with auth on, a notification
/// carries a signed link per alert that acknowledges it (and one that
/// silences it for an hour) without a token; opening the link only shows a
/// button (mail scanners open links); the button acts, in the name of the
/// receiver the link was sent to, recorded in the history and the audit
/// log. A tampered link, another alert's, or an expired one is refused with
/// a page that says why.
#[tokio::test]
async fn a_link_in_the_notification_acknowledges_without_a_login() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let rules_path = tmp.path().join("rules.yml");
    std::fs::write(&rules_path, rules(&hook, "1h")).expect("rules");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[alerting]\nlink_ttl = \"4s\"\n").expect("config");
    let server = TestServer::start_in(
        &tmp.path().join("data"),
        &["--auth", "--config", cfg.to_str().expect("utf-8"), "--rules", rules_path.to_str().expect("utf-8")],
    );
    let admin = std::fs::read_to_string(server.data_dir.join("admin-token")).expect("admin-token").trim().to_string();
    let http = reqwest::Client::new();
    let insert = |host: &'static str| {
        let (http, url, admin) = (http.clone(), format!("http://{}/api/v1/sql", server.http), admin.clone());
        async move {
            let sql = format!("INSERT INTO cpu (ts, host, usage) VALUES (now(), '{host}', 99)");
            let resp = http.post(url).bearer_auth(admin).json(&json!({ "sql": sql })).send().await.expect("insert");
            assert_eq!(resp.status().as_u16(), 200);
        }
    };
    insert("esc-1").await;
    let page = hook.wait_for(20, |p, v| p == "/oncall" && host_of(v) == "esc-1").await.expect("step 1");
    let alert = &page["alerts"][0];
    let (ack_url, silence_url) = (
        alert["ackURL"].as_str().expect("ackURL").to_string(),
        alert["silenceURL"].as_str().expect("silenceURL").to_string(),
    );
    let id = alert["fingerprint"].as_str().expect("id").to_string();
    assert!(
        ack_url.starts_with(&format!("http://{}/api/v1/alerts/{id}/link?action=ack&incident=", server.http))
            && ack_url.contains("&receiver=oncall&"),
        "{ack_url}"
    );

    // Opening the link (no token) shows the alert and a button; it does not act.
    let shown = http.get(&ack_url).send().await.expect("open");
    assert_eq!(shown.status().as_u16(), 200);
    let header = |name: &str| shown.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(header("x-frame-options"), "DENY", "the page must not be framed by another site");
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    let html = shown.text().await.expect("html");
    assert!(
        html.contains("Acknowledge?") && html.contains("esc-1") && html.contains("<form method=\"post\">"),
        "{html}"
    );
    let state = |id: String| {
        let (http, url, admin) = (http.clone(), format!("http://{}/api/v1/alerts/{id}", server.http), admin.clone());
        async move { http.get(url).bearer_auth(admin).send().await.expect("get").json::<Value>().await.expect("json") }
    };
    assert!(state(id.clone()).await["ack"].is_null(), "a GET acknowledged");

    // Tampered, or used for another alert: refused, with a page that says why.
    let tampered = ack_url.replace("&sig=", "&sig=0").replacen("&sig=00", "&sig=01", 1);
    let refused = http.post(&tampered).send().await.expect("tampered");
    assert_eq!(refused.status().as_u16(), 403);
    assert!(refused.text().await.expect("html").contains("not valid for alert"));
    let other = ack_url.replace(&format!("/alerts/{id}/"), "/alerts/0123456789abcdef/");
    assert_eq!(http.post(&other).send().await.expect("other").status().as_u16(), 403);
    // Cut short by a mail client, or a parameter twice: the refusal page
    // naming the damage (it was a bare "Failed to deserialize" 400).
    for (damaged, says) in [
        (ack_url.replacen("&incident=", "&incident=abc", 1), "not a number"),
        (format!("{ack_url}&action=silence"), "twice"),
    ] {
        let resp = http.get(&damaged).send().await.expect("damaged");
        assert_eq!(resp.status().as_u16(), 400);
        let html = resp.text().await.expect("html");
        assert!(html.contains("This link does not work") && html.contains(says), "{html}");
    }
    assert!(state(id.clone()).await["ack"].is_null());

    // The button: acknowledged in the receiver's name, escalation stops.
    let done = http.post(&ack_url).send().await.expect("ack");
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await.expect("html").contains("Acknowledged"));
    let acked = state(id.clone()).await;
    assert_eq!(acked["ack"]["by"], "oncall (link)", "{acked}");

    // The silence link of another alert: silenced for an hour.
    insert("esc-2").await;
    let page = hook.wait_for(20, |p, v| p == "/oncall" && host_of(v) == "esc-2").await.expect("esc-2");
    let silence_2 = page["alerts"][0]["silenceURL"].as_str().expect("silenceURL").to_string();
    let done = http.post(&silence_2).send().await.expect("silence");
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await.expect("html").contains("Silenced until"));
    let list_silences = || async {
        let resp = http.get(format!("http://{}/api/v1/silences", server.http)).bearer_auth(&admin).send().await;
        resp.expect("silences").json::<Value>().await.expect("json")
    };
    let silences = list_silences().await;
    let s = &silences["silences"].as_array().expect("list")[0];
    assert_eq!(s["createdBy"], "oncall (link)", "{silences}");
    assert!(s["matchers"].as_array().expect("matchers").iter().any(|m| m["name"] == "host" && m["value"] == "esc-2"));
    // Used again: the same silence, not another hour (review 4 found
    // three uses made three silences).
    let again = http.post(&silence_2).send().await.expect("silence again");
    assert_eq!(again.status().as_u16(), 200);
    assert!(again.text().await.expect("html").contains("used already"));
    let silences = list_silences().await;
    assert_eq!(silences["silences"].as_array().expect("list").len(), 1, "{silences}");

    // Expired (link_ttl is 4 s here): refused with 410.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let late = http.get(&silence_url).send().await.expect("late");
    assert_eq!(late.status().as_u16(), 410);
    assert!(late.text().await.expect("html").contains("expired at"));

    // History and audit log name the receiver.
    let sql = |q: &str| {
        let (http, url, admin, q) =
            (http.clone(), format!("http://{}/api/v1/sql", server.http), admin.clone(), q.to_string());
        async move {
            let resp = http.post(url).bearer_auth(admin).json(&json!({ "sql": q })).send().await.expect("sql");
            resp.json::<Value>().await.expect("json")
        }
    };
    let notes = sql(&format!("SELECT note FROM system.alert_history WHERE id = '{id}'")).await;
    assert!(notes.to_string().contains("acknowledged by oncall (link): from the notification link"), "{notes}");
    let audit =
        sql("SELECT actor, target, outcome, status FROM system.audit WHERE action LIKE '%/link' ORDER BY seq").await;
    let rows = audit.as_array().expect("rows");
    let has = |actor: &str, target: &str, status: u64| {
        rows.iter().any(|r| {
            r["actor"] == actor && r["target"].as_str().unwrap_or("").ends_with(target) && r["status"] == status
        })
    };
    assert!(has("unauthenticated", "ack", 403), "{audit}");
    assert!(has("link:oncall", &format!("{id} ack"), 200), "{audit}");
    assert!(has("link:oncall", "silence", 200), "{audit}");
    assert!(has("unauthenticated", "silence", 410), "{audit}");
}

/// Issue 13, `depends_on` through the binary: a service behind a host that
/// is down is suppressed (visible as such, not notified); when the host
/// comes back and the service is still down, the service is notified.
#[tokio::test]
async fn a_service_behind_a_down_host_is_suppressed_until_the_host_is_back() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"
groups:
  - name: infra
    interval: 200ms
    rules:
      - alert: HostDown
        sql: SELECT host, last_value(up ORDER BY ts) AS value FROM hostup GROUP BY host
        thresholds: {{ critical: "< 1" }}
      - alert: ServiceDown
        sql: SELECT host, svc, last_value(up ORDER BY ts) AS value FROM svcup GROUP BY host, svc
        thresholds: {{ critical: "< 1" }}
        depends_on: [{{ alert: HostDown, equal: [host] }}]
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 300ms
  repeat_interval: 1h
receivers:
  - name: oncall
    webhook: {{ url: "http://{addr}/oncall" }}
"#,
        addr = hook.addr
    );
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    let named = |name: &'static str, status: &'static str| {
        move |_: &str, v: &Value| {
            v["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["labels"]["alertname"] == name && a["status"] == status)
        }
    };
    server.sql("INSERT INTO hostup (ts, host, up) VALUES (now(), 'db-1', 0)").await;
    hook.wait_for(20, named("HostDown", "firing")).await.expect("the host is paged");
    server.sql("INSERT INTO svcup (ts, host, svc, up) VALUES (now(), 'db-1', 'postgres', 0)").await;
    let mut suppressed = Value::Null;
    for _ in 0..200 {
        let alerts = get(&server, "/api/v1/alerts?alertname=ServiceDown").await;
        if alerts["alerts"][0]["state"] == "firing" && !alerts["alerts"][0]["muted"].is_null() {
            suppressed = alerts["alerts"][0]["muted"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(suppressed["kind"], "suppressed", "{suppressed}");
    settled(&server).await;
    assert!(
        !hook.received().iter().any(|(_, v)| named("ServiceDown", "firing")("", v)),
        "a suppressed service was notified"
    );
    let rows = server.sql("SELECT muted FROM system.alerts WHERE alertname = 'ServiceDown'").await;
    assert!(rows[0]["muted"].as_str().unwrap_or("").starts_with("suppressed:"), "{rows:?}");

    // The host is back, the service still down: now the service is told.
    server.sql("INSERT INTO hostup (ts, host, up) VALUES (now() + INTERVAL '1 millisecond', 'db-1', 1)").await;
    hook.wait_for(20, named("ServiceDown", "firing")).await.expect("the service is notified once the host is back");
    hook.wait_for(20, named("HostDown", "resolved")).await.expect("the host's recovery is told");
}

/// Issue 13, Alertmanager's API: Prometheus posts an alert to
/// `/api/v2/alerts`; it is routed to the webhook like the engine's own,
/// listed in Alertmanager's form, silenced through `/api/v2/silences`, and
/// resolved when its sender posts `endsAt` in the past.
#[tokio::test]
async fn alerts_posted_to_the_alertmanager_api_are_routed_listed_and_silenced() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_rules(tmp.path(), &rules(&hook, "1h"));
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", server.http);
    let now = chrono::Utc::now();
    let alert = |ends: chrono::DateTime<chrono::Utc>| {
        json!([{
            "labels": {"alertname": "NodeDown", "instance": "node-7:9100", "severity": "critical"},
            "annotations": {"summary": "node-7 is down"},
            "startsAt": now.to_rfc3339(),
            "endsAt": ends.to_rfc3339(),
            "generatorURL": "http://prometheus:9090/graph"
        }])
    };
    let resp =
        http.post(url("/api/v2/alerts")).json(&alert(now + chrono::Duration::minutes(5))).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let empty = http.post(url("/api/v2/alerts")).header("content-type", "application/json").send().await.expect("post");
    assert_eq!(empty.status().as_u16(), 400);
    let text = empty.text().await.expect("body");
    assert!(text.contains("the request body is empty; send JSON like [{"), "{text}");
    // As Alertmanager answers errors: a bare JSON string (amtool reads it).
    assert!(serde_json::from_str::<String>(&text).is_ok(), "{text}");
    let bogus = http.get(url("/api/v1/alerts?state=bogus")).send().await.expect("get");
    assert_eq!(bogus.status().as_u16(), 400, "an unknown state is an error, not an empty list");
    let got = hook
        .wait_for(20, |p, v| {
            p == "/oncall" && v["alerts"][0]["labels"]["alertname"] == "NodeDown" && v["status"] == "firing"
        })
        .await
        .expect("routed to the webhook");
    assert_eq!(got["alerts"][0]["annotations"]["summary"], "node-7 is down");
    // The sender's own generatorURL is passed on, not replaced by ours.
    assert_eq!(got["alerts"][0]["generatorURL"], "http://prometheus:9090/graph", "{got}");

    let listed: Value = http
        .get(url("/api/v2/alerts?filter=alertname%3D%22NodeDown%22"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let a = &listed[0];
    assert_eq!(a["labels"]["instance"], "node-7:9100", "{listed}");
    assert_eq!(a["status"]["state"], "active");
    assert_eq!(a["receivers"][0]["name"], "oncall");
    assert_eq!(a["generatorURL"], "http://prometheus:9090/graph");
    let ends = chrono::DateTime::parse_from_rfc3339(a["endsAt"].as_str().expect("endsAt")).expect("a time");
    assert_eq!(ends.timestamp(), (now + chrono::Duration::minutes(5)).timestamp(), "the sender's endsAt: {a}");
    // A rule's firing alert has no endsAt of its own: it is shown ending
    // in resolve_timeout (5 min), as Alertmanager shows one posted without
    // one, never as Go's zero time; its generatorURL is absolute.
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 95.5)").await;
    let mut rule_alert = Value::Null;
    for _ in 0..100 {
        let listed: Value = http
            .get(url("/api/v2/alerts?filter=alertname%3D%22HighCpu%22"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        rule_alert = listed[0].clone();
        if !rule_alert.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ends = chrono::DateTime::parse_from_rfc3339(rule_alert["endsAt"].as_str().expect("endsAt")).expect("a time");
    let ahead = ends.timestamp() - chrono::Utc::now().timestamp();
    assert!((240..=301).contains(&ahead), "endsAt {ahead} s ahead: {rule_alert}");
    let generator = rule_alert["generatorURL"].as_str().expect("generatorURL");
    assert!(
        generator.starts_with("http")
            && generator.ends_with(&format!("/api/v1/alerts/{}", rule_alert["fingerprint"].as_str().expect("id"))),
        "{rule_alert}"
    );
    let none: Value = http
        .get(url("/api/v2/alerts?filter=alertname%3D%22Other%22"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(none, json!([]));

    let silence = json!({
        "matchers": [{"name": "instance", "value": "node-7:9100", "isRegex": false, "isEqual": true}],
        "startsAt": now.to_rfc3339(), "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "createdBy": "amtool", "comment": "maintenance"
    });
    let made: Value =
        http.post(url("/api/v2/silences")).json(&silence).send().await.expect("silence").json().await.expect("json");
    let id = made["silenceID"].as_str().expect("silenceID").to_string();
    // Muting is decided by the engine's next round (every 100 ms).
    let mut a = Value::Null;
    for _ in 0..100 {
        let listed: Value = http.get(url("/api/v2/alerts")).send().await.expect("get").json().await.expect("json");
        a = listed
            .as_array()
            .expect("list")
            .iter()
            .find(|a| a["labels"]["alertname"] == "NodeDown")
            .cloned()
            .expect("listed");
        if a["status"]["state"] == "suppressed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a["status"]["state"], "suppressed", "{a}");
    assert_eq!(a["status"]["silencedBy"][0], id.as_str());
    let silences: Value = http.get(url("/api/v2/silences")).send().await.expect("get").json().await.expect("json");
    assert_eq!(silences[0]["id"], id.as_str());
    assert_eq!(silences[0]["status"]["state"], "active");
    assert_eq!(http.delete(url(&format!("/api/v2/silence/{id}"))).send().await.expect("delete").status().as_u16(), 200);
    let one: Value =
        http.get(url(&format!("/api/v2/silence/{id}"))).send().await.expect("get").json().await.expect("json");
    assert_eq!(one["status"]["state"], "expired");

    // An end before its start is refused, as Alertmanager refuses it.
    let resp =
        http.post(url("/api/v2/alerts")).json(&alert(now - chrono::Duration::seconds(1))).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("startsAt must be before endsAt"));
    // Resolved by its sender: an endsAt that has passed (`now` was taken
    // when the test began).
    let resp = http.post(url("/api/v2/alerts")).json(&alert(now)).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    hook.wait_for(20, |p, v| {
        p == "/oncall" && v["alerts"][0]["labels"]["alertname"] == "NodeDown" && v["status"] == "resolved"
    })
    .await
    .expect("the resolution is told");
    // Bad posts are refused with the reason.
    let resp =
        http.post(url("/api/v2/alerts")).json(&json!([{"labels": {"instance": "x"}}])).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("alert 0: needs an alertname label"));
    let resp = http
        .post(url("/api/v2/alerts"))
        .json(&json!([{"labels": {"alertname": "X"}, "generatorURL": "javascript:alert(1)"}]))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("is not an http or https URL"));
    let status: Value = http.get(url("/api/v2/status")).send().await.expect("status").json().await.expect("json");
    assert_eq!(status["cluster"]["status"], "disabled");
    let receivers: Value =
        http.get(url("/api/v2/receivers")).send().await.expect("receivers").json().await.expect("json");
    assert_eq!(receivers, json!([{"name": "backup"}, {"name": "oncall"}]));
}

/// Issue 13, on-call schedules through the binary: `GET /api/v1/oncall`
/// and `tocsin oncall --at` say who is on call and who is next, across a
/// hand-off in a time zone with daylight saving.
#[tokio::test]
async fn tocsin_oncall_says_who_is_on_call_and_who_is_next() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = rules(&hook, "1h")
        + r#"
people:
  - { name: alice, email: alice@example.com }
  - { name: bob, mobile: "13800000002" }
schedules:
  - name: primary
    location: Europe/London
    layers: [{ start: "2026-03-23T09:00", every: 1w, members: [alice, bob] }]
"#;
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    let v = get(&server, "/api/v1/oncall?at=2026-03-25T12:00:00Z").await;
    let s = &v["schedules"][0];
    assert_eq!(s["schedule"], "primary", "{v}");
    assert_eq!(s["now"]["member"], "alice");
    assert_eq!(s["now"]["email"], "alice@example.com");
    // The hand-off is Monday 09:00 London, which is 08:00 UTC after the
    // clocks went forward on 2026-03-29.
    assert_eq!(s["next"]["member"], "bob");
    assert_eq!(s["next"]["from"], "2026-03-30T08:00:00.000Z");
    let (ok, out, err) = cli(&server, &["oncall", "--at", "2026-03-30T08:30:00+00:00"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("primary")).expect("a row for primary");
    assert!(line.contains("bob") && line.contains("alice"), "bob now, alice next: {out}");
    let rows = server.sql("SELECT schedule, since, next FROM system.oncall").await;
    assert_eq!(rows[0]["schedule"], "primary", "{rows:?}");
    assert!(rows[0]["since"].as_str().is_some_and(|s| s.get(13..19) == Some(":00:00")), "since a hand-off: {rows:?}");
    assert!(rows[0]["next"] == "alice" || rows[0]["next"] == "bob", "{rows:?}");
}

/// Issue 13, schedules through the API: an override posted to
/// `/api/v1/oncall/overrides` puts its member on call at once, survives a
/// `kill -9`, and is gone when deleted; bad overrides name the problem.
#[tokio::test]
async fn an_oncall_override_made_through_the_api_takes_over_and_persists() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = rules(&hook, "1h")
        + r#"
people:
  - { name: alice, email: alice@example.com }
  - { name: bob, email: bob@example.com }
schedules:
  - name: primary
    layers: [{ start: "2026-01-05T09:00", every: 1000w, members: [alice, bob] }]
"#;
    let mut server = TestServer::start_with_rules(tmp.path(), &yaml);
    let now = |server: &TestServer| {
        let server = server.http;
        async move {
            let v: Value =
                reqwest::get(format!("http://{server}/api/v1/oncall")).await.expect("get").json().await.expect("json");
            v["schedules"][0]["now"]["member"].as_str().unwrap_or("").to_string()
        }
    };
    assert_eq!(now(&server).await, "alice", "the layer's first member, for 1000 weeks");
    let (status, body) = post(
        &server,
        "/api/v1/oncall/overrides",
        json!({"schedule": "primary", "member": "bob", "duration": "8h", "createdBy": "ann", "comment": "swap"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    assert_eq!(now(&server).await, "bob");
    for (bad, says) in [
        (json!({"schedule": "nope", "member": "bob", "duration": "1h", "createdBy": "ann"}), "no schedule \"nope\""),
        (
            json!({"schedule": "primary", "member": "carol", "duration": "1h", "createdBy": "ann"}),
            "no person \"carol\"",
        ),
        (
            json!({"schedule": "primary", "member": "bob", "startsAt": "2000-01-01T00:00:00Z", "endsAt": "2001-01-01T00:00:00Z", "createdBy": "ann"}),
            "in the past",
        ),
        (json!({"schedule": "primary", "member": "bob", "createdBy": "ann"}), "exactly one of endsAt and duration"),
    ] {
        let (status, body) = post(&server, "/api/v1/oncall/overrides", bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap_or("").contains(says), "{says}: {body}");
    }
    outbox_empty(&server).await;
    server.kill9();
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    assert_eq!(now(&server).await, "bob", "the override survived kill -9");
    let list = get(&server, "/api/v1/oncall/overrides").await;
    assert_eq!(list["overrides"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["overrides"][0]["createdBy"], "ann");
    let (ok, out, err) = cli(&server, &["oncall", "override", "list"]);
    assert!(ok && out.contains(&id) && out.contains("bob"), "{out}{err}");
    let (ok, out, err) = cli(&server, &["oncall", "override", "remove", &id]);
    assert!(ok, "{out}{err}");
    assert_eq!(now(&server).await, "alice");
    let resp = reqwest::Client::new()
        .delete(format!("http://{}/api/v1/oncall/overrides/{id}", server.http))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 404);
    let (ok, out, err) = cli(
        &server,
        &["oncall", "override", "add", "--schedule", "primary", "--member", "bob", "--duration", "1h", "--by", "ann"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("bob on call in primary"), "{out}");
    assert_eq!(now(&server).await, "bob");
    // Bob leaves the team: his override is ignored and the layers decide
    // (it paged nobody while `tocsin oncall` still named him).
    let without_bob =
        yaml.replace("  - { name: bob, email: bob@example.com }\n", "").replace("[alice, bob]", "[alice]");
    assert_ne!(without_bob, yaml);
    std::fs::write(tmp.path().join("rules.yml"), &without_bob).expect("write");
    let (status, body) = post(&server, "/api/v1/rules/reload", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(now(&server).await, "alice");
    // Without --by and without $USER (cron, containers, systemd units):
    // the process's user acts (it was a usage error).
    let out = Command::new(BIN)
        .args(["oncall", "override", "add", "--schedule", "primary", "--member", "alice", "--duration", "1h"])
        .args(["--http-addr", &server.http.to_string()])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("run cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = reqwest::get(format!("http://{}/api/v1/oncall/overrides", server.http))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let by: Vec<&str> =
        listed["overrides"].as_array().expect("list").iter().filter_map(|o| o["createdBy"].as_str()).collect();
    assert_eq!(by.len(), 2, "{listed}");
    assert!(by.iter().all(|b| !b.trim().is_empty()), "{listed}");
}

/// Issue 13, per-device thresholds from a table: a `threshold_critical`
/// column gives each row its own number; a new row in the table changes
/// that host's threshold at the next evaluation, without a reload.
#[tokio::test]
async fn a_threshold_row_in_a_table_overrides_the_rule_for_its_host() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"
groups:
  - name: disks
    interval: 200ms
    rules:
      - alert: DiskFull
        sql: >-
          SELECT d.host, last_value(d.used ORDER BY d.ts) AS value, max(t.critical) AS threshold_critical
          FROM disk d LEFT JOIN (SELECT host, last_value(critical ORDER BY ts) AS critical FROM thresholds GROUP BY host) t
          ON t.host = d.host GROUP BY d.host
        thresholds: {{ critical: "> 90" }}
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 0s
receivers:
  - name: oncall
    webhook: {{ url: "http://{addr}/oncall" }}
"#,
        addr = hook.addr
    );
    let server = TestServer::start_with_rules(tmp.path(), &yaml);
    server.sql("INSERT INTO thresholds (ts, host, critical) VALUES (now(), 'a', 80)").await;
    server.sql("INSERT INTO disk (ts, host, used) VALUES (now(), 'a', 85), (now(), 'b', 85)").await;
    wait_state(&server, "a", "firing").await;
    settled(&server).await;
    assert_eq!(state_of(&server, "b").await, "none", "b keeps the rule's 90");
    // Raise a's threshold to 88 with a newer row: it resolves, no reload.
    server.sql("INSERT INTO thresholds (ts, host, critical) VALUES (now() + INTERVAL '1 second', 'a', 88)").await;
    wait_state(&server, "a", "resolved").await;
    assert_eq!(server.metric("tocsin_rule_reloads_total").await, 0.0);
    let labels = get(&server, "/api/v1/alerts?host=a").await;
    assert!(labels["alerts"][0]["labels"].get("threshold_critical").is_none(), "not a label: {labels}");
}

/// Telegraf writes into `telegraf`: a rule group that names no database
/// reads it once `[alerting] database` says so, and without that setting the
/// rule's error says where the table is instead of only "not found".
#[tokio::test]
async fn rules_without_a_database_read_the_configured_default() {
    let hook = Webhook::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let rules_file = tmp.path().join("rules.yml");
    std::fs::write(&rules_file, rules(&hook, "1h")).expect("write rules");
    let config = tmp.path().join("tocsin.toml");
    std::fs::write(&config, "[alerting]\ndatabase = \"telegraf\"\n").expect("write config");
    let rules_arg = rules_file.to_str().expect("utf-8");
    let write = |server: &TestServer| {
        let url = format!("http://{}/write?db=telegraf", server.http);
        async move {
            let resp = reqwest::Client::new().post(url).body("cpu,host=web-9 usage=95").send().await.expect("write");
            assert_eq!(resp.status().as_u16(), 204);
        }
    };

    // Without the setting: public has no cpu table, and the error says where it is.
    let plain = TestServer::start_in(&tmp.path().join("plain"), &["--rules", rules_arg]);
    write(&plain).await;
    let mut error = String::new();
    for _ in 0..100 {
        let v = get(&plain, "/api/v1/rules").await;
        error = v["rules"][0]["error"].as_str().unwrap_or("").to_string();
        // An evaluation before the write landed finds no table anywhere.
        if error.contains("has a table") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(error.contains("database telegraf has a table \"cpu\""), "{error}");
    assert_eq!(state_of(&plain, "web-9").await, "none");
    drop(plain);

    let server = TestServer::start_in(
        &tmp.path().join("data"),
        &["--rules", rules_arg, "--config", config.to_str().expect("utf-8")],
    );
    write(&server).await;
    wait_state(&server, "web-9", "firing").await;
    let v = get(&server, "/api/v1/rules").await;
    assert_eq!(v["rules"][0]["error"], Value::Null, "{v}");

    // A database name that cannot be one is refused at start, naming the key.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[alerting]\ndatabase = \"no/slash\"\n").expect("write config");
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("bad"))
        .args(["--config", bad.to_str().expect("utf-8"), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("alerting.database"), "{stderr}");
}
