//! Rules evaluated on the ingest path (`on_ingest: { table, field }`): each
//! acknowledged write is handed to [`IngestObserver`], which picks the
//! newest value of the field in every written series of a watched table and
//! queues it for the engine, without waiting for a rule interval.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use tocsin_storage::{FieldValues, TableWrite, WriteObserver};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::rule::{Rule, Sample};

/// Ingest rules by database, then table: nested so that a write looks its
/// table up by `&str`, without building a key.
pub(crate) type Index = HashMap<String, HashMap<String, Vec<(String, Arc<Rule>)>>>;

pub(crate) fn index(config: &Config) -> Index {
    let mut idx: Index = HashMap::new();
    for g in &config.groups {
        let db = g.database.clone().unwrap_or_else(|| "public".to_string());
        for r in &g.rules {
            if let Some(src) = &r.on_ingest {
                idx.entry(db.clone())
                    .or_default()
                    .entry(src.table.clone())
                    .or_default()
                    .push((g.name.clone(), Arc::new(r.clone())));
            }
        }
    }
    idx
}

/// Samples for one rule from one write.
pub(crate) struct IngestBatch {
    pub(crate) group: String,
    pub(crate) rule: Arc<Rule>,
    pub(crate) samples: Vec<Sample>,
}

/// Bounded, so that a stalled engine can never hold up ingest: when the
/// queue is full, batches are dropped and counted.
pub(crate) const QUEUE: usize = 4096;

pub struct IngestObserver {
    pub(crate) index: Arc<RwLock<Arc<Index>>>,
    pub(crate) tx: mpsc::Sender<IngestBatch>,
    pub(crate) dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl WriteObserver for IngestObserver {
    fn written(&self, db: &str, writes: &[TableWrite]) {
        let idx = Arc::clone(&self.index.read());
        let Some(tables) = idx.get(db) else { return };
        for w in writes {
            let Some(rules) = tables.get(w.table.as_str()) else { continue };
            for (group, rule) in rules {
                let Some(src) = &rule.on_ingest else { continue };
                let samples: Vec<Sample> = w
                    .blocks
                    .iter()
                    .filter_map(|b| {
                        let f = b.fields.iter().find(|f| f.name == src.field)?;
                        // The newest valid row of the series in this write.
                        let (i, _) = b
                            .timestamps
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| f.validity.as_ref().is_none_or(|v| v.get(*i).copied().unwrap_or(false)))
                            .max_by_key(|(_, t)| **t)?;
                        let value = match &f.values {
                            FieldValues::F64(v) => v.get(i).copied()?,
                            FieldValues::I64(v) => *v.get(i)? as f64,
                            FieldValues::U64(v) => *v.get(i)? as f64,
                            FieldValues::Bool(v) => f64::from(u8::from(*v.get(i)?)),
                            FieldValues::Str(_) => return None,
                        };
                        let labels: BTreeMap<String, String> = b.tags.iter().cloned().collect();
                        Some(Sample { labels, value, thresholds: Vec::new() })
                    })
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                let batch = IngestBatch { group: group.clone(), rule: Arc::clone(rule), samples };
                if self.tx.try_send(batch).is_err() {
                    self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}
