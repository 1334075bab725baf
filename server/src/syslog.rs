//! Syslog listeners (`[syslog]`, docs/protocols.md): TCP (octet-counted or
//! newline-framed, RFC 6587) and UDP. Messages are parsed by
//! `tocsin_ingest::syslog` and written, a read's worth at a time, as the
//! caller `syslog`, which may write the configured table and nothing else.
//! Syslog has no acknowledgements: a sender learns nothing of refused
//! messages, so they are counted in `/metrics` and logged (at most once per
//! 10 s per listener).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tocsin_auth::Principal;
use tocsin_ingest::IngestService;
use tocsin_ingest::syslog::{Frame, next_frame, parse};
use tocsin_proto::v1::LogEvent;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::ServerError;
use crate::config::SyslogConfig;

/// Most datagrams written together.
const UDP_BATCH: usize = 1024;

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
            warned: Throttle::default(),
        });
        let mut tasks = Vec::new();
        if let Some(l) = self.tcp {
            let (sink, stop) = (Arc::clone(&sink), stop.clone());
            let (max_frame, max_connections) = (config.max_frame_bytes, config.max_connections);
            tasks.push(tokio::spawn(accept_loop(l, sink, max_frame, max_connections, stop)));
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
    warned: Throttle,
}

impl Sink {
    fn invalid(&self, peer: &SocketAddr, reason: &str) {
        self.ingest.metrics.syslog_invalid.fetch_add(1, Ordering::Relaxed);
        if self.warned.allow() {
            tracing::warn!(%peer, reason, "syslog: message refused (further refusals for 10 s are only counted)");
        }
    }

    async fn write(&self, events: Vec<LogEvent>) {
        if events.is_empty() {
            return;
        }
        let n = events.len();
        match self.ingest.syslog(&self.who, &self.database, &self.table, events).await {
            Ok(resp) => {
                if let Some(r) = resp.rejected.first()
                    && self.warned.allow()
                {
                    tracing::warn!(refused = resp.rejected.len(), first = %r.reason, "syslog: events refused by storage");
                }
            }
            Err(e) => {
                if self.warned.allow() {
                    tracing::warn!(events = n, error = %e, "syslog: events not written");
                }
            }
        }
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

async fn accept_loop(
    listener: TcpListener,
    sink: Arc<Sink>,
    max_frame: usize,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let stop_for_connections = stop.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let (sink, stop) = (Arc::clone(&sink), stop_for_connections.clone());
                        connections.spawn(async move {
                            connection(socket, peer, &sink, max_frame, stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        if sink.warned.allow() {
                            tracing::warn!(%peer, max_connections, "syslog: too many TCP connections; closing this one");
                        }
                    }
                },
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

/// One sender's stream: each read's whole frames are written together
/// before the next read, so a sender faster than storage is slowed by TCP.
async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    sink: &Sink,
    max_frame: usize,
    mut stop: watch::Receiver<bool>,
) {
    let host = peer.ip().to_string();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        buf.reserve(64 * 1024);
        let read = tokio::select! {
            r = socket.read_buf(&mut buf) => r,
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
        let now = tocsin_ingest::now_ns();
        let mut events = Vec::new();
        let mut pos = 0;
        let mut broken = None;
        loop {
            match next_frame(&buf[pos..], max_frame) {
                Ok(Frame::Message { start, end, consumed }) => {
                    match parse(&buf[pos + start..pos + end], &host, now) {
                        Ok(e) => events.push(e),
                        Err(reason) => sink.invalid(&peer, &reason),
                    }
                    pos += consumed;
                }
                Ok(Frame::Incomplete) => break,
                Err(reason) => {
                    broken = Some(reason);
                    break;
                }
            }
        }
        // A last line without its newline is a message too.
        if eof && broken.is_none() {
            let rest = &buf[pos..];
            let rest = &rest[rest.iter().take_while(|c| matches!(c, b'\n' | b'\r' | 0)).count()..];
            match rest.first() {
                None => {}
                Some(c) if c.is_ascii_digit() => {
                    sink.invalid(&peer, "the connection closed inside an octet-counted frame")
                }
                Some(_) => match parse(rest, &host, now) {
                    Ok(e) => events.push(e),
                    Err(reason) => sink.invalid(&peer, &reason),
                },
            }
        }
        buf.drain(..pos);
        sink.write(events).await;
        if let Some(reason) = broken {
            sink.invalid(&peer, &format!("{reason}; closing the connection"));
            return;
        }
        if eof {
            return;
        }
    }
}

async fn udp_loop(socket: UdpSocket, sink: Arc<Sink>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let first = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stopped(&mut stop) => return,
        };
        let now = tocsin_ingest::now_ns();
        let mut events = Vec::new();
        let mut received = Some(first);
        // Up to UDP_BATCH datagrams that have already arrived, without
        // waiting for more.
        for i in 0..UDP_BATCH {
            let Some(r) = received.take() else { break };
            match r {
                Ok((n, peer)) => match parse(&buf[..n], &peer.ip().to_string(), now) {
                    Ok(e) => events.push(e),
                    Err(reason) => sink.invalid(&peer, &reason),
                },
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
        sink.write(events).await;
    }
}
