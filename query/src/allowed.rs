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

/// Most operators one expression may chain without parentheses (counted
/// over the enclosing parenthesis levels too). Parentheses are bounded by the
/// parser's recursion limit, but `1+1+...+1` and `a=1 AND b=2 AND ...` are
/// parsed in a loop into a tree as deep as the chain is long, which planning
/// then walks recursively: 3,000 `AND`s overflowed a worker's stack and
/// aborted the server. A 1,000-condition `AND` chain (2,000 operators) still
/// runs; `IN (...)` lists and comma-separated items are not counted.
pub(crate) const MAX_CHAINED_OPERATORS: usize = 2_000;

/// Refuses SQL text whose expressions chain more than
/// [`MAX_CHAINED_OPERATORS`] operators, before it is parsed.
pub(crate) fn check_expression_size(sql: &str, dialect: &dyn Dialect) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    // A tokenizer error is left for the parser to report with its context.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else { return Ok(()) };
    // Operators counted at each open parenthesis level; their sum is about
    // how deep the expression tree is at this point.
    let mut levels: Vec<usize> = vec![0];
    let mut total = 0usize;
    for t in &tokens {
        let operator = match t {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(0);
                continue;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    total -= levels.pop().unwrap_or(0);
                }
                continue;
            }
            Token::Comma | Token::SemiColon => {
                if let Some(top) = levels.last_mut() {
                    total -= *top;
                    *top = 0;
                }
                continue;
            }
            Token::Word(w) => {
                matches!(
                    w.keyword,
                    Keyword::AND
                        | Keyword::OR
                        | Keyword::XOR
                        | Keyword::NOT
                        | Keyword::CASE
                        | Keyword::IS
                        | Keyword::LIKE
                        | Keyword::ILIKE
                        | Keyword::SIMILAR
                        | Keyword::BETWEEN
                ) && w.quote_style.is_none()
            }
            Token::DoubleEq
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::DuckIntDiv
            | Token::Mod
            | Token::StringConcat
            | Token::DoubleColon
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::Tilde
            | Token::TildeAsterisk
            | Token::ExclamationMarkTilde
            | Token::ExclamationMarkTildeAsterisk
            | Token::DoubleTilde
            | Token::DoubleTildeAsterisk
            | Token::ExclamationMarkDoubleTilde
            | Token::ExclamationMarkDoubleTildeAsterisk
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::Arrow
            | Token::LongArrow
            | Token::HashArrow
            | Token::HashLongArrow
            | Token::AtArrow
            | Token::ArrowAt
            | Token::CustomBinaryOperator(_) => true,
            _ => false,
        };
        if operator {
            if let Some(top) = levels.last_mut() {
                *top += 1;
            }
            total += 1;
            if total > MAX_CHAINED_OPERATORS {
                return Err(QueryError::ExpressionTooComplex { limit: MAX_CHAINED_OPERATORS });
            }
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
        Some(w) if matches!(w.as_str(), "CREATE" | "DROP" | "ALTER" | "TRUNCATE") => {
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
            LogicalPlan::Dml(dml) => match &dml.op {
                WriteOp::Insert(InsertOp::Append) => None,
                WriteOp::Insert(_) => Some("INSERT OVERWRITE"),
                WriteOp::Delete => Some("DELETE"),
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
    match refused {
        Some(name) => Err(refuse(name)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_operator_chains_are_refused_before_parsing() {
        let d = datafusion::sql::sqlparser::dialect::GenericDialect {};
        let chain = |n: usize| format!("SELECT 1{}", "+1".repeat(n));
        assert!(check_expression_size(&chain(MAX_CHAINED_OPERATORS), &d).is_ok());
        assert!(check_expression_size(&chain(MAX_CHAINED_OPERATORS + 1), &d).is_err());
        let ands = |n: usize| format!("SELECT 1 WHERE {}", vec!["a = 1"; n].join(" AND "));
        assert!(check_expression_size(&ands(1_000), &d).is_ok());
        assert!(check_expression_size(&ands(3_000), &d).is_err());
        // Commas and parentheses end a chain.
        let items = format!("SELECT {}", vec!["a + 1"; 10_000].join(", "));
        assert!(check_expression_size(&items, &d).is_ok());
        let rows = format!("INSERT INTO t (ts, v) VALUES {}", vec!["(now(), -1.5)"; 10_000].join(", "));
        assert!(check_expression_size(&rows, &d).is_ok());
        let grouped = format!("SELECT {}", vec!["(a + 1)"; 5_000].join(" + "));
        assert!(check_expression_size(&grouped, &d).is_err(), "parenthesised terms still chain");
    }

    #[test]
    fn statement_names_are_the_leading_keywords() {
        assert_eq!(statement_name("drop table cpu"), "DROP TABLE");
        assert_eq!(statement_name("CREATE OR REPLACE VIEW v AS SELECT 1"), "CREATE OR REPLACE VIEW");
        assert_eq!(statement_name("set datafusion.x = 1"), "SET");
    }
}
