//! Functions whose result can be far larger than their arguments:
//! `repeat('x', 2000000000)` is a 2 GB string from a 30-byte statement,
//! `range(1, 1000000000)` an 8 GB list. The memory pool does not see the
//! values scalar functions make, and constant arguments are evaluated while
//! planning, so one such statement could take the server's memory. Each of
//! these functions is registered in a wrapper that works out, from its
//! arguments and before calling it, how large each result would be, and
//! refuses a value over [`MAX_VALUE_BYTES`] or a batch over
//! [`MAX_BATCH_BYTES`] with an error naming the function and the limit.
//!
//! Concatenation (`concat`, `concat_ws` and the `||` operator, which
//! [`BoundConcat`] turns into a call) makes no more than its arguments,
//! but a chain of them doubles a value at each step (`s || s` over a CTE
//! over a CTE...); `upper`, `encode(s, 'hex')`, `translate` and the like
//! grow a value by a bounded factor, and a chain of them just as far. Each
//! is bounded the same way, from its arguments' lengths, and their number
//! by [`MAX_WIDENING_CALLS`].

use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Operator, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The largest value one of these functions may make.
pub const MAX_VALUE_BYTES: u64 = 16 << 20;
/// The most one call (a batch of rows) may make.
pub const MAX_BATCH_BYTES: u64 = 64 << 20;

/// The most calls of these functions one statement may make (after its
/// common table expressions are expanded): with the bound on each, at most
/// `MAX_CALLS × MAX_BATCH_BYTES` are made per batch of rows.
pub const MAX_CALLS: usize = 16;

/// The most calls that can make text longer than their arguments
/// (concatenation: `concat`, `concat_ws`, `||`; and `upper`, `lower`,
/// `initcap`, `translate`, `overlay`, `encode`, `to_char`) one statement
/// may make: each makes at most [`MAX_BATCH_BYTES`] per batch, so together
/// at most 2 GiB.
pub const MAX_WIDENING_CALLS: usize = 32;

/// Whether `name` is one of the bounded functions counted by [`MAX_CALLS`]
/// (those whose result is not a weighted sum of their arguments).
pub fn grows(name: &str) -> bool {
    WRAPPED.iter().any(|(n, g)| *n == name && !g.linear())
}

/// Whether `name` can make text longer than its arguments by a bounded
/// factor (a concatenation, `upper`, ...), counted by [`MAX_WIDENING_CALLS`].
pub fn widens(name: &str) -> bool {
    name == CONCAT_OPERATOR || WRAPPED.iter().any(|(n, g)| *n == name && g.linear())
}

/// How a function's result grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) × n` bytes.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters, at most 4 bytes each.
    Pad,
    /// `replace(s, from, to)`: every `from` (or, empty, every position)
    /// becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, to [, flags])`: a pattern may match at
    /// every position.
    RegexpReplace,
    /// `array_repeat(x, n)`: `n` copies of `x`.
    ArrayRepeat,
    /// `range(stop)`, `range(start, stop [, step])`, `generate_series`:
    /// `(stop - start) / step` elements.
    Range,
    /// `array_resize(a, n [, v])`: `n` elements.
    Resize,
    /// `concat(a, b, ...)` and `a || b`: the sum of the arguments.
    Concat,
    /// `concat_ws(sep, a, b, ...)`: the sum, and the separator between
    /// each two.
    ConcatWs,
    /// Each argument's length times its weight (the arguments past the
    /// list weigh nothing): `upper(s)` is at most 3 × `s` (a UTF-8 case
    /// mapping can triple a character), `encode(s, 'hex')` 2 ×.
    Weighted(&'static [u64]),
}

impl Growth {
    /// Whether the size is a weighted sum of the arguments' lengths (worked
    /// out a column at a time).
    fn linear(self) -> bool {
        matches!(self, Growth::Concat | Growth::ConcatWs | Growth::Weighted(_))
    }

