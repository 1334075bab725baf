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
//!
//! The same adapter keeps a table's scan of a pack away from the other
//! tables' columns. A pack's column `x` may belong to other tables only,
//! with a type the scanned table's `x` does not have (a table that had no
//! `x` when it was packed and got a numeric `x` later, in a pack where `x`
//! is text). The slice's rows hold NULL there, but a filter on `x` was cast
//! and evaluated over the other tables' text ("Cannot cast string 'x0' to
//! Float64") once the slices shared a row group. A column whose stored type
//! is of another kind (text, number, boolean, time) than the table's is
//! such a column: it reads as NULL and is never decoded. A table's own
//! columns always have a stored type of their own kind, since a column's
//! type never changes once written.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Decimal64Array, RecordBatch};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, lit};
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
        let inner = DefaultPhysicalExprAdapterFactory
            .create(Arc::clone(&logical_file_schema), Arc::clone(&physical_file_schema))?;
        let mut stored: Vec<(usize, DecimalRule, i8)> = Vec::new();
        for (i, f) in physical_file_schema.fields().iter().enumerate() {
            match DecimalRule::check_field(f) {
                Ok(Some((rule, s))) => stored.push((i, rule, s)),
                Ok(None) => {}
                Err(reason) => return exec_err!("a segment of this table cannot be read: {reason}"),
            }
        }
        let foreign: Vec<(String, ScalarValue)> = logical_file_schema
            .fields()
            .iter()
            .filter_map(|f| {
                let stored = physical_file_schema.field_with_name(f.name()).ok()?;
                foreign(stored.data_type(), f.data_type())
                    .then(|| ScalarValue::try_from(f.data_type()).ok().map(|null| (f.name().clone(), null)))?
            })
            .collect();
        if stored.is_empty() && foreign.is_empty() {
            return Ok(inner);
        }
        Ok(Arc::new(SegmentExprAdapter { inner, stored, foreign }))
    }
}

/// Whether a file's column stored as `stored` is another table's column
/// of a pack, for a table whose column of that name is `table` (their
/// kinds differ; see the module documentation).
pub(crate) fn foreign(stored: &DataType, table: &DataType) -> bool {
    matches!((kind(stored), kind(table)), (Some(a), Some(b)) if a != b)
}

/// The kind of values a column type holds, for telling a table's own
/// columns from other tables' columns of a pack (see the module
/// documentation); `None` for types that are never told apart.
fn kind(t: &DataType) -> Option<u8> {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(0),
        DataType::Dictionary(_, v) => kind(v),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _) => Some(1),
        DataType::Boolean => Some(2),
        DataType::Timestamp(_, _) => Some(3),
        _ => None,
    }
}

#[derive(Debug)]
struct SegmentExprAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    /// Physical column index, rule and scale of each column stored under a rule.
    stored: Vec<(usize, DecimalRule, i8)>,
    /// Columns of the file that belong to other tables, with the NULL of
    /// the table's type they read as.
    foreign: Vec<(String, ScalarValue)>,
}

impl PhysicalExprAdapter for SegmentExprAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let expr = if self.foreign.is_empty() {
            expr
        } else {
            expr.transform(|e| {
                let null = e
                    .downcast_ref::<Column>()
                    .and_then(|c| self.foreign.iter().find(|(name, _)| name == c.name()))
                    .map(|(_, null)| null.clone());
                Ok(match null {
                    Some(null) => Transformed::yes(lit(null)),
                    None => Transformed::no(e),
                })
            })
            .data()?
        };
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
