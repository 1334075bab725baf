//! Authentication and roles through every interface of the real binary:
//! every declared HTTP route refuses a caller without a token (401) or
//! without the route's permission (403); tokens made with `tocsin token`
//! work at once and stop at once when revoked; a role scoped to some tables
//! reads and writes only those (joins, subqueries and EXPLAIN included);
//! gRPC and Flight SQL authenticate with the same tokens.

use std::path::Path;
use std::process::Command;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::server::{BIN, TestServer};
use crate::util::{f64s, row_series, rows};

/// A server with `--auth` (and `config`, if any) and its bootstrap admin token.
pub(crate) fn start(dir: &Path, config: &str) -> (TestServer, String) {
    let cfg = dir.join("tocsin.toml");
    std::fs::write(&cfg, config).expect("write config");
    let server = TestServer::start_in(&dir.join("data"), &["--auth", "--config", cfg.to_str().expect("utf-8")]);
    let admin = std::fs::read_to_string(server.data_dir.join("admin-token")).expect("admin-token written");
    (server, admin.trim().to_string())
}

/// `tocsin token create --role ROLE [args]` as an operator runs it; the
/// token is the last line of its output.
pub(crate) fn create_token(server: &TestServer, admin: &str, role: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["token", "create", "--role", role, "--http-addr", &server.http.to_string()])
        .args(args)
        .env("TOCSIN_TOKEN", admin)
        .output()
        .expect("run tocsin token create");
    assert!(out.status.success(), "token create failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().last().expect("a line").trim().to_string();
    assert!(token.starts_with("tocsin_"), "not a token: {stdout:?}");
    token
}

pub(crate) async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", server.http));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn sql(server: &TestServer, token: &str, sql: &str) -> (u16, String) {
    call(server, "POST", "/api/v1/sql", Some(token), Some(json!({ "sql": sql }))).await
}

