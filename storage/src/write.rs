//! The canonical shape of a write, shared by every ingest path (gRPC, SQL
//! `INSERT`, and later the compatibility protocols), and its validation.
//!
//! A write is columnar: a table, then blocks of rows that share one set of
//! tag values (a series), each block carrying parallel arrays of timestamps
//! and field values. Validation is per block: a bad block is rejected with a
//! [`WriteError`] naming the problem and never affects the other blocks.

use crate::schema::{ColumnKind, FieldType, TIME_COLUMN};

/// Limits that every write is checked against.
#[derive(Debug, Clone)]
pub struct WriteLimits {
    /// Longest accepted string field value, in bytes (log messages).
    pub max_string_bytes: usize,
    /// Longest accepted tag value, in bytes.
    pub max_tag_bytes: usize,
    /// Most columns (tags + fields + ts) a table may have.
    pub max_columns: usize,
    /// Most active series (tag sets written within `series_window`) a
    /// table may have; a write that would start one more is refused.
    pub max_series_per_table: usize,
    pub series_window: std::time::Duration,
    /// Most tables over all databases: each costs schema, buffer and file
    /// bookkeeping, and a client inventing names must not exhaust them.
    pub max_tables: usize,
    /// Most databases.
    pub max_databases: usize,
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            max_string_bytes: 64 * 1024,
            max_tag_bytes: 4096,
            max_columns: 1024,
            max_series_per_table: 1_000_000,
            series_window: std::time::Duration::from_secs(86_400),
            max_tables: 100_000,
            max_databases: 1_000,
        }
    }
}

impl WriteLimits {
    /// For WAL replay: what was acknowledged is never refused again, even
    /// if a limit was lowered since.
    pub(crate) fn for_replay(&self) -> Self {
        Self {
            max_series_per_table: usize::MAX,
            max_columns: usize::MAX,
            max_string_bytes: usize::MAX,
            max_tag_bytes: usize::MAX,
            max_tables: usize::MAX,
            max_databases: usize::MAX,
            ..self.clone()
        }
    }
}

/// Rows for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableWrite {
    pub table: String,
    pub blocks: Vec<SeriesBlock>,
}

/// The rows of one series: one set of tag values, `timestamps.len()` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesBlock {
    /// The caller's index of this item, echoed back in rejections.
    pub item: u32,
    pub tags: Vec<(String, String)>,
    /// Nanoseconds since the Unix epoch, UTC.
    pub timestamps: Vec<i64>,
    pub fields: Vec<FieldColumn>,
}

