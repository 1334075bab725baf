//! Which statements may run. A query interface is not a shell: DataFusion
//! would run `COPY ... TO 'path'` (it writes any file the server may write),
//! `CREATE EXTERNAL TABLE` (reads any file) and `SET` (changes the session's
//! limits). Only reading and appending are allowed, checked twice: on the
//! parsed statement, which names what was refused, and on the logical plan,
//! so that a statement the first check did not foresee cannot write a file.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::tokenizer::Tokenizer;

use crate::QueryError;
use tocsin_storage::SYSTEM_DATABASE;

/// How deep a statement may nest, estimated on its tokens before it is
/// parsed. DataFusion and sqlparser plan, clone and walk statements
/// recursively: `1+1+...+1` (5,000 terms), 3,000 `AND`s, 3,000 `UNION`s or
/// joins, or groups of long chains nested in parentheses each overflowed a
/// thread's stack and aborted the server. Parentheses alone are bounded by
/// the parser's recursion limit (50); this bounds the rest. A 500-condition
/// `AND`/`OR` chain (1,000 operators) is well inside it.
pub(crate) const MAX_NESTING: usize = 1_200;
/// Most tables one statement may join (`JOIN`, FROM lists, `INTERSECT` and
/// `EXCEPT`, which plan as joins). Planning joins is super-linear (1,190
/// cross joins took a minute of CPU) and running a chain of them recurses
/// (1,190 `INTERSECT`s overflowed a stack); dashboards join a few.
pub(crate) const MAX_JOINS: usize = 100;
/// Most subqueries, window functions (`OVER`) and common table expressions
/// of one statement, each: planning each costs a pass over the rest (1,000
/// correlated subqueries took 264 s of CPU, 1,000 windows 64 s, 5,000
/// chained CTEs overflowed a stack after 83 s).
pub(crate) const MAX_SUBQUERIES: usize = 100;
/// Most expressions in one `CUBE(...)`: it makes 2^n grouping sets, and
/// DataFusion enumerates them before its own limit applies (26 aborted the
/// server for lack of memory).
pub(crate) const MAX_CUBE: usize = 12;
/// Most copies that references to common table expressions may expand to:
/// each reference plans the CTE again, so 30 CTEs that each read the
/// previous one twice asked for 2^30 copies.
pub(crate) const MAX_CTE_COPIES: usize = 10_000;

/// One parenthesis level of the estimate.
#[derive(Default)]
struct Level {
    /// Operators chained in the current comma-separated item.
    ops: usize,
    /// The deepest group closed inside the current item.
    child: usize,
    /// The deepest item finished at this level.
    best: usize,
    /// Between FROM and the end of the FROM clause: a comma is a join.
    from: bool,
    /// This level is the argument list of `CUBE(`: its items are counted.
    cube: bool,
    items: usize,
    /// This level is the body of a CTE (index into `ctes`).
    cte: Option<usize>,
}

/// A common table expression seen so far: its name and how many copies
/// one reference to it expands to.
struct Cte {
    name: String,
    copies: usize,
}

fn too_complex(what: &'static str, limit: usize, bound: &'static str) -> QueryError {
    QueryError::TooComplex { what, limit, bound }
}

