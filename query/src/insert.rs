//! Before an `INSERT` is planned: create the table, or add the columns, that
//! it names but that do not exist yet, typed from the inserted values
//! (`ts` is the time column; strings become tags, except the text columns
//! of log events, `message`, `trace_id`, `span_id` and `attributes`, which
//! are string fields as `WriteLogs` makes them; numbers and booleans become
//! fields). The columns stay provisional until a write is accepted.

use arrow::datatypes::DataType;
use datafusion::execution::context::SessionState;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, Statement, TableObject};
use tocsin_storage::schema::LOG_TEXT_FIELDS;
use tocsin_storage::{ColumnKind, FieldType, Storage, TIME_COLUMN};

use crate::QueryError;

/// Unquoted identifiers are lower-cased, as DataFusion does.
fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(normalize(i)),
            _ => None,
        })
        .collect()
}

/// The table an INSERT gave provisional columns (see
/// [`Storage::discard_provisional`]): to be discarded if the INSERT fails.
pub(crate) type Provisional = Option<(String, String)>;

/// The database and table an `INSERT` writes, if `statement` is one.
pub(crate) fn target(state: &SessionState, statement: &DFStatement) -> Option<(String, String)> {
    let DFStatement::Statement(stmt) = statement else { return None };
    let Statement::Insert(insert) = stmt.as_ref() else { return None };
    let TableObject::TableName(name) = &insert.table else { return None };
    match parts(name).as_slice() {
        [t] => Some((state.config().options().catalog.default_schema.clone(), t.clone())),
        [d, t] | [_, d, t] => Some((d.clone(), t.clone())),
        _ => None,
    }
}

pub(crate) async fn prepare(
    state: &SessionState,
    storage: &Storage,
    statement: &DFStatement,
) -> Result<Provisional, QueryError> {
    let DFStatement::Statement(stmt) = statement else { return Ok(None) };
    let Statement::Insert(insert) = stmt.as_ref() else { return Ok(None) };
    if storage.is_reader() {
        // Refused before planning: a plan would add the table and columns.
        return Err(QueryError::Storage(tocsin_storage::StorageError::ReadOnly("writes")));
    }
    let Some((db, table)) = target(state, statement) else { return Ok(None) };
    let columns: Vec<String> = insert.columns.iter().filter_map(|c| parts(c).pop()).collect();
    let existing = storage.table_schema(&db, &table);
    if columns.is_empty() {
        return match existing {
            Some(_) => Ok(None),
            None => Err(QueryError::InsertNeedsColumns { table }),
        };
    }
    let unknown: Vec<usize> = (0..columns.len())
        .filter(|&i| existing.as_ref().is_none_or(|s| s.field_with_name(&columns[i]).is_err()))
        .collect();
    if unknown.is_empty() {
        return Ok(None);
    }
    if !columns.iter().any(|c| c == TIME_COLUMN) {
        return Err(QueryError::InsertWithoutTime);
    }
    let Some(source) = &insert.source else { return Ok(None) };
    let source_plan =
        state.statement_to_plan(DFStatement::Statement(Box::new(Statement::Query(source.clone())))).await?;
    let source_schema = source_plan.schema();
    if source_schema.fields().len() != columns.len() {
        // DataFusion reports the mismatch when it plans the INSERT.
        return Ok(None);
    }
    let mut new_columns = Vec::new();
    for i in unknown {
        let name = &columns[i];
        if name == TIME_COLUMN {
            continue;
        }
        let dt = source_schema.field(i).data_type();
        let text = matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _));
        let kind = match dt {
            // The text columns of a log event are fields whichever path
            // creates them, so SQL and WriteLogs agree on the table's shape.
            _ if text && LOG_TEXT_FIELDS.contains(&name.as_str()) => ColumnKind::Field(FieldType::String),
            _ if text => ColumnKind::Tag,
            DataType::Null => return Err(QueryError::CannotInferType { column: name.clone(), data_type: dt.clone() }),
            other => match FieldType::from_arrow(other) {
                Some(t) => ColumnKind::Field(t),
                None => return Err(QueryError::UnsupportedType { column: name.clone(), data_type: other.clone() }),
            },
        };
        new_columns.push((name.clone(), kind));
    }
    storage.ensure_table(&db, &table, &new_columns)?;
    Ok(Some((db, table)))
}
