//! The web console through the real binary: its pages are public and hold
//! no data (strict CSP, no framing), its files are embedded, and the
//! endpoints it needs (`/api/v1/console`, `/api/v1/alerts/groups`,
//! `/api/v1/rules/check`) obey the caller's role. The pages themselves are
//! driven in a real browser by tests/interop/test_console_browser.py.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::auth::{call, create_token, lines};
use crate::server::TestServer;

fn rules_yaml(trading_sql: &str) -> String {
    let rule = |group: &str, alert: &str, sql: &str| {
        format!(
            "  - name: {group}\n    interval: 200ms\n    rules:\n      - alert: {alert}\n        sql: {sql}\n        \
             thresholds: {{ critical: \"> 0\" }}\n"
        )
    };
    let errs = "SELECT host, max(v) AS value FROM errs GROUP BY host";
    format!(
        "groups:\n{}{}route:\n  group_by: [alertname, host]\n  group_wait: 0s\n  escalation: chain\n\
         escalations:\n  - name: chain\n    steps:\n      - {{ after: 0s, notify: [oncall] }}\n      - {{ after: 1h, \
         notify: [boss] }}\nreceivers:\n  - name: oncall\n    webhook: {{ url: \"http://127.0.0.1:9/oncall\" }}\n  - \
         name: boss\n    webhook: {{ url: \"http://127.0.0.1:9/boss\" }}\n",
        rule("billing", "BillingErrors", errs),
        rule("trading", "TradingErrors", trading_sql),
    )
}

/// A server with `--auth`, `rules` and `config`, its admin token, and a
/// token of `role`.
fn start(dir: &std::path::Path, rules: &str, config: &str, role: &str) -> (TestServer, String, String) {
    let (rules_path, cfg) = (dir.join("rules.yml"), dir.join("tocsin.toml"));
    std::fs::write(&rules_path, rules).expect("rules");
    std::fs::write(&cfg, config).expect("config");
    let server = TestServer::start_in(
        &dir.join("data"),
        &["--auth", "--config", cfg.to_str().expect("utf-8"), "--rules", rules_path.to_str().expect("utf-8")],
    );
    let admin = std::fs::read_to_string(server.data_dir.join("admin-token")).expect("admin-token").trim().to_string();
    let token = create_token(&server, &admin, role, &[]);
    (server, admin, token)
}

