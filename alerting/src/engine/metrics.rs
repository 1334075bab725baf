//! What the engine counts, for the server's metrics module to render
//! (`server/src/metrics.rs`, `render_alerting`): the counters are
//! [`AlertMetrics`]; these are the values worked out when asked.

use super::*;

/// The engine's gauges at one moment.
#[derive(Debug, Clone, Default)]
pub struct AlertGauges {
    pub rules: usize,
    pub firing: usize,
    pub pending: usize,
    /// Receivers with a rate limit, and the limit.
    pub rate_limits: Vec<(String, crate::config::RateLimit)>,
    /// Per receiver: notifications folded into digests, digests sent.
    pub folded: Vec<(String, u64, u64)>,
}

impl AlertEngine {
    pub fn gauges(&self) -> AlertGauges {
        let (firing, pending, rules) = {
            let inner = self.inner.lock();
            let all = || inner.rules.values().flat_map(|m| m.values());
            (
                all().filter(|i| i.state == AlertState::Firing).count(),
                all().filter(|i| i.state == AlertState::Pending).count(),
                inner.config.rule_count(),
            )
        };
        AlertGauges { rules, firing, pending, rate_limits: self.notifier.rate_limits(), folded: self.notifier.folded() }
    }
}
