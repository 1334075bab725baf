//! `system.audit`: the audit log as a read-only SQL table (only roles with
//! the `audit` permission cover it; see tocsin_auth::Role::covers).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampNanosecondArray, UInt16Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use tocsin_auth::AuditLog;

#[derive(Debug)]
pub(crate) struct AuditTable {
    pub(crate) log: Arc<AuditLog>,
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

impl tocsin_query::LiveTable for AuditTable {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
            Field::new("seq", DataType::UInt64, false),
            text("actor"),
            text("role"),
            text("source"),
            text("interface"),
            text("action"),
            text("target"),
            text("outcome"),
            Field::new("status", DataType::UInt16, false),
            text("detail"),
            Field::new("duration_us", DataType::UInt64, false),
            Field::new("rows", DataType::UInt64, true),
            text("prev"),
            text("hash"),
        ]))
    }

    fn batch(&self) -> Result<RecordBatch, ArrowError> {
        let entries = self.log.entries().map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        let strs = |f: fn(&tocsin_auth::AuditEntry) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(entries.iter().map(f)))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampNanosecondArray::from_iter_values(entries.iter().map(|e| e.ts_ms.saturating_mul(1_000_000)))
                    .with_timezone("UTC"),
            ),
            Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.seq))),
            strs(|e| &e.actor),
            strs(|e| &e.role),
            strs(|e| &e.source),
            strs(|e| &e.interface),
            strs(|e| &e.action),
            strs(|e| &e.target),
            strs(|e| &e.outcome),
            Arc::new(UInt16Array::from_iter_values(entries.iter().map(|e| e.status))),
            strs(|e| &e.detail),
            Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.duration_us))),
            Arc::new(UInt64Array::from(entries.iter().map(|e| e.rows).collect::<Vec<_>>())),
            strs(|e| &e.prev),
            strs(|e| &e.hash),
        ];
        RecordBatch::try_new(self.schema(), columns)
    }
}
