//! `matches(text, query)`: token search in log messages.
//!
//! A query is terms combined with `AND` (also implied between adjacent
//! terms), `OR`, `NOT` and parentheses; a term is a word (`timeout`,
//! `node-7`, `10.0.0.1`) or a "quoted phrase". A term matches where it
//! occurs as whole words: ASCII case-insensitive, not preceded or followed
//! by a letter, digit or `_` (so `node-7` matches "on node-7." but not
//! "node-77", and `out` does not match "timeout").

use arrow::array::BooleanArray;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use crate::udf::{map_text, scalar_str};

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Matches {
    signature: Signature,
}

impl Matches {
    pub(crate) fn new() -> Self {
        Self { signature: Signature::string(2, Volatility::Immutable) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Query {
    Term(Term),
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
}

/// The longest query text accepted. Queries are typed by people; 4 KiB is
/// already a page of terms.
const MAX_QUERY_BYTES: usize = 4096;
/// How deeply parentheses and `NOT`s may nest. Parsing and evaluation recurse
/// once per level, so an unbounded depth would let one request overflow the
/// stack (20,000 `(` did, before this bound).
const MAX_DEPTH: usize = 32;

/// Parses a query; the error names what is wrong.
pub(crate) fn parse(q: &str) -> std::result::Result<Query, String> {
    if q.len() > MAX_QUERY_BYTES {
        tocsin_storage::refusals::refused("max_matches_bytes");
        return Err(format!("the query is {} bytes long; at most {MAX_QUERY_BYTES} are allowed", q.len()));
    }
    let mut tokens = Vec::new();
    let b = q.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'(' | b')' => {
                tokens.push(String::from(b[i] as char));
                i += 1;
            }
            b'"' => {
                let end = q[i + 1..].find('"').ok_or("unclosed quote")? + i + 1;
                tokens.push(format!("\"{}", &q[i + 1..end]));
                i = end + 1;
            }
            _ => {
                let start = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'(' | b')' | b'"') {
                    i += 1;
                }
                tokens.push(q[start..i].to_string());
            }
        }
    }
    let mut pos = 0;
    let query = parse_or(&tokens, &mut pos, 0)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?}", tokens[pos]));
    }
    Ok(query)
}

fn parse_or(t: &[String], pos: &mut usize, depth: usize) -> std::result::Result<Query, String> {
    let mut parts = vec![parse_and(t, pos, depth)?];
    while t.get(*pos).is_some_and(|s| s == "OR") {
        *pos += 1;
        parts.push(parse_and(t, pos, depth)?);
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { Query::Or(parts) })
}

fn parse_and(t: &[String], pos: &mut usize, depth: usize) -> std::result::Result<Query, String> {
    let mut parts = vec![parse_not(t, pos, depth)?];
    loop {
        match t.get(*pos).map(String::as_str) {
            Some("AND") => {
                *pos += 1;
                parts.push(parse_not(t, pos, depth)?);
            }
            Some("OR") | Some(")") | None => break,
            Some(_) => parts.push(parse_not(t, pos, depth)?),
        }
    }
    Ok(if parts.len() == 1 { parts.remove(0) } else { Query::And(parts) })
}

fn parse_not(t: &[String], pos: &mut usize, depth: usize) -> std::result::Result<Query, String> {
    let nested = |depth: usize| {
        if depth >= MAX_DEPTH {
            tocsin_storage::refusals::refused("max_matches_depth");
            Err(format!("parentheses and NOT nest more than {MAX_DEPTH} deep"))
        } else {
            Ok(depth + 1)
        }
    };
    match t.get(*pos).map(String::as_str) {
        Some("NOT") => {
            *pos += 1;
            Ok(Query::Not(Box::new(parse_not(t, pos, nested(depth)?)?)))
        }
        Some("(") => {
            *pos += 1;
            let q = parse_or(t, pos, nested(depth)?)?;
            if t.get(*pos).map(String::as_str) != Some(")") {
                return Err("missing )".into());
            }
            *pos += 1;
            Ok(q)
        }
        Some(")") => Err("unexpected )".into()),
        Some("AND") | Some("OR") => Err(format!("{} needs a term before it", t[*pos])),
        Some(term) => {
            *pos += 1;
            let term = term.strip_prefix('"').unwrap_or(term);
            if term.is_empty() {
                return Err("empty term".into());
            }
            Ok(Query::Term(Term::new(term)))
        }
        None => Err("the query ends where a term was expected".into()),
    }
}

/// The word rule is the one token filters index words by.
use tocsin_storage::tokens::is_word;

/// A search term, lower case, with the byte that candidate positions are
/// found by: the one least likely in log text, so that `memchr` skips most
/// of a message and only few positions are compared in full.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Term {
    pub(crate) bytes: Vec<u8>,
    anchor: usize,
}

impl Term {
    fn new(term: &str) -> Term {
        let bytes = term.to_ascii_lowercase().into_bytes();
        let anchor = (0..bytes.len()).min_by_key(|&i| commonness(bytes[i])).unwrap_or(0);
        Term { bytes, anchor }
    }

    /// Whether the term occurs in `text` as whole words.
    fn occurs_in(&self, text: &[u8]) -> bool {
        let term = &self.bytes[..];
        let (n, a) = (term.len(), self.anchor);
        if n == 0 || n > text.len() {
            return false;
        }
        let lo = term[a];
        let hi = lo.to_ascii_uppercase();
        // Anchor positions that leave room for the term on both sides: a hit
        // at `i` in `hay` is the anchor at `text[a + i]`, so the candidate
        // starts at `text[i]`.
        let hay = &text[a..=text.len() - n + a];
        let at = |i: usize| {
            text[i..i + n].eq_ignore_ascii_case(term)
                && (i == 0 || !is_word(text[i - 1]) || !is_word(term[0]))
                && (i + n == text.len() || !is_word(text[i + n]) || !is_word(term[n - 1]))
        };
        if lo == hi { memchr::memchr_iter(lo, hay).any(at) } else { memchr::memchr2_iter(lo, hi, hay).any(at) }
    }
}

