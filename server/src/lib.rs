//! The Tocsin server: opens storage, builds the query engine and the ingest
//! service, and serves them over gRPC (`tocsin.v1`) and HTTP until told to
//! stop; then it stops accepting, persists the write buffer and closes the
//! WAL.
//!
//! ```no_run
//! # async fn f() -> Result<(), tocsin_server::ServerError> {
//! use tocsin_server::config::{FileConfig, Overrides};
//! let config = FileConfig::default().validate(Overrides::default())?;
//! tocsin_server::run(config, async { let _ = tokio::signal::ctrl_c().await; }, |addrs| {
//!     println!("gRPC on {}, HTTP on {}", addrs.grpc, addrs.http);
//! })
//! .await
//! # }
//! ```

mod alert_links;
mod alertmanager_api;
mod alerts_api;
mod audit_table;
mod auth_api;
pub mod backup;
pub mod backup_store;
pub mod config;
mod console;
#[cfg(test)]
mod error_mapping_tests;
mod flight;
pub mod format;
mod guard;
mod http;
mod influx_query;
mod influxql;
pub mod lease;
mod metrics;
mod mirror;
mod prom_api;
mod protocols;
mod reader;
mod syslog;
mod tail;
pub mod tls;
mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tocsin_ingest::IngestService;
use tocsin_query::QueryEngine;
use tocsin_storage::{Storage, StorageError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("alerting: {0}")]
    Alerting(#[from] tocsin_alerting::EngineError),
    #[error("authentication: {0}")]
    Auth(#[from] tocsin_auth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("backups: {0}")]
    Backup(std::io::Error),
    #[error("object store {url}: {source}")]
    ObjectStore { url: String, source: Box<backup_store::BackupError> },
    #[error(
        "{dir} is the cache of a reader of {url}, not a writer's data directory: a writer started on it would \
         diverge from the copy in the bucket. To take over from a lost writer, start the new writer on an empty \
         data directory with --object-store {url} (it starts from the copy); or start this one with --role reader"
    )]
    ReaderCache { dir: String, url: String },
    #[error(
        "{count} segment file(s) this server let go of (segments = \"object-store\") are not in the bucket as its \
         copy lists them, e.g. {example}: queries over them would fail. Check --object-store {url} (a wrong bucket or \
         prefix?); if the files were removed there, put them back from a backup, or start from a data directory \
         `tocsin restore` made from one"
    )]
    SegmentsNotInCopy { url: String, count: usize, example: String },
    #[error(
        "the writer of {url} requires tokens (--auth), and this reader would serve its data to anyone: start the \
         reader with --auth too"
    )]
    ReaderWithoutAuth { url: String },
    #[error("the lease in etcd ([ha]): {0}")]
    Lease(#[from] lease::LeaseError),
    #[error("no longer the primary: {0}")]
    StoodDown(String),
    #[error(
        "the server of {url} requires tokens (--auth), and this one would serve its copy to anyone once it takes \
         over: start it with --auth too"
    )]
    StandbyWithoutAuth { url: String },
}

/// The addresses the server actually listens on (ports resolved when 0 was
/// asked for).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub syslog_tcp: Option<SocketAddr>,
    pub syslog_udp: Option<SocketAddr>,
    /// `writer`, `reader` (a standby answering queries is one), or
    /// `primary` (a writer holding the lease of `[ha] etcd`).
    pub role: &'static str,
}

/// Time allowed for in-flight requests to finish once shutdown starts.
/// How long a stopping server waits for its last copy to the bucket.
const LAST_PUSH_TIMEOUT: Duration = Duration::from_secs(60);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a standby's reader when the standby takes over.
const STANDBY_DRAIN: Duration = Duration::from_secs(1);

/// Runs the server until `shutdown` completes. `on_bound` is called when both
/// listeners are bound: once, or (a standby of `[ha] etcd`) once as the
/// standby and again as the primary.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl Fn(BoundAddrs) + Send + Sync + 'static,
) -> Result<(), ServerError> {
    let on_bound: OnBound = Arc::new(on_bound);
    match config.ha.clone() {
        Some(ha) => run_with_lease(config, ha, shutdown, on_bound).await,
        None => serve(config, None, DRAIN_TIMEOUT, shutdown, on_bound).await,
    }
}

type OnBound = Arc<dyn Fn(BoundAddrs) + Send + Sync>;

