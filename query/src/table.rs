//! The table provider: one Tocsin table as DataFusion sees it, merging the
//! write buffer and the Parquet segments of a storage snapshot.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
// The type DataFusion's footer cache holds (`parquet::CachedParquetMetaData`,
// of the same name, is another one that its readers do not recognise).
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::parquet::{CachedParquetFileReaderFactory, ParquetRowSelection};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CachedFileMetadataEntry;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::parquet::arrow::arrow_reader::RowSelection;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use tocsin_storage::batch::adapt_batch;
use tocsin_storage::tokens::TokenFilter;
use tocsin_storage::{SegmentMeta, Storage, TableSnapshot};

use crate::prune::time_range;
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
        let snap = match &self.pinned {
            Some(s) => Some(s.clone()),
            None => self.storage.snapshot(&self.db, &self.table),
        };
        let Some(snap) = snap else {
            return Ok(MemorySourceConfig::try_new_exec(&[vec![]], schema, projection.cloned())?);
        };
        let range = time_range(filters);

        let mut batches = Vec::new();
        for c in snap.chunks.iter().filter(|c| range.overlaps(c.min_ts, c.max_ts)) {
            batches.push(adapt_batch(&c.batch, &schema)?);
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
        let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut files = Vec::new();
        for seg in snap.segments.iter().filter(|s| range.overlaps(s.min_ts, s.max_ts)) {
            let file = segment_file(&snap.segment_path(seg), seg.bytes)?;
            // Footers are cached without their token filters (see
            // `Storage::segment_footer`), which is why they are read here
            // rather than by DataFusion. One that cannot be read is
            // reported when DataFusion opens the file.
            let meta = &file.object_meta;
            if !footers.get(&meta.location).is_some_and(|e| e.is_valid_for(meta))
                && let Ok(footer) = self.storage.segment_footer(&snap, seg)
            {
                let footer = Arc::new(CachedParquetMetaData::new(Arc::new(footer)));
                footers.put(&meta.location, CachedFileMetadataEntry::new(meta.clone(), footer));
            }
            match self.blocks_to_read(&snap, seg, &searches) {
                Reads::All => files.push(file),
                Reads::Some(rows) => files.push(file.with_extension(ParquetRowSelection::new(rows))),
                Reads::None => {}
            }
        }
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
            let mut source = ParquetSource::new(Arc::clone(&schema))
                .with_table_parquet_options(datafusion::config::TableParquetOptions {
                    global: options,
                    ..Default::default()
                })
                .with_enable_page_index(true)
                .with_parquet_file_reader_factory(Arc::new(readers));
            if let Some(pred) = conjunction(filters.iter().cloned()) {
                let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
                source = source.with_predicate(state.create_physical_expr(pred, &df_schema)?);
            }
            let n = partitions.min(files.len());
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n];
            for (i, f) in files.into_iter().enumerate() {
                groups[i % n].push(f);
            }
            let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            plans.push(DataSourceExec::from_data_source(config));
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