async fn json_of(server: &TestServer, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = call(server, method, path, token, None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[tokio::test]
async fn the_console_pages_are_public_hold_no_data_and_its_endpoints_obey_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.yml");
    let config = "[console]\nrefresh = \"5s\"\n[[console.panels]]\ntitle = \"Busiest\"\nsql = \"SELECT host, \
                  max(v) AS value FROM errs GROUP BY host\"\n\
                  [auth.roles.billing_oncall]\npermissions = [\"query\", \"read_alerts\"]\n\
                  [auth.roles.billing_oncall.alerts]\ngroups = [\"billing*\"]\n";
    let errs = "SELECT host, max(v) AS value FROM errs GROUP BY host";
    let (server, admin, dev) = start(dir.path(), &rules_yaml(errs), config, "billing_oncall");

    // Every view's address answers the same page, without a token: it
    // holds no data, runs only this server's scripts, and cannot be framed.
    let client = reqwest::Client::new();
    for path in ["/", "/alerts", "/rules", "/explore", "/logs", "/trace", "/trace/abc123", "/audit"] {
        let r = client.get(format!("http://{}{path}", server.http)).send().await.expect("GET page");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8", "{path}");
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        let body = r.text().await.expect("body");
        assert!(body.contains("/console/app.js"), "{path}: {body}");
    }
    let r = client.get(format!("http://{}/console/app.js", server.http)).send().await.expect("GET app.js");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    let etag = r.headers()["etag"].clone();
    let again = client
        .get(format!("http://{}/console/app.js", server.http))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET again");
    assert_eq!(again.status().as_u16(), 304, "unchanged files are not sent again");
    for missing in ["/console/nope.js", "/console/..%2FCargo.toml", "/console/"] {
        let r = client.get(format!("http://{}{missing}", server.http)).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 404, "{missing}");
    }

    // Who the caller is, and the console's settings: a token is needed.
    assert_eq!(json_of(&server, "GET", "/api/v1/console", None).await.0, 401);
    let (status, me) = json_of(&server, "GET", "/api/v1/console", Some(&dev)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["auth"], true);
    assert_eq!(me["user"]["role"], "billing_oncall");
    assert_eq!(me["user"]["permissions"], json!(["query", "read_alerts"]), "{me}");
    assert_eq!(me["config"]["refreshMs"], 5000);
    assert_eq!(me["config"]["panels"][0]["title"], "Busiest");

    // Escalation progress per notification group, limited to the role's alerts.
    assert_eq!(lines(&server, &admin, "errs,host=a v=3").await, 204);
    let deadline = Instant::now() + Duration::from_secs(30);
    let groups = loop {
        let (status, v) = json_of(&server, "GET", "/api/v1/alerts/groups", Some(&admin)).await;
        assert_eq!(status, 200, "{v}");
        let groups = v["groups"].as_array().cloned().unwrap_or_default();
        if groups.len() == 2 && groups.iter().all(|g| g["escalation"]["lastStep"] == 1) {
            break groups;
        }
        assert!(Instant::now() < deadline, "two escalating groups did not appear: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for g in &groups {
        let e = &g["escalation"];
        assert_eq!((e["policy"].as_str(), e["steps"].as_u64()), (Some("chain"), Some(2)), "{g}");
        assert_eq!(e["next"]["step"], 2, "{g}");
        assert_eq!(e["next"]["notify"], json!(["boss"]), "{g}");
        assert_eq!(g["notified"], json!(["oncall"]), "{g}");
    }
    let (status, v) = json_of(&server, "GET", "/api/v1/alerts/groups", Some(&dev)).await;
    assert_eq!(status, 200, "{v}");
    let seen: Vec<&str> =
        v["groups"].as_array().expect("groups").iter().filter_map(|g| g["groupLabels"]["alertname"].as_str()).collect();
    assert_eq!(seen, ["BillingErrors"], "the scoped role sees its own group only: {v}");

    // A statement sent read-only (as the console sends what a link
    // carries) may not write, however it is dressed.
    let sql = |body: Value| {
        let (server, admin) = (&server, admin.clone());
        async move { call(server, "POST", "/api/v1/sql", Some(&admin), Some(body)).await }
    };
    for statement in [
        "INSERT INTO errs (ts, host, v) VALUES (now(), 'linked', 1)",
        "EXPLAIN ANALYZE INSERT INTO errs (ts, host, v) VALUES (now(), 'linked', 1)",
    ] {
        let (status, body) = sql(json!({ "sql": statement, "read_only": true })).await;
        assert_eq!(status, 400, "{statement}: {body}");
        assert!(body.contains("read-only"), "{body}");
    }
    let (status, body) =
        sql(json!({ "sql": "SELECT count(*) AS n FROM errs WHERE host = 'linked'", "read_only": true })).await;
    assert_eq!((status, body.as_str()), (200, r#"[{"n":0}]"#), "nothing was written");

    // One page of the list, in the console's order, with the total; text search.
    let (status, v) = json_of(&server, "GET", "/api/v1/alerts?state=firing&limit=1", Some(&admin)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["alerts"].as_array().map(Vec::len), v["total"].as_u64()), (Some(1), Some(2)), "{v}");
    let (_, second) = json_of(&server, "GET", "/api/v1/alerts?state=firing&limit=1&offset=1", Some(&admin)).await;
    assert_ne!(v["alerts"][0]["id"], second["alerts"][0]["id"], "pages do not overlap: {v} {second}");
    let (_, v) = json_of(&server, "GET", "/api/v1/alerts?q=tradinger", Some(&admin)).await;
    assert_eq!(v["alerts"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["alerts"][0]["alertname"], "TradingErrors");
    assert_eq!(json_of(&server, "GET", "/api/v1/alerts?limit=-1", Some(&admin)).await.0, 400);
    assert_eq!(json_of(&server, "GET", "/api/v1/alerts?limit=10001", Some(&admin)).await.0, 400);
    let (_, v) = json_of(&server, "GET", "/api/v1/alerts?limit=10", Some(&dev)).await;
    assert_eq!(v["total"], 1, "a scoped role's total counts its alerts only: {v}");

    // The overview's summary: counts and each device's worst alert, scoped too.
    let (status, v) = json_of(&server, "GET", "/api/v1/alerts/summary", Some(&admin)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["firing"].as_u64(), &v["bySeverity"]), (Some(2), &json!({"critical": 2})), "{v}");
    assert_eq!(v["byGroup"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(1), "both alerts are on host a: {v}");
    assert_eq!(
        (v["devices"][0]["device"].as_str(), v["devices"][0]["severity"].as_str()),
        (Some("a"), Some("critical"))
    );
    let (_, v) = json_of(&server, "GET", "/api/v1/alerts/summary", Some(&dev)).await;
    assert_eq!(v["firing"], 1, "{v}");
    assert_eq!(v["byGroup"], json!([{"group": "billing", "firing": 1, "worst": "critical"}]), "{v}");
    assert_eq!(json_of(&server, "GET", "/api/v1/alerts/summary?devices=x", Some(&admin)).await.0, 400);

    // The rules with their statements; checking the files needs `rules`.
    let (_, v) = json_of(&server, "GET", "/api/v1/rules", Some(&admin)).await;
    let rule =
        v["rules"].as_array().expect("rules").iter().find(|r| r["rule"] == "TradingErrors").cloned().expect("rule");
    assert_eq!((rule["kind"].as_str(), rule["language"].as_str()), (Some("alert"), Some("sql")), "{rule}");
    assert!(rule["query"].as_str().is_some_and(|q| q.contains("FROM errs")), "{rule}");
    assert_eq!(json_of(&server, "POST", "/api/v1/rules/check", Some(&dev)).await.0, 403);
    let (status, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&admin)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["rules"].as_u64(), v["receivers"].as_u64()),
        (Some(true), Some(2), Some(2)),
        "{v}"
    );
    // A statement over a table that does not exist loads (a reload takes
    // it), but does not plan: the check names the rule.
    std::fs::write(&rules, rules_yaml("SELECT host, max(v) AS value FROM no_such_table GROUP BY host")).expect("rules");
    let (_, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&admin)).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["problems"][0]["rule"], "TradingErrors", "{v}");
    assert!(v["problems"][0]["error"].as_str().is_some_and(|e| e.contains("no_such_table")), "{v}");
    // A file that does not load says where.
    std::fs::write(&rules, "groups:\n  - name: x\n    rules: [ {alert: A, sql: }\n").expect("rules");
    let (_, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&admin)).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("rules.yml")), "{v}");
    let (status, body) = call(&server, "POST", "/api/v1/rules/check", Some(&admin), Some(json!({"yaml": "x"}))).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_console_switched_off_is_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("tocsin.toml");
    std::fs::write(&cfg, "[console]\nenabled = false\n").expect("config");
    let server = TestServer::start_in(&dir.path().join("data"), &["--config", cfg.to_str().expect("utf-8")]);
    for path in ["/", "/alerts", "/console/app.js"] {
        let (status, body) = call(&server, "GET", path, None, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("[console] enabled = false"), "{body}");
    }
    assert_eq!(call(&server, "GET", "/health", None, None).await.0, 200);
}

