//! Delivery of notifications: webhooks (Alertmanager's JSON), chat robots
//! (WeCom, DingTalk, Feishu, Slack) and SMTP email. Each receiver has its
//! own worker and queue, so a receiver that is down delays only itself;
//! failed sends are retried with exponential backoff, and every attempt is
//! reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::{EmailFile, Integration, Mentions, Receiver, RobotKind};
use crate::dispatch::{Job, Payload};
use crate::template;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("robot refused the message: {0}")]
    Robot(String),
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("SMTP I/O: {0}")]
    SmtpIo(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("not sent: {0}")]
    Held(String),
}

/// One attempt to deliver a job through one integration.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: i64,
    pub job_id: String,
    pub receiver: String,
    pub integration: &'static str,
    pub group_key: String,
    pub reason: String,
    pub attempt: u32,
    pub ok: bool,
    pub error: Option<String>,
    pub duration: Duration,
    /// Set on the last attempt: delivered, or given up.
    pub finished: bool,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { first_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(60), max_attempts: 12 }
    }
}

/// Per-receiver workers.
pub struct Notifier {
    client: reqwest::Client,
    /// Per receiver: notifications folded into digests, and digests sent.
    folded: parking_lot::Mutex<HashMap<String, (u64, u64)>>,
    workers: parking_lot::Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>,
    receivers: parking_lot::RwLock<Arc<HashMap<String, Receiver>>>,
    attempts: mpsc::UnboundedSender<Attempt>,
    retry: RetryPolicy,
    clock: Arc<dyn crate::Clock>,
    /// What sending hangs on ([`Notifier::hold_by`]).
    gate: parking_lot::RwLock<Option<SendGate>>,
}

