//! The table provider: one Tocsin table as DataFusion sees it, merging the
//! write buffer and the Parquet segments of a storage snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
// The type DataFusion's footer cache holds (`parquet::CachedParquetMetaData`,
// of the same name, is another one that its readers do not recognise).
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetAccessPlan, ParquetRowSelection,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, FileSource, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CachedFileMetadataEntry;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use datafusion::parquet::file::statistics::Statistics;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysColumn;
use datafusion::physical_expr::utils::{conjunction as phys_conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use tocsin_storage::batch::adapt_batch;
use tocsin_storage::tokens::TokenFilter;
use tocsin_storage::tombstone::Tombstone;
use tocsin_storage::{SegmentMeta, Storage, TableSnapshot};

use crate::keep_last::KeepLastExec;
use crate::prune::{TimeRange, time_range};
use crate::sink::TocsinSink;
use crate::token_prune::Need;

pub(crate) struct TocsinTable {
    pub(crate) storage: Arc<Storage>,
    pub(crate) db: String,
    pub(crate) table: String,
    pub(crate) schema: SchemaRef,
    /// Scan this snapshot instead of a fresh one (live tail's backfill).
    pub(crate) pinned: Option<TableSnapshot>,
}

impl fmt::Debug for TocsinTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TocsinTable({}.{})", self.db, self.table)
    }
}

/// What of a segment a scan reads.
enum Reads {
    All,
    Some(RowSelection),
    None,
}

impl TocsinTable {
    /// The snapshot a read of this table reads: the pinned one, else a
    /// fresh one.
    pub(crate) fn snapshot(&self) -> Option<TableSnapshot> {
        match &self.pinned {
            Some(s) => Some(s.clone()),
            None => self.storage.snapshot(&self.db, &self.table),
        }
    }

    /// The blocks of `seg` that `matches()` filters leave to read, by the
    /// segment's token filters (all of it when it has none).
    fn blocks_to_read(&self, snap: &TableSnapshot, seg: &SegmentMeta, searches: &[(String, Need)]) -> Reads {
        let mut picked: Option<(Arc<TokenFilter>, Vec<bool>)> = None;
        for (column, need) in searches {
            let Some(filter) = self.storage.token_filter(snap, seg, column) else { continue };
            let (base, may) = picked.get_or_insert_with(|| (Arc::clone(&filter), vec![true; filter.len()]));
            if base.block_rows() != filter.block_rows() || may.len() != filter.len() {
                continue;
            }
            for (block, m) in may.iter_mut().enumerate() {
                *m = *m && need.may_match(&filter, block);
            }
        }
        let Some((filter, may)) = picked else { return Reads::All };
        let skipped = may.iter().filter(|&&m| !m).count();
        let metrics = &self.storage.metrics;
        metrics.token_blocks_read.fetch_add((may.len() - skipped) as u64, Ordering::Relaxed);
        metrics.token_blocks_skipped.fetch_add(skipped as u64, Ordering::Relaxed);
        match crate::token_prune::selection(&filter, &may) {
            None => Reads::All,
            Some(_) if skipped == may.len() => Reads::None,
            Some(rows) => Reads::Some(rows),
        }
    }
}

