//! Server configuration: a TOML file (every key optional) validated into the
//! components' configs. Command-line flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tocsin_ingest::IngestConfig;
use tocsin_query::rollup::RollupConfig;
use tocsin_storage::segment::SegmentCompression;
use tocsin_storage::{FsyncPolicy, StorageConfig};

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:4317";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:4318";
pub const DEFAULT_DATA_DIR: &str = "tocsin-data";

/// The TOML file, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    /// `writer` (default) or `reader` (docs/operations.md).
    pub role: Option<String>,
    pub grpc_addr: Option<String>,
    pub http_addr: Option<String>,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub alerting: AlertingSection,
    pub compaction: CompactionSection,
    pub retention: RetentionSection,
    /// `[[rollup]]` tables.
    pub rollup: Vec<RollupSection>,
    pub auth: AuthSection,
    pub tls: TlsSection,
    pub syslog: SyslogSection,
    pub console: ConsoleSection,
    pub ha: HaSection,
}

/// Where the password of `[ha] etcd_user` is read from.
pub const ETCD_PASSWORD_ENV: &str = "TOCSIN_ETCD_PASSWORD";

/// `[ha]`: a primary and standbys on one copy in a bucket, the primary
/// being the server that holds a lease in etcd (docs/operations.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaSection {
    /// etcd's client URL, e.g. `http://10.0.0.5:2379`, or its members'
    /// URLs separated by commas (tried in turn); unset, no lease.
    pub etcd: Option<String>,
    /// etcd's user, when etcd requires authentication; the password is
    /// read from the environment variable `TOCSIN_ETCD_PASSWORD`.
    pub etcd_user: Option<String>,
    /// How long the primary's lease lasts unless renewed (every third of
    /// it); a standby takes over within about this long.
    pub lease_ttl: String,
    /// The key the primary holds; default `/tocsin/primary/` + the copy's
    /// URL (servers on one copy share one key).
    pub key: Option<String>,
    /// This server's name, as the others show the primary; default
    /// `HOSTNAME:HTTP_PORT`.
    pub name: Option<String>,
    /// PEM file of the CA that signed etcd's certificate (an `https://`
    /// etcd whose certificate no public CA signed).
    pub etcd_ca: Option<PathBuf>,
    /// PEM files of this server's client certificate and its key, for an
    /// etcd that asks for one (`--client-cert-auth`).
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
}

impl HaSection {
    /// `etcd_ca`, `etcd_cert` and `etcd_key` read and checked.
    fn etcd_tls(&self) -> Result<crate::lease::EtcdTls, ConfigError> {
        let read = |key: &'static str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| ConfigError::Invalid { key, reason: format!("cannot read {}: {e}", path.display()) })
        };
        let ca = self.etcd_ca.as_ref().map(|p| read("ha.etcd_ca", p)).transpose()?;
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let mut pem = read("ha.etcd_cert", cert)?;
                pem.push(b'\n');
                pem.extend(read("ha.etcd_key", key)?);
                Some(pem)
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: if self.etcd_cert.is_some() { "ha.etcd_key" } else { "ha.etcd_cert" },
                    reason: "a client certificate for etcd needs both etcd_cert and etcd_key".into(),
                });
            }
        };
        let tls = crate::lease::EtcdTls { ca, identity };
        tls.client().map_err(|reason| ConfigError::Invalid {
            key: if reason.starts_with("etcd_ca") { "ha.etcd_ca" } else { "ha.etcd_cert" },
            reason,
        })?;
        Ok(tls)
    }
}

impl Default for HaSection {
    fn default() -> Self {
        Self {
            etcd: None,
            etcd_user: None,
            lease_ttl: "10s".into(),
            key: None,
            name: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }
}

/// `[console]`: the web console served at `/` on the HTTP port
/// (docs/console.md). Every panel's SQL runs as the person looking at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    pub enabled: bool,
    /// How often the overview and the alerts view refresh.
    pub refresh: String,
    /// The alert label that names a device in the overview's health grid.
    pub device_label: String,
    /// A statement listing the devices of the health grid: a `device`
    /// column, and any others to group by (business system, type, room).
    /// Empty: the devices that have active alerts.
    pub devices_sql: String,
    /// Top-N panels of the overview (`[[console.panels]]`).
    pub panels: Vec<ConsolePanel>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: true,
            refresh: "10s".into(),
            device_label: "host".into(),
            devices_sql: String::new(),
            panels: Vec::new(),
        }
    }
}

/// One top-N panel: a statement returning a label column and a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsolePanel {
    pub title: String,
    pub sql: String,
    #[serde(default)]
    pub database: Option<String>,
}

/// The console as configured (see [`ConsoleSection`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleConfig {
    #[serde(skip)]
    pub enabled: bool,
    pub refresh_ms: u64,
    pub device_label: String,
    pub devices_sql: String,
    pub panels: Vec<ConsolePanel>,
}

impl ConsoleSection {
    fn validate(self) -> Result<ConsoleConfig, ConfigError> {
        let refresh = parse_duration(&self.refresh).ok().filter(|d| *d >= Duration::from_secs(1)).ok_or_else(|| {
            ConfigError::Invalid {
                key: "console.refresh",
                reason: format!("{:?} is not a duration of at least 1s", self.refresh),
            }
        })?;
        if self.device_label.is_empty() {
            return Err(ConfigError::Invalid { key: "console.device_label", reason: "may not be empty".into() });
        }
        if self.panels.len() > 50 {
            return Err(ConfigError::Invalid {
                key: "console.panels",
                reason: format!("{} panels: at most 50", self.panels.len()),
            });
        }
        if let Some(p) = self.panels.iter().find(|p| p.title.trim().is_empty() || p.sql.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "console.panels",
                reason: format!("a panel needs a title and a sql statement (title {:?})", p.title),
            });
        }
        Ok(ConsoleConfig {
            enabled: self.enabled,
            refresh_ms: refresh.as_millis() as u64,
            device_label: self.device_label,
            devices_sql: self.devices_sql,
            panels: self.panels,
        })
    }
}

/// `[syslog]`: listeners for syslog senders (rsyslog, syslog-ng, network
/// devices), off unless an address is set (docs/protocols.md, Syslog).
/// Syslog carries no credentials: whoever reaches these ports may write
/// events into `database.table`, and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogSection {
    /// TCP, octet-counted or newline-framed (RFC 6587); empty: off.
    pub tcp_addr: String,
    /// UDP, one message per datagram; empty: off.
    pub udp_addr: String,
    pub database: String,
    pub table: String,
    /// Longest frame; a longer one closes its TCP connection.
    pub max_frame_bytes: usize,
    /// Most TCP connections at once; more are closed when accepted.
    pub max_connections: usize,
    /// Most TCP connections from one address at once.
    pub max_connections_per_host: usize,
    /// How long a TCP connection may hold an incomplete frame.
    pub frame_timeout: String,
}

