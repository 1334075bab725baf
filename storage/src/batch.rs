//! Conversions between the write shape and Arrow record batches.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Decimal64Array, DictionaryArray, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, RecordBatchOptions, StringBuilder, TimestampNanosecondArray, UInt64Builder, new_null_array,
};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use arrow::error::ArrowError;

use crate::schema::{TIME_COLUMN, TIME_ZONE};
use crate::write::{FieldValues, SeriesBlock};

/// Builds one record batch with `schema` from validated blocks. Columns of the
/// schema that the blocks do not carry are NULL.
///
/// Tags are dictionary arrays whose keys point at one dictionary entry per
/// block: a series' tag values are stored once, however many rows it has.
pub(crate) fn blocks_to_batch(schema: &SchemaRef, blocks: &[SeriesBlock]) -> Result<RecordBatch, ArrowError> {
    let rows: usize = blocks.iter().map(SeriesBlock::rows).sum();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name();
        let col: ArrayRef = if name == TIME_COLUMN {
            let mut ts = Vec::with_capacity(rows);
            for b in blocks {
                ts.extend_from_slice(&b.timestamps);
            }
            Arc::new(TimestampNanosecondArray::from(ts).with_timezone(TIME_ZONE))
        } else if let DataType::Dictionary(_, _) = field.data_type() {
            // A block without this tag gets NULL keys (not a NULL value in
            // the dictionary), so that every kernel sees the NULL.
            // Sized to fit: the buffer holds a chunk per write and table,
            // often of a row or two (a remote_write request holds a few
            // samples of each of hundreds of metrics), and a builder's
            // default capacity (1,024 values, 5 KiB) made each tag column
            // of such a chunk 5 KiB; the write buffer then reached its
            // persist size every 80 s under one Prometheus scraping
            // node_exporter every second.
            let tags: Vec<Option<&str>> =
                blocks.iter().map(|b| b.tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())).collect();
            let bytes = tags.iter().flatten().map(|v| v.len()).sum();
            let mut keys = Int32Builder::with_capacity(rows);
            let mut values = StringBuilder::with_capacity(tags.iter().flatten().count(), bytes);
            let mut next = 0i32;
            for (b, tag) in blocks.iter().zip(&tags) {
                match tag {
                    Some(v) => {
                        values.append_value(v);
                        keys.append_value_n(next, b.rows());
                        next += 1;
                    }
                    None => keys.append_nulls(b.rows()),
                }
            }
            let dict = DictionaryArray::<Int32Type>::try_new(keys.finish(), Arc::new(values.finish()))?;
            Arc::new(dict)
        } else {
            field_column(name, field.data_type(), blocks, rows)?
        };
        columns.push(col);
    }
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

