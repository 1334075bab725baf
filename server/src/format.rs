//! Query results as JSON (array of row objects), JSON Lines, CSV or Arrow IPC.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
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
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * 30);
    let mut text = String::with_capacity(40);
    for v in values.iter() {
        let Some(v) = v else {
            out.append_null();
            continue;
        };
        text.clear();
        rfc3339_value(&mut text, v, unit, offset);
        out.append_value(&text);
    }
    Ok(Arc::new(out.finish()))
}

/// Appends time `v` (in `unit` since the epoch) to `text` as RFC 3339,
/// with `+00:00` when `offset`.
fn rfc3339_value(text: &mut String, v: i64, unit: TimeUnit, offset: bool) {
    let per_second: i64 = match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let (secs, frac) = (v.div_euclid(per_second), v.rem_euclid(per_second));
    let nanos = frac * (1_000_000_000 / per_second);
    if !write_rfc3339(text, secs, nanos, offset) {
        // Outside years 0-9999: chrono's way.
        let t = chrono::DateTime::from_timestamp(secs, nanos as u32).map(|t| t.naive_utc());
        let fmt = if offset { "%Y-%m-%dT%H:%M:%S%.f+00:00" } else { TIMESTAMP_FORMAT };
        text.push_str(&t.map(|t| t.format(fmt).to_string()).unwrap_or_default());
    }
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
            let lines = format == OutputFormat::JsonLines;
            buf = match json_rows(schema, batches, lines)? {
                Some(rows) => rows,
                None => arrow_json(schema, batches, lines)?,
            };
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

/// JSON rows by arrow's writer, after [`flatten`] (any type it writes).
fn arrow_json(schema: &SchemaRef, batches: &[RecordBatch], lines: bool) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::new();
    let (_, batches) = flatten(schema, batches)?;
    let builder = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_format(TIMESTAMP_FORMAT.into())
        .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.into());
    if !lines {
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
    Ok(buf)
}

/// JSON rows written straight from the columns, for the flat schemas
/// queries return (integers, floats, booleans, strings, tags, UTC and
/// naive timestamps): the text arrow's writer gives after [`flatten`]
/// (numbers in their shortest form), without building the flattened
/// columns or calling an encoder per value. `None` when a column is of
/// another type: the caller uses arrow's writer then.
fn json_rows(schema: &SchemaRef, batches: &[RecordBatch], lines: bool) -> Result<Option<Vec<u8>>, ArrowError> {
    let Some(mut w) = JsonRows::new(schema, lines) else { return Ok(None) };
    let mut out = Vec::new();
    for batch in batches {
        w.batch(batch, &mut out)?;
    }
    w.finish(&mut out);
    Ok(Some(out))
}

/// The JSON answer (an array, or lines) written one batch at a time as it
/// is sent: each chunk is made when the body asks for it, so a large
/// answer never sits whole in memory. `None` when [`json_rows`] does not
/// write these columns.
pub fn json_stream(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    lines: bool,
) -> Option<impl Iterator<Item = Result<Vec<u8>, ArrowError>> + Send + 'static> {
    let mut w = JsonRows::new(schema, lines)?;
    let mut batches = batches.into_iter();
    let mut done = false;
    Some(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut out = Vec::new();
        match batches.next() {
            Some(b) => {
                if let Err(e) = w.batch(&b, &mut out) {
                    done = true;
                    return Some(Err(e));
                }
            }
            None => {
                done = true;
                w.finish(&mut out);
            }
        }
        Some(Ok(out))
    }))
}

/// What writing JSON rows keeps between batches.
struct JsonRows {
    schema: SchemaRef,
    /// Each column's name as a JSON key with its colon.
    keys: Vec<Vec<u8>>,
    lines: bool,
    /// Rows written so far, and their bytes: the next batch's size.
    rows: usize,
    bytes: usize,
    text: String,
}

impl JsonRows {
    fn new(schema: &SchemaRef, lines: bool) -> Option<JsonRows> {
        if schema.fields().iter().any(|f| Col::supports(f).is_none()) {
            return None;
        }
        let keys = schema
            .fields()
            .iter()
            .map(|f| {
                let mut k = Vec::with_capacity(f.name().len() + 3);
                json_string(&mut k, f.name());
                k.push(b':');
                k
            })
            .collect();
        Some(JsonRows { schema: schema.clone(), keys, lines, rows: 0, bytes: 0, text: String::with_capacity(40) })
    }