    /// The weight of argument `i` of `n`.
    fn weight(self, i: usize, n: usize) -> u64 {
        match self {
            Growth::ConcatWs if i == 0 => n.saturating_sub(2) as u64,
            Growth::Weighted(w) => w.get(i).copied().unwrap_or(0),
            _ => 1,
        }
    }
}

/// The functions that are wrapped, by their DataFusion names.
/// (Without DataFusion's nested-types feature, which Tocsin's build
/// leaves out, the list functions are not there and nothing is wrapped for
/// them.)
const WRAPPED: [(&str, Growth); 18] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
    ("array_resize", Growth::Resize),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
    // Found by review 5: each grows a value by a bounded factor, and a
    // chain of them (seven `encode(.., 'hex')`) made 2 GB.
    ("upper", Growth::Weighted(&[3])),
    ("lower", Growth::Weighted(&[3])),
    ("initcap", Growth::Weighted(&[3])),
    // A one-byte character may become a four-byte one.
    ("translate", Growth::Weighted(&[4, 0, 4])),
    // overlay(s placing t from a [for b]).
    ("overlay", Growth::Weighted(&[1, 1])),
    // hex doubles; base64 is 4/3.
    ("encode", Growth::Weighted(&[2])),
    // A two-character pattern such as `%B` makes up to nine.
    ("to_char", Growth::Weighted(&[0, 8])),
];

/// The bounded versions of the functions `registered` (the session's own)
/// has, to register over them.
pub fn bounded(registered: impl Fn(&str) -> Option<ScalarUDF>) -> Vec<ScalarUDF> {
    WRAPPED
        .iter()
        .filter_map(|(name, growth)| {
            registered(name).map(|inner| ScalarUDF::new_from_impl(Bounded { inner, growth: *growth }))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
}

impl Bounded {
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        if self.growth.linear() {
            return self.check_linear(&args.args, rows);
        }
        let (mut largest, mut total) = (0u64, 0u64);
        for row in 0..rows {
            let values: Vec<ScalarValue> = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => Ok(s.clone()),
                    ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row),
                })
                .collect::<Result<_>>()?;
            let bytes = self.estimate(&values);
            largest = largest.max(bytes);
            total = total.saturating_add(bytes);
            if largest > MAX_VALUE_BYTES || total > MAX_BATCH_BYTES {
                return self.within(largest, total, rows);
            }
        }
        Ok(())
    }

    /// Concatenation and case mapping are common on every row of large
    /// scans: their sizes come from the arguments' lengths, a column at a
    /// time.
    fn check_linear(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let mut per_row = vec![0u64; rows];
        for (i, a) in args.iter().enumerate() {
            let times = self.growth.weight(i, args.len());
            if times == 0 {
                continue;
            }
            match a {
                ColumnarValue::Scalar(v) => {
                    let len = byte_len(v).saturating_mul(times);
                    per_row.iter_mut().for_each(|r| *r = r.saturating_add(len));
                }
                ColumnarValue::Array(a) => match byte_lengths(a.as_ref()) {
                    Some(lengths) => {
                        for (r, len) in per_row.iter_mut().zip(lengths) {
                            *r = r.saturating_add(len.saturating_mul(times));
                        }
                    }
                    // Not text or bytes: all of its buffers, in each row.
                    None => {
                        let len = (a.get_buffer_memory_size() as u64).saturating_mul(times);
                        per_row.iter_mut().for_each(|r| *r = r.saturating_add(len));
                    }
                },
            }
        }
        let largest = per_row.iter().copied().max().unwrap_or(0);
        let total = per_row.iter().fold(0u64, |t, r| t.saturating_add(*r));
        self.within(largest, total, rows)
    }

    /// Ok if a largest value of `largest` bytes and `total` bytes in all
    /// are within the bounds; the error names the function.
    fn within(&self, largest: u64, total: u64, rows: usize) -> Result<()> {
        let name = match self.inner.name() {
            CONCAT_OPERATOR => "the || operator".to_string(),
            other => format!("{other}()"),
        };
        if largest > MAX_VALUE_BYTES {
            tocsin_storage::refusals::refused("max_value_bytes");
            return exec_err!(
                "{name} would make a value of about {largest} bytes; a value may be at most {MAX_VALUE_BYTES} bytes \
                 (16 MiB)"
            );
        }
        if total > MAX_BATCH_BYTES {
            tocsin_storage::refusals::refused("max_value_bytes");
            return exec_err!(
                "{name} would make more than {MAX_BATCH_BYTES} bytes (64 MiB) for one batch of {rows} rows"
            );
        }
        Ok(())
    }

    /// An upper bound of the result's size in bytes for one row.
    fn estimate(&self, v: &[ScalarValue]) -> u64 {
        let int = |i: usize| v.get(i).and_then(as_i64).unwrap_or(0).max(0) as u64;
        let len = |i: usize| v.get(i).map_or(0, text_len);
        match self.growth {
            Growth::Repeat => len(0).saturating_mul(int(1)),
            Growth::Pad => int(1).saturating_mul(4),
            Growth::Replace => {
                let (s, from, to) = (len(0), len(1), len(2));
                s.saturating_add((s / from.max(1) + 1).saturating_mul(to))
            }
            Growth::RegexpReplace => {
                let (s, to) = (len(0), len(2));
                s.saturating_add((s + 1).saturating_mul(to))
            }
            Growth::ArrayRepeat => int(1).saturating_mul(v.first().map_or(8, |x| x.size() as u64).max(8)),
            Growth::Resize => int(1).saturating_mul(16),
            Growth::Range => range_len(v).saturating_mul(8),
            Growth::Concat | Growth::ConcatWs | Growth::Weighted(_) => v
                .iter()
                .enumerate()
                .map(|(i, x)| byte_len(x).saturating_mul(self.growth.weight(i, v.len())))
                .fold(0, u64::saturating_add),
        }
    }
}

