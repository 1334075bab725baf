//! The `system` tables: `alerts` (live, from the engine's memory),
//! `alert_history` and `notifications` (written to storage, durable through
//! the WAL like any other table).

use std::sync::{Arc, Weak};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use async_trait::async_trait;
use tocsin_storage::schema::ColumnDef;
use tocsin_storage::{ColumnKind, FieldColumn, FieldValues, SeriesBlock, Storage, TableSchema, TableWrite};

use crate::dispatch::Mute;
use crate::engine::{AlertEngine, HistorySink};
use crate::notify::Attempt;
use crate::state::Transition;

/// Writes history to `system.alert_history` and `system.notifications`.
pub struct StorageHistory {
    pub storage: Arc<Storage>,
}

fn ms_to_ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

fn text(name: &str, v: String) -> FieldColumn {
    FieldColumn { name: name.into(), values: FieldValues::Str(vec![v]), validity: None }
}

fn opt_text(name: &str, v: Option<String>) -> FieldColumn {
    let valid = v.is_some();
    FieldColumn {
        name: name.into(),
        values: FieldValues::Str(vec![v.unwrap_or_default()]),
        validity: Some(vec![valid]),
    }
}

#[async_trait]
impl HistorySink for StorageHistory {
    async fn transitions(&self, ts: &[Transition]) {
        let blocks = ts
            .iter()
            .enumerate()
            .map(|(i, t)| SeriesBlock {
                item: i as u32,
                tags: vec![("alertname".into(), t.alertname.clone()), ("id".into(), t.id.clone())],
                timestamps: vec![ms_to_ns(t.at)],
                fields: vec![
                    text("from_state", t.from.as_str().into()),
                    text("to_state", t.to.as_str().into()),
                    opt_text("severity", t.severity.clone()),
                    opt_text("old_severity", t.old_severity.clone()),
                    FieldColumn {
                        name: "value".into(),
                        values: FieldValues::F64(vec![t.value]),
                        validity: Some(vec![!t.value.is_nan()]),
                    },
                    text("labels", serde_json::to_string(&t.labels).unwrap_or_default()),
                    text("note", t.note.clone()),
                ],
            })
            .collect();
        let write = TableWrite { table: "alert_history".into(), blocks };
        if let Err(e) = self.storage.write_system(vec![write]).await {
            tracing::error!("recording {} alert transition(s) in system.alert_history failed: {e}", ts.len());
        }
    }

    async fn attempts(&self, attempts: &[Attempt]) {
        let blocks = attempts
            .iter()
            .enumerate()
            .map(|(i, a)| SeriesBlock {
                item: i as u32,
                tags: vec![("receiver".into(), a.receiver.clone()), ("integration".into(), a.integration.into())],
                timestamps: vec![ms_to_ns(a.at)],
                fields: vec![
                    text("job_id", a.job_id.clone()),
                    text("group_key", a.group_key.clone()),
                    text("reason", a.reason.clone()),
                    FieldColumn {
                        name: "attempt".into(),
                        values: FieldValues::I64(vec![a.attempt as i64]),
                        validity: None,
                    },
                    FieldColumn { name: "ok".into(), values: FieldValues::Bool(vec![a.ok]), validity: None },
                    opt_text("error", a.error.clone()),
                    FieldColumn {
                        name: "duration_ms".into(),
                        values: FieldValues::F64(vec![a.duration.as_secs_f64() * 1000.0]),
                        validity: None,
                    },
                ],
            })
            .collect();
        let write = TableWrite { table: "notifications".into(), blocks };
        if let Err(e) = self.storage.write_system(vec![write]).await {
            tracing::error!("recording {} notification attempt(s) in system.notifications failed: {e}", attempts.len());
        }
    }
}

