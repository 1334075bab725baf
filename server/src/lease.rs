//! Leadership through a lease in etcd (`[ha] etcd`, `tocsin serve --etcd
//! URL`): of the servers configured with one copy in a bucket and one
//! etcd, the one holding the lease is the primary; the others are standbys
//! that wait for it (docs/operations.md).
//!
//! The primary holds a key (`[ha] key`, by default derived from the copy's
//! URL) attached to a lease of `lease_ttl`, renewed every third of it. It
//! acts (acknowledges writes, pushes its copy, evaluates rules and sends
//! notifications) only until `deadline`: the time of the last renewal
//! request that etcd answered, plus the TTL, less a margin. The request is
//! sent before etcd renews, so etcd's expiry is never earlier than the
//! deadline. A primary that cannot renew in time (etcd unreachable, its
//! process paused, its machine cut off) stops acting for good when the
//! deadline passes, before etcd can give the key to a standby; it must be
//! restarted (on an empty data directory) to serve again, as a standby.
//!
//! etcd is spoken to through its JSON gateway (`/v3/...`, etcd 3.4 and
//! later), with the HTTP client the server already has.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

/// What leadership needs (`[ha]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// etcd's client URL, e.g. `http://10.0.0.5:2379`.
    pub etcd: String,
    /// The key the primary holds.
    pub key: String,
    /// This server's name, as standbys and logs show the primary.
    pub name: String,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("etcd at {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("etcd at {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("etcd at {url} answered something this server does not understand: {what}")]
    Answer { url: String, what: String },
}

/// The part of etcd's v3 API leadership uses.
struct Etcd {
    base: String,
    http: reqwest::Client,
    /// A request that takes longer than this has failed.
    timeout: Duration,
}

/// The largest answer read from etcd.
const MAX_ANSWER_BYTES: usize = 1 << 20;

impl Etcd {
    async fn call(&self, path: &str, body: Value) -> Result<Value, LeaseError> {
        let url = format!("{}/v3/{path}", self.base);
        let http = |source| LeaseError::Http { url: self.base.clone(), source };
        let resp = self.http.post(&url).timeout(self.timeout).json(&body).send().await.map_err(http)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(http)?;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER_BYTES)]).to_string();
        if !status.is_success() {
            return Err(LeaseError::Status {
                url: self.base.clone(),
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| self.odd(format!("{e} in {:?}", clip(&text))))
    }

    fn odd(&self, what: impl Into<String>) -> LeaseError {
        LeaseError::Answer { url: self.base.clone(), what: what.into() }
    }

    /// A new lease of `ttl`; its id.
    async fn grant(&self, ttl: Duration) -> Result<i64, LeaseError> {
        let a = self.call("lease/grant", json!({ "TTL": ttl.as_secs().max(1).to_string() })).await?;
        if let Some(e) = a.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            return Err(self.odd(format!("granting a lease: {e}")));
        }
        int(&a["ID"]).ok_or_else(|| self.odd(format!("no lease id in {a}")))
    }

    /// Renews `lease`; the TTL etcd gave it, or `None` once it has expired.
    async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, LeaseError> {
        let a = self.call("lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        let r = a.get("result").ok_or_else(|| self.odd(format!("no result in {a}")))?;
        Ok(int(&r["TTL"]).filter(|t| *t > 0).map(|t| Duration::from_secs(t.unsigned_abs())))
    }

    /// Puts `key` = `value` on `lease` unless the key exists; `Ok(None)`
    /// when it was put, else the value that holds it.
    async fn put_if_absent(&self, key: &str, value: &str, lease: i64) -> Result<Option<String>, LeaseError> {
        let k = B64.encode(key);
        let a = self
            .call(
                "kv/txn",
                json!({
                    "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                    "success": [{ "request_put": { "key": k, "value": B64.encode(value), "lease": lease.to_string() } }],
                    "failure": [{ "request_range": { "key": k } }],
                }),
            )
            .await?;
        if a.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let held = a["responses"][0]["response_range"]["kvs"][0]["value"]
            .as_str()
            .and_then(|v| B64.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).to_string());
        // The key went between the compare and the range: nobody holds it.
        Ok(Some(held.unwrap_or_else(|| "nobody (the key just expired)".into())))
    }

    async fn revoke(&self, lease: i64) -> Result<(), LeaseError> {
        self.call("lease/revoke", json!({ "ID": lease.to_string() })).await.map(|_| ())
    }
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn int(v: &Value) -> Option<i64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64())
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// This server's hold on the primary's key.
pub struct Leadership {
    etcd: Etcd,
    pub config: LeaseConfig,
    lease: i64,
    /// Until when this server may act as the primary.
    deadline: Mutex<Instant>,
    /// Why it may not any more, once that is so.
    lost: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("config", &self.config).field("lease", &self.lease).finish()
    }
}