pub(crate) async fn lines(server: &TestServer, token: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}/api/v2/write?bucket=public", server.http))
        .header("Authorization", format!("Token {token}"))
        .body(body.to_string())
        .send()
        .await
        .expect("write")
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_declared_route_refuses_callers_without_a_token_or_its_permission() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let writer = create_token(&server, &admin, "writer", &[]);
    let viewer = create_token(&server, &admin, "viewer", &[]);
    let (status, body) = call(&server, "GET", "/api/v1/auth/routes", None, None).await;
    assert_eq!(status, 200, "{body}");
    let routes: Vec<Value> = serde_json::from_str(&body).expect("route table");
    for expected in ["/api/v1/sql", "/api/v1/write", "/v1/logs", "/api/v1/silences/{id}", "/api/v1/tokens", "/metrics"]
    {
        assert!(routes.iter().any(|r| r["path"] == expected), "{expected} is not in the route table");
    }
    let mut checked = 0;
    for r in &routes {
        let (method, access) = (r["method"].as_str().expect("method"), r["access"].as_str().expect("access"));
        let mut path = r["path"].as_str().expect("path").replace("{id}", "x");
        if path == "/query" {
            // InfluxQL's statement is a parameter.
            path.push_str("?q=SHOW+MEASUREMENTS&db=public");
        }
        let body = (method == "POST").then(|| json!({ "sql": "SELECT 1" }));
        let (anonymous, text) = call(&server, method, &path, None, body.clone()).await;
        if access == "public" {
            assert_ne!(anonymous, 401, "{method} {path} is public: {text}");
            continue;
        }
        if access == "a signed link" {
            // No token needed; without a valid signature, refused.
            assert_eq!(anonymous, 403, "{method} {path} without a signature: {text}");
            assert!(text.contains("not valid for alert") || text.contains("unknown action"), "{text}");
            checked += 1;
            continue;
        }
        if access == "authenticated" {
            // Any caller with valid credentials; the handler checks the rest.
            assert_eq!(anonymous, 401, "{method} {path} without a token: {text}");
            let (wrong, text) = call(&server, method, &path, Some("tocsin_000000000000_nope"), body.clone()).await;
            assert_eq!(wrong, 401, "{method} {path} with a forged token: {text}");
            checked += 1;
            continue;
        }
        assert_eq!(anonymous, 401, "{method} {path} ({access}) without a token: {text}");
        let (wrong, text) = call(&server, method, &path, Some("tocsin_000000000000_nope"), body.clone()).await;
        assert_eq!(wrong, 401, "{method} {path} with a forged token: {text}");
        // A writer may only write; a viewer may not write.
        let (status, text) = call(&server, method, &path, Some(&writer), body.clone()).await;
        if access == "write" {
            assert!(status != 401 && status != 403, "{method} {path}: a writer was refused: {status} {text}");
            let (status, text) = call(&server, method, &path, Some(&viewer), body.clone()).await;
            assert_eq!(status, 403, "{method} {path}: a viewer may not write: {text}");
            assert!(text.contains("write"), "the refusal names the permission: {text}");
        } else {
            assert_eq!(status, 403, "{method} {path} ({access}) with a writer token: {text}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} guarded routes were checked");
    assert_eq!(call(&server, "GET", "/health", None, None).await.0, 200);
}

#[tokio::test]
async fn tokens_are_shown_once_stored_hashed_and_stop_working_when_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin) = start(dir.path(), "");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.data_dir.join("admin-token")).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin token file is private");
    }
    let viewer = create_token(&server, &admin, "viewer", &["--description", "grafana"]);
    assert_eq!(sql(&server, &viewer, "SELECT 1 AS one").await.0, 200);
    let stored = std::fs::read_to_string(server.data_dir.join("auth").join("tokens.json")).expect("token store");
    assert!(!stored.contains(&viewer) && !stored.contains(&admin), "tokens are stored only as hashes");

    // Restarted: the same tokens work and no new admin token is made.
    server.terminate();
    let data = server.data_dir.clone();
    let cfg = dir.path().join("tocsin.toml");
    let server = TestServer::start_in(&data, &["--auth", "--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read_to_string(data.join("admin-token")).expect("admin-token").trim(), admin);
    assert_eq!(sql(&server, &viewer, "SELECT 1 AS one").await.0, 200);

    let list = Command::new(BIN)
        .args(["token", "list", "--json", "--http-addr", &server.http.to_string(), "--token", &admin])
        .output()
        .expect("token list");
    let listed: Value = serde_json::from_slice(&list.stdout).expect("JSON list");
    let id = viewer.split('_').nth(1).expect("id");
    let entry = listed["tokens"].as_array().expect("tokens").iter().find(|t| t["id"] == id).cloned().expect("listed");
    assert_eq!(entry["description"], "grafana");
    assert!(entry.get("sha256").is_none() && !String::from_utf8_lossy(&list.stdout).contains(&viewer));

    let out = Command::new(BIN)
        .args(["token", "revoke", id, "--http-addr", &server.http.to_string(), "--token", &admin])
        .output()
        .expect("token revoke");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = sql(&server, &viewer, "SELECT 1").await;
    assert_eq!(status, 401, "a revoked token is refused at once: {body}");
    assert!(body.contains("revoked"), "{body}");
    // Only the users permission manages tokens.
    let editor = create_token(&server, &admin, "editor", &[]);
    let (status, _) = call(&server, "POST", "/api/v1/tokens", Some(&editor), Some(json!({"role": "admin"}))).await;
    assert_eq!(status, 403, "an editor cannot mint an admin token");
    // Each start and stop is in the audit log with the configuration it ran with.
    let q = "SELECT action, detail FROM system.audit WHERE actor = 'server' ORDER BY seq";
    let (_, body) = sql(&server, &admin, q).await;
    let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
    let actions: Vec<&str> = rows.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(actions, ["start", "stop", "start"], "{body}");
    assert!(rows[0]["detail"].as_str().unwrap_or("").contains("auth on tls off"), "{body}");
}

#[tokio::test]
async fn a_scoped_role_reads_and_writes_only_its_tables_whatever_the_query_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[auth.roles.billing]\npermissions = [\"query\", \"write\"]\ntables = [\"billing_*\"]\n";
    let (server, admin) = start(dir.path(), config);
    assert_eq!(lines(&server, &admin, "billing_calls,host=a v=1 1700000000000000000\n").await, 204);
    assert_eq!(lines(&server, &admin, "trading,host=a v=99 1700000000000000000\n").await, 204);
    let billing = create_token(&server, &admin, "billing", &[]);

    let (status, body) = sql(&server, &billing, "SELECT v FROM billing_calls").await;
    assert_eq!((status, body.as_str()), (200, r#"[{"v":1.0}]"#));
    for q in [
        "SELECT v FROM trading",
        "SELECT b.v FROM billing_calls b JOIN trading t ON b.host = t.host",
        "SELECT v FROM billing_calls WHERE v IN (SELECT v FROM trading)",
        "SELECT (SELECT max(v) FROM trading) AS m",
        "WITH t AS (SELECT * FROM trading) SELECT * FROM t",
        "SELECT v FROM billing_calls UNION ALL SELECT v FROM public.trading",
        "EXPLAIN SELECT v FROM trading",
        "INSERT INTO billing_copy (ts, host, v) SELECT ts, host, v FROM trading",
    ] {
        let (status, body) = sql(&server, &billing, q).await;
        assert_eq!(status, 403, "{q}: {body}");
        assert!(body.contains("may not read table public.trading"), "{q}: the error names the table: {body}");
    }
    let (status, body) = sql(&server, &billing, "INSERT INTO trading (ts, host, v) VALUES (now(), 'b', 1)").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not write table public.trading"), "{body}");
    assert_eq!(lines(&server, &billing, "trading,host=b v=5\n").await, 403);
    assert_eq!(lines(&server, &billing, "billing_calls,host=b v=2\nbilling_sms,host=b v=3\n").await, 204);
    // Nothing of the refused writes got in, and no table was created.
    assert_eq!(sql(&server, &admin, "SELECT count(*) AS n FROM trading").await, (200, r#"[{"n":1}]"#.to_string()));
    let copy = "SELECT table_name FROM information_schema.tables WHERE table_name = 'billing_copy'";
    assert_eq!(sql(&server, &admin, copy).await, (200, "[]".to_string()), "a refused INSERT created its table");

    // A token restricted to one database writes only there.
    let telegraf = create_token(&server, &admin, "writer", &["--db", "telegraf"]);
    assert_eq!(lines(&server, &telegraf, "cpu,host=a v=1\n").await, 403);
    let status = reqwest::Client::new()
        .post(format!("http://{}/api/v2/write?bucket=telegraf", server.http))
        .header("Authorization", format!("Token {telegraf}"))
        .body("cpu,host=a v=1\n")
        .send()
        .await
        .expect("write")
        .status();
    assert_eq!(status.as_u16(), 204);
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii"));
    }
    req
}

#[tokio::test]
async fn grpc_and_flight_sql_authenticate_with_the_same_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let writer = create_token(&server, &admin, "writer", &[]);
    let viewer = create_token(&server, &admin, "viewer", &[]);
    let mut ingest = server.client().await;
    let write =
        || rows("g", vec![row_series(&[("host", "a")], vec![1_700_000_000_000_000_000], vec![f64s("v", vec![1.0])])]);
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(code(ingest.write_rows(with_token(write(), None)).await), Some(tonic::Code::Unauthenticated));
    assert_eq!(code(ingest.write_rows(with_token(write(), Some(&viewer))).await), Some(tonic::Code::PermissionDenied));
    let ok = ingest.write_rows(with_token(write(), Some(&writer))).await.expect("a writer writes").into_inner();
    assert_eq!(ok.accepted_rows, 1);
    let tail = tocsin_proto::v1::TailRequest::default();
    let refused = ingest.tail(with_token(tail, Some(&writer))).await.err().map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::PermissionDenied));

    // Flight SQL: no login, no query; the handshake (ADBC's username and
    // password, the token as the password) gives the bearer for later calls.
    let channel =
        Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await.expect("connect");
    let mut anonymous = FlightSqlServiceClient::new(channel.clone());
    let err = anonymous.execute("SELECT 1".into(), None).await.expect_err("no token");
    assert!(err.to_string().contains("nauthenticated"), "{err}");
    let mut forged = FlightSqlServiceClient::new(channel.clone());
    assert!(forged.handshake("grafana", "tocsin_000000000000_nope").await.is_err(), "a forged token does not log in");
    let mut c = FlightSqlServiceClient::new(channel.clone());
    c.handshake("grafana", &viewer).await.expect("handshake");
    let info = c.execute("SELECT v FROM g".into(), None).await.expect("a viewer queries");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<arrow::array::RecordBatch> =
        c.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let mut w = FlightSqlServiceClient::new(channel);
    w.set_token(writer);
    let err = w.execute("SELECT v FROM g".into(), None).await.expect_err("a writer does not read");
    assert!(err.to_string().contains("ermission"), "{err}");
}

#[test]
fn beyond_loopback_without_auth_the_server_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["serve", "--http-addr", "0.0.0.0:0", "--grpc-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("TOCSIN_CONFIG")
        .output()
        .expect("run tocsin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started:\n{stderr}");
    assert!(stderr.contains("--auth") && stderr.contains("--insecure"), "the refusal says what to do:\n{stderr}");
    assert!(!dir.path().join("data").join("wal").exists(), "nothing was opened");
}

#[tokio::test]
async fn actions_are_audited_with_their_actor_readable_by_auditors_only_and_edits_are_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin) = start(dir.path(), "");
    let viewer = create_token(&server, &admin, "viewer", &[]);
    let auditor = create_token(&server, &admin, "auditor", &[]);
    let viewer_id = format!("token:{}", viewer.split('_').nth(1).expect("id"));
    assert_eq!(sql(&server, &viewer, "SELECT 1 AS one").await.0, 200);
    assert_eq!(call(&server, "POST", "/api/v1/admin/persist", Some(&viewer), None).await.0, 403);
    assert_eq!(call(&server, "POST", "/api/v1/admin/persist", None, None).await.0, 401);
    let silence = json!({"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h", "createdBy": "ann"});
    assert_eq!(call(&server, "POST", "/api/v1/silences", Some(&admin), Some(silence)).await.0, 201);
    // Writes to system tables are refused for every role, admin included.
    let (status, body) = sql(&server, &admin, "INSERT INTO system.audit (actor) VALUES ('me')").await;
    assert_eq!(status, 400, "{body}");

    let q = "SELECT actor, action, target, outcome, status, rows FROM system.audit ORDER BY seq";
    let (status, body) = sql(&server, &auditor, q).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
    let has = |actor: &str, action: &str, outcome: &str| {
        rows.iter().any(|r| r["actor"] == actor && r["action"] == action && r["outcome"] == outcome)
    };
    assert!(rows.iter().any(|r| r["action"] == "POST /api/v1/tokens" && r["target"].as_str().unwrap_or("").contains("role viewer")), "{body}");
    assert!(has(&viewer_id, "POST /api/v1/sql", "ok"), "{body}");
    assert!(
        rows.iter().any(|r| r["actor"] == viewer_id && r["target"] == "SELECT 1 AS one" && r["rows"] == 1),
        "{body}"
    );
    assert!(has(&viewer_id, "POST /api/v1/admin/persist", "denied"), "{body}");
    assert!(has("unauthenticated", "POST /api/v1/admin/persist", "denied"), "{body}");
    assert!(rows.iter().any(|r| r["action"] == "POST /api/v1/silences" && r["status"] == 201), "{body}");
    assert!(rows.iter().any(|r| r["target"].as_str().unwrap_or("").contains("INSERT INTO system.audit") && r["outcome"] == "error"), "{body}");
    // Only auditors (and admins) read it; an auditor reads nothing else.
    let (status, body) = sql(&server, &viewer, "SELECT count(*) FROM system.audit").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system.audit"), "{body}");
    assert_eq!(sql(&server, &auditor, "SELECT * FROM system.alerts").await.0, 403);

    server.terminate();
    let verify = || {
        Command::new(BIN).args(["audit", "verify", "--data-dir"]).arg(&server.data_dir).output().expect("audit verify")
    };
    let ok = verify();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("chain intact"));
    // Someone with access to the disk rewrites who did it.
    let path = server.data_dir.join("audit").join("audit.jsonl");
    let text = std::fs::read_to_string(&path).expect("audit file");
    std::fs::write(
        &path,
        text.replacen(
            &format!("\"actor\":\"{viewer_id}\",\"role\":\"viewer\",\"source\""),
            "\"actor\":\"someone-else\",\"role\":\"viewer\",\"source\"",
            1,
        ),
    )
    .expect("edit");
    let broken = verify();
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success(), "an edited log verified");
    let first_viewer_line =
        text.lines().position(|l| l.contains(&format!("\"actor\":\"{viewer_id}\""))).expect("line") + 1;
    assert!(stderr.contains(&format!("line {first_viewer_line} ")), "the edited line is named: {stderr}");
}

#[tokio::test]
async fn a_web_page_cannot_drive_a_server_on_localhost() {
    let server = TestServer::start();
    let url = |path: &str| format!("http://{}{path}", server.http);
    let client = reqwest::Client::new();
    let insert = r#"{"sql": "INSERT INTO csrf (ts, v) VALUES (now(), 1.0)"}"#;
    // A form post from another site (CSRF), then a rebound DNS name.
    let cross = client
        .post(url("/api/v1/sql"))
        .header("Origin", "https://evil.example")
        .header("Content-Type", "text/plain")
        .header("User-Agent", "Mozilla/5.0")
        .body(insert)
        .send()
        .await
        .expect("send");
    assert_eq!(cross.status().as_u16(), 403);
    assert!(cross.text().await.expect("body").contains("cross-origin"));
    let line = client
        .post(url("/write?db=public"))
        .header("Origin", "https://evil.example")
        .body("csrf v=1")
        .send()
        .await
        .expect("send");
    assert_eq!(line.status().as_u16(), 403, "line protocol from a page");
    let rebound = client.get(url("/api/v1/alerts")).header("Host", "evil.example:4318").send().await.expect("send");
    assert_eq!(rebound.status().as_u16(), 403);
    let simple = client
        .post(url("/api/v1/sql"))
        .header("Content-Type", "text/plain")
        .header("User-Agent", "Mozilla/5.0 (X11)")
        .body(insert)
        .send()
        .await
        .expect("send");
    assert_eq!(simple.status().as_u16(), 403, "a browser's simple request without Origin");
    // None of it wrote; a same-origin JSON request does.
    let (status, _) = server.sql_raw("SELECT * FROM csrf").await;
    assert_eq!(status, 400, "the table was never created");
    let same = client
        .post(url("/api/v1/sql"))
        .header("Origin", format!("http://{}", server.http))
        .json(&json!({"sql": "SELECT 1 AS one"}))
        .send()
        .await
        .expect("send");
    assert_eq!(same.status().as_u16(), 200);
}