    fn batch(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        let cols: Vec<Col> =
            batch.columns().iter().zip(self.schema.fields()).map(|(c, f)| Col::new(c, f)).collect::<Result<_, _>>()?;
        // Room for the batch as the rows before took, or a guess.
        let per_row = match self.rows {
            0 => self.keys.iter().map(|k| k.len() + 24).sum::<usize>() + 2,
            n => self.bytes / n + 1,
        };
        out.reserve(per_row.saturating_mul(batch.num_rows()).saturating_add(2));
        let start = out.len();
        for row in 0..batch.num_rows() {
            if !self.lines {
                out.push(if self.rows == 0 && row == 0 { b'[' } else { b',' });
            }
            out.push(b'{');
            for (i, (col, column)) in cols.iter().zip(batch.columns()).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.keys[i]);
                if column.is_null(row) {
                    out.extend_from_slice(b"null");
                    continue;
                }
                col.write(row, out, &mut self.text);
            }
            out.push(b'}');
            if self.lines {
                out.push(b'\n');
            }
        }
        self.rows += batch.num_rows();
        self.bytes += out.len() - start;
        Ok(())
    }

    fn finish(&self, out: &mut Vec<u8>) {
        if !self.lines {
            out.extend_from_slice(if self.rows == 0 { b"[]" } else { b"]" });
        }
    }
}

