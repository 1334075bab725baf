//! Loki's push API (`POST /loki/api/v1/push`): snappy-compressed protobuf
//! (Promtail, Grafana Alloy, Fluent Bit, Vector) or JSON, as log events.
//!
//! Each entry is one event: its line is `message`, its stream's labels and
//! its structured metadata are `attributes`, and three columns take their
//! value from a label when the stream has one (docs/protocols.md, Loki):
//! `service` from the first of [`SERVICE_LABELS`], `host` from
//! [`HOST_LABELS`], `level` from [`LEVEL_LABELS`] (Loki 3 picks
//! `service_name` from the same kind of list).

use std::collections::BTreeMap;

use prost::Message;
use serde::Deserialize;
use tocsin_proto::loki::PushRequest;
use tocsin_proto::v1::{Label, LogEvent};

use crate::otlp::{MAX_ATTRIBUTES, MAX_EXPANDED_BYTES};

/// Labels that name the service, first match wins.
pub const SERVICE_LABELS: [&str; 11] = [
    "service_name",
    "service",
    "app",
    "application",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "component",
    "workload",
    "job",
];
/// Labels that name the host.
pub const HOST_LABELS: [&str; 5] = ["host", "hostname", "host_name", "node", "instance"];
/// Labels that carry the level.
pub const LEVEL_LABELS: [&str; 5] = ["level", "detected_level", "severity", "lvl", "loglevel"];

#[derive(Debug, thiserror::Error)]
pub enum LokiError {
    #[error("body is not valid snappy: {0}")]
    Snappy(#[from] snap::Error),
    #[error("snappy body decompresses to {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("body is not a Loki PushRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("body is not Loki push JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "the push holds {entries} entries; at most {} fit the request's budget of {MAX_EXPANDED_BYTES} bytes (each \
         entry costs {ENTRY_COST} bytes and its stream's labels); send fewer entries per push",
        MAX_EXPANDED_BYTES / ENTRY_COST
    )]
    TooManyEntries { entries: usize },
}

/// The events of a push, and the entries refused (by stream) with the first
/// reason.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<LogEvent>,
    pub rejected: usize,
    pub first_error: Option<String>,
}

impl Decoded {
    fn reject(&mut self, n: usize, reason: String) {
        self.rejected += n;
        self.first_error.get_or_insert(reason);
    }
}

/// What each entry is charged against the request's expansion budget on
/// top of its labels: an entry of a few bytes on the wire becomes an event
/// of a few hundred in memory, and snappy or gzip make millions of empty
/// entries a few kilobytes.
pub const ENTRY_COST: usize = 256;

