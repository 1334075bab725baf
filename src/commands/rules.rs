//! `tocsin rules check FILE...`: validates rule files offline (YAML with
//! line and column, thresholds, durations, references, SQL syntax) and,
//! with `--server`, plans each rule's SQL against a running server's
//! catalog.

use std::path::PathBuf;

use anyhow::bail;
use tocsin_alerting::config::{Config, parse_file};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Validate rule files (together, as one configuration).
    Check(CheckArgs),
    /// Run rule unit tests: input series and the alerts expected at given
    /// times (see docs/alerting.md).
    Test {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Rule files or directories.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Plan each rule's SQL on the server at this HTTP address. Given
    /// (or in TOCSIN_HTTP_ADDR), it must be reachable; not given, the
    /// local default is used when a server is there, and otherwise the SQL
    /// is only parsed.
    #[arg(long, env = "TOCSIN_HTTP_ADDR")]
    server: Option<String>,
    /// API token, for a server started with --auth.
    #[arg(long, env = "TOCSIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Do not contact a server: parse the SQL only.
    #[arg(long)]
    offline: bool,
}

pub(crate) fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Check(a) => check(a),
        Command::Test { files } => test(&files),
    }
}

fn check(a: CheckArgs) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for f in &a.files {
        if f.is_dir() {
            let c = Config::load(f)?;
            for src in c.sources {
                let text = std::fs::read_to_string(&src)?;
                parsed.push((src.clone(), parse_file(&src, &text)?));
            }
        } else {
            let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
            parsed.push((f.clone(), parse_file(f, &text)?));
        }
    }
    // Which file each group came from, to name it in a planning error.
    let file_of: std::collections::HashMap<String, PathBuf> =
        parsed.iter().flat_map(|(p, f)| f.groups.iter().map(move |g| (g.name.clone(), p.clone()))).collect();
    let config = Config::from_files(parsed)?;
    let explicit = a.server.is_some();
    let server = a.server.clone().unwrap_or_else(|| "127.0.0.1:4318".to_string());
    let reachable = !a.offline
        && std::net::ToSocketAddrs::to_socket_addrs(server.trim_start_matches("http://"))
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok()
            });
    if !a.offline && !reachable {
        if explicit {
            // A mistyped address in CI must not pass as "planned".
            bail!("no server at {server} (--server): the SQL cannot be planned there (use --offline to parse it only)");
        }
        eprintln!("note: no server at {server}; SQL was parsed but not planned against a catalog");
    }
    if reachable {
        let client = super::client::ServerArgs::plain(server.clone(), a.token.clone()).client()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut failures = 0;
        runtime.block_on(async {
            for g in &config.groups {
                for r in g.rules.iter().filter(|r| r.on_ingest.is_none()) {
                    let checked = match &r.expr {
                        // A PromQL rule is evaluated once, now.
                        Some(expr) => {
                            let db = g.database.as_deref().unwrap_or("public");
                            let path = format!(
                                "/api/v1/query?query={}&db={}",
                                super::client::url_component(expr),
                                super::client::url_component(db)
                            );
                            client.call(reqwest::Method::GET, &path, None).await
                        }
                        None => {
                            let mut body = serde_json::json!({ "sql": format!("EXPLAIN {}", r.sql) });
                            if let Some(db) = &g.database {
                                body["database"] = serde_json::Value::String(db.clone());
                            }
                            client.call(reqwest::Method::POST, "/api/v1/sql", Some(body)).await
                        }
                    };
                    if let Err(e) = checked {
                        let file = file_of.get(&g.name).map(|p| format!("{}: ", p.display())).unwrap_or_default();
                        eprintln!("{file}group {:?}, rule {:?}: {e:#}", g.name, r.name);
                        failures += 1;
                    }
                }
            }
        });
        if failures > 0 {
            bail!("{failures} rule(s) do not plan against the server's catalog");
        }
    }
    if !config.groups.is_empty() && config.receivers.is_empty() {
        eprintln!(
            "note: no receivers: these rules' alerts are recorded and shown, but sent to nobody (add `receivers:` and \
             a `route:`)"
        );
    }
    println!(
        "ok: {} group(s), {} rule(s), {} receiver(s), {} route(s)",
        config.groups.len(),
        config.rule_count(),
        config.receivers.len(),
        config.routes.len()
    );
    Ok(())
}

fn test(files: &[PathBuf]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        let outcomes = runtime.block_on(tocsin_alerting::ruletest::run_file(f))?;
        for o in outcomes {
            if o.failures.is_empty() {
                passed += 1;
                println!("PASS {}: {}", f.display(), o.name);
            } else {
                failed += 1;
                println!("FAIL {}: {}", f.display(), o.name);
                for msg in &o.failures {
                    println!("    {msg}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} rule test(s) failed");
    }
    Ok(())
}
