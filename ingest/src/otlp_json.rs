//! OTLP/HTTP with JSON bodies (`Content-Type: application/json`), as the
//! OpenTelemetry JavaScript exporters send by default. OTLP's JSON is
//! protobuf's JSON mapping with one exception: trace and span ids are hex,
//! not base64. The message is read by name from the descriptors of the
//! `.proto` files (so every OTLP message and field is covered, not a hand
//! written subset), then decoded into the same types as a protobuf body.
//!
//! Unknown fields are ignored, as the OTLP specification asks of
//! receivers; enums are integers (OTLP's JSON encodes them so; the fields
//! OTLP declares as plain integers, such as `severityNumber`, take only
//! integers); 64-bit integers are strings or numbers.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

#[derive(Debug, thiserror::Error)]
pub enum OtlpJsonError {
    #[error("body is not JSON: {0}")]
    Syntax(serde_json::Error),
    #[error("body is not an OTLP {message} in JSON: {reason}")]
    Shape { message: &'static str, reason: String },
    #[error("{field} {value:?} is not a hex id")]
    Id { field: String, value: String },
}

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(tocsin_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()));

/// The fields holding ids, in both spellings protobuf's JSON allows.
const ID_FIELDS: [&str; 6] = ["traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"];

fn descriptor(message: &'static str) -> Result<prost_reflect::MessageDescriptor, OtlpJsonError> {
    let pool = POOL.as_ref().map_err(|e| OtlpJsonError::Shape { message, reason: format!("descriptors: {e}") })?;
    pool.get_message_by_name(message)
        .ok_or_else(|| OtlpJsonError::Shape { message, reason: "no such message in the descriptors".into() })
}

/// Reads `body` as the message named `message` (its full protobuf name,
/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`).
pub fn decode<M: prost::Message + Default>(message: &'static str, body: &[u8]) -> Result<M, OtlpJsonError> {
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(OtlpJsonError::Syntax)?;
    ids_to_base64(&mut value)?;
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(descriptor(message)?, value, &options)
        .map_err(|e| OtlpJsonError::Shape { message, reason: e.to_string() })?;
    M::decode(prost::Message::encode_to_vec(&dynamic).as_slice())
        .map_err(|e| OtlpJsonError::Shape { message, reason: e.to_string() })
}

/// `msg` (named `message`) in OTLP's JSON: lowerCamelCase names, default
/// values left out.
pub fn encode<M: prost::Message>(message: &'static str, msg: &M) -> Result<Vec<u8>, OtlpJsonError> {
    let dynamic = DynamicMessage::decode(descriptor(message)?, msg.encode_to_vec().as_slice())
        .map_err(|e| OtlpJsonError::Shape { message, reason: e.to_string() })?;
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut out, &SerializeOptions::new())
        .map_err(|e| OtlpJsonError::Shape { message, reason: e.to_string() })?;
    Ok(out.into_inner())
}

/// Trace and span ids from hex (OTLP's JSON) to base64 (protobuf's JSON
/// for bytes), wherever they are; an empty id stays empty.
fn ids_to_base64(v: &mut serde_json::Value) -> Result<(), OtlpJsonError> {
    use base64::Engine as _;
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if ID_FIELDS.contains(&k.as_str())
                    && let serde_json::Value::String(s) = v
                {
                    let bytes = hex(s).ok_or_else(|| OtlpJsonError::Id {
                        field: k.clone(),
                        value: tocsin_auth::clip(s).to_string(),
                    })?;
                    *s = base64::engine::general_purpose::STANDARD.encode(bytes);
                } else {
                    ids_to_base64(v)?;
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                ids_to_base64(v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_proto::opentelemetry::proto::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use tocsin_proto::opentelemetry::proto::common::v1::any_value;
    use tocsin_proto::opentelemetry::proto::metrics::v1::{metric, number_data_point};

    const LOGS: &str = "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest";
    const METRICS: &str = "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest";

    #[test]
    fn the_specifications_log_example_decodes_with_hex_ids() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
          "scopeLogs":[{"scope":{"name":"my.library","version":"1.0.0"},"logRecords":[{"timeUnixNano":"1544712660300000000",
          "observedTimeUnixNano":"1544712660300000000","severityNumber":10,"severityText":"Information",
          "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
          "body":{"stringValue":"Example log record"},"attributes":[{"key":"int.attribute","value":{"intValue":"10"}},
          {"key":"my.map.attribute","value":{"kvlistValue":{"values":[{"key":"some.map.key","value":{"intValue":10}}]}}}],
          "somethingNew":{"x":1}}]}]}]}"#;
        let req: ExportLogsServiceRequest = decode(LOGS, body).expect("decodes");
        let r = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(r.time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!((r.severity_number, r.severity_text.as_str()), (10, "Information"));
        assert_eq!(
            r.trace_id,
            [0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c]
        );
        assert_eq!(r.span_id, [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]);
        let Some(any_value::Value::StringValue(body)) = r.body.as_ref().and_then(|b| b.value.clone()) else {
            panic!("string body")
        };
        assert_eq!(body, "Example log record");
        assert_eq!(r.attributes.len(), 2);
    }

    #[test]
    fn a_gauge_and_a_sum_decode() {
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
          {"name":"queue.depth","gauge":{"dataPoints":[{"asDouble":2.5,"timeUnixNano":1700000000000000000}]}},
          {"name":"requests","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"asInt":"7","timeUnixNano":"1700000000000000000"}]}}]}]}]}"#;
        let req: ExportMetricsServiceRequest = decode(METRICS, body).expect("decodes");
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        let Some(metric::Data::Gauge(g)) = &m[0].data else { panic!("gauge") };
        assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(2.5)));
        let Some(metric::Data::Sum(s)) = &m[1].data else { panic!("sum") };
        assert_eq!(s.data_points[0].value, Some(number_data_point::Value::AsInt(7)));
        assert_eq!(s.aggregation_temporality, 2);
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let err = decode::<ExportLogsServiceRequest>(LOGS, b"{").expect_err("syntax");
        assert!(err.to_string().contains("not JSON"), "{err}");
        let err = decode::<ExportLogsServiceRequest>(LOGS, br#"{"resourceLogs":3}"#).expect_err("shape");
        assert!(err.to_string().contains("ExportLogsServiceRequest"), "{err}");
        let bad_id = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}"#;
        let err = decode::<ExportLogsServiceRequest>(LOGS, bad_id).expect_err("id");
        assert!(err.to_string().contains("traceId \"xyz\" is not a hex id"), "{err}");
    }

    #[test]
    fn responses_encode_in_camel_case() {
        let resp = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too long".into(),
            }),
        };
        let json = encode("opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse", &resp).expect("encodes");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["partialSuccess"]["rejectedLogRecords"], "3");
        assert_eq!(v["partialSuccess"]["errorMessage"], "too long");
    }
}