impl SeriesBlock {
    pub fn rows(&self) -> usize {
        self.timestamps.len()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldColumn {
    pub name: String,
    pub values: FieldValues,
    /// `Some(v)`: `v[i] == false` marks row `i` as NULL. `None`: no NULLs.
    pub validity: Option<Vec<bool>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValues {
    F64(Vec<f64>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

impl FieldValues {
    pub fn len(&self) -> usize {
        match self {
            FieldValues::F64(v) => v.len(),
            FieldValues::I64(v) => v.len(),
            FieldValues::U64(v) => v.len(),
            FieldValues::Bool(v) => v.len(),
            FieldValues::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValues::F64(_) => FieldType::Float,
            FieldValues::I64(_) => FieldType::Integer,
            FieldValues::U64(_) => FieldType::UInteger,
            FieldValues::Bool(_) => FieldType::Boolean,
            FieldValues::Str(_) => FieldType::String,
        }
    }
}

/// Why one block (item) of a write was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName { name: String, reason: &'static str },
    #[error("invalid column name {name:?}: {reason}")]
    InvalidColumnName { name: String, reason: &'static str },
    #[error("invalid database name {name:?}: {reason}")]
    InvalidDatabaseName { name: String, reason: &'static str },
    #[error("column {name:?} appears more than once in the same series")]
    DuplicateColumn { name: String },
    #[error("column name {name:?} is reserved for the time column")]
    ReservedColumn { name: String },
    #[error("series has no rows")]
    EmptySeries,
    #[error("series has no fields")]
    NoFields,
    #[error("field {field:?} has {got} values but the series has {expected} timestamps")]
    LengthMismatch { field: String, expected: usize, got: usize },
    #[error("timestamp {ts} is out of range (must be >= 0 ns since 1970-01-01T00:00:00Z)")]
    TimestampOutOfRange { ts: i64 },
    #[error("field {column:?} is {existing} in table {table:?}; this write has it as {new}")]
    TypeConflict { table: String, column: String, existing: FieldType, new: FieldType },
    #[error("column {column:?} is a {existing} in table {table:?}; this write uses it as a {new}")]
    KindConflict { table: String, column: String, existing: ColumnKind, new: ColumnKind },
    #[error("value of {column:?} is {len} bytes, over the limit of {limit}")]
    ValueTooLarge { column: String, len: usize, limit: usize },
    #[error("table {table:?} would have {count} columns, over the limit of {limit}")]
    TooManyColumns { table: String, count: usize, limit: usize },
    #[error(
        "table {table:?} already has {limit} active series (written within the last {window_secs} s), the limit; \
         this new series is refused, series already active are still accepted"
    )]
    TooManySeries { table: String, limit: usize, window_secs: u64 },
    #[error("table {table:?} would be table number {count}, over the limit of {limit} (limits.max_tables)")]
    TooManyTables { table: String, count: usize, limit: usize },
    #[error("database {database:?} would be database number {count}, over the limit of {limit} (limits.max_databases)")]
    TooManyDatabases { database: String, count: usize, limit: usize },
}

impl WriteError {
    /// The bound that refused the item, when a bound did (see
    /// [`crate::refusals`]); `None` for malformed or conflicting input.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            WriteError::ValueTooLarge { .. } => Some("max_string_bytes"),
            WriteError::TooManyColumns { .. } => Some("max_columns"),
            WriteError::TooManySeries { .. } => Some("max_series_per_table"),
            WriteError::TooManyTables { .. } => Some("max_tables"),
            WriteError::TooManyDatabases { .. } => Some("max_databases"),
            _ => None,
        }
    }
}

const MAX_NAME_BYTES: usize = 128;

/// Names of databases, tables and columns: 1 to 128 bytes of ASCII letters,
/// digits, `_`, `.`, `:` and `-`, not starting with a digit or `-`. This is
/// a superset of Prometheus metric and label names and covers the names
/// Telegraf and TSBS use; anything else would need quoting everywhere in SQL.
/// Database names: they appear in URLs (`?db=`) and SQL as bare words.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    // A database is a folder under segments/: `..` would write outside it.
    if name.starts_with('.') {
        return Err("must not start with '.'");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("longer than 128 bytes");
    }
    let first = name.as_bytes()[0];
    if first.is_ascii_digit() || first == b'-' {
        return Err("must not start with a digit or '-'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')) {
        return Err("may only contain ASCII letters, digits, '_', '.', ':' and '-'");
    }
    Ok(())
}

/// Table and column names: what InfluxDB, Prometheus and OpenTelemetry
/// names can be (spaces, commas, any script), short of what would break a
/// directory name or a double-quoted SQL identifier.
pub(crate) fn check_object_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("longer than 128 bytes");
    }
    // A table is a folder: one starting with '.' would be hidden from
    // `ls` and from the globs backups and operators use.
    if name.starts_with('.') {
        return Err("must not start with '.'");
    }
    if name.chars().any(|c| c.is_control() || c == '/' || c == '"') {
        return Err("must not contain control characters, '/' or '\"'");
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err("must not start or end with a space");
    }
    Ok(())
}

/// A name as an error shows it: at most 200 bytes of it (a 10 MB name
/// once came back as a 10 MB error).
fn shown(name: &str) -> String {
    const SHOWN: usize = 200;
    if name.len() <= SHOWN {
        return name.to_string();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &name[..end], name.len())
}

