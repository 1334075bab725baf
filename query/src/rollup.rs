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
//! roll-up without output yet starts `backfill` before now, or at the
//! source's oldest row if that is later; buckets without source rows are
//! passed over in one step.
//!
//! Late rows: a write into `source` with rows older than the buckets
//! computed so far ([`Rollups::late_rows`] sees every acknowledged write)
//! marks their buckets stale, if they ended within `late` of the newest
//! computed one; the next run deletes those buckets from `target` (one
//! `DELETE`, a tombstone) and computes them again from the raw rows. A
//! crash between the two is mended at start: a roll-up that resumes
//! recomputes the buckets of its last `late` once.

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
    /// Late rows in a bucket that ended within this of the newest computed
    /// one make it be computed again; zero: never.
    pub late: Duration,
}

/// Counters of all roll-ups, read by the server's `/metrics`.
#[derive(Debug, Default)]
pub struct RollupMetrics {
    /// Calls of [`Rollups::run_due`] completed, whether or not a bucket was due.
    pub checks: AtomicU64,
    pub runs: AtomicU64,
    pub rows: AtomicU64,
    pub failures: AtomicU64,
    /// Buckets computed again because late rows landed in them.
    pub recomputed: AtomicU64,
}

/// One roll-up and where it is.
struct Rollup {
    config: RollupConfig,
    /// Where the next run starts: the end of the buckets computed.
    progress: Mutex<Option<i64>>,
    /// Buckets already computed that late rows landed in: `[start, end)`.
    stale: Mutex<Option<(i64, i64)>>,
    /// When stale buckets were last computed again.
    recomputed_at: Mutex<Option<std::time::Instant>>,
}

/// Stale buckets of one roll-up are computed again at most this often: each
/// time is a `DELETE`, which persists the write buffer.
const RECOMPUTE_EVERY: Duration = Duration::from_secs(60);

impl Rollup {
    fn bucket(&self) -> i64 {
        nanos(self.config.bucket).max(1)
    }

    /// Marks `[lo, hi)` stale again (a recompute that failed, or did not
    /// finish before a crash).
    fn restale(&self, lo: i64, hi: i64) {
        let mut stale = self.stale.lock();
        *stale = Some(match *stale {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }

    /// Marks the buckets of `[lo_ts, hi_ts]` stale, those computed already
    /// and within `late` of the newest.
    fn mark_stale(&self, lo_ts: i64, hi_ts: i64) {
        let Some(frontier) = *self.progress.lock() else { return };
        let bucket = self.bucket();
        let oldest = frontier.saturating_sub(nanos(self.config.late)).div_euclid(bucket) * bucket;
        let lo = (lo_ts.div_euclid(bucket) * bucket).max(oldest);
        let hi = (hi_ts.div_euclid(bucket).saturating_add(1).saturating_mul(bucket)).min(frontier);
        if lo < hi {
            self.restale(lo, hi);
        }
    }
}

/// The configured roll-ups and where each one is.
pub struct Rollups {
    query: Arc<QueryEngine>,
    storage: Arc<Storage>,
    rollups: Arc<Vec<Rollup>>,
    pending: Pending,
    pub metrics: RollupMetrics,
}

/// `rollups/recompute.json` in the data directory: the bucket ranges whose
/// recompute has begun (their `DELETE` may have run) and not finished, by
/// roll-up; a start recomputes them.
struct Pending {
    path: std::path::PathBuf,
    ranges: Mutex<std::collections::BTreeMap<String, (i64, i64)>>,
}

impl Pending {
    fn open(data_dir: &std::path::Path) -> Pending {
        let path = data_dir.join("rollups").join("recompute.json");
        let ranges = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), "unreadable, ignored (its recomputes are not resumed): {e}");
                Default::default()
            }),
            Err(_) => Default::default(),
        };
        Pending { path, ranges: Mutex::new(ranges) }
    }

    fn get(&self, name: &str) -> Option<(i64, i64)> {
        self.ranges.lock().get(name).copied()
    }

    fn set(&self, name: &str, range: Option<(i64, i64)>) -> Result<(), QueryError> {
        let mut ranges = self.ranges.lock();
        match range {
            Some(r) => ranges.insert(name.to_string(), r),
            None => ranges.remove(name),
        };
        let io = |source: std::io::Error| {
            QueryError::Storage(tocsin_storage::StorageError::Io { path: self.path.clone(), source })
        };
        let text = serde_json::to_vec(&*ranges).map_err(|e| io(std::io::Error::other(e)))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        tocsin_storage::durable::write_atomic(&self.path, io, |f| {
            use std::io::Write;
            f.write_all(&text).map_err(io)
        })
    }
}