/// Refuses SQL text too complex to plan safely, before it is parsed:
/// nested deeper than [`MAX_NESTING`], or over [`MAX_JOINS`],
/// [`MAX_SUBQUERIES`], [`MAX_CUBE`] or [`MAX_CTE_COPIES`]. The depth
/// estimate counts, per parenthesis level, every token that makes the
/// statement's tree deeper (every operator symbol, and `AND`, `OR`, `NOT`,
/// `IN`, `IS`, `LIKE`, `BETWEEN`, `CASE`, `AT`, `REGEXP`, set operations,
/// joins and the commas of a FROM list), carries a closed group's depth to
/// the enclosing item, and adds one per open parenthesis. Commas elsewhere
/// separate independent items (select lists, VALUES rows, IN lists).
pub(crate) fn check_expression_size(sql: &str, dialect: &dyn Dialect) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    // A tokenizer error is left for the parser to report with its context.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else { return Ok(()) };
    let tokens: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut levels: Vec<Level> = vec![Level::default()];
    // Sum of `ops + child` over the open levels, kept up to date.
    let mut open = 0usize;
    let (mut joins, mut subqueries, mut windows) = (0usize, 0usize, 0usize);
    let mut ctes: Vec<Cte> = Vec::new();
    let mut main_copies = 0usize;
    let mut prev_keyword = Keyword::NoKeyword;
    for (i, t) in tokens.iter().enumerate() {
        let next_is_paren = matches!(tokens.get(i + 1), Some(Token::LParen));
        let Some(top) = levels.last_mut() else { break };
        let operator = match t {
            Token::LParen | Token::LBracket | Token::LBrace => {
                let mut level = Level::default();
                if prev_keyword == Keyword::CUBE {
                    level.cube = true;
                }
                if prev_keyword == Keyword::AS
                    && let Some(Token::Word(name)) = i.checked_sub(2).and_then(|j| tokens.get(j))
                    && name.keyword == Keyword::NoKeyword
                {
                    // `name AS (`: a common table expression's body.
                    ctes.push(Cte { name: name.value.to_ascii_lowercase(), copies: 1 });
                    if ctes.len() > MAX_SUBQUERIES {
                        return Err(too_complex("common table expressions", MAX_SUBQUERIES, "max_ctes"));
                    }
                    level.cte = Some(ctes.len() - 1);
                }
                levels.push(level);
                prev_keyword = Keyword::NoKeyword;
                continue;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    let closed = levels.pop().unwrap_or_default();
                    if closed.cube && closed.items + 1 > MAX_CUBE {
                        return Err(too_complex("expressions in one CUBE", MAX_CUBE, "max_cube"));
                    }
                    open -= closed.ops + closed.child;
                    let depth = closed.best.max(closed.ops + closed.child) + 1;
                    if let Some(parent) = levels.last_mut()
                        && depth > parent.child
                    {
                        open += depth - parent.child;
                        parent.child = depth;
                    }
                }
                prev_keyword = Keyword::NoKeyword;
                continue;
            }
            Token::Comma if top.from => {
                joins += 1;
                true
            }
            Token::Comma | Token::SemiColon => {
                top.items += 1;
                top.best = top.best.max(top.ops + top.child);
                open -= top.ops + top.child;
                top.ops = 0;
                top.child = 0;
                false
            }
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::FROM => {
                    // `IS [NOT] DISTINCT FROM` is an operator, not a clause.
                    top.from = prev_keyword != Keyword::DISTINCT;
                    !top.from
                }
                Keyword::SELECT => {
                    top.from = false;
                    if levels.len() > 1 {
                        subqueries += 1;
                    }
                    false
                }
                Keyword::WHERE
                | Keyword::GROUP
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::HAVING
                | Keyword::WINDOW
                | Keyword::QUALIFY
                | Keyword::OFFSET => {
                    top.from = false;
                    false
                }
                Keyword::UNION => {
                    top.from = false;
                    true
                }
                Keyword::INTERSECT | Keyword::EXCEPT | Keyword::JOIN => {
                    top.from &= w.keyword == Keyword::JOIN;
                    joins += 1;
                    true
                }
                Keyword::OVER => {
                    windows += 1;
                    false
                }
                Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::CASE
                | Keyword::IS
                | Keyword::IN
                | Keyword::AT
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::MEMBER
                | Keyword::OVERLAPS
                | Keyword::BETWEEN
                | Keyword::COLLATE => true,
                Keyword::NoKeyword if !next_is_paren => {
                    // A reference to a CTE defined earlier: one more copy of
                    // it in the CTE being defined, or in the main query.
                    let name = w.value.to_ascii_lowercase();
                    if let Some(copies) = ctes.iter().find(|c| c.name == name).map(|c| c.copies) {
                        let into = levels.iter().rev().find_map(|l| l.cte);
                        let total = match into {
                            Some(k) if ctes[k].name != name => {
                                ctes[k].copies = ctes[k].copies.saturating_add(copies);
                                ctes[k].copies
                            }
                            Some(_) => 0,
                            None => {
                                main_copies = main_copies.saturating_add(copies);
                                main_copies
                            }
                        };
                        if total > MAX_CTE_COPIES {
                            return Err(too_complex(
                                "copies of common table expressions",
                                MAX_CTE_COPIES,
                                "max_cte_copies",
                            ));
                        }
                    }
                    false
                }
                _ => false,
            },
            // Values and names: they end a tree, they do not deepen it.
            Token::Word(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::Period
            | Token::EOF => false,
            // Every other symbol is an operator of some dialect: counted,
            // so that one this list does not know cannot get through.
            _ => true,
        };
        if let Token::Word(w) = t {
            prev_keyword = w.keyword;
        } else {
            prev_keyword = Keyword::NoKeyword;
        }
        if operator && let Some(top) = levels.last_mut() {
            top.ops += 1;
            open += 1;
        }
        let depth = open + levels.len() - 1;
        if depth > MAX_NESTING {
            return Err(QueryError::ExpressionTooComplex { depth, limit: MAX_NESTING });
        }
        if joins > MAX_JOINS {
            return Err(QueryError::TooManyJoins { limit: MAX_JOINS });
        }
        if subqueries > MAX_SUBQUERIES {
            return Err(too_complex("subqueries", MAX_SUBQUERIES, "max_subqueries"));
        }
        if windows > MAX_SUBQUERIES {
            return Err(too_complex("window functions", MAX_SUBQUERIES, "max_window_functions"));
        }
    }
    Ok(())
}