/// How long a server waits for the lease at start before it serves as a
/// standby: a free key is taken within a few requests.
/// WAL bytes that may wait to be shipped to the bucket before writes are
/// refused (`wal = "object-store"`, a bucket that does not answer).
const WAL_SHIP_BACKLOG: usize = 256 << 20;
const FIRST_TRY: Duration = Duration::from_secs(2);

/// `[ha] etcd`: the primary once this server holds the lease. Until then a
/// standby, answering queries as a reader of the primary's copy with its
/// data directory as the cache (if that directory is empty or already
/// such a cache); when it takes the lease, it stops the reader, empties
/// the cache and starts from the copy as the primary.
async fn run_with_lease(
    config: ServerConfig,
    ha: lease::LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: OnBound,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let joined = |r: Result<Result<Arc<lease::Leadership>, lease::LeaseError>, tokio::task::JoinError>| {
        r.map_err(|e| ServerError::Lease(lease::LeaseError::Task(e.to_string())))?.map_err(ServerError::from)
    };
    let data_dir = config.storage.data_dir.clone();
    tokens_as_the_copy(&config).await?;
    let mut acquiring = tokio::spawn(lease::Leadership::acquire(ha));
    if let Ok(held) = tokio::time::timeout(FIRST_TRY, &mut acquiring).await {
        return primary(config, joined(held)?, until(stop_rx), on_bound).await;
    }
    let url = config.object_store.as_ref().map(|o| o.url.clone()).unwrap_or_default();
    let cache = reader::is_cache_or_empty(&data_dir, &url);
    // A directory of data must be one this server can continue the copy
    // from (the copy's last writer's own): said now, not when it takes over
    // and would waste the failover.
    if !cache && let Some(o) = &config.object_store {
        mirror::Mirror::open(&o.url, o.interval, &data_dir, None, o.writer_cache.is_some())
            .await
            .map_err(|source| ServerError::ObjectStore { url: o.url.clone(), source: Box::new(source) })?;
    }
    let (promote_tx, promote_rx) = watch::channel(false);
    let mut as_reader = config.clone();
    as_reader.role = config::Role::Reader;
    as_reader.ha = None;
    as_reader.alerting.rules = None;
    // A reader stores nothing: syslog senders find the port closed (and
    // retry or go elsewhere) rather than events dropped.
    as_reader.syslog.tcp_addr = None;
    as_reader.syslog.udp_addr = None;
    let reader_stop = {
        let (s, p) = (stop_rx.clone(), promote_rx.clone());
        async move {
            tokio::select! {
                () = until(s) => {}
                () = until(p) => {}
            }
        }
    };
    let (reader_bound, dir) = (Arc::clone(&on_bound), data_dir.clone());
    let standby = async move {
        if !cache {
            tracing::warn!(
                dir = %dir.display(),
                "standby: the data directory holds data, so this standby answers nothing until it is the primary \
                 (on an empty data directory, a standby answers queries from the primary's copy meanwhile)"
            );
            return Ok(());
        }
        tracing::info!("standby: answering queries from the primary's copy until this server holds the lease");
        // A query running when the standby takes over holds the takeover
        // for at most this long.
        let served = serve(as_reader, None, STANDBY_DRAIN, reader_stop, reader_bound).await;
        if let Err(e) = &served {
            tracing::error!("standby: its reader stopped, so it answers no queries until it is the primary: {e}");
        }
        served
    };
    tokio::pin!(standby);
    let mut standby_done = false;
    let held = loop {
        tokio::select! {
            held = &mut acquiring => break held,
            _ = &mut standby, if !standby_done => standby_done = true,
            () = until(stop_rx.clone()) => {
                acquiring.abort();
                if !standby_done {
                    let _ = standby.await;
                }
                tracing::info!("standby stopped before it became the primary");
                return Ok(());
            }
        }
    };
    let leadership = joined(held)?;
    let _ = promote_tx.send(true);
    if !standby_done {
        let _ = standby.await;
    }
    // The copy's server may have turned tokens on since this one started.
    if let Err(e) = tokens_as_the_copy(&config).await {
        leadership.give_up("this server cannot serve the copy").await;
        return Err(e);
    }
    if cache && let Err(source) = reader::empty_cache(&data_dir, &url).await {
        leadership.give_up("this server cannot use its data directory").await;
        return Err(ServerError::ObjectStore { url, source: Box::new(source) });
    }
    primary(config, leadership, until(stop_rx), on_bound).await
}

