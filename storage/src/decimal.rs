//! Float columns stored as scaled integers under a producer's rounding rule.
//!
//! [`crate::segment`] stores a Float64 column as DECIMAL(18, s) when every
//! value is the f64 nearest to `m / 10^s`: Arrow's cast reads it back bit
//! for bit, and any Parquet reader sees the exact decimals. Exporters often
//! compute their floats another way, and then most values are one ulp off
//! the nearest decimal, so that rule fails for the whole column and it
//! stays DOUBLE at four to eight bytes a sample. Measured on node_exporter
//! (docs/benchmarks.md): disk times are `ticks * 0.001` (28432 * 0.001 is
//! 28.432000000000002, not 28.432), pressure stall times are
//! `microseconds / 1000 / 1000`. Each such column is the integers `m` under
//! a fixed rule, and is stored as those integers with the rule named in
//! the column's `tocsin.stored_as` mark:
//!
//! | mark | value |
//! |---|---|
//! | `decimal-mul` | `m as f64 * 10^-s`, the factor being the f64 nearest to 10^-s |
//! | `decimal-div1000` | `m as f64 / 1000.0`, divided `s / 3` times |
//!
//! A column takes a rule only if every value comes back bit for bit
//! (checked while encoding). Outside readers see DECIMAL(18, s), that is
//! `m / 10^s` exactly, which differs from Tocsin's value by the producer's
//! rounding (at most an ulp or two); Tocsin reads the stored f64s through
//! [`decode`], in compaction ([`crate::batch::adapt_batch`]) and in scans
//! (the query crate's expression adapter).

use arrow::array::{Array, ArrayRef, Decimal64Array, Float64Array};
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;

use crate::segment::STORED_AS_KEY;

/// Largest |m| stored: integers up to 2^53 convert to f64 exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// 10^-s as the f64 nearest to it, for s in 0..=9 (what a program gets from
/// the literal `0.001`).
const NEG_POW10: [f64; 10] = [1.0, 0.1, 0.01, 0.001, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9];

/// How the integers of a DECIMAL(18, s) column give back the f64s written
/// (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecimalRule {
    /// `m as f64 * 10^-s` (`decimal-mul`).
    Product,
    /// `m as f64 / 1000.0`, `s / 3` times (`decimal-div1000`).
    Thousandths,
}

impl DecimalRule {
    /// The `tocsin.stored_as` mark of a column stored under this rule.
    pub fn mark(self) -> &'static str {
        match self {
            DecimalRule::Product => "decimal-mul",
            DecimalRule::Thousandths => "decimal-div1000",
        }
    }

    /// The rule a stored column's field names, with its scale, if the field
    /// is a DECIMAL(18, s) stored under one of these rules.
    pub fn of_field(field: &Field) -> Option<(DecimalRule, i8)> {
        let rule = match field.metadata().get(STORED_AS_KEY).map(String::as_str) {
            Some("decimal-mul") => DecimalRule::Product,
            Some("decimal-div1000") => DecimalRule::Thousandths,
            _ => return None,
        };
        match field.data_type() {
            DataType::Decimal64(_, s) if rule.scales().contains(s) => Some((rule, *s)),
            _ => None,
        }
    }

    /// Like [`DecimalRule::of_field`], but a mark this build does not know
    /// (a newer build's rule) or on a column it cannot be (another type,
    /// another scale) is an error naming the column and the mark: reading
    /// such a column as plain numbers would give wrong values silently.
    pub fn check_field(field: &Field) -> Result<Option<(DecimalRule, i8)>, String> {
        let Some(mark) = field.metadata().get(STORED_AS_KEY) else { return Ok(None) };
        // Floats kept as integers or as plain decimals (`m / 10^s`) read
        // back through Arrow's cast.
        match (mark.as_str(), field.data_type()) {
            ("int64", DataType::Int64) | ("decimal", DataType::Decimal64(..)) => return Ok(None),
            _ => {}
        }
        Self::of_field(field).map(Some).ok_or_else(|| {
            format!(
                "column {} is marked {STORED_AS_KEY}={mark} on type {}, which this build does not read \
                 (written by a newer Tocsin, or damaged)",
                field.name(),
                field.data_type()
            )
        })
    }

    /// The scales this rule is tried at, smallest first.
    fn scales(self) -> &'static [i8] {
        match self {
            DecimalRule::Product => &[1, 2, 3, 4, 5, 6, 7, 8, 9],
            DecimalRule::Thousandths => &[6, 9],
        }
    }

    /// The f64 that integer `m` stands for at scale `s`.
    pub fn decode(self, m: i64, s: i8) -> f64 {
        let x = m as f64;
        match self {
            DecimalRule::Product => x * NEG_POW10[s.clamp(0, 9) as usize],
            DecimalRule::Thousandths => (0..s / 3).fold(x, |x, _| x / 1000.0),
        }
    }

    /// The integer that stands for `v` at scale `s`, if decoding it gives
    /// `v` bit for bit.
    fn encode(self, v: f64, s: i8) -> Option<i64> {
        if !v.is_finite() || (v == 0.0 && v.is_sign_negative()) {
            return None;
        }
        let m = (v * 10f64.powi(i32::from(s))).round();
        if m.abs() > EXACT {
            return None;
        }
        let m = m as i64;
        (self.decode(m, s).to_bits() == v.to_bits()).then_some(m)
    }
}