impl Leadership {
    /// Waits until this server holds the primary's key: a standby until
    /// then. Says who holds it, once, and again when that changes.
    pub async fn acquire(config: LeaseConfig) -> Result<Arc<Self>, LeaseError> {
        let etcd = Etcd {
            base: config.etcd.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            timeout: (config.ttl / 3).max(Duration::from_millis(500)),
        };
        let every = (config.ttl / 3).max(Duration::from_millis(200));
        let lease = etcd.grant(config.ttl).await?;
        let mut told: Option<String> = None;
        loop {
            // The lease is renewed while this server waits, so that it is
            // alive when the key comes free.
            let sent = Instant::now();
            match etcd.keep_alive(lease).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(etcd.odd("this server's lease expired while it waited for the primary's key")),
                Err(e) => return Err(e),
            }
            match etcd.put_if_absent(&config.key, &config.name, lease).await? {
                None => {
                    tracing::info!(key = config.key, name = config.name, "this server holds the lease: primary");
                    let ttl = config.ttl;
                    return Ok(Arc::new(Leadership {
                        etcd,
                        config,
                        lease,
                        deadline: Mutex::new(sent + deadline_after(ttl)),
                        lost: watch::Sender::new(None),
                    }));
                }
                Some(holder) => {
                    if told.as_deref() != Some(holder.as_str()) {
                        tracing::info!(
                            key = config.key,
                            primary = holder,
                            "standby: {holder} holds the lease; this server takes over when it lets it go or its \
                             lease expires (within {:?})",
                            config.ttl
                        );
                        told = Some(holder);
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// `Ok` while this server may act as the primary; afterwards why not.
    pub fn check(&self) -> Result<(), String> {
        if let Some(why) = self.lost.borrow().clone() {
            return Err(why);
        }
        if Instant::now() < *self.deadline.lock() {
            return Ok(());
        }
        let why = format!(
            "this server's lease in etcd ({}, key {}) was not renewed in time: another server may be primary now",
            self.config.etcd, self.config.key
        );
        self.lost.send_replace(Some(why.clone()));
        Err(why)
    }

    /// Turns `Some(why)` once this server is no longer the primary.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.subscribe()
    }

    /// Renews the lease every third of its TTL until stopped or lost; a
    /// stopping server lets it go, so that a standby takes over at once.
    pub async fn keep(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = (self.config.ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.check().is_err() {
                break;
            }
            let sent = Instant::now();
            match self.etcd.keep_alive(self.lease).await {
                Ok(Some(_)) => {
                    // An answer that took longer than the deadline left
                    // does not bring it back.
                    if self.check().is_ok() {
                        *self.deadline.lock() = sent + deadline_after(self.config.ttl);
                    }
                }
                Ok(None) => {
                    self.lost.send_replace(Some(format!(
                        "this server's lease in etcd ({}, key {}) expired: another server may be primary now",
                        self.config.etcd, self.config.key
                    )));
                    break;
                }
                Err(e) => tracing::warn!("renewing the lease in etcd failed (retrying until it expires): {e}"),
            }
        }
        let why = self.check().err().unwrap_or_default();
        tracing::error!("no longer the primary: {why}. Writes are refused and nothing is sent from now on");
    }

    /// Lets the key go at a clean stop, after the last push: a standby
    /// takes over at once instead of after the TTL.
    pub async fn release(&self) {
        self.lost.send_replace(Some("this server is stopping".into()));
        if let Err(e) = self.etcd.revoke(self.lease).await {
            tracing::warn!("letting the lease go failed (a standby takes over when it expires): {e}");
        }
    }
}

impl tocsin_storage::Lease for Leadership {
    fn check(&self) -> Result<(), String> {
        Leadership::check(self)
    }
}

/// How long after a renewal request the primary may act: the TTL less a
/// fifth (at least 200 ms), for the renewal's own time and clock drift.
fn deadline_after(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 5).max(Duration::from_millis(200)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_leaves_a_margin_before_etcd_expires_the_lease() {
        assert_eq!(deadline_after(Duration::from_secs(10)), Duration::from_secs(8));
        assert_eq!(deadline_after(Duration::from_secs(1)), Duration::from_millis(800));
        assert_eq!(deadline_after(Duration::from_millis(500)), Duration::from_millis(300));
    }

    #[test]
    fn integers_come_as_strings_or_numbers() {
        assert_eq!(int(&json!("7587899398657668101")), Some(7_587_899_398_657_668_101));
        assert_eq!(int(&json!(5)), Some(5));
        assert_eq!(int(&json!(null)), None);
    }
}
