//! `avg`, `sum`, `min`, `max` and `count` that fold a run of rows of one
//! group before touching the group's state.
//!
//! Segments are sorted by series, then time, so the rows a grouped aggregate
//! sees come in long runs of one group: an hour of one host is 360 rows in a
//! row. DataFusion's grouped accumulators update the group's slot in memory
//! for every row, and each update waits for the one before it to be stored
//! and loaded again. In TSBS' double-groupby-all that one `addsd`/`movsd`
//! pair was 22 % of the server's CPU (`perf`).
//!
//! [`RunFolding`] wraps DataFusion's own function and changes only how a
//! batch enters the grouped accumulator: each run of equal group indices is
//! folded in registers into one value (its sum, count, minimum or maximum),
//! and DataFusion's accumulator receives one value per run. For `avg` and
//! `count` that value is a partial state (a run's sum and count) and goes in
//! through `merge_batch`; for `sum`, `min` and `max` the folded value is an
//! input like any other. Everything else (types, state, results, plans) is
//! DataFusion's.
//!
//! Results are the same, with one difference in kind: a float sum adds a
//! run's values together (in four interleaved partial sums when the run has
//! 16 rows or more) before adding them to the group's total, so its rounding
//! can differ in the last bits (as it already does between DataFusion's
//! partitions). A run of integers, dates or timestamps is folded for `min` and
//! `max` in their order; DataFusion's rule is kept for them.
//!
//! `min` and `max` of floats take a different accumulator: DataFusion's
//! grouped one keeps a new value when either is NaN, so its answer depends on
//! the order of the rows (the maximum of 6, NaN, 0, 1 was 1), while its
//! ungrouped `max` (Arrow's kernel), PostgreSQL and DuckDB order floats
//! totally, NaN above every number. Grouped float `min` and `max` here order
//! them the same way (`f64::total_cmp`: -0 below 0, NaN above infinity), so
//! `max(v) GROUP BY host` and `max(v) WHERE host = ...` agree.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowNativeTypeOp, AsArray, BooleanArray, Int64Array, PrimitiveArray, UInt64Array,
};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, FieldRef, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams, WindowFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, Expr, GroupsAccumulator, Operator,
    ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};

/// The functions wrapped, by their registered names.
const FOLDED: [(&str, Fold); 5] =
    [("avg", Fold::Avg), ("sum", Fold::Sum), ("min", Fold::Min), ("max", Fold::Max), ("count", Fold::Count)];