/// `column` as DECIMAL(18, s) integers under the first rule and scale at
/// which every value comes back bit for bit, if any. A column that is all
/// NULL has none. A rule or scale that does not fit stops at the first
/// value it fails.
pub(crate) fn store(column: &Float64Array) -> Result<Option<(DecimalRule, i8, ArrayRef)>, ArrowError> {
    if column.null_count() == column.len() {
        return Ok(None);
    }
    for rule in [DecimalRule::Product, DecimalRule::Thousandths] {
        for &s in rule.scales() {
            if let Some(stored) = encode(column, rule, s)? {
                return Ok(Some((rule, s, stored)));
            }
        }
    }
    Ok(None)
}

/// `column` as DECIMAL(18, `s`) integers under `rule`, or `None` if a value
/// does not come back exactly.
fn encode(column: &Float64Array, rule: DecimalRule, s: i8) -> Result<Option<ArrayRef>, ArrowError> {
    let mut out = Vec::new();
    for v in column.iter() {
        match v {
            None => out.push(None),
            Some(v) => match rule.encode(v, s) {
                Some(m) => out.push(Some(m)),
                None => return Ok(None),
            },
        }
    }
    let array = Decimal64Array::from(out).with_precision_and_scale(18, s)?;
    Ok(Some(std::sync::Arc::new(array)))
}