/// Found by a hostile review: prepared statements were shared by every
/// caller (sequential handles, no owner), so one token could rebind the
/// parameters of another's INSERT or close it.
#[tokio::test]
async fn a_prepared_statement_belongs_to_the_token_that_made_it() {
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::sql::{
        ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
        Any, CommandPreparedStatementQuery, ProstMessageExt,
    };
    use prost::Message;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let owner = create_token(&server, &admin, "editor", &[]);
    let other = create_token(&server, &admin, "editor", &[]);
    let channel =
        Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await.expect("connect");
    let mut raw = FlightServiceClient::new(channel);
    let create = ActionCreatePreparedStatementRequest { query: "SELECT 1 AS one".into(), transaction_id: None };
    let action =
        arrow_flight::Action { r#type: "CreatePreparedStatement".into(), body: create.as_any().encode_to_vec().into() };
    let mut results = raw.do_action(with_token(action, Some(&owner))).await.expect("create").into_inner();
    let body = results.message().await.expect("result").expect("one result").body;
    let made: ActionCreatePreparedStatementResult =
        Any::decode(body).expect("any").unpack().expect("unpack").expect("a create result");
    let handle = made.prepared_statement_handle;
    assert_ne!(handle.as_ref(), 1u64.to_be_bytes().as_slice(), "handles are not sequential from 1");

    let descriptor = |h: &bytes::Bytes| {
        let cmd = CommandPreparedStatementQuery { prepared_statement_handle: h.clone() };
        arrow_flight::FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec())
    };
    let err = raw.get_flight_info(with_token(descriptor(&handle), Some(&other))).await.expect_err("not theirs");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let close = ActionClosePreparedStatementRequest { prepared_statement_handle: handle.clone() };
    let action =
        arrow_flight::Action { r#type: "ClosePreparedStatement".into(), body: close.as_any().encode_to_vec().into() };
    let _ = raw.do_action(with_token(action, Some(&other))).await;
    raw.get_flight_info(with_token(descriptor(&handle), Some(&owner))).await.expect("still the owner's, still open");
}

#[tokio::test]
async fn review_findings_stay_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[auth.roles.billing]\npermissions = [\"query\", \"tail\"]\ntables = [\"billing_*\", \"logs\"]\n\
                  [auth.roles.tlike]\npermissions = [\"query\"]\ntables = [\"t*\"]\n";
    let (server, admin) = start(dir.path(), config);
    assert_eq!(lines(&server, &admin, "trading,host=a v=99 1700000000000000000\n").await, 204);
    let billing = create_token(&server, &admin, "billing", &[]);
    let tlike = create_token(&server, &admin, "tlike", &[]);
    // Metadata of tables out of scope: DESCRIBE, planning errors, the catalog.
    for q in ["DESCRIBE trading", "SELECT nosuchcol FROM trading", "SELECT * FROM nosuchtable"] {
        let (status, body) = sql(&server, &billing, q).await;
        assert_eq!(status, 403, "{q}: {body}");
        assert!(!body.contains("Valid fields"), "{q}: {body}");
    }
    // The catalog lists only what the caller may read: a bare pattern (`t*`)
    // does not reach into it (information_schema.tables matches `t*`).
    assert_eq!(
        lines(
            &server,
            &admin,
            "billing_calls,host=a v=1
other,host=a v=2
"
        )
        .await,
        204
    );
    let listed = |token: String, q: &'static str| {
        let server = &server;
        async move {
            let (status, body) = sql(server, &token, q).await;
            assert_eq!(status, 200, "{q}: {body}");
            let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
            let mut names: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!("{}.{}", r["table_schema"].as_str().unwrap_or("?"), r["table_name"].as_str().unwrap_or("?"))
                })
                .collect();
            names.sort();
            names
        }
    };
    let q = "SELECT table_schema, table_name FROM information_schema.tables";
    assert_eq!(listed(tlike.clone(), q).await, ["public.trading"]);
    let views = "SELECT table_schema, table_name FROM information_schema.views";
    assert_eq!(listed(tlike.clone(), views).await, ["public.trading"], "information_schema.views lists tables too");
    assert_eq!(listed(billing.clone(), views).await, ["public.billing_calls"]);
    assert_eq!(listed(billing.clone(), "SHOW TABLES").await, ["public.billing_calls"], "SHOW TABLES for a scoped role");
    let (status, body) = sql(
        &server,
        &billing,
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_name = 'trading'",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "[]"), "columns of tables out of scope are not listed");
    let (status, body) = sql(&server, &billing, "SELECT * FROM information_schema.schemata").await;
    assert_eq!(status, 403, "the rest of information_schema stays closed: {body}");
    // InfluxDB v1 clients configured with the token as the user and no password.
    let v1 = |u: &str| {
        reqwest::Client::new()
            .post(format!("http://{}/write?db=public&u={u}", server.http))
            .body("v1only,host=a v=1")
            .send()
    };
    assert_eq!(v1(&admin).await.expect("write").status(), 204);
    assert_eq!(v1("tocsin_000000000000_forged").await.expect("write").status(), 401);
    // Methods a route does not serve: 405, not a server defect.
    assert_eq!(call(&server, "OPTIONS", "/api/v1/sql", None, None).await.0, 405);
    assert!(!server.log_text().contains("declared permission was refused"));

    // An open tail stops delivering once its token is revoked.
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/v1/tail", server.http))
        .bearer_auth(&billing)
        .send()
        .await
        .expect("tail");
    assert_eq!(resp.status().as_u16(), 200);
    let mut resp = resp;
    let id = billing.split('_').nth(1).expect("id");
    let out = Command::new(BIN)
        .args(["token", "revoke", id, "--http-addr", &server.http.to_string(), "--token", &admin])
        .output()
        .expect("revoke");
    assert!(out.status.success());
    let event = json!({"sql": "INSERT INTO logs (ts, service, level, message) VALUES (now(), 'billing', 'info', 'SECRET after revoke')"});
    assert_eq!(call(&server, "POST", "/api/v1/sql", Some(&admin), Some(event)).await.0, 200);
    let mut seen = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("revoked") || seen.contains("SECRET") {
            break;
        }
    }
    assert!(!seen.contains("SECRET"), "a revoked token's tail got: {seen}");
    assert!(seen.contains("revoked"), "the tail says why it ended: {seen}");

    // With auth off no token can be planted for later.
    let off = TestServer::start();
    let (status, body) = call(&off, "POST", "/api/v1/tokens", None, Some(json!({"role": "admin"}))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("authentication is off"), "{body}");
}

