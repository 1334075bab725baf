//! "The newest row of each series" without reading the table: an optimizer
//! rule recognises an aggregate that keeps, per group of tag columns, the
//! newest row (`DISTINCT ON (tags) ... ORDER BY tags, ts DESC`, which
//! DataFusion turns into `first_value(.. ORDER BY .., ts DESC)`), and feeds
//! it from storage's last-row cache instead of a full scan.
//!
//! Why this is exact: the newest row of a group of series is the newest row
//! of one of its series, and the cache holds every series' newest row. The
//! aggregate still runs on top, over those rows. Filters are allowed only
//! on tag columns (constant within a series); a time filter or anything else
//! keeps the full scan.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{cast, interleave_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{DefaultTableSource, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::logical_plan::{Aggregate, Filter, TableScanBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::{ExecutionPlan, collect};
use tocsin_storage::TIME_COLUMN;

use crate::table::TocsinTable;

#[derive(Debug, Default)]
pub(crate) struct LastRowRule;

impl OptimizerRule for LastRowRule {
    fn name(&self) -> &str {
        "tocsin_last_row_cache"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else { return Ok(Transformed::no(plan)) };
        // The scan, possibly under a filter (on tags only, checked below).
        let (filter, scan) = match agg.input.as_ref() {
            LogicalPlan::TableScan(scan) => (None, scan),
            LogicalPlan::Filter(f) => match f.input.as_ref() {
                LogicalPlan::TableScan(scan) => (Some(&f.predicate), scan),
                _ => return Ok(Transformed::no(plan)),
            },
            _ => return Ok(Transformed::no(plan)),
        };
        let Some(source) = (scan.source.as_ref() as &dyn Any).downcast_ref::<DefaultTableSource>() else {
            return Ok(Transformed::no(plan));
        };
        let Some(table) = (source.table_provider.as_ref() as &dyn Any).downcast_ref::<TocsinTable>() else {
            return Ok(Transformed::no(plan));
        };
        let tags: HashSet<&str> = table
            .schema
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Dictionary(..)))
            .map(|f| f.name().as_str())
            .collect();
        if scan.fetch.is_some()
            || !eligible(agg, &tags)
            || !scan.filters.iter().chain(filter).all(|f| only_tags(f, &tags))
        {
            return Ok(Transformed::no(plan));
        }
        let cached = Arc::new(LastRowsTable {
            full: TocsinTable {
                storage: Arc::clone(&table.storage),
                db: table.db.clone(),
                table: table.table.clone(),
                schema: Arc::clone(&table.schema),
                pinned: None,
            },
        });
        let new_scan = TableScanBuilder::new(scan.table_name.clone(), provider_as_source(cached))
            .with_projection(scan.projection.clone())
            .with_filters(scan.filters.clone())
            .with_fetch(scan.fetch)
            .build()?;
        let mut input = LogicalPlan::TableScan(new_scan);
        if let Some(predicate) = filter {
            input = LogicalPlan::Filter(Filter::try_new(predicate.clone(), Arc::new(input))?);
        }
        let new_agg = Aggregate::try_new(Arc::new(input), agg.group_expr.clone(), agg.aggr_expr.clone())?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(new_agg)))
    }
}

fn only_tags(e: &Expr, tags: &HashSet<&str>) -> bool {
    e.column_refs().iter().all(|c| tags.contains(c.name.as_str()))
}

fn is_col(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Column(Column { name: n, .. }) if n == name)
}

/// GROUP BY tag columns only; every aggregate picks the newest row's value
/// (`first_value` ordered by `ts DESC`, `last_value` by `ts ASC`, after any
/// group columns) or is `max(ts)`.
fn eligible(agg: &Aggregate, tags: &HashSet<&str>) -> bool {
    let mut group = HashSet::new();
    for g in &agg.group_expr {
        match g {
            Expr::Column(c) if tags.contains(c.name.as_str()) => {
                group.insert(c.name.as_str());
            }
            _ => return false,
        }
    }
    if group.is_empty() {
        return false;
    }
    agg.aggr_expr.iter().all(|e| {
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(f) = e else { return false };
        let p = &f.params;
        if p.distinct || p.filter.is_some() {
            return false;
        }
        let newest_first = match f.func.name() {
            "first_value" => false,
            "last_value" => true,
            "max" => return p.order_by.is_empty() && p.args.len() == 1 && is_col(&p.args[0], TIME_COLUMN),
            _ => return false,
        };
        let Some((last, before)) = p.order_by.split_last() else { return false };
        is_col(&last.expr, TIME_COLUMN)
            && last.asc == newest_first
            && before.iter().all(|s| matches!(&s.expr, Expr::Column(c) if group.contains(c.name.as_str())))
    })
}

