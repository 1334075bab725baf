//! The webhook receiver of the alerting tests: `tocsin_alerting::testkit`'s
//! sink, with bodies as (path, JSON) pairs.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tocsin_alerting::testkit::WebhookSink;

pub(crate) struct Webhook {
    pub(crate) addr: SocketAddr,
    sink: WebhookSink,
}

impl Webhook {
    pub(crate) async fn start() -> Webhook {
        Webhook::start_failing(0).await
    }

    /// Answers the first `fail_first` requests with 503 (not recorded).
    pub(crate) async fn start_failing(fail_first: usize) -> Webhook {
        let sink = WebhookSink::start(fail_first).await.expect("bind webhook receiver");
        Webhook { addr: sink.addr, sink }
    }

    pub(crate) fn received(&self) -> Vec<(String, Value)> {
        self.sink.received().into_iter().map(|r| (r.path, r.body)).collect()
    }

    /// Waits up to `secs` for a request matching `pred`.
    pub(crate) async fn wait_for(&self, secs: u64, pred: impl Fn(&str, &Value) -> bool) -> Option<Value> {
        self.sink.wait_for(Duration::from_secs(secs), |r| pred(&r.path, &r.body)).await.map(|r| r.body)
    }
}
