//! Last write wins at query time: where a table's rows may repeat a series
//! and time (a write repeated, an older point written again; see
//! `tocsin_storage::Overlaps`), the scan reads those segments and buffered
//! chunks together and keeps the last written row of each series and time,
//! as compaction will when it merges them.
//!
//! [`KeepLastExec`] runs its inputs one after another, in write order
//! (each input's partitions in order too), holds their rows (counted
//! against the query's memory pool) and applies
//! [`tocsin_storage::segment::keep_last_written`]. Filters on anything but
//! the tags and the time must run above it: a filter on a value would let
//! an older row through where the last written one fails it.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use tocsin_storage::batch::adapt_batch;

/// Keeps the last written row of each series and time of its inputs,
/// which come in write order (see the module documentation).
#[derive(Debug)]
pub(crate) struct KeepLastExec {
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl KeepLastExec {
    /// `inputs` in write order, each giving `schema` (every tag column and
    /// `ts` among its columns).
    pub(crate) fn new(inputs: Vec<Arc<dyn ExecutionPlan>>, schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self { inputs, schema, properties: Arc::new(properties) }
    }
}

impl DisplayAs for KeepLastExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeepLastExec: last written row per series and ts of {} inputs", self.inputs.len())
    }
}

impl ExecutionPlan for KeepLastExec {
    fn name(&self) -> &str {
        "KeepLastExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    // The order of each input's rows is the write order: no sort may be
    // pushed below this node (its output is not in its inputs' order),
    // and no repartition may shuffle them.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(KeepLastExec::new(children, Arc::clone(&self.schema))))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("KeepLastExec has one partition, not {partition}")));
        }
        let inputs = self.inputs.clone();
        let schema = Arc::clone(&self.schema);
        let batch_size = context.session_config().batch_size().max(1);
        let reservation = MemoryConsumer::new("KeepLastExec").register(context.memory_pool());
        let out_schema = Arc::clone(&schema);
        let kept = futures::stream::once(async move {
            let mut batches = Vec::new();
            let mut held = 0;
            for input in inputs {
                for p in 0..input.properties().partitioning.partition_count() {
                    let mut stream = input.execute(p, Arc::clone(&context))?;
                    while let Some(batch) = stream.next().await {
                        let batch = batch?;
                        let bytes = batch.get_array_memory_size();
                        reservation.try_grow(bytes)?;
                        held += bytes;
                        batches.push(adapt_batch(&batch, &schema)?);
                    }
                }
            }
            // The concatenated copy, then the sorted rows and the kept
            // ones, each at most as large as what was read.
            reservation.try_grow(held.saturating_mul(2))?;
            let all = concat_batches(&schema, &batches)?;
            drop(batches);
            let kept = tocsin_storage::segment::keep_last_written(&all)?;
            drop(reservation);
            Ok::<RecordBatch, DataFusionError>(kept)
        });
        let sliced = kept.flat_map(move |r| {
            let parts: Vec<Result<RecordBatch>> = match r {
                Ok(b) => (0..b.num_rows())
                    .step_by(batch_size)
                    .map(|o| Ok(b.slice(o, batch_size.min(b.num_rows() - o))))
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(parts)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, sliced)))
    }
}
