//! Golden SQL files (`tests/slt/*.slt`, the sqllogictest format DataFusion
//! and DuckDB use) run against a fresh engine each: Tocsin's functions,
//! pruning, the last-row rewrite and the folded aggregates, with the
//! answers written out in the files.
//!
//! Besides SQL, a file may hold two runner commands as statements:
//! `persist` (the write buffer becomes segments) and `compact` (a full
//! compaction), so that one file checks the same answers before and after
//! the rows move to disk. Result columns are typed strictly: `I` for
//! integers, `R` for floats, `T` for anything else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tocsin_query::QueryEngine;
use tocsin_storage::{Storage, StorageConfig};

/// What a statement failed with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

/// One engine on its own data directory.
struct Tocsin {
    _dir: tempfile::TempDir,
    storage: Arc<Storage>,
    engine: QueryEngine,
}

impl Tocsin {
    async fn open() -> Result<Self, Failure> {
        let dir = tempfile::tempdir().map_err(|e| Failure(e.to_string()))?;
        let storage = Storage::open(StorageConfig::for_tests(dir.path())).await.map_err(|e| Failure(e.to_string()))?;
        let engine = QueryEngine::new(Arc::clone(&storage));
        Ok(Self { _dir: dir, storage, engine })
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

#[async_trait::async_trait]
impl AsyncDB for Tocsin {
    type Error = Failure;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failure> {
        let fail = |e: &dyn std::fmt::Display| Failure(e.to_string());
        match sql.trim().to_ascii_lowercase().as_str() {
            "persist" => {
                self.storage.persist().await.map_err(|e| fail(&e))?;
                return Ok(DBOutput::StatementComplete(0));
            }
            "compact" => {
                self.storage.compact_full().await.map_err(|e| fail(&e))?;
                return Ok(DBOutput::StatementComplete(0));
            }
            _ => {}
        }
        let result = self.engine.execute(sql, None).await.map_err(|e| fail(&e))?;
        if sql.trim_start().get(..6).is_some_and(|w| w.eq_ignore_ascii_case("insert")) {
            return Ok(DBOutput::StatementComplete(result.num_rows() as u64));
        }
        let types = result.schema.fields().iter().map(|f| column_type(f.data_type())).collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &result.batches {
            let columns = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(&e))?;
            for row in 0..batch.num_rows() {
                rows.push(columns.iter().map(|c| c.value(row).to_string()).collect());
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tocsin"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sql_files_answer_as_written() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "golden files in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = Runner::new(Tocsin::open);
        runner.with_column_validator(sqllogictest::strict_column_validator);
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}", e.display(false)));
        }
    }
    assert!(failures.is_empty(), "{} of {} files failed:\n{}", failures.len(), files.len(), failures.join("\n\n"));
}
