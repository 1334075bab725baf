//! A webhook receiver for tests and benchmarks: records every request's
//! path, JSON body and arrival time, and can answer the first N requests
//! with 503 to play a receiver that is down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: serde_json::Value,
    pub at: Instant,
}

pub struct WebhookSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

impl WebhookSink {
    /// Listens on a loopback port; the first `fail_first` requests get a 503
    /// and are not recorded.
    pub async fn start(fail_first: usize) -> std::io::Result<WebhookSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let (r, n) = (Arc::clone(&received), Arc::clone(&arrived));
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (r, n, f) = (Arc::clone(&r), Arc::clone(&n), Arc::clone(&failures));
                tokio::spawn(async move {
                    let _ = serve_one(sock, &r, &n, &f).await;
                });
            }
        });
        Ok(WebhookSink { addr, received, arrived })
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().clone()
    }

    /// Waits up to `timeout` for a request matching `pred`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Received) -> bool) -> Option<Received> {
        self.wait_until(timeout, |all| all.iter().find(|r| pred(r)).cloned()).await
    }

    /// Waits up to `timeout` until at least `n` requests arrived; returns
    /// what arrived.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let _ = self.wait_until(timeout, |all| (all.len() >= n).then_some(())).await;
        self.received()
    }

    async fn wait_until<T>(&self, timeout: Duration, check: impl Fn(&[Received]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = check(&self.received.lock()) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(left, notified).await.is_err() {
                return None;
            }
        }
    }
}

async fn serve_one(
    mut sock: TcpStream,
    received: &Mutex<Vec<Received>>,
    arrived: &Notify,
    failures: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let (head_end, len) = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            break (end, len);
        }
    };
    let at = Instant::now();
    let path = String::from_utf8_lossy(&buf[..head_end]).split_whitespace().nth(1).unwrap_or("").to_string();
    let body = serde_json::from_slice(&buf[head_end + 4..head_end + 4 + len]).unwrap_or_default();
    let fail = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status: &[u8] = if fail {
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    } else {
        received.lock().push(Received { path, body, at });
        arrived.notify_waiters();
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    };
    sock.write_all(status).await
}