/// The table as its newest row per series.
#[derive(Debug)]
pub(crate) struct LastRowsTable {
    /// The table itself; scanned once, to fold in the history the cache has
    /// not seen.
    full: TocsinTable,
}

#[async_trait]
impl TableProvider for LastRowsTable {
    fn schema(&self) -> SchemaRef {
        self.full.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        self.full.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let TocsinTable { storage, db, table, schema, .. } = &self.full;
        let ext = |e: tocsin_storage::StorageError| DataFusionError::External(Box::new(e));
        let rows = match storage.last_rows(db, table).map_err(ext)? {
            Some(rows) => rows,
            None => {
                let plan = self.full.scan(state, None, &[], None).await?;
                let batches = collect(plan, state.task_ctx()).await?;
                let newest = newest_per_series(&batches, schema)?;
                storage.complete_last_rows(db, table, &newest).map_err(ext)?;
                storage.last_rows(db, table).map_err(ext)?.unwrap_or(newest)
            }
        };
        let rows = tocsin_storage::batch::adapt_batch(&rows, schema)?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![rows]], Arc::clone(schema), projection.cloned())?)
    }
}

/// The newest row of each series (distinct tag values) in `batches`.
fn newest_per_series(batches: &[RecordBatch], schema: &SchemaRef) -> Result<RecordBatch> {
    let ts_idx = schema.index_of(TIME_COLUMN)?;
    let tag_idx: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.data_type(), DataType::Dictionary(..)))
        .map(|(i, _)| i)
        .collect();
    let hasher = ahash::RandomState::with_seeds(7, 11, 13, 17);
    // Per batch: the tag columns as strings, and the times.
    let mut decoded = Vec::with_capacity(batches.len());
    for b in batches {
        let tags = tag_idx.iter().map(|i| cast(b.column(*i), &DataType::Utf8)).collect::<Result<Vec<_>, _>>()?;
        let ts = cast(b.column(ts_idx), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        decoded.push((tags, ts));
    }
    let tag_of = |bi: usize, row: usize, k: usize| -> Option<&str> {
        let c = &decoded[bi].0[k];
        c.is_valid(row).then(|| c.as_string::<i32>().value(row))
    };
    // hash → candidates (batch, row, ts); collisions resolved by comparing tags.
    let mut best: HashMap<u64, Vec<(usize, usize, i64)>> = HashMap::new();
    for (bi, (tags, ts)) in decoded.iter().enumerate() {
        let ts = ts.as_primitive::<TimestampNanosecondType>();
        for row in 0..ts.len() {
            if ts.is_null(row) {
                continue;
            }
            let mut h = hasher.build_hasher();
            for k in 0..tags.len() {
                tag_of(bi, row, k).hash(&mut h);
            }
            let bucket = best.entry(h.finish()).or_default();
            let same = |&&mut (b2, r2, _): &&mut (usize, usize, i64)| {
                (0..tags.len()).all(|k| tag_of(b2, r2, k) == tag_of(bi, row, k))
            };
            match bucket.iter_mut().find(same) {
                Some(slot) if slot.2 >= ts.value(row) => {}
                Some(slot) => *slot = (bi, row, ts.value(row)),
                None => bucket.push((bi, row, ts.value(row))),
            }
        }
    }
    let indices: Vec<(usize, usize)> = best.values().flatten().map(|(b, r, _)| (*b, *r)).collect();
    if indices.is_empty() {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    let adapted =
        batches.iter().map(|b| tocsin_storage::batch::adapt_batch(b, schema)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&RecordBatch> = adapted.iter().collect();
    Ok(interleave_record_batch(&refs, &indices)?)
}

#[cfg(test)]
mod tests {
    use datafusion::common::tree_node::TreeNode;

    use super::*;
    use crate::QueryEngine;

    async fn engine() -> (tempfile::TempDir, QueryEngine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = tocsin_storage::Storage::open(tocsin_storage::StorageConfig::for_tests(dir.path().join("data")))
            .await
            .expect("open");
        (dir, QueryEngine::new(storage))
    }

    async fn rows(e: &QueryEngine, sql: &str) -> Vec<String> {
        let r = e.execute(sql, None).await.expect("query");
        let text = arrow::util::pretty::pretty_format_batches(&r.batches).expect("format").to_string();
        text.lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// Whether the optimized plan of `sql` reads the last-row cache.
    async fn uses_cache(e: &QueryEngine, sql: &str) -> bool {
        let state = e.state(None);
        let plan = state.create_logical_plan(sql).await.expect("plan");
        let plan = state.optimize(&plan).expect("optimize");
        let mut found = false;
        plan.apply(|p| {
            if let LogicalPlan::TableScan(s) = p
                && let Some(src) = (s.source.as_ref() as &dyn Any).downcast_ref::<DefaultTableSource>()
            {
                found |= (src.table_provider.as_ref() as &dyn Any).is::<LastRowsTable>();
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        found
    }

    const LASTPOINT: &str = "SELECT DISTINCT ON (host) host, ts, v FROM cpu ORDER BY host, ts DESC";

    #[tokio::test]
    async fn lastpoint_reads_the_cache_and_matches_a_full_scan() {
        let (_dir, e) = engine().await;
        e.execute(
            "INSERT INTO cpu (ts, host, dc, v) VALUES \
             ('2026-01-01T00:00:00Z', 'a', 'x', 1), ('2026-01-01T00:00:10Z', 'a', 'x', 2), \
             ('2026-01-01T00:00:05Z', 'b', 'x', 3), ('2026-01-01T00:00:07Z', 'b', 'y', 4)",
            None,
        )
        .await
        .expect("insert");
        e.storage.persist().await.expect("persist");
        e.execute("INSERT INTO cpu (ts, host, dc, v) VALUES ('2026-01-01T00:00:01Z', 'a', 'x', 9)", None)
            .await
            .expect("insert older");
        assert!(uses_cache(&e, LASTPOINT).await);
        let cached = rows(&e, LASTPOINT).await;
        // Same query with a time filter: the rule stays away, full scan.
        let full =
            "SELECT DISTINCT ON (host) host, ts, v FROM cpu WHERE ts > '2000-01-01T00:00:00Z' ORDER BY host, ts DESC";
        assert!(!uses_cache(&e, full).await);
        assert_eq!(cached, rows(&e, full).await);
        assert_eq!(cached, ["| a | 2026-01-01T00:00:10Z | 2 |", "| b | 2026-01-01T00:00:07Z | 4 |"]);
        // A newer write shows at once.
        e.execute("INSERT INTO cpu (ts, host, dc, v) VALUES ('2026-01-01T00:01:00Z', 'b', 'x', 5)", None)
            .await
            .expect("insert newer");
        assert_eq!(rows(&e, LASTPOINT).await, ["| a | 2026-01-01T00:00:10Z | 2 |", "| b | 2026-01-01T00:01:00Z | 5 |"]);
    }

    #[tokio::test]
    async fn only_newest_row_aggregates_use_the_cache() {
        let (_dir, e) = engine().await;
        e.execute("INSERT INTO cpu (ts, host, v) VALUES (now(), 'a', 1)", None).await.expect("insert");
        assert!(uses_cache(&e, "SELECT host, max(ts) FROM cpu GROUP BY host").await);
        assert!(uses_cache(&e, "SELECT host, last_value(v ORDER BY ts) FROM cpu WHERE host = 'a' GROUP BY host").await);
        assert!(!uses_cache(&e, "SELECT host, max(v) FROM cpu GROUP BY host").await);
        assert!(!uses_cache(&e, "SELECT host, first_value(v ORDER BY ts) FROM cpu GROUP BY host").await);
        assert!(!uses_cache(&e, "SELECT v, max(ts) FROM cpu GROUP BY v").await);
    }
}
