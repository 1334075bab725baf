//! Query results as JSON (array of row objects), JSON Lines, CSV or Arrow IPC.

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
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

/// Dictionary columns (tags) as plain strings, and UTC timestamps as
/// RFC 3339 text, for the text formats.
fn flatten(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Dictionary(_, _)) || utc_unit(f).is_some()) {
        return Ok((schema.clone(), batches.to_vec()));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ if utc_unit(f).is_some() => f.as_ref().clone().with_data_type(DataType::Utf8),
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
                .zip(schema.fields().iter().zip(flat.fields()))
                .map(|(c, (from, to))| match utc_unit(from) {
                    Some((unit, offset)) => rfc3339_column(c, unit, offset),
                    None if c.data_type() == to.data_type() => Ok(c.clone()),
                    None => cast(c, to.data_type()),
                })
                .collect::<Result<Vec<ArrayRef>, _>>()?;
            RecordBatch::try_new(flat.clone(), cols)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((flat, out))
}

/// A timestamp column Tocsin formats itself (no zone, or UTC): its unit,
/// and whether the text carries `+00:00`. Formatting through chrono's
/// strftime parsed the format for every value (a tenth of high-cpu-all's
/// time); other zones still go that way.
fn utc_unit(f: &Field) -> Option<(TimeUnit, bool)> {
    match f.data_type() {
        DataType::Timestamp(unit, None) => Some((*unit, false)),
        DataType::Timestamp(unit, Some(tz)) if matches!(tz.as_ref(), "UTC" | "+00:00" | "Z" | "utc") => {
            Some((*unit, true))
        }
        _ => None,
    }
}

/// `c` (timestamps in `unit`) as RFC 3339 text, exactly as
/// [`TIMESTAMP_FORMAT`] / [`TIMESTAMP_TZ_FORMAT`] print it: fractional
/// digits only as many as needed (0, 3, 6 or 9).
fn rfc3339_column(c: &ArrayRef, unit: TimeUnit, offset: bool) -> Result<ArrayRef, ArrowError> {
    let values = cast(c, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    let per_second: i64 = match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * 30);
    let mut text = String::with_capacity(40);
    for v in values.iter() {
        let Some(v) = v else {
            out.append_null();
            continue;
        };
        let (secs, frac) = (v.div_euclid(per_second), v.rem_euclid(per_second));
        let nanos = frac * (1_000_000_000 / per_second);
        text.clear();
        if !write_rfc3339(&mut text, secs, nanos, offset) {
            // Outside years 0-9999: chrono's way.
            let t = chrono::DateTime::from_timestamp(secs, nanos as u32).map(|t| t.naive_utc());
            let fmt = if offset { "%Y-%m-%dT%H:%M:%S%.f+00:00" } else { TIMESTAMP_FORMAT };
            text = t.map(|t| t.format(fmt).to_string()).unwrap_or_default();
        }
        out.append_value(&text);
    }
    Ok(Arc::new(out.finish()))
}

/// Writes `secs.nanos` since the epoch (UTC) as RFC 3339; false outside
/// years 0 to 9999.
fn write_rfc3339(out: &mut String, secs: i64, nanos: i64, offset: bool) -> bool {
    use chrono::{Datelike, Timelike};
    let Some(t) = chrono::DateTime::from_timestamp(secs, nanos as u32) else { return false };
    let (year, month, day) = (i64::from(t.year()), i64::from(t.month()), i64::from(t.day()));
    if !(0..=9999).contains(&year) {
        return false;
    }
    let sod = i64::from(t.num_seconds_from_midnight());
    fn digits(out: &mut String, n: i64, width: usize) {
        let mut buf = [b'0'; 9];
        let mut n = n;
        for i in (0..width).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend(buf[..width].iter().map(|b| char::from(*b)));
    }
    digits(out, year, 4);
    out.push('-');
    digits(out, month, 2);
    out.push('-');
    digits(out, day, 2);
    out.push('T');
    digits(out, sod / 3600, 2);
    out.push(':');
    digits(out, sod / 60 % 60, 2);
    out.push(':');
    digits(out, sod % 60, 2);
    if nanos != 0 {
        out.push('.');
        if nanos % 1_000_000 == 0 {
            digits(out, nanos / 1_000_000, 3);
        } else if nanos % 1_000 == 0 {
            digits(out, nanos / 1_000, 6);
        } else {
            digits(out, nanos, 9);
        }
    }
    if offset {
        out.push_str("+00:00");
    }
    true
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

    /// The fast formatter prints what chrono's strftime printed, for
    /// every unit, before 1970 and across leap days.
    #[test]
    fn utc_times_are_formatted_as_chrono_formats_them() {
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        let mut samples =
            vec![0, -1, 1, 951_782_400_000_000_000, -2_208_988_800_000_000_000, 9_000_000_000_000_000_000];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x % 9_000_000_000_000_000_000);
        }
        for &ns in &samples {
            for (unit, per) in [
                (TimeUnit::Nanosecond, 1),
                (TimeUnit::Microsecond, 1_000),
                (TimeUnit::Millisecond, 1_000_000),
                (TimeUnit::Second, 1_000_000_000),
            ] {
                let v = ns / per;
                let array: ArrayRef = match unit {
                    TimeUnit::Nanosecond => Arc::new(TimestampNanosecondArray::from(vec![v])),
                    TimeUnit::Microsecond => Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![v])),
                    TimeUnit::Millisecond => Arc::new(arrow::array::TimestampMillisecondArray::from(vec![v])),
                    TimeUnit::Second => Arc::new(arrow::array::TimestampSecondArray::from(vec![v])),
                };
                let ours = rfc3339_column(&array, unit, true).expect("format");
                let ours = ours.as_string::<i32>().value(0).to_string();
                let t = chrono::DateTime::from_timestamp(
                    v.div_euclid(1_000_000_000 / per),
                    (v.rem_euclid(1_000_000_000 / per) * per) as u32,
                )
                .expect("in range");
                let theirs = t.format(TIMESTAMP_TZ_FORMAT).to_string();
                assert_eq!(ours, theirs, "{v} {unit:?}");
            }
        }
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
