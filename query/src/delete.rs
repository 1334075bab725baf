//! `DELETE FROM t [WHERE ...]`: the statement's predicate turned into a
//! [`Deletion`] that storage records as a tombstone
//! (`tocsin_storage::tombstone`), and the operator that makes it.
//!
//! The predicate is read by Tocsin, not taken from what DataFusion's
//! optimizer leaves of it: a `WHERE` that folds to `false` becomes an empty
//! plan there, whose filters are none, the same as no `WHERE` at all. The
//! statement is checked before it is optimized (only its own table, a
//! plain `WHERE`, nothing volatile), then optimized on its own (types
//! coerced, `now()` and intervals folded), and its conjuncts converted:
//! the time column compared with constants, and tags compared with
//! strings (`=`, `IN`, `OR` of `=`). Anything else is refused, naming the
//! part. The result rides on the session to
//! [`crate::table::TocsinTable`]'s `delete_from`, which ignores the filters
//! DataFusion hands it.

use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator, WriteOp};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use tocsin_storage::tombstone::{Deletion, TagIn, Tombstone};
use tocsin_storage::{Storage, TIME_COLUMN};

/// The deletion a planned `DELETE` makes, kept in the session's config for
/// `delete_from`.
#[derive(Debug)]
pub(crate) struct PendingDelete {
    pub(crate) db: String,
    pub(crate) table: String,
    pub(crate) deletion: Deletion,
}

/// Reads the deletion of `plan` if it is a `DELETE` (unoptimized), and
/// leaves it in `state` for the physical planner.
pub(crate) fn prepare(state: &mut SessionState, plan: &LogicalPlan) -> Result<(), String> {
    let LogicalPlan::Dml(dml) = plan else { return Ok(()) };
    if dml.op != WriteOp::Delete {
        return Ok(());
    }
    let default_db = state.config().options().catalog.default_schema.clone();
    let db = dml.table_name.schema().unwrap_or(&default_db).to_string();
    let table = dml.table_name.table().to_string();
    if db == tocsin_storage::SYSTEM_DATABASE {
        // Named without `system.` (the request's database is `system`).
        return Err("DELETE FROM system.* is not allowed: the system tables are the server's record".into());
    }
    let filtered = match dml.input.as_ref() {
        LogicalPlan::TableScan(_) => false,
        LogicalPlan::Filter(f) if matches!(f.input.as_ref(), LogicalPlan::TableScan(_)) => {
            check_predicate(&f.predicate)?;
            true
        }
        other => {
            return Err(format!(
                "DELETE takes a table and a WHERE clause only (no alias, LIMIT, or ORDER BY); this one plans as {}",
                other.display()
            ));
        }
    };
    let optimized = state.optimize(plan).map_err(|e| e.to_string())?;
    let LogicalPlan::Dml(optimized) = optimized else {
        return Err("DELETE did not plan as a deletion".into());
    };
    let mut conjuncts: Vec<Expr> = Vec::new();
    let mut empty = false;
    optimized
        .input
        .apply(|node| {
            match node {
                LogicalPlan::Filter(f) => conjuncts.extend(split_conjunction(&f.predicate).into_iter().cloned()),
                LogicalPlan::TableScan(s) => {
                    conjuncts.extend(s.filters.iter().flat_map(split_conjunction).cloned());
                }
                // The WHERE clause is never true.
                LogicalPlan::EmptyRelation(_) => empty = true,
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| e.to_string())?;
    let deletion =
        if empty && filtered { Deletion { min_ts: 1, max_ts: 0, tags: Vec::new() } } else { deletion(&conjuncts)? };
    state.config_mut().set_extension(Arc::new(PendingDelete { db, table, deletion }));
    Ok(())
}

/// Refuses what a deletion cannot be made of before optimizing can hide
/// it: subqueries and volatile functions (`random()`).
fn check_predicate(predicate: &Expr) -> Result<(), String> {
    let mut refused = None;
    predicate
        .apply(|e| {
            match e {
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                    refused = Some("a subquery".to_string());
                }
                Expr::ScalarFunction(f)
                    if f.func.signature().volatility == datafusion::logical_expr::Volatility::Volatile =>
                {
                    refused = Some(format!("{}(), which is volatile", f.name()));
                }
                _ => {}
            }
            Ok(if refused.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
        })
        .map_err(|e| e.to_string())?;
    match refused {
        Some(what) => Err(format!("a DELETE's WHERE clause cannot hold {what}")),
        None => Ok(()),
    }
}

/// The deletion the conjuncts of an optimized `WHERE` describe.
fn deletion(conjuncts: &[Expr]) -> Result<Deletion, String> {
    let mut d = Deletion::all();
    for c in conjuncts {
        if let Some((lo, hi)) = time_bound(c)? {
            d.min_ts = d.min_ts.max(lo);
            d.max_ts = d.max_ts.min(hi);
            continue;
        }
        if let Some((tag, values)) = tag_values(c) {
            match d.tags.iter_mut().find(|t| t.tag == tag) {
                Some(t) => t.values.retain(|v| values.contains(v)),
                None => d.tags.push(TagIn { tag, values }),
            }
            continue;
        }
        if let Expr::Literal(ScalarValue::Boolean(Some(true)), _) = c {
            continue;
        }
        return Err(format!(
            "a DELETE can match the time column ({TIME_COLUMN}, compared with constants) and tags (=, IN, or OR \
             of = with strings), joined by AND; `{c}` is none of these"
        ));
    }
    Ok(d)
}

/// The inclusive range of `ts` that a comparison of it with a constant
/// keeps; `None` if `e` is not one.
fn time_bound(e: &Expr) -> Result<Option<(i64, i64)>, String> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, value) = match (is_time(left), is_time(right), constant_ns(right), constant_ns(left)) {
                (true, false, Some(v), _) => (*op, v?),
                (false, true, _, Some(v)) => match op.swap() {
                    Some(op) => (op, v?),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
            Ok(match op {
                Operator::Eq => Some((value, value)),
                Operator::Gt => Some((value.saturating_add(1), i64::MAX)),
                Operator::GtEq => Some((value, i64::MAX)),
                Operator::Lt => Some((i64::MIN, value.saturating_sub(1))),
                Operator::LtEq => Some((i64::MIN, value)),
                _ => None,
            })
        }
        Expr::Between(b) if !b.negated && is_time(&b.expr) => match (constant_ns(&b.low), constant_ns(&b.high)) {
            (Some(lo), Some(hi)) => Ok(Some((lo?, hi?))),
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

fn is_time(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == TIME_COLUMN)
}

/// A timestamp constant in nanoseconds.
fn constant_ns(e: &Expr) -> Option<Result<i64, String>> {
    let Expr::Literal(v, _) = e else { return None };
    let (n, per_unit) = match v {
        ScalarValue::TimestampNanosecond(Some(n), _) => (*n, 1),
        ScalarValue::TimestampMicrosecond(Some(n), _) => (*n, 1_000),
        ScalarValue::TimestampMillisecond(Some(n), _) => (*n, 1_000_000),
        ScalarValue::TimestampSecond(Some(n), _) => (*n, 1_000_000_000),
        _ => return None,
    };
    Some(n.checked_mul(per_unit).ok_or_else(|| format!("the time {v} is out of range")))
}

/// The tag and values of `tag = 'v'`, `tag IN ('v', ...)` or an `OR` of
/// equalities of one tag.
fn tag_values(e: &Expr) -> Option<(String, Vec<String>)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
            let (c, v) = match (tag_column(left), text(right), tag_column(right), text(left)) {
                (Some(c), Some(v), _, _) | (_, _, Some(c), Some(v)) => (c, v),
                _ => return None,
            };
            Some((c.name.clone(), vec![v]))
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let (a, mut va) = tag_values(left)?;
            let (b, vb) = tag_values(right)?;
            if a != b {
                return None;
            }
            va.extend(vb);
            Some((a, va))
        }
        Expr::InList(l) if !l.negated => {
            let c = tag_column(&l.expr)?;
            let values = l.list.iter().map(text).collect::<Option<Vec<String>>>()?;
            Some((c.name.clone(), values))
        }
        _ => None,
    }
}