/// `tocsin ARGS` with `stdin` piped in, as an operator runs it.
fn tocsin_with_stdin(args: &[&str], token: Option<&str>, stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped()).env_remove("TOCSIN_TOKEN");
    if let Some(t) = token {
        cmd.env("TOCSIN_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("run tocsin");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("tocsin output")
}

#[tokio::test]
async fn users_log_in_with_passwords_over_http_basic_sessions_and_flight_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let http = server.http.to_string();
    let out = tocsin_with_stdin(
        &["user", "create", "alice", "--role", "viewer", "--http-addr", &http],
        Some(&admin),
        "correct horse battery\n",
    );
    assert!(out.status.success(), "user create: {}", String::from_utf8_lossy(&out.stderr));
    let stored = std::fs::read_to_string(server.data_dir.join("auth").join("users.json")).expect("users.json");
    assert!(stored.contains("$argon2id$") && !stored.contains("correct horse"), "only a hash is stored");
    let out = tocsin_with_stdin(&["user", "list", "--http-addr", &http], Some(&admin), "");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("alice") && listed.contains("viewer") && !listed.contains("argon2"), "{listed}");

    // HTTP Basic, as Grafana or curl -u sends it.
    let basic = |password: &str| {
        reqwest::Client::new()
            .post(format!("http://{http}/api/v1/sql"))
            .basic_auth("alice", Some(password))
            .json(&json!({ "sql": "SELECT 1 AS one" }))
    };
    assert_eq!(basic("correct horse battery").send().await.expect("sql").status(), 200);
    let refused = basic("wrong horse battery").send().await.expect("sql");
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.expect("body").contains("wrong password"));
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/admin/persist"))
        .basic_auth("alice", Some("correct horse battery"))
        .send()
        .await
        .expect("persist");
    assert_eq!(r.status(), 403, "a viewer does not administer");

    // `tocsin login` prints a session token that works as --token.
    let out = tocsin_with_stdin(&["login", "--user", "alice", "--http-addr", &http], None, "correct horse battery\n");
    assert!(out.status.success(), "login: {}", String::from_utf8_lossy(&out.stderr));
    let session = String::from_utf8_lossy(&out.stdout).lines().last().expect("a line").trim().to_string();
    assert!(session.starts_with("tocsin_"), "{session}");
    let out = tocsin_with_stdin(&["sql", "--http-addr", &http, "SELECT 2 AS two"], Some(&session), "");
    assert!(out.status.success(), "sql with a session: {}", String::from_utf8_lossy(&out.stderr));
    let out = tocsin_with_stdin(&["login", "--user", "alice", "--http-addr", &http], None, "nope nope nope\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));

    // Flight SQL's handshake (ADBC's username and password) yields a
    // session token as the bearer.
    let channel =
        Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await.expect("connect");
    let mut c = FlightSqlServiceClient::new(channel.clone());
    assert!(c.handshake("alice", "wrong horse battery").await.is_err());
    let bearer = c.handshake("alice", "correct horse battery").await.expect("handshake");
    let bearer = String::from_utf8(bearer.to_vec()).unwrap_or_default();
    let info = c.execute("SELECT 1 AS one".into(), None).await.expect("alice queries over Flight SQL");
    assert_eq!(info.endpoint.len(), 1);
    drop(bearer);
    // gRPC metadata with Basic works too.
    let mut ingest = server.client().await;
    let write =
        || rows("g", vec![row_series(&[("host", "a")], vec![1_700_000_000_000_000_000], vec![f64s("v", vec![1.0])])]);
    let with_basic = |password: &str| {
        let mut req = tonic::Request::new(write());
        let b64 = base64_basic("alice", password);
        req.metadata_mut().insert("authorization", format!("Basic {b64}").parse().expect("metadata"));
        req
    };
    let err = ingest.write_rows(with_basic("correct horse battery")).await.err().map(|s| s.code());
    assert_eq!(err, Some(tonic::Code::PermissionDenied), "authenticated as alice, a viewer, who may not write");
    let err = ingest.write_rows(with_basic("wrong horse battery")).await.err().map(|s| s.code());
    assert_eq!(err, Some(tonic::Code::Unauthenticated));

    // Logout ends the session; a new password ends every session; deleting
    // the user ends the password.
    assert_eq!(call(&server, "POST", "/api/v1/logout", Some(&session), None).await.0, 204);
    assert_eq!(sql(&server, &session, "SELECT 1").await.0, 401);
    assert_eq!(
        call(&server, "POST", "/api/v1/logout", Some(&admin), None).await.0,
        400,
        "API tokens are revoked, not logged out"
    );
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/login",
        None,
        Some(json!({"user": "alice", "password": "correct horse battery"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).expect("login answer");
    let session = session["token"].as_str().expect("token").to_string();
    let change = |current: Option<&str>| json!({"password": "new staple horse", "current": current});
    let path = "/api/v1/users/alice/password";
    let (status, body) = call(&server, "POST", path, Some(&session), Some(change(None))).await;
    assert_eq!(status, 400, "her own password needs the current one: {body}");
    // Someone else's password: refused before the body is read, so the
    // answer says nothing about what the route would take.
    let (status, body) =
        call(&server, "POST", "/api/v1/users/admin/password", Some(&session), Some(json!({"guess": 1}))).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(&server, "POST", path, Some(&session), Some(change(Some("a wrong guess")))).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(&server, "POST", path, Some(&session), Some(change(Some("correct horse battery")))).await;
    assert_eq!(status, 200, "alice sets her own password: {body}");
    assert_eq!(sql(&server, &session, "SELECT 1").await.0, 401, "the old session ended");
    assert_eq!(basic("correct horse battery").send().await.expect("sql").status(), 401);
    assert_eq!(basic("new staple horse").send().await.expect("sql").status(), 200);
    let out = tocsin_with_stdin(&["user", "delete", "alice", "--http-addr", &http], Some(&admin), "");
    assert!(out.status.success(), "user delete: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(basic("new staple horse").send().await.expect("sql").status(), 401);

    // Logins, good and bad, are audited with the user named.
    let q = "SELECT actor, action, target, outcome FROM system.audit WHERE action LIKE '%login%' OR action = 'login' ORDER BY seq";
    let (status, body) = sql(&server, &admin, q).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
    assert!(rows.iter().any(|r| r["actor"] == "user:alice" && r["outcome"] == "ok"), "{body}");
    assert!(rows.iter().any(|r| r["target"] == "user alice" && r["outcome"] == "denied"), "{body}");
    assert!(rows.iter().any(|r| r["actor"] == "user:alice" && r["action"] == "login"), "the Flight SQL login: {body}");
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

const ROW_FILTERED: &str = r#"
[auth.roles.billing_dev]
permissions = ["query", "tail", "trace"]
tables = ["logs", "calls*", "routes"]
[[auth.roles.billing_dev.rows]]
tables = "logs"
column = "service"
values = ["billing"]
[[auth.roles.billing_dev.rows]]
tables = "calls*"
column = "tenant"
values = ["acme"]
"#;

#[tokio::test]
async fn a_row_filter_holds_for_every_query_shape_tail_and_trace() {
    use tocsin_proto::v1::tail_message::Kind;
    use tocsin_proto::v1::{TailRequest, WriteLogsRequest};
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), ROW_FILTERED);
    let dev = create_token(&server, &admin, "billing_dev", &[]);
    let now = chrono::Utc::now().timestamp_nanos_opt().expect("now");
    let events = vec![
        crate::util::log(now - 3_000_000, "gateway", "info", "order 1 in", "t-1"),
        crate::util::log(now - 2_000_000, "billing", "info", "order 1 billed", "t-1"),
        crate::util::log(now - 1_000_000, "trading", "error", "order 1 rejected", "t-1"),
        crate::util::log(now, "trading", "info", "order 2 filled", "t-2"),
    ];
    let mut ingest = server.client().await;
    let write = WriteLogsRequest { database: String::new(), stream: String::new(), events };
    ingest.write_logs(with_token(write, Some(&admin))).await.expect("write logs");
    assert_eq!(lines(&server, &admin, "calls,tenant=acme,host=a n=1i\ncalls,tenant=globex,host=b n=2i").await, 204);
    assert_eq!(lines(&server, &admin, "routes,host=a hops=3i").await, 204);

    let rows = |body: &str| serde_json::from_str::<Vec<Value>>(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let q = |statement: &'static str| {
        let (server, dev) = (&server, &dev);
        async move {
            let (status, body) = sql(server, dev, statement).await;
            assert_eq!(status, 200, "{statement}: {body}");
            rows(&body)
        }
    };
    // Every shape sees the billing rows only.
    assert_eq!(q("SELECT count(*) AS n FROM logs").await, vec![json!({"n": 1})]);
    assert_eq!(q("SELECT DISTINCT service FROM logs").await, vec![json!({"service": "billing"})]);
    assert_eq!(q("SELECT count(*) AS n FROM logs WHERE service = 'trading' OR 1 = 1").await, vec![json!({"n": 1})]);
    assert_eq!(q("SELECT count(*) AS n FROM (SELECT * FROM logs) AS t").await, vec![json!({"n": 1})]);
    assert_eq!(
        q("WITH l AS (SELECT service FROM logs) SELECT count(*) AS n FROM l a JOIN logs b ON a.service <> b.service OR true")
            .await,
        vec![json!({"n": 1})]
    );
    assert_eq!(
        q("SELECT count(*) AS n FROM logs WHERE trace_id IN (SELECT trace_id FROM logs WHERE service = 'trading')")
            .await,
        vec![json!({"n": 0})]
    );
    assert_eq!(
        q("SELECT service FROM logs UNION ALL SELECT service FROM public.logs ORDER BY service").await,
        vec![json!({"service": "billing"}), json!({"service": "billing"})]
    );
    assert_eq!(q("SELECT tenant FROM calls").await, vec![json!({"tenant": "acme"})]);
    assert_eq!(q("SELECT hops FROM routes").await, vec![json!({"hops": 3})], "no filter on routes");
    // The admin still sees everything.
    let (_, body) = sql(&server, &admin, "SELECT count(*) AS n FROM logs").await;
    assert_eq!(rows(&body), vec![json!({"n": 4})]);

    // A filter on a column a table lacks refuses the table (never shows it whole).
    assert_eq!(lines(&server, &admin, "calls_v2,host=a n=1i").await, 204);
    let (status, body) = sql(&server, &dev, "SELECT n FROM calls_v2").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("calls_v2") && body.contains("tenant"), "{body}");
    let (status, body) = sql(&server, &dev, "SELECT l.service FROM logs l JOIN calls_v2 c ON true").await;
    assert_eq!(status, 403, "in a join too: {body}");

    // PromQL reads tables without SQL (`QueryEngine::scan_as`): the same
    // filter holds, on buffered rows and, after a persist, on segments.
    let promql = |q: &'static str| {
        let req = reqwest::Client::new()
            .get(format!("http://{}/api/v1/query", server.http))
            .header("Authorization", format!("Bearer {dev}"))
            .query(&[("query", q)]);
        async move {
            let resp = req.send().await.expect("query");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for stored in ["buffered", "persisted"] {
        let (status, v) = promql("calls_n").await;
        assert_eq!(status, 200, "{stored}: {v}");
        let tenants: Vec<&str> = v["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .filter_map(|r| r["metric"]["tenant"].as_str())
            .collect();
        assert_eq!(tenants, ["acme"], "{stored}: {v}");
        let (_, v) = promql("sum(calls_n) + count(calls_n)").await;
        assert_eq!(v["data"]["result"][0]["value"][1], "2", "{stored}: acme's 1, one series: {v}");
        let (status, v) = promql("calls_v2_n").await;
        assert_eq!(status, 403, "{stored}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains("tenant"), "{stored}: {v}");
        let (status, body) = call(&server, "POST", "/api/v1/admin/persist", Some(&admin), None).await;
        assert_eq!(status, 200, "{body}");
    }

    // Trace: only the billing hop of t-1; t-2 has none the role may see.
    let (status, body) = call(&server, "GET", "/api/v1/trace/t-1", Some(&dev), None).await;
    assert_eq!(status, 200, "{body}");
    let flow: Value = serde_json::from_str(&body).expect("flow");
    let services: Vec<&str> =
        flow["events"].as_array().expect("events").iter().filter_map(|e| e["service"].as_str()).collect();
    assert_eq!(services, ["billing"], "{body}");
    assert_eq!(call(&server, "GET", "/api/v1/trace/t-2", Some(&dev), None).await.0, 404);

    // Tail, stored events then live ones: billing only.
    let req = TailRequest { since_ms: 3_600_000, ..Default::default() };
    let mut tail = ingest.tail(with_token(req, Some(&dev))).await.expect("tail").into_inner();
    let live = vec![
        crate::util::log(now + 1, "trading", "info", "live trading", "t-3"),
        crate::util::log(now + 2, "billing", "info", "live billing", "t-3"),
    ];
    let write = WriteLogsRequest { database: String::new(), stream: String::new(), events: live };
    ingest.write_logs(with_token(write, Some(&admin))).await.expect("write live");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), tail.message())
            .await
            .expect("an event within 10 s")
            .expect("tail")
            .expect("open");
        if let Some(Kind::Event(e)) = msg.kind {
            seen.push(format!("{}: {}", e.service, e.message));
        }
    }
    assert_eq!(seen, ["billing: order 1 billed", "billing: live billing"]);
}

#[tokio::test]
async fn a_flood_from_one_token_is_rate_limited_while_another_token_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "[limits]\ningest_rows_per_second = 10\ningest_burst_rows = 200\n");
    let flooder = create_token(&server, &admin, "writer", &["--description", "runaway collector"]);
    let steady = create_token(&server, &admin, "writer", &[]);
    let batch = |host: &str| {
        (0..150).map(|i| format!("m,host={host} v={i} {}", 1_700_000_000 + i)).collect::<Vec<_>>().join("\n")
    };
    let post = |token: &str, body: String| {
        reqwest::Client::new()
            .post(format!("http://{}/api/v2/write?bucket=public&precision=s", server.http))
            .header("Authorization", format!("Token {token}"))
            .body(body)
            .send()
    };
    assert_eq!(post(&flooder, batch("a")).await.expect("write").status(), 204);
    let refused = post(&flooder, batch("a")).await.expect("write");
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((9..=10).contains(&retry), "about 10 s until 150 rows fit again at 10/s: {retry}");
    let text = refused.text().await.expect("body");
    assert!(text.contains("ingest_rows_per_second"), "the bound is named: {text}");
    assert_eq!(post(&steady, batch("b")).await.expect("write").status(), 204, "another token is not slowed");
    // gRPC writes of the same token share its bucket.
    let mut ingest = server.client().await;
    let ts: Vec<i64> = (0..150).map(|i| 1_700_000_000_000_000_000 + i).collect();
    let write = rows("m", vec![row_series(&[("host", "c")], ts, vec![f64s("v", vec![1.0; 150])])]);
    let code = ingest.write_rows(with_token(write, Some(&flooder))).await.err().map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::ResourceExhausted));
    // SQL INSERT is no way around it: a statement starts while the bucket
    // holds rows, and what it wrote is taken from it, into debt.
    let sql_writer = create_token(&server, &admin, "writer", &[]);
    let values: Vec<String> = (0..300).map(|i| format!("(to_timestamp({}), 'd', {i})", 1_700_000_000 + i)).collect();
    let insert = format!("INSERT INTO m2 (ts, host, v) VALUES {}", values.join(", "));
    let (status, body) = sql(&server, &sql_writer, &insert).await;
    assert_eq!(status, 200, "a full bucket admits a large statement: {body}");
    let refused = reqwest::Client::new()
        .post(format!("http://{}/api/v1/sql", server.http))
        .bearer_auth(&sql_writer)
        .json(&json!({"sql": "INSERT INTO m2 (ts, host, v) VALUES (now(), 'd', 1)"}))
        .send()
        .await
        .expect("insert");
    assert_eq!(refused.status(), 429);
    // 100 rows of debt and one to admit at 10 a second.
    let retry: u64 = refused.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((10..=11).contains(&retry), "the wait, as the write protocols say it: {retry}");
    let body = refused.text().await.expect("body");
    assert!(body.contains("ingest_rows_per_second"), "{body}");
    assert_eq!(post(&sql_writer, batch("d")).await.expect("write").status(), 429, "one bucket for SQL and protocols");
    let (_, body) = sql(&server, &admin, "SELECT count(*) AS n FROM m2").await;
    assert_eq!(serde_json::from_str::<Value>(&body).expect("rows"), json!([{"n": 300}]));
    let (_, body) = sql(&server, &admin, "SELECT host, count(*) AS n FROM m GROUP BY host ORDER BY host").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("rows"),
        json!([{"host": "a", "n": 150}, {"host": "b", "n": 150}]),
        "refused writes stored nothing"
    );
    let (_, metrics) = call(&server, "GET", "/metrics", Some(&admin), None).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("tocsin_limit_refusals_total{limit=\"ingest_rows_per_second\"} 4")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_role_limited_to_some_alerts_sees_acks_and_silences_only_those() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.yml");
    let rule = |group: &str, alert: &str| {
        format!(
            "  - name: {group}\n    interval: 200ms\n    rules:\n      - alert: {alert}\n        sql: SELECT host, \
             max(v) AS value FROM errs GROUP BY host\n        thresholds: {{ critical: \"> 0\" }}\n"
        )
    };
    std::fs::write(
        &rules,
        format!("groups:\n{}{}", rule("billing", "BillingErrors"), rule("trading", "TradingErrors")),
    )
    .expect("rules");
    let cfg = dir.path().join("tocsin.toml");
    let config = "[auth.roles.billing_oncall]\npermissions = [\"query\", \"read_alerts\", \"ack\", \"silence\"]\n\
                  [auth.roles.billing_oncall.alerts]\ngroups = [\"billing*\"]\n";
    std::fs::write(&cfg, config).expect("config");
    let server = TestServer::start_in(
        &dir.path().join("data"),
        &["--auth", "--config", cfg.to_str().expect("utf-8"), "--rules", rules.to_str().expect("utf-8")],
    );
    let admin = std::fs::read_to_string(server.data_dir.join("admin-token")).expect("admin-token").trim().to_string();
    let dev = create_token(&server, &admin, "billing_oncall", &[]);
    assert_eq!(lines(&server, &admin, "errs,host=a v=3").await, 204);
    let alerts = |token: String| {
        let server = &server;
        async move {
            let (status, body) = call(server, "GET", "/api/v1/alerts?state=firing", Some(&token), None).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).expect("alerts")["alerts"].as_array().cloned().unwrap_or_default()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let all = loop {
        let all = alerts(admin.clone()).await;
        if all.len() == 2 {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "both alerts did not fire: {all:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let id_of = |group: &str| {
        all.iter().find(|a| a["group"] == group).and_then(|a| a["id"].as_str()).expect("alert id").to_string()
    };
    let (billing, trading) = (id_of("billing"), id_of("trading"));

    // The scoped role sees the billing alert only, and acts on it only.
    let seen = alerts(dev.clone()).await;
    assert_eq!(seen.iter().map(|a| a["group"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["billing"]);
    // An alert outside the scope answers as one that does not exist: its
    // id is a hash of its labels, and a refusal would confirm a guess.
    let (status, body) = call(&server, "GET", &format!("/api/v1/alerts/{trading}"), Some(&dev), None).await;
    let (_, missing) = call(&server, "GET", "/api/v1/alerts/0123456789abcdef", Some(&dev), None).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("trading"), "the answer names the group: {body}");
    assert_eq!(body.replace(&trading, "ID"), missing.replace("0123456789abcdef", "ID"), "not as a missing alert");
    let ack = json!({"by": "ann", "comment": "on it"});
    let path = |id: &str| format!("/api/v1/alerts/{id}/ack");
    assert_eq!(call(&server, "POST", &path(&trading), Some(&dev), Some(ack.clone())).await.0, 404);
    assert_eq!(call(&server, "POST", &path(&billing), Some(&dev), Some(ack)).await.0, 200);
    let (status, body) = sql(&server, &dev, "SELECT rule_group FROM system.alerts").await;
    assert_eq!(status, 403, "the alert tables show every alert: {body}");
    assert!(body.contains("system.alerts"), "{body}");
    assert_eq!(sql(&server, &dev, "SELECT count(*) AS n FROM errs").await.0, 200, "other tables are read");
    let (_, rules_body) = call(&server, "GET", "/api/v1/rules", Some(&dev), None).await;
    assert!(rules_body.contains("BillingErrors") && !rules_body.contains("TradingErrors"), "{rules_body}");

    // A silence that matches both alerts mutes only the billing one.
    let silence = json!({"matchers": [{"name": "host", "value": "a"}], "duration": "1h", "createdBy": "ann"});
    let (status, body) = call(&server, "POST", "/api/v1/silences", Some(&dev), Some(silence.clone())).await;
    assert_eq!(status, 201, "{body}");
    let muted = |group: &'static str| {
        let (server, admin) = (&server, admin.clone());
        async move {
            let (_, body) = call(server, "GET", "/api/v1/alerts?state=firing", Some(&admin), None).await;
            let v: Value = serde_json::from_str(&body).expect("alerts");
            v["alerts"].as_array().expect("alerts").iter().any(|a| a["group"] == group && !a["muted"].is_null())
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !muted("billing").await {
        assert!(std::time::Instant::now() < deadline, "the billing alert was not silenced");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Two more dispatch rounds (200 ms each) and the trading alert is still not muted.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert!(!muted("trading").await, "the scoped silence muted an alert outside its scope");

    // The admin's silences are not the scoped role's to see or expire.
    let (status, body) = call(&server, "POST", "/api/v1/silences", Some(&admin), Some(silence)).await;
    assert_eq!(status, 201, "{body}");
    let admin_silence =
        serde_json::from_str::<Value>(&body).expect("id")["silenceID"].as_str().expect("id").to_string();
    let (_, body) = call(&server, "GET", "/api/v1/silences", Some(&dev), None).await;
    let listed =
        serde_json::from_str::<Value>(&body).expect("silences")["silences"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{body}");
    let expire = format!("/api/v1/silences/{admin_silence}");
    assert_eq!(call(&server, "DELETE", &expire, Some(&dev), None).await.0, 403);
    assert_eq!(call(&server, "DELETE", &expire, Some(&admin), None).await.0, 200);
}

#[tokio::test]
async fn otlp_exports_choose_their_database_so_database_tokens_can_use_them() {
    use prost::Message as _;
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use tocsin_proto::opentelemetry::proto::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let edge = create_token(&server, &admin, "writer", &["--db", "edge"]);
    let gauge = |v: f64| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "temp".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: 1_700_000_000_000_000_000 + v as u64,
                            value: Some(number_data_point::Value::AsDouble(v)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let http = |db: Option<&str>, v: f64| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/v1/metrics", server.http))
            .bearer_auth(&edge)
            .header("content-type", "application/x-protobuf")
            .body(gauge(v).encode_to_vec());
        if let Some(db) = db {
            req = req.header("x-tocsin-database", db);
        }
        req.send()
    };
    assert_eq!(http(None, 1.0).await.expect("post").status(), 403, "public is not the token's database");
    assert_eq!(http(Some("edge"), 2.0).await.expect("post").status(), 200);
    let mut grpc = MetricsServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connect");
    let mut req = with_token(gauge(3.0), Some(&edge));
    req.metadata_mut().insert("x-tocsin-database", "edge".parse().expect("ascii"));
    grpc.export(req).await.expect("gRPC export into edge");
    let code = grpc.export(with_token(gauge(4.0), Some(&edge))).await.err().map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::PermissionDenied));
    let (_, body) = sql(&server, &admin, "SELECT value FROM edge.temp ORDER BY value").await;
    assert_eq!(serde_json::from_str::<Value>(&body).expect("rows"), json!([{"value": 2.0}, {"value": 3.0}]));
}

/// The caller's predicates run on the rows its filter lets through only:
/// an expression that fails on a hidden value (its error would show it),
/// `EXPLAIN ANALYZE` counts and the information_schema lists leak nothing,
/// in the write buffer and in persisted segments alike.
#[tokio::test]
async fn hidden_rows_leak_through_no_error_message_or_plan() {
    use tocsin_proto::v1::WriteLogsRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), ROW_FILTERED);
    let dev = create_token(&server, &admin, "billing_dev", &[]);
    let now = chrono::Utc::now().timestamp_nanos_opt().expect("now");
    let mut ingest = server.client().await;
    let write = |events| WriteLogsRequest { database: String::new(), stream: String::new(), events };
    let old = vec![
        crate::util::log(now - 4_000_000, "trading", "info", "SECRET persisted", "t-1"),
        crate::util::log(now - 3_000_000, "billing", "info", "7", "t-1"),
    ];
    ingest.write_logs(with_token(write(old), Some(&admin))).await.expect("write logs");
    assert_eq!(call(&server, "POST", "/api/v1/admin/persist", Some(&admin), None).await.0, 200);
    let new = vec![crate::util::log(now, "trading", "info", "SECRET buffered", "t-2")];
    ingest.write_logs(with_token(write(new), Some(&admin))).await.expect("write logs");
    assert_eq!(lines(&server, &admin, "secret_positions,host=a v=1").await, 204);

    let leaks = |body: &str| body.contains("SECRET") || body.contains("secret_positions");
    // Fails on every hidden message, not on the visible one.
    let (status, body) = sql(&server, &dev, "SELECT count(*) AS n FROM logs WHERE CAST(message AS BIGINT) = 7").await;
    assert!(!leaks(&body), "{body}");
    assert_eq!((status, body.as_str()), (200, r#"[{"n":1}]"#));
    let (status, body) = sql(
        &server,
        &dev,
        "SELECT l.message FROM logs l JOIN logs r ON l.trace_id = r.trace_id WHERE CAST(r.message AS BIGINT) > 0",
    )
    .await;
    assert!(!leaks(&body), "{body}");
    assert_eq!(status, 200, "{body}");
    // The same over the tables list.
    let (status, body) = sql(
        &server,
        &dev,
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public' AND \
         CAST(CASE WHEN table_name IN ('logs', 'calls', 'routes') THEN '1' ELSE table_name END AS BIGINT) = 1",
    )
    .await;
    assert!(!leaks(&body), "{body}");
    assert_eq!(status, 200, "{body}");
    // Plans below a gate are refused: they show what a time range
    // overlaps, hidden rows included.
    for q in [
        "EXPLAIN SELECT message FROM logs WHERE ts >= now() - INTERVAL '1 hour'",
        "EXPLAIN FORMAT TREE SELECT message FROM logs",
        "EXPLAIN ANALYZE SELECT message FROM logs",
        "EXPLAIN VERBOSE SELECT message FROM logs",
    ] {
        let (status, body) = sql(&server, &dev, q).await;
        assert_eq!(status, 403, "{q}: {body}");
        assert!(body.contains("EXPLAIN"), "{body}");
    }
    let (status, body) = sql(&server, &admin, "EXPLAIN ANALYZE SELECT message FROM logs").await;
    assert_eq!(status, 200, "the admin has no filter: {body}");
    assert_eq!(lines(&server, &admin, "routes,host=a hops=3i").await, 204);
    assert_eq!(sql(&server, &dev, "EXPLAIN SELECT hops FROM routes").await.0, 200, "no gate, no refusal");
    // Predicates that can run below the gate (pruning by time) answer as before.
    let (status, body) =
        sql(&server, &dev, "SELECT count(*) AS n FROM logs WHERE ts > now() - INTERVAL '1 hour' AND message <> 'x'")
            .await;
    assert_eq!((status, body.as_str()), (200, r#"[{"n":1}]"#));
}

/// Found by hostile review 2: a `DoGet` ticket was unsigned JSON, so a
/// caller could run any SQL it allowed without an audit entry; prepared
/// updates and statements refused at `Prepare` were not audited; a query
/// that failed while streaming was audited `ok` (at `GetFlightInfo`); a
/// prepared update ignored the parameter rows sent with it; `SELECT $1`
/// announced a `Null` column and sent an `Int64` one.
#[tokio::test]
async fn every_flight_sql_statement_is_audited_and_tickets_cannot_be_forged() {
    use arrow::array::{Array, Int64Array, RecordBatch, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::sql::{Any, ProstMessageExt, TicketStatementQuery};
    use prost::Message;
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let (w, other) = (create_token(&server, &admin, "editor", &[]), create_token(&server, &admin, "editor", &[]));
    let auditor = create_token(&server, &admin, "auditor", &[]);
    let id = |t: &str| format!("token:{}", t.split('_').nth(1).expect("id"));
    let body = "scratch v=1 1700000000000000000\nscratch v=2 1700000001000000000\nscratch v=3 1700000002000000000\n";
    assert_eq!(lines(&server, &admin, body).await, 204);
    let channel =
        Channel::from_shared(format!("http://{}", server.grpc)).expect("uri").connect().await.expect("connect");
    let mut c = FlightSqlServiceClient::new(channel.clone());
    c.set_token(w.clone());
    let count = |server: &TestServer| {
        let (server, admin) = (server.http, admin.clone());
        async move {
            let resp = reqwest::Client::new()
                .post(format!("http://{server}/api/v1/sql"))
                .bearer_auth(admin)
                .json(&json!({"sql": "SELECT count(*) AS n FROM scratch"}))
                .send()
                .await
                .expect("count");
            let rows: Vec<Value> = resp.json().await.expect("json");
            rows[0]["n"].as_i64().expect("n")
        }
    };

    // A query: audited once, when its stream ends, with the rows sent.
    let info = c.execute("SELECT 'audited-query' AS m, v FROM scratch".into(), None).await.expect("plan");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let got: Vec<RecordBatch> = c.do_get(ticket.clone()).await.expect("run").try_collect().await.expect("stream");
    assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);

    // Another caller cannot use the ticket; nobody can alter or forge one.
    let mut raw = FlightServiceClient::new(channel.clone());
    let err = raw.do_get(with_token(ticket.clone(), Some(&other))).await.map(|_| ()).expect_err("issued to w");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let sealed: TicketStatementQuery =
        Any::decode(ticket.ticket.clone()).expect("any").unpack().expect("unpack").expect("a statement ticket");
    let altered = String::from_utf8_lossy(&sealed.statement_handle).replace("audited-query", "altered-query!");
    let run_raw = |handle: Vec<u8>| {
        let t = arrow_flight::Ticket {
            ticket: TicketStatementQuery { statement_handle: handle.into() }.as_any().encode_to_vec().into(),
        };
        with_token(t, Some(&w))
    };
    let err = raw.do_get(run_raw(altered.into_bytes())).await.map(|_| ()).expect_err("altered");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let forged = json!({"sql": "INSERT INTO scratch (ts, v) VALUES (now(), 42)", "database": null, "count": null});
    let err = raw.do_get(run_raw(forged.to_string().into_bytes())).await.map(|_| ()).expect_err("forged");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("not a statement ticket of this server"), "{err}");
    assert_eq!(count(&server).await, 3, "the forged INSERT wrote nothing");
    // Bytes that are no ticket at all: refused before Tocsin's DoGet, and
    // audited all the same.
    let garbage = arrow_flight::Ticket { ticket: b"\xff\xffgarbage".to_vec().into() };
    let err = raw.do_get(with_token(garbage, Some(&w))).await.map(|_| ()).expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let empty = arrow_flight::Ticket { ticket: Vec::new().into() };
    let err = raw.do_get(with_token(empty, Some(&w))).await.map(|_| ()).expect_err("empty");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    // Refused at Prepare.
    let err = c.prepare("SELECT * FROM no_such_table".into(), None).await.map(|_| ()).expect_err("no table");
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // A prepared update runs once per parameter row, values cast to the
    // placeholders' types (Int64 into a Float64 field).
    let mut insert = c.prepare("INSERT INTO scratch (ts, v) VALUES ($1, $2)".into(), None).await.expect("prepare");
    let schema = Arc::new(Schema::new(vec![
        Field::new("$1", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("$2", DataType::Int64, false),
    ]));
    let params = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampNanosecondArray::from(vec![1_700_000_003_000_000_000, 1_700_000_004_000_000_000])),
            Arc::new(Int64Array::from(vec![7, 8])),
        ],
    )
    .expect("params");
    insert.set_parameters(params).expect("bind");
    assert_eq!(insert.execute_update().await.expect("two rows"), 2);
    assert_eq!(count(&server).await, 5, "both parameter rows were written");

    // An untyped placeholder: the announced schema is the one sent.
    let mut select = c.prepare("SELECT 'x' AS m, $1 AS p".into(), None).await.expect("prepare");
    let one = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![5]))],
    )
    .expect("param");
    select.set_parameters(one).expect("bind");
    let info = select.execute().await.expect("plan");
    let announced = Schema::try_from(info.clone()).expect("schema");
    assert_eq!(announced.field_with_name("p").expect("p").data_type(), &DataType::Int64);
    let got: Vec<RecordBatch> = c
        .do_get(info.endpoint[0].ticket.clone().expect("ticket"))
        .await
        .expect("run")
        .try_collect()
        .await
        .expect("rows");
    let p = got[0].column_by_name("p").expect("p");
    assert_eq!(p.as_any().downcast_ref::<Int64Array>().expect("int64").value(0), 5);

    // A query that fails while it runs is audited as the error it was.
    let info = c
        .execute(
            "SELECT CAST(CASE WHEN v > 2 THEN 'bad-cast-marker' ELSE '1' END AS BIGINT) AS n FROM scratch".into(),
            None,
        )
        .await
        .expect("plans");
    let ran: Result<Vec<RecordBatch>, _> = match c.do_get(info.endpoint[0].ticket.clone().expect("ticket")).await {
        Ok(s) => s.try_collect().await,
        Err(e) => Err(e),
    };
    assert!(ran.is_err(), "the cast fails");

    let q =
        "SELECT actor, action, target, outcome, status, rows FROM system.audit WHERE interface = 'flight' ORDER BY seq";
    let (status, body) = sql(&server, &auditor, q).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
    let with = |needle: &str| -> Vec<&Value> {
        rows.iter().filter(|r| r["target"].as_str().unwrap_or("").contains(needle)).collect()
    };
    let query = with("audited-query");
    assert_eq!(query.len(), 2, "the run and the other caller's refusal: {body}");
    assert!(
        query[0]["actor"] == id(&w)
            && query[0]["action"] == "sql"
            && query[0]["outcome"] == "ok"
            && query[0]["rows"] == 3,
        "{body}"
    );
    assert!(query[1]["actor"] == id(&other) && query[1]["outcome"] == "denied" && query[1]["status"] == 403, "{body}");
    let forged = with("VALUES (now(), 42)");
    assert!(forged.len() == 1 && forged[0]["outcome"] == "error" && forged[0]["status"] == 400, "{body}");
    let prepare = with("no_such_table");
    assert!(
        prepare.len() == 1 && prepare[0]["action"] == "sql (prepare)" && prepare[0]["outcome"] == "error",
        "{body}"
    );
    let update = with("VALUES ($1, $2)");
    assert!(update.len() == 1 && update[0]["outcome"] == "ok" && update[0]["rows"] == 2, "{body}");
    let failed = with("bad-cast-marker");
    assert!(failed.len() == 1 && failed[0]["outcome"] == "error" && failed[0]["status"] == 400, "{body}");
    let undecodable = with("FlightService/DoGet");
    assert_eq!(
        undecodable.iter().filter(|r| r["actor"] == id(&w) && r["outcome"] == "error" && r["status"] == 400).count(),
        2,
        "the garbage and the empty ticket: {body}"
    );
}