/// Accepts SELECT (any query), EXPLAIN of an allowed statement, INSERT,
/// SHOW and DESCRIBE; refuses everything else by name.
pub(crate) fn check_statement(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(s) => check_sql(s),
        DfStatement::Explain(e) => check_statement(&e.statement),
        DfStatement::CopyTo(_) => Err(refuse("COPY")),
        DfStatement::CreateExternalTable(_) => Err(refuse("CREATE EXTERNAL TABLE")),
        DfStatement::Reset(_) => Err(refuse("RESET")),
    }
}

fn check_sql(statement: &SqlStatement) -> Result<(), QueryError> {
    match statement {
        SqlStatement::Query(_)
        | SqlStatement::Insert(_)
        | SqlStatement::Delete(_)
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowFunctions { .. }
        | SqlStatement::ShowVariable { .. }
        | SqlStatement::ShowSchemas { .. }
        | SqlStatement::ShowDatabases { .. }
        | SqlStatement::ShowCatalogs { .. }
        | SqlStatement::ShowViews { .. }
        | SqlStatement::ShowCreate { .. }
        | SqlStatement::ExplainTable { .. } => Ok(()),
        SqlStatement::Explain { statement, .. } => check_sql(statement),
        other => Err(refuse(&statement_name(&other.to_string()))),
    }
}

/// The statement's leading keywords (`DROP TABLE`, `SET`, `CREATE VIEW`).
fn statement_name(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(4).collect();
    let n = match words.first().map(|w| w.to_ascii_uppercase()) {
        Some(w) if matches!(w.as_str(), "CREATE" | "DROP" | "ALTER") => {
            // CREATE [OR REPLACE] [EXTERNAL] TABLE ...: up to the object kind.
            if words.get(1).is_some_and(|w| w.eq_ignore_ascii_case("OR")) { 4 } else { 2 }
        }
        _ => 1,
    };
    words.iter().take(n).map(|w| w.to_ascii_uppercase()).collect::<Vec<_>>().join(" ")
}

fn refuse(statement: &str) -> QueryError {
    QueryError::StatementNotAllowed { statement: statement.to_string() }
}

