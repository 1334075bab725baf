//! `tocsin serve`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use tocsin_server::config::{FileConfig, Overrides};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// Directory for the WAL, segments and manifest [default: ./tocsin-data].
    #[arg(long, env = "TOCSIN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the gRPC API (ingest) [default: 127.0.0.1:4317].
    #[arg(long, env = "TOCSIN_GRPC_ADDR")]
    grpc_addr: Option<String>,
    /// Address of the HTTP API (SQL, health, metrics) [default: 127.0.0.1:4318].
    #[arg(long, env = "TOCSIN_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Alert rules: a YAML file or a directory of them (reloaded on SIGHUP,
    /// on change, and by POST /api/v1/rules/reload).
    #[arg(long, env = "TOCSIN_RULES")]
    rules: Option<PathBuf>,
    /// TOML configuration file; flags given here override it.
    #[arg(long, env = "TOCSIN_CONFIG")]
    config: Option<PathBuf>,
    /// Require a token (or user) on every request but `/health`; the first
    /// start writes an admin token to <data-dir>/admin-token.
    #[arg(long, env = "TOCSIN_AUTH")]
    auth: bool,
    /// Listen beyond loopback with authentication off (anyone who can reach
    /// the ports can do everything).
    #[arg(long, env = "TOCSIN_INSECURE")]
    insecure: bool,
    /// Accept syslog over TCP here (RFC 5424 or 3164, octet-counted or
    /// newline-framed) into `logs`; overrides `[syslog] tcp_addr`.
    #[arg(long, env = "TOCSIN_SYSLOG_TCP_ADDR")]
    syslog_tcp_addr: Option<String>,
    /// Accept syslog over UDP here; overrides `[syslog] udp_addr`.
    #[arg(long, env = "TOCSIN_SYSLOG_UDP_ADDR")]
    syslog_udp_addr: Option<String>,
    /// Keep a copy of the data directory in an S3-compatible bucket
    /// (`s3://BUCKET/PREFIX`; credentials from the AWS_* environment) and
    /// start from it when the data directory is empty; overrides `[storage]
    /// object_store`.
    #[arg(long, env = "TOCSIN_OBJECT_STORE")]
    object_store: Option<String>,
    /// `writer` (default) or `reader`: a reader answers queries from the
    /// writer's copy in the bucket (`--object-store`, required) and refuses
    /// writes; overrides `role` in the file.
    #[arg(long, env = "TOCSIN_ROLE")]
    role: Option<String>,
    /// etcd's client URL (`http://HOST:2379`), or every member's,
    /// comma-separated: the server is the primary only while it holds a
    /// lease there, a standby until then (with `--object-store`);
    /// overrides `[ha] etcd`.
    #[arg(long, env = "TOCSIN_ETCD")]
    etcd: Option<String>,
    /// Log filter, e.g. `info` or `tocsin_storage=debug`.
    #[arg(long, env = "TOCSIN_LOG", default_value = "info")]
    log: String,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&c.log).context("while parsing --log")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let file = match &c.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    // What the server creates (segments, WAL, manifest, state, audit) is
    // for its own user only: the rows are as private as the tokens.
    // SAFETY: umask only sets the process's file creation mask; it cannot
    // fail and touches no memory.
    unsafe {
        libc::umask(0o077);
    }
    let config = file.validate(Overrides {
        data_dir: c.data_dir,
        grpc_addr: c.grpc_addr,
        http_addr: c.http_addr,
        rules: c.rules,
        auth: c.auth,
        insecure: c.insecure,
        syslog_tcp_addr: c.syslog_tcp_addr,
        syslog_udp_addr: c.syslog_udp_addr,
        object_store: c.object_store,
        role: c.role,
        etcd: c.etcd,
    })?;
    warn_if_shared(&config.storage.data_dir);
    if std::env::var_os(tocsin_server::config::ETCD_PASSWORD_ENV).is_some()
        && config.ha.as_ref().is_some_and(|ha| ha.credentials.is_none())
    {
        tracing::warn!(
            "{} is set but [ha] etcd_user is not: etcd is asked without authentication",
            tocsin_server::config::ETCD_PASSWORD_ENV
        );
    }
    // Planning and evaluating SQL recurse over expression trees; the SQL
    // layer bounds their depth (query::allowed), and 8 MiB worker stacks
    // (virtual memory, committed as used) keep a wide margin under that bound
    // where tokio's default 2 MiB kept none.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .context("while starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        tocsin_server::run(config, shutdown, |addrs| {
            // One machine-readable line on stdout: tests and scripts that
            // start the server on port 0 read the real ports from it.
            let mut line = format!("tocsin listening grpc={} http={} role={}", addrs.grpc, addrs.http, addrs.role);
            if let Some(a) = addrs.syslog_tcp {
                line.push_str(&format!(" syslog_tcp={a}"));
            }
            if let Some(a) = addrs.syslog_udp {
                line.push_str(&format!(" syslog_udp={a}"));
            }
            println!("{line}");
            let _ = std::io::stdout().flush();
        })
        .await
    })?;
    Ok(())
}

/// A data directory made before (by hand, or by a release that kept the
/// default umask) may let other users read every row: said at start.
fn warn_if_shared(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "other users may read the data directory; files Tocsin writes are 0600, but older ones may not be: \
             chmod -R go-rwx it"
        );
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is called (inside the
/// runtime, before the server opens its data directory): a stop asked for
/// at any moment, during a long WAL replay or just as the ports open, ends
/// in a clean shutdown once the server has started, never in the abrupt
/// exit of the signals' default action.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for {name}: {e}");
            None
        }
    };
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    async fn received(s: Option<Signal>) {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! {
            () = received(interrupt) => tracing::info!("SIGINT received"),
            () = received(terminate) => tracing::info!("SIGTERM received"),
        }
    }
}