/// `Ok` while this server may send notifications (a primary's lease);
/// otherwise why not.
pub type SendGate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Notifier {
    pub fn new(
        receivers: HashMap<String, Receiver>,
        attempts: mpsc::UnboundedSender<Attempt>,
        retry: RetryPolicy,
        clock: Arc<dyn crate::Clock>,
    ) -> Arc<Notifier> {
        let client = reqwest::Client::builder().user_agent(concat!("tocsin/", env!("CARGO_PKG_VERSION"))).build();
        // Without TLS or proxies configured the builder cannot fail; fall
        // back to the default client rather than refuse to start.
        let client = client.unwrap_or_default();
        Arc::new(Notifier {
            client,
            folded: parking_lot::Mutex::new(HashMap::new()),
            workers: parking_lot::Mutex::new(HashMap::new()),
            receivers: parking_lot::RwLock::new(Arc::new(receivers)),
            attempts,
            retry,
            clock,
            gate: parking_lot::RwLock::new(None),
        })
    }

    /// Sends only while `gate` says so, checked before each attempt: a job
    /// due when it says no is recorded as not sent, and not retried.
    pub fn hold_by(&self, gate: SendGate) {
        *self.gate.write() = Some(gate);
    }

    /// New receiver definitions (after a reload); queued jobs use them.
    pub fn set_receivers(&self, receivers: HashMap<String, Receiver>) {
        *self.receivers.write() = Arc::new(receivers);
    }

    /// Queues a job on its receiver's worker.
    pub fn enqueue(self: &Arc<Self>, job: Job) {
        let mut workers = self.workers.lock();
        let tx = workers.entry(job.receiver.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(Arc::clone(self).worker(rx));
            tx
        });
        if let Err(e) = tx.send(job) {
            tracing::error!(receiver = %e.0.receiver, "notification worker is gone; job dropped");
        }
    }

    /// Delivers a receiver's jobs in order, within its rate limit: a job
    /// over the limit is held, with every job that comes while the window
    /// is full, and they go out as one digest when it allows (never
    /// dropped).
    async fn worker(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut sent: std::collections::VecDeque<tokio::time::Instant> = std::collections::VecDeque::new();
        while let Some(job) = rx.recv().await {
            let limit = self.receivers.read().get(&job.receiver).and_then(|r| r.rate_limit);
            let Some(limit) = limit else {
                self.deliver(&job).await;
                continue;
            };
            let now = tokio::time::Instant::now();
            while sent.front().is_some_and(|t| now.duration_since(*t) >= limit.per) {
                sent.pop_front();
            }
            while sent.len() > limit.messages as usize {
                sent.pop_front(); // the limit was lowered by a reload
            }
            if sent.len() < limit.messages as usize {
                sent.push_back(now);
                self.deliver(&job).await;
                continue;
            }
            let mut held = vec![job];
            let free_at = sent.front().map_or(now, |t| *t + limit.per);
            let sleep = tokio::time::sleep_until(free_at);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    next = rx.recv() => match next {
                        Some(j) => held.push(j),
                        None => break,
                    },
                }
            }
            sent.pop_front();
            sent.push_back(tokio::time::Instant::now());
            self.deliver_held(held).await;
        }
    }

    /// One held job as it was; several as one digest, sent under the first
    /// one's id (the others are reported delivered, folded into it).
    async fn deliver_held(&self, held: Vec<Job>) {
        let [first, rest @ ..] = held.as_slice() else { return };
        if rest.is_empty() {
            self.deliver(first).await;
            return;
        }
        let payloads: Vec<&Payload> = held.iter().map(|j| &j.payload).collect();
        let now = self.clock.now_ms();
        let job = Job {
            id: first.id.clone(),
            receiver: first.receiver.clone(),
            group_key: format!("digest:{}", first.receiver),
            reason: crate::dispatch::Reason::Digest,
            payload: crate::dispatch::digest(&first.receiver, &payloads, now),
            created_at: now,
        };
        {
            let mut folded = self.folded.lock();
            let entry = folded.entry(first.receiver.clone()).or_default();
            entry.0 += held.len() as u64;
            entry.1 += 1;
        }
        self.deliver(&job).await;
        for j in rest {
            let _ = self.attempts.send(Attempt {
                at: now,
                job_id: j.id.clone(),
                receiver: j.receiver.clone(),
                integration: "digest",
                group_key: j.group_key.clone(),
                reason: format!("folded into digest {}", first.id),
                attempt: 0,
                ok: true,
                error: None,
                duration: Duration::ZERO,
                finished: true,
            });
        }
    }

    /// Per receiver: (notifications folded into digests, digests sent).
    pub fn folded(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = self.folded.lock().iter().map(|(r, (n, d))| (r.clone(), *n, *d)).collect();
        v.sort();
        v
    }

    /// Each rate-limited receiver's limit.
    pub fn rate_limits(&self) -> Vec<(String, crate::config::RateLimit)> {
        let mut v: Vec<(String, crate::config::RateLimit)> =
            self.receivers.read().values().filter_map(|r| r.rate_limit.map(|l| (r.name.clone(), l))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    async fn deliver(&self, job: &Job) {
        let receivers = Arc::clone(&self.receivers.read());
        let Some(receiver) = receivers.get(&job.receiver) else {
            let _ = self.attempts.send(Attempt {
                at: self.clock.now_ms(),
                job_id: job.id.clone(),
                receiver: job.receiver.clone(),
                integration: "none",
                group_key: job.group_key.clone(),
                reason: format!("{:?}", job.reason),
                attempt: 0,
                ok: false,
                error: Some("receiver no longer configured".into()),
                duration: Duration::ZERO,
                finished: true,
            });
            return;
        };
        let n = receiver.integrations.len();
        for (idx, integration) in receiver.integrations.iter().enumerate() {
            let mut backoff = self.retry.first_backoff;
            for attempt in 1..=self.retry.max_attempts {
                let started = Instant::now();
                // A server that may no longer send (no longer the primary)
                // records the job as not sent, and does not retry it.
                let held = self.gate.read().clone().and_then(|gate| gate().err());
                let stopped = held.is_some();
                let result = match held {
                    Some(why) => {
                        tracing::warn!(receiver = job.receiver, job = job.id, "not sent: {why}");
                        Err(SendError::Held(why))
                    }
                    None => self.send_one(integration, &job.payload).await,
                };
                let ok = result.is_ok();
                let last = ok || stopped || attempt == self.retry.max_attempts;
                let _ = self.attempts.send(Attempt {
                    at: self.clock.now_ms(),
                    job_id: job.id.clone(),
                    receiver: job.receiver.clone(),
                    integration: integration_name(integration),
                    group_key: job.group_key.clone(),
                    reason: format!("{:?}", job.reason).to_lowercase(),
                    attempt,
                    ok,
                    error: result.err().map(|e| e.to_string()),
                    duration: started.elapsed(),
                    finished: stopped || (last && idx + 1 == n),
                });
                if stopped {
                    return;
                }
                if ok {
                    break;
                }
                if !last {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
    }

    async fn send_one(&self, integration: &Integration, payload: &Payload) -> Result<(), SendError> {
        match integration {
            Integration::Webhook { url, headers, timeout } => {
                let mut req = self.client.post(url).timeout(*timeout).json(payload);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                check_status(req.send().await?).await.map(|_| ())
            }
            Integration::Robot { kind, url, template, timeout, secret, at } => {
                // Label values come from the data: in a markdown robot they
                // must not become links, images or formatting.
                let escaped;
                let shown = if matches!(kind, RobotKind::WeCom | RobotKind::DingTalk) {
                    escaped = escape_values(payload, markdown_escape);
                    &escaped
                } else {
                    payload
                };
                let text = match template {
                    Some(t) => render_group(t, shown),
                    None => default_text(shown),
                };
                let body = robot_body(*kind, &text, payload, &with_oncall(at, payload));
                let url = match secret {
                    Some(secret) => dingtalk_signed(url, secret, chrono::Utc::now().timestamp_millis()),
                    None => url.clone(),
                };
                let resp = check_status(self.client.post(url).timeout(*timeout).json(&body).send().await?).await?;
                check_robot_reply(*kind, &resp)
            }
            Integration::Email(e) => {
                let timeout = e.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30));
                let e = email_for(e, payload);
                tokio::time::timeout(timeout, send_email(&e, payload)).await.map_err(|_| SendError::Timeout(timeout))?
            }
        }
    }
}

/// A robot's mentions, plus the person on call the step reaches through it.
fn with_oncall(at: &Mentions, payload: &Payload) -> Mentions {
    let mut at = at.clone();
    if let Some(p) = payload.tocsin.oncall.as_ref().and_then(|o| o.person.as_ref()) {
        at.mobiles.extend(p.mobile.iter().cloned());
        at.user_ids.extend(p.user_id.iter().cloned());
    }
    at
}

/// An email receiver, sent to the person on call when the step reaches
/// them through it (and they have an address).
fn email_for<'a>(e: &'a EmailFile, payload: &Payload) -> std::borrow::Cow<'a, EmailFile> {
    match payload.tocsin.oncall.as_ref().and_then(|o| o.person.as_ref()?.email.clone()) {
        Some(addr) => std::borrow::Cow::Owned(EmailFile { to: vec![addr], ..e.clone() }),
        None => std::borrow::Cow::Borrowed(e),
    }
}