/// A string's length in bytes (0 for anything else).
fn text_len(v: &ScalarValue) -> u64 {
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => s.len() as u64,
        _ => 0,
    }
}

/// A string's or byte string's length in bytes; for anything else, the
/// size of the value (an upper bound of its text).
fn byte_len(v: &ScalarValue) -> u64 {
    match v {
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => b.len() as u64,
        ScalarValue::Utf8(_) | ScalarValue::LargeUtf8(_) | ScalarValue::Utf8View(_) => text_len(v),
        v if v.is_null() => 0,
        other => other.size() as u64,
    }
}

/// The length in bytes of each value of a text or bytes column (NULL as
/// 0), or `None` for other types.
fn byte_lengths(a: &dyn arrow::array::Array) -> Option<Vec<u64>> {
    use arrow::array::AsArray as _;
    let lengths = arrow::compute::kernels::length::length(a).ok()?;
    let lengths = arrow::compute::cast(&lengths, &DataType::Int64).ok()?;
    let lengths = lengths.as_primitive_opt::<arrow::datatypes::Int64Type>()?;
    Some(lengths.iter().map(|l| l.unwrap_or(0).max(0) as u64).collect())
}

/// An integer, date or timestamp as a number (dates and timestamps in
/// nanoseconds, so that they meet a step in nanoseconds).
fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
            match v.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None)).ok()? {
                ScalarValue::TimestampNanosecond(n, _) => n,
                _ => None,
            }
        }
        _ => match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(n) => n,
            _ => None,
        },
    }
}

/// A step: a number, or an interval in nanoseconds (a month as 28 days, so
/// that the bound stays an upper one).
fn step(v: &ScalarValue) -> Option<i64> {
    const DAY: i64 = 86_400_000_000_000;
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            Some((i.months as i64 * 28 * DAY).saturating_add(i.days as i64 * DAY).saturating_add(i.nanoseconds))
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some((i.days as i64 * DAY).saturating_add(i.milliseconds as i64 * 1_000_000))
        }
        ScalarValue::IntervalYearMonth(Some(m)) => Some(*m as i64 * 28 * DAY),
        other => as_i64(other),
    }
}

