//! Durations as operators write them: `500ms`, `10s`, `5m`, `1h30m`, `2d`,
//! `1w` (Prometheus's units; components largest first).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses `500ms`, `10s`, `5m`, `1h30m`, `1d`, `1w`; `0` alone is zero.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration like 500ms, 10s, 5m, 1h30m, 1d or 1w");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut last_unit_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let (rank, millis) = match unit {
            "w" => (0, 7 * 86_400_000),
            "d" => (1, 86_400_000),
            "h" => (2, 3_600_000),
            "m" => (3, 60_000),
            "s" => (4, 1000),
            "ms" => (5, 1),
            "" => return Err(format!("{s:?} needs a unit after {n} (ms, s, m, h, d or w)")),
            _ => return Err(format!("{s:?} has unknown unit {unit:?} (use ms, s, m, h, d or w)")),
        };
        if last_unit_rank != usize::MAX && rank <= last_unit_rank {
            return Err(format!("{s:?}: units must go from largest to smallest, each once"));
        }
        last_unit_rank = rank;
        let add = n.checked_mul(millis).ok_or_else(bad)?;
        total = total.checked_add(Duration::from_millis(add)).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it (`1h30m`, `250ms`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// A duration in configuration files: a string like `30s`, or a number of
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn millis(self) -> i64 {
        self.0.as_millis() as i64
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Dur(Duration::from_secs(s))),
            Raw::Text(t) => parse(&t).map(Dur).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1w"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_durations_with_the_reason() {
        assert!(parse("").is_err());
        assert!(parse("10").unwrap_err().contains("needs a unit"));
        assert!(parse("5x").unwrap_err().contains("unknown unit"));
        assert!(parse("1m1h").unwrap_err().contains("largest to smallest"));
        assert!(parse("s").is_err());
    }

    #[test]
    fn format_round_trips() {
        for s in ["1h30m", "250ms", "1d", "15m", "0s"] {
            assert_eq!(format(parse(s).expect("valid")), s);
        }
    }
}
