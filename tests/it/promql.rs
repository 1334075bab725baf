//! Prometheus' HTTP query API over data written as remote_write writes it,
//! and rules written in PromQL. The side-by-side comparison with Prometheus
//! itself (expressions, instant and range, and one rule file evaluated by
//! both) is in tests/interop/test_prometheus_remote_write.py.

use serde_json::{Value, json};
use tocsin_proto::v1::WriteSeriesRequest;

use crate::server::TestServer;
use crate::util::*;

async fn get(server: &TestServer, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let resp =
        reqwest::Client::new().get(format!("http://{}{path}", server.http)).query(params).send().await.expect("get");
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

#[tokio::test]
async fn promql_instant_and_range_queries_series_and_labels() {
    let server = TestServer::start();
    let mut client = server.client().await;
    // Two counters scraped every 15 s for 5 minutes: 10/s and 2/s.
    let ts: Vec<i64> = (0..=20).map(|i| T0 + i * 15 * SEC).collect();
    let a: Vec<f64> = (0..=20).map(|i| i as f64 * 150.0).collect();
    let b: Vec<f64> = (0..=20).map(|i| i as f64 * 30.0).collect();
    let req = WriteSeriesRequest {
        database: String::new(),
        series: vec![
            series("http_requests_total", &[("job", "api"), ("instance", "a:80")], ts.clone(), a),
            series("http_requests_total", &[("job", "api"), ("instance", "b:80")], ts.clone(), b),
            series("up", &[("job", "api"), ("instance", "a:80")], ts.clone(), vec![1.0; 21]),
        ],
    };
    client.write_series(req).await.expect("write");
    let at = |secs: i64| format!("{}", (T0 / SEC) + secs);

    let (status, v) =
        get(&server, "/api/v1/query", &[("query", "sum by (job) (rate(http_requests_total[1m]))"), ("time", &at(300))])
            .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"], json!([{"metric": {"job": "api"}, "value": [T0 / SEC + 300, "12"]}]), "{v}");

    let (_, v) = get(
        &server,
        "/api/v1/query_range",
        &[
            ("query", "rate(http_requests_total{instance=\"b:80\"}[1m])"),
            ("start", &at(120)),
            ("end", &at(180)),
            ("step", "30s"),
        ],
    )
    .await;
    assert_eq!(v["data"]["resultType"], "matrix", "{v}");
    let values = &v["data"]["result"][0]["values"];
    assert_eq!(values.as_array().map(Vec::len), Some(3), "{v}");
    assert!(values.as_array().expect("values").iter().all(|p| p[1] == "2"), "{v}");
    assert_eq!(v["data"]["result"][0]["metric"], json!({"instance": "b:80", "job": "api"}), "rate drops the name");

    // Scalars, and the instant vector selector's 5-minute lookback.
    let (_, v) = get(&server, "/api/v1/query", &[("query", "scalar(count(up)) * 2"), ("time", &at(300))]).await;
    assert_eq!(v["data"], json!({"resultType": "scalar", "result": [T0 / SEC + 300, "2"]}), "{v}");
    let (_, v) = get(&server, "/api/v1/query", &[("query", "up"), ("time", &at(300 + 301))]).await;
    assert_eq!(v["data"]["result"], json!([]), "past the lookback: {v}");

    // Series and labels.
    let window = [("start", at(0)), ("end", at(300))];
    let mut params: Vec<(&str, &str)> = window.iter().map(|(k, v)| (*k, v.as_str())).collect();
    params.push(("match[]", "http_requests_total{instance=~\"a.*\"}"));
    let (_, v) = get(&server, "/api/v1/series", &params).await;
    assert_eq!(v["data"], json!([{"__name__": "http_requests_total", "instance": "a:80", "job": "api"}]), "{v}");
    let (_, v) = get(&server, "/api/v1/labels", &[]).await;
    assert_eq!(v["data"], json!(["__name__", "instance", "job"]), "{v}");
    let (_, v) = get(&server, "/api/v1/label/__name__/values", &[]).await;
    assert_eq!(v["data"], json!(["http_requests_total", "up"]), "{v}");
    let (_, v) = get(&server, "/api/v1/label/instance/values", &[]).await;
    assert_eq!(v["data"], json!(["a:80", "b:80"]), "{v}");
    let (status, v) = get(&server, "/api/v1/label/a-b/values", &[]).await;
    assert_eq!(status, 400, "not a label name: {v}");
    let (status, v) = get(&server, "/api/v1/status/buildinfo", &[]).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("success")), "{v}");

    // Line-protocol fields are metrics `measurement_field` (a boolean 1 or
    // 0); a table without a `value` field is no metric of its own name.
    let lp = format!("cpu,host=a usage_user=10,usage_system=5i,ok=true,note=\"x\" {}\n", T0 + 300 * SEC);
    let resp =
        reqwest::Client::new().post(format!("http://{}/write", server.http)).body(lp).send().await.expect("write");
    assert_eq!(resp.status().as_u16(), 204);
    for (q, want) in [("cpu_usage_user", "10"), ("cpu_usage_system * 2", "10"), ("cpu_ok", "1")] {
        let (_, v) = get(&server, "/api/v1/query", &[("query", q), ("time", &at(300))]).await;
        assert_eq!(v["data"]["result"][0]["value"][1], want, "{q}: {v}");
    }
    for q in ["cpu", "cpu_note", "cpu_value", "cpu_ts"] {
        let (_, v) = get(&server, "/api/v1/query", &[("query", q), ("time", &at(300))]).await;
        assert_eq!(v["data"]["result"], json!([]), "{q}: {v}");
    }
    let (_, v) = get(&server, "/api/v1/label/__name__/values", &[]).await;
    assert_eq!(v["data"], json!(["cpu_ok", "cpu_usage_system", "cpu_usage_user", "http_requests_total", "up"]), "{v}");

    // Two elements of one label set are an error, not one answer (review:
    // an alert rule on it fired once, with one of the two values).
    let lp = format!("disk_a,host=h1 value=95 {t}\ndisk_b,host=h1 value=99 {t}\n", t = T0 + 300 * SEC);
    let resp =
        reqwest::Client::new().post(format!("http://{}/write", server.http)).body(lp).send().await.expect("write");
    assert_eq!(resp.status().as_u16(), 204);
    let (status, v) =
        get(&server, "/api/v1/query", &[("query", "{__name__=~\"disk_(a|b)\"} * 1 > 90"), ("time", &at(300))]).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("same labelset"), "{v}");
    let (status, v) = get(
        &server,
        "/api/v1/query_range",
        &[("query", "{__name__=~\"disk_(a|b)\"} * 1"), ("start", &at(240)), ("end", &at(300)), ("step", "30s")],
    )
    .await;
    assert_eq!(status, 422, "{v}");

    // Errors in Prometheus' envelope.
    let (status, v) = get(&server, "/api/v1/query", &[("query", "sum(")]).await;
    assert_eq!((status, v["status"].as_str(), v["errorType"].as_str()), (400, Some("error"), Some("bad_data")), "{v}");
    // Subqueries, selectors without a metric name, and their bounds.
    let (_, v) = get(
        &server,
        "/api/v1/query",
        &[("query", "max_over_time(rate(http_requests_total{instance=\"b:80\"}[1m])[2m:30s])"), ("time", &at(300))],
    )
    .await;
    assert_eq!(
        v["data"]["result"],
        json!([{"metric": {"instance": "b:80", "job": "api"}, "value": [T0 / SEC + 300, "2"]}]),
        "{v}"
    );
    let (_, v) = get(&server, "/api/v1/query", &[("query", "count({job=\"api\"})"), ("time", &at(300))]).await;
    assert_eq!(v["data"]["result"][0]["value"][1], "3", "two counters and up: {v}");
    let (_, v) =
        get(&server, "/api/v1/series", &[("match[]", "{__name__=~\"u.\"}"), ("start", &at(0)), ("end", &at(300))])
            .await;
    assert_eq!(v["data"], json!([{"__name__": "up", "instance": "a:80", "job": "api"}]), "{v}");
    let (status, v) = get(&server, "/api/v1/query", &[("query", "max_over_time(up[1d:1ms])")]).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("subqueries would be evaluated at more than"), "{v}");
    let (status, v) = get(&server, "/api/v1/query", &[("query", "{job=~\".*\"}")]).await;
    assert_eq!(status, 400, "a selector matching everything: {v}");
    let (status, v) =
        get(&server, "/api/v1/query_range", &[("query", "up"), ("start", "0"), ("end", "100000"), ("step", "1")]).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("exceeded maximum resolution"), "{v}");
    // Hostile review: 3,000 parentheses overflowed the evaluator's stack;
    // times past i64 overflowed; permissions are 403.
    let deep = format!("{}1{}", "(".repeat(3000), ")".repeat(3000));
    let (status, v) = get(&server, "/api/v1/query", &[("query", &deep)]).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("levels deep"), "{v}");
    let (status, v) = get(&server, "/api/v1/query", &[("query", "up offset -1d"), ("time", "1e300")]).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) =
        get(&server, "/api/v1/query_range", &[("query", "up"), ("start", "-9e15"), ("end", "9e15"), ("step", "1d")])
            .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = get(&server, "/api/v1/query", &[("query", "up"), ("time", "yesterday")]).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("invalid parameter \"time\""), "{v}");
}