/// How many elements `range`/`generate_series` would make.
fn range_len(v: &[ScalarValue]) -> u64 {
    let (start, stop, step) = match v {
        [stop] => (Some(0), as_i64(stop), Some(1)),
        [start, stop] => (as_i64(start), as_i64(stop), Some(1)),
        [start, stop, s, ..] => (as_i64(start), as_i64(stop), step(s)),
        [] => return 0,
    };
    match (start, stop, step) {
        (Some(a), Some(b), Some(s)) if s != 0 => {
            (b as i128 - a as i128).unsigned_abs().div_ceil(s.unsigned_abs() as u128) as u64 + 1
        }
        // NULLs make NULL; a zero step is the function's own error.
        _ => 0,
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The name of the call [`BoundConcat`] makes of `a || b` (not registered:
/// only the rule makes it).
pub const CONCAT_OPERATOR: &str = "concat_operator";

/// `a || b` as a function: DataFusion's own operator, run after the bound
/// is checked.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatOperator {
    signature: Signature,
}

impl ScalarUDFImpl for ConcatOperator {
    fn name(&self) -> &str {
        CONCAT_OPERATOR
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [l, r] => BinaryTypeCoercer::new(l, &Operator::StringConcat, r).get_result_type(),
            _ => exec_err!("{CONCAT_OPERATOR} takes two arguments"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::physical_expr::PhysicalExpr as _;
        use datafusion::physical_expr::expressions::{BinaryExpr, Column};
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let [l, r] = args.args.as_slice() else {
            return exec_err!("{CONCAT_OPERATOR} takes two arguments");
        };
        let (l, r) = (l.to_array(rows)?, r.to_array(rows)?);
        let schema = arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("l", l.data_type().clone(), true),
            arrow::datatypes::Field::new("r", r.data_type().clone(), true),
        ]);
        let batch = arrow::array::RecordBatch::try_new(std::sync::Arc::new(schema), vec![l, r])?;
        let op = BinaryExpr::new(
            std::sync::Arc::new(Column::new("l", 0)),
            Operator::StringConcat,
            std::sync::Arc::new(Column::new("r", 1)),
        );
        match op.evaluate(&batch)? {
            ColumnarValue::Array(a) if all_scalar => Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&a, 0)?)),
            out => Ok(out),
        }
    }
}

/// How `f` grows, if it is one of the bounded functions but not in its
/// bounded version.
fn unbounded(f: &ScalarUDF) -> Option<Growth> {
    let any: &dyn std::any::Any = f.inner().as_ref();
    if any.is::<Bounded>() {
        return None;
    }
    WRAPPED.iter().find(|(n, _)| *n == f.name()).map(|(_, g)| *g)
}

/// Turns every `a || b` on text or bytes into a bounded call of
/// [`CONCAT_OPERATOR`], and every call of a bounded function that SQL
/// syntax planned without the registry into its bounded version. It runs after type coercion (both sides have their
/// final types) and before the optimizer folds constants (which evaluates
/// calls on literals while planning), in every subquery too; the names of
/// the columns it touches are kept.
#[derive(Debug)]
pub struct BoundConcat {
    call: std::sync::Arc<ScalarUDF>,
}

impl Default for BoundConcat {
    fn default() -> Self {
        let inner = ScalarUDF::new_from_impl(ConcatOperator {
            signature: Signature::any(2, datafusion::logical_expr::Volatility::Immutable),
        });
        Self { call: std::sync::Arc::new(ScalarUDF::new_from_impl(Bounded { inner, growth: Growth::Concat })) }
    }
}

