//! Roll-ups: keeping downsampled aggregates of a table in another table,
//! computed as time buckets close, so that they can be kept longer than the
//! raw rows (`[retention]`).
//!
//! A roll-up reads `source` one batch of closed buckets at a time and writes
//! into `target`, per bucket and series (every tag of the source), one row
//! with `<field>_<aggregate>` for each numeric field and aggregate:
//!
//! ```sql
//! INSERT INTO "public"."cpu_1h" (ts, "hostname", ..., "usage_user_avg", ...)
//! SELECT date_bin(INTERVAL '3600 seconds', ts, TIMESTAMP '1970-01-01T00:00:00Z') AS ts,
//!        "hostname", ..., avg("usage_user") AS "usage_user_avg", ...
//! FROM "public"."cpu" WHERE ts >= <start> AND ts < <end> GROUP BY 1, 2, ...
//! ```
//!
//! A bucket is computed once it ended `delay` ago; rows arriving later than
//! that are not in it. Each run is one `INSERT`, which storage writes as one
//! WAL record: after a crash the target holds a run entirely or not at all.
//! Progress is the target itself: at start a roll-up resumes after the
//! newest bucket in `target`, so no bucket is written twice or skipped. A
//! roll-up without output yet starts `backfill` before now.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{ArrowPrimitiveType, DataType, TimestampNanosecondType, UInt64Type};
use parking_lot::Mutex;
use tocsin_storage::schema::COLUMN_KIND_KEY;
use tocsin_storage::{Storage, TIME_COLUMN};

use crate::{QueryEngine, QueryError};

/// Aggregates a roll-up can keep per field.
pub const AGGREGATES: [&str; 5] = ["avg", "min", "max", "sum", "count"];

/// One roll-up, as configured (`[[rollup]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupConfig {
    pub name: String,
    pub source_db: String,
    pub source: String,
    pub target_db: String,
    pub target: String,
    pub bucket: Duration,
    pub delay: Duration,
    /// How far back a roll-up with an empty target starts.
    pub backfill: Duration,
    /// Fields to aggregate; empty means every numeric field.
    pub fields: Vec<String>,
    pub aggregates: Vec<String>,
    /// Most buckets computed by one run (one INSERT).
    pub max_buckets: u32,
}

/// Counters of all roll-ups, read by the server's `/metrics`.
#[derive(Debug, Default)]
pub struct RollupMetrics {
    /// Calls of [`Rollups::run_due`] completed, whether or not a bucket was due.
    pub checks: AtomicU64,
    pub runs: AtomicU64,
    pub rows: AtomicU64,
    pub failures: AtomicU64,
}

/// The configured roll-ups and where each one is.
pub struct Rollups {
    query: Arc<QueryEngine>,
    storage: Arc<Storage>,
    rollups: Vec<(RollupConfig, Mutex<Option<i64>>)>,
    pub metrics: RollupMetrics,
}

/// What one run of one roll-up did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRun {
    pub name: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub rows: u64,
}

