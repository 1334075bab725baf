//! Syslog listeners (`[syslog]`, docs/protocols.md): TCP (octet-counted or
//! newline-framed, RFC 6587) and UDP. Messages are parsed by
//! `tocsin_ingest::syslog` and written, a read's worth at a time, as the
//! caller `syslog`, which may write the configured table and nothing else.
//!
//! Syslog has no acknowledgements, so nothing read is given up while the
//! server runs: when storage asks to wait (a full write buffer, a rate
//! limit), the listener keeps the bytes, stops reading, waits and writes
//! them again (TCP then slows the sender; on UDP the kernel's buffer fills
//! and drops). Everything is counted in `/metrics`; warnings are logged at
//! most once per 10 s per kind.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tocsin_auth::Principal;
use tocsin_ingest::syslog::{Frame, datagram_message, is_blank, looks_like_http, next_frame, parse};
use tocsin_ingest::{IngestError, IngestService};
use tocsin_proto::v1::LogEvent;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ServerError;
use crate::config::SyslogConfig;

/// Most datagrams written together.
const UDP_BATCH: usize = 1024;
/// Longest wait between two attempts at a write storage asked to retry.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The bound sockets, before they serve.
pub(crate) struct Listeners {
    tcp: Option<TcpListener>,
    udp: Option<UdpSocket>,
}

impl Listeners {
    pub(crate) async fn bind(config: &SyslogConfig) -> Result<Listeners, ServerError> {
        let tcp = match config.tcp_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
                what: "syslog TCP",
                addr,
                source,
            })?),
            None => None,
        };
        let udp = match config.udp_addr {
            Some(addr) => Some(UdpSocket::bind(addr).await.map_err(|source| ServerError::Bind {
                what: "syslog UDP",
                addr,
                source,
            })?),
            None => None,
        };
        Ok(Listeners { tcp, udp })
    }

    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub(crate) fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `stop`; the tasks end once what they read is written.
    pub(crate) fn spawn(
        self,
        config: &SyslogConfig,
        ingest: IngestService,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let sink = Arc::new(Sink {
            who: Principal::listener("syslog", &config.database, &config.table),
            database: config.database.clone(),
            table: config.table.clone(),
            ingest,
            warned_invalid: Throttle::default(),
            warned_write: Throttle::default(),
            warned_connections: Throttle::default(),
        });
        let mut tasks = Vec::new();
        if let Some(l) = self.tcp {
            let (sink, stop, config) = (Arc::clone(&sink), stop.clone(), config.clone());
            tasks.push(tokio::spawn(accept_loop(l, sink, config, stop)));
        }
        if let Some(s) = self.udp {
            tasks.push(tokio::spawn(udp_loop(s, sink, stop)));
        }
        tasks
    }
}

/// Where parsed events go.
struct Sink {
    ingest: IngestService,
    who: Principal,
    database: String,
    table: String,
    warned_invalid: Throttle,
    warned_write: Throttle,
    warned_connections: Throttle,
}

/// What one parse of held bytes gives: the events, and the messages refused
/// with their sender and reason.
type Parsed = (Vec<LogEvent>, Vec<(SocketAddr, String)>);

impl Sink {
    fn invalid(&self, peer: &SocketAddr, reason: &str) {
        self.ingest.metrics.syslog_invalid.fetch_add(1, Ordering::Relaxed);
        if self.warned_invalid.allow() {
            tracing::warn!(%peer, reason, "syslog: message refused (more refusals in the next 10 s are only counted)");
        }
    }

