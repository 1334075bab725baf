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

/// How deep a statement may nest, estimated on its tokens before it is
/// parsed. DataFusion and sqlparser plan, clone and walk statements
/// recursively: `1+1+...+1` (5,000 terms), 3,000 `AND`s, 3,000 `UNION`s or
/// joins, or groups of long chains nested in parentheses each overflowed a
/// thread's stack and aborted the server. Parentheses alone are bounded by
/// the parser's recursion limit (50); this bounds the rest. A 500-condition
/// `AND`/`OR` chain (1,000 operators) is well inside it.
pub(crate) const MAX_NESTING: usize = 1_200;
/// Most tables one statement may join. Planning joins is super-linear
/// (1,190 cross joins took a minute of CPU to plan); dashboards join a few.
pub(crate) const MAX_JOINS: usize = 100;

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
}

/// Refuses SQL text nested deeper than [`MAX_NESTING`]. The estimate
/// counts, per parenthesis level, the operators and keywords that make the
/// statement's tree deeper (binary and unary operators, `AND`/`OR`/`NOT`,
/// `IN`, `IS`, `LIKE`, `BETWEEN`, `CASE`, `AT TIME ZONE`, set operations,
/// joins and the commas of a FROM list), carries a closed group's depth to
/// the enclosing item, and adds one per open parenthesis. Commas elsewhere
/// separate independent items (select lists, VALUES rows, IN lists).
pub(crate) fn check_expression_size(sql: &str, dialect: &dyn Dialect) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    // A tokenizer error is left for the parser to report with its context.
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else { return Ok(()) };
    let mut levels: Vec<Level> = vec![Level::default()];
    // Sum of `ops + child` over the open levels, kept up to date.
    let mut open = 0usize;
    let mut joins = 0usize;
    for t in &tokens {
        let Some(top) = levels.last_mut() else { break };
        let operator = match t {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(Level::default());
                None
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if levels.len() > 1 {
                    let closed = levels.pop().unwrap_or_default();
                    open -= closed.ops + closed.child;
                    let depth = closed.best.max(closed.ops + closed.child) + 1;
                    if let Some(parent) = levels.last_mut()
                        && depth > parent.child
                    {
                        open += depth - parent.child;
                        parent.child = depth;
                    }
                }
                None
            }
            Token::Comma if top.from => {
                joins += 1;
                Some(())
            }
            Token::Comma | Token::SemiColon => {
                top.best = top.best.max(top.ops + top.child);
                open -= top.ops + top.child;
                top.ops = 0;
                top.child = 0;
                None
            }
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::FROM => {
                    top.from = true;
                    None
                }
                Keyword::SELECT
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::HAVING
                | Keyword::WINDOW
                | Keyword::QUALIFY
                | Keyword::OFFSET => {
                    top.from = false;
                    None
                }
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => {
                    top.from = false;
                    Some(())
                }
                Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::IS
                | Keyword::IN
                | Keyword::AT
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::COLLATE => Some(()),
                Keyword::JOIN => {
                    joins += 1;
                    Some(())
                }
                _ => None,
            },
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
            | Token::CustomBinaryOperator(_) => Some(()),
            _ => None,
        };
        if operator.is_some()
            && let Some(top) = levels.last_mut()
        {
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
