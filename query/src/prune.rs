//! Time-range extraction from filters, to skip whole segments and buffered
//! chunks before DataFusion looks inside them.

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

fn is_time_col(e: &Expr) -> Option<()> {
    match e {
        Expr::Column(c) if c.name == TIME_COLUMN => Some(()),
        Expr::Cast(c) => is_time_col(&c.expr),
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
    fn unknown_filters_allow_everything() {
        assert_eq!(time_range(&[col("host").eq(lit("a"))]), TimeRange::ALL);
        assert_eq!(time_range(&[col("ts").gt(ts(1)).or(col("ts").lt(ts(0)))]), TimeRange::ALL);
        let r = time_range(&[col("ts").lt(ts(5))]);
        assert!(r.overlaps(0, 4) && !r.overlaps(5, 9));
    }
}
