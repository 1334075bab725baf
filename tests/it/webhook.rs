//! A webhook receiver on loopback that records every request body by path.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(crate) struct Webhook {
    pub(crate) addr: SocketAddr,
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Webhook {
    pub(crate) async fn start() -> Webhook {
        Webhook::start_failing(0).await
    }

    /// Answers the first `fail_first` requests with 503 (and does not
    /// record them).
    pub(crate) async fn start_failing(fail_first: usize) -> Webhook {
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let b = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let b = Arc::clone(&b);
                let failures = Arc::clone(&failures);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16384];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                        let fail = failures.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
                        let status: &[u8] = if fail {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        } else {
                            b.lock().expect("lock").push((path, body));
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        };
                        let _ = sock.write_all(status).await;
                        return;
                    }
                });
            }
        });
        Webhook { addr, bodies }
    }

    pub(crate) fn received(&self) -> Vec<(String, Value)> {
        self.bodies.lock().expect("lock").clone()
    }

    /// Waits up to `secs` for a request matching `pred`.
    pub(crate) async fn wait_for(&self, secs: u64, pred: impl Fn(&str, &Value) -> bool) -> Option<Value> {
        for _ in 0..secs * 20 {
            if let Some((_, v)) = self.received().into_iter().find(|(p, v)| pred(p, v)) {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}
