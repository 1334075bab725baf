//! Prometheus' HTTP query API over data written as remote_write writes it.
//! The side-by-side comparison with Prometheus itself (108 expressions,
//! instant and range) is in tests/interop/test_prometheus_remote_write.py.

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

    // Errors in Prometheus' envelope.
    let (status, v) = get(&server, "/api/v1/query", &[("query", "sum(")]).await;
    assert_eq!((status, v["status"].as_str(), v["errorType"].as_str()), (400, Some("error"), Some("bad_data")), "{v}");
    let (status, v) = get(&server, "/api/v1/query", &[("query", "rate(up[5m:1m])")]).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("subqueries are not supported"), "{v}");
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