#[async_trait]
impl TableProvider for TocsinTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning only; DataFusion still filters every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = Arc::clone(&self.schema);
        let snap = self.snapshot();
        let Some(snap) = snap else {
            return Ok(MemorySourceConfig::try_new_exec(&[vec![]], schema, projection.cloned())?);
        };
        let range = time_range(filters);
        // A reader that fetches its segment files as they are read brings
        // these onto its disk first (the query's reader guard keeps them).
        let in_range: Vec<&SegmentMeta> =
            snap.segments.iter().filter(|s| range.overlaps(s.min_ts, s.max_ts)).map(|s| s.as_ref()).collect();
        self.storage
            .ensure_local(&self.db, &self.table, &in_range)
            .await
            .map_err(|e| DataFusionError::External(Box::new(crate::QueryError::Storage(e))))?;
        // Where rows may repeat a series and time, the segments and chunks
        // there are read apart and only the last written row of each is
        // kept (see `crate::keep_last`).
        let overlaps = snap.overlaps.clone();
        let mut repeating: Vec<Arc<SegmentMeta>> = Vec::new();
        let mut repeating_chunks: Vec<RecordBatch> = Vec::new();

        let mut batches = Vec::new();
        for c in snap.chunks.iter().filter(|c| range.overlaps(c.min_ts, c.max_ts)) {
            if overlaps.as_ref().is_some_and(|o| o.touch(c.min_ts, c.max_ts)) {
                repeating_chunks.push(c.batch.clone());
            } else {
                batches.push(adapt_batch(&c.batch, &schema)?);
            }
        }
        let partitions = state.config().target_partitions().max(1);
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !batches.is_empty() || snap.segments.is_empty() {
            // Spread buffered batches over partitions so that large buffers
            // are scanned in parallel.
            let n = partitions.min(batches.len()).max(1);
            let mut parts = vec![Vec::new(); n];
            for (i, b) in batches.into_iter().enumerate() {
                parts[i % n].push(b);
            }
            plans.push(MemorySourceConfig::try_new_exec(&parts, Arc::clone(&schema), projection.cloned())?);
        }

        let searches = crate::token_prune::searches(filters).map_err(DataFusionError::Execution)?;
        let values = crate::prune::text_values(filters);
        // Pieces by the deletions that cover them (most have none).
        let mut pieces: BTreeMap<Vec<usize>, Vec<Piece>> = BTreeMap::new();
        for seg in snap.segments.iter().filter(|s| range.overlaps(s.min_ts, s.max_ts)) {
            if overlaps.as_ref().is_some_and(|o| o.holds(seg)) {
                repeating.push(Arc::clone(seg));
                continue;
            }
            if let Some((deleted, piece)) = self.piece(state.runtime_env(), &snap, seg, &searches, range, &values)? {
                pieces.entry(deleted).or_default().push(piece);
            }
        }
        if !repeating.is_empty() || !repeating_chunks.is_empty() {
            plans.push(self.keep_last_scan(state, &snap, filters, projection, repeating, repeating_chunks)?);
        }
        for (deleted, pieces) in pieces {
            let scan = if deleted.is_empty() {
                self.segment_scan(state, filters, &values, pieces, projection, limit)?
            } else {
                let deleted: Vec<&Tombstone> = deleted.iter().map(|&i| snap.tombstones[i].as_ref()).collect();
                self.scan_without_deleted(state, filters, &values, pieces, projection, &deleted)?
            };
            plans.extend(scan);
        }
        if plans.is_empty() {
            // Every segment was pruned by time and nothing is buffered.
            return Ok(MemorySourceConfig::try_new_exec(&[vec![]], schema, projection.cloned())?);
        }
        UnionExec::try_new(plans)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "{insert_op} is not supported; Tocsin tables are append-only (use INSERT INTO)"
            )));
        }
        let sink =
            TocsinSink::new(Arc::clone(&self.storage), self.db.clone(), self.table.clone(), Arc::clone(&self.schema));
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    /// The deletion Tocsin read from the statement (see `crate::delete`);
    /// DataFusion's `filters` are what its optimizer left of the `WHERE`
    /// clause, and are not used.
    async fn delete_from(&self, state: &dyn Session, _filters: Vec<Expr>) -> Result<Arc<dyn ExecutionPlan>> {
        let pending = state.config().get_extension::<crate::delete::PendingDelete>();
        let Some(pending) = pending.filter(|p| p.db == self.db && p.table == self.table) else {
            return Err(DataFusionError::Plan(format!(
                "DELETE FROM {}.{} was not read by Tocsin's statement planner",
                self.db, self.table
            )));
        };
        Ok(Arc::new(crate::delete::DeleteExec::new(
            Arc::clone(&self.storage),
            self.db.clone(),
            self.table.clone(),
            pending.deletion.clone(),
        )))
    }
}

/// A scan of more segments than this is not estimated (see
/// [`TocsinTable::estimated_rows`]): it reads many rows, or prunes most of
/// them by token filters, which the estimate does not consult.
pub(crate) const ESTIMATED_SEGMENTS: usize = 64;

impl TocsinTable {
    /// About how many rows a scan with `filters` reads, at least: the
    /// buffered rows in its time range and the rows of the row groups its
    /// segments' time ranges and statistics leave (the token filters, the
    /// pages and the row filter narrow it further while reading; they are
    /// not consulted here, so that their work and counters are not done
    /// twice). Where rows may repeat a series and time, a segment counts
    /// whole, as the scan that keeps the last write reads it. Used to plan
    /// small statements on one partition (see `reads_few_rows`): the count
    /// stops once it reaches `enough`, and a scan of more than
    /// [`ESTIMATED_SEGMENTS`] segments counts as `enough` without looking.
    pub(crate) fn estimated_rows(&self, state: &dyn Session, filters: &[Expr], enough: u64) -> Result<u64> {
        let snap = self.snapshot();
        let Some(snap) = snap else { return Ok(0) };
        let range = time_range(filters);
        let mut rows: u64 =
            snap.chunks.iter().filter(|c| range.overlaps(c.min_ts, c.max_ts)).map(|c| c.batch.num_rows() as u64).sum();
        let values = crate::prune::text_values(filters);
        let segments: Vec<&Arc<SegmentMeta>> =
            snap.segments.iter().filter(|s| range.overlaps(s.min_ts, s.max_ts)).collect();
        if segments.len() > ESTIMATED_SEGMENTS {
            return Ok(enough);
        }
        for seg in segments {
            if rows >= enough {
                break;
            }
            if snap.overlaps.as_ref().is_some_and(|o| o.holds(seg)) {
                rows += seg.rows;
                continue;
            }
            rows += match self.piece(state.runtime_env(), &snap, seg, &[], range, &values)? {
                None => 0,
                Some((_, Piece { plan: Some(plan), rows: groups, .. })) => {
                    plan.row_group_index_iter().map(|i| groups[i]).sum::<u64>()
                }
                Some(_) => seg.rows,
            };
        }
        Ok(rows)
    }

