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
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::kernels::rank::rank;
use arrow::compute::{SortOptions, cast, interleave_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Int32Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{DefaultTableSource, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::NullTreatment;
use datafusion::logical_expr::logical_plan::{Aggregate, Projection, SubqueryAlias, TableScanBuilder};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::filter::batch_filter;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::StreamExt;
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
        // The scan, possibly under a filter (on tags only, checked below)
        // and a projection of its columns (the new scan has them all).
        // An alias (`FROM cpu AS c`) is kept over the new scan.
        let mut input = agg.input.as_ref();
        let mut alias = None;
        if let LogicalPlan::SubqueryAlias(a) = input {
            alias = Some(a.alias.clone());
            input = a.input.as_ref();
        }
        if let LogicalPlan::Projection(p) = input
            && p.expr.iter().all(|e| matches!(e, Expr::Column(_)))
        {
            input = p.input.as_ref();
        }
        let (filter, scan) = match input {
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
        let predicate = conjunction(scan.filters.iter().chain(filter).cloned()).map(unqualified).transpose()?;
        let group: Vec<String> = agg
            .group_expr
            .iter()
            .filter_map(|g| match g {
                Expr::Column(c) => Some(c.name.clone()),
                _ => None,
            })
            .collect();
        let cached = Arc::new(LastRowsTable {
            full: TocsinTable {
                storage: Arc::clone(&table.storage),
                db: table.db.clone(),
                table: table.table.clone(),
                schema: Arc::clone(&table.schema),
                pinned: None,
            },
            predicate,
            group,
        });
        let mut input =
            LogicalPlan::TableScan(TableScanBuilder::new(scan.table_name.clone(), provider_as_source(cached)).build()?);
        if let Some(alias) = alias {
            input = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), alias)?);
        }
        // One row per group now: each aggregate is that row's value.
        let mut exprs: Vec<Expr> = agg.group_expr.clone();
        for (e, field) in agg.aggr_expr.iter().zip(agg.schema.fields().iter().skip(agg.group_expr.len())) {
            let e = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            let Expr::AggregateFunction(f) = e else { return Ok(Transformed::no(plan)) };
            let Some(arg) = f.params.args.first() else { return Ok(Transformed::no(plan)) };
            exprs.push(arg.clone().alias(field.name()));
        }
        let projection = Projection::try_new(exprs, Arc::new(input))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

/// `e` with its columns unqualified, to be evaluated against the table's
/// own schema.
fn unqualified(e: Expr) -> Result<Expr> {
    e.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
        e => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
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
        if p.distinct || p.filter.is_some() || p.null_treatment == Some(NullTreatment::IgnoreNulls) {
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

/// The table as its newest row per group: the last-row cache (one row per
/// series), filtered by a predicate on tags, then reduced to the newest
/// row of each distinct value of the group columns.
#[derive(Debug)]
pub(crate) struct LastRowsTable {
    /// The table itself; scanned once, to fold in the history the cache has
    /// not seen.
    full: TocsinTable,
    /// Applied to the cached rows before grouping (unqualified columns).
    predicate: Option<Expr>,
    /// The group columns.
    group: Vec<String>,
}

#[async_trait]
impl TableProvider for LastRowsTable {
    fn schema(&self) -> SchemaRef {
        self.full.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters from above stay above: rows are already one per group here.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
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
                let epoch = storage.last_rows_epoch();
                let newest = self.newest_in_history(state).await?;
                storage.complete_last_rows(db, table, &newest, epoch).map_err(ext)?;
                storage.last_rows(db, table).map_err(ext)?.unwrap_or(newest)
            }
        };
        let mut rows = tocsin_storage::batch::adapt_batch(&rows, schema)?;
        if let Some(predicate) = &self.predicate {
            let df_schema = DFSchema::try_from(Arc::clone(schema))?;
            rows = batch_filter(&rows, &state.create_physical_expr(predicate.clone(), &df_schema)?)?;
        }
        let key = self.group.iter().map(|g| schema.index_of(g)).collect::<Result<Vec<_>, _>>()?;
        let rows = sorted_by(&newest_per_key(&[rows], schema, &key)?, &key)?;
        // Declared sorted by the group columns, so that `DISTINCT ON (g)
        // ... ORDER BY g` needs no sort above (DataFusion's sort of a
        // million rows of dictionary tags took seconds).
        let ordering = key.iter().zip(&self.group).map(|(i, name)| {
            PhysicalSortExpr::new(Arc::new(PhysicalColumn::new(name, *i)), SortOptions::new(false, false))
        });
        let source = MemorySourceConfig::try_new(&[vec![rows]], Arc::clone(schema), projection.cloned())?
            .try_with_sort_information(LexOrdering::new(ordering).into_iter().collect())?;
        Ok(DataSourceExec::from_data_source(source))
    }
}