fn lossy(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A snappy-compressed protobuf push (block format, as Loki's clients
/// send), bounded by `max_decoded` bytes once decompressed. Entries without
/// a time get `now_ns`.
pub fn from_protobuf(body: &[u8], max_decoded: usize, now_ns: i64) -> Result<Decoded, LokiError> {
    let size = snap::raw::decompress_len(body)?;
    if size > max_decoded {
        return Err(LokiError::TooLarge { size, limit: max_decoded });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    // Counted on the wire first: decoding makes each entry (2 bytes at
    // least) a struct of about 80, so a 64 MiB body of empty entries would
    // take gigabytes before the budget below could refuse it.
    let entries = crate::wire::count(&raw, crate::wire::LOKI_ENTRIES).unwrap_or(0);
    if entries > MAX_EXPANDED_BYTES / ENTRY_COST {
        return Err(LokiError::TooManyEntries { entries });
    }
    let req = PushRequest::decode(raw.as_slice())?;
    let mut out = Decoded::default();
    let mut budget = MAX_EXPANDED_BYTES;
    for s in req.streams {
        let text = lossy(s.labels);
        let labels = match parse_labels(&text) {
            Ok(l) => l,
            Err(e) => {
                out.reject(s.entries.len(), format!("stream {:?}: {e}", tocsin_auth::clip(&text)));
                continue;
            }
        };
        let Some(stream) = Stream::new(labels, s.entries.len(), &mut budget, &mut out) else { continue };
        for e in s.entries {
            let ts = e
                .timestamp
                .map(|t| t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos)))
                .filter(|t| *t != 0)
                .unwrap_or(now_ns);
            let metadata = e.structured_metadata.into_iter().map(|l| (lossy(l.name), lossy(l.value))).collect();
            stream.push(ts, lossy(e.line), metadata, &mut out);
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct PushJson {
    streams: Vec<StreamJson>,
}

#[derive(Deserialize)]
struct StreamJson {
    #[serde(default)]
    stream: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<EntryJson>,
}

/// `["<unix ns>", "line"]` or `["<unix ns>", "line", {"name": "value"}]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum EntryJson {
    Plain((TimeJson, String)),
    WithMetadata((TimeJson, String, BTreeMap<String, String>)),
}

/// Loki sends the time as a string of nanoseconds; a number is taken too.
#[derive(Deserialize)]
#[serde(untagged)]
enum TimeJson {
    Text(String),
    Number(i64),
}

/// A JSON push (`Content-Type: application/json`). Entries with time 0
/// get `now_ns`.
pub fn from_json(body: &[u8], now_ns: i64) -> Result<Decoded, LokiError> {
    let req: PushJson = serde_json::from_slice(body)?;
    let mut out = Decoded::default();
    let mut budget = MAX_EXPANDED_BYTES;
    for s in req.streams {
        let labels: Vec<(String, String)> = s.stream.into_iter().collect();
        if let Some((bad, _)) = labels.iter().find(|(k, _)| !is_label_name(k)) {
            out.reject(s.values.len(), format!("{:?} is not a label name", tocsin_auth::clip(bad)));
            continue;
        }
        let Some(stream) = Stream::new(labels, s.values.len(), &mut budget, &mut out) else { continue };
        for e in s.values {
            let (ts, line, metadata) = match e {
                EntryJson::Plain((t, l)) => (t, l, Vec::new()),
                EntryJson::WithMetadata((t, l, m)) => (t, l, m.into_iter().collect()),
            };
            let ts = match ts {
                TimeJson::Number(n) => n,
                TimeJson::Text(t) => match t.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => {
                        out.reject(1, format!("timestamp {:?} is not a number of nanoseconds", tocsin_auth::clip(&t)));
                        continue;
                    }
                },
            };
            stream.push(if ts == 0 { now_ns } else { ts }, line, metadata, &mut out);
        }
    }
    Ok(out)
}

/// Loki's (and Prometheus') label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One stream's labels, split into the three columns and the attributes
/// every entry carries.
struct Stream {
    service: String,
    host: String,
    level: String,
    attributes: Vec<Label>,
}

impl Stream {
    /// `None` (the entries counted as refused) when the stream has too
    /// many labels, or its labels copied into every entry would exceed the
    /// request's budget.
    fn new(labels: Vec<(String, String)>, entries: usize, budget: &mut usize, out: &mut Decoded) -> Option<Stream> {
        if labels.len() > MAX_ATTRIBUTES {
            tocsin_storage::refusals::refused("max_otlp_attributes");
            out.reject(entries, format!("a stream has {} labels; at most {MAX_ATTRIBUTES} are accepted", labels.len()));
            return None;
        }
        let bytes =
            (labels.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>() + ENTRY_COST).saturating_mul(entries);
        if bytes > *budget {
            tocsin_storage::refusals::refused("max_otlp_expanded_bytes");
            out.reject(
                entries,
                format!(
                    "the request expands to more than {MAX_EXPANDED_BYTES} bytes (a stream's labels are copied into \
                     every entry, and each entry costs {ENTRY_COST} bytes more); send fewer entries per push"
                ),
            );
            return None;
        }
        *budget -= bytes;
        let pick = |names: &[&str]| {
            names.iter().find_map(|n| labels.iter().find(|(k, v)| k == n && !v.is_empty()).map(|(_, v)| v.clone()))
        };
        Some(Stream {
            service: pick(&SERVICE_LABELS).unwrap_or_default(),
            host: pick(&HOST_LABELS).unwrap_or_default(),
            level: pick(&LEVEL_LABELS).unwrap_or_default(),
            attributes: labels.into_iter().map(|(name, value)| Label { name, value }).collect(),
        })
    }

    fn push(&self, ts: i64, line: String, metadata: Vec<(String, String)>, out: &mut Decoded) {
        if metadata.len() > MAX_ATTRIBUTES {
            out.reject(1, format!("an entry has {} structured metadata; at most {MAX_ATTRIBUTES}", metadata.len()));
            return;
        }
        let mut attributes = self.attributes.clone();
        let mut level = self.level.clone();
        for (name, value) in metadata {
            if level.is_empty() && LEVEL_LABELS.contains(&name.as_str()) {
                level = value.clone();
            }
            match attributes.iter_mut().find(|l| l.name == name) {
                Some(l) => l.value = value,
                None => attributes.push(Label { name, value }),
            }
        }
        out.events.push(LogEvent {
            timestamp: ts,
            service: self.service.clone(),
            host: self.host.clone(),
            level,
            message: line,
            trace_id: String::new(),
            span_id: String::new(),
            attributes,
        });
    }
}

impl crate::IngestService {
    /// Writes a decoded push into `logs` of `database` (empty: `public`).
    /// The answer's refusals include the entries refused while decoding
    /// (counted first), and the first reason.
    pub async fn loki(
        &self,
        who: &tocsin_auth::Principal,
        database: &str,
        decoded: Decoded,
    ) -> Result<(usize, Option<String>), crate::IngestError> {
        let Decoded { events, mut rejected, first_error: mut error } = decoded;
        self.metrics.items_rejected.fetch_add(rejected as u64, std::sync::atomic::Ordering::Relaxed);
        if !events.is_empty() {
            let req =
                tocsin_proto::v1::WriteLogsRequest { database: database.to_string(), stream: String::new(), events };
            let resp = self.logs(who, req).await?;
            rejected += resp.rejected.len();
            if let Some(r) = resp.rejected.first() {
                error.get_or_insert_with(|| r.reason.clone());
            }
        }
        Ok((rejected, error))
    }
}

/// A Prometheus label set as Loki's protobuf streams carry it:
/// `{job="varlogs", host="web1"}`; values are double-quoted with `\"`,
/// `\\` and `\n` escapes.
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let inner = s.trim();
    let inner = inner
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("a label set is written {name=\"value\", ...}")?;
    let mut out = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("a label has no '='")?;
        let name = rest[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("{:?} is not a label name", tocsin_auth::clip(name)));
        }
        if out.len() == MAX_ATTRIBUTES {
            return Err(format!("more than {MAX_ATTRIBUTES} labels"));
        }
        let after = rest[eq + 1..].trim_start();
        let body = after.strip_prefix('"').ok_or_else(|| format!("the value of {name} is not quoted"))?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of {name} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("the value of {name} is not closed")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = body[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("expected ',' or '}}' after the value of {name}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_proto::loki::{EntryAdapter, LabelPairAdapter, StreamAdapter, Timestamp};

    fn attr<'a>(e: &'a LogEvent, k: &str) -> Option<&'a str> {
        e.attributes.iter().find(|l| l.name == k).map(|l| l.value.as_str())
    }

    #[test]
    fn label_sets_parse_with_escapes() {
        let l = parse_labels(r#"{job="varlogs", host="web 1",msg="a \"q\" \\ b\nc" }"#).expect("parses");
        assert_eq!(
            l,
            [
                ("job".into(), "varlogs".into()),
                ("host".into(), "web 1".into()),
                ("msg".into(), "a \"q\" \\ b\nc".into())
            ]
        );
        assert_eq!(parse_labels("{}").expect("empty"), []);
        for (bad, why) in [
            ("job=\"x\"", "written {"),
            ("{job}", "no '='"),
            ("{job=x}", "not quoted"),
            ("{job=\"x}", "not closed"),
            ("{job=\"x\" host=\"y\"}", "expected ','"),
            ("{a-b=\"x\"}", "not a label name"),
            ("{1a=\"x\"}", "not a label name"),
        ] {
            let err = parse_labels(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn protobuf_pushes_map_labels_to_columns_and_attributes() {
        let req = PushRequest {
            streams: vec![
                StreamAdapter {
                    labels: br#"{job="varlogs", hostname="web1", level="WARNING", filename="/var/log/app.log"}"#
                        .to_vec(),
                    entries: vec![EntryAdapter {
                        timestamp: Some(Timestamp { seconds: 1_700_000_000, nanos: 5 }),
                        line: b"disk almost full".to_vec(),
                        structured_metadata: vec![LabelPairAdapter { name: b"trace".to_vec(), value: b"abc".to_vec() }],
                    }],
                    hash: 0,
                },
                StreamAdapter { labels: b"{broken".to_vec(), entries: vec![EntryAdapter::default(); 3], hash: 0 },
            ],
        };
        let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("snappy");
        let d = from_protobuf(&body, 1 << 20, 42).expect("decodes");
        assert_eq!(d.events.len(), 1);
        assert_eq!((d.rejected, d.first_error.as_deref().is_some_and(|e| e.contains("{broken"))), (3, true));
        let e = &d.events[0];
        assert_eq!(e.timestamp, 1_700_000_000_000_000_005);
        assert_eq!((e.service.as_str(), e.host.as_str(), e.level.as_str()), ("varlogs", "web1", "WARNING"));
        assert_eq!(e.message, "disk almost full");
        assert_eq!(
            (attr(e, "filename"), attr(e, "trace"), attr(e, "job")),
            (Some("/var/log/app.log"), Some("abc"), Some("varlogs"))
        );
        let err = from_protobuf(&body, 10, 42).expect_err("over the limit");
        assert!(err.to_string().contains("over the limit of 10"), "{err}");
        assert!(from_protobuf(b"\xff\xff\xff\xff\xff", 1 << 20, 42).is_err());
        // A line that is not UTF-8 is kept, replaced; an entry without a
        // time is now's; a million empty entries are refused, not expanded.
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: b"{app=\"x\"}".to_vec(),
                entries: vec![EntryAdapter {
                    timestamp: None,
                    line: b"bad \xff byte".to_vec(),
                    structured_metadata: vec![],
                }],
                hash: 0,
            }],
        };
        let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("snappy");
        let d = from_protobuf(&body, 1 << 20, 42).expect("decodes");
        assert_eq!((d.events[0].message.as_str(), d.events[0].timestamp), ("bad \u{fffd} byte", 42));
        let many = PushRequest {
            streams: vec![StreamAdapter {
                labels: b"{}".to_vec(),
                entries: vec![EntryAdapter::default(); 1 << 20],
                hash: 0,
            }],
        };
        let body = snap::raw::Encoder::new().compress_vec(&many.encode_to_vec()).expect("snappy");
        let err = from_protobuf(&body, 64 << 20, 42).expect_err("refused before decoding");
        assert!(err.to_string().contains("holds 1048576 entries"), "{err}");
    }

    #[test]
    fn json_pushes_with_and_without_metadata() {
        let body = br#"{"streams":[{"stream":{"service_name":"billing","job":"x","instance":"h1"},
            "values":[["1700000000000000001","one"],["1700000000000000002","two",{"level":"error","order":"17"}],
                      ["soon","bad time"],[1700000000000000003,"numeric time"]]}]}"#;
        let d = from_json(body, 42).expect("decodes");
        let msgs: Vec<&str> = d.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs, ["one", "two", "numeric time"]);
        assert_eq!(d.rejected, 1);
        assert!(d.first_error.as_deref().is_some_and(|e| e.contains("\"soon\"")), "{:?}", d.first_error);
        assert_eq!((d.events[0].service.as_str(), d.events[0].host.as_str()), ("billing", "h1"));
        assert_eq!((d.events[0].level.as_str(), d.events[1].level.as_str()), ("", "error"));
        assert_eq!(attr(&d.events[1], "order"), Some("17"));
        assert!(from_json(b"{\"streams\": 3}", 42).expect_err("not a list").to_string().contains("Loki push JSON"));
        let bad = br#"{"streams":[{"stream":{"a b":"x"},"values":[["0","zero time"]]},{"stream":{"ok":"y"},"values":[["0","now"]]}]}"#;
        let d = from_json(bad, 42).expect("decodes");
        assert_eq!((d.rejected, d.events.len(), d.events[0].timestamp), (1, 1, 42));
        assert!(
            d.first_error.as_deref().is_some_and(|e| e.contains("\"a b\" is not a label name")),
            "{:?}",
            d.first_error
        );
    }

    #[test]
    fn a_stream_with_too_many_labels_is_refused_whole() {
        let labels: BTreeMap<String, String> = (0..=MAX_ATTRIBUTES).map(|i| (format!("l{i}"), "v".into())).collect();
        let body = serde_json::json!({"streams": [{"stream": labels, "values": [["1", "a"], ["2", "b"]]}]});
        let d = from_json(body.to_string().as_bytes(), 42).expect("decodes");
        assert_eq!((d.events.len(), d.rejected), (0, 2));
        assert!(d.first_error.as_deref().is_some_and(|e| e.contains("at most 128")), "{:?}", d.first_error);
    }
}