/// Refuses any plan node that writes somewhere other than a Tocsin table by
/// `INSERT INTO` (append).
pub(crate) fn check_plan(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut refused = None;
    plan.apply(|node| {
        refused = match node {
            LogicalPlan::Copy(_) => Some("COPY"),
            LogicalPlan::Dml(dml) if dml.table_name.schema() == Some(SYSTEM_DATABASE) => {
                Some(if dml.op == WriteOp::Delete { "DELETE FROM system.*" } else { "INSERT INTO system.*" })
            }
            LogicalPlan::Dml(dml) => match &dml.op {
                WriteOp::Insert(InsertOp::Append) => None,
                WriteOp::Insert(_) => Some("INSERT OVERWRITE"),
                // A deletion is the statement itself, not a part of one
                // (`EXPLAIN ANALYZE DELETE` would make it).
                WriteOp::Delete if std::ptr::eq(node, plan) => None,
                WriteOp::Delete => Some("EXPLAIN DELETE"),
                WriteOp::Update => Some("UPDATE"),
                WriteOp::Ctas => Some("CREATE TABLE AS"),
                _ => Some("this write"),
            },
            LogicalPlan::Ddl(_) => Some("DDL"),
            LogicalPlan::Statement(_) => Some("SET/PREPARE/transaction"),
            _ => None,
        };
        Ok(if refused.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    if let Some(name) = refused {
        return Err(refuse(name));
    }
    // Each call of a function whose value may grow far past its arguments
    // is bounded on its own (see `bounded`); so is their number.
    use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
    let (mut growing, mut widening) = (0usize, 0usize);
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|x| {
                match x {
                    Expr::ScalarFunction(f) if crate::bounded::grows(f.name()) => growing += 1,
                    Expr::ScalarFunction(f) if crate::bounded::widens(f.name()) => widening += 1,
                    Expr::BinaryExpr(BinaryExpr { op: Operator::StringConcat, .. }) => widening += 1,
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if growing > crate::bounded::MAX_CALLS {
        return Err(QueryError::TooComplex {
            what: "calls of functions whose result can grow past their arguments (repeat, lpad, rpad, replace, regexp_replace)",
            limit: crate::bounded::MAX_CALLS,
            bound: "max_growing_calls",
        });
    }
    if widening > crate::bounded::MAX_WIDENING_CALLS {
        return Err(QueryError::TooComplex {
            what: "calls that can make text longer than their arguments (||, concat, concat_ws, upper, lower, \
                   initcap, translate, overlay, encode, to_char)",
            limit: crate::bounded::MAX_WIDENING_CALLS,
            bound: "max_widening_calls",
        });
    }
    Ok(())
}

/// Checks the caller against every table the statement names, before it is
/// planned: planning errors (an unknown column, a missing table) would tell
/// a caller about tables it may not read, and `DESCRIBE` plans no scan. An
/// `INSERT` target needs the write permission, every other table query.
pub(crate) fn check_references(
    statement: &DfStatement,
    state: &datafusion::execution::context::SessionState,
    who: &tocsin_auth::Principal,
) -> Result<(), QueryError> {
    use tocsin_auth::Permission;
    let target = crate::insert::target(state, statement);
    // `SHOW TABLES` and `SHOW COLUMNS` name every information_schema table;
    // they read `tables` or `columns`, checked (and filtered) in the plan.
    let show = matches!(
        statement,
        DfStatement::Statement(s) if matches!(**s, SqlStatement::ShowTables { .. } | SqlStatement::ShowColumns { .. })
    );
    for reference in state.resolve_table_references(statement)? {
        let default_db = &state.config().options().catalog.default_schema;
        let (db, table) = (reference.schema().unwrap_or(default_db), reference.table());
        if show && db == "information_schema" {
            continue;
        }
        if target.as_ref().is_some_and(|(d, t)| d == db && t == table) {
            who.check_table(Permission::Write, db, table)?;
        } else {
            who.check_table(Permission::Query, db, table)?;
        }
    }
    Ok(())
}

/// Whether running the plan adds rows (an `INSERT`, charged to the
/// caller's ingest rate; a `DELETE` is not).
pub(crate) fn inserts(plan: &LogicalPlan) -> bool {
    plan.exists(|node| Ok(matches!(node, LogicalPlan::Dml(d) if matches!(d.op, WriteOp::Insert(_))))).unwrap_or(true)
}

/// Whether running the plan writes: an `INSERT` anywhere in it, as under
/// `EXPLAIN ANALYZE` (which runs its statement).
pub(crate) fn writes(plan: &LogicalPlan) -> bool {
    plan.exists(|node| Ok(matches!(node, LogicalPlan::Dml(_)))).unwrap_or(true)
}

/// Checks the caller against every table the plan reads (in subqueries,
/// joins, CTEs and `EXPLAIN` too) and the one it writes. A statement that
/// writes nothing needs the query permission even when it reads no table.
pub(crate) fn check_access(
    plan: &LogicalPlan,
    default_db: &str,
    who: &tocsin_auth::Principal,
) -> Result<(), QueryError> {
    use tocsin_auth::Permission;
    if !writes(plan) {
        who.require(Permission::Query)?;
    }
    if let LogicalPlan::Dml(dml) = plan
        && dml.op == WriteOp::Delete
    {
        // Deleting history is administration, not ingest: a collector's
        // write token may not, and neither may a role that sees only some
        // of the table's rows.
        who.require(Permission::Admin)?;
        let db = dml.table_name.schema().unwrap_or(default_db);
        let schema = dml.target.schema();
        if row_predicate(who, db, dml.table_name.table(), |c| schema.index_of(c).is_ok())?.is_some() {
            return Err(tocsin_auth::AuthError::Forbidden(format!(
                "DELETE FROM {db}.{}: the role reads only some of its rows",
                dml.table_name.table()
            ))
            .into());
        }
    }
    let mut denied = None;
    plan.apply_with_subqueries(|node| {
        let (name, permission) = match node {
            LogicalPlan::TableScan(scan) => (&scan.table_name, Permission::Query),
            LogicalPlan::Dml(dml) => (&dml.table_name, Permission::Write),
            _ => return Ok(TreeNodeRecursion::Continue),
        };
        let db = name.schema().unwrap_or(default_db);
        match who.check_table(permission, db, name.table()) {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(e) => {
                denied = Some(e);
                Ok(TreeNodeRecursion::Stop)
            }
        }
    })?;
    match denied {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// `database.table` of every table of the catalog `who` may read.
pub(crate) fn visible_tables(
    state: &datafusion::execution::context::SessionState,
    who: &tocsin_auth::Principal,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(catalog) = state.catalog_list().catalog(crate::catalog::CATALOG) else { return out };
    for db in catalog.schema_names() {
        let Some(schema) = catalog.schema(&db) else { continue };
        for table in schema.table_names() {
            if who.check_table(tocsin_auth::Permission::Query, &db, &table).is_ok() {
                out.push(format!("{db}.{table}"));
            }
        }
    }
    out
}

/// Applies the caller's row filters: every scan of a table its role
/// filters (in subqueries, joins, CTEs and `EXPLAIN` too) reads the table
/// through a [`crate::gate::RowGate`] with `column IN (values) AND ...`,
/// before optimisation, so no query shape (and no error message) reaches
/// past it. A filtered table without the filter's column is refused,
/// naming both. `EXPLAIN ANALYZE` and `EXPLAIN VERBOSE` are refused when a
/// gate is in the plan: their counts and statistics describe the rows
/// below it.
///
/// `information_schema.tables` and `.columns` are gated the same way to
/// the tables the caller may read (`visible`, `database.table` names,
/// computed only when the plan reads them).
pub(crate) fn restrict_rows(
    plan: LogicalPlan,
    default_db: &str,
    who: &tocsin_auth::Principal,
    visible: impl FnOnce() -> Vec<String>,
) -> Result<LogicalPlan, QueryError> {
    use datafusion::common::Column;
    use datafusion::common::tree_node::Transformed;
    use datafusion::datasource::{provider_as_source, source_as_provider};
    use datafusion::logical_expr::{Expr, lit};
    let explains = match &plan {
        LogicalPlan::Analyze(_) => Some("EXPLAIN ANALYZE"),
        // Plain EXPLAIN too: the physical plan below the gate shows which
        // buffered chunks and segments a time range overlaps (hidden rows'
        // times and sizes) and file paths.
        LogicalPlan::Explain(_) => Some("EXPLAIN"),
        _ => None,
    };
    let mut visible = Some(visible);
    let mut names: Option<Vec<Expr>> = None;
    let mut refused = None;
    let mut gated = false;
    let column = |c: &str| Expr::Column(Column::new_unqualified(c));
    let restricted = plan.transform_up_with_subqueries(|node| {
        let mut scan = match node {
            LogicalPlan::TableScan(scan) => scan,
            other => return Ok(Transformed::no(other)),
        };
        let db = scan.table_name.schema().unwrap_or(default_db);
        let predicate = if db == "information_schema" && tocsin_auth::CATALOG_LISTS.contains(&scan.table_name.table()) {
            let names = names
                .get_or_insert_with(|| visible.take().map(|f| f()).unwrap_or_default().into_iter().map(lit).collect());
            let name =
                datafusion::functions::expr_fn::concat(vec![column("table_schema"), lit("."), column("table_name")]);
            Some(if names.is_empty() { lit(false) } else { name.in_list(names.clone(), false) })
        } else {
            match row_predicate(who, db, scan.table_name.table(), |c| {
                scan.projected_schema.has_column_with_unqualified_name(c)
            }) {
                Ok(p) => p,
                Err(e) => {
                    refused = Some(e);
                    return Ok(Transformed::new(LogicalPlan::TableScan(scan), false, TreeNodeRecursion::Stop));
                }
            }
        };
        let Some(predicate) = predicate else { return Ok(Transformed::no(LogicalPlan::TableScan(scan))) };
        gated = true;
        let inner = source_as_provider(&scan.source)?;
        scan.source = provider_as_source(std::sync::Arc::new(crate::gate::RowGate { inner, predicate }));
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    })?;
    if let Some(e) = refused {
        return Err(e.into());
    }
    if let (true, Some(kind)) = (gated, explains) {
        return Err(tocsin_auth::AuthError::Forbidden(format!(
            "{kind} is not available to {} (role {}): the plan below a row filter describes rows outside it (their \
             counts, times and sizes)",
            who.name, who.role.name
        ))
        .into());
    }
    Ok(restricted.data)
}

/// The predicate that keeps the rows of `db.table` that `who`'s role may
/// read (its row filters, all of them), or `None` when it may read every
/// row; refused when a filter's column is not one the table has.
pub(crate) fn row_predicate(
    who: &tocsin_auth::Principal,
    db: &str,
    table: &str,
    has_column: impl Fn(&str) -> bool,
) -> Result<Option<datafusion::logical_expr::Expr>, tocsin_auth::AuthError> {
    use datafusion::common::Column;
    use datafusion::logical_expr::{Expr, lit};
    let mut predicate: Option<Expr> = None;
    for f in who.role.row_filters(db, table) {
        if !has_column(&f.column) {
            return Err(tocsin_auth::AuthError::Forbidden(format!(
                "{} (role {}) may read {db}.{table} only where {} is one of its values, and the table has no such \
                 column",
                who.name, who.role.name, f.column
            )));
        }
        let allowed = Expr::Column(Column::new_unqualified(&f.column))
            .in_list(f.values.iter().map(|v| lit(v.as_str())).collect(), false);
        predicate = Some(match predicate {
            None => allowed,
            Some(p) => p.and(allowed),
        });
    }
    Ok(predicate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_statements_are_refused_before_parsing() {
        let d = datafusion::sql::sqlparser::dialect::GenericDialect {};
        let ok = |sql: &str| check_expression_size(sql, &d).is_ok();
        let chain = |n: usize| format!("SELECT 1{}", "+1".repeat(n));
        assert!(ok(&chain(MAX_NESTING)));
        assert!(!ok(&chain(MAX_NESTING + 1)));
        let ands = |n: usize| format!("SELECT 1 WHERE {}", vec!["a = 1"; n].join(" AND "));
        assert!(ok(&ands(500)));
        assert!(!ok(&ands(1_000)));
        // Commas end an item; long lists stay fine.
        assert!(ok(&format!("SELECT {}", vec!["a + 1"; 10_000].join(", "))));
        assert!(ok(&format!("INSERT INTO t (ts, v) VALUES {}", vec!["(now(), -1.5)"; 10_000].join(", "))));
        assert!(ok(&format!("SELECT 1 WHERE a IN ({})", vec!["1"; 50_000].join(", "))));
        // What used to get through: nested groups of long chains, IN and AT
        // TIME ZONE chains, set operations, joins and FROM lists.
        let group = format!("({})", vec!["1"; 1_000].join(" + "));
        assert!(!ok(&format!("SELECT ((({group} + {group}) + {group}) + {group})")));
        assert!(!ok(&format!("SELECT true{}", " IN (true)".repeat(2_000))));
        assert!(!ok(&format!("SELECT now(){}", " AT TIME ZONE 'UTC'".repeat(2_000))));
        assert!(!ok(&vec!["SELECT 1"; 2_000].join(" UNION ALL ")));
        assert!(!ok(&format!("SELECT 1 FROM t0{}", " CROSS JOIN t".repeat(MAX_JOINS + 1))));
        assert!(!ok(&format!("SELECT 1 FROM t0{}", ", t".repeat(MAX_JOINS + 1))));
        assert!(ok(&format!("SELECT 1 FROM t0{}", " JOIN t USING (a)".repeat(MAX_JOINS))));
        // Operators no list names, INTERSECT (a join), subqueries,
        // windows, CTE chains and fan-out, CUBE.
        assert!(!ok(&format!("SELECT 1{}", " @@ 1".repeat(2_000))));
        assert!(!ok(&format!("SELECT 1{}", ":a".repeat(2_000))));
        assert!(!ok(&format!("SELECT 1{}", " REGEXP 'a'".repeat(2_000))));
        assert!(!ok(&vec!["SELECT 1"; MAX_JOINS + 2].join(" INTERSECT ")));
        let sub = "(SELECT max(v) FROM cpu c WHERE c.host = cpu.host)";
        assert!(ok(&format!("SELECT {} FROM cpu", vec![sub; MAX_SUBQUERIES].join(", "))));
        assert!(!ok(&format!("SELECT {} FROM cpu", vec![sub; MAX_SUBQUERIES + 1].join(", "))));
        let win = "sum(v) OVER (PARTITION BY host)";
        assert!(!ok(&format!("SELECT {} FROM cpu", vec![win; MAX_SUBQUERIES + 1].join(", "))));
        let chain = |n: usize| {
            let defs: Vec<String> = (1..n).map(|i| format!("a{i} AS (SELECT x FROM a{})", i - 1)).collect();
            format!("WITH a0 AS (SELECT 1 AS x), {} SELECT x FROM a{}", defs.join(", "), n - 1)
        };
        assert!(ok(&chain(50)));
        assert!(!ok(&chain(MAX_SUBQUERIES + 1)));
        let doubling = |n: usize| {
            let defs: Vec<String> = (1..n)
                .map(|i| format!("a{i} AS (SELECT x FROM a{p} UNION ALL SELECT x FROM a{p})", p = i - 1))
                .collect();
            format!("WITH a0 AS (SELECT 1 AS x), {} SELECT count(*) FROM a{}", defs.join(", "), n - 1)
        };
        assert!(ok(&doubling(10)));
        assert!(!ok(&doubling(30)));
        let cube = |n: usize| format!("SELECT count(*) FROM cpu GROUP BY CUBE({})", vec!["v + 0"; n].join(", "));
        assert!(ok(&cube(MAX_CUBE)));
        assert!(!ok(&cube(MAX_CUBE + 1)));
        // Flat or harmless shapes that used to be refused.
        assert!(ok(&format!("SELECT v IS DISTINCT FROM 1, {} FROM cpu", vec!["v"; 200].join(", "))));
        let when: String = (0..601).map(|i| format!(" WHEN v = {i} THEN {i}")).collect();
        assert!(ok(&format!("SELECT CASE{when} END FROM cpu")));
        // A FROM list ends at WHERE: commas after it are items again.
        assert!(ok(&format!("SELECT 1 FROM a, b WHERE x IN ({})", vec!["1"; 5_000].join(", "))));
    }

    #[test]
    fn statement_names_are_the_leading_keywords() {
        assert_eq!(statement_name("drop table cpu"), "DROP TABLE");
        assert_eq!(statement_name("CREATE OR REPLACE VIEW v AS SELECT 1"), "CREATE OR REPLACE VIEW");
        assert_eq!(statement_name("set datafusion.x = 1"), "SET");
    }
}
