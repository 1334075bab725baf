//! The 15 TSBS `cpu-only` query types, as TSBS' TimescaleDB generator
//! writes them (`tsbs_generate_queries --use-case=cpu-only
//! --format=timescaledb`), in Tocsin's SQL: `time_bucket(INTERVAL ..., ts)`
//! for `time_bucket('...', time)`, `ts` for `time`. Parameters (hosts,
//! windows) are drawn from a seeded generator, so a run can be repeated
//! and its statements handed to the peers (`bench/tsbs_peers.py`).
//!
//! Where TSBS leaves the order of rows open (`high-cpu-*`, `lastpoint`),
//! an `ORDER BY` over the whole key is added so that answers can be
//! compared row by row across engines.

use crate::data::{FIELDS, INTERVAL_NS, Rng, START_NS};
use crate::util::rfc3339;

const HOUR: i64 = 3_600_000_000_000;

/// What a query type's statements are drawn from.
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    pub hosts: usize,
    /// One past the last sample's time (ns).
    pub end: i64,
}

/// One TSBS query type.
#[derive(Debug, Clone, Copy)]
pub struct QueryType {
    pub name: &'static str,
    shape: Shape,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `single-groupby-M-H-T`: max of `metrics` per minute for `hosts`
    /// random hosts over `hours`.
    SingleGroupby { metrics: usize, hosts: usize, hours: i64 },
    /// `cpu-max-all-H`: max of every metric per hour for `hosts` hosts over 8 h.
    CpuMaxAll { hosts: usize },
    /// `double-groupby-M`: mean of `metrics` per hour and host, all hosts, 12 h.
    DoubleGroupby { metrics: usize },
    /// `high-cpu-1` / `high-cpu-all`: rows with usage_user > 90 over 12 h.
    HighCpu { one_host: bool },
    /// The newest row of each host.
    Lastpoint,
    /// The 5 latest minutes' max usage_user before a random time.
    GroupbyOrderbyLimit,
}

/// All 15, in TSBS' order.
pub const QUERY_TYPES: [QueryType; 15] = [
    single("single-groupby-1-1-1", 1, 1, 1),
    single("single-groupby-1-1-12", 1, 1, 12),
    single("single-groupby-1-8-1", 1, 8, 1),
    single("single-groupby-5-1-1", 5, 1, 1),
    single("single-groupby-5-1-12", 5, 1, 12),
    single("single-groupby-5-8-1", 5, 8, 1),
    QueryType { name: "cpu-max-all-1", shape: Shape::CpuMaxAll { hosts: 1 } },
    QueryType { name: "cpu-max-all-8", shape: Shape::CpuMaxAll { hosts: 8 } },
    QueryType { name: "double-groupby-1", shape: Shape::DoubleGroupby { metrics: 1 } },
    QueryType { name: "double-groupby-5", shape: Shape::DoubleGroupby { metrics: 5 } },
    QueryType { name: "double-groupby-all", shape: Shape::DoubleGroupby { metrics: 10 } },
    QueryType { name: "high-cpu-all", shape: Shape::HighCpu { one_host: false } },
    QueryType { name: "high-cpu-1", shape: Shape::HighCpu { one_host: true } },
    QueryType { name: "lastpoint", shape: Shape::Lastpoint },
    QueryType { name: "groupby-orderby-limit", shape: Shape::GroupbyOrderbyLimit },
];

const fn single(name: &'static str, metrics: usize, hosts: usize, hours: i64) -> QueryType {
    QueryType { name, shape: Shape::SingleGroupby { metrics, hosts, hours } }
}

/// The query types whose names are in `names` (comma-separated; empty or
/// `all` for all), or the first name that is none.
pub fn select(names: &str) -> Result<Vec<QueryType>, String> {
    if names.is_empty() || names == "all" {
        return Ok(QUERY_TYPES.to_vec());
    }
    names
        .split(',')
        .map(|n| {
            QUERY_TYPES.iter().find(|q| q.name == n.trim()).copied().ok_or_else(|| {
                let all: Vec<&str> = QUERY_TYPES.iter().map(|q| q.name).collect();
                format!("unknown query type {n:?}; the types are {}", all.join(", "))
            })
        })
        .collect()
}

/// A window of `width` starting at a random sample time, within the data.
fn window(rng: &mut Rng, d: Dataset, width: i64) -> (String, String) {
    let span = ((d.end - START_NS - width) / INTERVAL_NS).max(1) as u64;
    let a = START_NS + rng.below(span) as i64 * INTERVAL_NS;
    (rfc3339(a), rfc3339(a + width))
}

/// `n` distinct random hosts, as an SQL list.
fn hosts(rng: &mut Rng, d: Dataset, n: usize) -> String {
    let mut picked: Vec<u64> = Vec::with_capacity(n);
    while picked.len() < n.min(d.hosts) {
        let h = rng.below(d.hosts as u64);
        if !picked.contains(&h) {
            picked.push(h);
        }
    }
    picked.iter().map(|h| format!("'host_{h}'")).collect::<Vec<_>>().join(", ")
}

