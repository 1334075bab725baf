//! What the string functions (`matches`, `json_get_str`) share: reading a
//! constant string argument, and mapping a string column row by row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

/// The text of a string scalar; `None` for NULL or a non-string.
pub(crate) fn scalar_str(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => v.as_deref(),
        _ => None,
    }
}

/// Applies `f` to every string of `text` (a column or a scalar); NULL stays
/// NULL. `A` is the result array type, `scalar` wraps a scalar result.
pub(crate) fn map_text<T, A>(
    text: &ColumnarValue,
    f: impl Fn(&str) -> Option<T>,
    scalar: impl Fn(Option<T>) -> ScalarValue,
) -> Result<ColumnarValue>
where
    A: Array + From<Vec<Option<T>>> + 'static,
{
    match text {
        ColumnarValue::Scalar(s) => Ok(ColumnarValue::Scalar(scalar(scalar_str(s).and_then(&f)))),
        ColumnarValue::Array(a) => {
            let a: ArrayRef = cast(a, &DataType::Utf8)?;
            let s = a.as_string::<i32>();
            let out: Vec<Option<T>> = (0..s.len()).map(|i| if s.is_valid(i) { f(s.value(i)) } else { None }).collect();
            Ok(ColumnarValue::Array(Arc::new(A::from(out))))
        }
    }
}