impl datafusion::optimizer::AnalyzerRule for BoundConcat {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{Transformed, TreeNode as _};
        use datafusion::logical_expr::expr::ScalarFunction;
        use datafusion::logical_expr::expr_rewriter::NamePreserver;
        use datafusion::logical_expr::{BinaryExpr, Expr};
        let rewritten = plan.transform_up_with_subqueries(|node| {
            let names = NamePreserver::new(&node);
            let node = node.map_expressions(|e| {
                let saved = names.save(&e);
                let out = e.transform_up(|x| match x {
                    Expr::BinaryExpr(BinaryExpr { left, op: Operator::StringConcat, right }) => {
                        let call = Expr::ScalarFunction(ScalarFunction::new_udf(
                            std::sync::Arc::clone(&self.call),
                            vec![*left, *right],
                        ));
                        Ok(Transformed::yes(call))
                    }
                    // SQL syntax planned straight to a built-in function
                    // (`OVERLAY(s PLACING t FROM n)`, `SUBSTRING(...)`)
                    // skips the registry, and so the bounded version.
                    Expr::ScalarFunction(mut f) => match unbounded(&f.func) {
                        Some(growth) => {
                            let inner = f.func.as_ref().clone();
                            f.func = std::sync::Arc::new(ScalarUDF::new_from_impl(Bounded { inner, growth }));
                            Ok(Transformed::yes(Expr::ScalarFunction(f)))
                        }
                        None => Ok(Transformed::no(Expr::ScalarFunction(f))),
                    },
                    other => Ok(Transformed::no(other)),
                })?;
                Ok(out.update_data(|e| saved.restore(e)))
            })?;
            if node.transformed { node.map_data(|p| p.recompute_schema()) } else { Ok(node) }
        })?;
        Ok(rewritten.data)
    }

    fn name(&self) -> &str {
        "bound_concat"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(growth: Growth, v: &[ScalarValue]) -> u64 {
        let inner = ScalarUDF::new_from_impl(Bounded {
            inner: datafusion::functions::string::repeat().as_ref().clone(),
            growth: Growth::Repeat,
        });
        Bounded { inner, growth }.estimate(v)
    }

    #[test]
    fn estimates_are_upper_bounds_of_what_the_functions_make() {
        let s = |t: &str| ScalarValue::Utf8(Some(t.into()));
        let i = |n: i64| ScalarValue::Int64(Some(n));
        assert_eq!(est(Growth::Repeat, &[s("ab"), i(1_000)]), 2_000);
        assert_eq!(est(Growth::Repeat, &[s("ab"), i(-5)]), 0);
        assert_eq!(est(Growth::Pad, &[s("ab"), i(10)]), 40);
        // "aaaa" with "a" → "bbb": 4 × 3 bytes at most (plus slack).
        assert!(est(Growth::Replace, &[s("aaaa"), s("a"), s("bbb")]) >= 12);
        // 'x*' matches at each of the 5 positions of "abcd".
        assert!(est(Growth::RegexpReplace, &[s("abcd"), s("x*"), s("zz"), s("g")]) >= 4 + 5 * 2);
        assert_eq!(est(Growth::Range, &[i(10)]), 11 * 8);
        assert_eq!(est(Growth::Range, &[i(1), i(1_000_000_001), i(1)]), 1_000_000_001 * 8);
        assert_eq!(est(Growth::Range, &[i(1), i(10), i(0)]), 0, "a zero step is range's own error");
        let day = ScalarValue::new_interval_mdn(0, 1, 0);
        let d = |n: i32| ScalarValue::Date32(Some(n));
        assert_eq!(est(Growth::Range, &[d(0), d(10), day]), 11 * 8, "ten days, a day apart");
        assert!(est(Growth::ArrayRepeat, &[i(1), i(1_000)]) >= 8_000);
        assert_eq!(est(Growth::Concat, &[s("ab"), s("cde"), ScalarValue::Utf8(None)]), 5);
        // concat_ws('--', 'a', 'b', 'c') is "a--b--c".
        assert_eq!(est(Growth::ConcatWs, &[s("--"), s("a"), s("b"), s("c")]), 7);
        // upper('ŉ') is "ʼN": 2 bytes become 3.
        assert!(est(Growth::Weighted(&[3]), &[s("ŉ")]) >= "ʼN".len() as u64);
        assert_eq!(est(Growth::Weighted(&[2]), &[s("abc"), s("hex")]), 6, "the encoding's name weighs nothing");
    }
}