/// One column of a batch, resolved to its type once.
enum Col<'a> {
    I64(&'a arrow::array::Int64Array),
    U64(&'a arrow::array::UInt64Array),
    /// Narrower integers, widened.
    Int(arrow::array::Int64Array),
    F64(&'a arrow::array::Float64Array),
    F32(&'a arrow::array::Float32Array),
    Bool(&'a arrow::array::BooleanArray),
    Utf8(&'a arrow::array::StringArray),
    LargeUtf8(&'a arrow::array::LargeStringArray),
    Utf8View(&'a arrow::array::StringViewArray),
    /// A tag: each row's key, and each dictionary value as JSON text.
    Dictionary(Vec<usize>, Vec<Vec<u8>>),
    Time(arrow::array::Int64Array, TimeUnit, bool),
}

impl<'a> Col<'a> {
    fn supports(f: &Field) -> Option<()> {
        use DataType::*;
        match f.data_type() {
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Some(()),
            Float32 | Float64 | Boolean | Utf8 | LargeUtf8 | Utf8View => Some(()),
            Dictionary(k, v) if k.is_dictionary_key_type() && **v == Utf8 => Some(()),
            Timestamp(..) => utc_unit(f).map(|_| ()),
            _ => None,
        }
    }

    fn new(c: &'a ArrayRef, f: &Field) -> Result<Col<'a>, ArrowError> {
        use DataType::*;
        Ok(match c.data_type() {
            Int64 => Col::I64(c.as_primitive()),
            UInt64 => Col::U64(c.as_primitive()),
            Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => {
                Col::Int(cast(c, &Int64)?.as_primitive::<Int64Type>().clone())
            }
            Float64 => Col::F64(c.as_primitive()),
            Float32 => Col::F32(c.as_primitive()),
            Boolean => Col::Bool(c.as_boolean()),
            Utf8 => Col::Utf8(c.as_string()),
            LargeUtf8 => Col::LargeUtf8(c.as_string()),
            Utf8View => Col::Utf8View(c.as_string_view()),
            Dictionary(..) => {
                let d = c.as_any_dictionary();
                let values = d.values().as_string::<i32>();
                let texts = (0..values.len())
                    .map(|i| {
                        let mut t = Vec::with_capacity(values.value_length(i) as usize + 2);
                        if values.is_null(i) {
                            t.extend_from_slice(b"null");
                        } else {
                            json_string(&mut t, values.value(i));
                        }
                        t
                    })
                    .collect();
                Col::Dictionary(d.normalized_keys(), texts)
            }
            _ => {
                let (unit, offset) = utc_unit(f).ok_or_else(|| {
                    ArrowError::JsonError(format!("column {:?}: no JSON form for {}", f.name(), c.data_type()))
                })?;
                Col::Time(cast(c, &Int64)?.as_primitive::<Int64Type>().clone(), unit, offset)
            }
        })
    }

    /// Writes the value at `row` (not null).
    fn write(&self, row: usize, out: &mut Vec<u8>, text: &mut String) {
        match self {
            Col::I64(a) => out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes()),
            Col::Int(a) => out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes()),
            Col::U64(a) => out.extend_from_slice(itoa::Buffer::new().format(a.value(row)).as_bytes()),
            Col::F64(a) => match a.value(row) {
                v if v.is_finite() => out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes()),
                _ => out.extend_from_slice(b"null"),
            },
            Col::F32(a) => match a.value(row) {
                v if v.is_finite() => out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes()),
                _ => out.extend_from_slice(b"null"),
            },
            Col::Bool(a) => out.extend_from_slice(if a.value(row) { b"true" } else { b"false" }),
            Col::Utf8(a) => json_string(out, a.value(row)),
            Col::LargeUtf8(a) => json_string(out, a.value(row)),
            Col::Utf8View(a) => json_string(out, a.value(row)),
            Col::Dictionary(keys, texts) => match keys.get(row).and_then(|&k| texts.get(k)) {
                Some(t) => out.extend_from_slice(t),
                None => out.extend_from_slice(b"null"),
            },
            Col::Time(a, unit, offset) => {
                text.clear();
                rfc3339_value(text, a.value(row), *unit, *offset);
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
            }
        }
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
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

    /// The direct writer gives what arrow's writer gives after flattening
    /// (as JSON values): every supported type, nulls, NaN and infinities,
    /// strings that need escaping, tags with null keys and values, times in
    /// every unit before 1970 and past 9999, several batches, both forms.
    #[test]
    fn json_rows_say_what_arrows_writer_says() {
        use arrow::array::*;
        let dict: DictionaryArray<arrow::datatypes::Int8Type> =
            vec![Some("web-1"), None, Some("a\"b\\c\n\u{1}é"), Some("web-1")].into_iter().collect();
        let with_null_value = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(vec![0, 1, 0, 1]),
            Arc::new(StringArray::from(vec![Some("x"), None])),
        )
        .expect("dictionary");
        let utc = |a: TimestampMillisecondArray| a.with_timezone("+00:00");
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("i64", Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(0), Some(i64::MAX)]))),
            ("u64", Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(1), None, Some(0)]))),
            ("i8", Arc::new(Int8Array::from(vec![Some(-128), Some(127), None, Some(0)]))),
            ("u32", Arc::new(UInt32Array::from(vec![Some(u32::MAX), None, Some(7), Some(0)]))),
            (
                "f64",
                Arc::new(Float64Array::from(vec![Some(0.1 + 0.2), Some(f64::NAN), Some(-1e-300), Some(f64::INFINITY)])),
            ),
            ("f64b", Arc::new(Float64Array::from(vec![Some(1e21), Some(100.0), None, Some(-0.0)]))),
            ("f32", Arc::new(Float32Array::from(vec![Some(0.1), Some(f32::NEG_INFINITY), Some(3.4e38), None]))),
            ("b", Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true)]))),
            (
                "s",
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some("\t\r\u{8}\u{c}\u{1f}\u{7f}/"),
                    None,
                    Some("日本"),
                ])),
            ),
            ("ls", Arc::new(LargeStringArray::from(vec![Some("q\"q"), None, Some(""), Some("z")]))),
            (
                "sv",
                Arc::new(StringViewArray::from(vec![
                    Some("a much longer string than twelve"),
                    None,
                    Some("b"),
                    Some("\\"),
                ])),
            ),
            ("tag", Arc::new(dict)),
            ("tag2", Arc::new(with_null_value)),
            (
                "ns_utc",
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(1_700_000_000_123_456_789), None, Some(-1), Some(0)])
                        .with_timezone("UTC"),
                ),
            ),
            (
                "ms_utc",
                Arc::new(utc(TimestampMillisecondArray::from(vec![
                    Some(-62_135_596_800_001),
                    Some(253_402_300_800_000),
                    None,
                    Some(1_500),
                ]))),
            ),
            (
                "us_naive",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(951_782_400_000_001),
                    None,
                    Some(-2_208_988_800_000_000),
                    Some(0),
                ])),
            ),
            ("s_naive", Arc::new(TimestampSecondArray::from(vec![Some(1), Some(-1), None, Some(4_102_444_800)]))),
        ];
        let schema = Arc::new(Schema::new(
            columns.iter().map(|(n, c)| Field::new(*n, c.data_type().clone(), true)).collect::<Vec<_>>(),
        ));
        let b = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, c)| c).collect()).expect("batch");
        let batches = vec![b.clone(), b.slice(1, 2), b.slice(0, 0), b];
        for lines in [false, true] {
            let ours = json_rows(&schema, &batches, lines).expect("encode").expect("supported");
            let streamed: Vec<u8> = json_stream(&schema, batches.clone(), lines)
                .expect("supported")
                .flat_map(|chunk| chunk.expect("chunk"))
                .collect();
            assert_eq!(streamed, ours, "sent a batch at a time, the same bytes");
            let theirs = arrow_json(&schema, &batches, lines).expect("encode");
            let parse = |bytes: &[u8]| -> Vec<serde_json::Value> {
                if lines {
                    bytes
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
                        .collect()
                } else {
                    serde_json::from_slice(bytes).expect("a JSON array")
                }
            };
            assert_eq!(
                parse(&ours),
                parse(&theirs),
                "{}\n{}",
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            assert_eq!(parse(&ours).len(), 10);
        }
        assert_eq!(json_rows(&schema, &[], false).expect("encode").expect("supported"), b"[]");
        assert!(json_rows(&schema, &[], true).expect("encode").expect("supported").is_empty());
        // A type it does not write itself goes to arrow's writer.
        let dates = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        assert!(json_rows(&dates, &[], false).expect("encode").is_none());
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
