//! Scans read float columns stored under a producer's rule as the f64s
//! that were written.
//!
//! A segment may store a Float64 column as DECIMAL(18, s) integers with a
//! rule other than `m / 10^s` (see `tocsin_storage::decimal`). DataFusion's
//! default expression adapter would cast such a column to Float64, that is
//! `m / 10^s`, which is not what was written. [`SegmentExprAdapterFactory`]
//! wraps the default adapter and replaces that cast with [`DecodeStored`],
//! for projections and for pushed-down filters alike. Statistics-based
//! pruning does not see through the replacement, so filters on such a
//! column prune nothing (they stay correct).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Decimal64Array, RecordBatch};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use tocsin_storage::decimal::{DecimalRule, decode};

/// Builds the adapter of each segment file (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct SegmentExprAdapterFactory;

impl PhysicalExprAdapterFactory for SegmentExprAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        let inner = DefaultPhysicalExprAdapterFactory.create(logical_file_schema, Arc::clone(&physical_file_schema))?;
        let stored: Vec<(usize, DecimalRule, i8)> = physical_file_schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| DecimalRule::of_field(f).map(|(rule, s)| (i, rule, s)))
            .collect();
        if stored.is_empty() {
            return Ok(inner);
        }
        Ok(Arc::new(SegmentExprAdapter { inner, stored }))
    }
}

#[derive(Debug)]
struct SegmentExprAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    /// Physical column index, rule and scale of each column stored under a rule.
    stored: Vec<(usize, DecimalRule, i8)>,
}

impl PhysicalExprAdapter for SegmentExprAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let expr = self.inner.rewrite(expr)?;
        expr.transform(|e| {
            let Some(cast) = e.downcast_ref::<CastExpr>() else {
                return Ok(Transformed::no(e));
            };
            let Some(column) = cast.expr().downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            match self.stored.iter().find(|(i, _, _)| *i == column.index()) {
                Some(&(_, rule, scale)) if cast.cast_type() == &DataType::Float64 => Ok(Transformed::yes(Arc::new(
                    DecodeStored { input: Arc::clone(cast.expr()), rule, scale },
                )
                    as Arc<dyn PhysicalExpr>)),
                _ => Ok(Transformed::no(e)),
            }
        })
        .data()
    }
}

/// The f64s a DECIMAL(18, s) column stored under `rule` stands for.
#[derive(Debug, Eq)]
pub(crate) struct DecodeStored {
    input: Arc<dyn PhysicalExpr>,
    rule: DecimalRule,
    scale: i8,
}

impl PartialEq for DecodeStored {
    fn eq(&self, other: &Self) -> bool {
        self.input.eq(&other.input) && self.rule == other.rule && self.scale == other.scale
    }
}

impl Hash for DecodeStored {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.rule.hash(state);
        self.scale.hash(state);
    }
}

impl fmt::Display for DecodeStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.rule.mark(), self.input)
    }
}

impl PhysicalExpr for DecodeStored {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.input.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        let field = self.input.return_field(input_schema)?;
        Ok(Arc::new(field.as_ref().clone().with_data_type(DataType::Float64).with_metadata(Default::default())))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.input.evaluate(batch)? {
            ColumnarValue::Array(a) => match a.as_any().downcast_ref::<Decimal64Array>() {
                Some(d) => Ok(ColumnarValue::Array(Arc::new(decode(d, self.rule, self.scale)))),
                None => exec_err!("column stored as {} is {}, not DECIMAL(18, s)", self.rule.mark(), a.data_type()),
            },
            ColumnarValue::Scalar(ScalarValue::Decimal64(v, _, _)) => {
                Ok(ColumnarValue::Scalar(ScalarValue::Float64(v.map(|m| self.rule.decode(m, self.scale)))))
            }
            ColumnarValue::Scalar(other) => {
                exec_err!("column stored as {} is {}, not DECIMAL(18, s)", self.rule.mark(), other.data_type())
            }
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.input]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        match children.as_slice() {
            [input] => Ok(Arc::new(DecodeStored { input: Arc::clone(input), rule: self.rule, scale: self.scale })),
            _ => exec_err!("{} takes one input, got {}", self.rule.mark(), children.len()),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}