impl Default for SyslogSection {
    fn default() -> Self {
        SyslogSection {
            tcp_addr: String::new(),
            udp_addr: String::new(),
            database: "public".into(),
            table: "logs".into(),
            max_frame_bytes: 128 * 1024,
            max_connections: 1024,
            max_connections_per_host: 64,
            frame_timeout: "30s".into(),
        }
    }
}

/// The syslog listeners the server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogConfig {
    pub tcp_addr: Option<SocketAddr>,
    pub udp_addr: Option<SocketAddr>,
    pub database: String,
    pub table: String,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_host: usize,
    pub frame_timeout: Duration,
}

impl SyslogSection {
    fn validate(self, tcp: Option<String>, udp: Option<String>) -> Result<SyslogConfig, ConfigError> {
        let addr = |key: &'static str, v: Option<String>| -> Result<Option<SocketAddr>, ConfigError> {
            match v.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|e| ConfigError::Invalid {
                    key,
                    reason: format!("{v:?} is not a host:port address ({e})"),
                }),
            }
        };
        let tcp_addr = addr("syslog.tcp_addr", tcp.or(Some(self.tcp_addr)))?;
        let udp_addr = addr("syslog.udp_addr", udp.or(Some(self.udp_addr)))?;
        tocsin_storage::write::check_database_name(&self.database)
            .map_err(|e| ConfigError::Invalid { key: "syslog.database", reason: e.to_string() })?;
        tocsin_storage::write::check_table_name(&self.table)
            .map_err(|e| ConfigError::Invalid { key: "syslog.table", reason: e.to_string() })?;
        if self.max_frame_bytes < 1024 || self.max_connections == 0 || self.max_connections_per_host == 0 {
            return Err(ConfigError::Invalid {
                key: "syslog",
                reason: "max_frame_bytes must be at least 1024, max_connections and max_connections_per_host positive"
                    .into(),
            });
        }
        let frame_timeout =
            parse_duration(&self.frame_timeout).ok().filter(|d| !d.is_zero()).ok_or_else(|| ConfigError::Invalid {
                key: "syslog.frame_timeout",
                reason: format!("{:?} is not a positive duration such as 30s", self.frame_timeout),
            })?;
        Ok(SyslogConfig {
            tcp_addr,
            udp_addr,
            database: self.database,
            table: self.table,
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
            frame_timeout,
        })
    }
}

/// `[tls]`: HTTPS and gRPC over TLS on both ports (docs/security.md). Off
/// when `cert` is empty. Relative paths are from the working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM CA certificates: when set, clients need a certificate signed by one.
    pub client_ca: String,
    /// How often the certificate and key files are checked for changes.
    pub reload_check: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection { cert: String::new(), key: String::new(), client_ca: String::new(), reload_check: "10s".into() }
    }
}

/// `[auth]`: tokens and roles (docs/security.md). Off by default, and then
/// the server refuses to listen beyond loopback unless `--insecure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub enabled: bool,
    /// How long a user's login session lasts (`12h`).
    pub session_ttl: String,
    /// `[auth.roles.NAME]`: roles besides the built-in ones.
    pub roles: std::collections::BTreeMap<String, tocsin_auth::RoleSpec>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection { enabled: false, session_ttl: "12h".into(), roles: Default::default() }
    }
}

/// `[[rollup]]`: downsampled aggregates of one table kept in another
/// (docs/storage.md, Roll-ups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupSection {
    pub name: String,
    /// `database.table` read.
    pub source: String,
    /// `database.table` written (created on the first run).
    pub target: String,
    pub bucket: String,
    /// How long after a bucket ends it is computed (room for late rows).
    pub delay: String,
    /// How far back a roll-up whose target is empty starts.
    pub backfill: String,
    /// Fields to aggregate; empty: every numeric field.
    pub fields: Vec<String>,
    pub aggregates: Vec<String>,
    /// Most buckets per run (one INSERT).
    pub max_buckets: u32,
    /// Late rows in a bucket that ended within this of the newest computed
    /// one make it be computed again; `0s`: never.
    pub late: String,
}

impl Default for RollupSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            source: String::new(),
            target: String::new(),
            bucket: "1h".into(),
            delay: "1m".into(),
            backfill: "1d".into(),
            fields: Vec::new(),
            aggregates: ["avg", "min", "max", "count"].map(String::from).to_vec(),
            max_buckets: 24,
            late: "1h".into(),
        }
    }
}

impl RollupSection {
    fn validate(self, seen: &mut std::collections::HashSet<String>) -> Result<RollupConfig, ConfigError> {
        let bad = |reason: String| ConfigError::Invalid { key: "rollup", reason };
        if self.name.is_empty() || !seen.insert(self.name.clone()) {
            return Err(bad(format!("every [[rollup]] needs a unique name; {:?} is empty or repeated", self.name)));
        }
        let split = |what: &str, v: &str| -> Result<(String, String), ConfigError> {
            match v.split_once('.') {
                Some((db, t)) if !db.is_empty() && !t.is_empty() => Ok((db.to_string(), t.to_string())),
                _ => Err(bad(format!(
                    "rollup {:?}: {what} {v:?} must be database.table, e.g. \"public.cpu\"",
                    self.name
                ))),
            }
        };
        let (source_db, source) = split("source", &self.source)?;
        let (target_db, target) = split("target", &self.target)?;
        if (&source_db, &source) == (&target_db, &target) {
            return Err(bad(format!("rollup {:?}: target must differ from source", self.name)));
        }
        let duration =
            |what: &str, v: &str| parse_duration(v).map_err(|e| bad(format!("rollup {:?}: {what}: {e}", self.name)));
        let bucket = duration("bucket", &self.bucket)?;
        if bucket.as_secs() == 0 || bucket.subsec_nanos() != 0 {
            return Err(bad(format!("rollup {:?}: bucket must be a whole number of seconds", self.name)));
        }
        for a in &self.aggregates {
            if !tocsin_query::rollup::AGGREGATES.contains(&a.as_str()) {
                return Err(bad(format!(
                    "rollup {:?}: aggregate {a:?} is not one of {}",
                    self.name,
                    tocsin_query::rollup::AGGREGATES.join(", ")
                )));
            }
        }
        if self.aggregates.is_empty() || self.max_buckets == 0 {
            return Err(bad(format!("rollup {:?}: needs aggregates and max_buckets >= 1", self.name)));
        }
        Ok(RollupConfig {
            delay: duration("delay", &self.delay)?,
            backfill: duration("backfill", &self.backfill)?,
            late: duration("late", &self.late)?,
            name: self.name,
            source_db,
            source,
            target_db,
            target,
            bucket,
            fields: self.fields,
            aggregates: self.aggregates,
            max_buckets: self.max_buckets,
        })
    }
}

/// `[retention]`: how long rows are kept, as `forever` or a duration
/// (docs/storage.md, Retention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    pub default: String,
    /// Database name to retention; wins over `default`.
    pub databases: std::collections::BTreeMap<String, String>,
    /// `database.table` to retention; wins over the database's.
    pub tables: std::collections::BTreeMap<String, String>,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self { default: "forever".into(), databases: Default::default(), tables: Default::default() }
    }
}

