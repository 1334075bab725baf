//! Query results as JSON (array of row objects), JSON Lines, CSV or Arrow IPC.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use std::sync::Arc;

/// RFC 3339 with as many fractional digits as needed (0, 3, 6 or 9).
pub const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    JsonLines,
    Csv,
    Arrow,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "json" => OutputFormat::Json,
            "jsonl" | "ndjson" | "jsonlines" => OutputFormat::JsonLines,
            "csv" => OutputFormat::Csv,
            "arrow" | "ipc" | "arrow-ipc" => OutputFormat::Arrow,
            _ => return None,
        })
    }

    /// The format an `Accept` header asks for, if it names one we serve.
    pub fn from_accept(accept: &str) -> Option<Self> {
        accept.split(',').find_map(|part| {
            let mime = part.split(';').next().unwrap_or("").trim();
            Some(match mime {
                "application/json" => OutputFormat::Json,
                "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => OutputFormat::JsonLines,
                "text/csv" => OutputFormat::Csv,
                "application/vnd.apache.arrow.stream" => OutputFormat::Arrow,
                _ => return None,
            })
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::JsonLines => "application/x-ndjson",
            OutputFormat::Csv => "text/csv; charset=utf-8",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Dictionary columns (tags) as plain strings, for the text formats.
fn flatten(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Dictionary(_, _))) {
        return Ok((schema.clone(), batches.to_vec()));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    let flat = Arc::new(Schema::new(fields));
    let out = batches
        .iter()
        .map(|b| {
            let cols = b
                .columns()
                .iter()
                .zip(flat.fields())
                .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            RecordBatch::try_new(flat.clone(), cols)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((flat, out))
}

pub fn encode(format: OutputFormat, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::new();
    match format {
        OutputFormat::Json | OutputFormat::JsonLines => {
            let (_, batches) = flatten(schema, batches)?;
            let builder = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .with_timestamp_format(TIMESTAMP_FORMAT.into())
                .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.into());
            if format == OutputFormat::Json {
                let mut w = builder.build::<_, arrow::json::writer::JsonArray>(&mut buf);
                for b in &batches {
                    w.write(b)?;
                }
                w.finish()?;
                drop(w);
                if buf.is_empty() {
                    buf.extend_from_slice(b"[]");
                }
            } else {
                let mut w = builder.build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                for b in &batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
        }
        OutputFormat::Csv => {
            let (flat, batches) = flatten(schema, batches)?;
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_format(TIMESTAMP_FORMAT.into())
                .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.into())
                .build(&mut buf);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(flat))?;
            }
            for b in &batches {
                w.write(b)?;
            }
        }
        OutputFormat::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Float64Array, TimestampNanosecondArray};
    use arrow::datatypes::{Int32Type, TimeUnit};

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), false),
            Field::new("host", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
            Field::new("v", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_700_000_000_000_000_000, 1_700_000_000_500_000_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(vec![Some("a"), None].into_iter().collect::<DictionaryArray<Int32Type>>()),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
            ],
        )
        .expect("batch");
        (schema, b)
    }

    #[test]
    fn json_rows_have_rfc3339_times_and_explicit_nulls() {
        let (schema, b) = batch();
        let out = String::from_utf8(encode(OutputFormat::Json, &schema, &[b]).expect("encode")).expect("utf8");
        assert_eq!(
            out,
            r#"[{"ts":"2023-11-14T22:13:20+00:00","host":"a","v":1.5},{"ts":"2023-11-14T22:13:20.500+00:00","host":null,"v":null}]"#
        );
        let empty = encode(OutputFormat::Json, &schema, &[]).expect("encode");
        assert_eq!(empty, b"[]");
    }

    #[test]
    fn csv_has_a_header_even_when_empty() {
        let (schema, b) = batch();
        let out = String::from_utf8(encode(OutputFormat::Csv, &schema, &[b]).expect("encode")).expect("utf8");
        assert_eq!(out, "ts,host,v\n2023-11-14T22:13:20+00:00,a,1.5\n2023-11-14T22:13:20.500+00:00,,\n");
        let empty = String::from_utf8(encode(OutputFormat::Csv, &schema, &[]).expect("encode")).expect("utf8");
        assert_eq!(empty, "ts,host,v\n");
    }

    #[test]
    fn formats_from_names_and_accept_headers() {
        assert_eq!(OutputFormat::parse("CSV"), Some(OutputFormat::Csv));
        assert_eq!(OutputFormat::parse("xml"), None);
        assert_eq!(OutputFormat::from_accept("text/html, text/csv;q=0.9"), Some(OutputFormat::Csv));
        assert_eq!(OutputFormat::from_accept("*/*"), None);
    }
}
