//! Rows per second per caller: one token bucket per principal, so that a
//! flood from one token is refused while the others' writes go through.
//! A bucket holds up to `burst` rows and refills at `rate` rows a second; a
//! request may take more rows than are left only when the bucket is full
//! (a batch larger than the burst then leaves it in debt), so that no
//! request size is refused for ever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug)]
pub struct CallerRates {
    /// Rows per second; 0: no limit.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rows: f64,
    at: Instant,
}

/// Callers whose buckets are kept at most; idle full ones are forgotten
/// first.
const MAX_BUCKETS: usize = 100_000;

impl CallerRates {
    /// `rows_per_second` 0 switches the limit off; `burst` 0 means ten
    /// seconds' worth.
    pub fn new(rows_per_second: u64, burst: u64) -> CallerRates {
        let rate = rows_per_second as f64;
        let burst = if burst == 0 { rate * 10.0 } else { burst as f64 };
        CallerRates { rate, burst, buckets: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes `rows` from `caller`'s bucket at `now`, or says how long until
    /// the request would fit.
    pub fn take(&self, caller: &str, rows: u64, now: Instant) -> Result<(), Duration> {
        if !self.enabled() || rows == 0 {
            return Ok(());
        }
        self.with_bucket(caller, now, |b, burst, rate| {
            let need = (rows as f64).min(burst);
            if b.rows >= need {
                b.rows -= rows as f64;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((need - b.rows) / rate))
            }
        })
    }

    /// For writes whose size is known only once done (SQL `INSERT`):
    /// whether `caller` may start one at `now` (its bucket is not empty or
    /// in debt), or how long until it may.
    pub fn admit(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        self.with_bucket(caller, now, |b, _, rate| {
            if b.rows >= 1.0 { Ok(()) } else { Err(Duration::from_secs_f64((1.0 - b.rows) / rate)) }
        })
    }

    /// Takes `rows` written by an admitted write, into debt if need be.
    pub fn charge(&self, caller: &str, rows: u64, now: Instant) {
        if self.enabled() && rows > 0 {
            self.with_bucket(caller, now, |b, _, _| b.rows -= rows as f64);
        }
    }

    /// `f` on `caller`'s bucket, refilled to `now`, with the burst and rate.
    fn with_bucket<T>(&self, caller: &str, now: Instant, f: impl FnOnce(&mut Bucket, f64, f64) -> T) -> T {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(caller) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.rows + rate * now.saturating_duration_since(b.at).as_secs_f64() < burst);
        }
        let b = buckets.entry(caller.to_string()).or_insert(Bucket { rows: self.burst, at: now });
        b.rows = (b.rows + self.rate * now.saturating_duration_since(b.at).as_secs_f64()).min(self.burst);
        b.at = now;
        f(b, self.burst, self.rate)
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_is_limited_and_another_is_not() {
        let r = CallerRates::new(100, 200);
        let t0 = Instant::now();
        assert!(r.take("token:a", 150, t0).is_ok());
        assert!(r.take("token:a", 50, t0).is_ok());
        let wait = r.take("token:a", 100, t0).expect_err("the bucket is empty");
        assert!((0.99..=1.01).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(r.take("token:b", 200, t0).is_ok(), "another caller has its own bucket");
        assert!(r.take("token:a", 100, t0 + Duration::from_secs(1)).is_ok(), "refilled at 100 rows/s");
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_once_the_bucket_is_full() {
        let r = CallerRates::new(10, 20);
        let t0 = Instant::now();
        assert!(r.take("c", 1000, t0).is_ok(), "a full bucket lets one large batch through");
        let wait = r.take("c", 1, t0 + Duration::from_secs(1)).expect_err("in debt");
        assert!(wait > Duration::from_secs(90), "{wait:?}");
        assert!(CallerRates::new(0, 0).take("c", u64::MAX, t0).is_ok(), "0 is no limit");
    }

    #[test]
    fn writes_sized_afterwards_are_admitted_then_charged() {
        let r = CallerRates::new(10, 20);
        let t0 = Instant::now();
        assert!(r.admit("c", t0).is_ok());
        r.charge("c", 50, t0);
        let wait = r.admit("c", t0).expect_err("in debt after 50 rows from a bucket of 20");
        assert!((3.09..=3.11).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(r.take("c", 1, t0).is_err(), "the debt holds for every protocol");
        assert!(r.admit("c", t0 + Duration::from_millis(3_200)).is_ok(), "repaid at 10 rows/s");
        assert!(r.admit("d", t0).is_ok(), "another caller is not held");
        let off = CallerRates::new(0, 0);
        off.charge("c", u64::MAX, t0);
        assert!(off.admit("c", t0).is_ok(), "0 is no limit");
    }
}