/// A column other than the time, seen through a cast to text.
fn tag_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) if c.name != TIME_COLUMN => Some(c),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
            tag_column(&c.expr)
        }
        _ => None,
    }
}

fn text(e: &Expr) -> Option<String> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Some(s.clone())
        }
        ScalarValue::Dictionary(_, inner) => text(&Expr::Literal(inner.as_ref().clone(), None)),
        _ => None,
    }
}

/// The rows of a scan that none of `deleted` removes: for each, `NOT
/// (matches) IS TRUE` (a row with a NULL tag is kept, as storage's
/// compaction keeps it). `schema` is the scan's, holding every column the
/// tombstones name.
pub(crate) fn keep_expr(deleted: &[&Tombstone], schema: &SchemaRef) -> Result<Expr> {
    let ts_type = schema.field_with_name(TIME_COLUMN)?.data_type().clone();
    let tz = match &ts_type {
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => tz.clone(),
        other => return Err(DataFusionError::Internal(format!("the time column is {other}, not nanoseconds"))),
    };
    let at = |ns: i64| Expr::Literal(ScalarValue::TimestampNanosecond(Some(ns), tz.clone()), None);
    let mut keep: Option<Expr> = None;
    for t in deleted {
        let d = &t.deletion;
        let mut parts = Vec::new();
        if d.min_ts != i64::MIN {
            parts.push(Expr::Column(Column::from_name(TIME_COLUMN)).gt_eq(at(d.min_ts)));
        }
        if d.max_ts != i64::MAX {
            parts.push(Expr::Column(Column::from_name(TIME_COLUMN)).lt_eq(at(d.max_ts)));
        }
        for tag in &d.tags {
            let column = Expr::Column(Column::from_name(&tag.tag));
            let text = |v: &String| ScalarValue::Utf8(Some(v.clone()));
            // Tags are dictionaries: compared as such, the list is looked
            // up once per dictionary value, not once per row (a cast to
            // text made a scan of every row 40 % slower).
            let (column, values): (Expr, Vec<Expr>) = match schema.field_with_name(&tag.tag)?.data_type() {
                DataType::Dictionary(key, value) if value.as_ref() == &DataType::Utf8 => (
                    column,
                    tag.values
                        .iter()
                        .map(|v| Expr::Literal(ScalarValue::Dictionary(key.clone(), Box::new(text(v))), None))
                        .collect(),
                ),
                _ => (
                    datafusion::logical_expr::cast(column, DataType::Utf8),
                    tag.values.iter().map(|v| Expr::Literal(text(v), None)).collect(),
                ),
            };
            parts.push(column.in_list(values, false));
        }
        let matches =
            parts.into_iter().reduce(Expr::and).unwrap_or(Expr::Literal(ScalarValue::Boolean(Some(true)), None));
        let kept = Expr::IsNotTrue(Box::new(matches));
        keep = Some(match keep {
            None => kept,
            Some(k) => k.and(kept),
        });
    }
    Ok(keep.unwrap_or(Expr::Literal(ScalarValue::Boolean(Some(true)), None)))
}

