//! Row gates: a table seen through a caller's row filter.
//!
//! A role that may read `logs` only where `service = 'billing'` must not
//! learn anything about the other rows, whatever the query does with them.
//! A `Filter` above the scan is not enough: the optimiser merges the
//! caller's predicates with it and pushes them into the scan, where they
//! run on every row, so an expression that fails (`CAST(message AS INT)`)
//! reports a hidden value in its error, and join or TopK filters pushed
//! down at execution see hidden rows too.
//!
//! [`RowGate`] replaces the table's source in the plan. Its scan applies
//! the row filter in [`RowGateExec`], an operator no optimisation sees
//! through: nothing is pushed below it (DataFusion's default for an
//! unknown operator), it reports no statistics, and it keeps no limit. Of
//! the caller's predicates only those that cannot fail on any value (a
//! bare column compared with constants) reach the table below, to prune
//! segments by time and tags; every other predicate runs above the gate,
//! on the rows the caller may see.

use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    ReplaceChildrenOptions, apply_expression_roots,
};
use futures::StreamExt;

/// A table whose rows are those `predicate` (over its unqualified columns)
/// keeps.
#[derive(Debug)]
pub(crate) struct RowGate {
    pub(crate) inner: Arc<dyn TableProvider>,
    pub(crate) predicate: Expr,
}

#[async_trait]
impl TableProvider for RowGate {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion still applies them above the gate; below it
        // they only prune.
        Ok(filters
            .iter()
            .map(|f| {
                if cannot_fail(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.inner.schema();
        // What the gate reads: the columns asked for and those of its predicate.
        let (read, keep) = match projection {
            None => (None, None),
            Some(p) => {
                let mut read = p.clone();
                for c in self.predicate.column_refs() {
                    let i = schema.index_of(&c.name)?;
                    if !read.contains(&i) {
                        read.push(i);
                    }
                }
                let keep: Vec<usize> = (0..p.len()).collect();
                (Some(read), Some(keep))
            }
        };
        let mut below = vec![self.predicate.clone()];
        below.extend(filters.iter().filter(|f| cannot_fail(f)).cloned());
        // No limit below the gate: it would count rows the gate drops.
        let input = self.inner.scan(state, read.as_ref(), &below, None).await?;
        let df_schema = DFSchema::try_from(input.schema())?;
        let predicate = state.create_physical_expr(self.predicate.clone(), &df_schema)?;
        Ok(Arc::new(RowGateExec::try_new(input, predicate, keep)?))
    }
}

/// Whether evaluating `e` on any row can neither fail nor depend on more
/// than comparing a bare column with constants (casts of constants
/// included), so that running it on rows the caller may not see reveals
/// nothing.
fn cannot_fail(e: &Expr) -> bool {
    fn constant(e: &Expr) -> bool {
        match e {
            Expr::Literal(..) => true,
            Expr::Cast(c) => constant(&c.expr),
            Expr::TryCast(c) => constant(&c.expr),
            _ => false,
        }
    }
    let column = |e: &Expr| matches!(e, Expr::Column(_));
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => cannot_fail(left) && cannot_fail(right),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => (column(left) && constant(right)) || (constant(left) && column(right)),
            _ => false,
        },
        Expr::Not(e) => cannot_fail(e),
        Expr::IsNull(e) | Expr::IsNotNull(e) => column(e),
        Expr::InList(l) => column(&l.expr) && l.list.iter().all(constant),
        Expr::Between(b) => column(&b.expr) && constant(&b.low) && constant(&b.high),
        _ => false,
    }
}

/// Keeps the rows of `input` that `predicate` accepts, then the columns
/// `keep` (all when `None`). An optimisation barrier: see the module docs.
#[derive(Debug)]
pub(crate) struct RowGateExec {
    input: Arc<dyn ExecutionPlan>,
    predicate: Arc<dyn PhysicalExpr>,
    keep: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl RowGateExec {
    fn try_new(
        input: Arc<dyn ExecutionPlan>,
        predicate: Arc<dyn PhysicalExpr>,
        keep: Option<Vec<usize>>,
    ) -> Result<RowGateExec> {
        let schema = match &keep {
            None => input.schema(),
            Some(k) => Arc::new(input.schema().project(k)?),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(RowGateExec { input, predicate, keep, properties: Arc::new(properties) })
    }
}

impl DisplayAs for RowGateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowGateExec: {}", self.predicate)
    }
}

impl ExecutionPlan for RowGateExec {
    fn name(&self) -> &str {
        "RowGateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots([&self.predicate], f)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!("RowGateExec has one input, not {}", children.len())));
        }
        Ok(Arc::new(RowGateExec::try_new(children.swap_remove(0), Arc::clone(&self.predicate), self.keep.clone())?))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let predicate = Arc::clone(&self.predicate);
        let keep = self.keep.clone();
        let gated = input.map(move |batch| {
            let batch = batch?;
            let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
            let Some(mask) = mask.as_boolean_opt() else {
                return Err(DataFusionError::Internal("a row filter is not a boolean".into()));
            };
            let kept: RecordBatch = arrow::compute::filter_record_batch(&batch, mask)?;
            Ok(match &keep {
                None => kept,
                Some(k) => kept.project(k)?,
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), gated)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    #[test]
    fn only_bare_comparisons_with_constants_reach_below_the_gate() {
        assert!(cannot_fail(&col("host").eq(lit("a"))));
        assert!(cannot_fail(&lit(3).lt(col("v")).and(col("ts").gt_eq(lit(1)))));
        assert!(cannot_fail(&col("host").in_list(vec![lit("a"), lit("b")], false)));
        assert!(cannot_fail(&col("v").between(lit(1), lit(2)).or(col("v").is_null())));
        assert!(!cannot_fail(
            &datafusion::logical_expr::cast(col("message"), arrow::datatypes::DataType::Int64).eq(lit(1))
        ));
        assert!(!cannot_fail(&(col("v") / lit(0)).eq(lit(1))));
        assert!(!cannot_fail(&col("a").eq(col("b"))));
        assert!(!cannot_fail(&col("host").like(lit("a%"))));
    }
}