    /// Writes `parsed`. When storage asks to wait (write buffer full, rate
    /// limit), waits and writes what `reparse` gives (the same bytes parsed
    /// again), until they are written or the server stops; what is then
    /// not written is counted as dropped.
    async fn write(&self, parsed: Parsed, mut reparse: impl FnMut() -> Parsed, stop: &mut watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut next = Some(parsed);
        loop {
            let (events, invalid) = next.take().unwrap_or_else(&mut reparse);
            let n = events.len() as u64;
            let result = if events.is_empty() {
                Ok(None)
            } else {
                self.ingest.syslog(&self.who, &self.database, &self.table, events).await.map(Some)
            };
            let wait = match result {
                Ok(resp) => {
                    for (peer, reason) in &invalid {
                        self.invalid(peer, reason);
                    }
                    self.ingest.metrics.syslog_messages.fetch_add(n, Ordering::Relaxed);
                    if let Some(r) = resp.as_ref().and_then(|r| r.rejected.first())
                        && self.warned_write.allow()
                    {
                        let refused = resp.as_ref().map_or(0, |r| r.rejected.len());
                        tracing::warn!(refused, first = %r.reason, "syslog: events refused by storage");
                    }
                    return;
                }
                Err(e) => match retry_after(&e) {
                    Some(wait) => wait.max(backoff),
                    None => {
                        self.dropped(n, &e, invalid);
                        return;
                    }
                },
            };
            if self.warned_write.allow() {
                tracing::warn!(events = n, wait = ?wait, "syslog: storage asks to wait; holding the messages and not reading");
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(wait.min(MAX_BACKOFF)) => {}
                _ = stopped(stop) => {
                    self.dropped(n, &"the server stopped while storage asked to wait", invalid);
                    return;
                }
            }
        }
    }

    fn dropped(&self, n: u64, e: &dyn std::fmt::Display, invalid: Vec<(SocketAddr, String)>) {
        for (peer, reason) in &invalid {
            self.invalid(peer, reason);
        }
        self.ingest.metrics.syslog_dropped.fetch_add(n, Ordering::Relaxed);
        if self.warned_write.allow() {
            tracing::warn!(events = n, error = %e, "syslog: events not written");
        }
    }
}

/// How long storage asks a write to wait before it is tried again; `None`
/// when trying again would not help.
fn retry_after(e: &IngestError) -> Option<Duration> {
    use tocsin_storage::errors::Classify as _;
    match e {
        IngestError::RateLimited(r) => Some(Duration::from_secs(r.retry_after_secs())),
        e if e.class().retry_after() => Some(Duration::from_millis(50)),
        _ => None,
    }
}

/// At most one warning per 10 s.
#[derive(Default)]
struct Throttle(AtomicI64);

