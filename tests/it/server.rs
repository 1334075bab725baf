//! `TestServer`: the real `tocsin` binary on ephemeral ports with a temp data
//! directory, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tocsin_proto::v1::ingest_client::IngestClient;
use tonic::transport::Channel;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tocsin");

/// The server binary: `TOCSIN_TEST_BIN` when set (a long crash-harness run
/// on a copy, while the tree is rebuilt), else the one cargo built.
pub(crate) fn server_bin() -> String {
    std::env::var("TOCSIN_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

pub(crate) struct TestServer {
    child: Option<Child>,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    /// The syslog listeners, when started with `--syslog-*-addr`.
    pub(crate) syslog_tcp: Option<SocketAddr>,
    pub(crate) syslog_udp: Option<SocketAddr>,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    /// Sent as a bearer token by the helpers below (a server with --auth).
    pub(crate) token: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server on a fresh temporary data directory.
    pub(crate) fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer::start_in(&tmp.path().join("data"), &[]);
        s._tmp = Some(tmp);
        s
    }

    /// A server in `dir` (data in `dir/data`) running the alert rules `yaml`
    /// (written to `dir/rules.yml`).
    pub(crate) fn start_with_rules(dir: &Path, yaml: &str) -> TestServer {
        let rules = dir.join("rules.yml");
        std::fs::write(&rules, yaml).expect("write rules");
        TestServer::start_in(&dir.join("data"), &["--rules", rules.to_str().expect("utf-8 path")])
    }

    /// A server on `data_dir` (kept after the server stops) with extra flags.
    pub(crate) fn start_in(data_dir: &Path, extra: &[&str]) -> TestServer {
        std::fs::create_dir_all(data_dir).expect("mkdir");
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve").arg("--data-dir").arg(data_dir).args(extra);
        TestServer::spawn(cmd, data_dir, &data_dir.with_extension("log"))
    }

    /// The README's `tocsin serve` run in `cwd` with no data directory given
    /// (the default `./tocsin-data`), on ephemeral ports.
    pub(crate) fn start_zero_config(cwd: &Path) -> TestServer {
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve").current_dir(cwd).env_remove("TOCSIN_DATA_DIR");
        TestServer::spawn(cmd, &cwd.join("tocsin-data"), &cwd.join("server.log"))
    }

    /// Runs `cmd` (a `tocsin serve`) on ephemeral ports and waits for its
    /// listening line; stderr goes to a file next to `log`.
    fn spawn(mut cmd: Command, data_dir: &Path, log: &Path) -> TestServer {
        let log = log.with_extension(format!(
            "log.{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = cmd
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .env_remove("TOCSIN_CONFIG")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn tocsin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The listening line; with --auth a first start prints the
            // bootstrap token before it.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("tocsin listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        let maybe = |key: &str| -> Option<SocketAddr> {
            line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|a| a.parse().ok())
        };
        let addr = |key: &str| -> SocketAddr { maybe(key).unwrap_or_else(|| panic!("no {key} in {line:?}")) };
        TestServer {
            grpc: addr("grpc="),
            http: addr("http="),
            syslog_tcp: maybe("syslog_tcp="),
            syslog_udp: maybe("syslog_udp="),
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log,
            token: None,
            _tmp: None,
        }
    }

    /// Runs `tocsin serve` on `data_dir` expecting it to refuse to start;
    /// returns what it printed on stderr.
    pub(crate) fn refused_start(data_dir: &Path) -> String {
        Self::refused_start_with(data_dir, &[])
    }

    /// As [`Self::refused_start`], with more arguments; a server still
    /// running after a minute has started, and fails the test.
    pub(crate) fn refused_start_with(data_dir: &Path, extra: &[&str]) -> String {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("TOCSIN_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tocsin");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("the server started; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the server started (stdout {:?}); stderr:\n{stderr}", out.stdout);
        stderr
    }

    /// The helpers send the bootstrap admin token (a server with --auth).
    pub(crate) fn with_admin_token(mut self) -> TestServer {
        let token = std::fs::read_to_string(self.data_dir.join("admin-token")).expect("admin-token");
        self.token = Some(token.trim().to_string());
        self
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn client(&self) -> IngestClient<Channel> {
        IngestClient::connect(format!("http://{}", self.grpc)).await.expect("connect gRPC")
    }

    /// POSTs SQL; returns (HTTP status, body as JSON).
    pub(crate) async fn sql_raw(&self, sql: &str) -> (u16, Value) {
        let resp = self
            .authorized(reqwest::Client::new().post(format!("http://{}/api/v1/sql", self.http)))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.expect("JSON body");
        (status, body)
    }

    /// Rows of a query that must succeed.
    pub(crate) async fn sql(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.sql_raw(sql).await;
        assert_eq!(status, 200, "query {sql:?} failed: {body}");
        body.as_array().cloned().unwrap_or_else(|| panic!("not an array: {body}"))
    }

    /// Rows of `sql` once they satisfy `done` (polled for up to 5 s; a query
    /// error, e.g. a table not created yet, counts as no rows). Returns the
    /// last rows seen either way.
    pub(crate) async fn sql_until(&self, sql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut rows = Vec::new();
        for _ in 0..100 {
            let (status, body) = self.sql_raw(sql).await;
            rows = if status == 200 { body.as_array().cloned().unwrap_or_default() } else { Vec::new() };
            if done(&rows) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rows
    }

    /// The value of one series of `/metrics` (`name` with its labels, as
    /// rendered: `tocsin_limit_refusals_total{limit="max_joins"}`); 0 when
    /// the server does not list it.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = self
            .authorized(reqwest::Client::new().get(format!("http://{}/metrics", self.http)))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().expect("metric value"))
            .unwrap_or(0.0)
    }

    /// Waits (up to 30 s) until metric `name` reaches `at_least`; returns it.
    pub(crate) async fn metric_until(&self, name: &str, at_least: f64) -> f64 {
        for _ in 0..600 {
            let v = self.metric(name).await;
            if v >= at_least {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} stayed below {at_least} for 30 s: {}", self.metric(name).await);
    }

    pub(crate) async fn persist(&self) -> Value {
        self.admin("persist").await
    }

    /// `POST /api/v1/admin/compact`: the round's statistics.
    pub(crate) async fn compact(&self) -> Value {
        self.admin("compact").await
    }

    /// `POST /api/v1/admin/compact?full=true`: every partition merged.
    pub(crate) async fn compact_full(&self) -> Value {
        self.admin("compact?full=true").await
    }

    async fn admin(&self, action: &str) -> Value {
        let resp = self
            .authorized(reqwest::Client::new().post(format!("http://{}/api/v1/admin/{action}", self.http)))
            .send()
            .await
            .expect("admin request");
        assert!(resp.status().is_success(), "{action}: {}", resp.status());
        resp.json().await.expect("json")
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the server.
    /// CPU time the server process has used so far (user and system).
    pub(crate) fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
        // After the command name (which may hold spaces): fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub(crate) fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        for _ in 0..600 {
            if let Some(status) = c.try_wait().expect("wait") {
                if !status.success() {
                    // Shown with the failing assertion: why the server did not exit cleanly.
                    eprintln!("server exited with {status} after SIGTERM; its log:\n{}", self.log_text());
                }
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("server did not exit within 30 s of SIGTERM");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
