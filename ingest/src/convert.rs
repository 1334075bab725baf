//! Proto requests to storage writes. Columnar in, columnar out: the arrays of
//! timestamps and values are moved, not copied element by element.

use std::collections::HashMap;

use tocsin_proto::v1::{
    FieldColumn as PbField, LogEvent, RowSeries, Series, WriteLogsRequest, WriteRowsRequest, WriteSeriesRequest,
    field_column::Values,
};
use tocsin_storage::{FieldColumn, FieldValues, SeriesBlock, TableWrite, WriteError, WriteLimits};

/// Default table of log events.
pub const LOGS_TABLE: &str = "logs";
/// Prometheus' label carrying the metric name.
pub(crate) const METRIC_NAME_LABEL: &str = "__name__";
/// Column of a Prometheus-style sample's value.
pub const VALUE_COLUMN: &str = "value";

/// An item rejected before it reached storage.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyRejection {
    pub item: u32,
    pub reason: String,
}

/// The items (points, log events) that a decoder grouped into a block
/// besides the block's own `item`: when storage refuses the block, every
/// one of them is reported, not only the first.
pub type BlockMembers = HashMap<u32, Vec<u32>>;

/// Series blocks grouped into one write per table, tables in the order they
/// first appear: what every protocol's decoder builds.
#[derive(Debug, Default)]
pub struct TableWrites {
    writes: Vec<TableWrite>,
    index: HashMap<String, usize>,
}

impl TableWrites {
    /// Adds `block` to `table`'s write; returns where it is, for
    /// [`TableWrites::block_mut`].
    pub fn push(&mut self, table: &str, block: SeriesBlock) -> (usize, usize) {
        let w = match self.index.get(table) {
            Some(&w) => w,
            None => {
                self.writes.push(TableWrite { table: table.to_string(), blocks: Vec::new() });
                self.index.insert(table.to_string(), self.writes.len() - 1);
                self.writes.len() - 1
            }
        };
        self.writes[w].blocks.push(block);
        (w, self.writes[w].blocks.len() - 1)
    }

    pub fn block(&self, (w, b): (usize, usize)) -> &SeriesBlock {
        &self.writes[w].blocks[b]
    }

    pub fn block_mut(&mut self, (w, b): (usize, usize)) -> &mut SeriesBlock {
        &mut self.writes[w].blocks[b]
    }

    pub fn into_vec(self) -> Vec<TableWrite> {
        self.writes
    }
}

/// A Prometheus-style sample block: one series, a Float64 `value` column.
pub fn value_block(item: u32, tags: Vec<(String, String)>, timestamps: Vec<i64>, values: Vec<f64>) -> SeriesBlock {
    SeriesBlock {
        item,
        tags,
        timestamps,
        fields: vec![FieldColumn { name: VALUE_COLUMN.into(), values: FieldValues::F64(values), validity: None }],
    }
}

/// Prometheus-style series, grouped into one write per metric (table).
pub fn series_to_writes(req: WriteSeriesRequest) -> (Vec<TableWrite>, Vec<EarlyRejection>) {
    let mut writes = TableWrites::default();
    let mut rejected = Vec::new();
    for (i, s) in req.series.into_iter().enumerate() {
        let Series { mut metric, labels, timestamps, values } = s;
        let mut tags = Vec::with_capacity(labels.len());
        for l in labels {
            if l.name == METRIC_NAME_LABEL {
                if metric.is_empty() {
                    metric = l.value;
                }
            } else {
                tags.push((l.name, l.value));
            }
        }
        if metric.is_empty() {
            rejected.push(EarlyRejection { item: i as u32, reason: "series has no metric name".into() });
            continue;
        }
        writes.push(&metric, value_block(i as u32, tags, timestamps, values));
    }
    (writes.into_vec(), rejected)
}

/// Influx-style rows of one table.
pub fn rows_to_write(req: WriteRowsRequest) -> (TableWrite, Vec<EarlyRejection>) {
    let mut blocks = Vec::with_capacity(req.series.len());
    let mut rejected = Vec::new();
    for (i, s) in req.series.into_iter().enumerate() {
        let RowSeries { tags, timestamps, fields } = s;
        match convert_fields(fields) {
            Ok(fields) => blocks.push(SeriesBlock {
                item: i as u32,
                tags: tags.into_iter().map(|l| (l.name, l.value)).collect(),
                timestamps,
                fields,
            }),
            Err(reason) => rejected.push(EarlyRejection { item: i as u32, reason }),
        }
    }
    (TableWrite { table: req.table, blocks }, rejected)
}

