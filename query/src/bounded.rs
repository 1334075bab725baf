//! Functions whose result can be far larger than their arguments:
//! `repeat('x', 2000000000)` is a 2 GB string from a 30-byte statement,
//! `range(1, 1000000000)` an 8 GB list. The memory pool does not see the
//! values scalar functions make, and constant arguments are evaluated while
//! planning, so one such statement could take the server's memory. Each of
//! these functions is registered in a wrapper that works out, from its
//! arguments and before calling it, how large each result would be, and
//! refuses a value over [`MAX_VALUE_BYTES`] or a batch over
//! [`MAX_BATCH_BYTES`] with an error naming the function and the limit.

use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The largest value one of these functions may make.
pub const MAX_VALUE_BYTES: u64 = 16 << 20;
/// The most one call (a batch of rows) may make.
pub const MAX_BATCH_BYTES: u64 = 64 << 20;

/// The most calls of these functions one statement may make (after its
/// common table expressions are expanded): with the bound on each, at most
/// `MAX_CALLS × MAX_BATCH_BYTES` are made per batch of rows.
pub const MAX_CALLS: usize = 16;

/// Whether `name` is one of the bounded functions.
pub fn grows(name: &str) -> bool {
    WRAPPED.iter().any(|(n, _)| *n == name)
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
}

/// The functions that are wrapped, by their DataFusion names.
/// (Without DataFusion's nested-types feature, which Tocsin's build
/// leaves out, the list functions are not there and nothing is wrapped for
/// them.)
const WRAPPED: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
    ("array_resize", Growth::Resize),
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
        let mut total: u64 = 0;
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
            if bytes > MAX_VALUE_BYTES {
                tocsin_storage::refusals::refused("max_value_bytes");
                return exec_err!(
                    "{}() would make a value of about {bytes} bytes; a value may be at most {MAX_VALUE_BYTES} bytes (16 MiB)",
                    self.inner.name()
                );
            }
            total = total.saturating_add(bytes);
            if total > MAX_BATCH_BYTES {
                tocsin_storage::refusals::refused("max_value_bytes");
                return exec_err!(
                    "{}() would make more than {MAX_BATCH_BYTES} bytes (64 MiB) for one batch of {rows} rows",
                    self.inner.name()
                );
            }
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
    }
}