fn integration_name(i: &Integration) -> &'static str {
    match i {
        Integration::Webhook { .. } => "webhook",
        Integration::Robot { kind, .. } => kind.name(),
        Integration::Email(_) => "email",
    }
}

async fn check_status(resp: reqwest::Response) -> Result<String, SendError> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(SendError::Status { status: status.as_u16(), body: body.chars().take(200).collect() })
    }
}

/// Robots answer 200 with an error code in the body.
fn check_robot_reply(kind: RobotKind, body: &str) -> Result<(), SendError> {
    if kind == RobotKind::Slack {
        return Ok(());
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else { return Ok(()) };
    let code = v.get("errcode").or_else(|| v.get("code")).or_else(|| v.get("StatusCode")).and_then(|c| c.as_i64());
    match code {
        Some(0) | None => Ok(()),
        Some(c) => Err(SendError::Robot(format!("code {c}: {}", body.chars().take(200).collect::<String>()))),
    }
}

/// A DingTalk robot URL with its signature (robots with "sign" security):
/// `timestamp` (ms) and `sign`, the base64 HMAC-SHA-256 of
/// `"{timestamp}\n{secret}"` under the secret, URL-encoded.
fn dingtalk_signed(url: &str, secret: &str, now_ms: i64) -> String {
    let tag = tocsin_auth::mac::hmac_sha256(secret.as_bytes(), &[format!("{now_ms}\n{secret}").as_bytes()]);
    let sign: String = base64(&tag)
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}timestamp={now_ms}&sign={sign}")
}

fn robot_body(kind: RobotKind, text: &str, payload: &Payload, at: &Mentions) -> serde_json::Value {
    match kind {
        // WeCom mentions user ids inside markdown (`<@id>`); mobiles and
        // @all only in text messages, so those make it a text message.
        RobotKind::WeCom if !at.mobiles.is_empty() || at.all => {
            let mut users = at.user_ids.clone();
            if at.all {
                users.push("@all".into());
            }
            serde_json::json!({
                "msgtype": "text",
                "text": { "content": text, "mentioned_list": users, "mentioned_mobile_list": at.mobiles },
            })
        }
        RobotKind::WeCom => {
            let mut content = text.to_string();
            for id in &at.user_ids {
                content.push_str(&format!(" <@{id}>"));
            }
            serde_json::json!({ "msgtype": "markdown", "markdown": { "content": content } })
        }
        // DingTalk shows a mention only when the text names it too.
        RobotKind::DingTalk => {
            let mut text = text.to_string();
            let named: Vec<String> = at.mobiles.iter().chain(&at.user_ids).map(|m| format!("@{m}")).collect();
            if !named.is_empty() {
                text.push_str(&format!("\n\n{}", named.join(" ")));
            }
            serde_json::json!({
                "msgtype": "markdown",
                "markdown": { "title": title(payload), "text": text },
                "at": { "atMobiles": at.mobiles, "atUserIds": at.user_ids, "isAtAll": at.all },
            })
        }
        RobotKind::Feishu => serde_json::json!({ "msg_type": "text", "content": { "text": text } }),
        RobotKind::Slack => serde_json::json!({ "text": text }),
    }
}

fn title(p: &Payload) -> String {
    let firing = p.alerts.iter().filter(|a| a.status == "firing").count();
    let name = p.common_labels.get("alertname").map_or_else(|| "alerts".into(), |n| one_line(n).into_owned());
    if p.status == "firing" { format!("[FIRING:{firing}] {name}") } else { format!("[RESOLVED] {name}") }
}

