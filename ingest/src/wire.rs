//! Counting repeated messages of an encoded protobuf on the wire, without
//! decoding it. Decoding makes each message a struct of tens of bytes
//! however small it is on the wire (an empty log record is 2 bytes), so a
//! body within the size limit can still take gigabytes: ingest paths count
//! first and refuse what would not fit.

/// One field: its number, wire type and (length-delimited) bytes, and the
/// rest after it; `None` when malformed.
fn field(b: &[u8]) -> Option<(u64, u64, &[u8], &[u8])> {
    let mut buf = b;
    let key = prost::encoding::decode_varint(&mut buf).ok()?;
    let (number, wire) = (key >> 3, key & 7);
    let (value, rest): (&[u8], &[u8]) = match wire {
        0 => {
            prost::encoding::decode_varint(&mut buf).ok()?;
            (&[], buf)
        }
        1 => (&[], buf.get(8..)?),
        2 => {
            let len = usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
            (buf.get(..len)?, buf.get(len..)?)
        }
        5 => (&[], buf.get(4..)?),
        _ => return None,
    };
    Some((number, wire, value, rest))
}

/// How many messages sit at `path` in `buf`: each level lists the field
/// numbers (length-delimited) to descend into, the last level the ones to
/// count. `None` when the bytes are malformed (decoding then says how).
pub fn count(mut buf: &[u8], path: &[&[u64]]) -> Option<usize> {
    let Some((level, deeper)) = path.split_first() else { return Some(0) };
    let mut n = 0usize;
    while !buf.is_empty() {
        let (number, wire, value, rest) = field(buf)?;
        if wire == 2 && level.contains(&number) {
            n = n.saturating_add(if deeper.is_empty() { 1 } else { count(value, deeper)? });
        }
        buf = rest;
    }
    Some(n)
}

/// Log records of an `ExportLogsServiceRequest`.
pub const OTLP_LOG_RECORDS: &[&[u64]] = &[&[1], &[2], &[2]];
/// Spans of an `ExportTraceServiceRequest`.
pub const OTLP_SPANS: &[&[u64]] = &[&[1], &[2], &[2]];
/// Data points of an `ExportMetricsServiceRequest` (gauge, sum, histogram,
/// exponential histogram, summary).
pub const OTLP_DATA_POINTS: &[&[u64]] = &[&[1], &[2], &[2], &[5, 7, 9, 10, 11], &[1]];
/// Entries of a Loki `PushRequest`.
pub const LOKI_ENTRIES: &[&[u64]] = &[&[1], &[2]];

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tocsin_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use tocsin_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use tocsin_proto::opentelemetry::proto::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    };

    #[test]
    fn counts_nested_messages() {
        let scope = |n: usize| ScopeLogs { log_records: vec![LogRecord::default(); n], ..Default::default() };
        let req = ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs { scope_logs: vec![scope(3), scope(0)], ..Default::default() },
                ResourceLogs { scope_logs: vec![scope(4)], ..Default::default() },
            ],
        };
        assert_eq!(count(&req.encode_to_vec(), OTLP_LOG_RECORDS), Some(7));
        let metric = |data| Metric { data: Some(data), ..Default::default() };
        let points = |n| vec![NumberDataPoint::default(); n];
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(metric::Data::Gauge(Gauge { data_points: points(2) })),
                        metric(metric::Data::Sum(Sum { data_points: points(5), ..Default::default() })),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(count(&req.encode_to_vec(), OTLP_DATA_POINTS), Some(7));
        assert_eq!(count(&[0x0a, 0x05, 0x12], OTLP_LOG_RECORDS), None, "a length past the end");
        assert_eq!(count(&[], OTLP_LOG_RECORDS), Some(0));
    }
}
