//! The storage engine's clock, injected so that tests move time instead of
//! sleeping through it (persist age, grace periods, the series window,
//! retention and the age of partitions for compaction).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Wall time, nanoseconds since the Unix epoch: what row timestamps are
    /// compared with (retention, the age of a partition, the series window).
    fn now_ns(&self) -> i64;

    /// Time since an arbitrary fixed origin that never goes back: what
    /// waiting periods are measured with (buffer age, grace periods).
    fn monotonic(&self) -> Duration;

    /// Whole seconds since the Unix epoch.
    fn unix_secs(&self) -> u64 {
        u64::try_from(self.now_ns() / 1_000_000_000).unwrap_or(0)
    }
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        crate::now_ns()
    }

    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that moves only when told to; wall and monotonic time move
/// together.
#[derive(Debug)]
pub struct ManualClock {
    wall_ns: AtomicI64,
    start_ns: i64,
}

impl ManualClock {
    pub fn new(wall_ns: i64) -> ManualClock {
        ManualClock { wall_ns: AtomicI64::new(wall_ns), start_ns: wall_ns }
    }

    /// Starts at the machine's wall time.
    pub fn at_now() -> ManualClock {
        ManualClock::new(crate::now_ns())
    }

    pub fn advance(&self, by: Duration) {
        let ns = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.wall_ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.wall_ns.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        let ns = self.now_ns().saturating_sub(self.start_ns).max(0);
        Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_wall_and_monotonic_time_together() {
        let c = ManualClock::new(5_000_000_000);
        assert_eq!((c.now_ns(), c.unix_secs(), c.monotonic()), (5_000_000_000, 5, Duration::ZERO));
        c.advance(Duration::from_millis(1500));
        assert_eq!((c.now_ns(), c.unix_secs(), c.monotonic()), (6_500_000_000, 6, Duration::from_millis(1500)));
    }

    #[test]
    fn system_monotonic_time_does_not_go_back() {
        let a = SystemClock.monotonic();
        assert!(SystemClock.monotonic() >= a);
    }
}