/// Posting alerts pages people: a collector's `write` token may not; the
/// `alerter` role (what Prometheus or vmalert is given) may, and nothing else.
#[tokio::test]
async fn only_alerters_post_alerts_to_the_alertmanager_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let writer = create_token(&server, &admin, "writer", &[]);
    let alerter = create_token(&server, &admin, "alerter", &[]);
    let alert = json!([{"labels": {"alertname": "NodeDown", "instance": "n1"}}]);
    let (status, body) = call(&server, "POST", "/api/v2/alerts", Some(&writer), Some(alert.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("post_alerts"), "{body}");
    // As Alertmanager answers: a bare JSON string, which amtool prints
    // (it printed `{}` for an object); 401 too.
    let said: String = serde_json::from_str(&body).expect("a bare JSON string");
    assert!(said.contains("post_alerts"), "{said}");
    let (status, body) = call(&server, "GET", "/api/v2/silences", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(serde_json::from_str::<String>(&body).is_ok(), "{body}");
    let (status, body) = call(&server, "POST", "/api/v2/alerts", Some(&alerter), Some(alert)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&server, "GET", "/api/v2/alerts", Some(&alerter), None).await.0, 403, "an alerter reads nothing");
    let (status, body) = call(&server, "GET", "/api/v2/alerts", Some(&admin), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("NodeDown"), "{body}");
    assert_eq!(sql(&server, &alerter, "SELECT 1 AS one").await.0, 403);
}