    /// What of segment `seg` a scan reads (`None`: nothing), and the
    /// tombstones of `snap` that cover it.
    pub(crate) fn piece(
        &self,
        runtime: &RuntimeEnv,
        snap: &TableSnapshot,
        seg: &SegmentMeta,
        searches: &[(String, Need)],
        range: TimeRange,
        values: &[(String, Vec<String>)],
    ) -> Result<Option<(Vec<usize>, Piece)>> {
        let footers = runtime.cache_manager.get_file_metadata_cache();
        let file = segment_file(&snap.segment_path(seg), seg.file_bytes())?;
        // Footers are cached without their token filters (see
        // `Storage::segment_footer`), which is why they are read here
        // rather than by DataFusion. One that cannot be read is
        // reported when DataFusion opens the file.
        let meta = &file.object_meta;
        let cached = footers.get(&meta.location).filter(|e| e.is_valid_for(meta)).and_then(|e| {
            e.file_metadata.as_any().downcast_ref::<CachedParquetMetaData>().map(|m| Arc::clone(m.parquet_metadata()))
        });
        let footer = match cached {
            Some(footer) => Some(footer),
            None => self.storage.segment_footer(snap, seg).ok().map(|footer| {
                let footer = Arc::new(footer);
                let entry = Arc::new(CachedParquetMetaData::new(Arc::clone(&footer)));
                footers.put(&meta.location, CachedFileMetadataEntry::new(meta.clone(), entry));
                footer
            }),
        };
        let mut reads = self.blocks_to_read(snap, seg, searches);
        if let Some((first, rows)) = seg.row_range() {
            // A slice of a pack: its rows only (the page index skips
            // the pages that hold none of them).
            let total = footer.as_ref().map_or(first + rows, |f| f.file_metadata().num_rows().max(0) as u64);
            let slice = slice_selection(first, rows, total);
            reads = match reads {
                Reads::All => Reads::Some(slice),
                Reads::Some(blocks) => Reads::Some(blocks.intersection(&slice)),
                Reads::None => Reads::None,
            };
        }
        if matches!(reads, Reads::None) {
            return Ok(None);
        }
        // Deletions outside the statement's time range cannot touch
        // the rows it reads.
        let deleted: Vec<usize> = snap
            .tombstones
            .iter()
            .enumerate()
            .filter(|(_, t)| t.covers(seg) && range.overlaps(t.deletion.min_ts, t.deletion.max_ts))
            .map(|(i, _)| i)
            .collect();
        let mut piece = Piece::new(file, footer.as_deref(), reads, range, values)?;
        piece.footer = footer;
        Ok(Some((deleted, piece)))
    }

    /// The rows of `segments` and `chunks` (where rows may repeat a series
    /// and time) with only the last written of each series and time, as
    /// `projection`. Only the filters on tags and time prune what is read
    /// here (see `crate::keep_last`); DataFusion applies every filter
    /// above the scan.
    fn keep_last_scan(
        &self,
        state: &dyn Session,
        snap: &TableSnapshot,
        filters: &[Expr],
        projection: Option<&Vec<usize>>,
        mut segments: Vec<Arc<SegmentMeta>>,
        chunks: Vec<RecordBatch>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = &self.schema;
        let is_key = |f: &arrow::datatypes::Field| {
            f.name() == tocsin_storage::TIME_COLUMN || matches!(f.data_type(), DataType::Dictionary(..))
        };
        let keys: Vec<String> = schema.fields().iter().filter(|f| is_key(f)).map(|f| f.name().clone()).collect();
        let key_filters: Vec<Expr> =
            filters.iter().filter(|f| f.column_refs().iter().all(|c| keys.contains(&c.name))).cloned().collect();
        let mut read: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
        let wanted = read.len();
        for (i, f) in schema.fields().iter().enumerate() {
            if is_key(f) && !read.contains(&i) {
                read.push(i);
            }
        }
        let read_schema = Arc::new(schema.project(&read)?);
        let range = time_range(&key_filters);
        let values = crate::prune::text_values(&key_filters);
        // In write order: the segments by their place, then the buffer.
        segments.sort_by_key(|s| (s.order(), s.id));
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for seg in &segments {
            let Some((deleted, piece)) = self.piece(state.runtime_env(), snap, seg, &[], range, &values)? else {
                continue;
            };
            let scan = if deleted.is_empty() {
                self.segment_scan(state, &key_filters, &values, vec![piece], Some(&read), None)?
            } else {
                let deleted: Vec<&Tombstone> = deleted.iter().map(|&i| snap.tombstones[i].as_ref()).collect();
                self.scan_without_deleted(state, &key_filters, &values, vec![piece], Some(&read), &deleted)?
            };
            inputs.extend(scan);
        }
        if !chunks.is_empty() {
            let batches = chunks.iter().map(|b| adapt_batch(b, schema)).collect::<Result<Vec<_>, _>>()?;
            inputs.push(MemorySourceConfig::try_new_exec(&[batches], Arc::clone(schema), Some(read.clone()))?);
        }
        let kept: Arc<dyn ExecutionPlan> = Arc::new(KeepLastExec::new(inputs, Arc::clone(&read_schema)));
        first_columns(kept, wanted)
    }