/// The wrapped `avg`, `sum`, `min`, `max` and `count`, made from the
/// functions `registered` returns (a session's built-in ones).
pub(crate) fn folding(registered: impl Fn(&str) -> Option<AggregateUDF>) -> Vec<AggregateUDF> {
    FOLDED
        .iter()
        .filter_map(|(name, fold)| {
            registered(name).map(|inner| AggregateUDF::new_from_impl(RunFolding { inner, fold: *fold }))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fold {
    Avg,
    Sum,
    Min,
    Max,
    Count,
}

/// One of DataFusion's aggregate functions whose grouped accumulator folds
/// runs (see the module's documentation); every other method is the inner
/// function's.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct RunFolding {
    inner: AggregateUDF,
    fold: Fold,
}

impl RunFolding {
    /// Whether a grouped accumulator made with `args` can take folded runs:
    /// one argument, no DISTINCT or ORDER BY, and types whose fold this
    /// module knows (and, for `avg` and `count`, DataFusion's partial state
    /// laid out as a run's fold is).
    fn folds(&self, args: &AccumulatorArgs) -> Result<bool> {
        if args.is_distinct || !args.order_bys.is_empty() || args.expr_fields.len() != 1 {
            return Ok(false);
        }
        let input = args.expr_fields[0].data_type();
        let output = args.return_field.data_type();
        let state = || -> Result<Vec<DataType>> {
            let fields = self.inner.inner().state_fields(StateFieldsArgs {
                name: args.name,
                input_fields: args.expr_fields,
                return_field: Arc::clone(&args.return_field),
                ordering_fields: &[],
                is_distinct: false,
            })?;
            Ok(fields.iter().map(|f| f.data_type().clone()).collect())
        };
        Ok(match self.fold {
            Fold::Avg => {
                input == &DataType::Float64
                    && output == &DataType::Float64
                    && state()? == [DataType::UInt64, DataType::Float64]
            }
            Fold::Count => state()? == [DataType::Int64],
            Fold::Sum => input == output && matches!(input, DataType::Int64 | DataType::UInt64 | DataType::Float64),
            Fold::Min | Fold::Max => input == output && folds_in_order(input),
        })
    }
}

/// The types `min` and `max` fold: those [`by_type`] dispatches, and the
/// floats [`fold_total`] takes.
fn folds_in_order(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Float32 | DataType::Float64 | DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
        )
}

impl AggregateUDFImpl for RunFolding {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().schema_name(params)
    }

    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().human_display(params)
    }

    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.inner().window_function_schema_name(params)
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.inner().display_name(params)
    }

    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.inner().window_function_display_name(params)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.inner().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.inner().is_nullable()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.inner().accumulator(acc_args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.inner().state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.inner().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        let folds = self.folds(&args)?;
        if folds && let Some(inner) = total_order(self.fold, args.return_field.data_type()) {
            return Ok(Box::new(FoldingAccumulator { inner, fold: self.fold }));
        }
        let inner = self.inner.inner().create_groups_accumulator(args)?;
        if !folds {
            return Ok(inner);
        }
        Ok(Box::new(FoldingAccumulator { inner, fold: self.fold }))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.inner().create_sliding_accumulator(args)
    }

    fn with_beneficial_ordering(self: Arc<Self>, beneficial: bool) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let fold = self.fold;
        Ok(Arc::clone(self.inner.inner()).with_beneficial_ordering(beneficial)?.map(|inner| {
            Arc::new(RunFolding { inner: AggregateUDF::new_from_shared_impl(inner), fold }) as Arc<dyn AggregateUDFImpl>
        }))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.inner.inner().simplify()
    }

    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.inner.inner().simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner.inner().reverse_expr()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner.inner().is_descending()
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.inner().value_from_stats(statistics_args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.inner().default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.inner().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.inner().supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }
}

/// A grouped `min` or `max` of floats in their total order (see the module's
/// documentation); `None` for other functions and types.
fn total_order(fold: Fold, t: &DataType) -> Option<Box<dyn GroupsAccumulator>> {
    use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;
    // Each group starts from the far end of the order (NaN with every bit
    // set, negative for `max`), which any value replaces.
    Some(match (fold, t) {
        (Fold::Max, DataType::Float64) => Box::new(
            PrimitiveGroupsAccumulator::<Float64Type, _>::new(t, |cur: &mut f64, new: f64| *cur = greatest(*cur, new))
                .with_starting_value(f64::from_bits(u64::MAX)),
        ),
        (Fold::Min, DataType::Float64) => Box::new(
            PrimitiveGroupsAccumulator::<Float64Type, _>::new(t, |cur: &mut f64, new: f64| *cur = least(*cur, new))
                .with_starting_value(f64::from_bits(u64::MAX >> 1)),
        ),
        (Fold::Max, DataType::Float32) => Box::new(
            PrimitiveGroupsAccumulator::<Float32Type, _>::new(t, |cur: &mut f32, new: f32| *cur = greatest(*cur, new))
                .with_starting_value(f32::from_bits(u32::MAX)),
        ),
        (Fold::Min, DataType::Float32) => Box::new(
            PrimitiveGroupsAccumulator::<Float32Type, _>::new(t, |cur: &mut f32, new: f32| *cur = least(*cur, new))
                .with_starting_value(f32::from_bits(u32::MAX >> 1)),
        ),
        _ => return None,
    })
}

/// A float type's total order (`total_cmp`).
trait Total: Copy {
    fn total(&self, other: &Self) -> Ordering;
}