/// `rows` sorted by the tag columns `key` in order, ascending, nulls last
/// (SQL's default `ORDER BY`). Each column's dictionary values are ranked
/// once, so rows compare as integers.
fn sorted_by(rows: &RecordBatch, key: &[usize]) -> Result<RecordBatch> {
    let mut ranks: Vec<Vec<u32>> = Vec::with_capacity(key.len());
    for &k in key {
        let col = rows.column(k);
        let Some(dict) = col.as_dictionary_opt::<Int32Type>() else {
            return Err(DataFusionError::Internal(format!("tag column {k} is not a dictionary")));
        };
        // Equal strings (a merged dictionary may repeat one) share a rank.
        let rank_of = rank(dict.values().as_ref(), None)?;
        let keys = dict.keys();
        ranks.push(
            (0..rows.num_rows())
                .map(|r| if keys.is_valid(r) { rank_of[keys.value(r) as usize] } else { u32::MAX })
                .collect(),
        );
    }
    let mut indices: Vec<u32> = (0..rows.num_rows() as u32).collect();
    indices.sort_unstable_by(|a, b| {
        ranks.iter().map(|r| r[*a as usize].cmp(&r[*b as usize])).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    });
    Ok(take_record_batch(rows, &UInt32Array::from(indices))?)
}

impl LastRowsTable {
    /// The newest row of each series in the whole table, from a scan
    /// reduced as it streams: what is held is the newest rows so far plus
    /// the reduced batches since the last reduction, bounded by the number
    /// of series rather than the table's size.
    async fn newest_in_history(&self, state: &dyn Session) -> Result<RecordBatch> {
        let schema = &self.full.schema;
        let tags = tag_columns(schema);
        let plan = self.full.scan(state, None, &[], None).await?;
        let mut stream = execute_stream(plan, state.task_ctx())?;
        // `held[0]` is the newest so far, then newer batches, in scan
        // order (of equal times, the first seen wins).
        let mut held: Vec<RecordBatch> = Vec::new();
        let (mut reduced_rows, mut held_rows) = (0, 0);
        while let Some(batch) = stream.next().await.transpose()? {
            let batch = newest_per_key(&[batch], schema, &tags)?;
            held_rows += batch.num_rows();
            held.push(batch);
            if held_rows > 2 * reduced_rows + HISTORY_SLACK_ROWS {
                let reduced = newest_per_key(&held, schema, &tags)?;
                (reduced_rows, held_rows) = (reduced.num_rows(), reduced.num_rows());
                held = vec![reduced];
            }
        }
        newest_per_key(&held, schema, &tags)
    }
}

/// Rows beyond twice the series found so far that the history scan holds
/// before reducing them (a few in tests, so that they reduce too).
const HISTORY_SLACK_ROWS: usize = if cfg!(test) { 2 } else { 65_536 };

/// Indices of the tag (dictionary) columns of `schema`.
fn tag_columns(schema: &SchemaRef) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.data_type(), DataType::Dictionary(..)))
        .map(|(i, _)| i)
        .collect()
}

