//! Elasticsearch's `_bulk` API (`POST /_bulk`, `POST /{index}/_bulk`), as
//! Logstash, Filebeat, Fluent Bit, Vector and the Elasticsearch clients
//! send logs: NDJSON, an action line (`index` or `create`) then the
//! document. Each document is one log event in the table named after its
//! index (a trailing date, as in `logstash-2026.12.05`, dropped: one table,
//! not one per day). Mapping in docs/protocols.md (Elasticsearch `_bulk`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tocsin_proto::v1::{Label, LogEvent, WriteLogsRequest};

/// Fields a document's columns come from, first match wins (dotted names
/// are nested objects flattened).
const TIME_FIELDS: [&str; 2] = ["@timestamp", "timestamp"];
const MESSAGE_FIELDS: [&str; 3] = ["message", "log", "msg"];
const SERVICE_FIELDS: [&str; 6] = ["service.name", "service", "app", "application", "container.name", "program"];
const HOST_FIELDS: [&str; 4] = ["host.name", "host.hostname", "hostname", "host"];
const LEVEL_FIELDS: [&str; 4] = ["log.level", "level", "severity", "loglevel"];
const TRACE_FIELDS: [&str; 2] = ["trace.id", "trace_id"];
const SPAN_FIELDS: [&str; 2] = ["span.id", "span_id"];

/// Most fields one document may have once flattened.
pub const MAX_FIELDS: usize = 256;
/// Longest field name once flattened (`a.b.c`).
pub const MAX_FIELD_NAME: usize = 1024;
/// Most actions in one request: each holds an item, an event and its
/// answer (a few KB), and a gzip body of empty documents is 30 bytes per
/// million. Logstash, Filebeat and Vector send batches of at most a few
/// thousand.
pub const MAX_ACTIONS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the body is empty: _bulk takes action and document lines (NDJSON)")]
    Empty,
}

/// One action's outcome, in the order of the request.
#[derive(Debug, Clone)]
pub struct Item {
    pub action: &'static str,
    pub index: String,
    pub id: String,
    /// 201 created; 400 refused; 429 to retry.
    pub status: u16,
    pub error: Option<(&'static str, String)>,
}

/// A parsed `_bulk` request: events by table, each with its item's place.
#[derive(Debug, Default)]
pub struct Bulk {
    pub tables: BTreeMap<String, Vec<(usize, LogEvent)>>,
    pub items: Vec<Item>,
}

/// The table a `_bulk` index writes: lower case, a trailing date
/// (`-2026.12.05`, `-2026.12`, `-20261205`) dropped, characters a table name
/// may not have replaced by `_`.
pub fn table_of_index(index: &str) -> Result<String, String> {
    let mut name = index.trim().to_ascii_lowercase();
    for sep in ['-', '_'] {
        if let Some((head, tail)) = name.rsplit_once(sep)
            && !head.is_empty()
            && tail.len() >= 6
            && tail.chars().all(|c| c.is_ascii_digit() || c == '.')
            && tail.starts_with(|c: char| c.is_ascii_digit())
        {
            name = head.to_string();
            break;
        }
    }
    let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    tocsin_storage::write::check_table_name(&name).map_err(|e| format!("index {index:?}: {e}"))?;
    Ok(name)
}

/// Reads a `_bulk` body. `default_index` is the path's (`/{index}/_bulk`).
/// A line that is not JSON fails the request (the pairing of action and
/// document lines is lost after it); a document that cannot be stored is
/// its item's error.
pub fn parse(body: &[u8], default_index: Option<&str>, now_ns: i64) -> Result<Bulk, ElasticError> {
    let mut out = Bulk::default();
    let mut lines = body.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let bad = |line: usize, reason: String| ElasticError::Line { line: line + 1, reason };
    let mut seen = false;
    while let Some((n, line)) = lines.next() {
        seen = true;
        let action: Map<String, Value> = serde_json::from_slice(line).map_err(|e| bad(n, format!("action: {e}")))?;
        let Some((verb, meta)) = action.into_iter().next() else {
            return Err(bad(n, "an action line names one action: {\"index\": {...}}".into()));
        };
        let verb: &'static str = match verb.as_str() {
            "index" => "index",
            "create" => "create",
            "update" => "update",
            "delete" => "delete",
            other => return Err(bad(n, format!("unknown action {:?}", tocsin_auth::clip(other)))),
        };
        let meta = meta.as_object().cloned().unwrap_or_default();
        let index = meta.get("_index").and_then(Value::as_str).or(default_index).unwrap_or("").to_string();
        let id = meta.get("_id").map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
        let item = out.items.len();
        let id = id.unwrap_or_else(|| format!("{now_ns:x}-{item}"));
        let mut push = |status: u16, error: Option<(&'static str, String)>| {
            out.items.push(Item { action: verb, index: index.clone(), id: id.clone(), status, error });
        };
        if verb == "delete" {
            push(
                400,
                Some(("illegal_argument_exception", "Tocsin keeps logs append-only: delete is not supported".into())),
            );
            continue;
        }
        let Some((dn, doc)) = lines.next() else {
            return Err(bad(n, format!("the {verb} action has no document line after it")));
        };
        if verb == "update" {
            push(
                400,
                Some(("illegal_argument_exception", "Tocsin keeps logs append-only: update is not supported".into())),
            );
            continue;
        }
        let doc: Map<String, Value> = match serde_json::from_slice(doc) {
            Ok(d) => d,
            Err(e) => {
                push(
                    400,
                    Some(("mapper_parsing_exception", format!("line {}: document is not a JSON object: {e}", dn + 1))),
                );
                continue;
            }
        };
        let table = match table_of_index(&index) {
            Ok(t) if !index.is_empty() => t,
            Ok(_) => {
                push(400, Some(("action_request_validation_exception", "index is missing".into())));
                continue;
            }
            Err(e) => {
                push(400, Some(("invalid_index_name_exception", e)));
                continue;
            }
        };
        match event(doc, now_ns) {
            Ok(e) => {
                out.tables.entry(table).or_default().push((item, e));
                push(201, None);
            }
            Err(e) => push(400, Some(("mapper_parsing_exception", e))),
        }
    }
    if !seen {
        return Err(ElasticError::Empty);
    }
    Ok(out)
}

