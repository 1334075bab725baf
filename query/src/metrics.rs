//! Query counters and a latency histogram for the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus convention).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default)]
pub struct QueryMetrics {
    pub queries: AtomicU64,
    pub errors: AtomicU64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], plus +Inf last.
    pub latency_buckets: [AtomicU64; 15],
    /// Sum of latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Microseconds spent in each of [`PHASES`] by the queries that were
    /// started, summed.
    pub phase_us: [AtomicU64; 3],
}

/// The phases of starting a query, as `/metrics` names them: SQL to a
/// checked logical plan, DataFusion's logical optimizer, physical planning
/// (segment pruning included) and the physical optimizer.
pub const PHASES: [&str; 3] = ["plan", "optimize", "physical_plan"];

impl QueryMetrics {
    /// Adds one started query's time in each of [`PHASES`].
    pub fn observe_phases(&self, phases: [Duration; 3]) {
        for (sum, d) in self.phase_us.iter().zip(phases) {
            sum.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        }
    }

    pub fn observe(&self, elapsed: Duration, ok: bool) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_buckets[LATENCY_BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = QueryMetrics::default();
        m.observe(Duration::from_millis(3), true);
        m.observe(Duration::from_secs(60), false);
        assert_eq!(m.latency_buckets[0].load(Ordering::Relaxed), 0);
        assert_eq!(m.latency_buckets[2].load(Ordering::Relaxed), 1);
        assert_eq!(m.latency_buckets[13].load(Ordering::Relaxed), 1);
        assert_eq!(m.latency_buckets[14].load(Ordering::Relaxed), 2);
        assert_eq!(m.errors.load(Ordering::Relaxed), 1);
    }
}