/// A value on one line of a text message: line breaks and other control
/// characters become `\n`-style escapes, so that a label cannot add a line
/// that passes for the server's own (a fake "acknowledge:" link).
fn one_line(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(
        v.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

/// The default message: a title, then one line per alert.
pub fn default_text(p: &Payload) -> String {
    let mut out = title(p);
    let group: Vec<String> = p.group_labels.iter().map(|(k, v)| format!("{k}={}", one_line(v))).collect();
    if !group.is_empty() {
        out.push_str(&format!(" ({})", group.join(", ")));
    }
    if let Some(e) = &p.tocsin.escalation {
        out.push_str(&format!(" [escalation {e}, step {}]", p.tocsin.step.unwrap_or(0)));
    }
    if let Some(o) = &p.tocsin.oncall {
        match &o.person {
            Some(person) => out.push_str(&format!(" [on call in {}: {}]", o.schedule, person.name)),
            None => out.push_str(&format!(" [nobody is on call in {}]", o.schedule)),
        }
    }
    if let Some(n) = p.tocsin.digest {
        out.push_str(&format!(" [digest of {n} notifications held back by this receiver's rate limit]"));
    }
    for a in &p.alerts {
        let labels: Vec<String> = a
            .labels
            .iter()
            .filter(|(k, _)| !p.group_labels.contains_key(*k) && *k != "alertname" && *k != "severity")
            .map(|(k, v)| format!("{k}={}", one_line(v)))
            .collect();
        let summary = one_line(a.annotations.get("summary").map_or("", String::as_str)).into_owned();
        out.push_str(&format!(
            "\n- {} {} {} {}",
            a.status,
            one_line(a.labels.get("severity").map_or("", String::as_str)),
            labels.join(" "),
            summary
        ));
        if let Some(by) = &a.acked_by {
            out.push_str(&format!(" (acked by {})", one_line(by)));
        }
        if let Some(l) = &a.ack_lifted {
            out.push_str(&format!(
                " (acked by {} at {}; severity rose, paging again)",
                l.by,
                l.severity.as_deref().unwrap_or("a lower severity")
            ));
        }
        if a.acked_by.is_none()
            && let Some(url) = &a.ack_url
        {
            out.push_str(&format!("\n  acknowledge: {url}"));
        }
        if let Some(url) = &a.silence_url {
            out.push_str(&format!("\n  silence 1 h: {url}"));
        }
    }
    out
}

/// A receiver template: `{{ status }}`, `{{ title }}`, `{{ alerts }}` (the
/// default alert lines) and the group's labels.
fn render_group(t: &str, p: &Payload) -> String {
    let mut labels = p.group_labels.clone();
    labels.insert("status".into(), p.status.clone());
    labels.insert("title".into(), title(p));
    labels.insert("alerts".into(), default_text(p).lines().skip(1).collect::<Vec<_>>().join("\n"));
    labels.insert("receiver".into(), p.receiver.clone());
    template::render(t, &labels, f64::NAN)
}

/// How the SMTP connection is secured (`tls` in the receiver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS when the server offers it (the default).
    Auto,
    /// STARTTLS, and fail if the server does not offer it.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Never (a local relay).
    None,
}

impl SmtpTls {
    pub fn parse(s: Option<&str>) -> Result<SmtpTls, String> {
        match s.map(str::to_ascii_lowercase).as_deref() {
            None | Some("auto") => Ok(SmtpTls::Auto),
            Some("starttls") => Ok(SmtpTls::StartTls),
            Some("implicit") | Some("tls") => Ok(SmtpTls::Implicit),
            Some("none") => Ok(SmtpTls::None),
            Some(other) => Err(format!("tls {other:?} is not one of auto, starttls, implicit, none")),
        }
    }
}

fn tls_connector(e: &EmailFile) -> Result<tokio_rustls::TlsConnector, SendError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &e.ca_file {
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|err| SendError::Smtp(format!("ca_file {}: {err}", path.display())))?
        {
            let cert = cert.map_err(|err| SendError::Smtp(format!("ca_file {}: {err}", path.display())))?;
            roots.add(cert).map_err(|err| SendError::Smtp(format!("ca_file {}: {err}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| SendError::Smtp(format!("TLS setup: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn start_tls(e: &EmailFile, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SendError> {
    let host = e.smarthost.rsplit_once(':').map(|(h, _)| h).unwrap_or(&e.smarthost);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|err| SendError::Smtp(format!("{host:?} is not a TLS server name: {err}")))?;
    tls_connector(e)?.connect(name, tcp).await.map_err(|err| SendError::Smtp(format!("TLS handshake: {err}")))
}

/// SMTP: EHLO, STARTTLS (per `tls`), AUTH PLAIN when a username is set, one
/// message with a text part and an HTML part.
async fn send_email(e: &EmailFile, p: &Payload) -> Result<(), SendError> {
    let mode = SmtpTls::parse(e.tls.as_deref()).map_err(SendError::Smtp)?;
    let tcp = TcpStream::connect(&e.smarthost).await?;
    if mode == SmtpTls::Implicit {
        let mut s = BufReader::new(start_tls(e, tcp).await?);
        expect(&mut s, 220).await?;
        let caps = ehlo(&mut s).await?;
        return transaction(&mut s, &caps, e, p).await;
    }
    let mut s = BufReader::new(tcp);
    expect(&mut s, 220).await?;
    let caps = ehlo(&mut s).await?;
    let offered = caps.lines().any(|l| l.get(4..).is_some_and(|c| c.trim().eq_ignore_ascii_case("STARTTLS")));
    match (mode, offered) {
        (SmtpTls::StartTls, false) => Err(SendError::Smtp("the server does not offer STARTTLS (tls: starttls)".into())),
        (SmtpTls::StartTls | SmtpTls::Auto, true) => {
            s.get_mut().write_all(b"STARTTLS\r\n").await?;
            expect(&mut s, 220).await?;
            let mut t = BufReader::new(start_tls(e, s.into_inner()).await?);
            let caps = ehlo(&mut t).await?;
            transaction(&mut t, &caps, e, p).await
        }
        (SmtpTls::Auto, false) if e.username.is_some() => Err(SendError::Smtp(
            "the server does not offer STARTTLS and a username is configured: the password would cross the \
             network in the clear; use a server with STARTTLS, tls: implicit, or say tls: none to allow it"
                .into(),
        )),
        _ => transaction(&mut s, &caps, e, p).await,
    }
}

async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>) -> Result<String, SendError> {
    s.get_mut().write_all(b"EHLO tocsin\r\n").await?;
    expect(s, 250).await
}

async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    caps: &str,
    e: &EmailFile,
    p: &Payload,
) -> Result<(), SendError> {
    if let Some(user) = &e.username {
        if !caps.to_ascii_uppercase().contains("AUTH") {
            return Err(SendError::Smtp("server offers no AUTH but a username is configured".into()));
        }
        let pass = e.password.clone().unwrap_or_default();
        let token = base64(format!("\0{user}\0{pass}").as_bytes());
        s.get_mut().write_all(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
        expect(s, 235).await?;
    }
    s.get_mut().write_all(format!("MAIL FROM:<{}>\r\n", e.from).as_bytes()).await?;
    expect(s, 250).await?;
    for to in &e.to {
        s.get_mut().write_all(format!("RCPT TO:<{to}>\r\n").as_bytes()).await?;
        expect(s, 250).await?;
    }
    s.get_mut().write_all(b"DATA\r\n").await?;
    expect(s, 354).await?;
    s.get_mut().write_all(email_message(e, p).as_bytes()).await?;
    expect(s, 250).await?;
    s.get_mut().write_all(b"QUIT\r\n").await?;
    let _ = expect(s, 221).await;
    Ok(())
}

/// The message (headers, a text/plain and a text/html part), dot-stuffed
/// and terminated for DATA.
fn email_message(e: &EmailFile, p: &Payload) -> String {
    let subject = match &e.subject {
        Some(s) => render_group(s, p),
        None => title(p),
    };
    let text = match &e.text {
        Some(t) => render_group(t, p),
        None => default_text(p),
    };
    let html = match &e.html {
        // Label values come from the data: escaped before they reach HTML.
        Some(t) => render_group(t, &escape_values(p, html_escape)),
        None => default_html(p),
    };
    let boundary = format!("tocsin-part-{}", crate::matcher::fingerprint(&p.group_labels));
    let date = chrono::Utc::now().to_rfc2822();
    let mut msg = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n",
        e.from,
        e.to.join(", "),
        encode_header(&subject.replace(['\r', '\n'], " "))
    );
    for (kind, body) in [("plain", text), ("html", html)] {
        // Base64 (RFC 2045): any text (Chinese included) arrives intact
        // through 7-bit relays, in lines of 76, with no line a relay could
        // cut (998 bytes at most) and none starting with a dot.
        let body = body.replace("\r\n", "\n").replace('\n', "\r\n");
        msg.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/{kind}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ));
        let encoded = base64(body.as_bytes());
        for line in encoded.as_bytes().chunks(76) {
            msg.push_str(std::str::from_utf8(line).unwrap_or_default());
            msg.push_str("\r\n");
        }
    }
    msg.push_str(&format!("--{boundary}--\r\n.\r\n"));
    msg
}

/// A header value as RFC 2047 encoded-words when it is not plain ASCII
/// (`=?UTF-8?B?...?=`, each word at most 64 characters, folded onto
/// continuation lines; cut between characters, never inside one).
fn encode_header(value: &str) -> String {
    if value.is_ascii() {
        return value.to_string();
    }
    // 39 bytes of text make 52 of base64: a 64-character word, which fits
    // a 78-character line after "Subject: ".
    let mut words = Vec::new();
    let mut start = 0;
    while start < value.len() {
        let mut end = (start + 39).min(value.len());
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        words.push(format!("=?UTF-8?B?{}?=", base64(&value.as_bytes()[start..end])));
        start = end;
    }
    words.join("\r\n ")
}

/// A copy of `p` with every label and annotation value passed through
/// `escape`, for templates that render into markup.
fn escape_values(p: &Payload, escape: fn(&str) -> String) -> Payload {
    let map = |m: &std::collections::BTreeMap<String, String>| -> std::collections::BTreeMap<String, String> {
        m.iter().map(|(k, v)| (k.clone(), escape(v))).collect()
    };
    let mut out = p.clone();
    out.group_labels = map(&p.group_labels);
    out.common_labels = map(&p.common_labels);
    out.common_annotations = map(&p.common_annotations);
    for a in &mut out.alerts {
        a.labels = map(&a.labels);
        a.annotations = map(&a.annotations);
        a.acked_by = a.acked_by.as_deref().map(escape);
    }
    out
}

/// Backslash-escapes the characters that make markdown links, images,
/// emphasis, headings, tables or HTML.
fn markdown_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '<' | '>' | '|' | '!' | '~') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The default HTML body: the title and a table of the alerts.
pub fn default_html(p: &Payload) -> String {
    let mut out = format!(
        "<html><body><h3>{}</h3>\n<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\n<tr><th>status</th><th>severity</th><th>labels</th><th>value</th><th>summary</th><th>since</th><th></th></tr>\n",
        html_escape(&title(p))
    );
    for a in &p.alerts {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut actions = Vec::new();
        if a.acked_by.is_none()
            && let Some(url) = &a.ack_url
        {
            actions.push(format!("<a href=\"{}\">acknowledge</a>", html_escape(url)));
        }
        if let Some(url) = &a.silence_url {
            actions.push(format!("<a href=\"{}\">silence 1 h</a>", html_escape(url)));
        }
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            html_escape(&a.status),
            html_escape(a.labels.get("severity").map(String::as_str).unwrap_or("")),
            html_escape(&labels.join(", ")),
            a.value.map(template::format_value).unwrap_or_default(),
            html_escape(a.annotations.get("summary").map(String::as_str).unwrap_or("")),
            html_escape(&a.starts_at),
            actions.join(" "),
        ));
    }
    out.push_str("</table></body></html>");
    out
}