/// The columns of `system.alert_history` and `system.notifications` as
/// [`StorageHistory`] first writes them (tags, then fields in the order of
/// its blocks): the query engine answers these tables, empty, before the
/// first transition or notification makes them in storage.
pub fn stored_tables() -> [(&'static str, TableSchema); 2] {
    use tocsin_storage::ColumnKind::{Field, Tag};
    use tocsin_storage::FieldType::{Boolean, Float, Integer, String as Text};
    let columns = |cols: &[(&str, ColumnKind)]| TableSchema {
        columns: cols.iter().map(|(name, kind)| ColumnDef { name: (*name).into(), kind: *kind }).collect(),
    };
    [
        (
            "alert_history",
            columns(&[
                ("alertname", Tag),
                ("id", Tag),
                ("from_state", Field(Text)),
                ("to_state", Field(Text)),
                ("severity", Field(Text)),
                ("old_severity", Field(Text)),
                ("value", Field(Float)),
                ("labels", Field(Text)),
                ("note", Field(Text)),
            ]),
        ),
        (
            "notifications",
            columns(&[
                ("receiver", Tag),
                ("integration", Tag),
                ("job_id", Field(Text)),
                ("group_key", Field(Text)),
                ("reason", Field(Text)),
                ("attempt", Field(Integer)),
                ("ok", Field(Boolean)),
                ("error", Field(Text)),
                ("duration_ms", Field(Float)),
            ]),
        ),
    ]
}

/// `system.alerts`: the current instances.
#[derive(Debug)]
pub struct AlertsTable {
    pub engine: Weak<AlertEngine>,
}

impl AlertsTable {
    fn schema_ref() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("alertname", DataType::Utf8, false),
            Field::new("rule_group", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, true),
            Field::new("value", DataType::Float64, true),
            Field::new("labels", DataType::Utf8, false),
            Field::new("annotations", DataType::Utf8, false),
            Field::new("active_since", ts.clone(), true),
            Field::new("resolved_at", ts.clone(), true),
            Field::new("acked_by", DataType::Utf8, true),
            Field::new("ack_comment", DataType::Utf8, true),
            Field::new("acked_at", ts, true),
            Field::new("muted", DataType::Utf8, true),
            Field::new("flapping", DataType::Boolean, false),
            Field::new("no_data", DataType::Boolean, false),
        ]))
    }
}

impl tocsin_query::LiveTable for AlertsTable {
    fn schema(&self) -> SchemaRef {
        Self::schema_ref()
    }

    fn batch(&self) -> Result<RecordBatch, ArrowError> {
        let (insts, muted) = match self.engine.upgrade() {
            Some(e) => e.snapshot(),
            None => Default::default(),
        };
        let s = |f: &dyn Fn(&crate::state::Instance) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(insts.iter().map(f).collect::<Vec<_>>()))
        };
        let t = |f: &dyn Fn(&crate::state::Instance) -> Option<i64>| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from(insts.iter().map(f).collect::<Vec<_>>()).with_timezone("UTC"))
        };
        let columns: Vec<ArrayRef> = vec![
            s(&|i| Some(i.id.clone())),
            s(&|i| Some(i.rule.clone())),
            s(&|i| Some(i.group.clone())),
            s(&|i| Some(i.state.as_str().to_string())),
            s(&|i| i.severity.clone()),
            Arc::new(Float64Array::from(
                insts.iter().map(|i| i.value.is_finite().then_some(i.value)).collect::<Vec<_>>(),
            )),
            s(&|i| Some(serde_json::to_string(&i.labels).unwrap_or_default())),
            s(&|i| Some(serde_json::to_string(&i.annotations).unwrap_or_default())),
            t(&|i| i.active_since),
            t(&|i| i.resolved_at),
            s(&|i| i.ack.as_ref().map(|a| a.by.clone())),
            s(&|i| i.ack.as_ref().map(|a| a.comment.clone())),
            t(&|i| i.ack.as_ref().map(|a| a.at)),
            s(&|i| {
                muted.get(&i.id).map(|m| match m {
                    Mute::Silenced(by) => format!("silenced:{}", by.join(",")),
                    Mute::Maintenance(w) => format!("maintenance:{w}"),
                    Mute::Inhibited(by) => format!("inhibited:{}", by.join(",")),
                    Mute::Suppressed(by) => format!("suppressed:{}", by.join(",")),
                    Mute::TimeInterval(why) => format!("time_interval:{why}"),
                })
            }),
            Arc::new(BooleanArray::from(insts.iter().map(|i| i.flapping).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(insts.iter().map(|i| i.no_data).collect::<Vec<_>>())),
        ];
        RecordBatch::try_new(Self::schema_ref(), columns)
    }
}

