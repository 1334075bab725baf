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
//! later), with the HTTP client the server already has. Several client
//! URLs (one per member) are tried in turn: a request that gets no answer
//! from one member (refused, timed out, or a 5xx such as "no leader") goes
//! to the next, and the member that answered is asked first next time.
//! With a user (`[ha] etcd_user`, its password in `TOCSIN_ETCD_PASSWORD`)
//! the server authenticates and sends etcd's token with each request,
//! authenticating again when etcd says the token is no longer valid.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

/// What leadership needs (`[ha]`).
#[derive(Clone, PartialEq)]
pub struct LeaseConfig {
    /// etcd's client URLs as given (comma-separated), for messages.
    pub etcd: String,
    /// Each member's client URL, e.g. `http://10.0.0.5:2379`.
    pub endpoints: Vec<String>,
    /// etcd's user and password, when etcd requires authentication.
    pub credentials: Option<(String, String)>,
    /// The key the primary holds.
    pub key: String,
    /// This server's name, as standbys and logs show the primary.
    pub name: String,
    pub ttl: Duration,
    /// TLS towards etcd beyond the public roots (`[ha] etcd_ca`,
    /// `etcd_cert`, `etcd_key`).
    pub tls: EtcdTls,
}

/// PEM files for an etcd of `https://` URLs whose certificate a private CA
/// signed, or that asks its clients for theirs (`--client-cert-auth`).
#[derive(Clone, PartialEq, Default)]
pub struct EtcdTls {
    /// The CA (or CAs) that signed etcd's certificate, trusted besides the
    /// public roots.
    pub ca: Option<Vec<u8>>,
    /// This server's client certificate (chain) followed by its private
    /// key.
    pub identity: Option<Vec<u8>>,
}

impl EtcdTls {
    /// The HTTP client for etcd with these; the error says what is wrong
    /// with which.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("etcd_ca holds no PEM certificate that can be read: {e}"))?;
            if certs.is_empty() {
                return Err("etcd_ca holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &self.identity {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                format!("etcd_cert and etcd_key are not a PEM certificate and its private key (PKCS#8, RSA or EC): {e}")
            })?;
            builder = builder.identity(identity);
        }
        builder.build().map_err(|e| format!("the TLS settings for etcd cannot be used: {e}"))
    }
}

/// Shown without the password.
impl std::fmt::Debug for LeaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseConfig")
            .field("etcd", &self.etcd)
            .field("endpoints", &self.endpoints)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("key", &self.key)
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("ca", &self.tls.ca.is_some())
            .field("client_cert", &self.tls.identity.is_some())
            .finish()
    }
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
    #[error("the task waiting for the lease failed: {0}")]
    Task(String),
    #[error("[ha]: {0}")]
    Tls(String),
}

/// The part of etcd's v3 API leadership uses.
struct Etcd {
    /// The members' client URLs, without a trailing slash.
    endpoints: Vec<String>,
    /// The member asked first: the last one that answered.
    current: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
    /// A request that takes longer than this has failed.
    timeout: Duration,
    credentials: Option<(String, String)>,
    /// etcd's token for `credentials`, once authenticated.
    token: Mutex<Option<String>>,
}

/// What one request to one member came to.
enum Reply {
    Done(Value),
    /// No usable answer from this member: the next one may do.
    Next(LeaseError),
    /// etcd refused the token: authenticate again.
    BadToken(LeaseError),
}

/// The largest answer read from etcd.
const MAX_ANSWER_BYTES: usize = 1 << 20;

impl Etcd {
    fn new(config: &LeaseConfig, timeout: Duration) -> Result<Etcd, LeaseError> {
        Ok(Etcd {
            endpoints: config.endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            current: Default::default(),
            http: config.tls.client().map_err(LeaseError::Tls)?,
            timeout,
            credentials: config.credentials.clone(),
            token: Mutex::new(None),
        })
    }

    /// The member asked first.
    fn base(&self) -> &str {
        let n = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.endpoints.get(n).or(self.endpoints.first()).map_or("", String::as_str)
    }