/// Review 3 (hostile client): a token sent without its scheme was echoed
/// into the 401 and the audit log, where an auditor could read the admin's
/// secret; refused writes and cross-origin refusals left no audit entry; a
/// database named `SYSTEM` could stand beside `system`.
#[tokio::test]
async fn refusals_are_audited_and_never_carry_a_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(tmp.path(), "");
    // `tocsin_<id>_<secret>`; the secret is base64url and may hold `_`
    // itself (taking the part after the last `_` made this test fail when a
    // few characters of it happened to appear in the audit log).
    let secret = admin.splitn(3, '_').nth(2).expect("a secret part").to_string();
    assert!(secret.len() >= 20, "{admin}");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", server.http);
    // A bare token, and one glued to its scheme.
    for value in [admin.clone(), format!("Bearer{admin}")] {
        let resp = http.get(url("/api/v1/alerts")).header("Authorization", value).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 401);
        assert!(!resp.text().await.expect("body").contains(&secret), "the answer repeats the token");
    }
    // Review 5: the token in the user name (Basic `TOKEN:x`, InfluxDB's
    // `u=`, a login body): named by its id only.
    let basic = http.get(url("/api/v1/alerts")).basic_auth(&admin, Some("x")).send().await.expect("request");
    assert_eq!(basic.status().as_u16(), 401);
    let text = basic.text().await.expect("body");
    assert!(!text.contains(&secret) && text.contains("its secret is not shown"), "{text}");
    let v1 = http.post(url(&format!("/write?db=public&u={admin}&p=bad"))).body("probe v=1").send().await;
    let v1 = v1.expect("request");
    assert_eq!(v1.status().as_u16(), 401);
    assert!(!v1.text().await.expect("body").contains(&secret));
    let (status, body) =
        call(&server, "POST", "/api/v1/login", None, Some(json!({"user": admin, "password": "x"}))).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&secret), "{body}");
    // A writer limited to one database writes to another.
    let edge = create_token(&server, &admin, "writer", &["--db", "edge"]);
    let resp = http
        .post(url("/write?db=public"))
        .header("Authorization", format!("Bearer {edge}"))
        .body("probe,host=a v=1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 403);
    // The same over gRPC: refused by the ingest service, audited.
    let mut ingest = server.client().await;
    let mut write =
        rows("probe", vec![row_series(&[("host", "a")], vec![1_700_000_000_000_000_000], vec![f64s("v", vec![1.0])])]);
    write.database = "public".into();
    let code = ingest.write_rows(with_token(write, Some(&edge))).await.err().map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::PermissionDenied));
    // A web page of another site posts to the server.
    let resp = http
        .post(url("/api/v1/rules/reload"))
        .header("Origin", "https://evil.example")
        .header("Authorization", format!("Bearer {admin}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 403);
    // A database that would pass for `system`.
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/sql",
        Some(&admin),
        Some(json!({
            "sql": "INSERT INTO audit (ts, actor) VALUES (now(), 'forged')", "database": "SYSTEM"
        })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reserved"), "{body}");

    let (status, body) =
        sql(&server, &admin, "SELECT action, status, detail, target FROM system.audit ORDER BY seq").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&secret), "the audit log holds the token: {body}");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("json");
    let has = |action: &str, status: u64| rows.iter().any(|r| r["action"] == action && r["status"] == status);
    assert!(has("GET /api/v1/alerts", 401), "{body}");
    assert!(has("POST /write", 403), "the refused write is audited: {body}");
    assert!(
        rows.iter().any(|r| r["action"].as_str().unwrap_or("").ends_with("/WriteRows") && r["status"] == 403),
        "the refused gRPC write is audited: {body}"
    );
    assert!(
        rows.iter().any(|r| r["action"] == "POST /api/v1/rules/reload"
            && r["status"] == 403
            && r["detail"].as_str().unwrap_or("").contains("cross-origin")),
        "the cross-origin refusal is audited: {body}"
    );
}