/// `system.oncall`: who is on call in each schedule now, and who is next.
#[derive(Debug)]
pub struct OnCallTable {
    pub engine: Weak<AlertEngine>,
}

impl tocsin_query::LiveTable for OnCallTable {
    fn schema(&self) -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("schedule", DataType::Utf8, false),
            Field::new("on_call", DataType::Utf8, true),
            Field::new("since", ts.clone(), true),
            Field::new("until", ts.clone(), true),
            Field::new("next", DataType::Utf8, true),
            Field::new("next_from", ts, true),
        ]))
    }

    fn batch(&self) -> Result<RecordBatch, ArrowError> {
        let rows = match self.engine.upgrade() {
            Some(e) => e.oncall(e.clock().now_ms()),
            None => Vec::new(),
        };
        let text = |f: &dyn Fn(&serde_json::Value) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let time = |f: &dyn Fn(&serde_json::Value) -> Option<i64>| -> ArrayRef {
            Arc::new(TimestampMillisecondArray::from(rows.iter().map(f).collect::<Vec<_>>()).with_timezone("UTC"))
        };
        let at = |v: &serde_json::Value| {
            v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map(|t| t.timestamp_millis())
        };
        let columns: Vec<ArrayRef> = vec![
            text(&|r| r["schedule"].as_str().map(str::to_string)),
            text(&|r| r["now"]["member"].as_str().map(str::to_string)),
            time(&|r| at(&r["now"]["from"])),
            time(&|r| at(&r["now"]["until"])),
            text(&|r| r["next"]["member"].as_str().map(str::to_string)),
            time(&|r| at(&r["next"]["from"])),
        ];
        RecordBatch::try_new(self.schema(), columns)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tocsin_storage::{SYSTEM_DATABASE, StorageConfig};

    use super::*;
    use crate::state::AlertState;

    /// The declared schemas are the ones the first writes make: a query
    /// that ran on the empty table answers the same columns afterwards.
    #[tokio::test]
    async fn declared_tables_match_what_the_first_writes_make() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(StorageConfig::for_tests(dir.path().join("data"))).await.expect("open storage");
        let sink = StorageHistory { storage: Arc::clone(&storage) };
        for (name, _) in stored_tables() {
            assert!(storage.table_schema(SYSTEM_DATABASE, name).is_none(), "{name} exists before any write");
        }
        sink.transitions(&[Transition {
            at: 1_000,
            id: "abc".into(),
            alertname: "HighCpu".into(),
            labels: Default::default(),
            from: AlertState::Pending,
            to: AlertState::Firing,
            old_severity: None,
            severity: Some("critical".into()),
            value: 95.0,
            note: String::new(),
        }])
        .await;
        sink.attempts(&[Attempt {
            at: 1_000,
            job_id: "j".into(),
            receiver: "oncall".into(),
            integration: "webhook",
            group_key: "g".into(),
            reason: "firing".into(),
            attempt: 1,
            ok: true,
            error: None,
            duration: Duration::from_millis(3),
            finished: true,
        }])
        .await;
        for (name, declared) in stored_tables() {
            let written = storage.table_schema(SYSTEM_DATABASE, name).unwrap_or_else(|| panic!("{name} not written"));
            assert_eq!(written, declared.arrow_schema(), "{name}");
        }
    }
}