/// A server of `[ha]` without `--auth` refuses a copy whose server
/// requires tokens: taking it over would serve it to anyone.
async fn tokens_as_the_copy(config: &ServerConfig) -> Result<(), ServerError> {
    let Some(o) = config.object_store.as_ref().filter(|_| !config.auth.enabled) else { return Ok(()) };
    let bucket = |source| ServerError::ObjectStore { url: o.url.clone(), source: Box::new(source) };
    let place = backup_store::Place::parse(&o.url).map_err(bucket)?;
    match backup_store::Index::read(&place).await.map_err(bucket)? {
        Some(index) if index.at.auth => Err(ServerError::StandbyWithoutAuth { url: o.url.clone() }),
        _ => Ok(()),
    }
}

/// The primary's life; one that stood down moves its data directory
/// aside (it may hold writes acknowledged after its last push, to be
/// recovered by hand), so that restarted it is a standby on an empty one.
async fn primary(
    config: ServerConfig,
    leadership: Arc<lease::Leadership>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: OnBound,
) -> Result<(), ServerError> {
    let data_dir = config.storage.data_dir.clone();
    let served = serve(config, Some(Arc::clone(&leadership)), DRAIN_TIMEOUT, shutdown, on_bound).await;
    // A primary that could not start (its copy refused, its directory
    // unusable) lets the key go at once rather than after its TTL.
    if let Err(e) = &served {
        leadership.give_up(&e.to_string()).await;
    }
    if let Err(ServerError::StoodDown(why)) = &served {
        let aside = std::path::PathBuf::from(format!(
            "{}.stood-down-{}",
            data_dir.display(),
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        match std::fs::rename(&data_dir, &aside) {
            Ok(()) => tracing::error!(
                aside = %aside.display(),
                "no longer the primary ({why}): the data directory is moved aside (writes acknowledged after its \
                 last push are there only); restarted, this server is a standby"
            ),
            Err(e) => tracing::error!(
                "no longer the primary ({why}); moving {} aside failed ({e}): move it aside by hand before \
                 restarting this server",
                data_dir.display()
            ),
        }
    }
    served
}

/// One server's life in one role: a writer (the primary, with
/// `leadership`) or a reader.
async fn serve(
    config: ServerConfig,
    leadership: Option<Arc<lease::Leadership>>,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: OnBound,
) -> Result<(), ServerError> {
    // Certificates first: a bad path is reported before storage is opened.
    let tls = match &config.tls {
        Some(files) => Some(tls::setup(files)?),
        None => None,
    };
    let is_reader = config.role == config::Role::Reader;
    let mut config = config;
    if is_reader && let Some(rules) = config.alerting.rules.take() {
        tracing::warn!(
            rules = %rules.display(),
            "a reader does not evaluate alert rules (the writer does, so that nothing pages twice): not loading them"
        );
    }
    // A writer with a bucket: an empty data directory starts from the
    // bucket's copy, if any. A reader: its data directory is that copy.
    let object_store_error = |url: &str| {
        let url = url.to_string();
        move |source| ServerError::ObjectStore { url, source: Box::new(source) }
    };
    let reader_of = config.storage.data_dir.join(reader::READER_FILE);
    if !is_reader && let Ok(url) = std::fs::read_to_string(&reader_of) {
        return Err(ServerError::ReaderCache {
            dir: config.storage.data_dir.display().to_string(),
            url: url.trim().to_string(),
        });
    }
    let (mirror, reader) = match &config.object_store {
        Some(o) if is_reader => (
            None,
            Some(Arc::new(
                reader::Reader::open(&o.url, o.interval, &config.storage.data_dir, o.reader_cache.is_some())
                    .await
                    .map_err(object_store_error(&o.url))?,
            )),
        ),
        Some(o) => (
            Some(Arc::new(
                mirror::Mirror::open(
                    &o.url,
                    o.interval,
                    &config.storage.data_dir,
                    leadership.clone(),
                    o.writer_cache.is_some(),
                )
                .await
                .map_err(object_store_error(&o.url))?,
            )),
            None,
        ),
        None => (None, None),
    };
    if let (Some(r), false) = (&reader, config.auth.enabled)
        && r.writer_auth.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ServerError::ReaderWithoutAuth { url: r.url.clone() });
    }
    let storage = if let (Some(r), Some(limit)) = (&reader, config.object_store.as_ref().and_then(|o| o.reader_cache))
        && let Some(segments) = &r.segments
    {
        Storage::open_reader_fetching(config.storage.clone(), Arc::clone(segments) as _, limit).await?
    } else if is_reader {
        Storage::open_reader(config.storage.clone()).await?
    } else if let (Some(m), Some(limit)) = (&mirror, config.object_store.as_ref().and_then(|o| o.writer_cache))
        && let Some(segments) = &m.segments
    {
        let storage = Storage::open_fetching(config.storage.clone(), Arc::clone(segments) as _, limit).await?;
        // The files let go of must be in the bucket itself, not only in
        // its index: one removed by hand is said now, not at a query.
        let absent = storage.absent_segment_files();
        let lost = segments.not_held(&absent).await.map_err(object_store_error(&m.url))?;
        if !lost.is_empty() {
            return Err(ServerError::SegmentsNotInCopy {
                url: m.url.clone(),
                count: lost.len(),
                example: lost[0].clone(),
            });
        }
        storage
    } else {
        Storage::open(config.storage.clone()).await?
    };
    if let Some(l) = &leadership {
        storage.hold_by(Arc::clone(l) as Arc<dyn tocsin_storage::Lease>);
    }
    // Before anything is served: under `object-store-sync` no write is
    // acknowledged without the bucket.
    if let (Some(m), Some(o), Some(wal)) = (&mirror, &config.object_store, storage.wal()) {
        let mode = match o.wal {
            config::WalShipping::Local => None,
            config::WalShipping::Background(every) => Some((tocsin_storage::wal::ShipMode::Background, Some(every))),
            config::WalShipping::Sync => Some((tocsin_storage::wal::ShipMode::Sync, None)),
        };
        if let Some((mode, every)) = mode {
            wal.ship(mode, WAL_SHIP_BACKLOG).map_err(StorageError::from)?;
            tracing::info!(url = m.url, ?mode, "the WAL goes to the bucket as it is written");
            // Set before the first push can fail: see `Mirror::ship_wal`.
            m.ships(Arc::clone(&wal));
            tokio::spawn(Arc::clone(m).ship_wal(wal, every));
        }
    }
    let auth = open_auth(&config, &storage)?;
    let audit = Arc::new(tocsin_auth::AuditLog::open(storage.data_dir(), Arc::new(tocsin_storage::SystemClock))?);
    // The configuration a server runs with is part of the record: what
    // changed between two starts is visible in the audit log.
    let roles: Vec<String> = config.auth.roles.keys().cloned().collect();
    audit.record(tocsin_auth::AuditEntry {
        actor: "server".into(),
        interface: "server".into(),
        action: "start".into(),
        target: storage.data_dir().display().to_string(),
        outcome: "ok".into(),
        status: 200,
        detail: format!(
            "version {} role {} auth {} tls {} mutual_tls {} roles [{}] rules {} grpc {} http {}",
            env!("CARGO_PKG_VERSION"),
            if is_reader { "reader" } else { "writer" },
            if config.auth.enabled { "on" } else { "off" },
            if config.tls.is_some() { "on" } else { "off" },
            if config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) { "on" } else { "off" },
            roles.join(", "),
            config.alerting.rules.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string()),
            config.grpc_addr,
            config.http_addr,
        ),
        ..tocsin_auth::AuditEntry::default()
    });
    let query = Arc::new(
        QueryEngine::with_memory_limit(Arc::clone(&storage), config.max_query_memory_bytes)
            .with_caller_limits(config.query_timeout, config.max_concurrent_queries)
            .with_max_result_bytes(config.max_result_bytes),
    );
    let backfill: Arc<dyn tocsin_ingest::follow::TailBackfill> =
        Arc::new(tail::QueryBackfill { query: Arc::clone(&query) });
    let ingest = IngestService::new(Arc::clone(&storage), config.ingest.clone()).with_backfill(Arc::clone(&backfill));
    query.set_write_rates(Arc::new(SqlWriteRates(ingest.rates())));
    let metrics =
        Arc::new(metrics::Metrics { ingest: Arc::clone(&ingest.metrics), started: std::time::Instant::now() });

    query
        .register_system_table(tocsin_auth::AUDIT_TABLE, Arc::new(audit_table::AuditTable { log: Arc::clone(&audit) }));
    let rollups =
        Arc::new(tocsin_query::rollup::Rollups::new(Arc::clone(&query), Arc::clone(&storage), config.rollups.clone()));
    if !rollups.is_empty() && !is_reader {
        storage.add_write_observer(rollups.late_rows());
    }

    let grpc_listener = TcpListener::bind(config.grpc_addr).await.map_err(|source| ServerError::Bind {
        what: "gRPC",
        addr: config.grpc_addr,
        source,
    })?;
    let http_listener = TcpListener::bind(config.http_addr).await.map_err(|source| ServerError::Bind {
        what: "HTTP",
        addr: config.http_addr,
        source,
    })?;
    let syslog = syslog::Listeners::bind(&config.syslog).await?;
    let bound = BoundAddrs {
        role: match (is_reader, leadership.is_some()) {
            (true, _) => "reader",
            (false, true) => "primary",
            (false, false) => "writer",
        },
        syslog_tcp: syslog.tcp_addr(),
        syslog_udp: syslog.udp_addr(),
        grpc: grpc_listener.local_addr().map_err(|source| ServerError::Bind {
            what: "gRPC",
            addr: config.grpc_addr,
            source,
        })?,
        http: http_listener.local_addr().map_err(|source| ServerError::Bind {
            what: "HTTP",
            addr: config.http_addr,
            source,
        })?,
    };
    // Links in notifications point at the port really bound (port 0 in
    // tests), unless an external URL is configured.
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let external_url = config.alerting.external_url.clone().unwrap_or_else(|| format!("{scheme}://{}", bound.http));
    let alerts = start_alerting(&config, &external_url, &storage, &query)?;
    if let Some(l) = &leadership {
        let l = Arc::clone(l);
        alerts.hold_by(Arc::new(move || l.check()));
    }
    // The alerting journal goes with the WAL: a successor continues
    // escalations from the last step sent, not from the last push.
    let ship_alerts = match (&mirror, config.object_store.as_ref().map(|o| &o.wal)) {
        (Some(m), Some(config::WalShipping::Background(every))) => Some((Arc::clone(m), false, Some(*every))),
        (Some(m), Some(config::WalShipping::Sync)) => Some((Arc::clone(m), true, None)),
        _ => None,
    };
    if let Some((_, sync, _)) = &ship_alerts {
        alerts.ship_journal(*sync);
    }
    let backups = Arc::new(
        backup::Backups::open(storage.data_dir(), config.alerting.rules.clone(), config.auth.enabled)
            .map_err(ServerError::Backup)?,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    if let (Some(files), Some(tls)) = (&config.tls, &tls) {
        let audit = Arc::clone(&audit);
        let target = files.cert.display().to_string();
        let on_reload = move |outcome: Result<(), String>| {
            audit.record(tocsin_auth::AuditEntry {
                actor: "server".into(),
                interface: "tls".into(),
                action: "reload certificate".into(),
                target: target.clone(),
                outcome: if outcome.is_ok() { "ok" } else { "error" }.into(),
                status: if outcome.is_ok() { 200 } else { 500 },
                detail: outcome.err().unwrap_or_default(),
                ..tocsin_auth::AuditEntry::default()
            });
        };
        tokio::spawn(tls::watch(files.clone(), Arc::clone(&tls.certificate), stop_rx.clone(), on_reload));
    }
    let bind_error = |what, addr| move |source| ServerError::Bind { what, addr, source };
    let grpc_incoming = tls::incoming(grpc_listener, tls.as_ref().map(|t| t.grpc.clone()))
        .map_err(bind_error("gRPC", config.grpc_addr))?;
    let http_incoming = tls::incoming(http_listener, tls.as_ref().map(|t| t.http.clone()))
        .map_err(bind_error("HTTP", config.http_addr))?;
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let tail = Arc::clone(&ingest.tail);
    tail.set_max_subscribers(config.max_tail_subscribers);
    let http_ingest = ingest.clone();
    let syslog_tasks = syslog.spawn(&config.syslog, ingest.clone(), stop_rx.clone());
    let otlp = tocsin_ingest::otlp::Otlp(ingest.clone());
    let grpc = tonic::transport::Server::builder()
        .layer(guard::GrpcGuardLayer { auth: Arc::clone(&auth), audit: Arc::clone(&audit), reader: is_reader })
        .add_service(ingest.into_server())
        .add_service(otlp.metrics_server())
        .add_service(otlp.logs_server())
        .add_service(otlp.traces_server())
        .add_service(
            flight::FlightSql::new(Arc::clone(&query), Arc::clone(&auth), Arc::clone(&audit))?
                .into_server(config.max_request_bytes),
        )
        .serve_with_incoming_shutdown(grpc_incoming.into_stream(), stopped(stop_rx.clone()));
    let app = http::AppState {
        storage: Arc::clone(&storage),
        query,
        metrics,
        alerts: Arc::clone(&alerts),
        tail,
        backfill,
        ingest: http_ingest,
        rollups: Arc::clone(&rollups),
        max_request_bytes: config.max_request_bytes,
        auth: Arc::clone(&auth),
        audit: Arc::clone(&audit),
        browsers: guard::BrowserPolicy::new(!config.auth.enabled && config.http_addr.ip().is_loopback(), &external_url),
        influx_databases: Arc::default(),
        console: Arc::new(config.console.clone()),
        backups: Arc::clone(&backups),
        mirror: mirror.clone(),
        reader: reader.clone(),
    };
    // Through `tap_io` (which does nothing), axum gives handlers the
    // client's address from our listener.
    let http = axum::serve(
        axum::serve::ListenerExt::tap_io(http_incoming, |_| {}),
        http::router(app, config.max_request_bytes).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    // What changes the data directory runs on the writer only; a reader
    // refreshes its copy instead.
    let mut background = Vec::new();
    if let Some(r) = &reader {
        tracing::info!(url = r.url, "reader: the writer's copy is fetched again every {:?}", r.interval());
        background.push(tokio::spawn(Arc::clone(r).run(Arc::clone(&storage), Arc::clone(&auth), stop_rx.clone())));
    } else {
        background.push(tokio::spawn(persist_loop(Arc::clone(&storage), stop_rx.clone())));
        background.push(tokio::spawn(compact_loop(Arc::clone(&storage), stop_rx.clone())));
        background.push(tokio::spawn(rollup_loop(rollups, stop_rx.clone())));
        // A server whose copy another server took over, or whose lease in
        // etcd is gone, stops alerting: the other one evaluates and
        // notifies now.
        let alert_stop = match &mirror {
            Some(m) => {
                let (tx, rx) = watch::channel(false);
                let (mut stop, mut fenced) = (stop_rx.clone(), m.fenced());
                let mut lost = leadership.as_ref().map(|l| l.lost());
                let storage = Arc::clone(&storage);
                tokio::spawn(async move {
                    let lease_lost = async {
                        match &mut lost {
                            Some(lost) => lost.wait_for(|w| w.is_some()).await.map(|w| w.clone()).ok().flatten(),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        _ = fenced.wait_for(|f| *f) => {
                            tracing::error!("alerting stopped: another server took this server's copy over");
                        }
                        why = lease_lost => {
                            let why = why.unwrap_or_default();
                            tracing::error!("alerting stopped: {why}");
                            storage.fence(why);
                        }
                    }
                    let _ = tx.send(true);
                });
                rx
            }
            None => stop_rx.clone(),
        };
        background.push(tokio::spawn(Arc::clone(&alerts).run(alert_stop)));
    }
    if let Some((m, _, every)) = ship_alerts {
        tokio::spawn(m.ship_alerts(Arc::clone(&alerts), every, stop_rx.clone()));
    }
    tokio::spawn(backup_sweep(Arc::clone(&backups), stop_rx.clone()));
    let mirror_task = mirror.as_ref().map(|m| {
        tracing::info!(url = m.url, "a copy of the data directory goes to the bucket every {:?}", m.interval());
        tokio::spawn(Arc::clone(m).run(
            Arc::clone(&storage),
            Arc::clone(&alerts),
            Arc::clone(&backups),
            stop_rx.clone(),
        ))
    });
    let audit_reload = {
        let audit = Arc::clone(&audit);
        move |cause: &str, result: Result<usize, String>| {
            let ok = result.is_ok();
            audit.record(tocsin_auth::AuditEntry {
                actor: "server".into(),
                interface: "rules".into(),
                action: "reload rules".into(),
                target: cause.to_string(),
                outcome: if ok { "ok" } else { "error" }.into(),
                status: if ok { 200 } else { 400 },
                rows: result.as_ref().ok().map(|n| *n as u64),
                detail: result.err().unwrap_or_default(),
                ..tocsin_auth::AuditEntry::default()
            });
        }
    };
    let audit_reload: tocsin_alerting::engine::ReloadHook = Arc::new(audit_reload);
    alerts.on_reload(Arc::clone(&audit_reload));
    tokio::spawn(reload_on_sighup(Arc::clone(&alerts), audit_reload, stop_rx.clone()));

    tracing::info!(
        grpc = %bound.grpc,
        http = %bound.http,
        tls = config.tls.is_some(),
        mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        data_dir = %storage.data_dir().display(),
        "tocsin serving"
    );
    if bound.syslog_tcp.is_some() || bound.syslog_udp.is_some() {
        tracing::info!(
            tcp = %bound.syslog_tcp.map_or_else(|| "off".to_string(), |a| a.to_string()),
            udp = %bound.syslog_udp.map_or_else(|| "off".to_string(), |a| a.to_string()),
            table = %format!("{}.{}", config.syslog.database, config.syslog.table),
            "syslog listening: whoever reaches these ports may write events into this table (syslog has no \
             credentials)"
        );
    }
    on_bound(bound);

    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move { http.await });
    // A primary that is no longer one stops: it exits with the reason
    // (its supervisor restarts it, as a standby).
    let stood_down = async {
        match &leadership {
            Some(l) => {
                let mut lost = l.lost();
                let why = lost.wait_for(|w| w.is_some()).await.map(|w| w.clone()).ok().flatten();
                why.unwrap_or_default()
            }
            None => std::future::pending().await,
        }
    };
    let stood_down = tokio::select! {
        () = shutdown => None,
        why = stood_down => Some(why),
    };
    tracing::info!("shutting down: draining requests");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(drain, async {
        let g = grpc_task.await;
        let h = http_task.await;
        for t in syslog_tasks {
            let _ = t.await;
        }
        (g, h)
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still running after {drain:?}; persisting anyway");
    }
    for task in background {
        let _ = task.await;
    }
    audit.record(tocsin_auth::AuditEntry {
        actor: "server".into(),
        interface: "server".into(),
        action: "stop".into(),
        target: storage.data_dir().display().to_string(),
        outcome: "ok".into(),
        status: 200,
        ..tocsin_auth::AuditEntry::default()
    });
    audit.sync();
    if let Some(m) = &mirror {
        if let Some(t) = mirror_task {
            let _ = t.await;
        }
        // The last copy holds every write the server acknowledged. A bucket
        // that does not answer does not hold the stop forever (the client
        // retries for minutes): the data directory still has everything.
        if tokio::time::timeout(LAST_PUSH_TIMEOUT, m.push(&storage, &alerts, &backups, true)).await.is_err() {
            tracing::error!(
                url = m.url,
                "the last copy to the bucket did not finish within {LAST_PUSH_TIMEOUT:?}: the bucket lacks the \
                 writes since its last copy; the data directory holds them"
            );
        }
    }
    // After the last push: a standby takes over from it at once.
    if let Some(l) = &leadership {
        l.give_up(lease::STOPPING).await;
    }
    let stats = storage.shutdown().await?;
    if is_reader {
        tracing::info!("shutdown complete (a reader keeps nothing of its own)");
    } else {
        tracing::info!(rows = stats.rows, segments = stats.segments, "shutdown complete: buffer persisted, WAL closed");
    }
    match stood_down {
        Some(why) => Err(ServerError::StoodDown(why)),
        None => Ok(()),
    }
}

/// Loads tokens and roles. On the first start with auth on, prints the
/// bootstrap admin token once (it is also in `<data-dir>/admin-token`);
/// with auth off, says loudly that anyone who reaches the ports may do
/// everything.
fn open_auth(config: &ServerConfig, storage: &Storage) -> Result<Arc<tocsin_auth::Auth>, ServerError> {
    let mut auth_config = config.auth.clone();
    auth_config.data_dir = storage.data_dir().to_path_buf();
    let (auth, bootstrap) = tocsin_auth::Auth::open(auth_config, Arc::new(tocsin_storage::SystemClock))?;
    if let Some(token) = bootstrap {
        let path = tocsin_auth::admin_token_path(storage.data_dir());
        println!("tocsin admin token (shown once; also in {}, mode 0600): {token}", path.display());
        tracing::warn!(path = %path.display(), "first start with auth on: a bootstrap admin token was created");
    }
    if auth.enabled() {
        tracing::info!(roles = auth.roles().count(), "authentication on: every request but /health needs a token");
    } else {
        tracing::warn!(
            grpc = %config.grpc_addr,
            http = %config.http_addr,
            "AUTHENTICATION IS OFF: anyone who can reach these ports can read, write and administer everything. \
             Start with --auth to require tokens (docs/security.md)"
        );
    }
    Ok(Arc::new(auth))
}

/// Persists the write buffer when it is due (size or age). A failed persist
/// (a full disk, say) is retried after 1 s, then 2 s, ... up to a minute:
/// each attempt rewrites the whole buffer, so retrying every second would
/// only add load to a disk already in trouble.
async fn persist_loop(storage: Arc<Storage>, mut stop: watch::Receiver<bool>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if retry_at.is_some_and(|at| tokio::time::Instant::now() < at) || !storage.persist_due() {
            continue;
        }
        match storage.persist().await {
            Ok(_) => {
                retry_at = None;
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::error!(
                    "persisting the write buffer failed (the WAL keeps the data; retrying in {}s): {e}",
                    backoff.as_secs()
                );
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Drops segments past retention, merges segments when due, deletes
/// replaced files after their grace period and forgets series inactive for
/// `limits.series_window`; every `compaction.interval`.
async fn compact_loop(storage: Arc<Storage>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(storage.config().compaction.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = storage.expire().await {
            tracing::error!("dropping segments past retention failed (will retry): {e}");
        }
        if let Err(e) = storage.compact().await {
            tracing::error!("compaction failed (the segments stay as they are; will retry): {e}");
        }
        storage.purge_retired();
        storage.prune_inactive_series();
    }
}

/// Computes the roll-up buckets that have closed, every 10 s.
async fn rollup_loop(rollups: Arc<tocsin_query::rollup::Rollups>, mut stop: watch::Receiver<bool>) {
    if rollups.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        rollups.run_due(tocsin_storage::now_ns()).await;
    }
}

/// The alerting engine over this server's query engine, recording history
/// in the `system` database and showing its alerts as `system.alerts`.
fn start_alerting(
    config: &ServerConfig,
    external_url: &str,
    storage: &Arc<Storage>,
    query: &Arc<QueryEngine>,
) -> Result<Arc<tocsin_alerting::AlertEngine>, ServerError> {
    use tocsin_alerting::tables::{AlertsTable, StorageHistory};
    let mut opts = tocsin_alerting::EngineOptions::new(storage.data_dir().join("alerting"));
    opts.rules_path = config.alerting.rules.clone();
    opts.external_url = external_url.to_string();
    opts.link_ttl = config.alerting.link_ttl;
    opts.default_database = config.alerting.database.clone();
    let engine = tocsin_alerting::AlertEngine::start(
        opts,
        Arc::new(tocsin_alerting::SystemClock),
        Arc::clone(query) as Arc<dyn tocsin_alerting::engine::RuleQuerier>,
        Arc::new(StorageHistory { storage: Arc::clone(storage) }),
    )?;
    query.register_system_table("alerts", Arc::new(AlertsTable { engine: Arc::downgrade(&engine) }));
    for (name, schema) in tocsin_alerting::tables::stored_tables() {
        query.declare_system_table(name, schema.arrow_schema());
    }
    query.register_system_table(
        "oncall",
        Arc::new(tocsin_alerting::tables::OnCallTable { engine: Arc::downgrade(&engine) }),
    );
    storage.add_write_observer(engine.ingest_observer());
    let c = engine.config();
    tracing::info!(
        groups = c.groups.len(),
        rules = c.rule_count(),
        receivers = c.receivers.len(),
        "alerting engine ready"
    );
    Ok(engine)
}

/// Drops backup images that no client has read for a while.
async fn backup_sweep(backups: Arc<backup::Backups>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => backups.sweep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// SIGHUP reloads the rules (a bad file is logged and the old rules stay).
async fn reload_on_sighup(
    engine: Arc<tocsin_alerting::AlertEngine>,
    audit: tocsin_alerting::engine::ReloadHook,
    mut stop: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading rules");
                    let result = engine.reload().map_err(|e| e.to_string());
                    audit("SIGHUP", result);
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (engine, audit, stop.wait_for(|s| *s).await);
    }
}

/// SQL `INSERT` counted against the ingest protocols' per-caller rates.
struct SqlWriteRates(Arc<tocsin_ingest::rate::CallerRates>);

impl tocsin_query::WriteRates for SqlWriteRates {
    fn admit(&self, caller: &str) -> Result<(), (u64, Duration)> {
        self.0.admit(caller, std::time::Instant::now()).map_err(|wait| (self.0.rate(), wait))
    }

    fn charge(&self, caller: &str, rows: u64) {
        self.0.charge(caller, rows, std::time::Instant::now());
    }
}