/// `forever` keeps rows forever; otherwise a positive duration.
fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    if s.trim().eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: use \"forever\" or a positive duration such as 30d")),
        d => Ok(Some(d)),
    }
}

/// `[compaction]`: merging a partition's segments (docs/storage.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionSection {
    pub enabled: bool,
    /// Merge when a partition holds this many segments of one level.
    pub fan_in: usize,
    /// Merge all of a partition's segments once its end is this far past.
    pub cold_after: String,
    /// Most rows one merge decodes in memory.
    pub max_rows: u64,
    /// Replaced files are deleted this long after the swap.
    pub grace: String,
    /// How often to look for merges that are due.
    pub interval: String,
}

impl Default for CompactionSection {
    fn default() -> Self {
        Self {
            enabled: true,
            fan_in: 4,
            cold_after: "1h".into(),
            max_rows: 10_000_000,
            grace: "10m".into(),
            interval: "10s".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingSection {
    /// Rule file, or directory of `*.yml`/`*.yaml` files.
    pub rules: Option<PathBuf>,
    /// This server's URL as receivers should link to it.
    pub external_url: Option<String>,
    /// How long the ack and silence links of a notification work
    /// (default 24h).
    pub link_ttl: Option<String>,
    /// The database of rule groups that name none (default `public`):
    /// `telegraf` runs the rule pack over what Telegraf writes.
    pub database: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `always` (fsync before every acknowledgement, shared by concurrent
    /// writers) or a duration such as `100ms` (fsync on that interval).
    pub fsync: String,
    /// Width of a time partition (one segment per table per partition).
    pub partition: String,
    /// Persist the write buffer at this size...
    pub persist_max_mb: usize,
    /// ...or at this age.
    pub persist_max_age: String,
    /// Refuse writes while this much is buffered.
    pub max_buffer_mb: usize,
    /// `zstd`, `zstd:LEVEL`, `lz4` or `none`.
    pub compression: String,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows per Parquet data page (granularity of page-index pruning).
    pub page_rows: usize,
    /// Float columns of short decimals stored as DECIMAL(18, s).
    pub decimal_floats: bool,
    /// Last write wins: of rows of one series and time in a metrics table,
    /// only the last written counts (storage.md, Last write wins).
    pub deduplicate: bool,
    /// A table's rows of one partition fewer than this go into a pack
    /// shared with other small tables; 0 gives each table its own files.
    pub pack_max_rows: usize,
    /// `s3://BUCKET/PREFIX`: keep a copy of the data directory there, and
    /// start from it when the data directory is empty (operations.md).
    pub object_store: Option<String>,
    /// How often the copy is brought up to date.
    pub object_store_interval: String,
    /// Where the WAL goes: `local` (only the data directory; the bucket
    /// gets it with the next copy), `object-store` (shipped to the bucket
    /// every `wal_ship_interval` as well) or `object-store-sync` (a write is
    /// acknowledged once its records are in the bucket).
    pub wal: String,
    /// How often `wal = "object-store"` ships the WAL.
    pub wal_ship_interval: String,
    /// Where segment files live once the copy holds them: `local` (the
    /// data directory keeps them all; the bucket holds a copy) or
    /// `object-store` (the bucket is their home; the data directory keeps
    /// at most `cache_mb` of those the copy holds, fetching the others when
    /// read). A writer's setting; a reader always fetches (`cache_mb`).
    pub segments: String,
    /// MiB of segment files whose home is the bucket kept on disk at most:
    /// on a reader (`--role reader`; 0 fetches the whole copy at each
    /// refresh), and on a writer of `segments = "object-store"`.
    #[serde(alias = "reader_cache_mb")]
    pub cache_mb: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            fsync: "always".into(),
            partition: "1d".into(),
            persist_max_mb: 512,
            persist_max_age: "10m".into(),
            max_buffer_mb: 2048,
            compression: "zstd:3".into(),
            row_group_rows: 256 * 1024,
            page_rows: 64 * 1024,
            decimal_floats: true,
            deduplicate: true,
            pack_max_rows: 65_536,
            object_store: None,
            object_store_interval: "10s".into(),
            wal: "local".into(),
            wal_ship_interval: "1s".into(),
            segments: "local".into(),
            cache_mb: 10 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest gRPC message or HTTP request body.
    pub max_request_bytes: usize,
    /// Longest log message or string field value.
    pub max_string_bytes: usize,
    /// Most columns per table.
    pub max_columns: usize,
    /// Most active series per table (written within `series_window`).
    pub max_series_per_table: usize,
    pub series_window: String,
    /// Most tables over all databases.
    pub max_tables: usize,
    /// Most databases.
    pub max_databases: usize,
    /// Memory the operators of all running queries may hold together, MiB.
    pub max_query_memory_mb: usize,
    /// Longest a client's statement may run, start to last row.
    pub query_timeout: String,
    /// Client statements running at once; one more is refused.
    pub max_concurrent_queries: usize,
    /// The most one HTTP query result may hold, MiB.
    pub max_result_mb: usize,
    /// Live tails open at once (HTTP and gRPC); one more is refused.
    pub max_tail_subscribers: usize,
    /// Rows a second each caller (token, user; everyone together while
    /// auth is off) may write; 0: no limit.
    pub ingest_rows_per_second: u64,
    /// Rows a caller may write at once above that rate; 0: ten seconds' worth.
    pub ingest_burst_rows: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024 * 1024,
            max_string_bytes: 64 * 1024,
            max_columns: 1024,
            max_series_per_table: 1_000_000,
            series_window: "1d".into(),
            max_tables: 100_000,
            max_databases: 1_000,
            max_query_memory_mb: 4096,
            query_timeout: "5m".into(),
            max_concurrent_queries: 64,
            max_result_mb: 1024,
            max_tail_subscribers: 1024,
            ingest_rows_per_second: 0,
            ingest_burst_rows: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub max_request_bytes: usize,
    /// Memory the operators of the running queries may hold together
    /// (sorts, aggregates, joins): over it, a query fails with "resources
    /// exhausted".
    pub max_query_memory_bytes: usize,
    pub query_timeout: Duration,
    pub max_concurrent_queries: usize,
    /// The most one client's query result may hold (HTTP collects it).
    pub max_result_bytes: usize,
    pub max_tail_subscribers: usize,
    pub alerting: AlertingConfig,
    pub rollups: Vec<RollupConfig>,
    /// Authentication and roles; `auth.data_dir` is the storage's.
    pub auth: tocsin_auth::AuthConfig,
    /// TLS on both ports, when configured.
    pub tls: Option<crate::tls::TlsFiles>,
    pub syslog: SyslogConfig,
    pub console: ConsoleConfig,
    /// `[storage] object_store`.
    pub object_store: Option<ObjectStoreConfig>,
    pub role: Role,
    /// `[ha]`: the lease in etcd this server must hold to be the primary.
    pub ha: Option<crate::lease::LeaseConfig>,
}

/// What a server does with its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Takes writes, persists, compacts, evaluates alert rules.
    #[default]
    Writer,
    /// Answers queries from the writer's copy in the bucket
    /// (`object_store`), fetched again every `object_store_interval`; its
    /// data directory is a cache of that copy. Refuses writes.
    Reader,
}

/// Where the copy of the data directory goes, and how often.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub url: String,
    pub interval: Duration,
    /// `[storage] wal`.
    pub wal: WalShipping,
    /// `[storage] cache_mb` in bytes; `None`: a reader fetches the
    /// whole copy.
    pub reader_cache: Option<u64>,
    /// `[storage] segments = "object-store"`: a writer keeps at most this
    /// many bytes of the segment files its copy holds.
    pub writer_cache: Option<u64>,
}

/// `[storage] wal`: whether the WAL goes to the bucket as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalShipping {
    /// Only with the next copy (`local`).
    Local,
    /// Every interval, in the background (`object-store`).
    Background(Duration),
    /// Before each write is acknowledged (`object-store-sync`).
    Sync,
}

#[derive(Debug, Clone)]
pub struct AlertingConfig {
    pub rules: Option<PathBuf>,
    /// As configured; unset, the address the HTTP port is bound to.
    pub external_url: Option<String>,
    pub link_ttl: Duration,
    pub database: Option<String>,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<String>,
    pub http_addr: Option<String>,
    pub rules: Option<PathBuf>,
    /// `--auth`: require tokens whatever the file says.
    pub auth: bool,
    /// `--insecure`: listen beyond loopback with authentication off.
    pub insecure: bool,
    pub syslog_tcp_addr: Option<String>,
    pub syslog_udp_addr: Option<String>,
    /// `--object-store`.
    pub object_store: Option<String>,
    /// `--role`.
    pub role: Option<String>,
    /// `--etcd`.
    pub etcd: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    pub fn validate(self, o: Overrides) -> Result<ServerConfig, ConfigError> {
        let addr = |key: &'static str, v: String| -> Result<SocketAddr, ConfigError> {
            v.parse()
                .map_err(|e| ConfigError::Invalid { key, reason: format!("{v:?} is not a host:port address ({e})") })
        };
        let grpc_addr = addr("grpc_addr", o.grpc_addr.or(self.grpc_addr).unwrap_or_else(|| DEFAULT_GRPC_ADDR.into()))?;
        let http_addr = addr("http_addr", o.http_addr.or(self.http_addr).unwrap_or_else(|| DEFAULT_HTTP_ADDR.into()))?;
        let data_dir = o.data_dir.or(self.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let s = self.storage;
        let fsync = if s.fsync.eq_ignore_ascii_case("always") {
            FsyncPolicy::Always
        } else {
            let d = parse_duration(&s.fsync).map_err(|reason| ConfigError::Invalid { key: "storage.fsync", reason })?;
            if d.is_zero() { FsyncPolicy::Always } else { FsyncPolicy::Interval(d) }
        };
        let partition =
            parse_duration(&s.partition).map_err(|reason| ConfigError::Invalid { key: "storage.partition", reason })?;
        if partition < Duration::from_secs(60) {
            return Err(ConfigError::Invalid { key: "storage.partition", reason: "must be at least 1m".into() });
        }
        let persist_max_age = parse_duration(&s.persist_max_age)
            .map_err(|reason| ConfigError::Invalid { key: "storage.persist_max_age", reason })?;
        let compression = parse_compression(&s.compression)
            .map_err(|reason| ConfigError::Invalid { key: "storage.compression", reason })?;
        let object_store = match o.object_store.or(s.object_store.clone()) {
            Some(url) => {
                // A shared file system (NFS, a mounted volume) will do as well.
                match url.strip_prefix("file://") {
                    Some(path) if Path::new(path).is_absolute() => {}
                    Some(_) => {
                        return Err(ConfigError::Invalid {
                            key: "storage.object_store",
                            reason: format!("{url:?}: a file:// URL names an absolute path, e.g. file:///mnt/tocsin"),
                        });
                    }
                    None => {
                        tocsin_storage::objects::open(&url)
                            .map_err(|e| ConfigError::Invalid { key: "storage.object_store", reason: e.to_string() })?;
                    }
                }
                let interval = parse_duration(&s.object_store_interval)
                    .map_err(|reason| ConfigError::Invalid { key: "storage.object_store_interval", reason })?;
                if interval < Duration::from_secs(1) {
                    return Err(ConfigError::Invalid {
                        key: "storage.object_store_interval",
                        reason: "must be at least 1s".into(),
                    });
                }
                let every = parse_duration(&s.wal_ship_interval)
                    .map_err(|reason| ConfigError::Invalid { key: "storage.wal_ship_interval", reason })?;
                let wal = match s.wal.as_str() {
                    "local" => WalShipping::Local,
                    // A restart on this directory replays its own WAL only:
                    // a tail the machine lost unsynced would be gone
                    // although the bucket has it.
                    "object-store-sync" if fsync != FsyncPolicy::Always => {
                        return Err(ConfigError::Invalid {
                            key: "storage.wal",
                            reason: format!(
                                "\"object-store-sync\" acknowledges a write once it is in the bucket and in the \
                                 local WAL, fsynced: it needs fsync = \"always\" (not {:?})",
                                s.fsync
                            ),
                        });
                    }
                    "object-store-sync" => WalShipping::Sync,
                    "object-store" => {
                        if every < Duration::from_millis(10) || every > interval {
                            return Err(ConfigError::Invalid {
                                key: "storage.wal_ship_interval",
                                reason: format!(
                                    "must be from 10ms to object_store_interval ({}s)",
                                    interval.as_secs_f64()
                                ),
                            });
                        }
                        WalShipping::Background(every)
                    }
                    other => {
                        return Err(ConfigError::Invalid {
                            key: "storage.wal",
                            reason: format!(
                                "{other:?}: use \"local\" (the default), \"object-store\" or \"object-store-sync\""
                            ),
                        });
                    }
                };
                let reader_cache = (s.cache_mb > 0).then(|| s.cache_mb.saturating_mul(1 << 20));
                let writer_cache = match s.segments.as_str() {
                    "local" => None,
                    "object-store" if s.cache_mb == 0 => {
                        return Err(ConfigError::Invalid {
                            key: "storage.cache_mb",
                            reason: "0 keeps every segment file on disk, which is segments = \"local\"; give the MiB \
                                     of segment files to keep with segments = \"object-store\""
                                .into(),
                        });
                    }
                    "object-store" => reader_cache,
                    other => {
                        return Err(ConfigError::Invalid {
                            key: "storage.segments",
                            reason: format!("{other:?}: use \"local\" (the default) or \"object-store\""),
                        });
                    }
                };
                Some(ObjectStoreConfig { url, interval, wal, reader_cache, writer_cache })
            }
            None if s.wal != "local" || parse_duration(&s.wal_ship_interval).is_err() => {
                parse_duration(&s.wal_ship_interval)
                    .map_err(|reason| ConfigError::Invalid { key: "storage.wal_ship_interval", reason })?;
                return Err(ConfigError::Invalid {
                    key: "storage.wal",
                    reason: format!(
                        "{:?} ships the WAL to the object store: give --object-store s3://BUCKET/PREFIX (or [storage] \
                         object_store) too",
                        s.wal
                    ),
                });
            }
            None if s.segments != "local" && s.segments != "object-store" => {
                return Err(ConfigError::Invalid {
                    key: "storage.segments",
                    reason: format!("{:?}: use \"local\" (the default) or \"object-store\"", s.segments),
                });
            }
            None if s.segments != "local" => {
                return Err(ConfigError::Invalid {
                    key: "storage.segments",
                    reason: format!(
                        "{:?} keeps segment files in the object store: give --object-store s3://BUCKET/PREFIX (or \
                         [storage] object_store) too",
                        s.segments
                    ),
                });
            }
            None => None,
        };
        let role = match o.role.or(self.role).as_deref() {
            None | Some("writer") => Role::Writer,
            Some("reader") => Role::Reader,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "role",
                    reason: format!("{other:?} is not a role: use \"writer\" (the default) or \"reader\""),
                });
            }
        };
        let ha = match o.etcd.or(self.ha.etcd.clone()) {
            None => None,
            Some(etcd) => {
                let invalid = |reason: String| ConfigError::Invalid { key: "ha.etcd", reason };
                let endpoints: Vec<String> =
                    etcd.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
                if endpoints.is_empty() {
                    return Err(invalid("no URL given: etcd's client URL, e.g. http://10.0.0.5:2379".into()));
                }
                for e in &endpoints {
                    let url = reqwest::Url::parse(e).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
                    if url.is_none_or(|u| u.host_str().is_none()) {
                        return Err(invalid(format!(
                            "{e:?} is not etcd's client URL, e.g. http://10.0.0.5:2379 (several: separate them with \
                             commas)"
                        )));
                    }
                }
                let credentials = match &self.ha.etcd_user {
                    None => None,
                    Some(user) => {
                        let password = std::env::var(ETCD_PASSWORD_ENV).map_err(|_| ConfigError::Invalid {
                            key: "ha.etcd_user",
                            reason: format!("etcd user {user:?} needs its password in ${ETCD_PASSWORD_ENV}"),
                        })?;
                        Some((user.clone(), password))
                    }
                };
                let Some(copy) = &object_store else {
                    return Err(invalid(
                        "a standby takes over from the primary's copy in a bucket: give --object-store                          s3://BUCKET/PREFIX (or [storage] object_store) too"
                            .into(),
                    ));
                };
                if role == Role::Reader {
                    return Err(invalid("a reader takes no lease (it never writes): leave --etcd out".into()));
                }
                let ttl = parse_duration(&self.ha.lease_ttl)
                    .map_err(|reason| ConfigError::Invalid { key: "ha.lease_ttl", reason })?;
                if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(600) || ttl.subsec_nanos() != 0 {
                    return Err(ConfigError::Invalid {
                        key: "ha.lease_ttl",
                        reason: "must be whole seconds (etcd's leases are) between 2s (etcd's shortest) and 10m".into(),
                    });
                }
                let name = self.ha.name.clone().unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                    format!("{}:{}", host.trim(), http_addr.port())
                });
                // One copy, one key, however its URL is spelled.
                let key = self
                    .ha
                    .key
                    .clone()
                    .unwrap_or_else(|| format!("/tocsin/primary/{}", copy.url.trim_end_matches('/')));
                let h = &self.ha;
                if (h.etcd_ca.is_some() || h.etcd_cert.is_some() || h.etcd_key.is_some())
                    && !endpoints.iter().any(|e| e.starts_with("https://"))
                {
                    return Err(ConfigError::Invalid {
                        key: if h.etcd_ca.is_some() { "ha.etcd_ca" } else { "ha.etcd_cert" },
                        reason: format!("TLS settings for etcd need its https:// URLs, and {etcd:?} has none"),
                    });
                }
                let tls = h.etcd_tls()?;
                Some(crate::lease::LeaseConfig { etcd, endpoints, credentials, key, name, ttl, tls })
            }
        };
        if role == Role::Reader && object_store.is_none() {
            return Err(ConfigError::Invalid {
                key: "role",
                reason: "a reader answers from the writer's copy in a bucket: give the writer's \
                         --object-store s3://BUCKET/PREFIX (or [storage] object_store)"
                    .into(),
            });
        }
        let l = self.limits;
        if l.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.max_request_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        let mut storage = StorageConfig {
            data_dir,
            fsync,
            partition,
            persist_max_bytes: s.persist_max_mb.saturating_mul(1 << 20),
            persist_max_age,
            max_buffer_bytes: s.max_buffer_mb.saturating_mul(1 << 20),
            deduplicate: s.deduplicate,
            ..StorageConfig::default()
        };
        storage.segments.compression = compression;
        if s.row_group_rows == 0 || s.page_rows == 0 {
            return Err(ConfigError::Invalid {
                key: "storage.page_rows",
                reason: "row and page sizes must be positive".into(),
            });
        }
        let c = self.compaction;
        if c.fan_in < 2 || c.max_rows == 0 {
            return Err(ConfigError::Invalid {
                key: "compaction.fan_in",
                reason: "fan_in must be at least 2 and max_rows positive".into(),
            });
        }
        storage.compaction = tocsin_storage::CompactionConfig {
            enabled: c.enabled,
            fan_in: c.fan_in,
            cold_after: parse_duration(&c.cold_after)
                .map_err(|reason| ConfigError::Invalid { key: "compaction.cold_after", reason })?,
            max_rows: c.max_rows,
            grace: parse_duration(&c.grace)
                .map_err(|reason| ConfigError::Invalid { key: "compaction.grace", reason })?,
            interval: parse_duration(&c.interval).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                ConfigError::Invalid { key: "compaction.interval", reason: "must be a positive duration".into() }
            })?,
        };
        let r = self.retention;
        storage.retention.default =
            parse_retention(&r.default).map_err(|reason| ConfigError::Invalid { key: "retention.default", reason })?;
        if let Some(table) = r.tables.keys().find(|t| !t.contains('.')) {
            return Err(ConfigError::Invalid {
                key: "retention.tables",
                reason: format!("{table:?} must be written database.table, e.g. \"public.cpu\""),
            });
        }
        for (key, from, into) in [
            ("retention.databases", r.databases, &mut storage.retention.databases),
            ("retention.tables", r.tables, &mut storage.retention.tables),
        ] {
            for (name, v) in from {
                let keep = parse_retention(&v).map_err(|reason| ConfigError::Invalid { key, reason })?;
                into.insert(name, keep);
            }
        }
        storage.segments.row_group_rows = s.row_group_rows;
        storage.segments.page_rows = s.page_rows;
        storage.segments.decimal_floats = s.decimal_floats;
        storage.segments.pack_max_rows = s.pack_max_rows;
        storage.limits.max_string_bytes = l.max_string_bytes;
        storage.limits.max_columns = l.max_columns;
        if l.max_series_per_table == 0 {
            return Err(ConfigError::Invalid { key: "limits.max_series_per_table", reason: "must be positive".into() });
        }
        storage.limits.max_series_per_table = l.max_series_per_table;
        for (key, v) in [("limits.max_tables", l.max_tables), ("limits.max_databases", l.max_databases)] {
            if v == 0 {
                return Err(ConfigError::Invalid { key, reason: "must be positive".into() });
            }
        }
        if l.max_query_memory_mb < 16 {
            return Err(ConfigError::Invalid {
                key: "limits.max_query_memory_mb",
                reason: "must be at least 16".into(),
            });
        }
        let query_timeout = parse_duration(&l.query_timeout)
            .map_err(|reason| ConfigError::Invalid { key: "limits.query_timeout", reason })?;
        if query_timeout.is_zero() || l.max_concurrent_queries == 0 {
            return Err(ConfigError::Invalid {
                key: "limits",
                reason: "query_timeout and max_concurrent_queries must be positive".into(),
            });
        }
        storage.limits.max_tables = l.max_tables;
        storage.limits.max_databases = l.max_databases;
        storage.limits.series_window = parse_duration(&l.series_window)
            .map_err(|reason| ConfigError::Invalid { key: "limits.series_window", reason })?;
        let alerting = AlertingConfig {
            rules: o.rules.or(self.alerting.rules),
            external_url: match self.alerting.external_url {
                // Links and generatorURLs are built on it: one without a
                // scheme or host made links no phone can open.
                Some(u) => {
                    let host = u
                        .strip_prefix("https://")
                        .or_else(|| u.strip_prefix("http://"))
                        .map(|rest| rest.split('/').next().unwrap_or(""));
                    if host.is_none_or(str::is_empty) {
                        return Err(ConfigError::Invalid {
                            key: "alerting.external_url",
                            reason: format!("{u:?} is not an http:// or https:// URL with a host"),
                        });
                    }
                    Some(u)
                }
                None => None,
            },
            link_ttl: match &self.alerting.link_ttl {
                Some(s) => parse_duration(s).ok().filter(|d| !d.is_zero()).ok_or_else(|| ConfigError::Invalid {
                    key: "alerting.link_ttl",
                    reason: format!("{s:?} is not a positive duration such as 24h"),
                })?,
                None => tocsin_alerting::links::DEFAULT_LINK_TTL,
            },
            database: match self.alerting.database {
                Some(d) => {
                    tocsin_storage::write::check_database_name(&d)
                        .map_err(|e| ConfigError::Invalid { key: "alerting.database", reason: e.to_string() })?;
                    Some(d)
                }
                None => None,
            },
        };
        let mut names = std::collections::HashSet::new();
        let rollups = self.rollup.into_iter().map(|r| r.validate(&mut names)).collect::<Result<Vec<_>, _>>()?;
        // A recompute deletes a range of its target: a target written by
        // two roll-ups would lose the other's rows.
        let mut targets = std::collections::HashSet::new();
        for r in &rollups {
            if !targets.insert((r.target_db.as_str(), r.target.as_str())) {
                return Err(ConfigError::Invalid {
                    key: "rollup",
                    reason: format!(
                        "rollup {:?}: target {}.{} is another roll-up's; give each roll-up a table of its own",
                        r.name, r.target_db, r.target
                    ),
                });
            }
        }
        tocsin_auth::roles_from_config(&self.auth.roles)
            .map_err(|reason| ConfigError::Invalid { key: "auth.roles", reason })?;
        let auth = tocsin_auth::AuthConfig {
            enabled: o.auth || self.auth.enabled,
            data_dir: storage.data_dir.clone(),
            roles: self.auth.roles,
            session_ttl: parse_duration(&self.auth.session_ttl).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                ConfigError::Invalid {
                    key: "auth.session_ttl",
                    reason: format!("{:?} is not a positive duration like 12h", self.auth.session_ttl),
                }
            })?,
        };
        if !auth.enabled && !o.insecure {
            for (key, addr) in [("http_addr", http_addr), ("grpc_addr", grpc_addr)] {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: format!(
                            "{addr} is not a loopback address and authentication is off, so anyone who can reach \
                             it could read, write and administer everything. Start with --auth (or [auth] enabled \
                             = true) to require tokens, or pass --insecure to listen there without them"
                        ),
                    });
                }
            }
        }
        let tls = self.tls.validate()?;
        let syslog = self.syslog.validate(o.syslog_tcp_addr, o.syslog_udp_addr)?;
        if role == Role::Reader && (syslog.tcp_addr.is_some() || syslog.udp_addr.is_some()) {
            return Err(ConfigError::Invalid {
                key: "role",
                reason: "a reader takes no writes, so it cannot listen for syslog: point the senders at the writer"
                    .into(),
            });
        }
        let console = self.console.validate()?;
        Ok(ServerConfig {
            object_store,
            role,
            ha,
            console,
            auth,
            tls,
            syslog,
            grpc_addr,
            http_addr,
            alerting,
            rollups,
            storage,
            ingest: IngestConfig {
                max_message_bytes: l.max_request_bytes,
                max_log_message_bytes: l.max_string_bytes,
                rows_per_second_per_caller: l.ingest_rows_per_second,
                burst_rows_per_caller: l.ingest_burst_rows,
            },
            max_request_bytes: l.max_request_bytes,
            max_query_memory_bytes: l.max_query_memory_mb.saturating_mul(1 << 20),
            query_timeout,
            max_concurrent_queries: l.max_concurrent_queries,
            max_result_bytes: l.max_result_mb.max(1).saturating_mul(1 << 20),
            max_tail_subscribers: l.max_tail_subscribers.max(1),
        })
    }
}

