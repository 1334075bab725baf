//! Counting repeated messages of an encoded protobuf on the wire, without
//! decoding it: see [`tocsin_proto::wire`].

pub use tocsin_proto::wire::*;

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
