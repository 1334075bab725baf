//! Write through every gRPC method, read through HTTP and the CLI.

use serde_json::json;
use tocsin_proto::v1::{WriteLogsRequest, WriteRequest, WriteSeriesRequest, write_request::Payload};

use crate::server::{BIN, TestServer};
use crate::util::*;

#[tokio::test]
async fn metrics_and_logs_written_over_grpc_are_queryable_over_http() {
    let server = TestServer::start();
    let mut client = server.client().await;

    // Prometheus-style series.
    let resp = client
        .write_series(WriteSeriesRequest {
            database: String::new(),
            series: vec![
                series("http_requests", &[("job", "api"), ("code", "200")], vec![T0, T0 + 10 * SEC], vec![10.0, 15.0]),
                series("http_requests", &[("job", "api"), ("code", "500")], vec![T0], vec![f64::NAN]),
                series("up", &[("job", "api")], vec![T0], vec![1.0]),
            ],
        })
        .await
        .expect("write_series")
        .into_inner();
    assert_eq!(resp.accepted_rows, 4);
    assert!(resp.rejected.is_empty(), "{:?}", resp.rejected);

    // Influx-style rows with several typed fields.
    let resp = client
        .write_rows(rows(
            "cpu",
            vec![
                row_series(
                    &[("hostname", "host_0"), ("region", "eu")],
                    vec![T0, T0 + 10 * SEC, T0 + 20 * SEC],
                    vec![i64s("usage_user", vec![10, 95, 30]), f64s("usage_system", vec![1.5, 2.5, 3.5])],
                ),
                row_series(
                    &[("hostname", "host_1"), ("region", "us")],
                    vec![T0, T0 + 10 * SEC],
                    vec![i64s("usage_user", vec![50, 60]), f64s("usage_system", vec![0.5, 0.25])],
                ),
            ],
        ))
        .await
        .expect("write_rows")
        .into_inner();
    assert_eq!(resp.accepted_rows, 5);

    // Logs.
    let resp = client
        .write_logs(WriteLogsRequest {
            database: String::new(),
            stream: String::new(),
            events: vec![
                log(T0, "gateway", "INFO", "request accepted", "t-1"),
                log(T0 + SEC, "billing", "ERROR", "card declined", "t-1"),
                log(T0 + 2 * SEC, "billing", "info", "retry scheduled", ""),
            ],
        })
        .await
        .expect("write_logs")
        .into_inner();
    assert_eq!(resp.accepted_rows, 3);

    // Client streaming: two messages of different kinds.
    let msgs = vec![
        WriteRequest {
            payload: Some(Payload::Series(WriteSeriesRequest {
                database: String::new(),
                series: vec![series("up", &[("job", "db")], vec![T0], vec![0.0])],
            })),
        },
        WriteRequest {
            payload: Some(Payload::Rows(rows(
                "cpu",
                vec![row_series(
                    &[("hostname", "host_1"), ("region", "us")],
                    vec![T0 + 20 * SEC],
                    vec![i64s("usage_user", vec![70])],
                )],
            ))),
        },
    ];
    let resp = client.write_stream(futures::stream::iter(msgs)).await.expect("write_stream").into_inner();
    assert_eq!(resp.accepted_rows, 2);

    // Exact values back over HTTP, timestamps as RFC 3339.
    let got = server.sql("SELECT ts, code, value FROM http_requests ORDER BY ts, code").await;
    assert_eq!(
        got,
        vec![
            json!({"ts": "2023-11-14T22:13:20+00:00", "code": "200", "value": 10.0}),
            json!({"ts": "2023-11-14T22:13:20+00:00", "code": "500", "value": null}),
            json!({"ts": "2023-11-14T22:13:30+00:00", "code": "200", "value": 15.0}),
        ],
        "NaN has no JSON form and is written as null"
    );
    let nan = server.sql("SELECT count(*) AS n FROM http_requests WHERE isnan(value)").await;
    assert_eq!(nan, vec![json!({"n": 1})], "NaN is stored as NaN");

    let got = server
        .sql("SELECT hostname, max(usage_user) AS m, sum(usage_system) AS s FROM cpu GROUP BY hostname ORDER BY hostname")
        .await;
    assert_eq!(
        got,
        vec![json!({"hostname": "host_0", "m": 95, "s": 7.5}), json!({"hostname": "host_1", "m": 70, "s": 0.75})]
    );

    // Lastpoint per series.
    let got = server
        .sql(
            "SELECT hostname, usage_user FROM (SELECT hostname, usage_user, \
             row_number() OVER (PARTITION BY hostname ORDER BY ts DESC) AS rn FROM cpu) WHERE rn = 1 ORDER BY hostname",
        )
        .await;
    assert_eq!(
        got,
        vec![json!({"hostname": "host_0", "usage_user": 30}), json!({"hostname": "host_1", "usage_user": 70})]
    );

    // time_bucket alias and date_bin agree.
    let a = server.sql("SELECT time_bucket(INTERVAL '1 minute', ts) AS b, count(*) AS n FROM cpu GROUP BY b").await;
    let b = server.sql("SELECT date_bin(INTERVAL '1 minute', ts) AS b, count(*) AS n FROM cpu GROUP BY b").await;
    assert_eq!(a, b);
    assert_eq!(a, vec![json!({"b": "2023-11-14T22:13:00+00:00", "n": 6})]);

    // A join between tables.
    let got = server
        .sql("SELECT u.job, u.value AS up, h.value AS reqs FROM up u JOIN http_requests h ON u.job = h.job AND u.ts = h.ts AND h.code = '200'")
        .await;
    assert_eq!(got, vec![json!({"job": "api", "up": 1.0, "reqs": 10.0})]);

    // Logs: levels normalised, attributes as JSON, trace ids.
    let got =
        server.sql("SELECT service, level, message, attributes FROM logs WHERE trace_id = 't-1' ORDER BY ts").await;
    assert_eq!(
        got,
        vec![
            json!({"service": "gateway", "level": "info", "message": "request accepted", "attributes": "{\"region\":\"eu\"}"}),
            json!({"service": "billing", "level": "error", "message": "card declined", "attributes": "{\"region\":\"eu\"}"}),
        ]
    );
    let got = server.sql("SELECT count(*) AS n FROM logs WHERE message LIKE '%retry%' AND trace_id IS NULL").await;
    assert_eq!(got, vec![json!({"n": 1})]);

    // now() and intervals: everything above is older than a minute.
    let got = server.sql("SELECT count(*) AS n FROM cpu WHERE ts > now() - INTERVAL '1 minute'").await;
    assert_eq!(got, vec![json!({"n": 0})]);

    // SHOW TABLES and information_schema list our tables.
    let tables = server
        .sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
        .await;
    assert_eq!(
        tables,
        vec![
            json!({"table_name": "cpu"}),
            json!({"table_name": "http_requests"}),
            json!({"table_name": "logs"}),
            json!({"table_name": "up"})
        ]
    );
    let (status, _) = server.sql_raw("SHOW TABLES").await;
    assert_eq!(status, 200);

    // The CLI prints an aligned table, and CSV on request.
    let out = std::process::Command::new(BIN)
        .args(["sql", "SELECT hostname, usage_user FROM cpu WHERE ts = '2023-11-14T22:13:30Z' ORDER BY hostname"])
        .args(["--http-addr", &server.http.to_string()])
        .output()
        .expect("run CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("| hostname | usage_user |"), "{text}");
    assert!(text.contains("| host_0   | 95         |"), "{text}");
    assert!(text.contains("| host_1   | 60         |"), "{text}");
    assert!(text.trim_end().ends_with("2 rows"), "{text}");
    let out = std::process::Command::new(BIN)
        .args(["sql", "SELECT hostname FROM cpu WHERE usage_user > 90", "--format", "csv"])
        .env("TOCSIN_HTTP_ADDR", server.http.to_string())
        .output()
        .expect("run CLI");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hostname\nhost_0\n");
    let out = std::process::Command::new(BIN)
        .args(["sql", "SELECT * FROM missing_table", "--http-addr", &server.http.to_string()])
        .output()
        .expect("run CLI");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing_table"));
    // Piped into `head`, a long answer ends quietly (it panicked with
    // "failed printing to stdout: Broken pipe"), as other Unix tools do.
    let piped = format!(
        "{BIN} sql --http-addr {} 'SELECT value, value * 2 AS twice FROM generate_series(1, 100000)' | head -c 1 >/dev/null",
        server.http
    );
    let out = std::process::Command::new("sh").args(["-c", &piped]).output().expect("run CLI through a pipe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    // Control characters in text cells are shown escaped, never as a row.
    let out = std::process::Command::new(BIN)
        .args(["sql", "SELECT concat('a', chr(10), '| fake |') AS v", "--http-addr", &server.http.to_string()])
        .output()
        .expect("run CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a\\n| fake |") && text.trim_end().ends_with("1 row"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("fake")).count(), 1, "{text}");
}

#[tokio::test]
async fn sql_insert_writes_through_the_wal_and_creates_tables() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start_in(&tmp.path().join("data"), &[]);
    let got = server
        .sql("INSERT INTO probes (ts, probe, component, latency_ms, ok) VALUES ('2024-05-01T10:00:00Z', 'p1', 'gw', 12.5, true), ('2024-05-01T10:00:01Z', 'p1', 'db', 3, false)")
        .await;
    assert_eq!(got, vec![json!({"count": 2})]);
    let cols = server
        .sql("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'probes' ORDER BY ordinal_position")
        .await;
    assert_eq!(
        cols,
        vec![
            json!({"column_name": "ts", "data_type": "Timestamp(ns, \"UTC\")"}),
            json!({"column_name": "probe", "data_type": "Dictionary(Int32, Utf8)"}),
            json!({"column_name": "component", "data_type": "Dictionary(Int32, Utf8)"}),
            json!({"column_name": "latency_ms", "data_type": "Float64"}),
            json!({"column_name": "ok", "data_type": "Boolean"}),
        ]
    );
    // New columns on an existing table.
    server.sql("INSERT INTO probes (ts, probe, component, latency_ms, hop) VALUES ('2024-05-01T10:00:02Z', 'p1', 'billing', 40, 3)").await;
    let got = server.sql("SELECT component, latency_ms, ok, hop FROM probes ORDER BY ts").await;
    assert_eq!(
        got,
        vec![
            json!({"component": "gw", "latency_ms": 12.5, "ok": true, "hop": null}),
            json!({"component": "db", "latency_ms": 3.0, "ok": false, "hop": null}),
            json!({"component": "billing", "latency_ms": 40.0, "ok": null, "hop": 3}),
        ]
    );
    // A new table without a time column is refused with a reason.
    let (status, body) = server.sql_raw("INSERT INTO t2 (host, v) VALUES ('a', 1)").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap_or_default().contains("ts column"), "{body}");
    // The inserted rows survive a crash: they went through the WAL.
    let dir = server.data_dir.clone();
    server.kill9();
    let server = TestServer::start_in(&dir, &[]);
    let got = server.sql("SELECT count(*) AS n FROM probes").await;
    assert_eq!(got, vec![json!({"n": 3})]);
}