/// Sees every acknowledged write: rows older than a roll-up's computed
/// buckets mark them stale.
struct LateRows(Arc<Vec<Rollup>>);

impl tocsin_storage::WriteObserver for LateRows {
    fn written(&self, db: &str, writes: &[tocsin_storage::TableWrite]) {
        for r in self.0.iter() {
            if r.config.late.is_zero() || r.config.source_db != db {
                continue;
            }
            let Some(frontier) = *r.progress.lock() else { continue };
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            for w in writes.iter().filter(|w| w.table == r.config.source) {
                for t in w.blocks.iter().flat_map(|b| b.timestamps.iter()).filter(|t| **t < frontier) {
                    lo = lo.min(*t);
                    hi = hi.max(*t);
                }
            }
            if lo <= hi {
                r.mark_stale(lo, hi);
            }
        }
    }
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
        let rollups = rollups
            .into_iter()
            .map(|config| Rollup {
                config,
                progress: Mutex::new(None),
                stale: Mutex::new(None),
                recomputed_at: Mutex::new(None),
            })
            .collect();
        let pending = Pending::open(storage.data_dir());
        Self { query, storage, rollups: Arc::new(rollups), pending, metrics: RollupMetrics::default() }
    }

    /// The observer to register with storage
    /// ([`Storage::add_write_observer`]): late rows into a source mark
    /// their computed buckets stale.
    pub fn late_rows(&self) -> Arc<dyn tocsin_storage::WriteObserver> {
        Arc::new(LateRows(Arc::clone(&self.rollups)))
    }

    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty()
    }

    /// Computes every bucket that has closed by `now_ns` (at most
    /// `max_buckets` per roll-up). A roll-up that fails is reported and
    /// retried at the next call; the others go on.
    pub async fn run_due(&self, now_ns: i64) -> Vec<RollupRun> {
        let mut runs = Vec::new();
        for rollup in self.rollups.iter() {
            let config = &rollup.config;
            let due = rollup.recomputed_at.lock().is_none_or(|at| at.elapsed() >= RECOMPUTE_EVERY);
            if due && let Err(e) = self.recompute_stale(rollup, now_ns).await {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(rollup = %config.name, "recomputing buckets late rows changed failed (will retry): {e}");
            }
            match self.run_one(rollup, now_ns).await {
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

    async fn run_one(&self, rollup: &Rollup, now_ns: i64) -> Result<Option<RollupRun>, QueryError> {
        let (r, progress) = (&rollup.config, &rollup.progress);
        let bucket = rollup.bucket();
        // The end of the newest bucket that closed `delay` ago.
        let end_limit = now_ns.saturating_sub(nanos(r.delay)).div_euclid(bucket) * bucket;
        if self.storage.table_schema(&r.source_db, &r.source).is_none() {
            return Ok(None); // nothing written to the source yet
        }
        let saved = *progress.lock();
        let start = match saved {
            Some(p) => p,
            None => {
                let (resume, had_rows) = self.resume_point(r, end_limit, bucket).await?;
                *progress.lock() = Some(resume);
                // A crash may have come between a recompute's DELETE and
                // its INSERT, or before late rows' buckets were recomputed:
                // the last `late` is computed again once.
                if let Some((lo, hi)) = self.pending.get(&r.name) {
                    rollup.restale(lo, hi);
                }
                if had_rows && !r.late.is_zero() {
                    rollup.mark_stale(resume.saturating_sub(nanos(r.late)), resume.saturating_sub(1));
                }
                if rollup.stale.lock().is_some() {
                    self.recompute_stale(rollup, now_ns).await?;
                    // Not counted against the rate of late rows' recomputes.
                    *rollup.recomputed_at.lock() = None;
                }
                resume
            }
        };
        // Buckets without source rows are passed over at once, not
        // `max_buckets` per run: a backfill that reaches far before the
        // oldest row, or a gap of months in the data, takes one run.
        // Never past the due buckets: a row stamped in the future (a host
        // whose clock runs ahead) must not carry progress past buckets
        // whose rows have yet to arrive.
        let start = match self.first_bucket_with_rows(r, start, bucket) {
            Some(first) => first.max(start).min(end_limit.max(start)),
            None => start.max(end_limit),
        };
        if start >= end_limit {
            *progress.lock() = Some(start);
            return Ok(None);
        }
        let end = end_limit.min(start.saturating_add(bucket.saturating_mul(i64::from(r.max_buckets.max(1)))));
        // Moved on before the SELECT reads: a late row written while it
        // runs is then older than the progress, and marks its bucket.
        *progress.lock() = Some(end);
        let Some(sql) = self.insert_sql(r, start, end) else { return Ok(None) };
        let result = match self.query.execute(&sql, Some(&r.target_db)).await {
            Ok(result) => result,
            Err(e) => {
                *progress.lock() = Some(start);
                return Err(e);
            }
        };
        let rows = first_value::<UInt64Type>(&result).unwrap_or(0);
        Ok(Some(RollupRun { name: r.name.clone(), start_ns: start, end_ns: end, rows }))
    }

    /// Deletes the stale buckets from the target and computes them again.
    /// On failure they stay marked, for the next run. Only buckets whose raw
    /// rows are all within the source's retention at `now_ns` are: one
    /// computed again from partly expired rows would lose them.
    async fn recompute_stale(&self, rollup: &Rollup, now_ns: i64) -> Result<(), QueryError> {
        let Some((lo, hi)) = rollup.stale.lock().take() else { return Ok(()) };
        *rollup.recomputed_at.lock() = Some(std::time::Instant::now());
        let r = &rollup.config;
        let bucket = rollup.bucket();
        let lo = match self.storage.config().retention.of(&r.source_db, &r.source) {
            Some(kept) => {
                let cutoff = now_ns.saturating_sub(nanos(kept));
                lo.max(cutoff.div_euclid(bucket).saturating_add(1).saturating_mul(bucket))
            }
            None => lo,
        };
        if lo >= hi {
            tracing::warn!(rollup = %r.name, "late rows landed in buckets whose raw rows have expired: left as computed");
            return Ok(());
        }
        // Recorded before the DELETE: a crash before the INSERT is mended at
        // the next start.
        self.pending.set(&r.name, Some((lo, hi)))?;
        let result = async {
            if self.storage.table_schema(&r.target_db, &r.target).is_some() {
                let delete = format!(
                    "DELETE FROM {}.{} WHERE {TIME_COLUMN} >= to_timestamp_nanos({lo}) AND {TIME_COLUMN} < \
                     to_timestamp_nanos({hi})",
                    ident(&r.target_db),
                    ident(&r.target)
                );
                self.query.execute(&delete, Some(&r.target_db)).await?;
            }
            let mut rows = 0;
            let step = bucket.saturating_mul(i64::from(r.max_buckets.max(1)));
            let mut start = lo;
            while start < hi {
                let end = hi.min(start.saturating_add(step));
                if let Some(sql) = self.insert_sql(r, start, end) {
                    let result = self.query.execute(&sql, Some(&r.target_db)).await?;
                    rows += first_value::<UInt64Type>(&result).unwrap_or(0);
                }
                start = end;
            }
            Ok::<u64, QueryError>(rows)
        }
        .await;
        match result {
            Ok(rows) => {
                self.pending.set(&r.name, None)?;
                let buckets = u64::try_from((hi - lo) / rollup.bucket()).unwrap_or(0);
                self.metrics.recomputed.fetch_add(buckets, Ordering::Relaxed);
                tracing::info!(rollup = %r.name, start_ns = lo, end_ns = hi, buckets, rows, "roll-up buckets recomputed");
                Ok(())
            }
            Err(e) => {
                rollup.restale(lo, hi);
                Err(e)
            }
        }
    }

    /// The `INSERT ... SELECT` of the buckets of `[start, end)`; `None` when
    /// the source has no numeric field to aggregate.
    fn insert_sql(&self, r: &RollupConfig, start: i64, end: i64) -> Option<String> {
        let schema = self.storage.table_schema(&r.source_db, &r.source)?;
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
            return None;
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
        Some(format!(
            "INSERT INTO {}.{} ({}) SELECT {} FROM {}.{} WHERE {TIME_COLUMN} >= to_timestamp_nanos({start}) \
             AND {TIME_COLUMN} < to_timestamp_nanos({end}) GROUP BY {}",
            ident(&r.target_db),
            ident(&r.target),
            columns.join(", "),
            select.join(", "),
            ident(&r.source_db),
            ident(&r.source),
            group.join(", "),
        ))
    }

    /// Where a roll-up starts after a (re)start: after the newest bucket in
    /// its target, or `backfill` before `end_limit` when the target has
    /// nothing yet; and whether the target has rows.
    /// The start of the bucket of the source's oldest row at or after
    /// `from`, by the time ranges of its segments and buffered chunks: a
    /// lower bound, never past a row. `None` when it holds none from there.
    fn first_bucket_with_rows(&self, r: &RollupConfig, from: i64, bucket: i64) -> Option<i64> {
        let snap = self.storage.snapshot(&r.source_db, &r.source)?;
        let oldest = snap
            .segments
            .iter()
            .map(|s| (s.min_ts, s.max_ts))
            .chain(snap.chunks.iter().map(|c| (c.min_ts, c.max_ts)))
            .filter(|&(_, max)| max >= from)
            .map(|(min, _)| min.max(from))
            .min()?;
        Some((oldest.div_euclid(bucket) * bucket).max(from))
    }

    async fn resume_point(&self, r: &RollupConfig, end_limit: i64, bucket: i64) -> Result<(i64, bool), QueryError> {
        let fresh = (end_limit.saturating_sub(nanos(r.backfill))).div_euclid(bucket) * bucket;
        if self.storage.table_schema(&r.target_db, &r.target).is_none() {
            return Ok((fresh, false));
        }
        let sql = format!("SELECT max({TIME_COLUMN}) AS newest FROM {}.{}", ident(&r.target_db), ident(&r.target));
        let result = self.query.execute(&sql, Some(&r.target_db)).await?;
        let newest = first_value::<TimestampNanosecondType>(&result);
        Ok(newest.map_or((fresh, false), |n| (n.saturating_add(bucket), true)))
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
            late: Duration::ZERO,
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

    /// A backfill that reaches a year before the oldest row, and a gap of
    /// six weeks in the data, each cost no run of their own: two runs of
    /// `max_buckets` (24 h) compute every bucket with rows.
    #[tokio::test]
    async fn buckets_without_source_rows_are_passed_over_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
        let query = Arc::new(QueryEngine::new(Arc::clone(&storage)));
        write_hours(&storage, 0..3).await;
        write_hours(&storage, 1000..1002).await;
        let mut cfg = config();
        cfg.backfill = Duration::from_secs(400 * 86_400);
        let rollups = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![cfg]);
        let now = T0 + 1002 * HOUR + 120_000_000_000;
        let runs: Vec<(i64, i64, u64)> = [rollups.run_due(now).await, rollups.run_due(now).await]
            .into_iter()
            .flatten()
            .map(|r| ((r.start_ns - T0) / HOUR, (r.end_ns - T0) / HOUR, r.rows))
            .collect();
        assert_eq!(runs, vec![(0, 24, 6), (1000, 1002, 4)]);
        assert!(rollups.run_due(now).await.is_empty());
        assert_eq!(target_rows(&query).await.len(), 10);
    }

    /// A row stamped hours ahead (a host whose clock runs fast), alone in
    /// its chunk, does not carry progress past the due buckets: hour 5's
    /// rows, arriving on time after a run that found none for hours 3 and
    /// 4, are rolled up.
    #[tokio::test]
    async fn a_row_from_the_future_does_not_carry_progress_past_the_due_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
        let query = Arc::new(QueryEngine::new(Arc::clone(&storage)));
        write_hours(&storage, 0..3).await;
        write_one(&storage, T0 + 10 * HOUR, 7).await;
        let rollups = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![config()]);
        let hours = |runs: Vec<RollupRun>| -> Vec<(i64, i64, u64)> {
            runs.into_iter().map(|r| ((r.start_ns - T0) / HOUR, (r.end_ns - T0) / HOUR, r.rows)).collect()
        };
        let minutes = |m: i64| m * 60_000_000_000;
        assert_eq!(hours(rollups.run_due(T0 + 3 * HOUR + minutes(2)).await), vec![(0, 3, 6)]);
        assert!(rollups.run_due(T0 + 5 * HOUR + minutes(2)).await.is_empty(), "no rows in hours 3 and 4");
        write_hours(&storage, 5..6).await;
        assert_eq!(hours(rollups.run_due(T0 + 6 * HOUR + minutes(2)).await), vec![(5, 6, 2)]);
    }

    /// Writes one row of host "a" at `ts` with usage `usage`.
    async fn write_one(storage: &Storage, ts: i64, usage: i64) {
        let block = SeriesBlock {
            item: 0,
            tags: vec![("host".into(), "a".into())],
            timestamps: vec![ts],
            fields: vec![
                FieldColumn { name: "usage".into(), values: FieldValues::I64(vec![usage]), validity: None },
                FieldColumn { name: "load".into(), values: FieldValues::F64(vec![0.0]), validity: None },
            ],
        };
        storage.write("public", vec![TableWrite { table: "cpu".into(), blocks: vec![block] }]).await.expect("write");
    }

    /// A late row lands in a computed bucket: the next run computes that
    /// bucket again (replacing its rows, not adding to them); one older
    /// than `late` is left out; a restart recomputes the last `late` once.
    #[tokio::test]
    async fn buckets_late_rows_land_in_are_computed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(StorageConfig::for_tests(dir.path())).await.expect("open");
        let query = Arc::new(QueryEngine::new(Arc::clone(&storage)));
        write_hours(&storage, 0..3).await;
        let late = RollupConfig { late: Duration::from_secs(90 * 60), ..config() };
        let rollups = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![late.clone()]);
        storage.add_write_observer(rollups.late_rows());
        let now = T0 + 3 * HOUR + 120_000_000_000;
        assert_eq!(rollups.run_due(now).await[0].rows, 6);
        let before = target_rows(&query).await;
        assert_eq!(before[2], "2023-11-14T23:00:00Z a 25.0 50 6 1.5");

        // Hour 1 gets a late row (within 90 minutes of the newest bucket's
        // end); hour 0 one too (older than that).
        write_one(&storage, T0 + HOUR + 30 * 60_000_000_000 + 1, 1000).await;
        write_one(&storage, T0 + 5, 2000).await;
        assert!(rollups.run_due(now).await.is_empty(), "no new bucket is due");
        let after = target_rows(&query).await;
        assert_eq!(after.len(), 6, "the bucket replaced, not added to: {after:?}");
        assert_eq!(after[0], before[0], "hour 0 is older than `late`: left as computed");
        assert_eq!(after[2], "2023-11-14T23:00:00Z a 164.28571428571428 1000 7 1.2857142857142858");
        assert_eq!(after[3], before[3], "host b's row of hour 1 is computed alike");
        assert_eq!(rollups.metrics.recomputed.load(Ordering::Relaxed), 1);

        // Persisted, then restarted: the last 90 minutes (hours 1 and 2) are
        // computed again once, with the same answer.
        storage.persist().await.expect("persist");
        let again = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![late]);
        assert!(again.run_due(now).await.is_empty());
        assert_eq!(again.metrics.recomputed.load(Ordering::Relaxed), 2);
        assert_eq!(target_rows(&query).await, after);

        // A crash after a recompute's DELETE, before its INSERT: the range
        // recorded in rollups/recompute.json is computed at the next start
        // (here with `late` off, so nothing else would).
        query
            .execute(
                &format!(
                    "DELETE FROM cpu_1h WHERE ts >= to_timestamp_nanos({}) AND ts < to_timestamp_nanos({})",
                    T0 + HOUR,
                    T0 + 2 * HOUR
                ),
                None,
            )
            .await
            .expect("delete");
        assert_eq!(target_rows(&query).await.len(), 4);
        let pending = dir.path().join("rollups").join("recompute.json");
        std::fs::write(&pending, format!("{{\"cpu_1h\": [{}, {}]}}", T0 + HOUR, T0 + 2 * HOUR)).expect("write");
        let resumed = Rollups::new(Arc::clone(&query), Arc::clone(&storage), vec![config()]);
        assert!(resumed.run_due(now).await.is_empty());
        assert_eq!(target_rows(&query).await, after);
        assert_eq!(std::fs::read_to_string(&pending).expect("read"), "{}", "done: nothing pending");
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