/// A role whose row filter names a column the span table lacks still
/// traces its log table: the span table is left out of the timeline (it
/// used to refuse the whole trace once a `spans` table existed).
#[tokio::test]
async fn a_row_filter_on_logs_survives_a_span_table_without_its_column() {
    const TENANT: &str = r#"
[auth.roles.tenant_dev]
permissions = ["query", "trace"]
tables = ["*"]
[[auth.roles.tenant_dev.rows]]
tables = "*"
column = "tenant"
values = ["acme"]
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), TENANT);
    let dev = create_token(&server, &admin, "tenant_dev", &[]);
    let body = "applogs,tenant=acme,service=a,level=info message=\"acme hop\",trace_id=\"tr-9\" 1700000000000000000\n\
                applogs,tenant=globex,service=b,level=info message=\"globex hop\",trace_id=\"tr-9\" 1700000000000000001\n\
                spans,service=a,name=x,kind=server,status=unset trace_id=\"tr-9\",span_id=\"0101010101010101\",duration_ns=5i 1700000000000000000";
    assert_eq!(lines(&server, &admin, body).await, 204);
    let (status, body) = call(&server, "GET", "/api/v1/trace/tr-9?table=applogs", Some(&dev), None).await;
    assert_eq!(status, 200, "{body}");
    let flow: Value = serde_json::from_str(&body).expect("flow");
    let messages: Vec<&str> =
        flow["events"].as_array().expect("events").iter().filter_map(|e| e["message"].as_str()).collect();
    assert_eq!(messages, ["acme hop"], "{body}");
    // The admin sees both hops and the span.
    let (status, body) = call(&server, "GET", "/api/v1/trace/tr-9?table=applogs", Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    let flow: Value = serde_json::from_str(&body).expect("flow");
    assert_eq!((flow["logs"].as_u64(), flow["spans"].as_u64()), (Some(2), Some(1)), "{body}");
}