/// The newest row of each distinct value of the `key` columns (strings:
/// tags) in `batches`; all tag columns name a series.
fn newest_per_key(batches: &[RecordBatch], schema: &SchemaRef, key: &[usize]) -> Result<RecordBatch> {
    let ts_idx = schema.index_of(TIME_COLUMN)?;
    let tag_idx = key;
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

    /// Each statement read from the cache gives the answer of the same
    /// statement with a time filter that holds every row (a full scan).
    #[tokio::test]
    async fn grouped_tag_filtered_and_aliased_reads_of_the_cache_match_a_full_scan() {
        let (_dir, e) = engine().await;
        e.execute(
            "INSERT INTO cpu (ts, host, dc, rack, v) VALUES \
             ('2026-01-01T00:00:00Z', 'a', 'x', 'r1', 1), ('2026-01-01T00:00:10Z', 'a', 'x', 'r2', 2), \
             ('2026-01-01T00:00:05Z', 'b', 'x', 'r1', 3), ('2026-01-01T00:00:07Z', 'b', 'y', 'r1', 4), \
             ('2026-01-01T00:00:09Z', 'c', 'y', 'r2', 5), ('2026-01-01T00:00:03Z', 'c', 'y', 'r1', 6)",
            None,
        )
        .await
        .expect("insert");
        e.storage.persist().await.expect("persist");
        e.execute("INSERT INTO cpu (ts, host, dc, rack, v) VALUES ('2026-01-01T00:00:20Z', 'c', 'x', 'r1', 7)", None)
            .await
            .expect("insert");
        let cases = [
            ("SELECT DISTINCT ON (host) host, ts, v FROM cpu WHERE dc = 'y' ORDER BY host, ts DESC", 2),
            ("SELECT DISTINCT ON (dc) dc, host, ts, v FROM cpu ORDER BY dc, ts DESC", 2),
            ("SELECT DISTINCT ON (dc, host) dc, host, v FROM cpu ORDER BY dc DESC, host, ts DESC", 5),
            ("SELECT DISTINCT ON (host, dc) host, dc, v FROM cpu ORDER BY host, dc, ts DESC", 5),
            ("SELECT DISTINCT ON (dc, rack) dc, rack, ts, v FROM cpu WHERE host <> 'a' ORDER BY dc, rack, ts DESC", 3),
            ("SELECT c.host, max(c.ts) AS m FROM cpu AS c WHERE c.rack = 'r1' GROUP BY c.host ORDER BY c.host", 3),
            ("SELECT host, last_value(v ORDER BY ts) * 10 AS v10 FROM cpu GROUP BY host ORDER BY host", 3),
            (
                "SELECT host, max(ts) AS m FROM cpu GROUP BY host \
                 HAVING last_value(v ORDER BY ts) > 2 ORDER BY host",
                2,
            ),
        ];
        for (sql, n) in cases {
            let state = e.state(None);
            let plan = state.optimize(&state.create_logical_plan(sql).await.expect("plan")).expect("opt");
            assert!(uses_cache(&e, sql).await, "{sql} should read the cache: {}", plan.display_indent());
            let cached = rows(&e, sql).await;
            assert_eq!(cached.len(), n, "{sql}: {cached:?}");
            let all = " WHERE ts > '2000-01-01T00:00:00Z'";
            let full = if sql.contains(" WHERE ") {
                sql.replacen(" WHERE ", &format!("{all} AND "), 1)
            } else if sql.contains(" GROUP BY") {
                sql.replacen(" GROUP BY", &format!("{all} GROUP BY"), 1)
            } else {
                sql.replacen(" ORDER BY", &format!("{all} ORDER BY"), 1)
            };
            assert!(!uses_cache(&e, &full).await, "{full} should scan");
            assert_eq!(cached, rows(&e, &full).await, "{sql}");
        }
    }

    /// The cache's rows come sorted by the group columns: `DISTINCT ON (g)
    /// ... ORDER BY g` plans no sort of them.
    #[tokio::test]
    async fn lastpoint_plans_no_sort() {
        let (_dir, e) = engine().await;
        e.execute("INSERT INTO cpu (ts, host, dc, v) VALUES (now(), 'b', 'x', 1), (now(), 'a', 'y', 2)", None)
            .await
            .expect("insert");
        let sql = "SELECT DISTINCT ON (host, dc) host, dc, v FROM cpu ORDER BY host, dc, ts DESC";
        let state = e.state(None);
        let plan =
            state.create_physical_plan(&state.create_logical_plan(sql).await.expect("plan")).await.expect("plan");
        let text = datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string();
        assert!(!text.contains("SortExec"), "{text}");
        assert_eq!(rows(&e, sql).await.iter().map(|r| &r[..5]).collect::<Vec<_>>(), ["| a |", "| b |"]);
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