impl Total for f64 {
    fn total(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Total for f32 {
    fn total(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// The greater of two floats in their total order.
fn greatest<N: Total>(cur: N, new: N) -> N {
    if new.total(&cur) == Ordering::Greater { new } else { cur }
}

/// The lesser of two floats in their total order.
fn least<N: Total>(cur: N, new: N) -> N {
    if new.total(&cur) == Ordering::Less { new } else { cur }
}

/// DataFusion's grouped accumulator, fed one value per run when a batch's
/// groups come in runs.
struct FoldingAccumulator {
    inner: Box<dyn GroupsAccumulator>,
    fold: Fold,
}

/// Whether `groups` looks like runs worth folding: in its first 256 rows, an
/// average run of more than 4 rows. A batch whose groups alternate row by row
/// goes to DataFusion's accumulator as it is.
fn in_runs(groups: &[usize]) -> bool {
    let sample = &groups[..groups.len().min(256)];
    if sample.len() < 16 {
        return false;
    }
    let changes = sample.windows(2).filter(|w| w[0] != w[1]).count();
    changes * 4 < sample.len()
}

/// The rows of `values` an aggregate takes: valid, and passing the FILTER
/// clause when there is one. `None` when every row is taken.
fn taken(values: &dyn Array, filter: Option<&BooleanArray>) -> Option<BooleanBuffer> {
    let filter = filter.map(|f| match f.nulls() {
        Some(n) => f.values() & n.inner(),
        None => f.values().clone(),
    });
    match (values.logical_nulls(), filter) {
        (None, None) => None,
        (Some(n), None) => Some(n.into_inner()),
        (None, Some(f)) => Some(f),
        (Some(n), Some(f)) => Some(n.inner() & &f),
    }
}

/// Each run's group, how many of its rows were taken, and the fold of their
/// values. A run with no row taken has a NULL fold: DataFusion's
/// accumulators take a batch without NULLs to mean that every group below
/// `total_num_groups` has a value, so a group whose rows are all NULL must
/// still be given as NULL, not left out.
struct Runs<N> {
    groups: Vec<usize>,
    counts: Vec<u64>,
    values: Vec<N>,
    /// Which folds are values, once a run had none taken.
    valid: Option<Vec<bool>>,
}

impl<N> Runs<N> {
    /// The folds' validity, for an array of them.
    fn nulls(&mut self) -> Option<NullBuffer> {
        self.valid.take().map(NullBuffer::from)
    }
}

/// Folds `values` run by run: a run whose rows are all taken with `whole`,
/// otherwise its taken values with `op`, from the first.
fn fold_runs<N: Copy + Default>(
    groups: &[usize],
    values: &[N],
    taken: Option<&BooleanBuffer>,
    op: impl Fn(N, N) -> N,
    whole: impl Fn(&[N]) -> N,
) -> Runs<N> {
    let mut out = Runs { groups: Vec::new(), counts: Vec::new(), values: Vec::new(), valid: None };
    let n = groups.len().min(values.len());
    let mut start = 0;
    while start < n {
        let group = groups[start];
        let mut end = start + 1;
        while end < n && groups[end] == group {
            end += 1;
        }
        let (mut acc, mut count) = (None, 0u64);
        match taken {
            None => {
                acc = Some(whole(&values[start..end]));
                count = (end - start) as u64;
            }
            Some(t) => {
                for (i, &v) in values.iter().enumerate().take(end).skip(start) {
                    if !t.value(i) {
                        continue;
                    }
                    acc = Some(acc.map_or(v, |a| op(a, v)));
                    count += 1;
                }
            }
        }
        if acc.is_none() && out.valid.is_none() {
            out.valid = Some(vec![true; out.values.len()]);
        }
        if let Some(valid) = &mut out.valid {
            valid.push(acc.is_some());
        }
        out.groups.push(group);
        out.counts.push(count);
        out.values.push(acc.unwrap_or_default());
        start = end;
    }
    out
}

/// `op` folded over a run (never empty) from its first value, one at a time.
fn in_order<N: Copy + Default>(run: &[N], op: impl Fn(N, N) -> N) -> N {
    run.iter().copied().reduce(op).unwrap_or_default()
}

/// The runs of a float column summed (for `avg` and `sum`); `None` for
/// another type.
fn float_runs(values: &dyn Array, groups: &[usize], taken: Option<&BooleanBuffer>) -> Option<Runs<f64>> {
    let array = values.as_primitive_opt::<Float64Type>()?;
    Some(fold_runs(groups, array.values(), taken, |a, b| a + b, float_sum))
}

/// Folded runs as an array of `values`' type, with each run's group.
fn folded_array<T: ArrowPrimitiveType>(mut runs: Runs<T::Native>, values: &dyn Array) -> (Vec<usize>, ArrayRef) {
    let nulls = runs.nulls();
    let folded = PrimitiveArray::<T>::new(runs.values.into(), nulls).with_data_type(values.data_type().clone());
    (runs.groups, Arc::new(folded))
}

/// The sum of a run of floats in four interleaved partial sums, so that
/// each addition does not wait for the one before; short runs one at a time.
fn float_sum(run: &[f64]) -> f64 {
    if run.len() < 16 {
        return run.iter().fold(0.0, |a, v| a + v);
    }
    let mut lanes = [0.0f64; 4];
    let chunks = run.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        lanes[0] += c[0];
        lanes[1] += c[1];
        lanes[2] += c[2];
        lanes[3] += c[3];
    }
    rest.iter().fold((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]), |a, v| a + v)
}

/// Each run's group and how many of its rows were taken (for `count`).
fn count_runs(groups: &[usize], taken: Option<&BooleanBuffer>) -> (Vec<usize>, Vec<i64>) {
    let (mut out_groups, mut counts) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < groups.len() {
        let group = groups[start];
        let mut end = start + 1;
        while end < groups.len() && groups[end] == group {
            end += 1;
        }
        let count = match taken {
            None => end - start,
            Some(t) => t.slice(start, end - start).count_set_bits(),
        };
        if count > 0 {
            out_groups.push(group);
            counts.push(count as i64);
        }
        start = end;
    }
    (out_groups, counts)
}

/// `max` as DataFusion's grouped `max` keeps it: the new value when it is
/// greater or either is NaN.
fn greater<N: PartialOrd>(cur: N, new: N) -> N {
    match new.partial_cmp(&cur) {
        Some(Ordering::Greater) | None => new,
        _ => cur,
    }
}

/// `min`, likewise.
fn less<N: PartialOrd>(cur: N, new: N) -> N {
    match new.partial_cmp(&cur) {
        Some(Ordering::Less) | None => new,
        _ => cur,
    }
}

/// Runs `$f::<T>($args)` with the Arrow type `T` of `$dt` (integers, dates
/// and timestamps: floats are summed by [`float_runs`] and ordered by
/// [`fold_total`]), or gives `$else`.
macro_rules! by_type {
    ($dt:expr, $f:ident, $else:expr, $($args:expr),*) => {
        match $dt {
            DataType::Int8 => $f::<Int8Type>($($args),*),
            DataType::Int16 => $f::<Int16Type>($($args),*),
            DataType::Int32 => $f::<Int32Type>($($args),*),
            DataType::Int64 => $f::<Int64Type>($($args),*),
            DataType::UInt8 => $f::<UInt8Type>($($args),*),
            DataType::UInt16 => $f::<UInt16Type>($($args),*),
            DataType::UInt32 => $f::<UInt32Type>($($args),*),
            DataType::UInt64 => $f::<UInt64Type>($($args),*),
            DataType::Date32 => $f::<Date32Type>($($args),*),
            DataType::Date64 => $f::<Date64Type>($($args),*),
            DataType::Timestamp(TimeUnit::Second, _) => $f::<TimestampSecondType>($($args),*),
            DataType::Timestamp(TimeUnit::Millisecond, _) => $f::<TimestampMillisecondType>($($args),*),
            DataType::Timestamp(TimeUnit::Microsecond, _) => $f::<TimestampMicrosecondType>($($args),*),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => $f::<TimestampNanosecondType>($($args),*),
            _ => $else,
        }
    };
}

/// `values`' runs folded for `fold` (`sum`, `min` or `max`), as an array of
/// `values`' type, with each run's group; `None` when not folded.
fn fold_as_input<T: ArrowPrimitiveType>(
    values: &dyn Array,
    groups: &[usize],
    taken: Option<&BooleanBuffer>,
    fold: Fold,
) -> Option<(Vec<usize>, ArrayRef)> {
    let raw = values.as_primitive_opt::<T>()?.values();
    let add = |a: T::Native, b: T::Native| a.add_wrapping(b);
    let runs = match fold {
        Fold::Sum => fold_runs(groups, raw, taken, add, |run| in_order(run, add)),
        Fold::Min => fold_runs(groups, raw, taken, less, |run| in_order(run, less)),
        Fold::Max => fold_runs(groups, raw, taken, greater, |run| in_order(run, greater)),
        Fold::Avg | Fold::Count => return None,
    };
    Some(folded_array::<T>(runs, values))
}

/// `values`' runs folded for float `min` or `max` in the total order (any
/// order of the values gives the same fold), with each run's group.
fn fold_total<T: ArrowPrimitiveType>(
    values: &dyn Array,
    groups: &[usize],
    taken: Option<&BooleanBuffer>,
    fold: Fold,
) -> Option<(Vec<usize>, ArrayRef)>
where
    T::Native: Total,
{
    let raw = values.as_primitive_opt::<T>()?.values();
    let runs = match fold {
        Fold::Min => fold_runs(groups, raw, taken, least, |run| in_order(run, least)),
        Fold::Max => fold_runs(groups, raw, taken, greatest, |run| in_order(run, greatest)),
        Fold::Avg | Fold::Sum | Fold::Count => return None,
    };
    Some(folded_array::<T>(runs, values))
}

impl FoldingAccumulator {
    /// Feeds `values` to the inner accumulator folded run by run; `false`
    /// when it was not folded (nothing fed).
    fn feed_folded(
        &mut self,
        values: &dyn Array,
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<bool> {
        let taken = taken(values, filter);
        match self.fold {
            Fold::Count => {
                let (groups, counts) = count_runs(groups, taken.as_ref());
                let counts: ArrayRef = Arc::new(Int64Array::from(counts));
                self.inner.merge_batch(&[counts], &groups, total_num_groups)?;
            }
            Fold::Avg => {
                let Some(mut runs) = float_runs(values, groups, taken.as_ref()) else { return Ok(false) };
                let nulls = runs.nulls();
                let counts: ArrayRef = Arc::new(UInt64Array::new(runs.counts.into(), nulls.clone()));
                let sums: ArrayRef = Arc::new(PrimitiveArray::<Float64Type>::new(runs.values.into(), nulls));
                self.inner.merge_batch(&[counts, sums], &runs.groups, total_num_groups)?;
            }
            Fold::Sum if values.data_type() == &DataType::Float64 => {
                let Some(runs) = float_runs(values, groups, taken.as_ref()) else { return Ok(false) };
                let (groups, sums) = folded_array::<Float64Type>(runs, values);
                self.inner.update_batch(&[sums], &groups, None, total_num_groups)?;
            }
            Fold::Min | Fold::Max if matches!(values.data_type(), DataType::Float64 | DataType::Float32) => {
                let folded = if values.data_type() == &DataType::Float64 {
                    fold_total::<Float64Type>(values, groups, taken.as_ref(), self.fold)
                } else {
                    fold_total::<Float32Type>(values, groups, taken.as_ref(), self.fold)
                };
                let Some((groups, folded)) = folded else { return Ok(false) };
                self.inner.update_batch(&[folded], &groups, None, total_num_groups)?;
            }
            Fold::Sum | Fold::Min | Fold::Max => {
                let folded =
                    by_type!(values.data_type(), fold_as_input, None, values, groups, taken.as_ref(), self.fold);
                let Some((groups, folded)) = folded else { return Ok(false) };
                self.inner.update_batch(&[folded], &groups, None, total_num_groups)?;
            }
        }
        Ok(true)
    }
}

impl GroupsAccumulator for FoldingAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if values.len() == 1
            && values[0].len() == group_indices.len()
            && in_runs(group_indices)
            && self.feed_folded(values[0].as_ref(), group_indices, opt_filter, total_num_groups)?
        {
            return Ok(());
        }
        self.inner.update_batch(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.inner.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.inner.merge_batch(values, group_indices, total_num_groups)
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};
    use datafusion::functions_aggregate::{average::avg_udaf, count::count_udaf, min_max, sum::sum_udaf};
    use datafusion::physical_expr::PhysicalExpr;
    use datafusion::physical_expr::expressions::Column;

    use super::*;

    /// A small deterministic generator (xorshift).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// DataFusion's grouped accumulator for `udaf` over one column of
    /// `input`, and the same wrapped by [`RunFolding`].
    fn pair(
        udaf: &AggregateUDF,
        fold: Fold,
        input: &DataType,
    ) -> (Box<dyn GroupsAccumulator>, Box<dyn GroupsAccumulator>) {
        let schema = Schema::new(vec![Field::new("v", input.clone(), true)]);
        let exprs: Vec<Arc<dyn PhysicalExpr>> = vec![Arc::new(Column::new("v", 0))];
        let fields = vec![Arc::new(Field::new("v", input.clone(), true))];
        let return_field = udaf.return_field(&fields).expect("a return field");
        let args = AccumulatorArgs {
            return_field,
            schema: &schema,
            ignore_nulls: false,
            order_bys: &[],
            is_reversed: false,
            name: "agg",
            is_distinct: false,
            exprs: &exprs,
            expr_fields: &fields,
        };
        let plain = udaf.create_groups_accumulator(args.clone()).expect("DataFusion's accumulator");
        let wrapped = RunFolding { inner: udaf.clone(), fold };
        let folding = wrapped.create_groups_accumulator(args).expect("the folding accumulator");
        assert!((folding.as_ref() as &dyn Any).is::<FoldingAccumulator>(), "{fold:?} over {input} is folded");
        (plain, folding)
    }

    /// Group indices in runs of 1 to `longest` rows over `groups` groups.
    fn runs(g: &mut Gen, rows: usize, groups: u64, longest: u64) -> Vec<usize> {
        let mut out = Vec::with_capacity(rows);
        while out.len() < rows {
            let group = g.below(groups) as usize;
            for _ in 0..1 + g.below(longest) {
                out.push(group);
            }
        }
        out.truncate(rows);
        out
    }

    /// Feeds both accumulators the same batches (some with NULLs, some with
    /// a FILTER clause, the number of groups growing) and asserts that they
    /// answer the same, value for value.
    fn agree(
        udaf: &AggregateUDF,
        fold: Fold,
        input: &DataType,
        value: impl Fn(&mut Gen) -> Option<ArrayValue>,
        seed: u64,
        longest: u64,
        new_groups: usize,
    ) {
        let (mut plain, mut folding) = pair(udaf, fold, input);
        let (mut plain_state, mut folding_state) = pair(udaf, fold, input);
        let mut g = Gen(seed);
        let mut total = 0;
        for batch in 0..12 {
            total += new_groups;
            let rows = 500 + g.below(3000) as usize;
            let longest = if batch % 4 == 3 { 1 } else { longest };
            let groups = runs(&mut g, rows, total as u64, longest);
            let values: Vec<Option<ArrayValue>> = (0..rows).map(|_| value(&mut g)).collect();
            let array = ArrayValue::array(values, input);
            let filter = (batch % 3 == 1).then(|| {
                BooleanArray::from(
                    (0..rows).map(|_| [Some(true), Some(false), None][g.below(3) as usize]).collect::<Vec<_>>(),
                )
            });
            for (p, f) in [(&mut plain, &mut folding), (&mut plain_state, &mut folding_state)] {
                p.update_batch(std::slice::from_ref(&array), &groups, filter.as_ref(), total).expect("plain");
                f.update_batch(std::slice::from_ref(&array), &groups, filter.as_ref(), total).expect("folded");
            }
        }
        let (a, b) = (plain.evaluate(EmitTo::All).expect("plain"), folding.evaluate(EmitTo::All).expect("folded"));
        assert_eq!(a.to_data(), b.to_data(), "{fold:?} over {input}: results");
        let (a, b) =
            (plain_state.state(EmitTo::All).expect("plain"), folding_state.state(EmitTo::All).expect("folded"));
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.to_data(), b.to_data(), "{fold:?} over {input}: partial state");
        }
    }