/// How common a (lower-case) byte is in English-like log text; lower is
/// rarer. Letters by English frequency, then digits and punctuation.
fn commonness(b: u8) -> u8 {
    const LETTERS: &[u8] = b"zqxjkvbpygfwmucldrhsnioate";
    match b {
        b'a'..=b'z' => 20 + LETTERS.iter().position(|&l| l == b).unwrap_or(0) as u8,
        b' ' => 60,
        b'0'..=b'9' => 15,
        _ => 10,
    }
}

fn eval(q: &Query, text: &[u8]) -> bool {
    match q {
        Query::Term(t) => t.occurs_in(text),
        Query::And(p) => p.iter().all(|q| eval(q, text)),
        Query::Or(p) => p.iter().any(|q| eval(q, text)),
        Query::Not(q) => !eval(q, text),
    }
}

impl ScalarUDFImpl for Matches {
    fn name(&self) -> &str {
        "matches"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, query] = args.args.as_slice() else {
            return plan_err!("matches(text, query) takes two arguments");
        };
        let ColumnarValue::Scalar(q) = query else {
            return exec_err!(
                "matches(): the query must be a constant string, e.g. matches(message, 'timeout AND node-7')"
            );
        };
        let Some(q) = scalar_str(q) else {
            return exec_err!("matches(): the query must be a non-NULL string");
        };
        let query = match parse(q) {
            Ok(query) => query,
            Err(e) => return exec_err!("matches(): cannot parse {q:?}: {e}"),
        };
        map_text::<bool, BooleanArray>(text, |t| Some(eval(&query, t.as_bytes())), ScalarValue::Boolean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str, q: &str) -> bool {
        eval(&parse(q).expect("parse"), text.as_bytes())
    }

    #[test]
    fn terms_match_whole_words_case_insensitively() {
        assert!(m("Connection TIMEOUT on node-7.", "timeout AND node-7"));
        assert!(!m("connection timeout on node-77", "node-7"));
        assert!(!m("timeout", "out"));
        assert!(m("peer 10.0.0.1 refused", "10.0.0.1"));
        assert!(m("card declined by issuer", "\"card declined\""));
        // At the very start and end, and where an earlier candidate fails.
        assert!(m("node-7", "node-7"));
        assert!(m("node-77 node-7", "node-7"));
        assert!(!m("node-77 xnode-7", "node-7"));
        assert!(m("a ERR-7731-QUOTA b", "err-7731-quota"));
        assert!(!m("ERR-7731-QUOT", "err-7731-quota"));
        assert!(m("Zz", "zz") && !m("z", "zz") && !m("", "a"));
    }

    #[test]
    fn and_or_not_and_parentheses() {
        assert!(m("disk full", "disk full"));
        assert!(!m("disk ok", "disk full"));
        assert!(m("db timeout", "timeout AND (db OR cache)"));
        assert!(!m("web timeout", "timeout AND (db OR cache)"));
        assert!(m("retry scheduled", "retry NOT failed"));
        assert!(!m("retry failed", "retry NOT failed"));
        assert!(m("x", "a OR b OR x"));
    }

    #[test]
    fn bad_queries_say_why() {
        assert!(parse("a AND").unwrap_err().contains("ends"));
        assert!(parse("(a OR b").unwrap_err().contains("missing )"));
        assert!(parse("\"open").unwrap_err().contains("unclosed"));
        assert!(parse("OR a").unwrap_err().contains("needs a term"));
    }

    /// 20,000 nested parentheses overflowed the stack and aborted the server.
    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = format!("{}x{}", "(".repeat(20_000), ")".repeat(20_000));
        assert!(parse(&deep).unwrap_err().contains("bytes long"));
        let deep = format!("{}x{}", "(".repeat(2_000), ")".repeat(2_000));
        assert!(parse(&deep).unwrap_err().contains("nest more than 32"));
        assert!(parse(&"NOT ".repeat(1_000)).unwrap_err().contains("nest more than 32"));
        let ok = format!("{}x{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(m("x", &ok));
        assert!(parse(&format!("{}x{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1))).is_err());
    }

    /// Generated queries (token soups and mutations of valid ones) parse or
    /// are refused, and evaluate, without panicking.
    #[test]
    fn generated_queries_never_panic() {
        use tocsin_storage::generated::{Inputs, cases};
        const VOCABULARY: &[&str] =
            &["(", ")", "\"", "AND", "OR", "NOT", "x", "node-7", "10.0.0.1", "é", "\\", "_", "-", "\"a b\""];
        let seeds: &[&[u8]] = &[b"timeout AND (db OR cache) NOT \"card declined\"", b"((a)) OR NOT b"];
        let mut g = Inputs::new(11);
        let mut buf = Vec::new();
        for i in 0..cases(50_000) {
            let q = if i % 2 == 0 {
                g.soup(VOCABULARY, 40)
            } else {
                let seed = seeds[g.below(seeds.len())];
                g.mutate(seed, &mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            };
            if let Ok(query) = parse(&q) {
                let _ = eval(&query, b"Connection timeout on node-7 (db) card declined");
            }
        }
    }
}