/// The f64s a column stored under `rule` at scale `s` stands for.
pub fn decode(column: &Decimal64Array, rule: DecimalRule, s: i8) -> Float64Array {
    column.unary(|m| rule.decode(m, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(v: &[f64]) -> Option<(DecimalRule, i8)> {
        store(&Float64Array::from(v.to_vec())).expect("store").map(|(rule, s, _)| (rule, s))
    }

    #[test]
    fn producer_rules_are_found_where_the_nearest_decimal_is_not() {
        // node_exporter's disk times: milliseconds times 0.001.
        let disk: Vec<f64> = [28432i64, 28433, 28436, 619, 0].iter().map(|&t| t as f64 * 0.001).collect();
        assert_ne!(disk[0], 28.432, "the product is not the nearest decimal");
        assert_eq!(of(&disk), Some((DecimalRule::Product, 3)));
        // Pressure stall times: microseconds / 1000 / 1000.
        let psi: Vec<f64> =
            [45701450i64, 45729214, 5924253, 7014792].iter().map(|&u| u as f64 / 1000.0 / 1000.0).collect();
        assert!(psi.iter().any(|&v| v != (v * 1e6).round() / 1e6), "not all nearest decimals");
        assert_eq!(of(&psi), Some((DecimalRule::Thousandths, 6)));
        // Full-precision values have no rule.
        assert_eq!(of(&[std::f64::consts::PI, 1.0]), None);
        assert_eq!(of(&[1796442161.2776842]), None, "nanosecond timestamps in seconds exceed 2^53 at scale 9");
        assert_eq!(of(&[1.5, -0.0]), None, "-0.0 would come back as 0.0");
        assert_eq!(of(&[1.5, f64::NAN]), None);
        assert_eq!(of(&[]), None);
    }

    #[test]
    fn every_value_comes_back_bit_for_bit() {
        let mut values: Vec<Option<f64>> = (0..10_000i64).map(|t| Some((t * 7919 % 100_003) as f64 * 0.001)).collect();
        values[17] = None;
        let column = Float64Array::from(values.clone());
        let (rule, s, stored) = store(&column).expect("store").expect("a rule");
        let stored = stored.as_any().downcast_ref::<Decimal64Array>().expect("decimal");
        assert_eq!(stored.data_type(), &DataType::Decimal64(18, s));
        let back = decode(stored, rule, s);
        assert_eq!(back.len(), values.len());
        for (i, v) in values.iter().enumerate() {
            assert_eq!(back.is_valid(i), v.is_some(), "null at {i}");
            if let Some(v) = v {
                assert_eq!(back.value(i).to_bits(), v.to_bits(), "row {i}");
            }
        }
        // A value that the rule does not give back refuses the column.
        let mut other = values;
        other.push(Some(0.1 + 0.2 + 1e-9));
        assert!(encode(&Float64Array::from(other), rule, s).expect("encode").is_none());
    }

    #[test]
    fn the_mark_names_rule_and_scale() {
        let field = |mark: &str, t: DataType| {
            Field::new("v", t, true).with_metadata([(STORED_AS_KEY.to_string(), mark.to_string())].into())
        };
        assert_eq!(
            DecimalRule::of_field(&field("decimal-mul", DataType::Decimal64(18, 3))),
            Some((DecimalRule::Product, 3))
        );
        assert_eq!(
            DecimalRule::of_field(&field("decimal-div1000", DataType::Decimal64(18, 6))),
            Some((DecimalRule::Thousandths, 6))
        );
        assert_eq!(DecimalRule::of_field(&field("decimal-div1000", DataType::Decimal64(18, 4))), None);
        assert_eq!(DecimalRule::of_field(&field("decimal", DataType::Decimal64(18, 3))), None);
        assert_eq!(DecimalRule::of_field(&field("decimal-mul", DataType::Float64)), None);
        // Read as plain numbers, these would give other values than were
        // written: reading them is an error naming column and mark.
        for (mark, t) in [
            ("decimal-div1000", DataType::Decimal64(18, 4)),
            ("decimal-new", DataType::Decimal64(18, 3)),
            ("decimal-mul", DataType::Float64),
        ] {
            let err = DecimalRule::check_field(&field(mark, t)).expect_err(mark);
            assert!(err.contains("column v") && err.contains(mark), "{err}");
        }
        for (mark, t) in [("int64", DataType::Int64), ("decimal", DataType::Decimal64(18, 3))] {
            assert_eq!(DecimalRule::check_field(&field(mark, t)), Ok(None), "{mark}");
        }
        assert_eq!(DecimalRule::check_field(&field("int64", DataType::Float64)).map_err(|_| ()), Err(()));
        assert_eq!(DecimalRule::check_field(&Field::new("v", DataType::Decimal64(18, 3), true)), Ok(None));
        assert_eq!(
            DecimalRule::check_field(&field("decimal-mul", DataType::Decimal64(18, 3))),
            Ok(Some((DecimalRule::Product, 3)))
        );
        // Compaction (`adapt_batch`) refuses such a column too.
        let stored = Decimal64Array::from(vec![1500i64]).with_precision_and_scale(18, 3).expect("decimal");
        let schema =
            std::sync::Arc::new(arrow::datatypes::Schema::new(vec![field("decimal-new", DataType::Decimal64(18, 3))]));
        let batch = arrow::array::RecordBatch::try_new(schema, vec![std::sync::Arc::new(stored)]).expect("batch");
        let target = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let err = crate::batch::adapt_batch(&batch, &target).expect_err("unknown mark");
        assert!(err.to_string().contains("decimal-new"), "{err}");
    }
}