/// Nested objects as dotted names; arrays as JSON text; nulls left out.
fn flatten(prefix: &str, v: Value, out: &mut BTreeMap<String, Value>) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if prefix.len() + k.len() >= MAX_FIELD_NAME {
                    return Err(format!("a field name is longer than {MAX_FIELD_NAME} bytes once flattened"));
                }
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out)?;
            }
        }
        Value::Null => {}
        v => {
            if out.len() >= MAX_FIELDS {
                return Err(format!("the document has more than {MAX_FIELDS} fields"));
            }
            // `{"a.b": 1, "a": {"b": 2}}` names one field twice: refused
            // rather than one value kept silently.
            if out.insert(prefix.to_string(), v).is_some() {
                return Err(format!("field {:?} is given twice (once dotted, once nested)", tocsin_auth::clip(prefix)));
            }
        }
    }
    Ok(())
}

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

/// `@timestamp` as Elasticsearch's default format reads it
/// (`strict_date_optional_time||epoch_millis`): ISO 8601 with or without an
/// offset (none is UTC; `+0200` and `Z` both), minutes or fractions
/// optional, a date alone (its midnight UTC), or epoch milliseconds as a
/// number or as digits (a string of 4 digits or fewer is a year).
fn time(v: &Value) -> Result<i64, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let millis = |ms: f64| {
        let ns = ms * 1e6;
        if ns.is_finite() && ns.abs() < 9.2e18 {
            Ok(ns as i64)
        } else {
            Err(format!("@timestamp {ms} is out of range"))
        }
    };
    let bad =
        |s: &str| format!("@timestamp {:?} is not an ISO 8601 date-time or epoch milliseconds", tocsin_auth::clip(s));
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => ms.checked_mul(1_000_000).ok_or_else(|| format!("@timestamp {ms} is out of range")),
            None => millis(n.as_f64().ok_or_else(|| format!("@timestamp {n} is out of range"))?),
        },
        Value::String(s) if s.len() > 4 && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<i64>()
            .ok()
            .and_then(|ms| ms.checked_mul(1_000_000))
            .ok_or_else(|| format!("@timestamp {s:?} is out of range")),
        Value::String(s) => {
            let t = s.trim();
            let with_offset = ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z", "%Y-%m-%d %H:%M:%S%.f%#z"]
                .iter()
                .find_map(|f| DateTime::parse_from_str(&t.replace('Z', "+00:00"), f).ok())
                .map(|d| d.to_utc());
            let utc = with_offset
                .or_else(|| {
                    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S%.f"]
                        .iter()
                        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
                        .map(|d| d.and_utc())
                })
                .or_else(|| {
                    NaiveDate::parse_from_str(t, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc())
                })
                .or_else(|| {
                    (t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| t.parse::<i32>().ok().and_then(|y| NaiveDate::from_ymd_opt(y, 1, 1)))
                        .flatten()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc())
                })
                .ok_or_else(|| bad(s))?;
            utc.timestamp_nanos_opt().ok_or_else(|| format!("@timestamp {s:?} is out of range"))
        }
        other => Err(format!("@timestamp {other} is not a date")),
    }
}

