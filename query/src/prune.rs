//! Time ranges and tag values from filters, to skip whole segments,
//! buffered chunks and row groups before DataFusion looks inside them.

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;
use tocsin_storage::TIME_COLUMN;

/// An inclusive time range in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeRange {
    pub(crate) lo: i64,
    pub(crate) hi: i64,
}

impl TimeRange {
    pub(crate) const ALL: TimeRange = TimeRange { lo: i64::MIN, hi: i64::MAX };

    pub(crate) fn overlaps(&self, min: i64, max: i64) -> bool {
        min <= self.hi && max >= self.lo
    }

    fn intersect(self, o: TimeRange) -> TimeRange {
        TimeRange { lo: self.lo.max(o.lo), hi: self.hi.min(o.hi) }
    }
}

/// The time range that all `filters` (ANDed) allow; filters it does not
/// understand allow everything.
pub(crate) fn time_range(filters: &[Expr]) -> TimeRange {
    filters.iter().fold(TimeRange::ALL, |r, f| r.intersect(expr_range(f)))
}

fn expr_range(e: &Expr) -> TimeRange {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            expr_range(left).intersect(expr_range(right))
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if let (Some(()), Some(v)) = (is_time_col(left), literal_ns(right)) {
                compare(*op, v)
            } else if let (Some(v), Some(())) = (literal_ns(left), is_time_col(right)) {
                op.swap().map(|op| compare(op, v)).unwrap_or(TimeRange::ALL)
            } else {
                TimeRange::ALL
            }
        }
        Expr::Between(b) if !b.negated && is_time_col(&b.expr).is_some() => {
            match (literal_ns(&b.low), literal_ns(&b.high)) {
                (Some(lo), Some(hi)) => TimeRange { lo, hi },
                _ => TimeRange::ALL,
            }
        }
        _ => TimeRange::ALL,
    }
}

fn compare(op: Operator, v: i64) -> TimeRange {
    match op {
        Operator::Eq => TimeRange { lo: v, hi: v },
        Operator::Gt => TimeRange { lo: v.saturating_add(1), hi: i64::MAX },
        Operator::GtEq => TimeRange { lo: v, hi: i64::MAX },
        Operator::Lt => TimeRange { lo: i64::MIN, hi: v.saturating_sub(1) },
        Operator::LtEq => TimeRange { lo: i64::MIN, hi: v },
        _ => TimeRange::ALL,
    }
}

/// The time column, bare or cast to another nanosecond timestamp (a time
/// zone changes no value). A cast to a coarser unit is not: it rounds, so
/// `CAST(ts AS TIMESTAMP(0)) = S` holds for a whole second of `ts`, not
/// for `S` alone.
fn is_time_col(e: &Expr) -> Option<()> {
    match e {
        Expr::Column(c) if c.name == TIME_COLUMN => Some(()),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(TimeUnit::Nanosecond, _)) => {
            is_time_col(&c.expr)
        }
        _ => None,
    }
}

/// A timestamp literal as nanoseconds. Coarser units are exact in ns (within
/// range), so comparisons keep their meaning.
fn literal_ns(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => x.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000_000),
        _ => None,
    }
}

/// The values that `filters` (ANDed) allow for a column, for each column
/// compared with `=` or `IN` against text constants: `host = 'a'` gives
/// `("host", ["a"])`. Filters of any other form are left out (they allow
/// everything here); a column restricted twice appears twice.
pub(crate) fn text_values(filters: &[Expr]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for f in filters {
        collect_text_values(f, &mut out);
    }
    out
}

fn collect_text_values(e: &Expr, out: &mut Vec<(String, Vec<String>)>) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            collect_text_values(left, out);
            collect_text_values(right, out);
        }
        _ => out.extend(one_of(e)),
    }
}

/// The column and values of `column = 'v'`, `column IN ('v', ...)` and
/// disjunctions of those on one column (which is what DataFusion makes of
/// short IN lists).
fn one_of(e: &Expr) -> Option<(String, Vec<String>)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), v) | (v, Expr::Column(c)) => Some((c.name.clone(), vec![text_literal(v)?])),
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let (column, mut values) = one_of(left)?;
            let (other, more) = one_of(right)?;
            (column == other).then(|| {
                values.extend(more);
                (column, values)
            })
        }
        Expr::InList(l) if !l.negated => match l.expr.as_ref() {
            Expr::Column(c) => Some((c.name.clone(), l.list.iter().map(text_literal).collect::<Option<_>>()?)),
            _ => None,
        },
        _ => None,
    }
}

