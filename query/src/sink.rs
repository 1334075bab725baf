//! SQL `INSERT` into a Tocsin table: record batches become a storage write
//! that goes through the same validation, WAL and buffer as gRPC ingest.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimestampNanosecondType, UInt64Type};
use async_trait::async_trait;
use datafusion::common::Result;
use datafusion::datasource::sink::DataSink;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;
use tocsin_storage::schema::{LOG_LEVEL_COLUMN, LOG_TEXT_FIELDS, normalize_level};
use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, Storage, TIME_COLUMN, TableWrite};

use crate::QueryError;

pub(crate) struct TocsinSink {
    storage: Arc<Storage>,
    db: String,
    table: String,
    schema: SchemaRef,
}

impl TocsinSink {
    pub(crate) fn new(storage: Arc<Storage>, db: String, table: String, schema: SchemaRef) -> Self {
        Self { storage, db, table, schema }
    }
}

impl fmt::Debug for TocsinSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TocsinSink({}.{})", self.db, self.table)
    }
}

impl DisplayAs for TocsinSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TocsinSink: table={}.{}", self.db, self.table)
    }
}

#[async_trait]
impl DataSink for TocsinSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, mut data: SendableRecordBatchStream, _ctx: &Arc<TaskContext>) -> Result<u64> {
        // `INSERT ... SELECT` can bring any number of rows: they are written
        // in batches of at most WRITE_ROWS, so that neither memory nor one
        // WAL record grows with the source.
        const WRITE_ROWS: usize = 8192;
        let mut blocks = Vec::new();
        let mut row_base = 0u32;
        let mut accepted = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            batch_to_blocks(&batch, &self.schema, row_base, &mut blocks)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            row_base = row_base.saturating_add(batch.num_rows() as u32);
            if blocks.len() >= WRITE_ROWS {
                accepted += self.write(std::mem::take(&mut blocks), accepted).await?;
            }
        }
        if !blocks.is_empty() {
            accepted += self.write(blocks, accepted).await?;
        }
        Ok(accepted)
    }
}

impl TocsinSink {
    /// Writes `blocks`; any rejection fails the INSERT, saying how many rows
    /// (`before` and of these blocks) were written.
    async fn write(&self, blocks: Vec<SeriesBlock>, before: u64) -> Result<u64> {
        let outcome = self
            .storage
            .write(&self.db, vec![TableWrite { table: self.table.clone(), blocks }])
            .await
            .map_err(|e| DataFusionError::External(Box::new(QueryError::Storage(e))))?;
        if let Some(first) = outcome.rejected.first() {
            // Columns this INSERT created and no accepted row used go away.
            self.storage.discard_provisional(&self.db, &self.table);
            return Err(DataFusionError::External(Box::new(QueryError::InsertRejected {
                accepted: before + outcome.accepted_rows,
                rejected: outcome.rejected.len(),
                first_row: first.item,
                reason: first.error.to_string(),
            })));
        }
        Ok(outcome.accepted_rows)
    }
}

/// Turns each row into a one-row series block (INSERT carries few rows; the
/// storage engine merges small writes). `item` is the row number. A column
/// that is a tag in the table stays a tag even when its value came as plain
/// text (a `$n` parameter).
fn batch_to_blocks(
    batch: &RecordBatch,
    table: &SchemaRef,
    row_base: u32,
    out: &mut Vec<SeriesBlock>,
) -> Result<(), QueryError> {
    let schema = batch.schema();
    let ts_idx = schema.index_of(TIME_COLUMN).map_err(|_| QueryError::InsertWithoutTime)?;
    let ts = cast(batch.column(ts_idx), &tocsin_storage::schema::time_type())?;
    let ts = ts.as_primitive::<TimestampNanosecondType>();
    // A log table's level is stored normalised, as WriteLogs stores it.
    let log_table = table.field_with_name(LOG_TEXT_FIELDS[0]).is_ok_and(|f| f.data_type() == &DataType::Utf8);
    for row in 0..batch.num_rows() {
        if ts.is_null(row) {
            return Err(QueryError::InsertWithoutTime);
        }
        let mut tags = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if i == ts_idx {
                continue;
            }
            // Only text into a tag is converted here; any other mismatch is
            // left for storage to refuse as a type conflict.
            let target = match table.field_with_name(f.name()).map(|t| t.data_type()) {
                Ok(t @ DataType::Dictionary(_, _)) if f.data_type() == &DataType::Utf8 => t,
                _ => f.data_type(),
            };
            let cast_col;
            let col = if batch.column(i).data_type() == target {
                batch.column(i)
            } else {
                cast_col = cast(batch.column(i), target)?;
                &cast_col
            };
            match target {
                DataType::Dictionary(_, _) => {
                    let s = cast(col, &DataType::Utf8)?;
                    let s = s.as_string::<i32>();
                    if s.is_valid(row) {
                        let value = if log_table && f.name() == LOG_LEVEL_COLUMN {
                            normalize_level(s.value(row))
                        } else {
                            s.value(row).to_string()
                        };
                        tags.push((f.name().clone(), value));
                    }
                }
                dt => {
                    if col.is_null(row) {
                        continue;
                    }
                    let values = match dt {
                        DataType::Float64 => FieldValues::F64(vec![col.as_primitive::<Float64Type>().value(row)]),
                        DataType::Int64 => FieldValues::I64(vec![col.as_primitive::<Int64Type>().value(row)]),
                        DataType::UInt64 => FieldValues::U64(vec![col.as_primitive::<UInt64Type>().value(row)]),
                        DataType::Boolean => FieldValues::Bool(vec![col.as_boolean().value(row)]),
                        DataType::Utf8 => FieldValues::Str(vec![col.as_string::<i32>().value(row).to_string()]),
                        other => {
                            return Err(QueryError::UnsupportedType {
                                column: f.name().clone(),
                                data_type: other.clone(),
                            });
                        }
                    };
                    fields.push(FieldColumn { name: f.name().clone(), values, validity: None });
                }
            }
        }
        out.push(SeriesBlock {
            item: row_base.saturating_add(row as u32),
            tags,
            timestamps: vec![ts.value(row)],
            fields,
        });
    }
    Ok(())
}
