//! Skipping blocks of segments that cannot match a `matches()` filter, by
//! their token filters (see `tocsin_storage::tokens`).
//!
//! A term occurs as whole words only where each of its own words is a word
//! of the text (the term's ends are word boundaries when they are word
//! characters, and its inner non-word characters separate its words), so a
//! block whose filter lacks one of a term's words cannot hold the term.
//! `AND` needs every part, `OR` any; `NOT` and terms without a word (`--`)
//! may match anywhere.

use datafusion::logical_expr::{Expr, Operator};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use tocsin_storage::tokens::{TOKEN_COLUMNS, TokenFilter, for_each_word};

use crate::matches::{Query, parse};
use crate::udf::scalar_str;

/// What a block's words must include for a query to possibly match.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Need {
    /// Anything may match.
    Nothing,
    /// Every one of these (lower-case) words.
    Words(Vec<Vec<u8>>),
    All(Vec<Need>),
    Any(Vec<Need>),
}

impl Need {
    fn of(q: &Query) -> Need {
        match q {
            Query::Term(t) => {
                let mut words = Vec::new();
                for_each_word(&t.bytes, &mut Vec::new(), |w| words.push(w.to_vec()));
                if words.is_empty() { Need::Nothing } else { Need::Words(words) }
            }
            Query::And(parts) => Need::All(parts.iter().map(Need::of).collect()),
            Query::Or(parts) => {
                let parts: Vec<Need> = parts.iter().map(Need::of).collect();
                if parts.contains(&Need::Nothing) { Need::Nothing } else { Need::Any(parts) }
            }
            Query::Not(_) => Need::Nothing,
        }
    }

    /// Whether block `block` of `filter` may satisfy this.
    pub(crate) fn may_match(&self, filter: &TokenFilter, block: usize) -> bool {
        match self {
            Need::Nothing => true,
            Need::Words(words) => words.iter().all(|w| filter.may_contain(block, w)),
            Need::All(parts) => parts.iter().all(|p| p.may_match(filter, block)),
            Need::Any(parts) => parts.iter().any(|p| p.may_match(filter, block)),
        }
    }
}

/// The `matches(column, 'query')`, `LIKE` and `=` filters on columns with
/// token filters: (column, what its blocks must hold). Filters of other
/// shapes are left out. A `matches()` query that does not parse is an
/// error here, whatever the column: it would otherwise surface from inside
/// the Parquet reader, which evaluates filters while decoding.
pub(crate) fn searches(filters: &[Expr]) -> Result<Vec<(String, Need)>, String> {
    let mut out = Vec::new();
    for f in filters {
        collect(f, &mut out)?;
    }
    Ok(out)
}

fn collect(e: &Expr, out: &mut Vec<(String, Need)>) -> Result<(), String> {
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::And => {
            collect(&b.left, out)?;
            collect(&b.right, out)?;
        }
        // `message = 'text'`: the text's words are all there.
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            if let (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) =
                (b.left.as_ref(), b.right.as_ref())
                && let Some(text) = scalar_str(v)
            {
                let mut words = Vec::new();
                for_each_word(text.as_bytes(), &mut Vec::new(), |w| words.push(w.to_vec()));
                if !words.is_empty() {
                    push(c, Need::Words(words), out);
                }
            }
        }
        Expr::ScalarFunction(f) if f.func.name() == "matches" => {
            let [text, query] = f.args.as_slice() else { return Ok(()) };
            let Expr::Literal(q, _) = query else {
                return Err("matches(): the query must be a constant string, \
                            e.g. matches(message, 'timeout AND node-7')"
                    .into());
            };
            let Some(q) = scalar_str(q) else {
                return Err("matches(): the query must be a non-NULL string".into());
            };
            let query = parse(q).map_err(|e| format!("matches(): cannot parse {q:?}: {e}"))?;
            if let Expr::Column(c) = text {
                push(c, Need::of(&query), out);
            }
        }
        // `LIKE` with the default escape: the pattern's words that are whole
        // words wherever it matches. Not `ILIKE`: it folds case the Unicode
        // way, and the Kelvin sign `K` matches `k` there, while the filters
        // know it as a separator. A pattern with `\` (an escape) is not
        // narrowed.
        Expr::Like(l) if !l.negated && !l.case_insensitive && l.escape_char.is_none() => {
            let (Expr::Column(c), Expr::Literal(p, _)) = (l.expr.as_ref(), l.pattern.as_ref()) else { return Ok(()) };
            if let Some(p) = scalar_str(p).filter(|p| !p.contains('\\')) {
                push(c, like_words(p), out);
            }
        }
        _ => {}
    }
    Ok(())
}

