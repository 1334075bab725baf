//! DataFusion catalog over storage: catalog `tocsin`, one schema per
//! database, one table provider per table. Providers are created per query
//! with the table's schema at that moment.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::Result;
use tocsin_storage::Storage;

use crate::table::TocsinTable;

pub const CATALOG: &str = "tocsin";
pub const DEFAULT_DATABASE: &str = "public";

#[derive(Debug)]
pub(crate) struct TocsinCatalog {
    storage: Arc<Storage>,
}

impl TocsinCatalog {
    pub(crate) fn new(storage: Arc<Storage>) -> Self {
        Self { storage }
    }
}

impl CatalogProvider for TocsinCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.storage.databases();
        if !names.iter().any(|n| n == DEFAULT_DATABASE) {
            names.push(DEFAULT_DATABASE.to_string());
        }
        names.sort();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
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
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.storage.table_exists(&self.db, name)
    }
}