use crate::quote_ident as ident;

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Rollups {
    pub fn new(query: Arc<QueryEngine>, storage: Arc<Storage>, rollups: Vec<RollupConfig>) -> Self {
        let rollups = rollups.into_iter().map(|r| (r, Mutex::new(None))).collect();
        Self { query, storage, rollups, metrics: RollupMetrics::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty()
    }

    /// Computes every bucket that has closed by `now_ns` (at most
    /// `max_buckets` per roll-up). A roll-up that fails is reported and
    /// retried at the next call; the others go on.
    pub async fn run_due(&self, now_ns: i64) -> Vec<RollupRun> {
        let mut runs = Vec::new();
        for (config, progress) in &self.rollups {
            match self.run_one(config, progress, now_ns).await {
                Ok(Some(run)) => {
                    self.metrics.runs.fetch_add(1, Ordering::Relaxed);
                    self.metrics.rows.fetch_add(run.rows, Ordering::Relaxed);
                    tracing::info!(
                        rollup = %run.name,
                        start_ns = run.start_ns,
                        end_ns = run.end_ns,
                        rows = run.rows,
                        "roll-up written"
                    );
                    runs.push(run);
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(rollup = %config.name, "roll-up failed (will retry): {e}");
                }
            }
        }
        self.metrics.checks.fetch_add(1, Ordering::Relaxed);
        runs
    }

    async fn run_one(
        &self,
        r: &RollupConfig,
        progress: &Mutex<Option<i64>>,
        now_ns: i64,
    ) -> Result<Option<RollupRun>, QueryError> {
        let bucket = nanos(r.bucket).max(1);
        // The end of the newest bucket that closed `delay` ago.
        let end_limit = now_ns.saturating_sub(nanos(r.delay)).div_euclid(bucket) * bucket;
        let Some(schema) = self.storage.table_schema(&r.source_db, &r.source) else {
            return Ok(None); // nothing written to the source yet
        };
        let saved = *progress.lock();
        let start = match saved {
            Some(p) => p,
            None => self.resume_point(r, end_limit, bucket).await?,
        };
        if start >= end_limit {
            *progress.lock() = Some(start);
            return Ok(None);
        }
        let end = end_limit.min(start.saturating_add(bucket.saturating_mul(i64::from(r.max_buckets.max(1)))));

        let mut tags = Vec::new();
        let mut values = Vec::new();
        for f in schema.fields() {
            let kind = f.metadata().get(COLUMN_KIND_KEY).map(String::as_str);
            match (kind, f.data_type()) {
                (Some("tag"), _) => tags.push(f.name().clone()),
                (Some("field"), DataType::Int64 | DataType::UInt64 | DataType::Float64)
                    if r.fields.is_empty() || r.fields.contains(f.name()) =>
                {
                    values.push(f.name().clone())
                }
                _ => {}
            }
        }
        if values.is_empty() {
            *progress.lock() = Some(end);
            return Ok(None);
        }
        let mut columns = vec![TIME_COLUMN.to_string()];
        let mut select = vec![format!(
            "date_bin(INTERVAL '{} seconds', {TIME_COLUMN}, TIMESTAMP '1970-01-01T00:00:00Z') AS {TIME_COLUMN}",
            r.bucket.as_secs()
        )];
        for t in &tags {
            columns.push(ident(t));
            select.push(ident(t));
        }
        for v in &values {
            for a in &r.aggregates {
                let out = ident(&format!("{v}_{a}"));
                columns.push(out.clone());
                select.push(format!("{a}({}) AS {out}", ident(v)));
            }
        }
        let group: Vec<String> = (1..=1 + tags.len()).map(|i| i.to_string()).collect();
        let sql = format!(
            "INSERT INTO {}.{} ({}) SELECT {} FROM {}.{} WHERE {TIME_COLUMN} >= to_timestamp_nanos({start}) \
             AND {TIME_COLUMN} < to_timestamp_nanos({end}) GROUP BY {}",
            ident(&r.target_db),
            ident(&r.target),
            columns.join(", "),
            select.join(", "),
            ident(&r.source_db),
            ident(&r.source),
            group.join(", "),
        );
        let result = self.query.execute(&sql, Some(&r.target_db)).await?;
        let rows = first_value::<UInt64Type>(&result).unwrap_or(0);
        *progress.lock() = Some(end);
        Ok(Some(RollupRun { name: r.name.clone(), start_ns: start, end_ns: end, rows }))
    }

    /// Where a roll-up starts after a (re)start: after the newest bucket in
    /// its target, or `backfill` before `end_limit` when the target has
    /// nothing yet.
    async fn resume_point(&self, r: &RollupConfig, end_limit: i64, bucket: i64) -> Result<i64, QueryError> {
        let fresh = (end_limit.saturating_sub(nanos(r.backfill))).div_euclid(bucket) * bucket;
        if self.storage.table_schema(&r.target_db, &r.target).is_none() {
            return Ok(fresh);
        }
        let sql = format!("SELECT max({TIME_COLUMN}) AS newest FROM {}.{}", ident(&r.target_db), ident(&r.target));
        let result = self.query.execute(&sql, Some(&r.target_db)).await?;
        let newest = first_value::<TimestampNanosecondType>(&result);
        Ok(newest.map_or(fresh, |n| n.saturating_add(bucket)))
    }
}

/// The first column of the first row of a one-value result (`max(ts)`, an
/// `INSERT`'s row count), if it has that type and is not NULL.
fn first_value<T: ArrowPrimitiveType>(result: &crate::QueryResult) -> Option<T::Native> {
    let b = result.batches.iter().find(|b| b.num_rows() > 0)?;
    let c = b.column(0).as_primitive_opt::<T>()?;
    c.is_valid(0).then(|| c.value(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, StorageConfig, TableWrite};

    const HOUR: i64 = 3_600_000_000_000;
    /// 2023-11-14T22:00:00Z, on an hour boundary.
    const T0: i64 = 1_699_999_200_000_000_000;

    async fn write_hours(storage: &Storage, hours: std::ops::Range<i64>) {
        let mut blocks = Vec::new();
        for (item, host) in ["a", "b"].into_iter().enumerate() {
            // Every 10 minutes: usage = minute of the hour, load = hour + 0.5.
            let ts: Vec<i64> =
                hours.clone().flat_map(|h| (0..6).map(move |m| T0 + h * HOUR + m * 600_000_000_000)).collect();
            let usage = ts.iter().map(|t| ((t - T0) % HOUR) / 60_000_000_000 + item as i64).collect();
            let load = ts.iter().map(|t| ((t - T0) / HOUR) as f64 + 0.5).collect();
            blocks.push(SeriesBlock {
                item: item as u32,
                tags: vec![("host".into(), host.into())],
                timestamps: ts,
                fields: vec![
                    FieldColumn { name: "usage".into(), values: FieldValues::I64(usage), validity: None },
                    FieldColumn { name: "load".into(), values: FieldValues::F64(load), validity: None },
                ],
            });
        }
        let out = storage.write("public", vec![TableWrite { table: "cpu".into(), blocks }]).await.expect("write");
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    }

    fn config() -> RollupConfig {
        RollupConfig {
            name: "cpu_1h".into(),
            source_db: "public".into(),
            source: "cpu".into(),
            target_db: "public".into(),
            target: "cpu_1h".into(),
            bucket: Duration::from_secs(3600),
            delay: Duration::from_secs(60),
            backfill: Duration::from_secs(86_400),
            fields: Vec::new(),
            aggregates: vec!["avg".into(), "max".into(), "count".into()],
            max_buckets: 24,
        }
    }

    async fn target_rows(query: &QueryEngine) -> Vec<String> {
        let r = query
            .execute(
                "SELECT CAST(ts AS VARCHAR) || ' ' || host || ' ' || CAST(usage_avg AS VARCHAR) || ' ' || \
                 CAST(usage_max AS VARCHAR) || ' ' || CAST(usage_count AS VARCHAR) || ' ' || CAST(load_avg AS VARCHAR) \
                 AS r FROM cpu_1h ORDER BY ts, host",
                None,
            )
            .await
            .expect("query");
        r.batches
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("text");
                let c = c.as_string::<i32>();
                (0..b.num_rows()).map(|i| c.value(i).to_string()).collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn closed_buckets_are_rolled_up_once_and_resumed_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
        let query = Arc::new(QueryEngine::new(Arc::clone(&storage)));
        write_hours(&storage, 0..3).await;

        let rollups = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![config()]);
        // 30 s after hour 3 ends the last bucket is still inside the delay.
        let runs = rollups.run_due(T0 + 3 * HOUR + 30_000_000_000).await;
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].end_ns, runs[0].rows), (T0 + 2 * HOUR, 4), "hours 0 and 1, two hosts");
        let rows = target_rows(&query).await;
        assert_eq!(
            rows,
            vec![
                "2023-11-14T22:00:00Z a 25.0 50 6 0.5",
                "2023-11-14T22:00:00Z b 26.0 51 6 0.5",
                "2023-11-14T23:00:00Z a 25.0 50 6 1.5",
                "2023-11-14T23:00:00Z b 26.0 51 6 1.5",
            ]
        );
        // Once the delay has passed, hour 2 follows; then nothing is due.
        let runs = rollups.run_due(T0 + 3 * HOUR + 120_000_000_000).await;
        assert_eq!(runs.iter().map(|r| (r.start_ns, r.rows)).collect::<Vec<_>>(), vec![(T0 + 2 * HOUR, 2)]);
        assert!(rollups.run_due(T0 + 3 * HOUR + 130_000_000_000).await.is_empty());
        assert_eq!(rollups.metrics.rows.load(Ordering::Relaxed), 6);

        // A new instance (a restart) resumes after the newest bucket in the
        // target: hour 3 only.
        write_hours(&storage, 3..4).await;
        let again = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![config()]);
        let runs = again.run_due(T0 + 4 * HOUR + 120_000_000_000).await;
        assert_eq!(
            runs.iter().map(|r| (r.start_ns, r.end_ns, r.rows)).collect::<Vec<_>>(),
            vec![(T0 + 3 * HOUR, T0 + 4 * HOUR, 2)]
        );
        assert_eq!(target_rows(&query).await.len(), 8, "no bucket written twice");
    }

    #[tokio::test]
    async fn a_failing_rollup_is_counted_and_the_others_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
        let query = Arc::new(QueryEngine::new(Arc::clone(&storage)));
        write_hours(&storage, 0..1).await;
        // A target database name storage refuses makes the INSERT fail.
        let bad = RollupConfig { name: "bad".into(), target_db: "no/such db".into(), ..config() };
        let rollups = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![bad, config()]);
        let runs = rollups.run_due(T0 + 2 * HOUR).await;
        assert_eq!(runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["cpu_1h"]);
        assert_eq!(rollups.metrics.failures.load(Ordering::Relaxed), 1);
    }
}
