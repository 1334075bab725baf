//! DataFusion catalog over storage: catalog `tocsin`, one schema per
//! database, one table provider per table. Providers are created per query
//! with the table's schema at that moment.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::RwLock;
use tocsin_storage::{SYSTEM_DATABASE, Storage};

use crate::table::TocsinTable;

pub const CATALOG: &str = "tocsin";
pub const DEFAULT_DATABASE: &str = "public";

/// A table whose rows are computed when it is scanned (`system.alerts`):
/// state that lives in a component's memory rather than in storage.
pub trait LiveTable: Send + Sync + std::fmt::Debug {
    fn schema(&self) -> SchemaRef;
    /// The table's rows now.
    fn batch(&self) -> std::result::Result<RecordBatch, arrow::error::ArrowError>;
}

pub(crate) type LiveTables = Arc<RwLock<BTreeMap<String, Arc<dyn LiveTable>>>>;

/// Tables of `system` that components write to storage, by the schema
/// their first write makes: until it happens (`system.alert_history`
/// before the first alert transition) they read as empty tables, not as
/// tables that do not exist.
pub(crate) type DeclaredTables = Arc<RwLock<BTreeMap<String, SchemaRef>>>;

#[derive(Debug)]
pub(crate) struct TocsinCatalog {
    storage: Arc<Storage>,
    live: LiveTables,
    declared: DeclaredTables,
}

impl TocsinCatalog {
    pub(crate) fn new(storage: Arc<Storage>, live: LiveTables, declared: DeclaredTables) -> Self {
        Self { storage, live, declared }
    }
}

impl CatalogProvider for TocsinCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.storage.databases();
        for n in [DEFAULT_DATABASE, SYSTEM_DATABASE] {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
        names.sort();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SYSTEM_DATABASE {
            return Some(Arc::new(SystemSchema {
                inner: TocsinSchema { storage: Arc::clone(&self.storage), db: name.to_string() },
                live: Arc::clone(&self.live),
                declared: Arc::clone(&self.declared),
            }));
        }
        // Any valid name is a (possibly empty) database: writing to it
        // creates it.
        tocsin_storage::write::check_database_name(name).ok()?;
        Some(Arc::new(TocsinSchema { storage: Arc::clone(&self.storage), db: name.to_string() }))
    }
}

#[derive(Debug)]
pub(crate) struct TocsinSchema {
    storage: Arc<Storage>,
    db: String,
}

#[async_trait]
impl SchemaProvider for TocsinSchema {
    fn table_names(&self) -> Vec<String> {
        self.storage.tables(&self.db)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.storage.table_schema(&self.db, name).map(|schema| {
            Arc::new(TocsinTable {
                storage: Arc::clone(&self.storage),
                db: self.db.clone(),
                table: name.to_string(),
                schema,
                pinned: None,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.storage.table_exists(&self.db, name)
    }
}

/// `system`: live tables of the server's components, and the tables they
/// write to storage (alert history, notification log).
#[derive(Debug)]
pub(crate) struct SystemSchema {
    inner: TocsinSchema,
    live: LiveTables,
    declared: DeclaredTables,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.live.read().keys().cloned().collect();
        names.extend(self.declared.read().keys().cloned());
        names.extend(self.inner.table_names());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let live = self.live.read().get(name).cloned();
        if let Some(t) = live {
            return Ok(Some(Arc::new(LiveProvider(t))));
        }
        if let Some(stored) = self.inner.table(name).await? {
            return Ok(Some(stored));
        }
        let declared = self.declared.read().get(name).cloned();
        match declared {
            Some(schema) => Ok(Some(Arc::new(EmptyTable::new(schema)))),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.live.read().contains_key(name) || self.inner.table_exist(name) || self.declared.read().contains_key(name)
    }
}

#[derive(Debug)]
struct LiveProvider(Arc<dyn LiveTable>);

#[async_trait]
impl TableProvider for LiveProvider {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.0.batch()?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], self.0.schema(), projection.cloned())?;
        Ok(exec)
    }
}
