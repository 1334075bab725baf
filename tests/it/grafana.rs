//! The shipped Grafana dashboards (docs/grafana/dashboards/*.json): every
//! panel's SQL, with the Flight SQL plugin's macros expanded as the plugin
//! expands them, runs over Flight SQL (as Grafana sends it, with the
//! `database` header and a viewer's token, as the plugin's token setting
//! sends it) against a server with `--auth` holding TSBS-like cpu data and
//! a fired alert, and returns rows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use serde_json::Value;
use tonic::transport::Channel;

use crate::server::TestServer;
use crate::webhook::Webhook;

/// RFC 3339 in UTC, as the plugin formats the dashboard range.
fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).expect("time").format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The plugin's expansions: `$__timeFilter(c)` (Grafana's SQL macros) and
/// `$__dateBin(c)` (the plugin's own, with the panel interval in seconds).
fn expand(sql: &str, from: i64, to: i64, interval_s: i64) -> String {
    let mut out = sql.to_string();
    while let Some(start) = out.find("$__") {
        let open = out[start..].find('(').map(|i| start + i).expect("macro (");
        let close = out[open..].find(')').map(|i| open + i).expect("macro )");
        let (name, arg) = (&out[start + 3..open], out[open + 1..close].trim().to_string());
        let text = match name {
            "timeFilter" => format!("{arg} >= '{}' AND {arg} <= '{}'", rfc3339(from), rfc3339(to)),
            "dateBin" => format!("date_bin(interval '{interval_s} second', {arg}, timestamp '1970-01-01T00:00:00Z')"),
            other => panic!("macro {other} is not one the docs promise"),
        };
        out.replace_range(start..=close, &text);
    }
    out
}

async fn run(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> usize {
    let info = c.execute(sql.to_string(), None).await.unwrap_or_else(|e| panic!("{sql}\n-> {e}"));
    let mut rows = 0;
    for ep in info.endpoint {
        let ticket = ep.ticket.expect("ticket");
        let batches: Vec<RecordBatch> = c.do_get(ticket).await.expect("do_get").try_collect().await.expect("read");
        rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
    }
    rows
}

#[tokio::test]
async fn every_dashboard_query_runs_and_returns_rows() {
    let hook = Webhook::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"
groups:
  - name: hosts
    interval: 200ms
    rules:
      - alert: HighCpu
        sql: SELECT hostname, max(usage_user) AS value FROM cpu WHERE ts > now() - INTERVAL '10 minutes' GROUP BY hostname
        thresholds: {{ critical: "> 95" }}
route:
  receiver: oncall
  group_by: [alertname]
  group_wait: 0s
receivers:
  - name: oncall
    webhook: {{ url: "http://{}/hook" }}
"#,
        hook.addr
    );
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, &yaml).expect("rules");
    let server = TestServer::start_in(&dir.path().join("data"), &["--auth", "--rules", rules.to_str().expect("utf-8")])
        .with_admin_token();
    let out = std::process::Command::new(crate::server::BIN)
        .args(["token", "create", "--role", "viewer", "--description", "grafana", "--http-addr"])
        .arg(server.http.to_string())
        .env("TOCSIN_TOKEN", server.token.as_deref().expect("admin token"))
        .output()
        .expect("tocsin token create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let viewer = String::from_utf8_lossy(&out.stdout).lines().last().expect("token").trim().to_string();
    // An hour of 10-second cpu samples for 5 hosts, ending now; host_4 runs hot.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    let mut values = Vec::new();
    for step in 0..360 {
        for h in 0..5 {
            let user = if h == 4 && step > 350 { 99 } else { (step * 7 + h * 13) % 90 };
            values.push(format!(
                "(to_timestamp({}), 'host_{h}', 'eu-{}', {user}, {}, {}, {})",
                now - 3600 + step * 10,
                h % 2,
                (step + h) % 20,
                100 - user,
                step % 5
            ));
        }
    }
    server
        .sql(&format!(
            "INSERT INTO cpu (ts, hostname, region, usage_user, usage_system, usage_idle, usage_iowait) VALUES {}",
            values.join(", ")
        ))
        .await;
    // The alert fires and its notification is recorded.
    server
        .sql_until("SELECT count(*) AS n FROM system.notifications", |r| {
            r.first().and_then(|x| x["n"].as_i64()).unwrap_or(0) > 0
        })
        .await;

    let channel =
        Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await.expect("connect");
    let mut anonymous = FlightSqlServiceClient::new(channel.clone());
    assert!(anonymous.execute("SELECT 1".into(), None).await.is_err(), "no token, no query");
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("database", "public");
    client.set_token(viewer);
    for file in ["host-overview.json", "alerts-overview.json"] {
        let path = format!("{}/docs/grafana/dashboards/{file}", env!("CARGO_MANIFEST_DIR"));
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
        let panels = dash["panels"].as_array().expect("panels");
        assert!(panels.len() >= 4, "{file}");
        for p in panels {
            for t in p["targets"].as_array().expect("targets") {
                let sql = expand(t["queryText"].as_str().expect("queryText"), now - 6 * 3600, now + 60, 60);
                let rows =
                    tokio::time::timeout(Duration::from_secs(30), run(&mut client, &sql)).await.expect("in time");
                assert!(rows > 0, "{file}: panel {:?} returned no rows:\n{sql}", p["title"]);
            }
        }
    }
}