    /// A value of the test's input type.
    #[derive(Clone, Copy)]
    enum ArrayValue {
        F(f64),
        I(i64),
    }

    impl ArrayValue {
        fn array(values: Vec<Option<ArrayValue>>, input: &DataType) -> ArrayRef {
            match input {
                DataType::Float64 => Arc::new(Float64Array::from(
                    values
                        .iter()
                        .map(|v| v.map(|v| if let ArrayValue::F(f) = v { f } else { f64::NAN }))
                        .collect::<Vec<_>>(),
                )),
                _ => Arc::new(Int64Array::from(
                    values.iter().map(|v| v.map(|v| if let ArrayValue::I(i) = v { i } else { 0 })).collect::<Vec<_>>(),
                )),
            }
        }
    }

    /// Floats that are small integers add exactly in any order, so even
    /// `sum` and `avg` must agree bit for bit.
    fn small_float(g: &mut Gen) -> Option<ArrayValue> {
        (g.below(10) != 0).then(|| ArrayValue::F(g.below(2001) as f64 - 1000.0))
    }

    fn int(g: &mut Gen) -> Option<ArrayValue> {
        (g.below(10) != 0).then(|| ArrayValue::I(g.next() as i64 >> g.below(64)))
    }

    #[test]
    fn folded_runs_answer_as_datafusion_does() {
        let (avg, sum, count) = (avg_udaf(), sum_udaf(), count_udaf());
        let (min, max) = (min_max::min_udaf(), min_max::max_udaf());
        for seed in 1..6 {
            agree(&avg, Fold::Avg, &DataType::Float64, small_float, seed, 400, 5);
            agree(&sum, Fold::Sum, &DataType::Float64, small_float, seed, 400, 5);
            agree(&sum, Fold::Sum, &DataType::Int64, int, seed, 400, 5);
            agree(&min, Fold::Min, &DataType::Float64, small_float, seed, 400, 5);
            agree(&max, Fold::Max, &DataType::Float64, small_float, seed, 400, 5);
            agree(&min, Fold::Min, &DataType::Int64, int, seed, 400, 5);
            agree(&max, Fold::Max, &DataType::Int64, int, seed, 400, 5);
            agree(&count, Fold::Count, &DataType::Int64, int, seed, 400, 5);
            agree(&count, Fold::Count, &DataType::Float64, small_float, seed, 400, 5);
        }
    }