/// One document as a log event: the fields named above become the
/// columns, every other field an attribute.
fn event(doc: Map<String, Value>, now_ns: i64) -> Result<LogEvent, String> {
    let mut fields = BTreeMap::new();
    flatten("", Value::Object(doc), &mut fields)?;
    let mut take = |names: &[&str]| names.iter().find_map(|n| fields.remove(*n));
    let timestamp = match take(&TIME_FIELDS) {
        Some(v) => time(&v)?,
        None => now_ns,
    };
    let mut pick = |names: &[&str]| take(names).map(text).unwrap_or_default();
    let message = pick(&MESSAGE_FIELDS);
    let service = pick(&SERVICE_FIELDS);
    let host = pick(&HOST_FIELDS);
    let level = pick(&LEVEL_FIELDS);
    let trace_id = pick(&TRACE_FIELDS);
    let span_id = pick(&SPAN_FIELDS);
    let attributes = fields.into_iter().map(|(name, v)| Label { name, value: text(v) }).collect();
    Ok(LogEvent { timestamp, service, host, level, message, trace_id, span_id, attributes })
}

impl crate::IngestService {
    /// Writes a parsed `_bulk` request into `database`, one write per
    /// table; fills in the items of the events storage refused (400) or
    /// asked to retry (429, as Elasticsearch asks clients to back off).
    pub async fn elastic_bulk(&self, who: &tocsin_auth::Principal, database: &str, bulk: Bulk) -> Vec<Item> {
        use tocsin_storage::errors::Classify as _;
        let Bulk { tables, mut items } = bulk;
        for (table, events) in tables {
            let places: Vec<usize> = events.iter().map(|(i, _)| *i).collect();
            // An index named like a metrics table (Logstash's `nginx-*` next
            // to Telegraf's `nginx`) would mix log rows into it.
            if let Some(schema) = self.storage.table_schema(crate::database(database), &table)
                && schema.field_with_name("message").is_err()
            {
                for i in &places {
                    if let Some(item) = items.get_mut(*i) {
                        item.status = 400;
                        item.error = Some((
                            "illegal_argument_exception",
                            format!(
                                "index {:?} maps to table {table}, which holds no logs (no message column); use another index name",
                                item.index
                            ),
                        ));
                    }
                }
                continue;
            }
            let req = WriteLogsRequest {
                database: database.to_string(),
                stream: table,
                events: events.into_iter().map(|(_, e)| e).collect(),
            };
            match self.logs(who, req).await {
                Ok(resp) => {
                    for r in resp.rejected {
                        if let Some(item) = places.get(r.index as usize).and_then(|i| items.get_mut(*i)) {
                            item.status = 400;
                            item.error = Some(("mapper_parsing_exception", r.reason));
                        }
                    }
                }
                Err(e) => {
                    let (status, kind) = if e.class().retry_after() {
                        (429, "es_rejected_execution_exception")
                    } else if matches!(e, crate::IngestError::Auth(_)) {
                        (403, "security_exception")
                    } else {
                        (400, "illegal_argument_exception")
                    };
                    for i in &places {
                        if let Some(item) = items.get_mut(*i) {
                            item.status = status;
                            item.error = Some((kind, e.to_string()));
                        }
                    }
                }
            }
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(e: &'a LogEvent, k: &str) -> Option<&'a str> {
        e.attributes.iter().find(|l| l.name == k).map(|l| l.value.as_str())
    }

    #[test]
    fn indices_name_tables_without_their_date() {
        assert_eq!(table_of_index("logstash-2026.12.05").as_deref(), Ok("logstash"));
        assert_eq!(table_of_index("filebeat-8.11.0-2026.12.05").as_deref(), Ok("filebeat_8_11_0"));
        assert_eq!(table_of_index("App-Logs_202612").as_deref(), Ok("app_logs"));
        assert_eq!(table_of_index("logs-generic-default").as_deref(), Ok("logs_generic_default"));
        assert_eq!(table_of_index("web").as_deref(), Ok("web"));
        assert!(table_of_index("").is_err());
    }

    #[test]
    fn documents_become_events() {
        let body = br#"{"index":{"_index":"logstash-2026.12.05","_id":"a1"}}
{"@timestamp":"2026-12-05T10:00:00.123Z","message":"payment declined","log":{"level":"ERROR"},"service":{"name":"billing"},"host":{"name":"db1","ip":["10.0.0.1"]},"order":17,"ok":false,"trace":{"id":"abc"},"nothing":null}

{"create":{}}
{"@timestamp":1764928800000,"msg":"epoch millis","level":"info"}
{"delete":{"_index":"x","_id":"1"}}
{"update":{"_index":"x","_id":"1"}}
{"doc":{"a":1}}
{"index":{"_index":""}}
{"message":"x"}
{"index":{"_index":"web"}}
{"@timestamp":"yesterday","message":"bad time"}
{"index":{"_index":"web"}}
not json
"#;
        let b = parse(body, Some("default-idx"), 7).expect("parses");
        let status: Vec<u16> = b.items.iter().map(|i| i.status).collect();
        assert_eq!(status, [201, 201, 400, 400, 400, 400, 400]);
        assert_eq!((b.items[0].id.as_str(), b.items[1].index.as_str()), ("a1", "default-idx"));
        assert!(b.items[5].error.as_ref().is_some_and(|(_, r)| r.contains("\"yesterday\"")), "{:?}", b.items[5]);
        assert!(b.items[6].error.as_ref().is_some_and(|(_, r)| r.contains("line 14")), "{:?}", b.items[6]);
        let (_, e) = &b.tables["logstash"][0];
        assert_eq!(e.timestamp, 1_796_464_800_123_000_000);
        assert_eq!((e.message.as_str(), e.service.as_str(), e.host.as_str()), ("payment declined", "billing", "db1"));
        assert_eq!((e.level.as_str(), e.trace_id.as_str()), ("ERROR", "abc"));
        assert_eq!(
            (attr(e, "order"), attr(e, "ok"), attr(e, "host.ip")),
            (Some("17"), Some("false"), Some("[\"10.0.0.1\"]"))
        );
        assert_eq!(attr(e, "nothing"), None);
        let (_, e) = &b.tables["default_idx"][0];
        assert_eq!(
            (e.timestamp, e.message.as_str(), e.level.as_str()),
            (1_764_928_800_000_000_000, "epoch millis", "info")
        );
    }

    #[test]
    fn timestamps_in_elasticsearchs_default_formats() {
        let t = |v: Value| time(&v);
        let noon = 1_796_472_000_000_000_000; // 2026-12-05T12:00:00Z
        for s in [
            "2026-12-05T12:00:00Z",
            "2026-12-05T12:00:00",
            "2026-12-05T12:00:00.000",
            "2026-12-05 12:00:00",
            "2026-12-05T12:00Z",
            "2026-12-05T14:00:00+0200",
            "2026-12-05T14:00:00+02:00",
        ] {
            assert_eq!(t(Value::from(s)), Ok(noon), "{s}");
        }
        assert_eq!(t(Value::from("2026-12-05")), Ok(noon - 12 * 3_600_000_000_000));
        assert_eq!(t(Value::from(1_796_472_000_000_i64)), Ok(noon));
        assert_eq!(t(Value::from("1796472000000")), Ok(noon));
        // Fractional milliseconds go through a double: within a microsecond.
        let frac = t(Value::from(1_796_472_000_000.5)).expect("fraction");
        assert!((frac - (noon + 500_000)).abs() < 1_000, "{frac}");
        assert_eq!(t(Value::from("2026")), Ok(1_767_225_600_000_000_000), "a year, not 2026 ms");
        assert!(t(Value::from("yesterday")).is_err());
        assert!(t(serde_json::json!({"x": 1})).is_err());
    }

    #[test]
    fn colliding_and_overlong_field_names_are_refused() {
        let body = concat!(
            "{\"index\":{\"_index\":\"a\"}}\n{\"a.b\":1,\"a\":{\"b\":2},\"message\":\"m\"}\n",
            "{\"index\":{\"_index\":\"a\"}}\n",
        );
        let long = format!("{{\"{}\":{{\"{}\":1}}}}\n", "k".repeat(600), "j".repeat(600));
        let b = parse(format!("{body}{long}").as_bytes(), None, 0).expect("parses");
        let errors: Vec<String> = b.items.iter().map(|i| i.error.clone().map(|e| e.1).unwrap_or_default()).collect();
        assert!(errors[0].contains("given twice"), "{errors:?}");
        assert!(errors[1].contains("longer than 1024"), "{errors:?}");
    }

    #[test]
    fn broken_requests_name_the_line() {
        let err = parse(b"{\"index\":{}}\nnot json\n{oops\n", None, 0).expect_err("action line");
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = parse(b"{\"index\":{\"_index\":\"a\"}}\n", None, 0).expect_err("no document");
        assert!(err.to_string().contains("no document line"), "{err}");
        assert!(matches!(parse(b"\n\n", None, 0), Err(ElasticError::Empty)));
        let many: String = (0..=MAX_FIELDS).map(|i| format!("\"f{i}\":1,")).collect();
        let body = format!("{{\"index\":{{\"_index\":\"a\"}}}}\n{{{}\"message\":\"m\"}}\n", many);
        let b = parse(body.as_bytes(), None, 0).expect("parses");
        assert_eq!(b.items[0].status, 400);
    }
}