/// InfluxQL `/query` with credentials as InfluxDB 1.x clients send them
/// (`u`/`p` parameters), and no way to learn whether a table exists where
/// the caller may not read (hostile review).
#[tokio::test]
async fn influxql_query_takes_u_and_p_and_keeps_other_databases_private() {
    const SCOPED: &str = r#"
[auth.roles.telegraf_reader]
permissions = ["query"]
databases = ["telegraf"]
tables = ["*"]
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), SCOPED);
    let reader = create_token(&server, &admin, "telegraf_reader", &[]);
    let writer = create_token(&server, &admin, "writer", &[]);
    for (db, line) in [("telegraf", "cpu,host=a usage=1"), ("secret", "payroll,who=b amount=2")] {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/write?db={db}", server.http))
            .header("Authorization", format!("Bearer {admin}"))
            .body(line)
            .send()
            .await
            .expect("write");
        assert_eq!(resp.status().as_u16(), 204);
    }
    let query = |q: &str, token: &str| {
        let req = reqwest::Client::new().get(format!("http://{}/query", server.http)).query(&[
            ("q", q),
            ("db", "telegraf"),
            ("u", "grafana"),
            ("p", token),
        ]);
        async move {
            let resp = req.send().await.expect("query");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, v) = query("SELECT usage FROM cpu", &reader).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["series"][0]["values"][0][1], 1.0, "{v}");
    let (_, v) = query("SHOW DATABASES", &reader).await;
    assert_eq!(v["results"][0]["series"][0]["values"], json!([["telegraf"]]), "{v}");
    // A table that exists and one that does not: the same refusal.
    let (_, exists) = query("SELECT * FROM secret..payroll", &reader).await;
    let (_, missing) = query("SELECT * FROM secret..nosuch", &reader).await;
    let (exists, missing) = (exists["results"][0]["error"].clone(), missing["results"][0]["error"].clone());
    assert!(exists.as_str().unwrap_or("").contains("secret"), "{exists}");
    assert_eq!(exists.as_str().map(|e| e.replace("payroll", "nosuch")), missing.as_str().map(str::to_string));
    // A writer may create a database (Telegraf's start) but not read.
    let (status, v) = query("CREATE DATABASE \"telegraf\"", &writer).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = query("SHOW MEASUREMENTS", &writer).await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or("").starts_with("error authorizing query"), "{v}");
    let (status, _) = query("SHOW DATABASES", "tocsin_000000000000_nope").await;
    assert_eq!(status, 401);

    // PromQL: the same refusal for a metric that exists and one that does not.
    let promql = |metric: &str| {
        let req = reqwest::Client::new()
            .get(format!("http://{}/api/v1/query", server.http))
            .header("Authorization", format!("Bearer {reader}"))
            .query(&[("query", metric), ("db", "secret")]);
        async move {
            let resp = req.send().await.expect("query");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (exists, missing) = (promql("payroll").await, promql("nosuch").await);
    assert_eq!((exists.0, missing.0), (403, 403), "{exists:?} {missing:?}");
}

/// Deleting rows is administration: collectors' write tokens and readers
/// may not, an admin may, and the statement is audited with its count.
#[tokio::test]
async fn only_admins_delete_rows_and_each_delete_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, admin) = start(dir.path(), "");
    let body = "cpu,host=a v=1 1700000000000000000\ncpu,host=b v=2 1700000000000000000\n";
    assert_eq!(lines(&server, &admin, body).await, 204);
    for role in ["writer", "viewer"] {
        let token = create_token(&server, &admin, role, &[]);
        let (status, body) = sql(&server, &token, "DELETE FROM cpu WHERE host = 'a'").await;
        assert_eq!(status, 403, "{role}: {body}");
    }
    let (status, body) = sql(&server, &admin, "DELETE FROM cpu WHERE host = 'a'").await;
    assert_eq!((status, body.as_str()), (200, r#"[{"count":1}]"#));
    assert_eq!(sql(&server, &admin, "SELECT host FROM cpu").await, (200, r#"[{"host":"b"}]"#.to_string()));
    let (status, body) = sql(&server, &admin, "DELETE FROM system.audit").await;
    assert_eq!(status, 400, "{body}");
    // The same table named from the `system` database (a review finding:
    // refused then by DataFusion, not by Tocsin's check).
    let body = json!({"sql": "DELETE FROM audit", "database": "system"});
    let (status, body) = call(&server, "POST", "/api/v1/sql", Some(&admin), Some(body)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("DELETE FROM system.* is not allowed"), "{body}");

    let q = "SELECT actor, target, outcome, rows FROM system.audit WHERE target LIKE 'DELETE%' ORDER BY seq";
    let (status, body) = sql(&server, &admin, q).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Value> = serde_json::from_str(&body).expect("rows");
    assert_eq!(rows.iter().filter(|r| r["outcome"] == "denied").count(), 2, "{body}");
    assert!(rows.iter().any(|r| r["target"] == "DELETE FROM cpu WHERE host = 'a'" && r["outcome"] == "ok"), "{body}");
}