/// A text constant (of any string type, dictionary-encoded or not).
fn text_literal(e: &Expr) -> Option<String> {
    fn scalar(v: &ScalarValue) -> Option<String> {
        match v {
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                Some(s.clone())
            }
            ScalarValue::Dictionary(_, inner) => scalar(inner),
            _ => None,
        }
    }
    match e {
        Expr::Literal(v, _) => scalar(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())))
    }

    #[test]
    fn ranges_from_comparisons_and_between() {
        assert_eq!(time_range(&[col("ts").gt(ts(10))]), TimeRange { lo: 11, hi: i64::MAX });
        assert_eq!(time_range(&[col("ts").gt_eq(ts(10)), col("ts").lt(ts(20))]), TimeRange { lo: 10, hi: 19 });
        assert_eq!(time_range(&[ts(10).lt_eq(col("ts"))]), TimeRange { lo: 10, hi: i64::MAX });
        assert_eq!(time_range(&[col("ts").between(ts(5), ts(7))]), TimeRange { lo: 5, hi: 7 });
        assert_eq!(time_range(&[col("ts").gt(ts(1)).and(col("ts").lt_eq(ts(3)))]), TimeRange { lo: 2, hi: 3 });
    }

    #[test]
    fn text_values_from_equalities_and_in_lists() {
        let dict = |v: &str| lit(ScalarValue::Dictionary(Box::new(DataType::Int32), Box::new(ScalarValue::from(v))));
        let filters = [
            col("host").eq(lit("a")).and(lit("b").eq(col("dc"))),
            col("rack").in_list(vec![lit("r1"), dict("r2")], false),
            col("ts").gt(ts(1)),
            col("os").eq(lit("x")).or(lit("y").eq(col("os")).or(col("os").in_list(vec![lit("z")], false))),
        ];
        assert_eq!(
            text_values(&filters),
            vec![
                ("host".to_string(), vec!["a".to_string()]),
                ("dc".to_string(), vec!["b".to_string()]),
                ("rack".to_string(), vec!["r1".to_string(), "r2".to_string()]),
                ("os".to_string(), vec!["x".to_string(), "y".to_string(), "z".to_string()]),
            ]
        );
        // Negations, disjunctions over two columns or other comparisons,
        // non-text constants and expressions of a column restrict nothing.
        let none = [
            col("host").in_list(vec![lit("a")], true),
            col("host").eq(lit("a")).or(col("dc").eq(lit("b"))),
            col("host").eq(lit("a")).or(col("host").gt(lit("b"))),
            col("n").eq(lit(3i64)),
            datafusion::functions::expr_fn::lower(col("host")).eq(lit("a")),
            col("host").not_eq(lit("a")),
        ];
        assert_eq!(text_values(&none), vec![]);
    }

    #[test]
    fn a_cast_to_a_coarser_unit_allows_everything() {
        use datafusion::logical_expr::cast;
        let secs = |e: Expr| cast(e, DataType::Timestamp(TimeUnit::Second, None));
        let s2 = lit(ScalarValue::TimestampSecond(Some(2), None));
        // Rows of 2.0 to 2.999... s match `= 2 s`: no narrower range holds.
        assert_eq!(time_range(&[secs(col("ts")).eq(s2.clone())]), TimeRange::ALL);
        assert_eq!(time_range(&[secs(col("ts")).lt_eq(s2.clone())]), TimeRange::ALL);
        assert_eq!(time_range(&[secs(col("ts")).between(s2.clone(), s2)]), TimeRange::ALL);
        // Another time zone in nanoseconds is the same instant.
        let utc = cast(col("ts"), DataType::Timestamp(TimeUnit::Nanosecond, Some("+02:00".into())));
        assert_eq!(time_range(&[utc.gt_eq(ts(10))]), TimeRange { lo: 10, hi: i64::MAX });
    }

    #[test]
    fn unknown_filters_allow_everything() {
        assert_eq!(time_range(&[col("host").eq(lit("a"))]), TimeRange::ALL);
        assert_eq!(time_range(&[col("ts").gt(ts(1)).or(col("ts").lt(ts(0)))]), TimeRange::ALL);
        let r = time_range(&[col("ts").lt(ts(5))]);
        assert!(r.overlaps(0, 4) && !r.overlaps(5, 9));
    }
}