impl TlsSection {
    fn validate(self) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid { key, reason: reason.to_string() };
        if self.cert.is_empty() {
            if !self.key.is_empty() || !self.client_ca.is_empty() {
                return Err(invalid("tls.cert", "tls.key or tls.client_ca is set without a certificate"));
            }
            return Ok(None);
        }
        if self.key.is_empty() {
            return Err(invalid("tls.key", "a certificate needs its private key file"));
        }
        let reload_check = parse_duration(&self.reload_check)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid("tls.reload_check", "not a positive duration like 10s"))?;
        Ok(Some(crate::tls::TlsFiles {
            cert: self.cert.into(),
            key: self.key.into(),
            client_ca: (!self.client_ca.is_empty()).then(|| self.client_ca.into()),
            reload_check,
        }))
    }
}

/// `500ms`, `10s`, `5m`, `1h30m`, `1d` (the alerting rules' syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    tocsin_alerting::duration::parse(s)
}

fn parse_compression(s: &str) -> Result<SegmentCompression, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "zstd" => Ok(SegmentCompression::Zstd(3)),
        "lz4" => Ok(SegmentCompression::Lz4),
        "none" => Ok(SegmentCompression::None),
        other => match other.strip_prefix("zstd:").map(str::parse::<i32>) {
            Some(Ok(level)) if (1..=22).contains(&level) => Ok(SegmentCompression::Zstd(level)),
            _ => Err(format!("{s:?} is not one of zstd, zstd:1..22, lz4, none")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_validates() {
        let c = FileConfig::default();
        let text = toml::to_string(&c).expect("serialize");
        let back: FileConfig = toml::from_str(&text).expect("parse");
        assert_eq!(back, c);
        let v = back.validate(Overrides::default()).expect("valid");
        assert_eq!(v.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert_eq!(v.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(v.storage.fsync, FsyncPolicy::Always);
        assert_eq!(v.storage.partition, Duration::from_secs(86_400));
    }

    #[test]
    fn flags_override_the_file() {
        let c: FileConfig =
            toml::from_str("grpc_addr = \"127.0.0.1:1\"\n[storage]\nfsync = \"100ms\"\n").expect("parse");
        let v = c.validate(Overrides { grpc_addr: Some("127.0.0.1:2".into()), ..Default::default() }).expect("valid");
        assert_eq!(v.grpc_addr.port(), 2);
        assert_eq!(v.storage.fsync, FsyncPolicy::Interval(Duration::from_millis(100)));
    }

    #[test]
    fn beyond_loopback_needs_auth_or_insecure() {
        let open = |o: Overrides| FileConfig::default().validate(o);
        let wide = || Overrides { http_addr: Some("0.0.0.0:4318".into()), ..Default::default() };
        let err = open(wide()).expect_err("no auth, not loopback");
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert!(err.to_string().contains("http_addr"), "{err}");
        let grpc = Overrides { grpc_addr: Some("[::]:4317".into()), ..Default::default() };
        assert!(open(grpc).expect_err("gRPC too").to_string().contains("grpc_addr"));
        assert!(open(Overrides { auth: true, ..wide() }).expect("with --auth").auth.enabled);
        assert!(!open(Overrides { insecure: true, ..wide() }).expect("with --insecure").auth.enabled);
        let file: FileConfig = toml::from_str("http_addr = \"0.0.0.0:1\"\n[auth]\nenabled = true\n").expect("parse");
        assert!(file.validate(Overrides::default()).expect("[auth] enabled").auth.enabled);
        assert!(!open(Overrides::default()).expect("loopback").auth.enabled);
    }

    /// Review of issue 13: `external_url = "x.example"` was accepted and
    /// made links no phone could open.
    /// `segments = "object-store"` needs a bucket and a cache to bound;
    /// `reader_cache_mb` (the key's first name) still reads.
    #[test]
    fn segments_in_the_bucket_need_a_bucket_and_a_bound() {
        let with = |toml_text: &str| -> Result<ServerConfig, ConfigError> {
            let file: FileConfig = toml::from_str(toml_text).expect("parse");
            file.validate(Overrides::default())
        };
        let bucket = "[storage]\nobject_store = \"file:///tmp/b\"\n";
        let err = with("[storage]\nsegments = \"object-store\"\n").expect_err("no bucket");
        assert!(err.to_string().contains("storage.segments") && err.to_string().contains("--object-store"), "{err}");
        let err = with(&format!("{bucket}segments = \"s3\"\n")).expect_err("unknown");
        assert!(err.to_string().contains("\"local\""), "{err}");
        let err = with("[storage]\nsegments = \"S3\"\n").expect_err("unknown, no bucket");
        assert!(err.to_string().contains("\"local\""), "the value is wrong first: {err}");
        let err = with(&format!("{bucket}segments = \"object-store\"\ncache_mb = 0\n")).expect_err("unbounded");
        assert!(err.to_string().contains("storage.cache_mb"), "{err}");
        let c = with(&format!("{bucket}segments = \"object-store\"\nreader_cache_mb = 3\n")).expect("valid");
        let o = c.object_store.expect("bucket");
        assert_eq!((o.writer_cache, o.reader_cache), (Some(3 << 20), Some(3 << 20)));
        let o = with(bucket).expect("valid").object_store.expect("bucket");
        assert_eq!((o.writer_cache, o.reader_cache), (None, Some(10 << 30)));
    }

    #[test]
    fn external_url_needs_a_scheme_and_a_host() {
        let with = |u: &str| -> Result<ServerConfig, ConfigError> {
            let file: FileConfig = toml::from_str(&format!("[alerting]\nexternal_url = \"{u}\"\n")).expect("parse");
            file.validate(Overrides::default())
        };
        for bad in ["x.example", "ftp://x.example", "https://", "http:///x"] {
            let err = with(bad).expect_err(bad).to_string();
            assert!(err.contains("alerting.external_url") && err.contains("http:// or https:// URL"), "{err}");
        }
        for good in ["https://x.example", "https://x.example/tocsin/", "http://10.0.0.1:4318"] {
            assert!(with(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_documented_example_file_is_valid() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("its end");
        let file: FileConfig = toml::from_str(&doc[start..end]).expect("the example parses");
        let v = file.validate(Overrides::default()).expect("the example is valid");
        assert!(v.auth.roles.contains_key("billing"));
    }

    /// etcd's TLS files are read and checked at start; each mistake names
    /// its key.
    #[test]
    fn etcd_tls_files_are_checked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let missing = dir.path().join("missing.pem");
        let with = |ha: &str, etcd: &str| {
            let text = format!("[storage]\nobject_store = \"file:///tmp/copy\"\n[ha]\n{ha}");
            let file: FileConfig = toml::from_str(&text).expect("parse");
            file.validate(Overrides { etcd: Some(etcd.into()), ..Default::default() }).map(|_| ())
        };
        let https = "https://127.0.0.1:2379";
        let err = with(&format!("etcd_ca = {:?}\n", missing.display().to_string()), https).expect_err("missing");
        assert!(err.to_string().contains("ha.etcd_ca") && err.to_string().contains("cannot read"), "{err}");
        let err = with(&format!("etcd_ca = {:?}\n", garbage.display().to_string()), https).expect_err("garbage");
        assert!(err.to_string().contains("ha.etcd_ca") && err.to_string().contains("PEM"), "{err}");
        let err = with(&format!("etcd_cert = {:?}\n", garbage.display().to_string()), https).expect_err("no key");
        assert!(err.to_string().contains("ha.etcd_key") && err.to_string().contains("both"), "{err}");
        let pair = format!(
            "etcd_cert = {:?}\netcd_key = {:?}\n",
            garbage.display().to_string(),
            garbage.display().to_string()
        );
        let err = with(&pair, https).expect_err("not a certificate and key");
        assert!(err.to_string().contains("ha.etcd_cert"), "{err}");
        let err =
            with(&format!("etcd_ca = {:?}\n", garbage.display().to_string()), "http://e:2379").expect_err("plain http");
        assert!(err.to_string().contains("https://"), "{err}");
        assert!(with("", https).is_ok(), "public roots only");
    }

    #[test]
    fn a_lease_needs_a_copy_a_writer_and_a_sane_ttl() {
        let with = |text: &str, etcd: Option<&str>| {
            let file: FileConfig = toml::from_str(text).expect("parse");
            file.validate(Overrides { etcd: etcd.map(String::from), ..Default::default() })
        };
        let copy = "[storage]\nobject_store = \"file:///tmp/copy\"\n";
        let err = with("", Some("http://127.0.0.1:2379")).expect_err("no copy").to_string();
        assert!(err.contains("ha.etcd") && err.contains("--object-store"), "{err}");
        let err = with(&format!("role = \"reader\"\n{copy}"), Some("http://e:2379")).expect_err("reader").to_string();
        assert!(err.contains("reader takes no lease"), "{err}");
        let err = with(copy, Some("127.0.0.1:2379")).expect_err("no scheme").to_string();
        assert!(err.contains("client URL"), "{err}");
        for ttl in ["1s", "2900ms", "11m"] {
            let text = format!("{copy}[ha]\nlease_ttl = \"{ttl}\"\n");
            let err = with(&text, Some("http://e:2379")).expect_err(ttl).to_string();
            assert!(err.contains("ha.lease_ttl"), "{err}");
        }
        let slash = "[storage]\nobject_store = \"file:///tmp/copy/\"\n";
        let key = with(slash, Some("http://e:2379")).expect("valid").ha.expect("a lease").key;
        assert_eq!(key, "/tocsin/primary/file:///tmp/copy", "one key however the URL is spelled");
        let c = with(&format!("{copy}[ha]\netcd = \"http://e:2379\"\nname = \"db-a\"\n"), None).expect("valid");
        let ha = c.ha.expect("a lease");
        assert_eq!((ha.key.as_str(), ha.name.as_str()), ("/tocsin/primary/file:///tmp/copy", "db-a"));
        assert_eq!(ha.ttl, Duration::from_secs(10));
        assert!(with(copy, None).expect("no lease").ha.is_none());
        // Several members, tried in turn; each must be a URL.
        let ha = with(copy, Some("http://e1:2379, https://e2:2379/,")).expect("valid").ha.expect("a lease");
        assert_eq!(ha.endpoints, ["http://e1:2379", "https://e2:2379/"]);
        let err = with(copy, Some("http://e1:2379,e2:2379")).expect_err("one without a scheme").to_string();
        assert!(err.contains("\"e2:2379\"") && err.contains("commas"), "{err}");
        let err = with(copy, Some(" , ")).expect_err("no URL").to_string();
        assert!(err.contains("no URL"), "{err}");
        // A user needs its password in the environment (not in the file).
        let text = format!("{copy}[ha]\netcd_user = \"tocsin\"\n");
        if std::env::var(ETCD_PASSWORD_ENV).is_err() {
            let err = with(&text, Some("http://e:2379")).expect_err("no password").to_string();
            assert!(err.contains("ha.etcd_user") && err.contains(ETCD_PASSWORD_ENV), "{err}");
        }
    }

    #[test]
    fn configured_roles_are_validated() {
        let text = "[auth.roles.billing]\npermissions = [\"query\", \"fly\"]\ntables = [\"billing_*\"]\n";
        let file: FileConfig = toml::from_str(text).expect("parse");
        let err = file.validate(Overrides::default()).expect_err("unknown permission");
        assert!(err.to_string().contains("auth.roles") && err.to_string().contains("fly"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = toml::from_str::<FileConfig>("[storage]\nfsink = \"always\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("fsink"), "{err}");
        let c: FileConfig = toml::from_str("[storage]\npartition = \"1 hour\"\n").expect("parse");
        let err = c.validate(Overrides::default()).expect_err("bad duration").to_string();
        assert!(err.starts_with("config key storage.partition:"), "{err}");
        let c: FileConfig = toml::from_str("[storage]\ncompression = \"gzip\"\n").expect("parse");
        assert!(c.validate(Overrides::default()).expect_err("bad").to_string().contains("storage.compression"));
        for (text, key) in [
            ("fan_in = 1", "compaction.fan_in"),
            ("cold_after = \"soon\"", "compaction.cold_after"),
            ("interval = \"0\"", "compaction.interval"),
        ] {
            let c: FileConfig = toml::from_str(&format!("[compaction]\n{text}\n")).expect("parse");
            let err = c.validate(Overrides::default()).expect_err(text).to_string();
            assert!(err.starts_with(&format!("config key {key}:")), "{text}: {err}");
        }
        for (text, key) in [
            ("default = \"0\"", "retention.default"),
            ("databases = { public = \"a week\" }", "retention.databases"),
            ("tables = { cpu = \"7d\" }", "retention.tables"),
        ] {
            let c: FileConfig = toml::from_str(&format!("[retention]\n{text}\n")).expect("parse");
            let err = c.validate(Overrides::default()).expect_err(text).to_string();
            assert!(err.starts_with(&format!("config key {key}:")), "{text}: {err}");
        }
        let c: FileConfig = toml::from_str(
            "[retention]\ndefault = \"30d\"\ndatabases = { system = \"forever\" }\ntables = { \"public.cpu\" = \"7d\" }\n",
        )
        .expect("parse");
        let r = c.validate(Overrides::default()).expect("valid").storage.retention;
        assert_eq!(r.of("public", "mem"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.of("public", "cpu"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r.of("system", "alert_history"), None);
        let rollup = |extra: &str| {
            let text =
                format!("[[rollup]]\nname = \"r\"\nsource = \"public.cpu\"\ntarget = \"public.cpu_1h\"\n{extra}\n");
            toml::from_str::<FileConfig>(&text).expect("parse").validate(Overrides::default())
        };
        let r = rollup("").expect("valid").rollups;
        assert_eq!((r[0].target.as_str(), r[0].bucket), ("cpu_1h", Duration::from_secs(3600)));
        for (extra, says) in [
            ("aggregates = [\"median\"]", "aggregate \"median\""),
            ("bucket = \"1500ms\"", "whole number of seconds"),
            ("[[rollup]]\nname = \"r\"\nsource = \"a.b\"\ntarget = \"a.c\"", "unique name"),
            ("[[rollup]]\nname = \"r2\"\nsource = \"public.mem\"\ntarget = \"public.cpu_1h\"", "another roll-up's"),
        ] {
            let err = rollup(extra).expect_err(extra).to_string();
            assert!(err.starts_with("config key rollup:") && err.contains(says), "{extra}: {err}");
        }
        let c: FileConfig =
            toml::from_str("[[rollup]]\nname = \"r\"\nsource = \"cpu\"\ntarget = \"public.c\"\n").expect("parse");
        assert!(c.validate(Overrides::default()).expect_err("bad source").to_string().contains("database.table"));
        let c: FileConfig = toml::from_str("[compaction]\nfan_in = 8\ngrace = \"1m\"\n").expect("parse");
        let v = c.validate(Overrides::default()).expect("valid");
        assert_eq!((v.storage.compaction.fan_in, v.storage.compaction.grace), (8, Duration::from_secs(60)));
    }
}