pub fn check_table_name(name: &str) -> Result<(), WriteError> {
    check_object_name(name).map_err(|reason| WriteError::InvalidTableName { name: shown(name), reason })
}

pub fn check_database_name(name: &str) -> Result<(), WriteError> {
    check_name(name).map_err(|reason| WriteError::InvalidDatabaseName { name: shown(name), reason })?;
    // Any case: `SYSTEM` next to `system` would pass for it in listings.
    if name.eq_ignore_ascii_case("system") || name.eq_ignore_ascii_case("information_schema") {
        return Err(WriteError::InvalidDatabaseName { name: name.to_string(), reason: "reserved" });
    }
    Ok(())
}

pub fn check_column_name(name: &str) -> Result<(), WriteError> {
    check_object_name(name).map_err(|reason| WriteError::InvalidColumnName { name: shown(name), reason })?;
    if name == TIME_COLUMN {
        return Err(WriteError::ReservedColumn { name: name.to_string() });
    }
    Ok(())
}

/// Checks everything about a block that does not depend on the table's
/// existing schema.
pub(crate) fn check_block_shape(table: &str, block: &SeriesBlock, limits: &WriteLimits) -> Result<(), WriteError> {
    let rows = block.rows();
    if rows == 0 {
        return Err(WriteError::EmptySeries);
    }
    if block.fields.is_empty() {
        return Err(WriteError::NoFields);
    }
    // Bounded before anything else looks at the names: a block of 100,000
    // tags is refused here, in constant time.
    let count = block.tags.len() + block.fields.len() + 1;
    if count > limits.max_columns {
        return Err(WriteError::TooManyColumns { table: table.to_string(), count, limit: limits.max_columns });
    }
    for (name, value) in &block.tags {
        check_column_name(name)?;
        if value.len() > limits.max_tag_bytes {
            return Err(WriteError::ValueTooLarge {
                column: name.clone(),
                len: value.len(),
                limit: limits.max_tag_bytes,
            });
        }
    }
    for field in &block.fields {
        check_column_name(&field.name)?;
        let got = field.values.len();
        if got != rows {
            return Err(WriteError::LengthMismatch { field: field.name.clone(), expected: rows, got });
        }
        if let Some(validity) = &field.validity
            && validity.len() != rows
        {
            return Err(WriteError::LengthMismatch {
                field: format!("{} (validity)", field.name),
                expected: rows,
                got: validity.len(),
            });
        }
        if let FieldValues::Str(values) = &field.values
            && let Some(long) = values.iter().find(|v| v.len() > limits.max_string_bytes)
        {
            return Err(WriteError::ValueTooLarge {
                column: field.name.clone(),
                len: long.len(),
                limit: limits.max_string_bytes,
            });
        }
    }
    if let Some(name) =
        first_duplicate(block.tags.iter().map(|(n, _)| n.as_str()).chain(block.fields.iter().map(|f| f.name.as_str())))
    {
        return Err(WriteError::DuplicateColumn { name: name.to_string() });
    }
    if let Some(&ts) = block.timestamps.iter().find(|&&ts| ts < 0) {
        return Err(WriteError::TimestampOutOfRange { ts });
    }
    Ok(())
}

/// The first name that occurs twice. Blocks of a few columns (nearly all)
/// are scanned pairwise without allocating; wider ones go through a hash set,
/// in linear time (a pairwise scan of 100,000 names held the write lock for
/// half a minute).
fn first_duplicate<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    const PAIRWISE_UP_TO: usize = 16;
    if names.clone().nth(PAIRWISE_UP_TO).is_none() {
        let mut rest = names;
        while let Some(n) = rest.next() {
            if rest.clone().any(|m| m == n) {
                return Some(n);
            }
        }
        return None;
    }
    let mut seen = ahash::AHashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

