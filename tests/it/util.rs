//! Builders for requests used across the tests.

use tocsin_proto::v1::{
    DoubleValues, FieldColumn, Int64Values, Label, LogEvent, RowSeries, Series, StringValues, WriteRowsRequest,
    field_column::Values,
};

/// 2023-11-14T22:13:20Z in nanoseconds.
pub(crate) const T0: i64 = 1_700_000_000_000_000_000;
pub(crate) const SEC: i64 = 1_000_000_000;

pub(crate) fn label(n: &str, v: &str) -> Label {
    Label { name: n.into(), value: v.into() }
}

pub(crate) fn series(metric: &str, labels: &[(&str, &str)], ts: Vec<i64>, values: Vec<f64>) -> Series {
    Series { metric: metric.into(), labels: labels.iter().map(|(n, v)| label(n, v)).collect(), timestamps: ts, values }
}

pub(crate) fn f64s(name: &str, v: Vec<f64>) -> FieldColumn {
    FieldColumn { name: name.into(), values: Some(Values::F64(DoubleValues { values: v })) }
}

pub(crate) fn i64s(name: &str, v: Vec<i64>) -> FieldColumn {
    FieldColumn { name: name.into(), values: Some(Values::I64(Int64Values { values: v })) }
}

pub(crate) fn strs(name: &str, v: Vec<&str>) -> FieldColumn {
    FieldColumn {
        name: name.into(),
        values: Some(Values::Str(StringValues { values: v.into_iter().map(String::from).collect() })),
    }
}

pub(crate) fn row_series(tags: &[(&str, &str)], ts: Vec<i64>, fields: Vec<FieldColumn>) -> RowSeries {
    RowSeries { tags: tags.iter().map(|(n, v)| label(n, v)).collect(), timestamps: ts, fields }
}

pub(crate) fn rows(table: &str, series: Vec<RowSeries>) -> WriteRowsRequest {
    WriteRowsRequest { database: String::new(), table: table.into(), series }
}

pub(crate) fn log(ts: i64, service: &str, level: &str, message: &str, trace: &str) -> LogEvent {
    LogEvent {
        timestamp: ts,
        service: service.into(),
        host: "node-1".into(),
        level: level.into(),
        message: message.into(),
        trace_id: trace.into(),
        span_id: String::new(),
        attributes: vec![label("region", "eu")],
    }
}

/// The segment and pack files under a data directory (or a copy of one),
/// in path order.
pub(crate) fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("segments"), &mut out);
    walk(&dir.join("packs"), &mut out);
    out.sort();
    out
}