    /// Grouped float `min` and `max` order floats totally (NaN above
    /// infinity, -0 below 0), whatever the order of the rows and whether a
    /// batch is folded or not; checked against a reference.
    #[test]
    fn float_min_and_max_order_nan_and_signed_zeros_totally() {
        let odd = [f64::NAN, -0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, 1.5, -1.5];
        for (udaf, fold) in [(min_max::min_udaf(), Fold::Min), (min_max::max_udaf(), Fold::Max)] {
            for seed in 1..6 {
                let (_, mut folding) = pair(&udaf, fold, &DataType::Float64);
                let mut g = Gen(seed);
                let mut expected: Vec<Option<f64>> = Vec::new();
                let mut appeared = Vec::new();
                let mut total = 0;
                for batch in 0..12 {
                    total += 300;
                    expected.resize(total, None);
                    appeared.resize(total, false);
                    let rows = 500 + g.below(3000) as usize;
                    let longest = [8, 400, 1][batch % 3];
                    let groups = runs(&mut g, rows, total as u64, longest);
                    let values: Vec<Option<f64>> = (0..rows)
                        .map(|_| {
                            (g.below(20) != 0)
                                .then(|| if g.below(50) == 0 { odd[0] } else { odd[1 + g.below(6) as usize] })
                        })
                        .collect();
                    for (&group, v) in groups.iter().zip(&values) {
                        appeared[group] = true;
                        let Some(v) = *v else { continue };
                        let keep = |cur: f64| match fold {
                            Fold::Max => v.total_cmp(&cur).is_gt(),
                            _ => v.total_cmp(&cur).is_lt(),
                        };
                        if expected[group].is_none_or(keep) {
                            expected[group] = Some(v);
                        }
                    }
                    let array: ArrayRef = Arc::new(Float64Array::from(values));
                    folding.update_batch(&[array], &groups, None, total).expect("folded");
                }
                let answer = folding.evaluate(EmitTo::All).expect("evaluated");
                let answer = answer.as_primitive::<Float64Type>();
                assert_eq!(answer.len(), expected.len());
                // A group exists once a row of it came (as in an aggregate);
                // one whose rows were all NULL answers NULL.
                for (group, want) in expected.iter().enumerate().filter(|(g, _)| appeared[*g]) {
                    let got = answer.is_valid(group).then(|| answer.value(group));
                    assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{fold:?}, seed {seed}, group {group}");
                }
            }
        }
    }