/// Reads one (possibly multi-line) SMTP reply and checks its code.
async fn expect<S: AsyncRead + Unpin>(r: &mut BufReader<S>, code: u16) -> Result<String, SendError> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(SendError::Smtp(format!("connection closed waiting for {code}")));
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            if got != code {
                return Err(SendError::Smtp(format!("expected {code}, got {}", line.trim_end())));
            }
            return Ok(all);
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 4: a label with line breaks put a fake "acknowledge:" line
    /// into the plain-text message.
    #[test]
    fn a_label_cannot_add_a_line_to_a_text_message() {
        let mut p = payload("web-9");
        p.alerts[0].labels.insert("instance".into(), "web-9\n  acknowledge: http://evil.example/ack\n- firing".into());
        let text = default_text(&p);
        assert!(!text.lines().any(|l| l.trim_start().starts_with("acknowledge: http://evil")), "{text}");
        assert!(text.contains("web-9\\n  acknowledge"), "shown, escaped: {text}");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn tls_modes_parse() {
        assert_eq!(SmtpTls::parse(None), Ok(SmtpTls::Auto));
        assert_eq!(SmtpTls::parse(Some("STARTTLS")), Ok(SmtpTls::StartTls));
        assert!(SmtpTls::parse(Some("maybe")).is_err());
    }

    fn payload(host: &str) -> Payload {
        use crate::dispatch::{PayloadAlert, Reason, TocsinFields};
        let labels: crate::matcher::Labels =
            [("alertname".to_string(), "Down".to_string()), ("host".to_string(), host.to_string())].into();
        Payload {
            version: "4".into(),
            group_key: "g".into(),
            truncated_alerts: 0,
            status: "firing".into(),
            receiver: "ops".into(),
            group_labels: labels.clone(),
            common_labels: labels.clone(),
            common_annotations: Default::default(),
            external_url: String::new(),
            alerts: vec![PayloadAlert {
                status: "firing".into(),
                labels,
                annotations: [("summary".to_string(), format!("{host} is down"))].into(),
                starts_at: String::new(),
                ends_at: String::new(),
                generator_url: String::new(),
                fingerprint: "f".into(),
                value: None,
                acked_by: None,
                ack_lifted: None,
                ack_url: None,
                silence_url: None,
                flapping: false,
            }],
            tocsin: TocsinFields {
                reason: Reason::Update,
                escalation: None,
                step: None,
                cycle: None,
                acked: false,
                digest: None,
                oncall: None,
            },
        }
    }

    /// Label values come from the data: they must not turn into markup in a
    /// custom HTML template or a markdown robot message.
    #[test]
    fn label_values_are_escaped_into_markup() {
        let evil = "web-1](http://evil.example)<img src=x onerror=alert(1)>";
        let p = payload(evil);
        let html = render_group("<p>{{ host }}</p>", &escape_values(&p, html_escape));
        assert!(!html.contains("<img") && html.contains("&lt;img"), "{html}");
        let md = default_text(&escape_values(&p, markdown_escape));
        assert!(md.contains(r"web-1\]\(http://evil.example\)"), "{md}");
        assert!(md.match_indices('<').all(|(i, _)| md[..i].ends_with('\\')), "unescaped <: {md}");
    }

    /// Robots and email carry the ack and silence links of firing alerts
    /// (the webhook carries them as `ackURL` and `silenceURL`).
    /// Chinese in the subject and the body arrives intact: the subject as
    /// RFC 2047 words, the body in base64 (decoded here as a mail reader
    /// would).
    #[test]
    fn email_subjects_and_bodies_carry_any_text() {
        let e = EmailFile {
            to: vec!["oncall@example.com".into()],
            from: "tocsin@example.com".into(),
            smarthost: "127.0.0.1:25".into(),
            username: None,
            password: None,
            subject: Some("告警：主机 {{ host }} 的 CPU 使用率过高，请值班人员立即处理并在群里回复处理进展".into()),
            text: Some("主机 {{ host }} 宕机\n.leading dot".into()),
            html: None,
            tls: None,
            ca_file: None,
            timeout: None,
        };
        let msg = email_message(&e, &payload("交易-1"));
        assert!(msg.is_ascii(), "the message is 7-bit");
        assert!(msg.lines().all(|l| l.len() <= 78), "no line longer than 78");
        let words: Vec<&str> = msg
            .split("\r\n")
            .skip_while(|l| !l.starts_with("Subject: "))
            .take_while(|l| l.starts_with("Subject: ") || l.starts_with(' '))
            .map(|l| l.trim_start_matches("Subject: ").trim())
            .collect();
        let decoded: String = words
            .iter()
            .map(|w| w.strip_prefix("=?UTF-8?B?").and_then(|w| w.strip_suffix("?=")).expect("an encoded word"))
            .map(|b| String::from_utf8(unbase64(b)).expect("each word is whole characters"))
            .collect();
        assert_eq!(decoded, "告警：主机 交易-1 的 CPU 使用率过高，请值班人员立即处理并在群里回复处理进展");
        assert!(words.len() > 1, "a long subject is several words: {words:?}");
        let plain = msg
            .split("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n")
            .nth(1)
            .expect("plain part");
        let b64: String = plain.split("\r\n--").next().expect("body").split("\r\n").collect();
        assert_eq!(String::from_utf8(unbase64(&b64)).expect("utf-8"), "主机 交易-1 宕机\r\n.leading dot");
    }

    fn unbase64(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            acc = (acc << 6) | A.iter().position(|a| *a == c).expect("base64 digit") as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    /// DingTalk's "sign" security: the server recomputes the HMAC of
    /// `"{timestamp}\n{secret}"` and compares it with `sign` (URL-decoded).
    #[test]
    fn dingtalk_urls_are_signed_as_its_servers_check() {
        let secret = "SEC0123456789abcdef";
        let url = dingtalk_signed("https://oapi.dingtalk.com/robot/send?access_token=abc", secret, 1_700_000_000_123);
        let (base, sign) = url.split_once("&sign=").expect("sign");
        assert_eq!(base, "https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1700000000123");
        let decoded = sign.replace("%2B", "+").replace("%2F", "/").replace("%3D", "=");
        let expected = tocsin_auth::mac::hmac_sha256(secret.as_bytes(), &[b"1700000000123\n", secret.as_bytes()]);
        assert_eq!(unbase64(&decoded), expected.to_vec());
        assert!(!sign.contains(['+', '/', '=']), "URL-encoded: {sign}");
    }

    #[test]
    fn robots_mention_people_the_way_each_shows_them() {
        let p = payload("web-1");
        let at = Mentions { mobiles: vec!["13800000000".into()], user_ids: vec!["zhangsan".into()], all: false };
        let ding = robot_body(RobotKind::DingTalk, "CPU high", &p, &at);
        assert_eq!(ding["at"]["atMobiles"][0], "13800000000");
        assert_eq!(ding["at"]["atUserIds"][0], "zhangsan");
        assert!(ding["markdown"]["text"].as_str().expect("text").ends_with("@13800000000 @zhangsan"), "{ding}");
        let wecom_md = robot_body(
            RobotKind::WeCom,
            "CPU high",
            &p,
            &Mentions { user_ids: vec!["lisi".into()], ..Mentions::default() },
        );
        assert_eq!(wecom_md["msgtype"], "markdown");
        assert_eq!(wecom_md["markdown"]["content"], "CPU high <@lisi>");
        let wecom_text = robot_body(RobotKind::WeCom, "CPU high", &p, &at);
        assert_eq!(wecom_text["msgtype"], "text", "mobiles are mentioned in text messages only");
        assert_eq!(wecom_text["text"]["mentioned_mobile_list"][0], "13800000000");
        assert_eq!(wecom_text["text"]["mentioned_list"][0], "zhangsan");
        let plain = robot_body(RobotKind::DingTalk, "CPU high", &p, &Mentions::default());
        assert_eq!(plain["markdown"]["text"], "CPU high");
    }

    #[test]
    fn robot_text_and_email_carry_the_links() {
        let mut p = payload("web-1");
        p.alerts[0].ack_url = Some("https://t.example/api/v1/alerts/f/link?action=ack&sig=ab".into());
        p.alerts[0].silence_url = Some("https://t.example/api/v1/alerts/f/link?action=silence&sig=cd".into());
        let text = default_text(&p);
        assert!(text.contains("acknowledge: https://t.example/api/v1/alerts/f/link?action=ack&sig=ab"), "{text}");
        assert!(text.contains("silence 1 h: https://t.example/api/v1/alerts/f/link?action=silence&sig=cd"), "{text}");
        let html = default_html(&p);
        assert!(
            html.contains("<a href=\"https://t.example/api/v1/alerts/f/link?action=ack&amp;sig=ab\">acknowledge</a>"),
            "{html}"
        );
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(json["alerts"][0]["ackURL"], "https://t.example/api/v1/alerts/f/link?action=ack&sig=ab");
        // Acknowledged: no ack link shown, the silence link still is.
        p.alerts[0].acked_by = Some("ann".into());
        let text = default_text(&p);
        assert!(!text.contains("acknowledge:") && text.contains("silence 1 h:"), "{text}");
    }

    /// `tls: auto` with a username against a server without STARTTLS used
    /// to send AUTH PLAIN in the clear.
    #[tokio::test]
    async fn auto_tls_refuses_to_send_credentials_in_the_clear() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.expect("accept");
            let mut s = BufReader::new(sock);
            s.get_mut().write_all(b"220 plain ESMTP\r\n").await.expect("greet");
            let mut seen = String::new();
            let mut line = String::new();
            while s.read_line(&mut line).await.unwrap_or(0) > 0 {
                seen.push_str(&line);
                if line.starts_with("EHLO") {
                    s.get_mut().write_all(b"250-plain\r\n250 AUTH PLAIN\r\n").await.expect("ehlo");
                } else {
                    s.get_mut().write_all(b"250 ok\r\n").await.expect("reply");
                }
                line.clear();
            }
            seen
        });
        let e = EmailFile {
            to: vec!["oncall@example.com".into()],
            from: "tocsin@example.com".into(),
            smarthost: addr.to_string(),
            username: Some("tocsin".into()),
            password: Some("secret".into()),
            subject: None,
            text: None,
            html: None,
            tls: None,
            ca_file: None,
            timeout: None,
        };
        let err = send_email(&e, &payload("web-1")).await.expect_err("refused");
        assert!(err.to_string().contains("in the clear"), "{err}");
        let seen = server.await.expect("server");
        assert!(!seen.contains("AUTH"), "credentials were sent: {seen}");
    }

    /// A receiver with `rate_limit: { messages: 2, per: 1s }` given five
    /// notifications at once: two go out, the other three are folded into
    /// one digest when the window allows; none is dropped, and all five
    /// jobs are reported finished (so they leave the outbox).
    #[tokio::test]
    async fn a_rate_limit_folds_the_surplus_into_one_digest() {
        let sink = crate::testkit::WebhookSink::start(0).await.expect("sink");
        let receiver = Receiver {
            name: "chat".into(),
            integrations: vec![Integration::Webhook {
                url: format!("http://{}/chat", sink.addr),
                headers: Default::default(),
                timeout: Duration::from_secs(5),
            }],
            rate_limit: Some(crate::config::RateLimit { messages: 2, per: Duration::from_secs(1) }),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let clock = Arc::new(crate::ManualClock::new(0));
        let n = Notifier::new([("chat".to_string(), receiver)].into(), tx, RetryPolicy::default(), clock);
        let started = Instant::now();
        for i in 0..5 {
            let mut p = payload(&format!("h{i}"));
            p.alerts[0].fingerprint = format!("f{i}");
            n.enqueue(Job {
                id: format!("j{i}"),
                receiver: "chat".into(),
                group_key: format!("g{i}"),
                reason: crate::dispatch::Reason::Update,
                payload: p,
                created_at: 0,
            });
        }
        let got = sink.wait_for_count(3, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 3, "two sent, then one digest");
        assert!(got[2].at.duration_since(started) >= Duration::from_millis(900), "the digest waited for the window");
        let digest = &got[2].body;
        assert_eq!(digest["tocsin"]["reason"], "digest");
        assert_eq!(digest["tocsin"]["digest"], 3);
        let hosts: Vec<&str> = digest["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| a["labels"]["host"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(hosts, ["h2", "h3", "h4"]);
        let mut finished = Vec::new();
        while finished.len() < 5 {
            let a = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("attempt").expect("open");
            if a.finished && a.ok {
                finished.push(a.job_id);
            }
        }
        finished.sort();
        assert_eq!(finished, ["j0", "j1", "j2", "j3", "j4"]);
        assert_eq!(n.folded(), [("chat".to_string(), 3, 1)]);
        let text = default_text(&crate::dispatch::digest("chat", &[&payload("a"), &payload("b")], 0));
        assert!(text.contains("[digest of 2 notifications held back by this receiver's rate limit]"), "{text}");
    }

    #[test]
    fn the_person_on_call_is_mentioned_and_mailed() {
        let mut p = payload("db-1");
        let team = Mentions { user_ids: vec!["lead".into()], ..Mentions::default() };
        assert_eq!(with_oncall(&team, &p), team, "no step with a schedule: as configured");
        let person = crate::oncall::Person {
            name: "alice".into(),
            email: Some("alice@example.com".into()),
            mobile: Some("13800000001".into()),
            user_id: None,
        };
        p.tocsin.oncall = Some(crate::dispatch::OnCallField { schedule: "primary".into(), person: Some(person) });
        let at = with_oncall(&team, &p);
        assert_eq!(
            (at.mobiles.as_slice(), at.user_ids.as_slice()),
            (&["13800000001".to_string()][..], &["lead".to_string()][..])
        );
        let e = EmailFile {
            to: vec!["team@example.com".into()],
            from: "tocsin@example.com".into(),
            smarthost: "127.0.0.1:25".into(),
            username: None,
            password: None,
            subject: None,
            text: None,
            html: None,
            tls: None,
            ca_file: None,
            timeout: None,
        };
        assert_eq!(email_for(&e, &p).to, ["alice@example.com"]);
        p.tocsin.oncall = Some(crate::dispatch::OnCallField { schedule: "primary".into(), person: None });
        assert_eq!(email_for(&e, &p).to, ["team@example.com"], "nobody on call: the receiver's own address");
    }

    #[test]
    fn robot_error_codes_are_failures() {
        assert!(check_robot_reply(RobotKind::WeCom, r#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        assert!(check_robot_reply(RobotKind::DingTalk, r#"{"errcode":310000,"errmsg":"bad"}"#).is_err());
        assert!(check_robot_reply(RobotKind::Feishu, r#"{"code":19001}"#).is_err());
    }
}