    /// A scan of `pieces` whose rows some `deleted` tombstones remove: the
    /// columns they match on are read too, the rows they match are
    /// filtered out, and the scan then gives `projection`.
    fn scan_without_deleted(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        values: &[(String, Vec<String>)],
        pieces: Vec<Piece>,
        projection: Option<&Vec<usize>>,
        deleted: &[&Tombstone],
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let schema = &self.schema;
        let mut read: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
        let wanted = read.len();
        let mut need = vec![tocsin_storage::TIME_COLUMN.to_string()];
        need.extend(deleted.iter().flat_map(|t| t.deletion.tags.iter().map(|t| t.tag.clone())));
        for name in need {
            // A tag added to the schema after the deletion was checked
            // cannot be missing; one that is reads as NULL, which no
            // deletion matches.
            if let Ok(i) = schema.index_of(&name)
                && !read.contains(&i)
            {
                read.push(i);
            }
        }
        // No limit: the filter below may drop rows the scan would count.
        let Some(scan) = self.segment_scan(state, filters, values, pieces, Some(&read), None)? else {
            return Ok(None);
        };
        let read_schema = Arc::new(schema.project(&read)?);
        let keep = crate::delete::keep_expr(deleted, &read_schema)?;
        let df_schema = DFSchema::try_from(Arc::clone(&read_schema))?;
        let filtered: Arc<dyn ExecutionPlan> =
            Arc::new(FilterExec::try_new(state.create_physical_expr(keep, &df_schema)?, scan)?);
        Ok(Some(first_columns(filtered, wanted)?))
    }