/// Review of the console: a role limited to some alerts saw the escalation
/// of a group that an alert outside its scope kept going (and whom it
/// paged); a rules check planned as the caller and named other groups'
/// rules and tables. Now such a group is not shown to it, the check plans
/// as the server and speaks of the role's groups only, and the role reads
/// the history of its own alerts without reading `system.alert_history`.
#[tokio::test]
async fn a_scoped_role_sees_only_what_concerns_its_own_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.yml");
    // The billing group also has a rule over a table the role may not read,
    // which does not plan (a column that does not exist).
    let secret_rule = "      - alert: BillingSecret\n        sql: SELECT host, max(nosuchcol) AS value FROM \
                       secret_trades GROUP BY host\n        thresholds: { critical: \"> 0\" }\n";
    let yaml = rules_yaml("SELECT host, max(v) AS value FROM secret_trades GROUP BY host")
        .replace("group_by: [alertname, host]", "group_by: [host]")
        .replace("  - name: trading", &format!("{secret_rule}  - name: trading"));
    let config = "[auth.roles.billing_rules]\npermissions = [\"query\", \"read_alerts\", \"rules\"]\ntables = [\"errs\"]\n\
                  [auth.roles.billing_rules.alerts]\ngroups = [\"billing*\"]\n";
    let (server, admin, dev) = start(dir.path(), &yaml, config, "billing_rules");
    let write = |body: &'static str| {
        let (server, admin) = (&server, admin.clone());
        async move { assert_eq!(lines(server, &admin, body).await, 204) }
    };
    write("errs,host=shared v=3").await;
    // The group is told of the billing alert first; the trading alert joins
    // it later, before the group's next flush (group_interval, 5 minutes):
    // hidden from the role as soon as it is in the group, not at the flush.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = json_of(&server, "GET", "/api/v1/alerts/groups", Some(&dev)).await;
        if v["groups"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the billing group did not appear: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write("secret_trades,host=shared v=9").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = json_of(&server, "GET", "/api/v1/alerts/groups", Some(&dev)).await;
        if v["groups"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "a group the trading alert joined is still shown: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let group = loop {
        let (_, v) = json_of(&server, "GET", "/api/v1/alerts/groups", Some(&admin)).await;
        if let Some(g) =
            v["groups"].as_array().and_then(|g| g.first()).filter(|g| g["alerts"].as_array().map(Vec::len) == Some(2))
        {
            break g.clone();
        }
        assert!(Instant::now() < deadline, "one group of both alerts did not appear: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(group["groupLabels"], json!({"host": "shared"}), "{group}");
    let (status, v) = json_of(&server, "GET", "/api/v1/alerts/groups", Some(&dev)).await;
    assert_eq!((status, &v["groups"]), (200, &json!([])), "a group with a trading alert in it: {v}");

    // The history of its own alert, not of the other one.
    let (_, v) = json_of(&server, "GET", "/api/v1/alerts?state=firing", Some(&admin)).await;
    let id_of = |name: &str| {
        v["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["alertname"] == name)
            .and_then(|a| a["id"].as_str())
            .expect("id")
            .to_string()
    };
    let (billing, trading) = (id_of("BillingErrors"), id_of("TradingErrors"));
    let (status, h) = json_of(&server, "GET", &format!("/api/v1/alerts/{billing}/history"), Some(&dev)).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["history"][0]["to_state"], "firing", "{h}");
    assert_eq!(json_of(&server, "GET", &format!("/api/v1/alerts/{trading}/history"), Some(&dev)).await.0, 404);
    let (status, body) =
        call(&server, "POST", "/api/v1/sql", Some(&dev), Some(json!({"sql": "SELECT * FROM system.alert_history"})))
            .await;
    assert_eq!(status, 403, "{body}");

    // The rule list: the statement and error of a rule over a table outside
    // the role are not shown to it (the error lists the table's columns).
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let (_, v) = json_of(&server, "GET", "/api/v1/rules", Some(&dev)).await;
        let rules = v["rules"].as_array().cloned().unwrap_or_default();
        if rules.iter().any(|r| r["rule"] == "BillingSecret" && !r["error"].is_null()) {
            break v;
        }
        assert!(Instant::now() < deadline, "the failing rule was not reported: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rule = |name: &str| {
        listed["rules"].as_array().and_then(|r| r.iter().find(|r| r["rule"] == name)).cloned().expect("rule")
    };
    assert!(rule("BillingErrors")["query"].as_str().is_some_and(|q| q.contains("FROM errs")), "{listed}");
    assert_eq!(rule("BillingSecret")["query"], "", "{listed}");
    assert!(rule("BillingSecret")["error"].as_str().is_some_and(|e| e.contains("outside your role")), "{listed}");
    for hidden in ["secret_trades", "nosuchcol", "Trading"] {
        assert!(!listed.to_string().contains(hidden), "{hidden}: {listed}");
    }
    let (_, v) = json_of(&server, "GET", "/api/v1/rules", Some(&admin)).await;
    assert!(v.to_string().contains("nosuchcol"), "the admin sees every error: {v}");

    // The check: its own group only, planned as the rules run (the trading
    // rule reads a table the role may not, and works); of a rule over a
    // table it may not read, only that it does not plan.
    let (status, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&dev)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["ok"].as_bool(), v["groups"].as_u64(), v["rules"].as_u64()), (Some(false), Some(1), Some(2)), "{v}");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["problems"][0]["rule"], "BillingSecret", "{v}");
    assert!(v["problems"][0]["error"].as_str().is_some_and(|e| e.contains("outside your role")), "{v}");
    for hidden in ["secret_trades", "nosuchcol", "Trading"] {
        assert!(!v.to_string().contains(hidden), "{hidden}: {v}");
    }
    let (_, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&admin)).await;
    assert_eq!((v["ok"].as_bool(), v["groups"].as_u64()), (Some(false), Some(2)), "{v}");
    assert!(v["problems"][0]["error"].as_str().is_some_and(|e| e.contains("nosuchcol")), "the admin sees why: {v}");
    // Files that do not load: the scoped role is not shown the message,
    // which may quote any group's rules.
    std::fs::write(&rules, "groups:\n  - name: trading\n    rules: [ {alert: SecretMerger, sql: }\n").expect("rules");
    let (_, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&dev)).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(!v.to_string().contains("SecretMerger"), "{v}");
    let (_, v) = json_of(&server, "POST", "/api/v1/rules/check", Some(&admin)).await;
    assert!(v["error"].as_str().is_some_and(|e| e.contains("rules.yml")), "{v}");
    // Nor by the reload, which fails the same way (the console's Reload).
    let (status, body) = call(&server, "POST", "/api/v1/rules/reload", Some(&dev), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("administrator") && !body.contains("SecretMerger"), "{body}");
    let (_, body) = call(&server, "POST", "/api/v1/rules/reload", Some(&admin), None).await;
    assert!(body.contains("rules.yml"), "the admin hears why: {body}");
}