/// Reports which column kind a block asks of each of its columns.
pub(crate) fn block_columns(block: &SeriesBlock) -> impl Iterator<Item = (&str, ColumnKind)> {
    block
        .tags
        .iter()
        .map(|(n, _)| (n.as_str(), ColumnKind::Tag))
        .chain(block.fields.iter().map(|f| (f.name.as_str(), ColumnKind::Field(f.values.field_type()))))
}

fn series_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344)
}

/// Hash of a tag set that does not depend on the order of the tags: the
/// identity of a series for the last-row cache and the series limit.
pub(crate) fn series_hash<'a>(tags: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let s = series_hasher();
    tags.fold(0u64, |acc, (k, v)| {
        let mut h = s.build_hasher();
        k.hash(&mut h);
        v.hash(&mut h);
        acc.wrapping_add(h.finish())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fields: Vec<FieldColumn>, ts: Vec<i64>) -> SeriesBlock {
        SeriesBlock { item: 0, tags: vec![("host".into(), "a".into())], timestamps: ts, fields }
    }

    fn f64col(name: &str, v: Vec<f64>) -> FieldColumn {
        FieldColumn { name: name.into(), values: FieldValues::F64(v), validity: None }
    }

    #[test]
    fn names_follow_the_documented_alphabet() {
        assert!(check_table_name("cpu").is_ok());
        assert!(check_table_name("node_cpu_seconds_total").is_ok());
        assert!(check_table_name("http.requests:rate5m").is_ok());
        assert!(check_table_name("").is_err());
        // Influx measurements and OpenTelemetry names may hold spaces,
        // commas, digits first and other scripts.
        for ok in ["9lives", "disk io", "a,b=c", "température", "drop;table"] {
            assert!(check_table_name(ok).is_ok(), "{ok}");
        }
        for bad in ["a/b", "..", ".", ".hidden", "say \"hi\"", "tab\there", " lead", "trail "] {
            assert!(check_table_name(bad).is_err(), "{bad}");
            assert!(check_column_name(bad).is_err(), "{bad}");
        }
        assert!(check_database_name("a b").is_err());
        assert!(check_database_name("9lives").is_err());
        assert!(check_table_name(&"x".repeat(129)).is_err());
        assert_eq!(check_column_name("ts"), Err(WriteError::ReservedColumn { name: "ts".into() }));
        assert!(check_database_name("system").is_err());
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let limits = WriteLimits::default();
        let err = check_block_shape("t", &block(vec![f64col("v", vec![1.0])], vec![1, 2]), &limits);
        assert_eq!(err, Err(WriteError::LengthMismatch { field: "v".into(), expected: 2, got: 1 }));
        let err = check_block_shape("t", &block(vec![f64col("v", vec![1.0])], vec![-5]), &limits);
        assert_eq!(err, Err(WriteError::TimestampOutOfRange { ts: -5 }));
        let err = check_block_shape("t", &block(vec![f64col("host", vec![1.0])], vec![1]), &limits);
        assert_eq!(err, Err(WriteError::DuplicateColumn { name: "host".into() }));
        let err = check_block_shape("t", &block(vec![], vec![1]), &limits);
        assert_eq!(err, Err(WriteError::NoFields));
        assert!(check_block_shape("t", &block(vec![f64col("v", vec![f64::NAN])], vec![1]), &limits).is_ok());
    }

    /// A database is a folder under `segments/`: `..` wrote outside it (and
    /// a table named `manifest.json` there stopped every persist).
    #[test]
    fn database_names_cannot_leave_the_segments_folder() {
        for bad in [".", "..", ".hidden"] {
            assert!(check_database_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_database_name("metrics.prod").is_ok());
    }

    #[test]
    fn errors_show_at_most_200_bytes_of_a_name() {
        let long = "x/".repeat(5_000_000);
        let msg = check_table_name(&long).expect_err("slash").to_string();
        assert!(msg.len() < 400 && msg.contains("(10000000 bytes)"), "{}", &msg[..msg.len().min(500)]);
    }
}