    /// Asks the members in turn, from the last one that answered, until
    /// one answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value, LeaseError> {
        let count = self.endpoints.len().max(1);
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for i in 0..count {
            let n = (first + i) % count;
            let mut reauthenticated = false;
            loop {
                match self.call_at(n, path, &body).await {
                    Ok(Reply::Done(v)) => {
                        self.current.store(n, std::sync::atomic::Ordering::Relaxed);
                        return Ok(v);
                    }
                    Ok(Reply::Next(e)) => {
                        last = Some(e);
                        break;
                    }
                    Ok(Reply::BadToken(e)) if reauthenticated => return Err(e),
                    Ok(Reply::BadToken(_)) => {
                        *self.token.lock() = None;
                        reauthenticated = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| self.odd("no etcd endpoint is configured")))
    }

    /// One request to member `n` (authenticating first if need be).
    async fn call_at(&self, n: usize, path: &str, body: &Value) -> Result<Reply, LeaseError> {
        let base = self.endpoints.get(n).map_or("", String::as_str);
        let token = match &self.credentials {
            None => None,
            Some(_) if self.token.lock().is_some() => self.token.lock().clone(),
            Some((user, password)) => {
                let auth = json!({ "name": user, "password": password });
                match self.post(base, "auth/authenticate", &auth, None).await? {
                    Reply::Done(a) => {
                        let token = a["token"]
                            .as_str()
                            .filter(|t| !t.is_empty())
                            .ok_or_else(|| self.odd(format!("no token in etcd's answer to user {user:?}")))?
                            .to_string();
                        *self.token.lock() = Some(token.clone());
                        Some(token)
                    }
                    Reply::BadToken(e) => return Err(e),
                    next => return Ok(next),
                }
            }
        };
        self.post(base, path, body, token.as_deref()).await
    }

    async fn post(&self, base: &str, path: &str, body: &Value, token: Option<&str>) -> Result<Reply, LeaseError> {
        let url = format!("{base}/v3/{path}");
        let http = |source| LeaseError::Http { url: base.to_string(), source };
        let mut request = self.http.post(&url).timeout(self.timeout).json(body);
        if let Some(t) = token {
            request = request.header(reqwest::header::AUTHORIZATION, t);
        }
        let resp = match request.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Reply::Next(http(e))),
        };
        let status = resp.status();
        let (bytes, more) = match bounded_body(resp, MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(e) => return Ok(Reply::Next(http(e))),
        };
        let text = String::from_utf8_lossy(&bytes).to_string();
        let odd = |what: String| LeaseError::Answer { url: base.to_string(), what };
        if more && status.is_success() {
            return Err(odd(format!("an answer of more than {MAX_ANSWER_BYTES} bytes (not read further)")));
        }
        if !status.is_success() {
            let e = LeaseError::Status { url: base.to_string(), status: status.as_u16(), body: clip(&text) };
            return Ok(match status.as_u16() {
                // A token etcd no longer takes: expired or revoked (401
                // "invalid auth token"), or a JWT signed before a change to
                // etcd's users or roles (400 "revision of auth store is
                // old"). A wrong password is not retried.
                400 | 401
                    if token.is_some()
                        && (text.contains("invalid auth token") || text.contains("auth store is old")) =>
                {
                    Reply::BadToken(e)
                }
                // This member is busy or behind (429 "too many requests"),
                // or a proxy in front of it gave up: another may answer.
                408 | 421 | 429 | 500.. => Reply::Next(e),
                _ => return Err(e),
            });
        }
        serde_json::from_str(&text).map(Reply::Done).map_err(|e| odd(format!("{e} in {:?}", clip(&text))))
    }

    fn odd(&self, what: impl Into<String>) -> LeaseError {
        LeaseError::Answer { url: self.base().to_string(), what: what.into() }
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

    /// Whether `lease` is alive.
    async fn alive(&self, lease: i64) -> Result<bool, LeaseError> {
        let a = self.call("lease/timetolive", json!({ "ID": lease.to_string() })).await?;
        Ok(int(&a["TTL"]).is_some_and(|t| t > 0))
    }

    /// The lease `key` is on, if the key exists.
    async fn holder_lease(&self, key: &str) -> Result<Option<i64>, LeaseError> {
        let a = self.call("kv/range", json!({ "key": B64.encode(key) })).await?;
        let kv = &a["kvs"][0];
        // A key on no lease (put by hand: lease 0, left out) still exists.
        Ok((!kv.is_null()).then(|| int(&kv["lease"]).unwrap_or(0)))
    }

    /// Puts `key` = `value` on `lease` unless the key exists; `Ok(None)`
    /// when it was put, else who holds it: its value and its lease.
    async fn put_if_absent(&self, key: &str, value: &str, lease: i64) -> Result<Option<(String, i64)>, LeaseError> {
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
        let kv = &a["responses"][0]["response_range"]["kvs"][0];
        let held =
            kv["value"].as_str().and_then(|v| B64.decode(v).ok()).map(|v| String::from_utf8_lossy(&v).to_string());
        // The key went between the compare and the range: nobody holds it.
        Ok(Some((held.unwrap_or_else(|| "nobody (the key just expired)".into()), int(&kv["lease"]).unwrap_or(0))))
    }

    async fn revoke(&self, lease: i64) -> Result<(), LeaseError> {
        self.call("lease/revoke", json!({ "ID": lease.to_string() })).await.map(|_| ())
    }
}