/// `agg(m) AS <prefix>_m` for the first `n` metrics.
fn aggregates(agg: &str, prefix: &str, n: usize) -> String {
    FIELDS[..n].iter().map(|m| format!("{agg}({m}) AS {prefix}_{m}")).collect::<Vec<_>>().join(", ")
}

impl QueryType {
    /// One statement of this type with parameters drawn from `rng`.
    pub fn make(&self, rng: &mut Rng, d: Dataset) -> String {
        match self.shape {
            Shape::SingleGroupby { metrics, hosts: n, hours } => {
                let hosts = hosts(rng, d, n);
                let (a, b) = window(rng, d, hours * HOUR);
                format!(
                    "SELECT time_bucket(INTERVAL '1 minute', ts) AS minute, {} FROM cpu WHERE hostname IN ({hosts}) \
                     AND ts >= '{a}' AND ts < '{b}' GROUP BY minute ORDER BY minute",
                    aggregates("max", "max", metrics)
                )
            }
            Shape::CpuMaxAll { hosts: n } => {
                let hosts = hosts(rng, d, n);
                let (a, b) = window(rng, d, 8 * HOUR);
                format!(
                    "SELECT time_bucket(INTERVAL '1 hour', ts) AS hour, {} FROM cpu WHERE hostname IN ({hosts}) \
                     AND ts >= '{a}' AND ts < '{b}' GROUP BY hour ORDER BY hour",
                    aggregates("max", "max", FIELDS.len())
                )
            }
            Shape::DoubleGroupby { metrics } => {
                let (a, b) = window(rng, d, 12 * HOUR);
                format!(
                    "SELECT time_bucket(INTERVAL '1 hour', ts) AS hour, hostname, {} FROM cpu \
                     WHERE ts >= '{a}' AND ts < '{b}' GROUP BY hour, hostname ORDER BY hour, hostname",
                    aggregates("avg", "mean", metrics)
                )
            }
            Shape::HighCpu { one_host } => {
                let host = if one_host { format!(" AND hostname IN ({})", hosts(rng, d, 1)) } else { String::new() };
                let (a, b) = window(rng, d, 12 * HOUR);
                format!(
                    "SELECT * FROM cpu WHERE usage_user > 90.0{host} AND ts >= '{a}' AND ts < '{b}' \
                     ORDER BY ts, hostname"
                )
            }
            Shape::Lastpoint => "SELECT DISTINCT ON (hostname) * FROM cpu ORDER BY hostname, ts DESC".into(),
            Shape::GroupbyOrderbyLimit => {
                let span = ((d.end - START_NS) / INTERVAL_NS) as u64;
                let e = START_NS + (span / 2 + rng.below(span / 2)) as i64 * INTERVAL_NS;
                format!(
                    "SELECT time_bucket(INTERVAL '1 minute', ts) AS minute, max(usage_user) AS max_usage_user \
                     FROM cpu WHERE ts < '{}' GROUP BY minute ORDER BY minute DESC LIMIT 5",
                    rfc3339(e)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Dataset = Dataset { hosts: 100, end: START_NS + 24 * HOUR };

    #[test]
    fn every_type_makes_its_shape() {
        let mut rng = Rng::new(7);
        let names: Vec<&str> = QUERY_TYPES.iter().map(|q| q.name).collect();
        assert_eq!(names.len(), 15);
        let q = select("single-groupby-5-8-1").expect("known")[0].make(&mut rng, D);
        assert_eq!(q.matches("'host_").count(), 8, "{q}");
        assert_eq!(q.matches("max(").count(), 5, "{q}");
        let q = select("cpu-max-all-8").expect("known")[0].make(&mut rng, D);
        assert_eq!(q.matches("max(").count(), 10, "{q}");
        let q = select("double-groupby-all").expect("known")[0].make(&mut rng, D);
        assert_eq!(q.matches("avg(").count(), 10, "{q}");
        assert!(!select("high-cpu-all").expect("known")[0].make(&mut rng, D).contains("hostname IN"));
        assert!(select("high-cpu-1").expect("known")[0].make(&mut rng, D).contains("hostname IN ('host_"));
        assert!(select("nope").unwrap_err().contains("the types are single-groupby-1-1-1"));
    }

    #[test]
    fn parameters_repeat_with_the_seed_and_stay_in_the_data() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            QUERY_TYPES.iter().map(|q| q.make(&mut rng, D)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        // The 12-hour windows end within the day.
        for _ in 0..100 {
            let mut rng = Rng::new(11);
            let (_, b) = window(&mut rng, D, 12 * HOUR);
            assert!(b.as_str() <= "2016-01-02T00:00:00Z", "{b}");
        }
    }
}