/// A rules file as Prometheus writes them (`expr`, a recording rule, a
/// `severity` label, Go template functions), loaded by `tocsin serve
/// --rules`: the alert fires with its labels and annotations, the recorded
/// metric is a table SQL and PromQL read, and a rule that fails at run time
/// shows in its health.
#[tokio::test]
async fn prometheus_rule_files_alert_and_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rules = r#"
groups:
  - name: node
    interval: 1s
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
        labels: { recorded: "yes" }
      - alert: JobDown
        expr: job:up:sum < 2
        labels: { severity: warning }
        annotations:
          summary: "{{ $labels.job }} has {{ $value }} of 2 targets up ({{ humanizePercentage 0.5 }})"
      - alert: Broken
        expr: up / on() group_left() up
"#;
    let server = TestServer::start_with_rules(tmp.path(), rules);
    let mut client = server.client().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as i64;
    let req = WriteSeriesRequest {
        database: String::new(),
        series: vec![
            series("up", &[("job", "api"), ("instance", "a:80")], vec![now], vec![1.0]),
            series("up", &[("job", "api"), ("instance", "b:80")], vec![now], vec![0.0]),
        ],
    };
    client.write_series(req).await.expect("write");
    let rows = server
        .sql_until("SELECT job, recorded, value FROM \"job:up:sum\" ORDER BY ts DESC LIMIT 1", |r| !r.is_empty())
        .await;
    assert_eq!(rows, [json!({"job": "api", "recorded": "yes", "value": 1.0})]);
    let (_, v) = get(&server, "/api/v1/query", &[("query", "job:up:sum")]).await;
    assert_eq!(
        v["data"]["result"][0]["metric"],
        json!({"__name__": "job:up:sum", "job": "api", "recorded": "yes"}),
        "{v}"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let alerts = loop {
        let (_, v) = get(&server, "/api/v1/alerts", &[("state", "firing")]).await;
        match v["alerts"].as_array() {
            Some(a) if !a.is_empty() => break a.clone(),
            _ if std::time::Instant::now() > deadline => panic!("no alert fired: {v}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts[0]["labels"],
        json!({"alertname": "JobDown", "job": "api", "recorded": "yes", "severity": "warning"}),
        "{alerts:?}"
    );
    assert_eq!(alerts[0]["annotations"]["summary"], "api has 1 of 2 targets up (50%)");
    // `up / on() group_left() up` matches many to many: an error at run
    // time, shown in the rule's health.
    let health: Value =
        reqwest::get(format!("http://{}/api/v1/rules", server.http)).await.expect("rules").json().await.expect("json");
    let text = health.to_string();
    assert!(text.contains("Broken") && text.contains("many"), "{text}");

    // Review: a recording rule's failure was in the log only, and one named
    // after a table of events wrote metric rows into it.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/write", server.http))
        .body("events,host=a msg=\"hello\",code=3i\n")
        .send()
        .await
        .expect("write");
    assert_eq!(resp.status().as_u16(), 204);
    let reload = |yaml: String| {
        let path = tmp.path().join("rules.yml");
        let http = server.http;
        async move {
            std::fs::write(path, yaml).expect("write rules");
            let r =
                reqwest::Client::new().post(format!("http://{http}/api/v1/rules/reload")).send().await.expect("reload");
            (r.status().as_u16(), r.text().await.expect("text"))
        }
    };
    let with = |extra: &str| format!("{rules}  - name: rec\n    interval: 1s\n    rules:\n{extra}");
    let (status, body) = reload(with("      - { record: events, expr: vector(1) }\n")).await;
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, v) = get(&server, "/api/v1/rules", &[]).await;
        let err =
            v["rules"].as_array().and_then(|r| r.iter().find(|r| r["rule"] == "events")).map(|r| r["error"].clone());
        match err {
            Some(Value::String(e)) => {
                assert!(e.contains("holds no metric"), "{e}");
                break;
            }
            _ if std::time::Instant::now() > deadline => panic!("no error shown for the recording rule: {v}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    assert_eq!(server.sql("SELECT count(*) AS n FROM events").await, [json!({"n": 1})], "nothing written into it");
    // Label values written as templates would merge every alert into one.
    let (status, body) =
        reload(with("      - { alert: Down, expr: up == 0, labels: { instance: \"{{ $labels.instance }}\" } }\n"))
            .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is a template"), "{body}");
}
