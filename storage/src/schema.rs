//! Table schemas: schema-on-write, extended (never narrowed) by writes.
//!
//! Every table has the time column `ts` (nanoseconds, UTC) first, then its
//! tags and fields in the order they first appeared. Tags are
//! dictionary-encoded strings; fields are typed and a field keeps its type for
//! the life of the table.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Name of the time column of every table.
pub const TIME_COLUMN: &str = "ts";
/// Time zone of the time column: timestamps are UTC and print as RFC 3339.
pub const TIME_ZONE: &str = "UTC";

/// Columns of a log event that hold free text: string fields, never tags,
/// whichever path (WriteLogs, OTLP, SQL INSERT) creates them.
pub const LOG_TEXT_FIELDS: [&str; 4] = ["message", "trace_id", "span_id", "attributes"];
/// Tag of a log event's level, normalised the same way on every path
/// ([`normalize_level`]).
pub const LOG_LEVEL_COLUMN: &str = "level";

/// A log level as stored: lower case, with common spellings folded
/// (`WARNING` is `warn`, `CRIT` is `fatal`).
pub fn normalize_level(level: &str) -> String {
    let lower = level.trim().to_ascii_lowercase();
    match lower.as_str() {
        "warning" => "warn".into(),
        "err" => "error".into(),
        "critical" | "crit" | "panic" => "fatal".into(),
        "information" => "info".into(),
        "dbg" => "debug".into(),
        _ => lower,
    }
}

/// Arrow metadata key on each column saying whether it is a tag or a field.
pub const COLUMN_KIND_KEY: &str = "tocsin.kind";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Float,
    Integer,
    UInteger,
    Boolean,
    String,
}

impl FieldType {
    pub fn arrow_type(self) -> DataType {
        match self {
            FieldType::Float => DataType::Float64,
            FieldType::Integer => DataType::Int64,
            FieldType::UInteger => DataType::UInt64,
            FieldType::Boolean => DataType::Boolean,
            FieldType::String => DataType::Utf8,
        }
    }

    pub fn from_arrow(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Float64 | DataType::Float32 | DataType::Float16 => FieldType::Float,
            DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8 => FieldType::Integer,
            DataType::UInt64 | DataType::UInt32 | DataType::UInt16 | DataType::UInt8 => FieldType::UInteger,
            DataType::Boolean => FieldType::Boolean,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FieldType::String,
            _ => return None,
        })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Float => "float",
            FieldType::Integer => "integer",
            FieldType::UInteger => "unsigned integer",
            FieldType::Boolean => "boolean",
            FieldType::String => "string",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "type")]
pub enum ColumnKind {
    Tag,
    Field(FieldType),
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnKind::Tag => f.write_str("tag"),
            ColumnKind::Field(t) => write!(f, "{t} field"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// The logical schema of one table (without the implicit `ts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub columns: Vec<ColumnDef>,
}

impl TableSchema {
    pub fn get(&self, name: &str) -> Option<ColumnKind> {
        self.columns.iter().find(|c| c.name == name).map(|c| c.kind)
    }

    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().filter(|c| c.kind == ColumnKind::Tag).map(|c| c.name.as_str())
    }

    /// The Arrow schema queries see: `ts`, then the columns in order of
    /// first appearance.
    pub fn arrow_schema(&self) -> SchemaRef {
        let mut fields = Vec::with_capacity(self.columns.len() + 1);
        fields.push(time_field());
        for c in &self.columns {
            fields.push(arrow_field(c));
        }
        Arc::new(Schema::new(fields))
    }
}

pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(TIME_ZONE.into()))
}

pub fn tag_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn time_field() -> Field {
    Field::new(TIME_COLUMN, time_type(), false)
}

fn arrow_field(c: &ColumnDef) -> Field {
    let (dt, kind) = match c.kind {
        ColumnKind::Tag => (tag_type(), "tag"),
        ColumnKind::Field(t) => (t.arrow_type(), "field"),
    };
    Field::new(&c.name, dt, true).with_metadata([(COLUMN_KIND_KEY.to_string(), kind.to_string())].into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_schema_puts_ts_first_and_marks_kinds() {
        let s = TableSchema {
            columns: vec![
                ColumnDef { name: "host".into(), kind: ColumnKind::Tag },
                ColumnDef { name: "v".into(), kind: ColumnKind::Field(FieldType::Integer) },
            ],
        };
        let a = s.arrow_schema();
        assert_eq!(a.field(0).name(), "ts");
        assert_eq!(a.field(1).data_type(), &tag_type());
        assert_eq!(a.field(2).data_type(), &DataType::Int64);
        assert_eq!(a.field(2).metadata().get(COLUMN_KIND_KEY).map(String::as_str), Some("field"));
    }

    #[test]
    fn schema_round_trips_through_json() {
        let s = TableSchema {
            columns: vec![
                ColumnDef { name: "host".into(), kind: ColumnKind::Tag },
                ColumnDef { name: "v".into(), kind: ColumnKind::Field(FieldType::Float) },
            ],
        };
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(json, r#"{"columns":[{"name":"host","kind":"tag"},{"name":"v","kind":"field","type":"float"}]}"#);
        assert_eq!(serde_json::from_str::<TableSchema>(&json).expect("parse"), s);
    }
}