/// A view's address typed with a trailing slash, or `/index.html`, leads to
/// the page (it answered a JSON 404); an API path with one still does not.
#[tokio::test]
async fn console_addresses_with_a_trailing_slash_lead_to_the_page() {
    let server = TestServer::start();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    for (asked, to) in [
        ("/alerts/", "/alerts"),
        ("/explore/?q=SELECT%201", "/explore?q=SELECT%201"),
        ("/trace/abc/", "/trace/abc"),
        ("/index.html", "/"),
    ] {
        let r = http.get(format!("http://{}{asked}", server.http)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 308, "{asked}");
        assert_eq!(r.headers().get("location").and_then(|l| l.to_str().ok()), Some(to), "{asked}");
    }
    for asked in ["/api/v1/alerts/", "/nothing/", "/trace//"] {
        let r = http.get(format!("http://{}{asked}", server.http)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 404, "{asked}");
    }
}

/// `system.alert_history` and `system.notifications` read as empty tables
/// on a server where nothing has happened yet (the overview's trend, an
/// alert's history and Grafana's annotations query them from the start);
/// before, they did not exist until the first transition made them.
#[tokio::test]
async fn the_alert_history_reads_empty_before_the_first_transition() {
    let server = TestServer::start();
    for table in ["alert_history", "notifications"] {
        let rows = server.sql(&format!("SELECT count(*) AS n FROM system.{table}")).await;
        assert_eq!(rows, vec![json!({ "n": 0 })], "system.{table}");
    }
    // The columns the history endpoint and the trend read.
    let rows = server
        .sql(
            "SELECT ts, from_state, to_state, severity, value, note FROM system.alert_history \
             WHERE id = 'abc' AND to_state = 'firing' ORDER BY ts DESC LIMIT 500",
        )
        .await;
    assert!(rows.is_empty(), "{rows:?}");
    let listed =
        server.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'system' ORDER BY 1").await;
    let names: Vec<&str> = listed.iter().filter_map(|r| r["table_name"].as_str()).collect();
    assert!(names.contains(&"alert_history") && names.contains(&"notifications"), "{names:?}");
}