    #[test]
    fn float_sums_fold_a_run_before_adding_it() {
        // The one difference in kind: 1e16 + 1 + 1 is 1e16 one at a time,
        // and 1e16 + 2 when the run's 1 + 1 is added first.
        let (mut plain, mut folding) = pair(&sum_udaf(), Fold::Sum, &DataType::Float64);
        let first: ArrayRef = Arc::new(Float64Array::from(vec![1e16; 16]));
        let second: ArrayRef = Arc::new(Float64Array::from(vec![1.0; 16]));
        for acc in [&mut plain, &mut folding] {
            acc.update_batch(&[Arc::clone(&first)], &[0; 16], None, 1).expect("first batch");
            acc.update_batch(&[Arc::clone(&second)], &[0; 16], None, 1).expect("second batch");
        }
        let sum = |acc: &mut Box<dyn GroupsAccumulator>| {
            acc.evaluate(EmitTo::All).expect("a sum").as_primitive::<Float64Type>().value(0)
        };
        assert_eq!(sum(&mut plain), 16e16);
        assert_eq!(sum(&mut folding), 16e16 + 16.0);
    }

    #[test]
    fn a_run_of_floats_sums_to_its_total_at_every_length() {
        for len in 0..70 {
            let run: Vec<f64> = (0..len).map(|i| (i * 7 % 13) as f64 - 6.0).collect();
            let exact: i64 = (0..len).map(|i| i * 7 % 13 - 6).sum();
            assert_eq!(float_sum(&run), exact as f64, "{len} values");
        }
    }