/// Makes a deletion when executed; its one row is the number of rows
/// deleted (`count`, as DataFusion's DML results).
#[derive(Debug)]
pub(crate) struct DeleteExec {
    storage: Arc<Storage>,
    db: String,
    table: String,
    deletion: Deletion,
    properties: Arc<PlanProperties>,
}

impl DeleteExec {
    pub(crate) fn new(storage: Arc<Storage>, db: String, table: String, deletion: Deletion) -> Self {
        let schema = count_schema();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self { storage, db, table, deletion, properties: Arc::new(properties) }
    }
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]))
}

impl DisplayAs for DeleteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.deletion;
        write!(f, "DeleteExec: {}.{} ts in [{}, {}]", self.db, self.table, d.min_ts, d.max_ts)?;
        for t in &d.tags {
            write!(f, ", {} in {:?}", t.tag, t.values)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DeleteExec {
    fn name(&self) -> &str {
        "DeleteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let (storage, db, table, deletion) =
            (Arc::clone(&self.storage), self.db.clone(), self.table.clone(), self.deletion.clone());
        // A task of its own: a statement cancelled (its client gone, its
        // deadline past) must not stop a deletion between its manifest and
        // the server's state.
        let task = tokio::spawn(async move { storage.delete(&db, &table, deletion).await });
        let once = futures::stream::once(async move {
            let deleted = task
                .await
                .map_err(|e| DataFusionError::Execution(format!("DELETE failed: {e}")))?
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok(RecordBatch::try_new(count_schema(), vec![Arc::new(UInt64Array::from(vec![deleted.rows]))])?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(count_schema(), once)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ns(v: i64) -> Expr {
        Expr::Literal(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())), None)
    }

    #[test]
    fn conjuncts_of_time_and_tags_make_a_deletion() {
        let d = deletion(&[
            col("ts").gt_eq(ns(10)),
            ns(20).gt(col("ts")),
            col("host").eq(lit("a")).or(col("host").eq(lit("b"))),
            col("host").in_list(vec![lit("b"), lit("c")], false),
            col("dc").eq(lit("x")),
        ])
        .expect("deletion");
        assert_eq!((d.min_ts, d.max_ts), (10, 19));
        assert_eq!(
            d.tags,
            vec![
                TagIn { tag: "host".into(), values: vec!["b".into()] },
                TagIn { tag: "dc".into(), values: vec!["x".into()] }
            ]
        );
        assert_eq!(deletion(&[]).expect("all"), Deletion::all());
        let s = Expr::Literal(ScalarValue::TimestampSecond(Some(2), None), None);
        assert_eq!(deletion(&[col("ts").between(s.clone(), s)]).expect("between").max_ts, 2_000_000_000);
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        for (e, part) in [
            (col("value").gt(lit(3.0)), "value > Float64(3)"),
            (col("host").not_eq(lit("a")), "host != Utf8(\"a\")"),
            (col("host").eq(lit("a")).or(col("dc").eq(lit("b"))), "OR"),
            (col("ts").not_eq(ns(1)), "ts !="),
            (col("host").in_list(vec![lit("a")], true), "NOT IN"),
        ] {
            let err = deletion(&[e]).expect_err("refused");
            assert!(err.contains(part) && err.contains("none of these"), "{err}");
        }
    }
}