fn convert_fields(fields: Vec<PbField>) -> Result<Vec<FieldColumn>, String> {
    fields
        .into_iter()
        .map(|f| {
            let values = match f.values {
                Some(Values::F64(v)) => FieldValues::F64(v.values),
                Some(Values::I64(v)) => FieldValues::I64(v.values),
                Some(Values::U64(v)) => FieldValues::U64(v.values),
                Some(Values::Bool(v)) => FieldValues::Bool(v.values),
                Some(Values::Str(v)) => FieldValues::Str(v.values),
                None => return Err(format!("field {:?} has no values (set one of f64, i64, u64, bool, str)", f.name)),
            };
            Ok(FieldColumn { name: f.name, values, validity: None })
        })
        .collect()
}

/// Canonical level names, so that `level >= 'warn'`-style filters and
/// `GROUP BY level` see one spelling per level.
/// The table a log request writes to: its `stream`, or `logs`.
pub fn log_table(stream: &str) -> String {
    if stream.is_empty() { LOGS_TABLE.to_string() } else { stream.to_string() }
}

pub use tocsin_storage::schema::normalize_level;

#[derive(Default)]
struct LogGroup {
    items: Vec<u32>,
    timestamps: Vec<i64>,
    message: Vec<String>,
    trace_id: Vec<String>,
    span_id: Vec<String>,
    attributes: Vec<String>,
}

/// Log events, grouped by (service, host, level) so that each group is one
/// series of the logs table. Attributes are stored as a JSON object string
/// column `attributes` (see docs/data-model.md).
pub fn logs_to_write(
    req: WriteLogsRequest,
    max_message_bytes: usize,
    limits: &WriteLimits,
) -> (TableWrite, Vec<EarlyRejection>, BlockMembers) {
    let table = log_table(&req.stream);
    let mut groups: HashMap<(String, String, String), LogGroup> = HashMap::new();
    let mut rejected = Vec::new();
    for (i, e) in req.events.into_iter().enumerate() {
        let LogEvent { timestamp, service, host, level, message, trace_id, span_id, attributes } = e;
        if message.len() > max_message_bytes {
            rejected.push(EarlyRejection {
                item: i as u32,
                reason: format!("message is {} bytes, over the limit of {max_message_bytes}", message.len()),
            });
            continue;
        }
        if timestamp < 0 {
            rejected.push(EarlyRejection { item: i as u32, reason: format!("timestamp {timestamp} is before 1970") });
            continue;
        }
        let attrs = if attributes.is_empty() {
            String::new()
        } else {
            let map: serde_json::Map<String, serde_json::Value> =
                attributes.into_iter().map(|l| (l.name, serde_json::Value::String(l.value))).collect();
            serde_json::Value::Object(map).to_string()
        };
        // Storage refuses a whole block for one oversized value: check each
        // event's own values here so that only that event is refused.
        let oversized = [("message", &message), ("trace_id", &trace_id), ("span_id", &span_id), ("attributes", &attrs)]
            .into_iter()
            .find(|(_, v)| v.len() > limits.max_string_bytes);
        if let Some((column, v)) = oversized {
            tocsin_storage::refusals::refused("max_string_bytes");
            rejected.push(EarlyRejection {
                item: i as u32,
                reason: WriteError::ValueTooLarge {
                    column: column.into(),
                    len: v.len(),
                    limit: limits.max_string_bytes,
                }
                .to_string(),
            });
            continue;
        }
        let g = groups.entry((service, host, normalize_level(&level))).or_default();
        g.items.push(i as u32);
        g.timestamps.push(timestamp);
        g.message.push(message);
        g.trace_id.push(trace_id);
        g.span_id.push(span_id);
        g.attributes.push(attrs);
    }
    let mut blocks = Vec::with_capacity(groups.len());
    let mut members = BlockMembers::new();
    for ((service, host, level), g) in groups {
        if g.items.len() > 1 {
            members.insert(g.items[0], g.items[1..].to_vec());
        }
        let mut tags = Vec::with_capacity(3);
        for (k, v) in [("service", service), ("host", host), ("level", level)] {
            if !v.is_empty() {
                tags.push((k.to_string(), v));
            }
        }
        let optional = optional_text;
        let mut fields =
            vec![FieldColumn { name: "message".into(), values: FieldValues::Str(g.message), validity: None }];
        fields.extend(optional("trace_id", g.trace_id));
        fields.extend(optional("span_id", g.span_id));
        fields.extend(optional("attributes", g.attributes));
        blocks.push(SeriesBlock { item: g.items[0], tags, timestamps: g.timestamps, fields });
    }
    (TableWrite { table, blocks }, rejected, members)
}

