//! How many requests (or items of one) each input bound has refused, for
//! `/metrics` (`tocsin_limit_refusals_total{limit="..."}`): an operator
//! sees which bound clients hit, not only that something was refused.
//!
//! Process-wide: every crate that enforces a bound counts here, under the
//! bound's name (its configuration key, or the constant's name for fixed
//! bounds). Refusals are rare, so one mutex is enough.

use std::collections::BTreeMap;

use parking_lot::Mutex;

static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts one refusal by bound `limit`.
pub fn refused(limit: &'static str) {
    refused_n(limit, 1);
}

/// Counts `n` refusals by bound `limit` (items of one request).
pub fn refused_n(limit: &'static str, n: u64) {
    if n > 0 {
        *COUNTS.lock().entry(limit).or_default() += n;
    }
}

/// Every bound that refused something since start, with its count, by name.
pub fn counts() -> Vec<(&'static str, u64)> {
    COUNTS.lock().iter().map(|(k, v)| (*k, *v)).collect()
}

/// The count of one bound.
pub fn count(limit: &str) -> u64 {
    COUNTS.lock().get(limit).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_add_up_per_bound() {
        let before = count("test_bound_a");
        refused("test_bound_a");
        refused_n("test_bound_a", 2);
        refused_n("test_bound_b", 0);
        assert_eq!(count("test_bound_a"), before + 3);
        assert!(counts().iter().any(|(k, n)| *k == "test_bound_a" && *n >= 3));
        assert!(!counts().iter().any(|(k, _)| *k == "test_bound_b"), "a zero count is not listed");
    }
}