fn field_column(name: &str, dt: &DataType, blocks: &[SeriesBlock], rows: usize) -> Result<ArrayRef, ArrowError> {
    macro_rules! build {
        ($builder:ty, $variant:ident, $append:expr) => {{
            let mut b = <$builder>::with_capacity(rows);
            for block in blocks {
                match block.fields.iter().find(|f| f.name == name) {
                    Some(f) => match (&f.values, &f.validity) {
                        (FieldValues::$variant(v), None) => $append(&mut b, v),
                        (FieldValues::$variant(v), Some(valid)) => {
                            for (x, ok) in v.iter().zip(valid) {
                                if *ok { b.append_value(x.clone()) } else { b.append_null() }
                            }
                        }
                        _ => {
                            return Err(ArrowError::SchemaError(format!(
                                "field {name:?} does not have type {dt} in this write"
                            )));
                        }
                    },
                    None => b.append_nulls(block.rows()),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match dt {
        DataType::Float64 => build!(Float64Builder, F64, |b: &mut Float64Builder, v: &Vec<f64>| b.append_slice(v)),
        DataType::Int64 => build!(Int64Builder, I64, |b: &mut Int64Builder, v: &Vec<i64>| b.append_slice(v)),
        DataType::UInt64 => build!(UInt64Builder, U64, |b: &mut UInt64Builder, v: &Vec<u64>| b.append_slice(v)),
        DataType::Boolean => build!(BooleanBuilder, Bool, |b: &mut BooleanBuilder, v: &Vec<bool>| b.append_slice(v)),
        DataType::Utf8 => {
            let bytes: usize = blocks
                .iter()
                .flat_map(|b| b.fields.iter().filter(|f| f.name == name))
                .map(|f| match &f.values {
                    FieldValues::Str(v) => v.iter().map(String::len).sum(),
                    _ => 0,
                })
                .sum();
            let mut b = StringBuilder::with_capacity(rows, bytes);
            for block in blocks {
                match block.fields.iter().find(|f| f.name == name) {
                    Some(f) => match (&f.values, &f.validity) {
                        (FieldValues::Str(v), validity) => {
                            for (i, x) in v.iter().enumerate() {
                                if validity.as_ref().is_none_or(|valid| valid[i]) {
                                    b.append_value(x)
                                } else {
                                    b.append_null()
                                }
                            }
                        }
                        _ => {
                            return Err(ArrowError::SchemaError(format!(
                                "field {name:?} does not have type {dt} in this write"
                            )));
                        }
                    },
                    None => (0..block.rows()).for_each(|_| b.append_null()),
                }
            }
            Arc::new(b.finish())
        }
        other => return Err(ArrowError::SchemaError(format!("unsupported field type {other} for {name:?}"))),
    })
}

/// Reshapes `batch` to `target`: columns are matched by name, columns the
/// batch lacks (added to the table after it was written) become NULL, and a
/// column stored with another type (integral floats kept as Int64 in a
/// segment) is cast to the table's type, or decoded under the rule it was
/// stored with (see [`crate::decimal`]).
pub fn adapt_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch.clone());
    }
    let columns = target
        .fields()
        .iter()
        .map(|f| match batch.schema().index_of(f.name()) {
            Ok(i) if batch.column(i).data_type() == f.data_type() => Ok(Arc::clone(batch.column(i))),
            Ok(i) => {
                let column = batch.column(i);
                let stored = crate::decimal::DecimalRule::check_field(batch.schema_ref().field(i))
                    .map_err(ArrowError::InvalidArgumentError)?;
                match (stored, column.as_any().downcast_ref::<Decimal64Array>()) {
                    (Some((rule, s)), Some(d)) if f.data_type() == &DataType::Float64 => {
                        Ok(Arc::new(crate::decimal::decode(d, rule, s)) as ArrayRef)
                    }
                    _ => arrow::compute::cast(column, f.data_type()),
                }
            }
            Err(_) => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(target),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// Approximate memory held by a batch, for buffer limits.
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.get_array_memory_size()).sum()
}

/// Smallest and largest timestamp of a batch built by [`blocks_to_batch`].
pub(crate) fn ts_range(blocks: &[SeriesBlock]) -> (i64, i64) {
    let mut lo = i64::MAX;
    let mut hi = i64::MIN;
    for b in blocks {
        for &t in &b.timestamps {
            lo = lo.min(t);
            hi = hi.max(t);
        }
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnDef, ColumnKind, FieldType, TableSchema};
    use crate::write::FieldColumn;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type};

    fn schema() -> SchemaRef {
        TableSchema {
            columns: vec![
                ColumnDef { name: "host".into(), kind: ColumnKind::Tag },
                ColumnDef { name: "v".into(), kind: ColumnKind::Field(FieldType::Float) },
                ColumnDef { name: "n".into(), kind: ColumnKind::Field(FieldType::Integer) },
            ],
        }
        .arrow_schema()
    }

    #[test]
    fn blocks_become_one_batch_with_nulls_for_missing_columns() {
        let blocks = vec![
            SeriesBlock {
                item: 0,
                tags: vec![("host".into(), "a".into())],
                timestamps: vec![1, 2],
                fields: vec![FieldColumn {
                    name: "v".into(),
                    values: FieldValues::F64(vec![0.5, 1.5]),
                    validity: None,
                }],
            },
            SeriesBlock {
                item: 1,
                tags: vec![],
                timestamps: vec![3],
                fields: vec![FieldColumn {
                    name: "n".into(),
                    values: FieldValues::I64(vec![7]),
                    validity: Some(vec![false]),
                }],
            },
        ];
        let b = blocks_to_batch(&schema(), &blocks).expect("batch");
        assert_eq!(b.num_rows(), 3);
        let host = b.column(1).as_dictionary::<Int32Type>();
        let values = host.values().as_string::<i32>();
        assert_eq!(values.value(host.keys().value(1) as usize), "a");
        assert!(host.is_null(2));
        let v = b.column(2).as_primitive::<Float64Type>();
        assert_eq!((v.value(0), v.value(1), v.is_null(2)), (0.5, 1.5, true));
        let n = b.column(3).as_primitive::<Int64Type>();
        assert_eq!(n.null_count(), 3);
    }

    /// A one-sample chunk costs the buffer its bytes, not a builder's
    /// default capacity (it held 5 KiB per tag column, so a remote_write of
    /// many metrics filled the write buffer 70 times faster than its rows).
    #[test]
    fn a_small_chunk_holds_about_its_own_bytes() {
        let block = SeriesBlock {
            item: 0,
            tags: vec![("host".into(), "web-1".into())],
            timestamps: vec![1],
            fields: vec![FieldColumn { name: "v".into(), values: FieldValues::F64(vec![0.5]), validity: None }],
        };
        let b = blocks_to_batch(&schema(), &[block]).expect("batch");
        let bytes = batch_bytes(&b);
        assert!(bytes < 1024, "{bytes} bytes for one sample");
    }

    #[test]
    fn adapt_fills_new_columns_with_null() {
        let old =
            TableSchema { columns: vec![ColumnDef { name: "v".into(), kind: ColumnKind::Field(FieldType::Float) }] }
                .arrow_schema();
        let blocks = vec![SeriesBlock {
            item: 0,
            tags: vec![],
            timestamps: vec![1],
            fields: vec![FieldColumn { name: "v".into(), values: FieldValues::F64(vec![2.0]), validity: None }],
        }];
        let b = blocks_to_batch(&old, &blocks).expect("batch");
        let a = adapt_batch(&b, &schema()).expect("adapt");
        assert_eq!(a.num_columns(), 4);
        assert!(a.column(1).is_null(0));
        assert_eq!(a.column(2).as_primitive::<Float64Type>().value(0), 2.0);
    }
}