/// A text field where an empty string is NULL; no column at all when
/// every value is empty (optional log and span columns).
pub(crate) fn optional_text(name: &str, v: Vec<String>) -> Option<FieldColumn> {
    if v.iter().all(String::is_empty) {
        return None;
    }
    let validity = v.iter().any(String::is_empty).then(|| v.iter().map(|s| !s.is_empty()).collect());
    Some(FieldColumn { name: name.into(), values: FieldValues::Str(v), validity })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_proto::v1::{DoubleValues, Label};

    #[test]
    fn series_group_by_metric_and_drop_the_name_label() {
        let req = WriteSeriesRequest {
            database: String::new(),
            series: vec![
                Series {
                    metric: "up".into(),
                    labels: vec![Label { name: "job".into(), value: "a".into() }],
                    timestamps: vec![1],
                    values: vec![1.0],
                },
                Series {
                    metric: String::new(),
                    labels: vec![Label { name: "__name__".into(), value: "up".into() }],
                    timestamps: vec![2],
                    values: vec![0.0],
                },
                Series { metric: String::new(), labels: vec![], timestamps: vec![3], values: vec![0.0] },
            ],
        };
        let (writes, rejected) = series_to_writes(req);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].table, "up");
        assert_eq!(writes[0].blocks.len(), 2);
        assert!(writes[0].blocks[1].tags.is_empty());
        assert_eq!(rejected, vec![EarlyRejection { item: 2, reason: "series has no metric name".into() }]);
    }

    #[test]
    fn rows_without_values_are_rejected_by_index() {
        let req = WriteRowsRequest {
            database: String::new(),
            table: "cpu".into(),
            series: vec![
                RowSeries {
                    tags: vec![],
                    timestamps: vec![1],
                    fields: vec![PbField {
                        name: "u".into(),
                        values: Some(Values::F64(DoubleValues { values: vec![1.0] })),
                    }],
                },
                RowSeries {
                    tags: vec![],
                    timestamps: vec![1],
                    fields: vec![PbField { name: "u".into(), values: None }],
                },
            ],
        };
        let (w, rejected) = rows_to_write(req);
        assert_eq!(w.blocks.len(), 1);
        assert_eq!(rejected[0].item, 1);
        assert!(rejected[0].reason.contains("\"u\" has no values"));
    }

    #[test]
    fn logs_group_by_service_host_level() {
        let ev = |svc: &str, lvl: &str, trace: &str| LogEvent {
            timestamp: 5,
            service: svc.into(),
            host: "h".into(),
            level: lvl.into(),
            message: "m".into(),
            trace_id: trace.into(),
            span_id: String::new(),
            attributes: vec![],
        };
        let req = WriteLogsRequest {
            database: String::new(),
            stream: String::new(),
            events: vec![ev("a", "WARNING", "t1"), ev("a", "warn", ""), ev("b", "info", "")],
        };
        let (w, rejected, _) = logs_to_write(req, 100, &WriteLimits::default());
        assert!(rejected.is_empty());
        assert_eq!(w.table, "logs");
        assert_eq!(w.blocks.len(), 2);
        let a = w.blocks.iter().find(|b| b.tags[0].1 == "a").expect("group a");
        assert_eq!(a.tags[2], ("level".into(), "warn".into()));
        assert_eq!(a.rows(), 2);
        let trace = a.fields.iter().find(|f| f.name == "trace_id").expect("trace column");
        assert_eq!(trace.validity, Some(vec![true, false]));
        let b = w.blocks.iter().find(|b| b.tags[0].1 == "b").expect("group b");
        assert!(b.fields.iter().all(|f| f.name != "trace_id"));
    }
}