    #[test]
    fn only_runs_are_folded() {
        assert!(in_runs(&[0; 100]));
        assert!(in_runs(&(0..1000).map(|i| i / 10).collect::<Vec<_>>()));
        assert!(!in_runs(&(0..1000).map(|i| i % 7).collect::<Vec<_>>()));
        assert!(!in_runs(&[0; 8]), "a batch too short to sample");
    }

    #[test]
    fn distinct_and_unknown_types_are_not_folded() {
        let udaf = sum_udaf();
        let wrapped = RunFolding { inner: (*udaf).clone(), fold: Fold::Sum };
        let schema = Schema::new(vec![Field::new("v", DataType::Int64, true)]);
        let exprs: Vec<Arc<dyn PhysicalExpr>> = vec![Arc::new(Column::new("v", 0))];
        let fields = vec![Arc::new(Field::new("v", DataType::Int64, true))];
        let args = AccumulatorArgs {
            return_field: udaf.return_field(&fields).expect("a return field"),
            schema: &schema,
            ignore_nulls: false,
            order_bys: &[],
            is_reversed: false,
            name: "agg",
            is_distinct: true,
            exprs: &exprs,
            expr_fields: &fields,
        };
        assert!(!wrapped.folds(&args).expect("checked"));
        let decimal = vec![Arc::new(Field::new("v", DataType::Decimal128(18, 3), true))];
        let args = AccumulatorArgs {
            is_distinct: false,
            return_field: udaf.return_field(&decimal).expect("a return field"),
            expr_fields: &decimal,
            ..args
        };
        assert!(!wrapped.folds(&args).expect("checked"));
    }
}