/// Why a primary that stops cleanly no longer acts.
pub const STOPPING: &str = "this server is stopping";

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
    /// Whether the lease has been let go already.
    revoked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("config", &self.config).field("lease", &self.lease).finish()
    }
}

impl Leadership {
    /// Waits until this server holds the primary's key: a standby until
    /// then. Says who holds it, once, and again when that changes; an etcd
    /// that does not answer is tried again (a standby outlives an etcd
    /// restart). Once held, the lease is renewed from that moment on
    /// ([`Leadership::keep`]), while the server restores and starts.
    pub async fn acquire(config: LeaseConfig) -> Result<Arc<Self>, LeaseError> {
        // One request to one member gets a third of the TTL (a renewal
        // that must try several takes longer, and may end the lease: the
        // deadline counts from before the first try).
        let etcd = Etcd::new(&config, (config.ttl / 3).max(Duration::from_millis(500)))?;
        let every = (config.ttl / 3).max(Duration::from_millis(200));
        // The first request says at once whether etcd is there at all.
        let mut lease = etcd.grant(config.ttl).await?;
        let mut told: Option<String> = None;
        // The lease of the primary last seen holding the key.
        let mut before: Option<i64> = None;
        loop {
            match Self::try_take(&etcd, &config, &mut lease, &mut before, &mut told).await {
                Ok(Some(sent)) => {
                    let held = Self::held(etcd, config, lease, sent);
                    tokio::spawn(Arc::clone(&held).keep());
                    return Ok(held);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("standby: etcd did not answer ({e}); trying again"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One try: `Some(when the lease was last renewed)` once the key is
    /// this server's.
    async fn try_take(
        etcd: &Etcd,
        config: &LeaseConfig,
        lease: &mut i64,
        before: &mut Option<i64>,
        told: &mut Option<String>,
    ) -> Result<Option<Instant>, LeaseError> {
        // The lease is renewed while this server waits, so that it is alive
        // when the key comes free; one that expired (etcd was away longer
        // than its TTL) is replaced.
        let mut sent = Instant::now();
        if etcd.keep_alive(*lease).await?.is_none() {
            *lease = etcd.grant(config.ttl).await?;
            sent = Instant::now();
        }
        let taken = match etcd.put_if_absent(&config.key, &config.name, *lease).await? {
            // The key is on this server's own lease: an earlier put that
            // etcd applied but whose answer was lost (a timeout, or a
            // member that failed after applying it).
            Some((_, holder_lease)) if holder_lease == *lease => None,
            other => other,
        };
        let Some((holder, holder_lease)) = taken else {
            // The key came free while its primary's lease lives (removed by
            // hand): that primary acts until it next renews and finds the
            // key gone, at most until its deadline.
            if let Some(previous) = before.filter(|l| *l != 0)
                && etcd.alive(previous).await.unwrap_or(true)
            {
                tracing::warn!(
                    key = config.key,
                    "the key came free while the previous primary's lease lives (was it removed by hand?): waiting \
                     for that primary to stand down, at most {:?}",
                    deadline_after(config.ttl)
                );
                let until = Instant::now() + deadline_after(config.ttl);
                while Instant::now() < until && etcd.alive(previous).await.unwrap_or(true) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sent = Instant::now();
                if etcd.keep_alive(*lease).await?.is_none() {
                    return Err(etcd.odd("this server's lease expired while it waited"));
                }
            }
            return Ok(Some(sent));
        };
        *before = Some(holder_lease);
        if told.as_deref() != Some(holder.as_str()) {
            tracing::info!(
                key = config.key,
                primary = holder,
                "standby: {holder} holds the lease; this server takes over when it lets it go or its lease expires \
                 (within {:?})",
                config.ttl
            );
            *told = Some(holder);
        }
        Ok(None)
    }

    fn held(etcd: Etcd, config: LeaseConfig, lease: i64, sent: Instant) -> Arc<Self> {
        tracing::info!(key = config.key, name = config.name, "this server holds the lease: primary");
        let ttl = config.ttl;
        Arc::new(Leadership {
            etcd,
            config,
            lease,
            deadline: Mutex::new(sent + deadline_after(ttl)),
            lost: watch::Sender::new(None),
            revoked: std::sync::atomic::AtomicBool::new(false),
        })
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

    /// Renews the lease every third of its TTL until it is lost or let go
    /// ([`Leadership::give_up`]).
    async fn keep(self: Arc<Self>) {
        let every = (self.config.ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(every).await;
            if self.check().is_err() {
                break;
            }
            let sent = Instant::now();
            match self.etcd.keep_alive(self.lease).await {
                // The key must still be on this lease: removed by hand (or
                // put on another lease), it may be another server's now.
                Ok(Some(_)) => match self.etcd.holder_lease(&self.config.key).await {
                    Ok(Some(l)) if l == self.lease => {
                        // An answer that took longer than the deadline left
                        // does not bring it back.
                        if self.check().is_ok() {
                            *self.deadline.lock() = sent + deadline_after(self.config.ttl);
                        }
                    }
                    Ok(_) => {
                        self.lost.send_replace(Some(format!(
                            "the key {} in etcd ({}) is no longer on this server's lease (removed, or another \
                             server's): another server may be primary now",
                            self.config.key, self.config.etcd
                        )));
                        break;
                    }
                    Err(e) => tracing::warn!("reading the key in etcd failed (retrying until the lease expires): {e}"),
                },
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
        if why != STOPPING {
            tracing::error!("no longer the primary: {why}. Writes are refused and nothing is sent from now on");
        }
        // A standby waiting for this lease goes on at once.
        self.revoke().await;
    }

    /// Lets the lease go, once.
    async fn revoke(&self) {
        if self.revoked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match self.etcd.revoke(self.lease).await {
            Ok(()) => {}
            // Already gone (it expired): nothing to let go.
            Err(LeaseError::Status { status: 404, .. }) => {}
            Err(e) => tracing::warn!("letting the lease go failed (a standby takes over when it expires): {e}"),
        }
    }

    /// Stops acting as the primary and lets the key go: at a clean stop
    /// (after the last push), or when this server finds it must stand down
    /// (another server's push in the copy). A standby takes over at its
    /// next try.
    pub async fn give_up(&self, why: &str) {
        self.lost.send_if_modified(|lost| {
            let first = lost.is_none();
            if first {
                *lost = Some(why.to_string());
            }
            first
        });
        self.revoke().await;
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

/// The first `limit` bytes of an answer's body, and whether it holds more
/// (not read: an endpoint that answers without end cannot fill memory).
async fn bounded_body(mut resp: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "etcd" that answers a body without end is read up to the bound
    /// and refused, naming it.
    #[tokio::test]
    async fn an_endless_answer_is_read_up_to_the_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = sock.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
            // Far past the bound; the client stops reading long before.
            for _ in 0..1_000 {
                if sock.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let etcd = Etcd::new(&config_for(&[&format!("http://{addr}")]), Duration::from_secs(30)).expect("etcd");
        let err = etcd.call("lease/grant", json!({})).await.expect_err("endless");
        assert!(err.to_string().contains(&format!("more than {MAX_ANSWER_BYTES} bytes")), "{err}");
    }

    fn config_for(endpoints: &[&str]) -> LeaseConfig {
        LeaseConfig {
            etcd: endpoints.join(","),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            credentials: None,
            key: "/k".into(),
            name: "me".into(),
            ttl: Duration::from_secs(3),
            tls: EtcdTls::default(),
        }
    }

    /// One request as a fake etcd sees it: path, `Authorization`, body.
    type Handler = Arc<dyn Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync>;

    /// A fake etcd member on loopback: plain HTTP/1.1, one request per
    /// connection (`connection: close`), answered by `handler`.
    async fn fake(handler: Handler) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    let (head, body_at) = loop {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            break (String::from_utf8_lossy(&data[..i]).to_string(), i + 4);
                        }
                    };
                    let header = |name: &str| {
                        head.lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_string())
                    };
                    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    while data.len() < body_at + length {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                    }
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let body = serde_json::from_slice(&data[body_at..body_at + length]).unwrap_or(Value::Null);
                    let (status, answer) = handler(&path, &header("authorization").unwrap_or_default(), &body);
                    let answer = answer.to_string();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// A fake etcd member that grants leases to requests carrying the token
    /// it handed out last (setting `token` forgets it, as etcd does when a
    /// simple token's TTL passes).
    struct Member {
        addr: std::net::SocketAddr,
        token: Arc<Mutex<String>>,
        logins: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn member() -> Member {
        let token = Arc::new(Mutex::new(String::new()));
        let logins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (t, l) = (Arc::clone(&token), Arc::clone(&logins));
        let addr = fake(Arc::new(move |path, sent, body| match path {
            "/v3/auth/authenticate" => {
                if body["name"] != "tocsin" || body["password"] != "s3cret" {
                    return (400, json!({ "error": "etcdserver: authentication failed, invalid user ID or password" }));
                }
                let n = l.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                *t.lock() = format!("token-{n}");
                (200, json!({ "token": format!("token-{n}") }))
            }
            "/v3/lease/grant" if sent.is_empty() || sent != t.lock().as_str() => {
                (401, json!({ "error": "etcdserver: invalid auth token", "code": 16 }))
            }
            "/v3/lease/grant" => (200, json!({ "ID": "42", "TTL": "3" })),
            _ => (404, json!({})),
        }))
        .await;
        Member { addr, token, logins }
    }

    /// A member that refuses connections is passed over, and the one that
    /// answered is asked first from then on; an expired token is replaced
    /// by authenticating again; a wrong password is said, not retried.
    #[tokio::test]
    async fn members_are_tried_in_turn_and_a_stale_token_is_renewed() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let m = member().await;
        let mut config = config_for(&[&format!("http://{dead_addr}"), &format!("http://{}/", m.addr)]);
        config.credentials = Some(("tocsin".into(), "s3cret".into()));
        let etcd = Etcd::new(&config, Duration::from_secs(2)).expect("etcd");
        assert_eq!(etcd.grant(Duration::from_secs(3)).await.expect("grant"), 42);
        assert_eq!(etcd.base(), format!("http://{}", m.addr), "the member that answered is asked first");
        assert_eq!(m.logins.load(std::sync::atomic::Ordering::SeqCst), 1);
        etcd.grant(Duration::from_secs(3)).await.expect("grant with the same token");
        assert_eq!(m.logins.load(std::sync::atomic::Ordering::SeqCst), 1, "the token is kept");
        *m.token.lock() = "expired".into();
        etcd.grant(Duration::from_secs(3)).await.expect("grant after authenticating again");
        assert_eq!(m.logins.load(std::sync::atomic::Ordering::SeqCst), 2);

        config.credentials = Some(("tocsin".into(), "wrong".into()));
        let etcd = Etcd::new(&config, Duration::from_secs(2)).expect("etcd");
        let err = etcd.grant(Duration::from_secs(3)).await.expect_err("wrong password").to_string();
        assert!(err.contains("authentication failed") && err.contains(&m.addr.to_string()), "{err}");
        // Without credentials against a member that wants them: refused
        // with etcd's reason, once.
        config.credentials = None;
        let etcd = Etcd::new(&config, Duration::from_secs(2)).expect("etcd");
        let err = etcd.grant(Duration::from_secs(3)).await.expect_err("no token").to_string();
        assert!(err.contains("401") && err.contains("invalid auth token"), "{err}");
        // The password is not shown by `Debug` (logs, panics).
        let mut config = config_for(&["http://e:2379"]);
        config.credentials = Some(("tocsin".into(), "s3cret".into()));
        let shown = format!("{config:?}");
        assert!(shown.contains("tocsin") && !shown.contains("s3cret"), "{shown}");
    }

    /// A JWT signed before a change to etcd's users is refused with 400
    /// "revision of auth store is old": the server authenticates again.
    /// Before, it kept the token and lost the lease.
    #[tokio::test]
    async fn a_token_from_an_older_auth_store_is_renewed() {
        let logins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let l = Arc::clone(&logins);
        let addr = fake(Arc::new(move |path, sent, _| match path {
            "/v3/auth/authenticate" => {
                // jwt-1 was handed out before the change to the users.
                let n = l.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 2;
                (200, json!({ "token": format!("jwt-{n}") }))
            }
            "/v3/lease/grant" if sent == "jwt-1" => {
                (400, json!({ "error": "etcdserver: revision of auth store is old", "code": 3 }))
            }
            _ => (200, json!({ "ID": "7", "TTL": "3" })),
        }))
        .await;
        let lagging_addr =
            fake(Arc::new(|_, _, _| (429, json!({ "error": "etcdserver: too many requests", "code": 8 })))).await;
        // A lagging member (429) first: passed over.
        let mut config = config_for(&[&format!("http://{lagging_addr}"), &format!("http://{addr}")]);
        config.credentials = Some(("tocsin".into(), "s3cret".into()));
        let etcd = Etcd::new(&config, Duration::from_secs(2)).expect("etcd");
        *etcd.token.lock() = Some("jwt-1".into());
        assert_eq!(etcd.grant(Duration::from_secs(3)).await.expect("grant"), 7);
        assert_eq!(logins.load(std::sync::atomic::Ordering::SeqCst), 1, "authenticated once more");
    }

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