    /// One Parquet scan of `pieces`.
    fn segment_scan(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        values: &[(String, Vec<String>)],
        pieces: Vec<Piece>,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let schema = &self.schema;
        let partitions = state.config().target_partitions().max(1);
        let files = spread(pieces, partitions);
        if !files.is_empty() {
            // Segments never change once written (a new one gets a new
            // path), so their footers and page indexes are parsed once and
            // kept in the runtime's metadata cache (LRU, bounded): reading
            // them took about 0.4 ms per file range of every query.
            let store = state.runtime_env().object_store(ObjectStoreUrl::local_filesystem())?;
            let readers =
                CachedParquetFileReaderFactory::new(store, state.runtime_env().cache_manager.get_file_metadata_cache());
            // The session's Parquet options (see `QueryEngine::new` for
            // the ones Tocsin sets), with the page index always read.
            let mut options = state.config_options().execution.parquet.clone();
            // A filter on anything but the time (a tag, a field value) is
            // evaluated while decoding: the columns it reads first, the
            // others only for the rows it keeps (high-cpu-1 5.3 -> 3.0 ms,
            // high-cpu-all 28 -> 24 ms in Arrow form, which decoded all 21
            // columns of 864 k rows to keep 33 k). A time range alone is
            // left to the page index and the filter above: evaluating it
            // while decoding made double-groupby-1 and
            // groupby-orderby-limit 10-15 % slower.
            options.pushdown_filters |=
                filters.iter().any(|f| f.column_refs().iter().any(|c| c.name != tocsin_storage::TIME_COLUMN));
            // Only `BLOOM_COLUMNS` have bloom filters: looking for them on
            // other columns builds a second reader and evaluates the pruning
            // predicate once more, about 0.1 ms per file opened.
            options.bloom_filter_on_read =
                values.iter().any(|(column, _)| tocsin_storage::segment::BLOOM_COLUMNS.contains(&column.as_str()));
            let mut source = ParquetSource::new(Arc::clone(schema))
                .with_table_parquet_options(datafusion::config::TableParquetOptions {
                    global: options,
                    ..Default::default()
                })
                .with_enable_page_index(true)
                .with_parquet_file_reader_factory(Arc::new(readers));
            if let Some(pred) = conjunction(filters.iter().cloned()) {
                let df_schema = DFSchema::try_from(Arc::clone(schema))?;
                source = source.with_predicate(state.create_physical_expr(pred, &df_schema)?);
            }
            let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(files.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .with_expr_adapter(Some(Arc::new(crate::decode::SegmentExprAdapterFactory)))
                .build();
            return Ok(Some(DataSourceExec::from_data_source(config)));
        }
        Ok(None)
    }
}

/// The first `wanted` columns of `plan` (which read more, to filter or
/// deduplicate by them): `plan` itself when it has no others.
fn first_columns(plan: Arc<dyn ExecutionPlan>, wanted: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = plan.schema();
    if schema.fields().len() == wanted {
        return Ok(plan);
    }
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = schema
        .fields()
        .iter()
        .take(wanted)
        .enumerate()
        .map(|(i, f)| (Arc::new(PhysColumn::new(f.name(), i)) as Arc<dyn PhysicalExpr>, f.name().clone()))
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// Drops repeated conjuncts from the predicates of segment scans.
/// `TocsinTable::scan` gives the scan the statement's filters to prune
/// with, and DataFusion's filter pushdown then appends the same filters
/// again (it conjoins what it pushes with the predicate already there):
/// without this, every statistic, page index and row filter check of a
/// scan runs twice.
#[derive(Debug, Default)]
pub(crate) struct DedupScanPredicate;

impl PhysicalOptimizerRule for DedupScanPredicate {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some((config, source)) =
                node.downcast_ref::<DataSourceExec>().and_then(|e| e.downcast_to_file_source::<ParquetSource>())
            else {
                return Ok(Transformed::no(node));
            };
            let Some(predicate) = FileSource::filter(source) else { return Ok(Transformed::no(node)) };
            let parts = split_conjunction(&predicate);
            let mut kept: Vec<Arc<dyn PhysicalExpr>> = Vec::with_capacity(parts.len());
            for p in &parts {
                if !kept.iter().any(|k| k.as_ref() == p.as_ref()) {
                    kept.push(Arc::clone(p));
                }
            }
            if kept.len() == parts.len() {
                return Ok(Transformed::no(node));
            }
            let source = source.with_predicate(phys_conjunction(kept));
            let config = FileScanConfigBuilder::from(config.clone()).with_source(Arc::new(source)).build();
            Ok(Transformed::yes(DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "tocsin_dedup_scan_predicate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A segment to scan: its file and the row groups of it to read.
pub(crate) struct Piece {
    file: PartitionedFile,
    /// `None` when the footer could not be read: the whole file goes to
    /// DataFusion, which reports why it cannot be opened.
    pub(crate) plan: Option<ParquetAccessPlan>,
    /// Rows of each row group.
    rows: Vec<u64>,
    /// The file's footer with its page index, when it could be read.
    pub(crate) footer: Option<Arc<ParquetMetaData>>,
}

impl Piece {
    /// The row groups of `file` that the token filters (`reads`), the time
    /// range and the text values may leave rows in, by the statistics of
    /// its footer.
    fn new(
        file: PartitionedFile,
        footer: Option<&ParquetMetaData>,
        reads: Reads,
        range: TimeRange,
        values: &[(String, Vec<String>)],
    ) -> Result<Self> {
        let Some(footer) = footer else {
            let file = match reads {
                Reads::Some(rows) => file.with_extension(ParquetRowSelection::new(rows)),
                _ => file,
            };
            return Ok(Self { file, plan: None, rows: Vec::new(), footer: None });
        };
        let groups = footer.row_groups();
        let mut plan = match reads {
            Reads::Some(rows) => ParquetAccessPlan::try_new_from_overall_row_selection(rows, groups)?,
            _ => ParquetAccessPlan::new_all(groups.len()),
        };
        let columns = footer.file_metadata().schema_descr();
        let index = |name: &str| columns.columns().iter().position(|c| c.path().parts() == [name]);
        let ts = index(tocsin_storage::TIME_COLUMN);
        let texts: Vec<(usize, &[String])> =
            values.iter().filter_map(|(name, v)| Some((index(name)?, v.as_slice()))).collect();
        for (i, group) in groups.iter().enumerate() {
            if plan.should_scan(i) && !group_may_match(group, ts, range, &texts) {
                plan.skip(i);
            }
        }
        let rows = groups.iter().map(|g| g.num_rows().max(0) as u64).collect();
        Ok(Self { file, plan: Some(plan), rows, footer: None })
    }
}

/// Whether row group `group` may hold rows in `range` (by the statistics
/// of its time column `ts`) whose text columns hold one of the values
/// asked for. Missing statistics allow everything.
fn group_may_match(
    group: &RowGroupMetaData,
    ts: Option<usize>,
    range: TimeRange,
    texts: &[(usize, &[String])],
) -> bool {
    if let Some(Statistics::Int64(s)) = ts.and_then(|c| group.column(c).statistics())
        && let (Some(&min), Some(&max)) = (s.min_opt(), s.max_opt())
        && !range.overlaps(min, max)
    {
        return false;
    }
    texts.iter().all(|&(column, values)| match group.column(column).statistics() {
        // Truncated statistics are still bounds (a shorter minimum, a
        // larger maximum).
        Some(Statistics::ByteArray(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(min), Some(max)) => values.iter().any(|v| min.data() <= v.as_bytes() && v.as_bytes() <= max.data()),
            _ => true,
        },
        _ => true,
    })
}

/// The file groups of a scan: the row groups left to read, cut into at
/// most `partitions` runs of about equal rows, in file order, so that each
/// partition opens only the files it reads from and a scan that reads one
/// row group opens its file once. (DataFusion's own split cuts files into
/// byte ranges, each opened and pruned again whether or not it holds a row
/// group to read.)
fn spread(pieces: Vec<Piece>, partitions: usize) -> Vec<Vec<PartitionedFile>> {
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions.max(1)];
    let total: u64 = pieces
        .iter()
        .filter_map(|p| p.plan.as_ref().map(|plan| plan.row_group_index_iter().map(|i| p.rows[i]).sum::<u64>()))
        .sum();
    let share = total.div_ceil(groups.len() as u64).max(1);
    let (mut group, mut filled, mut unread) = (0, 0u64, 0);
    for piece in pieces {
        let Some(plan) = piece.plan else {
            // Unreadable footers: spread round-robin; each fails on open.
            let n = groups.len();
            groups[unread % n].push(piece.file);
            unread += 1;
            continue;
        };
        let mut part: Option<(usize, ParquetAccessPlan)> = None;
        for i in plan.row_group_index_iter() {
            if filled >= share && group + 1 < groups.len() {
                group += 1;
                filled = 0;
            }
            if let Some((g, p)) = part.take_if(|(g, _)| *g != group) {
                groups[g].push(piece.file.clone().with_extension(p));
            }
            let (_, p) = part.get_or_insert_with(|| (group, ParquetAccessPlan::new_none(plan.len())));
            p.set(i, plan.inner()[i].clone());
            filled += piece.rows[i];
        }
        if let Some((g, p)) = part {
            groups[g].push(piece.file.with_extension(p));
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// Rows `[first, first + rows)` of a file of `total` rows.
fn slice_selection(first: u64, rows: u64, total: u64) -> RowSelection {
    let end = (first + rows).min(total);
    let first = first.min(end);
    RowSelection::from(vec![
        RowSelector::skip(first as usize),
        RowSelector::select((end - first) as usize),
        RowSelector::skip((total - end) as usize),
    ])
}

/// The object-store location of a segment file. `PartitionedFile::new`
/// percent-encodes the path (`température` becomes `temp%C3%A9rature`), which
/// the local object store then looks for literally; `Path::parse` keeps the
/// characters as they are on disk. The path is absolute: the local object
/// store resolves every location from `/`.
fn segment_file(path: &std::path::Path, bytes: u64) -> Result<PartitionedFile> {
    let text = path
        .to_str()
        .ok_or_else(|| DataFusionError::Execution(format!("segment path {} is not valid UTF-8", path.display())))?;
    let location = ObjectPath::parse(text).map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(PartitionedFile::new_from_meta(ObjectMeta {
        location,
        last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        size: bytes,
        e_tag: None,
        version: None,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
    use tocsin_storage::{Storage, StorageConfig};

    use super::*;
    use crate::QueryEngine;

    /// Four hosts of 100 rows each in one segment of one row group per
    /// host (rows sorted by host, then time).
    async fn four_row_groups() -> (tempfile::TempDir, Arc<Storage>, QueryEngine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StorageConfig::for_tests(dir.path().join("data"));
        config.segments.row_group_rows = 100;
        config.segments.page_rows = 50;
        config.segments.pack_max_rows = 0;
        let storage = Storage::open(config).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        let mut values = Vec::new();
        for host in ["h0", "h1", "h2", "h3"] {
            for i in 0..100 {
                values.push(format!("(to_timestamp({i}), '{host}', {i})"));
            }
        }
        q.execute(&format!("INSERT INTO m (ts, host, v) VALUES {}", values.join(", ")), None).await.expect("insert");
        storage.persist().await.expect("persist");
        let snap = storage.snapshot("public", "m").expect("table");
        assert_eq!(snap.segments.len(), 1);
        assert!(snap.chunks.is_empty());
        (dir, storage, q)
    }

    /// The segment scans of `plan`: (file groups, row groups each file of
    /// a group reads, the scan's predicate).
    fn scans(plan: &Arc<dyn ExecutionPlan>) -> Vec<(Vec<Vec<Vec<usize>>>, String)> {
        let mut out = Vec::new();
        plan.apply(|node| {
            if let Some((config, source)) =
                node.downcast_ref::<DataSourceExec>().and_then(|e| e.downcast_to_file_source::<ParquetSource>())
            {
                let groups = config
                    .file_groups
                    .iter()
                    .map(|g| {
                        g.iter()
                            .map(|f| {
                                f.extension::<ParquetAccessPlan>()
                                    .map(ParquetAccessPlan::row_group_indexes)
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .collect();
                let predicate = FileSource::filter(source).map(|p| p.to_string()).unwrap_or_default();
                out.push((groups, predicate));
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        out
    }

    async fn plan(q: &QueryEngine, sql: &str) -> Arc<dyn ExecutionPlan> {
        let state = q.state(None);
        state.create_physical_plan(&state.create_logical_plan(sql).await.expect("plan")).await.expect("plan")
    }

    async fn answer(q: &QueryEngine, sql: &str) -> String {
        let batches = q.execute(sql, None).await.expect("query").batches;
        arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
    }

    #[tokio::test]
    async fn a_scan_opens_only_the_row_groups_its_filters_leave_in_one_partition_each() {
        let (_dir, _storage, q) = four_row_groups().await;
        // One host: one row group, one partition, the file opened once.
        let one = plan(&q, "SELECT sum(v) FROM m WHERE host = 'h2'").await;
        assert_eq!(scans(&one)[0].0, vec![vec![vec![2]]], "{}", displayable(one.as_ref()).indent(false));
        // Two hosts: one row group in each of the two partitions.
        let two = plan(&q, "SELECT sum(v) FROM m WHERE host IN ('h3', 'h0')").await;
        assert_eq!(scans(&two)[0].0, vec![vec![vec![0]], vec![vec![3]]]);
        // No filter: the four row groups, two per partition, in file order.
        let all = plan(&q, "SELECT sum(v) FROM m").await;
        assert_eq!(scans(&all)[0].0, vec![vec![vec![0, 1]], vec![vec![2, 3]]]);
        // A time range all row groups span prunes none; one none reach
        // prunes them all (the scan reads nothing).
        let late = plan(&q, "SELECT sum(v) FROM m WHERE ts >= to_timestamp(50)").await;
        assert_eq!(scans(&late)[0].0.concat().concat(), vec![0, 1, 2, 3]);
        let none = plan(&q, "SELECT sum(v) FROM m WHERE host = 'h9'").await;
        assert!(scans(&none).is_empty(), "{}", displayable(none.as_ref()).indent(false));
        // The answers are those of every row group read and filtered.
        assert!(answer(&q, "SELECT sum(v) AS s FROM m WHERE host = 'h2'").await.contains("| 4950 |"));
        assert!(
            answer(&q, "SELECT count(*) AS n FROM m WHERE host IN ('h3', 'h0') AND v >= 10").await.contains("| 180 |")
        );
        assert!(answer(&q, "SELECT count(*) AS n FROM m WHERE host = 'h9'").await.contains("| 0 |"));
        assert!(answer(&q, "SELECT count(*) AS n FROM m WHERE ts >= to_timestamp(50)").await.contains("| 200 |"));
        // One row group per statement and all of them at once give the
        // same per-host sums.
        let mut each = Vec::new();
        for h in ["h0", "h1", "h2", "h3"] {
            each.push(answer(&q, &format!("SELECT sum(v) AS s FROM m WHERE host = '{h}'")).await);
        }
        assert!(each.iter().all(|a| a.contains("| 4950 |")), "{each:?}");
        let by_host = answer(&q, "SELECT host, sum(v) AS s FROM m GROUP BY host ORDER BY host").await;
        assert_eq!(by_host.matches("| 4950 |").count(), 4, "{by_host}");
    }

    #[tokio::test]
    async fn a_scan_checks_each_filter_once() {
        let (_dir, _storage, q) = four_row_groups().await;
        let p = plan(&q, "SELECT v FROM m WHERE host = 'h1' AND ts < to_timestamp(10) AND v > 3").await;
        let (_, predicate) = &scans(&p)[0];
        assert_eq!(predicate.matches("host@").count(), 1, "{predicate}");
        assert_eq!(predicate.matches("ts@").count(), 1, "{predicate}");
        assert_eq!(predicate.matches("v@").count(), 1, "{predicate}");
        let rows: usize = collect(p, q.state(None).task_ctx()).await.expect("run").iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 6);
    }

    #[tokio::test]
    async fn segment_footers_are_cached_with_their_page_index() {
        let (_dir, storage, q) = four_row_groups().await;
        assert!(answer(&q, "SELECT count(*) AS n FROM m WHERE host = 'h1'").await.contains("| 100 |"));
        let snap = storage.snapshot("public", "m").expect("table");
        let file = segment_file(&snap.segment_path(&snap.segments[0]), snap.segments[0].bytes).expect("file");
        let cache = q.state(None).runtime_env().cache_manager.get_file_metadata_cache();
        let entry = cache.get(&file.object_meta.location).expect("the footer is cached");
        let footer = entry.file_metadata.as_any().downcast_ref::<CachedParquetMetaData>().expect("parquet");
        let footer = footer.parquet_metadata();
        assert!(footer.column_index().is_some() && footer.offset_index().is_some());
        assert_eq!(footer.num_row_groups(), 4);
    }

    /// Small tables share a pack; each answers with its own rows only, by
    /// its own filters, also when another table of the pack has a column
    /// of the same name and another type than one the table adds later.
    #[tokio::test]
    async fn tables_in_a_pack_answer_with_their_own_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StorageConfig::for_tests(dir.path().join("data"));
        config.segments.row_group_rows = 100;
        config.segments.page_rows = 10;
        let storage = Storage::open(config).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        for (table, k) in [("a", 1), ("b", 1000)] {
            let mut values = Vec::new();
            for host in ["h0", "h1", "h2"] {
                for i in 0..50 {
                    values.push(format!("(to_timestamp({i}), '{host}', {}, 'x{i}')", i * k));
                }
            }
            let sql = format!("INSERT INTO {table} (ts, host, v, x) VALUES {}", values.join(", "));
            q.execute(&sql, None).await.expect("insert");
        }
        q.execute("INSERT INTO c (ts, host, v) VALUES (to_timestamp(1), 'h9', 7)", None).await.expect("insert c");
        storage.persist().await.expect("persist");
        let path = |t: &str| storage.snapshot("public", t).expect("table").segments[0].path.clone();
        assert_eq!(path("a"), path("b"), "a and b share a pack");
        assert_eq!(path("a"), path("c"), "c too");
        assert!(path("a").starts_with("packs/public/"), "{}", path("a"));

        // Counted by rows read, not by the file's row count.
        assert!(answer(&q, "SELECT count(*) AS n FROM a").await.contains("| 150 |"));
        assert!(answer(&q, "SELECT count(*) AS n FROM c").await.contains("| 1 |"));
        let sums = "SELECT count(*) AS n, sum(v) AS s, min(x) AS lo FROM";
        let a = answer(&q, &format!("{sums} a")).await;
        assert!(a.contains("| 150 | 3675 | x0 |"), "{a}");
        let b = answer(&q, &format!("{sums} b")).await;
        assert!(b.contains("| 150 | 3675000 | x0 |"), "{b}");
        let c = answer(&q, "SELECT host, v FROM c").await;
        assert!(c.contains("| h9   | 7 |"), "{c}");
        let one = "SELECT count(*) AS n, sum(v) AS s FROM b WHERE host = 'h1' AND ts >= to_timestamp(40)";
        assert!(answer(&q, one).await.contains("| 10 | 445000 |"), "{}", answer(&q, one).await);
        assert!(answer(&q, "SELECT count(*) AS n FROM c WHERE host = 'h1'").await.contains("| 0 |"));

        // a gets a number `x2`; b's pack column `x` is text, c gets `x` as
        // a number too: each table reads its own type.
        q.execute("INSERT INTO c (ts, host, v, x) VALUES (to_timestamp(2), 'h9', 8, 2.5)", None)
            .await
            .expect("c gets a numeric x");
        storage.persist().await.expect("persist");
        let c = answer(&q, "SELECT ts, x FROM c WHERE x > 1 OR x IS NULL ORDER BY ts").await;
        assert!(c.contains("| 1970-01-01T00:00:01Z |     |") && c.contains("| 1970-01-01T00:00:02Z | 2.5 |"), "{c}");
        assert!(answer(&q, "SELECT count(*) AS n FROM c WHERE x = 2.5").await.contains("| 1 |"));
        assert!(answer(&q, "SELECT count(*) AS n FROM a WHERE x = 'x7'").await.contains("| 3 |"));
    }
}

#[cfg(test)]
mod last_write_wins {
    use std::sync::Arc;
    use std::time::Duration;

    use tocsin_storage::{CompactionConfig, Storage, StorageConfig};

    use crate::QueryEngine;

    async fn answer(q: &QueryEngine, sql: &str) -> String {
        let batches = q.execute(sql, None).await.expect("query").batches;
        arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
    }

    /// What each statement answers, in order.
    async fn answers(q: &QueryEngine) -> Vec<String> {
        let mut out = Vec::new();
        for sql in [
            "SELECT host, ts, v FROM m ORDER BY host, ts",
            "SELECT host, count(*) AS n, sum(v) AS s FROM m GROUP BY host ORDER BY host",
            // A filter on the value must see the last written value: the
            // earlier 1.0 at times 5..9 of h1 no longer counts.
            "SELECT count(*) AS n FROM m WHERE v < 2",
            "SELECT count(*) AS n FROM m WHERE host = 'h1' AND ts >= to_timestamp(5) AND v = 2",
            "SELECT v FROM m WHERE host = 'h2' AND ts = to_timestamp(3)",
            "SELECT count(*) AS n FROM m",
            "SELECT host, ts, v - lag(v) OVER (PARTITION BY host ORDER BY ts) AS d FROM m ORDER BY host, ts LIMIT 12",
        ] {
            out.push(answer(q, sql).await);
        }
        out
    }

    #[tokio::test]
    async fn answers_keep_the_last_write_before_and_after_persist_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StorageConfig::for_tests(dir.path().join("data"));
        config.segments.pack_max_rows = 0;
        config.compaction = CompactionConfig {
            cold_after: Duration::from_secs(u64::MAX / 4),
            grace: Duration::ZERO,
            ..Default::default()
        };
        let storage = Storage::open(config).await.expect("open");
        let q = QueryEngine::new(Arc::clone(&storage));
        let rows = |host: &str, from: i64, to: i64, v: f64| {
            (from..to).map(|i| format!("(to_timestamp({i}), '{host}', {v})")).collect::<Vec<_>>().join(", ")
        };
        let insert = |values: String| format!("INSERT INTO m (ts, host, v) VALUES {values}");
        q.execute(&insert(rows("h1", 0, 10, 1.0)), None).await.expect("insert");
        q.execute(&insert(rows("h2", 0, 10, 5.0)), None).await.expect("insert");
        storage.persist().await.expect("persist");
        // Written again: h1 5..14 at 2.0 (a retried, then extended batch),
        // and h2 at 3 twice in one statement (the last, 7.0, wins).
        q.execute(&insert(rows("h1", 5, 15, 2.0)), None).await.expect("insert");
        q.execute(&insert(format!("{}, {}", rows("h2", 3, 4, 6.0), rows("h2", 3, 4, 7.0))), None)
            .await
            .expect("insert");
        let buffered = answers(&q).await;
        assert!(buffered[1].contains("| h1   | 15 | 25 "), "{}", buffered[1]);
        assert!(buffered[1].contains("| h2   | 10 | 52 "), "{}", buffered[1]);
        assert!(buffered[2].contains("| 5 |"), "{}", buffered[2]);
        assert!(buffered[3].contains("| 10 |"), "{}", buffered[3]);
        assert!(buffered[4].contains("| 7 ") && buffered[4].lines().count() == 5, "{}", buffered[4]);
        assert!(buffered[5].contains("| 25 |"), "{}", buffered[5]);
        storage.persist().await.expect("persist");
        assert!(storage.snapshot("public", "m").expect("m").overlaps.is_some());
        assert_eq!(answers(&q).await, buffered, "the same after the persist");
        let stats = storage.compact().await.expect("compact");
        assert_eq!(stats.merges, 1);
        assert!(storage.snapshot("public", "m").expect("m").overlaps.is_none());
        assert_eq!(answers(&q).await, buffered, "the same after compaction");
        let rows: u64 = storage.snapshot("public", "m").expect("m").segments.iter().map(|s| s.rows).sum();
        assert_eq!(rows, 25, "the merge kept one row per series and time");
    }
}