impl Throttle {
    fn allow(&self) -> bool {
        let now = tocsin_ingest::now_ns() / 1_000_000_000;
        let last = self.0.load(Ordering::Relaxed);
        now - last >= 10 && self.0.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Once the server stops.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Open connections by sender address, for `max_connections_per_host`.
type PerHost = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A connection's place in the counts, given back when it ends.
struct Slot {
    per_host: PerHost,
    ip: IpAddr,
    sink: Arc<Sink>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sink.ingest.metrics.syslog_open_connections.fetch_sub(1, Ordering::Relaxed);
        let mut m = self.per_host.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, sink: Arc<Sink>, config: SyslogConfig, mut stop: watch::Receiver<bool>) {
    let per_host: PerHost = Arc::default();
    let stop_for_connections = stop.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let slot = {
                        let mut m = per_host.lock();
                        let total: usize = m.values().sum();
                        let mine = m.get(&peer.ip()).copied().unwrap_or(0);
                        if total >= config.max_connections || mine >= config.max_connections_per_host {
                            None
                        } else {
                            *m.entry(peer.ip()).or_default() += 1;
                            sink.ingest.metrics.syslog_open_connections.fetch_add(1, Ordering::Relaxed);
                            Some(Slot { per_host: Arc::clone(&per_host), ip: peer.ip(), sink: Arc::clone(&sink) })
                        }
                    };
                    match slot {
                        Some(slot) => {
                            let (sink, stop) = (Arc::clone(&sink), stop_for_connections.clone());
                            let (max_frame, frame_timeout) = (config.max_frame_bytes, config.frame_timeout);
                            connections.spawn(async move {
                                connection(socket, peer, &sink, max_frame, frame_timeout, stop).await;
                                drop(slot);
                            });
                        }
                        None => {
                            sink.ingest.metrics.syslog_refused_connections.fetch_add(1, Ordering::Relaxed);
                            if sink.warned_connections.allow() {
                                tracing::warn!(
                                    %peer,
                                    max_connections = config.max_connections,
                                    max_connections_per_host = config.max_connections_per_host,
                                    "syslog: too many TCP connections; closing this one"
                                );
                            }
                        }
                    }
                }
                // Out of file descriptors, say: accepting again at once
                // would spin.
                Err(e) => {
                    tracing::warn!(error = %e, "syslog: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    while connections.join_next().await.is_some() {}
}

/// Cuts `buf` into frames: the events and refusals of the whole frames,
/// how many bytes they took, and the reason the stream cannot be followed
/// (a frame over the limit), if so. At `eof`, a last line without its
/// newline is a message too.
fn frames(buf: &[u8], peer: &SocketAddr, host: &str, max_frame: usize, eof: bool) -> (Parsed, usize, Option<String>) {
    let now = tocsin_ingest::now_ns();
    let (mut events, mut invalid) = (Vec::new(), Vec::new());
    let mut pos = 0;
    let broken = loop {
        match next_frame(&buf[pos..], max_frame) {
            Ok(Frame::Message { start, end, consumed }) => {
                match parse(&buf[pos + start..pos + end], host, now) {
                    Ok(e) => events.push(e),
                    Err(reason) => invalid.push((*peer, reason)),
                }
                pos += consumed;
            }
            Ok(Frame::Incomplete { skipped }) => {
                pos += skipped;
                break None;
            }
            Err(reason) => break Some(reason),
        }
    };
    if eof && broken.is_none() && pos < buf.len() {
        let rest = &buf[pos..];
        if rest[0].is_ascii_digit() {
            invalid.push((*peer, "the connection closed inside an octet-counted frame".into()));
        } else {
            match parse(rest, host, now) {
                Ok(e) => events.push(e),
                Err(reason) => invalid.push((*peer, reason)),
            }
        }
        pos = buf.len();
    }
    ((events, invalid), pos, broken)
}

/// One sender's stream: each read's whole frames are written before the
/// next read, so a sender faster than storage is slowed by TCP. A frame
/// left incomplete for `frame_timeout` closes the connection.
async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    sink: &Sink,
    max_frame: usize,
    frame_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let host = peer.ip().to_string();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut first = true;
    loop {
        buf.reserve(64 * 1024);
        // Waiting for the rest of a frame is bounded; waiting between
        // frames is not (quiet senders keep their connection).
        let pending = !buf.is_empty();
        let read = tokio::select! {
            r = socket.read_buf(&mut buf) => r,
            _ = tokio::time::sleep(frame_timeout), if pending => {
                sink.invalid(&peer, &format!("a frame stayed incomplete for {frame_timeout:?}; closing the connection"));
                return;
            }
            _ = stopped(&mut stop) => return,
        };
        let eof = match read {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "syslog: connection read failed");
                return;
            }
        };
        if first && buf.len() >= 8 {
            first = false;
            if looks_like_http(&buf) {
                sink.invalid(&peer, "an HTTP request on the syslog port; closing the connection");
                return;
            }
        }
        let (parsed, pos, broken) = frames(&buf, &peer, &host, max_frame, eof);
        sink.write(parsed, || frames(&buf[..pos], &peer, &host, max_frame, eof).0, &mut stop).await;
        if let Some(reason) = broken {
            sink.invalid(&peer, &format!("{reason}; closing the connection"));
            return;
        }
        buf.drain(..pos);
        if eof {
            return;
        }
    }
}

async fn udp_loop(socket: UdpSocket, sink: Arc<Sink>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 65_536];
    // The datagrams of one batch, kept until written.
    let mut held: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize, SocketAddr)> = Vec::new();
    loop {
        let first = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stopped(&mut stop) => return,
        };
        held.clear();
        spans.clear();
        let mut received = Some(first);
        // Up to UDP_BATCH datagrams that have already arrived, without
        // waiting for more.
        for i in 0..UDP_BATCH {
            let Some(r) = received.take() else { break };
            match r {
                Ok((n, peer)) => {
                    let msg = datagram_message(&buf[..n]);
                    if !is_blank(msg) {
                        spans.push((held.len(), held.len() + msg.len(), peer));
                        held.extend_from_slice(msg);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "syslog: UDP receive failed"),
            }
            if i + 1 == UDP_BATCH {
                break;
            }
            match socket.try_recv_from(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => received = Some(r),
            }
        }
        let now = tocsin_ingest::now_ns();
        let parse_all = || {
            let (mut events, mut invalid) = (Vec::with_capacity(spans.len()), Vec::new());
            for (start, end, peer) in &spans {
                match parse(&held[*start..*end], &peer.ip().to_string(), now) {
                    Ok(e) => events.push(e),
                    Err(reason) => invalid.push((*peer, reason)),
                }
            }
            (events, invalid)
        };
        let parsed = parse_all();
        sink.write(parsed, parse_all, &mut stop).await;
    }
}