fn push(c: &datafusion::common::Column, need: Need, out: &mut Vec<(String, Need)>) {
    if TOKEN_COLUMNS.contains(&c.name.as_str()) && need != Need::Nothing {
        out.push((c.name.clone(), need));
    }
}

/// The words a text matching the `LIKE` pattern `p` certainly has: the
/// runs of word characters of its literal parts that are bounded on both
/// sides, by a non-word character of the pattern or by the pattern's (and
/// so the text's) start or end. A run touching a wildcard may be part of a
/// longer word (`'%rror%'` matches "error"); `_` is a wildcard here, even
/// though it is a word character in text.
fn like_words(p: &str) -> Need {
    let b = p.as_bytes();
    let wild = |c: u8| c == b'%' || c == b'_';
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let left = start == 0 || !wild(b[start - 1]);
        let right = i == b.len() || !wild(b[i]);
        if left && right {
            words.push(b[start..i].to_ascii_lowercase());
        }
    }
    if words.is_empty() { Need::Nothing } else { Need::Words(words) }
}

/// The rows of a segment worth reading, given which of its blocks
/// (`filter.block_rows()` rows each) may match. `None` when every block
/// may; an empty selection when none may.
pub(crate) fn selection(filter: &TokenFilter, may: &[bool]) -> Option<RowSelection> {
    if may.iter().all(|&m| m) {
        return None;
    }
    let rows = filter.rows() as usize;
    let mut selectors: Vec<RowSelector> = Vec::new();
    for (block, &m) in may.iter().enumerate() {
        let start = block * filter.block_rows();
        let n = filter.block_rows().min(rows.saturating_sub(start));
        match selectors.last_mut() {
            Some(last) if last.skip != m => last.row_count += n,
            _ => selectors.push(if m { RowSelector::select(n) } else { RowSelector::skip(n) }),
        }
    }
    Some(RowSelection::from(selectors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use datafusion::prelude::{col, lit};

    fn need(q: &str) -> Need {
        Need::of(&parse(q).expect("parses"))
    }

    fn words(ws: &[&str]) -> Need {
        Need::Words(ws.iter().map(|w| w.as_bytes().to_vec()).collect())
    }

    #[test]
    fn terms_need_their_words_and_not_needs_nothing() {
        assert_eq!(need("ERR-7731-QUOTA"), words(&["err", "7731", "quota"]));
        assert_eq!(need("\"Card Declined\""), words(&["card", "declined"]));
        assert_eq!(
            need("timeout AND (db OR cache)"),
            Need::All(vec![words(&["timeout"]), Need::Any(vec![words(&["db"]), words(&["cache"])])])
        );
        assert_eq!(need("retry NOT failed"), Need::All(vec![words(&["retry"]), Need::Nothing]));
        assert_eq!(need("NOT failed"), Need::Nothing);
        assert_eq!(need("a OR --"), Need::Nothing);
        assert_eq!(need("--"), Need::Nothing);
    }

    #[test]
    fn like_patterns_need_their_bounded_words() {
        assert_eq!(like_words("%ERR-7731-QUOTA%"), words(&["7731"]));
        assert_eq!(like_words("%quota exceeded ERR-7731%"), words(&["exceeded", "err"]));
        assert_eq!(like_words("GET /v/%"), words(&["get", "v"]));
        assert_eq!(like_words("%timeout"), Need::Nothing);
        assert_eq!(like_words("%rror%"), Need::Nothing);
        // `_` stands for any one character, a letter included.
        assert_eq!(like_words("%a_b c%"), Need::Nothing);
        assert_eq!(like_words("% node_7 %"), Need::Nothing);
        assert_eq!(like_words("disk full"), words(&["disk", "full"]));
    }

    #[test]
    fn blocks_are_selected_by_their_words() {
        let text: StringArray =
            (0..10).map(|i| Some(if i == 4 { "disk full on db-1".to_string() } else { format!("ok {i}") })).collect();
        let f = TokenFilter::build(&text, 3).expect("text");
        let may: Vec<bool> = (0..f.len()).map(|b| need("full AND db-1").may_match(&f, b)).collect();
        assert_eq!(may, [false, true, false, false]);
        let sel = selection(&f, &may).expect("some blocks skipped");
        assert_eq!(Vec::<RowSelector>::from(sel), [RowSelector::skip(3), RowSelector::select(3), RowSelector::skip(4)]);
        assert!(selection(&f, &[true; 4]).is_none());
        let none = selection(&f, &[false; 4]).expect("all skipped");
        assert_eq!(none.row_count(), 0);
        // What follows NOT narrows nothing.
        assert!((0..f.len()).all(|b| need("ok NOT full").may_match(&f, b)));
        assert!((0..f.len()).all(|b| need("NOT full").may_match(&f, b)));
    }

    #[test]
    fn only_matches_on_token_columns_with_a_literal_query_prune() {
        let m = |c: &str, q: &str| {
            Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                std::sync::Arc::new(datafusion::logical_expr::ScalarUDF::from(crate::matches::Matches::new())),
                vec![col(c), lit(q)],
            ))
        };
        let found = searches(&[m("message", "quota"), m("host", "quota"), m("message", "NOT x")]).expect("parse");
        assert_eq!(found, [("message".to_string(), words(&["quota"]))]);
        // A query that does not parse is an error, on any column.
        for c in ["message", "host"] {
            let e = searches(&[m(c, "(bad")]).unwrap_err();
            assert!(e.contains("cannot parse \"(bad\"") && e.contains("missing )"), "{e}");
        }
        // So is a query that is not a constant string.
        let other = Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
            std::sync::Arc::new(datafusion::logical_expr::ScalarUDF::from(crate::matches::Matches::new())),
            vec![col("message"), col("message")],
        ));
        assert!(searches(&[other]).unwrap_err().contains("constant string"));
        let null = Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
            std::sync::Arc::new(datafusion::logical_expr::ScalarUDF::from(crate::matches::Matches::new())),
            vec![col("message"), lit(datafusion::scalar::ScalarValue::Utf8(None))],
        ));
        assert!(searches(&[null]).unwrap_err().contains("non-NULL"));
        // Equality needs every word of the text; other comparisons nothing.
        let found = searches(&[col("message").eq(lit("Disk full: sda_1")), lit("x").eq(col("message"))]).expect("eq");
        assert_eq!(
            found,
            [("message".to_string(), words(&["disk", "full", "sda_1"])), ("message".to_string(), words(&["x"]))]
        );
        assert!(searches(&[col("message").gt(lit("a")), col("message").eq(lit("--"))]).expect("other").is_empty());
        let like = |pattern: &str, negated: bool, case_insensitive: bool| {
            Expr::Like(datafusion::logical_expr::expr::Like::new(
                negated,
                Box::new(col("message")),
                Box::new(lit(pattern)),
                None,
                case_insensitive,
            ))
        };
        let found = searches(&[
            like("%a b c%", false, false),
            like("%a b c%", true, false),
            like("%a b c%", false, true),
            like("%a\\%b c%", false, false),
        ])
        .expect("like");
        assert_eq!(found, [("message".to_string(), words(&["b"]))]);
        let both =
            searches(&[m("message", "a").and(col("level").eq(lit("error")).and(m("message", "b")))]).expect("parse");
        assert_eq!(both.len(), 2);
    }
}
